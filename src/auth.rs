//! Who may call the API, and how often: named API keys kept as SHA-256 hashes, compared
//! in constant time, and a token bucket per key. Shared by REST and gRPC; each adapter
//! only reads the credential from its own headers and answers the refusal its own way.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::{
    api_keys::{ApiKeys, Client},
    config::AuthSettings,
    metrics::Metrics,
};

/// A token bucket per key: `burst` requests at once, refilled at `per_second`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .expect("the rate limiter lock is never poisoned");
        // Looked up before inserting: the key is copied once, not on every call.
        if !buckets.contains_key(key) {
            buckets.insert(
                key.to_owned(),
                Bucket {
                    tokens: self.burst,
                    updated: now,
                },
            );
        }
        let bucket = buckets.get_mut(key).expect("just inserted");
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else if self.per_second > 0.0 {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        } else {
            Err(Duration::from_secs(60))
        }
    }
}

/// Why a caller was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credential at all.
    Missing,
    /// A credential that is no key of ours (or is malformed).
    Invalid,
    /// A good key, over its rate; retry after this long.
    RateLimited(Duration),
}

/// The door every API call goes through.
pub struct Gate {
    keys: ApiKeys,
    limiter: RateLimiter,
    metrics: Metrics,
}

impl Gate {
    pub fn new(settings: &AuthSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let keys = settings.api_keys.clone();
        if keys.is_empty() {
            tracing::warn!("auth.api_keys is empty: every API call will be refused");
        }
        Ok(Gate {
            keys,
            limiter: RateLimiter::new(settings.rate_limit.per_second, settings.rate_limit.burst),
            metrics,
        })
    }

    /// Admits a call carrying `authorization` (the `Authorization` header or metadata
    /// value, `Bearer KEY`), answering whose key it is. `protocol` labels the metrics.
    pub fn admit(&self, authorization: Option<&str>, protocol: &str) -> Result<Client, Denied> {
        let result = self.check(authorization);
        if let Err(denied) = &result {
            let reason = match denied {
                Denied::Missing => "missing",
                Denied::Invalid => "invalid",
                Denied::RateLimited(_) => "rate_limited",
            };
            self.metrics
                .auth_denied
                .with_label_values(&[protocol, reason])
                .inc();
        }
        result
    }

    fn check(&self, authorization: Option<&str>) -> Result<Client, Denied> {
        let value = authorization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(Denied::Missing)?;
        let (scheme, key) = value.split_once(' ').ok_or(Denied::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Denied::Invalid);
        }
        let client = self
            .keys
            .authenticate(key.trim())
            .ok_or(Denied::Invalid)?
            .clone();
        self.limiter
            .check(&client.name)
            .map_err(Denied::RateLimited)?;
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api_keys::hash_key, config::RateLimitSettings};

    fn gate(per_second: f64, burst: u32) -> Gate {
        Gate::new(
            &AuthSettings {
                api_keys: ApiKeys::parse(&[
                    format!("billing:{}", hash_key("billing-secret")),
                    format!("ops:{}", hash_key("ops-secret")),
                ])
                .unwrap(),
                rate_limit: RateLimitSettings { per_second, burst },
            },
            Metrics::new(),
        )
        .unwrap()
    }

    #[test]
    fn a_known_key_is_admitted_by_name() {
        let gate = gate(100.0, 10);
        let name = |admitted: Result<Client, Denied>| admitted.map(|c| c.name.to_string());
        assert_eq!(
            name(gate.admit(Some("Bearer billing-secret"), "rest")),
            Ok("billing".into())
        );
        assert_eq!(
            name(gate.admit(Some("bearer ops-secret"), "rest")),
            Ok("ops".into())
        );
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_refused() {
        let gate = gate(100.0, 10);
        assert_eq!(gate.admit(None, "rest"), Err(Denied::Missing));
        assert_eq!(gate.admit(Some("  "), "rest"), Err(Denied::Missing));
        assert_eq!(
            gate.admit(Some("billing-secret"), "rest"),
            Err(Denied::Invalid)
        );
        assert_eq!(
            gate.admit(Some("Basic billing-secret"), "rest"),
            Err(Denied::Invalid)
        );
        assert_eq!(
            gate.admit(Some("Bearer billing-secreT"), "rest"),
            Err(Denied::Invalid)
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// An `Authorization` value around `Bearer KEY`: other schemes and separators,
        /// blanks, the key changed, or anything at all.
        fn presented(key: String) -> impl Strategy<Value = String> {
            let scheme =
                prop::sample::select(vec!["Bearer", "bearer", "BEARER", "Basic", "", "Bearer:"]);
            let blank = prop::sample::select(vec!["", " ", "  ", "\t", "\u{a0}"]);
            let separator = prop::sample::select(vec![" ", "  ", "\t", ""]);
            let variant = prop::sample::select(vec![0u8, 0, 0, 1, 2, 3]);
            prop_oneof![
                1 => any::<String>(),
                4 => (blank.clone(), scheme, separator, variant, blank).prop_map(
                    move |(before, scheme, separator, variant, after)| {
                        let key = match variant {
                            0 => key.clone(),
                            1 => format!("{key}x"),
                            2 => key[1..].to_owned(),
                            _ => key.to_uppercase(),
                        };
                        format!("{before}{scheme}{separator}{key}{after}")
                    },
                ),
            ]
        }

        fn open_gate(entries: Vec<String>) -> Gate {
            Gate::new(
                &AuthSettings {
                    api_keys: ApiKeys::parse(&entries).unwrap(),
                    rate_limit: RateLimitSettings {
                        per_second: 1e9,
                        burst: u32::MAX,
                    },
                },
                Metrics::new(),
            )
            .unwrap()
        }

        proptest! {
            /// A key is admitted, by its name, exactly when it comes as `Bearer KEY`
            /// (the scheme in any case, blanks around); nothing else gets in, and no
            /// value makes the gate panic.
            #[test]
            fn a_key_is_admitted_exactly_when_presented_as_a_bearer_token(
                (key, presented) in "[!-~]{2,40}".prop_flat_map(|key| (Just(key.clone()), presented(key))),
                name in "[a-z][a-z0-9-]{0,8}",
            ) {
                let gate = open_gate(vec![format!("{name}:{}", hash_key(&key))]);
                let value = presented.trim();
                let expected = if value.is_empty() {
                    Err(Denied::Missing)
                } else {
                    match value.split_once(' ') {
                        Some((scheme, rest))
                            if scheme.eq_ignore_ascii_case("bearer") && rest.trim() == key =>
                        {
                            Ok(name.clone())
                        }
                        _ => Err(Denied::Invalid),
                    }
                };
                prop_assert_eq!(
                    gate.admit(Some(&presented), "rest").map(|c| c.name.to_string()),
                    expected
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_key_has_its_own_bucket_refilled_over_time() {
        let gate = gate(2.0, 3);
        for _ in 0..3 {
            assert!(gate.admit(Some("Bearer billing-secret"), "rest").is_ok());
        }
        let Err(Denied::RateLimited(wait)) = gate.admit(Some("Bearer billing-secret"), "rest")
        else {
            panic!("the fourth call in a burst of three is limited");
        };
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(
            gate.admit(Some("Bearer ops-secret"), "rest").is_ok(),
            "another key is not affected"
        );

        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            gate.admit(Some("Bearer billing-secret"), "rest").is_ok(),
            "refilled"
        );
        assert!(gate.admit(Some("Bearer billing-secret"), "rest").is_err());
    }
}
