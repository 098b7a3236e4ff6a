//! The email cache on Redis. The connection is lazy and every operation has a short
//! budget, so a Redis outage costs a request at most `redis.timeout` and never fails it.

use anyhow::Context;
use async_trait::async_trait;
use redis::{AsyncCommands, aio::ConnectionManager, aio::ConnectionManagerConfig};
use secrecy::ExposeSecret;

use crate::{
    config::RedisSettings,
    domain::{Email, EmailId},
    ports::EmailCache,
};

#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    ttl_secs: u64,
    timeout: std::time::Duration,
}

impl RedisCache {
    /// Prepares the cache without connecting; the first use connects.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.expose_secret())
            .context("redis.url is not a Redis URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            // Reconnection is retried on the next operation, not in a loop that would hold
            // a request.
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .context("preparing the Redis connection")?;
        Ok(Self {
            connection,
            prefix: settings.key_prefix.clone(),
            ttl_secs: settings.ttl.as_secs().max(1),
            timeout: settings.timeout,
        })
    }

    fn key(&self, id: EmailId) -> String {
        // v2: the email as it is since it holds mailboxes and message parts; entries of
        // the earlier shape are left to expire.
        format!("{}email:v2:{id}", self.prefix)
    }

    /// Caches an email for the TTL; `only_if_absent` never replaces a cached copy.
    async fn set(&self, email: &Email, only_if_absent: bool) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let json = serde_json::to_vec(email)?;
        let mut options =
            redis::SetOptions::default().with_expiration(redis::SetExpiry::EX(self.ttl_secs));
        if only_if_absent {
            options = options.conditional_set(redis::ExistenceCheck::NX);
        }
        let _: Option<String> = self
            .bounded(connection.set_options(self.key(email.id), json, options))
            .await?;
        Ok(())
    }

    /// Runs one operation within the budget.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => Ok(result?),
            Err(_) => anyhow::bail!("Redis did not answer within {:?}", self.timeout),
        }
    }
}

#[async_trait]
impl EmailCache for RedisCache {
    #[tracing::instrument(
        name = "redis.get",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "redis",
            db.system.name = "redis",
            db.operation.name = "GET",
            email.id = %id,
        ),
        err
    )]
    async fn get(&self, id: EmailId) -> anyhow::Result<Option<Email>> {
        let mut connection = self.connection.clone();
        let key = self.key(id);
        let cached: Option<Vec<u8>> = self.bounded(connection.get(&key)).await?;
        match cached {
            None => Ok(None),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(email) => Ok(Some(email)),
                // An entry from another version of mailroom: treat it as a miss.
                Err(err) => {
                    tracing::warn!(email.id = %id, error = %err, "ignoring an unreadable cache entry");
                    Ok(None)
                }
            },
        }
    }

    #[tracing::instrument(
        name = "redis.set",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "redis",
            db.system.name = "redis",
            db.operation.name = "SET",
            email.id = %email.id,
        ),
        err
    )]
    async fn put(&self, email: &Email) -> anyhow::Result<()> {
        self.set(email, false).await
    }

    #[tracing::instrument(
        name = "redis.fill",
        skip_all,
        fields(
            otel.kind = "client",
            db.system = "redis",
            db.system.name = "redis",
            db.operation.name = "SET",
            email.id = %email.id,
        ),
        err
    )]
    async fn fill(&self, email: &Email) -> anyhow::Result<()> {
        self.set(email, true).await
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut connection))
            .await?;
        Ok(())
    }
}
