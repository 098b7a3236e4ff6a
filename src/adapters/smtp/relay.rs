//! One SMTP relay: its lettre transport and connection pool, its pace (`max_per_second`)
//! and whether it is cooling down after its connections failed.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context;
use lettre::{
    AsyncSmtpTransport, Tokio1Executor,
    transport::smtp::{
        PoolConfig,
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
        extension::ClientId,
    },
};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use crate::{
    config::{RelaySettings, SmtpSecurity},
    domain::Lane,
};

pub struct Relay {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub priority: u32,
    /// The lane it is kept for, if any.
    pub lane: Option<Lane>,
    pub transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `pool_max_size` permits: the sends in flight. lettre's pool does not wait for a
    /// free connection: when all are busy it opens another, sends one message and closes
    /// it (QUIT) if the pool is full, a new connection per message under load. Sends
    /// wait for a permit instead, so every connection is a pooled one.
    pub connections: Semaphore,
    pace: Option<Pace>,
    /// Until when the relay is left out, after a failed connection.
    cooling_until: Mutex<Option<Instant>>,
}

impl Relay {
    pub fn new(settings: &RelaySettings, timeout: Duration) -> anyhow::Result<Self> {
        let at = format!("relay {}", settings.name);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .timeout(Some(timeout))
            // Room for twice the sends in flight: a connection is put back into the pool
            // by a task of its own, so the send after it may find the pool empty for a
            // moment and open one more, which is then kept rather than closed.
            .pool_config(PoolConfig::new().max_size(settings.pool_max_size.saturating_mul(2)));
        if settings.security != SmtpSecurity::None {
            let mut parameters = TlsParameters::builder(settings.host.clone())
                .dangerous_accept_invalid_certs(!settings.verify_certificates)
                .dangerous_accept_invalid_hostnames(!settings.verify_certificates);
            if !settings.ca_file.is_empty() {
                let pem = std::fs::read(&settings.ca_file)
                    .with_context(|| format!("{at}: reading ca_file {}", settings.ca_file))?;
                let authorities = Certificate::from_pem(&pem).with_context(|| {
                    format!(
                        "{at}: ca_file {} holds no PEM certificate",
                        settings.ca_file
                    )
                })?;
                parameters = parameters.add_root_certificate(authorities);
            }
            let parameters = parameters
                .build_rustls()
                .with_context(|| format!("{at}: preparing SMTP TLS"))?;
            builder = builder.tls(match settings.security {
                SmtpSecurity::Tls => Tls::Wrapper(parameters),
                _ => Tls::Required(parameters),
            });
        }
        if !settings.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                settings.username.clone(),
                settings.password.expose_secret().to_owned(),
            ));
        }
        if !settings.hello_name.is_empty() {
            builder = builder.hello_name(ClientId::Domain(settings.hello_name.clone()));
        }
        Ok(Relay {
            name: settings.name.clone(),
            host: settings.host.clone(),
            port: settings.port,
            priority: settings.priority,
            lane: settings.lane,
            transport: builder.build(),
            connections: Semaphore::new(settings.pool_max_size.max(1) as usize),
            pace: settings.max_per_second.map(Pace::new),
            cooling_until: Mutex::new(None),
        })
    }

    /// Whether the relay is cooling down at `now`.
    pub fn cooling(&self, now: Instant) -> bool {
        self.lock().is_some_and(|until| until > now)
    }

    /// Leaves the relay out for `cooldown`.
    pub fn cool_down(&self, cooldown: Duration) {
        *self.lock() = Some(Instant::now() + cooldown);
    }

    /// Takes the relay back at once (it answered).
    pub fn warm_up(&self) {
        *self.lock() = None;
    }

    /// Waits for this send's turn under `max_per_second`.
    pub async fn pace(&self) {
        if let Some(pace) = &self.pace {
            pace.wait().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.cooling_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sends evenly spaced at `1 / max_per_second` (a token bucket of one token): in any
/// second at most `max_per_second` sends begin (one more at the window's edge). Each
/// send takes the next free slot at once, so waiting sends keep their order and a slot
/// is never handed out twice.
struct Pace {
    interval: Duration,
    /// Tokio's clock, which tests can pause.
    next: Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(per_second: f64) -> Self {
        Pace {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// The instant the next send may begin, taken for it.
    fn take_slot(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (*next).max(now);
        *next = slot + self.interval;
        slot
    }

    async fn wait(&self) {
        let slot = self.take_slot(tokio::time::Instant::now());
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_interval_and_idle_time_is_not_saved_up() {
        let pace = Pace::new(4.0);
        let start = tokio::time::Instant::now();
        let slots: Vec<Duration> = (0..5).map(|_| pace.take_slot(start) - start).collect();
        let quarter = Duration::from_millis(250);
        assert_eq!(
            slots,
            [0, 1, 2, 3, 4].map(|n| quarter * n),
            "back-to-back sends wait their turn"
        );
        // After a long pause the next send goes at once, and the one after it waits a
        // full interval again: no burst of saved-up tokens.
        let later = start + Duration::from_secs(10);
        assert_eq!(pace.take_slot(later), later);
        assert_eq!(pace.take_slot(later), later + quarter);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_sends_begin_at_their_slots() {
        let pace = Pace::new(10.0);
        let start = tokio::time::Instant::now();
        for n in 0..3u32 {
            pace.wait().await;
            assert_eq!(start.elapsed(), Duration::from_millis(100) * n);
        }
    }

    // lettre's pool lives on the runtime.
    #[tokio::test]
    async fn a_cooled_relay_is_left_out_until_its_cooldown_ends() {
        let settings = RelaySettings {
            name: "a".into(),
            host: "127.0.0.1".into(),
            port: 25,
            security: SmtpSecurity::None,
            verify_certificates: true,
            ca_file: String::new(),
            username: String::new(),
            password: String::new().into(),
            hello_name: String::new(),
            pool_max_size: 1,
            max_per_second: None,
            priority: 1,
            lane: None,
        };
        let relay = Relay::new(&settings, Duration::from_secs(1)).unwrap();
        let now = Instant::now();
        assert!(!relay.cooling(now));
        relay.cool_down(Duration::from_secs(30));
        assert!(relay.cooling(now));
        assert!(!relay.cooling(now + Duration::from_secs(31)));
        relay.warm_up();
        assert!(!relay.cooling(now));
    }
}
