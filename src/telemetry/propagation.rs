//! W3C trace context (`traceparent`, `tracestate`) in and out of message headers, so one
//! trace follows an email from the API through NATS to the SMTP send.
//!
//! Outgoing: [`inject_http`] / [`inject_nats`] write the context of the current span
//! (the innermost entered span that OpenTelemetry tracks) into the headers about to be
//! sent. Incoming: [`extract_http`] / [`extract_nats`] read a caller's context, and
//! [`continue_trace`] makes a new span its child.
//!
//! gRPC: tonic's `MetadataMap` converts to and from `http::HeaderMap`
//! (`MetadataMap::as_ref()`, `into_headers()`, `from_headers()`), so the HTTP helpers
//! serve tonic requests too. Any other carrier implements OpenTelemetry's
//! [`Injector`] / [`Extractor`] and uses [`inject`] / [`extract`].
//!
//! The propagator is W3C trace context, used directly rather than through a global, so
//! the helpers behave the same in every process and in tests.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes `cx` into any carrier.
pub fn inject(cx: &Context, injector: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(cx, injector);
}

/// Reads a context from any carrier. Without a valid `traceparent` the result holds no
/// span, and [`continue_trace`] ignores it.
pub fn extract(extractor: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract(extractor)
}

/// The context to pass on from here: that of the innermost entered span OpenTelemetry
/// tracks (the same one a new child span would get as its parent).
pub fn current() -> Context {
    Context::current()
}

/// Writes the current trace context into HTTP (or tonic, through
/// `MetadataMap::as_mut()`) headers. Does nothing outside a traced span.
pub fn inject_http(headers: &mut http::HeaderMap) {
    inject(&current(), &mut HttpInjector(headers));
}

/// Reads a caller's trace context from HTTP (or tonic, through `MetadataMap::as_ref()`)
/// headers.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    extract(&HttpExtractor(headers))
}

/// Writes the current trace context into the headers of a NATS message.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    inject(&current(), &mut NatsInjector(headers));
}

/// Reads a publisher's trace context from the headers of a NATS message.
pub fn extract_nats(headers: &async_nats::HeaderMap) -> Context {
    extract(&NatsExtractor(headers))
}

/// Makes `span` a child of the remote span in `parent`, when there is one; returns
/// whether it did. Call it before the span is first entered: a started span keeps its
/// parent.
pub fn continue_trace(span: &tracing::Span, parent: Context) -> bool {
    if !parent.span().span_context().is_valid() {
        return false;
    }
    match span.set_parent(parent) {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(error = %err, "cannot continue the caller's trace");
            false
        }
    }
}

/// The trace id of the current span, as 32 lowercase hex digits; `None` outside a
/// traced span.
pub fn current_trace_id() -> Option<String> {
    let cx = current();
    let span = cx.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// [`Injector`] over `http::HeaderMap`; values that are not valid header values are
/// skipped (W3C values always are).
pub struct HttpInjector<'a>(pub &'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// [`Extractor`] over `http::HeaderMap` (names are case-insensitive there).
pub struct HttpExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// [`Injector`] over NATS message headers.
pub struct NatsInjector<'a>(pub &'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// [`Extractor`] over NATS message headers. NATS header names keep their case, so a
/// producer writing `Traceparent` is matched too.
pub struct NatsExtractor<'a>(pub &'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if let Some(value) = self.0.get(key) {
            return Some(value.as_str());
        }
        self.0
            .iter()
            .find(|(name, _)| AsRef::<str>::as_ref(name).eq_ignore_ascii_case(key))
            .and_then(|(_, values)| values.first())
            .map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|(name, _)| AsRef::<str>::as_ref(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN_ID: &str = "00f067aa0ba902b7";

    fn remote_context() -> Context {
        let span_context = SpanContext::new(
            TraceId::from_hex(TRACE_ID).unwrap(),
            SpanId::from_hex(SPAN_ID).unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        Context::new().with_remote_span_context(span_context)
    }

    fn assert_is_the_remote_context(cx: &Context) {
        let span = cx.span();
        let extracted = span.span_context();
        assert!(extracted.is_valid());
        assert!(extracted.is_remote());
        assert_eq!(extracted.trace_id().to_string(), TRACE_ID);
        assert_eq!(extracted.span_id().to_string(), SPAN_ID);
        assert!(extracted.is_sampled());
        assert_eq!(extracted.trace_state().get("vendor"), Some("value"));
    }

    #[test]
    fn a_context_injected_into_http_headers_is_extracted_unchanged() {
        let mut headers = http::HeaderMap::new();
        inject(&remote_context(), &mut HttpInjector(&mut headers));
        assert_eq!(
            headers["traceparent"],
            format!("00-{TRACE_ID}-{SPAN_ID}-01").as_str()
        );
        assert_eq!(headers["tracestate"], "vendor=value");
        assert_is_the_remote_context(&extract_http(&headers));
    }

    #[test]
    fn a_context_injected_into_nats_headers_is_extracted_unchanged() {
        let mut headers = async_nats::HeaderMap::new();
        inject(&remote_context(), &mut NatsInjector(&mut headers));
        assert_eq!(
            headers.get("traceparent").map(|v| v.as_str().to_owned()),
            Some(format!("00-{TRACE_ID}-{SPAN_ID}-01"))
        );
        assert_is_the_remote_context(&extract_nats(&headers));
    }

    #[test]
    fn a_nats_traceparent_is_found_whatever_the_case_of_its_name() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Traceparent",
            format!("00-{TRACE_ID}-{SPAN_ID}-01").as_str(),
        );
        let cx = extract_nats(&headers);
        assert_eq!(cx.span().span_context().trace_id().to_string(), TRACE_ID);
    }

    #[test]
    fn missing_or_malformed_headers_give_no_parent() {
        assert!(!extract_http(&http::HeaderMap::new()).has_active_span());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-not-a-trace-01".parse().unwrap());
        assert!(!extract_http(&headers).span().span_context().is_valid());
        let span = tracing::Span::none();
        assert!(!continue_trace(&span, extract_http(&headers)));
    }

    #[test]
    fn nothing_is_injected_outside_a_traced_span() {
        let mut headers = http::HeaderMap::new();
        inject_http(&mut headers);
        assert!(headers.is_empty());
        assert_eq!(current_trace_id(), None);
    }
}
