//! The monitoring files against the running service: the metrics it exports pass
//! `promtool check metrics`, every metric the Grafana dashboard and the alert rules use
//! is exported, and a real Prometheus running `monitoring/prometheus.yml` scrapes the
//! service, loads the rules and answers every dashboard query.
//! (`promtool check config`, `check rules` and the rules' unit tests run in
//! scripts/check-deploy.sh.)

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::helpers::{
    TestApp, email_body, eventually, free_port, metric_value, spawn_app,
    tools::{Daemon, ScratchDir, require},
    unique_recipient, wait_for,
};

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring");

fn monitoring_file(relative: &str) -> String {
    let path = format!("{MONITORING}/{relative}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Traffic through everything that has metrics: REST (found and not found), the create
/// and send workers, SMTP and the cache.
async fn exercise(app: &TestApp) {
    let created = app
        .create_email(&email_body(&unique_recipient("metrics")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", Duration::from_secs(15))
        .await;
    assert_eq!(app.get_email(id).await.status(), 200);
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(app.get_email(&unknown).await.status(), 404);
    let search = app
        .client
        .get(app.url("/api/v1/email/search?search=hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(search.status(), 200);
    let accepted = app
        .post_email_async(&email_body(&unique_recipient("metrics-async")))
        .await;
    assert_eq!(accepted.status(), 202);
    // A gRPC call, so the gRPC series exist too.
    let mut grpc = app.grpc_client().await;
    grpc.search(mailroom::grpc::pb::SearchReq::default())
        .await
        .expect("gRPC Search");
    eventually(
        Duration::from_secs(10),
        "the create worker handles the event",
        || async {
            let metrics = app.metrics().await;
            metric_value(
                &metrics,
                "mailroom_nats_messages_total{outcome=\"ok\",subject=\"mail:create\"}",
            )
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
}

/// The names of the series in a text exposition (`name{…} value` or `name value`).
fn series_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Every `expr` of the dashboard, panels and variables alike.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("expr", Value::String(expr)) => found.push(expr.clone()),
                        _ => walk(inner, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(dashboard, &mut found);
    found
}

/// The mailroom and process metric names a PromQL text (or a whole rules file) uses.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("mailroom_") || token.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&monitoring_file("grafana/dashboards/mailroom.json"))
        .expect("the dashboard is valid JSON")
}

#[tokio::test]
async fn the_exported_metrics_pass_promtool_check_metrics() {
    let promtool = require("promtool", "prometheus");
    let app = spawn_app().await;
    exercise(&app).await;
    let metrics = app.metrics().await;

    let mut check = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = check.stdin.take().unwrap();
    stdin.write_all(metrics.as_bytes()).await.unwrap();
    drop(stdin);
    let output = check.wait_with_output().await.unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // promtool prints nothing and exits 0 when the exposition is clean; a lint finding
    // (a counter without _total, a unit-less histogram…) is a failure here too.
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics: {}\n{report}\n--- exposition ---\n{metrics}",
        output.status
    );
    // Buckets reach tens of seconds where SMTP lives (by relay, the one relay of
    // smtp.host being `default`), and the process collector keeps its standard names.
    assert!(
        metrics.contains("mailroom_smtp_send_duration_seconds_bucket{relay=\"default\",le=\"60\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("mailroom_http_request_duration_seconds_bucket{"));
    assert!(series_names(&metrics).contains("process_resident_memory_bytes"));
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alert_rules_use_is_exported() {
    let app = spawn_app().await;
    exercise(&app).await;
    let exported = series_names(&app.metrics().await);

    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{queries:?}");
    let charted: BTreeSet<String> = queries.iter().flat_map(|q| metric_names_in(q)).collect();
    // Rate, errors and latency of each protocol, NATS outcomes, SMTP, the cache, the
    // emails' statuses: the dashboard charts each family.
    for family in [
        "mailroom_http_requests_total",
        "mailroom_http_request_duration_seconds_bucket",
        "mailroom_grpc_requests_total",
        "mailroom_grpc_request_duration_seconds_bucket",
        "mailroom_nats_messages_total",
        "mailroom_nats_message_duration_seconds_bucket",
        "mailroom_smtp_sends_total",
        "mailroom_smtp_send_duration_seconds_bucket",
        "mailroom_cache_requests_total",
        "mailroom_emails_total",
        "mailroom_emails_pending",
        "mailroom_emails_oldest_pending_seconds",
        "mailroom_suppressed_recipients_total",
        "mailroom_reports_total",
    ] {
        assert!(charted.contains(family), "the dashboard charts no {family}");
    }
    let alerted = metric_names_in(&monitoring_file("alerts.yml"));
    assert!(!alerted.is_empty());

    let missing: Vec<_> = charted
        .iter()
        .chain(&alerted)
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or the alerts but not exported: {missing:?}\nexported: {exported:?}"
    );

    // Every panel and query reads the datasource that Grafana provisions.
    let provisioned = monitoring_file("grafana/provisioning/datasources/prometheus.yml");
    let uid = provisioned
        .lines()
        .find_map(|line| line.trim().strip_prefix("uid: "))
        .expect("the provisioned datasource has a fixed uid");
    let mut datasources = Vec::new();
    fn collect(value: &Value, found: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    if key == "datasource" {
                        found.push(inner.clone());
                    } else {
                        collect(inner, found);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, found)),
            _ => {}
        }
    }
    collect(&dashboard, &mut datasources);
    assert!(!datasources.is_empty());
    for datasource in datasources {
        assert_eq!(datasource["uid"], uid, "{datasource}");
    }
}

#[tokio::test]
async fn the_queue_gauges_are_exported_from_start_up_and_follow_the_queue() {
    // SMTP down: a sent email is deferred and waits there.
    let app = crate::helpers::spawn_app_with(|s| {
        s.metrics.queue_interval = Duration::from_millis(100);
        s.smtp.port = crate::helpers::closed_port();
        s.delivery.backoff = vec![Duration::from_secs(60)];
    })
    .await;
    let metrics = app.metrics().await;
    for series in [
        "mailroom_emails_pending{status=\"queued\"}",
        "mailroom_emails_pending{status=\"deferred\"}",
        "mailroom_emails_pending{status=\"scheduled\"}",
        "mailroom_emails_oldest_pending_seconds",
    ] {
        assert_eq!(
            metric_value(&metrics, series),
            Some(0.0),
            "{series}: {metrics}"
        );
    }

    let mut later = email_body(&unique_recipient("gauge-scheduled"));
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    later["scheduledAt"] = serde_json::json!(tomorrow.to_rfc3339());
    app.create_email(&later).await;
    let deferred = app
        .create_email(&email_body(&unique_recipient("gauge-deferred")))
        .await;
    app.wait_for_status(
        deferred["emailID"].as_str().unwrap(),
        "deferred",
        Duration::from_secs(15),
    )
    .await;
    wait_for(Duration::from_secs(10), "the gauges count both", || async {
        let metrics = app.metrics().await;
        let scheduled = metric_value(&metrics, "mailroom_emails_pending{status=\"scheduled\"}");
        let deferred = metric_value(&metrics, "mailroom_emails_pending{status=\"deferred\"}");
        (scheduled == Some(1.0) && deferred == Some(1.0)).then_some(())
    })
    .await;
    // Deferred for a minute and scheduled for tomorrow: neither is overdue.
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "mailroom_emails_oldest_pending_seconds"),
        Some(0.0)
    );
}

/// A dashboard query as Grafana sends it, with the dashboard's variables filled in.
fn as_grafana_sends(query: &str) -> String {
    let filled = query
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$instance", ".*");
    assert!(
        !filled.contains('$'),
        "a dashboard variable this test does not know: {query}"
    );
    filled
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_service_with_the_shipped_configuration() {
    let prometheus = require("prometheus", "prometheus");
    let app = spawn_app().await;
    exercise(&app).await;

    // The shipped files, with the test's target and a one-second rhythm so the test does
    // not wait for 15 s scrapes.
    let dir = ScratchDir::new("prometheus");
    let config = monitoring_file("prometheus.yml");
    for needle in ["scrape_interval: 15s", "evaluation_interval: 15s"] {
        assert_eq!(
            config.matches(needle).count(),
            1,
            "monitoring/prometheus.yml should say `{needle}` once; the test rewrites it"
        );
    }
    let config = config
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    dir.write("prometheus.yml", config);
    dir.write("alerts.yml", monitoring_file("alerts.yml"));
    let target = app.metrics_address.trim_start_matches("http://");
    dir.write(
        "targets/mailroom.yml",
        format!("- targets: [\"{target}\"]\n"),
    );

    let port = free_port();
    let mut command = Command::new(prometheus);
    command.args([
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--log.level=warn".to_owned(),
    ]);
    let mut server = Daemon::spawn("prometheus", command, &dir.join("prometheus.log"));
    server.wait_for_port(port, Duration::from_secs(30)).await;
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        async move {
            let response = client.get(path).send().await.ok()?;
            response.json::<Value>().await.ok()
        }
    };

    // The first scrape comes within a scrape interval of the target's discovery.
    wait_for(
        Duration::from_secs(30),
        "Prometheus scrapes the mailroom target",
        || async {
            let targets = get(format!("{api}/targets")).await?;
            targets["data"]["activeTargets"]
                .as_array()?
                .iter()
                .any(|t| t["labels"]["job"] == "mailroom" && t["health"] == "up")
                .then_some(())
        },
    )
    .await;
    let series = wait_for(
        Duration::from_secs(30),
        "Prometheus holds mailroom_http_requests_total",
        || async {
            let answer = get(format!("{api}/query?query=mailroom_http_requests_total")).await?;
            let result = answer["data"]["result"].as_array()?.clone();
            (!result.is_empty()).then_some(result)
        },
    )
    .await;
    assert!(
        series
            .iter()
            .any(|s| s["metric"]["route"] == "/api/v1/email"
                && s["metric"]["method"] == "POST"
                && s["metric"]["status"] == "201"),
        "{series:?}"
    );

    // The alert rules load and evaluate without errors.
    wait_for(
        Duration::from_secs(30),
        "every alert rule evaluates cleanly",
        || async {
            let rules = get(format!("{api}/rules")).await?;
            let all: Vec<&Value> = rules["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            (all.len() >= 10 && all.iter().all(|r| r["health"] == "ok")).then_some(())
        },
    )
    .await;

    // Every dashboard query is valid PromQL for this Prometheus.
    for query in dashboard_queries(&dashboard()) {
        let filled = as_grafana_sends(&query);
        let answer: Value = client
            .get(format!("{api}/query"))
            .query(&[("query", filled.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{query}\n{answer}");
    }
    server.assert_running();
}

#[tokio::test]
async fn alertmanager_holds_a_warning_back_while_its_critical_twin_fires() {
    let alertmanager = require("prometheus-alertmanager", "prometheus-alertmanager");
    let dir = ScratchDir::new("alertmanager");
    dir.write("alertmanager.yml", monitoring_file("alertmanager.yml"));
    let port = free_port();
    let mut command = Command::new(alertmanager);
    command.args([
        format!("--config.file={}", dir.join("alertmanager.yml").display()),
        format!("--storage.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        // No gossip with peers (it would listen on 9094 of every interface).
        "--cluster.listen-address=".to_owned(),
        "--log.level=warn".to_owned(),
    ]);
    let mut server = Daemon::spawn("alertmanager", command, &dir.join("alertmanager.log"));
    server.wait_for_port(port, Duration::from_secs(30)).await;
    let api = format!("http://127.0.0.1:{port}/api/v2/alerts");
    let client = reqwest::Client::new();

    let alert = |name: &str, severity: &str, family: Option<&str>, subject: Option<&str>| {
        let mut labels = serde_json::json!({"alertname": name, "severity": severity});
        if let Some(family) = family {
            labels["family"] = family.into();
        }
        if let Some(subject) = subject {
            labels["subject"] = subject.into();
        }
        serde_json::json!({"labels": labels, "annotations": {"summary": name}})
    };
    let alerts = serde_json::json!([
        alert(
            "MailroomDeadLettersHigh",
            "critical",
            Some("dead-letters"),
            Some("mail:send")
        ),
        alert(
            "MailroomDeadLettersRising",
            "warning",
            Some("dead-letters"),
            Some("mail:send")
        ),
        // The same family on another subject: not the critical one's twin.
        alert(
            "MailroomDeadLettersRising",
            "warning",
            Some("dead-letters"),
            Some("mail:create")
        ),
        // A warning without a family is never held back.
        alert("NatsExporterDown", "warning", None, None),
        // Another family, with no critical alert firing.
        alert("MailroomEmailsWaiting", "warning", Some("queue-age"), None),
    ]);
    let posted = client.post(&api).json(&alerts).send().await.unwrap();
    assert!(posted.status().is_success(), "{}", posted.status());

    let states: Vec<(String, String, String)> =
        wait_for(Duration::from_secs(10), "the alerts are listed", || async {
            let listed: Value = client.get(&api).send().await.ok()?.json().await.ok()?;
            let listed = listed.as_array()?.clone();
            (listed.len() == 5).then(|| {
                let mut states: Vec<(String, String, String)> = listed
                    .iter()
                    .map(|a| {
                        (
                            a["labels"]["alertname"].as_str().unwrap().to_owned(),
                            a["labels"]["subject"].as_str().unwrap_or("").to_owned(),
                            a["status"]["state"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
                states.sort();
                states
            })
        })
        .await;
    let expect = |name: &str, subject: &str, state: &str| {
        (name.to_owned(), subject.to_owned(), state.to_owned())
    };
    assert_eq!(
        states,
        [
            expect("MailroomDeadLettersHigh", "mail:send", "active"),
            expect("MailroomDeadLettersRising", "mail:create", "active"),
            expect("MailroomDeadLettersRising", "mail:send", "suppressed"),
            expect("MailroomEmailsWaiting", "", "active"),
            expect("NatsExporterDown", "", "active"),
        ]
    );
    server.assert_running();
}
