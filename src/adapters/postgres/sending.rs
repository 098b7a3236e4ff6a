//! The sending API's storage: batches under one idempotency key, the filtered listing,
//! scheduled emails falling due, cancel and reschedule.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{EmailRow, PgEmailStore, columns, db_error, insert_rows};
use crate::{
    domain::{Cursor, Email, EmailId, ListPage, ListQuery, NewEmail},
    error::{Error, Result},
    ports::{BatchInserted, BatchKey, Change, Released},
};

/// A pattern matching `address` as one whole mailbox of a header-form list (after a
/// start, `<`, `,` or a blank; before an end, `>`, `,` or a blank), for `~`.
fn whole_address(address: &str) -> String {
    let mut escaped = String::with_capacity(address.len() + 8);
    for c in address.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("(^|[<,[:space:]]){escaped}($|[>,[:space:]])")
}

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
        let mut sql: QueryBuilder<Postgres> =
            QueryBuilder::new(concat!("SELECT ", columns!(), " FROM emails m WHERE TRUE"));
        if let Some(status) = query.status {
            sql.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some((name, value)) = &query.tag {
            sql.push(" AND tags @> ")
                .push_bind(serde_json::json!({ name: value }))
                .push("::jsonb");
        }
        if let Some(to) = &query.to {
            // The search vector holds the To addresses: it finds the candidates, the
            // pattern keeps those with this very address.
            sql.push(" AND search @@ plainto_tsquery('english', ")
                .push_bind(to.clone())
                .push(") AND lower(address_to) ~ ")
                .push_bind(whole_address(to));
        }
        if let Some(from) = &query.from {
            sql.push(" AND lower(address_from) ~ ")
                .push_bind(whole_address(from));
        }
        if let Some(after) = query.created_after {
            sql.push(" AND created_at >= ").push_bind(after);
        }
        if let Some(before) = query.created_before {
            sql.push(" AND created_at < ").push_bind(before);
        }
        if let Some(search) = &query.search {
            sql.push(" AND search @@ websearch_to_tsquery('english', ")
                .push_bind(search.clone())
                .push(")");
        }
        if let Some(cursor) = query.cursor {
            sql.push(" AND (created_at, email_id) < (")
                .push_bind(cursor.created_at)
                .push(", ")
                .push_bind(cursor.id.as_uuid())
                .push(")");
        }
        sql.push(" ORDER BY created_at DESC, email_id DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);
        let rows: Vec<EmailRow> = sql
            .build_query_as()
            .persistent(false)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut items = rows
            .into_iter()
            .map(Email::try_from)
            .collect::<Result<Vec<_>>>()?;
        let more = items.len() > query.limit as usize;
        items.truncate(query.limit as usize);
        let next = more.then(|| {
            let last = items.last().expect("a full page");
            Cursor {
                created_at: last.created_at,
                id: last.id,
            }
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
