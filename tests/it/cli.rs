//! The `mailroom` binary: migrations, the OpenAPI command, settings errors, and a real
//! process serving and stopping on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{Cleanup, Isolation, TestCerts, eventually, free_port};

const BINARY: &str = env!("CARGO_BIN_EXE_mailroom");

pub(crate) fn mailroom(isolation: &Isolation) -> Command {
    isolation.command()
}

fn run(command: &mut Command) -> (bool, String, String) {
    let output = command.output().expect("mailroom runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn migrations_go_up_report_their_status_and_come_down() {
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

    // One step down: only the newest migration is reverted.
    let (ok, out, err) = run(mailroom(&isolation).args(["migrate", "down"]));
    assert!(ok, "{out}{err}");
    let (ok, out, _) = run(mailroom(&isolation).args(["migrate", "status"]));
    let states: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert!(ok && states.len() >= 2, "{out}");
    assert_eq!(states.last(), Some(&"pending"), "{out}");
    assert!(
        states[..states.len() - 1].iter().all(|s| *s == "applied"),
        "{out}"
    );

    // All the way down.
    let (ok, out, err) = run(mailroom(&isolation).args(["migrate", "down", "--target", "0"]));
    assert!(ok, "{out}{err}");
    let (ok, out, _) = run(mailroom(&isolation).args(["migrate", "status"]));
    assert!(
        ok && out.contains("pending") && !out.contains("applied"),
        "{out}"
    );
    let tables: (i64,) = {
        let mut settings = crate::helpers::test_settings();
        isolation.apply(&mut settings);
        let db =
            sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.database.url))
                .await
                .unwrap();
        sqlx::query_as(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('emails', 'email_attempts')",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    assert_eq!(tables.0, 0, "the tables are gone");

    let (ok, out, err) = run(mailroom(&isolation).args(["migrate", "up"]));
    assert!(ok, "migrations apply again after coming down: {out}{err}");
}

/// A migration edited after it was applied cannot be mended by waiting: `serve` stops at
/// once with the cause instead of retrying as if PostgreSQL were down.
#[tokio::test]
async fn a_migration_changed_after_it_was_applied_stops_the_start_at_once() {
    let isolation = Isolation::new();
    let _cleanup = Cleanup(isolation.clone());
    let (ok, out, err) = run(mailroom(&isolation).args(["migrate", "up"]));
    assert!(ok, "{out}{err}");
    let mut settings = crate::helpers::test_settings();
    isolation.apply(&mut settings);
    let db = sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.database.url))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea \
         WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&db)
    .await
    .unwrap();
    db.close().await;

    // Patience far longer than the wait below: only giving up at once ends in time.
    let mut serve = mailroom(&isolation)
        .env("MAILROOM__STARTUP__WAIT_FOR_DEPENDENCIES", "300s")
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            serve.kill().unwrap();
            panic!("serve still waits for a database whose migrations cannot match");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The logs (stdout) and the final error (stderr) together.
    let output = std::io::read_to_string(serve.stdout.take().unwrap()).unwrap()
        + &std::io::read_to_string(serve.stderr.take().unwrap()).unwrap();
    assert!(!status.success());
    assert!(output.contains("has been modified"), "{output}");
    assert!(!output.contains("not reachable yet"), "{output}");
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
    let (http, grpc, metrics) = (free_port(), free_port(), free_port());
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

#[test]
fn api_key_new_prints_a_key_whose_entry_the_service_accepts() {
    let output = Command::new(BINARY)
        .args(["api-key", "new", "--name", "billing"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key:   "))
        .unwrap();
    let entry = stdout
        .lines()
        .find_map(|l| l.strip_prefix("entry: "))
        .unwrap();
    assert_eq!(
        entry,
        format!("billing:{}", mailroom::api_keys::hash_key(key))
    );
    let keys = mailroom::api_keys::ApiKeys::parse(&[entry.to_owned()]).unwrap();
    assert_eq!(keys.authenticate(key).map(|c| &*c.name), Some("billing"));
}

#[test]
fn api_key_hash_reads_the_key_from_stdin() {
    use std::io::Write;
    let mut child = Command::new(BINARY)
        .args(["api-key", "hash", "--name", "ops"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"local-dev-key\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        format!("ops:{}", mailroom::api_keys::hash_key("local-dev-key"))
    );
}

#[tokio::test]
async fn certificates_made_with_openssl_alone_serve_grpc_for_the_compose_names() {
    // What `docker compose run --rm certs` runs, for hosts without a Rust toolchain.
    let dir = crate::helpers::tools::ScratchDir::new("dev-certs");
    let certs = dir.join("certs");
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-certs.sh"))
        .arg(&certs)
        .arg("mail.internal")
        .stdout(Stdio::null())
        .status()
        .expect("scripts/dev-certs.sh runs");
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(certs.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} is readable by its owner only");
    }
    let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
    let app = crate::helpers::spawn_app_with(|s| {
        s.grpc.tls_cert = certs.join("server.crt");
        s.grpc.tls_key = certs.join("server.key");
    })
    .await;
    // The client checks the name it dials against the certificate: each name the compose
    // setup and the extra argument use must be in it.
    let port = app.grpc_address.rsplit(':').next().unwrap().to_owned();
    for name in ["localhost", "mailroom-1", "nginx", "mail.internal"] {
        let channel = tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                    .domain_name(name),
            )
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("TLS to {name}: {e:?}"));
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap_or_else(|e| panic!("a health check as {name}: {e:?}"));
    }
}
