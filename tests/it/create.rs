//! `POST /api/v1/email`: what is accepted, what is refused and how.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    closed_port, email_body, eventually, spawn_app, spawn_app_with, unique_recipient,
};

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "an error answers with a problem document"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status);
    assert!(
        problem["title"].is_string() && problem["type"].is_string(),
        "{problem}"
    );
    problem
}

#[tokio::test]
async fn create_stores_the_email_as_queued_and_answers_201_with_its_location() {
    let app = spawn_app().await;
    let to = unique_recipient("alice");
    let response = app.post_email(&email_body(&to)).await;

    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let email: Value = response.json().await.unwrap();
    let id = email["emailID"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/email/{id}"));
    assert_eq!(email["to"], to);
    assert_eq!(email["subject"], "Hello from mailroom");
    assert_eq!(email["message"], "This is a test message.");
    assert!(["queued", "sending", "sent"].contains(&email["status"].as_str().unwrap()));
    for key in ["createdAt", "attempts", "sentAt", "lastError", "status"] {
        assert!(email.get(key).is_some(), "{key} missing from {email}");
    }

    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM emails WHERE email_id = $1::uuid")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn create_publishes_a_send_event_with_the_email_id() {
    let app = spawn_app().await;
    let email = app
        .create_email(&email_body(&unique_recipient("bob")))
        .await;
    let events = app
        .messages_on(
            &app.subject("mail:send"),
            1,
            std::time::Duration::from_secs(5),
        )
        .await;
    assert!(
        events.iter().any(|e| e["emailID"] == email["emailID"]),
        "{events:?}"
    );
}

#[tokio::test]
async fn prefer_respond_async_answers_202_and_the_create_worker_stores_the_email() {
    let app = spawn_app().await;
    let to = unique_recipient("async");
    let response = app.post_email_async(&email_body(&to)).await;

    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["preference-applied"], "respond-async");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["emailID"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/email/{id}"));

    let email = app
        .wait_for_status(&id, "sent", std::time::Duration::from_secs(20))
        .await;
    assert_eq!(email["to"], to);
}

#[tokio::test]
async fn prefer_respond_async_stores_an_email_too_large_for_an_event_right_away() {
    let app = spawn_app_with(|settings| settings.nats.max_event_bytes = 1024).await;
    let mut body = email_body(&unique_recipient("async-large"));
    body["message"] = json!("x".repeat(2000));
    let response = app.post_email_async(&body).await;

    assert_eq!(response.status(), 201, "stored, not refused nor a 503");
    assert!(response.headers().get("preference-applied").is_none());
    let email: Value = response.json().await.unwrap();
    assert_eq!(email["message"], body["message"]);
    let id = email["emailID"].as_str().unwrap();
    assert_eq!(app.get_email(id).await.status(), 200);
}

#[tokio::test]
async fn prefer_respond_async_takes_the_largest_valid_message() {
    // 1 MiB is valid, but the NATS server's default max_payload is 1 MiB too, headers
    // and JSON included: such an email used to be answered 503 forever. It is not
    // delivered: a megabyte in the shared maildev would slow every test reading it.
    let app = spawn_app_with(|settings| settings.smtp.port = closed_port()).await;
    let mut body = email_body(&unique_recipient("async-max"));
    body["message"] = json!("x".repeat(mailroom::domain::MAX_MESSAGE_BYTES));
    let response = app.post_email_async(&body).await;

    let status = response.status().as_u16();
    assert!(status == 201 || status == 202, "answered {status}");
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["emailID"].as_str().unwrap().to_owned();
    let app = &app;
    let id = &id;
    eventually(
        Duration::from_secs(10),
        "the email is stored",
        || async move { app.get_email(id).await.status() == 200 },
    )
    .await;
}

#[tokio::test]
async fn the_same_idempotency_key_twice_gives_one_email() {
    let app = spawn_app().await;
    let body = email_body(&unique_recipient("idem"));
    let send = || {
        app.client
            .post(app.url("/api/v1/email"))
            .header("Idempotency-Key", "order-42")
            .json(&body)
            .send()
    };

    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();

    assert_eq!(first["emailID"], second["emailID"]);
    assert_eq!(app.stored_emails().await, 1);
}

#[tokio::test]
async fn the_same_idempotency_key_with_other_content_is_a_conflict() {
    let app = spawn_app().await;
    let key = ("Idempotency-Key", "order-43");
    let first = app
        .client
        .post(app.url("/api/v1/email"))
        .header(key.0, key.1)
        .json(&email_body(&unique_recipient("one")))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let second = app
        .client
        .post(app.url("/api/v1/email"))
        .header(key.0, key.1)
        .json(&email_body(&unique_recipient("two")))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(second, 409).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("order-43"),
        "{problem}"
    );
}

#[tokio::test]
async fn an_idempotency_key_over_255_characters_is_refused() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/v1/email"))
        .header("Idempotency-Key", "k".repeat(256))
        .json(&email_body(&unique_recipient("long")))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 400).await;
    assert_eq!(fields(&problem), vec!["idempotencyKey"]);
}

#[tokio::test]
async fn invalid_addresses_are_refused_naming_the_field() {
    let app = spawn_app().await;
    for (field, bad) in [
        ("to", "not-an-address"),
        ("from", "a@"),
        ("to", "Alice <alice@example.com"),
        ("from", "alice@example.com, bob@example.com"),
        ("to", ""),
    ] {
        let mut body = email_body("alice@example.com");
        body[field] = json!(bad);
        let problem = assert_problem(app.post_email(&body).await, 400).await;
        assert_eq!(fields(&problem), vec![field], "{bad:?}: {problem}");
    }
}

#[tokio::test]
async fn line_breaks_in_the_subject_are_refused() {
    let app = spawn_app().await;
    for bad in ["Hi\r\nBcc: victim@example.com", "Hi\nthere"] {
        let mut body = email_body("alice@example.com");
        body["subject"] = json!(bad);
        let problem = assert_problem(app.post_email(&body).await, 400).await;
        assert_eq!(fields(&problem), vec!["subject"]);
        assert_eq!(problem["errors"][0]["code"], "line_break");
    }
}

#[tokio::test]
async fn every_missing_field_is_named() {
    let app = spawn_app().await;
    let problem = assert_problem(app.post_email(&json!({})).await, 400).await;
    assert_eq!(fields(&problem), vec!["from", "to", "subject", "message"]);
    assert!(
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["code"] == "required")
    );
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/v1/email"))
        .header("Content-Type", "application/json")
        .body("{\"to\": ")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 400).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{problem}"
    );
}

#[tokio::test]
async fn unknown_json_fields_are_refused_by_name() {
    let app = spawn_app().await;
    let mut body = email_body("alice@example.com");
    body["blindCopy"] = json!("eve@example.com");
    let problem = assert_problem(app.post_email(&body).await, 400).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("blindCopy"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_wrong_json_type_names_the_field() {
    let app = spawn_app().await;
    let mut body = email_body("alice@example.com");
    body["subject"] = json!(42);
    let problem = assert_problem(app.post_email(&body).await, 400).await;
    assert_eq!(fields(&problem), vec!["subject"], "{problem}");
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_415() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/v1/email"))
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_problem(response, 415).await;
}

#[tokio::test]
async fn a_body_over_the_body_limit_gets_413() {
    let app = spawn_app_with(|s| s.http.body_limit_bytes = 2 * 1024 * 1024).await;
    let mut body = email_body("alice@example.com");
    body["message"] = json!("a".repeat(3 * 1024 * 1024));
    assert_problem(app.post_email(&body).await, 413).await;
}

#[tokio::test]
async fn a_message_over_one_mebibyte_is_refused_but_one_mebibyte_is_fine() {
    let app = spawn_app().await;
    let mut body = email_body(&unique_recipient("big"));
    body["message"] = json!("a".repeat(1024 * 1024 + 1));
    let problem = assert_problem(app.post_email(&body).await, 400).await;
    assert_eq!(fields(&problem), vec!["message"]);

    // The largest message, made of distinct words, still fits the search index.
    let words: String = (0..200_000).map(|i| format!("w{i} ")).collect::<String>();
    body["message"] = json!(&words[..1024 * 1024]);
    assert_eq!(app.post_email(&body).await.status(), 201);
}

#[tokio::test]
async fn a_nul_character_in_the_message_is_refused() {
    let app = spawn_app().await;
    let mut body = email_body("alice@example.com");
    body["message"] = json!("before\u{0}after");
    let problem = assert_problem(app.post_email(&body).await, 400).await;
    assert_eq!(fields(&problem), vec!["message"]);
}

#[tokio::test]
async fn an_html_alternative_is_stored_and_returned() {
    let app = spawn_app().await;
    let mut body = email_body(&unique_recipient("html"));
    body["html"] = json!("<p>Hello</p>");
    let email = app.create_email(&body).await;
    assert_eq!(email["html"], "<p>Hello</p>");
}

#[tokio::test]
async fn api_responses_carry_the_hardening_headers_and_a_request_id() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/v1/email"))
        .header("x-request-id", "req-123")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-123");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["cache-control"], "no-store");

    let response = app.client.get(app.url("/health")).send().await.unwrap();
    assert!(
        response.headers().contains_key("x-request-id"),
        "a request id is made when none is sent"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_documents() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 404).await;
    let response = app
        .client
        .delete(app.url("/api/v1/email"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 405).await;
}

/// Fires `count` synchronous creates at once and answers how many transactions stored
/// them: the rows of one transaction share its `created_at` (PostgreSQL's `now()`).
async fn transactions_for_concurrent_creates(app: &crate::helpers::TestApp, count: usize) -> usize {
    let responses = futures::future::join_all((0..count).map(|i| {
        let mut body = email_body(&unique_recipient("grouped"));
        body["subject"] = json!(format!("grouped {i}"));
        async move { app.create_email(&body).await }
    }))
    .await;
    let created: std::collections::HashSet<&str> = responses
        .iter()
        .map(|email| email["createdAt"].as_str().unwrap())
        .collect();
    created.len()
}

#[tokio::test]
async fn concurrent_creates_share_transactions_and_each_waits_for_its_commit() {
    const CALLS: usize = 64;
    let grouped = spawn_app().await;
    let transactions = transactions_for_concurrent_creates(&grouped, CALLS).await;
    assert!(
        transactions <= CALLS / 2,
        "{transactions} transactions for {CALLS} concurrent creates: not grouped"
    );
    // Every answer came after its commit: each email is there to read.
    let (stored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM emails WHERE subject LIKE 'grouped %'")
            .fetch_one(&grouped.db)
            .await
            .unwrap();
    assert_eq!(stored, CALLS as i64);

    // The measure tells the difference: one transaction per create without grouping.
    let alone = spawn_app_with(|s| s.database.group_commit.max_batch = 1).await;
    let transactions = transactions_for_concurrent_creates(&alone, CALLS).await;
    assert!(
        transactions > CALLS / 2,
        "{transactions} transactions for {CALLS} creates committed one by one"
    );
}

#[tokio::test]
async fn the_same_idempotency_key_in_one_group_stores_one_email() {
    let app = spawn_app().await;
    let body = email_body(&unique_recipient("grouped-key"));
    let responses = futures::future::join_all((0..16).map(|_| {
        app.client
            .post(app.url("/api/v1/email"))
            .header("Idempotency-Key", "grouped-once")
            .json(&body)
            .send()
    }))
    .await;
    let mut ids = std::collections::HashSet::new();
    let mut replays = 0;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 201);
        replays += usize::from(response.headers().contains_key("idempotent-replayed"));
        let email: Value = response.json().await.unwrap();
        ids.insert(email["emailID"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one email for one key: {ids:?}");
    assert_eq!(replays, 15, "all but the first are replays");
}
