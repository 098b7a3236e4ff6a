//! Failure of a dependency: what keeps working, and how nothing accepted is lost.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    PrivateRedis, email_body, metric_value, spawn_app, spawn_app_with, unique_recipient,
};

#[tokio::test]
async fn reads_still_answer_when_redis_stops() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    // Without the local tier, so every read goes to Redis (and then PostgreSQL).
    let app = spawn_app_with(|s| {
        s.redis.url = url.into();
        s.cache.local_ttl = Duration::ZERO;
    })
    .await;
    let created = app
        .create_email(&email_body(&unique_recipient("noredis")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    assert_eq!(
        app.get_email(id).await.status(),
        200,
        "served while Redis is up"
    );

    redis.stop();

    let response = app.get_email(id).await;
    assert_eq!(
        response.status(),
        200,
        "served from PostgreSQL once Redis is gone"
    );
    let email: Value = response.json().await.unwrap();
    assert_eq!(email["emailID"], created["emailID"]);
    // Writes still work too: the cache is only a cache.
    let other = app
        .create_email(&email_body(&unique_recipient("noredis2")))
        .await;
    app.wait_for_status(
        other["emailID"].as_str().unwrap(),
        "sent",
        Duration::from_secs(15),
    )
    .await;
    // The series exists from the start (at zero), so look at its value.
    let metrics = app.metrics().await;
    let errors = metric_value(&metrics, "mailroom_cache_requests_total{result=\"error\"}");
    assert!(errors.is_some_and(|n| n >= 1.0), "{metrics}");
}

#[tokio::test]
async fn the_reconciler_sends_an_email_whose_send_event_was_lost() {
    let app = spawn_app().await;
    // An email stored while NATS was unreachable: in the table, queued, with no event.
    let id = uuid::Uuid::now_v7();
    app.store_without_event(
        id,
        &unique_recipient("stranded"),
        "stranded",
        Duration::from_secs(3600),
    )
    .await;

    app.wait_for_status(&id.to_string(), "sent", Duration::from_secs(15))
        .await;
}

#[tokio::test]
async fn a_stale_cached_copy_never_hides_a_newer_status() {
    let app = spawn_app().await;
    let created = app
        .create_email(&email_body(&unique_recipient("fresh")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", Duration::from_secs(15))
        .await;
    // The cache follows every transition, so a read right after shows the latest state.
    let email: Value = app.get_email(id).await.json().await.unwrap();
    assert_eq!(email["status"], "sent");
    assert_eq!(email["attempts"], 1);
}

#[tokio::test]
async fn two_instances_share_the_work_and_send_each_email_once() {
    let first = spawn_app().await;
    let second = crate::helpers::spawn_sibling(&first, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let app = if i % 2 == 0 { &first } else { &second };
        ids.push(
            app.create_email(&email_body(&unique_recipient("shared")))
                .await["emailID"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        first
            .wait_for_status(id, "sent", Duration::from_secs(30))
            .await;
    }
    let (attempts,): (i64,) = sqlx::query_as("SELECT count(*) FROM email_attempts")
        .fetch_one(&first.db)
        .await
        .unwrap();
    assert_eq!(attempts, 20, "one attempt per email");
    drop(second);
}
