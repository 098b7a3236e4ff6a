//! Per-layer filters: [`Throttle`] keeps the exporter's complaints few, [`AskEveryTime`]
//! keeps per-layer filtering from dropping spans and events.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tracing::{
    Event, Level, Metadata, callsite,
    span::{Attributes, Id, Record},
    subscriber::Interest,
};
use tracing_subscriber::{
    filter::LevelFilter,
    layer::{Context, Filter},
};

/// Keeps the OpenTelemetry SDK and exporter from flooding the log. With the collector
/// down, every export attempt fails the same way; the first failure is worth a line,
/// the next thousand are not. The exporter's reports of failed exports are left out
/// altogether: the watched exporter (`exporter::Watched`) says once that the collector
/// is away, with what to do. Each other warning or error call site of an
/// `opentelemetry*` target may log once per interval; everything else passes untouched.
pub(super) struct Throttle {
    interval: Duration,
    last_logged: Mutex<HashMap<callsite::Identifier, Instant>>,
}

impl Throttle {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_logged: Mutex::new(HashMap::new()),
        }
    }

    fn applies_to(metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && *metadata.level() <= Level::WARN
            && metadata.target().starts_with("opentelemetry")
    }

    /// A failed export (`Export.Failed.Exhausted`, `….DeadlineExceeded`, …), which the
    /// watched exporter reports instead.
    fn reported_elsewhere(metadata: &Metadata<'_>) -> bool {
        metadata.name().starts_with("Export.Failed")
            || metadata.name() == "BatchSpanProcessor.ExportError"
    }

    /// Whether this call site may log now; if so, the interval starts again.
    fn admit(&self, metadata: &Metadata<'_>) -> bool {
        let now = Instant::now();
        let mut last_logged = self
            .last_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match last_logged.get(&metadata.callsite()) {
            Some(last) if now.duration_since(*last) < self.interval => false,
            _ => {
                last_logged.insert(metadata.callsite(), now);
                true
            }
        }
    }
}

impl<S> Filter<S> for Throttle {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !Self::applies_to(metadata) || (!Self::reported_elsewhere(metadata) && self.admit(metadata))
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        // Throttled call sites must be asked each time; the others never change.
        if Self::applies_to(metadata) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

/// Makes the filter decide on every span and event, never letting a call site cache
/// `Interest::always`.
///
/// With several per-layer filters, a call site cached as `always` skips `enabled()`,
/// and each layer then reads the decision the previous `enabled()` call left behind. A
/// `log_enabled!` check through `tracing-log` (sqlx makes one after every query) leaves
/// "disabled" there, so the next span or event silently misses the log or the trace:
/// tokio-rs/tracing#2519. Remove once tracing-subscriber caps the interest itself
/// (tokio-rs/tracing#3572).
pub(super) struct AskEveryTime<F>(pub(super) F);

impl<S, F: Filter<S>> Filter<S> for AskEveryTime<F> {
    fn enabled(&self, metadata: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.0.enabled(metadata, cx)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        let interest = self.0.callsite_enabled(metadata);
        if interest.is_always() {
            Interest::sometimes()
        } else {
            interest
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    // Span notifications keep filters with span-scoped directives (EnvFilter) working.
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx)
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(id, values, ctx)
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx)
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx)
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx)
    }
}
