//! mailroom: an email microservice. REST (axum), gRPC (tonic) and NATS JetStream feed one
//! use-case layer that stores emails in PostgreSQL, caches them in Redis and delivers
//! them over SMTP with retries and dead letters.
//!
//! Layers, from the outside in: delivery adapters ([`rest`], [`grpc`], [`workers`]) call
//! the use cases ([`usecase`]), which reach the world through small traits ([`ports`])
//! implemented by [`adapters`]. [`domain`] holds the types all of them share.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod api_keys;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod ports;
pub mod rest;
pub mod retry;
pub mod server;
pub mod startup;
pub mod telemetry;
pub mod usecase;
pub mod webhooks;
pub mod wire;
pub mod workers;

pub use error::{Error, Result};
