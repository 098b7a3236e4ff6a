//! `grpc.health.v1.Health` following readiness: SERVING while PostgreSQL and NATS answer,
//! NOT_SERVING otherwise, for the server as a whole (`""`) and for
//! `emailService.EmailService`. Load balancers and `grpc-health-probe` read it; the
//! REST `/ready` endpoint asks the same use case.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::usecase::Mailroom;

use super::pb::email_service_server::SERVICE_NAME;

/// The names whose status follows readiness.
const SERVICES: [&str; 2] = ["", SERVICE_NAME];

pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Re-checks readiness every `interval` until `shutdown`, then reports NOT_SERVING so
/// clients move elsewhere while calls in flight finish.
pub async fn follow_readiness(
    mailroom: Mailroom,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = None;
    loop {
        let report = tokio::select! {
            _ = shutdown.cancelled() => break,
            report = async {
                ticks.tick().await;
                mailroom.health(false).await
            } => report,
        };
        let ready = report.ready();
        if serving != Some(ready) {
            if ready {
                tracing::info!("gRPC health: SERVING");
            } else {
                let down: Vec<&str> = report
                    .checks
                    .iter()
                    .filter(|check| check.required && check.error.is_some())
                    .map(|check| check.dependency.as_str())
                    .collect();
                tracing::warn!(
                    ?down,
                    "gRPC health: NOT_SERVING, a required dependency is down"
                );
            }
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&reporter, status).await;
            serving = Some(ready);
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}
