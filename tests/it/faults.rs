//! Fault tests on the real services: the process killed mid-load, NATS restarted,
//! PostgreSQL unreachable. In each, every accepted email ends `sent`, once.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use async_nats::jetstream;
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::PgPool;
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::helpers::{
    Cleanup, Isolation, Service, email_body, eventually, free_port, metric_value,
    smtp::{Behaviour, FakeSmtp},
    spawn_app_in, unique_recipient, wait_for,
};

/// Counts of (rows, sent rows, distinct subjects): one row per event means the
/// subjects are all distinct.
async fn tally(db: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'sent'), count(DISTINCT subject) FROM emails",
    )
    .fetch_one(db)
    .await
    .unwrap_or((0, 0, 0))
}

fn event(i: usize) -> Vec<u8> {
    let mut event = email_body(&unique_recipient("load"));
    event["subject"] = json!(format!("load event {i}"));
    serde_json::to_vec(&event).unwrap()
}

/// Publishes `count` create events with JetStream, each retried until the server has
/// acknowledged it, as a careful producer does across an outage.
fn publish_all(
    context: jetstream::Context,
    subject: String,
    count: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..count {
            loop {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(event(i).into())
                    .message_id(format!("load-{i}"));
                match context.send_publish(subject.clone(), publish).await {
                    Ok(ack) => match ack.await {
                        Ok(_) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    },
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    })
}

#[tokio::test]
async fn a_thousand_events_survive_the_service_being_killed_and_restarted() {
    const EVENTS: usize = 1000;
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let isolation = Isolation::new();
    let _cleanup = Cleanup(isolation.clone());
    let settings = isolation.settings(|_| {});

    let smtp_port = [("MAILROOM__SMTP__PORT", smtp.port.to_string())];
    let mut service = Service::start(&isolation, &smtp_port);
    service.wait_ready().await;
    let db = PgPool::connect(settings.database.url.expose_secret())
        .await
        .unwrap();
    let nats = async_nats::connect(&settings.nats.url).await.unwrap();
    let publisher = publish_all(
        jetstream::new(nats),
        settings.nats.subject("mail:create"),
        EVENTS,
    );

    // Kill it without warning while it is busy.
    wait_for(Duration::from_secs(60), "some emails are sent", || async {
        (tally(&db).await.1 >= 100).then_some(())
    })
    .await;
    service.kill();
    let (rows_at_kill, sent_at_kill, _) = tally(&db).await;
    assert!(
        sent_at_kill < EVENTS as i64,
        "the kill came too late to test anything"
    );

    let restarted = Service::start(&isolation, &smtp_port);
    restarted.wait_ready().await;
    publisher.await.unwrap();
    wait_for(
        Duration::from_secs(120),
        "every event's email is sent",
        || async {
            let (rows, sent, _) = tally(&db).await;
            (rows == EVENTS as i64 && sent == EVENTS as i64).then_some(())
        },
    )
    .await;
    let (rows, sent, distinct) = tally(&db).await;
    assert_eq!(
        (rows, sent, distinct),
        (1000, 1000, 1000),
        "killed at {rows_at_kill} rows"
    );
    assert!(
        smtp.received().len() >= EVENTS,
        "every email reached the SMTP server"
    );
}

/// A private nats-server with JetStream and its own store directory.
struct PrivateNats {
    port: u16,
    store: std::path::PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    fn start() -> Self {
        let store = std::env::temp_dir().join(format!("mailroom-nats-{}", uuid::Uuid::new_v4()));
        let mut nats = PrivateNats {
            port: free_port(),
            store,
            child: None,
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let binary = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "nats-server",
        ]
        .into_iter()
        .find(|path| !path.starts_with('/') || std::path::Path::new(path).exists())
        .unwrap();
        let child = std::process::Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (apt-get install nats-server)");
        self.child = Some(child);
    }

    async fn wait_up(&self) {
        eventually(
            Duration::from_secs(10),
            "nats-server accepts connections",
            || async { TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() },
        )
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

#[tokio::test]
async fn nothing_is_lost_when_nats_restarts_under_load() {
    const EVENTS: usize = 300;
    let mut nats = PrivateNats::start();
    nats.wait_up().await;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let app = spawn_app_in(Isolation::new(), |s| {
        s.nats.url = url.clone();
        s.nats.storage = mailroom::config::StreamStorage::File;
    })
    .await;
    let client = async_nats::ConnectOptions::new()
        .connect(&url)
        .await
        .unwrap();
    let publisher = publish_all(jetstream::new(client), app.subject("mail:create"), EVENTS);

    wait_for(Duration::from_secs(60), "some emails are sent", || async {
        (tally(&app.db).await.1 >= 50).then_some(())
    })
    .await;
    nats.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.spawn();
    nats.wait_up().await;

    publisher.await.unwrap();
    wait_for(
        Duration::from_secs(120),
        "every event's email is sent",
        || async {
            let (rows, sent, _) = tally(&app.db).await;
            (rows == EVENTS as i64 && sent == EVENTS as i64).then_some(())
        },
    )
    .await;
    assert_eq!(tally(&app.db).await, (300, 300, 300));
}

/// A TCP proxy to PostgreSQL that can be cut: while down, it drops every connection it
/// carries and refuses new ones.
struct CuttableProxy {
    port: u16,
    up: watch::Sender<bool>,
}

impl CuttableProxy {
    async fn start(target: (&'static str, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, watcher) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut watcher = watcher.clone();
                if !*watcher.borrow() {
                    continue; // dropped: the connection is closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = watcher.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        CuttableProxy { port, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test]
async fn nothing_is_lost_when_postgres_is_unreachable_for_a_while() {
    const EVENTS: usize = 200;
    let proxy = CuttableProxy::start(("127.0.0.1", 5432)).await;
    let isolation = Isolation::new();
    let direct = isolation.settings(|_| {});
    let proxied_url = {
        let mut url = url::Url::parse(direct.database.url.expose_secret()).unwrap();
        url.set_port(Some(proxy.port)).unwrap();
        url.to_string()
    };
    let app = spawn_app_in(isolation, |s| {
        s.database.url = proxied_url.into();
        s.database.acquire_timeout = Duration::from_secs(1);
    })
    .await;
    let db = PgPool::connect(direct.database.url.expose_secret())
        .await
        .unwrap();

    let publisher = publish_all(app.jetstream.clone(), app.subject("mail:create"), EVENTS);
    wait_for(Duration::from_secs(60), "some emails are sent", || async {
        (tally(&db).await.1 >= 30).then_some(())
    })
    .await;
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_up(true);

    publisher.await.unwrap();
    wait_for(
        Duration::from_secs(120),
        "every event's email is sent",
        || async {
            let (rows, sent, _) = tally(&db).await;
            (rows == EVENTS as i64 && sent == EVENTS as i64).then_some(())
        },
    )
    .await;
    assert_eq!(tally(&db).await, (200, 200, 200));
    // The retry series exist from the start (at zero), so look at their values.
    let metrics = app.metrics().await;
    let retried: f64 = ["mail:create", "mail:send"]
        .iter()
        .filter_map(|subject| {
            metric_value(
                &metrics,
                &format!("mailroom_nats_messages_total{{outcome=\"retry\",subject=\"{subject}\"}}"),
            )
        })
        .sum();
    assert!(
        retried > 0.0,
        "the outage was felt and retried, not skipped:\n{metrics}"
    );
}
