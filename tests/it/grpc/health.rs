//! `grpc.health.v1.Health`, which follows readiness (PostgreSQL and NATS).

use std::time::Duration;

use mailroom::{
    grpc::pb::{
        CreateReq, GetByIdReq, email_service_client::EmailServiceClient,
        email_service_server::SERVICE_NAME,
    },
    startup::Application,
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::helpers::{
    Isolation, TestCerts, admin_database_url, closed_port, eventually, grpc_channel, spawn_app,
    test_settings,
};

async fn status_of(client: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("Health/Check answers")
        .into_inner()
        .status()
}

#[tokio::test]
async fn health_answers_serving_for_the_server_and_the_email_service() {
    let app = spawn_app().await;
    let mut client = HealthClient::new(app.grpc_channel().await);
    for service in ["", SERVICE_NAME] {
        let mut client = client.clone();
        eventually(Duration::from_secs(5), "SERVING", || {
            let mut client = client.clone();
            async move { status_of(&mut client, service).await == ServingStatus::Serving }
        })
        .await;
        assert_eq!(
            status_of(&mut client, service).await,
            ServingStatus::Serving
        );
    }
    let unknown = client
        .check(HealthCheckRequest {
            service: "no.Such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn health_turns_not_serving_while_postgres_is_unavailable() {
    let app = spawn_app().await;
    let mut client = HealthClient::new(app.grpc_channel().await);
    eventually(Duration::from_secs(5), "SERVING at first", || {
        let mut client = client.clone();
        async move { status_of(&mut client, "").await == ServingStatus::Serving }
    })
    .await;

    // Take the database away from under the running application.
    let admin = sqlx::PgPool::connect(&admin_database_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{}\" WITH (FORCE)",
        app.isolation.database
    )))
    .execute(&admin)
    .await
    .unwrap();

    for service in ["", SERVICE_NAME] {
        eventually(Duration::from_secs(10), "NOT_SERVING", || {
            let mut client = client.clone();
            async move { status_of(&mut client, service).await == ServingStatus::NotServing }
        })
        .await;
    }
    assert_eq!(status_of(&mut client, "").await, ServingStatus::NotServing);

    // Calls that need PostgreSQL fail without telling the client where it lives. (With
    // the database dropped, PostgreSQL answers "database does not exist", which reads as
    // INTERNAL; an unreachable server is UNAVAILABLE, see the next test.)
    let status = app
        .grpc_client()
        .await
        .get_by_id(GetByIdReq {
            email_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Internal),
        "{status:?}"
    );
    let message = status.message();
    assert!(
        !message.contains("5432") && !message.contains(&app.isolation.database),
        "{message}"
    );
}

#[tokio::test]
async fn with_postgres_unreachable_calls_answer_unavailable_and_health_not_serving() {
    let isolation = Isolation::new();
    let certs = TestCerts::generate();
    let mut settings = test_settings();
    isolation.apply(&mut settings);
    certs.apply(&mut settings);
    // Nothing listens there; the pool connects lazily, so the service still starts.
    settings.database.url =
        format!("postgres://postgres@127.0.0.1:{}/mails_db", closed_port()).into();
    settings.database.migrate_on_start = false;
    settings.database.acquire_timeout = Duration::from_millis(500);
    let app = Application::build(settings.clone())
        .await
        .expect("the application builds");
    let address = format!("https://{}", app.grpc_addr());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let channel = grpc_channel(&address, &certs.ca_pem).await;

    let mut emails =
        EmailServiceClient::with_interceptor(channel.clone(), crate::helpers::with_test_key);
    let status = emails
        .create(CreateReq {
            from: "sender@example.com".into(),
            to: "alice@example.com".into(),
            subject: "Hi".into(),
            message: "Hello".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .get_details_retry_info()
            .is_some_and(|info| info.retry_delay.is_some()),
        "clients are told when to retry: {status:?}"
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "{}",
        status.message()
    );

    let mut health = HealthClient::new(channel);
    eventually(Duration::from_secs(10), "NOT_SERVING", || {
        let mut health = health.clone();
        async move { status_of(&mut health, SERVICE_NAME).await == ServingStatus::NotServing }
    })
    .await;
    assert_eq!(status_of(&mut health, "").await, ServingStatus::NotServing);

    shutdown.cancel();
    running.await.unwrap().expect("a clean stop");
    isolation.clean_up(&settings);
}
