//! The email as mailroom stores and delivers it, and its status lifecycle.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    AttachmentMeta, Field, Header, Lane, Mailbox, NewEmail, Tags, TemplateRef, Violation,
    Violations,
};

/// An email's id: a UUID (v7 for emails mailroom creates, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailId(Uuid);

impl EmailId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id of the email created from a given stream message: the same message always
    /// gives the same id, so a redelivered create event finds the email it created
    /// before instead of creating a second one. `stream` names the stream incarnation
    /// (sequences restart when a stream is recreated). A UUID v7 on the message's
    /// publish time, so ids still sort by time.
    pub fn for_message(stream: &str, sequence: u64, published: DateTime<Utc>) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(stream.as_bytes())
            .chain_update(sequence.to_be_bytes())
            .finalize();
        let mut random = [0u8; 10];
        random.copy_from_slice(&digest[..10]);
        let millis = published.timestamp_millis().max(0) as u64;
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses an id given by a caller, naming `field` when it is not a UUID.
    pub fn parse(raw: &str, field: Field) -> Result<Self, Violations> {
        Uuid::try_parse(raw.trim())
            .map(Self)
            .map_err(|_| Violations::one(Violation::new(field, "uuid", "must be a UUID")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_always_gives_the_same_email_id() {
        let at = Utc::now();
        let id = EmailId::for_message("MAIL@2026-11-26T00:00:00Z", 7, at);
        assert_eq!(id, EmailId::for_message("MAIL@2026-11-26T00:00:00Z", 7, at));
        assert_ne!(id, EmailId::for_message("MAIL@2026-11-26T00:00:00Z", 8, at));
        assert_ne!(id, EmailId::for_message("MAIL@2026-11-27T00:00:00Z", 7, at));
        assert_eq!(id.as_uuid().get_version_num(), 7);
    }
}

impl From<Uuid> for EmailId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for EmailId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where an email is in its life: `scheduled` until its time, then `queued → sending →
/// sent`; a transient failure makes it `deferred` until its next attempt; a permanent
/// failure or exhausted retries make it `failed`; `canceled` before it was sent;
/// `suppressed` when every recipient is on the suppression list. After `sent`, a report
/// coming back makes it `bounced` (a recipient's mail failed after all) or `complained`
/// (a recipient reported it as spam).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailStatus {
    Queued,
    Sending,
    Sent,
    Deferred,
    Failed,
    Scheduled,
    Canceled,
    Suppressed,
    Bounced,
    Complained,
}

impl EmailStatus {
    pub const ALL: [EmailStatus; 10] = [
        EmailStatus::Queued,
        EmailStatus::Sending,
        EmailStatus::Sent,
        EmailStatus::Deferred,
        EmailStatus::Failed,
        EmailStatus::Scheduled,
        EmailStatus::Canceled,
        EmailStatus::Suppressed,
        EmailStatus::Bounced,
        EmailStatus::Complained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EmailStatus::Queued => "queued",
            EmailStatus::Sending => "sending",
            EmailStatus::Sent => "sent",
            EmailStatus::Deferred => "deferred",
            EmailStatus::Failed => "failed",
            EmailStatus::Scheduled => "scheduled",
            EmailStatus::Canceled => "canceled",
            EmailStatus::Suppressed => "suppressed",
            EmailStatus::Bounced => "bounced",
            EmailStatus::Complained => "complained",
        }
    }

    /// Whether the email's delivery has ended, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            EmailStatus::Sent
                | EmailStatus::Failed
                | EmailStatus::Canceled
                | EmailStatus::Suppressed
                | EmailStatus::Bounced
                | EmailStatus::Complained
        )
    }

    /// Whether the email may still be canceled: it has not begun to be sent (or its
    /// next attempt has not).
    pub fn is_cancelable(self) -> bool {
        matches!(
            self,
            EmailStatus::Scheduled | EmailStatus::Queued | EmailStatus::Deferred
        )
    }
}

impl fmt::Display for EmailStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EmailStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EmailStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown email status {s:?}"))
    }
}

/// A stored email. Attachments are here by their metadata; their bytes are read from
/// the store when the email is sent or an attachment is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub id: EmailId,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    #[serde(default)]
    pub cc: Vec<Mailbox>,
    #[serde(default)]
    pub bcc: Vec<Mailbox>,
    #[serde(default)]
    pub reply_to: Vec<Mailbox>,
    pub subject: String,
    /// The text part, when there is one.
    pub text: Option<String>,
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<AttachmentMeta>,
    #[serde(default)]
    pub headers: Vec<Header>,
    #[serde(default)]
    pub tags: Tags,
    pub message_id: String,
    /// When it was to be sent, if it was scheduled.
    #[serde(default)]
    pub scheduled_at: Option<DateTime<Utc>>,
    /// The lane it is queued and sent in.
    #[serde(default)]
    pub lane: Lane,
    /// The template its subject and bodies were rendered from.
    #[serde(default)]
    pub template: Option<TemplateRef>,
    pub status: EmailStatus,
    /// Delivery attempts made, ever.
    pub attempts: i32,
    /// The value of `attempts` when the current retry budget began (0, or when the email
    /// was redriven from the dead letters).
    #[serde(default)]
    pub retry_base: i32,
    pub last_error: Option<String>,
    pub idempotency_key: Option<String>,
    /// The client the idempotency key belongs to ('' for none).
    #[serde(default)]
    pub idempotency_client: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl Email {
    /// A new email as stored when it is accepted: queued and due now, or scheduled and
    /// due at its time.
    pub fn queued(new: &NewEmail, at: DateTime<Utc>) -> Email {
        let (status, due) = match new.scheduled_at {
            Some(time) if time > at => (EmailStatus::Scheduled, time),
            _ => (EmailStatus::Queued, at),
        };
        Email {
            id: new.id,
            from: new.from.clone(),
            to: new.to.clone(),
            cc: new.cc.clone(),
            bcc: new.bcc.clone(),
            reply_to: new.reply_to.clone(),
            subject: new.subject.clone(),
            text: new.text.clone(),
            html: new.html.clone(),
            attachments: new.attachments.iter().map(|a| a.meta.clone()).collect(),
            headers: new.headers.clone(),
            tags: new.tags.clone(),
            message_id: new.message_id.clone(),
            scheduled_at: new.scheduled_at,
            lane: new.lane,
            template: new.template.clone(),
            status,
            attempts: 0,
            retry_base: 0,
            last_error: None,
            idempotency_key: new.idempotency_key.clone(),
            idempotency_client: new.idempotency_client.clone(),
            created_at: at,
            updated_at: at,
            sent_at: None,
            next_attempt_at: Some(due),
        }
    }

    /// Whether this stored email carries the same content as a new request, which decides
    /// between an idempotent replay and a conflict. (The Message-ID follows from the id,
    /// so it is left out.)
    pub fn has_same_content(&self, new: &NewEmail) -> bool {
        self.from == new.from
            && self.to == new.to
            && self.cc == new.cc
            && self.bcc == new.bcc
            && self.reply_to == new.reply_to
            && self.subject == new.subject
            && self.text == new.text
            && self.html == new.html
            && self.headers == new.headers
            && self.tags == new.tags
            && self.scheduled_at == new.scheduled_at
            && self.lane == new.lane
            && self.template == new.template
            && self.attachments.len() == new.attachments.len()
            && self
                .attachments
                .iter()
                .zip(&new.attachments)
                .all(|(stored, new)| *stored == new.meta)
    }

    /// Every recipient of the envelope: to, cc and bcc.
    pub fn recipients(&self) -> impl Iterator<Item = &Mailbox> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }
}

#[cfg(test)]
impl Email {
    /// A plain queued email from sender@example.com to alice@example.com, for tests.
    pub(crate) fn example(at: DateTime<Utc>) -> Email {
        let new = super::Rules::default()
            .new_email(super::EmailDraft {
                from: Some("sender@example.com".into()),
                to: Some(super::AddressList::Text("alice@example.com".into())),
                subject: Some("Subject line".into()),
                message: Some("The message".into()),
                ..Default::default()
            })
            .expect("a valid draft");
        Email::queued(&new, at)
    }
}
