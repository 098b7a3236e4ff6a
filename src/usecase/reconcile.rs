//! The reconciler: PostgreSQL is the source of truth, so an email whose send event was
//! lost (a NATS outage between the insert and the publish, a crashed worker) is found
//! there and its send event published again. Safe on every instance at once: the store
//! hands each stranded email to one caller only, and the send worker's claim makes a
//! duplicate event harmless.

use std::time::Duration;

use futures::future::join_all;

use crate::{error::Result, ports::SendReason};

use super::Mailroom;

impl Mailroom {
    /// Republishes send events for emails more than `age` past due; returns how many.
    #[tracing::instrument(name = "usecase.reconcile", skip_all)]
    pub async fn reconcile(&self, age: Duration, limit: i64) -> Result<usize> {
        let stranded = self.ports.store.take_stranded(age, limit).await?;
        // Concurrently: the publishes share the connection and their acks overlap.
        let results = join_all(stranded.iter().map(|&(id, lane)| {
            self.ports
                .bus
                .request_send(id, lane, SendReason::Reconciled)
        }))
        .await;
        let mut published = 0;
        for ((id, _), result) in stranded.iter().zip(results) {
            match result {
                Ok(()) => published += 1,
                Err(err) => {
                    // Still stranded: the next pass after `age` tries again.
                    tracing::warn!(email.id = %id, error = err.with_causes(), "could not republish a send event");
                }
            }
        }
        if !stranded.is_empty() {
            tracing::info!(
                found = stranded.len(),
                published,
                "reconciler republished send events"
            );
        }
        Ok(published)
    }
}
