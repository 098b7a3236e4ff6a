//! The gRPC API (tonic over TLS): `emailService.EmailService` from `proto/email.proto`,
//! wire-compatible with the original service; `grpc.health.v1.Health` following
//! readiness; server reflection v1 and v1alpha for grpcurl and similar tools.
//!
//! Handlers ([`service`]) only translate between protobuf and the use cases; errors are
//! mapped in [`status`]. Around every call run the layers of [`layers`] and the
//! authorization hook of [`auth`]; [`connection`] adds the connection limits tonic lacks.
//! Nothing outside this module knows about gRPC.

mod auth;
mod connection;
mod convert;
mod health;
mod layers;
mod service;
mod status;

pub mod pb {
    //! Types and client/server code generated from `proto/email.proto` by `build.rs`.
    #![allow(clippy::all, clippy::pedantic)]

    tonic::include_proto!("email_service");

    /// The encoded `FileDescriptorSet` of `proto/email.proto` and its imports.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("email_descriptor");
}

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    codec::CompressionEncoding,
    transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::ServingStatus;
use tonic_reflection::server::{
    v1::{ServerReflection, ServerReflectionServer},
    v1alpha,
};
use tower::ServiceBuilder;

use crate::{config::GrpcSettings, metrics::Metrics, usecase::Mailroom};

use layers::KnownMethods;

pub use auth::{AllowAll, ApiKeyAuth, Authorize};

/// Everything the server serves, described: what reflection answers with and where
/// method names for metrics come from.
const DESCRIPTOR_SETS: [&[u8]; 5] = [
    pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    // google.rpc error details (BadRequest, RetryInfo, ...): no service, but reflection
    // clients need them to decode what errors carry.
    tonic_types::pb::FILE_DESCRIPTOR_SET,
];

/// Server reflection v1 and v1alpha, each describing every service served (both
/// reflection versions included).
fn reflection() -> anyhow::Result<(
    ServerReflectionServer<impl ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
)> {
    let builder = || {
        DESCRIPTOR_SETS.iter().fold(
            tonic_reflection::server::Builder::configure().include_reflection_service(false),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((
        builder().build_v1().context("building reflection v1")?,
        builder()
            .build_v1alpha()
            .context("building reflection v1alpha")?,
    ))
}

/// The gRPC server on its bound listener, with TLS loaded and checked.
pub struct GrpcServer {
    listener: TcpListener,
    server: Server,
    settings: GrpcSettings,
    mailroom: Mailroom,
    metrics: Metrics,
    authorize: Arc<dyn Authorize>,
}

/// Reads the TLS certificate and key named in `settings`; `Application::build` calls it
/// first, so missing files stop the start at once.
pub fn load_tls(settings: &GrpcSettings) -> anyhow::Result<ServerTlsConfig> {
    let hint = "create development certificates with `mailroom certs` or `make cert`";
    let cert = std::fs::read(&settings.tls_cert).with_context(|| {
        format!(
            "reading grpc.tls_cert {} ({hint})",
            settings.tls_cert.display()
        )
    })?;
    let key = std::fs::read(&settings.tls_key).with_context(|| {
        format!(
            "reading grpc.tls_key {} ({hint})",
            settings.tls_key.display()
        )
    })?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(settings.tls_handshake_timeout))
}

impl GrpcServer {
    /// Checks the TLS material from [`load_tls`] and configures the server. `authorize`
    /// decides which calls may go ahead (see [`Authorize`]).
    pub fn new(
        listener: TcpListener,
        settings: &GrpcSettings,
        tls: ServerTlsConfig,
        mailroom: Mailroom,
        metrics: Metrics,
        authorize: Arc<dyn Authorize>,
    ) -> anyhow::Result<Self> {
        let mut server = Server::builder()
            .tls_config(tls)
            .context("grpc.tls_cert and grpc.tls_key are not a usable certificate and key")?
            .http2_keepalive_interval(Some(settings.keepalive_interval))
            .http2_keepalive_timeout(Some(settings.keepalive_timeout));
        if let Some(age) = settings.max_connection_age {
            // Only the age: tonic's own grace skips the GOAWAY when set, so the grace is
            // enforced by `connection::TrackedStream` instead.
            server = server.max_connection_age(age);
        }
        Ok(GrpcServer {
            listener,
            server,
            settings: settings.clone(),
            mailroom,
            metrics,
            authorize,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown`, then stops accepting, reports NOT_SERVING and lets calls
    /// in flight finish (cut off after `max_connection_age_grace`).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let GrpcServer {
            listener,
            server,
            settings,
            mailroom,
            metrics,
            authorize,
        } = self;
        let max_message = settings.max_message_bytes;

        let (reporter, health_service) = tonic_health::server::health_reporter();
        // Not serving until readiness has been checked once.
        health::set_all(&reporter, ServingStatus::NotServing).await;
        let readiness = tokio::spawn(health::follow_readiness(
            mailroom.clone(),
            reporter,
            settings.health_interval,
            shutdown.clone(),
        ));

        let email =
            pb::email_service_server::EmailServiceServer::new(service::EmailApi::new(mailroom))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip);

        let methods = KnownMethods::from_descriptor_sets(&DESCRIPTOR_SETS)?;
        let (reflection_v1, reflection_v1alpha) = if settings.reflection {
            let (v1, v1alpha) = reflection()?;
            (Some(v1), Some(v1alpha))
        } else {
            (None, None)
        };

        let limits = connection::Limits {
            idle: settings.max_connection_idle,
            age: settings.max_connection_age,
            grace: settings.max_connection_age_grace,
        };
        let connections = shutdown.clone();
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(move |accepted| {
                accepted.map(|stream| {
                    connection::TrackedStream::new(stream, limits, connections.clone())
                })
            });

        let stack = ServiceBuilder::new()
            .layer(connection::CallTrackerLayer)
            .layer(layers::ObserveLayer::new(methods, metrics))
            .layer(layers::CatchPanicLayer)
            .layer(auth::AuthorizeLayer::new(authorize))
            .layer(layers::TimeoutLayer::new(settings.request_timeout));

        let served = server
            .layer(stack)
            .add_service(health_service)
            .add_service(email)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
            .await
            .context("serving the gRPC API");
        if shutdown.is_cancelled() {
            // Let it report NOT_SERVING to watchers before the process goes.
            let _ = readiness.await;
        } else {
            readiness.abort();
        }
        served
    }
}
