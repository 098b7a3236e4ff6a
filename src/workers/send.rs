//! The send worker: delivers the email a `mail:send` event names. The use case decides;
//! this maps its answer to NATS terms: a retry becomes a NAK with the backoff delay (no
//! worker sleeps), a final failure a dead letter.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    domain::{EmailStatus, SendEvent},
    usecase::{Delivery, Mailroom, backoff},
};

use super::{Handler, Inbound, Verdict};

/// Shortest NAK delay, so an email that is not due yet is not spun on.
const MIN_RETRY: Duration = Duration::from_millis(100);

pub struct SendHandler {
    pub mailroom: Mailroom,
    pub max_deliver: i64,
    /// Backoff when a dependency (PostgreSQL) is down (`delivery.outage_backoff`).
    pub backoff: Vec<Duration>,
}

/// Dead letters of an email are deduplicated by its id: one per email, even if the
/// message carrying it is delivered again after a crash.
fn dead_email(id: impl std::fmt::Display, reason: String) -> Verdict {
    Verdict::DeadLetter {
        reason,
        dedup_key: format!("send:{id}"),
    }
}

#[async_trait]
impl Handler for SendHandler {
    #[tracing::instrument(name = "worker.send", skip_all, fields(seq = message.stream_sequence))]
    async fn handle(&self, message: &Inbound) -> Verdict {
        let event: SendEvent = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(err) => return Verdict::dead(message, format!("invalid send event: {err}")),
        };
        match self.mailroom.deliver(event.email_id).await {
            Ok(Delivery::Sent(_)) => Verdict::Ack,
            // A failed email whose dead letter may not have gone out before a crash: publish
            // it again; the dedup key makes that a no-op when it did.
            Ok(Delivery::AlreadyDone(email)) if email.status == EmailStatus::Failed => {
                dead_email(email.id, email.last_error.unwrap_or_default())
            }
            Ok(Delivery::AlreadyDone(_)) => Verdict::Ack,
            Ok(Delivery::Retry { after, .. }) | Ok(Delivery::NotDue { after }) => {
                Verdict::Retry(after.max(MIN_RETRY))
            }
            Ok(Delivery::Failed { email, reason }) => dead_email(email.id, reason),
            Ok(Delivery::Missing) => {
                Verdict::dead(message, format!("no email with id {}", event.email_id))
            }
            Err(err) => {
                if self.max_deliver > 0 && message.delivered >= self.max_deliver {
                    // The email is safe in PostgreSQL, still due: the reconciler publishes
                    // its send event again once the outage is over.
                    Verdict::Abandon(format!(
                        "gave up after {} deliveries: {err:#}",
                        message.delivered
                    ))
                } else {
                    tracing::warn!(
                        error = ?err,
                        delivered = message.delivered,
                        "delivery failed; will retry"
                    );
                    Verdict::Retry(backoff(&self.backoff, message.delivered as u32))
                }
            }
        }
    }
}
