//! Webhooks, their deliveries and attempts in PostgreSQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Delivery, DeliveryAttempt, DeliveryStatus, Webhook};
use crate::{
    adapters::postgres::db_error,
    domain::{Cursor, EventSelection, WebhookSecret},
    error::{Error, Result},
};

/// The columns of a [`WebhookRow`], as a literal so queries stay `&'static str`.
macro_rules! webhook_columns {
    () => {
        "webhook_id, url, events, description, enabled, disabled_reason, secret, \
         previous_secret, previous_secret_expires, failing_since, created_at, updated_at"
    };
}

/// The columns of a [`DeliveryRow`].
macro_rules! delivery_columns {
    () => {
        "delivery_id, webhook_id, event_type, payload, status, attempts, created_at, updated_at"
    };
}

#[derive(sqlx::FromRow)]
struct WebhookRow {
    webhook_id: Uuid,
    url: String,
    events: Vec<String>,
    description: Option<String>,
    enabled: bool,
    disabled_reason: Option<String>,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires: Option<DateTime<Utc>>,
    failing_since: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Internal(anyhow::anyhow!("a stored webhook cannot be read: {what}"))
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = Error;

    fn try_from(row: WebhookRow) -> Result<Webhook> {
        let secret = |text: &str| WebhookSecret::parse(text).ok_or_else(|| corrupt("a secret"));
        let previous_secret = match (row.previous_secret, row.previous_secret_expires) {
            (Some(text), Some(expires)) => Some((secret(&text)?, expires)),
            _ => None,
        };
        Ok(Webhook {
            id: row.webhook_id,
            url: row.url,
            events: EventSelection::parse(&row.events)
                .map_err(|name| corrupt(format!("event {name:?}")))?,
            description: row.description,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            secret: secret(&row.secret)?,
            previous_secret,
            failing_since: row.failing_since,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    delivery_id: Uuid,
    webhook_id: Uuid,
    event_type: String,
    payload: String,
    status: String,
    attempts: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = Error;

    fn try_from(row: DeliveryRow) -> Result<Delivery> {
        Ok(Delivery {
            id: row.delivery_id,
            webhook_id: row.webhook_id,
            event_type: row.event_type,
            payload: row.payload,
            status: DeliveryStatus::parse(&row.status)
                .ok_or_else(|| corrupt(format!("delivery status {:?}", row.status)))?,
            attempts: row.attempts,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    delivery_id: Uuid,
    attempt: i32,
    at: DateTime<Utc>,
    http_status: Option<i32>,
    error: Option<String>,
    duration_ms: i32,
}

/// The key of the advisory lock that serialises the dispatcher consumer's creation and
/// deletion across instances (any number, the same in every instance).
const DISPATCHER_LOCK: i64 = 0x6d61_696c_726f_6f6d; // "mailroom"

/// An enabled endpoint as the dispatcher sees it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub webhook: Uuid,
    pub events: EventSelection,
    /// Events from before this are not for it.
    pub since: DateTime<Utc>,
}

/// What an attempt leaves a delivery as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded, or failed for good.
    Done(DeliveryStatus),
    /// Failed; due again after this wait.
    RetryIn(Duration),
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A delivery to store: one event for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_type: String,
    pub payload: String,
}

/// What a webhook edit changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct Edit {
    pub url: Option<String>,
    pub events: Option<EventSelection>,
    /// `Some(None)` clears it.
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// One page of an endpoint's delivery log, each delivery with its attempts.
#[derive(Debug, Clone)]
pub struct DeliveryPage {
    pub deliveries: Vec<(Delivery, Vec<DeliveryAttempt>)>,
    pub next: Option<Cursor>,
}

#[derive(Clone)]
pub struct WebhookStore {
    pool: PgPool,
}

impl WebhookStore {
    pub fn new(pool: PgPool) -> Self {
        WebhookStore { pool }
    }

    pub async fn insert(&self, webhook: &Webhook) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhooks (webhook_id, url, events, description, enabled, secret, \
                 created_at, updated_at, active_since) \
             VALUES ($1, $2, $3, $4, true, $5, $6, $6, now())",
        )
        .bind(webhook.id)
        .bind(&webhook.url)
        .bind(webhook.events.names())
        .bind(&webhook.description)
        .bind(webhook.secret.expose())
        .bind(webhook.created_at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Webhook>> {
        let sql = concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhooks WHERE webhook_id = $1"
        );
        let row: Option<WebhookRow> = sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(Webhook::try_from).transpose()
    }

    /// Every endpoint, oldest first.
    pub async fn list(&self) -> Result<Vec<Webhook>> {
        let sql = concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhooks ORDER BY created_at, webhook_id"
        );
        let rows: Vec<WebhookRow> = sqlx::query_as(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.into_iter().map(Webhook::try_from).collect()
    }

    /// The enabled endpoints, what they subscribe to and since when.
    pub async fn subscriptions(&self) -> Result<Vec<Subscription>> {
        let rows: Vec<(Uuid, Vec<String>, DateTime<Utc>)> =
            sqlx::query_as("SELECT webhook_id, events, active_since FROM webhooks WHERE enabled")
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        rows.into_iter()
            .map(|(webhook, events, since)| {
                let events = EventSelection::parse(&events)
                    .map_err(|name| corrupt(format!("event {name:?}")))?;
                Ok(Subscription {
                    webhook,
                    events,
                    since,
                })
            })
            .collect()
    }

    /// Runs `sync` with the number of enabled endpoints and the earliest time one of
    /// them receives events from, holding a lock that every other caller waits for
    /// (so what `sync` does follows the table's state, whichever instance changed it
    /// last). The lock is a transaction's: it goes with the transaction however `sync`
    /// ends.
    pub async fn with_subscriptions_locked<F, Fut>(&self, sync: F) -> Result<()>
    where
        F: FnOnce(i64, Option<DateTime<Utc>>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DISPATCHER_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let (count, since): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT count(*), min(active_since) FROM webhooks WHERE enabled")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        sync(count, since).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    /// Applies an edit, answering the endpoint as it is after it. Enabling an endpoint
    /// forgets its failures.
    pub async fn edit(&self, id: Uuid, edit: &Edit) -> Result<Option<Webhook>> {
        let sql = concat!(
            "UPDATE webhooks SET url = coalesce($2, url), events = coalesce($3, events), \
                 description = CASE WHEN $4 THEN $5 ELSE description END, \
                 enabled = coalesce($6, enabled), \
                 active_since = CASE WHEN $6 AND NOT enabled THEN now() ELSE active_since END, \
                 disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, \
                 failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END, \
                 updated_at = now() \
             WHERE webhook_id = $1 RETURNING ",
            webhook_columns!()
        );
        let row: Option<WebhookRow> = sqlx::query_as(sql)
            .bind(id)
            .bind(&edit.url)
            .bind(edit.events.as_ref().map(EventSelection::names))
            .bind(edit.description.is_some())
            .bind(edit.description.clone().flatten())
            .bind(edit.enabled)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(Webhook::try_from).transpose()
    }

    /// Deletes an endpoint with its deliveries; answers whether there was one.
    ///
    /// The delete cascades to the deliveries, which a sender may hold at that moment
    /// while it waits for the endpoint's row: PostgreSQL then aborts one of the two as
    /// a deadlock, often the delete. A deadlock's victim is meant to be run again, so it
    /// is, a few times, rather than answering 503 for a conflict that is already gone.
    pub async fn delete(&self, id: Uuid) -> Result<bool> {
        const TRIES: usize = 3;
        for tried in 1.. {
            let outcome = sqlx::query("DELETE FROM webhooks WHERE webhook_id = $1")
                .bind(id)
                .execute(&self.pool)
                .await;
            match outcome {
                Ok(deleted) => return Ok(deleted.rows_affected() > 0),
                Err(err) if tried < TRIES && is_deadlock(&err) => {
                    tracing::info!(webhook.id = %id, "deleting the endpoint met a deadlock; again");
                }
                Err(err) => return Err(db_error(err)),
            }
        }
        unreachable!("the loop returns")
    }

    /// Replaces the secret; the old one keeps signing until `previous_expires`.
    pub async fn rotate_secret(
        &self,
        id: Uuid,
        secret: &WebhookSecret,
        previous_expires: DateTime<Utc>,
    ) -> Result<Option<Webhook>> {
        let sql = concat!(
            "UPDATE webhooks SET previous_secret = secret, previous_secret_expires = $3, \
                 secret = $2, updated_at = now() \
             WHERE webhook_id = $1 RETURNING ",
            webhook_columns!()
        );
        let row: Option<WebhookRow> = sqlx::query_as(sql)
            .bind(id)
            .bind(secret.expose())
            .bind(previous_expires)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(Webhook::try_from).transpose()
    }

    /// Stores deliveries, due after `lease` (by when the attempt published for each
    /// must have been made); those already stored (an event handled twice) are left
    /// alone.
    pub async fn insert_deliveries(
        &self,
        deliveries: &[NewDelivery],
        lease: Duration,
    ) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&NewDelivery) -> String| deliveries.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO webhook_deliveries \
                 (delivery_id, webhook_id, event_type, payload, next_attempt_at) \
             SELECT u.*, now() + $5::bigint * interval '1 millisecond' \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS u \
             ON CONFLICT DO NOTHING",
        )
        .bind(deliveries.iter().map(|d| d.id).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.webhook_id).collect::<Vec<_>>())
        .bind(column(|d| d.event_type.clone()))
        .bind(column(|d| d.payload.clone()))
        .bind(millis(lease))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Takes up to `limit` pending deliveries that are due, each for `lease`: the
    /// attempt published for it must be made by then, or it is due again. Answers
    /// them with the attempts each has had, and when the next one still pending is due.
    pub async fn claim_due(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<(Vec<(Uuid, i32)>, Option<DateTime<Utc>>)> {
        let claimed: Vec<(Uuid, i32)> = sqlx::query_as(
            "UPDATE webhook_deliveries d \
             SET next_attempt_at = now() + $2::bigint * interval '1 millisecond' \
             FROM (SELECT delivery_id FROM webhook_deliveries \
                   WHERE status = 'pending' AND next_attempt_at <= now() \
                   ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due \
             WHERE d.delivery_id = due.delivery_id \
             RETURNING d.delivery_id, d.attempts",
        )
        .bind(limit)
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok((claimed, next))
    }

    /// A delivery and its endpoint, for an attempt.
    pub async fn delivery_with_webhook(&self, id: Uuid) -> Result<Option<(Delivery, Webhook)>> {
        let Some(delivery) = self.delivery(id).await? else {
            return Ok(None);
        };
        Ok(self
            .get(delivery.webhook_id)
            .await?
            .map(|webhook| (delivery, webhook)))
    }

    pub async fn delivery(&self, id: Uuid) -> Result<Option<Delivery>> {
        let sql = concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries WHERE delivery_id = $1"
        );
        let row: Option<DeliveryRow> = sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(Delivery::try_from).transpose()
    }

    /// Records the attempt that follows `attempts_before` others, and what it means
    /// for the delivery (`outcome`) and its endpoint (a success ends its run of
    /// failures; a failure starts one if none is going on). Answers the attempt's
    /// number and, after a failure, since when the endpoint has been failing; `None`
    /// when the delivery is no longer pending after `attempts_before` attempts (another
    /// worker recorded this attempt, or it was deleted).
    pub async fn record_attempt(
        &self,
        delivery: &Delivery,
        attempt: &DeliveryAttempt,
        outcome: Outcome,
    ) -> Result<Option<(i32, Option<DateTime<Utc>>)>> {
        let (status, retry_in) = match outcome {
            Outcome::Done(status) => (status, None),
            Outcome::RetryIn(wait) => (DeliveryStatus::Pending, Some(millis(wait))),
        };
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let number: Option<i32> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $3, \
                 next_attempt_at = now() + $4::bigint * interval '1 millisecond', \
                 updated_at = now() \
             WHERE delivery_id = $1 AND attempts = $2 AND status = 'pending' \
             RETURNING attempts",
        )
        .bind(delivery.id)
        .bind(delivery.attempts)
        .bind(status.as_str())
        .bind(retry_in)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(number) = number else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, http_status, error, \
                 duration_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(delivery.id)
        .bind(number)
        .bind(attempt.at)
        .bind(attempt.http_status)
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let failing_since: Option<DateTime<Utc>> = if attempt.error.is_none() {
            sqlx::query(
                "UPDATE webhooks SET failing_since = NULL \
                 WHERE webhook_id = $1 AND failing_since IS NOT NULL",
            )
            .bind(delivery.webhook_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            None
        } else {
            sqlx::query_scalar(
                "UPDATE webhooks SET failing_since = coalesce(failing_since, $2) \
                 WHERE webhook_id = $1 RETURNING failing_since",
            )
            .bind(delivery.webhook_id)
            .bind(attempt.at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .flatten()
        };
        tx.commit().await.map_err(db_error)?;
        Ok(Some((number, failing_since)))
    }

    /// Ends a pending delivery without an attempt (its endpoint is disabled), or
    /// one whose last attempt failed.
    pub async fn fail(&self, delivery: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, \
                 updated_at = now() \
             WHERE delivery_id = $1",
        )
        .bind(delivery)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Makes a pending delivery due again after `wait` (its endpoint is busy).
    pub async fn postpone(&self, delivery: Uuid, wait: Duration) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries \
             SET next_attempt_at = now() + $2::bigint * interval '1 millisecond' \
             WHERE delivery_id = $1 AND status = 'pending'",
        )
        .bind(delivery)
        .bind(millis(wait))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Makes a finished delivery pending again, for a retry asked for by a user, with
    /// the `lease` its attempt has; answers the attempts it has had, `None` when there
    /// is no such delivery, and `Some(Err(()))` when it is pending already.
    pub async fn reopen(
        &self,
        webhook: Uuid,
        delivery: Uuid,
        lease: Duration,
    ) -> Result<Option<Result<i32, ()>>> {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM webhook_deliveries WHERE delivery_id = $1 AND webhook_id = $2",
        )
        .bind(delivery)
        .bind(webhook)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        if status.is_none() {
            return Ok(None);
        }
        let reopened: Option<i32> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET status = 'pending', updated_at = now(), \
                 next_attempt_at = now() + $2::bigint * interval '1 millisecond' \
             WHERE delivery_id = $1 AND status <> 'pending' RETURNING attempts",
        )
        .bind(delivery)
        .bind(millis(lease))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(Some(reopened.ok_or(())))
    }

    /// Disables an endpoint that kept failing, when it is enabled; false when it was
    /// disabled already (two failing deliveries may both find it due), so that it is
    /// counted and its reason kept once.
    pub async fn disable(&self, id: Uuid, reason: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE webhooks SET enabled = false, disabled_reason = $2, updated_at = now() \
             WHERE webhook_id = $1 AND enabled",
        )
        .bind(id)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    /// An endpoint's deliveries, newest first, from the cursor on.
    pub async fn deliveries(
        &self,
        webhook: Uuid,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<DeliveryPage> {
        let sql = concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries \
             WHERE webhook_id = $1 AND ($2::timestamptz IS NULL OR (created_at, delivery_id) < ($2, $3)) \
             ORDER BY created_at DESC, delivery_id DESC LIMIT $4"
        );
        let rows: Vec<DeliveryRow> = sqlx::query_as(sql)
            .bind(webhook)
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id.as_uuid()))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut deliveries: Vec<Delivery> = rows
            .into_iter()
            .map(Delivery::try_from)
            .collect::<Result<_>>()?;
        let next = Cursor::page(&mut deliveries, limit, |d| (d.created_at, d.id));
        let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT delivery_id, attempt, at, http_status, error, duration_ms \
             FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY attempt",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let deliveries = deliveries
            .into_iter()
            .map(|delivery| {
                let own = attempts
                    .iter()
                    .filter(|row| row.delivery_id == delivery.id)
                    .map(|row| DeliveryAttempt {
                        attempt: row.attempt,
                        at: row.at,
                        http_status: row.http_status,
                        error: row.error.clone(),
                        duration_ms: row.duration_ms,
                    })
                    .collect();
                (delivery, own)
            })
            .collect();
        Ok(DeliveryPage { deliveries, next })
    }
}

/// PostgreSQL aborted the statement to break a deadlock (SQLSTATE 40P01).
fn is_deadlock(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01"))
}
