//! Who may call the API, and how often: named API keys kept as SHA-256 hashes, compared
//! in constant time, and a token bucket per key. Shared by REST and gRPC; each adapter
//! only reads the credential from its own headers and answers the refusal its own way.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::{config::AuthSettings, metrics::Metrics};

/// The SHA-256 of a key, in lowercase hex: what `auth.api_keys` stores.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (256 bits from the operating system, URL-safe), for
/// `mailroom api-key new`.
pub fn generate_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
    format!(
        "mr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[derive(Debug, Clone)]
struct ApiKey {
    name: String,
    hash: [u8; 32],
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// Reads `auth.api_keys` entries, each `NAME:SHA256HEX`.
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for entry in entries {
            let Some((name, hash)) = entry.split_once(':') else {
                bail!("auth.api_keys entry {entry:?} is not NAME:SHA256HEX");
            };
            let bytes = hex::decode(hash.trim())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .with_context(|| {
                    format!("auth.api_keys entry {name:?}: the hash is not 64 hex digits (SHA-256)")
                })?;
            if name.trim().is_empty() {
                bail!("auth.api_keys entry {entry:?} has no name");
            }
            keys.push(ApiKey {
                name: name.trim().to_owned(),
                hash: bytes,
            });
        }
        Ok(ApiKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The name of the key `presented` is, if any. Every stored hash is compared, each in
    /// constant time, so timing tells nothing about which key came close.
    pub fn authenticate(&self, presented: &str) -> Option<&str> {
        let digest = Sha256::digest(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(digest.as_slice())) {
                found = Some(key.name.as_str());
            }
        }
        found
    }
}

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
        let keys = ApiKeys::parse(&settings.api_keys)?;
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
    /// value, `Bearer KEY`), answering the key's name. `protocol` labels the metrics.
    pub fn admit(&self, authorization: Option<&str>, protocol: &str) -> Result<String, Denied> {
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

    fn check(&self, authorization: Option<&str>) -> Result<String, Denied> {
        let value = authorization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(Denied::Missing)?;
        let (scheme, key) = value.split_once(' ').ok_or(Denied::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Denied::Invalid);
        }
        let name = self
            .keys
            .authenticate(key.trim())
            .ok_or(Denied::Invalid)?
            .to_owned();
        self.limiter.check(&name).map_err(Denied::RateLimited)?;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitSettings;

    fn gate(per_second: f64, burst: u32) -> Gate {
        Gate::new(
            &AuthSettings {
                api_keys: vec![
                    format!("billing:{}", hash_key("billing-secret")),
                    format!("ops:{}", hash_key("ops-secret")),
                ],
                rate_limit: RateLimitSettings { per_second, burst },
            },
            Metrics::new(),
        )
        .unwrap()
    }

    #[test]
    fn a_known_key_is_admitted_by_name() {
        let gate = gate(100.0, 10);
        assert_eq!(
            gate.admit(Some("Bearer billing-secret"), "rest"),
            Ok("billing".into())
        );
        assert_eq!(
            gate.admit(Some("bearer ops-secret"), "rest"),
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

    #[test]
    fn keys_must_be_named_sha256_hashes() {
        assert!(ApiKeys::parse(&["nohash".into()]).is_err());
        assert!(ApiKeys::parse(&["short:abcd".into()]).is_err());
        assert!(ApiKeys::parse(&[format!(":{}", hash_key("x"))]).is_err());
        assert!(ApiKeys::parse(&[format!("ok:{}", hash_key("x"))]).is_ok());
    }

    #[test]
    fn the_hash_of_the_local_development_key_is_the_documented_one() {
        let local =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/local.yaml"))
                .unwrap();
        assert!(
            local.contains(&hash_key("local-dev-key")),
            "config/local.yaml accepts local-dev-key"
        );
    }

    #[test]
    fn generated_keys_are_long_and_different() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.len() > 40, "{a}");
    }

    /// Every bit of a key is random: no fixed bits of a format (a UUID's version and
    /// variant, say) show through. Each bit is set in some of 64 keys and clear in
    /// others; a random bit fails this with a chance of 2^-63.
    #[test]
    fn generated_keys_hold_256_random_bits() {
        use base64::Engine;
        let keys: Vec<Vec<u8>> = (0..64)
            .map(|_| {
                let key = generate_key();
                let encoded = key.strip_prefix("mr_").expect("keys start with mr_");
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(encoded)
                    .expect("the rest is URL-safe base64")
            })
            .collect();
        assert!(keys.iter().all(|bytes| bytes.len() == 32));
        for bit in 0..256 {
            let set = keys
                .iter()
                .filter(|bytes| bytes[bit / 8] & (1 << (bit % 8)) != 0)
                .count();
            assert!(
                0 < set && set < keys.len(),
                "bit {bit} is set in {set} of 64 keys"
            );
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// What `auth.api_keys` may hold: anything, near misses, and good entries.
        fn entry() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                ("[ -~]{0,12}", "[0-9a-fA-FxX ]{62,66}")
                    .prop_map(|(name, hash)| format!("{name}:{hash}")),
                (".{0,12}", any::<String>())
                    .prop_map(|(name, key)| format!("{name}:{}", hash_key(&key))),
            ]
        }

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
                    api_keys: entries,
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
            /// Parsing the configuration never panics, and takes exactly the entries
            /// that are a name and 64 hex digits.
            #[test]
            fn only_named_sha256_entries_are_configured(entry in entry()) {
                let well_formed = entry.split_once(':').is_some_and(|(name, hash)| {
                    let hash = hash.trim();
                    !name.trim().is_empty()
                        && hash.len() == 64
                        && hash.chars().all(|c| c.is_ascii_hexdigit())
                });
                prop_assert_eq!(ApiKeys::parse(std::slice::from_ref(&entry)).is_ok(), well_formed);
            }

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
                prop_assert_eq!(gate.admit(Some(&presented), "rest"), expected);
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
