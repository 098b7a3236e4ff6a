//! Group commit for synchronous creates: REST `POST` and gRPC `Create` calls that arrive
//! together are stored in one transaction, as the create worker stores a pulled batch.
//!
//! A caller still gets its answer only after its row is committed, so nothing about the
//! guarantee changes; what changes is that 64 concurrent calls cost a few commits instead
//! of 64, which is what bounds a single PostgreSQL's insert rate. A committer never waits
//! to fill a batch: it takes what is queued when it is free, so a lone call is stored at
//! once.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;

use crate::{
    domain::NewEmail,
    error::{Error, Result},
};

use super::{Created, Mailroom};

/// How synchronous creates are grouped (`database.group_commit`).
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitSettings {
    /// Most creates stored in one transaction.
    pub max_batch: usize,
    /// Transactions in flight at once.
    pub committers: usize,
}

/// One queued create, with the span of the call that made it and where its answer goes.
struct Pending {
    email: NewEmail,
    span: tracing::Span,
    answer: oneshot::Sender<Result<Created>>,
}

/// The queue in front of the committers; cheap to clone. The committers stop when the
/// last clone is dropped, after storing what was queued.
#[derive(Clone)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the committers, which store through `mailroom` (one without group commit).
    pub(super) fn start(mailroom: Mailroom, settings: GroupCommitSettings) -> Self {
        let max_batch = settings.max_batch.max(1);
        // Room for every committer's next batch; beyond it callers wait (backpressure).
        let (queue, receiver) = mpsc::channel(max_batch * settings.committers.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..settings.committers.max(1) {
            tokio::spawn(commit_loop(mailroom.clone(), receiver.clone(), max_batch));
        }
        Self { queue }
    }

    /// Stores `email` in the next group's transaction and answers as
    /// [`Mailroom::create_all`] does for it.
    pub(super) async fn create(&self, email: NewEmail) -> Result<Created> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            email,
            span: tracing::Span::current(),
            answer,
        };
        if self.queue.send(pending).await.is_err() {
            return Err(stopped());
        }
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Only reachable while the runtime shuts down, when the committers are gone.
fn stopped() -> Error {
    Error::Internal(anyhow::anyhow!("the group committers have stopped"))
}

async fn commit_loop(
    mailroom: Mailroom,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        {
            // One committer at a time takes what is queued; the others commit meanwhile.
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut batch, max_batch).await == 0 {
                return; // every sender is gone
            }
        }
        commit(&mailroom, std::mem::take(&mut batch)).await;
        batch.reserve(max_batch);
    }
}

async fn commit(mailroom: &Mailroom, batch: Vec<Pending>) {
    let mut answers = Vec::with_capacity(batch.len());
    let mut work = Vec::with_capacity(batch.len());
    for Pending {
        email,
        span,
        answer,
    } in batch
    {
        answers.push(answer);
        work.push((email, span));
    }
    // The transaction shows in the trace of the first call it stores.
    let span = work[0].1.clone();
    match mailroom.create_all(work).instrument(span).await {
        Ok(results) => {
            for (answer, result) in answers.into_iter().zip(results) {
                // A caller that gave up (timeout, disconnect) no longer listens; its
                // email is stored all the same.
                let _ = answer.send(result);
            }
        }
        Err(err) => {
            // Nothing was stored. The first caller gets the error itself, the others the
            // same kind of error: all of them may retry.
            let mut answers = answers.into_iter();
            let kind = shared(&err);
            if let Some(first) = answers.next() {
                let _ = first.send(Err(err));
            }
            for answer in answers {
                let _ = answer.send(Err(kind()));
            }
        }
    }
}

/// A copy of a batch-wide error for every other caller of the batch ([`Error`] holds an
/// `anyhow::Error`, which is not `Clone`).
fn shared(err: &Error) -> impl Fn() -> Error + use<> {
    let (dependency, cause) = match err {
        Error::Unavailable { dependency, source } => (Some(*dependency), format!("{source:#}")),
        Error::Internal(source) => (None, format!("{source:#}")),
        other => (None, other.to_string()),
    };
    move || match dependency {
        Some(dependency) => Error::unavailable(dependency, anyhow::anyhow!(cause.clone())),
        None => Error::Internal(anyhow::anyhow!(cause.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Dependency;

    #[test]
    fn a_shared_outage_stays_an_outage_of_the_same_dependency() {
        let err = Error::unavailable(Dependency::Postgres, anyhow::anyhow!("connection refused"));
        let copy = shared(&err)();
        assert!(copy.is_transient());
        assert!(matches!(
            copy,
            Error::Unavailable {
                dependency: Dependency::Postgres,
                ..
            }
        ));
        let cause = std::error::Error::source(&copy).expect("the outage's cause");
        assert_eq!(cause.to_string(), "connection refused");
    }

    #[test]
    fn other_shared_errors_are_internal() {
        let err = Error::Internal(anyhow::anyhow!("unexpected reply"));
        assert!(matches!(shared(&err)(), Error::Internal(_)));
    }
}
