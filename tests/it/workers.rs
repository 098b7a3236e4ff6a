//! The workers, driven one message at a time (no NATS delivery, no real backoff waits),
//! and the pool's behaviour on shutdown and on a crash.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use mailroom::workers::{CreateHandler, Handler, Inbound, SendHandler, Verdict};
use serde_json::json;

use sqlx::{Connection, PgConnection};

use crate::helpers::{
    Consumer, TestApp, admin_database_url, closed_port, email_body,
    smtp::{Behaviour, FakeSmtp},
    spawn_app_with, spawn_sibling, unique_recipient,
};

fn message(subject: &str, payload: serde_json::Value, delivered: i64) -> Inbound {
    Inbound {
        subject: subject.to_owned(),
        payload: Bytes::from(serde_json::to_vec(&payload).unwrap()),
        msg_id: None,
        client: None,
        stream_sequence: 42,
        delivered,
        published: Utc::now(),
        span: tracing::Span::none(),
    }
}

/// Stores a queued email directly, with no send event, so only the test delivers it.
async fn stored_email(app: &TestApp) -> String {
    let id = uuid::Uuid::now_v7();
    app.store_without_event(id, &unique_recipient("driven"), "driven", Duration::ZERO)
        .await;
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
    assert_eq!(app.stored_emails().await, 1);
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

fn create_handler(app: &TestApp) -> CreateHandler {
    CreateHandler {
        mailroom: app.mailroom.clone(),
        stream_incarnation: "MAIL@batch".into(),
        max_event_bytes: 1 << 20,
        max_deliver: 5,
        backoff: vec![Duration::from_secs(1)],
    }
}

#[tokio::test]
async fn a_batch_of_create_events_gets_one_verdict_per_message() {
    let app = spawn_app_with(|s| s.reconciler.enabled = false).await;
    let handler = create_handler(&app);
    let mut keyed = email_body(&unique_recipient("keyed"));
    keyed["idempotencyKey"] = json!("batch-key");
    let mut same_key_other_content = email_body(&unique_recipient("other"));
    same_key_other_content["idempotencyKey"] = json!("batch-key");
    let mut batch = vec![
        message("mail:create", email_body(&unique_recipient("one")), 1),
        message("mail:create", email_body("not-an-address"), 1),
        message("mail:create", keyed.clone(), 1),
        message("mail:create", keyed, 1),
        message("mail:create", same_key_other_content, 1),
    ];
    for (sequence, message) in batch.iter_mut().enumerate() {
        message.stream_sequence = sequence as u64 + 1;
    }

    let verdicts = handler.handle_batch(&batch).await;

    assert_eq!(verdicts.len(), 5);
    assert_eq!(verdicts[0], Verdict::Ack);
    assert!(
        matches!(&verdicts[1], Verdict::DeadLetter { reason, .. } if reason.contains("to:")),
        "{:?}",
        verdicts[1]
    );
    assert_eq!(verdicts[2], Verdict::Ack);
    assert_eq!(
        verdicts[3],
        Verdict::Ack,
        "the same key and content again: a replay"
    );
    assert!(
        matches!(&verdicts[4], Verdict::DeadLetter { reason, .. } if reason.contains("batch-key")),
        "the same key with other content: a conflict, {:?}",
        verdicts[4]
    );
    assert_eq!(app.stored_emails().await, 2);
}

#[tokio::test]
async fn a_batch_naming_one_email_twice_sends_it_once() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.reconciler.enabled = false;
    })
    .await;
    let id = stored_email(&app).await;
    let other = stored_email(&app).await;
    let handler = send_handler(&app);
    let batch = [
        message("mail:send", json!({"emailID": id}), 1),
        message("mail:send", json!({"emailID": other}), 1),
        message("mail:send", json!({"emailID": id}), 1),
        message("mail:send", json!({"emailID": "not-a-uuid"}), 1),
    ];

    let verdicts = handler.handle_batch(&batch).await;

    assert_eq!(verdicts[0], Verdict::Ack);
    assert_eq!(verdicts[1], Verdict::Ack);
    assert!(
        matches!(verdicts[2], Verdict::Retry(_)),
        "the repeat waits: {:?}",
        verdicts[2]
    );
    assert!(
        matches!(verdicts[3], Verdict::DeadLetter { .. }),
        "{:?}",
        verdicts[3]
    );
    assert_eq!(smtp.received().len(), 2, "each email sent once");
    // Asked again later, the repeat finds the email sent.
    assert_eq!(handler.handle(&batch[2]).await, Verdict::Ack);
    assert_eq!(smtp.received().len(), 2);
}

#[tokio::test]
async fn a_busy_worker_stores_many_emails_per_transaction() {
    const EVENTS: usize = 200;
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let mut app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.reconciler.enabled = false;
    })
    .await;
    // Events pile up while no worker runs, as under load.
    app.stop().await;
    for i in 0..EVENTS {
        let mut event = email_body(&unique_recipient("busy"));
        event["subject"] = json!(format!("busy {i}"));
        app.publish_raw(
            &app.subject("mail:create"),
            serde_json::to_vec(&event).unwrap(),
        )
        .await;
    }
    // The counters are read from another database, so the test's own queries are not
    // counted: only the service's transactions are.
    let mut admin = PgConnection::connect(&admin_database_url()).await.unwrap();
    let database = app.isolation.database.clone();
    let commits = async |admin: &mut PgConnection| -> i64 {
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(&database)
            .fetch_one(admin)
            .await
            .unwrap()
    };
    // The first instance has stopped: its counters are reported by now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = commits(&mut admin).await;
    let started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut admin)
        .await
        .unwrap();

    let mut next = spawn_sibling(&app, |_| {}).await;
    crate::helpers::eventually(Duration::from_secs(30), "every email is sent", || async {
        smtp.received().len() >= EVENTS
    })
    .await;
    // Every attempt is recorded before its send event is acknowledged.
    next.settled(Consumer::Send).await;
    // A backend reports its counters in full when it exits: stop the instance and wait
    // until its connections are gone.
    next.stop().await;
    drop(next);
    let closing = std::time::Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_start >= $2",
        )
        .bind(&database)
        .bind(started)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            closing.elapsed() < Duration::from_secs(30),
            "the second instance still has {open} connections"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let used = commits(&mut admin).await - before;
    // One at a time, each email costs three commits (insert, claim, record): 600.
    assert!(
        used < EVENTS as i64,
        "{used} transactions for {EVENTS} emails: not batched"
    );
    assert!(used > 0, "the service's transactions were counted");
    assert_eq!(smtp.received().len(), EVENTS);
}
