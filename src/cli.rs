//! The command line: `mailroom [serve]`, `mailroom migrate up|down|status`,
//! `mailroom openapi`, `mailroom certs`, `mailroom api-key new|hash`, `mailroom dkim
//! generate`, `mailroom events tail`, `mailroom dlq list|redrive`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    adapters::{jetstream::JetStream, postgres, smtp},
    api_keys, certs, commands,
    config::{DkimAlgorithm, Settings, Sources, dkim_domain, is_dns_name},
    rest,
    startup::{Application, Core},
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "mailroom",
    version,
    about = "An email microservice: REST, gRPC and NATS in, SMTP out."
)]
pub struct Cli {
    /// A settings file applied over every other layer.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The settings profile (local, test, docker, production); default MAILROOM_ENV or local.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Manage the database schema.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Write a development CA and a gRPC server certificate signed by it (for localhost
    /// and 127.0.0.1) as ca.crt, ca.key, server.crt and server.key. A complete set already
    /// there is kept unless --force is given.
    Certs {
        /// Where to write them.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// Another name the server certificate covers (a DNS name or an IP address);
        /// repeatable.
        #[arg(long = "san", value_name = "NAME")]
        extra_names: Vec<String>,
        /// Replace an existing set (clients must then trust the new ca.crt).
        #[arg(long)]
        force: bool,
    },
    /// Make or hash API keys for auth.api_keys.
    ApiKey {
        #[command(subcommand)]
        action: ApiKeyAction,
    },
    /// DKIM signing keys for dkim.keys.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Read the event stream.
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
    /// The dead letters on mail:errors.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum DkimAction {
    /// Write a new private key (mode 0600; an existing file is never replaced) and print
    /// the DNS TXT record to publish: its name, then its value.
    Generate {
        /// The From domain the key signs for.
        #[arg(long)]
        domain: String,
        /// The selector: the record is published at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// Where to write the private key (PEM, PKCS#8).
        #[arg(long, value_name = "PATH")]
        key_file: PathBuf,
        /// rsa-sha256 (2048-bit keys) or ed25519-sha256.
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: DkimAlgorithm,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyAction {
    /// Print a new random key and its auth.api_keys entry.
    New {
        /// The key's name, shown in logs and metrics; idempotency keys are its own.
        #[arg(long, default_value = "default")]
        name: String,
        /// What the key may do: send, read and admin, joined with + (default: all).
        #[arg(long)]
        scopes: Option<String>,
    },
    /// Print the auth.api_keys entry of a key read from standard input.
    Hash {
        #[arg(long, default_value = "default")]
        name: String,
        /// What the key may do: send, read and admin, joined with + (default: all).
        #[arg(long)]
        scopes: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Print events as JSON lines, from a start point, following new ones.
    Tail {
        /// Only this subject (e.g. mail:create); default: every mailroom subject.
        #[arg(long)]
        subject: Option<String>,
        /// Where to begin: all, last, last_per_subject, new, seq:N, time:RFC3339,
        /// ago:DURATION (e.g. ago:30s).
        #[arg(long, default_value = "new")]
        start: String,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<usize>,
        /// Stop once caught up instead of waiting for new events.
        #[arg(long)]
        no_follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Print the outstanding dead letters as JSON lines.
    List {
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Publish dead letters again on their original subject, and remove them.
    Redrive {
        /// The dead letter's sequence (`dlqSequence` in `dlq list`).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        seq: Option<u64>,
        /// Every outstanding dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Create the database if needed and apply every pending migration.
    Up,
    /// Revert the most recent migration (or down to --target).
    Down {
        /// Revert every migration newer than this version (0: all of them).
        #[arg(long)]
        target: Option<i64>,
    },
    /// List the migrations and whether each is applied.
    Status,
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Some(Command::Openapi) => {
                print!("{}", rest::openapi_json());
                return Ok(());
            }
            Some(Command::Certs {
                dir,
                extra_names,
                force,
            }) => return write_certs(&dir, &extra_names, force),
            Some(Command::ApiKey { action }) => return api_key(action),
            Some(Command::Dkim { action }) => return dkim(action),
            _ => {}
        }
        let settings = Settings::load(&Sources {
            profile: self.profile.clone(),
            config_dir: None,
            file: self.config.clone(),
        })?;
        let telemetry = telemetry::init(&settings.telemetry)?;
        let flush_within = settings.shutdown.timeout;
        let outcome = match self.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(settings).await,
            Command::Migrate { action } => migrate(settings, action).await,
            Command::Openapi
            | Command::Certs { .. }
            | Command::ApiKey { .. }
            | Command::Dkim { .. } => {
                unreachable!("handled before loading settings")
            }
            Command::Events { action } => events(settings, action).await,
            Command::Dlq { action } => dlq(settings, action).await,
        };
        // Last, after servers and workers have stopped: their final spans go out too.
        telemetry.shutdown(flush_within).await;
        outcome
    }
}

fn dkim(action: DkimAction) -> anyhow::Result<()> {
    let DkimAction::Generate {
        domain,
        selector,
        key_file,
        algorithm,
    } = action;
    let domain = dkim_domain(&domain)
        .with_context(|| format!("--domain {domain:?} is not a domain name"))?;
    anyhow::ensure!(
        is_dns_name(&selector),
        "--selector {selector:?} must be DNS labels (letters, digits, '-', dots)"
    );
    let public = smtp::generate_key(algorithm, &key_file)?;
    println!(
        "{}",
        smtp::dns_record(&domain, &selector, algorithm, &public)
    );
    eprintln!(
        "Wrote the private key to {} (mode 0600). Publish the record above, then add to \
         dkim.keys: {{domain: {domain}, selector: {selector}, private_key_file: {}, algorithm: {}}}",
        key_file.display(),
        key_file.display(),
        algorithm.as_str()
    );
    Ok(())
}

fn api_key(action: ApiKeyAction) -> anyhow::Result<()> {
    // The entry's scopes part, checked as the settings will read it.
    let scopes = |scopes: Option<String>| -> anyhow::Result<String> {
        match scopes {
            None => Ok(String::new()),
            Some(scopes) => Ok(format!(":{}", api_keys::Scopes::parse(&scopes)?)),
        }
    };
    match action {
        ApiKeyAction::New {
            name,
            scopes: wanted,
        } => {
            let scopes = scopes(wanted)?;
            let key = api_keys::generate_key();
            println!("key:   {key}");
            println!("entry: {name}:{}{scopes}", api_keys::hash_key(&key));
            eprintln!("Give the key to the caller; put only the entry in auth.api_keys.");
        }
        ApiKeyAction::Hash {
            name,
            scopes: wanted,
        } => {
            let scopes = scopes(wanted)?;
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .context("reading the key from stdin")?;
            let key = key.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{name}:{}{scopes}", api_keys::hash_key(key));
        }
    }
    Ok(())
}

fn write_certs(dir: &std::path::Path, extra_names: &[String], force: bool) -> anyhow::Result<()> {
    let (outcome, paths) = certs::write_dev_certificates(dir, extra_names, force)?;
    match outcome {
        certs::Outcome::Written => println!(
            "wrote {}, {}, {} and {}; clients trust {}",
            paths.ca_cert.display(),
            paths.ca_key.display(),
            paths.server_cert.display(),
            paths.server_key.display(),
            paths.ca_cert.display()
        ),
        certs::Outcome::Kept => println!(
            "kept the certificates in {} (--force replaces them)",
            dir.display()
        ),
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(profile = %settings.profile, "starting mailroom {}", env!("CARGO_PKG_VERSION"));
    let app = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}

async fn events(settings: Settings, action: EventsAction) -> anyhow::Result<()> {
    let jetstream =
        JetStream::connect(&settings.nats, settings.startup.wait_for_dependencies).await?;
    match action {
        EventsAction::Tail {
            subject,
            start,
            limit,
            no_follow,
        } => {
            let subject = subject.map(|s| commands::events::resolve_subject(&settings.nats, &s));
            commands::events::tail(&jetstream, subject.as_deref(), &start, limit, !no_follow).await
        }
    }
}

async fn dlq(settings: Settings, action: DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List { limit } => {
            let jetstream =
                JetStream::connect(&settings.nats, settings.startup.wait_for_dependencies).await?;
            let count = commands::dlq::list(&jetstream, limit).await?;
            eprintln!("{count} dead letter(s)");
        }
        DlqAction::Redrive { seq, all } => {
            let core = Core::connect(&settings).await?;
            let selection = match (seq, all) {
                (Some(seq), _) => commands::dlq::Selection::One(seq),
                (None, _) => commands::dlq::Selection::All,
            };
            let count = commands::dlq::redrive(&core.jetstream, &core.mailroom, selection).await?;
            eprintln!("{count} dead letter(s) redriven");
        }
    }
    Ok(())
}

async fn migrate(settings: Settings, action: MigrateAction) -> anyhow::Result<()> {
    let pool = postgres::pool(&settings.database)?;
    let migrator = &postgres::MIGRATOR;
    match action {
        MigrateAction::Up => {
            postgres::create_and_migrate(&settings.database, &pool).await?;
            println!(
                "database at {} is up to date",
                settings.database_url_redacted()
            );
        }
        MigrateAction::Down { target } => {
            let applied = postgres::applied_versions(&pool).await?;
            let target = match target {
                Some(target) => target,
                // One step back: the newest applied migration goes.
                None => applied.iter().rev().nth(1).copied().unwrap_or(0),
            };
            if applied.is_empty() {
                println!("no migration is applied");
                return Ok(());
            }
            migrator
                .undo(&pool, target)
                .await
                .context("reverting migrations")?;
            println!("reverted to version {target}");
        }
        MigrateAction::Status => {
            let applied = postgres::applied_versions(&pool).await?;
            for migration in migrator
                .iter()
                .filter(|m| m.migration_type.is_up_migration())
            {
                let state = if applied.contains(&migration.version) {
                    "applied"
                } else {
                    "pending"
                };
                println!(
                    "{:>16} {:8} {}",
                    migration.version, state, migration.description
                );
            }
        }
    }
    Ok(())
}
