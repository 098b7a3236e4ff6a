//! Managing endpoints: the rules a registration follows, the secret and its rotation,
//! the delivery log and retries asked for by hand.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use uuid::Uuid;

use super::{
    AttemptRequest, DeliveryStatus, Webhook,
    store::{DeliveryPage, Edit, Subscription, WebhookStore},
    target::{self, TargetPolicy},
};
use crate::{
    adapters::jetstream::JetStream,
    config::{ConsumerSettings, WebhookSettings},
    domain::{Cursor, EventSelection, Field, Violation, Violations, WebhookSecret},
    error::{Dependency, Error, Result},
};

/// How far the dispatcher's consumer starts before the earliest endpoint's `since`.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::seconds(30);

/// Longest description.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// Longest URL.
const MAX_URL_CHARS: usize = 2048;
/// How long the dispatcher trusts its list of subscriptions; changes made on this
/// instance take effect at once, those made on another within this long.
const SUBSCRIPTIONS_TTL: Duration = Duration::from_secs(1);

/// A registration as asked for.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
}

/// An edit as asked for (`None`: unchanged; `description: Some(None)` clears it).
#[derive(Debug, Clone, Default)]
pub struct WebhookChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

type Subscriptions = Arc<Vec<Subscription>>;

/// The dispatcher's durable consumer: created while endpoints are enabled, deleted
/// when none is, so that status events cost nothing when no one listens.
#[derive(Debug, Clone)]
pub struct DispatcherConsumer {
    /// The durable name, prefix included.
    pub durable: String,
    /// The status subject, prefix included.
    pub subject: String,
    pub settings: ConsumerSettings,
}

/// Which publish of a delivery's attempt this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// The dispatcher's, for a delivery it has just stored.
    NewDelivery,
    /// Any later one: a retry, a delivery put off, a retry asked for by hand.
    Again,
}

/// The webhooks use cases, shared by the REST API and the workers.
#[derive(Clone)]
pub struct Webhooks {
    pub store: WebhookStore,
    pub settings: WebhookSettings,
    /// How long a published attempt has to be made before its delivery is due again:
    /// a request's timeout and the message's ack wait.
    pub lease: Duration,
    bus: JetStream,
    subscriptions: Arc<Mutex<Option<(Instant, Subscriptions)>>>,
    /// Bumped by every change, so a list read while one was made is not kept.
    changes: Arc<AtomicU64>,
    dispatcher: DispatcherConsumer,
}

impl Webhooks {
    pub fn new(
        store: WebhookStore,
        settings: WebhookSettings,
        ack_wait: Duration,
        bus: JetStream,
        dispatcher: DispatcherConsumer,
    ) -> Self {
        Webhooks {
            dispatcher,
            lease: settings.timeout + ack_wait,
            store,
            settings,
            bus,
            subscriptions: Arc::default(),
            changes: Arc::default(),
        }
    }

    pub fn policy(&self) -> TargetPolicy {
        TargetPolicy {
            allow_private: self.settings.allow_private_targets,
            require_https: self.settings.require_https,
        }
    }

    /// The URL rules, DNS included.
    async fn check_url(&self, url: &str, violations: &mut Vec<Violation>) -> Option<String> {
        if url.chars().count() > MAX_URL_CHARS {
            violations.push(Violation::new(
                Field::Url,
                "length",
                format!("must be at most {MAX_URL_CHARS} characters"),
            ));
            return None;
        }
        let checked = match target::check_url(url, self.policy()) {
            Ok(checked) => checked,
            Err(reason) => {
                violations.push(Violation::new(Field::Url, "url", reason));
                return None;
            }
        };
        if let Err(reason) = target::check_resolved(&checked, self.policy()).await {
            violations.push(Violation::new(Field::Url, "url", reason));
            return None;
        }
        Some(checked.to_string())
    }

    fn check_events(names: &[String], violations: &mut Vec<Violation>) -> Option<EventSelection> {
        match EventSelection::parse(names) {
            Ok(events) if events.is_empty() => {
                violations.push(Violation::new(
                    Field::Events,
                    "required",
                    "must name at least one event type, or \"*\" for all",
                ));
                None
            }
            Ok(events) => Some(events),
            Err(unknown) => {
                violations.push(Violation::new(
                    Field::Events,
                    "event_type",
                    format!(
                        "{unknown:?} is not an event type (email.queued, email.scheduled, \
                         email.sent, email.deferred, email.failed, email.canceled, \
                         email.suppressed, email.bounced, email.complained, or \"*\")"
                    ),
                ));
                None
            }
        }
    }

    fn check_description(description: &str, violations: &mut Vec<Violation>) {
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            violations.push(Violation::new(
                Field::Description,
                "length",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
    }

    /// Registers an endpoint, answering it with its new secret.
    pub async fn create(&self, new: NewWebhook) -> Result<Webhook> {
        let mut violations = Vec::new();
        let url = match &new.url {
            Some(url) => self.check_url(url, &mut violations).await,
            None => {
                violations.push(Violation::new(Field::Url, "required", "is required"));
                None
            }
        };
        let events = match &new.events {
            Some(names) => Self::check_events(names, &mut violations),
            None => {
                violations.push(Violation::new(
                    Field::Events,
                    "required",
                    "is required: the event types to receive, or [\"*\"]",
                ));
                None
            }
        };
        if let Some(description) = &new.description {
            Self::check_description(description, &mut violations);
        }
        Violations::check(violations)?;
        let now = Utc::now();
        let webhook = Webhook {
            id: Uuid::now_v7(),
            url: url.expect("checked"),
            events: events.expect("checked"),
            description: new.description.filter(|d| !d.is_empty()),
            enabled: true,
            disabled_reason: None,
            secret: WebhookSecret::generate(),
            previous_secret: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        self.store.insert(&webhook).await?;
        self.changed().await;
        Ok(webhook)
    }

    pub async fn get(&self, id: Uuid) -> Result<Webhook> {
        self.store.get(id).await?.ok_or_else(|| missing(id))
    }

    pub async fn list(&self) -> Result<Vec<Webhook>> {
        self.store.list().await
    }

    pub async fn change(&self, id: Uuid, change: WebhookChange) -> Result<Webhook> {
        let mut violations = Vec::new();
        let mut edit = Edit {
            enabled: change.enabled,
            ..Edit::default()
        };
        if let Some(url) = &change.url {
            edit.url = self.check_url(url, &mut violations).await;
        }
        if let Some(names) = &change.events {
            edit.events = Self::check_events(names, &mut violations);
        }
        if let Some(description) = &change.description {
            if let Some(text) = description {
                Self::check_description(text, &mut violations);
            }
            edit.description = Some(description.clone().filter(|d| !d.is_empty()));
        }
        Violations::check(violations)?;
        let webhook = self
            .store
            .edit(id, &edit)
            .await?
            .ok_or_else(|| missing(id))?;
        self.changed().await;
        Ok(webhook)
    }

    pub async fn delete(&self, id: Uuid) -> Result<()> {
        if !self.store.delete(id).await? {
            return Err(missing(id));
        }
        self.changed().await;
        Ok(())
    }

    /// A new secret; the old one keeps signing for `webhooks.rotation_overlap`.
    pub async fn rotate_secret(&self, id: Uuid) -> Result<Webhook> {
        let overlap = chrono::Duration::from_std(self.settings.rotation_overlap)
            .unwrap_or(chrono::Duration::MAX);
        self.store
            .rotate_secret(id, &WebhookSecret::generate(), Utc::now() + overlap)
            .await?
            .ok_or_else(|| missing(id))
    }

    pub async fn deliveries(
        &self,
        id: Uuid,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<DeliveryPage> {
        self.get(id).await?;
        self.store.deliveries(id, cursor, limit).await
    }

    /// Attempts a finished delivery once more, now (and once: a failure leaves it
    /// failed).
    pub async fn retry(&self, webhook: Uuid, delivery: Uuid) -> Result<DeliveryStatus> {
        self.get(webhook).await?;
        match self.store.reopen(webhook, delivery, self.lease).await? {
            None => Err(Error::Missing {
                kind: "delivery",
                id: delivery.to_string(),
            }),
            Some(Err(())) => Err(Error::Conflict(format!(
                "delivery {delivery} is pending: it will be attempted on its schedule"
            ))),
            Some(Ok(attempts)) => {
                let request = AttemptRequest {
                    delivery_id: delivery,
                    attempts,
                    manual: true,
                };
                // Should this message be lost, the delivery is due again after the
                // lease, and the retriers publish it.
                self.publish_attempt(&request, Publish::Again).await?;
                Ok(DeliveryStatus::Pending)
            }
        }
    }

    /// Publishes an attempt of a delivery on `mail:webhook`. The dispatcher's message
    /// for a new delivery has the same id each time (an event handled twice publishes
    /// it twice, and JetStream drops the second); every other publish is new, told
    /// apart by when it was made (a delivery put off before its first attempt is
    /// published again with no attempt made, and must not be dropped).
    pub async fn publish_attempt(&self, request: &AttemptRequest, publish: Publish) -> Result<()> {
        let payload = serde_json::to_vec(request).map_err(|e| Error::Internal(e.into()))?;
        let msg_id = match publish {
            Publish::NewDelivery => format!("{}:new", request.delivery_id),
            Publish::Again => format!(
                "{}:{}:{}",
                request.delivery_id,
                request.attempts,
                Utc::now().timestamp_micros()
            ),
        };
        self.bus
            .publish(&self.bus.subjects.webhook, payload.into(), Some(&msg_id))
            .await?;
        Ok(())
    }

    /// The enabled endpoints and their events, as of at most a second ago.
    pub async fn subscriptions(&self) -> Result<Subscriptions> {
        if let Some((at, subscriptions)) = &*self.subscriptions.lock().unwrap()
            && at.elapsed() < SUBSCRIPTIONS_TTL
        {
            return Ok(subscriptions.clone());
        }
        let changes = self.changes.load(Ordering::SeqCst);
        let fresh = Arc::new(self.store.subscriptions().await?);
        let mut cached = self.subscriptions.lock().unwrap();
        if self.changes.load(Ordering::SeqCst) == changes {
            *cached = Some((Instant::now(), fresh.clone()));
        }
        Ok(fresh)
    }

    fn forget_subscriptions(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        *self.subscriptions.lock().unwrap() = None;
    }

    /// After an endpoint was added, changed, disabled or deleted: this instance's
    /// dispatcher sees the change at once, and the dispatcher consumer exists exactly
    /// when an endpoint is enabled. The change is stored whatever NATS does: should the
    /// consumer not be created now, the retriers' next sync creates it, starting from
    /// the endpoint's registration, so it misses nothing.
    pub async fn changed(&self) {
        self.forget_subscriptions();
        if let Err(err) = self.sync_dispatcher().await {
            tracing::warn!(
                error = err.with_causes(),
                "could not sync the webhook dispatcher's consumer; the retriers will"
            );
        }
    }

    /// Creates the dispatcher consumer when an endpoint is enabled and there is none
    /// (starting from the earliest time an enabled endpoint receives events from), and
    /// deletes it when none is enabled. Every instance runs this after its changes, at
    /// start and now and then; a lock orders the runs.
    pub async fn sync_dispatcher(&self) -> Result<()> {
        let bus = &self.bus;
        let dispatcher = &self.dispatcher;
        self.store
            .with_subscriptions_locked(|enabled, since| async move {
                let synced = match since {
                    Some(since) if enabled > 0 => {
                        // `since` is PostgreSQL's clock, the stream's times the NATS
                        // server's: a margin for the two to differ (the events from
                        // before `since` are filtered out all the same).
                        bus.ensure_consumer_from(
                            &dispatcher.durable,
                            &dispatcher.subject,
                            &dispatcher.settings,
                            since - CLOCK_MARGIN,
                        )
                        .await
                    }
                    _ => bus.delete_consumer(&dispatcher.durable).await,
                };
                synced.map_err(|err| Error::unavailable(Dependency::Nats, err))
            })
            .await
    }
}

fn missing(id: Uuid) -> Error {
    Error::Missing {
        kind: "webhook",
        id: id.to_string(),
    }
}
