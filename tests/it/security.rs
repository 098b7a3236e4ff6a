//! API keys and rate limits on REST; open routes stay open.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{email_body, spawn_app, spawn_app_with, unique_recipient};

async fn assert_unauthorized(response: reqwest::Response, challenge: &str) {
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["www-authenticate"], challenge);
}

#[tokio::test]
async fn every_api_route_refuses_a_call_without_a_key() {
    let app = spawn_app().await;
    let anonymous = reqwest::Client::new();
    let id = uuid::Uuid::now_v7();
    let calls = [
        anonymous
            .post(app.url("/api/v1/email"))
            .json(&email_body("a@example.com")),
        anonymous.get(app.url(&format!("/api/v1/email/{id}"))),
        anonymous.get(app.url("/api/v1/email/search?search=x")),
    ];
    for call in calls {
        assert_unauthorized(call.send().await.unwrap(), "Bearer").await;
    }
    assert_eq!(app.stored_emails().await, 0, "nothing was created");
}

#[tokio::test]
async fn a_wrong_key_or_scheme_is_refused() {
    let app = spawn_app().await;
    let anonymous = reqwest::Client::new();
    for authorization in [
        "Bearer not-the-key",
        "Basic dGVzdC1rZXk=",
        "test-key",
        "Bearer",
    ] {
        let response = anonymous
            .get(app.url("/api/v1/email/search"))
            .header("Authorization", authorization)
            .send()
            .await
            .unwrap();
        assert_unauthorized(response, "Bearer error=\"invalid_token\"").await;
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("mailroom_auth_denied_total{protocol=\"rest\",reason=\"invalid\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_key_opens_the_api() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(app.url("/api/v1/email"))
        .bearer_auth("test-key")
        .json(&email_body(&unique_recipient("keyed")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn health_metrics_and_the_api_docs_stay_open() {
    let app = spawn_app().await;
    let anonymous = reqwest::Client::new();
    for path in [
        "/health",
        "/ready",
        "/api-docs/openapi.json",
        "/swagger-ui/",
    ] {
        let response = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let metrics = anonymous
        .get(format!("{}/metrics", app.metrics_address))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.auth.rate_limit.per_second = 1.0;
        s.auth.rate_limit.burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let response = app
            .client
            .get(app.url("/api/v1/email/search"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            limited = Some(response);
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let limited = limited.unwrap();
    assert_eq!(
        limited.headers()["content-type"],
        "application/problem+json"
    );
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app
        .client
        .get(app.url("/api/v1/email/search"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the bucket refills");
}

#[tokio::test]
async fn the_openapi_document_declares_the_bearer_scheme_and_scope_on_every_email_operation() {
    let app = spawn_app().await;
    let spec: Value = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        spec["components"]["securitySchemes"]["api_key"]["type"],
        "http"
    );
    assert_eq!(
        spec["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    // Each operation names the scope its key needs.
    for (path, method, scope) in [
        ("/api/v1/email", "post", "send"),
        ("/api/v1/email/{emailID}", "get", "read"),
        ("/api/v1/email/search", "get", "read"),
    ] {
        let operation = &spec["paths"][path][method];
        assert_eq!(
            operation["security"][0]["api_key"],
            serde_json::json!([scope]),
            "{path}"
        );
        assert!(operation["responses"]["403"].is_object(), "{path}");
        assert!(operation["responses"]["401"].is_object(), "{path}");
        assert!(operation["responses"]["429"].is_object(), "{path}");
    }
    assert!(
        spec["paths"]["/health"]["get"].get("security").is_none(),
        "health stays open"
    );
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app =
        spawn_app_with(|s| s.http.cors_allowed_origins = vec!["https://app.example.com".into()])
            .await;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/email"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
