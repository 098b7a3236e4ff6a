//! Wiring: [`Application::build`] connects the adapters, builds the use cases and binds
//! every listener (so the ports are known before anything runs, and tests can bind port
//! 0); [`Application::run_until_stopped`] serves until the shutdown token fires, then
//! stops in order: listeners stop accepting and finish their requests, workers stop
//! pulling and drain, all within `shutdown.timeout`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, routing::get};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    adapters::{jetstream::JetStream, postgres, redis::RedisCache, smtp::SmtpMailer},
    auth::Gate,
    config::{HttpSettings, Settings},
    domain::{self, Rules},
    grpc::{self, ApiKeyAuth, GrpcServer},
    metrics::Metrics,
    rest::{self, AppState, RenderedEmails},
    retry,
    server::{self, Limits},
    usecase::{DeliveryPolicy, GroupCommitSettings, LocalCache, Mailroom, Ports},
    webhooks::{
        DispatcherConsumer, Webhooks, dispatch::DispatchHandler, retrier::Retrier,
        sender as webhook_sender, store::WebhookStore,
    },
    workers::{
        ConsumerSource, CreateHandler, QueueGauges, Reconciler, Scheduler, SendHandler, WorkerPool,
    },
};

pub struct Application {
    settings: Settings,
    mailroom: Mailroom,
    webhooks: Webhooks,
    metrics: Metrics,
    gate: Arc<Gate>,
    jetstream: JetStream,
    http: TcpListener,
    grpc: GrpcServer,
    metrics_listener: TcpListener,
    pools: Vec<WorkerPool>,
}

/// The use cases on their adapters, without listeners or workers: what the service
/// runs on, and what the admin commands (`dlq`, `events`) need.
pub struct Core {
    pub mailroom: Mailroom,
    pub webhooks: Webhooks,
    pub jetstream: JetStream,
    pub metrics: Metrics,
}

impl Core {
    /// Connects to PostgreSQL (creating and migrating the database when configured),
    /// Redis (lazily), NATS (creating or updating the stream) and prepares SMTP.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Core> {
        let patience = settings.startup.wait_for_dependencies;
        let pool = postgres::pool(&settings.database)?;
        if settings.database.migrate_on_start {
            retry::until_deadline_unless(
                patience,
                "PostgreSQL",
                postgres::is_migration_conflict,
                || postgres::create_and_migrate(&settings.database, &pool),
            )
            .await
            .with_context(|| {
                format!(
                    "preparing the database at {}",
                    settings.database_url_redacted()
                )
            })?;
        }
        let cache = RedisCache::new(&settings.redis)?;
        let jetstream = JetStream::connect(&settings.nats, patience).await?;
        let metrics = Metrics::new();
        let mailer = SmtpMailer::new(
            &settings.smtp,
            &settings.dkim,
            &settings.lanes,
            metrics.clone(),
        )?;
        let webhooks = Webhooks::new(
            WebhookStore::new(pool.clone()),
            settings.webhooks.clone(),
            settings.nats.consumers.webhook.ack_wait,
            jetstream.clone(),
            DispatcherConsumer {
                durable: settings
                    .nats
                    .durable_name(&settings.nats.consumers.webhook_dispatch.durable),
                subject: jetstream.subjects.status.clone(),
                settings: settings.nats.consumers.webhook_dispatch.clone(),
            },
        );
        let ports = Ports {
            templates: Arc::new(postgres::PgTemplateStore::new(pool.clone())),
            suppressions: Arc::new(postgres::PgSuppressionStore::new(pool.clone())),
            store: Arc::new(postgres::PgEmailStore::new(
                pool,
                settings.search.count_limit,
                settings.idempotency.ttl,
            )),
            cache: Arc::new(cache),
            bus: Arc::new(jetstream.clone()),
            mailer: Arc::new(mailer),
        };
        let policy = DeliveryPolicy {
            max_attempts: settings.delivery.max_attempts,
            backoff: settings.delivery.backoff.clone(),
            lease: delivery_lease(settings),
        };
        let local = LocalCache::new(
            settings.cache.local_ttl,
            settings.cache.local_capacity,
            settings.cache.local_max_bytes,
        );
        let rules = Rules {
            limits: domain::Limits {
                max_recipients: settings.limits.max_recipients,
                max_message_bytes: settings.limits.max_message_bytes,
                max_batch: settings.limits.max_batch,
                max_schedule_ahead: settings.limits.max_schedule_ahead,
            },
            message_id_domain: match settings.smtp.hello_name.as_str() {
                "" => Rules::default().message_id_domain,
                name => name.to_owned(),
            },
        };
        let mut mailroom = Mailroom::new(ports, rules, local, policy, metrics.clone())
            .with_return_path(settings.smtp.return_path()?)
            .with_batch_lane(settings.lanes.batch_default);
        let group_commit = &settings.database.group_commit;
        if group_commit.max_batch > 1 {
            mailroom = mailroom.with_group_commit(GroupCommitSettings {
                max_batch: group_commit.max_batch,
                committers: group_commit.committers,
            });
        }
        Ok(Core {
            mailroom,
            webhooks,
            jetstream,
            metrics,
        })
    }
}

impl Application {
    /// Connects everything ([`Core::connect`]), creates the durable consumers and binds
    /// the listeners.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // First, so a missing certificate stops the start before anything connects.
        let grpc_tls = grpc::load_tls(&settings.grpc)?;
        match server::raise_open_file_limit() {
            Ok(limit) => tracing::debug!(limit, "open-file limit"),
            Err(err) => tracing::warn!(error = %err, "could not raise the open-file limit"),
        }
        let Core {
            mailroom,
            webhooks,
            jetstream,
            metrics,
        } = Core::connect(&settings).await?;
        // The dispatcher's consumer exists while endpoints are enabled. The service
        // starts without PostgreSQL (it answers UNAVAILABLE until it is back), so a
        // failed sync waits for the retrier's next one rather than stopping the start.
        if let Err(err) = webhooks.sync_dispatcher().await {
            tracing::warn!(
                error = err.with_causes(),
                "could not sync the webhook dispatcher's consumer at start; the retrier will"
            );
        }

        let nats = &settings.nats;
        let create = &nats.consumers.create;
        let send = &nats.consumers.send;
        let send_bulk = &nats.consumers.send_bulk;
        let dispatch = &nats.consumers.webhook_dispatch;
        let webhook = &nats.consumers.webhook;
        // The server's limit, from its INFO (NATS's default before the first arrives).
        let max_payload = jetstream.client.max_payload();
        let mut pools = vec![
            WorkerPool {
                label: nats.subjects.create.clone(),
                consumer: ConsumerSource::Ready(Box::new(
                    jetstream
                        .durable_consumer(
                            &nats.durable_name(&create.durable),
                            &jetstream.subjects.create,
                            create,
                        )
                        .await?,
                )),
                handler: Arc::new(CreateHandler {
                    mailroom: mailroom.clone(),
                    stream_incarnation: jetstream.stream_incarnation.clone(),
                    max_event_bytes: nats.max_event_bytes,
                    max_deliver: create.max_deliver,
                    backoff: settings.delivery.outage_backoff.clone(),
                }),
                workers: create.workers,
                batch_size: create.batch_size,
                batch_max_bytes: create.batch_max_bytes,
                max_payload,
                ack_wait: create.ack_wait,
                mailroom: mailroom.clone(),
                metrics: metrics.clone(),
            },
            WorkerPool {
                label: format!("{} (webhooks)", nats.subjects.status),
                // Exists only while endpoints are registered (Webhooks::sync_dispatcher).
                consumer: ConsumerSource::WhenPresent {
                    bus: Box::new(jetstream.clone()),
                    durable: nats.durable_name(&dispatch.durable),
                },
                handler: Arc::new(DispatchHandler {
                    webhooks: webhooks.clone(),
                    stream_incarnation: jetstream.stream_incarnation.clone(),
                    backoff: settings.delivery.outage_backoff.clone(),
                }),
                workers: dispatch.workers,
                batch_size: dispatch.batch_size,
                batch_max_bytes: dispatch.batch_max_bytes,
                max_payload,
                ack_wait: dispatch.ack_wait,
                mailroom: mailroom.clone(),
                metrics: metrics.clone(),
            },
            WorkerPool {
                label: nats.subjects.webhook.clone(),
                consumer: ConsumerSource::Ready(Box::new(
                    jetstream
                        .durable_consumer(
                            &nats.durable_name(&webhook.durable),
                            &jetstream.subjects.webhook,
                            webhook,
                        )
                        .await?,
                )),
                handler: Arc::new(webhook_sender::SendHandler::new(
                    webhooks.clone(),
                    webhook_sender::http_client(&webhooks)?,
                    metrics.clone(),
                    settings.delivery.outage_backoff.clone(),
                )),
                workers: webhook.workers,
                batch_size: webhook.batch_size,
                batch_max_bytes: webhook.batch_max_bytes,
                max_payload,
                ack_wait: webhook.ack_wait,
                mailroom: mailroom.clone(),
                metrics: metrics.clone(),
            },
        ];
        // One pool per lane: a bulk backlog waits in its own consumer, never in front
        // of transactional mail.
        for (label, consumer, subject) in [
            (&nats.subjects.send, send, &jetstream.subjects.send),
            (
                &nats.subjects.send_bulk,
                send_bulk,
                &jetstream.subjects.send_bulk,
            ),
        ] {
            pools.push(WorkerPool {
                label: label.clone(),
                consumer: ConsumerSource::Ready(Box::new(
                    jetstream
                        .durable_consumer(&nats.durable_name(&consumer.durable), subject, consumer)
                        .await?,
                )),
                handler: Arc::new(SendHandler {
                    mailroom: mailroom.clone(),
                    max_deliver: consumer.max_deliver,
                    backoff: settings.delivery.outage_backoff.clone(),
                }),
                workers: consumer.workers,
                batch_size: consumer.batch_size,
                batch_max_bytes: consumer.batch_max_bytes,
                max_payload,
                ack_wait: consumer.ack_wait,
                mailroom: mailroom.clone(),
                metrics: metrics.clone(),
            });
        }

        let gate = Arc::new(Gate::new(&settings.auth, metrics.clone())?);
        let http = bind(settings.http.addr, "http.addr").await?;
        let grpc = GrpcServer::new(
            bind(settings.grpc.addr, "grpc.addr").await?,
            &settings.grpc,
            grpc_tls,
            mailroom.clone(),
            metrics.clone(),
            Arc::new(ApiKeyAuth::new(gate.clone())),
        )?;
        let metrics_listener = bind(settings.metrics.addr, "metrics.addr").await?;
        Ok(Application {
            settings,
            mailroom,
            webhooks,
            metrics,
            gate,
            jetstream,
            http,
            grpc,
            metrics_listener,
            pools,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn mailroom(&self) -> &Mailroom {
        &self.mailroom
    }

    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    pub fn jetstream(&self) -> &JetStream {
        &self.jetstream
    }

    /// Serves until `shutdown` is cancelled, then shuts down gracefully.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            settings,
            mailroom,
            webhooks,
            metrics,
            gate,
            jetstream: _,
            http,
            grpc,
            metrics_listener,
            pools,
        } = self;
        let drain = settings.shutdown.timeout;
        let mut tasks = JoinSet::new();

        let app = rest::router(
            AppState::new(
                mailroom.clone(),
                webhooks.clone(),
                metrics.clone(),
                gate,
                // Bodies are kept per copy of the in-process cache; without it, none.
                RenderedEmails::new(if settings.cache.local_ttl.is_zero() {
                    0
                } else {
                    settings.cache.local_capacity
                }),
            ),
            &settings.http,
        );
        tracing::info!(addr = %http.local_addr()?, "REST API listening");
        let limits = limits(&settings.http);
        tasks.spawn(serve(http, app, limits, shutdown.clone(), "REST API"));

        tracing::info!(addr = %grpc.local_addr(), "gRPC API listening (TLS)");
        tasks.spawn(grpc.run(shutdown.clone()));

        let metrics_app = Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        metrics.render(),
                    )
                }
            }),
        );
        tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
        tasks.spawn(serve(
            metrics_listener,
            metrics_app,
            limits,
            shutdown.clone(),
            "metrics",
        ));

        for pool in pools {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                pool.run(shutdown, drain).await;
                Ok(())
            });
        }

        if settings.reconciler.enabled {
            let reconciler = Reconciler {
                mailroom: mailroom.clone(),
                settings: settings.reconciler.clone(),
            };
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                reconciler.run(shutdown).await;
                Ok(())
            });
        }

        let gauges = QueueGauges {
            mailroom: mailroom.clone(),
            settings: settings.metrics.clone(),
        };
        let stop_counting = shutdown.clone();
        tasks.spawn(async move {
            gauges.run(stop_counting).await;
            Ok(())
        });

        let scheduler = Scheduler {
            mailroom: mailroom.clone(),
            settings: settings.scheduler.clone(),
        };
        let stop_scheduling = shutdown.clone();
        tasks.spawn(async move {
            scheduler.run(stop_scheduling).await;
            Ok(())
        });

        let retrier = Retrier {
            webhooks: webhooks.clone(),
        };
        let stop_retrying = shutdown.clone();
        tasks.spawn(async move {
            retrier.run(stop_retrying).await;
            Ok(())
        });

        // The first task to fail stops the others; otherwise wait for the shutdown.
        let mut outcome = Ok(());
        tokio::select! {
            _ = shutdown.cancelled() => {}
            Some(result) = tasks.join_next() => {
                outcome = flatten(result);
                shutdown.cancel();
            }
        }
        tracing::info!("shutting down");
        let finish = async {
            while let Some(result) = tasks.join_next().await {
                if let Err(err) = flatten(result) {
                    tracing::error!(error = format!("{err:#}"), "task failed during shutdown");
                }
            }
        };
        if tokio::time::timeout(drain + Duration::from_secs(1), finish)
            .await
            .is_err()
        {
            tracing::warn!("shutdown timed out; abandoning what is left");
        }
        outcome
    }
}

fn flatten(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result.context("a task panicked")?
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {key} {addr}"))
}

async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    name: &'static str,
) -> anyhow::Result<()> {
    server::serve(listener, app, limits, shutdown)
        .await
        .with_context(|| format!("serving the {name}"))
}

/// What the REST and metrics listeners allow their clients.
fn limits(http: &HttpSettings) -> Limits {
    Limits {
        header_read_timeout: http.header_read_timeout,
        keep_alive_timeout: http.keep_alive_timeout,
        max_connections: http.max_connections,
    }
}

/// How long a worker holds an email it sends: one `smtp.timeout` for its lane's send
/// slot, one per relay (a send may fail over through all of them), the longest wait for
/// a paced relay's turn with every email this instance may hold in flight, and the
/// handling around it. The NATS message itself is kept alive by progress reports
/// meanwhile.
fn delivery_lease(settings: &Settings) -> std::time::Duration {
    let consumers = &settings.nats.consumers;
    let (send, bulk) = (&consumers.send, &consumers.send_bulk);
    let in_flight = send.workers * send.batch_size + bulk.workers * bulk.batch_size;
    let relays = settings.smtp.relays().len().max(1) as u32;
    settings.smtp.timeout * (1 + relays)
        + settings.smtp.longest_pace_wait(in_flight)
        + send.ack_wait.max(bulk.ack_wait)
}
