//! What each dependency looks like right now. PostgreSQL and NATS are required to serve;
//! Redis and SMTP only degrade the service when down (reads skip the cache, deliveries
//! are retried later).

use std::time::Duration;

use futures::future::join_all;

use crate::{error::Dependency, ports::RelayCheck};

use super::Mailroom;

/// Budget of one check, so a hung dependency cannot hang a probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct DependencyCheck {
    pub dependency: Dependency,
    pub required: bool,
    /// `None` when up.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HealthReport {
    pub checks: Vec<DependencyCheck>,
    /// Each SMTP relay, when SMTP was checked: SMTP is up while any relay is.
    pub relays: Vec<RelayCheck>,
}

impl HealthReport {
    /// Whether every required dependency is up.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| !c.required || c.error.is_none())
    }

    pub fn all_up(&self) -> bool {
        self.checks.iter().all(|c| c.error.is_none())
    }
}

impl Mailroom {
    /// Checks the dependencies concurrently. `with_smtp` adds the SMTP server, which
    /// costs a connection, so readiness probes leave it out.
    pub async fn health(&self, with_smtp: bool) -> HealthReport {
        let ports = &self.ports;
        let checks: Vec<(
            Dependency,
            bool,
            futures::future::BoxFuture<'_, anyhow::Result<()>>,
        )> = vec![
            (
                Dependency::Postgres,
                true,
                Box::pin(async { Ok(ports.store.ping().await?) }),
            ),
            (
                Dependency::Nats,
                true,
                Box::pin(async { Ok(ports.bus.ping().await?) }),
            ),
            (Dependency::Redis, false, Box::pin(ports.cache.ping())),
        ];
        let relays = async {
            if with_smtp {
                ports.mailer.check(CHECK_TIMEOUT).await
            } else {
                Vec::new()
            }
        };
        let results = join_all(checks.into_iter().map(
            |(dependency, required, check)| async move {
                let error = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(format!("{err:#}")),
                    Err(_) => Some(format!("no answer within {CHECK_TIMEOUT:?}")),
                };
                DependencyCheck {
                    dependency,
                    required,
                    error,
                }
            },
        ));
        let (mut results, relays) = tokio::join!(results, relays);
        if with_smtp {
            // Each relay's own error is in `relays` (and logged from there).
            let error = (!relays.iter().any(|relay| relay.error.is_none()))
                .then(|| "every SMTP relay is down".to_owned());
            results.push(DependencyCheck {
                dependency: Dependency::Smtp,
                required: false,
                error,
            });
        }
        HealthReport {
            checks: results,
            relays,
        }
    }
}
