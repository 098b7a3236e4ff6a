//! Protobuf messages to domain values and back. No checks happen here: requests become an
//! [`EmailDraft`] or a [`SearchQuery`] and are validated where REST and NATS input is.

use chrono::{DateTime, Utc};

use crate::{
    domain::{Email, EmailDraft, EmailStatus, SearchPage, SearchQuery, Violations},
    usecase::Created,
};

use super::pb;

/// The word `CreateRes.status` has always carried on success.
pub const CREATED_STATUS: &str = "Ok";

/// proto3 cannot tell an empty string from a missing one; both count as missing, so an
/// empty required field gets the "required" violation.
fn present(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

pub fn draft(request: pb::CreateReq) -> EmailDraft {
    EmailDraft {
        from: present(request.from),
        to: present(request.to),
        subject: present(request.subject),
        message: present(request.message),
        html: present(request.html),
        idempotency_key: present(request.idempotency_key),
        id: None,
    }
}

/// `page` and `size` 0 (unset) take their defaults, as in the original service.
pub fn search_query(request: &pb::SearchReq) -> Result<SearchQuery, Violations> {
    SearchQuery::parse(
        Some(request.search.as_str()),
        Some(request.page),
        Some(request.size),
    )
}

pub fn created(created: Created) -> pb::CreateRes {
    let email = email(created.email);
    pb::CreateRes {
        status: CREATED_STATUS.to_owned(),
        email_id: email.email_id.clone(),
        email_status: email.status,
        replayed: created.replayed,
        email: Some(email),
    }
}

pub fn search_res(page: SearchPage<Email>) -> pb::SearchRes {
    pb::SearchRes {
        total_count: page.total_count,
        total_pages: page.total_pages(),
        page: i64::from(page.page),
        size: i64::from(page.size),
        has_more: page.has_more,
        emails: page.items.into_iter().map(email).collect(),
        total_count_exact: page.total_exact,
    }
}

pub fn email(email: Email) -> pb::Email {
    pb::Email {
        email_id: email.id.to_string(),
        from: email.from,
        to: email.to,
        subject: email.subject,
        message: email.message,
        created_at: Some(timestamp(email.created_at)),
        status: status(email.status) as i32,
        attempts: email.attempts,
        sent_at: email.sent_at.map(timestamp),
        last_error: email.last_error.unwrap_or_default(),
        updated_at: Some(timestamp(email.updated_at)),
        html: email.html.unwrap_or_default(),
        next_attempt_at: email.next_attempt_at.map(timestamp),
        idempotency_key: email.idempotency_key.unwrap_or_default(),
    }
}

pub fn status(status: EmailStatus) -> pb::EmailStatus {
    match status {
        EmailStatus::Queued => pb::EmailStatus::Queued,
        EmailStatus::Sending => pb::EmailStatus::Sending,
        EmailStatus::Sent => pb::EmailStatus::Sent,
        EmailStatus::Deferred => pb::EmailStatus::Deferred,
        EmailStatus::Failed => pb::EmailStatus::Failed,
    }
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // chrono counts a leap second as nanos past 999_999_999; protobuf does not.
        nanos: at.timestamp_subsec_nanos().min(999_999_999) as i32,
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{EmailId, Field, NewEmail};

    use super::*;

    #[test]
    fn empty_strings_count_as_missing() {
        let partial = draft(pb::CreateReq {
            from: "sender@example.com".into(),
            ..Default::default()
        });
        assert_eq!(partial.from.as_deref(), Some("sender@example.com"));
        assert_eq!(
            (&partial.to, &partial.html, &partial.idempotency_key),
            (&None, &None, &None)
        );
        let violations = NewEmail::try_from(draft(pb::CreateReq::default())).unwrap_err();
        assert!(violations.iter().all(|v| v.code == "required"));
        assert_eq!(
            violations.fields().collect::<Vec<_>>(),
            vec![Field::From, Field::To, Field::Subject, Field::Message]
        );
    }

    #[test]
    fn unset_paging_takes_the_defaults_and_negatives_are_refused() {
        let query = search_query(&pb::SearchReq::default()).unwrap();
        assert_eq!((query.text, query.page, query.size), (None, 1, 10));
        let err = search_query(&pb::SearchReq {
            page: -1,
            size: 101,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.fields().collect::<Vec<_>>(),
            vec![Field::Page, Field::Size]
        );
    }

    #[test]
    fn an_email_keeps_its_message_and_optional_fields_become_empty() {
        let now = Utc::now();
        let stored = Email {
            retry_base: 0,
            id: EmailId::generate(),
            from: "a@example.com".into(),
            to: "b@example.com".into(),
            subject: "Subject line".into(),
            message: "The message".into(),
            html: None,
            status: EmailStatus::Deferred,
            attempts: 2,
            last_error: Some("421 try later".into()),
            idempotency_key: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
            next_attempt_at: Some(now),
        };
        let message = email(stored.clone());
        assert_eq!(message.email_id, stored.id.to_string());
        assert_eq!(message.message, "The message");
        assert_eq!(message.subject, "Subject line");
        assert_eq!(message.status(), pb::EmailStatus::Deferred);
        assert_eq!(message.last_error, "421 try later");
        assert_eq!(message.html, "");
        assert_eq!(message.sent_at, None);
        let created_at = message.created_at.unwrap();
        assert_eq!(created_at.seconds, now.timestamp());
        assert_eq!(created_at.nanos as u32, now.timestamp_subsec_nanos());
    }
}
