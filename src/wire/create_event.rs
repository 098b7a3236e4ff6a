//! The `mail:create` event: what any producer (or the REST API's asynchronous path)
//! publishes to have an email created. The same JSON as a REST create body, plus the id
//! the email must get and its idempotency key.

use serde::{Deserialize, Serialize};

use crate::domain::{EmailDraft, EmailId, Field, NewEmail, Violation, Violations};

/// A request to create an email, published on `mail:create` by any producer or by the
/// REST API's asynchronous path. Unknown fields are refused, as on REST; `createdAt`,
/// which the original service's events carried, is accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEvent {
    /// The id the email must get; optional. A string, so that a bad id is reported as a
    /// violation of `emailID` rather than as an undecodable event.
    #[serde(rename = "emailID", default, skip_serializing_if = "Option::is_none")]
    pub email_id: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing)]
    pub created_at: Option<serde_json::Value>,
}

impl CreateEvent {
    pub fn from_new_email(email: &NewEmail) -> Self {
        CreateEvent {
            email_id: Some(email.id.to_string()),
            from: Some(email.from.to_string()),
            to: Some(email.to.to_string()),
            subject: Some(email.subject.clone()),
            message: Some(email.message.clone()),
            html: email.html.clone(),
            idempotency_key: email.idempotency_key.clone(),
            created_at: None,
        }
    }

    /// Turns the event into a draft (the idempotency key is the event's own field).
    pub fn into_draft(self) -> Result<EmailDraft, Violations> {
        let id = self
            .email_id
            .as_deref()
            .map(|raw| EmailId::parse(raw, Field::EmailId))
            .transpose()?;
        Ok(EmailDraft {
            from: self.from,
            to: self.to,
            subject: self.subject,
            message: self.message,
            html: self.html,
            idempotency_key: self.idempotency_key,
            id,
        })
    }

    /// Decodes an event, naming what is wrong when it cannot be decoded.
    pub fn decode(payload: &[u8]) -> Result<Self, Violations> {
        serde_json::from_slice(payload).map_err(|err| {
            Violations::one(Violation::new(
                Field::Body,
                "malformed",
                format!("not a valid create event: {err}"),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_event_from_the_original_service_decodes() {
        let event = CreateEvent::decode(
            br#"{"from":"a@example.com","to":"b@example.com","subject":"s","message":"m","createdAt":"2021-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let draft = event.into_draft().unwrap();
        assert_eq!(draft.to.as_deref(), Some("b@example.com"));
        assert_eq!(draft.id, None);
    }

    #[test]
    fn unknown_fields_in_a_create_event_are_refused() {
        let err =
            CreateEvent::decode(br#"{"to":"b@example.com","bcc":"x@example.com"}"#).unwrap_err();
        assert!(err.to_string().contains("bcc"), "{err}");
    }

    #[test]
    fn a_bad_email_id_in_a_create_event_is_named() {
        let event = CreateEvent {
            email_id: Some("nope".into()),
            ..Default::default()
        };
        let err = event.into_draft().unwrap_err();
        assert_eq!(err.fields().collect::<Vec<_>>(), vec![Field::EmailId]);
    }
}
