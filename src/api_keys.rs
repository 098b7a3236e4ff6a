//! API keys: what `auth.api_keys` holds (`NAME:SHA256HEX` entries), how a presented key
//! is recognised (every stored hash compared in constant time), and how keys are made.
//! The settings parse the entries once, at start; the gate in `auth` uses them.

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

/// The configured keys, read from `auth.api_keys` when the settings are loaded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "Vec<String>")]
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

    pub fn len(&self) -> usize {
        self.keys.len()
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

impl TryFrom<Vec<String>> for ApiKeys {
    type Error = anyhow::Error;

    fn try_from(entries: Vec<String>) -> anyhow::Result<Self> {
        ApiKeys::parse(&entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }
}
