//! Prometheus metrics, in a registry per application instance (so tests can run several
//! instances in one process), served on `metrics.addr`. Labels are route templates,
//! methods and outcomes, never raw paths or ids.
//!
//! Every mailroom metric is named `mailroom_…`; the process collector keeps the standard
//! `process_…` names that dashboards and alerts everywhere expect.

use std::{ops::Deref, sync::Arc};

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::{
    domain::{EmailStatus, SuppressionReason},
    ports::AttemptOutcome,
};

const NAMESPACE: &str = "mailroom";

/// Request latency of the APIs (REST, gRPC): answers take milliseconds, anything past a
/// few seconds is already an incident, and the request timeout (30 s) bounds the rest.
const API_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Latency of SMTP exchanges and of the NATS handlers that wrap them: a local sink answers
/// in milliseconds (maildev waits ~100 ms per new connection), a remote server in a
/// second or two, and a slow one runs into `smtp.timeout` (30 s per command) and the
/// consumer's ack wait (60 s), so the buckets reach that far.
const DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// The instance's metrics; one `Arc`, so handing them to every request costs one
/// reference count.
#[derive(Clone)]
pub struct Metrics(Arc<Registered>);

impl Deref for Metrics {
    type Target = Registered;

    fn deref(&self) -> &Registered {
        &self.0
    }
}

/// The statuses of `mailroom_emails_pending`.
pub const PENDING_STATUSES: [EmailStatus; 3] = [
    EmailStatus::Queued,
    EmailStatus::Deferred,
    EmailStatus::Scheduled,
];

/// The kinds of `mailroom_reports_total`.
pub const REPORT_KINDS: [&str; 5] = ["bounce", "delay", "complaint", "other", "unmatched"];

/// The outcomes of `mailroom_webhook_deliveries_total`.
pub const WEBHOOK_OUTCOMES: [&str; 4] = ["succeeded", "retry", "failed", "refused"];

pub struct Registered {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    pub nats_messages: IntCounterVec,
    pub nats_duration: HistogramVec,
    pub smtp_sends: IntCounterVec,
    pub smtp_duration: HistogramVec,
    pub relay_failures: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub local_cache_requests: IntCounterVec,
    pub emails: IntCounterVec,
    pub auth_denied: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_duration: HistogramVec,
    pub webhooks_disabled: IntCounterVec,
    pub suppressed_recipients: IntCounterVec,
    pub suppressions_added: IntCounterVec,
    pub reports: IntCounterVec,
    pub emails_pending: IntGaugeVec,
    pub oldest_pending: Gauge,
    /// The series of `cache_requests` by [`CacheResult`], and of `local_cache_requests`
    /// (hit, miss), resolved once: reads count on every request.
    cache_series: [IntCounter; 3],
    local_cache_series: [IntCounter; 2],
}

/// How a cache lookup went.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    Hit,
    Miss,
    Error,
}

impl CacheResult {
    pub const ALL: [CacheResult; 3] = [CacheResult::Hit, CacheResult::Miss, CacheResult::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Error => "error",
        }
    }
}

/// What a worker did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    Ok,
    Retry,
    Dead,
}

impl MessageOutcome {
    pub const ALL: [MessageOutcome; 3] = [
        MessageOutcome::Ok,
        MessageOutcome::Retry,
        MessageOutcome::Dead,
    ];

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
        // The namespace goes on each metric rather than on the registry, which would also
        // rename the process collector's metrics to `mailroom_process_…`.
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let opts = Opts::new(name, help).namespace(NAMESPACE);
            let metric = IntCounterVec::new(opts, labels).expect("a valid counter");
            registry
                .register(Box::new(metric.clone()))
                .expect("a unique counter");
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help)
                .namespace(NAMESPACE)
                .buckets(buckets.to_vec());
            let metric = HistogramVec::new(opts, labels).expect("a valid histogram");
            registry
                .register(Box::new(metric.clone()))
                .expect("a unique histogram");
            metric
        };
        let cache_requests = counter(
            "cache_requests_total",
            "Email cache lookups by result (hit, miss, error); a hit of either tier, \
             local or Redis, is a hit.",
            &["result"],
        );
        let local_cache_requests = counter(
            "cache_local_requests_total",
            "Lookups in the in-process tier of the email cache (cache.local_ttl) by result \
             (hit, miss); a miss goes on to Redis.",
            &["result"],
        );
        let cache_series =
            CacheResult::ALL.map(|result| cache_requests.with_label_values(&[result.as_str()]));
        let local_cache_series =
            ["hit", "miss"].map(|result| local_cache_requests.with_label_values(&[result]));
        let metrics = Registered {
            http_requests: counter(
                "http_requests_total",
                "HTTP requests by method, route template and status.",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "HTTP request latency by method and route template.",
                &["method", "route"],
                API_BUCKETS,
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
                API_BUCKETS,
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
                DELIVERY_BUCKETS,
            ),
            smtp_sends: counter(
                "smtp_sends_total",
                "SMTP sends by outcome (sent, transient, permanent) and the relay that \
                 answered or was tried last (none: no relay was reached).",
                &["outcome", "relay"],
            ),
            smtp_duration: histogram(
                "smtp_send_duration_seconds",
                "Duration of one delivery attempt's SMTP work, by the relay that ended it \
                 (failovers included).",
                &["relay"],
                DELIVERY_BUCKETS,
            ),
            relay_failures: counter(
                "smtp_relay_failures_total",
                "Connections to a relay that failed or timed out: the relay was left out \
                 for smtp.relay_cooldown and the email went to the next one.",
                &["relay"],
            ),
            cache_requests,
            local_cache_requests,
            cache_series,
            local_cache_series,
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
            webhook_deliveries: counter(
                "webhook_deliveries_total",
                "Webhook requests by outcome: succeeded (a 2xx answer), retry (failed, to be \
                 retried), failed (failed, no retries left) and refused (an address webhooks \
                 may not go to).",
                &["outcome"],
            ),
            webhook_duration: histogram(
                "webhook_delivery_duration_seconds",
                "Duration of one webhook request, answer or not.",
                &[],
                DELIVERY_BUCKETS,
            ),
            webhooks_disabled: counter(
                "webhooks_disabled_total",
                "Webhook endpoints disabled after failing every delivery for \
                 webhooks.disable_after.",
                &[],
            ),
            suppressed_recipients: counter(
                "suppressed_recipients_total",
                "Recipients left out of a send because they are on the suppression list.",
                &[],
            ),
            suppressions_added: counter(
                "suppressions_added_total",
                "Addresses added to the suppression list, by reason (hard_bounce, \
                 complaint, manual).",
                &["reason"],
            ),
            reports: counter(
                "reports_total",
                "Bounce and complaint reports received (POST /api/v1/bounces), by what they \
                 said: bounce (a recipient failed), delay, complaint, other (nothing to do), \
                 unmatched (no email of ours).",
                &["kind"],
            ),
            emails_pending: {
                let opts = Opts::new(
                    "emails_pending",
                    "Emails waiting, by status (queued, deferred, scheduled), as counted every \
                     metrics.queue_interval; past metrics.queue_count_limit unfinished emails, \
                     a lower bound.",
                )
                .namespace(NAMESPACE);
                let gauge = IntGaugeVec::new(opts, &["status"]).expect("a valid gauge");
                registry
                    .register(Box::new(gauge.clone()))
                    .expect("a unique gauge");
                gauge
            },
            oldest_pending: {
                let opts = Opts::new(
                    "emails_oldest_pending_seconds",
                    "How long the most overdue email (queued, deferred past its retry time, \
                     or scheduled past its time) has waited since it was due; 0 when none is.",
                )
                .namespace(NAMESPACE);
                let gauge = Gauge::with_opts(opts).expect("a valid gauge");
                registry
                    .register(Box::new(gauge.clone()))
                    .expect("a unique gauge");
                gauge
            },
            registry,
        };
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("a unique process collector");
        // Series with a known, small label set start at zero, so rates, ratios and alerts
        // see them before the first event (a failure ratio needs its zero numerator).
        for status in EmailStatus::ALL {
            metrics.emails.with_label_values(&[status.as_str()]);
        }
        metrics
            .suppressed_recipients
            .with_label_values(&[] as &[&str]);
        for reason in SuppressionReason::ALL {
            metrics
                .suppressions_added
                .with_label_values(&[reason.as_str()]);
        }
        for kind in REPORT_KINDS {
            metrics.reports.with_label_values(&[kind]);
        }
        for status in PENDING_STATUSES {
            metrics.emails_pending.with_label_values(&[status.as_str()]);
        }
        for outcome in WEBHOOK_OUTCOMES {
            metrics.webhook_deliveries.with_label_values(&[outcome]);
        }
        metrics.webhook_duration.with_label_values(&[] as &[&str]);
        metrics.webhooks_disabled.with_label_values(&[] as &[&str]);
        Metrics(Arc::new(metrics))
    }

    /// Counts a webhook request (`outcome` one of [`WEBHOOK_OUTCOMES`]) and its duration.
    pub fn webhook_attempt(&self, outcome: &str, duration: std::time::Duration) {
        self.webhook_deliveries.with_label_values(&[outcome]).inc();
        self.webhook_duration
            .with_label_values(&[] as &[&str])
            .observe(duration.as_secs_f64());
    }

    /// Starts a relay's series at zero (see [`Metrics::new`]).
    pub fn relay_registered(&self, relay: &str) {
        for outcome in AttemptOutcome::SMTP {
            self.smtp_sends
                .with_label_values(&[outcome.as_str(), relay]);
        }
        self.smtp_duration.with_label_values(&[relay]);
        self.relay_failures.with_label_values(&[relay]);
    }

    /// Counts a connection to `relay` that failed.
    pub fn relay_failed(&self, relay: &str) {
        self.relay_failures.with_label_values(&[relay]).inc();
    }

    /// Counts a lookup of the email cache as a whole.
    pub fn cache(&self, result: CacheResult) {
        self.cache_series[result as usize].inc();
    }

    /// Counts a lookup of the cache's in-process tier, which never fails.
    pub fn local_cache(&self, hit: bool) {
        self.local_cache_series[usize::from(!hit)].inc();
    }

    /// Starts a worker pool's message series at zero, so that the first dead letter on
    /// a subject already shows as an increase (alerts on `increase()` need a sample
    /// before it).
    pub fn worker_started(&self, subject: &str) {
        for outcome in MessageOutcome::ALL {
            self.nats_messages
                .with_label_values(&[subject, outcome.as_str()]);
        }
        self.nats_duration.with_label_values(&[subject]);
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
