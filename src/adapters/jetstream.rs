//! NATS JetStream: the stream holding every mailroom subject, the durable consumers the
//! workers share, and the event bus the use cases publish through.
//!
//! Publishes wait for the server's PubAck (at-least-once from the publisher's side) and
//! carry a `Nats-Msg-Id`, so a publish repeated after a lost ack is dropped by the
//! server's duplicate window. At most `nats.publish.max_ack_inflight` publishes wait for
//! their ack at once; more wait their turn (backpressure, not errors).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{
    self, Context, ErrorCode,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    context::{PublishAckFuture, PublishError, PublishErrorKind},
    message::PublishMessage,
    stream::{self, ConsumerErrorKind, DiscardPolicy, RetentionPolicy, StorageType},
};
use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    config::{ConsumerSettings, DeliverPolicySetting, NatsSettings, StreamStorage, redact_url},
    domain::{DeadLetter, EmailId, Lane, NewEmail, SendEvent, StatusEvent},
    error::{Dependency, Error, Result},
    ports::{CreateRequest, EventBus, SendReason},
    retry,
    telemetry::propagation,
    wire::{CLIENT_HEADER, CreateEvent},
};

/// Subjects with the isolation prefix applied.
#[derive(Debug, Clone)]
pub struct Subjects {
    pub create: String,
    pub send: String,
    /// Send events of bulk mail, consumed apart from `send`.
    pub send_bulk: String,
    pub errors: String,
    pub status: String,
    pub webhook: String,
}

impl Subjects {
    pub fn new(settings: &NatsSettings) -> Self {
        Subjects {
            create: settings.subject(&settings.subjects.create),
            send: settings.subject(&settings.subjects.send),
            send_bulk: settings.subject(&settings.subjects.send_bulk),
            errors: settings.subject(&settings.subjects.errors),
            status: settings.subject(&settings.subjects.status),
            webhook: settings.subject(&settings.subjects.webhook),
        }
    }

    /// Where the send events of `lane` go.
    pub fn send_of(&self, lane: Lane) -> &str {
        match lane {
            Lane::Transactional => &self.send,
            Lane::Bulk => &self.send_bulk,
        }
    }

    fn all(&self) -> Vec<String> {
        vec![
            self.create.clone(),
            self.send.clone(),
            self.send_bulk.clone(),
            self.errors.clone(),
            self.status.clone(),
            self.webhook.clone(),
        ]
    }
}

/// A connected JetStream context with the stream in place.
#[derive(Clone)]
pub struct JetStream {
    pub client: async_nats::Client,
    pub context: Context,
    pub stream_name: String,
    /// The stream's name and creation time: sequences are unique within it.
    pub stream_incarnation: String,
    pub subjects: Subjects,
    /// Largest `mail:create` event the create workers take (`nats.max_event_bytes`).
    pub max_event_bytes: usize,
}

impl JetStream {
    /// Connects to one of the servers `nats.url` lists and creates (or updates) the
    /// stream. Retries for `patience`, so a NATS server that starts a little after
    /// mailroom is waited for.
    pub async fn connect(settings: &NatsSettings, patience: Duration) -> anyhow::Result<Self> {
        let servers = settings.server_addrs()?;
        let shown: Vec<String> = settings.url.split(',').map(redact_url).collect();
        let shown = shown.join(",");
        let client = retry::until_deadline(patience, "NATS", || {
            async_nats::ConnectOptions::new()
                .name("mailroom")
                .connection_timeout(Duration::from_secs(2))
                .connect(servers.clone())
        })
        .await
        .with_context(|| format!("connecting to NATS at {shown}"))?;
        let context = jetstream::ContextBuilder::new()
            .timeout(settings.publish.ack_timeout)
            .max_ack_inflight(settings.publish.max_ack_inflight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let subjects = Subjects::new(settings);
        let stream_name = settings.stream_name();
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: subjects.all(),
            // Limits, not WorkQueue: history stays replayable by time and sequence.
            retention: RetentionPolicy::Limits,
            storage: match settings.storage {
                StreamStorage::File => StorageType::File,
                StreamStorage::Memory => StorageType::Memory,
            },
            max_age: settings.max_age,
            max_bytes: settings.max_bytes,
            max_messages: settings.max_messages,
            discard: DiscardPolicy::Old,
            duplicate_window: settings.duplicate_window,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let info = context
            .create_or_update_stream(config)
            .await
            .with_context(|| format!("creating or updating the JetStream stream {stream_name}"))?;
        let stream_incarnation = format!("{stream_name}@{}", info.created.to_rfc3339());
        Ok(JetStream {
            client,
            context,
            stream_name,
            stream_incarnation,
            subjects,
            max_event_bytes: settings.max_event_bytes,
        })
    }

    /// Creates the durable pull consumer on `subject`, shared by every instance, or
    /// updates it to the configured settings. Settings the server cannot change on an
    /// existing consumer (the deliver policy and its start point) stop the start with a
    /// message saying what to do, rather than being silently ignored.
    pub async fn durable_consumer(
        &self,
        durable: &str,
        subject: &str,
        settings: &ConsumerSettings,
    ) -> anyhow::Result<PullConsumer> {
        let stream = self.context.get_stream(&self.stream_name).await?;
        let config = pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: subject.to_owned(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: settings.ack_wait,
            max_deliver: settings.max_deliver,
            max_ack_pending: settings.max_ack_pending,
            deliver_policy: deliver_policy(settings),
            ..Default::default()
        };
        stream.create_consumer(config).await.with_context(|| {
            format!(
                "creating or updating the durable consumer {durable} on {subject} (a deliver policy \
                 cannot change on an existing consumer: delete it, or choose a new durable name)"
            )
        })
    }

    /// Publishes `value` as JSON and waits for the PubAck.
    async fn publish_json<T: serde::Serialize>(
        &self,
        subject: &str,
        value: &T,
        msg_id: &str,
    ) -> Result<()> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::Internal(e.into()))?;
        self.publish(subject, payload.into(), Some(msg_id)).await?;
        Ok(())
    }

    /// Publishes and waits for the PubAck. The message carries the current trace context
    /// (`traceparent`), so its consumer continues the publisher's trace.
    pub async fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        msg_id: Option<&str>,
    ) -> Result<u64> {
        self.try_publish(subject, payload, msg_id)
            .await
            .map_err(|e| Error::unavailable(Dependency::Nats, e))
    }

    /// [`Self::publish`] with the client's own error, for callers that tell its kinds
    /// apart.
    async fn try_publish(
        &self,
        subject: &str,
        payload: Bytes,
        msg_id: Option<&str>,
    ) -> Result<u64, PublishError> {
        let ack = self
            .try_send(subject, payload, msg_id_header(msg_id))
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Hands a message to the connection without waiting for its PubAck (a background
    /// task collects it); waits only while `max_ack_inflight` publishes are unacknowledged.
    async fn try_send(
        &self,
        subject: &str,
        payload: Bytes,
        mut headers: async_nats::HeaderMap,
    ) -> Result<PublishAckFuture, PublishError> {
        propagation::inject_nats(&mut headers);
        let mut publish = PublishMessage::build().payload(payload);
        if !headers.is_empty() {
            publish = publish.headers(headers);
        }
        self.context.send_publish(subject.to_owned(), publish).await
    }
}

/// Headers holding `Nats-Msg-Id`, when there is one.
fn msg_id_header(msg_id: Option<&str>) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(msg_id) = msg_id {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    }
    headers
}

impl JetStream {
    /// Creates the durable pull consumer `durable` on `subject`, starting with the
    /// messages published from `start` on, unless it exists (an existing one is left
    /// as it is: it has read past `start` already, or it would not exist).
    pub async fn ensure_consumer_from(
        &self,
        durable: &str,
        subject: &str,
        settings: &ConsumerSettings,
        start: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        let stream = self.context.get_stream(&self.stream_name).await?;
        let config = pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: subject.to_owned(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: settings.ack_wait,
            max_deliver: settings.max_deliver,
            max_ack_pending: settings.max_ack_pending,
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        };
        stream
            .get_or_create_consumer(durable, config)
            .await
            .with_context(|| format!("creating the durable consumer {durable} on {subject}"))?;
        Ok(())
    }

    /// Deletes the durable consumer `durable`, if there is one.
    pub async fn delete_consumer(&self, durable: &str) -> anyhow::Result<()> {
        let stream = self.context.get_stream(&self.stream_name).await?;
        match stream.delete_consumer(durable).await {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(err.kind(), ConsumerErrorKind::JetStream(inner)
                    if inner.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
            {
                Ok(())
            }
            Err(err) => {
                Err(anyhow::Error::new(err)
                    .context(format!("deleting the durable consumer {durable}")))
            }
        }
    }

    /// The durable consumer `durable`, when it exists (and NATS answers).
    pub async fn consumer_named(&self, durable: &str) -> Option<PullConsumer> {
        let stream = self.context.get_stream(&self.stream_name).await.ok()?;
        stream.get_consumer(durable).await.ok()
    }
}

fn deliver_policy(settings: &ConsumerSettings) -> DeliverPolicy {
    match settings.deliver_policy {
        DeliverPolicySetting::All => DeliverPolicy::All,
        DeliverPolicySetting::Last => DeliverPolicy::Last,
        DeliverPolicySetting::LastPerSubject => DeliverPolicy::LastPerSubject,
        DeliverPolicySetting::New => DeliverPolicy::New,
        // Settings::check ensures the start points are present.
        DeliverPolicySetting::ByStartSequence => DeliverPolicy::ByStartSequence {
            start_sequence: settings.start_sequence.unwrap_or(1),
        },
        DeliverPolicySetting::ByStartTime => DeliverPolicy::ByStartTime {
            start_time: settings.start_time.unwrap_or_default(),
        },
    }
}

#[async_trait]
impl EventBus for JetStream {
    #[tracing::instrument(
        name = "nats.publish create",
        skip_all,
        fields(
            otel.name = format!("publish {}", self.subjects.create),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %self.subjects.create,
            email.id = %email.id,
        ),
        err
    )]
    async fn request_create(&self, email: &NewEmail) -> Result<CreateRequest> {
        let payload = serde_json::to_vec(&CreateEvent::from_new_email(email))
            .map_err(|e| Error::Internal(e.into()))?;
        // A valid email (message and HTML up to 1 MiB each) can be larger than the create
        // workers take, or than the server's `max_payload` (1 MiB unless configured).
        if payload.len() > self.max_event_bytes {
            return Ok(CreateRequest::TooLarge);
        }
        // JetStream drops a repeated Nats-Msg-Id: one client's key must not drop another
        // client's email, so the id names the client. The key itself is in the event.
        let msg_id = match &email.idempotency_key {
            Some(key) if email.idempotency_client.is_empty() => key.clone(),
            Some(key) => format!("{}/{key}", email.idempotency_client),
            None => email.id.to_string(),
        };
        let mut headers = msg_id_header(Some(&msg_id));
        if !email.idempotency_client.is_empty() {
            headers.insert(CLIENT_HEADER, email.idempotency_client.as_str());
        }
        let published = async {
            self.try_send(&self.subjects.create, payload.into(), headers)
                .await?
                .await
        };
        match published.await {
            Ok(_) => Ok(CreateRequest::Published),
            Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Ok(CreateRequest::TooLarge)
            }
            Err(err) => Err(Error::unavailable(Dependency::Nats, err)),
        }
    }

    #[tracing::instrument(
        name = "nats.publish send",
        skip_all,
        fields(
            otel.name = format!("publish {}", self.subjects.send_of(lane)),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %self.subjects.send_of(lane),
            email.id = %id,
        ),
        err
    )]
    async fn request_send(&self, id: EmailId, lane: Lane, reason: SendReason) -> Result<()> {
        let msg_id = match reason {
            SendReason::Created => format!("send:{id}"),
            SendReason::Reconciled => {
                format!("send:{id}:{}", chrono::Utc::now().timestamp_millis())
            }
        };
        self.publish_json(
            self.subjects.send_of(lane),
            &SendEvent { email_id: id },
            &msg_id,
        )
        .await
    }

    #[tracing::instrument(
        name = "nats.publish status",
        skip_all,
        fields(
            otel.name = format!("publish {}", self.subjects.status),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %self.subjects.status,
            email.id = %event.email_id,
        ),
        err
    )]
    async fn publish_status(&self, event: &StatusEvent) -> Result<()> {
        let msg_id = format!(
            "status:{}:{}:{}",
            event.email_id, event.attempt, event.status
        );
        let payload = serde_json::to_vec(event).map_err(|e| Error::Internal(e.into()))?;
        // Status events inform; nothing waits on their PubAck, so a status change costs no
        // round trip. The in-flight bound still applies, and the messages keep their
        // order on the connection.
        self.try_send(
            &self.subjects.status,
            payload.into(),
            msg_id_header(Some(&msg_id)),
        )
        .await
        .map_err(|e| Error::unavailable(Dependency::Nats, e))?;
        Ok(())
    }

    #[tracing::instrument(
        name = "nats.publish dead letter",
        skip_all,
        fields(
            otel.name = format!("publish {}", self.subjects.errors),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %self.subjects.errors,
            subject = %letter.subject,
        ),
        err
    )]
    async fn publish_dead_letter(&self, letter: &DeadLetter, dedup_key: &str) -> Result<()> {
        self.publish(
            &self.subjects.errors,
            letter.to_json().into(),
            Some(&format!("dead:{dedup_key}")),
        )
        .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Error::unavailable(
                Dependency::Nats,
                anyhow::anyhow!("NATS connection is {state:?}"),
            )),
        }
    }
}
