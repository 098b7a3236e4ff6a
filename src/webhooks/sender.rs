//! The senders: a durable consumer on `mail:webhook` whose handlers make one signed
//! request per message. A 2xx answer succeeds; anything else (another status, a
//! timeout, a refused connection) is recorded, and the delivery is due again after the
//! next wait of `webhooks.retry_schedule` (the retriers publish it then); after the
//! last it has failed. An endpoint that failed everything for `webhooks.disable_after`
//! is disabled.
//!
//! Each endpoint has at most `webhooks.max_in_flight_per_endpoint` requests in flight
//! per instance; more of its deliveries are put off for a moment without an attempt,
//! so one slow or dead endpoint holds a few workers, never all of them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
use futures::future::join_all;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::{Host, Url};
use uuid::Uuid;

use super::{
    AttemptRequest, Delivery, DeliveryAttempt, DeliveryStatus, Webhook, Webhooks,
    store::Outcome,
    target::{self, PublicOnly},
};
use crate::{
    domain::signature_header,
    metrics::Metrics,
    usecase::backoff,
    workers::{Handler, Inbound, Verdict},
};

/// How long a delivery to an endpoint at its in-flight limit is put off.
const BUSY_ENDPOINT_WAIT: Duration = Duration::from_millis(500);
/// How much of an error answer's body goes into the delivery log.
const LOGGED_BODY_CHARS: usize = 200;

/// Builds the client webhook requests go out with: no redirects followed, no proxy
/// from the environment, the configured timeout for the whole exchange, and (unless
/// private targets are allowed) a resolver that drops non-public addresses.
pub fn http_client(webhooks: &Webhooks) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(webhooks.settings.timeout)
        .connect_timeout(webhooks.settings.timeout)
        .user_agent(concat!("mailroom-webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30));
    if !webhooks.settings.allow_private_targets {
        builder = builder.dns_resolver(PublicOnly::shared());
    }
    Ok(builder.build()?)
}

pub struct SendHandler {
    pub webhooks: Webhooks,
    pub client: reqwest::Client,
    pub metrics: Metrics,
    /// Waits before handling a message again while PostgreSQL is down.
    pub outage_backoff: Vec<Duration>,
    in_flight: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

/// What one request came to.
struct Answer {
    http_status: Option<u16>,
    error: Option<String>,
    /// Refused by the address rules: no request was made.
    refused: bool,
}

impl SendHandler {
    pub fn new(
        webhooks: Webhooks,
        client: reqwest::Client,
        metrics: Metrics,
        outage_backoff: Vec<Duration>,
    ) -> Self {
        SendHandler {
            webhooks,
            client,
            metrics,
            outage_backoff,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for a request to `webhook`, if it has one free.
    fn slot(&self, webhook: Uuid) -> Option<OwnedSemaphorePermit> {
        let limit = self.webhooks.settings.max_in_flight_per_endpoint;
        let mut in_flight = self.in_flight.lock().unwrap();
        // Endpoints with nothing in flight are forgotten, so the map stays small.
        in_flight.retain(|_, slots| slots.available_permits() < limit);
        in_flight
            .entry(webhook)
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone()
            .try_acquire_owned()
            .ok()
    }

    fn outage(&self, message: &Inbound, err: &crate::error::Error) -> Verdict {
        tracing::warn!(error = err.with_causes(), "webhook delivery postponed");
        Verdict::Retry(backoff(
            &self.outage_backoff,
            u32::try_from(message.delivered).unwrap_or(u32::MAX),
        ))
    }

    async fn handle_one(&self, message: &Inbound) -> Verdict {
        let request: AttemptRequest = match serde_json::from_slice(&message.payload) {
            Ok(request) => request,
            Err(err) => {
                return Verdict::DeadLetter {
                    reason: format!("not a webhook attempt request: {err}"),
                    dedup_key: format!("seq:{}", message.stream_sequence),
                };
            }
        };
        let store = &self.webhooks.store;
        let (delivery, webhook) = match store.delivery_with_webhook(request.delivery_id).await {
            Ok(Some(found)) => found,
            // The endpoint was deleted, and its deliveries with it.
            Ok(None) => return Verdict::Ack,
            Err(err) => return self.outage(message, &err),
        };
        // Done already, or this attempt was made (the message is a duplicate).
        if delivery.status != DeliveryStatus::Pending || delivery.attempts != request.attempts {
            return Verdict::Ack;
        }
        if !webhook.enabled {
            return match store.fail(delivery.id).await {
                Ok(()) => Verdict::Ack,
                Err(err) => self.outage(message, &err),
            };
        }
        let Some(_slot) = self.slot(webhook.id) else {
            // Its turn comes when the retriers find it due again.
            return match store.postpone(delivery.id, BUSY_ENDPOINT_WAIT).await {
                Ok(()) => Verdict::Ack,
                Err(err) => self.outage(message, &err),
            };
        };
        let at = Utc::now();
        let started = Instant::now();
        let answer = self.request(&webhook, &delivery).await;
        let elapsed = started.elapsed();
        let attempt = DeliveryAttempt {
            attempt: delivery.attempts + 1,
            at,
            http_status: answer.http_status.map(i32::from),
            error: answer.error.clone(),
            duration_ms: i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX),
        };
        let schedule = &self.webhooks.settings.retry_schedule;
        let outcome = if answer.error.is_none() {
            Outcome::Done(DeliveryStatus::Succeeded)
        } else if request.manual {
            Outcome::Done(DeliveryStatus::Failed)
        } else {
            // The attempt just made is number `attempts + 1`; its wait is the schedule's
            // entry of that number, if there is one.
            match schedule.get(delivery.attempts as usize) {
                Some(wait) => Outcome::RetryIn(*wait),
                None => Outcome::Done(DeliveryStatus::Failed),
            }
        };
        let failing_since = match store.record_attempt(&delivery, &attempt, outcome).await {
            Ok(Some((_, failing_since))) => failing_since,
            // Another worker took this attempt over (after this one's lease ran out).
            Ok(None) => return Verdict::Ack,
            Err(err) => return self.outage(message, &err),
        };
        let label = match outcome {
            Outcome::Done(DeliveryStatus::Succeeded) => "succeeded",
            Outcome::Done(_) => "failed",
            Outcome::RetryIn(_) if answer.refused => "refused",
            Outcome::RetryIn(_) => "retry",
        };
        self.metrics.webhook_attempt(label, elapsed);
        if let Some(since) = failing_since {
            self.disable_if_failing_since(&webhook, since, &answer)
                .await;
        }
        Verdict::Ack
    }

    /// Disables an endpoint that has failed everything for `webhooks.disable_after`;
    /// its pending deliveries end failed when they come up.
    async fn disable_if_failing_since(
        &self,
        webhook: &Webhook,
        since: chrono::DateTime<Utc>,
        answer: &Answer,
    ) {
        let disable_after = self.webhooks.settings.disable_after;
        let limit = chrono::Duration::from_std(disable_after).unwrap_or(chrono::Duration::MAX);
        if Utc::now() - since < limit {
            return;
        }
        let reason = format!(
            "every delivery failed for {} (webhooks.disable_after); the last: {}",
            humantime::format_duration(disable_after),
            answer.error.as_deref().unwrap_or_default()
        );
        match self.webhooks.store.disable(webhook.id, &reason).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(webhook.id = %webhook.id, webhook.url = %webhook.url, %reason, "webhook endpoint disabled");
                self.metrics
                    .webhooks_disabled
                    .with_label_values(&[] as &[&str])
                    .inc();
                self.webhooks.changed().await;
            }
            // The next failure tries again.
            Err(err) => {
                tracing::warn!(error = err.with_causes(), webhook.id = %webhook.id, "could not disable a failing webhook endpoint")
            }
        }
    }

    /// Makes the signed request.
    async fn request(&self, webhook: &Webhook, delivery: &Delivery) -> Answer {
        let url = match Url::parse(&webhook.url) {
            Ok(url) => url,
            Err(err) => return refused(format!("the stored URL does not parse: {err}")),
        };
        // A URL naming an address is checked here: no resolver sees it.
        if let Err(reason) = target::check_url(url.as_str(), self.webhooks.policy()) {
            return refused(format!("the URL {reason}"));
        }
        if !self.webhooks.settings.allow_private_targets
            && matches!(url.host(), Some(Host::Domain(_)))
            && let Err(reason) = target::check_resolved(&url, self.webhooks.policy()).await
        {
            return refused(format!("the URL {reason}"));
        }
        let now = Utc::now();
        let id = delivery.id.to_string();
        let signature = signature_header(
            &webhook.signing_secrets(now),
            &id,
            now.timestamp(),
            delivery.payload.as_bytes(),
        );
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", now.timestamp().to_string())
            .header("webhook-signature", signature)
            .body(delivery.payload.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                return Answer {
                    http_status: None,
                    error: Some(describe(&err, self.webhooks.settings.timeout)),
                    refused: false,
                };
            }
        };
        let status = response.status();
        // Read a little of the body (so the connection can be reused) and drop it.
        let mut body = Vec::new();
        let limit = self.webhooks.settings.max_response_bytes;
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())])
                }
                _ => break,
            }
        }
        if status.is_success() {
            return Answer {
                http_status: Some(status.as_u16()),
                error: None,
                refused: false,
            };
        }
        let excerpt: String = String::from_utf8_lossy(&body)
            .chars()
            .take(LOGGED_BODY_CHARS)
            .collect();
        Answer {
            http_status: Some(status.as_u16()),
            error: Some(if excerpt.trim().is_empty() {
                format!("answered {status}")
            } else {
                format!("answered {status}: {}", excerpt.trim())
            }),
            refused: false,
        }
    }
}

fn refused(reason: String) -> Answer {
    Answer {
        http_status: None,
        error: Some(reason),
        refused: true,
    }
}

/// A failed request in a few words, for the delivery log.
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!(
            "no answer within {} (webhooks.timeout)",
            humantime::format_duration(timeout)
        );
    }
    let mut text = if err.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[async_trait]
impl Handler for SendHandler {
    async fn handle_batch(&self, batch: &[Inbound]) -> Vec<Verdict> {
        join_all(batch.iter().map(|message| self.handle_one(message))).await
    }
}
