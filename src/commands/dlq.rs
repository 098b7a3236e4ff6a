//! `mailroom dlq list|redrive`: the dead letters on `mail:errors`, and putting them back
//! on their original subject once the cause is fixed.
//!
//! A redriven send event first gives its email a fresh retry budget (a `failed` email is
//! queued again), so the send worker tries it anew rather than dead-lettering it again.
//! A redriven letter is removed from the stream: `dlq list` shows what is outstanding.

use anyhow::{Context, bail};
use async_nats::jetstream::consumer::DeliverPolicy;
use serde_json::json;

use crate::{
    adapters::jetstream::JetStream,
    domain::{DeadLetter, SendEvent},
    usecase::Mailroom,
};

use super::{payload_json, read_stream};

/// Prints every outstanding dead letter as a JSON line, with `dlqSequence`, the number
/// `redrive --seq` takes.
pub async fn list(jetstream: &JetStream, limit: Option<usize>) -> anyhow::Result<usize> {
    let mut printed = 0;
    read_stream(
        jetstream,
        Some(&jetstream.subjects.errors),
        DeliverPolicy::All,
        false,
        |message| {
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let line = match DeadLetter::from_json(&message.payload) {
                Ok(letter) => {
                    let (data, encoding) = payload_json(&letter.data);
                    let mut line = json!({
                        "dlqSequence": info.stream_sequence,
                        "subject": letter.subject,
                        "sequence": letter.sequence,
                        "error": letter.error,
                        "deliveries": letter.deliveries,
                        "timestamp": letter.timestamp,
                        "time": letter.time,
                        "data": data,
                    });
                    if let Some(encoding) = encoding {
                        line["dataEncoding"] = json!(encoding);
                    }
                    line
                }
                Err(err) => json!({
                    "dlqSequence": info.stream_sequence,
                    "error": format!("unreadable dead letter: {err}"),
                }),
            };
            println!("{line}");
            printed += 1;
            Ok(limit.is_none_or(|limit| printed < limit))
        },
    )
    .await?;
    Ok(printed)
}

/// Which letters to redrive.
#[derive(Debug, Clone, Copy)]
pub enum Selection {
    One(u64),
    All,
}

/// Redrives the selected dead letters; returns how many.
pub async fn redrive(
    jetstream: &JetStream,
    mailroom: &Mailroom,
    selection: Selection,
) -> anyhow::Result<usize> {
    let sequences = match selection {
        Selection::One(sequence) => vec![sequence],
        Selection::All => {
            let mut all = Vec::new();
            read_stream(
                jetstream,
                Some(&jetstream.subjects.errors),
                DeliverPolicy::All,
                false,
                |message| {
                    all.push(
                        message
                            .info()
                            .map_err(|e| anyhow::anyhow!("{e}"))?
                            .stream_sequence,
                    );
                    Ok(true)
                },
            )
            .await?;
            all
        }
    };
    for sequence in &sequences {
        redrive_one(jetstream, mailroom, *sequence).await?;
    }
    Ok(sequences.len())
}

async fn redrive_one(
    jetstream: &JetStream,
    mailroom: &Mailroom,
    sequence: u64,
) -> anyhow::Result<()> {
    let stream = jetstream.context.get_stream(&jetstream.stream_name).await?;
    let stored = stream.get_raw_message(sequence).await.with_context(|| {
        format!(
            "no message with sequence {sequence} in {}",
            jetstream.stream_name
        )
    })?;
    if stored.subject.as_str() != jetstream.subjects.errors {
        bail!(
            "message {sequence} is on {}, not a dead letter",
            stored.subject
        );
    }
    let letter = DeadLetter::from_json(&stored.payload)
        .with_context(|| format!("dead letter {sequence} cannot be read"))?;
    let subjects = &jetstream.subjects;
    if letter.subject == subjects.send || letter.subject == subjects.send_bulk {
        if let Ok(event) = serde_json::from_slice::<SendEvent>(&letter.data)
            && mailroom.requeue(event.email_id).await?.is_some()
        {
            eprintln!(
                "email {} queued again with a fresh retry budget",
                event.email_id
            );
        }
    } else if letter.subject != subjects.create {
        bail!(
            "dead letter {sequence} came from {}, which mailroom does not consume",
            letter.subject
        );
    }
    // A new message id: the original may still be within the duplicate window.
    jetstream
        .publish(
            &letter.subject,
            letter.data.clone().into(),
            Some(&format!("redrive:{sequence}")),
        )
        .await?;
    stream
        .delete_message(sequence)
        .await
        .with_context(|| format!("removing redriven dead letter {sequence}"))?;
    eprintln!("redrove dead letter {sequence} to {}", letter.subject);
    Ok(())
}
