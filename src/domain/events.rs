//! Events mailroom publishes for other services: status changes and dead letters. Their
//! JSON shapes are part of the public contract: consumers of `mail:status` and
//! `mail:errors` read them (see the README's NATS section).

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{EmailId, EmailStatus, Tags};

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
    /// The email's tags, so consumers can route events without reading the email.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Its Message-ID, sender, recipients (`to`, header form) and subject, for the
    /// same reason (absent from events of older versions).
    #[serde(rename = "messageId", default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
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
