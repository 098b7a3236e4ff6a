//! `nginx/nginx.conf`, the file the nginx image ships, run by Debian's real nginx in front
//! of two instances: HTTPS with HTTP/2, both instances serving REST and gRPC, request
//! ids, security headers (Swagger UI still works under them, in Chromium), failover, and
//! a problem document when no instance answers.
//!
//! The test rewrites only the listen addresses and the upstream servers (each must occur
//! exactly once, so a changed file fails here instead of testing something else);
//! certificate paths are relative in the file and resolve inside the scratch directory.

use std::{net::SocketAddr, process::Command, time::Duration};

use reqwest::{StatusCode, Version, header::HeaderMap};
use serde_json::Value;

use crate::{
    browser::{assert_swagger_ui_lists_every_operation, render_in_chromium},
    helpers::{
        TestApp, email_body, eventually, free_port, grpc_channel, metric_value, spawn_app,
        spawn_sibling,
        tools::{Daemon, ScratchDir, artifact_dir, require},
        unique_recipient, with_test_key,
    },
};

/// Where an instance's gRPC listener is, as `host:port`.
fn grpc_host_port(app: &TestApp) -> String {
    app.grpc_address.trim_start_matches("https://").to_owned()
}

const NGINX_CONF: &str = include_str!("../../nginx/nginx.conf");

/// The shipped configuration with each `(needle, replacement)` applied; every needle must
/// occur exactly once.
fn render(rewrites: &[(&str, String)]) -> String {
    let mut conf = NGINX_CONF.to_owned();
    for (needle, replacement) in rewrites {
        assert_eq!(
            conf.matches(needle).count(),
            1,
            "nginx/nginx.conf should contain `{needle}` exactly once: the test rewrites it"
        );
        conf = conf.replacen(needle, replacement, 1);
    }
    conf
}

fn host_port(app: &TestApp) -> &str {
    app.address.trim_start_matches("http://")
}

const GET_ROUTE: &str =
    "mailroom_http_requests_total{method=\"GET\",route=\"/api/v1/email/{emailID}\",status=\"200\"}";

async fn gets_served(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, GET_ROUTE).unwrap_or(0.0)
}

/// The one value of a header, failing when it is missing or repeated.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    let values: Vec<_> = headers.get_all(name).iter().collect();
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0].to_str().unwrap()
}

/// The headers nginx adds to every answer from the TLS server.
fn assert_security_headers(headers: &HeaderMap) {
    assert!(single(headers, "strict-transport-security").starts_with("max-age="));
    assert_eq!(single(headers, "x-content-type-options"), "nosniff");
    assert_eq!(single(headers, "x-frame-options"), "DENY");
    assert_eq!(single(headers, "referrer-policy"), "no-referrer");
    assert!(single(headers, "content-security-policy").contains("frame-ancestors 'none'"));
    assert!(
        headers.get("server").is_none_or(|v| v == "nginx"),
        "no version"
    );
}

#[tokio::test]
async fn nginx_serves_the_rest_api_over_https_and_http2_from_both_instances() {
    let nginx = require("nginx", "nginx");
    let mut one = spawn_app().await;
    let mut two = spawn_sibling(&one, |_| {}).await;

    let dir = ScratchDir::new("nginx");
    // nginx serves the instances' own development certificate (localhost, 127.0.0.1) and
    // verifies theirs against the same CA, as with `certs/` in the compose setups.
    let certs = &one.certs;
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    for (from, to) in [
        (&certs.paths.ca_cert, "ca.crt"),
        (&certs.paths.server_cert, "server.crt"),
        (&certs.paths.server_key, "server.key"),
    ] {
        std::fs::copy(from, dir.join("certs").join(to)).unwrap();
    }
    let (https, http) = (free_port(), free_port());
    let conf = render(&[
        (
            "listen 443 ssl http2;",
            format!("listen 127.0.0.1:{https} ssl http2;"),
        ),
        ("listen 80;", format!("listen 127.0.0.1:{http};")),
        (
            "server mailroom-1:5000 ",
            format!("server {} ", host_port(&one)),
        ),
        (
            "server mailroom-2:5000 ",
            format!("server {} ", host_port(&two)),
        ),
        (
            "server mailroom-1:5007 ",
            format!("server {} ", grpc_host_port(&one)),
        ),
        (
            "server mailroom-2:5007 ",
            format!("server {} ", grpc_host_port(&two)),
        ),
    ]);
    let conf_path = dir.write("nginx.conf", conf);
    // Everything nginx writes stays in the scratch directory; `-e` covers the log it
    // opens before reading the configuration.
    let args = [
        "-p".to_owned(),
        format!("{}/", dir.path.display()),
        "-c".to_owned(),
        conf_path.display().to_string(),
        "-e".to_owned(),
        "stderr".to_owned(),
        "-g".to_owned(),
        format!("daemon off; pid {};", dir.join("nginx.pid").display()),
    ];
    let check = Command::new(&nginx).args(&args).arg("-t").output().unwrap();
    assert!(
        check.status.success(),
        "nginx -t:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut command = Command::new(&nginx);
    command.args(&args);
    let mut server = Daemon::spawn("nginx", command, &dir.join("nginx.log"));
    server.wait_for_port(https, Duration::from_secs(10)).await;

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap())
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], https)))
        .default_headers(crate::helpers::api_key_headers())
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://localhost:{https}");

    // Create through nginx: HTTP/2 over TLS, the service's answer, nginx's headers.
    let created = client
        .post(format!("{base}/api/v1/email"))
        .json(&email_body(&unique_recipient("nginx")))
        .send()
        .await
        .unwrap();
    assert_eq!(created.version(), Version::HTTP_2);
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(created.headers().contains_key("location"));
    assert_security_headers(created.headers());
    let request_id = single(created.headers(), "x-request-id").to_owned();
    assert!(
        request_id.len() == 32 && request_id.chars().all(|c| c.is_ascii_hexdigit()),
        "nginx's own request id: {request_id}"
    );
    let email: Value = created.json().await.unwrap();
    let id = email["emailID"].as_str().unwrap().to_owned();

    // Reads are spread over both instances.
    let (before_one, before_two) = (gets_served(&one).await, gets_served(&two).await);
    for _ in 0..10 {
        let response = client
            .get(format!("{base}/api/v1/email/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
    }
    let (served_one, served_two) = (
        gets_served(&one).await - before_one,
        gets_served(&two).await - before_two,
    );
    assert_eq!(served_one + served_two, 10.0);
    assert!(
        served_one >= 1.0 && served_two >= 1.0,
        "requests reach both instances: {served_one} and {served_two}"
    );

    // A caller's request id is kept and logged; nginx logs its own ids too.
    let traced = client
        .get(format!("{base}/health"))
        .header("X-Request-Id", "caller-trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), StatusCode::OK);
    assert_eq!(single(traced.headers(), "x-request-id"), "caller-trace-42");
    // nginx writes the access log line after the answer has left, so wait for it.
    eventually(
        Duration::from_secs(5),
        "nginx logs both request ids",
        || async {
            let log = server.log();
            log.contains("\"request_id\":\"caller-trace-42\"")
                && log.contains(&format!("\"request_id\":\"{request_id}\""))
        },
    )
    .await;

    // gRPC through nginx: TLS to nginx, grpcs from nginx to the instances, the API key
    // passed along. Calls reach both instances.
    let channel = grpc_channel(&format!("https://localhost:{https}"), &certs.ca_pem).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("gRPC health through nginx")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut emails = mailroom::grpc::pb::email_service_client::EmailServiceClient::with_interceptor(
        channel,
        with_test_key,
    );
    const GRPC_SEARCH: &str =
        r#"mailroom_grpc_requests_total{code="OK",method="emailService.EmailService/Search"}"#;
    for _ in 0..6 {
        emails
            .search(mailroom::grpc::pb::SearchReq::default())
            .await
            .expect("gRPC Search through nginx");
    }
    let on_one = metric_value(&one.metrics().await, GRPC_SEARCH).unwrap_or(0.0);
    let on_two = metric_value(&two.metrics().await, GRPC_SEARCH).unwrap_or(0.0);
    assert_eq!(on_one + on_two, 6.0);
    assert!(
        on_one > 0.0 && on_two > 0.0,
        "gRPC calls reach both instances: {on_one} and {on_two}"
    );

    // Plain HTTP only redirects to HTTPS.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{http}/api/v1/email/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::PERMANENT_REDIRECT);
    assert!(
        single(plain.headers(), "location").starts_with("https://"),
        "{:?}",
        plain.headers()
    );

    // Swagger UI works under nginx's Content-Security-Policy, in a real browser (which
    // enforces it). The test CA is not in Chromium's store, hence the flag.
    let dom = render_in_chromium(
        &format!("https://127.0.0.1:{https}/swagger-ui/"),
        &artifact_dir().join("swagger-ui-through-nginx.png"),
        &["--ignore-certificate-errors"],
    )
    .await;
    assert_swagger_ui_lists_every_operation(&dom);

    // One instance stops: reads keep working through the other.
    two.stop().await;
    for _ in 0..4 {
        let response = client
            .get(format!("{base}/api/v1/email/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "served by the survivor");
    }

    // No instance left: a problem document, still with the security headers.
    one.stop().await;
    let down = client
        .get(format!("{base}/api/v1/email/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_security_headers(down.headers());
    assert_eq!(
        single(down.headers(), "content-type"),
        "application/problem+json"
    );
    let problem: Value = down.json().await.unwrap();
    assert_eq!(problem["status"], 503);
    server.assert_running();
}
