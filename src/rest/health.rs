//! `/health` (liveness, with every dependency's state) and `/ready` (503 while a
//! required dependency is down). Why a dependency is down is logged, not shown: these
//! routes are open to anyone.

use axum::{Json, extract::State, http::StatusCode};

use crate::usecase::HealthReport;

use super::{
    AppState,
    dto::{DependencyHealth, HealthResponse, RelayHealth},
};

fn response(report: &HealthReport) -> HealthResponse {
    for check in &report.checks {
        if let Some(error) = &check.error {
            tracing::warn!(dependency = %check.dependency, %error, "dependency is down");
        }
    }
    for relay in &report.relays {
        if let Some(error) = &relay.error {
            tracing::warn!(relay = %relay.name, %error, "SMTP relay is down");
        }
    }
    let status = if !report.ready() {
        "unavailable"
    } else if report.all_up() {
        "ok"
    } else {
        "degraded"
    };
    HealthResponse {
        status: status.to_owned(),
        dependencies: report
            .checks
            .iter()
            .map(|check| DependencyHealth {
                name: check.dependency.to_string(),
                status: if check.error.is_none() { "up" } else { "down" }.to_owned(),
                required: check.required,
            })
            .collect(),
        relays: report
            .relays
            .iter()
            .map(|relay| RelayHealth {
                name: relay.name.clone(),
                status: if relay.error.is_none() { "up" } else { "down" }.to_owned(),
                cooling_down: relay.cooling_down,
            })
            .collect(),
    }
}

/// Liveness: answers 200 while the process runs, and reports every dependency,
/// the SMTP server included.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "health",
    responses((status = 200, description = "The process is alive", body = HealthResponse)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthResponse> {
    Json(response(&state.mailroom.health(true).await))
}

/// Readiness: 200 when PostgreSQL and NATS answer, 503 otherwise.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = HealthResponse),
        (status = 503, description = "A required dependency is down", body = HealthResponse),
    ))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let report = state.mailroom.health(false).await;
    let status = if report.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(response(&report)))
}
