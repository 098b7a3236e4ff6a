//! Adapters: the ports of [`crate::ports`] on PostgreSQL, Redis, NATS JetStream and SMTP.

pub mod jetstream;
pub mod postgres;
pub mod redis;
pub mod smtp;
