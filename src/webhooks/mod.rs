//! Webhooks: endpoints registered over REST receive every status change they subscribe
//! to as a signed HTTP request (Standard Webhooks), retried on a schedule and logged.
//!
//! Two durable consumers carry the work. The dispatcher ([`dispatch`]) reads
//! `mail:status` and stores one delivery per event and matching endpoint, then publishes
//! its id on `mail:webhook`; the senders ([`sender`]) make the request. A failed one is
//! due again at the schedule's next time, in PostgreSQL, where the retriers
//! ([`retrier`]) of every instance find it and publish it again: nothing sleeps, and
//! nothing waits in JetStream for hours. Every step stores before it acknowledges, so
//! a restart or a kill loses no delivery.

pub mod dispatch;
pub mod retrier;
pub mod sender;
mod service;
pub mod store;
pub mod target;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{EventSelection, WebhookSecret};

pub use service::{DispatcherConsumer, NewWebhook, Publish, WebhookChange, Webhooks};

/// A registered endpoint.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: EventSelection,
    pub description: Option<String>,
    pub enabled: bool,
    /// Why mailroom disabled it, when it did.
    pub disabled_reason: Option<String>,
    pub secret: WebhookSecret,
    /// The secret before the last rotation and until when it still signs.
    pub previous_secret: Option<(WebhookSecret, DateTime<Utc>)>,
    /// When the current run of failed attempts began.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Webhook {
    /// The secrets requests are signed with at `now`: the current one, and the previous
    /// one while it has not expired.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&WebhookSecret> {
        let mut secrets = vec![&self.secret];
        if let Some((previous, expires)) = &self.previous_secret
            && *expires > now
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Succeeded,
            DeliveryStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One event for one endpoint; its id is the `webhook-id` of every attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_type: String,
    /// The body, exactly as sent and signed.
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One request made for a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// The answer's status code, when there was an answer.
    pub http_status: Option<i32>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// The message on `mail:webhook`: a delivery to attempt, after the attempts it has
/// had (a message for an attempt already made is a duplicate, and dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRequest {
    #[serde(rename = "deliveryID")]
    pub delivery_id: Uuid,
    pub attempts: i32,
    /// Asked for by a user (one attempt, outside the schedule).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}
