//! The queue gauges: how many emails wait, and how long the most overdue one has, counted
//! from PostgreSQL (which every instance shares) and kept in the instance's metrics for
//! scrapes to read. The queue-gauge worker calls this every `metrics.queue_interval`.

use crate::{error::Result, metrics::PENDING_STATUSES};

use super::Mailroom;

impl Mailroom {
    /// Counts the emails waiting and sets the queue gauges (`mailroom_emails_pending`,
    /// `mailroom_emails_oldest_pending_seconds`), reading at most `limit` unfinished
    /// emails.
    #[tracing::instrument(name = "usecase.observe_queue", skip_all)]
    pub async fn observe_queue(&self, limit: i64) -> Result<()> {
        let stats = self.ports.store.queue_stats(limit).await?;
        for status in PENDING_STATUSES {
            let count = stats
                .pending
                .iter()
                .find(|(of, _)| *of == status)
                .map_or(0, |(_, count)| *count);
            self.metrics
                .emails_pending
                .with_label_values(&[status.as_str()])
                .set(count);
        }
        self.metrics
            .oldest_pending
            .set(stats.oldest_waited.as_secs_f64());
        Ok(())
    }
}
