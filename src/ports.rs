//! The small traits the use cases need from the outside world. PostgreSQL, Redis,
//! JetStream and SMTP adapters (in `adapters/`) implement them; tests may too.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    domain::{
        Address, Cursor, DeadLetter, Email, EmailId, EmailStatus, Lane, ListPage, ListQuery,
        NewEmail, NewSuppression, SearchPage, SearchQuery, StatusEvent, SuppressedAddress,
        Suppression, SuppressionReason, Template, TemplateContent, TemplateKey, Verdict,
    },
    error::Result,
};

/// What an insert found.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// A new row.
    Created(Email),
    /// A row with the same id or idempotency key was already there; it is returned as is.
    Existing(Email),
}

/// What trying to take an email for delivery found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The email is now `sending`, leased to the caller; `attempts` counts this attempt.
    Claimed(Email),
    /// The email is `sent` or `failed`: nothing to do.
    Finished(Email),
    /// Another worker holds the lease, or a retry is not due yet; ask again after this.
    NotDue(Duration),
    /// No such email.
    Missing,
}

/// How a delivery attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Sent,
    Transient,
    Permanent,
    /// Every recipient was on the suppression list: no SMTP conversation at all.
    Suppressed,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 4] = [
        AttemptOutcome::Sent,
        AttemptOutcome::Transient,
        AttemptOutcome::Permanent,
        AttemptOutcome::Suppressed,
    ];

    /// The outcomes of an SMTP conversation (`mailroom_smtp_sends_total`).
    pub const SMTP: [AttemptOutcome; 3] = [
        AttemptOutcome::Sent,
        AttemptOutcome::Transient,
        AttemptOutcome::Permanent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Sent => "sent",
            AttemptOutcome::Transient => "transient",
            AttemptOutcome::Permanent => "permanent",
            AttemptOutcome::Suppressed => "suppressed",
        }
    }

    pub fn parse(raw: &str) -> Option<AttemptOutcome> {
        AttemptOutcome::ALL.into_iter().find(|o| o.as_str() == raw)
    }
}

/// One delivery attempt, as recorded in `email_attempts`.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    pub smtp_code: Option<u16>,
    pub smtp_text: String,
    /// Recipients the server refused in this attempt, with what it said, and those
    /// left out because they are suppressed.
    pub refused: Vec<RefusedRecipient>,
    /// The relay that answered, or was tried last (`None`: no relay was reached).
    pub relay: Option<String>,
}

/// A recipient the SMTP server would not take, or one mailroom did not send to because
/// it is on the suppression list (`suppressed` set, no code).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefusedRecipient {
    pub address: String,
    pub code: Option<u16>,
    pub text: String,
    /// Why it is on the suppression list, when that is why it was left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<String>,
}

/// Where an email goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Sent,
    Deferred {
        next_attempt_at: DateTime<Utc>,
    },
    Failed,
    /// Every recipient is suppressed.
    Suppressed,
}

/// An attempt made, and where it leaves its email.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub id: EmailId,
    pub record: AttemptRecord,
    pub after: AfterAttempt,
    pub error: Option<String>,
    /// Recipients whose refusal means they can never be mailed: added to the suppression
    /// list in the transaction that records the attempt.
    pub suppress: Vec<NewSuppression>,
}

/// What asking to cancel or reschedule an email found.
#[derive(Debug, Clone)]
pub enum Change {
    /// Done: the email as it is now.
    Done(Email),
    /// Too late: the email has moved on (sending, sent, failed, canceled, or no longer
    /// scheduled); as it is now.
    TooLate(Email),
    Missing,
}

/// A batch's idempotency key, and the digest of what the batch asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchKey {
    /// The client (API key name) the key belongs to; '' for none.
    pub client: String,
    pub key: String,
    pub digest: String,
}

/// What storing a batch found.
#[derive(Debug, Clone)]
pub enum BatchInserted {
    /// Stored now, in order.
    Created(Vec<Email>),
    /// The key was used before for the same batch: its emails, in order.
    Replayed(Vec<Email>),
    /// The key was used before for another batch (whose first email this is); nothing
    /// was stored.
    Conflict { existing: EmailId },
}

/// Scheduled emails that fell due, and when the next one does.
#[derive(Debug, Clone, Default)]
pub struct Released {
    /// Now `queued`.
    pub emails: Vec<Email>,
    /// The time of the earliest email still scheduled, if any.
    pub next_due: Option<DateTime<Utc>>,
}

/// What saving a template found.
#[derive(Debug, Clone)]
pub enum TemplateSaved {
    Saved(Template),
    /// Another template has that name.
    NameTaken,
    /// No template has that id or name (saving a new version).
    Missing,
}

/// Stored templates, each with every version it had.
#[async_trait]
pub trait TemplateStore: Send + Sync + 'static {
    /// Stores a new template as version 1.
    async fn create(
        &self,
        id: Uuid,
        name: &str,
        content: &TemplateContent,
    ) -> Result<TemplateSaved>;
    /// Stores the next version of a template.
    async fn add_version(
        &self,
        key: &TemplateKey,
        content: &TemplateContent,
    ) -> Result<TemplateSaved>;
    /// A template's version, the newest when `version` is `None`.
    async fn get(&self, key: &TemplateKey, version: Option<i32>) -> Result<Option<Template>>;
    /// The templates' newest versions, newest template first, from the cursor on; and
    /// where the next page starts.
    async fn list(
        &self,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Template>, Option<Cursor>)>;
    /// Deletes a template and its versions; false when there was none.
    async fn delete(&self, key: &TemplateKey) -> Result<bool>;
}

/// How many emails wait, and how long the most overdue one has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Emails queued, deferred and scheduled, each counted up to the count's limit.
    pub pending: Vec<(EmailStatus, i64)>,
    /// How long the most overdue email that is queued, deferred or scheduled has waited
    /// since it fell due (on the store's clock, which set the due times); zero when none
    /// is due.
    pub oldest_waited: Duration,
}

/// A report about one email, to record: one row per recipient it names, the status it
/// moves the email to, and the addresses it suppresses, in one transaction.
#[derive(Debug, Clone)]
pub struct ReportToRecord {
    pub email_id: EmailId,
    /// Of the raw report: posting the same report again records nothing.
    pub digest: String,
    pub recipients: Vec<ReportedRow>,
    /// The status the email moves to, from one of `from`; `error` becomes its last error.
    pub status_change: Option<StatusChange>,
    pub suppress: Vec<NewSuppression>,
}

#[derive(Debug, Clone)]
pub struct ReportedRow {
    pub recipient: String,
    pub verdict: Verdict,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StatusChange {
    pub from: Vec<EmailStatus>,
    pub to: EmailStatus,
    pub error: String,
}

/// What recording a report found.
#[derive(Debug, Clone)]
pub enum ReportRecorded {
    /// Recorded; the email as it is now, and whether its status changed.
    Recorded { email: Email, changed: bool },
    /// This very report was recorded before: nothing changed.
    Duplicate(Email),
    /// The email is gone.
    Missing,
}

/// The suppression list, and the reports that feed it.
#[async_trait]
pub trait SuppressionStore: Send + Sync + 'static {
    /// Adds an entry; an address already there keeps its entry, which is answered with
    /// `false`.
    async fn add(&self, entry: &NewSuppression) -> Result<(Suppression, bool)>;
    async fn get(&self, address: &SuppressedAddress) -> Result<Option<Suppression>>;
    /// Removes an entry; false when there was none.
    async fn delete(&self, address: &SuppressedAddress) -> Result<bool>;
    /// Entries newest first, from the cursor on, of one reason or all; and where the
    /// next page starts.
    async fn list(
        &self,
        reason: Option<SuppressionReason>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Suppression>, Option<Cursor>)>;
    /// The entries of those of `addresses` that are suppressed.
    async fn suppressed(&self, addresses: &[SuppressedAddress]) -> Result<Vec<Suppression>>;
    async fn record_report(&self, report: &ReportToRecord) -> Result<ReportRecorded>;
}

#[async_trait]
pub trait EmailStore: Send + Sync + 'static {
    /// Stores new emails as `queued`, in one transaction, answering one [`Inserted`] per
    /// email in order. When an id or idempotency key is already taken (also by an email
    /// earlier in the same batch), answers the stored email instead of failing.
    async fn insert(&self, emails: &[NewEmail]) -> Result<Vec<Inserted>>;
    /// Stores a batch in one transaction, all or nothing, under its key if it has one.
    async fn insert_batch(
        &self,
        emails: &[NewEmail],
        key: Option<&BatchKey>,
    ) -> Result<BatchInserted>;
    async fn get(&self, id: EmailId) -> Result<Option<Email>>;
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage<Email>>;
    /// Emails matching every filter, newest first, from the cursor on.
    async fn list(&self, query: &ListQuery) -> Result<ListPage<Email>>;
    /// Moves up to `limit` scheduled emails whose time has come to `queued`; each is
    /// released to one caller only, however many instances ask.
    async fn release_due(&self, limit: i64) -> Result<Released>;
    /// Cancels an email that has not begun to be sent (scheduled, queued, deferred).
    async fn cancel(&self, id: EmailId) -> Result<Change>;
    /// Moves a scheduled email to another time.
    async fn reschedule(&self, id: EmailId, at: DateTime<Utc>) -> Result<Change>;
    /// Takes emails for one delivery attempt each, for at most `lease`: only one worker of
    /// any instance can hold an email at a time. One [`Claim`] per id, in order; an id
    /// repeated in the batch is claimed once, its repeats are not due.
    async fn claim(&self, ids: &[EmailId], lease: Duration) -> Result<Vec<Claim>>;
    /// Records attempts and moves their emails on, in one transaction; answers each
    /// email as it is afterwards, in order.
    async fn finish_attempts(&self, finished: &[FinishedAttempt]) -> Result<Vec<Email>>;
    /// Emails whose delivery should have moved on more than `age` ago (a lost send event,
    /// a crashed worker). Each is returned to one caller only, then not again for `age`,
    /// however many instances ask. Each with its lane, where its send event goes.
    async fn take_stranded(&self, age: Duration, limit: i64) -> Result<Vec<(EmailId, Lane)>>;
    /// Queues a `failed` email again with a fresh retry budget; `None` when it is not
    /// failed (already queued, deferred, sending or sent).
    async fn requeue(&self, id: EmailId) -> Result<Option<Email>>;
    /// The attempts of an email, oldest first.
    async fn attempts(&self, id: EmailId) -> Result<Vec<AttemptRecord>>;
    /// Counts the emails waiting, reading at most `limit` unfinished ones.
    async fn queue_stats(&self, limit: i64) -> Result<QueueStats>;
    /// The bytes of an email's attachments, in order (what sending it needs).
    async fn attachment_contents(&self, id: EmailId) -> Result<Vec<Bytes>>;
    /// One attachment's bytes; `None` when the email or the attachment does not exist.
    async fn attachment_content(&self, id: EmailId, index: usize) -> Result<Option<Bytes>>;
    async fn ping(&self) -> Result<()>;
}

/// A read-through cache. Errors are the caller's to log and ignore: PostgreSQL has the
/// truth.
#[async_trait]
pub trait EmailCache: Send + Sync + 'static {
    async fn get(&self, id: EmailId) -> anyhow::Result<Option<Email>>;
    /// Stores the email's new state, replacing whatever was cached (after a write).
    async fn put(&self, email: &Email) -> anyhow::Result<()>;
    /// Caches the email only when nothing is cached for it (after a read). A reader's
    /// copy may be older than a writer's, so it must never replace one.
    async fn fill(&self, email: &Email) -> anyhow::Result<()>;
    async fn ping(&self) -> anyhow::Result<()>;
}

/// Why a send event is being published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendReason {
    /// Right after the email was stored: deduplicated by the email id.
    Created,
    /// Again, by the reconciler: must not be dropped as a duplicate of the first.
    Reconciled,
}

/// What became of a request to create an email asynchronously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRequest {
    /// The `mail:create` event is in the stream.
    Published,
    /// The event would be larger than the bus or the create workers take; nothing was
    /// published.
    TooLarge,
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Asks for an email to be created asynchronously (the `mail:create` event).
    async fn request_create(&self, email: &NewEmail) -> Result<CreateRequest>;
    /// Asks the send workers of `lane` to deliver an email (the `mail:send` event, or
    /// `mail:send.bulk` for bulk mail).
    async fn request_send(&self, id: EmailId, lane: Lane, reason: SendReason) -> Result<()>;
    async fn publish_status(&self, event: &StatusEvent) -> Result<()>;
    /// Publishes a dead letter; `dedup_key` makes a repeated publish of the same letter
    /// a no-op.
    async fn publish_dead_letter(&self, letter: &DeadLetter, dedup_key: &str) -> Result<()>;
    async fn ping(&self) -> Result<()>;
}

/// What the SMTP server said when it took a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    pub text: String,
    /// Recipients refused while the others were accepted: the message went to the rest.
    pub refused: Vec<RefusedRecipient>,
    /// The relay that took it (`smtp.relays`).
    pub relay: Option<String>,
}

/// Whether retrying a failed send can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A 4xx reply, a refused or dropped connection, a timeout.
    Transient,
    /// A 5xx reply or a message the server will never take.
    Permanent,
}

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} SMTP failure: {text}", match kind { FailureKind::Transient => "transient", FailureKind::Permanent => "permanent" })]
pub struct SendFailure {
    pub kind: FailureKind,
    pub code: Option<u16>,
    pub text: String,
    /// When every recipient was refused: each of them, with the server's reply.
    pub refused: Vec<RefusedRecipient>,
    /// The relay that answered, or was tried last; `None` when none was reached.
    pub relay: Option<String>,
}

impl SendFailure {
    pub fn transient(code: Option<u16>, text: impl Into<String>) -> Self {
        SendFailure {
            kind: FailureKind::Transient,
            code,
            text: text.into(),
            refused: Vec::new(),
            relay: None,
        }
    }

    pub fn permanent(code: Option<u16>, text: impl Into<String>) -> Self {
        SendFailure {
            kind: FailureKind::Permanent,
            code,
            text: text.into(),
            refused: Vec::new(),
            relay: None,
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// This failure, said by `relay`.
    pub fn via(mut self, relay: &str) -> Self {
        self.relay = Some(relay.to_owned());
        self
    }
}

/// One relay as a health check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayCheck {
    pub name: String,
    /// `None` when it answered.
    pub error: Option<String>,
    /// Left out of sends after failed connections (`smtp.relay_cooldown`).
    pub cooling_down: bool,
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends the email to `recipients` (its envelope: the email's recipients less the
    /// suppressed ones, each once), whose attachments' bytes are `attachments` (in
    /// order). The headers name every recipient but Bcc, as the email does.
    async fn send(
        &self,
        email: &Email,
        recipients: &[Address],
        attachments: &[Bytes],
    ) -> std::result::Result<SmtpReply, SendFailure>;
    /// Whether each relay answers within `within`, in the order they are configured.
    async fn check(&self, within: std::time::Duration) -> Vec<RelayCheck>;
}
