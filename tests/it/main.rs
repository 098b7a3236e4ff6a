//! Integration tests: one binary, real PostgreSQL, Redis, NATS and SMTP. Each test runs
//! its own application with its own database, NATS prefix and Redis prefix.

mod helpers;

mod cli;
mod create;
mod delivery;
mod docs;
mod events;
mod grpc;
mod health;
mod read;
mod resilience;
mod workers;
