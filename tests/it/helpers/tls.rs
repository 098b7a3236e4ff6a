//! Throwaway TLS material for tests: a CA and a server certificate it signs, for
//! `localhost` and `127.0.0.1`, the names the dev certificate (`certs/`) carries too.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM-encoded, laid out like `certs/`: `ca.crt`, `server.crt`, `server.key`.
pub struct TestCerts {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
}

impl TestCerts {
    pub fn generate() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "mailroom test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server.signed_by(&key, &ca).unwrap();

        TestCerts {
            ca: ca.pem(),
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
        }
    }

    /// Writes `ca.crt`, `server.crt` and `server.key` into `dir`.
    pub fn write_to(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca).unwrap();
        std::fs::write(dir.join("server.crt"), &self.server_cert).unwrap();
        std::fs::write(dir.join("server.key"), &self.server_key).unwrap();
    }
}
