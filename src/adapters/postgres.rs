//! The email store on PostgreSQL (sqlx). Queries are plain `sqlx::query_as` so building
//! needs no live database.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::{
    PgPool, Postgres,
    migrate::{MigrateDatabase, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use crate::{
    config::DatabaseSettings,
    domain::{Email, EmailId, EmailStatus, NewEmail, SearchPage, SearchQuery},
    error::{Dependency, Error, Result},
    ports::{AfterAttempt, AttemptOutcome, AttemptRecord, Claim, EmailStore, Inserted},
};

/// The migrations in `migrations/`, built into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The columns of an [`EmailRow`], as a literal so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "email_id, address_from, address_to, subject, message, html, status, attempts, \
         retry_base, last_error, idempotency_key, created_at, updated_at, sent_at, next_attempt_at"
    };
}

/// Opens a pool without waiting for PostgreSQL: requests made while it is down fail
/// fast with `Unavailable` instead of blocking the start.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .expose_secret()
        .parse()
        .context("database.url is not a PostgreSQL URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
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
}

impl PgEmailStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn fetch(&self, id: EmailId) -> Result<Option<Email>> {
        let sql = concat!("SELECT ", columns!(), " FROM emails WHERE email_id = $1");
        let row: Option<EmailRow> = sqlx::query_as(sql)
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(Email::try_from).transpose()
    }
}

#[derive(sqlx::FromRow)]
struct EmailRow {
    email_id: Uuid,
    address_from: String,
    address_to: String,
    subject: String,
    message: String,
    html: Option<String>,
    status: String,
    attempts: i32,
    retry_base: i32,
    last_error: Option<String>,
    idempotency_key: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
}

impl TryFrom<EmailRow> for Email {
    type Error = Error;

    fn try_from(row: EmailRow) -> Result<Self> {
        Ok(Email {
            id: row.email_id.into(),
            from: row.address_from,
            to: row.address_to,
            subject: row.subject,
            message: row.message,
            html: row.html,
            status: row
                .status
                .parse()
                .map_err(|e: String| Error::Internal(anyhow::anyhow!(e)))?,
            attempts: row.attempts,
            retry_base: row.retry_base,
            last_error: row.last_error,
            idempotency_key: row.idempotency_key,
            created_at: row.created_at,
            updated_at: row.updated_at,
            sent_at: row.sent_at,
            next_attempt_at: row.next_attempt_at,
        })
    }
}

/// PostgreSQL being unreachable is `Unavailable` (the caller may retry); anything else
/// is a bug or a surprise.
fn db_error(err: sqlx::Error) -> Error {
    let unavailable = match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources; 57P0x: shutdown;
            // 3D000: the database is gone (dropped, or not created yet).
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "3D000"
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
            email.id = %email.id,
        ),
        err
    )]
    async fn insert(&self, email: &NewEmail) -> Result<Inserted> {
        let sql = concat!(
            "INSERT INTO emails (email_id, address_from, address_to, subject, message, html, idempotency_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING ",
            columns!()
        );
        let created: Option<EmailRow> = sqlx::query_as(sql)
            .bind(email.id.as_uuid())
            .bind(AsRef::<str>::as_ref(&email.from))
            .bind(AsRef::<str>::as_ref(&email.to))
            .bind(&email.subject)
            .bind(&email.message)
            .bind(&email.html)
            .bind(&email.idempotency_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        if let Some(row) = created {
            return Ok(Inserted::Created(row.try_into()?));
        }
        // The id or the idempotency key is taken: the key decides when there is one.
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM emails WHERE idempotency_key = $2 OR email_id = $1 \
             ORDER BY (idempotency_key = $2) DESC NULLS LAST LIMIT 1"
        );
        let existing: Option<EmailRow> = sqlx::query_as(sql)
            .bind(email.id.as_uuid())
            .bind(&email.idempotency_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        match existing {
            Some(row) => Ok(Inserted::Existing(row.try_into()?)),
            None => Err(Error::Internal(anyhow::anyhow!(
                "insert of {} conflicted, but no conflicting row exists",
                email.id
            ))),
        }
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
        // Two query texts rather than `$1 IS NULL OR …`, so a generic plan can still use
        // the GIN index. websearch_to_tsquery accepts any input without syntax errors.
        macro_rules! matching {
            () => {
                " FROM emails WHERE search @@ websearch_to_tsquery('english', $1)"
            };
        }
        macro_rules! everything {
            () => {
                " FROM emails WHERE $1::text IS NULL"
            };
        }
        macro_rules! page {
            () => {
                " ORDER BY created_at DESC, email_id DESC LIMIT $2 OFFSET $3"
            };
        }
        let (count_sql, page_sql) = match query.text {
            Some(_) => (
                concat!("SELECT count(*)", matching!()),
                concat!("SELECT ", columns!(), matching!(), page!()),
            ),
            None => (
                concat!("SELECT count(*)", everything!()),
                concat!("SELECT ", columns!(), everything!(), page!()),
            ),
        };
        let total: i64 = sqlx::query_scalar(count_sql)
            .bind(&query.text)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        let rows: Vec<EmailRow> = sqlx::query_as(page_sql)
            .bind(&query.text)
            .bind(i64::from(query.size))
            .bind(query.offset())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(SearchPage {
            total_count: total,
            page: query.page,
            size: query.size,
            items: rows
                .into_iter()
                .map(Email::try_from)
                .collect::<Result<_>>()?,
        })
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
            email.id = %id,
        ),
        err
    )]
    async fn claim(&self, id: EmailId, lease: Duration) -> Result<Claim> {
        let sql = concat!(
            "UPDATE emails SET status = 'sending', attempts = attempts + 1, updated_at = now(), \
                 next_attempt_at = now() + make_interval(secs => $2) \
             WHERE email_id = $1 AND (status = 'queued' \
                 OR (status IN ('deferred', 'sending') AND next_attempt_at <= now())) \
             RETURNING ",
            columns!()
        );
        let claimed: Option<EmailRow> = sqlx::query_as(sql)
            .bind(id.as_uuid())
            .bind(seconds(lease))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        if let Some(row) = claimed {
            return Ok(Claim::Claimed(row.try_into()?));
        }
        Ok(match self.fetch(id).await? {
            None => Claim::Missing,
            Some(email) if email.status.is_final() => Claim::Finished(email),
            Some(email) => {
                let due = email.next_attempt_at.unwrap_or_else(Utc::now);
                Claim::NotDue((due - Utc::now()).to_std().unwrap_or_default())
            }
        })
    }

    #[tracing::instrument(
        name = "postgres.finish_attempt",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "postgresql",
            db.system.name = "postgresql",
            db.operation.name = "UPDATE",
            db.collection.name = "emails",
            email.id = %id,
            attempt = record.attempt,
        ),
        err
    )]
    async fn finish_attempt(
        &self,
        id: EmailId,
        record: &AttemptRecord,
        after: AfterAttempt,
        error: Option<&str>,
    ) -> Result<Email> {
        let (status, next_attempt_at) = match after {
            AfterAttempt::Sent => (EmailStatus::Sent, None),
            AfterAttempt::Deferred { next_attempt_at } => {
                (EmailStatus::Deferred, Some(next_attempt_at))
            }
            AfterAttempt::Failed => (EmailStatus::Failed, None),
        };
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query(
            "INSERT INTO email_attempts (email_id, attempt, started_at, outcome, smtp_code, smtp_text) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (email_id, attempt) DO NOTHING",
        )
        .bind(id.as_uuid())
        .bind(record.attempt)
        .bind(record.started_at)
        .bind(record.outcome.as_str())
        .bind(record.smtp_code.map(|c| c as i16))
        .bind(&record.smtp_text)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        // Only the holder of the lease for this attempt may move the email on.
        let sql = concat!(
            "UPDATE emails SET status = $3, updated_at = now(), next_attempt_at = $4, last_error = $5, \
                 sent_at = CASE WHEN $3 = 'sent' THEN now() ELSE sent_at END \
             WHERE email_id = $1 AND status = 'sending' AND attempts = $2 \
             RETURNING ",
            columns!()
        );
        let updated: Option<EmailRow> = sqlx::query_as(sql)
            .bind(id.as_uuid())
            .bind(record.attempt)
            .bind(status.as_str())
            .bind(next_attempt_at)
            .bind(error)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        match updated {
            Some(row) => row.try_into(),
            None => {
                tracing::warn!(email.id = %id, attempt = record.attempt, "lease lost before the attempt was recorded");
                self.fetch(id).await?.ok_or(Error::NotFound(id))
            }
        }
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
    async fn take_stranded(&self, age: Duration, limit: i64) -> Result<Vec<EmailId>> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE emails SET next_attempt_at = now() WHERE email_id IN ( \
                 SELECT email_id FROM emails \
                 WHERE status IN ('queued', 'sending', 'deferred') \
                   AND next_attempt_at < now() - make_interval(secs => $1) \
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING email_id",
        )
        .bind(seconds(age))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(ids.into_iter().map(EmailId::from).collect())
    }

    #[tracing::instrument(name = "postgres.requeue", skip_all, fields(email.id = %id), err)]
    async fn requeue(&self, id: EmailId) -> Result<Option<Email>> {
        let sql = concat!(
            "UPDATE emails SET status = 'queued', retry_base = attempts, last_error = NULL, \
                 next_attempt_at = now(), updated_at = now() \
             WHERE email_id = $1 AND status = 'failed' RETURNING ",
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
        let rows: Vec<(i32, DateTime<Utc>, String, Option<i16>, Option<String>)> = sqlx::query_as(
            "SELECT attempt, started_at, outcome, smtp_code, smtp_text FROM email_attempts \
             WHERE email_id = $1 ORDER BY attempt",
        )
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(|(attempt, started_at, outcome, code, text)| {
                let outcome = match outcome.as_str() {
                    "sent" => AttemptOutcome::Sent,
                    "transient" => AttemptOutcome::Transient,
                    "permanent" => AttemptOutcome::Permanent,
                    other => {
                        return Err(Error::Internal(anyhow::anyhow!(
                            "unknown attempt outcome {other:?}"
                        )));
                    }
                };
                Ok(AttemptRecord {
                    attempt,
                    started_at,
                    outcome,
                    smtp_code: code.map(|c| c as u16),
                    smtp_text: text.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
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
