//! The subscriber as installed, driven through a thread-local default: trace context
//! in and out of spans, trace ids in log lines, and the throttled SDK diagnostics.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::*;
use crate::config::SamplerSetting;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn settings(format: LogFormat) -> TelemetrySettings {
    TelemetrySettings {
        log_format: format,
        log_filter: "info".into(),
        service_name: "mailroom-test".into(),
        otlp_endpoint: String::new(),
        sampler: SamplerSetting::ParentBasedRatio,
        sample_ratio: 1.0,
    }
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs `f` under the subscriber `init` would install, logging into the capture.
fn with_subscriber<T>(format: LogFormat, f: impl FnOnce() -> T) -> (T, Capture) {
    let capture = Capture::default();
    let provider = SdkTracerProvider::builder().build();
    let subscriber = subscriber(
        &settings(format),
        Some(&provider),
        Some((EnvFilter::new("info"), capture.clone())),
    );
    let out = tracing::subscriber::with_default(subscriber, f);
    (out, capture)
}

fn caller_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", CALLER.parse().unwrap());
    headers
}

#[test]
fn a_span_continues_the_callers_trace_and_passes_it_on_to_nats() {
    let ((trace_id, parent_id, forwarded), _) = with_subscriber(LogFormat::Json, || {
        let server = tracing::info_span!("http.request");
        assert!(propagation::continue_trace(
            &server,
            propagation::extract_http(&caller_headers())
        ));
        let _entered = server.enter();
        let publish = tracing::info_span!("nats.publish");
        let _entered = publish.enter();
        let mut headers = async_nats::HeaderMap::new();
        propagation::inject_nats(&mut headers);
        let server_cx = server.context();
        (
            propagation::current_trace_id(),
            server_cx.span().span_context().span_id().to_string(),
            headers.get("traceparent").unwrap().as_str().to_owned(),
        )
    });
    assert_eq!(
        trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    // The next hop's parent is the publishing span: same trace, a new span id.
    assert!(forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(!forwarded.contains("00f067aa0ba902b7"), "{forwarded}");
    assert!(!forwarded.contains(&parent_id), "{forwarded}");
    assert!(forwarded.ends_with("-01"), "{forwarded}");
}

#[test]
fn a_started_span_keeps_its_parent() {
    with_subscriber(LogFormat::Json, || {
        let span = tracing::info_span!("worker");
        let _entered = span.enter();
        assert!(!propagation::continue_trace(
            &span,
            propagation::extract_http(&caller_headers())
        ));
    });
}

#[test]
fn json_log_lines_carry_the_trace_id_of_their_span() {
    let (_, capture) = with_subscriber(LogFormat::Json, || {
        tracing::info!("outside any span");
        let span = tracing::info_span!("http.request", request_id = "r-1");
        propagation::continue_trace(&span, propagation::extract_http(&caller_headers()));
        span.in_scope(|| tracing::warn!(email.id = "e-1", "inside the span"));
    });
    let lines = capture.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let outside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(outside.get("trace_id").is_none(), "{outside}");
    let inside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(inside["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(inside["span_id"].as_str().unwrap().len(), 16);
    assert_eq!(inside["fields"]["message"], "inside the span");
    assert_eq!(inside["span"]["request_id"], "r-1");
}

#[test]
fn pretty_log_lines_carry_the_trace_id_of_their_span() {
    let (_, capture) = with_subscriber(LogFormat::Pretty, || {
        let span = tracing::info_span!("usecase.create");
        span.in_scope(|| tracing::info!("inside the span"));
        tracing::info!("outside any span");
    });
    let lines = capture.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("inside the span"), "{}", lines[0]);
    let trace_id = lines[0]
        .split("trace_id=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert_eq!(trace_id.len(), 32, "{}", lines[0]);
    assert!(!lines[1].contains("trace_id="), "{}", lines[1]);
}

#[test]
fn repeated_opentelemetry_warnings_are_logged_once_per_interval() {
    let (_, capture) = with_subscriber(LogFormat::Json, || {
        for _ in 0..50 {
            tracing::error!(target: "opentelemetry_sdk", name = "BatchSpanProcessor.ExportError", "export failed");
            tracing::warn!(target: "mailroom::workers", "a warning of our own");
        }
        tracing::warn!(target: "opentelemetry-otlp", "another call site");
    });
    let lines = capture.lines();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("export failed"), 1, "{lines:?}");
    assert_eq!(count("another call site"), 1, "{lines:?}");
    assert_eq!(count("a warning of our own"), 50);
}

#[test]
fn the_log_filter_does_not_thin_out_the_traces() {
    let capture = Capture::default();
    let provider = SdkTracerProvider::builder().build();
    let subscriber = subscriber(
        &settings(LogFormat::Json),
        Some(&provider),
        Some((EnvFilter::new("warn"), capture.clone())),
    );
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("usecase.deliver");
        span.in_scope(|| {
            assert!(propagation::current_trace_id().is_some());
            tracing::warn!("a warning inside an info span");
        });
    });
    let lines = capture.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"trace_id\""), "{}", lines[0]);
}

#[tokio::test]
async fn an_unusable_endpoint_is_refused_at_start() {
    let mut settings = settings(LogFormat::Json);
    settings.otlp_endpoint = "not a uri".into();
    let err = exporter::tracer_provider(&settings).unwrap_err();
    assert!(format!("{err:#}").contains("otlp_endpoint"), "{err:#}");
}

/// What `tracing-log` does for a `log_enabled!` check (sqlx makes one after each
/// query): it asks the subscriber about metadata of no registered call site and then
/// emits nothing.
fn log_enabled_check() {
    use tracing::{
        Metadata,
        callsite::{Callsite, Identifier},
        field::FieldSet,
        metadata::Kind,
        subscriber::Interest,
    };
    struct LogCallsite;
    static CALLSITE: LogCallsite = LogCallsite;
    static METADATA: Metadata<'static> = Metadata::new(
        "log event",
        "sqlx::query",
        Level::DEBUG,
        None,
        None,
        None,
        FieldSet::new(&[], Identifier(&CALLSITE)),
        Kind::EVENT,
    );
    impl Callsite for LogCallsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            &METADATA
        }
    }
    tracing::dispatcher::get_default(|dispatch| dispatch.enabled(&METADATA));
}

#[test]
fn a_log_enabled_check_between_two_events_loses_neither_span_nor_event() {
    let (_, capture) = with_subscriber(LogFormat::Json, || {
        for round in 0..3 {
            let span = tracing::info_span!("usecase.create", round);
            span.in_scope(|| {
                log_enabled_check();
                tracing::info!(round, "after the check");
                assert!(propagation::current_trace_id().is_some(), "traced");
            });
            log_enabled_check();
        }
    });
    let lines = capture.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.contains("\"trace_id\"")),
        "{lines:?}"
    );
}
