//! NATS JetStream workers: a pool per durable consumer that pulls messages, runs up to N
//! handlers at once, and turns each handler's [`Verdict`] into an ack, a NAK with delay
//! or a dead letter.
//!
//! Handlers see an [`Inbound`] (no NATS types) and answer a [`Verdict`], so tests drive
//! them one message at a time without a server and without sleeping through backoffs.

mod create;
mod send;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field::Empty};

pub use create::CreateHandler;
pub use send::SendHandler;

use crate::{
    domain::DeadLetter,
    metrics::{MessageOutcome, Metrics},
    ports::EventBus,
    telemetry::propagation,
};

/// A message as handlers see it.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub subject: String,
    pub payload: Bytes,
    /// The `Nats-Msg-Id` header, if any.
    pub msg_id: Option<String>,
    pub stream_sequence: u64,
    /// How many times this message has been delivered, this time included.
    pub delivered: i64,
    pub published: DateTime<Utc>,
}

/// What to do with a handled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done: acknowledge.
    Ack,
    /// Not now: NAK, to be delivered again after the delay.
    Retry(Duration),
    /// Never: publish a dead letter (deduplicated by `dedup_key`), then acknowledge.
    DeadLetter { reason: String, dedup_key: String },
    /// Not by this message: stop its redelivery (TERM). For work whose state lives
    /// elsewhere and will be picked up again (the reconciler republishes send events).
    Abandon(String),
}

impl Verdict {
    fn outcome(&self) -> MessageOutcome {
        match self {
            Verdict::Ack => MessageOutcome::Ok,
            Verdict::Retry(_) | Verdict::Abandon(_) => MessageOutcome::Retry,
            Verdict::DeadLetter { .. } => MessageOutcome::Dead,
        }
    }

    /// A dead letter for this message itself (poison or invalid), deduplicated by its
    /// stream sequence so a redelivery does not write a second one.
    fn dead(message: &Inbound, reason: impl Into<String>) -> Self {
        Verdict::DeadLetter {
            reason: reason.into(),
            dedup_key: format!("seq:{}", message.stream_sequence),
        }
    }
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, message: &Inbound) -> Verdict;
}

/// A pool of handlers on one durable consumer.
pub struct WorkerPool {
    /// The subject's configured name (no isolation prefix), for metric labels.
    pub label: String,
    pub consumer: PullConsumer,
    pub handler: Arc<dyn Handler>,
    pub workers: usize,
    pub ack_wait: Duration,
    pub bus: Arc<dyn EventBus>,
    pub metrics: Metrics,
}

impl WorkerPool {
    /// Pulls and handles messages until `shutdown`, then stops pulling and waits up to
    /// `drain` for the handlers in flight. A handler cut short leaves its message
    /// unacknowledged, so the server delivers it again: nothing is lost.
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) {
        self.metrics.worker_started(&self.label);
        let slots = Arc::new(Semaphore::new(self.workers));
        let mut in_flight = JoinSet::new();
        let this = Arc::new(self);
        'pull: while !shutdown.is_cancelled() {
            let mut messages = match this
                .consumer
                .stream()
                .max_messages_per_batch(this.workers)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(consumer = %this.label, error = %err, "cannot pull messages; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'pull,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'pull,
                    }
                }
            };
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => break 'pull,
                    permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                };
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break 'pull,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let this = this.clone();
                        in_flight.spawn(async move {
                            this.process(message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(err)) => {
                        // Missed heartbeats and the like while NATS is away: the stream
                        // recovers by itself; log and keep pulling.
                        tracing::warn!(consumer = %this.label, error = %err, "pulling messages failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    None => continue 'pull,
                }
                while in_flight.try_join_next().is_some() {}
            }
        }
        tracing::info!(consumer = %this.label, in_flight = in_flight.len(), "stopped pulling; draining handlers");
        if tokio::time::timeout(drain, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(consumer = %this.label, "drain timed out; unfinished messages will be redelivered");
            in_flight.abort_all();
        }
    }

    /// Handles one message in a consumer span that continues the publisher's trace
    /// (from the message's `traceparent` header), so a trace runs on from the API
    /// through every worker.
    async fn process(&self, message: jetstream::Message) {
        let span = tracing::info_span!(
            "nats.process",
            otel.name = format!("process {}", message.subject),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.destination.name = %message.subject,
            subject = %self.label,
            seq = Empty,
            delivered = Empty,
            outcome = Empty,
            otel.status_code = Empty,
        );
        if let Some(headers) = &message.headers {
            propagation::continue_trace(&span, propagation::extract_nats(headers));
        }
        self.process_in_span(message).instrument(span).await
    }

    async fn process_in_span(&self, message: jetstream::Message) {
        let timer = self
            .metrics
            .nats_duration
            .with_label_values(&[self.label.as_str()])
            .start_timer();
        let inbound = match inbound(&message) {
            Ok(inbound) => inbound,
            Err(err) => {
                tracing::error!(error = %err, "not a JetStream message; terminating it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("seq", inbound.stream_sequence);
        span.record("delivered", inbound.delivered);

        // Long handlers (a slow SMTP server) tell the server they are alive, so the
        // message is not redelivered to another worker meanwhile. The reports live in
        // this future: when it is dropped (a crash, a drain timeout), they stop too.
        let every = (self.ack_wait / 2).max(Duration::from_millis(500));
        let mut reports = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let handling = self.handler.handle(&inbound);
        tokio::pin!(handling);
        let verdict = loop {
            tokio::select! {
                verdict = &mut handling => break verdict,
                _ = reports.tick() => {
                    if let Err(err) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %err, "progress report failed");
                    }
                }
            }
        };

        let verdict = match verdict {
            Verdict::DeadLetter { reason, dedup_key } => {
                let letter = DeadLetter {
                    subject: inbound.subject.clone(),
                    sequence: inbound.stream_sequence,
                    data: inbound.payload.to_vec(),
                    timestamp: inbound.published,
                    error: reason.clone(),
                    time: Utc::now(),
                    deliveries: inbound.delivered,
                };
                match self.bus.publish_dead_letter(&letter, &dedup_key).await {
                    Ok(()) => {
                        tracing::warn!(reason = %reason, "message dead-lettered");
                        Verdict::DeadLetter { reason, dedup_key }
                    }
                    // The dead letter must not be lost either: try the whole message again.
                    Err(err) => {
                        tracing::warn!(error = %err, "could not publish a dead letter; retrying the message");
                        Verdict::Retry(Duration::from_secs(1))
                    }
                }
            }
            other => other,
        };
        let reply = match &verdict {
            Verdict::Ack | Verdict::DeadLetter { .. } => message.ack().await,
            Verdict::Retry(delay) => message.ack_with(AckKind::Nak(Some(*delay))).await,
            Verdict::Abandon(reason) => {
                tracing::warn!(%reason, "message abandoned; its work will be picked up again");
                message.ack_with(AckKind::Term).await
            }
        };
        if let Err(err) = reply {
            // The server redelivers after ack_wait; handlers are idempotent.
            tracing::warn!(error = %err, "could not acknowledge a message");
        }
        span.record("outcome", verdict.outcome().as_str());
        if matches!(verdict, Verdict::DeadLetter { .. }) {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .nats_messages
            .with_label_values(&[self.label.as_str(), verdict.outcome().as_str()])
            .inc();
        timer.observe_duration();
    }
}

fn inbound(message: &jetstream::Message) -> anyhow::Result<Inbound> {
    let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Inbound {
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
        msg_id: message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|value| value.as_str().to_owned()),
        stream_sequence: info.stream_sequence,
        delivered: info.delivered,
        published: info.published,
    })
}
