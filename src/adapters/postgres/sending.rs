//! The sending API's storage: batches under one idempotency key, the filtered listing,
//! scheduled emails falling due, cancel and reschedule.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{EmailRow, PgEmailStore, columns, db_error, insert_rows, newest::Matching};
use crate::{
    domain::{Cursor, Email, EmailId, ListPage, ListQuery, NewEmail},
    error::{Error, Result},
    ports::{BatchInserted, BatchKey, Change, Released},
};

impl PgEmailStore {
    pub(super) async fn insert_batch_rows(
        &self,
        emails: &[NewEmail],
        key: Option<&BatchKey>,
    ) -> Result<BatchInserted> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if let Some(key) = key {
            // A batch key past `idempotency.ttl` is free again.
            sqlx::query(
                "DELETE FROM email_batches \
                 WHERE idempotency_client = $1 AND idempotency_key = $2 \
                   AND created_at < now() - $3::bigint * interval '1 millisecond'",
            )
            .bind(&key.client)
            .bind(&key.key)
            .bind(self.ttl_millis())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            let ids: Vec<Uuid> = emails.iter().map(|e| e.id.as_uuid()).collect();
            let claimed: Option<i32> = sqlx::query_scalar(
                "INSERT INTO email_batches \
                     (idempotency_client, idempotency_key, content_sha256, email_ids) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
            )
            .bind(&key.client)
            .bind(&key.key)
            .bind(&key.digest)
            .bind(&ids)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            if claimed.is_none() {
                let (digest, ids): (String, Vec<Uuid>) = sqlx::query_as(
                    "SELECT content_sha256, email_ids FROM email_batches \
                     WHERE idempotency_client = $1 AND idempotency_key = $2",
                )
                .bind(&key.client)
                .bind(&key.key)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
                tx.rollback().await.map_err(db_error)?;
                if digest != key.digest {
                    return Ok(BatchInserted::Conflict {
                        existing: EmailId::from(ids.first().copied().unwrap_or_default()),
                    });
                }
                let mut found: HashMap<Uuid, Email> = self
                    .fetch_many(&ids)
                    .await?
                    .into_iter()
                    .map(|email| (email.id.as_uuid(), email))
                    .collect();
                let emails = ids
                    .iter()
                    .map(|id| {
                        found.remove(id).ok_or_else(|| {
                            Error::Internal(anyhow::anyhow!("email {id} of a stored batch is gone"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                return Ok(BatchInserted::Replayed(emails));
            }
        }
        let stored = insert_rows(&mut tx, &emails.iter().collect::<Vec<_>>()).await?;
        if stored.len() != emails.len() {
            // Fresh ids and no keys of their own: nothing in a batch can conflict.
            return Err(Error::Internal(anyhow::anyhow!(
                "{} of {} batch emails were stored",
                stored.len(),
                emails.len()
            )));
        }
        tx.commit().await.map_err(db_error)?;
        let mut created: HashMap<Uuid, Email> = stored
            .into_iter()
            .map(|email| (email.id.as_uuid(), email))
            .collect();
        Ok(BatchInserted::Created(
            emails
                .iter()
                .filter_map(|e| created.remove(&e.id.as_uuid()))
                .collect(),
        ))
    }

    pub(super) async fn list_rows(&self, query: &ListQuery) -> Result<ListPage<Email>> {
        // A page starts below the cursor and below createdBefore, whichever is older;
        // createdBefore as a key with the nil id excludes the emails of that very time.
        let before = [
            query.cursor.map(|c| (c.created_at, c.id.as_uuid())),
            query.created_before.map(|at| (at, Uuid::nil())),
        ]
        .into_iter()
        .flatten()
        .min();
        let matching = Matching {
            words: query.search.clone(),
            recipient: query.to.clone(),
            tag: query.tag.clone(),
            status: query.status,
            sender: query.from.clone(),
            after: query.created_after,
            before,
        };
        let newest = matching
            .newest(&self.pool, query.limit as usize + 1, &self.probes)
            .await?;
        let ids: Vec<Uuid> = newest.keys.iter().map(|&(_, id)| id).collect();
        let mut items = self.fetch_in_order(&ids).await?;
        let next = Cursor::page(&mut items, query.limit, |email| {
            (email.created_at, email.id.as_uuid())
        });
        Ok(ListPage { items, next })
    }

    pub(super) async fn release_due_rows(&self, limit: i64) -> Result<Released> {
        let sql = concat!(
            "UPDATE email_deliveries d SET status = 'queued', next_attempt_at = now(), \
                 updated_at = now() \
             FROM email_messages m \
             WHERE m.email_id = d.email_id AND d.email_id IN ( \
                 SELECT email_id FROM email_deliveries \
                 WHERE status = 'scheduled' AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING ",
            columns!()
        );
        let rows: Vec<EmailRow> = sqlx::query_as(sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let next_due: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM email_deliveries WHERE status = 'scheduled'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(Released {
            emails: rows
                .into_iter()
                .map(Email::try_from)
                .collect::<Result<_>>()?,
            next_due,
        })
    }

    /// Runs an update of one email; when it changes nothing, tells why.
    async fn change(&self, id: EmailId, updated: Option<EmailRow>) -> Result<Change> {
        if let Some(row) = updated {
            return Ok(Change::Done(Email::try_from(row)?));
        }
        Ok(match self.fetch(id).await? {
            Some(email) => Change::TooLate(email),
            None => Change::Missing,
        })
    }

    pub(super) async fn cancel_row(&self, id: EmailId) -> Result<Change> {
        let sql = concat!(
            "UPDATE email_deliveries d SET status = 'canceled', next_attempt_at = NULL, \
                 updated_at = now() \
             FROM email_messages m \
             WHERE m.email_id = d.email_id AND d.email_id = $1 \
               AND status IN ('scheduled', 'queued', 'deferred') RETURNING ",
            columns!()
        );
        let updated: Option<EmailRow> = sqlx::query_as(sql)
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        self.change(id, updated).await
    }

    pub(super) async fn reschedule_row(&self, id: EmailId, at: DateTime<Utc>) -> Result<Change> {
        let sql = concat!(
            "UPDATE email_deliveries d SET scheduled_at = $2, \
                 next_attempt_at = greatest($2, now()), updated_at = now() \
             FROM email_messages m \
             WHERE m.email_id = d.email_id AND d.email_id = $1 AND status = 'scheduled' \
             RETURNING ",
            columns!()
        );
        let updated: Option<EmailRow> = sqlx::query_as(sql)
            .bind(id.as_uuid())
            .bind(at)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        self.change(id, updated).await
    }
}
