//! Protobuf messages to domain values and back. No checks happen here: requests become an
//! [`EmailDraft`] or a [`SearchQuery`] and are validated where REST and NATS input is.

use chrono::{DateTime, Utc};

use crate::{
    api_keys::Client,
    domain::{
        AddressList, AttachmentDraft, ContentInput, Email, EmailDraft, EmailStatus, ListPage,
        ListParams, ListQuery, SearchPage, SearchQuery, TemplateKey, TemplateUse, Violations,
        format_list,
    },
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

/// A list in header form, as the proto's string fields hold it.
fn addresses(value: String) -> Option<AddressList> {
    present(value).map(AddressList::Text)
}

/// A proto map, in name order (a map has none of its own).
fn pairs(map: std::collections::HashMap<String, String>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = map.into_iter().collect();
    pairs.sort();
    pairs
}

/// The draft a request asks for; its idempotency key belongs to `client` (the API key's
/// name, when the call carried one).
pub fn draft(request: pb::CreateReq, client: Option<&Client>) -> EmailDraft {
    EmailDraft {
        from: present(request.from),
        to: addresses(request.to),
        cc: addresses(request.cc),
        bcc: addresses(request.bcc),
        reply_to: addresses(request.reply_to),
        subject: present(request.subject),
        message: present(request.message),
        html: present(request.html),
        attachments: request
            .attachments
            .into_iter()
            .map(|a| AttachmentDraft {
                filename: present(a.filename),
                content: Some(ContentInput::Bytes(a.content.into())),
                content_type: present(a.content_type),
                content_id: present(a.content_id),
            })
            .collect(),
        headers: pairs(request.headers),
        tags: pairs(request.tags),
        scheduled_at: request.scheduled_at.as_ref().map(rfc3339),
        lane: present(request.lane),
        idempotency_key: present(request.idempotency_key),
        idempotency_client: client.map(|client| client.name.to_string()),
        id: None,
        template: template_use(
            request.template_name,
            request.template_version,
            request.template_variables,
        ),
        rendered_from: None,
    }
}

/// The template a request names in `TemplateName` (a name, or an id), if it names one
/// or gives a version or variables (then without a name, which the use case refuses).
fn template_use(
    name: String,
    version: u32,
    variables: Option<prost_types::Struct>,
) -> Option<TemplateUse> {
    if name.is_empty() && version == 0 && variables.is_none() {
        return None;
    }
    let (name, id) = match TemplateKey::parse(&name) {
        _ if name.is_empty() => (None, None),
        TemplateKey::Id(_) => (None, Some(name)),
        TemplateKey::Name(_) => (Some(name), None),
    };
    Some(TemplateUse {
        name,
        id,
        version: (version > 0).then_some(i64::from(version)),
        variables: variables.map(json_object).unwrap_or_default(),
    })
}

/// A `google.protobuf.Struct` as the JSON object it stands for. Its numbers are all
/// doubles; whole ones become integers, so `{{ order.id }}` renders `7`, not `7.0`.
fn json_object(object: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    object
        .fields
        .into_iter()
        .map(|(name, value)| (name, json_value(value)))
        .collect()
}

fn json_value(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    /// Doubles up to 2^53 hold every integer exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= EXACT => Value::from(n as i64),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StructValue(object)) => Value::Object(json_object(object)),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(json_value).collect())
        }
    }
}

/// A protobuf timestamp as RFC 3339 text, for the rules that read times (seconds out of
/// range become a text no rule takes).
fn rfc3339(at: &prost_types::Timestamp) -> String {
    DateTime::from_timestamp(at.seconds, at.nanos.clamp(0, 999_999_999) as u32)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| "out of range".to_owned())
}

/// The listing a `ListReq` asks for; `Status` 0 and empty strings are no filter.
pub fn list_query(request: &pb::ListReq) -> Result<ListQuery, Violations> {
    let status = match pb::EmailStatus::try_from(request.status) {
        Ok(pb::EmailStatus::Unspecified) => None,
        Ok(status) => Some(domain_status(status).as_str().to_owned()),
        Err(_) => Some(format!("status {}", request.status)),
    };
    let created_after = request.created_after.as_ref().map(rfc3339);
    let created_before = request.created_before.as_ref().map(rfc3339);
    let limit = (request.limit != 0).then(|| request.limit.to_string());
    ListQuery::parse(ListParams {
        status: status.as_deref(),
        tag: Some(request.tag.as_str()),
        to: Some(request.to.as_str()),
        from: Some(request.from.as_str()),
        created_after: created_after.as_deref(),
        created_before: created_before.as_deref(),
        search: Some(request.search.as_str()),
        limit: limit.as_deref(),
        cursor: Some(request.cursor.as_str()),
    })
}

pub fn list_res(page: ListPage<Email>) -> pb::ListRes {
    pb::ListRes {
        emails: page.items.into_iter().map(email).collect(),
        next_cursor: page.next.map(|c| c.encode()).unwrap_or_default(),
    }
}

/// The time a `RescheduleReq` asks for, as the rules read it.
pub fn reschedule_time(request: &pb::RescheduleReq) -> Option<String> {
    request.scheduled_at.as_ref().map(rfc3339)
}

fn domain_status(status: pb::EmailStatus) -> EmailStatus {
    match status {
        pb::EmailStatus::Unspecified | pb::EmailStatus::Queued => EmailStatus::Queued,
        pb::EmailStatus::Sending => EmailStatus::Sending,
        pb::EmailStatus::Sent => EmailStatus::Sent,
        pb::EmailStatus::Deferred => EmailStatus::Deferred,
        pb::EmailStatus::Failed => EmailStatus::Failed,
        pb::EmailStatus::Scheduled => EmailStatus::Scheduled,
        pb::EmailStatus::Canceled => EmailStatus::Canceled,
        pb::EmailStatus::Suppressed => EmailStatus::Suppressed,
        pb::EmailStatus::Bounced => EmailStatus::Bounced,
        pb::EmailStatus::Complained => EmailStatus::Complained,
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
        from: email.from.to_string(),
        to: format_list(&email.to),
        cc: format_list(&email.cc),
        bcc: format_list(&email.bcc),
        reply_to: format_list(&email.reply_to),
        attachments: email
            .attachments
            .into_iter()
            .map(|a| pb::AttachmentInfo {
                filename: a.filename,
                content_type: a.content_type,
                size: a.size,
                content_id: a.content_id.unwrap_or_default(),
            })
            .collect(),
        headers: email
            .headers
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect(),
        tags: email.tags.into_iter().collect(),
        message_id: email.message_id,
        scheduled_at: email.scheduled_at.map(timestamp),
        lane: email.lane.as_str().to_owned(),
        template_name: email
            .template
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default(),
        template_version: email
            .template
            .as_ref()
            .map_or(0, |t| u32::try_from(t.version).unwrap_or_default()),
        subject: email.subject,
        message: email.text.unwrap_or_default(),
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
        EmailStatus::Scheduled => pb::EmailStatus::Scheduled,
        EmailStatus::Canceled => pb::EmailStatus::Canceled,
        EmailStatus::Suppressed => pb::EmailStatus::Suppressed,
        EmailStatus::Bounced => pb::EmailStatus::Bounced,
        EmailStatus::Complained => pb::EmailStatus::Complained,
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
    use crate::domain::{Field, Rejected, Rules};

    use super::*;

    #[test]
    fn empty_strings_count_as_missing() {
        let partial = draft(
            pb::CreateReq {
                from: "sender@example.com".into(),
                ..Default::default()
            },
            None,
        );
        assert_eq!(partial.from.as_deref(), Some("sender@example.com"));
        assert_eq!(
            (&partial.to, &partial.html, &partial.idempotency_key),
            (&None, &None, &None)
        );
        let Err(Rejected::Invalid(violations)) =
            Rules::default().new_email(draft(pb::CreateReq::default(), None))
        else {
            panic!("an empty request is refused");
        };
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
        let mut stored = Email::example(now);
        stored.status = EmailStatus::Deferred;
        stored.attempts = 2;
        stored.last_error = Some("421 try later".into());
        stored.next_attempt_at = Some(now);
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
