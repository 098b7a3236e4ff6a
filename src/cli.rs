//! The command line: `mailroom [serve]`, `mailroom migrate up|down|status`,
//! `mailroom openapi`, `mailroom certs`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    adapters::postgres,
    certs,
    config::{Settings, Sources},
    rest,
    startup::Application,
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
            _ => {}
        }
        let settings = Settings::load(&Sources {
            profile: self.profile.clone(),
            config_dir: None,
            file: self.config.clone(),
        })?;
        telemetry::init(&settings.telemetry)?;
        match self.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(settings).await,
            Command::Migrate { action } => migrate(settings, action).await,
            Command::Openapi | Command::Certs { .. } => {
                unreachable!("handled before loading settings")
            }
        }
    }
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
