//! The REST wire format: camelCase JSON, field names as in the original service.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    domain::{self, Email, SearchPage},
    wire::Pairs,
};

/// Where an email is in its life: `scheduled` until its time, then `queued → sending →
/// sent`; a transient failure makes it `deferred` until its next attempt; a permanent
/// failure or exhausted retries make it `failed`; `canceled` before it was sent;
/// `suppressed` when every recipient is on the suppression list. After `sent`, a report
/// coming back makes it `bounced` or `complained`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

impl From<domain::EmailStatus> for EmailStatus {
    fn from(status: domain::EmailStatus) -> Self {
        match status {
            domain::EmailStatus::Queued => EmailStatus::Queued,
            domain::EmailStatus::Sending => EmailStatus::Sending,
            domain::EmailStatus::Sent => EmailStatus::Sent,
            domain::EmailStatus::Deferred => EmailStatus::Deferred,
            domain::EmailStatus::Failed => EmailStatus::Failed,
            domain::EmailStatus::Scheduled => EmailStatus::Scheduled,
            domain::EmailStatus::Canceled => EmailStatus::Canceled,
            domain::EmailStatus::Suppressed => EmailStatus::Suppressed,
            domain::EmailStatus::Bounced => EmailStatus::Bounced,
            domain::EmailStatus::Complained => EmailStatus::Complained,
        }
    }
}

/// A stored email and where its delivery stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailResponse {
    #[serde(rename = "emailID")]
    pub email_id: Uuid,
    /// The sender, as `Name <user@domain>` or `user@domain`.
    pub from: String,
    /// The recipients in header form (`a@x.example, "Doe, Jo" <jo@y.example>`).
    pub to: String,
    /// In header form; null when there are none.
    pub cc: Option<String>,
    /// In header form; null when there are none.
    pub bcc: Option<String>,
    /// In header form; null when there are none.
    pub reply_to: Option<String>,
    pub subject: String,
    /// The text part; null for an HTML-only email.
    pub message: Option<String>,
    pub html: Option<String>,
    /// The attachments, without their bytes (`GET …/attachments/{index}` has those).
    pub attachments: Vec<AttachmentResponse>,
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub headers: Pairs,
    pub tags: std::collections::BTreeMap<String, String>,
    /// The Message-ID header of the delivered message, `<emailID@domain>`.
    pub message_id: String,
    /// When it was to be sent, if it was scheduled.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// `transactional` or `bulk`: the lane it is queued and sent in.
    #[schema(pattern = "^(transactional|bulk)$", example = "transactional")]
    pub lane: String,
    /// The stored template its subject and bodies were rendered from.
    pub template: Option<TemplateUsed>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: EmailStatus,
    /// Delivery attempts made so far.
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the next attempt is due (queued and deferred emails).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
}

/// The template an email was rendered from: editing the template later changes
/// nothing in the email.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateUsed {
    #[schema(example = "welcome")]
    pub name: String,
    #[schema(example = 2)]
    pub version: i32,
}

/// An attachment of a stored email.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentResponse {
    pub filename: String,
    pub content_type: String,
    /// Bytes, decoded.
    pub size: u64,
    /// Set for inline parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

impl From<&Email> for EmailResponse {
    fn from(email: &Email) -> Self {
        let list = |mailboxes: &[domain::Mailbox]| {
            (!mailboxes.is_empty()).then(|| domain::format_list(mailboxes))
        };
        EmailResponse {
            email_id: email.id.as_uuid(),
            from: email.from.to_string(),
            to: domain::format_list(&email.to),
            cc: list(&email.cc),
            bcc: list(&email.bcc),
            reply_to: list(&email.reply_to),
            subject: email.subject.clone(),
            message: email.text.clone(),
            html: email.html.clone(),
            attachments: email
                .attachments
                .iter()
                .map(|a| AttachmentResponse {
                    filename: a.filename.clone(),
                    content_type: a.content_type.clone(),
                    size: a.size,
                    content_id: a.content_id.clone(),
                })
                .collect(),
            headers: Pairs(
                email
                    .headers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            ),
            tags: email.tags.clone(),
            message_id: email.message_id.clone(),
            scheduled_at: email.scheduled_at,
            lane: email.lane.as_str().to_owned(),
            template: email.template.as_ref().map(|t| TemplateUsed {
                name: t.name.clone(),
                version: t.version,
            }),
            created_at: email.created_at,
            updated_at: email.updated_at,
            status: email.status.into(),
            attempts: email.attempts,
            sent_at: email.sent_at,
            last_error: email.last_error.clone(),
            next_attempt_at: email.next_attempt_at,
            idempotency_key: email.idempotency_key.clone(),
        }
    }
}

/// An email accepted for asynchronous creation (`Prefer: respond-async`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AcceptedResponse {
    /// The id the email will be stored under.
    #[serde(rename = "emailID")]
    pub email_id: Uuid,
    /// Always `accepted`.
    pub status: String,
}

/// One page of search results, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchResponse {
    /// Matches: all of them when `totalCountExact`, otherwise a lower bound (counting
    /// stops at the configured `search.count_limit`).
    pub total_count: i64,
    /// Whether `totalCount` (and so `totalPages`) is exact. False when the search matches
    /// more emails than the count limit.
    pub total_count_exact: bool,
    /// Pages of `size` holding `totalCount` matches; a lower bound when the count is not
    /// exact.
    pub total_pages: i64,
    pub page: u32,
    pub size: u32,
    /// Whether another match follows this page.
    pub has_more: bool,
    pub emails: Vec<EmailResponse>,
}

impl From<SearchPage<Email>> for SearchResponse {
    fn from(page: SearchPage<Email>) -> Self {
        SearchResponse {
            total_count: page.total_count,
            total_count_exact: page.total_exact,
            total_pages: page.total_pages(),
            page: page.page,
            size: page.size,
            has_more: page.has_more,
            emails: page.items.iter().map(EmailResponse::from).collect(),
        }
    }
}

/// Search parameters; numbers are read as text so a bad one gets a clear message.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find in the recipient, subject or message (web-search syntax: quotes,
    /// `or`, `-word`), without NUL characters. Empty lists every email.
    #[param(max_length = 256, pattern = r"^[^\u0000]*$")]
    pub search: Option<String>,
    /// Page number, from 1 (default 1).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    pub page: Option<String>,
    /// Page size, 1 to 100 (default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub size: Option<String>,
}

/// The state of one dependency.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DependencyHealth {
    /// The dependency's name: postgres, nats, redis or smtp.
    pub name: String,
    /// `up` or `down`.
    pub status: String,
    /// Whether mailroom needs it to serve requests (readiness).
    pub required: bool,
}

/// Health and readiness: one entry per dependency.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok` when every dependency is up, `degraded` when an optional one is down,
    /// `unavailable` when a required one is down.
    pub status: String,
    pub dependencies: Vec<DependencyHealth>,
    /// Each SMTP relay (`/health` only; `/ready` does not connect to them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<RelayHealth>,
}

/// One SMTP relay of `smtp.relays`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RelayHealth {
    pub name: String,
    /// `up` when it answered a connection test, else `down`.
    #[schema(example = "up")]
    pub status: String,
    /// Left out of sends after failed connections, until `smtp.relay_cooldown` has passed.
    #[serde(rename = "coolingDown")]
    pub cooling_down: bool,
}

/// Several emails, stored together or not at all.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"emails": [
    {"from": "Acme <news@acme.example>", "to": "alice@example.com",
     "subject": "The December issue", "message": "Hello Alice", "tags": {"campaign": "dec"}},
    {"from": "Acme <news@acme.example>", "to": ["Bob <bob@example.com>"],
     "subject": "The December issue", "html": "<p>Hello Bob</p>",
     "scheduledAt": "2026-12-24T09:00:00+01:00"}
]}))]
pub struct BatchRequest {
    /// 1 to `limits.max_batch` (100) emails, each as `POST /api/v1/email` takes one.
    #[schema(min_items = 1, max_items = 100)]
    pub emails: Vec<crate::wire::CreateEmail>,
}

/// The emails of a batch, in the order of the request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub emails: Vec<EmailResponse>,
}

/// A new time for a scheduled email.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RescheduleRequest {
    /// RFC 3339 with an offset, at most `limits.max_schedule_ahead` ahead; a time
    /// already past sends the email at once.
    #[schema(value_type = String, format = DateTime, example = "2026-12-24T09:00:00+01:00")]
    pub scheduled_at: Option<String>,
}

/// Listing filters; all optional, all combined.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ListParams {
    /// Only emails in this status.
    #[param(value_type = Option<EmailStatus>)]
    pub status: Option<String>,
    /// Only emails with this tag, as `name:value`.
    #[param(example = "category:invoice")]
    pub tag: Option<String>,
    /// Only emails with this address among their To recipients (case aside).
    pub to: Option<String>,
    /// Only emails from this address (case aside).
    pub from: Option<String>,
    /// Only emails created at or after this time (RFC 3339 with an offset).
    #[param(value_type = Option<String>, format = DateTime)]
    pub created_after: Option<String>,
    /// Only emails created before this time (RFC 3339 with an offset).
    #[param(value_type = Option<String>, format = DateTime)]
    pub created_before: Option<String>,
    /// Words to find in the recipient, subject or message (web-search syntax).
    #[param(max_length = 256)]
    pub search: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// Where to continue: the `nextCursor` of the page before.
    pub cursor: Option<String>,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    pub emails: Vec<EmailResponse>,
    /// Pass it as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The delivery attempts of an email, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptsResponse {
    pub attempts: Vec<AttemptResponse>,
}

/// One delivery attempt and what the SMTP server said.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptResponse {
    /// 1 for the first attempt.
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    /// `sent`, `transient` (retried), `permanent`, or `suppressed` (every recipient is on
    /// the suppression list: nothing was sent).
    pub outcome: String,
    pub smtp_code: Option<u16>,
    pub smtp_text: String,
    /// Recipients the server refused in this attempt, and those left out because they
    /// are on the suppression list.
    pub refused: Vec<RefusedResponse>,
    /// The relay (`smtp.relays`) that answered, or was tried last when none took the
    /// message; null when no relay was reached (or the attempt predates relays).
    #[schema(example = "primary")]
    pub relay: Option<String>,
}

/// A recipient the SMTP server refused, or one left out because it is suppressed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefusedResponse {
    pub address: String,
    /// The server's reply code; null for a suppressed recipient.
    pub code: Option<u16>,
    pub text: String,
    /// Why the recipient is on the suppression list (`hard_bounce`, `complaint`,
    /// `manual`), when that is why it was left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<String>,
}

impl From<crate::ports::AttemptRecord> for AttemptResponse {
    fn from(record: crate::ports::AttemptRecord) -> Self {
        AttemptResponse {
            attempt: record.attempt,
            started_at: record.started_at,
            outcome: record.outcome.as_str().to_owned(),
            smtp_code: record.smtp_code,
            smtp_text: record.smtp_text,
            refused: record
                .refused
                .into_iter()
                .map(|r| RefusedResponse {
                    address: r.address,
                    code: r.code,
                    text: r.text,
                    suppressed: r.suppressed,
                })
                .collect(),
            relay: record.relay,
        }
    }
}
