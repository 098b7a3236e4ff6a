//! The HTTP server span of each request, per the OpenTelemetry HTTP conventions: named
//! `METHOD /route/{template}`, kind server, continuing the caller's trace when the
//! request carries a `traceparent`.

use std::{fmt, time::Duration};

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    response::Response,
};
use tower_http::trace::{DefaultOnResponse, OnResponse};
use tracing::{Span, field::Empty};

use super::REQUEST_ID;
use crate::telemetry::propagation;

/// `make_span_with` of the `TraceLayer`. Costs next to nothing when no layer wants the
/// span (no trace export, logs at `warn`): the fields are only computed for an enabled
/// span.
pub(super) fn request_span(request: &Request) -> Span {
    let method = request.method();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let span = tracing::info_span!(
        "http.request",
        otel.name = %SpanName { method, route },
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        url.path = %request.uri().path(),
        request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    if !span.is_disabled() {
        propagation::continue_trace(&span, propagation::extract_http(request.headers()));
    }
    span
}

/// Span names stay few: the route template, or the method alone when nothing matched
/// (raw paths hold ids).
struct SpanName<'a> {
    method: &'a Method,
    route: Option<&'a str>,
}

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.route {
            Some(route) => write!(f, "{} {route}", self.method),
            None => write!(f, "{}", self.method),
        }
    }
}

/// `on_response` of the `TraceLayer`: the status on the span, then the usual debug line.
pub(super) fn record_response(response: &Response, latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    // A server span fails on 5xx only; a 4xx is the client's error, not the server's.
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    DefaultOnResponse::default().on_response(response, latency, span);
}
