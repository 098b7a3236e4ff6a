//! Webhooks as the domain sees them: the event types an endpoint subscribes to, the
//! body it receives for a status change, its signing secret and the Standard Webhooks
//! signature (<https://www.standardwebhooks.com/>, version `v1`).

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::{EmailId, EmailStatus, StatusEvent, Tags};

/// What happened to an email, as a webhook names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Queued,
    Scheduled,
    Sent,
    Deferred,
    Failed,
    Canceled,
    Suppressed,
    Bounced,
    Complained,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        EventType::Queued,
        EventType::Scheduled,
        EventType::Sent,
        EventType::Deferred,
        EventType::Failed,
        EventType::Canceled,
        EventType::Suppressed,
        EventType::Bounced,
        EventType::Complained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Queued => "email.queued",
            EventType::Scheduled => "email.scheduled",
            EventType::Sent => "email.sent",
            EventType::Deferred => "email.deferred",
            EventType::Failed => "email.failed",
            EventType::Canceled => "email.canceled",
            EventType::Suppressed => "email.suppressed",
            EventType::Bounced => "email.bounced",
            EventType::Complained => "email.complained",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The event a status change is, if any: `sending` is no event, only a step.
    pub fn of_status(status: EmailStatus) -> Option<EventType> {
        match status {
            EmailStatus::Queued => Some(EventType::Queued),
            EmailStatus::Scheduled => Some(EventType::Scheduled),
            EmailStatus::Sent => Some(EventType::Sent),
            EmailStatus::Deferred => Some(EventType::Deferred),
            EmailStatus::Failed => Some(EventType::Failed),
            EmailStatus::Canceled => Some(EventType::Canceled),
            EmailStatus::Suppressed => Some(EventType::Suppressed),
            EmailStatus::Bounced => Some(EventType::Bounced),
            EmailStatus::Complained => Some(EventType::Complained),
            EmailStatus::Sending => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The events an endpoint wants: some types, or every one (`"*"`), including types
/// added after it subscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSelection {
    All,
    Only(Vec<EventType>),
}

/// The word that subscribes to every event.
pub const ALL_EVENTS: &str = "*";

impl EventSelection {
    /// Reads a list of event names, answering the first unknown one on failure.
    pub fn parse(names: &[String]) -> Result<EventSelection, String> {
        if names.iter().any(|name| name == ALL_EVENTS) {
            return Ok(EventSelection::All);
        }
        let mut types = Vec::with_capacity(names.len());
        for name in names {
            let event = EventType::parse(name).ok_or_else(|| name.clone())?;
            if !types.contains(&event) {
                types.push(event);
            }
        }
        Ok(EventSelection::Only(types))
    }

    pub fn matches(&self, event: EventType) -> bool {
        match self {
            EventSelection::All => true,
            EventSelection::Only(types) => types.contains(&event),
        }
    }

    /// The names, as stored and shown.
    pub fn names(&self) -> Vec<String> {
        match self {
            EventSelection::All => vec![ALL_EVENTS.to_owned()],
            EventSelection::Only(types) => types.iter().map(|t| t.as_str().to_owned()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, EventSelection::Only(types) if types.is_empty())
    }
}

/// The body of a webhook request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub data: EventData,
}

/// What an event tells about its email.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventData {
    #[serde(rename = "emailID")]
    pub email_id: EmailId,
    pub status: EmailStatus,
    pub attempt: i32,
    pub error: Option<String>,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub subject: Option<String>,
    pub tags: Tags,
}

impl WebhookEvent {
    /// The webhook event of a status change, if it is one.
    pub fn of_status(event: &StatusEvent) -> Option<(EventType, WebhookEvent)> {
        let kind = EventType::of_status(event.status)?;
        Some((
            kind,
            WebhookEvent {
                kind: kind.as_str().to_owned(),
                timestamp: rfc3339(event.at),
                data: EventData {
                    email_id: event.email_id,
                    status: event.status,
                    attempt: event.attempt,
                    error: event.error.clone(),
                    message_id: event.message_id.clone(),
                    from: event.from.clone(),
                    to: event.to.clone(),
                    subject: event.subject.clone(),
                    tags: event.tags.clone(),
                },
            },
        ))
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An endpoint's signing secret: `whsec_` and the base64 of its bytes, as Standard
/// Webhooks libraries take it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";

impl WebhookSecret {
    /// 32 random bytes (the specification asks for 24 to 64).
    pub fn generate() -> WebhookSecret {
        let mut bytes = vec![0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        WebhookSecret(bytes)
    }

    /// Reads a stored secret.
    pub fn parse(text: &str) -> Option<WebhookSecret> {
        let encoded = text.strip_prefix(SECRET_PREFIX)?;
        BASE64.decode(encoded).ok().map(WebhookSecret)
    }

    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }

    /// The `v1` signature of a request: HMAC-SHA256, keyed with the secret's bytes, over
    /// `{id}.{timestamp}.{body}`, in base64.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// The `webhook-signature` header: a signature by each secret in use, space separated
/// (the new one and, for a while after a rotation, the old one).
pub fn signature_header(
    secrets: &[&WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_one_the_specification_gives() {
        // The test vector the Standard Webhooks libraries share.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_generated_secret_reads_back_and_holds_at_least_24_bytes() {
        let secret = WebhookSecret::generate();
        let text = secret.expose();
        assert!(text.starts_with("whsec_"));
        let decoded = BASE64.decode(&text[6..]).unwrap();
        assert!(decoded.len() >= 24);
        assert_eq!(WebhookSecret::parse(&text), Some(secret));
        assert_eq!(WebhookSecret::parse("not-a-secret"), None);
    }

    #[test]
    fn both_signatures_go_in_the_header_after_a_rotation() {
        let (new, old) = (WebhookSecret::generate(), WebhookSecret::generate());
        let header = signature_header(&[&new, &old], "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, [new.sign("id", 1, b"{}"), old.sign("id", 1, b"{}")]);
    }

    #[test]
    fn a_selection_reads_names_and_the_wildcard() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let sent = EventSelection::parse(&names(&["email.sent", "email.sent"])).unwrap();
        assert_eq!(sent, EventSelection::Only(vec![EventType::Sent]));
        assert!(sent.matches(EventType::Sent) && !sent.matches(EventType::Failed));
        let all = EventSelection::parse(&names(&["email.sent", "*"])).unwrap();
        assert!(EventType::ALL.iter().all(|t| all.matches(*t)));
        assert_eq!(all.names(), ["*"]);
        assert_eq!(
            EventSelection::parse(&names(&["email.sent", "email.opened"])),
            Err("email.opened".into())
        );
    }

    #[test]
    fn sending_is_no_event_and_every_other_status_is_one() {
        assert_eq!(EventType::of_status(EmailStatus::Sending), None);
        for status in EmailStatus::ALL {
            if status != EmailStatus::Sending {
                let event = EventType::of_status(status).unwrap();
                assert_eq!(event.as_str(), format!("email.{}", status.as_str()));
            }
        }
    }
}
