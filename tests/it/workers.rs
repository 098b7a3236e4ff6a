//! The workers, driven one message at a time (no NATS delivery, no real backoff waits),
//! and the pool's behaviour on shutdown and on a crash.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use mailroom::workers::{CreateHandler, Handler, Inbound, SendHandler, Verdict};
use serde_json::json;

use crate::helpers::{
    TestApp, closed_port, email_body,
    smtp::{Behaviour, FakeSmtp},
    spawn_app_with, spawn_sibling, unique_recipient,
};

fn message(subject: &str, payload: serde_json::Value, delivered: i64) -> Inbound {
    Inbound {
        subject: subject.to_owned(),
        payload: Bytes::from(serde_json::to_vec(&payload).unwrap()),
        msg_id: None,
        stream_sequence: 42,
        delivered,
        published: Utc::now(),
    }
}

/// Stores a queued email directly, with no send event, so only the test delivers it.
async fn stored_email(app: &TestApp) -> String {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO emails (email_id, address_from, address_to, subject, message) \
         VALUES ($1, 'sender@example.com', $2, 'driven', 'step by step')",
    )
    .bind(id)
    .bind(unique_recipient("driven"))
    .execute(&app.db)
    .await
    .unwrap();
    id.to_string()
}

fn send_handler(app: &TestApp) -> SendHandler {
    SendHandler {
        mailroom: app.mailroom.clone(),
        max_deliver: 5,
        backoff: vec![Duration::from_secs(1)],
    }
}

#[tokio::test]
async fn a_transient_failure_asks_for_a_redelivery_after_the_backoff() {
    let port = closed_port();
    let app = spawn_app_with(|s| {
        s.smtp.port = port;
        s.reconciler.enabled = false;
        s.delivery.backoff = vec![Duration::from_secs(30), Duration::from_secs(120)];
    })
    .await;
    let id = stored_email(&app).await;
    let handler = send_handler(&app);

    let verdict = handler
        .handle(&message("mail:send", json!({"emailID": id}), 1))
        .await;
    let Verdict::Retry(delay) = verdict else {
        panic!("expected a retry, got {verdict:?}")
    };
    assert!(
        delay > Duration::from_secs(28) && delay <= Duration::from_secs(30),
        "{delay:?}"
    );

    // Redelivered early (a duplicate event): not due, so not sent again; retry later.
    let verdict = handler
        .handle(&message("mail:send", json!({"emailID": id}), 2))
        .await;
    assert!(
        matches!(verdict, Verdict::Retry(d) if d > Duration::from_secs(25)),
        "{verdict:?}"
    );
    let (attempts,): (i32,) =
        sqlx::query_as("SELECT attempts FROM emails WHERE email_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(attempts, 1, "the early redelivery made no attempt");
}

#[tokio::test]
async fn a_sent_email_is_acknowledged_without_sending_again() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.reconciler.enabled = false;
    })
    .await;
    let id = stored_email(&app).await;
    let handler = send_handler(&app);
    let send = message("mail:send", json!({"emailID": id}), 1);

    assert_eq!(handler.handle(&send).await, Verdict::Ack);
    assert_eq!(
        handler.handle(&send).await,
        Verdict::Ack,
        "a redelivery is a no-op"
    );
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn poison_send_events_are_dead_lettered() {
    let app = spawn_app_with(|s| s.reconciler.enabled = false).await;
    let handler = send_handler(&app);
    for payload in [
        json!("just a string"),
        json!({"emailID": "nope"}),
        json!({"emailID": uuid::Uuid::now_v7()}),
    ] {
        let verdict = handler
            .handle(&message("mail:send", payload.clone(), 1))
            .await;
        assert!(
            matches!(verdict, Verdict::DeadLetter { .. }),
            "{payload}: {verdict:?}"
        );
    }
}

#[tokio::test]
async fn a_create_event_over_the_size_limit_is_dead_lettered() {
    let app = spawn_app_with(|s| s.reconciler.enabled = false).await;
    let handler = CreateHandler {
        mailroom: app.mailroom.clone(),
        stream_incarnation: "test".into(),
        max_event_bytes: 1024,
        max_deliver: 5,
        backoff: vec![Duration::from_secs(1)],
    };
    let mut body = email_body(&unique_recipient("huge"));
    body["message"] = json!("x".repeat(2048));
    let verdict = handler.handle(&message("mail:create", body, 1)).await;
    let Verdict::DeadLetter { reason, .. } = verdict else {
        panic!("{verdict:?}")
    };
    assert!(reason.contains("exceeds the limit"), "{reason}");
}

#[tokio::test]
async fn a_create_event_handled_twice_stores_one_email() {
    let app = spawn_app_with(|s| s.reconciler.enabled = false).await;
    let handler = CreateHandler {
        mailroom: app.mailroom.clone(),
        stream_incarnation: "MAIL@test".into(),
        max_event_bytes: 1 << 20,
        max_deliver: 5,
        backoff: vec![Duration::from_secs(1)],
    };
    // An event with no id and no key, delivered again after a crash before its ack.
    let event = message("mail:create", email_body(&unique_recipient("twice")), 1);
    assert_eq!(handler.handle(&event).await, Verdict::Ack);
    let again = Inbound {
        delivered: 2,
        ..event
    };
    assert_eq!(handler.handle(&again).await, Verdict::Ack);
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM emails")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn shutdown_waits_for_a_send_in_flight() {
    let smtp = FakeSmtp::start(Behaviour::Slow(Duration::from_millis(1500))).await;
    let mut app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let created = app
        .create_email(&email_body(&unique_recipient("drain")))
        .await;
    let id = created["emailID"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "sending", Duration::from_secs(10))
        .await;

    app.stop().await;

    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM emails WHERE email_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        status, "sent",
        "the handler in flight finished before the stop"
    );
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn an_email_in_flight_when_the_process_dies_is_sent_by_the_next_one() {
    let hanging = FakeSmtp::start(Behaviour::Silent).await;
    let mut app = spawn_app_with(|s| {
        s.smtp.port = hanging.port;
        s.smtp.timeout = Duration::from_secs(1);
        s.nats.consumers.send.ack_wait = Duration::from_secs(2);
    })
    .await;
    let created = app
        .create_email(&email_body(&unique_recipient("crash")))
        .await;
    let id = created["emailID"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "sending", Duration::from_secs(10))
        .await;

    app.kill();

    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let next = spawn_sibling(&app, |s| s.smtp.port = smtp.port).await;
    next.wait_for_status(&id, "sent", Duration::from_secs(20))
        .await;
    assert_eq!(smtp.received().len(), 1);
}
