//! Traces as a Jaeger user sees them: one connected trace per email, from the REST
//! request (or a caller's `traceparent`, or an outside producer's event) through NATS
//! and the workers to the SMTP send; and a collector that is down costs nothing.
//!
//! Spans arrive at the process-wide in-test OTLP receiver (`helpers::otlp`); each test
//! finds its own trace through the email id on its `smtp.send` span or through the
//! trace id it sent.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;

use crate::helpers::{
    Cleanup, Isolation, TestApp, closed_port, email_body, eventually, free_port,
    otlp::{ReceivedSpan, Trace},
    spawn_app, spawn_app_with, telemetry, unique_recipient,
};

const WITHIN: Duration = Duration::from_secs(30);
/// A caller's trace and span ids, new for each test so traces of parallel tests never
/// mix.
fn caller_ids() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace_id, span_id)
}

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// Waits until the trace of the SMTP send of `email_id` is exported as far back as a
/// span `entry` accepts, following parent links only; returns the trace and the
/// lineage of the SMTP span, innermost first.
async fn delivery_trace(
    email_id: &str,
    entry: impl Fn(&ReceivedSpan) -> bool,
) -> (Trace, Vec<ReceivedSpan>) {
    let telemetry = telemetry();
    let deadline = Instant::now() + WITHIN;
    loop {
        telemetry.flush().await;
        let smtp =
            telemetry.receiver.spans().into_iter().find(|span| {
                span.name == "smtp.send" && span.attribute("email.id") == Some(email_id)
            });
        let mut last = String::from("no smtp.send span yet");
        if let Some(smtp) = smtp {
            let trace = telemetry.receiver.trace(&smtp.trace_id);
            let lineage: Vec<ReceivedSpan> = trace.lineage(&smtp).into_iter().cloned().collect();
            if lineage.last().is_some_and(&entry) {
                return (trace, lineage);
            }
            last = trace.describe();
        }
        assert!(
            Instant::now() < deadline,
            "the trace of {email_id} did not connect within {WITHIN:?}:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(lineage: &[ReceivedSpan]) -> Vec<&str> {
    lineage.iter().map(|span| span.name.as_str()).collect()
}

fn is_rest_create(span: &ReceivedSpan) -> bool {
    span.name == "POST /api/v1/email"
}

/// The spans a hop through NATS adds to a lineage, innermost first.
fn nats_hop(app: &TestApp, subject: &str) -> [String; 2] {
    let subject = app.subject(subject);
    [format!("process {subject}"), format!("publish {subject}")]
}

fn assert_kinds(lineage: &[ReceivedSpan]) {
    for span in lineage {
        let expected = match span.name.split(' ').next().unwrap() {
            "POST" => SpanKind::Server,
            "process" => SpanKind::Consumer,
            "publish" => SpanKind::Producer,
            "smtp.send" => SpanKind::Client,
            _ => SpanKind::Internal,
        };
        assert_eq!(span.kind, expected, "{}", span.name);
        assert_eq!(span.service_name, "mailroom");
    }
}

#[tokio::test]
async fn a_rest_create_is_one_trace_from_the_request_to_the_smtp_send() {
    let app = spawn_app().await;
    let email = app
        .create_email(&email_body(&unique_recipient("traced")))
        .await;
    let id = email["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", WITHIN).await;

    let (trace, lineage) = delivery_trace(id, is_rest_create).await;

    let [process_send, publish_send] = nats_hop(&app, "mail:send");
    assert_eq!(
        names(&lineage),
        // The send worker handles messages in batches, but each email's SMTP send runs
        // in the span of the message that asked for it.
        [
            "smtp.send",
            &process_send,
            &publish_send,
            "usecase.create",
            "rest.create",
            "POST /api/v1/email",
        ],
        "{}",
        trace.describe()
    );
    assert_kinds(&lineage);
    let server = lineage.last().unwrap();
    assert!(server.parent_span_id.is_empty(), "a new trace starts here");
    assert_eq!(server.attribute("http.route"), Some("/api/v1/email"));
    assert_eq!(server.attribute("http.response.status_code"), Some("201"));
    let consumer = &lineage[1];
    assert_eq!(consumer.attribute("messaging.system"), Some("nats"));
    assert_eq!(
        consumer.attribute("messaging.destination.name"),
        Some(app.subject("mail:send").as_str())
    );
    // The storage calls hang in the same trace.
    let insert = trace.named("postgres.insert");
    assert_eq!(insert.len(), 1, "{}", trace.describe());
    assert_eq!(insert[0].attribute("db.system.name"), Some("postgresql"));
    assert_eq!(insert[0].kind, SpanKind::Client);
}

#[tokio::test]
async fn an_async_create_is_one_trace_through_both_workers() {
    let app = spawn_app().await;
    let response = app
        .post_email_async(&email_body(&unique_recipient("traced-async")))
        .await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    let id = accepted["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", WITHIN).await;

    let (trace, lineage) = delivery_trace(id, is_rest_create).await;

    let [process_send, publish_send] = nats_hop(&app, "mail:send");
    let [process_create, publish_create] = nats_hop(&app, "mail:create");
    assert_eq!(
        names(&lineage),
        [
            "smtp.send",
            &process_send,
            &publish_send,
            &process_create,
            &publish_create,
            "usecase.accept",
            "rest.create",
            "POST /api/v1/email",
        ],
        "{}",
        trace.describe()
    );
    assert_kinds(&lineage);
    assert_eq!(
        lineage
            .last()
            .unwrap()
            .attribute("http.response.status_code"),
        Some("202")
    );
}

#[tokio::test]
async fn a_callers_traceparent_is_continued_down_to_the_smtp_send() {
    let app = spawn_app().await;
    let (caller_trace, caller) = caller_ids();
    let response = app
        .client
        .post(app.url("/api/v1/email"))
        .header("traceparent", traceparent(&caller_trace, &caller))
        .json(&email_body(&unique_recipient("traced-caller")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let email: serde_json::Value = response.json().await.unwrap();
    let id = email["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", WITHIN).await;

    let (trace, lineage) = delivery_trace(id, |span| span.parent_span_id == caller).await;

    let server = lineage.last().unwrap();
    assert_eq!(server.name, "POST /api/v1/email", "{}", trace.describe());
    assert_eq!(server.trace_id, caller_trace);
    assert_eq!(
        lineage[0].trace_id, caller_trace,
        "the SMTP span carries the caller's trace id"
    );
}

#[tokio::test]
async fn a_create_event_with_a_traceparent_from_another_producer_is_continued() {
    let app = spawn_app().await;
    let (caller_trace, caller) = caller_ids();
    let id = uuid::Uuid::now_v7().to_string();
    let mut event = email_body(&unique_recipient("traced-event"));
    event["emailID"] = json!(id);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent(&caller_trace, &caller).as_str());
    app.nats
        .publish_with_headers(
            app.subject("mail:create"),
            headers,
            serde_json::to_vec(&event).unwrap().into(),
        )
        .await
        .unwrap();
    app.nats.flush().await.unwrap();
    app.wait_for_status(&id, "sent", WITHIN).await;

    let (trace, lineage) = delivery_trace(&id, |span| span.parent_span_id == caller).await;

    let [process_create, _] = nats_hop(&app, "mail:create");
    let consumer = lineage.last().unwrap();
    assert_eq!(consumer.name, process_create, "{}", trace.describe());
    assert_eq!(consumer.kind, SpanKind::Consumer);
    assert!(lineage.iter().all(|span| span.trace_id == caller_trace));
    assert_eq!(lineage[0].name, "smtp.send");
}

#[tokio::test]
async fn a_failed_delivery_marks_the_smtp_and_consumer_spans_as_errors() {
    let smtp_port = closed_port();
    let app = spawn_app_with(|settings| {
        settings.smtp.port = smtp_port;
        settings.delivery.max_attempts = 1;
    })
    .await;
    let email = app
        .create_email(&email_body(&unique_recipient("traced-failure")))
        .await;
    let id = email["emailID"].as_str().unwrap();
    app.wait_for_status(id, "failed", WITHIN).await;

    let (trace, lineage) = delivery_trace(id, is_rest_create).await;

    let [process_send, _] = nats_hop(&app, "mail:send");
    assert!(lineage[0].failed, "the SMTP span failed: {:?}", lineage[0]);
    let consumer = lineage
        .iter()
        .find(|span| span.name == process_send)
        .unwrap_or_else(|| panic!("{}", trace.describe()));
    assert!(
        consumer.failed,
        "the message was dead-lettered: {consumer:?}"
    );
    assert_eq!(consumer.attribute("outcome"), Some("dead"));
    assert!(
        !lineage.last().unwrap().failed,
        "the request itself succeeded"
    );
}

/// Reads a child's output on a thread, so a chatty child never blocks on a full pipe.
fn drain(mut output: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = output.read_to_string(&mut text);
        text
    })
}

#[tokio::test]
async fn an_unreachable_collector_is_said_once_and_neither_delays_requests_nor_floods_the_log() {
    let isolation = Isolation::new();
    let _cleanup = Cleanup(isolation.clone());
    let (http, grpc, metrics, collector) = (free_port(), free_port(), free_port(), closed_port());
    let mut child = isolation
        .command()
        .env("MAILROOM__HTTP__ADDR", format!("127.0.0.1:{http}"))
        .env("MAILROOM__GRPC__ADDR", format!("127.0.0.1:{grpc}"))
        .env("MAILROOM__METRICS__ADDR", format!("127.0.0.1:{metrics}"))
        .env(
            "MAILROOM__TELEMETRY__OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector}"),
        )
        // An export attempt every 50 ms: many failures in a few seconds.
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());

    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http}");
    eventually(WITHIN, "the binary becomes ready", || async {
        client
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    for _ in 0..20 {
        let started = Instant::now();
        let response = client
            .post(format!("{base}/api/v1/email"))
            .bearer_auth(crate::helpers::TEST_API_KEY)
            .json(&email_body(&unique_recipient("untraced")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request took {:?} with the collector down",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "did not stop within 15 s of SIGTERM with the collector down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = stdout.join().unwrap() + &stderr.join().unwrap();
    assert!(exit.success(), "exit status {exit:?}:\n{output}");
    let complaints: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("opentelemetry"))
        .collect();
    assert!(
        complaints.len() <= 5,
        "{} lines about the exporter:\n{}",
        complaints.len(),
        complaints.join("\n")
    );
    // A quiet first run: the absent collector is said once, at WARN, with what to do;
    // no ERROR for a dependency that is optional.
    let absent: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("no OpenTelemetry collector answers"))
        .collect();
    assert_eq!(absent.len(), 1, "{output}");
    assert!(
        absent[0].contains("WARN") && absent[0].contains("make local"),
        "{}",
        absent[0]
    );
    let errors: Vec<&str> = output.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
}

fn is_grpc_create(span: &ReceivedSpan) -> bool {
    span.name == "emailService.EmailService/Create"
}

#[tokio::test]
async fn a_grpc_create_is_one_trace_from_the_call_to_the_smtp_send() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let created = client
        .create(crate::grpc::create_req(&unique_recipient("traced-grpc")))
        .await
        .unwrap()
        .into_inner();
    app.wait_for_status(&created.email_id, "sent", WITHIN).await;

    let (trace, lineage) = delivery_trace(&created.email_id, is_grpc_create).await;

    let server = lineage.last().unwrap();
    assert_eq!(server.kind, SpanKind::Server, "{}", trace.describe());
    assert!(server.parent_span_id.is_empty(), "a new trace starts here");
    assert_eq!(server.attribute("rpc.system"), Some("grpc"));
    let names = names(&lineage);
    let [process_send, publish_send] = nats_hop(&app, "mail:send");
    for hop in ["smtp.send", &process_send, &publish_send, "usecase.create"] {
        assert!(names.contains(&hop), "{hop} missing from {names:?}");
    }
}

#[tokio::test]
async fn a_grpc_callers_traceparent_is_continued_down_to_the_smtp_send() {
    let app = spawn_app().await;
    let (caller_trace, caller) = caller_ids();
    let parent = traceparent(&caller_trace, &caller);
    let mut client = mailroom::grpc::pb::email_service_client::EmailServiceClient::with_interceptor(
        app.grpc_channel().await,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("traceparent", parent.parse().unwrap());
            crate::helpers::with_test_key(request)
        },
    );
    let created = client
        .create(crate::grpc::create_req(&unique_recipient(
            "traced-grpc-caller",
        )))
        .await
        .unwrap()
        .into_inner();
    app.wait_for_status(&created.email_id, "sent", WITHIN).await;

    let (trace, lineage) =
        delivery_trace(&created.email_id, |span| span.parent_span_id == caller).await;
    let server = lineage.last().unwrap();
    assert!(is_grpc_create(server), "{}", trace.describe());
    assert_eq!(lineage[0].trace_id, caller_trace);
}
