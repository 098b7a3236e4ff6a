//! Lanes: `lane` on every create path, bulk send events on their own subject and
//! consumer, relays kept for a lane, and a bulk backlog that never holds back a
//! transactional email.

use std::time::{Duration, Instant};

use futures::future::join_all;
use mailroom::{
    config::RelayEntry,
    domain::Lane,
    grpc::pb::{CreateReq, GetByIdReq},
};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, api_key_headers, email_body, problem_fields,
    smtp::{Behaviour, FakeSmtp, relay_entry},
    spawn_app_with, unique_recipient,
};

async fn post_batch(app: &TestApp, emails: &[Value]) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/api/v1/email/batch"))
        .headers(api_key_headers())
        .json(&json!({ "emails": emails }))
        .send()
        .await
        .unwrap()
}

async fn sent(app: &TestApp, id: &str) -> Value {
    app.wait_for_status(id, "sent", Duration::from_secs(30))
        .await
}

#[tokio::test]
async fn every_create_path_takes_a_lane_and_bulk_send_events_go_to_their_own_subject() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;

    // REST: the default, and bulk.
    let plain = app
        .create_email(&email_body(&unique_recipient("lane")))
        .await;
    assert_eq!(plain["lane"], "transactional", "{plain}");
    let mut body = email_body(&unique_recipient("lane"));
    body["lane"] = json!("bulk");
    let bulk = app.create_email(&body).await;
    assert_eq!(bulk["lane"], "bulk", "{bulk}");

    // gRPC.
    let mut grpc = app.grpc_client().await;
    let created = grpc
        .create(CreateReq {
            from: "sender@example.com".into(),
            to: unique_recipient("lane-grpc"),
            subject: "Bulk over gRPC".into(),
            message: "Hello".into(),
            lane: "bulk".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let grpc_email = grpc
        .get_by_id(GetByIdReq {
            email_id: created.email_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .email
        .unwrap();
    assert_eq!(grpc_email.lane, "bulk");

    // A NATS create event: the same JSON as REST.
    let nats_to = unique_recipient("lane-nats");
    let mut event = email_body(&nats_to);
    event["lane"] = json!("bulk");
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&event).unwrap(),
    )
    .await;
    smtp.delivery_to(&nats_to).await;

    for id in [
        plain["emailID"].as_str().unwrap(),
        bulk["emailID"].as_str().unwrap(),
        &created.email_id,
    ] {
        sent(&app, id).await;
    }
    let transactional_events = app
        .messages_on(&app.subject("mail:send"), 1, Duration::from_secs(5))
        .await;
    let bulk_events = app
        .messages_on(&app.subject("mail:send.bulk"), 3, Duration::from_secs(5))
        .await;
    let ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["emailID"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&transactional_events),
        [plain["emailID"].as_str().unwrap()]
    );
    let bulk_ids = ids(&bulk_events);
    assert_eq!(bulk_ids.len(), 3, "{bulk_ids:?}");
    assert!(bulk_ids.contains(&bulk["emailID"].as_str().unwrap().to_owned()));
    assert!(bulk_ids.contains(&created.email_id));
}

#[tokio::test]
async fn an_unknown_lane_is_refused_naming_the_field_on_each_path() {
    let app = spawn_app_with(|_| {}).await;
    let mut body = email_body(&unique_recipient("lane"));
    body["lane"] = json!("express");
    let response = app.post_email(&body).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem_fields(&problem).contains(&("lane".to_owned(), "lane".to_owned())),
        "{problem}"
    );

    let response = post_batch(&app, &[email_body(&unique_recipient("ok")), body]).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem_fields(&problem)
            .iter()
            .any(|(field, _)| field == "emails[1].lane"),
        "{problem}"
    );

    let mut grpc = app.grpc_client().await;
    let status = grpc
        .create(CreateReq {
            from: "sender@example.com".into(),
            to: unique_recipient("lane-grpc"),
            subject: "Bad lane".into(),
            message: "Hello".into(),
            lane: "Bulk".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("Lane"), "{status:?}");
    assert_eq!(app.stored_emails().await, 0);
}

#[tokio::test]
async fn a_batch_s_emails_without_a_lane_take_the_configured_default() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.lanes.batch_default = Lane::Bulk;
    })
    .await;
    let mut transactional = email_body(&unique_recipient("batch"));
    transactional["lane"] = json!("transactional");
    let response = post_batch(
        &app,
        &[email_body(&unique_recipient("batch")), transactional],
    )
    .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["emails"][0]["lane"], "bulk");
    assert_eq!(created["emails"][1]["lane"], "transactional");
    // A single email's default stays transactional.
    let single = app
        .create_email(&email_body(&unique_recipient("single")))
        .await;
    assert_eq!(single["lane"], "transactional");
}

fn relay(name: &str, port: u16, lane: Lane) -> RelayEntry {
    RelayEntry {
        lane: Some(lane),
        ..relay_entry(name, port)
    }
}

#[tokio::test]
async fn a_relay_kept_for_a_lane_takes_only_that_lane_s_mail() {
    let bulk_relay = FakeSmtp::start(Behaviour::Accept).await;
    let main_relay = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.relays = vec![
            relay("newsletters", bulk_relay.port, Lane::Bulk),
            relay("main", main_relay.port, Lane::Transactional),
        ];
    })
    .await;
    let (bulk_to, main_to) = (unique_recipient("bulk"), unique_recipient("main"));
    let mut body = email_body(&bulk_to);
    body["lane"] = json!("bulk");
    app.create_email(&body).await;
    app.create_email(&email_body(&main_to)).await;
    bulk_relay.delivery_to(&bulk_to).await;
    main_relay.delivery_to(&main_to).await;
    assert_eq!(bulk_relay.deliveries().len(), 1);
    assert_eq!(main_relay.deliveries().len(), 1);
}

#[tokio::test]
async fn a_transactional_email_overtakes_a_backlog_of_two_thousand_bulk_emails() {
    // A relay that takes 200 ms per message: the bulk lane (16 send slots) gets through
    // about 80 a second, so 2,000 bulk emails are a backlog of some 25 s.
    let smtp = FakeSmtp::start(Behaviour::Slow(Duration::from_millis(200))).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.lanes.bulk_send_slots = 16;
        s.auth.rate_limit.per_second = 10_000.0;
        s.auth.rate_limit.burst = 10_000;
    })
    .await;
    let batches = (0..20).map(|_| {
        let emails: Vec<Value> = (0..100)
            .map(|_| {
                let mut body = email_body(&unique_recipient("bulk"));
                body["lane"] = json!("bulk");
                body
            })
            .collect();
        let app = &app;
        async move {
            let response = post_batch(app, &emails).await;
            assert_eq!(response.status(), 201);
        }
    });
    join_all(batches).await;
    // The backlog is there: most of it not yet sent.
    let (sent_bulk,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM emails WHERE lane = 'bulk' AND status = 'sent'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(sent_bulk < 1500, "{sent_bulk} of 2000 already sent");

    let started = Instant::now();
    let reset = app
        .create_email(&email_body(&unique_recipient("password-reset")))
        .await;
    let id = reset["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", Duration::from_secs(30))
        .await;
    let took = started.elapsed();
    let (pending_bulk,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM emails WHERE lane = 'bulk' AND status <> 'sent'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    eprintln!("transactional email sent after {took:?}, {pending_bulk} bulk emails still waiting");
    assert!(
        pending_bulk > 0,
        "the bulk backlog is still there when the transactional email goes"
    );
    // The figure is 3 s; the bound is generous for a loaded test machine.
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[tokio::test]
async fn a_send_that_waits_too_long_for_its_lane_s_slot_is_deferred_not_sent_late() {
    // One bulk slot, a relay that takes 1.5 s per message, and smtp.timeout 2 s: of three
    // bulk emails at once, the second waits 1.5 s for the slot (in time), the third 3 s.
    let smtp = FakeSmtp::start(Behaviour::Slow(Duration::from_millis(1500))).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.smtp.timeout = Duration::from_secs(2);
        s.lanes.bulk_send_slots = 1;
        // The deferred one stays deferred while the test looks.
        s.delivery.backoff = vec![Duration::from_secs(60)];
    })
    .await;
    let emails: Vec<Value> = (0..3)
        .map(|_| {
            let mut body = email_body(&unique_recipient("slot"));
            body["lane"] = json!("bulk");
            body
        })
        .collect();
    let response = post_batch(&app, &emails).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let mut outcomes = Vec::new();
    for email in created["emails"].as_array().unwrap() {
        let id = email["emailID"].as_str().unwrap();
        let settled =
            crate::helpers::wait_for(Duration::from_secs(20), "the attempt ends", || async {
                let email: Value = app.get_email(id).await.json().await.unwrap();
                ["sent", "deferred"]
                    .contains(&email["status"].as_str().unwrap_or_default())
                    .then_some(email)
            })
            .await;
        outcomes.push(settled);
    }
    let deferred: Vec<&Value> = outcomes
        .iter()
        .filter(|e| e["status"] == "deferred")
        .collect();
    assert_eq!(deferred.len(), 1, "{outcomes:?}");
    assert!(
        deferred[0]["lastError"]
            .as_str()
            .unwrap()
            .contains("no bulk send slot came free"),
        "{}",
        deferred[0]
    );
    assert_eq!(smtp.deliveries().len(), 2, "the late one was not sent");
}
