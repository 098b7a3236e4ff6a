//! The suppression list on PostgreSQL (`suppressions`, one row per canonical address),
//! and the reports about emails (`email_reports`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{columns, db_error, fetch_email, rows::EmailRow};
use crate::{
    domain::{
        Cursor, Email, EmailId, NewSuppression, SuppressedAddress, Suppression, SuppressionReason,
    },
    error::{Error, Result},
    ports::{ReportRecorded, ReportToRecord, SuppressionStore},
};

pub struct PgSuppressionStore {
    pool: PgPool,
}

impl PgSuppressionStore {
    pub fn new(pool: PgPool) -> Self {
        PgSuppressionStore { pool }
    }
}

const COLUMNS: &str = "id, address, reason, email_id, smtp_text, note, created_at";

#[derive(sqlx::FromRow)]
struct SuppressionRow {
    id: Uuid,
    address: String,
    reason: String,
    email_id: Option<Uuid>,
    smtp_text: Option<String>,
    note: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<SuppressionRow> for Suppression {
    type Error = Error;

    fn try_from(row: SuppressionRow) -> Result<Self> {
        Ok(Suppression {
            id: row.id,
            address: SuppressedAddress::from_stored(row.address),
            reason: row
                .reason
                .parse()
                .map_err(|why: String| Error::Internal(anyhow::anyhow!(why)))?,
            email_id: row.email_id.map(EmailId::from),
            smtp_text: row.smtp_text,
            note: row.note,
            created_at: row.created_at,
        })
    }
}

/// Adds entries in one statement; an address already listed keeps its entry. Answers the
/// addresses added now.
pub(super) async fn insert_suppressions(
    conn: &mut PgConnection,
    entries: &[NewSuppression],
) -> Result<Vec<String>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "INSERT INTO suppressions (id, address, reason, email_id, smtp_text, note) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[]) \
         ON CONFLICT (address) DO NOTHING RETURNING address",
    )
    .bind(entries.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.address.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.email_id.map(|id| id.as_uuid()))
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.smtp_text.as_deref()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.note.as_deref()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
    .map_err(db_error)
}

#[async_trait]
impl SuppressionStore for PgSuppressionStore {
    async fn add(&self, entry: &NewSuppression) -> Result<(Suppression, bool)> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let added = insert_suppressions(&mut conn, std::slice::from_ref(entry)).await?;
        let stored = self
            .get(&entry.address)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("a suppression vanished as added")))?;
        Ok((stored, !added.is_empty()))
    }

    async fn get(&self, address: &SuppressedAddress) -> Result<Option<Suppression>> {
        let row: Option<SuppressionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM suppressions WHERE address = $1"
        )))
        .bind(address.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.map(Suppression::try_from).transpose()
    }

    async fn delete(&self, address: &SuppressedAddress) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM suppressions WHERE address = $1")
            .bind(address.as_str())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn list(
        &self,
        reason: Option<SuppressionReason>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Suppression>, Option<Cursor>)> {
        let mut rows: Vec<SuppressionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM suppressions \
             WHERE ($1::text IS NULL OR reason = $1) \
             AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        )))
        .bind(reason.map(SuppressionReason::as_str))
        .bind(cursor.map(|c| c.created_at))
        .bind(cursor.map(|c| c.id.as_uuid()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let next = Cursor::page(&mut rows, limit, |row| (row.created_at, row.id));
        let entries = rows
            .into_iter()
            .map(Suppression::try_from)
            .collect::<Result<_>>()?;
        Ok((entries, next))
    }

    #[tracing::instrument(
        name = "postgres.suppressed",
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "SELECT",
            db.collection.name = "suppressions",
            addresses = addresses.len(),
        ),
        err
    )]
    async fn suppressed(&self, addresses: &[SuppressedAddress]) -> Result<Vec<Suppression>> {
        let rows: Vec<SuppressionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM suppressions WHERE address = ANY($1)"
        )))
        .bind(addresses.iter().map(|a| a.as_str()).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(Suppression::try_from).collect()
    }

    async fn record_report(&self, report: &ReportToRecord) -> Result<ReportRecorded> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let id = report.email_id.as_uuid();
        let inserted = sqlx::query(
            "INSERT INTO email_reports (email_id, digest, recipient, kind, status, diagnostic) \
             SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&report.digest)
        .bind(
            report
                .recipients
                .iter()
                .map(|r| r.recipient.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            report
                .recipients
                .iter()
                .map(|r| r.verdict.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            report
                .recipients
                .iter()
                .map(|r| r.status.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            report
                .recipients
                .iter()
                .map(|r| r.diagnostic.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await;
        match inserted {
            // The email is gone (deleted since it was looked up).
            Err(sqlx::Error::Database(err)) if err.is_foreign_key_violation() => {
                return Ok(ReportRecorded::Missing);
            }
            Err(err) => return Err(db_error(err)),
            Ok(done) if done.rows_affected() == 0 && !report.recipients.is_empty() => {
                drop(tx);
                return match fetch_email(&self.pool, report.email_id).await? {
                    Some(email) => Ok(ReportRecorded::Duplicate(email)),
                    None => Ok(ReportRecorded::Missing),
                };
            }
            Ok(_) => {}
        }
        let changed: Option<EmailRow> = match &report.status_change {
            Some(change) => sqlx::query_as(concat!(
                "UPDATE email_deliveries d SET status = $2, last_error = $3, updated_at = now() \
                 FROM email_messages m \
                 WHERE m.email_id = d.email_id AND d.email_id = $1 AND status = ANY($4) \
                 RETURNING ",
                columns!()
            ))
            .bind(id)
            .bind(change.to.as_str())
            .bind(&change.error)
            .bind(change.from.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?,
            None => None,
        };
        insert_suppressions(&mut tx, &report.suppress).await?;
        tx.commit().await.map_err(db_error)?;
        let moved = changed.is_some();
        let email = match changed {
            Some(row) => Some(Email::try_from(row)?),
            None => fetch_email(&self.pool, report.email_id).await?,
        };
        Ok(match email {
            Some(email) => ReportRecorded::Recorded {
                changed: moved,
                email,
            },
            None => ReportRecorded::Missing,
        })
    }
}
