//! The sending API beyond one email at a time: batches (all or nothing, one transaction,
//! one idempotency key), scheduled emails falling due, cancel and reschedule, the
//! filtered listing and the attempts of an email.

use chrono::Utc;
use futures::future::join_all;
use sha2::{Digest, Sha256};

use crate::{
    domain::{
        Email, EmailDraft, EmailId, Field, FieldPath, ListPage, ListQuery,
        MAX_IDEMPOTENCY_KEY_CHARS, NewEmail, Violation, Violations,
    },
    error::{Error, Result},
    ports::{AttemptRecord, BatchInserted, BatchKey, Change},
};

use super::Mailroom;

/// A batch as stored: its emails in request order, and whether an earlier request with
/// the same idempotency key stored them.
#[derive(Debug, Clone)]
pub struct BatchCreated {
    pub emails: Vec<Email>,
    pub replayed: bool,
}

impl Mailroom {
    /// Validates every email of a batch (each violation named under `emails[i]`) and
    /// stores them all in one transaction, or none. A repeated `idempotency_key` with the
    /// same batch answers the emails stored the first time; with another, a conflict.
    /// The key belongs to `client` (the API key's name; '' for none).
    #[tracing::instrument(name = "usecase.create_batch", skip_all, fields(emails = drafts.len()))]
    pub async fn create_batch(
        &self,
        drafts: Vec<EmailDraft>,
        client: &str,
        idempotency_key: Option<String>,
    ) -> Result<BatchCreated> {
        let mut violations = Vec::new();
        if drafts.is_empty() {
            violations.push(Violation::new(
                Field::Emails,
                "required",
                "must hold at least one email",
            ));
        }
        if drafts.len() > self.rules.limits.max_batch {
            violations.push(Violation::new(
                Field::Emails,
                "too_many",
                format!(
                    "holds {} emails; at most {} are allowed (limits.max_batch)",
                    drafts.len(),
                    self.rules.limits.max_batch
                ),
            ));
            return Err(Violations::check(violations).unwrap_err().into());
        }
        if let Some(key) = &idempotency_key {
            let chars = key.chars().count();
            if chars == 0 || chars > MAX_IDEMPOTENCY_KEY_CHARS || key.chars().any(char::is_control)
            {
                violations.push(Violation::new(
                    Field::IdempotencyKey,
                    "length",
                    "must be 1 to 255 characters without control characters",
                ));
            }
        }
        let mut emails = Vec::with_capacity(drafts.len());
        for (index, draft) in drafts.into_iter().enumerate() {
            let at = FieldPath::field(Field::Emails).index(index);
            if draft.idempotency_key.is_some() {
                violations.push(Violation::new(
                    at.clone().then(Field::IdempotencyKey),
                    "batch_key",
                    "a batch has one idempotency key, for all of its emails",
                ));
            }
            let lane = draft
                .lane
                .or_else(|| Some(self.batch_lane.as_str().to_owned()));
            match self
                .new_email(EmailDraft {
                    idempotency_key: None,
                    lane,
                    ..draft
                })
                .await
            {
                Ok(email) => emails.push(email),
                Err(Error::Validation(invalid)) => violations.extend(invalid.within(&at)),
                Err(Error::MessageTooLarge(too_large)) => violations.push(Violation::new(
                    at,
                    "message_too_large",
                    format!(
                        "would take at least {} bytes as delivered; limits.max_message_bytes allows {}",
                        too_large.size, too_large.limit
                    ),
                )),
                // A template could not be read (PostgreSQL is down).
                Err(other) => return Err(other),
            }
        }
        Violations::check(violations)?;
        let key = idempotency_key.map(|key| BatchKey {
            client: client.to_owned(),
            digest: batch_digest(&emails),
            key,
        });
        match self.ports.store.insert_batch(&emails, key.as_ref()).await? {
            BatchInserted::Created(created) => {
                join_all(created.iter().map(|email| self.announce(email))).await;
                Ok(BatchCreated {
                    emails: created,
                    replayed: false,
                })
            }
            BatchInserted::Replayed(emails) => Ok(BatchCreated {
                emails,
                replayed: true,
            }),
            BatchInserted::Conflict { existing } => Err(Error::IdempotencyConflict {
                key: key.map(|k| k.key).unwrap_or_default(),
                existing,
            }),
        }
    }

    /// Queues the scheduled emails whose time has come (at most `limit`), announcing
    /// each; answers how many, and when the next one is due.
    #[tracing::instrument(name = "usecase.release_due", skip_all)]
    pub async fn release_due(&self, limit: i64) -> Result<(usize, Option<chrono::DateTime<Utc>>)> {
        let released = self.ports.store.release_due(limit).await?;
        join_all(released.emails.iter().map(|email| self.announce(email))).await;
        Ok((released.emails.len(), released.next_due))
    }

    /// Cancels an email that has not begun to be sent.
    #[tracing::instrument(name = "usecase.cancel", skip_all, fields(email.id = %id))]
    pub async fn cancel(&self, id: EmailId) -> Result<Email> {
        self.changed(id, "cancel", self.ports.store.cancel(id).await?)
            .await
    }

    /// Moves a scheduled email to another time (RFC 3339; a past time sends it now).
    #[tracing::instrument(name = "usecase.reschedule", skip_all, fields(email.id = %id))]
    pub async fn reschedule(&self, id: EmailId, scheduled_at: &str) -> Result<Email> {
        let at = self
            .rules
            .schedule_time(scheduled_at, Utc::now())
            .map_err(Violations::one)?;
        self.changed(id, "reschedule", self.ports.store.reschedule(id, at).await?)
            .await
    }

    async fn changed(&self, id: EmailId, action: &'static str, change: Change) -> Result<Email> {
        match change {
            Change::Done(email) => {
                self.status_changed(&email, None).await;
                Ok(email)
            }
            Change::TooLate(email) => Err(Error::TooLate {
                id,
                status: email.status,
                action,
            }),
            Change::Missing => Err(Error::NotFound(id)),
        }
    }

    /// Emails matching every filter, newest first, a page at a time.
    #[tracing::instrument(name = "usecase.list", skip_all)]
    pub async fn list(&self, query: ListQuery) -> Result<ListPage<Email>> {
        self.ports.store.list(&query).await
    }

    /// Every delivery attempt of an email, oldest first.
    #[tracing::instrument(name = "usecase.attempts", skip_all, fields(email.id = %id))]
    pub async fn attempts(&self, id: EmailId) -> Result<Vec<AttemptRecord>> {
        // The email first: an unknown id is a 404, not an empty list.
        self.get(id).await?;
        self.ports.store.attempts(id).await
    }
}

/// What a whole batch asked for, email by email, in order.
fn batch_digest(emails: &[NewEmail]) -> String {
    let mut hash = Sha256::new();
    for email in emails {
        hash.update(email.content_digest().as_bytes());
    }
    hex::encode(hash.finalize())
}
