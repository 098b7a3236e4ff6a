//! Events mailroom publishes for other services: status changes and dead letters. Their
//! JSON shapes are part of the contract (DESIGN.md, "Wire contracts").

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{EmailDraft, EmailId, EmailStatus, Field, NewEmail, Violation, Violations};

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

    /// Turns the event into a draft. The idempotency key is the `idempotencyKey` field,
    /// else the `Nats-Msg-Id` header (unless that only repeats the email id, which
    /// deduplicates by itself).
    pub fn into_draft(self, msg_id: Option<&str>) -> Result<EmailDraft, Violations> {
        let id = self
            .email_id
            .as_deref()
            .map(|raw| EmailId::parse(raw, Field::EmailId))
            .transpose()?;
        let idempotency_key = self.idempotency_key.or_else(|| {
            msg_id
                .filter(|msg_id| self.email_id.as_deref() != Some(*msg_id))
                .map(str::to_owned)
        });
        Ok(EmailDraft {
            from: self.from,
            to: self.to,
            subject: self.subject,
            message: self.message,
            html: self.html,
            idempotency_key,
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

/// A request to deliver a stored email, published on `mail:send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEvent {
    #[serde(rename = "emailID")]
    pub email_id: EmailId,
}

/// A status change of one email, published on `mail:status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    #[serde(rename = "emailID")]
    pub email_id: EmailId,
    pub status: EmailStatus,
    /// The delivery attempt the change belongs to; 0 before the first.
    pub attempt: i32,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// A message that could not be handled, published on `mail:errors` so nothing is
/// dropped silently. The shape is the original service's (`subject, sequence, data,
/// timestamp, error, time`) plus `deliveries` and, for binary payloads, `dataEncoding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The subject the message arrived on.
    pub subject: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// The original payload.
    pub data: Vec<u8>,
    /// When the original message was published.
    pub timestamp: DateTime<Utc>,
    /// Why it was dead-lettered.
    pub error: String,
    /// When it was dead-lettered.
    pub time: DateTime<Utc>,
    /// How many times it had been delivered.
    pub deliveries: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeadLetterWire {
    subject: String,
    sequence: u64,
    data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_encoding: Option<String>,
    timestamp: DateTime<Utc>,
    error: String,
    time: DateTime<Utc>,
    #[serde(default)]
    deliveries: i64,
}

impl DeadLetter {
    /// The JSON record: `data` as text when it is UTF-8, so it reads well in `nats sub`
    /// and logs, otherwise base64 with `"dataEncoding": "base64"`.
    pub fn to_json(&self) -> Vec<u8> {
        let (data, data_encoding) = match std::str::from_utf8(&self.data) {
            Ok(text) => (text.to_owned(), None),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&self.data),
                Some("base64".to_owned()),
            ),
        };
        let wire = DeadLetterWire {
            subject: self.subject.clone(),
            sequence: self.sequence,
            data,
            data_encoding,
            timestamp: self.timestamp,
            error: self.error.clone(),
            time: self.time,
            deliveries: self.deliveries,
        };
        serde_json::to_vec(&wire).expect("a dead letter always serialises")
    }

    pub fn from_json(json: &[u8]) -> anyhow::Result<Self> {
        let wire: DeadLetterWire = serde_json::from_slice(json)?;
        let data = match wire.data_encoding.as_deref() {
            None => wire.data.into_bytes(),
            Some("base64") => base64::engine::general_purpose::STANDARD.decode(wire.data)?,
            Some(other) => anyhow::bail!("unknown dataEncoding {other:?}"),
        };
        Ok(DeadLetter {
            subject: wire.subject,
            sequence: wire.sequence,
            data,
            timestamp: wire.timestamp,
            error: wire.error,
            time: wire.time,
            deliveries: wire.deliveries,
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
        let draft = event.into_draft(None).unwrap();
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
        let err = event.into_draft(None).unwrap_err();
        assert_eq!(err.fields().collect::<Vec<_>>(), vec![Field::EmailId]);
    }

    #[test]
    fn the_message_id_header_is_the_idempotency_key_unless_it_is_the_email_id() {
        let id = EmailId::generate().to_string();
        let event = CreateEvent {
            email_id: Some(id.clone()),
            ..Default::default()
        };
        assert_eq!(
            event.clone().into_draft(Some(&id)).unwrap().idempotency_key,
            None
        );
        assert_eq!(
            event
                .into_draft(Some("order-42"))
                .unwrap()
                .idempotency_key
                .as_deref(),
            Some("order-42")
        );
        let event = CreateEvent {
            idempotency_key: Some("field".into()),
            ..Default::default()
        };
        assert_eq!(
            event
                .into_draft(Some("header"))
                .unwrap()
                .idempotency_key
                .as_deref(),
            Some("field")
        );
    }

    fn letter(data: &[u8]) -> DeadLetter {
        DeadLetter {
            subject: "mail:create".into(),
            sequence: 7,
            data: data.to_vec(),
            timestamp: Utc::now(),
            error: "invalid event".into(),
            time: Utc::now(),
            deliveries: 1,
        }
    }

    #[test]
    fn text_payloads_stay_readable() {
        let json: serde_json::Value =
            serde_json::from_slice(&letter(b"{\"to\":1}").to_json()).unwrap();
        assert_eq!(json["data"], "{\"to\":1}");
        assert!(json.get("dataEncoding").is_none());
        for key in [
            "subject",
            "sequence",
            "timestamp",
            "error",
            "time",
            "deliveries",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn binary_payloads_are_base64_and_round_trip() {
        let original = letter(&[0xff, 0x00, 0xfe]);
        let json: serde_json::Value = serde_json::from_slice(&original.to_json()).unwrap();
        assert_eq!(json["dataEncoding"], "base64");
        assert_eq!(
            DeadLetter::from_json(&original.to_json()).unwrap(),
            original
        );
    }
}
