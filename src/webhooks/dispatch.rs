//! The dispatcher: a durable consumer on `mail:status` that turns each status event
//! into one delivery per endpoint subscribed to it, stored, then published on
//! `mail:webhook` for the senders. The event is acknowledged only after both, and the
//! delivery's id comes from the event's place in the stream and the endpoint, so an
//! event handled twice (after a crash) makes no second delivery.

use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use uuid::Uuid;

use super::{AttemptRequest, Publish, Webhooks, store::NewDelivery};
use crate::{
    domain::{StatusEvent, WebhookEvent},
    usecase::backoff,
    workers::{Handler, Inbound, Verdict},
};

pub struct DispatchHandler {
    pub webhooks: Webhooks,
    /// The stream's name and creation time: with a sequence, it names one event.
    pub stream_incarnation: String,
    /// Waits before handling events again while PostgreSQL or NATS is down.
    pub backoff: Vec<Duration>,
}

/// The delivery of the event at `sequence` to `webhook`: the same id every time.
pub fn delivery_id(webhook: Uuid, stream_incarnation: &str, sequence: u64) -> Uuid {
    Uuid::new_v5(
        &webhook,
        format!("{stream_incarnation}/{sequence}").as_bytes(),
    )
}

impl DispatchHandler {
    fn retry(&self, batch: &[Inbound], why: &str, err: &crate::error::Error) -> Vec<Verdict> {
        tracing::warn!(
            error = err.with_causes(),
            "webhook dispatch {why}; retrying"
        );
        batch
            .iter()
            .map(|message| {
                Verdict::Retry(backoff(
                    &self.backoff,
                    u32::try_from(message.delivered).unwrap_or(u32::MAX),
                ))
            })
            .collect()
    }
}

#[async_trait]
impl Handler for DispatchHandler {
    async fn handle_batch(&self, batch: &[Inbound]) -> Vec<Verdict> {
        let subscriptions = match self.webhooks.subscriptions().await {
            Ok(subscriptions) => subscriptions,
            Err(err) => return self.retry(batch, "could not read the endpoints", &err),
        };
        let mut verdicts = vec![Verdict::Ack; batch.len()];
        if subscriptions.is_empty() {
            return verdicts;
        }
        let mut deliveries = Vec::new();
        for (message, verdict) in batch.iter().zip(&mut verdicts) {
            let event: StatusEvent = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(err) => {
                    // Not one of mailroom's status events: nothing to tell anyone.
                    tracing::warn!(error = %err, sequence = message.stream_sequence, "a status event that does not parse; no webhook for it");
                    *verdict = Verdict::Ack;
                    continue;
                }
            };
            let Some((kind, body)) = WebhookEvent::of_status(&event) else {
                continue;
            };
            let payload = match serde_json::to_string(&body) {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::error!(error = %err, "a webhook body that does not serialise");
                    continue;
                }
            };
            for subscription in subscriptions.iter() {
                // An endpoint gets what happened from its registration (or enabling) on.
                if subscription.events.matches(kind) && event.at >= subscription.since {
                    let webhook = subscription.webhook;
                    deliveries.push(NewDelivery {
                        id: delivery_id(webhook, &self.stream_incarnation, message.stream_sequence),
                        webhook_id: webhook,
                        event_type: kind.as_str().to_owned(),
                        payload: payload.clone(),
                    });
                }
            }
        }
        if deliveries.is_empty() {
            return verdicts;
        }
        if let Err(err) = self
            .webhooks
            .store
            .insert_deliveries(&deliveries, self.webhooks.lease)
            .await
        {
            return self.retry(batch, "could not store deliveries", &err);
        }
        let published = join_all(deliveries.iter().map(|delivery| {
            let request = AttemptRequest {
                delivery_id: delivery.id,
                attempts: 0,
                manual: false,
            };
            let webhooks = &self.webhooks;
            async move {
                webhooks
                    .publish_attempt(&request, Publish::NewDelivery)
                    .await
            }
        }))
        .await;
        if let Some(Err(err)) = published.into_iter().find(Result::is_err) {
            // The deliveries are stored: the retriers publish them once their lease is
            // over. The events are acknowledged all the same.
            tracing::warn!(
                error = err.with_causes(),
                "webhook deliveries stored but not published; the retriers will"
            );
        }
        verdicts
    }
}
