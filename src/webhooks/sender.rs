//! The senders: a durable consumer on `mail:webhook` whose handlers make one signed
//! request per message. A 2xx answer succeeds; anything else (another status, a
//! timeout, a refused connection) is recorded and the message put back with the next
//! wait of `webhooks.retry_schedule`; after the last the delivery has failed. An endpoint
//! that failed everything for `webhooks.disable_after` is disabled.
//!
//! Each endpoint has at most `webhooks.max_in_flight_per_endpoint` requests in flight
//! per instance; more of its messages go back for a moment without an attempt, so one
//! slow or dead endpoint holds a few workers, never all of them.

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
    target::{self, PublicOnly},
};
use crate::{
    domain::signature_header,
    metrics::Metrics,
    usecase::backoff,
    workers::{Handler, Inbound, Verdict},
};

/// How long a message of an endpoint at its in-flight limit waits before it is tried
/// again.
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
        let (delivery, webhook) = match self
            .webhooks
            .store
            .delivery_with_webhook(request.delivery_id)
            .await
        {
            Ok(Some(found)) => found,
            // The endpoint was deleted, and its deliveries with it.
            Ok(None) => return Verdict::Ack,
            Err(err) => return self.outage(message, &err),
        };
        if delivery.status != DeliveryStatus::Pending {
            return Verdict::Ack;
        }
        if !webhook.enabled {
            return match self
                .webhooks
                .store
                .set_status(delivery.id, DeliveryStatus::Failed)
                .await
            {
                Ok(()) => Verdict::Ack,
                Err(err) => self.outage(message, &err),
            };
        }
        let Some(_slot) = self.slot(webhook.id) else {
            return Verdict::Retry(BUSY_ENDPOINT_WAIT);
        };
        let at = Utc::now();
        let started = Instant::now();
        let answer = self.request(&webhook, &delivery).await;
        let elapsed = started.elapsed();
        self.settle(message, &request, &webhook, &delivery, at, elapsed, answer)
            .await
    }

    /// Records an attempt and decides what comes next.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        message: &Inbound,
        request: &AttemptRequest,
        webhook: &Webhook,
        delivery: &Delivery,
        at: chrono::DateTime<Utc>,
        elapsed: Duration,
        answer: Answer,
    ) -> Verdict {
        let schedule = &self.webhooks.settings.retry_schedule;
        let succeeded = answer.error.is_none();
        // Whether this attempt is the last: a manual one is, and so is one past the
        // schedule (known only once numbered, so the failure is stored as pending and
        // finished below).
        let attempt = DeliveryAttempt {
            attempt: 0,
            at,
            http_status: answer.http_status.map(i32::from),
            error: answer.error.clone(),
            duration_ms: i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX),
        };
        let status = if succeeded {
            DeliveryStatus::Succeeded
        } else if request.manual {
            DeliveryStatus::Failed
        } else {
            DeliveryStatus::Pending
        };
        let (number, failing_since) = match self
            .webhooks
            .store
            .record_attempt(delivery.id, webhook.id, &attempt, status)
            .await
        {
            Ok(recorded) => recorded,
            Err(err) => return self.outage(message, &err),
        };
        if succeeded {
            self.metrics.webhook_attempt("succeeded", elapsed);
            return Verdict::Ack;
        }
        let disable_after = chrono::Duration::from_std(self.webhooks.settings.disable_after)
            .unwrap_or(chrono::Duration::MAX);
        let failing_for = failing_since.map(|since| Utc::now() - since);
        if failing_for.is_some_and(|failing_for| failing_for >= disable_after) {
            let reason = format!(
                "every delivery failed for {} (webhooks.disable_after); the last: {}",
                humantime::format_duration(self.webhooks.settings.disable_after),
                answer.error.as_deref().unwrap_or_default()
            );
            if let Err(err) = self.webhooks.store.disable(webhook.id, &reason).await {
                return self.outage(message, &err);
            }
            tracing::warn!(webhook.id = %webhook.id, webhook.url = %webhook.url, %reason, "webhook endpoint disabled");
            self.metrics
                .webhooks_disabled
                .with_label_values(&[] as &[&str])
                .inc();
            return self.give_up(message, delivery, elapsed).await;
        }
        let retries_left = !request.manual && (number as usize) <= schedule.len();
        if !retries_left {
            return self.give_up(message, delivery, elapsed).await;
        }
        self.metrics
            .webhook_attempt(if answer.refused { "refused" } else { "retry" }, elapsed);
        Verdict::Retry(schedule[number as usize - 1])
    }

    async fn give_up(&self, message: &Inbound, delivery: &Delivery, elapsed: Duration) -> Verdict {
        if let Err(err) = self
            .webhooks
            .store
            .set_status(delivery.id, DeliveryStatus::Failed)
            .await
        {
            return self.outage(message, &err);
        }
        self.metrics.webhook_attempt("failed", elapsed);
        Verdict::Ack
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
