//! Integration tests: one binary, real PostgreSQL, Redis, NATS and SMTP. Each test runs
//! its own application with its own database, NATS prefix and Redis prefix.

mod helpers;

mod admin;
mod browser;
mod cli;
mod clients;
mod create;
mod delivery;
mod dkim;
mod docs;
mod events;
mod faults;
mod grpc;
mod health;
mod jetstream;
mod lanes;
mod links;
mod listeners;
mod messages;
mod migrations;
mod monitoring;
mod newest;
mod nginx;
mod plans;
mod read;
mod relays;
mod resilience;
mod security;
mod sending;
mod smtp_tls;
mod suppressions;
mod templates;
mod traces;
mod webhooks;
mod workers;
