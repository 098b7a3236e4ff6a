//! Webhooks end to end: a real HTTP receiver gets signed status events, verified with
//! an independent Standard Webhooks implementation (the `standardwebhooks` crate);
//! refusals are retried on the schedule with one webhook-id and logged; endpoints that
//! keep failing are disabled; non-public addresses are refused; a kill -9 between two
//! attempts loses nothing.

use std::time::Duration;

use mailroom::domain::WebhookSecret;
use reqwest::StatusCode;
use serde_json::{Value, json};
use standardwebhooks::Webhook as Verifier;

use crate::{
    grpc::create_req,
    helpers::{
        Cleanup, Isolation, SEND_ONLY_KEY, Service, TEST_API_KEY, TestApp, email_body, eventually,
        metric_value,
        receiver::{Received, Receiver, Reply},
        spawn_app, spawn_app_with, unique_recipient, wait_for, with_send_only_key,
    },
};

const PATIENCE: Duration = Duration::from_secs(20);

/// Registers `url` for `events`, answering the endpoint (with its secret).
async fn register(app: &TestApp, url: &str, events: &[&str]) -> Value {
    let response = app
        .client
        .post(app.url("/api/v1/webhooks"))
        .json(&json!({ "url": url, "events": events, "description": "test receiver" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// Checks a request's signature with the `standardwebhooks` crate.
fn verify(secret: &str, request: &Received) {
    Verifier::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .unwrap_or_else(|err| panic!("the signature does not verify: {err:?}"));
}

fn of_email<'a>(id: &'a str, kind: &'a str) -> impl Fn(&Received) -> bool + 'a {
    move |request| {
        let body = request.json();
        body["type"] == kind && body["data"]["emailID"] == id
    }
}

async fn deliveries(app: &TestApp, webhook: &str) -> Value {
    app.get_json(&format!("/api/v1/webhooks/{webhook}/deliveries"))
        .await
}

#[tokio::test]
async fn emails_created_over_rest_grpc_and_nats_reach_the_endpoint_signed() {
    let receiver = Receiver::accepting().await;
    let app = spawn_app().await;
    let webhook = register(&app, &receiver.url(), &["email.sent"]).await;
    let secret = webhook["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(webhook["events"], json!(["email.sent"]));
    assert_eq!(webhook["enabled"], true);

    let mut body = email_body(&unique_recipient("hook-rest"));
    body["tags"] = json!({ "category": "welcome" });
    let rest = app.create_email(&body).await;
    let rest_id = rest["emailID"].as_str().unwrap().to_owned();
    let grpc_id = app
        .grpc_client()
        .await
        .create(create_req(&unique_recipient("hook-grpc")))
        .await
        .unwrap()
        .into_inner()
        .email_id;
    let nats_to = unique_recipient("hook-nats");
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&email_body(&nats_to)).unwrap(),
    )
    .await;

    let sent = receiver
        .wait_for(3, PATIENCE, |r| r.json()["type"] == "email.sent")
        .await;
    for request in &sent {
        verify(secret, request);
        assert_eq!(request.header("content-type"), "application/json");
        let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
        assert!(
            !request.header("webhook-signature").contains(' '),
            "one secret, one signature"
        );
    }
    let bodies: Vec<Value> = sent.iter().map(Received::json).collect();
    let of = |id: &str| {
        bodies
            .iter()
            .find(|b| b["data"]["emailID"] == id)
            .unwrap_or_else(|| panic!("no event for {id}"))
            .clone()
    };
    let rest_event = of(&rest_id);
    assert_eq!(rest_event["data"]["status"], "sent");
    assert_eq!(rest_event["data"]["attempt"], 1);
    assert_eq!(rest_event["data"]["from"], "sender@example.com");
    assert_eq!(rest_event["data"]["to"], json!([body["to"]]));
    assert_eq!(rest_event["data"]["subject"], body["subject"]);
    assert_eq!(rest_event["data"]["tags"], json!({ "category": "welcome" }));
    assert_eq!(rest_event["data"]["messageId"], rest["messageId"]);
    chrono::DateTime::parse_from_rfc3339(rest_event["timestamp"].as_str().unwrap()).unwrap();
    of(&grpc_id);
    assert!(bodies.iter().any(|b| b["data"]["to"] == json!([nats_to])));
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.json()["type"] == "email.sent"),
        "only the events subscribed to"
    );
}

#[tokio::test]
async fn an_endpoint_that_refuses_twice_gets_the_event_a_third_time_with_one_webhook_id() {
    // A redirect is a refusal too: it is not followed.
    let receiver =
        Receiver::start(&[Reply::Status(500), Reply::Redirect], Reply::Status(200)).await;
    let app = spawn_app().await;
    let webhook = register(&app, &receiver.url(), &["email.queued"]).await;
    let secret = webhook["secret"].as_str().unwrap();
    let created = app
        .create_email(&email_body(&unique_recipient("refused-twice")))
        .await;
    let id = created["emailID"].as_str().unwrap();

    let requests = receiver
        .wait_for(3, PATIENCE, of_email(id, "email.queued"))
        .await;
    let webhook_id = requests[0].header("webhook-id");
    for request in &requests {
        verify(secret, request);
        assert_eq!(request.header("webhook-id"), webhook_id);
        assert_eq!(request.body, requests[0].body, "the same body every time");
    }
    let log = wait_for(PATIENCE, "the delivery succeeds", || async {
        let log = deliveries(&app, webhook["id"].as_str().unwrap()).await;
        (log["deliveries"][0]["status"] == "succeeded").then_some(log)
    })
    .await;
    let delivery = &log["deliveries"][0];
    assert_eq!(delivery["id"], webhook_id);
    assert_eq!(delivery["eventType"], "email.queued");
    let statuses: Vec<&Value> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["httpStatus"])
        .collect();
    assert_eq!(statuses, [&json!(500), &json!(307), &json!(200)]);
    assert_eq!(receiver.redirected(), 0, "the redirect was not followed");
    let first = &delivery["attempts"][0];
    assert!(first["error"].as_str().unwrap().contains("500"), "{first}");
    assert!(first["durationMs"].as_i64().unwrap() >= 0);
    assert!(delivery["attempts"][2]["error"].is_null());
    assert_eq!(receiver.received().len(), 3, "no request after the success");

    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "mailroom_webhook_deliveries_total{outcome=\"retry\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "mailroom_webhook_deliveries_total{outcome=\"succeeded\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_delivery_fails_after_the_schedule_and_can_be_retried_by_hand() {
    let receiver = Receiver::start(&[], Reply::Status(500)).await;
    let app = spawn_app().await;
    let webhook = register(&app, &receiver.url(), &["email.queued"]).await;
    let webhook_id = webhook["id"].as_str().unwrap();
    app.post_email(&email_body(&unique_recipient("gives-up")))
        .await;
    // The test profile's schedule has two waits: three attempts in all.
    let log = wait_for(PATIENCE, "the delivery fails", || async {
        let log = deliveries(&app, webhook_id).await;
        (log["deliveries"][0]["status"] == "failed").then_some(log)
    })
    .await;
    let delivery = &log["deliveries"][0];
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 3, "no attempt past the schedule");

    receiver.answer(Reply::Status(204));
    let retry = |delivery: &str| {
        app.client
            .post(app.url(&format!(
                "/api/v1/webhooks/{webhook_id}/deliveries/{delivery}/retry"
            )))
            .send()
    };
    let delivery_id = delivery["id"].as_str().unwrap();
    let accepted = retry(delivery_id).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let requests = receiver.wait_for(4, PATIENCE, |_| true).await;
    assert_eq!(requests[3].header("webhook-id"), delivery_id);
    eventually(PATIENCE, "the retried delivery succeeds", || async {
        deliveries(&app, webhook_id).await["deliveries"][0]["status"] == "succeeded"
    })
    .await;
    let unknown = retry(&uuid::Uuid::now_v7().to_string()).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn each_endpoint_gets_only_the_events_it_subscribed_to() {
    let (sent_only, everything, failed_only) = (
        Receiver::accepting().await,
        Receiver::accepting().await,
        Receiver::accepting().await,
    );
    let app = spawn_app().await;
    register(&app, &sent_only.url(), &["email.sent"]).await;
    register(&app, &everything.url(), &["*"]).await;
    register(&app, &failed_only.url(), &["email.failed", "email.bounced"]).await;
    let created = app
        .create_email(&email_body(&unique_recipient("filtered")))
        .await;
    let id = created["emailID"].as_str().unwrap();

    everything
        .wait_for(1, PATIENCE, of_email(id, "email.sent"))
        .await;
    sent_only
        .wait_for(1, PATIENCE, of_email(id, "email.sent"))
        .await;
    // The queued event was dispatched first, the sent one has been handled for every
    // endpoint; deliveries run in parallel, so they may arrive in either order.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let types = |receiver: &Receiver| -> Vec<String> {
        let mut types: Vec<String> = receiver
            .received()
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap().to_owned())
            .collect();
        types.sort();
        types
    };
    assert_eq!(types(&everything), ["email.queued", "email.sent"]);
    assert_eq!(types(&sent_only), ["email.sent"]);
    assert!(types(&failed_only).is_empty());
}

#[tokio::test]
async fn an_endpoint_failing_for_longer_than_disable_after_is_disabled() {
    let receiver = Receiver::start(&[], Reply::Status(502)).await;
    let app = spawn_app_with(|s| {
        s.webhooks.disable_after = Duration::from_secs(1);
        s.webhooks.retry_schedule = vec![Duration::from_millis(300); 10];
    })
    .await;
    let webhook = register(&app, &receiver.url(), &["*"]).await;
    let webhook_id = webhook["id"].as_str().unwrap();
    app.post_email(&email_body(&unique_recipient("disabled")))
        .await;
    let endpoint = wait_for(PATIENCE, "the endpoint is disabled", || async {
        let endpoint = app
            .get_json(&format!("/api/v1/webhooks/{webhook_id}"))
            .await;
        (endpoint["enabled"] == false).then_some(endpoint)
    })
    .await;
    let reason = endpoint["disabledReason"].as_str().unwrap();
    assert!(reason.contains("webhooks.disable_after"), "{reason}");
    assert!(reason.contains("502"), "{reason}");
    eventually(PATIENCE, "the disabling is counted", || async {
        metric_value(&app.metrics().await, "mailroom_webhooks_disabled_total") == Some(1.0)
    })
    .await;
    // Nothing more is sent to it; its pending deliveries end failed.
    let seen = receiver.received().len();
    eventually(PATIENCE, "every delivery has ended", || async {
        let log = deliveries(&app, webhook_id).await;
        log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "failed")
    })
    .await;
    assert_eq!(receiver.received().len(), seen);

    // Enabling it again starts afresh.
    let enabled: Value = app
        .client
        .patch(app.url(&format!("/api/v1/webhooks/{webhook_id}")))
        .json(&json!({ "enabled": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["disabledReason"].is_null());
    assert!(enabled["failingSince"].is_null());
}

#[tokio::test]
async fn every_form_of_non_public_address_is_refused_at_registration() {
    let app = spawn_app_with(|s| s.webhooks.allow_private_targets = false).await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/hook",
        "http://[::1]/hook",
        "http://10.0.0.8/hook",
        "http://172.20.1.1/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",
        "http://224.0.0.251/hook",
        "http://0.0.0.0/hook",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://[ff02::1]/hook",
        "http://[::]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://[64:ff9b::a00:1]/hook",
        "http://2130706433/hook",
        "http://0x7f.0.0.1/hook",
        "ftp://hooks.example.com/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "not a url",
    ] {
        let response = app
            .client
            .post(app.url("/api/v1/webhooks"))
            .json(&json!({ "url": url, "events": ["*"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{url}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "url", "{url}: {problem}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn an_address_that_became_private_is_refused_when_connecting() {
    let receiver = Receiver::accepting().await;
    let app = spawn_app_with(|s| s.webhooks.allow_private_targets = false).await;
    let registration = app
        .client
        .post(app.url("/api/v1/webhooks"))
        .json(&json!({ "url": receiver.url(), "events": ["*"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(registration.status(), StatusCode::BAD_REQUEST);
    // As if its host had resolved to a public address at registration and to a
    // loopback one since.
    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO webhooks (webhook_id, url, events, secret) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(receiver.url())
        .bind(vec!["email.queued"])
        .bind(WebhookSecret::generate().expose())
        .execute(&app.db)
        .await
        .unwrap();
    // What the service does after a change of its own.
    app.webhooks.changed().await;
    app.post_email(&email_body(&unique_recipient("rebound")))
        .await;
    let log = wait_for(PATIENCE, "an attempt is logged", || async {
        let log = deliveries(&app, &id.to_string()).await;
        log["deliveries"][0]["attempts"][0]
            .is_object()
            .then_some(log)
    })
    .await;
    let attempt = &log["deliveries"][0]["attempts"][0];
    assert!(attempt["httpStatus"].is_null());
    assert!(
        attempt["error"].as_str().unwrap().contains("loopback"),
        "{attempt}"
    );
    assert!(
        metric_value(
            &app.metrics().await,
            "mailroom_webhook_deliveries_total{outcome=\"refused\"}"
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(receiver.received().is_empty(), "no request was made");
}

#[tokio::test]
async fn the_endpoints_are_managed_over_rest_and_need_the_admin_scope() {
    let app = spawn_app_with(with_send_only_key).await;
    let receiver = Receiver::accepting().await;
    let sender = reqwest::Client::new();
    let refused = sender
        .post(app.url("/api/v1/webhooks"))
        .bearer_auth(SEND_ONLY_KEY)
        .json(&json!({ "url": receiver.url(), "events": ["*"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let listed = sender
        .get(app.url("/api/v1/webhooks"))
        .bearer_auth(SEND_ONLY_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::FORBIDDEN);

    let created = register(&app, &receiver.url(), &["email.sent"]).await;
    let id = created["id"].as_str().unwrap();
    let list = app.get_json("/api/v1/webhooks").await;
    assert_eq!(list["webhooks"][0]["id"], id);
    assert!(
        list["webhooks"][0].get("secret").is_none(),
        "no secret in listings"
    );

    let patched: Value = app
        .client
        .patch(app.url(&format!("/api/v1/webhooks/{id}")))
        .json(&json!({ "events": ["email.failed", "*"], "description": null }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["events"], json!(["*"]));
    assert!(patched["description"].is_null());
    let bad = app
        .client
        .patch(app.url(&format!("/api/v1/webhooks/{id}")))
        .json(&json!({ "events": ["email.opened"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "events");
    let empty = app
        .client
        .post(app.url("/api/v1/webhooks"))
        .json(&json!({ "url": receiver.url(), "events": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);

    let rotated: Value = app
        .client
        .post(app.url(&format!("/api/v1/webhooks/{id}/rotate-secret")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (old, new) = (
        created["secret"].as_str().unwrap(),
        rotated["secret"].as_str().unwrap(),
    );
    assert_ne!(old, new);
    assert!(rotated["previousSecretExpiresAt"].is_string());
    // After a rotation both secrets sign: receivers holding either verify.
    app.post_email(&email_body(&unique_recipient("rotated")))
        .await;
    let requests = receiver
        .wait_for(1, PATIENCE, |r| r.json()["type"] == "email.sent")
        .await;
    let signatures = requests[0].header("webhook-signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    verify(old, &requests[0]);
    verify(new, &requests[0]);

    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/webhooks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = app
        .client
        .get(app.url(&format!("/api/v1/webhooks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_kill_between_two_attempts_loses_no_delivery() {
    let receiver = Receiver::start(&[Reply::Status(500)], Reply::Status(200)).await;
    let isolation = Isolation::new();
    let _cleanup = Cleanup(isolation.clone());
    let env = [("MAILROOM__WEBHOOKS__RETRY_SCHEDULE", "3s,3s".to_owned())];
    let client = reqwest::Client::new();
    let call = |base: &str, path: &str| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(TEST_API_KEY)
    };

    let mut first = Service::start(&isolation, &env);
    first.wait_ready().await;
    let webhook: Value = call(&first.base, "/api/v1/webhooks")
        .json(&json!({ "url": receiver.url(), "events": ["email.queued"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    call(&first.base, "/api/v1/email")
        .json(&email_body(&unique_recipient("killed")))
        .send()
        .await
        .unwrap();
    let refused = receiver.wait_for(1, PATIENCE, |_| true).await;
    // Killed while the retry waits: once the refusal is recorded. (Killed before that,
    // the attempt is still leased and comes again only when the lease, webhooks.timeout
    // plus ack_wait, runs out: longer than this test waits.)
    let deliveries = format!(
        "{}/api/v1/webhooks/{}/deliveries",
        first.base,
        webhook["id"].as_str().unwrap()
    );
    wait_for(PATIENCE, "the refused attempt is recorded", || async {
        let log: Value = client
            .get(&deliveries)
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let attempts = log["deliveries"][0]["attempts"].as_array()?.len();
        (attempts == 1 && log["deliveries"][0]["status"] == "pending").then_some(())
    })
    .await;
    first.kill();

    let second = Service::start(&isolation, &env);
    second.wait_ready().await;
    let requests = receiver.wait_for(2, PATIENCE, |_| true).await;
    assert_eq!(
        requests[1].header("webhook-id"),
        refused[0].header("webhook-id")
    );
    verify(webhook["secret"].as_str().unwrap(), &requests[1]);
    let path = format!(
        "{}/api/v1/webhooks/{}/deliveries",
        second.base,
        webhook["id"].as_str().unwrap()
    );
    let log: Value = wait_for(PATIENCE, "the delivery succeeds", || async {
        let log: Value = client
            .get(&path)
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (log["deliveries"][0]["status"] == "succeeded").then_some(log)
    })
    .await;
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(
        log["deliveries"][0]["attempts"].as_array().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_request_without_an_answer_times_out_and_is_retried() {
    let receiver =
        Receiver::start(&[Reply::Hang(Duration::from_secs(5))], Reply::Status(200)).await;
    let app = spawn_app_with(|s| s.webhooks.timeout = Duration::from_millis(500)).await;
    let webhook = register(&app, &receiver.url(), &["email.queued"]).await;
    app.post_email(&email_body(&unique_recipient("hanging")))
        .await;
    let log = wait_for(PATIENCE, "the delivery succeeds", || async {
        let log = deliveries(&app, webhook["id"].as_str().unwrap()).await;
        (log["deliveries"][0]["status"] == "succeeded").then_some(log)
    })
    .await;
    let first = &log["deliveries"][0]["attempts"][0];
    assert!(first["httpStatus"].is_null());
    let error = first["error"].as_str().unwrap();
    assert!(error.contains("no answer within 500ms"), "{error}");
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_hold_up_the_others() {
    // Every request to the slow endpoint hangs past the end of the test.
    let slow = Receiver::start(&[], Reply::Hang(Duration::from_secs(120))).await;
    let fast = Receiver::accepting().await;
    let app = spawn_app_with(|s| {
        s.webhooks.timeout = Duration::from_secs(50);
        s.webhooks.max_in_flight_per_endpoint = 1;
        s.nats.consumers.webhook.workers = 4;
        s.nats.consumers.webhook.ack_wait = Duration::from_secs(60);
    })
    .await;
    register(&app, &slow.url(), &["email.queued"]).await;
    register(&app, &fast.url(), &["email.queued"]).await;
    for _ in 0..6 {
        app.post_email(&email_body(&unique_recipient("crowd")))
            .await;
    }
    // Were the slow endpoint's requests to take every worker, the fast one would
    // wait for webhooks.timeout (50 s) at least.
    fast.wait_for(6, PATIENCE, |_| true).await;
    assert_eq!(
        slow.received().len(),
        1,
        "one request at a time to the slow one"
    );
}

#[tokio::test]
async fn a_stored_delivery_whose_message_was_lost_is_published_again() {
    let receiver = Receiver::accepting().await;
    let app = spawn_app().await;
    let webhook = register(&app, &receiver.url(), &["email.sent"]).await;
    // As if the dispatcher had stored it and died before publishing: due now.
    let delivery = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_deliveries \
             (delivery_id, webhook_id, event_type, payload, next_attempt_at) \
         VALUES ($1, $2::uuid, 'email.sent', '{\"type\":\"email.sent\"}', now())",
    )
    .bind(delivery)
    .bind(webhook["id"].as_str().unwrap())
    .execute(&app.db)
    .await
    .unwrap();
    let requests = receiver.wait_for(1, PATIENCE, |_| true).await;
    assert_eq!(requests[0].header("webhook-id"), delivery.to_string());
    assert_eq!(&requests[0].body[..], br#"{"type":"email.sent"}"#);
    verify(webhook["secret"].as_str().unwrap(), &requests[0]);
    eventually(PATIENCE, "the delivery succeeds", || async {
        deliveries(&app, webhook["id"].as_str().unwrap()).await["deliveries"][0]["status"]
            == "succeeded"
    })
    .await;
}

#[tokio::test]
async fn the_dispatcher_reads_status_events_only_while_an_endpoint_is_enabled() {
    let receiver = Receiver::accepting().await;
    let app = spawn_app().await;
    let durable = app
        .settings
        .nats
        .durable_name(&app.settings.nats.consumers.webhook_dispatch.durable);
    let exists = || async { app.bus.consumer_named(&durable).await.is_some() };
    assert!(!exists().await, "no endpoint, no dispatcher consumer");

    // An email from before the endpoint is not for it.
    let before = app
        .create_email(&email_body(&unique_recipient("before")))
        .await;
    app.wait_for_status(before["emailID"].as_str().unwrap(), "sent", PATIENCE)
        .await;
    let webhook = register(&app, &receiver.url(), &["*"]).await;
    assert!(exists().await, "an enabled endpoint, a dispatcher consumer");
    let after = app
        .create_email(&email_body(&unique_recipient("after")))
        .await;
    let after_id = after["emailID"].as_str().unwrap();
    receiver
        .wait_for(1, PATIENCE, of_email(after_id, "email.sent"))
        .await;
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.json()["data"]["emailID"] == after_id),
        "only the email created after the registration"
    );

    let id = webhook["id"].as_str().unwrap();
    let disabled = app
        .client
        .patch(app.url(&format!("/api/v1/webhooks/{id}")))
        .json(&json!({ "enabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), StatusCode::OK);
    assert!(
        !exists().await,
        "no endpoint enabled, no dispatcher consumer"
    );
    let meanwhile = app
        .create_email(&email_body(&unique_recipient("while-disabled")))
        .await;
    app.wait_for_status(meanwhile["emailID"].as_str().unwrap(), "sent", PATIENCE)
        .await;
    app.client
        .patch(app.url(&format!("/api/v1/webhooks/{id}")))
        .json(&json!({ "enabled": true }))
        .send()
        .await
        .unwrap();
    assert!(exists().await);
    let again = app
        .create_email(&email_body(&unique_recipient("enabled-again")))
        .await;
    let again_id = again["emailID"].as_str().unwrap();
    receiver
        .wait_for(1, PATIENCE, of_email(again_id, "email.sent"))
        .await;
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.json()["data"]["emailID"] == after_id
                || r.json()["data"]["emailID"] == again_id),
        "nothing from while it was disabled"
    );
}

/// A delete that PostgreSQL picks as a deadlock's victim (it cascades to a delivery a
/// sender holds while that sender waits for the endpoint's row) is run again, not
/// answered with a 503.
#[tokio::test]
async fn deleting_an_endpoint_that_meets_a_deadlock_still_deletes_it() {
    let app = spawn_app().await;
    let webhook = register(&app, "https://hooks.example.com/in", &["email.sent"]).await;
    let id: uuid::Uuid = webhook["id"].as_str().unwrap().parse().unwrap();
    sqlx::query(
        "INSERT INTO webhook_deliveries (delivery_id, webhook_id, event_type, payload) \
         VALUES ($1, $2, 'email.sent', '{}')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();

    // A sender's order: the delivery first, then the endpoint.
    let mut sender = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM webhook_deliveries WHERE webhook_id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *sender)
        .await
        .unwrap();
    let delete = {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/api/v1/webhooks/{id}")),
        );
        tokio::spawn(async move { client.delete(url).send().await.unwrap().status() })
    };
    // The delete now holds the endpoint's row and waits for the delivery; the sender
    // asks for the endpoint's row: a cycle, which PostgreSQL breaks after
    // deadlock_timeout (1 s) by aborting the first waiter, the delete.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("SELECT 1 FROM webhooks WHERE webhook_id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *sender)
        .await
        .unwrap();
    sender.commit().await.unwrap();

    assert_eq!(delete.await.unwrap(), StatusCode::NO_CONTENT);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks WHERE webhook_id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
