//! The suppression list and bounce handling, end to end: a fake relay refuses unknown
//! users with 550 5.1.1; delivery status notifications and complaints are built with a
//! standard MIME library (`mail-builder`, not the code that reads them) from the message
//! as the relay received it, and posted to `POST /api/v1/bounces`.

use std::time::Duration;

use mail_builder::{
    MessageBuilder,
    headers::content_type::ContentType,
    mime::{BodyPart, MimePart},
};
use mail_parser::MessageParser;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    SEND_ONLY_KEY, TestApp, email_body, problem_fields,
    smtp::{Behaviour, Delivery, FakeSmtp},
    spawn_app_with, unique_recipient, with_send_only_key,
};

/// What the fake relay says to the unknown users (an address holding "nobody").
const UNKNOWN_USER: &str = "550 5.1.1 <nobody>: Recipient address rejected: User unknown";

async fn suppression(app: &TestApp, address: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/api/v1/suppressions/{address}")))
        .send()
        .await
        .unwrap()
}

async fn post_report(app: &TestApp, raw: Vec<u8>) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/api/v1/bounces"))
        .header("content-type", "message/rfc822")
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// The header block of a delivered message, as a DSN returns it (`text/rfc822-headers`).
fn headers_of(delivered: &Delivery) -> String {
    let text = String::from_utf8_lossy(&delivered.data);
    text.split("\r\n\r\n").next().unwrap().to_owned() + "\r\n"
}

/// A DSN from `mx.example` that `recipient`'s mail `action` (failed, delayed) with
/// `status`, returning `returned` (headers) unless `None`, sent to `to`.
fn dsn(to: &str, recipient: &str, action: &str, status: &str, returned: Option<String>) -> Vec<u8> {
    let fields = format!(
        "Reporting-MTA: dns; mx.example\r\nArrival-Date: Wed, 2 Dec 2026 02:00:00 +0000\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n\
         Remote-MTA: dns; mx.example\r\n\
         Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected\r\n"
    );
    let mut parts = vec![
        MimePart::new(
            "text/plain",
            "This is the mail system at host mx.example.\r\n\r\nYour message could not be delivered.\r\n",
        ),
        MimePart::new("message/delivery-status", BodyPart::Text(fields.into())),
    ];
    if let Some(headers) = returned {
        parts.push(MimePart::new(
            "text/rfc822-headers",
            BodyPart::Text(headers.into()),
        ));
    }
    MessageBuilder::new()
        .from(("Mail Delivery System", "MAILER-DAEMON@mx.example"))
        .to(to)
        .subject("Undelivered Mail Returned to Sender")
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            parts,
        ))
        .write_to_vec()
        .unwrap()
}

/// An ARF complaint about the delivered message (returned whole).
fn complaint(delivered: &Delivery, recipient: Option<&str>) -> Vec<u8> {
    let mut fields = "Feedback-Type: abuse\r\nUser-Agent: SomeISP-FBL/1.0\r\nVersion: 1\r\n\
                      Arrival-Date: Wed, 2 Dec 2026 02:00:00 +0000\r\n"
        .to_owned();
    if let Some(recipient) = recipient {
        fields.push_str(&format!("Original-Rcpt-To: {recipient}\r\n"));
    }
    MessageBuilder::new()
        .from("fbl@isp.example")
        .to("abuse@acme.example")
        .subject("Complaint about a message")
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "feedback-report"),
            vec![
                MimePart::new("text/plain", "This is an email abuse report.\r\n"),
                MimePart::new("message/feedback-report", BodyPart::Text(fields.into())),
                MimePart::new(
                    "message/rfc822",
                    BodyPart::Text(String::from_utf8_lossy(&delivered.data).into_owned().into()),
                ),
            ],
        ))
        .write_to_vec()
        .unwrap()
}

#[tokio::test]
async fn an_unknown_recipient_is_suppressed_and_never_mailed_again() {
    let smtp = FakeSmtp::start(Behaviour::RejectSome("nobody".into(), UNKNOWN_USER.into())).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let known = unique_recipient("known");
    let unknown = unique_recipient("nobody");
    let mut body = email_body(&known);
    body["cc"] = json!(unknown);
    let first = app.create_email(&body).await;
    let first_id = first["emailID"].as_str().unwrap();
    app.wait_for_status(first_id, "sent", Duration::from_secs(20))
        .await;

    // The entry exists, found in any case, naming the email and the server's text.
    let entry: Value = suppression(&app, &unknown.to_uppercase())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(entry["address"], unknown.to_lowercase());
    assert_eq!(entry["reason"], "hard_bounce");
    assert_eq!(entry["emailID"], first_id);
    assert!(
        entry["smtpText"].as_str().unwrap().contains("5.1.1"),
        "{entry}"
    );
    assert!(entry["createdAt"].is_string());

    // The next email to both goes to the known one only; the other is recorded as left
    // out on the attempt, never given to the relay.
    let rcpts_before = smtp.recipients_seen();
    let second = app.create_email(&body).await;
    let second_id = second["emailID"].as_str().unwrap();
    app.wait_for_status(second_id, "sent", Duration::from_secs(20))
        .await;
    assert_eq!(smtp.recipients_seen() - rcpts_before, 1, "one RCPT only");
    let attempts = app
        .get_json(&format!("/api/v1/email/{second_id}/attempts"))
        .await;
    let refused = &attempts["attempts"][0]["refused"];
    assert_eq!(refused.as_array().unwrap().len(), 1, "{attempts}");
    assert_eq!(refused[0]["suppressed"], "hard_bounce");

    // An email to the unknown one alone ends suppressed without an SMTP session.
    let sessions_before = smtp.sessions();
    let third = app.create_email(&email_body(&unknown)).await;
    let third_id = third["emailID"].as_str().unwrap();
    let suppressed = app
        .wait_for_status(third_id, "suppressed", Duration::from_secs(20))
        .await;
    assert!(
        suppressed["lastError"]
            .as_str()
            .unwrap()
            .contains("suppression list")
    );
    let attempts = app
        .get_json(&format!("/api/v1/email/{third_id}/attempts"))
        .await;
    assert_eq!(attempts["attempts"][0]["outcome"], "suppressed");
    assert_eq!(smtp.sessions(), sessions_before, "no SMTP conversation");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("mailroom_suppressed_recipients_total 2"),
        "one left out of the second email, one of the third"
    );
    assert!(metrics.contains("mailroom_emails_total{status=\"suppressed\"} 1"));
}

#[tokio::test]
async fn policy_refusals_fail_without_suppressing() {
    let smtp = FakeSmtp::start(Behaviour::RejectSome(
        "nobody".into(),
        "550 5.7.1 <nobody>: Relay access denied".into(),
    ))
    .await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let refused = unique_recipient("nobody");
    let created = app.create_email(&email_body(&refused)).await;
    app.wait_for_status(
        created["emailID"].as_str().unwrap(),
        "failed",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        suppression(&app, &refused).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_list_is_managed_over_rest_with_the_admin_scope() {
    let app = spawn_app_with(with_send_only_key).await;
    let add = |body: Value| {
        let request = app.client.post(app.url("/api/v1/suppressions")).json(&body);
        async move { request.send().await.unwrap() }
    };

    let created =
        add(json!({"address": "Jo@Example.com", "reason": "manual", "note": "asked by phone"}))
            .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        created.headers()["location"],
        "/api/v1/suppressions/jo@example.com"
    );
    let entry: Value = created.json().await.unwrap();
    assert_eq!(entry["reason"], "manual");
    assert_eq!(entry["note"], "asked by phone");
    assert!(entry["emailID"].is_null());

    let again = add(json!({"address": "JO@example.com", "reason": "manual"})).await;
    assert_eq!(again.status(), StatusCode::OK, "already listed: as it was");
    assert_eq!(
        again.json::<Value>().await.unwrap()["note"],
        "asked by phone"
    );

    for (body, field) in [
        (
            json!({"address": "not an address", "reason": "manual"}),
            "address",
        ),
        (
            json!({"address": "a@x.example", "reason": "hard_bounce"}),
            "reason",
        ),
        (
            json!({"address": "a@x.example", "reason": "manual", "note": "n".repeat(1001)}),
            "note",
        ),
    ] {
        let refused = add(body.clone()).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem: Value = refused.json().await.unwrap();
        assert!(
            problem_fields(&problem).iter().any(|(f, _)| f == field),
            "{body}: {problem}"
        );
    }

    for n in 0..3 {
        let added =
            add(json!({"address": format!("page{n}@example.com"), "reason": "manual"})).await;
        assert_eq!(added.status(), StatusCode::CREATED);
    }
    // Four entries, newest first, two per page.
    let first = app.get_json("/api/v1/suppressions?limit=2").await;
    let addresses = |page: &Value| -> Vec<String> {
        page["suppressions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        addresses(&first),
        ["page2@example.com", "page1@example.com"]
    );
    let cursor = first["nextCursor"].as_str().unwrap();
    let second = app
        .get_json(&format!("/api/v1/suppressions?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(addresses(&second), ["page0@example.com", "jo@example.com"]);
    assert!(second["nextCursor"].is_null());
    let bounces = app
        .get_json("/api/v1/suppressions?reason=hard_bounce")
        .await;
    assert!(addresses(&bounces).is_empty());
    for query in ["reason=soft", "limit=0", "cursor=forged"] {
        let refused = app
            .client
            .get(app.url(&format!("/api/v1/suppressions?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{query}");
    }

    assert_eq!(
        suppression(&app, "not-an-address").await.status(),
        StatusCode::BAD_REQUEST
    );
    let delete = |address: &str| {
        let request = app
            .client
            .delete(app.url(&format!("/api/v1/suppressions/{address}")));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(delete("JO@EXAMPLE.COM").await, StatusCode::NO_CONTENT);
    assert_eq!(delete("jo@example.com").await, StatusCode::NOT_FOUND);
    assert_eq!(
        suppression(&app, "jo@example.com").await.status(),
        StatusCode::NOT_FOUND
    );

    let sender = reqwest::Client::new();
    for request in [
        sender.get(app.url("/api/v1/suppressions")),
        sender.post(app.url("/api/v1/bounces")),
    ] {
        let refused = request.bearer_auth(SEND_ONLY_KEY).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn a_dsn_bounces_the_sent_email_and_suppresses_its_recipient() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let to = unique_recipient("bounces-later");
    let created = app.create_email(&email_body(&to)).await;
    let id = created["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", Duration::from_secs(20))
        .await;
    let delivered = smtp.delivery_to(&to).await;
    let returned = Some(headers_of(&delivered));

    // A delay: recorded, the email stays sent, nobody is suppressed.
    let delayed = dsn(
        "billing@acme.example",
        &to,
        "delayed",
        "4.4.1",
        returned.clone(),
    );
    let (status, answer) = post_report(&app, delayed).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["matched"], true);
    assert_eq!(answer["status"], "sent");
    assert_eq!(suppression(&app, &to).await.status(), StatusCode::NOT_FOUND);

    let failed = dsn("billing@acme.example", &to, "failed", "5.1.1", returned);
    let (status, answer) = post_report(&app, failed.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["emailID"], id);
    assert_eq!(answer["status"], "bounced");
    assert_eq!(answer["suppressed"], json!([to]));
    let email = app.get_json(&format!("/api/v1/email/{id}")).await;
    assert_eq!(email["status"], "bounced");
    assert!(
        email["lastError"].as_str().unwrap().contains("5.1.1"),
        "{email}"
    );
    let entry: Value = suppression(&app, &to).await.json().await.unwrap();
    assert_eq!(entry["reason"], "hard_bounce");
    assert_eq!(entry["emailID"], id);

    // The same report again changes nothing.
    let (status, answer) = post_report(&app, failed).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["duplicate"], true);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("mailroom_reports_total{kind=\"bounce\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mailroom_reports_total{kind=\"delay\"} 1"));
    assert!(metrics.contains("mailroom_emails_total{status=\"bounced\"} 1"));
}

#[tokio::test]
async fn a_complaint_marks_the_email_complained_and_suppresses_the_recipient() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let to = unique_recipient("complains");
    let created = app.create_email(&email_body(&to)).await;
    let id = created["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", Duration::from_secs(20))
        .await;
    let delivered = smtp.delivery_to(&to).await;
    // The report carries the message whole; the MIME library wrote it as it liked.
    assert!(
        MessageParser::default()
            .parse(&complaint(&delivered, None))
            .is_some()
    );

    // The provider redacted the recipient: the email's only recipient complained.
    let (status, answer) = post_report(&app, complaint(&delivered, None)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "complained");
    let entry: Value = suppression(&app, &to).await.json().await.unwrap();
    assert_eq!(entry["reason"], "complaint");
    assert_eq!(
        app.get_json(&format!("/api/v1/email/{id}")).await["status"],
        "complained"
    );
}

#[tokio::test]
async fn a_verp_return_path_matches_a_dsn_that_returns_no_headers() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.smtp.return_path = "bounces+{emailID}@bounce.acme.example".into();
    })
    .await;
    let to = unique_recipient("verp");
    let created = app.create_email(&email_body(&to)).await;
    let id = created["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", Duration::from_secs(20))
        .await;
    let delivered = smtp.delivery_to(&to).await;
    let verp = format!("bounces+{id}@bounce.acme.example");
    assert_eq!(
        delivered.mail_from, verp,
        "the envelope sender names the email"
    );

    let (status, answer) = post_report(&app, dsn(&verp, &to, "failed", "5.1.1", None)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["emailID"], id);
    assert_eq!(answer["status"], "bounced");
}

#[tokio::test]
async fn garbage_is_refused_and_a_report_about_no_email_is_accepted_unmatched() {
    let app = spawn_app_with(|_| {}).await;
    for raw in [
        &b"not a message at all"[..],
        b"From: a@x.example\r\nSubject: hello\r\n\r\njust mail\r\n",
        b"\xff\xfe\x00\x01",
    ] {
        let (status, problem) = post_report(&app, raw.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["type"], "urn:mailroom:problem:not-a-report");
    }
    let wrong_type = app
        .client
        .post(app.url("/api/v1/bounces"))
        .json(&json!({"not": "a report"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Well-formed, about a message mailroom never sent.
    let headers = "From: a@elsewhere.example\r\nTo: b@x.example\r\n\
                   Message-ID: <CAF-not-ours@mail.elsewhere.example>\r\nSubject: hi\r\n"
        .to_owned();
    let (status, answer) = post_report(
        &app,
        dsn(
            "a@elsewhere.example",
            "b@x.example",
            "failed",
            "5.1.1",
            Some(headers),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answer, json!({"matched": false}));
    let metrics = app.metrics().await;
    assert!(metrics.contains("mailroom_reports_total{kind=\"unmatched\"} 1"));
}
