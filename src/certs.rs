//! Development TLS material for the gRPC listener: a throwaway CA and a server
//! certificate it signs, for `localhost` and `127.0.0.1` (plus any extra names), made
//! with rcgen, so no openssl is needed. `mailroom certs` and `make cert` write them to
//! `certs/`; the integration tests write them to a temporary directory.
//!
//! Clients trust `ca.crt` (`grpcurl -cacert certs/ca.crt …`). Nothing here is meant for
//! production, where certificates come from the deployment.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use chrono::{Datelike, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.crt";
pub const SERVER_KEY_FILE: &str = "server.key";

/// The names every development server certificate covers.
pub const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

const CA_VALID_DAYS: i64 = 3650;
const SERVER_VALID_DAYS: i64 = 825;

/// A CA and a server certificate signed by it, PEM encoded.
#[derive(Clone)]
pub struct DevCertificates {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl std::fmt::Debug for DevCertificates {
    // The keys stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCertificates").finish_non_exhaustive()
    }
}

/// Where a set of certificates lives on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl CertificatePaths {
    pub fn in_dir(dir: &Path) -> Self {
        CertificatePaths {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
        }
    }

    fn all(&self) -> [&Path; 4] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
        ]
    }
}

/// What [`write_dev_certificates`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// A complete set was already there and `force` was off.
    Kept,
}

/// Generates a CA and a server certificate for [`DEFAULT_NAMES`] and `extra_names`
/// (DNS names or IP addresses).
pub fn generate(extra_names: &[String]) -> anyhow::Result<DevCertificates> {
    let today = Utc::now().date_naive();
    // Valid from yesterday, so a client whose clock is a little behind accepts it.
    let not_before = today - chrono::Days::new(1);
    let date = |day: chrono::NaiveDate| {
        rcgen::date_time_ymd(day.year(), day.month() as u8, day.day() as u8)
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mailroom development CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "mailroom");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = date(not_before);
    ca_params.not_after = date(today + chrono::Days::new(CA_VALID_DAYS as u64));
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for name in extra_names {
        check_name(name)?;
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut server_params = CertificateParams::new(names)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "mailroom development server");
    server_params.use_authority_key_identifier_extension = true;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.not_before = date(not_before);
    server_params.not_after = date(today + chrono::Days::new(SERVER_VALID_DAYS as u64));
    let server_key = KeyPair::generate().context("generating the server key")?;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .context("signing the server certificate")?;

    Ok(DevCertificates {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem,
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// Refuses a name no client could match: rcgen takes any ASCII as a DNS name.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let mut labels = name.split('.');
    let first_ok = labels.next().is_some_and(|l| l == "*" || label_ok(l));
    if name.len() <= 253 && first_ok && labels.all(label_ok) {
        Ok(())
    } else {
        anyhow::bail!("{name:?} is neither a DNS name nor an IP address")
    }
}

/// Writes a new CA and server certificate into `dir` (created when missing). A complete
/// set already there is kept unless `force` is set, so clients that trust its CA keep
/// working; an incomplete one is replaced.
pub fn write_dev_certificates(
    dir: &Path,
    extra_names: &[String],
    force: bool,
) -> anyhow::Result<(Outcome, CertificatePaths)> {
    let paths = CertificatePaths::in_dir(dir);
    if !force && paths.all().iter().all(|path| path.is_file()) {
        return Ok((Outcome::Kept, paths));
    }
    let certs = generate(extra_names)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_file(&paths.ca_cert, &certs.ca_cert_pem, false)?;
    write_file(&paths.ca_key, &certs.ca_key_pem, true)?;
    write_file(&paths.server_cert, &certs.server_cert_pem, false)?;
    write_file(&paths.server_key, &certs.server_key_pem, true)?;
    Ok((Outcome::Written, paths))
}

fn write_file(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let mut file = fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Private keys are readable by their owner only, also when an older file with
        // looser permissions is overwritten.
        let mode = if secret { 0o600 } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("mailroom-certs-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn generated_material_is_pem() {
        let certs = generate(&[]).unwrap();
        assert!(certs.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            certs
                .server_cert_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(
            certs
                .server_key_pem
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert_ne!(certs.ca_cert_pem, certs.server_cert_pem);
        assert!(!format!("{certs:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn extra_names_must_be_dns_names_or_ip_addresses() {
        for bad in [
            "not a name",
            "",
            "-lead.example.com",
            "a..b",
            "bad_char.example",
        ] {
            assert!(generate(&[bad.into()]).is_err(), "{bad:?}");
        }
        for good in [
            "mailroom",
            "grpc.example.com",
            "*.example.com",
            "10.0.0.7",
            "fe80::1",
        ] {
            assert!(generate(&[good.into()]).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_complete_set_is_kept_unless_forced() {
        let dir = temp_dir();
        let (outcome, paths) = write_dev_certificates(&dir, &[], false).unwrap();
        assert_eq!(outcome, Outcome::Written);
        let first = fs::read_to_string(&paths.ca_cert).unwrap();

        let (outcome, _) = write_dev_certificates(&dir, &[], false).unwrap();
        assert_eq!(outcome, Outcome::Kept);
        assert_eq!(fs::read_to_string(&paths.ca_cert).unwrap(), first);

        let (outcome, _) = write_dev_certificates(&dir, &[], true).unwrap();
        assert_eq!(outcome, Outcome::Written);
        assert_ne!(fs::read_to_string(&paths.ca_cert).unwrap(), first);

        fs::remove_file(&paths.server_key).unwrap();
        let (outcome, _) = write_dev_certificates(&dir, &[], false).unwrap();
        assert_eq!(outcome, Outcome::Written, "an incomplete set is replaced");
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        let (_, paths) = write_dev_certificates(&dir, &[], false).unwrap();
        for key in [&paths.ca_key, &paths.server_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
