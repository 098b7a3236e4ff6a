//! The send worker: delivers the emails `mail:send` events name, a batch at a time. The
//! use case decides; this maps its answers to NATS terms: a retry becomes a NAK with the
//! backoff delay (no worker sleeps), a final failure a dead letter, and an error of the
//! store a NAK when it is an outage, or the end of the message when it is not (the
//! reconciler takes the email up again).

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
            Delivery::Sent(_) | Delivery::Suppressed(_) => Verdict::Ack,
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

    /// A message whose email could not be worked on. A dependency down (PostgreSQL): again
    /// later with the outage backoff, until `max_deliver`. Anything else would fail the
    /// same way on every redelivery: the message stops here. Either way the email is safe
    /// in PostgreSQL, still due, and the reconciler publishes its send event again.
    fn failed(&self, message: &Inbound, err: &Error) -> Verdict {
        if !err.is_transient() {
            return Verdict::Abandon(format!("delivery failed: {}", err.with_causes()));
        }
        if self.max_deliver > 0 && message.delivered >= self.max_deliver {
            Verdict::Abandon(format!(
                "gave up after {} deliveries: {}",
                message.delivered,
                err.with_causes()
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
                tracing::warn!(error = err.with_causes(), "delivery failed");
                for (index, _) in wanted {
                    verdicts[index] = Some(self.failed(&batch[index], &err));
                }
            }
        }
        verdicts
            .into_iter()
            .map(|verdict| verdict.expect("every message has a verdict"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{AddressList, EmailDraft, Rules},
        usecase::memory::{Failure, Harness, permanent},
    };

    fn handler(harness: &Harness) -> SendHandler {
        SendHandler {
            mailroom: harness.mailroom.clone(),
            max_deliver: 5,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
        }
    }

    async fn stored(harness: &Harness) -> EmailId {
        let new = Rules::default()
            .new_email(EmailDraft {
                from: Some("sender@example.com".into()),
                to: Some(AddressList::Text("alice@example.com".into())),
                subject: Some("Hello".into()),
                message: Some("Hi".into()),
                ..Default::default()
            })
            .unwrap();
        harness
            .mailroom
            .create_all(vec![(new, tracing::Span::none())])
            .await
            .unwrap()[0]
            .as_ref()
            .unwrap()
            .email
            .id
    }

    fn event(id: EmailId, delivered: i64) -> Inbound {
        let payload = serde_json::to_vec(&SendEvent { email_id: id }).unwrap();
        Inbound::for_test("mail:send", payload, delivered)
    }

    #[tokio::test]
    async fn a_store_outage_is_retried_with_the_outage_backoff_then_left_to_the_reconciler() {
        let harness = Harness::new();
        let id = stored(&harness).await;
        harness.store.fail(Some(Failure::Outage));
        let handler = handler(&harness);
        assert_eq!(
            handler.handle(&event(id, 1)).await,
            Verdict::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            handler.handle(&event(id, 3)).await,
            Verdict::Retry(Duration::from_secs(5))
        );
        let Verdict::Abandon(reason) = handler.handle(&event(id, 5)).await else {
            panic!("the fifth delivery is the last");
        };
        assert!(reason.starts_with("gave up after 5 deliveries"), "{reason}");
        assert!(harness.mailer.sent().is_empty());
    }

    #[tokio::test]
    async fn an_error_that_is_no_outage_ends_the_message_at_once() {
        let harness = Harness::new();
        let id = stored(&harness).await;
        harness.store.fail(Some(Failure::Refusal));
        let Verdict::Abandon(reason) = handler(&harness).handle(&event(id, 1)).await else {
            panic!("not retried max_deliver times");
        };
        assert!(reason.contains("refused the data"), "{reason}");
    }

    #[tokio::test]
    async fn a_permanent_refusal_is_one_dead_letter_per_email_and_a_missing_email_one_per_message()
    {
        let harness = Harness::new();
        let id = stored(&harness).await;
        harness.mailer.script([permanent("550 5.1.1 no such user")]);
        let handler = handler(&harness);
        let Verdict::DeadLetter { reason, dedup_key } = handler.handle(&event(id, 1)).await else {
            panic!("a permanent failure is dead-lettered");
        };
        assert!(reason.contains("no such user"), "{reason}");
        assert_eq!(dedup_key, format!("send:{id}"));
        // Delivered again after a crash: the same letter, which the dedup key drops.
        assert_eq!(
            handler.handle(&event(id, 2)).await,
            Verdict::DeadLetter { reason, dedup_key }
        );
        let missing = EmailId::generate();
        let Verdict::DeadLetter { dedup_key, .. } = handler.handle(&event(missing, 1)).await else {
            panic!("an unknown id is dead-lettered");
        };
        assert_eq!(dedup_key, "seq:7");
    }
}
