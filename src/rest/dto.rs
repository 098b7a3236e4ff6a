//! The REST wire format: camelCase JSON, field names as in the original service.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{self, Email, EmailDraft, SearchPage};

/// A new email. Every field is checked, and all problems are reported at once.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "from": "sender@example.com",
    "to": "alice@example.com",
    "subject": "Welcome",
    "message": "Hello Alice, welcome aboard."
}))]
pub struct CreateEmailRequest {
    /// Sender address (`user@domain`, at most 254 characters).
    #[schema(value_type = String, format = "email", max_length = 254)]
    pub from: Option<String>,
    /// Recipient address (`user@domain`, at most 254 characters).
    #[schema(value_type = String, format = "email", max_length = 254)]
    pub to: Option<String>,
    /// 1 to 255 characters, no line breaks or other control characters.
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub subject: Option<String>,
    /// Plain-text body, 1 character to 1 MiB (in UTF-8), without NUL characters.
    #[schema(value_type = String, min_length = 1, pattern = r"^[^\u0000]*$")]
    pub message: Option<String>,
    /// Optional HTML body, sent as an alternative to `message`: 1 character to 1 MiB
    /// (in UTF-8), without NUL characters.
    #[schema(nullable = true, min_length = 1, pattern = r"^[^\u0000]*$")]
    pub html: Option<String>,
}

impl CreateEmailRequest {
    pub fn into_draft(self, idempotency_key: Option<String>) -> EmailDraft {
        EmailDraft {
            from: self.from,
            to: self.to,
            subject: self.subject,
            message: self.message,
            html: self.html,
            idempotency_key,
            id: None,
        }
    }
}

/// Where an email is in its life: `queued → sending → sent`; a transient failure makes it
/// `deferred` until its next attempt; a permanent failure or exhausted retries make it
/// `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmailStatus {
    Queued,
    Sending,
    Sent,
    Deferred,
    Failed,
}

impl From<domain::EmailStatus> for EmailStatus {
    fn from(status: domain::EmailStatus) -> Self {
        match status {
            domain::EmailStatus::Queued => EmailStatus::Queued,
            domain::EmailStatus::Sending => EmailStatus::Sending,
            domain::EmailStatus::Sent => EmailStatus::Sent,
            domain::EmailStatus::Deferred => EmailStatus::Deferred,
            domain::EmailStatus::Failed => EmailStatus::Failed,
        }
    }
}

/// A stored email and where its delivery stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailResponse {
    #[serde(rename = "emailID")]
    pub email_id: Uuid,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub message: String,
    pub html: Option<String>,
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

impl From<Email> for EmailResponse {
    fn from(email: Email) -> Self {
        EmailResponse {
            email_id: email.id.as_uuid(),
            from: email.from,
            to: email.to,
            subject: email.subject,
            message: email.message,
            html: email.html,
            created_at: email.created_at,
            updated_at: email.updated_at,
            status: email.status.into(),
            attempts: email.attempts,
            sent_at: email.sent_at,
            last_error: email.last_error,
            next_attempt_at: email.next_attempt_at,
            idempotency_key: email.idempotency_key,
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
            emails: page.items.into_iter().map(EmailResponse::from).collect(),
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
}
