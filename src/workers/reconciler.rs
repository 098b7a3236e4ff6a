//! The reconciler's loop: every `reconciler.interval`, each instance asks the use case to
//! republish the send events of emails whose next step is overdue (see
//! [`Mailroom::reconcile`]). Safe on every instance at once; a failed pass (PostgreSQL
//! down) is logged and the next one tries again.

use tokio_util::sync::CancellationToken;

use crate::{config::ReconcilerSettings, usecase::Mailroom};

use super::periodic::every;

pub struct Reconciler {
    pub mailroom: Mailroom,
    pub settings: ReconcilerSettings,
}

impl Reconciler {
    /// Runs passes until `shutdown`; a pass in progress is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        every(self.settings.interval, shutdown, || async {
            if let Err(err) = self
                .mailroom
                .reconcile(self.settings.overdue_age, self.settings.batch_size)
                .await
            {
                tracing::warn!(error = err.with_causes(), "reconciler pass failed");
            }
        })
        .await;
    }
}
