//! Prometheus metrics, in a registry per application instance (so tests can run several
//! instances in one process), served on `metrics.addr`. Labels are route templates,
//! methods and outcomes, never raw paths or ids.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::domain::EmailStatus;

/// Buckets from 1 ms to 10 s: API calls sit at the low end, SMTP exchanges at the high.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    pub nats_messages: IntCounterVec,
    pub nats_duration: HistogramVec,
    pub smtp_sends: IntCounterVec,
    pub smtp_duration: HistogramVec,
    pub cache_requests: IntCounterVec,
    pub emails: IntCounterVec,
    pub auth_denied: IntCounterVec,
}

/// How a cache lookup went.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    Hit,
    Miss,
    Error,
}

/// What a worker did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    Ok,
    Retry,
    Dead,
}

impl MessageOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageOutcome::Ok => "ok",
            MessageOutcome::Retry => "retry",
            MessageOutcome::Dead => "dead",
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("mailroom".into()), None).expect("a valid metrics prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric =
                IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
            registry
                .register(Box::new(metric.clone()))
                .expect("a unique counter");
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let metric = HistogramVec::new(opts, labels).expect("a valid histogram");
            registry
                .register(Box::new(metric.clone()))
                .expect("a unique histogram");
            metric
        };
        let metrics = Metrics {
            http_requests: counter(
                "http_requests_total",
                "HTTP requests by method, route template and status.",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "HTTP request latency by method and route template.",
                &["method", "route"],
            ),
            grpc_requests: counter(
                "grpc_requests_total",
                "gRPC requests by method and status code.",
                &["method", "code"],
            ),
            grpc_duration: histogram(
                "grpc_request_duration_seconds",
                "gRPC request latency by method.",
                &["method"],
            ),
            nats_messages: counter(
                "nats_messages_total",
                "NATS messages handled by subject and outcome (ok, retry, dead).",
                &["subject", "outcome"],
            ),
            nats_duration: histogram(
                "nats_message_duration_seconds",
                "Time spent handling one NATS message, by subject.",
                &["subject"],
            ),
            smtp_sends: counter(
                "smtp_sends_total",
                "SMTP sends by outcome (sent, transient, permanent).",
                &["outcome"],
            ),
            smtp_duration: histogram(
                "smtp_send_duration_seconds",
                "Duration of one SMTP exchange.",
                &[],
            ),
            cache_requests: counter(
                "cache_requests_total",
                "Cache lookups by result (hit, miss, error).",
                &["result"],
            ),
            emails: counter(
                "emails_total",
                "Email status transitions, by the status entered.",
                &["status"],
            ),
            auth_denied: counter(
                "auth_denied_total",
                "API calls refused, by protocol and reason (missing, invalid, rate_limited).",
                &["protocol", "reason"],
            ),
            registry,
        };
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("a unique process collector");
        for status in EmailStatus::ALL {
            metrics.emails.with_label_values(&[status.as_str()]);
        }
        metrics
    }

    pub fn cache(&self, result: CacheResult) {
        let label = match result {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Error => "error",
        };
        self.cache_requests.with_label_values(&[label]).inc();
    }

    pub fn email_entered(&self, status: EmailStatus) {
        self.emails.with_label_values(&[status.as_str()]).inc();
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding does not fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
