//! API keys: what `auth.api_keys` holds (`NAME:SHA256HEX[:SCOPES]` entries), how a
//! presented key is recognised (every stored hash compared in constant time), what it
//! may do (its scopes), and how keys are made. The settings parse the entries once, at
//! start; the gate in `auth` uses them.

use std::{fmt, sync::Arc};

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

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Create emails (and batches), cancel and reschedule them.
    Send,
    /// Read emails: get, search, list, attempts, attachments.
    Read,
    /// Manage the service: webhooks, suppressions, templates.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Send, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Send => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, written `send+read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope: what an entry without scopes gets, as keys had before scopes.
    pub const ALL: Scopes = Scopes(7);

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Reads `send+read+admin` (any subset, in any order).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut bits = 0;
        for part in text.split('+') {
            let scope = Scope::ALL
                .into_iter()
                .find(|scope| scope.as_str() == part.trim())
                .with_context(|| {
                    format!(
                        "unknown scope {part:?}: scopes are send, read and admin, joined with +"
                    )
                })?;
            bits |= scope.bit();
        }
        Ok(Scopes(bits))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .into_iter()
            .filter(|scope| self.contains(*scope))
            .map(Scope::as_str)
            .collect();
        f.write_str(&names.join("+"))
    }
}

/// Who is calling: the name of the key presented, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub name: Arc<str>,
    pub scopes: Scopes,
}

impl Client {
    /// Whether the client may do what needs `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }
}

#[derive(Debug, Clone)]
struct ApiKey {
    client: Client,
    hash: [u8; 32],
}

/// The configured keys, read from `auth.api_keys` when the settings are loaded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// Reads `auth.api_keys` entries, each `NAME:SHA256HEX[:SCOPES]` (no scopes: all).
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for entry in entries {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(hash)) = (parts.next(), parts.next()) else {
                bail!("auth.api_keys entry {entry:?} is not NAME:SHA256HEX[:SCOPES]");
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
            let scopes = match parts.next() {
                None => Scopes::ALL,
                Some(scopes) => Scopes::parse(scopes)
                    .with_context(|| format!("auth.api_keys entry {name:?}"))?,
            };
            keys.push(ApiKey {
                client: Client {
                    name: Arc::from(name.trim()),
                    scopes,
                },
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

    /// The client whose key `presented` is, if any. Every stored hash is compared, each
    /// in constant time, so timing tells nothing about which key came close.
    pub fn authenticate(&self, presented: &str) -> Option<&Client> {
        let digest = Sha256::digest(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(digest.as_slice())) {
                found = Some(&key.client);
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
    fn an_entry_may_name_its_scopes_and_without_them_has_all() {
        let hash = hash_key("k");
        let keys = ApiKeys::parse(&[
            format!("all:{hash}"),
            format!("reader:{}:read", hash_key("r")),
            format!("sender:{}:send+read", hash_key("s")),
        ])
        .unwrap();
        assert_eq!(keys.authenticate("k").unwrap().scopes, Scopes::ALL);
        let reader = keys.authenticate("r").unwrap();
        assert!(reader.may(Scope::Read) && !reader.may(Scope::Send) && !reader.may(Scope::Admin));
        let sender = keys.authenticate("s").unwrap();
        assert_eq!(sender.scopes.to_string(), "send+read");
        let err = ApiKeys::parse(&[format!("x:{hash}:send+write")]).unwrap_err();
        assert!(format!("{err:#}").contains("write"), "{err:#}");
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

        proptest! {
            /// Parsing the configuration never panics, and takes exactly the entries
            /// that are a name and 64 hex digits.
            #[test]
            fn only_named_sha256_entries_are_configured(entry in entry()) {
                let mut parts = entry.splitn(3, ':');
                let (name, hash, scopes) = (parts.next(), parts.next(), parts.next());
                let well_formed = name.zip(hash).is_some_and(|(name, hash)| {
                    let hash = hash.trim();
                    !name.trim().is_empty()
                        && hash.len() == 64
                        && hash.chars().all(|c| c.is_ascii_hexdigit())
                }) && scopes.is_none_or(|scopes| {
                    scopes.split('+').all(|s| ["send", "read", "admin"].contains(&s.trim()))
                });
                prop_assert_eq!(ApiKeys::parse(std::slice::from_ref(&entry)).is_ok(), well_formed);
            }
        }
    }
}
