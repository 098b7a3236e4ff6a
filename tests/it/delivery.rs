//! Delivery over SMTP: the happy path into the real sink, and every way an SMTP server
//! can fail, with the statuses, attempts and dead letters they lead to.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    Consumer, TestApp, closed_port, email_body, maildev_messages_to,
    smtp::{Behaviour, FakeSmtp},
    spawn_app, spawn_app_with, unique_recipient, wait_for,
};

async fn attempts(app: &TestApp, id: &str) -> Vec<(i32, String, Option<i16>, Option<String>)> {
    sqlx::query_as(
        "SELECT attempt, outcome, smtp_code, smtp_text FROM email_attempts WHERE email_id = $1::uuid ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

async fn dead_letters_for(app: &TestApp, id: &str, at_least: usize) -> Vec<Value> {
    app.messages_on(
        &app.subject("mail:errors"),
        at_least,
        Duration::from_secs(5),
    )
    .await
    .into_iter()
    .filter(|letter| {
        letter["data"]
            .as_str()
            .is_some_and(|data| data.contains(id))
    })
    .collect()
}

#[tokio::test]
async fn a_created_email_is_sent_within_seconds_and_lands_in_the_smtp_sink() {
    let app = spawn_app().await;
    let to = unique_recipient("delivered");
    let created = app.create_email(&email_body(&to)).await;
    let id = created["emailID"].as_str().unwrap();

    let email = app
        .wait_for_status(id, "sent", Duration::from_secs(15))
        .await;
    assert_eq!(email["attempts"], 1);
    assert!(email["sentAt"].is_string(), "{email}");
    assert!(email["lastError"].is_null());

    let messages = wait_for(
        Duration::from_secs(5),
        "the mail reaches maildev",
        || async { Some(maildev_messages_to(&to).await).filter(|m| !m.is_empty()) },
    )
    .await;
    assert_eq!(messages.len(), 1, "sent exactly once");
    assert_eq!(messages[0]["subject"], "Hello from mailroom");
    assert!(
        messages[0]["text"]
            .as_str()
            .unwrap()
            .contains("This is a test message.")
    );

    let recorded = attempts(&app, id).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].1, "sent");
    assert_eq!(recorded[0].2, Some(250));
}

#[tokio::test]
async fn every_status_change_is_published_on_mail_status() {
    let app = spawn_app().await;
    let created = app
        .create_email(&email_body(&unique_recipient("status")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", Duration::from_secs(15))
        .await;

    let events = app
        .messages_on(&app.subject("mail:status"), 3, Duration::from_secs(5))
        .await;
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e["emailID"] == id)
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["queued", "sending", "sent"]);
    let sent = events.iter().find(|e| e["status"] == "sent").unwrap();
    assert_eq!(sent["attempt"], 1);
    assert!(
        sent["at"].is_string() && sent.get("error").is_some(),
        "{sent}"
    );
}

#[tokio::test]
async fn a_permanent_smtp_refusal_fails_the_email_at_once_with_one_dead_letter() {
    let smtp = FakeSmtp::start(Behaviour::RejectRecipient("550 5.1.1 no such user".into())).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let created = app
        .create_email(&email_body(&unique_recipient("refused")))
        .await;
    let id = created["emailID"].as_str().unwrap();

    let email = app
        .wait_for_status(id, "failed", Duration::from_secs(15))
        .await;
    assert_eq!(email["attempts"], 1, "a 5xx is not retried");
    assert!(
        email["lastError"]
            .as_str()
            .unwrap()
            .contains("no such user"),
        "{email}"
    );

    let recorded = attempts(&app, id).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].1.as_str(), recorded[0].2),
        ("permanent", Some(550))
    );

    let letters = dead_letters_for(&app, id, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["subject"], app.subject("mail:send"));
    for key in ["sequence", "timestamp", "error", "time", "deliveries"] {
        assert!(letter.get(key).is_some(), "{key} missing from {letter}");
    }
    assert!(letter["error"].as_str().unwrap().contains("no such user"));

    // The send event was acknowledged after its one delivery: it is never delivered
    // again, so no second attempt or dead letter can follow.
    let settled = app.settled(Consumer::Send).await;
    assert_eq!(settled.delivered.consumer_sequence, 1, "delivered once");
    assert_eq!(settled.num_redelivered, 0);
    assert_eq!(dead_letters_for(&app, id, 1).await.len(), 1);
    assert_eq!(smtp.recipients_seen(), 1);
}

#[tokio::test]
async fn a_transient_smtp_refusal_is_retried_until_it_succeeds() {
    let smtp = FakeSmtp::start(Behaviour::RejectFirst(
        1,
        "451 4.3.0 try again later".into(),
    ))
    .await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let created = app
        .create_email(&email_body(&unique_recipient("retried")))
        .await;
    let id = created["emailID"].as_str().unwrap();

    let email = app
        .wait_for_status(id, "sent", Duration::from_secs(15))
        .await;
    assert_eq!(email["attempts"], 2);
    let recorded = attempts(&app, id).await;
    assert_eq!(
        recorded
            .iter()
            .map(|a| (a.1.as_str(), a.2))
            .collect::<Vec<_>>(),
        vec![("transient", Some(451)), ("sent", Some(250))]
    );
    assert!(
        recorded[0]
            .3
            .as_deref()
            .unwrap()
            .contains("try again later")
    );
    assert_eq!(smtp.received().len(), 1);

    let statuses: Vec<String> = app
        .messages_on(&app.subject("mail:status"), 5, Duration::from_secs(5))
        .await
        .into_iter()
        .filter(|e| e["emailID"] == id)
        .map(|e| e["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses,
        vec!["queued", "sending", "deferred", "sending", "sent"]
    );
}

#[tokio::test]
async fn exhausted_transient_retries_fail_the_email_with_one_dead_letter() {
    let smtp = FakeSmtp::start(Behaviour::RejectRecipient("421 4.7.0 too busy".into())).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.delivery.max_attempts = 3;
    })
    .await;
    let created = app
        .create_email(&email_body(&unique_recipient("exhausted")))
        .await;
    let id = created["emailID"].as_str().unwrap();

    let email = app
        .wait_for_status(id, "failed", Duration::from_secs(20))
        .await;
    assert_eq!(email["attempts"], 3);
    assert!(
        email["lastError"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{email}"
    );
    let recorded = attempts(&app, id).await;
    assert_eq!(recorded.len(), 3);
    assert!(
        recorded
            .iter()
            .all(|a| a.1 == "transient" && a.2 == Some(421))
    );
    assert_eq!(dead_letters_for(&app, id, 1).await.len(), 1);
}

#[tokio::test]
async fn a_deferred_email_shows_its_next_attempt() {
    let smtp = FakeSmtp::start(Behaviour::RejectRecipient("450 4.2.1 mailbox busy".into())).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.delivery.backoff = vec![Duration::from_secs(60)];
    })
    .await;
    let created = app
        .create_email(&email_body(&unique_recipient("deferred")))
        .await;
    let id = created["emailID"].as_str().unwrap();

    let email = app
        .wait_for_status(id, "deferred", Duration::from_secs(15))
        .await;
    assert_eq!(email["attempts"], 1);
    assert!(
        email["lastError"]
            .as_str()
            .unwrap()
            .contains("mailbox busy")
    );
    let next: chrono::DateTime<chrono::Utc> =
        email["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    let wait = next - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::seconds(50) && wait <= chrono::Duration::seconds(60),
        "{wait}"
    );
}

#[tokio::test]
async fn an_smtp_server_that_never_answers_is_a_transient_failure() {
    let smtp = FakeSmtp::start(Behaviour::Silent).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.smtp.timeout = Duration::from_secs(1);
        s.delivery.max_attempts = 2;
    })
    .await;
    let created = app
        .create_email(&email_body(&unique_recipient("silent")))
        .await;
    let id = created["emailID"].as_str().unwrap();

    let email = app
        .wait_for_status(id, "failed", Duration::from_secs(20))
        .await;
    assert_eq!(email["attempts"], 2, "a timeout is retried");
    let recorded = attempts(&app, id).await;
    assert!(
        recorded.iter().all(|a| a.1 == "transient" && a.2.is_none()),
        "{recorded:?}"
    );
    assert_eq!(dead_letters_for(&app, id, 1).await.len(), 1);
}

#[tokio::test]
async fn a_refused_smtp_connection_is_retried_then_fails() {
    let port = closed_port();
    let app = spawn_app_with(|s| {
        s.smtp.port = port;
        s.delivery.max_attempts = 2;
    })
    .await;
    let created = app
        .create_email(&email_body(&unique_recipient("noserver")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    let email = app
        .wait_for_status(id, "failed", Duration::from_secs(20))
        .await;
    assert_eq!(email["attempts"], 2);
    assert_eq!(
        attempts(&app, id)
            .await
            .iter()
            .filter(|a| a.1 == "transient")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_busy_sender_reuses_its_pooled_connections_and_opens_no_others() {
    const EMAILS: usize = 24;
    // Slow enough that every message of a batch wants a connection at the same time.
    let smtp = FakeSmtp::start(Behaviour::Slow(Duration::from_millis(100))).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.smtp.pool_max_size = 2;
    })
    .await;
    // Health checks before this point tested the server with connections of their own.
    let before = smtp.sessions();
    let ids: Vec<String> = futures::future::join_all((0..EMAILS).map(|_| {
        let body = email_body(&unique_recipient("pooled"));
        let app = &app;
        async move {
            app.create_email(&body).await["emailID"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    }))
    .await;
    for id in &ids {
        app.wait_for_status(id, "sent", Duration::from_secs(30))
            .await;
    }
    assert_eq!(smtp.received().len(), EMAILS);
    assert!(
        smtp.peak_in_flight() <= 2,
        "{} messages at once over 2 pooled connections",
        smtp.peak_in_flight()
    );
    // Two in flight, and up to twice that many kept (one may be on its way back).
    let opened = smtp.sessions() - before;
    assert!(
        opened <= 4,
        "{opened} connections for {EMAILS} emails with a pool of 2: not reused"
    );
}
