//! Delivering stored emails over SMTP: claim them, send them, record the attempts, and
//! decide what happens next. The caller (the send worker) turns each answer into an ack,
//! a delayed NAK or a dead letter; nothing here sleeps.
//!
//! Work comes in batches (what one pull of the send consumer brought): one statement
//! claims the batch and one transaction records its attempts, so a busy instance
//! commits a few times per batch rather than twice per email. The SMTP exchanges run
//! concurrently, each in the span of the event that asked for it, so every email keeps
//! its own trace.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{SecondsFormat, Utc};
use futures::future::join_all;
use tracing::Instrument;

use crate::{
    domain::{
        Address, Email, EmailId, EmailStatus, NewSuppression, SuppressedAddress, Suppression,
        SuppressionReason, is_hard_bounce,
    },
    error::Result,
    ports::{
        AfterAttempt, AttemptOutcome, AttemptRecord, Claim, FailureKind, FinishedAttempt,
        RefusedRecipient, SendFailure, SmtpReply,
    },
};

use super::{Mailroom, backoff};

/// How deliveries are retried.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Attempts before a transiently failing email ends `failed`.
    pub max_attempts: u32,
    /// Waits between attempts; the last entry repeats.
    pub backoff: Vec<Duration>,
    /// How long a worker holds an email it is sending before another may take it over.
    pub lease: Duration,
}

/// What became of a delivery.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Sent now.
    Sent(Email),
    /// Nothing to do: sent or failed before (a redelivered or duplicate send event).
    AlreadyDone(Email),
    /// A transient failure; the email is `deferred` and due again after the delay.
    Retry { email: Email, after: Duration },
    /// Another worker holds the email, or its retry is not due yet: ask again later.
    NotDue { after: Duration },
    /// The email has `failed` for good (a permanent failure or exhausted retries).
    Failed { email: Email, reason: String },
    /// Every recipient is on the suppression list: nothing was sent, and nothing will be.
    Suppressed(Email),
    /// No email has this id.
    Missing,
}

/// The relay label of a send's result: the relay that answered or was tried last.
fn relay_of(result: &std::result::Result<SmtpReply, SendFailure>) -> &str {
    match result {
        Ok(reply) => reply.relay.as_deref(),
        Err(failure) => failure.relay.as_deref(),
    }
    .unwrap_or("none")
}

impl Mailroom {
    /// Makes one delivery attempt of an email, if it is due.
    #[tracing::instrument(name = "usecase.deliver", skip_all, fields(email.id = %id))]
    pub async fn deliver(&self, id: EmailId) -> Result<Delivery> {
        let mut deliveries = self
            .deliver_all(vec![(id, tracing::Span::current())])
            .await?;
        Ok(deliveries.pop().expect("one delivery per email"))
    }

    /// Makes one delivery attempt of each email that is due, answering one [`Delivery`]
    /// per id, in order. Each email's work runs in the span it comes with.
    ///
    /// `Err` means the batch could not be claimed or recorded (PostgreSQL is down); the
    /// caller asks again later, and the leases make sure no email is sent twice meanwhile.
    pub async fn deliver_all(&self, batch: Vec<(EmailId, tracing::Span)>) -> Result<Vec<Delivery>> {
        let (ids, spans): (Vec<EmailId>, Vec<tracing::Span>) = batch.into_iter().unzip();
        let claims = self.ports.store.claim(&ids, self.policy.lease).await?;
        let suppressed = self.suppressed_among(&claims).await?;

        let attempts: Vec<Option<FinishedAttempt>> =
            join_all(claims.iter().zip(&spans).map(|(claim, span)| {
                let suppressed = &suppressed;
                async move {
                    let Claim::Claimed(email) = claim else {
                        return None;
                    };
                    self.status_changed(email, None).await;
                    Some(self.attempt(email, suppressed).await)
                }
                .instrument(span.clone())
            }))
            .await;
        let finished: Vec<FinishedAttempt> = attempts.iter().flatten().cloned().collect();
        let mut recorded = self
            .ports
            .store
            .finish_attempts(&finished)
            .await?
            .into_iter();
        let bounced: usize = finished.iter().map(|f| f.suppress.len()).sum();
        if bounced > 0 {
            self.metrics
                .suppressions_added
                .with_label_values(&[SuppressionReason::HardBounce.as_str()])
                .inc_by(bounced as u64);
        }

        let mut deliveries = Vec::with_capacity(ids.len());
        let mut changed = Vec::new();
        for ((claim, attempt), span) in claims.into_iter().zip(attempts).zip(spans) {
            let delivery = match (claim, attempt) {
                (Claim::Claimed(_), Some(attempt)) => {
                    let email = recorded.next().expect("one email per recorded attempt");
                    let error = attempt.error.clone();
                    let delivery = outcome(attempt, email);
                    // A lost lease changed nothing: the new holder announces its own.
                    if let Delivery::Sent(email)
                    | Delivery::Retry { email, .. }
                    | Delivery::Failed { email, .. }
                    | Delivery::Suppressed(email) = &delivery
                    {
                        changed.push((email.clone(), error, span));
                    }
                    delivery
                }
                (Claim::Finished(email), _) => Delivery::AlreadyDone(email),
                (Claim::NotDue(after), _) => Delivery::NotDue { after },
                (Claim::Missing, _) => Delivery::Missing,
                (Claim::Claimed(_), None) => unreachable!("every claimed email is attempted"),
            };
            deliveries.push(delivery);
        }
        join_all(changed.iter().map(|(email, error, span)| {
            self.status_changed(email, error.as_deref())
                .instrument(span.clone())
        }))
        .await;
        Ok(deliveries)
    }

    /// The suppression-list entries of every recipient of the claimed emails: one
    /// lookup for the batch.
    async fn suppressed_among(&self, claims: &[Claim]) -> Result<Suppressed> {
        let mut addresses: Vec<SuppressedAddress> = claims
            .iter()
            .filter_map(|claim| match claim {
                Claim::Claimed(email) => Some(email),
                _ => None,
            })
            .flat_map(|email| email.recipients())
            .map(|mailbox| SuppressedAddress::of(&mailbox.address))
            .collect();
        if addresses.is_empty() {
            return Ok(Suppressed::new());
        }
        addresses.sort_unstable();
        addresses.dedup();
        let entries = self.ports.suppressions.suppressed(&addresses).await?;
        Ok(entries
            .into_iter()
            .map(|entry| (entry.address.clone(), entry))
            .collect())
    }

    /// Sends one claimed email to its recipients that are not suppressed, and decides
    /// where it goes next.
    async fn attempt(&self, email: &Email, suppressed: &Suppressed) -> FinishedAttempt {
        let started_at = Utc::now();
        let Envelope {
            recipients,
            dropped,
        } = envelope(email, suppressed);
        if !dropped.is_empty() {
            self.metrics
                .suppressed_recipients
                .with_label_values(&[] as &[&str])
                .inc_by(dropped.len() as u64);
        }
        if recipients.is_empty() {
            tracing::info!(email.id = %email.id, "every recipient is suppressed: not sent");
            return FinishedAttempt {
                id: email.id,
                record: AttemptRecord {
                    attempt: email.attempts,
                    started_at,
                    outcome: AttemptOutcome::Suppressed,
                    smtp_code: None,
                    smtp_text: String::new(),
                    refused: dropped,
                    relay: None,
                },
                after: AfterAttempt::Suppressed,
                error: Some(SUPPRESSED_ERROR.to_owned()),
                suppress: Vec::new(),
            };
        }
        let result = match self.attachment_contents(email).await {
            Ok(attachments) => {
                let started = std::time::Instant::now();
                let result = self
                    .ports
                    .mailer
                    .send(email, &recipients, &attachments)
                    .await;
                self.metrics
                    .smtp_duration
                    .with_label_values(&[relay_of(&result)])
                    .observe(started.elapsed().as_secs_f64());
                result
            }
            // Not sent, and worth another attempt once the store answers.
            Err(err) => Err(SendFailure::transient(
                None,
                format!("could not read the attachments: {}", err.with_causes()),
            )),
        };

        let attempt = email.attempts;
        // Attempts in the current retry budget (a redriven email starts a new one).
        let round = (attempt - email.retry_base).max(1) as u32;
        let refused = match &result {
            Ok(reply) => &reply.refused,
            Err(failure) => &failure.refused,
        };
        let suppress = hard_bounces(email.id, refused);
        let refused: Vec<RefusedRecipient> = refused.iter().cloned().chain(dropped).collect();
        let mut finished = match &result {
            Ok(reply) => FinishedAttempt {
                id: email.id,
                record: AttemptRecord {
                    attempt,
                    started_at,
                    outcome: AttemptOutcome::Sent,
                    smtp_code: Some(reply.code),
                    smtp_text: reply.text.clone(),
                    refused: Vec::new(),
                    relay: reply.relay.clone(),
                },
                after: AfterAttempt::Sent,
                error: None,
                suppress: Vec::new(),
            },
            Err(failure) => {
                let outcome = match failure.kind {
                    FailureKind::Transient => AttemptOutcome::Transient,
                    FailureKind::Permanent => AttemptOutcome::Permanent,
                };
                let retry =
                    outcome == AttemptOutcome::Transient && round < self.policy.max_attempts;
                let after = if retry {
                    let delay = backoff(&self.policy.backoff, round);
                    AfterAttempt::Deferred {
                        next_attempt_at: Utc::now() + delay,
                    }
                } else {
                    AfterAttempt::Failed
                };
                let error = match (outcome, retry) {
                    (AttemptOutcome::Transient, false) => {
                        format!("gave up after {round} attempts: {}", failure.text)
                    }
                    _ => failure.text.clone(),
                };
                FinishedAttempt {
                    id: email.id,
                    record: AttemptRecord {
                        attempt,
                        started_at,
                        outcome,
                        smtp_code: failure.code,
                        smtp_text: failure.text.clone(),
                        refused: Vec::new(),
                        relay: failure.relay.clone(),
                    },
                    after,
                    error: Some(error),
                    suppress: Vec::new(),
                }
            }
        };
        finished.record.refused = refused;
        finished.suppress = suppress;
        self.metrics
            .smtp_sends
            .with_label_values(&[finished.record.outcome.as_str(), relay_of(&result)])
            .inc();
        tracing::info!(
            email.id = %email.id,
            attempt,
            outcome = finished.record.outcome.as_str(),
            smtp.code = finished.record.smtp_code,
            "delivery attempt finished"
        );
        finished
    }
}

impl Mailroom {
    /// The bytes of the email's attachments; none to read for most emails.
    async fn attachment_contents(&self, email: &Email) -> Result<Vec<bytes::Bytes>> {
        if email.attachments.is_empty() {
            return Ok(Vec::new());
        }
        self.ports.store.attachment_contents(email.id).await
    }
}

/// The last error of an email none of whose recipients could be sent to.
const SUPPRESSED_ERROR: &str = "every recipient is on the suppression list";

/// The suppression-list entries of a batch's recipients, by address.
type Suppressed = HashMap<SuppressedAddress, Suppression>;

/// Who an attempt sends to, and who it leaves out.
struct Envelope {
    /// The email's recipients (to, cc, bcc) that are not suppressed, each once.
    recipients: Vec<Address>,
    /// The suppressed ones, as the attempt records them.
    dropped: Vec<RefusedRecipient>,
}

fn envelope(email: &Email, suppressed: &Suppressed) -> Envelope {
    let mut seen = HashSet::new();
    let (mut recipients, mut dropped) = (Vec::new(), Vec::new());
    for mailbox in email.recipients() {
        let key = SuppressedAddress::of(&mailbox.address);
        if !seen.insert(key.clone()) {
            continue;
        }
        match suppressed.get(&key) {
            Some(entry) => dropped.push(RefusedRecipient {
                address: mailbox.address.ascii(),
                code: None,
                text: format!(
                    "not sent: on the suppression list ({}) since {}",
                    entry.reason,
                    entry.created_at.to_rfc3339_opts(SecondsFormat::Secs, true)
                ),
                suppressed: Some(entry.reason.as_str().to_owned()),
            }),
            None => recipients.push(mailbox.address.clone()),
        }
    }
    Envelope {
        recipients,
        dropped,
    }
}

/// The refused recipients whose mailbox does not exist, to suppress from now on.
fn hard_bounces(id: EmailId, refused: &[RefusedRecipient]) -> Vec<NewSuppression> {
    refused
        .iter()
        .filter(|r| is_hard_bounce(r.code, &r.text))
        .filter_map(|r| {
            let address = Address::parse(&r.address).ok()?;
            Some(NewSuppression {
                address: SuppressedAddress::of(&address),
                reason: SuppressionReason::HardBounce,
                email_id: Some(id),
                smtp_text: Some(r.text.clone()),
                note: None,
            })
        })
        .collect()
}

/// The delivery an attempt amounts to, given the email as recorded afterwards.
fn outcome(attempt: FinishedAttempt, email: Email) -> Delivery {
    // The store moves an email on only for the attempt holding its lease.
    let recorded = email.attempts == attempt.record.attempt;
    match (attempt.after, email.status) {
        (AfterAttempt::Sent, EmailStatus::Sent) if recorded => Delivery::Sent(email),
        (AfterAttempt::Deferred { next_attempt_at }, EmailStatus::Deferred) if recorded => {
            let after = (next_attempt_at - Utc::now()).to_std().unwrap_or_default();
            Delivery::Retry { email, after }
        }
        (AfterAttempt::Failed, EmailStatus::Failed) if recorded => Delivery::Failed {
            reason: attempt.error.unwrap_or_default(),
            email,
        },
        (AfterAttempt::Suppressed, EmailStatus::Suppressed) if recorded => {
            Delivery::Suppressed(email)
        }
        // The lease was lost to another worker, which now owns the email.
        _ => Delivery::AlreadyDone(email),
    }
}
