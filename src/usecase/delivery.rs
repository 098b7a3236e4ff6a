//! Delivering one stored email over SMTP: claim it, send it, record the attempt, and
//! decide what happens next. The caller (the send worker) turns the answer into an ack,
//! a delayed NAK or a dead letter; nothing here sleeps.

use std::time::Duration;

use chrono::Utc;

use crate::{
    domain::{Email, EmailId, EmailStatus},
    error::Result,
    ports::{AfterAttempt, AttemptOutcome, AttemptRecord, Claim, SendFailure},
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
    /// No email has this id.
    Missing,
}

impl Mailroom {
    /// Makes one delivery attempt of an email, if it is due.
    #[tracing::instrument(name = "usecase.deliver", skip_all, fields(email.id = %id))]
    pub async fn deliver(&self, id: EmailId) -> Result<Delivery> {
        let email = match self.ports.store.claim(id, self.policy.lease).await? {
            Claim::Claimed(email) => email,
            Claim::Finished(email) => return Ok(Delivery::AlreadyDone(email)),
            Claim::NotDue(after) => return Ok(Delivery::NotDue { after }),
            Claim::Missing => return Ok(Delivery::Missing),
        };
        self.status_changed(&email, None).await;

        let started_at = Utc::now();
        let timer = self
            .metrics
            .smtp_duration
            .with_label_values(&[] as &[&str])
            .start_timer();
        let result = self.ports.mailer.send(&email).await;
        timer.observe_duration();

        let attempt = email.attempts;
        // Attempts in the current retry budget (a redriven email starts a new one).
        let round = (attempt - email.retry_base).max(1) as u32;
        let (record, after, error) = match &result {
            Ok(reply) => (
                AttemptRecord {
                    attempt,
                    started_at,
                    outcome: AttemptOutcome::Sent,
                    smtp_code: Some(reply.code),
                    smtp_text: reply.text.clone(),
                },
                AfterAttempt::Sent,
                None,
            ),
            Err(failure) => {
                let outcome = match failure {
                    SendFailure::Transient { .. } => AttemptOutcome::Transient,
                    SendFailure::Permanent { .. } => AttemptOutcome::Permanent,
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
                        format!("gave up after {round} attempts: {}", failure.text())
                    }
                    _ => failure.text().to_owned(),
                };
                let record = AttemptRecord {
                    attempt,
                    started_at,
                    outcome,
                    smtp_code: failure.code(),
                    smtp_text: failure.text().to_owned(),
                };
                (record, after, Some(error))
            }
        };
        self.metrics
            .smtp_sends
            .with_label_values(&[record.outcome.as_str()])
            .inc();
        tracing::info!(
            email.id = %id,
            attempt,
            outcome = record.outcome.as_str(),
            smtp.code = record.smtp_code,
            "delivery attempt finished"
        );

        let email = self
            .ports
            .store
            .finish_attempt(id, &record, after, error.as_deref())
            .await?;
        self.status_changed(&email, error.as_deref()).await;
        Ok(match (after, email.status) {
            (AfterAttempt::Sent, _) => Delivery::Sent(email),
            (AfterAttempt::Deferred { next_attempt_at }, EmailStatus::Deferred) => {
                let after = (next_attempt_at - Utc::now()).to_std().unwrap_or_default();
                Delivery::Retry { email, after }
            }
            (AfterAttempt::Failed, EmailStatus::Failed) => Delivery::Failed {
                reason: error.unwrap_or_default(),
                email,
            },
            // The lease was lost to another worker, which now owns the email.
            _ => Delivery::AlreadyDone(email),
        })
    }
}
