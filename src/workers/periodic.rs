//! The loop of the tasks that run on a fixed rhythm on every instance (the reconciler,
//! the queue gauges): a pass at once, then one every period, until shutdown.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

/// Runs `pass` at once and then every `period` until `shutdown`. A pass in progress is
/// finished first; a pass that overran its period is not made up for (the next one
/// starts a period after it ended).
pub(super) async fn every<F, Fut>(period: Duration, shutdown: CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        pass().await;
    }
}
