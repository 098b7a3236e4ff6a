//! SMTP transport security: STARTTLS and implicit TLS, certificate verification on by
//! default, a private CA through `smtp.ca_file`, and no fallback to plain text.

use std::time::Duration;

use mailroom::config::{Settings, SmtpSecurity};

use crate::helpers::{
    TestCerts, email_body,
    smtp::{Behaviour, FakeSmtp, Security},
    spawn_app_with, unique_recipient,
};

/// A server presenting a certificate signed by a fresh CA only the test knows.
async fn tls_server(certs: &TestCerts, starttls: bool) -> FakeSmtp {
    let acceptor = Security::acceptor(&certs.paths.server_cert, &certs.paths.server_key);
    let security = if starttls {
        Security::StartTls(acceptor)
    } else {
        Security::Tls(acceptor)
    };
    FakeSmtp::start_with(Behaviour::Accept, security).await
}

fn point_at(settings: &mut Settings, smtp: &FakeSmtp, security: SmtpSecurity) {
    settings.smtp.port = smtp.port;
    settings.smtp.security = security;
    settings.delivery.max_attempts = 1;
}

async fn deliver_one(
    configure: impl FnOnce(&mut Settings),
) -> (serde_json::Value, crate::helpers::TestApp) {
    let app = spawn_app_with(configure).await;
    let created = app
        .create_email(&email_body(&unique_recipient("tls")))
        .await;
    let id = created["emailID"].as_str().unwrap().to_owned();
    let email = crate::helpers::wait_for(Duration::from_secs(15), "the delivery ends", || async {
        let email: serde_json::Value = app.get_email(&id).await.json().await.unwrap();
        (email["status"] == "sent" || email["status"] == "failed").then_some(email)
    })
    .await;
    (email, app)
}

#[tokio::test]
async fn starttls_with_a_trusted_private_ca_delivers_over_tls() {
    let certs = TestCerts::generate();
    let smtp = tls_server(&certs, true).await;
    let ca = certs.paths.ca_cert.display().to_string();
    let (email, _app) = deliver_one(|s| {
        point_at(s, &smtp, SmtpSecurity::Starttls);
        s.smtp.ca_file = ca;
    })
    .await;
    assert_eq!(email["status"], "sent", "{email}");
    assert_eq!(smtp.tls_sessions(), 1);
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn implicit_tls_with_a_trusted_private_ca_delivers() {
    let certs = TestCerts::generate();
    let smtp = tls_server(&certs, false).await;
    let ca = certs.paths.ca_cert.display().to_string();
    let (email, _app) = deliver_one(|s| {
        point_at(s, &smtp, SmtpSecurity::Tls);
        s.smtp.ca_file = ca;
    })
    .await;
    assert_eq!(email["status"], "sent", "{email}");
    assert_eq!(smtp.tls_sessions(), 1);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_by_default() {
    let certs = TestCerts::generate();
    let smtp = tls_server(&certs, true).await;
    let (email, _app) = deliver_one(|s| point_at(s, &smtp, SmtpSecurity::Starttls)).await;
    assert_eq!(email["status"], "failed", "{email}");
    assert!(
        smtp.received().is_empty(),
        "nothing was sent to an unverified server"
    );
    assert!(
        email["lastError"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{email}"
    );
}

#[tokio::test]
async fn verification_can_be_turned_off_for_a_development_sink() {
    let certs = TestCerts::generate();
    let smtp = tls_server(&certs, true).await;
    let (email, _app) = deliver_one(|s| {
        point_at(s, &smtp, SmtpSecurity::Starttls);
        s.smtp.verify_certificates = false;
    })
    .await;
    assert_eq!(email["status"], "sent", "{email}");
}

#[tokio::test]
async fn starttls_never_falls_back_to_plain_text() {
    // A server that does not offer STARTTLS at all.
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let (email, _app) = deliver_one(|s| {
        point_at(s, &smtp, SmtpSecurity::Starttls);
        s.smtp.verify_certificates = false;
    })
    .await;
    assert_eq!(email["status"], "failed", "{email}");
    assert!(smtp.received().is_empty(), "no mail went out in clear");
}
