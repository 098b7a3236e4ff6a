//! The create worker: turns `mail:create` events into stored emails through the same use
//! case as REST, a batch at a time (one transaction per batch). An event that can never
//! succeed (undecodable, invalid, conflicting) is dead-lettered once; one that failed
//! because a dependency was down is retried with backoff, and dead-lettered only after
//! `max_deliver` deliveries.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    domain::{CreateEvent, EmailId, NewEmail},
    error::Error,
    usecase::{Mailroom, backoff},
};

use super::{Handler, Inbound, Verdict};

pub struct CreateHandler {
    pub mailroom: Mailroom,
    /// Names the stream incarnation, for ids of events that bring none.
    pub stream_incarnation: String,
    pub max_event_bytes: usize,
    pub max_deliver: i64,
    pub backoff: Vec<Duration>,
}

impl CreateHandler {
    /// The email an event asks for, or why it never can be one.
    fn email_of(&self, message: &Inbound) -> Result<NewEmail, String> {
        if message.payload.len() > self.max_event_bytes {
            return Err(format!(
                "event of {} bytes exceeds the limit of {} bytes",
                message.payload.len(),
                self.max_event_bytes
            ));
        }
        let mut draft = CreateEvent::decode(&message.payload)
            .and_then(|event| event.into_draft(message.msg_id.as_deref()))
            .map_err(|violations| format!("invalid create event: {violations}"))?;
        // An event without an id gets one derived from the message, so its redelivery
        // (a crash between storing the email and acknowledging) stores nothing twice.
        draft.id.get_or_insert_with(|| {
            EmailId::for_message(
                &self.stream_incarnation,
                message.stream_sequence,
                message.published,
            )
        });
        NewEmail::try_from(draft)
            .map_err(|violations| format!("invalid create event: {violations}"))
    }

    /// A message whose email could not be stored for now: again later, or, after
    /// `max_deliver` deliveries, a dead letter (`mailroom dlq redrive` brings it back).
    fn retry_or_dead(&self, message: &Inbound, err: &Error) -> Verdict {
        if self.max_deliver > 0 && message.delivered >= self.max_deliver {
            Verdict::dead(
                message,
                format!("gave up after {} deliveries: {err:#}", message.delivered),
            )
        } else {
            Verdict::Retry(backoff(&self.backoff, message.delivered as u32))
        }
    }
}

#[async_trait]
impl Handler for CreateHandler {
    #[tracing::instrument(name = "worker.create", skip_all, fields(messages = batch.len()))]
    async fn handle_batch(&self, batch: &[Inbound]) -> Vec<Verdict> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.len()];
        let mut valid = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            match self.email_of(message) {
                Ok(email) => valid.push((index, email)),
                Err(reason) => verdicts[index] = Some(Verdict::dead(message, reason)),
            }
        }
        let (indexes, emails): (Vec<usize>, Vec<NewEmail>) = valid.into_iter().unzip();
        let work = emails
            .into_iter()
            .zip(&indexes)
            .map(|(email, &index)| (email, batch[index].span.clone()))
            .collect();
        match self.mailroom.create_all(work).await {
            Ok(results) => {
                for (index, result) in indexes.into_iter().zip(results) {
                    let message = &batch[index];
                    verdicts[index] = Some(match result {
                        Ok(created) => {
                            tracing::debug!(email.id = %created.email.id, replayed = created.replayed, "create event handled");
                            Verdict::Ack
                        }
                        Err(err @ Error::IdempotencyConflict { .. }) => {
                            Verdict::dead(message, format!("invalid create event: {err}"))
                        }
                        Err(err) => self.retry_or_dead(message, &err),
                    });
                }
            }
            Err(err) => {
                tracing::warn!(error = ?err, "create failed; will retry");
                for index in indexes {
                    verdicts[index] = Some(self.retry_or_dead(&batch[index], &err));
                }
            }
        }
        verdicts
            .into_iter()
            .map(|verdict| verdict.expect("every message has a verdict"))
            .collect()
    }
}
