//! The scheduler: moves scheduled emails to `queued` when their time comes, on every
//! instance at once (the store releases each email to one of them only). No task
//! sleeps per email: one loop per instance asks the store for what is due, then sleeps
//! until the next email's time or `scheduler.interval`, whichever comes first (the
//! interval bounds how late an email scheduled by another instance is noticed).
//! PostgreSQL holds the truth, so a restart or a crash loses nothing: the next pass
//! finds what is due.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{config::SchedulerSettings, usecase::Mailroom};

pub struct Scheduler {
    pub mailroom: Mailroom,
    pub settings: SchedulerSettings,
}

impl Scheduler {
    /// Releases due emails until `shutdown`; a pass in progress is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let wait = match self.mailroom.release_due(self.settings.batch_size).await {
                Ok((released, next_due)) => next_pass(
                    Pass {
                        interval: self.settings.interval,
                        batch_size: self.settings.batch_size,
                    },
                    released,
                    next_due,
                    chrono::Utc::now(),
                ),
                Err(err) => {
                    tracing::warn!(error = err.with_causes(), "scheduler pass failed");
                    self.settings.interval
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// How a polling loop goes: at least one pass per `interval`, at most `batch_size`
/// items per pass.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    pub interval: Duration,
    pub batch_size: i64,
}

/// How long to sleep after a pass that took `released` items, when the earliest still
/// waiting is due at `next_due`: not at all after a full batch (more may be due), until
/// the next one's time when that is sooner than the interval. (The scheduler's, and the
/// webhook retriers'.)
pub fn next_pass(
    settings: Pass,
    released: usize,
    next_due: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Duration {
    if released as i64 >= settings.batch_size {
        return Duration::ZERO;
    }
    next_due
        .map(|due| (due - now).to_std().unwrap_or_default())
        .unwrap_or(settings.interval)
        .min(settings.interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Pass {
        Pass {
            interval: Duration::from_millis(250),
            batch_size: 10,
        }
    }

    #[test]
    fn the_scheduler_sleeps_until_the_next_email_or_the_interval_whichever_is_sooner() {
        let now = Utc::now();
        let soon = now + chrono::Duration::milliseconds(40);
        let later = now + chrono::Duration::seconds(30);
        let past = now - chrono::Duration::seconds(1);
        assert_eq!(
            next_pass(settings(), 0, Some(soon), now),
            Duration::from_millis(40)
        );
        assert_eq!(
            next_pass(settings(), 0, Some(later), now),
            Duration::from_millis(250)
        );
        assert_eq!(
            next_pass(settings(), 0, None, now),
            Duration::from_millis(250)
        );
        assert_eq!(
            next_pass(settings(), 3, Some(past), now),
            Duration::ZERO,
            "due already"
        );
        assert_eq!(
            next_pass(settings(), 10, Some(later), now),
            Duration::ZERO,
            "a full batch"
        );
    }
}
