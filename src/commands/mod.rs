//! Admin commands that talk to a running deployment's NATS stream and database:
//! `mailroom events tail` and `mailroom dlq list|redrive`.

pub mod dlq;
pub mod events;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::adapters::jetstream::JetStream;

/// A payload for printing: JSON stays JSON, other UTF-8 text is a string, anything else
/// is base64 (with `dataEncoding`).
pub fn payload_json(payload: &[u8]) -> (Value, Option<&'static str>) {
    if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        return (value, None);
    }
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::String(text.to_owned()), None),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
            Some("base64"),
        ),
    }
}

/// Reads messages from the stream with an ephemeral ordered consumer, which leaves the
/// durable consumers (and their acknowledgements) untouched. Calls `each` for every
/// message until it returns false, the optional `limit` is reached, or, without
/// `follow`, the stream has no more messages for now.
pub async fn read_stream(
    jetstream: &JetStream,
    filter_subject: Option<&str>,
    deliver_policy: DeliverPolicy,
    follow: bool,
    mut each: impl FnMut(&async_nats::jetstream::Message) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let stream = jetstream.context.get_stream(&jetstream.stream_name).await?;
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter_subject.unwrap_or_default().to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    if !follow && consumer.info().await?.num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        if !each(&message)? {
            break;
        }
        if !follow && message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending == 0 {
            break;
        }
    }
    Ok(())
}

/// A stored message as one JSON object.
pub fn message_json(message: &async_nats::jetstream::Message) -> anyhow::Result<Value> {
    let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (data, encoding) = payload_json(&message.payload);
    let mut line = json!({
        "subject": message.subject.as_str(),
        "sequence": info.stream_sequence,
        "time": info.published.to_rfc3339(),
        "data": data,
    });
    if let Some(encoding) = encoding {
        line["dataEncoding"] = json!(encoding);
    }
    if let Some(msg_id) = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
    {
        line["msgId"] = json!(msg_id.as_str());
    }
    Ok(line)
}
