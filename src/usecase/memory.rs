//! In-memory implementations of the ports, for tests of the use cases and workers
//! that run in milliseconds. The store keeps the PostgreSQL store's contract (leases,
//! idempotency keys, the attempt check on finishing) on a clock the test can move; the
//! bus and the mailer record what they were asked to do, and each port can be told to
//! fail, as a dependency that is down or as one that refuses for good.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::{
    domain::{
        Address, Cursor, DeadLetter, Email, EmailId, EmailStatus, Lane, ListPage, ListQuery,
        NewEmail, NewSuppression, Rules, SearchPage, SearchQuery, StatusEvent, SuppressedAddress,
        Suppression, SuppressionReason, Template, TemplateContent, TemplateKey, format_list,
    },
    error::{Dependency, Error, Result},
    metrics::Metrics,
    ports::{
        AfterAttempt, AttemptRecord, BatchInserted, BatchKey, Change, Claim, CreateRequest,
        EmailCache, EmailStore, EventBus, FinishedAttempt, Inserted, Mailer, QueueStats,
        RelayCheck, Released, ReportRecorded, ReportToRecord, SendFailure, SendReason, SmtpReply,
        SuppressionStore, TemplateSaved, TemplateStore,
    },
};
use uuid::Uuid;

use super::{DeliveryPolicy, LocalCache, Mailroom, Ports};

/// How a port fails when told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The dependency is down: `Error::Unavailable`, worth trying again.
    Outage,
    /// It refuses for a reason that will not go away: `Error::Internal`.
    Refusal,
}

impl Failure {
    fn error(self, dependency: Dependency) -> Error {
        match self {
            Failure::Outage => {
                Error::unavailable(dependency, anyhow::anyhow!("{dependency} is down"))
            }
            Failure::Refusal => Error::Internal(anyhow::anyhow!("{dependency} refused the data")),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct StoredBatch {
    at: DateTime<Utc>,
    digest: String,
    ids: Vec<EmailId>,
}

#[derive(Default)]
struct StoreState {
    emails: HashMap<EmailId, Email>,
    /// Attachment bytes, by email.
    contents: HashMap<EmailId, Vec<Bytes>>,
    /// Batches by client and idempotency key: when they were stored, their digest and
    /// emails.
    batches: HashMap<(String, String), StoredBatch>,
    /// Live idempotency keys by client, and the email holding each.
    keys: HashMap<(String, String), EmailId>,
    /// How long a key lives (`idempotency.ttl`; 24 hours, as by default).
    key_ttl: chrono::Duration,
    attempts: Vec<(EmailId, AttemptRecord)>,
    /// The suppression list, by address.
    suppressions: HashMap<SuppressedAddress, Suppression>,
    /// Reports recorded: (email, digest, recipient).
    reports: HashSet<(EmailId, String, String)>,
    /// How far the store's clock is ahead of the wall clock.
    ahead: chrono::Duration,
    failure: Option<Failure>,
}

impl StoreState {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.ahead
    }

    fn check(&self) -> Result<()> {
        match self.failure {
            Some(failure) => Err(failure.error(Dependency::Postgres)),
            None => Ok(()),
        }
    }

    /// Adds an entry unless the address has one; answers whether it was added.
    fn suppress(&mut self, entry: &NewSuppression, now: DateTime<Utc>) -> bool {
        if self.suppressions.contains_key(&entry.address) {
            return false;
        }
        self.suppressions.insert(
            entry.address.clone(),
            Suppression {
                id: Uuid::now_v7(),
                address: entry.address.clone(),
                reason: entry.reason,
                email_id: entry.email_id,
                smtp_text: entry.smtp_text.clone(),
                note: entry.note.clone(),
                created_at: now,
            },
        );
        true
    }
}

/// The email store, in memory.
pub struct MemoryStore {
    state: Mutex<StoreState>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        let state = StoreState {
            key_ttl: chrono::Duration::hours(24),
            ..StoreState::default()
        };
        MemoryStore {
            state: Mutex::new(state),
        }
    }
}

impl MemoryStore {
    /// Moves the store's clock on (leases expire, retries fall due).
    pub fn advance(&self, by: Duration) {
        let mut state = lock(&self.state);
        state.ahead += chrono::Duration::from_std(by).unwrap();
    }

    /// Fails every call from now on (`None`: works again).
    pub fn fail(&self, failure: Option<Failure>) {
        lock(&self.state).failure = failure;
    }

    pub fn email(&self, id: EmailId) -> Option<Email> {
        lock(&self.state).emails.get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.state).emails.len()
    }

    pub fn attempts_of(&self, id: EmailId) -> Vec<AttemptRecord> {
        let state = lock(&self.state);
        let mut attempts: Vec<AttemptRecord> = state
            .attempts
            .iter()
            .filter(|(of, _)| *of == id)
            .map(|(_, record)| record.clone())
            .collect();
        attempts.sort_by_key(|record| record.attempt);
        attempts
    }
}

#[async_trait]
impl EmailStore for MemoryStore {
    async fn insert(&self, emails: &[NewEmail]) -> Result<Vec<Inserted>> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let mut answers = Vec::with_capacity(emails.len());
        for new in emails {
            let key = new
                .idempotency_key
                .clone()
                .map(|key| (new.idempotency_client.clone(), key));
            if let Some(key) = &key
                && let Some(holder) = state.keys.get(key)
                && state.emails[holder].created_at < now - state.key_ttl
            {
                state.keys.remove(key);
            }
            let by_key = key.as_ref().and_then(|key| state.keys.get(key).copied());
            let taken = by_key.or_else(|| state.emails.contains_key(&new.id).then_some(new.id));
            if let Some(existing) = taken {
                answers.push(Inserted::Existing(state.emails[&existing].clone()));
                continue;
            }
            let email = Email::queued(new, now);
            state.contents.insert(
                new.id,
                new.attachments.iter().map(|a| a.content.clone()).collect(),
            );
            if let Some(key) = key {
                state.keys.insert(key, new.id);
            }
            state.emails.insert(new.id, email.clone());
            answers.push(Inserted::Created(email));
        }
        Ok(answers)
    }

    async fn insert_batch(
        &self,
        emails: &[NewEmail],
        key: Option<&BatchKey>,
    ) -> Result<BatchInserted> {
        let id = key.map(|key| (key.client.clone(), key.key.clone()));
        {
            let mut state = lock(&self.state);
            state.check()?;
            let now = state.now();
            let ttl = state.key_ttl;
            state.batches.retain(|_, batch| batch.at >= now - ttl);
            if let Some(key) = key
                && let Some(StoredBatch { digest, ids, .. }) =
                    state.batches.get(id.as_ref().unwrap())
            {
                if *digest != key.digest {
                    return Ok(BatchInserted::Conflict { existing: ids[0] });
                }
                return Ok(BatchInserted::Replayed(
                    ids.iter().map(|id| state.emails[id].clone()).collect(),
                ));
            }
        }
        let inserted = self.insert(emails).await?;
        let created: Vec<Email> = inserted
            .into_iter()
            .map(|inserted| match inserted {
                Inserted::Created(email) => email,
                Inserted::Existing(email) => email,
            })
            .collect();
        if let (Some(key), Some(id)) = (key, id) {
            let mut state = lock(&self.state);
            let now = state.now();
            state.batches.insert(
                id,
                StoredBatch {
                    at: now,
                    digest: key.digest.clone(),
                    ids: created.iter().map(|e| e.id).collect(),
                },
            );
        }
        Ok(BatchInserted::Created(created))
    }

    async fn get(&self, id: EmailId) -> Result<Option<Email>> {
        let state = lock(&self.state);
        state.check()?;
        Ok(state.emails.get(&id).cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage<Email>> {
        let state = lock(&self.state);
        state.check()?;
        let mut found: Vec<&Email> = state
            .emails
            .values()
            .filter(|e| query.admits(e))
            .filter(|e| {
                query
                    .cursor
                    .is_none_or(|c| (e.created_at, e.id) < (c.created_at, c.id))
            })
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
        let more = found.len() > query.limit as usize;
        let items: Vec<Email> = found
            .into_iter()
            .take(query.limit as usize)
            .cloned()
            .collect();
        let next = more.then(|| {
            let last = items.last().expect("a full page");
            Cursor {
                created_at: last.created_at,
                id: last.id,
            }
        });
        Ok(ListPage { items, next })
    }

    async fn release_due(&self, limit: i64) -> Result<Released> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let mut due: Vec<(DateTime<Utc>, EmailId)> = state
            .emails
            .values()
            .filter(|e| e.status == EmailStatus::Scheduled)
            .filter_map(|e| e.next_attempt_at.map(|at| (at, e.id)))
            .filter(|(at, _)| *at <= now)
            .collect();
        due.sort();
        due.truncate(limit.max(0) as usize);
        let mut emails = Vec::new();
        for (_, id) in due {
            let email = state.emails.get_mut(&id).expect("listed above");
            email.status = EmailStatus::Queued;
            email.next_attempt_at = Some(now);
            email.updated_at = now;
            emails.push(email.clone());
        }
        let next_due = state
            .emails
            .values()
            .filter(|e| e.status == EmailStatus::Scheduled)
            .filter_map(|e| e.next_attempt_at)
            .min();
        Ok(Released { emails, next_due })
    }

    async fn cancel(&self, id: EmailId) -> Result<Change> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let Some(email) = state.emails.get_mut(&id) else {
            return Ok(Change::Missing);
        };
        if !email.status.is_cancelable() {
            return Ok(Change::TooLate(email.clone()));
        }
        email.status = EmailStatus::Canceled;
        email.next_attempt_at = None;
        email.updated_at = now;
        Ok(Change::Done(email.clone()))
    }

    async fn reschedule(&self, id: EmailId, at: DateTime<Utc>) -> Result<Change> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let Some(email) = state.emails.get_mut(&id) else {
            return Ok(Change::Missing);
        };
        if email.status != EmailStatus::Scheduled {
            return Ok(Change::TooLate(email.clone()));
        }
        email.scheduled_at = Some(at);
        email.next_attempt_at = Some(at.max(now));
        email.updated_at = now;
        Ok(Change::Done(email.clone()))
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage<Email>> {
        let state = lock(&self.state);
        state.check()?;
        let mut found: Vec<Email> = state
            .emails
            .values()
            .filter(|email| {
                query.text.as_deref().is_none_or(|text| {
                    [
                        format_list(&email.to).as_str(),
                        &email.subject,
                        email.text.as_deref().unwrap_or_default(),
                    ]
                    .iter()
                    .any(|field| field.contains(text))
                })
            })
            .cloned()
            .collect();
        found.sort_by_key(|email| std::cmp::Reverse((email.created_at, email.id)));
        let counted = found.len() as i64;
        let rows = found
            .into_iter()
            .skip(query.offset() as usize)
            .take(query.size as usize + 1)
            .collect();
        Ok(SearchPage::assemble(query, counted, u32::MAX, rows))
    }

    async fn claim(&self, ids: &[EmailId], lease: Duration) -> Result<Vec<Claim>> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let mut claimed_here = HashSet::new();
        let mut claims = Vec::with_capacity(ids.len());
        for id in ids {
            if claimed_here.contains(id) {
                claims.push(Claim::NotDue(lease));
                continue;
            }
            let Some(email) = state.emails.get_mut(id) else {
                claims.push(Claim::Missing);
                continue;
            };
            let due = email.next_attempt_at.unwrap_or(now);
            let claim = match email.status {
                status if status.is_final() => Claim::Finished(email.clone()),
                EmailStatus::Queued => Claim::Claimed(email.clone()),
                // Released by the scheduler only, never claimed before.
                EmailStatus::Scheduled => Claim::NotDue((due - now).to_std().unwrap_or_default()),
                _ if due <= now => Claim::Claimed(email.clone()),
                _ => Claim::NotDue((due - now).to_std().unwrap_or_default()),
            };
            if matches!(claim, Claim::Claimed(_)) {
                email.status = EmailStatus::Sending;
                email.attempts += 1;
                email.updated_at = now;
                email.next_attempt_at = Some(now + chrono::Duration::from_std(lease).unwrap());
                claimed_here.insert(*id);
                claims.push(Claim::Claimed(email.clone()));
            } else {
                claims.push(claim);
            }
        }
        Ok(claims)
    }

    async fn finish_attempts(&self, finished: &[FinishedAttempt]) -> Result<Vec<Email>> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        for entry in finished.iter().flat_map(|f| &f.suppress) {
            state.suppress(entry, now);
        }
        let mut answers = Vec::with_capacity(finished.len());
        for attempt in finished {
            let recorded = state
                .attempts
                .iter()
                .any(|(id, record)| *id == attempt.id && record.attempt == attempt.record.attempt);
            if !recorded {
                state.attempts.push((attempt.id, attempt.record.clone()));
            }
            let email = state
                .emails
                .get_mut(&attempt.id)
                .ok_or(Error::NotFound(attempt.id))?;
            // Only the holder of the attempt's lease moves the email on.
            if email.status == EmailStatus::Sending && email.attempts == attempt.record.attempt {
                let (status, next) = match attempt.after {
                    AfterAttempt::Sent => (EmailStatus::Sent, None),
                    AfterAttempt::Deferred { next_attempt_at } => {
                        (EmailStatus::Deferred, Some(next_attempt_at))
                    }
                    AfterAttempt::Failed => (EmailStatus::Failed, None),
                    AfterAttempt::Suppressed => (EmailStatus::Suppressed, None),
                };
                email.status = status;
                email.next_attempt_at = next;
                email.last_error = attempt.error.clone();
                email.updated_at = now;
                if status == EmailStatus::Sent {
                    email.sent_at = Some(now);
                }
            }
            answers.push(email.clone());
        }
        Ok(answers)
    }

    async fn take_stranded(&self, age: Duration, limit: i64) -> Result<Vec<(EmailId, Lane)>> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let cutoff = now - chrono::Duration::from_std(age).unwrap();
        let mut overdue: Vec<(DateTime<Utc>, EmailId)> = state
            .emails
            .values()
            .filter(|email| !email.status.is_final())
            .filter_map(|email| email.next_attempt_at.map(|at| (at, email.id)))
            .filter(|(at, _)| *at < cutoff)
            .collect();
        overdue.sort();
        overdue.truncate(limit.max(0) as usize);
        for (_, id) in &overdue {
            state
                .emails
                .get_mut(id)
                .expect("listed above")
                .next_attempt_at = Some(now);
        }
        Ok(overdue
            .into_iter()
            .map(|(_, id)| (id, state.emails[&id].lane))
            .collect())
    }

    async fn requeue(&self, id: EmailId) -> Result<Option<Email>> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let Some(email) = state.emails.get_mut(&id) else {
            return Ok(None);
        };
        if email.status != EmailStatus::Failed {
            return Ok(None);
        }
        email.status = EmailStatus::Queued;
        email.retry_base = email.attempts;
        email.last_error = None;
        email.next_attempt_at = Some(now);
        email.updated_at = now;
        Ok(Some(email.clone()))
    }

    async fn attempts(&self, id: EmailId) -> Result<Vec<AttemptRecord>> {
        lock(&self.state).check()?;
        Ok(self.attempts_of(id))
    }

    async fn queue_stats(&self, limit: i64) -> Result<QueueStats> {
        let state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let unfinished: Vec<&Email> = state
            .emails
            .values()
            .filter(|email| email.next_attempt_at.is_some())
            .take(limit.max(0) as usize)
            .collect();
        let mut pending: Vec<(EmailStatus, i64)> = Vec::new();
        for email in &unfinished {
            match pending
                .iter_mut()
                .find(|(status, _)| *status == email.status)
            {
                Some((_, count)) => *count += 1,
                None => pending.push((email.status, 1)),
            }
        }
        let oldest_due: Option<DateTime<Utc>> = state
            .emails
            .values()
            .filter(|email| {
                matches!(
                    email.status,
                    EmailStatus::Queued | EmailStatus::Deferred | EmailStatus::Scheduled
                )
            })
            .filter_map(|email| email.next_attempt_at)
            .filter(|due| *due <= now)
            .min();
        Ok(QueueStats {
            pending,
            oldest_waited: oldest_due
                .and_then(|due| (now - due).to_std().ok())
                .unwrap_or_default(),
        })
    }

    async fn attachment_contents(&self, id: EmailId) -> Result<Vec<Bytes>> {
        let state = lock(&self.state);
        state.check()?;
        Ok(state.contents.get(&id).cloned().unwrap_or_default())
    }

    async fn attachment_content(&self, id: EmailId, index: usize) -> Result<Option<Bytes>> {
        let state = lock(&self.state);
        state.check()?;
        Ok(state
            .contents
            .get(&id)
            .and_then(|contents| contents.get(index))
            .cloned())
    }

    async fn ping(&self) -> Result<()> {
        lock(&self.state).check()
    }
}

/// The cache, in memory; `down` makes every call fail as a Redis outage would.
#[derive(Default)]
pub struct MemoryCache {
    emails: Mutex<HashMap<EmailId, Email>>,
    down: Mutex<bool>,
}

impl MemoryCache {
    pub fn set_down(&self, down: bool) {
        *lock(&self.down) = down;
    }

    pub fn cached(&self, id: EmailId) -> Option<Email> {
        lock(&self.emails).get(&id).cloned()
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!*lock(&self.down), "redis is down");
        Ok(())
    }
}

#[async_trait]
impl EmailCache for MemoryCache {
    async fn get(&self, id: EmailId) -> anyhow::Result<Option<Email>> {
        self.check()?;
        Ok(self.cached(id))
    }

    async fn put(&self, email: &Email) -> anyhow::Result<()> {
        self.check()?;
        lock(&self.emails).insert(email.id, email.clone());
        Ok(())
    }

    async fn fill(&self, email: &Email) -> anyhow::Result<()> {
        self.check()?;
        lock(&self.emails)
            .entry(email.id)
            .or_insert_with(|| email.clone());
        Ok(())
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.check()
    }
}

/// What the bus was asked to publish.
#[derive(Default)]
pub struct Published {
    pub creates: Vec<NewEmail>,
    pub sends: Vec<(EmailId, SendReason)>,
    /// The lane of each send event, in the same order.
    pub send_lanes: Vec<Lane>,
    pub statuses: Vec<StatusEvent>,
    /// Dead letters by dedup key, each kept once as the server's duplicate window would.
    pub dead_letters: Vec<(String, DeadLetter)>,
}

/// The event bus, in memory.
#[derive(Default)]
pub struct MemoryBus {
    published: Mutex<Published>,
    down: Mutex<bool>,
}

impl MemoryBus {
    pub fn set_down(&self, down: bool) {
        *lock(&self.down) = down;
    }

    pub fn published(&self) -> MutexGuard<'_, Published> {
        lock(&self.published)
    }

    fn check(&self) -> Result<()> {
        if *lock(&self.down) {
            return Err(Failure::Outage.error(Dependency::Nats));
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn request_create(&self, email: &NewEmail) -> Result<CreateRequest> {
        self.check()?;
        self.published().creates.push(email.clone());
        Ok(CreateRequest::Published)
    }

    async fn request_send(&self, id: EmailId, lane: Lane, reason: SendReason) -> Result<()> {
        self.check()?;
        let mut published = self.published();
        published.sends.push((id, reason));
        published.send_lanes.push(lane);
        Ok(())
    }

    async fn publish_status(&self, event: &StatusEvent) -> Result<()> {
        self.check()?;
        self.published().statuses.push(event.clone());
        Ok(())
    }

    async fn publish_dead_letter(&self, letter: &DeadLetter, dedup_key: &str) -> Result<()> {
        self.check()?;
        let mut published = self.published();
        if !published
            .dead_letters
            .iter()
            .any(|(key, _)| key == dedup_key)
        {
            published
                .dead_letters
                .push((dedup_key.to_owned(), letter.clone()));
        }
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        self.check()
    }
}

/// A mailer that answers from a script, one reply per send (250 once the script is
/// done), and remembers what it sent.
#[derive(Default)]
pub struct ScriptedMailer {
    replies: Mutex<VecDeque<std::result::Result<SmtpReply, SendFailure>>>,
    sent: Mutex<Vec<EmailId>>,
    /// The envelope recipients of each send, in order.
    envelopes: Mutex<Vec<Vec<String>>>,
    hold: Mutex<Option<Arc<Hold>>>,
}

/// A send held in the middle of its SMTP exchange until the test lets it go.
#[derive(Default)]
pub struct Hold {
    pub entered: tokio::sync::Notify,
    pub release: tokio::sync::Notify,
}

impl ScriptedMailer {
    /// Makes the next send wait, once it has begun, until `release` is notified.
    pub fn hold_next(&self) -> Arc<Hold> {
        let hold = Arc::new(Hold::default());
        *lock(&self.hold) = Some(hold.clone());
        hold
    }

    /// Queues the replies of the next sends.
    pub fn script(
        &self,
        replies: impl IntoIterator<Item = std::result::Result<SmtpReply, SendFailure>>,
    ) {
        lock(&self.replies).extend(replies);
    }

    /// Every email a send was attempted for, in order.
    pub fn sent(&self) -> Vec<EmailId> {
        lock(&self.sent).clone()
    }

    /// The envelope recipients of each send, in order.
    pub fn envelopes(&self) -> Vec<Vec<String>> {
        lock(&self.envelopes).clone()
    }
}

pub fn transient(text: &str) -> std::result::Result<SmtpReply, SendFailure> {
    Err(SendFailure::transient(Some(451), text))
}

pub fn permanent(text: &str) -> std::result::Result<SmtpReply, SendFailure> {
    Err(SendFailure::permanent(Some(550), text))
}

#[async_trait]
impl Mailer for ScriptedMailer {
    async fn send(
        &self,
        email: &Email,
        recipients: &[Address],
        _attachments: &[Bytes],
    ) -> std::result::Result<SmtpReply, SendFailure> {
        lock(&self.sent).push(email.id);
        lock(&self.envelopes).push(recipients.iter().map(|a| a.as_str().to_owned()).collect());
        let hold = lock(&self.hold).take();
        if let Some(hold) = hold {
            hold.entered.notify_one();
            hold.release.notified().await;
        }
        lock(&self.replies).pop_front().unwrap_or_else(|| {
            Ok(SmtpReply {
                code: 250,
                text: "2.0.0 OK".into(),
                refused: Vec::new(),
                relay: Some("scripted".into()),
            })
        })
    }

    async fn check(&self, _within: std::time::Duration) -> Vec<RelayCheck> {
        vec![RelayCheck {
            name: "scripted".into(),
            error: None,
            cooling_down: false,
        }]
    }
}

/// The suppression list, on the store's state (an attempt adds entries in the same
/// step that records it, as the PostgreSQL transaction does).
#[async_trait]
impl SuppressionStore for MemoryStore {
    async fn add(&self, entry: &NewSuppression) -> Result<(Suppression, bool)> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let added = state.suppress(entry, now);
        Ok((state.suppressions[&entry.address].clone(), added))
    }

    async fn get(&self, address: &SuppressedAddress) -> Result<Option<Suppression>> {
        let state = lock(&self.state);
        state.check()?;
        Ok(state.suppressions.get(address).cloned())
    }

    async fn delete(&self, address: &SuppressedAddress) -> Result<bool> {
        let mut state = lock(&self.state);
        state.check()?;
        Ok(state.suppressions.remove(address).is_some())
    }

    /// One page only (no cursor): paging is PostgreSQL's, tested in
    /// tests/it/suppressions.rs.
    async fn list(
        &self,
        reason: Option<SuppressionReason>,
        _cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Suppression>, Option<Cursor>)> {
        let state = lock(&self.state);
        state.check()?;
        let mut entries: Vec<Suppression> = state
            .suppressions
            .values()
            .filter(|entry| reason.is_none_or(|reason| entry.reason == reason))
            .cloned()
            .collect();
        entries.sort_by_key(|entry| std::cmp::Reverse((entry.created_at, entry.id)));
        entries.truncate(limit as usize);
        Ok((entries, None))
    }

    async fn suppressed(&self, addresses: &[SuppressedAddress]) -> Result<Vec<Suppression>> {
        let state = lock(&self.state);
        state.check()?;
        Ok(addresses
            .iter()
            .filter_map(|address| state.suppressions.get(address).cloned())
            .collect())
    }

    async fn record_report(&self, report: &ReportToRecord) -> Result<ReportRecorded> {
        let mut state = lock(&self.state);
        state.check()?;
        let now = state.now();
        let Some(email) = state.emails.get(&report.email_id).cloned() else {
            return Ok(ReportRecorded::Missing);
        };
        let keys: Vec<(EmailId, String, String)> = report
            .recipients
            .iter()
            .map(|r| (report.email_id, report.digest.clone(), r.recipient.clone()))
            .collect();
        if !keys.is_empty() && keys.iter().all(|key| state.reports.contains(key)) {
            return Ok(ReportRecorded::Duplicate(email));
        }
        state.reports.extend(keys);
        for entry in &report.suppress {
            state.suppress(entry, now);
        }
        let email = state
            .emails
            .get_mut(&report.email_id)
            .expect("looked up above");
        let changed = match &report.status_change {
            Some(change) if change.from.contains(&email.status) => {
                email.status = change.to;
                email.last_error = Some(change.error.clone());
                email.updated_at = now;
                true
            }
            _ => false,
        };
        Ok(ReportRecorded::Recorded {
            email: email.clone(),
            changed,
        })
    }
}

/// A use-case layer on in-memory ports, with handles on each of them.
pub struct Harness {
    pub mailroom: Mailroom,
    pub store: Arc<MemoryStore>,
    pub cache: Arc<MemoryCache>,
    pub bus: Arc<MemoryBus>,
    pub mailer: Arc<ScriptedMailer>,
    pub templates: Arc<MemoryTemplates>,
}

/// The retry policy the harness runs with: 3 attempts, 30 s then 60 s apart, 60 s leases.
pub fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        max_attempts: 3,
        backoff: vec![Duration::from_secs(30), Duration::from_secs(60)],
        lease: Duration::from_secs(60),
    }
}

/// Templates, in memory.
#[derive(Default)]
pub struct MemoryTemplates {
    /// Every version of every template, in the order saved.
    versions: Mutex<Vec<Template>>,
    failure: Mutex<Option<Failure>>,
}

impl MemoryTemplates {
    /// Makes every call fail as `failure` says, or succeed again with `None`.
    pub fn fail(&self, failure: Option<Failure>) {
        *lock(&self.failure) = failure;
    }

    fn check(&self) -> Result<()> {
        match *lock(&self.failure) {
            Some(failure) => Err(failure.error(Dependency::Postgres)),
            None => Ok(()),
        }
    }

    fn matches(template: &Template, key: &TemplateKey) -> bool {
        match key {
            TemplateKey::Id(id) => template.id == *id,
            TemplateKey::Name(name) => template.name == *name,
        }
    }
}

#[async_trait]
impl TemplateStore for MemoryTemplates {
    async fn create(
        &self,
        id: Uuid,
        name: &str,
        content: &TemplateContent,
    ) -> Result<TemplateSaved> {
        self.check()?;
        let mut versions = lock(&self.versions);
        if versions.iter().any(|t| t.name == name) {
            return Ok(TemplateSaved::NameTaken);
        }
        let now = Utc::now();
        let template = Template {
            id,
            name: name.to_owned(),
            version: 1,
            latest_version: 1,
            content: content.clone(),
            created_at: now,
            updated_at: now,
        };
        versions.push(template.clone());
        Ok(TemplateSaved::Saved(template))
    }

    async fn add_version(
        &self,
        key: &TemplateKey,
        content: &TemplateContent,
    ) -> Result<TemplateSaved> {
        self.check()?;
        let mut versions = lock(&self.versions);
        let Some(latest) = versions
            .iter()
            .rev()
            .find(|t| Self::matches(t, key))
            .cloned()
        else {
            return Ok(TemplateSaved::Missing);
        };
        let version = latest.version + 1;
        for template in versions.iter_mut().filter(|t| t.id == latest.id) {
            template.latest_version = version;
        }
        let template = Template {
            version,
            latest_version: version,
            content: content.clone(),
            updated_at: Utc::now(),
            ..latest
        };
        versions.push(template.clone());
        Ok(TemplateSaved::Saved(template))
    }

    async fn get(&self, key: &TemplateKey, version: Option<i32>) -> Result<Option<Template>> {
        self.check()?;
        Ok(lock(&self.versions)
            .iter()
            .filter(|t| Self::matches(t, key))
            .find(|t| t.version == version.unwrap_or(t.latest_version))
            .cloned())
    }

    /// One page only (no cursor): the use-case tests list a handful of templates, and
    /// paging is PostgreSQL's, tested in tests/it/templates.rs.
    async fn list(
        &self,
        _cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Template>, Option<Cursor>)> {
        self.check()?;
        let mut latest: Vec<Template> = lock(&self.versions)
            .iter()
            .filter(|t| t.version == t.latest_version)
            .cloned()
            .collect();
        latest.reverse();
        latest.truncate(limit as usize);
        Ok((latest, None))
    }

    async fn delete(&self, key: &TemplateKey) -> Result<bool> {
        self.check()?;
        let mut versions = lock(&self.versions);
        let before = versions.len();
        versions.retain(|t| !Self::matches(t, key));
        Ok(versions.len() < before)
    }
}

impl Harness {
    pub fn new() -> Self {
        let store = Arc::new(MemoryStore::default());
        let cache = Arc::new(MemoryCache::default());
        let bus = Arc::new(MemoryBus::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let templates = Arc::new(MemoryTemplates::default());
        let ports = Ports {
            store: store.clone(),
            cache: cache.clone(),
            bus: bus.clone(),
            mailer: mailer.clone(),
            templates: templates.clone(),
            suppressions: store.clone(),
        };
        // The local tier off: every read goes through the ports.
        let local = LocalCache::new(Duration::ZERO, 0, 0);
        Harness {
            mailroom: Mailroom::new(ports, Rules::default(), local, policy(), Metrics::new()),
            store,
            cache,
            bus,
            mailer,
            templates,
        }
    }
}
