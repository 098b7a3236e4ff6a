//! Telemetry: log lines (JSON or pretty, each with the trace id), traces (OpenTelemetry,
//! exported over OTLP/gRPC) and the W3C trace context that ties one trace together
//! across HTTP, gRPC and NATS ([`propagation`]).
//!
//! Installed once per process by `main` (or by the test harness), never by the library
//! itself, so several application instances can share one process. The rest of the
//! code only creates `tracing` spans (`otel.name`, `otel.kind` and the semantic
//! convention fields shape what is exported); this module knows nothing about routes,
//! subjects or use cases.
//!
//! Without `telemetry.otlp_endpoint` no OpenTelemetry layer is installed: spans get no
//! trace ids, log lines carry none, and a caller's `traceparent` is not passed on. What
//! the log filter leaves out then costs next to nothing.
//!
//! A collector that is down never costs a request anything: spans wait in the batch
//! processor's bounded queue (dropped when it is full) and are exported from its own
//! thread. That it is away is said once, at WARN, with what to do, and that it is back
//! at INFO (`exporter::Watched`); the SDK's own complaints are throttled ([`filters`]).

mod exporter;
mod filters;
mod log_format;
pub mod propagation;

use std::{io::IsTerminal, time::Duration};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterExt, Targets},
    fmt::{self, MakeWriter, format::JsonFields},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::{LogFormat, TelemetrySettings};

use filters::{AskEveryTime, Throttle};
use log_format::WithTraceIds;

/// The spans that become OpenTelemetry spans: mailroom's own. Keeping the exporter's
/// stack (tonic, h2, hyper) out also keeps it from tracing its own exports.
const TRACED_TARGET: &str = "mailroom";
const TRACED_LEVEL: Level = Level::INFO;

/// How often one self-diagnostic of the OpenTelemetry SDK or exporter (say, "export
/// failed") may reach the log.
const SELF_DIAGNOSTICS_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps the tracer provider alive; [`TelemetryGuard::shutdown`] exports what is left.
/// Without an exporter there is no provider, and both do nothing.
#[must_use = "dropping the guard without shutdown loses the spans not yet exported"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now. Blocks a thread of the blocking pool, not the
    /// caller's task.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let Some(provider) = self.provider.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .context("the flush task panicked")?
            .context("flushing traces")
    }

    /// Exports what is left and stops the exporter, waiting at most `timeout`. The last
    /// step of a shutdown: servers and workers have stopped, so no span is lost. A
    /// failure (the collector is down) is logged, never returned: it must not change
    /// the exit status.
    pub async fn shutdown(self, timeout: Duration) {
        let Some(provider) = self.provider else {
            return;
        };
        let outcome =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "traces not flushed at shutdown"),
            Err(err) => tracing::warn!(error = %err, "the trace flush task panicked"),
        }
    }
}

/// Installs the global subscriber: logs on stderr (stdout belongs to commands' output,
/// such as `events tail`) and traces. Must run inside a Tokio
/// runtime that outlives the process's tracing (the OTLP channel lives on it). Returns
/// an error when a subscriber is already installed or `otlp_endpoint` is not a URI.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    install(settings, Some((log_filter(settings)?, std::io::stderr)))
}

/// Like [`init`], without log output: traces (and their propagation) only. For the test
/// harness, which stays quiet unless `TEST_LOG` is set.
pub fn init_without_logs(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    install::<fn() -> std::io::Stderr>(settings, None)
}

fn install<W>(
    settings: &TelemetrySettings,
    logs: Option<(EnvFilter, W)>,
) -> anyhow::Result<TelemetryGuard>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    anyhow::ensure!(
        tokio::runtime::Handle::try_current().is_ok(),
        "telemetry::init must run inside a Tokio runtime"
    );
    // Without an exporter, no OpenTelemetry layer either: it would build every span's
    // data only to drop it, and spans the log filter does not want stay disabled (free).
    let provider = if settings.otlp_endpoint.is_empty() {
        None
    } else {
        Some(exporter::tracer_provider(settings)?)
    };
    subscriber(settings, provider.as_ref(), logs)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// `RUST_LOG` when set, otherwise `telemetry.log_filter`.
fn log_filter(settings: &TelemetrySettings) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .context("invalid telemetry.log_filter")
}

/// The subscriber, not installed: traces when there is a `provider`, logs when asked.
/// Each output has a filter of its own, so a quiet log filter (`warn`) does not thin out
/// the traces, and the other way round. Both filters are asked on every call
/// ([`AskEveryTime`]), or per-layer filtering drops some spans and events.
fn subscriber<W>(
    settings: &TelemetrySettings,
    provider: Option<&SdkTracerProvider>,
    logs: Option<(EnvFilter, W)>,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    if let Some(provider) = provider {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("mailroom"))
                .with_filter(AskEveryTime(
                    Targets::new().with_target(TRACED_TARGET, TRACED_LEVEL),
                ))
                .boxed(),
        );
    }
    if let Some((filter, writer)) = logs {
        let filter = AskEveryTime(filter.and(Throttle::new(SELF_DIAGNOSTICS_INTERVAL)));
        layers.push(match settings.log_format {
            LogFormat::Json => fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(WithTraceIds::new(
                    fmt::format()
                        .json()
                        .with_current_span(true)
                        .with_span_list(false),
                ))
                .with_writer(writer)
                .with_filter(filter)
                .boxed(),
            LogFormat::Pretty => {
                let ansi =
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                fmt::layer()
                    .with_ansi(ansi)
                    .event_format(WithTraceIds::new(fmt::format().compact().with_ansi(ansi)))
                    .with_writer(writer)
                    .with_filter(filter)
                    .boxed()
            }
        });
    }
    tracing_subscriber::registry().with(layers)
}

#[cfg(test)]
mod tests;
