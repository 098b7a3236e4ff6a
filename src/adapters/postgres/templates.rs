//! Templates on PostgreSQL: `templates` holds each template's name and newest version,
//! `template_versions` every version's parts, never changed once written.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
// The dynamic SQL here is made of static pieces only (key_condition); values are bound.
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use super::db_error;
use crate::{
    domain::{Cursor, Template, TemplateContent, TemplateKey},
    error::Result,
    ports::{TemplateSaved, TemplateStore},
};

pub struct PgTemplateStore {
    pool: PgPool,
}

impl PgTemplateStore {
    pub fn new(pool: PgPool) -> Self {
        PgTemplateStore { pool }
    }
}

/// A template joined with one of its versions.
const SELECT: &str = "SELECT t.template_id, t.name, v.version, t.version AS latest_version, \
     v.subject, v.message, v.html, t.created_at, v.created_at AS updated_at \
     FROM templates t JOIN template_versions v ON v.template_id = t.template_id";

#[derive(sqlx::FromRow)]
struct TemplateRow {
    template_id: Uuid,
    name: String,
    version: i32,
    latest_version: i32,
    subject: String,
    message: Option<String>,
    html: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<TemplateRow> for Template {
    fn from(row: TemplateRow) -> Self {
        Template {
            id: row.template_id,
            name: row.name,
            version: row.version,
            latest_version: row.latest_version,
            content: TemplateContent {
                subject: row.subject,
                message: row.message,
                html: row.html,
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The `WHERE` for a key: `$1` is the id or the name.
fn key_condition(key: &TemplateKey) -> &'static str {
    match key {
        TemplateKey::Id(_) => "t.template_id = $1::uuid",
        TemplateKey::Name(_) => "t.name = $1",
    }
}

#[async_trait]
impl TemplateStore for PgTemplateStore {
    async fn create(
        &self,
        id: Uuid,
        name: &str,
        content: &TemplateContent,
    ) -> Result<TemplateSaved> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let created_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "INSERT INTO templates (template_id, name, version) VALUES ($1, $2, 1) \
             ON CONFLICT (name) DO NOTHING RETURNING created_at",
        )
        .bind(id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(created_at) = created_at else {
            return Ok(TemplateSaved::NameTaken);
        };
        let updated_at = insert_version(&mut tx, id, 1, content).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(TemplateSaved::Saved(Template {
            id,
            name: name.to_owned(),
            version: 1,
            latest_version: 1,
            content: content.clone(),
            created_at,
            updated_at,
        }))
    }

    async fn add_version(
        &self,
        key: &TemplateKey,
        content: &TemplateContent,
    ) -> Result<TemplateSaved> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // The row lock orders two concurrent saves: each gets its own number.
        let sql = format!(
            "UPDATE templates t SET version = version + 1, updated_at = now() WHERE {} \
             RETURNING template_id, name, version, created_at",
            key_condition(key)
        );
        let bumped: Option<(Uuid, String, i32, DateTime<Utc>)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(key.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some((id, name, version, created_at)) = bumped else {
            return Ok(TemplateSaved::Missing);
        };
        let updated_at = insert_version(&mut tx, id, version, content).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(TemplateSaved::Saved(Template {
            id,
            name,
            version,
            latest_version: version,
            content: content.clone(),
            created_at,
            updated_at,
        }))
    }

    async fn get(&self, key: &TemplateKey, version: Option<i32>) -> Result<Option<Template>> {
        let sql = format!(
            "{SELECT} WHERE {} AND v.version = coalesce($2, t.version)",
            key_condition(key)
        );
        let row: Option<TemplateRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(key.to_string())
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(row.map(Template::from))
    }

    async fn list(
        &self,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Template>, Option<Cursor>)> {
        let sql = format!(
            "{SELECT} WHERE v.version = t.version \
             AND ($1::timestamptz IS NULL OR (t.created_at, t.template_id) < ($1, $2)) \
             ORDER BY t.created_at DESC, t.template_id DESC LIMIT $3"
        );
        let mut rows: Vec<TemplateRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id.as_uuid()))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let next = Cursor::page(&mut rows, limit, |row| (row.created_at, row.template_id));
        Ok((rows.into_iter().map(Template::from).collect(), next))
    }

    async fn delete(&self, key: &TemplateKey) -> Result<bool> {
        let sql = format!("DELETE FROM templates t WHERE {}", key_condition(key));
        let deleted = sqlx::query(AssertSqlSafe(sql))
            .bind(key.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(deleted.rows_affected() > 0)
    }
}

/// Stores one version's parts, answering when it was saved.
async fn insert_version(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    version: i32,
    content: &TemplateContent,
) -> Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "INSERT INTO template_versions (template_id, version, subject, message, html) \
         VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
    )
    .bind(id)
    .bind(version)
    .bind(&content.subject)
    .bind(&content.message)
    .bind(&content.html)
    .fetch_one(tx)
    .await
    .map_err(db_error)
}
