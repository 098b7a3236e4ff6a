//! The retriers: one loop per instance publishes the attempts of the deliveries that
//! are due (a failed attempt's next time on the schedule, or an attempt given up as
//! lost after its lease). The store hands each due delivery to one instance only. The
//! loop also checks, now and then, that the dispatcher's consumer exists exactly when
//! an endpoint is enabled.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AttemptRequest, Publish, Webhooks};
use crate::workers::{Pass, next_pass};

/// How often each instance checks that the dispatcher's consumer exists exactly when an
/// endpoint is enabled.
const DISPATCHER_SYNC_INTERVAL: Duration = Duration::from_secs(30);

pub struct Retrier {
    pub webhooks: Webhooks,
}

impl Retrier {
    /// Publishes due attempts until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let pass = Pass {
            interval: self.webhooks.settings.poll_interval,
            batch_size: self.webhooks.settings.poll_batch_size,
        };
        let mut last_sync = tokio::time::Instant::now();
        loop {
            // A safety net for a change whose own sync failed (NATS was away).
            if last_sync.elapsed() >= DISPATCHER_SYNC_INTERVAL {
                last_sync = tokio::time::Instant::now();
                if let Err(err) = self.webhooks.sync_dispatcher().await {
                    tracing::warn!(
                        error = err.with_causes(),
                        "could not sync the webhook dispatcher's consumer"
                    );
                }
            }
            let wait = match self.pass(pass).await {
                Ok((published, next_due)) => {
                    next_pass(pass, published, next_due, chrono::Utc::now())
                }
                Err(err) => {
                    tracing::warn!(error = err.with_causes(), "webhook retrier pass failed");
                    pass.interval
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn pass(
        &self,
        pass: Pass,
    ) -> crate::error::Result<(usize, Option<chrono::DateTime<chrono::Utc>>)> {
        let (due, next_due) = self
            .webhooks
            .store
            .claim_due(pass.batch_size, self.webhooks.lease)
            .await?;
        let published = futures::future::join_all(due.iter().map(|&(id, attempts)| async move {
            let request = AttemptRequest {
                delivery_id: id,
                attempts,
                manual: false,
            };
            self.webhooks
                .publish_attempt(&request, Publish::Again)
                .await
        }))
        .await;
        if let Some(Err(err)) = published.into_iter().find(Result::is_err) {
            // Those not published are due again when their lease is over.
            tracing::warn!(error = err.with_causes(), "webhook attempts not published");
        }
        Ok((due.len(), next_due))
    }
}
