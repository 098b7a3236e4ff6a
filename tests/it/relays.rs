//! Several SMTP relays: priority and shared load, failover within an attempt (refused,
//! silent or killed relays), cooldown and return, the relay recorded on each attempt,
//! metrics and `/health` by relay, and `max_per_second`.

use std::time::Duration;

use futures::future::join_all;
use mailroom::config::{RelayEntry, Settings};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, closed_port, email_body, metric_value,
    smtp::{Behaviour, FakeSmtp, relay_entry},
    spawn_app_with, unique_recipient, wait_for,
};

fn relay(name: &str, port: u16, priority: u32) -> RelayEntry {
    RelayEntry {
        priority: Some(priority),
        ..relay_entry(name, port)
    }
}

fn with_relays(settings: &mut Settings, relays: Vec<RelayEntry>) {
    settings.smtp.relays = relays;
    settings.smtp.timeout = Duration::from_secs(2);
    // These tests poll many emails at once; the API key's rate limit is not their subject.
    settings.auth.rate_limit.per_second = 10_000.0;
    settings.auth.rate_limit.burst = 10_000;
}

/// Creates `count` emails at once; answers their ids.
async fn create(app: &TestApp, count: usize) -> Vec<String> {
    join_all((0..count).map(|_| async {
        let created = app
            .create_email(&email_body(&unique_recipient("relay")))
            .await;
        created["emailID"].as_str().unwrap().to_owned()
    }))
    .await
}

/// Waits until every email has left `queued`/`sending`; answers each as read back.
async fn settled(app: &TestApp, ids: &[String]) -> Vec<Value> {
    join_all(ids.iter().map(|id| async move {
        wait_for(Duration::from_secs(30), "the email settles", || async {
            let email: Value = app.get_email(id).await.json().await.unwrap();
            let status = email["status"]
                .as_str()
                .unwrap_or_else(|| panic!("{email}"));
            (!["queued", "sending"].contains(&status)).then_some(email)
        })
        .await
    }))
    .await
}

async fn attempts(app: &TestApp, id: &str) -> Vec<Value> {
    app.get_json(&format!("/api/v1/email/{id}/attempts"))
        .await
        .get("attempts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap()
}

/// Every email sent in its first attempt (never deferred), through `relay`.
async fn assert_sent_first_time(app: &TestApp, ids: &[String], relay: Option<&str>) {
    for email in settled(app, ids).await {
        assert_eq!(email["status"], "sent", "{email}");
        assert_eq!(email["attempts"], 1, "never deferred: {email}");
        if let Some(relay) = relay {
            let id = email["emailID"].as_str().unwrap();
            assert_eq!(attempts(app, id).await[0]["relay"], relay, "{email}");
        }
    }
}

#[tokio::test]
async fn a_refusing_relay_is_skipped_in_the_same_attempt_and_left_out_while_it_cools() {
    let b = FakeSmtp::start(Behaviour::Accept).await;
    let dead = closed_port();
    let app = spawn_app_with(|s| {
        with_relays(s, vec![relay("a", dead, 1), relay("b", b.port, 2)]);
        s.smtp.relay_cooldown = Duration::from_secs(600);
    })
    .await;
    let first = create(&app, 1).await;
    assert_sent_first_time(&app, &first, Some("b")).await;
    let more = create(&app, 10).await;
    assert_sent_first_time(&app, &more, Some("b")).await;
    assert_eq!(b.deliveries().len(), 11);

    let metrics = app.metrics().await;
    let failures =
        metric_value(&metrics, r#"mailroom_smtp_relay_failures_total{relay="a"}"#).unwrap();
    assert_eq!(failures, 1.0, "cooling, a is not tried again: {metrics}");
    assert_eq!(
        metric_value(
            &metrics,
            r#"mailroom_smtp_sends_total{outcome="sent",relay="b"}"#
        ),
        Some(11.0)
    );

    let health = app.get_json("/health").await;
    let relays = health["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 2, "{health}");
    assert_eq!(relays[0]["name"], "a");
    assert_eq!(relays[0]["status"], "down");
    assert_eq!(relays[0]["coolingDown"], true);
    assert_eq!(relays[1]["name"], "b");
    assert_eq!(relays[1]["status"], "up");
    assert_eq!(relays[1]["coolingDown"], false);
    assert_eq!(health["status"], "ok", "one relay up is enough: {health}");
}

#[tokio::test]
async fn a_silent_relay_times_out_and_the_email_goes_to_the_next_one() {
    let silent = FakeSmtp::start(Behaviour::Silent).await;
    let b = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        with_relays(s, vec![relay("a", silent.port, 1), relay("b", b.port, 1)]);
        s.smtp.timeout = Duration::from_secs(1);
    })
    .await;
    let ids = create(&app, 6).await;
    assert_sent_first_time(&app, &ids, Some("b")).await;
}

#[tokio::test]
async fn a_relay_that_answers_has_the_last_word() {
    let a = FakeSmtp::start(Behaviour::RejectRecipient(
        "451 4.3.0 try again later".into(),
    ))
    .await;
    let b = FakeSmtp::start(Behaviour::Accept).await;
    let app =
        spawn_app_with(|s| with_relays(s, vec![relay("a", a.port, 1), relay("b", b.port, 2)]))
            .await;
    let ids = create(&app, 1).await;
    let email = &settled(&app, &ids).await[0];
    assert_eq!(email["status"], "deferred", "{email}");
    let attempt = &attempts(&app, &ids[0]).await[0];
    assert_eq!(attempt["relay"], "a", "{attempt}");
    assert_eq!(attempt["smtpCode"], 451, "{attempt}");
    assert!(
        b.deliveries().is_empty(),
        "a reply is no reason to fail over"
    );
}

#[tokio::test]
async fn relays_of_one_priority_share_the_load_and_a_lower_priority_waits() {
    let a = FakeSmtp::start(Behaviour::Accept).await;
    let b = FakeSmtp::start(Behaviour::Accept).await;
    let c = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        with_relays(
            s,
            vec![
                relay("c", c.port, 2),
                relay("a", a.port, 1),
                relay("b", b.port, 1),
            ],
        )
    })
    .await;
    let ids = create(&app, 30).await;
    assert_sent_first_time(&app, &ids, None).await;
    let (on_a, on_b) = (a.deliveries().len(), b.deliveries().len());
    assert_eq!(on_a + on_b, 30);
    assert!(on_a >= 5 && on_b >= 5, "shared: a {on_a}, b {on_b}");
    assert!(c.deliveries().is_empty(), "priority 2 only when 1 is out");
}

#[tokio::test]
async fn relays_killed_and_restored_under_load_defer_nothing_while_one_is_up() {
    let mut a = FakeSmtp::start(Behaviour::Accept).await;
    let mut b = FakeSmtp::start(Behaviour::Accept).await;
    let (port_a, port_b) = (a.port, b.port);
    let app = spawn_app_with(|s| {
        with_relays(s, vec![relay("a", port_a, 1), relay("b", port_b, 1)]);
        s.smtp.relay_cooldown = Duration::from_millis(500);
    })
    .await;

    let mut ids = create(&app, 10).await;
    a.stop();
    ids.extend(create(&app, 10).await);
    // Mail keeps flowing through b while a is dead.
    let b_before = b.deliveries().len();
    ids.extend(create(&app, 10).await);
    settled(&app, &ids).await;
    assert!(b.deliveries().len() > b_before);

    a = FakeSmtp::start_on(port_a, Behaviour::Accept).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.stop();
    ids.extend(create(&app, 10).await);
    settled(&app, &ids).await;
    b = FakeSmtp::start_on(port_b, Behaviour::Accept).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    ids.extend(create(&app, 20).await);

    assert_sent_first_time(&app, &ids, None).await;
    assert!(
        !a.deliveries().is_empty(),
        "a took mail again after it came back"
    );
    assert!(
        !b.deliveries().is_empty(),
        "b took mail again after it came back"
    );
}

#[tokio::test]
async fn max_per_second_spaces_the_sends_and_never_fails_one() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        // Slots 500 ms apart: far more than the jitter of a loaded test machine between a
        // send's slot and the moment the server has its message.
        let mut paced = relay("paced", smtp.port, 1);
        paced.max_per_second = Some(2.0);
        with_relays(s, vec![paced]);
    })
    .await;
    // One email first, so the connection is open and pooled: every exchange measured
    // below takes about as long as the others.
    let warm_up = create(&app, 1).await;
    assert_sent_first_time(&app, &warm_up, Some("paced")).await;
    let emails: Vec<Value> = (0..8)
        .map(|_| email_body(&unique_recipient("paced")))
        .collect();
    let response = reqwest::Client::new()
        .post(app.url("/api/v1/email/batch"))
        .headers(crate::helpers::api_key_headers())
        .json(&json!({ "emails": emails }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let ids: Vec<String> = created["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["emailID"].as_str().unwrap().to_owned())
        .collect();
    assert_sent_first_time(&app, &ids, Some("paced")).await;

    let mut times: Vec<_> = smtp.deliveries().iter().skip(1).map(|d| d.at).collect();
    times.sort();
    assert_eq!(times.len(), 8);
    let span = *times.last().unwrap() - times[0];
    // 8 sends 500 ms apart: 3.5 s from the first slot to the last (less the jitter of
    // the exchanges themselves).
    assert!(span >= Duration::from_millis(3000), "{span:?}");
    for (i, start) in times.iter().enumerate() {
        let within_a_second = times[i..]
            .iter()
            .take_while(|t| **t - *start < Duration::from_secs(1))
            .count();
        // Two a second, and one more at a window's edge.
        assert!(
            within_a_second <= 3,
            "{within_a_second} sends in one second"
        );
    }
}
