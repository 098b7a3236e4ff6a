//! The use cases every protocol shares: create, read, search, deliver, reconcile. They
//! speak in domain types and [`crate::Error`], and reach the outside world only through
//! the traits in [`crate::ports`].

mod delivery;
mod emails;
mod group_commit;
mod health;
mod local_cache;
#[cfg(test)]
pub(crate) mod memory;
mod queue;
mod reconcile;
#[cfg(test)]
mod scenarios;
mod sending;
mod suppressions;
mod templates;

use std::{sync::Arc, time::Duration};

pub use delivery::{Delivery, DeliveryPolicy};
pub use emails::{Accepted, Created};
pub use group_commit::GroupCommitSettings;
pub use health::{DependencyCheck, HealthReport};
pub use local_cache::LocalCache;
pub use sending::BatchCreated;
pub use suppressions::{ReportOutcome, SuppressionAdded};
pub use templates::TemplateDraft;

use crate::{
    domain::{DeadLetter, Email, Lane, ReturnPath, Rules, StatusEvent},
    error::Result,
    metrics::Metrics,
    ports::{EmailCache, EmailStore, EventBus, Mailer, SuppressionStore, TemplateStore},
};

/// The adapters the use cases run on.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn EmailStore>,
    pub cache: Arc<dyn EmailCache>,
    pub bus: Arc<dyn EventBus>,
    pub mailer: Arc<dyn Mailer>,
    pub templates: Arc<dyn TemplateStore>,
    pub suppressions: Arc<dyn SuppressionStore>,
}

/// The use-case layer; cheap to clone.
#[derive(Clone)]
pub struct Mailroom {
    ports: Ports,
    /// What a new email must satisfy (`limits.*`), and how Message-IDs are named.
    rules: Arc<Rules>,
    /// The in-process tier in front of `ports.cache` (`cache.local_ttl`).
    local: Arc<LocalCache>,
    policy: Arc<DeliveryPolicy>,
    metrics: Metrics,
    /// Groups synchronous creates into shared transactions; `None`: one each.
    group_commit: Option<group_commit::GroupCommit>,
    /// `smtp.return_path`, which reports are matched by besides the Message-ID.
    return_path: Option<Arc<ReturnPath>>,
    /// `lanes.batch_default`: the lane of a batch's emails that name none.
    batch_lane: Lane,
}

impl Mailroom {
    pub fn new(
        ports: Ports,
        rules: Rules,
        local: LocalCache,
        policy: DeliveryPolicy,
        metrics: Metrics,
    ) -> Self {
        Self {
            ports,
            rules: Arc::new(rules),
            local: Arc::new(local),
            policy: Arc::new(policy),
            metrics,
            group_commit: None,
            return_path: None,
            batch_lane: Lane::default(),
        }
    }

    /// Gives a batch's emails that name no lane this one (`lanes.batch_default`).
    pub fn with_batch_lane(mut self, lane: Lane) -> Self {
        self.batch_lane = lane;
        self
    }

    /// Matches reports by this VERP return path too (`smtp.return_path`).
    pub fn with_return_path(mut self, return_path: Option<ReturnPath>) -> Self {
        self.return_path = return_path.map(Arc::new);
        self
    }

    /// Stores synchronous creates that arrive together in one transaction (see
    /// [`group_commit`]). Starts the committers, so it needs a Tokio runtime.
    pub fn with_group_commit(mut self, settings: GroupCommitSettings) -> Self {
        self.group_commit = Some(group_commit::GroupCommit::start(self.clone(), settings));
        self
    }

    /// The metrics the use cases keep, for tests to read.
    #[cfg(test)]
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Publishes a message that cannot be handled on the dead-letter subject, so nothing
    /// is dropped silently; `dedup_key` makes publishing the same letter again a no-op.
    #[tracing::instrument(name = "usecase.dead_letter", skip_all, fields(subject = %letter.subject))]
    pub async fn dead_letter(&self, letter: &DeadLetter, dedup_key: &str) -> Result<()> {
        self.ports.bus.publish_dead_letter(letter, dedup_key).await
    }

    /// Follows a status change: metrics, both cache tiers and the `mail:status` event.
    /// None of these may fail the change itself, which PostgreSQL already holds.
    async fn status_changed(&self, email: &Email, error: Option<&str>) {
        self.metrics.email_entered(email.status);
        // This instance's readers see the change at once, whatever Redis does.
        if self.local.is_enabled() {
            self.local.store(Arc::new(email.clone()));
        }
        let event = StatusEvent {
            email_id: email.id,
            status: email.status,
            attempt: email.attempts,
            error: error.map(str::to_owned),
            at: email.updated_at,
            tags: email.tags.clone(),
            message_id: Some(email.message_id.clone()),
            from: Some(email.from.to_string()),
            to: email.to.iter().map(ToString::to_string).collect(),
            subject: Some(email.subject.clone()),
        };
        // Independent of each other: one round trip's wait instead of two.
        let (cached, published) = tokio::join!(
            self.ports.cache.put(email),
            self.ports.bus.publish_status(&event)
        );
        if let Err(err) = cached {
            tracing::warn!(email.id = %email.id, error = format!("{err:#}"), "could not refresh the cached email");
        }
        if let Err(err) = published {
            tracing::warn!(email.id = %email.id, error = err.with_causes(), "could not publish the status event");
        }
    }
}

/// The wait before retry number `attempt` (1-based) from a schedule whose last entry
/// repeats.
pub fn backoff(schedule: &[Duration], attempt: u32) -> Duration {
    let index = (attempt.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    schedule
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_walks_the_schedule_and_repeats_its_last_entry() {
        let schedule = [Duration::from_secs(30), Duration::from_secs(120)];
        assert_eq!(backoff(&schedule, 1), Duration::from_secs(30));
        assert_eq!(backoff(&schedule, 2), Duration::from_secs(120));
        assert_eq!(backoff(&schedule, 9), Duration::from_secs(120));
        assert_eq!(backoff(&schedule, 0), Duration::from_secs(30));
    }
}
