//! NATS ingress: create events from any producer, and what happens to bad ones.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Consumer, TestApp, email_body, eventually, maildev_messages_to, spawn_app, unique_recipient,
    wait_for,
};

async fn emails_to(app: &TestApp, to: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT email_id::text, status FROM emails WHERE address_to = $1")
        .bind(to)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_create_event_from_a_plain_nats_client_is_delivered() {
    let app = spawn_app().await;
    let to = unique_recipient("event");
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&email_body(&to)).unwrap(),
    )
    .await;

    let rows = wait_for(
        Duration::from_secs(15),
        "the event's email is stored",
        || async { Some(emails_to(&app, &to).await).filter(|rows| !rows.is_empty()) },
    )
    .await;
    let id = rows[0].0.clone();
    app.wait_for_status(&id, "sent", Duration::from_secs(15))
        .await;
    eventually(
        Duration::from_secs(5),
        "the mail reaches maildev",
        || async { !maildev_messages_to(&to).await.is_empty() },
    )
    .await;

    let page: Value = app
        .client
        .get(app.url("/api/v1/email/search"))
        .query(&[("search", to.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalCount"], 1, "search finds it");
}

#[tokio::test]
async fn a_create_event_may_choose_the_email_id() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7().to_string();
    let mut event = email_body(&unique_recipient("chosen"));
    event["emailID"] = json!(id);
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&event).unwrap(),
    )
    .await;
    app.wait_for_status(&id, "sent", Duration::from_secs(15))
        .await;
}

#[tokio::test]
async fn a_create_event_with_the_same_idempotency_key_twice_makes_one_email() {
    let app = spawn_app().await;
    let to = unique_recipient("idem-event");
    let mut event = email_body(&to);
    event["idempotencyKey"] = json!("event-key-1");
    for _ in 0..2 {
        app.publish_raw(
            &app.subject("mail:create"),
            serde_json::to_vec(&event).unwrap(),
        )
        .await;
    }
    eventually(Duration::from_secs(15), "the email is sent", || async {
        emails_to(&app, &to)
            .await
            .iter()
            .any(|(_, status)| status == "sent")
    })
    .await;
    // Both events handled (acknowledged), so nothing more can come of them.
    let settled = app.settled(Consumer::Create).await;
    assert_eq!(
        settled.delivered.consumer_sequence, 2,
        "each event delivered once"
    );
    assert_eq!(emails_to(&app, &to).await.len(), 1);
}

async fn dead_letters_with(app: &TestApp, needle: &str, at_least: usize) -> Vec<Value> {
    app.messages_on(
        &app.subject("mail:errors"),
        at_least,
        Duration::from_secs(10),
    )
    .await
    .into_iter()
    .filter(|letter| letter["data"].as_str().is_some_and(|d| d.contains(needle)))
    .collect()
}

#[tokio::test]
async fn an_invalid_create_event_is_dead_lettered_once_and_not_redelivered() {
    let app = spawn_app().await;
    let mut event = email_body("not-an-address");
    event["subject"] = json!("invalid-event-marker");
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&event).unwrap(),
    )
    .await;

    let letters = dead_letters_with(&app, "invalid-event-marker", 1).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["subject"], app.subject("mail:create"));
    assert!(
        letter["error"].as_str().unwrap().contains("to:"),
        "{letter}"
    );
    assert_eq!(letter["deliveries"], 1);
    assert!(
        letter["data"].as_str().unwrap().contains("not-an-address"),
        "data is the original payload"
    );

    // Acknowledged after its one delivery, so it is never delivered again; its dead
    // letter went out before the acknowledgement.
    let settled = app.settled(Consumer::Create).await;
    assert_eq!(settled.delivered.consumer_sequence, 1, "delivered once");
    assert_eq!(settled.num_redelivered, 0);
    assert_eq!(
        dead_letters_with(&app, "invalid-event-marker", 1)
            .await
            .len(),
        1
    );
    assert_eq!(app.stored_emails().await, 0);
}

#[tokio::test]
async fn an_undecodable_create_event_is_dead_lettered_with_its_text() {
    let app = spawn_app().await;
    app.publish_raw(
        &app.subject("mail:create"),
        "this is not json, poison-marker",
    )
    .await;
    let letters = dead_letters_with(&app, "poison-marker", 1).await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0].get("dataEncoding").is_none());
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a valid create event")
    );
}

#[tokio::test]
async fn a_binary_create_event_is_dead_lettered_in_base64() {
    let app = spawn_app().await;
    app.publish_raw(&app.subject("mail:create"), vec![0xff, 0xfe, 0x00, 0x01])
        .await;
    let letters = app
        .messages_on(&app.subject("mail:errors"), 1, Duration::from_secs(10))
        .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["dataEncoding"], "base64");
    assert_eq!(letters[0]["data"], "//4AAQ==");
}

#[tokio::test]
async fn a_send_event_for_an_unknown_email_is_dead_lettered() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7().to_string();
    app.publish_raw(
        &app.subject("mail:send"),
        serde_json::to_vec(&json!({"emailID": id})).unwrap(),
    )
    .await;
    let letters = dead_letters_with(&app, &id, 1).await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0]["error"].as_str().unwrap().contains("no email"));
}

#[tokio::test]
async fn nats_outcomes_are_counted_by_subject_and_outcome() {
    let app = spawn_app().await;
    app.publish_raw(&app.subject("mail:create"), "garbage")
        .await;
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&email_body(&unique_recipient("m"))).unwrap(),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "both events are counted",
        || async {
            let metrics = app.metrics().await;
            metrics.contains(
                "mailroom_nats_messages_total{outcome=\"dead\",subject=\"mail:create\"} 1",
            ) && metrics
                .contains("mailroom_nats_messages_total{outcome=\"ok\",subject=\"mail:create\"} 1")
        },
    )
    .await;
}

#[tokio::test]
async fn a_create_event_with_a_line_break_in_the_subject_is_refused() {
    let app = spawn_app().await;
    let mut event = email_body(&unique_recipient("crlf"));
    event["subject"] = json!("crlf-marker\r\nBcc: victim@example.com");
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&event).unwrap(),
    )
    .await;
    let letters = dead_letters_with(&app, "crlf-marker", 1).await;
    assert_eq!(letters.len(), 1);
    let error = letters[0]["error"].as_str().unwrap();
    assert!(
        error.contains("subject") && error.contains("line breaks"),
        "{error}"
    );
    assert_eq!(app.stored_emails().await, 0);
}
