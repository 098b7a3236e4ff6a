//! The create worker: turns `mail:create` events into stored emails through the same use
//! case as REST. An event that can never succeed (undecodable, invalid, conflicting) is
//! dead-lettered once; one that failed because a dependency was down is retried with
//! backoff, and dead-lettered only after `max_deliver` deliveries.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    domain::{CreateEvent, EmailId},
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

#[async_trait]
impl Handler for CreateHandler {
    #[tracing::instrument(name = "worker.create", skip_all, fields(seq = message.stream_sequence))]
    async fn handle(&self, message: &Inbound) -> Verdict {
        if message.payload.len() > self.max_event_bytes {
            return Verdict::dead(
                message,
                format!(
                    "event of {} bytes exceeds the limit of {} bytes",
                    message.payload.len(),
                    self.max_event_bytes
                ),
            );
        }
        let mut draft = match CreateEvent::decode(&message.payload)
            .and_then(|event| event.into_draft(message.msg_id.as_deref()))
        {
            Ok(draft) => draft,
            Err(violations) => {
                return Verdict::dead(message, format!("invalid create event: {violations}"));
            }
        };
        // An event without an id gets one derived from the message, so its redelivery
        // (a crash between storing the email and acknowledging) stores nothing twice.
        draft.id.get_or_insert_with(|| {
            EmailId::for_message(
                &self.stream_incarnation,
                message.stream_sequence,
                message.published,
            )
        });
        match self.mailroom.create(draft).await {
            Ok(created) => {
                tracing::debug!(email.id = %created.email.id, replayed = created.replayed, "create event handled");
                Verdict::Ack
            }
            Err(
                err @ (Error::Validation(_)
                | Error::IdempotencyConflict { .. }
                | Error::NotFound(_)),
            ) => Verdict::dead(message, format!("invalid create event: {err}")),
            Err(err @ (Error::Unavailable { .. } | Error::Internal(_))) => {
                if self.max_deliver > 0 && message.delivered >= self.max_deliver {
                    Verdict::dead(
                        message,
                        format!("gave up after {} deliveries: {err:#}", message.delivered),
                    )
                } else {
                    tracing::warn!(
                        error = ?err,
                        delivered = message.delivered,
                        "create failed; will retry"
                    );
                    Verdict::Retry(backoff(&self.backoff, message.delivered as u32))
                }
            }
        }
    }
}
