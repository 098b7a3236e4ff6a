//! The OpenTelemetry tracer provider: sampler, resource, and the OTLP/gRPC batch
//! exporter to `telemetry.otlp_endpoint`. [`super::init`] builds it only when an
//! endpoint is set; a provider without one (the unit tests') gives spans trace ids
//! without exporting them.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
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
        builder = builder.with_batch_exporter(exporter);
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
