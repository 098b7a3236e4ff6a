//! Adapters: the ports of [`crate::ports`] on PostgreSQL, Redis, NATS JetStream and SMTP;
//! and the reader of bounce and complaint reports.

pub mod jetstream;
pub mod postgres;
pub mod redis;
pub mod reports;
pub mod smtp;
