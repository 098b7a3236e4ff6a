//! NATS JetStream workers: a pool per durable consumer that pulls messages in batches,
//! runs up to N batches at once, and turns each message's [`Verdict`] into an ack, a NAK
//! with delay or a dead letter.
//!
//! A batch is what has arrived when a worker is free (at most `batch_size` messages and,
//! past the first, `batch_max_bytes` of payload; never waiting to fill one), so a quiet
//! system handles each message at once and a busy one stores, claims and records many
//! emails per transaction, while a burst of large create events (attachments) is not held
//! in memory 64 at a time per worker.
//!
//! Handlers see [`Inbound`]s (no NATS types) and answer [`Verdict`]s, so tests drive them
//! a message at a time without a server and without sleeping through backoffs.

mod create;
mod periodic;
mod queue_gauges;
mod reconciler;
mod scheduler;
mod send;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt, future::join_all};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field::Empty};

pub use create::CreateHandler;
pub use queue_gauges::QueueGauges;
pub use reconciler::Reconciler;
pub use scheduler::{Pass, Scheduler, next_pass};
pub use send::SendHandler;

use crate::{
    adapters::jetstream::JetStream,
    domain::DeadLetter,
    metrics::{MessageOutcome, Metrics},
    telemetry::propagation,
    usecase::Mailroom,
    wire,
};

/// A message as handlers see it.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub subject: String,
    pub payload: Bytes,
    /// The `Nats-Msg-Id` header, if any.
    pub msg_id: Option<String>,
    /// The `Mailroom-Client` header, if any.
    pub client: Option<String>,
    pub stream_sequence: u64,
    /// How many times this message has been delivered, this time included.
    pub delivered: i64,
    pub published: DateTime<Utc>,
    /// The message's consumer span, which continues its publisher's trace: the work
    /// done for this message belongs in it.
    pub span: tracing::Span,
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
    /// Handles a batch, answering one verdict per message, in order.
    async fn handle_batch(&self, batch: &[Inbound]) -> Vec<Verdict>;

    /// Handles one message.
    async fn handle(&self, message: &Inbound) -> Verdict {
        let mut verdicts = self.handle_batch(std::slice::from_ref(message)).await;
        verdicts.pop().expect("one verdict per message")
    }
}

/// How often a pool whose consumer does not exist looks for it again.
const ABSENT_CONSUMER_RECHECK: Duration = Duration::from_secs(1);

/// Where a pool's messages come from.
pub enum ConsumerSource {
    /// A consumer created at start, there for good.
    Ready(Box<PullConsumer>),
    /// A durable consumer that exists only while there is work for it (the webhook
    /// dispatcher's, while endpoints are registered): pulled from when present.
    WhenPresent {
        bus: Box<JetStream>,
        durable: String,
    },
}

/// A pool of handlers on one durable consumer.
pub struct WorkerPool {
    /// The subject's configured name (no isolation prefix), for metric labels.
    pub label: String,
    pub consumer: ConsumerSource,
    pub handler: Arc<dyn Handler>,
    /// Batches handled at once by this instance.
    pub workers: usize,
    /// Most messages in one batch.
    pub batch_size: usize,
    /// Payload bytes past which a batch takes no more messages.
    pub batch_max_bytes: usize,
    /// The NATS server's `max_payload`: the largest message the stream can hold.
    pub max_payload: usize,
    pub ack_wait: Duration,
    /// Where dead letters go.
    pub mailroom: Mailroom,
    pub metrics: Metrics,
}

impl WorkerPool {
    /// Pulls and handles messages until `shutdown`, then stops pulling and waits up to
    /// `drain` for the batches in flight. A batch cut short leaves its messages
    /// unacknowledged, so the server delivers them again: nothing is lost.
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) {
        self.metrics.worker_started(&self.label);
        let slots = Arc::new(Semaphore::new(self.workers));
        let mut in_flight = JoinSet::new();
        let this = Arc::new(self);
        'pull: while !shutdown.is_cancelled() {
            let consumer = match &this.consumer {
                ConsumerSource::Ready(consumer) => PullConsumer::clone(consumer),
                ConsumerSource::WhenPresent { bus, durable } => {
                    match bus.consumer_named(durable).await {
                        Some(consumer) => consumer,
                        None => {
                            tokio::select! {
                                _ = shutdown.cancelled() => break 'pull,
                                _ = tokio::time::sleep(ABSENT_CONSUMER_RECHECK) => continue 'pull,
                            }
                        }
                    }
                }
            };
            let mut messages = match consumer
                .stream()
                // Enough buffered for every free worker to take a full batch, by count
                // and by bytes. The byte bound is never below the largest message the
                // server takes, since the server refuses a pull that one message
                // cannot fit in.
                .max_messages_per_batch(this.workers * this.batch_size)
                .max_bytes_per_batch(pull_max_bytes(
                    this.workers,
                    this.batch_max_bytes,
                    this.max_payload,
                ))
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
                let first = tokio::select! {
                    _ = shutdown.cancelled() => break 'pull,
                    next = messages.next() => next,
                };
                let mut batch = match first {
                    Some(Ok(message)) => vec![message],
                    Some(Err(err)) => {
                        // Missed heartbeats and the like while NATS is away: the stream
                        // recovers by itself; log and keep pulling. A consumer that
                        // comes and goes is looked up again (it may have been deleted).
                        tracing::warn!(consumer = %this.label, error = %err, "pulling messages failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if matches!(this.consumer, ConsumerSource::WhenPresent { .. }) {
                            continue 'pull;
                        }
                        continue;
                    }
                    None => continue 'pull,
                };
                // Take what has already arrived, without waiting for more (`next` is
                // cancel-safe: a message not taken now stays in the stream).
                fill_batch(
                    &mut batch,
                    this.batch_size,
                    this.batch_max_bytes,
                    |message| message.payload.len(),
                    || match messages.next().now_or_never() {
                        Some(Some(Ok(message))) => Some(message),
                        Some(Some(Err(err))) => {
                            tracing::warn!(consumer = %this.label, error = %err, "pulling messages failed");
                            None
                        }
                        _ => None,
                    },
                );
                let this = this.clone();
                in_flight.spawn(async move {
                    this.process(batch).await;
                    drop(permit);
                });
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

    /// Handles a batch: each message gets a consumer span that continues its publisher's
    /// trace (from its `traceparent` header), so a trace runs on from the API through
    /// every worker, batch or not.
    async fn process(&self, messages: Vec<jetstream::Message>) {
        let timer = std::time::Instant::now();
        let mut batch = Vec::with_capacity(messages.len());
        let mut kept = Vec::with_capacity(messages.len());
        for message in messages {
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
            match inbound(&message, span.clone()) {
                Ok(inbound) => {
                    span.record("seq", inbound.stream_sequence);
                    span.record("delivered", inbound.delivered);
                    batch.push(inbound);
                    kept.push(message);
                }
                Err(err) => {
                    let _entered = span.enter();
                    tracing::error!(error = %err, "not a JetStream message; terminating it");
                    let _ = message.ack_with(AckKind::Term).await;
                }
            }
        }
        if batch.is_empty() {
            return;
        }

        // Long batches (a slow SMTP server) tell the server they are alive, so their
        // messages are not redelivered to another worker meanwhile. The reports live in
        // this future: when it is dropped (a crash, a drain timeout), they stop too.
        let every = (self.ack_wait / 2).max(Duration::from_millis(500));
        let mut reports = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let handling = self.handler.handle_batch(&batch);
        tokio::pin!(handling);
        let verdicts = loop {
            tokio::select! {
                verdicts = &mut handling => break verdicts,
                _ = reports.tick() => {
                    for message in &kept {
                        if let Err(err) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(error = %err, "progress report failed");
                        }
                    }
                }
            }
        };
        let elapsed = timer.elapsed().as_secs_f64();
        join_all(
            kept.iter()
                .zip(&batch)
                .zip(verdicts)
                .map(|((message, inbound), verdict)| {
                    let span = inbound.span.clone();
                    self.settle(message, inbound, verdict, elapsed)
                        .instrument(span)
                }),
        )
        .await;
    }

    /// Carries out a message's verdict: a dead letter first if there is one, then the
    /// ack, NAK or TERM.
    async fn settle(
        &self,
        message: &jetstream::Message,
        inbound: &Inbound,
        verdict: Verdict,
        elapsed: f64,
    ) {
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
                match self.mailroom.dead_letter(&letter, &dedup_key).await {
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
        let span = &inbound.span;
        span.record("outcome", verdict.outcome().as_str());
        if matches!(verdict, Verdict::DeadLetter { .. }) {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .nats_messages
            .with_label_values(&[self.label.as_str(), verdict.outcome().as_str()])
            .inc();
        self.metrics
            .nats_duration
            .with_label_values(&[self.label.as_str()])
            .observe(elapsed);
    }
}

/// The bytes one pull asks for: a batch's worth for every worker, and at least one
/// message of the largest size the server accepts.
fn pull_max_bytes(workers: usize, batch_max_bytes: usize, max_payload: usize) -> usize {
    workers.saturating_mul(batch_max_bytes).max(max_payload)
}

/// Adds to `batch` what `next` yields until the batch holds `max_messages` messages or
/// `max_bytes` of payload (the message that reaches it is the last one taken), or `next`
/// has nothing more.
fn fill_batch<T>(
    batch: &mut Vec<T>,
    max_messages: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
    mut next: impl FnMut() -> Option<T>,
) {
    let mut bytes: usize = batch.iter().map(&size).sum();
    while batch.len() < max_messages && bytes < max_bytes {
        let Some(message) = next() else { break };
        bytes += size(&message);
        batch.push(message);
    }
}

#[cfg(test)]
impl Inbound {
    /// A message as the pool would hand it to a handler, for tests.
    pub(crate) fn for_test(subject: &str, payload: impl Into<Bytes>, delivered: i64) -> Self {
        Inbound {
            subject: subject.to_owned(),
            payload: payload.into(),
            msg_id: None,
            client: None,
            stream_sequence: 7,
            delivered,
            published: Utc::now(),
            span: tracing::Span::none(),
        }
    }
}

fn inbound(message: &jetstream::Message, span: tracing::Span) -> anyhow::Result<Inbound> {
    let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str().to_owned())
    };
    Ok(Inbound {
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
        msg_id: header(async_nats::header::NATS_MESSAGE_ID.as_ref()),
        client: header(wire::CLIENT_HEADER),
        stream_sequence: info.stream_sequence,
        delivered: info.delivered,
        published: info.published,
        span,
    })
}

#[cfg(test)]
mod tests {
    use super::{fill_batch, pull_max_bytes};

    /// `fill_batch` on messages of the given sizes, answering the sizes taken.
    fn filled(first: usize, rest: &[usize], max_messages: usize, max_bytes: usize) -> Vec<usize> {
        let mut rest = rest.iter().copied();
        let mut batch = vec![first];
        fill_batch(&mut batch, max_messages, max_bytes, |&n| n, || rest.next());
        batch
    }

    #[test]
    fn a_batch_takes_what_has_arrived_up_to_its_count() {
        assert_eq!(filled(10, &[10, 10, 10], 3, 1_000), [10, 10, 10]);
        assert_eq!(
            filled(10, &[10], 64, 1_000),
            [10, 10],
            "never waits to fill"
        );
    }

    #[test]
    fn a_batch_stops_growing_once_it_holds_its_bytes() {
        // The message that reaches the bound is the last one taken.
        assert_eq!(filled(100, &[100, 100, 100], 64, 250), [100, 100, 100]);
        assert_eq!(filled(100, &[100, 100, 100], 64, 200), [100, 100]);
        // A first message over the bound is a batch of its own.
        assert_eq!(filled(5_000, &[1, 1], 64, 1_000), [5_000]);
    }

    #[test]
    fn a_pull_asks_for_every_workers_batch_and_never_less_than_one_largest_message() {
        assert_eq!(pull_max_bytes(4, 1 << 20, 1 << 20), 4 << 20);
        assert_eq!(pull_max_bytes(1, 1_000, 1 << 20), 1 << 20);
        assert_eq!(pull_max_bytes(usize::MAX, 2, 1), usize::MAX);
    }
}
