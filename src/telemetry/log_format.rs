//! Log lines that carry the trace id (and span id) of the span they were written in, so
//! a log line leads to its trace in Jaeger and a trace to its log lines.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Wraps a line format: JSON lines get `"trace_id"` and `"span_id"` keys first, other
/// formats ` trace_id=… span_id=…` at the end. Lines written outside any traced span are
/// left as they are.
pub(super) struct WithTraceIds<F> {
    inner: F,
}

impl<F> WithTraceIds<F> {
    pub(super) fn new(inner: F) -> Self {
        Self { inner }
    }
}

/// The ids come from the OpenTelemetry context made current when a traced span is
/// entered, not from the log layer's own view of spans: a span the log filter hides
/// (an `info` span under `warn` logs) still names the trace of the lines inside it.
fn current_ids() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        match body.strip_prefix('{') {
            Some(rest) => writeln!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}"),
        }
    }
}
