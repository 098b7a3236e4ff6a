//! `GET /api/v1/email/{emailID}` and `GET /api/v1/email/search`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{email_body, metric_value, spawn_app, spawn_app_with, unique_recipient};

#[tokio::test]
async fn get_returns_the_stored_email() {
    let app = spawn_app().await;
    let created = app
        .create_email(&email_body(&unique_recipient("get")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    let response = app.get_email(id).await;
    assert_eq!(response.status(), 200);
    let email: Value = response.json().await.unwrap();
    assert_eq!(email["emailID"], created["emailID"]);
    assert_eq!(email["message"], "This is a test message.");
}

#[tokio::test]
async fn get_with_a_non_uuid_id_is_a_400_naming_the_id() {
    let app = spawn_app().await;
    let response = app.get_email("not-a-uuid").await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "emailID");
}

#[tokio::test]
async fn get_with_an_unknown_id_is_a_404() {
    let app = spawn_app().await;
    let response = app.get_email(&uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn get_serves_repeated_reads_from_the_cache() {
    let app = spawn_app().await;
    let created = app
        .create_email(&email_body(&unique_recipient("cache")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    for _ in 0..3 {
        assert_eq!(app.get_email(id).await.status(), 200);
    }
    let metrics = app.metrics().await;
    let hits = metrics
        .lines()
        .find(|l| l.starts_with("mailroom_cache_requests_total{result=\"hit\"}"))
        .unwrap_or_else(|| panic!("no cache hits in:\n{metrics}"));
    let hits: f64 = hits.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(hits >= 3.0, "{hits}");
}

async fn search(app: &crate::helpers::TestApp, query: &[(&str, &str)]) -> reqwest::Response {
    app.client
        .get(app.url("/api/v1/email/search"))
        .query(query)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn search_finds_by_recipient_subject_and_message_newest_first() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for (i, subject) in ["Invoice for March", "Weekly digest", "Invoice for April"]
        .iter()
        .enumerate()
    {
        let mut body = email_body(&format!("user{i}@shop.example.com"));
        body["subject"] = json!(subject);
        body["message"] = json!(format!("message number {i} about penguins"));
        ids.push(app.create_email(&body).await["emailID"].clone());
    }

    let page: Value = search(&app, &[("search", "invoice")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalCount"], 2);
    assert_eq!(page["emails"][0]["emailID"], ids[2], "newest first");
    assert_eq!(page["emails"][1]["emailID"], ids[0]);

    let page: Value = search(&app, &[("search", "penguins")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalCount"], 3);
    let page: Value = search(&app, &[("search", "user1@shop.example.com")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalCount"], 1);
    assert_eq!(page["emails"][0]["emailID"], ids[1]);
    let page: Value = search(&app, &[("search", "shop.example.com")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalCount"], 3);
}

#[tokio::test]
async fn search_pages_through_results() {
    let app = spawn_app().await;
    for i in 0..5 {
        let mut body = email_body(&format!("pager{i}@example.com"));
        body["subject"] = json!("paging test");
        app.create_email(&body).await;
    }
    let page: Value = search(&app, &[("search", "paging"), ("page", "2"), ("size", "2")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalCount"], 5);
    assert_eq!(page["totalPages"], 3);
    assert_eq!(page["page"], 2);
    assert_eq!(page["size"], 2);
    assert_eq!(page["hasMore"], true);
    assert_eq!(page["emails"].as_array().unwrap().len(), 2);

    let last: Value = search(&app, &[("search", "paging"), ("page", "3"), ("size", "2")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(last["hasMore"], false);
    assert_eq!(last["emails"].as_array().unwrap().len(), 1);

    let all: Value = search(&app, &[]).await.json().await.unwrap();
    assert_eq!(all["size"], 10, "size defaults to 10");
    assert_eq!(all["page"], 1, "page defaults to 1");
    assert_eq!(all["totalCount"], 5);
}

/// Creates `count` emails whose subject holds `word`, oldest first; returns their ids.
async fn create_matching(app: &crate::helpers::TestApp, word: &str, count: usize) -> Vec<Value> {
    let mut ids = Vec::new();
    for i in 0..count {
        let mut body = email_body(&unique_recipient("capped"));
        body["subject"] = json!(format!("{word} number {i}"));
        ids.push(app.create_email(&body).await["emailID"].clone());
    }
    ids
}

fn ids_of(page: &Value) -> Vec<Value> {
    page["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["emailID"].clone())
        .collect()
}

#[tokio::test]
async fn search_counts_up_to_the_count_limit_then_says_the_total_is_a_lower_bound() {
    let app = spawn_app_with(|s| s.search.count_limit = 5).await;
    let many = create_matching(&app, "heron", 8).await;
    let few = create_matching(&app, "puffin", 5).await;

    // More matches than the limit: the total is the limit and not exact; pages come from
    // walking the newest-first index and stay newest first and complete.
    let page: Value = search(&app, &[("search", "heron"), ("size", "3")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalCount"], 5);
    assert_eq!(page["totalCountExact"], false);
    assert_eq!(page["totalPages"], 2);
    assert_eq!(page["hasMore"], true);
    let mut seen = Vec::new();
    for number in 1..=3 {
        let page: Value = search(
            &app,
            &[
                ("search", "heron"),
                ("size", "3"),
                ("page", &number.to_string()),
            ],
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(page["hasMore"], number < 3, "page {number}");
        seen.extend(ids_of(&page));
    }
    let newest_first: Vec<Value> = many.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "every match once, newest first");
    // A deep page proves more matches than the limit.
    let last: Value = search(&app, &[("search", "heron"), ("size", "3"), ("page", "3")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (last["totalCount"].clone(), last["totalPages"].clone()),
        (json!(8), json!(3))
    );

    // Exactly the limit: an exact count, and pages sorted from the matches found.
    let first: Value = search(&app, &[("search", "puffin"), ("size", "2")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["totalCount"], 5);
    assert_eq!(first["totalCountExact"], true);
    assert_eq!(first["totalPages"], 3);
    let mut seen = ids_of(&first);
    for number in ["2", "3"] {
        let page: Value = search(
            &app,
            &[("search", "puffin"), ("size", "2"), ("page", number)],
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(page["hasMore"], number == "2");
        seen.extend(ids_of(&page));
    }
    let newest_first: Vec<Value> = few.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "every match once, newest first");

    // The empty search is capped too: 13 emails, counted up to 5.
    let all: Value = search(&app, &[("size", "3")]).await.json().await.unwrap();
    assert_eq!(
        (all["totalCount"].clone(), all["totalCountExact"].clone()),
        (json!(5), json!(false))
    );
    assert_eq!(all["emails"][0]["emailID"], few[4], "newest first");
    assert_eq!(all["hasMore"], true);
}

#[tokio::test]
async fn search_accepts_tsquery_metacharacters_safely() {
    let app = spawn_app().await;
    app.create_email(&email_body(&unique_recipient("meta")))
        .await;
    for nasty in [
        "!:*&|()",
        "a & b | !c",
        "'",
        "\"unterminated",
        "foo:* <-> bar",
        "\\",
        "' OR 1=1 --",
        "()",
        "&&&",
    ] {
        let response = search(&app, &[("search", nasty)]).await;
        assert_eq!(
            response.status(),
            200,
            "{nasty:?}: {}",
            response.text().await.unwrap()
        );
    }
}

#[tokio::test]
async fn search_refuses_a_page_size_over_100_and_bad_numbers() {
    let app = spawn_app().await;
    for (query, field) in [
        (vec![("size", "101")], "size"),
        (vec![("size", "0")], "size"),
        (vec![("page", "0")], "page"),
        (vec![("page", "-1")], "page"),
        (vec![("page", "abc")], "page"),
        (vec![("size", "1.5")], "size"),
    ] {
        let response = search(&app, &query).await;
        assert_eq!(response.status(), 400, "{query:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{query:?}: {problem}");
    }
    let long = "x".repeat(257);
    let response = search(&app, &[("search", long.as_str())]).await;
    assert_eq!(response.status(), 400);
}

/// A connection to the Redis the app caches in, and the key of an email there.
async fn redis_entry(
    app: &crate::helpers::TestApp,
    id: &str,
) -> (redis::aio::MultiplexedConnection, String) {
    use secrecy::ExposeSecret;
    let client = redis::Client::open(app.settings.redis.url.expose_secret()).unwrap();
    let connection = client.get_multiplexed_async_connection().await.unwrap();
    (
        connection,
        format!("{}email:v2:{id}", app.settings.redis.key_prefix),
    )
}

#[tokio::test]
async fn a_status_change_made_by_this_instance_is_read_at_once_despite_a_long_local_ttl() {
    let app = spawn_app_with(|s| s.cache.local_ttl = Duration::from_secs(3600)).await;
    let created = app
        .create_email(&email_body(&unique_recipient("fresh")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    let first: Value = app.get_email(id).await.json().await.unwrap();
    assert_ne!(first["status"], "sent", "read before the delivery");

    let sent = app
        .wait_for_status(id, "sent", Duration::from_secs(15))
        .await;
    assert_eq!(sent["status"], "sent", "{sent}");
    assert_eq!(sent["attempts"], 1);
}

#[tokio::test]
async fn with_the_local_cache_a_repeated_read_does_not_touch_redis() {
    let app = spawn_app_with(|s| s.cache.local_ttl = Duration::from_secs(3600)).await;
    let created = app
        .create_email(&email_body(&unique_recipient("local")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    // Delivered first: the status changes of a delivery write to Redis too.
    app.wait_for_status(id, "sent", Duration::from_secs(15))
        .await;
    assert_eq!(app.get_email(id).await.status(), 200);
    let (mut redis, key) = redis_entry(&app, id).await;
    let removed: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the email was cached in Redis");

    let response = app.get_email(id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let email: Value = response.json().await.unwrap();
    assert_eq!(email["emailID"], created["emailID"]);
    assert_eq!(email["message"], "This is a test message.");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a Redis miss would have filled the entry again");

    let metrics = app.metrics().await;
    let local_hits = metric_value(
        &metrics,
        "mailroom_cache_local_requests_total{result=\"hit\"}",
    );
    assert!(local_hits.is_some_and(|n| n >= 1.0), "{metrics}");
    let hits = metric_value(&metrics, "mailroom_cache_requests_total{result=\"hit\"}");
    assert!(
        hits.is_some_and(|n| n >= 1.0),
        "a local hit is a cache hit: {metrics}"
    );
}

#[tokio::test]
async fn a_local_ttl_of_zero_reads_redis_every_time() {
    let app = spawn_app_with(|s| s.cache.local_ttl = Duration::ZERO).await;
    let created = app
        .create_email(&email_body(&unique_recipient("nolocal")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    // Delivered first, so no status change of this instance rewrites the entry below.
    app.wait_for_status(id, "sent", Duration::from_secs(15))
        .await;
    // Another instance's copy, as it would be after a change made there.
    let (mut redis, key) = redis_entry(&app, id).await;
    let cached: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut cached: Value = serde_json::from_str(&cached).unwrap();
    cached["subject"] = json!("changed elsewhere");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(cached.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();

    let email: Value = app.get_email(id).await.json().await.unwrap();
    assert_eq!(email["subject"], "changed elsewhere");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "mailroom_cache_local_requests_total{result=\"hit\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "mailroom_cache_local_requests_total{result=\"miss\"}"
        ),
        Some(0.0),
        "a disabled tier is not asked: {metrics}"
    );
}
