//! `mailroom events tail`: prints the stream's events as JSON lines, from a chosen start
//! (the historical replay of the original NATS Streaming service).

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::consumer::DeliverPolicy;
use chrono::{DateTime, Utc};

use crate::{adapters::jetstream::JetStream, config::NatsSettings};

use super::{message_json, read_stream};

/// The subject `--subject` names: a configured short name (`mail:create`) gets the
/// deployment's prefix; anything else is taken as written.
pub fn resolve_subject(settings: &NatsSettings, subject: &str) -> String {
    let names = &settings.subjects;
    if [&names.create, &names.send, &names.errors, &names.status].contains(&&subject.to_owned()) {
        settings.subject(subject)
    } else {
        subject.to_owned()
    }
}

/// Parses `--start`: `all`, `last`, `last_per_subject`, `new`, `seq:N`, `time:RFC3339`,
/// `ago:DURATION` (like `30s`, `5m`).
pub fn parse_start(start: &str, now: DateTime<Utc>) -> anyhow::Result<DeliverPolicy> {
    Ok(match start {
        "all" => DeliverPolicy::All,
        "last" => DeliverPolicy::Last,
        "last_per_subject" => DeliverPolicy::LastPerSubject,
        "new" => DeliverPolicy::New,
        _ => match start.split_once(':') {
            Some(("seq", n)) => DeliverPolicy::ByStartSequence {
                start_sequence: n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("seq:{n}: a sequence is a number from 1"))?,
            },
            Some(("time", at)) => DeliverPolicy::ByStartTime {
                start_time: DateTime::parse_from_rfc3339(at)
                    .with_context(|| format!("time:{at}: not an RFC 3339 time"))?
                    .with_timezone(&Utc),
            },
            Some(("ago", duration)) => {
                let duration: Duration = humantime::parse_duration(duration)
                    .with_context(|| format!("ago:{duration}: not a duration like 30s or 5m"))?;
                DeliverPolicy::ByStartTime {
                    start_time: now - chrono::Duration::from_std(duration)?,
                }
            }
            _ => bail!(
                "--start {start:?}: use all, last, last_per_subject, new, seq:N, time:RFC3339 or ago:DURATION"
            ),
        },
    })
}

/// Prints events from `start`, following new ones unless `follow` is false, until
/// `limit` events were printed.
pub async fn tail(
    jetstream: &JetStream,
    subject: Option<&str>,
    start: &str,
    limit: Option<usize>,
    follow: bool,
) -> anyhow::Result<()> {
    let policy = parse_start(start, Utc::now())?;
    let mut printed = 0;
    if limit == Some(0) {
        return Ok(());
    }
    read_stream(jetstream, subject, policy, follow, |message| {
        println!("{}", message_json(message)?);
        printed += 1;
        Ok(limit.is_none_or(|limit| printed < limit))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_form_parses() {
        let now = Utc::now();
        assert_eq!(parse_start("all", now).unwrap(), DeliverPolicy::All);
        assert_eq!(parse_start("last", now).unwrap(), DeliverPolicy::Last);
        assert_eq!(
            parse_start("last_per_subject", now).unwrap(),
            DeliverPolicy::LastPerSubject
        );
        assert_eq!(parse_start("new", now).unwrap(), DeliverPolicy::New);
        assert_eq!(
            parse_start("seq:42", now).unwrap(),
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
        assert_eq!(
            parse_start("time:2026-11-26T10:00:00Z", now).unwrap(),
            DeliverPolicy::ByStartTime {
                start_time: "2026-11-26T10:00:00Z".parse().unwrap()
            }
        );
        assert_eq!(
            parse_start("ago:5m", now).unwrap(),
            DeliverPolicy::ByStartTime {
                start_time: now - chrono::Duration::minutes(5)
            }
        );
    }

    #[test]
    fn short_subject_names_get_the_prefix() {
        let mut settings = crate::config::Settings::load(&crate::config::Sources {
            profile: Some("test".into()),
            config_dir: Some("/nonexistent".into()),
            file: None,
        })
        .unwrap()
        .nats;
        settings.prefix = "t1.".into();
        assert_eq!(resolve_subject(&settings, "mail:create"), "t1.mail:create");
        assert_eq!(resolve_subject(&settings, "t1.mail:send"), "t1.mail:send");
        assert_eq!(resolve_subject(&settings, "other.>"), "other.>");
    }

    #[test]
    fn bad_starts_are_explained() {
        for bad in ["seq:0", "seq:x", "time:yesterday", "ago:soon", "first", ""] {
            let err = parse_start(bad, Utc::now()).unwrap_err();
            assert!(!format!("{err:#}").is_empty(), "{bad}");
        }
    }
}
