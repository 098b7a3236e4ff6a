//! DKIM: `mailroom dkim generate`, and signatures on delivered mail verified by dkimpy
//! (scripts/dkim-verify.py), an implementation independent of mailroom's, against the
//! DNS record the command printed or one derived from the key by openssl.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use mailroom::config::{DkimAlgorithm, DkimKeySettings};
use serde_json::json;

use crate::helpers::{
    smtp::{Behaviour, FakeSmtp},
    spawn_app_with, unique_recipient,
};

const BINARY: &str = env!("CARGO_BIN_EXE_mailroom");
const VERIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dkim-verify.py");

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mailroom-dkim-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `mailroom dkim generate`; answers the record's name and its value (chunks joined).
fn generate(domain: &str, selector: &str, key: &Path, algorithm: &str) -> (String, String) {
    let output = Command::new(BINARY)
        .args([
            "dkim",
            "generate",
            "--domain",
            domain,
            "--selector",
            selector,
        ])
        .arg("--key-file")
        .arg(key)
        .args(["--algorithm", algorithm])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stdout}");
    let (name, value) = lines[0].split_once(" IN TXT ").expect("name IN TXT value");
    let value: String = value.split('"').skip(1).step_by(2).collect();
    (name.to_owned(), value)
}

/// What dkimpy said: whether the signature verifies, and the tags it printed.
fn verify(message: &[u8], name: &str, record: &str) -> (bool, String) {
    let dir = scratch();
    let path = dir.join("message.eml");
    std::fs::write(&path, message).unwrap();
    let output = Command::new(VERIFIER)
        .arg(&path)
        .arg(name)
        .arg(record)
        .output()
        .expect("scripts/dkim-verify.py runs (python3-dkim, scripts/test-tools.sh)");
    std::fs::remove_dir_all(dir).unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Sends one full email from `from` through a fake relay with `keys`; answers the bytes
/// the relay took.
async fn delivered(keys: Vec<DkimKeySettings>, from: &str) -> Vec<u8> {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.dkim.keys = keys;
    })
    .await;
    let to = unique_recipient("dkim");
    let created = app
        .create_email(&json!({
            "from": from,
            "to": format!("Zoë Example <{to}>"),
            "cc": "carol@example.org",
            "bcc": "hidden@example.org",
            "replyTo": "Billing <billing@acme.example>",
            "subject": "Your invoice, Zoë",
            "message": "Hello,\n\nyour invoice is attached.  Thank you.\n\n",
            "html": "<p>Hello,</p><p>your invoice is attached.</p>",
            "headers": {"X-Campaign": "december"},
            "attachments": [{"filename": "invoice.pdf",
                             "content": BASE64.encode(b"%PDF-1.4 not really")}],
        }))
        .await;
    assert!(created["emailID"].is_string(), "{created}");
    smtp.delivery_to(&to).await.data
}

fn key(domain: &str, selector: &str, file: &Path, algorithm: DkimAlgorithm) -> DkimKeySettings {
    DkimKeySettings {
        domain: domain.to_owned(),
        selector: selector.to_owned(),
        private_key_file: file.to_owned(),
        algorithm,
    }
}

async fn signed_mail_verifies(algorithm: DkimAlgorithm) {
    let dir = scratch();
    let file = dir.join("dkim.pem");
    let (name, record) = generate("acme.example", "mail2026", &file, algorithm.as_str());
    assert_eq!(name, "mail2026._domainkey.acme.example");
    let key_type = match algorithm {
        DkimAlgorithm::RsaSha256 => "rsa",
        DkimAlgorithm::Ed25519Sha256 => "ed25519",
    };
    assert!(
        record.starts_with(&format!("v=DKIM1; k={key_type}; p=")),
        "{record}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is its owner's alone");

    let message = delivered(
        vec![key("acme.example", "mail2026", &file, algorithm)],
        "Acme Billing <billing@acme.example>",
    )
    .await;
    let (ok, said) = verify(&message, &name, &record);
    assert!(ok, "dkimpy verifies the signature: {said}");
    assert!(
        said.contains(&format!("a={}", algorithm.as_str())),
        "{said}"
    );
    assert!(said.contains("c=relaxed/relaxed"), "{said}");
    let signed: Vec<&str> = said
        .lines()
        .find_map(|l| l.strip_prefix("h="))
        .unwrap()
        .split(':')
        .collect();
    for header in [
        "from",
        "to",
        "cc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "x-campaign",
    ] {
        assert!(signed.contains(&header), "{header} is signed: {signed:?}");
    }
    assert!(!signed.contains(&"bcc"), "{signed:?}");

    // The same verifier refuses the message once a signed header changed: it checks.
    let text = String::from_utf8(message).unwrap();
    let tampered = text.replacen("X-Campaign: december", "X-Campaign: january", 1);
    assert_ne!(tampered, text);
    let (ok, said) = verify(tampered.as_bytes(), &name, &record);
    assert!(!ok, "a changed header breaks the signature: {said}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn rsa_signed_mail_verifies_with_dkimpy() {
    signed_mail_verifies(DkimAlgorithm::RsaSha256).await;
}

#[tokio::test]
async fn ed25519_signed_mail_verifies_with_dkimpy() {
    signed_mail_verifies(DkimAlgorithm::Ed25519Sha256).await;
}

/// The public key of a private key file as openssl derives it: the DER
/// SubjectPublicKeyInfo.
fn openssl_public_der(file: &Path) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(file)
        .output()
        .expect("openssl runs");
    assert!(output.status.success());
    output.stdout
}

#[tokio::test]
async fn keys_made_by_openssl_sign_and_verify_against_openssl_s_public_keys() {
    let dir = scratch();
    let rsa = dir.join("rsa.pem");
    let ed = dir.join("ed25519.pem");
    // A traditional (PKCS#1) RSA key and a PKCS#8 Ed25519 key, as guides tell people to
    // make them.
    for args in [
        vec![
            "genrsa",
            "-traditional",
            "-out",
            rsa.to_str().unwrap(),
            "2048",
        ],
        vec![
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            ed.to_str().unwrap(),
        ],
    ] {
        let status = Command::new("openssl")
            .args(&args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    }
    assert!(
        std::fs::read_to_string(&rsa)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    let rsa_record = format!(
        "v=DKIM1; k=rsa; p={}",
        BASE64.encode(openssl_public_der(&rsa))
    );
    // RFC 8463: the raw key, the last 32 bytes of the SubjectPublicKeyInfo.
    let ed_der = openssl_public_der(&ed);
    let ed_record = format!(
        "v=DKIM1; k=ed25519; p={}",
        BASE64.encode(&ed_der[ed_der.len() - 32..])
    );

    let message = delivered(
        vec![
            key("acme.example", "rsa1", &rsa, DkimAlgorithm::RsaSha256),
            key("Bücher.example", "ed1", &ed, DkimAlgorithm::Ed25519Sha256),
        ],
        "billing@acme.example",
    )
    .await;
    let (ok, said) = verify(&message, "rsa1._domainkey.acme.example", &rsa_record);
    assert!(ok, "{said}");

    // An internationalised From domain is signed under its punycode name.
    let message = delivered(
        vec![key(
            "Bücher.example",
            "ed1",
            &ed,
            DkimAlgorithm::Ed25519Sha256,
        )],
        "shop@bücher.example",
    )
    .await;
    let (ok, said) = verify(&message, "ed1._domainkey.xn--bcher-kva.example", &ed_record);
    assert!(ok, "{said}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn mail_from_a_domain_without_a_key_goes_out_unsigned() {
    let dir = scratch();
    let file = dir.join("dkim.pem");
    generate("acme.example", "s1", &file, "ed25519-sha256");
    let message = delivered(
        vec![key(
            "acme.example",
            "s1",
            &file,
            DkimAlgorithm::Ed25519Sha256,
        )],
        "someone@other.example",
    )
    .await;
    let text = String::from_utf8_lossy(&message).to_ascii_lowercase();
    assert!(!text.contains("dkim-signature"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn generate_refuses_to_replace_a_key_and_names_bad_input() {
    let dir = scratch();
    let file = dir.join("dkim.pem");
    generate("acme.example", "s1", &file, "ed25519-sha256");
    let before = std::fs::read(&file).unwrap();
    for (args, expected) in [
        (
            vec!["--domain", "acme.example", "--selector", "s1"],
            "never replaced",
        ),
        (
            vec!["--domain", "not a domain", "--selector", "s1"],
            "--domain",
        ),
        (
            vec!["--domain", "acme.example", "--selector", "bad selector"],
            "--selector",
        ),
        (
            vec![
                "--domain",
                "acme.example",
                "--selector",
                "s2",
                "--algorithm",
                "dsa",
            ],
            "rsa-sha256 or ed25519-sha256",
        ),
    ] {
        let output = Command::new(BINARY)
            .args(["dkim", "generate"])
            .args(&args)
            .arg("--key-file")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), before, "the key is kept");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_key_file_that_is_not_a_key_stops_the_start_naming_the_domain_not_the_key() {
    let dir = scratch();
    let file = dir.join("dkim.pem");
    std::fs::write(
        &file,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut settings = crate::helpers::test_settings();
    settings.dkim.keys = vec![key("acme.example", "s1", &file, DkimAlgorithm::RsaSha256)];
    let err = mailroom::adapters::smtp::SmtpMailer::new(
        &settings.smtp,
        &settings.dkim,
        &settings.lanes,
        mailroom::metrics::Metrics::new(),
    )
    .err()
    .expect("an unreadable key is refused");
    let text = format!("{err:#}");
    assert!(text.contains("acme.example"), "{text}");
    assert!(
        !text.contains("c2VjcmV0"),
        "the file's content is not shown: {text}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn fifty_long_custom_headers_are_signed_on_short_lines_and_verify() {
    let dir = scratch();
    let file = dir.join("dkim.pem");
    let (name, record) = generate("acme.example", "s1", &file, "ed25519-sha256");
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.dkim.keys = vec![key(
            "acme.example",
            "s1",
            &file,
            DkimAlgorithm::Ed25519Sha256,
        )];
    })
    .await;
    let to = unique_recipient("dkim-long");
    let headers: serde_json::Map<String, serde_json::Value> = (0..50)
        .map(|i| {
            (
                format!("X-{i:02}-{}", "n".repeat(71)),
                json!(format!("value {i}")),
            )
        })
        .collect();
    app.create_email(&json!({
        "from": "billing@acme.example", "to": to, "subject": "Many headers",
        "message": "Hello", "headers": headers,
    }))
    .await;
    let message = smtp.delivery_to(&to).await.data;
    let text = String::from_utf8_lossy(&message);
    for line in text.split("\r\n") {
        assert!(
            line.len() <= 998,
            "an SMTP line of {} characters",
            line.len()
        );
    }
    let (ok, said) = verify(&message, &name, &record);
    assert!(ok, "{said}");
    let signed = said.lines().find_map(|l| l.strip_prefix("h=")).unwrap();
    assert_eq!(signed.split(':').count(), 50 + 7, "{signed}");
    std::fs::remove_dir_all(dir).unwrap();
}
