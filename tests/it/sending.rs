//! The sending API against the real stack: batches, scheduled sends (timing, restarts,
//! two instances), cancel and reschedule (racing the workers), the filtered list with
//! its cursors, the attempts of an email.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, email_body, eventually,
    smtp::{Behaviour, FakeSmtp},
    spawn_app_with, spawn_sibling, unique_recipient, wait_for,
};

async fn post(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn patch(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn in_ms(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn a_batch_of_a_hundred_is_stored_in_order_and_each_is_sent() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let emails: Vec<Value> = (0..100)
        .map(|i| {
            let mut email = email_body(&unique_recipient(&format!("batch{i}")));
            email["subject"] = json!(format!("batch {i}"));
            email
        })
        .collect();
    let response = post(&app, "/api/v1/email/batch", &json!({ "emails": emails })).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let created = created["emails"].as_array().unwrap().clone();
    assert_eq!(created.len(), 100);
    for (i, email) in created.iter().enumerate() {
        assert_eq!(email["subject"], format!("batch {i}"), "in request order");
    }
    eventually(
        Duration::from_secs(30),
        "every email of the batch is sent",
        || async { smtp.received().len() >= 100 },
    )
    .await;
    assert_eq!(app.stored_emails().await, 100);
}

#[tokio::test]
async fn a_batch_with_one_invalid_email_creates_nothing_and_names_it() {
    let app = spawn_app_with(|_| {}).await;
    let mut emails: Vec<Value> = (0..10)
        .map(|i| email_body(&unique_recipient(&format!("b{i}"))))
        .collect();
    emails[7]["to"] = json!("not-an-address");
    emails[3]["attachments"] = json!([{"filename": "a/b", "content": "eA=="}]);
    let response = post(&app, "/api/v1/email/batch", &json!({ "emails": emails })).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["emails[3].attachments[0].filename", "emails[7].to"]
    );
    assert_eq!(app.stored_emails().await, 0);

    let too_many: Vec<Value> = (0..101).map(|_| email_body("a@example.com")).collect();
    let response = post(&app, "/api/v1/email/batch", &json!({ "emails": too_many })).await;
    assert_eq!(response.status(), 400);
    let response = post(&app, "/api/v1/email/batch", &json!({ "emails": [] })).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_batch_idempotency_key_replays_the_same_batch_and_refuses_another() {
    let app = spawn_app_with(|_| {}).await;
    let batch = json!({"emails": [email_body("a@example.com"), email_body("b@example.com")]});
    let send = |body: Value| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/v1/email/batch"))
                .header("Idempotency-Key", "newsletter-2026-12")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = send(batch.clone()).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send(batch.clone()).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    let ids = |v: &Value| {
        v["emails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["emailID"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&first));
    let other = send(json!({"emails": [email_body("c@example.com")]})).await;
    assert_eq!(other.status(), 409);
    assert_eq!(app.stored_emails().await, 2);
}

#[tokio::test]
async fn a_grpc_batch_is_stored_whole_or_refused_whole() {
    use mailroom::grpc::pb::{CreateBatchReq, CreateReq};
    let app = spawn_app_with(|_| {}).await;
    let email = |to: &str| CreateReq {
        from: "sender@example.com".into(),
        to: to.into(),
        subject: "s".into(),
        message: "m".into(),
        ..Default::default()
    };
    let mut client = app.grpc_client().await;
    let created = client
        .create_batch(CreateBatchReq {
            emails: vec![email("a@example.com"), email("b@example.com")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.emails.len(), 2);
    let status = client
        .create_batch(CreateBatchReq {
            emails: vec![email("a@example.com"), email("nope")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("Emails[1].To"),
        "{}",
        status.message()
    );
    assert_eq!(app.stored_emails().await, 2);
}

/// When an email was first tried, by PostgreSQL's clock.
async fn first_attempt_at(app: &TestApp, id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT min(started_at) FROM email_attempts WHERE email_id = $1::uuid")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_scheduled_email_is_sent_at_its_time_not_before_and_soon_after() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let mut body = email_body(&unique_recipient("scheduled"));
    body["scheduledAt"] = json!(in_ms(1500));
    let created = app.create_email(&body).await;
    assert_eq!(created["status"], "scheduled");
    let id = created["emailID"].as_str().unwrap();
    let due: chrono::DateTime<chrono::Utc> =
        created["scheduledAt"].as_str().unwrap().parse().unwrap();

    let sent = app
        .wait_for_status(id, "sent", Duration::from_secs(15))
        .await;
    let attempted = first_attempt_at(&app, id).await.unwrap();
    assert!(
        attempted >= due,
        "tried at {attempted}, before its time {due}"
    );
    let late = (attempted - due).to_std().unwrap();
    assert!(
        late < Duration::from_secs(1),
        "tried {late:?} after its time"
    );
    assert_eq!(sent["attempts"], 1);
}

#[tokio::test]
async fn a_due_email_is_sent_once_by_two_instances() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let first = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let _second = spawn_sibling(&first, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut body = email_body(&unique_recipient(&format!("twice{i}")));
        body["scheduledAt"] = json!(in_ms(1000));
        ids.push(
            first.create_email(&body).await["emailID"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        first
            .wait_for_status(id, "sent", Duration::from_secs(15))
            .await;
    }
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM email_attempts")
        .fetch_one(&first.db)
        .await
        .unwrap();
    assert_eq!(attempts, 20, "one attempt per email");
    assert_eq!(smtp.received().len(), 20, "each sent once");
}

#[tokio::test]
async fn scheduled_emails_survive_a_stop_and_a_kill() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let mut app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let mut ids = Vec::new();
    for (i, after) in [1500, 2500].into_iter().enumerate() {
        let mut body = email_body(&unique_recipient(&format!("survive{i}")));
        body["scheduledAt"] = json!(in_ms(after));
        ids.push(
            app.create_email(&body).await["emailID"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // One instance stops cleanly, another dies; a third, started later, sends both.
    app.stop().await;
    let mut killed = spawn_sibling(&app, |_| {}).await;
    killed.kill();
    let next = spawn_sibling(&app, |_| {}).await;
    for id in &ids {
        next.wait_for_status(id, "sent", Duration::from_secs(20))
            .await;
    }
    assert_eq!(smtp.received().len(), 2);
}

#[tokio::test]
async fn a_canceled_email_is_never_sent_and_a_sent_one_cannot_be_canceled() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let mut body = email_body(&unique_recipient("cancel"));
    body["scheduledAt"] = json!(in_ms(800));
    let id = app.create_email(&body).await["emailID"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = post(&app, &format!("/api/v1/email/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), 200);
    let canceled: Value = response.json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");

    let sent = app
        .create_email(&email_body(&unique_recipient("sent")))
        .await;
    let sent_id = sent["emailID"].as_str().unwrap();
    app.wait_for_status(sent_id, "sent", Duration::from_secs(15))
        .await;
    let response = post(&app, &format!("/api/v1/email/{sent_id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), 409);
    let again = post(&app, &format!("/api/v1/email/{id}/cancel"), &json!({})).await;
    assert_eq!(again.status(), 409, "canceled already");
    let unknown = post(
        &app,
        &format!("/api/v1/email/{}/cancel", uuid::Uuid::now_v7()),
        &json!({}),
    )
    .await;
    assert_eq!(unknown.status(), 404);

    // Well past its time, the canceled email was not sent: only the other one was.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, email) = get_json(&app, &format!("/api/v1/email/{id}")).await;
    assert_eq!(email["status"], "canceled");
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn cancel_racing_the_workers_either_wins_and_nothing_is_sent_or_loses_to_a_sent_email() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    // Stored at once, then canceled at once, while the workers take them.
    let bodies: Vec<Value> = (0..40)
        .map(|i| {
            let mut body = email_body(&unique_recipient(&format!("race{i}")));
            body["subject"] = json!(format!("race-{i}"));
            body
        })
        .collect();
    let created: Value = post(&app, "/api/v1/email/batch", &json!({ "emails": bodies }))
        .await
        .json()
        .await
        .unwrap();
    let emails: Vec<(usize, String)> = created["emails"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, e)| (i, e["emailID"].as_str().unwrap().to_owned()))
        .collect();
    let answers = join_all(emails.iter().map(|(_, id)| {
        let app = &app;
        async move {
            post(app, &format!("/api/v1/email/{id}/cancel"), &json!({}))
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    for ((i, id), answer) in emails.iter().zip(answers) {
        let final_status = wait_for(Duration::from_secs(15), "the email settles", || async {
            let (_, email) = get_json(&app, &format!("/api/v1/email/{id}")).await;
            let status = email["status"].as_str().unwrap().to_owned();
            ["canceled", "sent"]
                .contains(&status.as_str())
                .then_some(status)
        })
        .await;
        let delivered = smtp
            .received()
            .iter()
            .any(|m| m.contains(&format!("Subject: race-{i}\n")));
        match answer {
            200 => {
                assert_eq!(final_status, "canceled");
                assert!(!delivered, "race-{i} was canceled and sent");
            }
            409 => assert_eq!(final_status, "sent", "race-{i}"),
            other => panic!("cancel answered {other}"),
        }
    }
}

#[tokio::test]
async fn reschedule_moves_a_scheduled_email_and_refuses_one_that_is_not() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let mut body = email_body(&unique_recipient("resched"));
    body["scheduledAt"] = json!(in_ms(60_000));
    let id = app.create_email(&body).await["emailID"]
        .as_str()
        .unwrap()
        .to_owned();
    let sooner = in_ms(800);
    let started = Instant::now();
    let response = patch(
        &app,
        &format!("/api/v1/email/{id}"),
        &json!({ "scheduledAt": sooner }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let moved: Value = response.json().await.unwrap();
    assert_eq!(moved["status"], "scheduled");
    app.wait_for_status(&id, "sent", Duration::from_secs(15))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "sent at its new time"
    );

    let response = patch(
        &app,
        &format!("/api/v1/email/{id}"),
        &json!({ "scheduledAt": in_ms(5000) }),
    )
    .await;
    assert_eq!(response.status(), 409);
    for bad in [
        json!({}),
        json!({"scheduledAt": "tomorrow"}),
        json!({"scheduledAt": "2026-12-24T09:00:00"}),
    ] {
        let response = patch(&app, &format!("/api/v1/email/{id}"), &bad).await;
        assert_eq!(response.status(), 400, "{bad}");
    }
    let far = (chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    let mut body = email_body("a@example.com");
    body["scheduledAt"] = json!(far);
    let response = app.post_email(&body).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "scheduledAt");
}

#[tokio::test]
async fn grpc_cancel_and_reschedule_answer_failed_precondition_when_too_late() {
    use mailroom::grpc::pb::{CancelReq, CreateReq, RescheduleReq};
    let app = spawn_app_with(|_| {}).await;
    let mut client = app.grpc_client().await;
    let at = |ms: i64| {
        let t = chrono::Utc::now() + chrono::Duration::milliseconds(ms);
        prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        }
    };
    let created = client
        .create(CreateReq {
            from: "sender@example.com".into(),
            to: "a@example.com".into(),
            subject: "s".into(),
            message: "m".into(),
            scheduled_at: Some(at(60_000)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let email = created.email.unwrap();
    assert_eq!(email.status(), mailroom::grpc::pb::EmailStatus::Scheduled);
    let id = email.email_id;
    // One reading of the clock for the request and the check (two readings can fall on
    // either side of a second).
    let later = at(120_000);
    let moved = client
        .reschedule(RescheduleReq {
            email_id: id.clone(),
            scheduled_at: Some(later),
        })
        .await
        .unwrap()
        .into_inner()
        .email
        .unwrap();
    assert_eq!(moved.scheduled_at.unwrap().seconds, later.seconds);
    let canceled = client
        .cancel(CancelReq {
            email_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        canceled.email.unwrap().status(),
        mailroom::grpc::pb::EmailStatus::Canceled
    );
    let status = client
        .cancel(CancelReq {
            email_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let status = client
        .reschedule(RescheduleReq {
            email_id: id,
            scheduled_at: Some(at(1000)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn the_list_filters_combine_and_pages_follow_by_cursor() {
    let app = spawn_app_with(|_| {}).await;
    let marker = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut expected_invoices = Vec::new();
    for i in 0..25 {
        let mut body = email_body(&format!("bob-{marker}@example.com"));
        body["tags"] = json!({"category": if i % 2 == 0 { "invoice" } else { "receipt" }});
        body["subject"] = json!(format!("list {i}"));
        let id = app.create_email(&body).await["emailID"]
            .as_str()
            .unwrap()
            .to_owned();
        if i % 2 == 0 {
            expected_invoices.push(id);
        }
    }
    // Someone whose address holds bob's: not a match for bob.
    app.create_email(&email_body(&format!("jimbob-{marker}@example.com")))
        .await;
    let mut scheduled = email_body(&format!("bob-{marker}@example.com"));
    scheduled["scheduledAt"] = json!(in_ms(3_600_000));
    let scheduled_id = app.create_email(&scheduled).await["emailID"]
        .as_str()
        .unwrap()
        .to_owned();

    // Page through the invoices 5 at a time: newest first, each once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path =
            format!("/api/v1/email?tag=category:invoice&to=bob-{marker}@example.com&limit=5");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = get_json(&app, &path).await;
        assert_eq!(status, 200, "{page}");
        for email in page["emails"].as_array().unwrap() {
            seen.push(email["emailID"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut newest_first = expected_invoices.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every invoice once, newest first");

    let (_, by_status) = get_json(
        &app,
        &format!("/api/v1/email?status=scheduled&to=bob-{marker}@example.com"),
    )
    .await;
    let ids: Vec<&str> = by_status["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["emailID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [scheduled_id.as_str()]);
    let (_, jim) = get_json(
        &app,
        &format!("/api/v1/email?to=jimbob-{marker}@example.com"),
    )
    .await;
    assert_eq!(jim["emails"].as_array().unwrap().len(), 1);
    let (_, searched) = get_json(
        &app,
        &format!("/api/v1/email?search=list&to=bob-{marker}@example.com&limit=100"),
    )
    .await;
    assert_eq!(searched["emails"].as_array().unwrap().len(), 25);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339()
        .replace('+', "%2B");
    let (_, none) = get_json(&app, &format!("/api/v1/email?createdAfter={future}")).await;
    assert!(none["emails"].as_array().unwrap().is_empty());

    for bad in [
        "status=lost",
        "limit=0",
        "limit=101",
        "cursor=forged",
        "tag=nocolon",
        "createdAfter=yesterday",
    ] {
        let (status, problem) = get_json(&app, &format!("/api/v1/email?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
}

#[tokio::test]
async fn the_attempts_of_an_email_are_listed_oldest_first() {
    let smtp = FakeSmtp::start(Behaviour::RejectFirst(
        1,
        "451 4.3.0 try again later".into(),
    ))
    .await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.delivery.backoff = vec![Duration::from_millis(200)];
    })
    .await;
    let id = app
        .create_email(&email_body(&unique_recipient("attempts")))
        .await["emailID"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_for_status(&id, "sent", Duration::from_secs(20))
        .await;
    let (status, body) = get_json(&app, &format!("/api/v1/email/{id}/attempts")).await;
    assert_eq!(status, 200);
    let attempts = body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (
            attempts[0]["attempt"].clone(),
            attempts[0]["outcome"].clone(),
            attempts[0]["smtpCode"].clone()
        ),
        (json!(1), json!("transient"), json!(451))
    );
    assert_eq!(
        (
            attempts[1]["attempt"].clone(),
            attempts[1]["outcome"].clone()
        ),
        (json!(2), json!("sent"))
    );
    let (status, _) = get_json(
        &app,
        &format!("/api/v1/email/{}/attempts", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(status, 404);
}
