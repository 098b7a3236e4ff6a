//! The queue gauges' loop: every `metrics.queue_interval`, each instance counts the
//! emails waiting (see [`Mailroom::observe_queue`]), so a scrape reads numbers kept
//! ready instead of querying a large table. A failed count (PostgreSQL down) leaves the
//! gauges as they were and is logged; the next tick tries again.

use tokio_util::sync::CancellationToken;

use crate::{config::MetricsSettings, usecase::Mailroom};

use super::periodic::every;

pub struct QueueGauges {
    pub mailroom: Mailroom,
    pub settings: MetricsSettings,
}

impl QueueGauges {
    /// Counts at once, then every interval, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        every(self.settings.queue_interval, shutdown, || async {
            if let Err(err) = self
                .mailroom
                .observe_queue(self.settings.queue_count_limit)
                .await
            {
                tracing::warn!(
                    error = err.with_causes(),
                    "could not count the emails waiting"
                );
            }
        })
        .await;
    }
}
