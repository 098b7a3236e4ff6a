//! `Create`, `GetByID` and `Search` with a client generated from `proto/email.proto`.

use std::time::Duration;

use mailroom::grpc::pb::{CreateReq, EmailStatus, GetByIdReq, SearchReq};
use serde_json::Value;

use super::create_req;
use crate::helpers::{email_body, spawn_app, spawn_app_with, unique_recipient};

#[tokio::test]
async fn create_answers_ok_with_the_stored_queued_email() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let to = unique_recipient("grpc-create");

    let created = client
        .create(create_req(&to))
        .await
        .expect("Create succeeds")
        .into_inner();

    assert_eq!(created.status, "Ok");
    assert!(
        uuid::Uuid::parse_str(&created.email_id).is_ok(),
        "{created:?}"
    );
    assert_eq!(created.email_status(), EmailStatus::Queued);
    assert!(!created.replayed);
    let email = created.email.expect("the stored email");
    assert_eq!(email.email_id, created.email_id);
    assert_eq!(
        (email.to.as_str(), email.subject.as_str()),
        (to.as_str(), "Hello over gRPC")
    );
    assert!(email.created_at.is_some());

    // Stored synchronously, where REST reads it too.
    let response = app.get_email(&created.email_id).await;
    assert_eq!(response.status(), 200);
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["message"], "This message travelled over TLS.");
}

#[tokio::test]
async fn get_by_id_returns_the_subject_and_the_message_as_written() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let created = client
        .create(CreateReq {
            subject: "Quarterly report".into(),
            message: "The numbers are attached.".into(),
            html: "<p>The numbers are <b>attached</b>.</p>".into(),
            ..create_req(&unique_recipient("grpc-get"))
        })
        .await
        .unwrap()
        .into_inner();

    let email = client
        .get_by_id(GetByIdReq {
            email_id: created.email_id.clone(),
        })
        .await
        .expect("GetByID succeeds")
        .into_inner()
        .email
        .expect("an email");

    assert_eq!(email.email_id, created.email_id);
    assert_eq!(email.subject, "Quarterly report");
    assert_eq!(email.message, "The numbers are attached.");
    assert_eq!(email.html, "<p>The numbers are <b>attached</b>.</p>");
    assert_eq!(email.from, "sender@example.com");
}

#[tokio::test]
async fn an_email_sent_after_a_grpc_create_reads_back_with_its_delivery() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let created = client
        .create(create_req(&unique_recipient("grpc-sent")))
        .await
        .unwrap()
        .into_inner();
    app.wait_for_status(&created.email_id, "sent", Duration::from_secs(15))
        .await;

    let email = client
        .get_by_id(GetByIdReq {
            email_id: created.email_id,
        })
        .await
        .unwrap()
        .into_inner()
        .email
        .unwrap();
    assert_eq!(email.status(), EmailStatus::Sent);
    assert_eq!(email.attempts, 1);
    assert!(email.sent_at.is_some());
    assert_eq!(email.last_error, "");
}

#[tokio::test]
async fn search_pages_through_matches_newest_first() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let created = client
            .create(CreateReq {
                subject: format!("Albatross sighting {i}"),
                ..create_req(&unique_recipient("grpc-search"))
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(created.email_id);
    }
    // Something that must not match.
    app.create_email(&email_body(&unique_recipient("other")))
        .await;

    let first = client
        .search(SearchReq {
            search: "albatross".into(),
            page: 1,
            size: 2,
        })
        .await
        .expect("Search succeeds")
        .into_inner();
    assert_eq!(
        (
            first.total_count,
            first.total_pages,
            first.page,
            first.size,
            first.has_more,
            first.total_count_exact
        ),
        (3, 2, 1, 2, true, true)
    );
    let found: Vec<_> = first.emails.iter().map(|e| e.email_id.clone()).collect();
    assert_eq!(found, vec![ids[2].clone(), ids[1].clone()], "newest first");

    let second = client
        .search(SearchReq {
            search: "albatross".into(),
            page: 2,
            size: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!second.has_more);
    assert_eq!(second.emails.len(), 1);
    assert_eq!(second.emails[0].email_id, ids[0]);

    // Unset page and size take the defaults, as in the original service.
    let defaults = client
        .search(SearchReq {
            search: "albatross".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (defaults.page, defaults.size, defaults.emails.len()),
        (1, 10, 3)
    );
}

#[tokio::test]
async fn search_says_when_the_total_count_stopped_at_the_count_limit() {
    let app = spawn_app_with(|s| s.search.count_limit = 2).await;
    let mut client = app.grpc_client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let created = client
            .create(CreateReq {
                subject: format!("Cormorant sighting {i}"),
                ..create_req(&unique_recipient("grpc-capped"))
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(created.email_id);
    }
    let page = client
        .search(SearchReq {
            search: "cormorant".into(),
            page: 1,
            size: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (page.total_count, page.total_count_exact, page.has_more),
        (2, false, true)
    );
    let found: Vec<_> = page.emails.iter().map(|e| e.email_id.clone()).collect();
    assert_eq!(found, vec![ids[2].clone()], "newest first");
}

#[tokio::test]
async fn the_same_idempotency_key_and_content_returns_the_same_email() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let request = CreateReq {
        idempotency_key: "grpc-welcome-1".into(),
        ..create_req(&unique_recipient("grpc-idem"))
    };
    let first = client.create(request.clone()).await.unwrap().into_inner();
    let again = client.create(request).await.unwrap().into_inner();

    assert_eq!(again.email_id, first.email_id);
    assert!(!first.replayed);
    assert!(again.replayed);
    assert_eq!(again.status, "Ok");
    assert_eq!(app.stored_emails().await, 1);
}

#[tokio::test]
async fn calls_are_counted_by_method_and_code() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    client
        .create(create_req(&unique_recipient("grpc-metrics")))
        .await
        .unwrap();
    client
        .create(create_req("not an address"))
        .await
        .unwrap_err();

    let metrics = app.metrics().await;
    for line in [
        r#"mailroom_grpc_requests_total{code="OK",method="emailService.EmailService/Create"} 1"#,
        r#"mailroom_grpc_requests_total{code="INVALID_ARGUMENT",method="emailService.EmailService/Create"} 1"#,
        r#"mailroom_grpc_request_duration_seconds_count{method="emailService.EmailService/Create"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}
