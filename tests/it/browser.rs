//! Swagger UI in a real browser: Debian's headless Chromium opens it from a running
//! service with every route off the machine closed, and the page must render and list
//! each operation. A screenshot is kept under `<target>/test-artifacts/` for people to
//! look at. (tests/it/nginx.rs opens it through nginx too, under its security headers.)

use std::{path::Path, process::Command, time::Duration};

use crate::helpers::{
    closed_port, spawn_app,
    tools::{Daemon, ScratchDir, artifact_dir, require},
};

/// Opens `url` in headless Chromium with the network closed, lets the page's scripts
/// finish, saves a screenshot to `screenshot` and returns the rendered DOM.
pub async fn render_in_chromium(url: &str, screenshot: &Path, extra_args: &[&str]) -> String {
    let chromium = require("chromium", "chromium");
    let dir = ScratchDir::new("chromium");
    let _ = std::fs::remove_file(screenshot);
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            &format!("--user-data-dir={}", dir.join("profile").display()),
            // The network is closed: every name but the loopback address fails to
            // resolve, and any request not for loopback goes to a proxy that is not there.
            // A page that needed a CDN would stay blank.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            &format!("--proxy-server=http://127.0.0.1:{}", closed_port()),
            // Virtual time runs the page's scripts and timers to completion before the
            // DOM is dumped, instead of a fixed sleep.
            "--virtual-time-budget=10000",
            "--window-size=1280,2000",
            &format!("--screenshot={}", screenshot.display()),
            "--dump-dom",
        ])
        .args(extra_args)
        .arg(url);
    let dom_path = dir.join("dom.html");
    let mut browser =
        Daemon::spawn_with_output("chromium", command, &dom_path, &dir.join("chromium.log"));
    browser.wait_for_success(Duration::from_secs(90)).await;

    let png = std::fs::read(screenshot).expect("Chromium saved a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "more than a blank page: {} bytes",
        png.len()
    );
    std::fs::read_to_string(&dom_path).unwrap()
}

/// Swagger UI built the page from the OpenAPI document: its title and one block per
/// operation, with the path as written in the document.
pub fn assert_swagger_ui_lists_every_operation(dom: &str) {
    assert!(dom.contains("class=\"swagger-ui\""), "{dom}");
    assert!(dom.contains("mailroom"), "the API's title: {dom}");
    for (method, path) in [
        ("post", "/api/v1/email"),
        ("get", "/api/v1/email/{emailID}"),
        ("get", "/api/v1/email/search"),
        ("get", "/health"),
        ("get", "/ready"),
    ] {
        assert!(
            dom.contains(&format!("opblock-{method}"))
                && dom.contains(&format!("data-path=\"{path}\"")),
            "no {method} {path} operation in the rendered page:\n{dom}"
        );
    }
}

#[tokio::test]
async fn swagger_ui_renders_every_operation_in_headless_chromium_without_the_network() {
    let app = spawn_app().await;
    let dom = render_in_chromium(
        &app.url("/swagger-ui/"),
        &artifact_dir().join("swagger-ui.png"),
        &[],
    )
    .await;
    assert_swagger_ui_lists_every_operation(&dom);
}
