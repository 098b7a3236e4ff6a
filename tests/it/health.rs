//! `/health` and `/ready`.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{closed_port, eventually, spawn_app, spawn_app_with};

fn dependency<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn health_and_ready_report_every_dependency_up() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["status"], "ok", "{report}");
    for name in ["postgres", "nats", "redis", "smtp"] {
        assert_eq!(
            dependency(&report, name)["status"],
            "up",
            "{name}: {report}"
        );
    }

    let response = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(dependency(&report, "postgres")["required"], true);
    assert_eq!(dependency(&report, "redis")["required"], false);
}

#[tokio::test]
async fn redis_down_degrades_health_but_not_readiness() {
    let port = closed_port();
    let app = spawn_app_with(|s| s.redis.url = format!("redis://127.0.0.1:{port}").into()).await;
    let report: Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["status"], "degraded");
    assert_eq!(dependency(&report, "redis")["status"], "down");
    assert_eq!(
        app.client
            .get(app.url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn ready_answers_503_while_postgres_is_unavailable() {
    let app = spawn_app().await;
    // Take the database away from under the running application.
    let admin_url = std::env::var("MAILROOM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{}\" WITH (FORCE)",
        app.isolation.database
    )))
    .execute(&admin)
    .await
    .unwrap();

    eventually(Duration::from_secs(10), "/ready reports 503", || async {
        app.client
            .get(app.url("/ready"))
            .send()
            .await
            .unwrap()
            .status()
            == 503
    })
    .await;
    let response = app.client.get(app.url("/ready")).send().await.unwrap();
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["status"], "unavailable");
    assert_eq!(dependency(&report, "postgres")["status"], "down");
    assert!(
        !report.to_string().contains("5432"),
        "no connection details leak: {report}"
    );
}
