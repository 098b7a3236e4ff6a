//! Tower layers every gRPC call goes through, outermost first:
//!
//! 1. [`ObserveLayer`]: a tracing span per call named by its method
//!    (`emailService.EmailService/Create`), and the `grpc_requests_total` /
//!    `grpc_request_duration_seconds` metrics by method and status code;
//! 2. [`CatchPanicLayer`]: a panicking handler answers INTERNAL and the server carries on;
//! 3. the authorization hook ([`super::auth`]);
//! 4. [`TimeoutLayer`]: `grpc.request_timeout`, answered DEADLINE_EXCEEDED.
//!
//! Methods are named from the served descriptor sets; any other path is labelled
//! `unknown`, so a caller cannot grow the metrics with made-up names.

use std::{
    any::Any,
    collections::HashSet,
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{FutureExt, future::BoxFuture};
use http::{Request, Response};
use prost::Message;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::Metrics;

use super::connection::ConnectionInfo;

/// The method label of any path that is not a served method.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The full names (`package.Service/Method`) of the methods the server serves.
#[derive(Debug, Clone)]
pub struct KnownMethods(Arc<HashSet<Arc<str>>>);

impl KnownMethods {
    /// Collects every method of every service in encoded `FileDescriptorSet`s.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> anyhow::Result<Self> {
        let mut methods = HashSet::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)
                .context("decoding a file descriptor set")?;
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(Arc::from(format!(
                            "{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        )));
                    }
                }
            }
        }
        Ok(KnownMethods(Arc::new(methods)))
    }

    /// The method a request path (`/package.Service/Method`) names, or [`UNKNOWN_METHOD`].
    pub fn name(&self, path: &str) -> Arc<str> {
        self.0
            .get(path.trim_start_matches('/'))
            .cloned()
            .unwrap_or_else(|| Arc::from(UNKNOWN_METHOD))
    }
}

/// The span of one call. Its name follows OpenTelemetry's RPC conventions through
/// `otel.name`; it continues the caller's trace when the metadata carries a W3C
/// `traceparent`.
pub fn call_span(method: &str, request: &Request<Body>) -> tracing::Span {
    let (service, name) = method.split_once('/').unwrap_or((method, ""));
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %name,
        rpc.grpc.status_code = tracing::field::Empty,
        client.address = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(addr) = request
        .extensions()
        .get::<ConnectionInfo>()
        .and_then(|info| info.remote_addr)
    {
        span.record("client.address", tracing::field::display(addr.ip()));
    }
    // Before the span is first entered, so it takes the caller's trace id.
    crate::telemetry::propagation::continue_trace(
        &span,
        crate::telemetry::propagation::extract_http(request.headers()),
    );
    span
}

/// The status code of a response: tonic puts an error's code in the headers
/// (trailers-only response); a unary call that succeeded has none there.
fn code_of(response: &Response<Body>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .map_or(Code::Ok, |value| Code::from_bytes(value.as_bytes()))
}

/// The canonical name of a status code, as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    methods: KnownMethods,
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(methods: KnownMethods, metrics: Metrics) -> Self {
        ObserveLayer { methods, metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            methods: self.methods.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    methods: KnownMethods,
    metrics: Metrics,
}

/// Records a call once: with its code when it finishes, as CANCELLED when it is dropped
/// unfinished (the client went away or its deadline passed).
struct Recorder {
    metrics: Metrics,
    method: Arc<str>,
    started: Instant,
    recorded: bool,
}

impl Recorder {
    fn record(&mut self, code: Code) {
        self.recorded = true;
        self.metrics
            .grpc_requests
            .with_label_values(&[&*self.method, code_name(code)])
            .inc();
        self.metrics
            .grpc_duration
            .with_label_values(&[&*self.method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(Code::Cancelled);
        }
    }
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = self.methods.name(request.uri().path());
        let span = call_span(&method, &request);
        let mut recorder = Recorder {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            recorded: false,
        };
        let response = span.in_scope(|| self.inner.call(request));
        let call_span = span.clone();
        Box::pin(
            async move {
                let result = response.await;
                let code = match &result {
                    Ok(response) => code_of(response),
                    Err(_) => Code::Unknown,
                };
                recorder.record(code);
                call_span.record("rpc.grpc.status_code", code as i32);
                tracing::debug!(
                    code = code_name(code),
                    elapsed_ms = recorder.started.elapsed().as_millis() as u64,
                    "gRPC call answered"
                );
                result
            }
            .instrument(span),
        )
    }
}

/// Answers INTERNAL for a handler that panics, instead of resetting the stream; the
/// panic is logged with its message.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for CatchPanic<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The request is gone either way and nothing is shared with the handler that a
        // panic could leave half-updated, so unwind safety holds.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(response) => Box::pin(async move {
                match AssertUnwindSafe(response).catch_unwind().await {
                    Ok(result) => result,
                    Err(panic) => Ok(panic_response(panic)),
                }
            }),
            Err(panic) => Box::pin(std::future::ready(Ok(panic_response(panic)))),
        }
    }
}

fn panic_response(panic: Box<dyn Any + Send>) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a text panic)");
    tracing::error!(
        panic = message,
        "a gRPC handler panicked; answering INTERNAL"
    );
    Status::internal("the request could not be completed").into_http()
}

/// Answers DEADLINE_EXCEEDED when a call has no answer within the server's time limit.
/// A shorter deadline sent by the client (`grpc-timeout`) is enforced by tonic.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request<Body>> for Timeout<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let timeout = self.timeout;
        let response = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(result) => result,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "no answer within the server's limit of {}",
                    humantime::format_duration(timeout)
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    fn request(path: &str) -> Request<Body> {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    fn methods() -> KnownMethods {
        KnownMethods::from_descriptor_sets(&[super::super::pb::FILE_DESCRIPTOR_SET]).unwrap()
    }

    #[test]
    fn methods_are_named_from_the_descriptors_and_anything_else_is_unknown() {
        let methods = methods();
        assert_eq!(
            &*methods.name("/emailService.EmailService/GetByID"),
            "emailService.EmailService/GetByID"
        );
        assert_eq!(
            &*methods.name("/emailService.EmailService/Drop"),
            UNKNOWN_METHOD
        );
        assert_eq!(&*methods.name("/x/y/z"), UNKNOWN_METHOD);
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_the_next_call_is_served() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let handler = tower::service_fn(move |_request: Request<Body>| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    panic!("the first call breaks");
                }
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        });
        let metrics = Metrics::new();
        let service = ServiceBuilder::new()
            .layer(ObserveLayer::new(methods(), metrics.clone()))
            .layer(CatchPanicLayer)
            .service(handler);
        let path = "/emailService.EmailService/Create";

        let first = service.clone().oneshot(request(path)).await.unwrap();
        assert_eq!(first.headers()["grpc-status"], "13", "INTERNAL");
        let status = Status::from_header_map(first.headers()).unwrap();
        assert!(!status.message().contains("breaks"), "{status:?}");

        let second = service.oneshot(request(path)).await.unwrap();
        assert!(second.headers().get("grpc-status").is_none());
        let text = metrics.render();
        assert!(
            text.contains(r#"mailroom_grpc_requests_total{code="INTERNAL",method="emailService.EmailService/Create"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mailroom_grpc_requests_total{code="OK",method="emailService.EmailService/Create"} 1"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_over_the_time_limit_answers_deadline_exceeded() {
        let handler = tower::service_fn(|_request: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let service = TimeoutLayer::new(Duration::from_secs(30)).layer(handler);
        let response = service.oneshot(request("/any")).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_counts_as_cancelled() {
        let handler = tower::service_fn(|_request: Request<Body>| {
            std::future::pending::<Result<Response<Body>, Infallible>>()
        });
        let metrics = Metrics::new();
        let service = ObserveLayer::new(methods(), metrics.clone()).layer(handler);
        let call = service.oneshot(request("/made/up"));
        assert!(
            tokio::time::timeout(Duration::from_millis(10), call)
                .await
                .is_err()
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"mailroom_grpc_requests_total{code="CANCELLED",method="unknown"} 1"#),
            "{text}"
        );
    }
}
