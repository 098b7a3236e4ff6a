//! The `mailroom` binary: migrations, the OpenAPI command, settings errors, and a real
//! process serving and stopping on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{Isolation, TestCerts, closed_port, eventually, test_settings};

const BINARY: &str = env!("CARGO_BIN_EXE_mailroom");

/// The binary, configured through MAILROOM__ variables for an isolated run.
fn mailroom(isolation: &Isolation) -> Command {
    let mut settings = test_settings();
    isolation.apply(&mut settings);
    let mut command = Command::new(BINARY);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MAILROOM_ENV", "test")
        .env(
            "MAILROOM__DATABASE__URL",
            secrecy::ExposeSecret::expose_secret(&settings.database.url),
        )
        .env("MAILROOM__NATS__PREFIX", &settings.nats.prefix)
        .env("MAILROOM__REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env("RUST_LOG", "warn");
    command
}

struct Cleanup(Isolation);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut settings = test_settings();
        self.0.apply(&mut settings);
        self.0.clean_up(&settings);
    }
}

fn run(command: &mut Command) -> (bool, String, String) {
    let output = command.output().expect("mailroom runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn migrations_go_up_report_their_status_and_come_down() {
    let isolation = Isolation::new();
    let _cleanup = Cleanup(isolation.clone());

    let (ok, out, err) = run(mailroom(&isolation).args(["migrate", "status"]));
    assert!(!ok, "status needs the database to exist: {out}");
    assert!(err.contains("mailroom:"), "{err}");

    let (ok, out, err) = run(mailroom(&isolation).args(["migrate", "up"]));
    assert!(ok, "{out}{err}");
    assert!(
        !out.contains("postgres:postgres@"),
        "the password is not printed: {out}"
    );
    let (ok, out, _) = run(mailroom(&isolation).args(["migrate", "status"]));
    assert!(
        ok && out.contains("applied") && !out.contains("pending"),
        "{out}"
    );

    let (ok, out, err) = run(mailroom(&isolation).args(["migrate", "down"]));
    assert!(ok, "{out}{err}");
    let (ok, out, _) = run(mailroom(&isolation).args(["migrate", "status"]));
    assert!(
        ok && out.contains("pending") && !out.contains("applied"),
        "{out}"
    );

    let (ok, out, err) = run(mailroom(&isolation).args(["migrate", "up"]));
    assert!(ok, "migrations apply again after coming down: {out}{err}");
}

#[test]
fn the_openapi_command_prints_the_document() {
    let output = Command::new(BINARY).arg("openapi").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        mailroom::rest::openapi_json()
    );
}

#[test]
fn a_misspelt_setting_stops_the_start_with_its_name() {
    let dir = std::env::temp_dir().join(format!("mailroom-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "smtp:\n  hots: mail.example.com\n").unwrap();
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&file)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hots"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_service_serves_until_sigterm_then_exits_cleanly() {
    let isolation = Isolation::new();
    let _cleanup = Cleanup(isolation.clone());
    let certs = TestCerts::generate();
    let (http, grpc, metrics) = (closed_port(), closed_port(), closed_port());
    let mut child = mailroom(&isolation)
        .env("MAILROOM__HTTP__ADDR", format!("127.0.0.1:{http}"))
        .env("MAILROOM__GRPC__ADDR", format!("127.0.0.1:{grpc}"))
        .env("MAILROOM__GRPC__TLS_CERT", &certs.paths.server_cert)
        .env("MAILROOM__GRPC__TLS_KEY", &certs.paths.server_key)
        .env("MAILROOM__METRICS__ADDR", format!("127.0.0.1:{metrics}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "the binary becomes ready",
        || async {
            client
                .get(format!("http://127.0.0.1:{http}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let metrics_page = client
        .get(format!("http://127.0.0.1:{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics_page.status(), 200);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "did not stop within 15 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn the_certs_command_writes_a_ca_and_a_server_certificate_and_keeps_them() {
    let dir = std::env::temp_dir().join(format!("mailroom-cli-certs-{}", uuid::Uuid::new_v4()));
    let (ok, out, err) = run(Command::new(BINARY)
        .args(["certs", "--dir"])
        .arg(&dir)
        .args(["--san", "mailroom.internal"]));
    assert!(ok, "{out}{err}");
    for file in ["ca.crt", "ca.key", "server.crt", "server.key"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{file}: {text}");
    }
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();

    let (ok, out, _) = run(Command::new(BINARY).args(["certs", "--dir"]).arg(&dir));
    assert!(ok && out.contains("kept"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), ca);

    let (ok, out, _) = run(Command::new(BINARY)
        .args(["certs", "--force", "--dir"])
        .arg(&dir));
    assert!(ok && out.contains("wrote"), "{out}");
    assert_ne!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), ca);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn serve_without_the_tls_files_stops_with_a_hint() {
    let dir = std::env::temp_dir().join(format!("mailroom-cli-nocerts-{}", uuid::Uuid::new_v4()));
    let isolation = Isolation::new();
    let _cleanup = Cleanup(isolation.clone());
    let (ok, out, err) = run(mailroom(&isolation)
        .env("MAILROOM__HTTP__ADDR", "127.0.0.1:0")
        .env("MAILROOM__GRPC__ADDR", "127.0.0.1:0")
        .env("MAILROOM__METRICS__ADDR", "127.0.0.1:0")
        .env("MAILROOM__GRPC__TLS_CERT", dir.join("server.crt"))
        .env("MAILROOM__GRPC__TLS_KEY", dir.join("server.key"))
        .arg("serve"));
    assert!(!ok, "{out}");
    assert!(
        err.contains("grpc.tls_cert") && err.contains("mailroom certs"),
        "{err}"
    );
}
