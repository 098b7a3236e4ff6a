//! API keys and rate limits on gRPC: the `authorization` metadata, UNAUTHENTICATED and
//! RESOURCE_EXHAUSTED; health checks and reflection stay open.

use mailroom::grpc::pb::{GetByIdReq, SearchReq, email_service_client::EmailServiceClient};
use tonic::{Code, metadata::MetadataValue};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use super::create_req;
use crate::helpers::{spawn_app, spawn_app_with, unique_recipient};

#[tokio::test]
async fn every_method_refuses_a_call_without_a_key() {
    let app = spawn_app().await;
    let mut anonymous = EmailServiceClient::new(app.grpc_channel().await);
    let statuses = [
        anonymous
            .create(create_req(&unique_recipient("anon")))
            .await
            .unwrap_err(),
        anonymous
            .get_by_id(GetByIdReq {
                email_id: uuid::Uuid::now_v7().to_string(),
            })
            .await
            .unwrap_err(),
        anonymous.search(SearchReq::default()).await.unwrap_err(),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("authorization"),
            "{}",
            status.message()
        );
    }
    assert_eq!(app.stored_emails().await, 0);
}

#[tokio::test]
async fn a_wrong_key_is_unauthenticated() {
    let app = spawn_app().await;
    let mut client = EmailServiceClient::with_interceptor(
        app.grpc_channel().await,
        |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", MetadataValue::from_static("Bearer wrong"));
            Ok(request)
        },
    );
    let status = client.search(SearchReq::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        app.metrics()
            .await
            .contains("mailroom_auth_denied_total{protocol=\"grpc\",reason=\"invalid\"} 1")
    );
}

#[tokio::test]
async fn the_key_opens_every_method() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let created = client
        .create(create_req(&unique_recipient("keyed")))
        .await
        .unwrap()
        .into_inner();
    client
        .get_by_id(GetByIdReq {
            email_id: created.email_id,
        })
        .await
        .unwrap();
    client.search(SearchReq::default()).await.unwrap();
}

#[tokio::test]
async fn health_checks_need_no_key() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.grpc_channel().await);
    let answer = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(answer.is_ok(), "{answer:?}");
}

#[tokio::test]
async fn a_key_over_its_rate_is_resource_exhausted_with_retry_info() {
    let app = spawn_app_with(|s| {
        s.auth.rate_limit.per_second = 0.5;
        s.auth.rate_limit.burst = 2;
    })
    .await;
    let mut client = app.grpc_client().await;
    client.search(SearchReq::default()).await.unwrap();
    client.search(SearchReq::default()).await.unwrap();
    let status = client.search(SearchReq::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let delay = status
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("a delay");
    assert!(
        delay > std::time::Duration::ZERO && delay <= std::time::Duration::from_secs(2),
        "{delay:?}"
    );
}
