//! An in-test OTLP receiver: the collector's `TraceService` over tonic, keeping every
//! span it is sent, so tests can check the traces mailroom exports.
//!
//! The tracing subscriber is global to the test process, while each test runs its own
//! application: so one receiver serves the whole process, and each test picks its own
//! traces out of it (by trace id, or by the email id on a span).

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
    trace::v1::{span::SpanKind, status::StatusCode},
};

/// A span as received, with ids in lowercase hex (the `traceparent` spelling).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    pub attributes: BTreeMap<String, String>,
    pub failed: bool,
    pub service_name: String,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves on the current runtime, which must outlive the
    /// receiver's use.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Collector {
            spans: spans.clone(),
        });
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("the OTLP receiver serves");
        });
        Receiver { addr, spans }
    }

    /// The value for `telemetry.otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans received so far of one trace.
    pub fn trace(&self, trace_id: &str) -> Trace {
        Trace(
            self.spans
                .lock()
                .unwrap()
                .iter()
                .filter(|span| span.trace_id == trace_id)
                .cloned()
                .collect(),
        )
    }
}

/// The spans of one trace.
#[derive(Debug, Clone)]
pub struct Trace(pub Vec<ReceivedSpan>);

impl Trace {
    pub fn span(&self, span_id: &str) -> Option<&ReceivedSpan> {
        self.0.iter().find(|span| span.span_id == span_id)
    }

    pub fn named(&self, name: &str) -> Vec<&ReceivedSpan> {
        self.0.iter().filter(|span| span.name == name).collect()
    }

    /// `span` and its ancestors, innermost first, as far as the parent links reach
    /// inside this trace.
    pub fn lineage<'a>(&'a self, span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
        let mut lineage = vec![span];
        let mut seen = HashSet::from([span.span_id.as_str()]);
        let mut current = span;
        while let Some(parent) = self.span(&current.parent_span_id) {
            if !seen.insert(parent.span_id.as_str()) {
                break;
            }
            lineage.push(parent);
            current = parent;
        }
        lineage
    }

    /// A readable tree of the trace for assertion messages.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|s| {
                format!(
                    "{} parent={} {:?} {}",
                    s.span_id,
                    if s.parent_span_id.is_empty() {
                        "-"
                    } else {
                        &s.parent_span_id
                    },
                    s.kind,
                    s.name
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[async_trait::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                        failed: span
                            .status
                            .is_some_and(|status| status.code == StatusCode::Error as i32),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| {
                                (
                                    kv.key.clone(),
                                    kv.value.as_ref().map(text).unwrap_or_default(),
                                )
                            })
                            .collect(),
                        name: span.name,
                        service_name: service_name.clone(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}
