//! The `smtp` and `dkim` sections: the relays mail leaves through, and the keys it is
//! signed with.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::bail;
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::{Lane, ReturnPath};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub verify_certificates: bool,
    /// PEM file of extra CAs to trust for the SMTP server (empty: the public roots only).
    pub ca_file: String,
    pub username: String,
    pub password: SecretString,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub pool_max_size: u32,
    pub hello_name: String,
    /// A VERP envelope sender holding `{emailID}`; empty: the From address.
    pub return_path: String,
    /// Most messages per second each relay takes from one instance; 0: no bound.
    pub max_per_second: f64,
    /// The relays to send through; empty: one relay, `host` and `port` with the
    /// settings above.
    pub relays: Vec<RelayEntry>,
    /// How long a relay whose connections failed is left out.
    #[serde(with = "humantime_serde")]
    pub relay_cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    None,
    Starttls,
    Tls,
}

/// One entry of `smtp.relays`: what is not given is taken from `smtp.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEntry {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub security: Option<SmtpSecurity>,
    pub verify_certificates: Option<bool>,
    pub ca_file: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub hello_name: Option<String>,
    pub pool_max_size: Option<u32>,
    pub max_per_second: Option<f64>,
    /// Lower numbers first; relays of equal priority share the load. Default 1.
    pub priority: Option<u32>,
    /// Kept for this lane's mail; absent: every lane's.
    pub lane: Option<Lane>,
}

/// A relay with every setting decided.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub verify_certificates: bool,
    pub ca_file: String,
    pub username: String,
    pub password: SecretString,
    pub hello_name: String,
    pub pool_max_size: u32,
    /// `None`: no bound.
    pub max_per_second: Option<f64>,
    pub priority: u32,
    pub lane: Option<Lane>,
}

/// The name of the one relay `smtp.host`/`smtp.port` describe when `smtp.relays` is empty.
pub const DEFAULT_RELAY_NAME: &str = "default";

impl SmtpSettings {
    /// `smtp.return_path`, read; `None` when it is not set.
    pub fn return_path(&self) -> anyhow::Result<Option<ReturnPath>> {
        if self.return_path.is_empty() {
            return Ok(None);
        }
        ReturnPath::parse(&self.return_path)
            .map(Some)
            .map_err(|why| anyhow::anyhow!("smtp.return_path {:?} {why}", self.return_path))
    }

    /// Every relay, each setting decided: `smtp.relays`, or the one relay of `smtp.host`
    /// (an entry that names only its host and port, so it takes every other setting
    /// from `smtp.*` like any entry that leaves them out).
    pub fn relays(&self) -> Vec<RelaySettings> {
        let default = [RelayEntry {
            name: DEFAULT_RELAY_NAME.to_owned(),
            host: self.host.clone(),
            port: self.port,
            security: None,
            verify_certificates: None,
            ca_file: None,
            username: None,
            password: None,
            hello_name: None,
            pool_max_size: None,
            max_per_second: None,
            priority: None,
            lane: None,
        }];
        let entries = if self.relays.is_empty() {
            &default[..]
        } else {
            &self.relays[..]
        };
        entries.iter().map(|entry| self.resolve(entry)).collect()
    }

    /// An entry with what it does not say taken from `smtp.*`.
    fn resolve(&self, entry: &RelayEntry) -> RelaySettings {
        RelaySettings {
            name: entry.name.clone(),
            host: entry.host.clone(),
            port: entry.port,
            security: entry.security.unwrap_or(self.security),
            verify_certificates: entry
                .verify_certificates
                .unwrap_or(self.verify_certificates),
            ca_file: entry
                .ca_file
                .clone()
                .unwrap_or_else(|| self.ca_file.clone()),
            username: entry
                .username
                .clone()
                .unwrap_or_else(|| self.username.clone()),
            password: entry
                .password
                .clone()
                .unwrap_or_else(|| self.password.clone()),
            hello_name: entry
                .hello_name
                .clone()
                .unwrap_or_else(|| self.hello_name.clone()),
            pool_max_size: entry.pool_max_size.unwrap_or(self.pool_max_size),
            // 0 (or less, which check refuses) is no bound.
            max_per_second: Some(entry.max_per_second.unwrap_or(self.max_per_second))
                .filter(|rate| *rate > 0.0),
            priority: entry.priority.unwrap_or(1),
            lane: entry.lane,
        }
    }

    /// Refuses relays that cannot work: names that are not labels, twice the same
    /// name, no host, no connection, a rate that is not a number, a lane no relay takes.
    pub fn check(&self) -> anyhow::Result<()> {
        self.return_path()?;
        if !self.max_per_second.is_finite() || self.max_per_second < 0.0 {
            bail!("smtp.max_per_second must be 0 (no bound) or a positive number");
        }
        if self.relay_cooldown.is_zero() {
            bail!("smtp.relay_cooldown must be longer than 0s");
        }
        let relays = self.relays();
        let mut names = HashSet::new();
        for (index, relay) in relays.iter().enumerate() {
            let at = format!("smtp.relays[{index}]");
            if !is_relay_name(&relay.name) {
                bail!(
                    "{at}.name {:?} must be 1 to 64 of a-z, 0-9, '-' and '_' (it labels metrics)",
                    relay.name
                );
            }
            if !names.insert(relay.name.as_str()) {
                bail!("{at}.name {:?} is used twice", relay.name);
            }
            if relay.host.trim().is_empty() {
                bail!("{at} ({}) needs a host", relay.name);
            }
            if relay.pool_max_size == 0 {
                bail!("{at} ({}): pool_max_size must be at least 1", relay.name);
            }
            let rate = self.relays.get(index).and_then(|r| r.max_per_second);
            if let Some(rate) = rate
                && (!rate.is_finite() || rate < 0.0)
            {
                bail!(
                    "{at} ({}): max_per_second must be 0 (no bound) or a positive number",
                    relay.name
                );
            }
        }
        for lane in Lane::ALL {
            if !relays.iter().any(|r| r.lane.is_none_or(|l| l == lane)) {
                bail!("no relay of smtp.relays takes {lane} mail (each is kept for another lane)");
            }
        }
        Ok(())
    }

    /// The longest an email may wait for its turn at a rate-bounded relay when `in_flight`
    /// emails are being sent at once: the claim's lease has to cover it.
    pub fn longest_pace_wait(&self, in_flight: usize) -> Duration {
        self.relays()
            .iter()
            .filter_map(|relay| relay.max_per_second)
            .map(|rate| Duration::from_secs_f64(in_flight as f64 / rate))
            .max()
            .unwrap_or_default()
    }
}

fn is_relay_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The `dkim` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSettings {
    pub keys: Vec<DkimKeySettings>,
}

/// One signing key: mail whose From domain is `domain` is signed with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeySettings {
    pub domain: String,
    pub selector: String,
    pub private_key_file: PathBuf,
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The name in the `a=` tag of a signature and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` tag of the DNS record.
    pub fn key_type(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

impl std::str::FromStr for DkimAlgorithm {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "rsa-sha256" => Ok(DkimAlgorithm::RsaSha256),
            "ed25519-sha256" => Ok(DkimAlgorithm::Ed25519Sha256),
            other => Err(format!(
                "unknown DKIM algorithm {other:?} (rsa-sha256 or ed25519-sha256)"
            )),
        }
    }
}

impl DkimSettings {
    /// Refuses keys that cannot sign: a domain or selector that is no DNS name, two keys
    /// for one domain. (The key files are read when the mailer is built.)
    pub fn check(&self) -> anyhow::Result<()> {
        let mut domains = HashSet::new();
        for (index, key) in self.keys.iter().enumerate() {
            let at = format!("dkim.keys[{index}]");
            let Some(domain) = dkim_domain(&key.domain) else {
                bail!("{at}.domain {:?} is not a domain name", key.domain);
            };
            if !is_dns_name(&key.selector) {
                bail!(
                    "{at}.selector {:?} must be DNS labels (letters, digits, '-', dots)",
                    key.selector
                );
            }
            if !domains.insert(domain) {
                bail!("{at}: a second key for {}", key.domain);
            }
            if key.private_key_file.as_os_str().is_empty() {
                bail!("{at} ({}) needs a private_key_file", key.domain);
            }
        }
        Ok(())
    }
}

/// A domain as signatures name it and keys are looked up by: lowercase, punycode.
pub fn dkim_domain(domain: &str) -> Option<String> {
    let ascii = idna::domain_to_ascii(domain.trim_end_matches('.')).ok()?;
    is_dns_name(&ascii).then_some(ascii)
}

/// Dot-separated labels of letters, digits and inner hyphens (underscores allowed, as
/// selectors use them), each 1 to 63 characters.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(relays: &str) -> SmtpSettings {
        let yaml = format!(
            "host: mx.example\nport: 25\nsecurity: starttls\nverify_certificates: true\n\
             ca_file: ''\nusername: u\npassword: p\ntimeout: 30s\npool_max_size: 8\n\
             hello_name: mailroom.example\nreturn_path: ''\nmax_per_second: 0\n\
             relay_cooldown: 30s\nrelays: {relays}\n"
        );
        // Through the configuration crate, as the service reads its files.
        config::Config::builder()
            .add_source(config::File::from_str(&yaml, config::FileFormat::Yaml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn without_a_list_the_host_and_port_are_the_one_relay() {
        let relays = smtp("[]").relays();
        assert_eq!(relays.len(), 1);
        assert_eq!(relays[0].name, DEFAULT_RELAY_NAME);
        assert_eq!(
            (relays[0].host.as_str(), relays[0].port),
            ("mx.example", 25)
        );
        assert_eq!(relays[0].max_per_second, None);
    }

    #[test]
    fn a_relay_takes_what_it_does_not_say_from_the_smtp_section() {
        let settings = smtp(
            "[{name: a, host: a.example, port: 587, priority: 2, max_per_second: 5, lane: bulk}, \
              {name: b, host: b.example, port: 465, security: tls, pool_max_size: 2}]",
        );
        settings.check().unwrap();
        let relays = settings.relays();
        assert_eq!(relays[0].security, SmtpSecurity::Starttls);
        assert_eq!(relays[0].hello_name, "mailroom.example");
        assert_eq!(relays[0].pool_max_size, 8);
        assert_eq!(relays[0].priority, 2);
        assert_eq!(relays[0].max_per_second, Some(5.0));
        assert_eq!(relays[0].lane, Some(Lane::Bulk));
        assert_eq!(relays[1].lane, None);
        assert_eq!(relays[1].security, SmtpSecurity::Tls);
        assert_eq!(relays[1].pool_max_size, 2);
        assert_eq!(relays[1].priority, 1);
    }

    #[test]
    fn bad_relay_lists_are_refused_naming_the_entry() {
        for (relays, expected) in [
            ("[{name: A, host: a, port: 25}]", "smtp.relays[0].name"),
            (
                "[{name: a, host: a, port: 25}, {name: a, host: b, port: 25}]",
                "used twice",
            ),
            ("[{name: a, host: '', port: 25}]", "needs a host"),
            (
                "[{name: a, host: a, port: 25, pool_max_size: 0}]",
                "pool_max_size",
            ),
            (
                "[{name: a, host: a, port: 25, max_per_second: -1}]",
                "max_per_second",
            ),
            (
                "[{name: a, host: a, port: 25, lane: bulk}]",
                "takes transactional mail",
            ),
        ] {
            let err = smtp(relays).check().unwrap_err().to_string();
            assert!(err.contains(expected), "{relays}: {err}");
        }
    }

    #[test]
    fn the_lease_covers_the_longest_wait_at_a_paced_relay() {
        let settings =
            smtp("[{name: a, host: a, port: 25, max_per_second: 4}, {name: b, host: b, port: 25}]");
        assert_eq!(settings.longest_pace_wait(128), Duration::from_secs(32));
        assert_eq!(smtp("[]").longest_pace_wait(128), Duration::ZERO);
    }

    #[test]
    fn dkim_keys_need_dns_names_and_one_key_per_domain() {
        let key = |domain: &str, selector: &str| DkimKeySettings {
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            private_key_file: "k.pem".into(),
            algorithm: DkimAlgorithm::RsaSha256,
        };
        let check = |keys: Vec<DkimKeySettings>| DkimSettings { keys }.check();
        check(vec![
            key("acme.example", "mail2026"),
            key("Bücher.example", "s_1"),
        ])
        .unwrap();
        assert!(check(vec![key("acme example", "s")]).is_err());
        assert!(check(vec![key("acme.example", "bad selector")]).is_err());
        let twice = check(vec![key("acme.example", "a"), key("ACME.example", "b")]);
        assert!(twice.unwrap_err().to_string().contains("second key"));
        assert_eq!(
            dkim_domain("Bücher.Example").as_deref(),
            Some("xn--bcher-kva.example")
        );
    }
}
