//! API keys as clients: the scopes a key holds decide what it may call (REST 403,
//! gRPC PERMISSION_DENIED), and an idempotency key belongs to the API key that used it,
//! for `idempotency.ttl`.

use std::time::Duration;

use mailroom::{
    api_keys::{ApiKeys, hash_key},
    grpc::pb::{GetByIdReq, ListReq, email_service_client::EmailServiceClient},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::{Code, metadata::MetadataValue};

use crate::{
    grpc::create_req,
    helpers::{TEST_API_KEY, TestApp, email_body, eventually, spawn_app_with, unique_recipient},
};

/// `auth.api_keys` with one entry per `(name, scopes)`; each key is `{name}-secret`.
fn keys(clients: &[(&str, Option<&str>)]) -> ApiKeys {
    let entries: Vec<String> = clients
        .iter()
        .map(|(name, scopes)| {
            let hash = hash_key(&format!("{name}-secret"));
            match scopes {
                Some(scopes) => format!("{name}:{hash}:{scopes}"),
                None => format!("{name}:{hash}"),
            }
        })
        .collect();
    ApiKeys::parse(&entries).unwrap()
}

/// A REST client presenting `{name}-secret`.
fn client_of(name: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {name}-secret").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn post(
    app: &TestApp,
    client: &reqwest::Client,
    body: &Value,
    key: &str,
) -> reqwest::Response {
    client
        .post(app.url("/api/v1/email"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn id_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["emailID"].as_str().unwrap().to_owned()
}

async fn assert_forbidden(response: reqwest::Response, scope: &str) {
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 403);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(scope), "{detail}");
}

#[tokio::test]
async fn a_key_may_only_do_what_its_scopes_allow_over_rest() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = keys(&[("sender", Some("send")), ("reader", Some("read"))]);
    })
    .await;
    let (sender, reader) = (client_of("sender"), client_of("reader"));

    let refused = reader
        .post(app.url("/api/v1/email"))
        .json(&email_body(&unique_recipient("scopes")))
        .send()
        .await
        .unwrap();
    assert_forbidden(refused, "send").await;
    assert_eq!(
        app.stored_emails().await,
        0,
        "a refused create stores nothing"
    );

    let created = sender
        .post(app.url("/api/v1/email"))
        .json(&email_body(&unique_recipient("scopes")))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = id_of(created).await;

    for path in [
        format!("/api/v1/email/{id}"),
        format!("/api/v1/email/{id}/attempts"),
        "/api/v1/email/search?q=hello".to_owned(),
        "/api/v1/email?limit=5".to_owned(),
    ] {
        let refused = sender.get(app.url(&path)).send().await.unwrap();
        assert_forbidden(refused, "read").await;
        let read = reader.get(app.url(&path)).send().await.unwrap();
        assert_eq!(read.status(), StatusCode::OK, "{path}");
    }
    let cancel = reader
        .post(app.url(&format!("/api/v1/email/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_forbidden(cancel, "send").await;
}

#[tokio::test]
async fn a_key_may_only_do_what_its_scopes_allow_over_grpc() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = keys(&[("sender", Some("send")), ("reader", Some("read"))]);
    })
    .await;
    let channel = app.grpc_channel().await;
    let keyed = |name: &str| {
        let value: MetadataValue<_> = format!("Bearer {name}-secret").parse().unwrap();
        EmailServiceClient::with_interceptor(
            channel.clone(),
            move |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
                Ok(request)
            },
        )
    };
    let (mut sender, mut reader) = (keyed("sender"), keyed("reader"));

    let refused = reader
        .create(create_req(&unique_recipient("grpc-scopes")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("send"), "{}", refused.message());
    assert_eq!(app.stored_emails().await, 0);

    let created = sender
        .create(create_req(&unique_recipient("grpc-scopes")))
        .await
        .unwrap()
        .into_inner();
    let get = || GetByIdReq {
        email_id: created.email_id.clone(),
    };
    let refused = sender.get_by_id(get()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("read"), "{}", refused.message());
    assert_eq!(
        sender.list(ListReq::default()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    reader.get_by_id(get()).await.unwrap();
    reader.list(ListReq::default()).await.unwrap();
}

#[tokio::test]
async fn an_entry_without_scopes_keeps_every_scope() {
    let app = spawn_app_with(|s| s.auth.api_keys = keys(&[("legacy", None)])).await;
    let legacy = client_of("legacy");
    let created = legacy
        .post(app.url("/api/v1/email"))
        .json(&email_body(&unique_recipient("legacy")))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = id_of(created).await;
    let read = legacy
        .get(app.url(&format!("/api/v1/email/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_api_keys_may_use_the_same_idempotency_key() {
    let app = spawn_app_with(|s| s.auth.api_keys = keys(&[("alpha", None), ("beta", None)])).await;
    let (alpha, beta) = (client_of("alpha"), client_of("beta"));
    let to = unique_recipient("shared-key");
    let alpha_body = email_body(&to);
    let mut beta_body = alpha_body.clone();
    beta_body["subject"] = "Beta's own email".into();

    let first = post(&app, &alpha, &alpha_body, "order-1").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let alpha_id = id_of(first).await;
    // Other content under the same key: beta's own email, not a conflict with alpha's.
    let other = post(&app, &beta, &beta_body, "order-1").await;
    assert_eq!(other.status(), StatusCode::CREATED);
    assert!(other.headers().get("idempotent-replayed").is_none());
    let beta_id = id_of(other).await;
    assert_ne!(alpha_id, beta_id);

    // Each key still answers its own client's email, and conflicts within that client.
    let again = post(&app, &alpha, &alpha_body, "order-1").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(id_of(again).await, alpha_id);
    let again = post(&app, &beta, &beta_body, "order-1").await;
    assert_eq!(id_of(again).await, beta_id);
    let conflict = post(&app, &alpha, &beta_body, "order-1").await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);

    // The asynchronous path too: JetStream must not drop beta's event as a repeat of
    // alpha's (their Nats-Msg-Id differ), and the create worker keys them apart.
    for client in [&alpha, &beta] {
        let accepted = client
            .post(app.url("/api/v1/email"))
            .header("Idempotency-Key", "order-2")
            .header("Prefer", "respond-async")
            .json(&alpha_body)
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    }
    eventually(
        Duration::from_secs(10),
        "both asynchronous emails",
        || async { app.stored_emails().await == 4 },
    )
    .await;
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_client FROM emails WHERE idempotency_key = 'order-2' \
         ORDER BY idempotency_client",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(owners, ["alpha", "beta"]);
}

#[tokio::test]
async fn the_same_client_gets_its_email_back_over_grpc_under_a_key_it_used_over_rest() {
    let app = spawn_app_with(|s| {
        let entries = [
            format!("test:{}", hash_key(TEST_API_KEY)),
            format!("alpha:{}", hash_key("alpha-secret")),
        ];
        s.auth.api_keys = ApiKeys::parse(&entries).unwrap();
    })
    .await;
    let to = unique_recipient("grpc-key");
    let mut request = create_req(&to);
    request.idempotency_key = "order-9".into();
    // `TestApp::grpc_client` presents the test key (client "test").
    let first = app
        .grpc_client()
        .await
        .create(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = app
        .grpc_client()
        .await
        .create(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.email_id, first.email_id);
    // The same key and content from alpha is alpha's own email.
    let body = json!({
        "from": request.from,
        "to": request.to,
        "subject": request.subject,
        "message": request.message,
    });
    let other = post(&app, &client_of("alpha"), &body, "order-9").await;
    assert_eq!(other.status(), StatusCode::CREATED);
    assert_ne!(id_of(other).await, first.email_id);
}

#[tokio::test]
async fn a_key_past_its_ttl_creates_a_new_email() {
    let app = spawn_app_with(|s| s.idempotency.ttl = Duration::from_secs(1)).await;
    let body = email_body(&unique_recipient("ttl"));
    let first = post(&app, &app.client, &body, "order-ttl").await;
    let first_id = id_of(first).await;
    let again = post(&app, &app.client, &body, "order-ttl").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(id_of(again).await, first_id);

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // Other content is no conflict any more: the key is free again.
    let mut other = body.clone();
    other["subject"] = "A new order under an old key".into();
    let renewed = post(&app, &app.client, &other, "order-ttl").await;
    assert_eq!(renewed.status(), StatusCode::CREATED);
    assert!(renewed.headers().get("idempotent-replayed").is_none());
    let renewed_id = id_of(renewed).await;
    assert_ne!(renewed_id, first_id);
    let again = post(&app, &app.client, &other, "order-ttl").await;
    assert_eq!(
        id_of(again).await,
        renewed_id,
        "the new email holds the key now"
    );
    assert_eq!(app.stored_emails().await, 2);
}

#[tokio::test]
async fn batch_keys_belong_to_their_client_and_expire() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = keys(&[("alpha", None), ("beta", None)]);
        s.idempotency.ttl = Duration::from_secs(1);
    })
    .await;
    let batch = json!({ "emails": [email_body(&unique_recipient("batch-key"))] });
    let send = |client: reqwest::Client| {
        let request = client
            .post(app.url("/api/v1/email/batch"))
            .header("Idempotency-Key", "batch-1")
            .json(&batch);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body: Value = response.json().await.unwrap();
            (
                body["emails"][0]["emailID"].as_str().unwrap().to_owned(),
                replayed,
            )
        }
    };
    let (alpha_id, _) = send(client_of("alpha")).await;
    let (beta_id, replayed) = send(client_of("beta")).await;
    assert!(!replayed);
    assert_ne!(alpha_id, beta_id);
    assert_eq!(send(client_of("alpha")).await, (alpha_id.clone(), true));

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (renewed, replayed) = send(client_of("alpha")).await;
    assert!(!replayed);
    assert_ne!(renewed, alpha_id);
}
