//! Creating, reading and searching emails.

use std::sync::Arc;

use crate::{
    domain::{
        AttachmentMeta, Email, EmailDraft, EmailId, EmailStatus, NewEmail, Rejected, SearchPage,
        SearchQuery,
    },
    error::{Error, Result},
    metrics::CacheResult,
    ports::{CreateRequest, Inserted, SendReason},
};

use bytes::Bytes;
use futures::future::join_all;
use tracing::Instrument;

use super::Mailroom;

/// A created email, and whether it was created by an earlier request with the same
/// idempotency key (or id).
#[derive(Debug, Clone)]
pub struct Created {
    pub email: Email,
    pub replayed: bool,
}

/// What became of an email handed over for asynchronous creation.
#[derive(Debug, Clone)]
pub enum Accepted {
    /// Its create event is published; the create workers store it under this id.
    Queued(NewEmail),
    /// Too large to travel as an event, so stored right away, as by [`Mailroom::create`].
    Created(Created),
}

impl Mailroom {
    /// Validates and stores an email as `queued`, then asks for its delivery.
    ///
    /// Once the row is stored the email is accepted: a failed send event publish is only
    /// logged, because the reconciler publishes it again later.
    #[tracing::instrument(name = "usecase.create", skip_all, fields(email.id))]
    pub async fn create(&self, draft: EmailDraft) -> Result<Created> {
        let new = self.new_email(draft).await?;
        tracing::Span::current().record("email.id", tracing::field::display(new.id));
        self.store_new(new).await
    }

    async fn store_new(&self, new: NewEmail) -> Result<Created> {
        if let Some(group) = &self.group_commit {
            return group.create(new).await;
        }
        let mut created = self
            .create_all(vec![(new, tracing::Span::current())])
            .await?;
        created.pop().expect("one result per email")
    }

    /// Stores validated emails in one transaction, then, for each new one, refreshes the
    /// cache and publishes its status and send events, concurrently, each in the span it
    /// comes with. Answers one result per email, in order: the email (created, or an
    /// idempotent replay), or the idempotency conflict it ran into.
    ///
    /// `Err` means nothing was stored (PostgreSQL is down); the caller may try again.
    pub async fn create_all(
        &self,
        batch: Vec<(NewEmail, tracing::Span)>,
    ) -> Result<Vec<Result<Created>>> {
        let (news, spans): (Vec<NewEmail>, Vec<tracing::Span>) = batch.into_iter().unzip();
        let inserted = self.ports.store.insert(&news).await?;
        join_all(inserted.iter().zip(&spans).filter_map(|(inserted, span)| {
            let Inserted::Created(email) = inserted else {
                return None;
            };
            Some(self.announce(email).instrument(span.clone()))
        }))
        .await;
        Ok(inserted
            .into_iter()
            .zip(news)
            .map(|(inserted, new)| match inserted {
                Inserted::Created(email) => Ok(Created {
                    email,
                    replayed: false,
                }),
                Inserted::Existing(email) if email.has_same_content(&new) => Ok(Created {
                    email,
                    replayed: true,
                }),
                Inserted::Existing(email) => Err(Error::IdempotencyConflict {
                    key: new.idempotency_key.unwrap_or_else(|| new.id.to_string()),
                    existing: email.id,
                }),
            })
            .collect())
    }

    /// Tells the world about a newly stored (or released) email: its status, then, when
    /// it is queued, its send event (in this order on one connection, so followers see
    /// `queued` first). A scheduled email gets its send event when it falls due.
    pub(super) async fn announce(&self, email: &Email) {
        self.status_changed(email, None).await;
        if email.status != EmailStatus::Queued {
            return;
        }
        if let Err(err) = self
            .ports
            .bus
            .request_send(email.id, email.lane, SendReason::Created)
            .await
        {
            tracing::warn!(
                email.id = %email.id,
                error = err.with_causes(),
                "send event not published; the reconciler will publish it"
            );
        }
    }

    /// Validates an email and publishes a `mail:create` event for the create workers,
    /// without storing it: the original service's asynchronous path. Returns the email
    /// with the id it will be stored under.
    ///
    /// A valid email too large for an event is stored right away instead: asynchronous
    /// creation is only a preference of the caller (RFC 7240), and retrying could never
    /// make the event fit.
    #[tracing::instrument(name = "usecase.accept", skip_all, fields(email.id))]
    pub async fn accept(&self, draft: EmailDraft) -> Result<Accepted> {
        let new = self.new_email(draft).await?;
        tracing::Span::current().record("email.id", tracing::field::display(new.id));
        match self.ports.bus.request_create(&new).await? {
            CreateRequest::Published => Ok(Accepted::Queued(new)),
            CreateRequest::TooLarge => {
                tracing::info!(
                    email.id = %new.id,
                    "too large for a create event; storing the email synchronously"
                );
                self.store_new(new).await.map(Accepted::Created)
            }
        }
    }

    /// Reads an email: from this process's recent reads ([`LocalCache`](super::LocalCache)), else from the
    /// Redis cache, else from PostgreSQL. A cache outage only costs the detour through
    /// PostgreSQL.
    #[tracing::instrument(name = "usecase.get", skip_all, fields(email.id = %id))]
    pub async fn get(&self, id: EmailId) -> Result<Arc<Email>> {
        if self.local.is_enabled() {
            if let Some(email) = self.local.get(id) {
                self.metrics.local_cache(true);
                self.metrics.cache(CacheResult::Hit);
                return Ok(email);
            }
            self.metrics.local_cache(false);
        }
        let email = Arc::new(self.read_through(id).await?);
        if self.local.is_enabled() {
            self.local.store(email.clone());
        }
        Ok(email)
    }

    /// Reads an email from Redis, or from PostgreSQL (filling Redis) when it is not there.
    async fn read_through(&self, id: EmailId) -> Result<Email> {
        match self.ports.cache.get(id).await {
            Ok(Some(email)) => {
                self.metrics.cache(CacheResult::Hit);
                return Ok(email);
            }
            Ok(None) => self.metrics.cache(CacheResult::Miss),
            Err(err) => {
                self.metrics.cache(CacheResult::Error);
                tracing::warn!(email.id = %id, error = format!("{err:#}"), "cache read failed; reading PostgreSQL");
            }
        }
        let email = self.ports.store.get(id).await?.ok_or(Error::NotFound(id))?;
        if let Err(err) = self.ports.cache.fill(&email).await {
            tracing::debug!(email.id = %id, error = format!("{err:#}"), "cache fill failed");
        }
        Ok(email)
    }

    /// Checks a draft against this deployment's rules, without storing anything (the
    /// create worker checks events with it before storing a batch).
    pub fn check(&self, draft: EmailDraft) -> std::result::Result<NewEmail, Rejected> {
        self.rules.new_email(draft)
    }

    /// One attachment of an email: what it is, and its bytes.
    #[tracing::instrument(name = "usecase.attachment", skip_all, fields(email.id = %id, index))]
    pub async fn attachment(&self, id: EmailId, index: usize) -> Result<(AttachmentMeta, Bytes)> {
        let email = self.get(id).await?;
        let meta = email
            .attachments
            .get(index)
            .cloned()
            .ok_or(Error::AttachmentNotFound { id, index })?;
        let content = self
            .ports
            .store
            .attachment_content(id, index)
            .await?
            .ok_or(Error::AttachmentNotFound { id, index })?;
        Ok((meta, content))
    }

    /// Full-text search over recipient, subject and message, newest first.
    #[tracing::instrument(name = "usecase.search", skip_all)]
    pub async fn search(&self, query: SearchQuery) -> Result<SearchPage<Email>> {
        self.ports.store.search(&query).await
    }
}

impl Mailroom {
    /// Gives a `failed` email a fresh retry budget and queues it again (a dead letter
    /// being redriven). `None` when the email is not failed; nothing changes then.
    #[tracing::instrument(name = "usecase.requeue", skip_all, fields(email.id = %id))]
    pub async fn requeue(&self, id: EmailId) -> Result<Option<Email>> {
        let requeued = self.ports.store.requeue(id).await?;
        if let Some(email) = &requeued {
            self.status_changed(email, None).await;
        }
        Ok(requeued)
    }
}
