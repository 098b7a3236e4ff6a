//! Each NATS Streaming feature of the original, carried on JetStream and set in
//! `nats.*`: storage and retention limits, the duplicate window, publisher acks with a
//! bounded number in flight, max_ack_pending, ack_wait with progress reports, durable
//! consumers, deliver policies and max_deliver.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{self, AckPolicy},
    stream::{RetentionPolicy, StorageType},
};
use mailroom::{
    adapters::jetstream::JetStream,
    config::{DeliverPolicySetting, Settings, StreamStorage},
    domain::{EmailId, EmailStatus, StatusEvent},
    ports::EventBus,
};
use serde_json::json;

use crate::helpers::{
    Consumer, Isolation, TestApp, closed_port, email_body, eventually, metric_value,
    smtp::{Behaviour, FakeSmtp},
    spawn_app, spawn_app_in, spawn_app_with, spawn_sibling, unique_recipient,
};

async fn consumer_config(app: &TestApp, durable: &str) -> consumer::Config {
    let stream = app
        .jetstream
        .get_stream(app.settings.nats.stream_name())
        .await
        .unwrap();
    let name = app.settings.nats.durable_name(durable);
    stream.consumer_info(&name).await.unwrap().config.clone()
}

async fn stored_emails(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as("SELECT subject, status FROM emails ORDER BY subject")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_list_of_servers_whose_first_is_down_still_starts_a_working_service() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        // A cluster's seed list, as NATS clients take it; nothing listens on the first.
        s.nats.url = format!("nats://127.0.0.1:{}, {}", closed_port(), s.nats.url);
    })
    .await;
    let created = app
        .create_email(&email_body(&unique_recipient("seed-list")))
        .await;
    app.wait_for_status(
        created["emailID"].as_str().unwrap(),
        "sent",
        Duration::from_secs(15),
    )
    .await;
}

#[tokio::test]
async fn the_stream_has_the_configured_storage_and_retention_limits() {
    let app = spawn_app_with(|s| {
        s.nats.storage = StreamStorage::File;
        s.nats.max_age = Duration::from_secs(3600);
        s.nats.max_bytes = 64 * 1024 * 1024;
        s.nats.max_messages = 100_000;
        s.nats.duplicate_window = Duration::from_secs(30);
    })
    .await;
    let mut stream = app
        .jetstream
        .get_stream(app.settings.nats.stream_name())
        .await
        .unwrap();
    let config = &stream.info().await.unwrap().config;
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(
        config.retention,
        RetentionPolicy::Limits,
        "replayable by time and sequence"
    );
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.max_bytes, 64 * 1024 * 1024);
    assert_eq!(config.max_messages, 100_000);
    assert_eq!(config.duplicate_window, Duration::from_secs(30));
    for subject in ["mail:create", "mail:send", "mail:errors", "mail:status"] {
        assert!(config.subjects.contains(&app.subject(subject)), "{subject}");
    }

    let memory = spawn_app_with(|s| s.nats.storage = StreamStorage::Memory).await;
    let mut stream = memory
        .jetstream
        .get_stream(memory.settings.nats.stream_name())
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.storage,
        StorageType::Memory
    );
}

#[tokio::test]
async fn a_repeated_message_id_within_the_duplicate_window_makes_one_email() {
    let app = spawn_app().await;
    let event = serde_json::to_vec(&email_body(&unique_recipient("dup"))).unwrap();
    let mut acks = Vec::new();
    for _ in 0..2 {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(event.clone().into())
            .message_id("producer-msg-1");
        acks.push(
            app.jetstream
                .send_publish(app.subject("mail:create"), publish)
                .await
                .unwrap()
                .await
                .unwrap(),
        );
    }
    assert!(
        !acks[0].duplicate && acks[1].duplicate,
        "the server drops the repeat"
    );
    eventually(Duration::from_secs(15), "the email is sent", || async {
        stored_emails(&app)
            .await
            .iter()
            .any(|(_, status)| status == "sent")
    })
    .await;
    assert_eq!(stored_emails(&app).await.len(), 1);
}

#[tokio::test]
async fn publishes_beyond_the_in_flight_bound_wait_instead_of_failing() {
    let app = spawn_app_with(|s| s.nats.publish.max_ack_inflight = 1).await;
    let bus = app.bus.clone();
    let publishes = (0..200).map(|attempt| {
        let bus = bus.clone();
        async move {
            bus.publish_status(&StatusEvent {
                email_id: EmailId::generate(),
                status: EmailStatus::Queued,
                attempt,
                error: None,
                at: chrono::Utc::now(),
                tags: Default::default(),
                message_id: None,
                from: None,
                to: Vec::new(),
                subject: None,
            })
            .await
        }
    });
    let results = futures::future::join_all(publishes).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let stored = app
        .messages_on(&app.subject("mail:status"), 200, Duration::from_secs(5))
        .await;
    assert_eq!(stored.len(), 200);
}

#[tokio::test]
async fn max_ack_pending_bounds_the_messages_in_flight_across_workers() {
    let smtp = FakeSmtp::start(Behaviour::Slow(Duration::from_millis(300))).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.nats.consumers.send.workers = 4;
        s.nats.consumers.send.max_ack_pending = 1;
    })
    .await;
    assert_eq!(
        consumer_config(&app, "mailroom-send").await.max_ack_pending,
        1
    );
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            app.create_email(&email_body(&unique_recipient("pending")))
                .await["emailID"]
                .clone(),
        );
    }
    for id in &ids {
        app.wait_for_status(id.as_str().unwrap(), "sent", Duration::from_secs(20))
            .await;
    }
    assert_eq!(smtp.received().len(), 4);
    assert_eq!(
        smtp.peak_in_flight(),
        1,
        "one message at a time, though four workers were free"
    );
}

#[tokio::test]
async fn a_send_longer_than_ack_wait_reports_progress_and_is_not_redelivered() {
    let smtp = FakeSmtp::start(Behaviour::Slow(Duration::from_secs(3))).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.smtp.timeout = Duration::from_secs(10);
        s.nats.consumers.send.ack_wait = Duration::from_secs(1);
    })
    .await;
    assert_eq!(
        consumer_config(&app, "mailroom-send").await.ack_wait,
        Duration::from_secs(1)
    );
    let created = app
        .create_email(&email_body(&unique_recipient("slow")))
        .await;
    let email = app
        .wait_for_status(
            created["emailID"].as_str().unwrap(),
            "sent",
            Duration::from_secs(20),
        )
        .await;

    assert_eq!(email["attempts"], 1);
    assert_eq!(smtp.received().len(), 1);
    let stream = app
        .jetstream
        .get_stream(app.settings.nats.stream_name())
        .await
        .unwrap();
    let info = stream
        .consumer_info(app.settings.nats.durable_name("mailroom-send"))
        .await
        .unwrap();
    assert_eq!(
        info.num_redelivered, 0,
        "progress reports kept the message with its worker"
    );
    // The series exists from the start (at zero), so look at its value.
    let metrics = app.metrics().await;
    let retried = metric_value(
        &metrics,
        "mailroom_nats_messages_total{outcome=\"retry\",subject=\"mail:send\"}",
    );
    assert_eq!(retried.unwrap_or(0.0), 0.0, "{metrics}");
}

#[tokio::test]
async fn consumers_have_the_configured_durable_names_and_delivery_settings() {
    let app = spawn_app_with(|s| {
        s.nats.consumers.create.durable = "orders-create".into();
        s.nats.consumers.create.ack_wait = Duration::from_secs(7);
        s.nats.consumers.create.max_deliver = 4;
        s.nats.consumers.create.max_ack_pending = 50;
    })
    .await;
    let config = consumer_config(&app, "orders-create").await;
    assert_eq!(
        config.durable_name.as_deref(),
        Some(app.settings.nats.durable_name("orders-create").as_str())
    );
    assert_eq!(config.filter_subject, app.subject("mail:create"));
    assert_eq!(config.ack_policy, AckPolicy::Explicit);
    assert_eq!(config.ack_wait, Duration::from_secs(7));
    assert_eq!(config.max_deliver, 4);
    assert_eq!(config.max_ack_pending, 50);
}

#[tokio::test]
async fn a_durable_consumer_resumes_where_it_stopped_after_a_restart() {
    let mut first = spawn_app().await;
    first
        .create_email(&email_body(&unique_recipient("before")))
        .await;
    eventually(
        Duration::from_secs(15),
        "the first email is sent",
        || async {
            stored_emails(&first)
                .await
                .iter()
                .all(|(_, status)| status == "sent")
        },
    )
    .await;
    first.stop().await;

    // Published while no instance runs: kept by the stream for the durable consumer.
    for i in 0..3 {
        let mut event = email_body(&unique_recipient("while-down"));
        event["subject"] = json!(format!("while down {i}"));
        first
            .publish_raw(
                &first.subject("mail:create"),
                serde_json::to_vec(&event).unwrap(),
            )
            .await;
    }
    let second = spawn_sibling(&first, |_| {}).await;
    eventually(
        Duration::from_secs(15),
        "the events published while down are sent",
        || async {
            let emails = stored_emails(&second).await;
            emails.len() == 4 && emails.iter().all(|(_, status)| status == "sent")
        },
    )
    .await;
    let metrics = second.metrics().await;
    assert!(
        metrics.contains("mailroom_nats_messages_total{outcome=\"ok\",subject=\"mail:create\"} 3"),
        "only the three new events were handled again:\n{metrics}"
    );
}

/// Publishes create events (subjects "event 0", "event 1", …) before any instance
/// exists, then starts one whose create consumer uses `policy`; returns the subjects of
/// the emails it stores.
async fn replay(
    events: usize,
    pause_before_last: bool,
    configure: impl FnOnce(&mut Settings, u64, chrono::DateTime<chrono::Utc>),
) -> Vec<String> {
    let isolation = Isolation::new();
    let settings = isolation.settings(|_| {});
    let jetstream = JetStream::connect(&settings.nats, Duration::from_secs(5))
        .await
        .unwrap();
    let mut sequences = Vec::new();
    let mut last_published_after = chrono::Utc::now();
    for i in 0..events {
        if pause_before_last && i == events - 1 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            last_published_after = chrono::Utc::now();
        }
        let mut event = email_body(&unique_recipient("replay"));
        event["subject"] = json!(format!("event {i}"));
        let sequence = jetstream
            .publish(
                &jetstream.subjects.create,
                serde_json::to_vec(&event).unwrap().into(),
                None,
            )
            .await
            .unwrap();
        sequences.push(sequence);
    }
    let app = spawn_app_in(isolation, |s| {
        configure(s, sequences[1], last_published_after)
    })
    .await;
    // One more event after the start, which every policy but none delivers.
    let mut event = email_body(&unique_recipient("replay"));
    event["subject"] = json!("after start");
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&event).unwrap(),
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the event after the start is stored",
        || async {
            stored_emails(&app)
                .await
                .iter()
                .any(|(subject, _)| subject == "after start")
        },
    )
    .await;
    // Every event the consumer was given is settled: nothing else will be stored.
    app.settled(Consumer::Create).await;
    stored_emails(&app)
        .await
        .into_iter()
        .map(|(subject, _)| subject)
        .collect()
}

fn policy(
    policy: DeliverPolicySetting,
) -> impl FnOnce(&mut Settings, u64, chrono::DateTime<chrono::Utc>) {
    move |s, second_sequence, last_published_after| {
        let create = &mut s.nats.consumers.create;
        create.deliver_policy = policy;
        create.start_sequence = Some(second_sequence);
        create.start_time = Some(last_published_after);
    }
}

#[tokio::test]
async fn deliver_policy_all_replays_the_whole_history() {
    let got = replay(3, false, policy(DeliverPolicySetting::All)).await;
    assert_eq!(got, vec!["after start", "event 0", "event 1", "event 2"]);
}

#[tokio::test]
async fn deliver_policy_new_skips_the_history() {
    let got = replay(3, false, policy(DeliverPolicySetting::New)).await;
    assert_eq!(got, vec!["after start"]);
}

#[tokio::test]
async fn deliver_policy_last_starts_with_the_latest_event() {
    let got = replay(3, false, policy(DeliverPolicySetting::Last)).await;
    assert_eq!(got, vec!["after start", "event 2"]);
}

#[tokio::test]
async fn deliver_policy_last_per_subject_starts_with_the_latest_event_of_the_subject() {
    let got = replay(3, false, policy(DeliverPolicySetting::LastPerSubject)).await;
    assert_eq!(got, vec!["after start", "event 2"]);
}

#[tokio::test]
async fn deliver_policy_by_start_sequence_replays_from_that_sequence() {
    let got = replay(3, false, policy(DeliverPolicySetting::ByStartSequence)).await;
    assert_eq!(got, vec!["after start", "event 1", "event 2"]);
}

#[tokio::test]
async fn deliver_policy_by_start_time_replays_from_that_time() {
    let got = replay(3, true, policy(DeliverPolicySetting::ByStartTime)).await;
    assert_eq!(got, vec!["after start", "event 2"]);
}

#[tokio::test]
async fn a_changed_deliver_policy_on_an_existing_consumer_stops_the_start_with_advice() {
    let first = spawn_app().await;
    let mut settings = first.settings.clone();
    settings.http.addr = "127.0.0.1:0".parse().unwrap();
    settings.metrics.addr = "127.0.0.1:0".parse().unwrap();
    settings.nats.consumers.create.deliver_policy = DeliverPolicySetting::New;
    let err = match mailroom::startup::Application::build(settings).await {
        Ok(_) => panic!("the start should fail"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.contains("durable consumer") && err.contains("delete it"),
        "{err}"
    );
}

#[tokio::test]
async fn a_create_event_that_keeps_failing_is_dead_lettered_after_max_deliver() {
    let app = spawn_app_with(|s| {
        s.nats.consumers.create.max_deliver = 3;
        s.delivery.outage_backoff = vec![Duration::from_millis(100)];
    })
    .await;
    assert_eq!(
        consumer_config(&app, "mailroom-create").await.max_deliver,
        3
    );
    // PostgreSQL loses the database: every attempt to store the email fails.
    let admin = sqlx::PgPool::connect(&crate::helpers::admin_database_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{}\" WITH (FORCE)",
        app.isolation.database
    )))
    .execute(&admin)
    .await
    .unwrap();

    let mut event = email_body(&unique_recipient("doomed"));
    event["subject"] = json!("doomed-marker");
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&event).unwrap(),
    )
    .await;

    let letters = app
        .messages_on(&app.subject("mail:errors"), 1, Duration::from_secs(15))
        .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["deliveries"], 3);
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 deliveries"),
        "{}",
        letters[0]
    );
    // The event was acknowledged with its dead letter: no delivery, so no letter, follows.
    app.settled(Consumer::Create).await;
    assert_eq!(
        app.messages_on(&app.subject("mail:errors"), 1, Duration::ZERO)
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn reconcilers_on_two_instances_republish_each_stranded_email_once() {
    let quiet = |s: &mut Settings| {
        s.reconciler.interval = Duration::from_millis(100);
        s.reconciler.overdue_age = Duration::from_secs(3600);
    };
    let mut first = spawn_app_with(quiet).await;
    let mut second = spawn_sibling(&first, quiet).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let id = uuid::Uuid::now_v7();
        first
            .store_without_event(
                id,
                &unique_recipient("stranded"),
                "stranded",
                Duration::from_secs(7200),
            )
            .await;
        ids.push(id.to_string());
    }
    for id in &ids {
        first
            .wait_for_status(id, "sent", Duration::from_secs(20))
            .await;
    }
    // Once both have stopped (their reconciler passes finished), nothing more is
    // published.
    second.stop().await;
    first.stop().await;
    let events = first
        .messages_on(&first.subject("mail:send"), 10, Duration::from_secs(5))
        .await;
    for id in &ids {
        assert_eq!(
            events
                .iter()
                .filter(|e| e["emailID"] == id.as_str())
                .count(),
            1,
            "{id}"
        );
    }
    drop(second);
}
