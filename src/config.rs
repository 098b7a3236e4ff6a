//! Settings: `config/default.yaml`, then the profile, then `MAILROOM__…` variables, then
//! `--config FILE`, deserialised into typed sections and checked once at start.
//!
//! The default file and the profiles are also compiled into the binary, so `mailroom`
//! runs from any directory; a `config/` directory on disk (or `MAILROOM_CONFIG_DIR`)
//! takes precedence over the built-in copies.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod smtp;

pub use smtp::{
    DEFAULT_RELAY_NAME, DkimAlgorithm, DkimKeySettings, DkimSettings, RelayEntry, RelaySettings,
    SmtpSecurity, SmtpSettings, dkim_domain, is_dns_name,
};

use crate::api_keys::ApiKeys;

/// The profiles shipped in `config/`, with their built-in copies.
const BUILT_IN: &[(&str, &str)] = &[
    ("default", include_str!("../config/default.yaml")),
    ("local", include_str!("../config/local.yaml")),
    ("test", include_str!("../config/test.yaml")),
    ("docker", include_str!("../config/docker.yaml")),
    ("production", include_str!("../config/production.yaml")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub grpc: GrpcSettings,
    pub metrics: MetricsSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub cache: CacheSettings,
    pub nats: NatsSettings,
    pub smtp: SmtpSettings,
    pub dkim: DkimSettings,
    pub lanes: LanesSettings,
    pub limits: LimitsSettings,
    pub delivery: DeliverySettings,
    pub reconciler: ReconcilerSettings,
    pub scheduler: SchedulerSettings,
    pub webhooks: WebhookSettings,
    pub idempotency: IdempotencySettings,
    pub search: SearchSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
    pub startup: StartupSettings,
    pub shutdown: ShutdownSettings,
    /// The profile these settings were loaded with; not a key in the files.
    #[serde(skip)]
    pub profile: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub cors_allowed_origins: Vec<String>,
    /// A connection that began a request must send its head within this long.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight for this long is closed.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Most connections open at once on each of the REST and metrics listeners.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSettings {
    pub addr: SocketAddr,
    /// PEM certificate chain served to clients.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// HTTP/2 PING interval on each connection.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// A connection without a call in flight for this long is closed; `None`: never.
    #[serde(default, with = "humantime_serde")]
    pub max_connection_idle: Option<Duration>,
    /// A connection is asked to go away (GOAWAY) after this long; `None`: never.
    #[serde(default, with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    /// Calls still running `max_connection_age_grace` after the GOAWAY are cut off.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// How often readiness is re-checked for `grpc.health.v1.Health`.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// Serve `grpc.reflection.v1` and `v1alpha`.
    pub reflection: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub addr: SocketAddr,
    /// How often the queue gauges (`mailroom_emails_pending`, `…_oldest_pending_seconds`)
    /// are counted again.
    #[serde(with = "humantime_serde")]
    pub queue_interval: Duration,
    /// The most unfinished emails one count reads; past it the pending gauges are lower
    /// bounds.
    pub queue_count_limit: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub min_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    pub migrate_on_start: bool,
    pub group_commit: GroupCommitConfig,
}

/// Synchronous creates stored together in one transaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCommitConfig {
    pub max_batch: usize,
    pub committers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: SecretString,
    pub key_prefix: String,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// The in-process tier of the email cache, in front of Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// How long this instance serves an email it read (or changed) without asking
    /// Redis; status changes made by other instances show after at most this long.
    /// Zero turns the tier off.
    #[serde(with = "humantime_serde")]
    pub local_ttl: Duration,
    /// Most emails kept; zero turns the tier off.
    pub local_capacity: usize,
    /// Most bytes of email content kept; zero turns the tier off.
    pub local_max_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    pub stream: String,
    pub prefix: String,
    pub subjects: Subjects,
    pub storage: StreamStorage,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_bytes: i64,
    pub max_messages: i64,
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    pub replicas: usize,
    pub max_event_bytes: usize,
    pub publish: PublishSettings,
    pub consumers: ConsumersSettings,
}

impl NatsSettings {
    /// The servers `url` lists, comma separated (a cluster's seed servers): the client
    /// connects to whichever answers, and learns the rest of the cluster from it.
    pub fn server_addrs(&self) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
        let servers = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                url.parse::<async_nats::ServerAddr>().with_context(|| {
                    format!("nats.url: {} is not a NATS server URL", redact_url(url))
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if servers.is_empty() {
            bail!("nats.url names no server");
        }
        Ok(servers)
    }

    /// The stream name with the isolation prefix applied.
    pub fn stream_name(&self) -> String {
        // Stream and consumer names may not contain '.', so the prefix is sanitised.
        format!("{}{}", name_prefix(&self.prefix), self.stream)
    }

    /// A subject with the isolation prefix applied.
    pub fn subject(&self, subject: &str) -> String {
        format!("{}{}", self.prefix, subject)
    }

    /// A durable consumer name with the isolation prefix applied.
    pub fn durable_name(&self, durable: &str) -> String {
        format!("{}{}", name_prefix(&self.prefix), durable)
    }
}

/// A list of durations written like `30s`.
fn durations<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
    let list: Vec<humantime_serde::Serde<Duration>> = Vec::deserialize(deserializer)?;
    Ok(list.into_iter().map(|d| d.into_inner()).collect())
}

fn name_prefix(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subjects {
    pub create: String,
    pub send: String,
    pub send_bulk: String,
    pub errors: String,
    pub status: String,
    pub webhook: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStorage {
    File,
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSettings {
    pub max_ack_inflight: usize,
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumersSettings {
    pub create: ConsumerSettings,
    pub send: ConsumerSettings,
    pub send_bulk: ConsumerSettings,
    pub webhook_dispatch: ConsumerSettings,
    pub webhook: ConsumerSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    pub durable: String,
    pub workers: usize,
    pub batch_size: usize,
    /// Payload bytes past which a batch takes no more messages.
    pub batch_max_bytes: usize,
    pub max_ack_pending: i64,
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub deliver_policy: DeliverPolicySetting,
    pub start_sequence: Option<u64>,
    pub start_time: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicySetting {
    All,
    Last,
    LastPerSubject,
    New,
    ByStartSequence,
    ByStartTime,
}

/// Transactional and bulk mail, queued and sent apart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanesSettings {
    /// The lane of a batch's emails that name none.
    pub batch_default: crate::domain::Lane,
    /// Most SMTP sends of each lane in flight at once, per instance, over every relay.
    pub transactional_send_slots: usize,
    pub bulk_send_slots: usize,
}

/// What one email may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    pub max_recipients: usize,
    pub max_message_bytes: usize,
    pub max_batch: usize,
    #[serde(with = "humantime_serde")]
    pub max_schedule_ahead: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub max_attempts: u32,
    #[serde(deserialize_with = "durations")]
    pub backoff: Vec<Duration>,
    #[serde(deserialize_with = "durations")]
    pub outage_backoff: Vec<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerSettings {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long past due an unfinished email (queued, sending past its lease, deferred
    /// past its retry time) must be before its send event is published again. Once
    /// called `queued_age`, which is still read.
    #[serde(with = "humantime_serde", alias = "queued_age")]
    pub overdue_age: Duration,
    pub batch_size: i64,
}

/// How scheduled emails are released when their time comes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Longest sleep between two looks for due emails.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most emails released by one look.
    pub batch_size: i64,
}

/// How webhook requests are made and retried (`webhooks.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    pub allow_private_targets: bool,
    pub require_https: bool,
    pub max_in_flight_per_endpoint: usize,
    #[serde(with = "humantime_serde")]
    pub rotation_overlap: Duration,
    pub max_response_bytes: usize,
    /// Longest sleep of a retrier between two looks for due deliveries.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most deliveries a retrier publishes per look.
    pub poll_batch_size: i64,
}

/// How long an idempotency key answers the email it created.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// After this long the same key (of the same client) creates a new email.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSettings {
    /// Matches are counted up to this many; past it the total is a lower bound
    /// (`totalCountExact: false`), so counting a common word never scans the table.
    pub count_limit: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub service_name: String,
    pub otlp_endpoint: String,
    pub sampler: SamplerSetting,
    /// Fraction of new traces kept by the `ratio` samplers, from 0.0 to 1.0.
    pub sample_ratio: f64,
}

/// Which traces are recorded and exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    /// `sample_ratio` of all traces, whatever the caller decided.
    Ratio,
    /// The caller's decision when a request carries a trace context, otherwise
    /// `sample_ratio` of new traces.
    ParentBasedRatio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `NAME:SHA256HEX` entries, parsed (and checked) as the settings load.
    pub api_keys: ApiKeys,
    pub rate_limit: RateLimitSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupSettings {
    #[serde(with = "humantime_serde")]
    pub wait_for_dependencies: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Where the settings come from; `Default` reads the environment like the CLI does.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Profile name; `MAILROOM_ENV` or `local` when `None`.
    pub profile: Option<String>,
    /// Directory holding `default.yaml` and the profiles; `MAILROOM_CONFIG_DIR` or
    /// `config` when `None`.
    pub config_dir: Option<PathBuf>,
    /// `--config FILE`, applied last.
    pub file: Option<PathBuf>,
}

impl Settings {
    /// Loads and checks the settings from every layer.
    pub fn load(sources: &Sources) -> anyhow::Result<Settings> {
        let profile = sources
            .profile
            .clone()
            .or_else(|| std::env::var("MAILROOM_ENV").ok())
            .unwrap_or_else(|| "local".to_owned());
        let dir = sources
            .config_dir
            .clone()
            .or_else(|| std::env::var_os("MAILROOM_CONFIG_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config"));

        let mut builder = Config::builder()
            .add_source(layer(&dir, "default")?)
            .add_source(layer(&dir, &profile)?)
            .add_source(
                Environment::with_prefix("MAILROOM")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("http.cors_allowed_origins")
                    .with_list_parse_key("auth.api_keys")
                    .with_list_parse_key("delivery.backoff")
                    .with_list_parse_key("delivery.outage_backoff")
                    .with_list_parse_key("webhooks.retry_schedule")
                    .try_parsing(true),
            );
        if let Some(file) = &sources.file {
            builder = builder.add_source(File::from(file.as_path()).required(true));
        }
        let mut settings: Settings = builder
            .build()
            .context("reading the configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.profile = profile;
        settings.check()?;
        Ok(settings)
    }

    /// Refuses settings that cannot work, or that are unsafe in production.
    fn check(&self) -> anyhow::Result<()> {
        if self.smtp.pool_max_size == 0 {
            bail!("smtp.pool_max_size must be at least 1");
        }
        self.smtp.check()?;
        self.dkim.check()?;
        if self.lanes.transactional_send_slots == 0 || self.lanes.bulk_send_slots == 0 {
            bail!("lanes.transactional_send_slots and lanes.bulk_send_slots must be at least 1");
        }
        if self.metrics.queue_interval.is_zero() || self.metrics.queue_count_limit < 1 {
            bail!("metrics.queue_interval and metrics.queue_count_limit must be above zero");
        }
        if self.search.count_limit == 0 {
            bail!("search.count_limit must be at least 1");
        }
        if self.delivery.max_attempts == 0 {
            bail!("delivery.max_attempts must be at least 1");
        }
        if self.delivery.backoff.is_empty() || self.delivery.outage_backoff.is_empty() {
            bail!("delivery.backoff and delivery.outage_backoff need at least one entry");
        }
        let group_commit = &self.database.group_commit;
        if group_commit.max_batch == 0 || group_commit.committers == 0 {
            bail!("database.group_commit.max_batch and committers must be at least 1");
        }
        if self.webhooks.timeout.is_zero() || self.webhooks.max_in_flight_per_endpoint == 0 {
            bail!(
                "webhooks.timeout must be longer than 0s and webhooks.max_in_flight_per_endpoint at least 1"
            );
        }
        if self.webhooks.timeout >= self.nats.consumers.webhook.ack_wait {
            bail!("webhooks.timeout must be shorter than nats.consumers.webhook.ack_wait");
        }
        for (name, consumer) in [
            ("create", &self.nats.consumers.create),
            ("send", &self.nats.consumers.send),
            ("send_bulk", &self.nats.consumers.send_bulk),
            ("webhook_dispatch", &self.nats.consumers.webhook_dispatch),
            ("webhook", &self.nats.consumers.webhook),
        ] {
            if consumer.workers == 0 || consumer.batch_size == 0 || consumer.batch_max_bytes == 0 {
                bail!(
                    "nats.consumers.{name}.workers, batch_size and batch_max_bytes must be at least 1"
                );
            }
            match consumer.deliver_policy {
                DeliverPolicySetting::ByStartSequence if consumer.start_sequence.is_none() => {
                    bail!(
                        "nats.consumers.{name}.deliver_policy by_start_sequence needs start_sequence"
                    )
                }
                DeliverPolicySetting::ByStartTime if consumer.start_time.is_none() => {
                    bail!("nats.consumers.{name}.deliver_policy by_start_time needs start_time")
                }
                _ => {}
            }
        }
        self.nats.server_addrs()?;
        if self.auth.rate_limit.per_second <= 0.0 || self.auth.rate_limit.burst == 0 {
            bail!("auth.rate_limit.per_second and auth.rate_limit.burst must be positive");
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            bail!("telemetry.sample_ratio must be between 0.0 and 1.0");
        }
        if self.limits.max_recipients == 0
            || self.limits.max_message_bytes == 0
            || self.limits.max_batch == 0
        {
            bail!(
                "limits.max_recipients, limits.max_message_bytes and limits.max_batch must be at least 1"
            );
        }
        if self.scheduler.interval.is_zero() || self.scheduler.batch_size < 1 {
            bail!("scheduler.interval must be longer than 0s and scheduler.batch_size at least 1");
        }
        if self.http.max_connections == 0 {
            bail!("http.max_connections must be at least 1");
        }
        if self.grpc.max_message_bytes == 0 {
            bail!("grpc.max_message_bytes must be at least 1");
        }
        for (name, value) in [
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.keep_alive_timeout", self.http.keep_alive_timeout),
            ("grpc.request_timeout", self.grpc.request_timeout),
            ("grpc.health_interval", self.grpc.health_interval),
            ("grpc.keepalive_interval", self.grpc.keepalive_interval),
            ("grpc.keepalive_timeout", self.grpc.keepalive_timeout),
            (
                "grpc.tls_handshake_timeout",
                self.grpc.tls_handshake_timeout,
            ),
        ] {
            if value.is_zero() {
                bail!("{name} must be longer than 0s");
            }
        }
        if self.profile == "production" {
            if self.auth.api_keys.is_empty() {
                bail!("production refuses to start without auth.api_keys");
            }
            if self.http.cors_allowed_origins.iter().any(|o| o == "*") {
                bail!("production refuses http.cors_allowed_origins \"*\"");
            }
            for relay in self.smtp.relays() {
                let loopback = matches!(relay.host.as_str(), "localhost" | "127.0.0.1" | "::1");
                if relay.security == SmtpSecurity::None && !loopback {
                    bail!(
                        "production refuses smtp.security: none to a remote host (use starttls or tls; relay {})",
                        relay.name
                    );
                }
                if relay.security != SmtpSecurity::None && !relay.verify_certificates {
                    bail!(
                        "production refuses smtp.verify_certificates: false (relay {})",
                        relay.name
                    );
                }
            }
        }
        Ok(())
    }

    /// The database URL with the password hidden, for logs and error messages.
    pub fn database_url_redacted(&self) -> String {
        redact_url(self.database.url.expose_secret())
    }
}

fn layer(
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<File<config::FileSourceString, FileFormat>> {
    let path = dir.join(format!("{name}.yaml"));
    if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(File::from_str(&text, FileFormat::Yaml));
    }
    match BUILT_IN.iter().find(|(profile, _)| *profile == name) {
        Some((_, text)) => Ok(File::from_str(text, FileFormat::Yaml)),
        None => bail!(
            "unknown profile {name:?}: no {} and no built-in profile of that name",
            path.display()
        ),
    }
}

/// Replaces the password of a URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built_in(profile: &str) -> Settings {
        Settings::load(&Sources {
            profile: Some(profile.to_owned()),
            config_dir: Some(PathBuf::from("/nonexistent")),
            file: None,
        })
        .unwrap()
    }

    #[test]
    fn every_built_in_profile_loads() {
        for profile in ["local", "test", "docker"] {
            let settings = built_in(profile);
            assert_eq!(settings.profile, profile);
        }
    }

    /// Loads `profile` with `extra` YAML on top, given as a `--config` file.
    fn loaded_with(profile: &str, extra: &str) -> anyhow::Result<Settings> {
        let dir = std::env::temp_dir().join(format!("mailroom-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("extra.yaml");
        std::fs::write(&file, extra).unwrap();
        let settings = Settings::load(&Sources {
            profile: Some(profile.into()),
            config_dir: Some(PathBuf::from("/nonexistent")),
            file: Some(file),
        });
        std::fs::remove_dir_all(dir).unwrap();
        settings
    }

    fn production_with(extra: &str) -> anyhow::Result<Settings> {
        loaded_with("production", extra)
    }

    fn local_with(extra: &str) -> anyhow::Result<Settings> {
        loaded_with("local", extra)
    }

    const A_KEY: &str = "auth:\n  api_keys: [\"ops:ed5a18fb8f807f996d649e379d3f35f39c543a91bdbf88c492f2ebd10d4df86c\"]\n";

    #[test]
    fn production_loads_with_api_keys() {
        let settings = production_with(A_KEY).unwrap();
        assert_eq!(settings.profile, "production");
        assert_eq!(settings.smtp.security, SmtpSecurity::Starttls);
    }

    #[test]
    fn production_refuses_to_start_without_api_keys() {
        let err = production_with("{}").unwrap_err();
        assert!(
            format!("{err:#}").contains("without auth.api_keys"),
            "{err:#}"
        );
    }

    #[test]
    fn production_refuses_smtp_without_certificate_verification() {
        let err =
            production_with(&format!("{A_KEY}smtp:\n  verify_certificates: false\n")).unwrap_err();
        assert!(
            format!("{err:#}").contains("verify_certificates"),
            "{err:#}"
        );
    }

    #[test]
    fn production_refuses_plain_smtp_to_a_remote_host() {
        let err = production_with(&format!(
            "{A_KEY}smtp:\n  host: mail.example.com\n  security: none\n"
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("security: none"), "{err:#}");
        assert!(
            production_with(&format!(
                "{A_KEY}smtp:\n  host: 127.0.0.1\n  security: none\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn production_refuses_cors_for_any_origin() {
        let err = production_with(&format!("{A_KEY}http:\n  cors_allowed_origins: [\"*\"]\n"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("cors"), "{err:#}");
    }

    #[test]
    fn a_malformed_api_key_entry_is_refused_at_start() {
        let err = production_with("auth:\n  api_keys: [\"just-a-key\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("NAME:SHA256HEX"), "{err:#}");
    }

    #[test]
    fn local_profile_uses_the_documented_defaults() {
        let settings = built_in("local");
        assert_eq!(settings.http.addr.to_string(), "127.0.0.1:5000");
        assert_eq!(settings.grpc.addr.to_string(), "127.0.0.1:5007");
        assert_eq!(settings.metrics.addr.to_string(), "127.0.0.1:7070");
        assert_eq!(settings.smtp.port, 1025);
        assert_eq!(settings.redis.ttl, Duration::from_secs(3600));
        assert_eq!(settings.cache.local_ttl, Duration::from_secs(1));
        assert_eq!(settings.cache.local_capacity, 10_000);
        assert_eq!(settings.cache.local_max_bytes, 64 << 20);
        assert_eq!(settings.nats.subjects.create, "mail:create");
    }

    #[test]
    fn a_local_cache_ttl_of_zero_is_accepted_as_off() {
        let settings = local_with("cache:\n  local_ttl: 0s\n").unwrap();
        assert_eq!(settings.cache.local_ttl, Duration::ZERO);
    }

    #[test]
    fn grpc_defaults_use_the_development_certificates_and_the_documented_limits() {
        let grpc = built_in("local").grpc;
        assert_eq!(grpc.tls_cert, PathBuf::from("certs/server.crt"));
        assert_eq!(grpc.tls_key, PathBuf::from("certs/server.key"));
        assert_eq!(grpc.max_connection_idle, Some(Duration::from_secs(300)));
        assert_eq!(grpc.max_connection_age, Some(Duration::from_secs(1800)));
        assert_eq!(grpc.max_message_bytes, 16 * 1024 * 1024);
        assert!(grpc.reflection);
    }

    #[test]
    fn grpc_limits_of_null_mean_none_and_a_zero_timeout_is_refused() {
        let settings =
            local_with("grpc:\n  max_connection_idle: null\n  max_connection_age: null\n").unwrap();
        assert_eq!(settings.grpc.max_connection_idle, None);
        assert_eq!(settings.grpc.max_connection_age, None);
        let err = local_with("grpc:\n  request_timeout: 0s\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("grpc.request_timeout"),
            "{err:#}"
        );
    }

    #[test]
    fn zero_sized_groups_and_counts_are_refused_by_name() {
        let settings = local_with("database:\n  group_commit:\n    max_batch: 1\n").unwrap();
        assert_eq!(settings.database.group_commit.max_batch, 1);
        for (yaml, key) in [
            (
                "database:\n  group_commit:\n    max_batch: 0\n",
                "database.group_commit",
            ),
            (
                "database:\n  group_commit:\n    committers: 0\n",
                "database.group_commit",
            ),
            ("search:\n  count_limit: 0\n", "search.count_limit"),
            ("smtp:\n  pool_max_size: 0\n", "smtp.pool_max_size"),
            (
                "smtp:\n  return_path: bounces@x.example\n",
                "smtp.return_path",
            ),
        ] {
            let err = local_with(yaml).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{yaml}: {err:#}");
        }
    }

    #[test]
    fn an_unknown_profile_is_refused_by_name() {
        let err = Settings::load(&Sources {
            profile: Some("staging".into()),
            config_dir: Some(PathBuf::from("/nonexistent")),
            file: None,
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("staging"), "{err:#}");
    }

    #[test]
    fn a_config_file_overrides_the_profile() {
        let settings = local_with("http:\n  addr: 127.0.0.1:6000\n").unwrap();
        assert_eq!(settings.http.addr.port(), 6000);
    }

    #[test]
    fn a_misspelt_key_is_refused() {
        let err = local_with("http:\n  adr: 127.0.0.1:6000\n").unwrap_err();
        assert!(format!("{err:#}").contains("adr"), "{err:#}");
    }

    #[test]
    fn prefixes_make_names_valid_for_jetstream() {
        let mut settings = built_in("test");
        settings.nats.prefix = "t.1234.".into();
        assert_eq!(settings.nats.stream_name(), "t_1234_MAIL");
        assert_eq!(settings.nats.subject("mail:send"), "t.1234.mail:send");
        assert_eq!(
            settings.nats.durable_name("mailroom-send"),
            "t_1234_mailroom-send"
        );
    }

    #[test]
    fn nats_url_takes_a_comma_separated_list_of_servers() {
        let settings = local_with(
            "nats:\n  url: \"nats://a.example:4222, nats://b.example:4223,tls://c.example\"\n",
        )
        .unwrap();
        let servers: Vec<String> = settings
            .nats
            .server_addrs()
            .unwrap()
            .iter()
            .map(|s| format!("{}:{}", s.host(), s.port()))
            .collect();
        assert_eq!(
            servers,
            ["a.example:4222", "b.example:4223", "c.example:4222"]
        );
        let err = local_with("nats:\n  url: \"nats://a:4222,nats://b:x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("nats://b:x"), "{err:#}");
        let err = local_with("nats:\n  url: \" , \"\n").unwrap_err();
        assert!(format!("{err:#}").contains("names no server"), "{err:#}");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://postgres:secret@127.0.0.1:5432/mails_db"),
            "postgres://postgres:***@127.0.0.1:5432/mails_db"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn traces_are_all_kept_unless_a_caller_decided_otherwise_by_default() {
        let settings = built_in("local");
        assert_eq!(settings.telemetry.sampler, SamplerSetting::ParentBasedRatio);
        assert_eq!(settings.telemetry.sample_ratio, 1.0);
    }

    #[test]
    fn a_sample_ratio_outside_zero_to_one_is_refused() {
        let err = local_with("telemetry:\n  sample_ratio: 1.5\n").unwrap_err();
        assert!(format!("{err:#}").contains("sample_ratio"), "{err:#}");
    }

    #[test]
    fn secrets_do_not_reach_debug_output() {
        let mut settings = built_in("local");
        settings.smtp.password = SecretString::from("hunter2-smtp");
        settings.redis.url = SecretString::from("redis://:hunter2-redis@127.0.0.1:6379");
        let debug = format!("{settings:?}");
        for secret in ["postgres:postgres@", "hunter2-smtp", "hunter2-redis"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }
}
