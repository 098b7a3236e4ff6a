//! The OpenTelemetry tracer provider: sampler, resource, and the OTLP/gRPC batch
//! exporter to `telemetry.otlp_endpoint`. [`super::init`] builds it only when an
//! endpoint is set; a provider without one (the unit tests') gives spans trace ids
//! without exporting them.
//!
//! The exporter is [`Watched`]: a collector that does not answer (no Jaeger on a
//! developer's machine) is said once, at WARN, with what to do, and the spans are then
//! dropped quietly until it answers again, which is said at INFO. Without it the SDK
//! logs an ERROR for every failed batch, which a newcomer takes for a fault.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{Sampler, SdkTracerProvider, SpanData},
};

use crate::config::{SamplerSetting, TelemetrySettings};

/// Budget of one export call. The export runs on the batch processor's own thread, so
/// this never delays a request; it bounds how long a hung collector holds a batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn tracer_provider(settings: &TelemetrySettings) -> anyhow::Result<SdkTracerProvider> {
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler(settings.sampler, settings.sample_ratio))
        .with_resource(resource(&settings.service_name));
    if !settings.otlp_endpoint.is_empty() {
        // The channel connects lazily: a collector that is down at start costs nothing.
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&settings.otlp_endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| {
                format!(
                    "telemetry.otlp_endpoint {:?} is not usable",
                    settings.otlp_endpoint
                )
            })?;
        builder = builder.with_batch_exporter(Watched::new(exporter, &settings.otlp_endpoint));
    }
    Ok(builder.build())
}

fn sampler(setting: SamplerSetting, ratio: f64) -> Sampler {
    match setting {
        SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
        SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
        SamplerSetting::Ratio => Sampler::TraceIdRatioBased(ratio),
        SamplerSetting::ParentBasedRatio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// `service.instance.id` tells apart the instances behind one load balancer.
fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        ])
        .build()
}

/// An exporter that reports a collector going away and coming back, once each, and
/// otherwise keeps quiet about failed exports: the batch is dropped either way (the SDK
/// does not retry it), so an error per batch tells nothing new.
#[derive(Debug)]
pub(super) struct Watched<E> {
    inner: E,
    endpoint: String,
    /// Whether the last export failed; the first failure of a run is reported.
    failing: AtomicBool,
}

impl<E> Watched<E> {
    pub(super) fn new(inner: E, endpoint: &str) -> Self {
        Watched {
            inner,
            endpoint: endpoint.to_owned(),
            failing: AtomicBool::new(false),
        }
    }

    fn exported(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        endpoint = %self.endpoint,
                        "the OpenTelemetry collector answers again: exporting spans"
                    );
                }
            }
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        error = %err,
                        "no OpenTelemetry collector answers at telemetry.otlp_endpoint: spans \
                         are dropped until one does. Start Jaeger with `make local`, or set \
                         telemetry.otlp_endpoint to \"\" (MAILROOM__TELEMETRY__OTLP_ENDPOINT=) \
                         to turn tracing off"
                    );
                }
            }
        }
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Watched<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.exported(&result);
        // Reported above, once; the SDK would log an ERROR for each batch.
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    };

    use opentelemetry_sdk::{error::OTelSdkError, trace::SpanExporter as _};

    use super::*;

    /// An exporter whose collector is up or down as the test says.
    #[derive(Debug, Clone, Default)]
    struct Switch(Arc<AtomicBool>);

    impl opentelemetry_sdk::trace::SpanExporter for Switch {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            if self.0.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(OTelSdkError::InternalFailure("connection refused".into()))
            }
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_absent_collector_is_said_once_at_warn_and_its_return_at_info() {
        let up = Switch::default();
        let watched = Watched::new(up.clone(), "http://127.0.0.1:4317");
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..5 {
                let result = futures::executor::block_on(watched.export(Vec::new()));
                assert!(
                    result.is_ok(),
                    "the SDK is told nothing: it would log an ERROR"
                );
            }
            up.0.store(true, Ordering::Relaxed);
            futures::executor::block_on(watched.export(Vec::new())).unwrap();
            futures::executor::block_on(watched.export(Vec::new())).unwrap();
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<&str> = text.lines().collect();
        assert_eq!(logged.len(), 2, "{text}");
        assert!(
            logged[0].contains("WARN") && logged[0].contains("make local"),
            "{text}"
        );
        assert!(
            logged[1].contains("INFO") && logged[1].contains("answers again"),
            "{text}"
        );
        assert!(!text.contains("ERROR"), "{text}");
    }
}
