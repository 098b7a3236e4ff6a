//! The admin commands against a running deployment: `events tail` and `dlq`.

use std::{process::Output, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, email_body,
    smtp::{Behaviour, FakeSmtp},
    spawn_app, spawn_app_with, unique_recipient,
};

fn run(app: &TestApp, args: &[&str]) -> (Vec<Value>, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = app.isolation.command().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(status.success(), "mailroom {args:?} failed: {stderr}");
    let lines = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    (lines, stderr)
}

async fn publish_creates(app: &TestApp, subjects: &[&str]) {
    for subject in subjects {
        let mut event = email_body(&unique_recipient("tail"));
        event["subject"] = json!(subject);
        app.publish_raw(
            &app.subject("mail:create"),
            serde_json::to_vec(&event).unwrap(),
        )
        .await;
    }
}

#[tokio::test]
async fn events_tail_prints_the_recent_create_events() {
    let app = spawn_app().await;
    publish_creates(&app, &["first", "second", "third"]).await;
    let subject = app.subject("mail:create");
    // The short name works too: the deployment's prefix is applied.
    let (lines, _) = run(
        &app,
        &[
            "events",
            "tail",
            "--subject",
            "mail:create",
            "--start",
            "ago:5m",
            "--no-follow",
        ],
    );

    let subjects: Vec<&str> = lines
        .iter()
        .map(|l| l["data"]["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, vec!["first", "second", "third"]);
    for line in &lines {
        assert_eq!(line["subject"], subject.as_str());
        assert!(
            line["sequence"].as_u64().unwrap() > 0 && line["time"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn events_tail_starts_where_asked() {
    let app = spawn_app().await;
    publish_creates(&app, &["one", "two", "three"]).await;
    let subject = app.subject("mail:create");
    let tail = |start: &str, extra: &[&str]| {
        let mut args = vec![
            "events",
            "tail",
            "--subject",
            &subject,
            "--start",
            start,
            "--no-follow",
        ];
        args.extend_from_slice(extra);
        run(&app, &args)
            .0
            .iter()
            .map(|l| l["data"]["subject"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (all, _) = run(
        &app,
        &[
            "events",
            "tail",
            "--subject",
            &subject,
            "--start",
            "all",
            "--no-follow",
        ],
    );
    let second = all[1]["sequence"].as_u64().unwrap();

    assert_eq!(tail("all", &[]), vec!["one", "two", "three"]);
    assert_eq!(tail("all", &["--limit", "2"]), vec!["one", "two"]);
    assert_eq!(tail("last", &[]), vec!["three"]);
    assert_eq!(tail(&format!("seq:{second}"), &[]), vec!["two", "three"]);
    assert_eq!(tail("new", &[]), Vec::<String>::new());
    let future = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    assert_eq!(tail(&format!("time:{future}"), &[]), Vec::<String>::new());
}

#[tokio::test]
async fn events_tail_leaves_the_durable_consumers_alone() {
    let app = spawn_app().await;
    let stream = app
        .jetstream
        .get_stream(app.settings.nats.stream_name())
        .await
        .unwrap();
    let before = stream.consumer_names();
    use futures::StreamExt;
    let before: Vec<String> = before.map(|n| n.unwrap()).collect().await;
    run(&app, &["events", "tail", "--start", "all", "--no-follow"]);
    let after: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    // The tail's own consumer is ephemeral (a random name, gone once inactive).
    let mut durable: Vec<&String> = after.iter().filter(|n| n.contains("mailroom-")).collect();
    durable.sort();
    let mut expected: Vec<&String> = before.iter().collect();
    expected.sort();
    // The service's four: create, send, send-bulk and webhook (the webhook dispatcher's
    // exists only while an endpoint is registered).
    assert_eq!(expected.len(), 4, "{before:?}");
    assert_eq!(durable, expected, "{after:?}");
}

#[tokio::test]
async fn events_tail_refuses_a_bad_start_with_the_accepted_forms() {
    let app = spawn_app().await;
    let output = app
        .isolation
        .command()
        .args(["events", "tail", "--start", "yesterday"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("seq:N") && stderr.contains("ago:DURATION"),
        "{stderr}"
    );
}

#[tokio::test]
async fn dlq_lists_dead_letters_and_redrives_a_failed_email_to_delivery() {
    // The server refuses the first message permanently, then recovers.
    let smtp = FakeSmtp::start(Behaviour::RejectFirst(1, "550 5.7.1 relay denied".into())).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let created = app
        .create_email(&email_body(&unique_recipient("redrive")))
        .await;
    let id = created["emailID"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "failed", Duration::from_secs(15))
        .await;
    app.messages_on(&app.subject("mail:errors"), 1, Duration::from_secs(5))
        .await;

    let (letters, stderr) = run(&app, &["dlq", "list"]);
    assert_eq!(letters.len(), 1, "{stderr}");
    let letter = &letters[0];
    assert_eq!(letter["subject"], app.subject("mail:send").as_str());
    assert_eq!(letter["data"]["emailID"], id.as_str());
    assert!(letter["error"].as_str().unwrap().contains("relay denied"));
    let dlq_sequence = letter["dlqSequence"].as_u64().unwrap().to_string();

    let (_, stderr) = run(&app, &["dlq", "redrive", "--seq", &dlq_sequence]);
    assert!(stderr.contains("redrove dead letter"), "{stderr}");

    let email = app
        .wait_for_status(&id, "sent", Duration::from_secs(15))
        .await;
    assert_eq!(email["attempts"], 2);
    assert!(email["lastError"].is_null());
    let (letters, _) = run(&app, &["dlq", "list"]);
    assert!(
        letters.is_empty(),
        "a redriven letter leaves the list: {letters:?}"
    );
}

#[tokio::test]
async fn dlq_redrive_all_puts_poison_events_back_on_their_subject() {
    let app = spawn_app().await;
    app.publish_raw(&app.subject("mail:create"), "poison one")
        .await;
    app.publish_raw(&app.subject("mail:create"), "poison two")
        .await;
    app.messages_on(&app.subject("mail:errors"), 2, Duration::from_secs(10))
        .await;
    assert_eq!(run(&app, &["dlq", "list"]).0.len(), 2);

    let (_, stderr) = run(&app, &["dlq", "redrive", "--all"]);
    assert!(stderr.contains("2 dead letter(s) redriven"), "{stderr}");
    // Still poison: each is dead-lettered again, once.
    let letters = app
        .messages_on(&app.subject("mail:errors"), 2, Duration::from_secs(10))
        .await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let (listed, _) = run(&app, &["dlq", "list"]);
    assert_eq!(listed.len(), 2);
}

#[tokio::test]
async fn dlq_redrive_refuses_a_sequence_that_is_not_a_dead_letter() {
    let app = spawn_app().await;
    publish_creates(&app, &["not a letter"]).await;
    let output = app
        .isolation
        .command()
        .args(["dlq", "redrive", "--seq", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a dead letter"), "{stderr}");
}
