//! The email store on PostgreSQL (sqlx). Queries are plain `sqlx::query_as` so building
//! needs no live database.

mod newest;
mod rows;
mod sending;
mod suppressions;
mod templates;

pub use newest::Probes;
pub use suppressions::PgSuppressionStore;
pub use templates::PgTemplateStore;

use rows::{Columns, EmailRow, InsertedRow, columns};

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::{
    Connection, PgPool, Postgres,
    migrate::{MigrateDatabase, MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
    types::Json,
};
use uuid::Uuid;

use crate::{
    config::DatabaseSettings,
    domain::{
        Email, EmailId, EmailStatus, Lane, ListPage, ListQuery, NewEmail, NewSuppression,
        SearchPage, SearchQuery,
    },
    error::{Dependency, Error, Result},
    ports::{
        AfterAttempt, AttemptOutcome, AttemptRecord, BatchInserted, BatchKey, Change, Claim,
        EmailStore, FinishedAttempt, Inserted, QueueStats, RefusedRecipient, Released,
    },
};

/// The migrations in `migrations/`, built into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Opens a pool without waiting for PostgreSQL: requests made while it is down fail
/// fast with `Unavailable` instead of blocking the start.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = settings
        .url
        .expose_secret()
        .parse::<PgConnectOptions>()
        .context("database.url is not a PostgreSQL URL")?
        // The service's statements are short: compiling one with JIT, which PostgreSQL
        // does once a plan's cost passes jit_above_cost (a search on a large table), took
        // longer (10 to 30 ms) than running it.
        .options([("jit", "off")]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
}

/// Whether a failure of [`create_and_migrate`] is one that waiting cannot mend: the
/// database's record of applied migrations disagrees with this build's (a migration
/// edited after it was applied, or one applied by another build).
pub fn is_migration_conflict(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<MigrateError>(),
            Some(
                MigrateError::VersionMissing(_)
                    | MigrateError::VersionMismatch(_)
                    | MigrateError::VersionNotPresent(_)
                    | MigrateError::VersionTooOld(..)
                    | MigrateError::VersionTooNew(..)
                    | MigrateError::Dirty(_)
            )
        )
    })
}

/// Creates the database when it does not exist yet, then applies pending migrations.
pub async fn create_and_migrate(settings: &DatabaseSettings, pool: &PgPool) -> anyhow::Result<()> {
    let url = settings.url.expose_secret();
    if !Postgres::database_exists(url)
        .await
        .context("checking that the database exists")?
    {
        // Several instances may race here; losing the race is fine.
        if let Err(err) = Postgres::create_database(url).await
            && !Postgres::database_exists(url).await.unwrap_or(false)
        {
            return Err(err).context("creating the database");
        }
    }
    MIGRATOR.run(pool).await.context("applying migrations")?;
    Ok(())
}

#[derive(Clone)]
pub struct PgEmailStore {
    pool: PgPool,
    /// `search.count_limit`: matches counted before a search's total becomes a lower bound.
    count_limit: u32,
    /// `idempotency.ttl`: how long an idempotency key keeps answering its email.
    idempotency_ttl: Duration,
    /// How listings and searches look for their newest matches.
    probes: Probes,
}

impl PgEmailStore {
    pub fn new(pool: PgPool, count_limit: u32, idempotency_ttl: Duration) -> Self {
        Self {
            pool,
            count_limit,
            idempotency_ttl,
            probes: Probes::default(),
        }
    }

    /// The same store, looking for the newest matches of listings and searches with
    /// `probes` (tests make them tiny, so that every way runs on a small table).
    pub fn with_probes(self, probes: Probes) -> Self {
        Self { probes, ..self }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts `emails`, answering the rows created and the emails that found their id
    /// or key taken. A key taken by an email older than `idempotency.ttl` is expired
    /// (by PostgreSQL's clock) and the emails that wanted it are inserted once more: the
    /// common case, no conflict, costs one statement.
    async fn insert_expiring<'a>(
        &self,
        conn: &mut sqlx::PgConnection,
        emails: &'a [NewEmail],
    ) -> Result<(Vec<Email>, Vec<&'a NewEmail>)> {
        let all: Vec<&NewEmail> = emails.iter().collect();
        let mut created = insert_rows(conn, &all).await?;
        let mut conflicted = not_in(all, &created);
        let keyed: Vec<&NewEmail> = conflicted
            .iter()
            .copied()
            .filter(|e| e.idempotency_key.is_some())
            .collect();
        if !keyed.is_empty() && self.expire_keys(conn, &keyed).await? > 0 {
            let again = insert_rows(conn, &conflicted).await?;
            conflicted = not_in(conflicted, &again);
            created.extend(again);
        }
        Ok((created, conflicted))
    }

    /// Marks expired the keys of `emails` held by emails created more than
    /// `idempotency.ttl` ago; answers how many it expired.
    async fn expire_keys(
        &self,
        conn: &mut sqlx::PgConnection,
        emails: &[&NewEmail],
    ) -> Result<u64> {
        let (clients, keys): (Vec<&str>, Vec<&str>) = emails
            .iter()
            .filter_map(|e| Some((e.idempotency_client.as_str(), e.idempotency_key.as_deref()?)))
            .unzip();
        let expired = sqlx::query(
            "UPDATE email_messages SET idempotency_expired = true \
             WHERE (idempotency_client, idempotency_key) IN \
                 (SELECT * FROM UNNEST($1::text[], $2::text[])) \
               AND idempotency_key IS NOT NULL AND NOT idempotency_expired \
               AND created_at < now() - $3::bigint * interval '1 millisecond'",
        )
        .bind(&clients)
        .bind(&keys)
        .bind(self.ttl_millis())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        Ok(expired.rows_affected())
    }

    fn ttl_millis(&self) -> i64 {
        i64::try_from(self.idempotency_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// The stored emails that `emails` conflicted with: by id, or by a live key of the
    /// same client.
    async fn conflicting(&self, emails: &[&NewEmail]) -> Result<Vec<Email>> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        let (clients, keys): (Vec<&str>, Vec<&str>) = emails
            .iter()
            .filter_map(|e| Some((e.idempotency_client.as_str(), e.idempotency_key.as_deref()?)))
            .unzip();
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM emails m WHERE email_id = ANY($1) \
              OR ((idempotency_client, idempotency_key) IN \
                  (SELECT * FROM UNNEST($2::text[], $3::text[])) \
                  AND idempotency_key IS NOT NULL AND NOT idempotency_expired)"
        );
        let rows: Vec<EmailRow> = sqlx::query_as(sql)
            .bind(emails.iter().map(|e| e.id.as_uuid()).collect::<Vec<_>>())
            .bind(&clients)
            .bind(&keys)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.into_iter().map(Email::try_from).collect()
    }

    async fn fetch_many(&self, ids: &[Uuid]) -> Result<Vec<Email>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM emails m WHERE email_id = ANY($1)"
        );
        let rows: Vec<EmailRow> = sqlx::query_as(sql)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.into_iter().map(Email::try_from).collect()
    }

    /// The emails of `ids`, in that order; one deleted meanwhile is simply left out.
    async fn fetch_in_order(&self, ids: &[Uuid]) -> Result<Vec<Email>> {
        let mut found: HashMap<Uuid, Email> = self
            .fetch_many(ids)
            .await?
            .into_iter()
            .map(|email| (email.id.as_uuid(), email))
            .collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn fetch(&self, id: EmailId) -> Result<Option<Email>> {
        fetch_email(&self.pool, id).await
    }
}

/// One email, as stored.
pub(super) async fn fetch_email(pool: &PgPool, id: EmailId) -> Result<Option<Email>> {
    let sql = concat!("SELECT ", columns!(), " FROM emails m WHERE email_id = $1");
    let row: Option<EmailRow> = sqlx::query_as(sql)
        .bind(id.as_uuid())
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
    row.map(Email::try_from).transpose()
}

/// PostgreSQL being unreachable, or refusing for a moment, is `Unavailable` (the caller
/// may retry); anything else is a bug or a surprise, and trying again will not help.
pub(crate) fn db_error(err: sqlx::Error) -> Error {
    let unavailable = match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources; 57P0x: shutdown;
            // 3D000: the database is gone (dropped, or not created yet). Worth trying
            // again too: 40 (a serialisation failure or deadlock), 55P03 (a lock not
            // available) and 57014 (a statement cancelled, by its timeout for one).
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code.starts_with("40")
                || code == "3D000"
                || code == "55P03"
                || code == "57014"
        }),
        _ => false,
    };
    if unavailable {
        Error::unavailable(Dependency::Postgres, err)
    } else {
        Error::Internal(anyhow::Error::new(err).context("PostgreSQL query failed"))
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

#[async_trait]
impl EmailStore for PgEmailStore {
    #[tracing::instrument(
        name = "postgres.insert",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "postgresql",
            db.system.name = "postgresql",
            db.operation.name = "INSERT",
            db.collection.name = "emails",
            emails = emails.len(),
        ),
        err
    )]
    async fn insert(&self, emails: &[NewEmail]) -> Result<Vec<Inserted>> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        // One statement and one commit for the whole batch. Rows whose id or idempotency
        // key is taken (by an earlier row, or by one earlier in this batch) are skipped.
        // Attachment bytes go in the same transaction, for the rows created. A connection
        // keeps the buffer capacity of the largest statement or row it has carried, so one
        // that carried attachments gives it back (`shrink_buffers`): else every connection
        // of the pool would come to hold a batch's worth of them (megabytes) for good.
        let with_attachments = emails.iter().any(|e| !e.attachments.is_empty());
        let (created, conflicted) = if with_attachments {
            let mut conn = self.pool.acquire().await.map_err(db_error)?;
            let mut tx = conn.begin().await.map_err(db_error)?;
            let outcome = self.insert_expiring(&mut tx, emails).await?;
            tx.commit().await.map_err(db_error)?;
            conn.shrink_buffers();
            outcome
        } else {
            let mut conn = self.pool.acquire().await.map_err(db_error)?;
            self.insert_expiring(&mut conn, emails).await?
        };
        let mut created: HashMap<Uuid, Email> = created
            .into_iter()
            .map(|email| (email.id.as_uuid(), email))
            .collect();

        // The others found an email already there: the key decides when there is one.
        let existing = self.conflicting(&conflicted).await?;
        emails
            .iter()
            .map(|email| {
                // A row created in this batch is reported once, as created; a later row
                // of the batch with the same id or key finds it as existing.
                if let Some(row) = created.remove(&email.id.as_uuid()) {
                    return Ok(Inserted::Created(row));
                }
                let by_key = email.idempotency_key.as_ref().and_then(|key| {
                    existing.iter().find(|e| {
                        e.idempotency_key.as_ref() == Some(key)
                            && e.idempotency_client == email.idempotency_client
                    })
                });
                by_key
                    .or_else(|| existing.iter().find(|e| e.id == email.id))
                    .cloned()
                    .map(Inserted::Existing)
                    .ok_or_else(|| {
                        Error::Internal(anyhow::anyhow!(
                            "insert of {} conflicted, but no conflicting row exists",
                            email.id
                        ))
                    })
            })
            .collect()
    }

    #[tracing::instrument(
        name = "postgres.insert_batch",
        skip_all,
        fields(otel.kind = "client", db.system.name = "postgresql", emails = emails.len()),
        err
    )]
    async fn insert_batch(
        &self,
        emails: &[NewEmail],
        key: Option<&BatchKey>,
    ) -> Result<BatchInserted> {
        self.insert_batch_rows(emails, key).await
    }

    #[tracing::instrument(
        name = "postgres.list",
        skip_all,
        fields(otel.kind = "client", db.system.name = "postgresql"),
        err
    )]
    async fn list(&self, query: &ListQuery) -> Result<ListPage<Email>> {
        self.list_rows(query).await
    }

    #[tracing::instrument(
        name = "postgres.release_due",
        skip_all,
        fields(otel.kind = "client", db.system.name = "postgresql"),
        err
    )]
    async fn release_due(&self, limit: i64) -> Result<Released> {
        self.release_due_rows(limit).await
    }

    #[tracing::instrument(name = "postgres.cancel", skip_all, fields(email.id = %id), err)]
    async fn cancel(&self, id: EmailId) -> Result<Change> {
        self.cancel_row(id).await
    }

    #[tracing::instrument(name = "postgres.reschedule", skip_all, fields(email.id = %id), err)]
    async fn reschedule(&self, id: EmailId, at: DateTime<Utc>) -> Result<Change> {
        self.reschedule_row(id, at).await
    }

    #[tracing::instrument(
        name = "postgres.get",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "postgresql",
            db.system.name = "postgresql",
            db.operation.name = "SELECT",
            db.collection.name = "emails",
            email.id = %id,
        ),
        err
    )]
    async fn get(&self, id: EmailId) -> Result<Option<Email>> {
        self.fetch(id).await
    }

    #[tracing::instrument(
        name = "postgres.search",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "postgresql",
            db.system.name = "postgresql",
            db.operation.name = "SELECT",
            db.collection.name = "emails",
        ),
        err
    )]
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage<Email>> {
        // The count stops after count_limit + 1 matches: an exact count of a common word
        // would read most of the table. With words, those are the newest matches
        // (src/adapters/postgres/newest.rs finds them from the indexes), so every page
        // within them comes from their keys. Without words, any count_limit + 1 rows
        // make the count, and a page is read from the newest-first index. A page past
        // what the count collected walks the newest rows (cost grows with the offset).
        //
        // The statements are not kept prepared: a generic plan cannot know whether the
        // term is common. websearch_to_tsquery accepts any input without syntax errors.
        // Pages of whole emails join their delivery state (the view `emails`).
        let limit = self.count_limit;
        // One row past the page tells whether more follow.
        let wanted = i64::from(query.size) + 1;
        let offset = query.offset();
        let matching = newest::Matching {
            words: query.text.clone(),
            ..Default::default()
        };
        let (counted, keys) = match &query.text {
            Some(_) => {
                let newest = matching
                    .newest(&self.pool, limit as usize + 1, &self.probes)
                    .await?;
                let counted = newest.keys.len() as i64;
                let keys = (newest.complete || offset + wanted <= counted).then_some(newest.keys);
                (counted, keys)
            }
            None => {
                let mut keys: Vec<(Uuid, DateTime<Utc>)> =
                    sqlx::query_as("SELECT email_id, created_at FROM email_messages LIMIT $1")
                        .bind(i64::from(limit) + 1)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_error)?;
                let counted = keys.len() as i64;
                keys.sort_unstable_by_key(|&(id, created_at)| std::cmp::Reverse((created_at, id)));
                let keys = (counted <= i64::from(limit))
                    .then(|| keys.into_iter().map(|(id, at)| (at, id)).collect());
                (counted, keys)
            }
        };
        let rows = match keys {
            Some(keys) => {
                let page: Vec<Uuid> = keys
                    .into_iter()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                    .take(wanted as usize)
                    .map(|(_, id)| id)
                    .collect();
                self.fetch_in_order(&page).await?
            }
            None => {
                let mut sql: sqlx::QueryBuilder<Postgres> =
                    sqlx::QueryBuilder::new(concat!("SELECT ", columns!(), " FROM emails m"));
                sql.push(" WHERE TRUE");
                matching.push_indexed(&mut sql);
                sql.push(" ORDER BY created_at DESC, email_id DESC LIMIT ")
                    .push_bind(wanted)
                    .push(" OFFSET ")
                    .push_bind(offset);
                let rows: Vec<EmailRow> = sql
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error)?;
                rows.into_iter()
                    .map(Email::try_from)
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(SearchPage::assemble(query, counted, limit, rows))
    }

    #[tracing::instrument(
        name = "postgres.claim",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "postgresql",
            db.system.name = "postgresql",
            db.operation.name = "UPDATE",
            db.collection.name = "emails",
            emails = ids.len(),
        ),
        err
    )]
    async fn claim(&self, ids: &[EmailId], lease: Duration) -> Result<Vec<Claim>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let uuids: Vec<Uuid> = ids.iter().map(EmailId::as_uuid).collect();
        let sql = concat!(
            "UPDATE email_deliveries d SET status = 'sending', attempts = attempts + 1, \
                 updated_at = now(), next_attempt_at = now() + make_interval(secs => $2) \
             FROM email_messages m \
             WHERE m.email_id = d.email_id AND d.email_id = ANY($1) AND (status = 'queued' \
                 OR (status IN ('deferred', 'sending') AND next_attempt_at <= now())) \
             RETURNING ",
            columns!()
        );
        let claimed: Vec<EmailRow> = sqlx::query_as(sql)
            .bind(&uuids)
            .bind(seconds(lease))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut claimed: HashMap<Uuid, Email> = claimed
            .into_iter()
            .map(|row| Email::try_from(row).map(|email| (email.id.as_uuid(), email)))
            .collect::<Result<_>>()?;
        let others: Vec<Uuid> = uuids
            .iter()
            .filter(|id| !claimed.contains_key(id))
            .copied()
            .collect();
        let others: HashMap<Uuid, Email> = self
            .fetch_many(&others)
            .await?
            .into_iter()
            .map(|email| (email.id.as_uuid(), email))
            .collect();
        let not_due = |email: &Email| {
            let due = email.next_attempt_at.unwrap_or_else(Utc::now);
            Claim::NotDue((due - Utc::now()).to_std().unwrap_or_default())
        };
        let claimed_here: Vec<Uuid> = claimed.keys().copied().collect();
        Ok(uuids
            .iter()
            .map(|id| match claimed.remove(id) {
                Some(email) => Claim::Claimed(email),
                // A repeat of an id this batch just claimed: held by this very batch.
                None if claimed_here.contains(id) => Claim::NotDue(lease),
                None => match others.get(id) {
                    None => Claim::Missing,
                    Some(email) if email.status.is_final() => Claim::Finished(email.clone()),
                    Some(email) => not_due(email),
                },
            })
            .collect())
    }

    #[tracing::instrument(
        name = "postgres.finish_attempts",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "postgresql",
            db.system.name = "postgresql",
            db.operation.name = "UPDATE",
            db.collection.name = "emails",
            emails = finished.len(),
        ),
        err
    )]
    async fn finish_attempts(&self, finished: &[FinishedAttempt]) -> Result<Vec<Email>> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = finished.iter().map(|f| f.id.as_uuid()).collect();
        let attempts: Vec<i32> = finished.iter().map(|f| f.record.attempt).collect();
        let (statuses, next_attempts): (Vec<&str>, Vec<Option<DateTime<Utc>>>) = finished
            .iter()
            .map(|f| match f.after {
                AfterAttempt::Sent => (EmailStatus::Sent.as_str(), None),
                AfterAttempt::Deferred { next_attempt_at } => {
                    (EmailStatus::Deferred.as_str(), Some(next_attempt_at))
                }
                AfterAttempt::Failed => (EmailStatus::Failed.as_str(), None),
                AfterAttempt::Suppressed => (EmailStatus::Suppressed.as_str(), None),
            })
            .unzip();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // Before the status changes: a reader who sees the email failed finds the entry.
        let suppress: Vec<NewSuppression> = finished
            .iter()
            .flat_map(|f| f.suppress.iter().cloned())
            .collect();
        suppressions::insert_suppressions(&mut tx, &suppress).await?;
        sqlx::query(
            "INSERT INTO email_attempts (email_id, attempt, started_at, outcome, smtp_code, smtp_text, refused, relay) \
             SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], $4::text[], $5::int2[], $6::text[], $7::jsonb[], $8::text[]) \
             ON CONFLICT (email_id, attempt) DO NOTHING",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(finished.iter().map(|f| f.record.started_at).collect::<Vec<_>>())
        .bind(finished.iter().map(|f| f.record.outcome.as_str()).collect::<Vec<_>>())
        .bind(finished.iter().map(|f| f.record.smtp_code.map(|c| c as i16)).collect::<Vec<_>>())
        .bind(finished.iter().map(|f| f.record.smtp_text.as_str()).collect::<Vec<_>>())
        .bind(
            finished
                .iter()
                .map(|f| (!f.record.refused.is_empty()).then_some(Json(&f.record.refused)))
                .collect::<Vec<_>>(),
        )
        .bind(finished.iter().map(|f| f.record.relay.as_deref()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        // Only the holder of the lease for an attempt may move its email on.
        let sql = concat!(
            // The batch's columns are named apart from the table's, so RETURNING's plain
            // column names can only mean the table's.
            "UPDATE email_deliveries d SET status = u.new_status, updated_at = now(), \
                 next_attempt_at = u.new_next_attempt_at, last_error = u.new_last_error, \
                 sent_at = CASE WHEN u.new_status = 'sent' THEN now() ELSE sent_at END \
             FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::timestamptz[], $5::text[]) \
                 AS u(for_id, for_attempt, new_status, new_next_attempt_at, new_last_error), \
                 email_messages m \
             WHERE d.email_id = u.for_id AND m.email_id = d.email_id AND status = 'sending' \
               AND attempts = u.for_attempt \
             RETURNING ",
            columns!()
        );
        let updated: Vec<EmailRow> = sqlx::query_as(sql)
            .bind(&ids)
            .bind(&attempts)
            .bind(&statuses)
            .bind(&next_attempts)
            .bind(
                finished
                    .iter()
                    .map(|f| f.error.as_deref())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        let mut updated: HashMap<Uuid, Email> = updated
            .into_iter()
            .map(|row| Email::try_from(row).map(|email| (email.id.as_uuid(), email)))
            .collect::<Result<_>>()?;
        let lost: Vec<Uuid> = ids
            .iter()
            .filter(|id| !updated.contains_key(id))
            .copied()
            .collect();
        for id in &lost {
            tracing::warn!(email.id = %id, "lease lost before the attempt was recorded");
        }
        let mut current: HashMap<Uuid, Email> = self
            .fetch_many(&lost)
            .await?
            .into_iter()
            .map(|email| (email.id.as_uuid(), email))
            .collect();
        ids.iter()
            .map(|id| {
                updated
                    .remove(id)
                    .or_else(|| current.remove(id))
                    .ok_or(Error::NotFound(EmailId::from(*id)))
            })
            .collect()
    }

    #[tracing::instrument(
        name = "postgres.take_stranded",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "postgresql",
            db.system.name = "postgresql",
            db.operation.name = "UPDATE",
            db.collection.name = "emails",
        ),
        err
    )]
    async fn take_stranded(&self, age: Duration, limit: i64) -> Result<Vec<(EmailId, Lane)>> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "UPDATE email_deliveries d SET next_attempt_at = now() FROM email_messages m \
             WHERE m.email_id = d.email_id AND d.email_id IN ( \
                 SELECT email_id FROM email_deliveries \
                 WHERE status IN ('queued', 'sending', 'deferred') \
                   AND next_attempt_at < now() - make_interval(secs => $1) \
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING m.email_id, m.lane",
        )
        .bind(seconds(age))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(|(id, lane)| {
                let lane = Lane::parse(&lane).ok_or_else(|| {
                    Error::Internal(anyhow::anyhow!("email {id} has an unknown lane {lane:?}"))
                })?;
                Ok((EmailId::from(id), lane))
            })
            .collect()
    }

    #[tracing::instrument(name = "postgres.requeue", skip_all, fields(email.id = %id), err)]
    async fn requeue(&self, id: EmailId) -> Result<Option<Email>> {
        let sql = concat!(
            "UPDATE email_deliveries d SET status = 'queued', retry_base = attempts, \
                 last_error = NULL, next_attempt_at = now(), updated_at = now() \
             FROM email_messages m \
             WHERE m.email_id = d.email_id AND d.email_id = $1 AND status = 'failed' RETURNING ",
            columns!()
        );
        let requeued: Option<EmailRow> = sqlx::query_as(sql)
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        requeued.map(Email::try_from).transpose()
    }

    async fn attempts(&self, id: EmailId) -> Result<Vec<AttemptRecord>> {
        type Row = (
            i32,
            DateTime<Utc>,
            String,
            Option<i16>,
            Option<String>,
            Option<Json<Vec<RefusedRecipient>>>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT attempt, started_at, outcome, smtp_code, smtp_text, refused, relay FROM email_attempts \
             WHERE email_id = $1 ORDER BY attempt",
        )
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(
                |(attempt, started_at, outcome, code, text, refused, relay)| {
                    let outcome = AttemptOutcome::parse(&outcome).ok_or_else(|| {
                        Error::Internal(anyhow::anyhow!("unknown attempt outcome {outcome:?}"))
                    })?;
                    Ok(AttemptRecord {
                        attempt,
                        started_at,
                        outcome,
                        smtp_code: code.map(|c| c as u16),
                        smtp_text: text.unwrap_or_default(),
                        refused: refused.map(|j| j.0).unwrap_or_default(),
                        relay,
                    })
                },
            )
            .collect()
    }

    #[tracing::instrument(
        name = "postgres.queue_stats",
        skip_all,
        fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"),
        err
    )]
    async fn queue_stats(&self, limit: i64) -> Result<QueueStats> {
        // Both read email_deliveries_due_idx, which holds the unfinished emails only: the counts
        // read at most `limit` of them, the oldest one row.
        let rows: Vec<(String, Option<i64>, Option<f64>)> = sqlx::query_as(
            "WITH unfinished AS ( \
                 SELECT status FROM email_deliveries WHERE next_attempt_at IS NOT NULL LIMIT $1) \
             SELECT status, count(*), NULL::float8 FROM unfinished GROUP BY status \
             UNION ALL \
             SELECT '', NULL, (SELECT extract(epoch FROM now() - next_attempt_at)::float8 FROM email_deliveries \
                 WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= now() \
                   AND status IN ('queued', 'deferred', 'scheduled') \
                 ORDER BY next_attempt_at LIMIT 1)",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut stats = QueueStats::default();
        for (status, count, oldest) in rows {
            match (status.parse::<EmailStatus>(), count) {
                (Ok(status), Some(count)) => stats.pending.push((status, count)),
                _ => {
                    let waited = oldest.unwrap_or_default().max(0.0);
                    stats.oldest_waited = Duration::from_secs_f64(waited);
                }
            }
        }
        Ok(stats)
    }

    #[tracing::instrument(
        name = "postgres.attachment_contents",
        skip_all,
        fields(otel.kind = "client", db.system.name = "postgresql", email.id = %id),
        err
    )]
    async fn attachment_contents(&self, id: EmailId) -> Result<Vec<Bytes>> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let contents: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT content FROM email_attachment_contents WHERE email_id = $1 ORDER BY position",
        )
        .bind(id.as_uuid())
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        // The read buffer grew to the largest attachment: given back, as in `insert`.
        conn.shrink_buffers();
        Ok(contents.into_iter().map(Bytes::from).collect())
    }

    async fn attachment_content(&self, id: EmailId, index: usize) -> Result<Option<Bytes>> {
        let Ok(position) = i32::try_from(index) else {
            return Ok(None);
        };
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let content: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT content FROM email_attachment_contents WHERE email_id = $1 AND position = $2",
        )
        .bind(id.as_uuid())
        .bind(position)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        conn.shrink_buffers();
        Ok(content.map(Bytes::from))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// Inserts new emails (skipping those whose id or idempotency key is taken) with their
/// attachment bytes, answering the rows created. An email whose time is still ahead (by
/// PostgreSQL's clock, the one the scheduler goes by) waits as `scheduled`, due at its
/// time; the others are due now. Emails with attachments need `conn` to be a
/// transaction, so that rows and bytes come together.
async fn insert_rows(conn: &mut sqlx::PgConnection, emails: &[&NewEmail]) -> Result<Vec<Email>> {
    // The message and its delivery state in one statement. An id given twice is
    // inserted once (ON CONFLICT skips the later copy), so its state is taken from the
    // first copy too.
    let sql = "WITH messages AS ( \
             INSERT INTO email_messages (email_id, address_from, address_to, address_cc, \
                 address_bcc, reply_to, subject, message, html, headers, tags, attachments, \
                 message_id, idempotency_key, idempotency_client, template, lane) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::jsonb[], \
                 $11::jsonb[], $12::jsonb[], $13::text[], $14::text[], $15::text[], \
                 $17::jsonb[], $18::text[]) \
             ON CONFLICT DO NOTHING \
             RETURNING email_id, created_at), \
         deliveries AS ( \
             INSERT INTO email_deliveries (email_id, message_created_at, scheduled_at, status, \
                 next_attempt_at) \
             SELECT DISTINCT ON (m.email_id) m.email_id, m.created_at, s.at, \
                 CASE WHEN s.at > now() THEN 'scheduled' ELSE 'queued' END, \
                 greatest(s.at, now()) \
             FROM messages m \
             JOIN UNNEST($1::uuid[], $16::timestamptz[]) WITH ORDINALITY AS s(id, at, n) \
                 ON s.id = m.email_id \
             ORDER BY m.email_id, s.n \
             RETURNING email_id, status, updated_at, next_attempt_at, scheduled_at) \
         SELECT email_id, d.status, m.created_at, d.updated_at, d.next_attempt_at, \
             d.scheduled_at \
         FROM messages m JOIN deliveries d USING (email_id)";
    let columns = Columns::of(emails.iter().copied());
    let created: Vec<InsertedRow> = sqlx::query_as(sql)
        .bind(&columns.ids)
        .bind(&columns.from)
        .bind(&columns.to)
        .bind(&columns.cc)
        .bind(&columns.bcc)
        .bind(&columns.reply_to)
        .bind(&columns.subject)
        .bind(&columns.message)
        .bind(&columns.html)
        .bind(&columns.headers)
        .bind(&columns.tags)
        .bind(&columns.attachments)
        .bind(&columns.message_id)
        .bind(&columns.idempotency_key)
        .bind(&columns.idempotency_client)
        .bind(&columns.scheduled_at)
        .bind(&columns.template)
        .bind(&columns.lane)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    if emails.iter().any(|e| !e.attachments.is_empty()) {
        let created_ids: Vec<Uuid> = created.iter().map(InsertedRow::id).collect();
        store_contents(conn, emails, &created_ids).await?;
    }
    // The first copy of an id is the one stored.
    let mut by_id: HashMap<Uuid, &NewEmail> = HashMap::with_capacity(emails.len());
    for email in emails {
        by_id.entry(email.id.as_uuid()).or_insert(email);
    }
    created
        .into_iter()
        .map(|row| {
            let new = by_id.get(&row.id()).ok_or_else(|| {
                Error::Internal(anyhow::anyhow!(
                    "PostgreSQL stored an email it was not given"
                ))
            })?;
            row.email(new)
        })
        .collect()
}

/// The emails of `emails` that `created` has no row for. Of an id given more than once
/// only the first copy was stored: the later ones conflicted with it.
fn not_in<'a>(emails: Vec<&'a NewEmail>, created: &[Email]) -> Vec<&'a NewEmail> {
    let mut stored: HashSet<EmailId> = created.iter().map(|email| email.id).collect();
    emails
        .into_iter()
        .filter(|e| !stored.remove(&e.id))
        .collect()
}

/// Stores the attachment bytes of the emails of `emails` that `created` lists.
async fn store_contents(
    conn: &mut sqlx::PgConnection,
    emails: &[&NewEmail],
    created: &[Uuid],
) -> Result<()> {
    let (mut ids, mut positions, mut contents) = (Vec::new(), Vec::new(), Vec::new());
    for email in emails.iter().filter(|e| created.contains(&e.id.as_uuid())) {
        for (position, attachment) in email.attachments.iter().enumerate() {
            ids.push(email.id.as_uuid());
            positions.push(position as i32);
            contents.push(attachment.content.as_ref());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO email_attachment_contents (email_id, position, content) \
         SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::bytea[])",
    )
    .bind(&ids)
    .bind(&positions)
    .bind(&contents)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Versions of the migrations applied to the database, oldest first (none when the
/// migrations table does not exist yet).
pub async fn applied_versions(pool: &PgPool) -> anyhow::Result<Vec<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("reading the migrations table")?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
        .context("reading the migrations table")
}
