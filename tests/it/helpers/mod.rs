//! The test harness: `spawn_app()` runs a real mailroom on port 0 against the real
//! PostgreSQL, Redis, NATS and SMTP, isolated by its own database, NATS prefix and Redis
//! prefix, and cleans them up when dropped.

pub mod otlp;
pub mod receiver;
pub mod smtp;
pub mod tools;

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt;
use mailroom::{
    adapters::{
        jetstream::JetStream,
        postgres::{self, PgEmailStore},
    },
    certs::{self, CertificatePaths},
    config::{Settings, Sources},
    grpc::pb::email_service_client::EmailServiceClient,
    startup::Application,
    telemetry::TelemetryGuard,
    usecase::Mailroom,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use uuid::Uuid;

/// Where the tests find PostgreSQL; each test gets a database of its own on it.
pub fn admin_database_url() -> String {
    std::env::var("MAILROOM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// The API key the `test` profile accepts; `TestApp::client` sends it.
pub const TEST_API_KEY: &str = "test-key";

/// Headers that carry [`TEST_API_KEY`], for clients built by hand.
pub fn api_key_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TEST_API_KEY}").parse().unwrap(),
    );
    headers
}

/// A key with the `send` and `read` scopes only, which [`with_send_only_key`] adds.
pub const SEND_ONLY_KEY: &str = "sender-secret";

/// Accepts [`TEST_API_KEY`] (every scope) and [`SEND_ONLY_KEY`] (no `admin`), for the
/// tests of what the `admin` scope guards.
pub fn with_send_only_key(settings: &mut Settings) {
    let entries = [
        format!("test:{}", mailroom::api_keys::hash_key(TEST_API_KEY)),
        format!(
            "sender:{}:send+read",
            mailroom::api_keys::hash_key(SEND_ONLY_KEY)
        ),
    ];
    settings.auth.api_keys = mailroom::api_keys::ApiKeys::parse(&entries).unwrap();
}

/// maildev's web API (the SMTP sink at 127.0.0.1:1025).
pub const MAILDEV_API: &str = "http://127.0.0.1:8025";

/// The process-wide subscriber and the OTLP receiver it exports to.
pub struct TestTelemetry {
    pub receiver: otlp::Receiver,
    guard: TelemetryGuard,
}

impl TestTelemetry {
    /// Exports the spans finished so far. Concurrent flushes from other tests may be
    /// refused; callers poll anyway.
    pub async fn flush(&self) {
        let _ = self.guard.flush().await;
    }
}

static TELEMETRY: OnceLock<TestTelemetry> = OnceLock::new();

/// Installs the global subscriber once per test process: traces always (to one shared
/// in-test OTLP receiver), logs only when TEST_LOG is set.
///
/// Both the receiver and the exporter's gRPC channel live on a runtime of their own:
/// each `#[tokio::test]` runtime ends with its test, and the first test to get here
/// must not take the process's tracing down with it.
pub fn telemetry() -> &'static TestTelemetry {
    TELEMETRY.get_or_init(|| {
        let (ready, installed) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("test-telemetry".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let receiver = otlp::Receiver::start().await;
                    let mut settings = test_settings();
                    settings.telemetry.otlp_endpoint = receiver.endpoint();
                    let guard = match std::env::var("TEST_LOG") {
                        Ok(filter) => {
                            settings.telemetry.log_filter = Some(filter)
                                .filter(|v| v.contains('='))
                                .unwrap_or("info,mailroom=debug".into());
                            mailroom::telemetry::init(&settings.telemetry)
                        }
                        Err(_) => mailroom::telemetry::init_without_logs(&settings.telemetry),
                    }
                    .expect("installing the test subscriber");
                    ready.send(TestTelemetry { receiver, guard }).unwrap();
                    std::future::pending::<()>().await
                })
            })
            .expect("starting the telemetry thread");
        installed.recv().expect("the test telemetry starts")
    })
}

/// The `test` profile, with every listener on port 0.
pub fn test_settings() -> Settings {
    let mut settings = Settings::load(&Sources {
        profile: Some("test".into()),
        config_dir: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config").into()),
        file: None,
    })
    .expect("the test profile loads");
    let any_port = "127.0.0.1:0".parse().unwrap();
    settings.http.addr = any_port;
    settings.grpc.addr = any_port;
    settings.metrics.addr = any_port;
    settings
}

/// Names that isolate one test from the others.
#[derive(Clone, Debug)]
pub struct Isolation {
    pub database: String,
    pub nats_prefix: String,
    pub redis_prefix: String,
}

impl Isolation {
    pub fn new() -> Self {
        // The creation time in the name lets `scripts/test-leftovers.sh` (run by
        // `make test`) remove the databases and Redis keys of interrupted runs.
        let tag = format!(
            "{}_{}",
            chrono::Utc::now().timestamp(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Isolation {
            database: format!("mailroom_test_{tag}"),
            nats_prefix: format!("t{tag}."),
            redis_prefix: format!("mailroom-test:{tag}:"),
        }
    }

    /// Drops the database and the stream and deletes the Redis keys. Blocking, for
    /// `Drop`: runs on a thread with a runtime of its own, since it may be called from
    /// inside an async context.
    pub fn clean_up(&self, settings: &Settings) {
        let database = self.database.clone();
        let stream = settings.nats.stream_name();
        let nats_url = settings.nats.url.clone();
        let redis_url = settings.redis.url.expose_secret().to_owned();
        let redis_prefix = self.redis_prefix.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(client) = async_nats::connect(&nats_url).await {
                    let _ = jetstream::new(client).delete_stream(&stream).await;
                }
                if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
                let _ = delete_redis_keys(&redis_url, &redis_prefix).await;
            });
        });
        let _ = cleanup.join();
    }

    /// The test settings pointed at this isolation, changed by `configure`.
    pub fn settings(&self, configure: impl FnOnce(&mut Settings)) -> Settings {
        let mut settings = test_settings();
        self.apply(&mut settings);
        configure(&mut settings);
        settings
    }

    /// The `mailroom` binary, configured through `MAILROOM__…` variables for this
    /// isolation.
    pub fn command(&self) -> std::process::Command {
        let settings = self.settings(|_| {});
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mailroom"));
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("MAILROOM_ENV", "test")
            .env(
                "MAILROOM__DATABASE__URL",
                settings.database.url.expose_secret(),
            )
            .env("MAILROOM__NATS__PREFIX", &settings.nats.prefix)
            .env("MAILROOM__REDIS__KEY_PREFIX", &settings.redis.key_prefix)
            .env("MAILROOM__GRPC__TLS_CERT", &process_certs().server_cert)
            .env("MAILROOM__GRPC__TLS_KEY", &process_certs().server_key)
            .env("RUST_LOG", "warn");
        command
    }

    /// Points the settings at the isolated database, stream and keys.
    pub fn apply(&self, settings: &mut Settings) {
        let mut url = url::Url::parse(&admin_database_url()).expect("a valid database URL");
        url.set_path(&self.database);
        settings.database.url = SecretString::from(url.to_string());
        settings.nats.prefix = self.nats_prefix.clone();
        settings.redis.key_prefix = self.redis_prefix.clone();
    }
}

/// Deletes every Redis key under `prefix`.
async fn delete_redis_keys(url: &str, prefix: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = {
        let mut scan: redis::AsyncIter<String> =
            redis::AsyncCommands::scan_match(&mut connection, format!("{prefix}*")).await?;
        let mut keys = Vec::new();
        while let Some(key) = futures::StreamExt::next(&mut scan).await {
            keys.push(key?);
        }
        keys
    };
    for chunk in keys.chunks(500) {
        let _: () = redis::AsyncCommands::del(&mut connection, chunk).await?;
    }
    Ok(())
}

/// Removes an isolation's database and stream at the end of a test that runs the
/// binary rather than an in-process application.
pub struct Cleanup(pub Isolation);

/// A migrated database of its own, with the settings `configure` makes (a pool of one
/// connection, say) and a pool on it. The database goes when the `Cleanup` is dropped.
pub async fn migrated_database(
    configure: impl FnOnce(&mut Settings),
) -> (Cleanup, Settings, PgPool) {
    let isolation = Isolation::new();
    let cleanup = Cleanup(isolation.clone());
    let settings = isolation.settings(configure);
    let db = postgres::pool(&settings.database).unwrap();
    postgres::create_and_migrate(&settings.database, &db)
        .await
        .unwrap();
    (cleanup, settings, db)
}

/// A migrated database of its own and the email store on it, for tests of the store
/// without a running service. The database goes when the `Cleanup` is dropped.
pub async fn migrated_store() -> (Cleanup, PgPool, PgEmailStore) {
    let (cleanup, _, db) = migrated_database(|_| {}).await;
    let store = PgEmailStore::new(db.clone(), 1000, Duration::from_secs(86_400));
    (cleanup, db, store)
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.clean_up(&self.0.settings(|_| {}));
    }
}

/// A development CA and server certificate in a temporary directory of their own,
/// removed when the last application using them is dropped.
#[derive(Debug)]
pub struct TestCerts {
    pub dir: PathBuf,
    pub paths: CertificatePaths,
    pub ca_pem: String,
}

impl TestCerts {
    pub fn generate() -> Self {
        let dir = std::env::temp_dir().join(format!("mailroom-test-certs-{}", Uuid::new_v4()));
        let (_, paths) = certs::write_dev_certificates(&dir, &[], true)
            .expect("writing development certificates");
        let ca_pem = std::fs::read_to_string(&paths.ca_cert).unwrap();
        TestCerts { dir, paths, ca_pem }
    }

    /// Points the gRPC listener at these certificates.
    pub fn apply(&self, settings: &mut Settings) {
        settings.grpc.tls_cert = self.paths.server_cert.clone();
        settings.grpc.tls_key = self.paths.server_key.clone();
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Certificates for the `mailroom` processes tests start, made once per test process in
/// cargo's scratch directory for integration tests.
pub fn process_certs() -> &'static CertificatePaths {
    static CERTS: OnceLock<CertificatePaths> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("certs-{}", std::process::id()));
        certs::write_dev_certificates(&dir, &[], true)
            .expect("writing development certificates")
            .1
    })
}

pub struct TestApp {
    pub address: String,
    /// `https://127.0.0.1:PORT`, TLS with a certificate signed by `certs.ca_pem`.
    pub grpc_address: String,
    pub certs: Arc<TestCerts>,
    pub metrics_address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub isolation: Isolation,
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    /// The service's own event bus (the JetStream adapter), for publishing as it does.
    pub bus: JetStream,
    pub mailroom: Mailroom,
    pub webhooks: mailroom::webhooks::Webhooks,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    owns_resources: bool,
}

/// The durable consumers of an application.
#[derive(Debug, Clone, Copy)]
pub enum Consumer {
    Create,
    Send,
}

/// Starts an application with the test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts an application with the test settings, changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_in(Isolation::new(), configure).await
}

/// Starts an application in a given isolation (whose stream may already hold events);
/// the application cleans it up when dropped.
pub async fn spawn_app_in(isolation: Isolation, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let certs = Arc::new(TestCerts::generate());
    let settings = isolation.settings(|settings| {
        certs.apply(settings);
        configure(settings);
    });
    start(settings, isolation, certs, true).await
}

/// Starts a second instance on the same database, stream and keys as `other`.
pub async fn spawn_sibling(other: &TestApp, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = other.settings.clone();
    settings.http.addr = "127.0.0.1:0".parse().unwrap();
    settings.metrics.addr = "127.0.0.1:0".parse().unwrap();
    settings.grpc.addr = "127.0.0.1:0".parse().unwrap();
    configure(&mut settings);
    start(
        settings,
        other.isolation.clone(),
        other.certs.clone(),
        false,
    )
    .await
}

async fn start(
    settings: Settings,
    isolation: Isolation,
    certs: Arc<TestCerts>,
    owns_resources: bool,
) -> TestApp {
    telemetry();
    let app = Application::build(settings.clone())
        .await
        .expect("the application builds");
    let address = format!("http://{}", app.http_addr());
    let grpc_address = format!("https://{}", app.grpc_addr());
    let metrics_address = format!("http://{}", app.metrics_addr());
    let mailroom = app.mailroom().clone();
    let webhooks = app.webhooks().clone();
    let nats = app.jetstream().client.clone();
    let jetstream = app.jetstream().context.clone();
    let bus = app.jetstream().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let db = PgPool::connect(settings.database.url.expose_secret())
        .await
        .expect("the test database");
    TestApp {
        address,
        grpc_address,
        certs,
        metrics_address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(api_key_headers())
            .build()
            .unwrap(),
        settings,
        isolation,
        db,
        nats,
        jetstream,
        bus,
        mailroom,
        webhooks,
        shutdown,
        task: Some(task),
        owns_resources,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A TLS channel to the gRPC listener that trusts the test CA (and nothing else).
    pub async fn grpc_channel(&self) -> Channel {
        grpc_channel(&self.grpc_address, &self.certs.ca_pem).await
    }

    /// A client generated from `proto/email.proto`, sending [`TEST_API_KEY`].
    pub async fn grpc_client(&self) -> EmailServiceClient<KeyedChannel> {
        EmailServiceClient::with_interceptor(self.grpc_channel().await, with_test_key as AddKey)
    }

    pub fn subject(&self, name: &str) -> String {
        self.settings.nats.subject(name)
    }

    pub async fn post_email(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/email"))
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/email")
    }

    /// `POST /api/v1/email` with `Prefer: respond-async`: the create workers store it.
    pub async fn post_email_async(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/email"))
            .header("Prefer", "respond-async")
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/email (respond-async)")
    }

    pub async fn get_email(&self, id: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/v1/email/{id}")))
            .send()
            .await
            .expect("GET /api/v1/email/{id}")
    }

    /// Creates an email and returns its JSON.
    /// GET `path` with the test key, answering the JSON body (whatever the status).
    pub async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn create_email(&self, body: &Value) -> Value {
        let response = self.post_email(body).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// Stores a queued email straight into the tables, with no send event (as one whose
    /// event was lost, or that only the test will deliver), due `overdue` ago.
    pub async fn store_without_event(&self, id: Uuid, to: &str, subject: &str, overdue: Duration) {
        sqlx::query(
            "WITH message AS ( \
                 INSERT INTO email_messages (email_id, address_from, address_to, subject, message) \
                 VALUES ($1, 'sender@example.com', $2, $3, 'stored without an event') \
                 RETURNING email_id) \
             INSERT INTO email_deliveries (email_id, next_attempt_at) \
             SELECT email_id, now() - make_interval(secs => $4) FROM message",
        )
        .bind(id)
        .bind(to)
        .bind(subject)
        .bind(overdue.as_secs_f64())
        .execute(&self.db)
        .await
        .expect("storing an email without its event");
    }

    /// Emails in this application's database (the view `emails`).
    pub async fn stored_emails(&self) -> i64 {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM emails")
            .fetch_one(&self.db)
            .await
            .expect("counting the stored emails");
        count
    }

    /// Waits until the email has `status`, and returns it.
    pub async fn wait_for_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT status FROM emails WHERE email_id = $1::uuid")
                    .bind(id)
                    .fetch_optional(&self.db)
                    .await
                    .unwrap();
            if row.as_ref().is_some_and(|(s,)| s == status) {
                let response = self.get_email(id).await;
                assert_eq!(response.status(), 200);
                return response.json().await.unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "email {id} did not become {status} within {within:?}; it is {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's view of a durable consumer of this application.
    pub async fn consumer_info(&self, which: Consumer) -> jetstream::consumer::Info {
        let nats = &self.settings.nats;
        let durable = match which {
            Consumer::Create => &nats.consumers.create.durable,
            Consumer::Send => &nats.consumers.send.durable,
        };
        let stream = self
            .jetstream
            .get_stream(nats.stream_name())
            .await
            .expect("the stream");
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(&nats.durable_name(durable))
            .await
            .expect("the durable consumer");
        consumer.info().await.expect("consumer info").clone()
    }

    /// Waits until a durable consumer has settled every message it was given (nothing
    /// left to deliver, nothing unacknowledged), and returns its state then: the
    /// positive signal that absence checks wait for. `delivered.consumer_sequence`
    /// counts every delivery, redeliveries included.
    pub async fn settled(&self, which: Consumer) -> jetstream::consumer::Info {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = self.consumer_info(which).await;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "the {which:?} consumer did not settle: {} pending, {} unacknowledged",
                info.num_pending,
                info.num_ack_pending
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes raw bytes on a subject with plain core NATS, like any producer would.
    pub async fn publish_raw(&self, subject: &str, payload: impl Into<bytes::Bytes>) {
        self.nats
            .publish(subject.to_owned(), payload.into())
            .await
            .unwrap();
        self.nats.flush().await.unwrap();
    }

    /// Every message stored on a subject so far (read with an ephemeral consumer, which
    /// leaves the durable ones alone), waiting until there are at least `at_least`.
    pub async fn messages_on(
        &self,
        subject: &str,
        at_least: usize,
        within: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let found = self.read_subject(subject).await;
            if found.len() >= at_least || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn read_subject(&self, subject: &str) -> Vec<Value> {
        let stream = self
            .jetstream
            .get_stream(self.settings.nats.stream_name())
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let pending = consumer.cached_info().num_pending as usize;
        let mut out = Vec::new();
        if pending == 0 {
            return out;
        }
        let mut messages = consumer.messages().await.unwrap().take(pending);
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            out.push(
                serde_json::from_slice(&message.payload)
                    .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&message.payload)})),
            );
        }
        out
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.metrics_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the application gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("the application task")
                .expect("the application stopped cleanly");
        }
    }

    /// Kills the application: its tasks are dropped mid-flight, nothing drains.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if !self.owns_resources {
            return;
        }
        self.isolation.clean_up(&self.settings);
    }
}

/// A TLS channel to `address` (`https://…`) trusting only the CA in `ca_pem`.
/// Adds the `authorization` metadata a gRPC call needs.
pub type AddKey = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
/// A channel whose calls carry [`TEST_API_KEY`].
pub type KeyedChannel = tonic::service::interceptor::InterceptedService<Channel, AddKey>;

/// Puts [`TEST_API_KEY`] in a call's metadata (a client interceptor).
pub fn with_test_key(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TEST_API_KEY}").parse().unwrap(),
    );
    Ok(request)
}

pub async fn grpc_channel(address: &str, ca_pem: &str) -> Channel {
    Channel::from_shared(address.to_owned())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .unwrap()
        .connect()
        .await
        .expect("connecting to the gRPC listener over TLS")
}

/// A unique recipient address, so a test finds its own mail in the shared SMTP sink.
pub fn unique_recipient(name: &str) -> String {
    format!("{name}.{}@example.com", Uuid::new_v4().simple())
}

/// A valid create request body for `to`.
pub fn email_body(to: &str) -> Value {
    json!({
        "from": "sender@example.com",
        "to": to,
        "subject": "Hello from mailroom",
        "message": "This is a test message.",
    })
}

/// The messages maildev holds for `to`.
pub async fn maildev_messages_to(to: &str) -> Vec<Value> {
    let all: Vec<Value> = reqwest::get(format!("{MAILDEV_API}/api/email"))
        .await
        .expect("maildev's API answers (run `make deps`)")
        .json()
        .await
        .unwrap();
    all.into_iter()
        .filter(|m| {
            m["to"]
                .as_array()
                .is_some_and(|to_list| to_list.iter().any(|t| t["address"] == to))
        })
        .collect()
}

/// Waits until `check` passes or `within` is over.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(within, what, || {
        let pending = check();
        async move { pending.await.then_some(()) }
    })
    .await
}

/// Waits until `probe` finds something, and returns it; fails after `within`.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series (`name{labels}` exactly as rendered) in Prometheus' text format.
/// The `(field, code)` pairs of a problem document's violations, in order.
pub fn problem_fields(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap().to_owned(),
                        e["code"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A port nothing listens on, for as long as the test process runs: a socket is bound
/// to it and never listens, so connections are refused and no other program (or test)
/// can take the port meanwhile.
pub fn closed_port() -> u16 {
    static RESERVED: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("a TCP socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("binding a port");
    let port = socket
        .local_addr()
        .unwrap()
        .as_socket()
        .expect("an IP address")
        .port();
    RESERVED.lock().unwrap().push(socket);
    port
}

/// A port free right now, for a server a test starts itself (a child process binds it
/// a moment later; another program could take it in between, so such servers are
/// waited for by connecting).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A private redis-server on its own port, stopped when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        eventually(Duration::from_secs(5), "private redis starts", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        PrivateRedis {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `mailroom serve` process in an isolation, on free ports, killed (SIGKILL) when
/// dropped: for tests of what a crash leaves behind.
pub struct Service {
    child: std::process::Child,
    /// The REST API's base URL.
    pub base: String,
}

impl Service {
    /// Starts the binary with the test profile, the isolation's resources and `env`.
    pub fn start(isolation: &Isolation, env: &[(&str, String)]) -> Service {
        let http = free_port();
        let child = isolation
            .command()
            .env("MAILROOM__HTTP__ADDR", format!("127.0.0.1:{http}"))
            .env("MAILROOM__GRPC__ADDR", format!("127.0.0.1:{}", free_port()))
            .env(
                "MAILROOM__METRICS__ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Service {
            child,
            base: format!("http://127.0.0.1:{http}"),
        }
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        eventually(
            Duration::from_secs(30),
            "the service becomes ready",
            || async {
                client
                    .get(format!("{}/ready", self.base))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
    }

    /// Kills it without warning (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
