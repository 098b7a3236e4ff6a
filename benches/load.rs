//! Load generators for `make bench` (scripts/bench.sh), which starts the service and the
//! baselines and calls this binary once per measurement:
//!
//! - `publish`: JetStream publishes of create events to `mail:create` with pipelined
//!   acks, then waits until every email is `sent` (read from PostgreSQL);
//! - `grpc`: `GetByID` or `Create` calls over TLS for a fixed time;
//! - `search`: sequential REST searches, timed one by one;
//! - `drop-stream`: removes the run's stream afterwards.
//!
//! Each prints one JSON object on stdout. Under `cargo test --all-targets` (no `--bench`
//! argument) it only checks itself, in a blink: load never runs as part of the tests.

use std::{
    collections::BTreeMap,
    future::IntoFuture,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::{StreamExt, stream::FuturesUnordered};
use mailroom::grpc::pb::{CreateReq, GetByIdReq, email_service_client::EmailServiceClient};
use serde_json::{Value, json};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig},
};

#[derive(Parser)]
#[command(about = "mailroom load generators for make bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publishes create events, then waits until all of them are sent.
    Publish {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// The prefixed create subject.
        #[arg(long)]
        subject: String,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Publishes awaiting their PubAck at once.
        #[arg(long, default_value_t = 1024)]
        inflight: usize,
        /// The service's database, polled for the emails' status.
        #[arg(long)]
        database: String,
        /// Tags the subjects of this run's emails.
        #[arg(long, default_value = "e2e")]
        tag: String,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Bytes of an attachment each email carries (0: none); sent in base64.
        #[arg(long, default_value_t = 0)]
        attachment_bytes: usize,
    },
    /// Calls the gRPC API for a fixed time.
    Grpc {
        /// https://127.0.0.1:PORT
        #[arg(long)]
        addr: String,
        #[arg(long)]
        ca: std::path::PathBuf,
        #[arg(long)]
        key: String,
        #[arg(long, value_enum)]
        method: Method,
        /// The email GetByID reads.
        #[arg(long)]
        id: Option<String>,
        /// TLS connections (HTTP/2 multiplexes the calls on them).
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Calls in flight at once, over all connections.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
    },
    /// Times REST searches one after the other.
    Search {
        /// http://127.0.0.1:PORT
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        /// Search texts; an empty one lists everything.
        #[arg(long = "term", required = true)]
        terms: Vec<String>,
        /// Searches per term (after one warm-up).
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        #[arg(long, default_value_t = 10)]
        size: u32,
    },
    /// Times REST listings (`GET /api/v1/email?…`) one after the other, the first page of
    /// each query `rounds` times, then its next pages by cursor.
    List {
        /// http://127.0.0.1:PORT
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        /// Query strings, like `status=failed&limit=20`.
        #[arg(long = "query", required = true)]
        queries: Vec<String>,
        /// First pages per query (after one warm-up).
        #[arg(long, default_value_t = 30)]
        rounds: usize,
        /// Pages followed by cursor after the first, once per query.
        #[arg(long, default_value_t = 30)]
        deep_pages: usize,
    },
    /// Deletes the bench's JetStream stream; one already gone is fine.
    DropStream {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    Get,
    Create,
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench targets without
    // it, and then there is nothing to do.
    let mut args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        self_check();
        return Ok(());
    }
    args.retain(|a| a != "--bench");
    let cli = Cli::parse_from(args);
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(async {
        match cli.command {
            Command::Publish {
                nats,
                subject,
                count,
                inflight,
                database,
                tag,
                timeout_secs,
                attachment_bytes,
            } => {
                publish(
                    &nats,
                    &subject,
                    count,
                    inflight,
                    &database,
                    &tag,
                    Duration::from_secs(timeout_secs),
                    attachment_bytes,
                )
                .await
            }
            Command::Grpc {
                addr,
                ca,
                key,
                method,
                id,
                connections,
                concurrency,
                duration_secs,
            } => {
                grpc(
                    &addr,
                    &ca,
                    &key,
                    method,
                    id,
                    connections,
                    concurrency,
                    Duration::from_secs(duration_secs),
                )
                .await
            }
            Command::Search {
                url,
                key,
                terms,
                rounds,
                size,
            } => search(&url, &key, &terms, rounds, size).await,
            Command::List {
                url,
                key,
                queries,
                rounds,
                deep_pages,
            } => list(&url, &key, &queries, rounds, deep_pages).await,
            Command::DropStream { nats, name } => {
                let client = async_nats::connect(&nats).await?;
                let deleted = async_nats::jetstream::new(client)
                    .delete_stream(&name)
                    .await
                    .is_ok();
                Ok(json!({ "stream": name, "deleted": deleted }))
            }
        }
    })?;
    println!("{report}");
    Ok(())
}

/// The message of every bench email: a few hundred bytes, like a notification.
fn body(i: usize) -> String {
    format!(
        "Hello, this is message {i} of the mailroom benchmark. Your order has shipped and \
         will arrive within three working days. Track it in your account; reply to this \
         email if anything is missing. Thank you for shopping with us."
    )
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    nats: &str,
    subject: &str,
    count: usize,
    inflight: usize,
    database: &str,
    tag: &str,
    timeout: Duration,
    attachment_bytes: usize,
) -> anyhow::Result<Value> {
    use base64::Engine;
    // Bytes that compress badly and look like a document: a repeating, shifted pattern.
    let attachment = (attachment_bytes > 0).then(|| {
        let bytes: Vec<u8> = (0..attachment_bytes)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        json!([{
            "filename": "invoice.pdf",
            "content": base64::engine::general_purpose::STANDARD.encode(bytes),
        }])
    });
    let client = async_nats::connect(nats)
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database)
        .await
        .context("connecting to the service's database")?;

    let started_wall = chrono::Utc::now();
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    let mut acked = 0usize;
    for i in 0..count {
        let mut event = json!({
            "from": "bench@example.com",
            "to": format!("rcpt{i}@example.com"),
            "subject": format!("{tag} {i}"),
            "message": body(i),
        });
        if let Some(attachment) = &attachment {
            event["attachments"] = attachment.clone();
        }
        let payload = serde_json::to_vec(&event)?;
        let ack = js
            .publish(subject.to_owned(), payload.into())
            .await
            .context("publishing a create event")?;
        acks.push(ack.into_future());
        while acks.len() >= inflight {
            acks.next().await.expect("not empty").context("PubAck")?;
            acked += 1;
        }
    }
    while let Some(ack) = acks.next().await {
        ack.context("PubAck")?;
        acked += 1;
    }
    let publish_secs = started.elapsed().as_secs_f64();

    // Poll until every email of this run is sent (or failed, which is an error here).
    // Only rows created since the run began can be this run's, and the newest-first index
    // finds those: a poll that read the whole table (five times a second) would compete
    // with the service for the CPU on a large table and measure itself (on 1,000,000 rows
    // it read about 100 heap blocks per email delivered).
    let pattern = format!("{tag} %");
    let since = started_wall - chrono::Duration::seconds(5);
    let deadline = Instant::now() + timeout;
    let (created, sent, failed) = loop {
        let (created, sent, failed): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'sent'), \
                    count(*) FILTER (WHERE status = 'failed') \
             FROM emails WHERE created_at >= $2 AND subject LIKE $1",
        )
        .bind(&pattern)
        .bind(since)
        .fetch_one(&pool)
        .await?;
        if sent + failed >= count as i64 || Instant::now() > deadline {
            break (created, sent, failed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The exact times come from the rows: creation and delivery stamps, same clock.
    let (last_created, last_sent): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT max(created_at), max(sent_at) FROM emails WHERE created_at >= $2 AND subject LIKE $1",
    )
    .bind(&pattern)
    .bind(since)
    .fetch_one(&pool)
        .await?;
    let secs_to = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| (t - started_wall).num_microseconds().unwrap_or(0) as f64 / 1e6)
    };
    let created_secs = secs_to(last_created);
    let sent_secs = secs_to(last_sent);
    if sent < count as i64 {
        bail!(
            "only {sent} of {count} emails sent within {timeout:?} ({created} created, {failed} failed)"
        );
    }
    let sent_secs = sent_secs.context("no sent_at")?;
    Ok(json!({
        "count": count,
        "acked": acked,
        "publish_secs": publish_secs,
        "publish_per_s": acked as f64 / publish_secs,
        "all_created_secs": created_secs,
        "created_per_s": created_secs.map(|s| count as f64 / s),
        "all_sent_secs": sent_secs,
        "emails_per_s": count as f64 / sent_secs,
        "failed": failed,
        "attachment_bytes": attachment_bytes,
    }))
}

/// Puts the API key in every call's metadata.
#[derive(Clone)]
struct WithKey(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for WithKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client = EmailServiceClient<tonic::service::interceptor::InterceptedService<Channel, WithKey>>;

#[allow(clippy::too_many_arguments)]
async fn grpc(
    addr: &str,
    ca: &std::path::Path,
    key: &str,
    method: Method,
    id: Option<String>,
    connections: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Value> {
    let ca = std::fs::read_to_string(ca).context("reading the CA certificate")?;
    let token: MetadataValue<_> = format!("Bearer {key}").parse()?;
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            Channel::from_shared(addr.to_owned())?
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)))?
                .connect()
                .await
                .context("connecting to the gRPC listener")?,
        );
    }
    if matches!(method, Method::Get) && id.is_none() {
        bail!("--method get needs --id");
    }
    let id = Arc::new(id.unwrap_or_default());
    let until = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency.max(1) {
        let channel = channels[task % channels.len()].clone();
        let token = token.clone();
        let id = id.clone();
        tasks.spawn(async move {
            let mut client: Client = EmailServiceClient::with_interceptor(channel, WithKey(token));
            let mut latencies = Vec::new();
            let mut errors = BTreeMap::<String, u64>::new();
            let mut n = 0usize;
            while Instant::now() < until {
                let call = Instant::now();
                let outcome = match method {
                    Method::Get => client
                        .get_by_id(GetByIdReq {
                            email_id: id.to_string(),
                        })
                        .await
                        .map(|_| ()),
                    Method::Create => client
                        .create(CreateReq {
                            from: "bench@example.com".into(),
                            to: "grpc@example.com".into(),
                            subject: format!("grpc {task} {n}"),
                            message: body(n),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                };
                n += 1;
                match outcome {
                    Ok(()) => latencies.push(call.elapsed().as_micros() as u64),
                    Err(status) => *errors.entry(format!("{:?}", status.code())).or_default() += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = BTreeMap::<String, u64>::new();
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done?;
        latencies.extend(l);
        for (code, n) in e {
            *errors.entry(code).or_default() += n;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(json!({
        "ok": latencies.len(),
        "errors": errors,
        "secs": secs,
        "req_per_s": latencies.len() as f64 / secs,
        "p50_ms": percentile(&latencies, 0.50) / 1000.0,
        "p99_ms": percentile(&latencies, 0.99) / 1000.0,
    }))
}

async fn search(
    url: &str,
    key: &str,
    terms: &[String],
    rounds: usize,
    size: u32,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    let mut all = Vec::new();
    let mut per_term = Vec::new();
    for term in terms {
        let mut latencies = Vec::new();
        let mut total_count = Value::Null;
        for round in 0..=rounds {
            let started = Instant::now();
            let response = client
                .get(format!("{url}/api/v1/email/search"))
                .query(&[("search", term.as_str()), ("size", &size.to_string())])
                .bearer_auth(key)
                .send()
                .await?;
            let status = response.status();
            let page: Value = response.json().await?;
            let micros = started.elapsed().as_micros() as u64;
            if !status.is_success() {
                bail!("search {term:?} answered {status}: {page}");
            }
            total_count = page["totalCount"].clone();
            // The first round warms the caches and is not counted.
            if round > 0 {
                latencies.push(micros);
            }
        }
        latencies.sort_unstable();
        per_term.push(json!({
            "term": term,
            "total_count": total_count,
            "p50_ms": percentile(&latencies, 0.50) / 1000.0,
            "p99_ms": percentile(&latencies, 0.99) / 1000.0,
        }));
        all.extend(latencies);
    }
    all.sort_unstable();
    Ok(json!({
        "queries": all.len(),
        "p50_ms": percentile(&all, 0.50) / 1000.0,
        "p99_ms": percentile(&all, 0.99) / 1000.0,
        "terms": per_term,
    }))
}

/// One listing request: its page and how long it took, in microseconds.
async fn list_page(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    query: &str,
    cursor: Option<&str>,
) -> anyhow::Result<(Value, u64)> {
    let mut address = format!("{url}/api/v1/email?{query}");
    if let Some(cursor) = cursor {
        address.push_str("&cursor=");
        address.push_str(cursor);
    }
    let started = Instant::now();
    let response = client.get(&address).bearer_auth(key).send().await?;
    let status = response.status();
    let page: Value = response.json().await?;
    let micros = started.elapsed().as_micros() as u64;
    if !status.is_success() {
        bail!("listing {query:?} answered {status}: {page}");
    }
    Ok((page, micros))
}

async fn list(
    url: &str,
    key: &str,
    queries: &[String],
    rounds: usize,
    deep_pages: usize,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    let (mut first_pages, mut deep) = (Vec::new(), Vec::new());
    let mut per_query = Vec::new();
    for query in queries {
        let mut latencies = Vec::new();
        let mut first = Value::Null;
        for round in 0..=rounds {
            let (page, micros) = list_page(&client, url, key, query, None).await?;
            // The first round warms the caches and is not counted.
            if round > 0 {
                latencies.push(micros);
            }
            first = page;
        }
        let mut deep_latencies = Vec::new();
        let mut cursor = first["nextCursor"].as_str().map(str::to_owned);
        let mut listed = first["emails"].as_array().map_or(0, Vec::len);
        while let Some(next) = cursor.take().filter(|_| deep_latencies.len() < deep_pages) {
            let (page, micros) = list_page(&client, url, key, query, Some(&next)).await?;
            deep_latencies.push(micros);
            listed += page["emails"].as_array().map_or(0, Vec::len);
            cursor = page["nextCursor"].as_str().map(str::to_owned);
        }
        latencies.sort_unstable();
        deep_latencies.sort_unstable();
        per_query.push(json!({
            "query": query,
            "first_page_emails": first["emails"].as_array().map_or(0, Vec::len),
            "emails_listed_by_cursor": listed,
            "p50_ms": percentile(&latencies, 0.50) / 1000.0,
            "p99_ms": percentile(&latencies, 0.99) / 1000.0,
            "deep_pages": deep_latencies.len(),
            "deep_p99_ms": percentile(&deep_latencies, 0.99) / 1000.0,
        }));
        first_pages.extend(latencies);
        deep.extend(deep_latencies);
    }
    first_pages.sort_unstable();
    deep.sort_unstable();
    Ok(json!({
        "queries": first_pages.len(),
        "p50_ms": percentile(&first_pages, 0.50) / 1000.0,
        "p99_ms": percentile(&first_pages, 0.99) / 1000.0,
        "deep_pages": deep.len(),
        "deep_p50_ms": percentile(&deep, 0.50) / 1000.0,
        "deep_p99_ms": percentile(&deep, 0.99) / 1000.0,
        "per_query": per_query,
    }))
}

/// What `cargo test` runs of this binary: its own arithmetic and command line, reported
/// the way libtest reports.
fn self_check() {
    let started = Instant::now();
    let checks: [(&str, fn()); 2] = [
        ("cli_definition_is_consistent", || {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }),
        ("percentile_takes_the_nearest_rank", || {
            let values: Vec<u64> = (1..=100).collect();
            assert_eq!(percentile(&values, 0.50), 50.0);
            assert_eq!(percentile(&values, 0.99), 99.0);
            assert_eq!(percentile(&[7], 0.99), 7.0);
            assert!(percentile(&[], 0.5).is_nan());
        }),
    ];
    println!("\nrunning {} tests", checks.len());
    for (name, check) in checks {
        check();
        println!("test {name} ... ok");
    }
    println!(
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s\n",
        checks.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The value at quantile `q` of sorted values (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}
