//! The send worker: delivers the emails `mail:send` events name, a batch at a time. The
//! use case decides; this maps its answers to NATS terms: a retry becomes a NAK with the
//! backoff delay (no worker sleeps), a final failure a dead letter.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    domain::{EmailId, EmailStatus, SendEvent},
    error::Error,
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

impl SendHandler {
    fn verdict(message: &Inbound, id: EmailId, delivery: Delivery) -> Verdict {
        match delivery {
            Delivery::Sent(_) => Verdict::Ack,
            // A failed email whose dead letter may not have gone out before a crash:
            // publish it again; the dedup key makes that a no-op when it did.
            Delivery::AlreadyDone(email) if email.status == EmailStatus::Failed => {
                dead_email(email.id, email.last_error.unwrap_or_default())
            }
            Delivery::AlreadyDone(_) => Verdict::Ack,
            Delivery::Retry { after, .. } | Delivery::NotDue { after } => {
                Verdict::Retry(after.max(MIN_RETRY))
            }
            Delivery::Failed { email, reason } => dead_email(email.id, reason),
            Delivery::Missing => Verdict::dead(message, format!("no email with id {id}")),
        }
    }

    /// A message whose email could not be worked on for now (PostgreSQL is down).
    fn retry_or_abandon(&self, message: &Inbound, err: &Error) -> Verdict {
        if self.max_deliver > 0 && message.delivered >= self.max_deliver {
            // The email is safe in PostgreSQL, still due: the reconciler publishes its
            // send event again once the outage is over.
            Verdict::Abandon(format!(
                "gave up after {} deliveries: {err:#}",
                message.delivered
            ))
        } else {
            Verdict::Retry(backoff(&self.backoff, message.delivered as u32))
        }
    }
}

#[async_trait]
impl Handler for SendHandler {
    #[tracing::instrument(name = "worker.send", skip_all, fields(messages = batch.len()))]
    async fn handle_batch(&self, batch: &[Inbound]) -> Vec<Verdict> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.len()];
        let mut wanted = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            match serde_json::from_slice::<SendEvent>(&message.payload) {
                Ok(event) => wanted.push((index, event.email_id)),
                Err(err) => {
                    verdicts[index] =
                        Some(Verdict::dead(message, format!("invalid send event: {err}")))
                }
            }
        }
        let work = wanted
            .iter()
            .map(|&(index, id)| (id, batch[index].span.clone()))
            .collect();
        match self.mailroom.deliver_all(work).await {
            Ok(deliveries) => {
                for ((index, id), delivery) in wanted.into_iter().zip(deliveries) {
                    verdicts[index] = Some(Self::verdict(&batch[index], id, delivery));
                }
            }
            Err(err) => {
                tracing::warn!(error = ?err, "delivery failed; will retry");
                for (index, _) in wanted {
                    verdicts[index] = Some(self.retry_or_abandon(&batch[index], &err));
                }
            }
        }
        verdicts
            .into_iter()
            .map(|verdict| verdict.expect("every message has a verdict"))
            .collect()
    }
}
