//! Logging: JSON or pretty lines on stderr (stdout belongs to commands' output),
//! filtered by `telemetry.log_filter` (or `RUST_LOG`).
//! Installed once per process by `main` (or by the test harness), never by the library
//! itself, so several application instances can share one process.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. Returns an error when one is already installed.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&settings.log_filter))?;
    let registry = tracing_subscriber::registry().with(filter);
    match settings.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()?,
        LogFormat::Pretty => registry
            .with(fmt::layer().compact().with_writer(std::io::stderr))
            .try_init()?,
    }
    Ok(())
}
