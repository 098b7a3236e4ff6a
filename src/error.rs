//! The one error type of the use-case layer. Each delivery adapter maps it exhaustively
//! (REST: `rest::problem`, gRPC: `grpc::status`), so a new variant forces a decision in
//! every protocol.

use std::fmt;

use crate::domain::{EmailId, EmailStatus, Rejected, TooLarge, Violations};

/// A dependency mailroom needs to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    Postgres,
    Redis,
    Nats,
    Smtp,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Redis => "redis",
            Dependency::Nats => "nats",
            Dependency::Smtp => "smtp",
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input breaks a rule; the violations say which and why.
    #[error("invalid input: {0}")]
    Validation(Violations),
    #[error("email {0} not found")]
    NotFound(EmailId),
    /// The email exists and has no attachment with this index.
    #[error("email {id} has no attachment {index}")]
    AttachmentNotFound { id: EmailId, index: usize },
    /// The email has moved on past the point where `action` can be done (canceling a
    /// sent email, rescheduling one no longer scheduled).
    #[error("email {id} is {status}: too late to {action}")]
    TooLate {
        id: EmailId,
        status: EmailStatus,
        action: &'static str,
    },
    /// Something other than an email (a webhook, a delivery) is not there.
    #[error("{kind} {id} not found")]
    Missing { kind: &'static str, id: String },
    /// The request cannot be done in the state things are in (`detail` says why).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The message would be larger than `limits.max_message_bytes` once delivered.
    #[error("the message would take at least {} bytes as delivered; limits.max_message_bytes is {}", .0.size, .0.limit)]
    MessageTooLarge(TooLarge),
    /// The idempotency key was used before for different content.
    #[error("idempotency key {key:?} was already used for another email ({existing})")]
    IdempotencyConflict { key: String, existing: EmailId },
    /// A dependency needed for this answer is down; the caller may retry later.
    #[error("{dependency} is unavailable")]
    Unavailable {
        dependency: Dependency,
        #[source]
        source: anyhow::Error,
    },
    /// Anything else: a bug or an unexpected reply. Details are logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<Violations> for Error {
    fn from(violations: Violations) -> Self {
        Error::Validation(violations)
    }
}

impl From<Rejected> for Error {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::Invalid(violations) => Error::Validation(violations),
            Rejected::TooLarge(too_large) => Error::MessageTooLarge(too_large),
        }
    }
}

impl Error {
    pub fn unavailable(dependency: Dependency, source: impl Into<anyhow::Error>) -> Self {
        Error::Unavailable {
            dependency,
            source: source.into(),
        }
    }

    /// Whether trying again later can succeed (used by workers to choose NAK over a dead
    /// letter).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// The error and every cause under it, `: ` apart, for logs and dead letters (never
    /// for API callers: the causes name internals).
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            text.push_str(": ");
            text.push_str(&error.to_string());
            cause = error.source();
        }
        text
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_causes_of_an_error_are_spelt_out_for_logs() {
        let source = anyhow::anyhow!("duplicate key").context("PostgreSQL query failed");
        assert_eq!(
            Error::Internal(source).with_causes(),
            "internal error: PostgreSQL query failed: duplicate key"
        );
        let down = Error::unavailable(Dependency::Nats, anyhow::anyhow!("connection refused"));
        assert_eq!(
            down.with_causes(),
            "nats is unavailable: connection refused"
        );
    }
}
