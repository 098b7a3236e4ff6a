//! The create worker: turns `mail:create` events into stored emails through the same use
//! case as REST, a batch at a time (one transaction per batch). An event that can never
//! succeed (undecodable, invalid, conflicting, or refused by the store for any reason
//! but an outage) is dead-lettered at once with its cause; one that failed because a
//! dependency was down is retried with the outage backoff, and dead-lettered only after
//! `max_deliver` deliveries.

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::{
    domain::{EmailDraft, EmailId, NewEmail, Rejected, Violations},
    error::Error,
    usecase::{Mailroom, backoff},
    wire::{self, CreateEvent},
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

/// The idempotency key of an event: its `idempotencyKey` field, else its `Nats-Msg-Id`
/// header, unless that only repeats the email id (which deduplicates by itself).
fn idempotency_key(
    field: Option<String>,
    msg_id: Option<&str>,
    email_id: Option<EmailId>,
) -> Option<String> {
    field.or_else(|| {
        let repeats_id = |msg_id: &str| {
            email_id.is_some_and(|id| Uuid::try_parse(msg_id.trim()) == Ok(id.as_uuid()))
        };
        msg_id
            .filter(|msg_id| !repeats_id(msg_id))
            .map(str::to_owned)
    })
}

/// Why an event can never be an email, as its dead letter says.
fn invalid_event(violations: &Violations) -> String {
    format!("invalid create event: {}", wire::describe(violations))
}

impl CreateHandler {
    /// The email an event asks for; or why it never can be one (a dead letter), or, when
    /// its template could not be read, a retry.
    async fn email_of(&self, message: &Inbound) -> Result<NewEmail, Verdict> {
        let mut draft = self
            .draft_of(message)
            .map_err(|reason| Verdict::dead(message, reason))?;
        if draft.template.is_some() {
            draft = match self.mailroom.render_template(draft).await {
                Ok(rendered) => rendered,
                Err(Error::Validation(violations)) => {
                    return Err(Verdict::dead(message, invalid_event(&violations)));
                }
                Err(err) => return Err(self.failed(message, &err)),
            };
        }
        self.check(draft)
            .map_err(|reason| Verdict::dead(message, reason))
    }

    /// The draft an event holds, its id and idempotency key settled.
    fn draft_of(&self, message: &Inbound) -> Result<EmailDraft, String> {
        if message.payload.len() > self.max_event_bytes {
            return Err(format!(
                "event of {} bytes exceeds the limit of {} bytes",
                message.payload.len(),
                self.max_event_bytes
            ));
        }
        let mut draft = CreateEvent::decode(&message.payload)
            .and_then(CreateEvent::into_draft)
            .map_err(|violations| invalid_event(&violations))?;
        draft.idempotency_key = idempotency_key(
            draft.idempotency_key.take(),
            message.msg_id.as_deref(),
            draft.id,
        );
        draft.idempotency_client = message.client.clone();
        // An event without an id gets one derived from the message, so its redelivery
        // (a crash between storing the email and acknowledging) stores nothing twice.
        draft.id.get_or_insert_with(|| {
            EmailId::for_message(
                &self.stream_incarnation,
                message.stream_sequence,
                message.published,
            )
        });
        Ok(draft)
    }

    /// The rules of every email.
    fn check(&self, draft: EmailDraft) -> Result<NewEmail, String> {
        self.mailroom
            .check(draft)
            .map_err(|rejected| match rejected {
                Rejected::Invalid(violations) => invalid_event(&violations),
                Rejected::TooLarge(too_large) => format!(
                    "invalid create event: the message would take at least {} bytes as delivered; \
                 limits.max_message_bytes allows {}",
                    too_large.size, too_large.limit
                ),
            })
    }

    /// A message whose email could not be stored. A dependency down: again later, or,
    /// after `max_deliver` deliveries, a dead letter (`mailroom dlq redrive` brings it
    /// back). Anything else would fail the same way every time: a dead letter now.
    fn failed(&self, message: &Inbound, err: &Error) -> Verdict {
        if !err.is_transient() {
            return Verdict::dead(
                message,
                format!("the email cannot be created: {}", err.with_causes()),
            );
        }
        if self.max_deliver > 0 && message.delivered >= self.max_deliver {
            Verdict::dead(
                message,
                format!(
                    "gave up after {} deliveries: {}",
                    message.delivered,
                    err.with_causes()
                ),
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
            match self.email_of(message).await {
                Ok(email) => valid.push((index, email)),
                Err(verdict) => verdicts[index] = Some(verdict),
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
                    verdicts[index] = Some(match result {
                        Ok(created) => {
                            tracing::debug!(email.id = %created.email.id, replayed = created.replayed, "create event handled");
                            Verdict::Ack
                        }
                        Err(err) => self.failed(&batch[index], &err),
                    });
                }
            }
            Err(err) => {
                tracing::warn!(error = err.with_causes(), "create failed");
                for index in indexes {
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
    use serde_json::json;

    use super::*;
    use crate::usecase::memory::{Failure, Harness};

    fn handler(harness: &Harness) -> CreateHandler {
        CreateHandler {
            mailroom: harness.mailroom.clone(),
            stream_incarnation: "MAIL@test".into(),
            max_event_bytes: 1 << 20,
            max_deliver: 5,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
        }
    }

    fn event(to: &str, delivered: i64) -> Inbound {
        let payload = json!({
            "from": "sender@example.com",
            "to": to,
            "subject": "Hello",
            "message": "Hi",
        });
        Inbound::for_test(
            "mail:create",
            serde_json::to_vec(&payload).unwrap(),
            delivered,
        )
    }

    #[tokio::test]
    async fn an_invalid_event_in_a_batch_is_dead_lettered_and_the_others_are_stored() {
        let harness = Harness::new();
        let mut second = event("not-an-address", 1);
        second.stream_sequence = 8;
        let mut third = event("carol@example.com", 1);
        third.stream_sequence = 9;
        let verdicts = handler(&harness)
            .handle_batch(&[event("alice@example.com", 1), second, third])
            .await;
        assert_eq!(verdicts[0], Verdict::Ack);
        assert_eq!(verdicts[2], Verdict::Ack);
        let Verdict::DeadLetter { reason, dedup_key } = &verdicts[1] else {
            panic!("{:?}", verdicts[1]);
        };
        assert!(reason.starts_with("invalid create event: to: "), "{reason}");
        assert_eq!(dedup_key, "seq:8");
        assert_eq!(harness.store.len(), 2);
    }

    fn templated_event(variables: serde_json::Value) -> Inbound {
        let payload = json!({
            "from": "sender@example.com",
            "to": "alice@example.com",
            "template": {"name": "hello", "variables": variables},
        });
        Inbound::for_test("mail:create", serde_json::to_vec(&payload).unwrap(), 1)
    }

    #[tokio::test]
    async fn a_templated_event_is_rendered_and_one_it_cannot_render_is_dead_lettered() {
        let harness = Harness::new();
        harness
            .mailroom
            .create_template(crate::usecase::TemplateDraft {
                name: Some("hello".into()),
                subject: Some("Hi {{ name }}".into()),
                message: Some("Hello".into()),
                html: None,
            })
            .await
            .unwrap();
        let handler = handler(&harness);
        assert_eq!(
            handler
                .handle(&templated_event(json!({"name": "Al"})))
                .await,
            Verdict::Ack
        );
        let Verdict::DeadLetter { reason, .. } = handler.handle(&templated_event(json!({}))).await
        else {
            panic!("a missing variable never renders");
        };
        assert!(reason.contains("template.variables"), "{reason}");
        assert!(reason.contains("`name`"), "{reason}");

        // The templates cannot be read: again later, not a dead letter.
        harness.templates.fail(Some(Failure::Outage));
        assert_eq!(
            handler
                .handle(&templated_event(json!({"name": "Al"})))
                .await,
            Verdict::Retry(Duration::from_secs(1))
        );
        assert_eq!(harness.store.len(), 1);
    }

    #[tokio::test]
    async fn a_store_outage_is_retried_with_the_outage_backoff_until_max_deliver() {
        let harness = Harness::new();
        harness.store.fail(Some(Failure::Outage));
        let handler = handler(&harness);
        let retry = |delivered| {
            let handler = &handler;
            async move { handler.handle(&event("alice@example.com", delivered)).await }
        };
        assert_eq!(retry(1).await, Verdict::Retry(Duration::from_secs(1)));
        assert_eq!(retry(2).await, Verdict::Retry(Duration::from_secs(5)));
        assert_eq!(retry(4).await, Verdict::Retry(Duration::from_secs(5)));
        let Verdict::DeadLetter { reason, .. } = retry(5).await else {
            panic!("the fifth delivery is the last");
        };
        assert!(reason.starts_with("gave up after 5 deliveries"), "{reason}");
        harness.store.fail(None);
        assert_eq!(
            retry(2).await,
            Verdict::Ack,
            "stored once PostgreSQL is back"
        );
    }

    #[tokio::test]
    async fn an_event_the_store_refuses_for_good_is_dead_lettered_at_once_with_the_cause() {
        let harness = Harness::new();
        harness.store.fail(Some(Failure::Refusal));
        let Verdict::DeadLetter { reason, .. } = handler(&harness)
            .handle(&event("alice@example.com", 1))
            .await
        else {
            panic!("a refusal is not retried");
        };
        assert!(reason.contains("refused the data"), "{reason}");
    }

    #[test]
    fn the_message_id_header_is_the_idempotency_key_unless_it_is_the_email_id() {
        let id = EmailId::generate();
        assert_eq!(idempotency_key(None, Some(&id.to_string()), Some(id)), None);
        let other_spelling = id.as_uuid().simple().to_string().to_uppercase();
        assert_eq!(idempotency_key(None, Some(&other_spelling), Some(id)), None);
        assert_eq!(
            idempotency_key(None, Some("order-42"), Some(id)).as_deref(),
            Some("order-42")
        );
        assert_eq!(
            idempotency_key(None, Some(&id.to_string()), None),
            Some(id.to_string()),
            "without an email id the header is just a key"
        );
        assert_eq!(
            idempotency_key(Some("field".into()), Some("header"), None).as_deref(),
            Some("field")
        );
    }
}
