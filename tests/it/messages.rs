//! Real messages (display names, cc, bcc, reply-to, text and HTML, attachments and an
//! inline image, custom headers, tags, a Message-ID) created over REST, gRPC and NATS,
//! delivered to a fake relay and read back with an independent MIME parser
//! (`mail-parser`, not the lettre that wrote them); every bad input refused by its path.

use std::time::Duration;

use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders, PartType};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, email_body, problem_fields,
    smtp::{Behaviour, Delivery, FakeSmtp},
    spawn_app_with, unique_recipient, wait_for,
};

const PDF: &[u8] =
    b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";
/// The 8-byte PNG signature and a little more: enough for a part of type image/png.
const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The invoice every path sends: each part the messages issue names.
fn invoice(to_marker: &str) -> Value {
    json!({
        "from": "Acme Billing <billing@acme.example>",
        "to": format!("\"Zoë Ångström\" <zoe-{to_marker}@bücher.example>, bob-{to_marker}@example.com"),
        "cc": [format!("Carol <carol-{to_marker}@example.com>")],
        "bcc": format!("secret-{to_marker}@example.com"),
        "replyTo": "Help Desk <help@acme.example>",
        "subject": "Rechnung März ✓",
        "message": "Your invoice is attached.",
        "html": "<p>Your invoice is attached.</p><img src=\"cid:logo\">",
        "attachments": [
            {"filename": "Rechnung März.pdf", "content": b64(PDF)},
            {"filename": "logo.png", "content": b64(PNG), "contentId": "logo"}
        ],
        "headers": {"X-Campaign": "winter-2026", "List-Unsubscribe": "<https://acme.example/u>"},
        "tags": {"category": "invoice", "customer": "42"}
    })
}

/// Waits for the relay to take the message whose envelope names `marker`.
async fn delivery(smtp: &FakeSmtp, marker: &str) -> Delivery {
    wait_for(
        Duration::from_secs(20),
        "the message is delivered",
        || async {
            smtp.deliveries()
                .into_iter()
                .find(|d| d.rcpt_to.iter().any(|r| r.contains(marker)))
        },
    )
    .await
}

/// The content type of a part as `type/subtype`.
fn mime(part: &mail_parser::MessagePart) -> String {
    let ct = part.content_type().expect("every part has a content type");
    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()).to_ascii_lowercase()
}

/// The parts under a multipart part, by index into the message's parts.
fn children<'a>(
    message: &'a mail_parser::Message,
    part: &mail_parser::MessagePart,
) -> Vec<&'a mail_parser::MessagePart<'a>> {
    match &part.body {
        PartType::Multipart(ids) => ids.iter().map(|id| message.part(*id).unwrap()).collect(),
        _ => Vec::new(),
    }
}

/// What the invoice must look like on the wire, as an independent parser reads it.
fn assert_delivered_as_specified(delivery: &Delivery, marker: &str, message_id: &str) {
    let raw = String::from_utf8_lossy(&delivery.data);
    assert!(
        !raw.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
        "no Bcc header:\n{raw}"
    );
    assert!(
        !raw.contains("secret-"),
        "the blind copy shows nowhere in the message"
    );

    // The envelope: every recipient once, the international domain in punycode.
    let mut envelope = delivery.rcpt_to.clone();
    envelope.sort();
    let mut expected = vec![
        format!("bob-{marker}@example.com"),
        format!("carol-{marker}@example.com"),
        format!("secret-{marker}@example.com"),
        format!("zoe-{marker}@xn--bcher-kva.example"),
    ];
    expected.sort();
    assert_eq!(envelope, expected);
    assert_eq!(delivery.mail_from, "billing@acme.example");

    let message = MessageParser::default()
        .parse(&delivery.data)
        .expect("a MIME message");
    let from = message.from().unwrap().first().unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("Acme Billing"), Some("billing@acme.example"))
    );
    let to: Vec<(Option<&str>, Option<&str>)> = message
        .to()
        .unwrap()
        .iter()
        .map(|a| (a.name(), a.address()))
        .collect();
    assert_eq!(
        to,
        [
            (
                Some("Zoë Ångström"),
                Some(format!("zoe-{marker}@xn--bcher-kva.example").as_str())
            ),
            (None, Some(format!("bob-{marker}@example.com").as_str())),
        ]
    );
    let cc = message.cc().unwrap().first().unwrap();
    assert_eq!(cc.name(), Some("Carol"));
    let reply_to = message.reply_to().unwrap().first().unwrap();
    assert_eq!(
        (reply_to.name(), reply_to.address()),
        (Some("Help Desk"), Some("help@acme.example"))
    );
    assert_eq!(message.subject(), Some("Rechnung März ✓"));
    assert_eq!(
        Some(message_id.trim_matches(['<', '>'])),
        message.message_id()
    );
    assert_eq!(
        message.header_raw("X-Campaign").map(str::trim),
        Some("winter-2026")
    );
    assert_eq!(
        message.header_raw("List-Unsubscribe").map(str::trim),
        Some("<https://acme.example/u>")
    );

    // multipart/mixed( multipart/related( multipart/alternative(text, html), png ), pdf )
    let root = message.root_part();
    assert_eq!(mime(root), "multipart/mixed", "{raw}");
    let mixed = children(&message, root);
    assert_eq!(mixed.len(), 2);
    assert_eq!(mime(mixed[0]), "multipart/related");
    let related = children(&message, mixed[0]);
    assert_eq!(mime(related[0]), "multipart/alternative");
    let alternative = children(&message, related[0]);
    assert_eq!(
        alternative.iter().map(|p| mime(p)).collect::<Vec<_>>(),
        ["text/plain", "text/html"]
    );
    assert_eq!(
        alternative[0].text_contents(),
        Some("Your invoice is attached.")
    );
    assert!(alternative[1].text_contents().unwrap().contains("cid:logo"));
    assert_eq!(mime(related[1]), "image/png");
    assert_eq!(related[1].content_id(), Some("logo"));
    assert_eq!(related[1].contents(), PNG);
    assert_eq!(mime(mixed[1]), "application/pdf");
    assert_eq!(mixed[1].attachment_name(), Some("Rechnung März.pdf"));
    assert_eq!(mixed[1].contents(), PDF);
}

/// A word no other test's recipients hold, to find this test's delivery by.
fn marker() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

#[tokio::test]
async fn a_rest_invoice_with_every_part_is_delivered_as_specified_and_reads_back() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let marker = marker();
    let created = app.create_email(&invoice(&marker)).await;
    let id = created["emailID"].as_str().unwrap();

    assert_eq!(created["from"], "Acme Billing <billing@acme.example>");
    assert_eq!(
        created["to"],
        format!("Zoë Ångström <zoe-{marker}@bücher.example>, bob-{marker}@example.com")
    );
    assert_eq!(created["cc"], format!("Carol <carol-{marker}@example.com>"));
    assert_eq!(created["bcc"], format!("secret-{marker}@example.com"));
    assert_eq!(created["replyTo"], "Help Desk <help@acme.example>");
    assert_eq!(
        created["tags"],
        json!({"category": "invoice", "customer": "42"})
    );
    assert_eq!(created["headers"]["X-Campaign"], "winter-2026");
    assert_eq!(
        created["attachments"],
        json!([
            {"filename": "Rechnung März.pdf", "contentType": "application/pdf", "size": PDF.len()},
            {"filename": "logo.png", "contentType": "image/png", "size": PNG.len(), "contentId": "logo"}
        ]),
        "metadata only, never the bytes"
    );
    let message_id = created["messageId"].as_str().unwrap().to_owned();
    assert_eq!(message_id, format!("<{id}@acme.example>"));

    let delivered = delivery(&smtp, &marker).await;
    assert_delivered_as_specified(&delivered, &marker, &message_id);

    // Each attachment's bytes, with its type and name.
    let pdf = app
        .client
        .get(app.url(&format!("/api/v1/email/{id}/attachments/0")))
        .send()
        .await
        .unwrap();
    assert_eq!(pdf.status(), 200);
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    let disposition = pdf.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.contains("filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"),
        "{disposition}"
    );
    assert_eq!(&pdf.bytes().await.unwrap()[..], PDF);
    let missing = app
        .client
        .get(app.url(&format!("/api/v1/email/{id}/attachments/2")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The Message-ID stays the same on the stored email after the delivery.
    let stored: Value = app.get_email(id).await.json().await.unwrap();
    assert_eq!(stored["messageId"], message_id.as_str());
    // Every status event of the email carries its tags.
    let events: Vec<Value> = app
        .messages_on(&app.subject("mail:status"), 3, Duration::from_secs(10))
        .await
        .into_iter()
        .filter(|e| e["emailID"] == id)
        .collect();
    assert_eq!(
        events
            .iter()
            .map(|e| e["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["queued", "sending", "sent"]
    );
    for event in &events {
        assert_eq!(
            event["tags"],
            json!({"category": "invoice", "customer": "42"}),
            "{event}"
        );
    }
}

#[tokio::test]
async fn a_grpc_invoice_with_every_part_is_delivered_as_specified() {
    use mailroom::grpc::pb::{Attachment, CreateReq};
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let marker = marker();
    let body = invoice(&marker);
    let text = |key: &str| body[key].as_str().unwrap().to_owned();
    let request = CreateReq {
        from: text("from"),
        to: text("to"),
        cc: body["cc"][0].as_str().unwrap().to_owned(),
        bcc: text("bcc"),
        reply_to: text("replyTo"),
        subject: text("subject"),
        message: text("message"),
        html: text("html"),
        attachments: vec![
            Attachment {
                filename: "Rechnung März.pdf".into(),
                content: PDF.to_vec(),
                ..Default::default()
            },
            Attachment {
                filename: "logo.png".into(),
                content: PNG.to_vec(),
                content_type: "image/png".into(),
                content_id: "logo".into(),
            },
        ],
        headers: [
            ("X-Campaign".to_owned(), "winter-2026".to_owned()),
            (
                "List-Unsubscribe".to_owned(),
                "<https://acme.example/u>".to_owned(),
            ),
        ]
        .into(),
        tags: [("category".to_owned(), "invoice".to_owned())].into(),
        ..Default::default()
    };
    let created = app
        .grpc_client()
        .await
        .create(request)
        .await
        .unwrap()
        .into_inner();
    let email = created.email.unwrap();
    assert_eq!(email.cc, format!("Carol <carol-{marker}@example.com>"));
    assert_eq!(email.attachments.len(), 2);
    assert_eq!(email.attachments[0].size, PDF.len() as u64);
    assert_eq!(email.tags["category"], "invoice");
    let delivered = delivery(&smtp, &marker).await;
    assert_delivered_as_specified(&delivered, &marker, &email.message_id);
}

#[tokio::test]
async fn a_nats_create_event_with_every_part_is_delivered_as_specified() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let marker = marker();
    let id = uuid::Uuid::now_v7().to_string();
    let mut event = invoice(&marker);
    event["emailID"] = json!(id);
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&event).unwrap(),
    )
    .await;
    let delivered = delivery(&smtp, &marker).await;
    assert_delivered_as_specified(&delivered, &marker, &format!("<{id}@acme.example>"));
}

#[tokio::test]
async fn an_html_only_email_has_no_empty_text_part() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let to = unique_recipient("html-only");
    let mut body = email_body(&to);
    body.as_object_mut().unwrap().remove("message");
    body["html"] = json!("<h1>Only HTML</h1>");
    let created = app.create_email(&body).await;
    assert_eq!(created["message"], Value::Null);
    let delivered = delivery(&smtp, to.split('@').next().unwrap()).await;
    let message = MessageParser::default().parse(&delivered.data).unwrap();
    assert_eq!(mime(message.root_part()), "text/html");
    assert_eq!(
        message.parts.len(),
        1,
        "one part, no empty text alternative"
    );
}

/// POSTs `body` and answers the status and the `field` of each error.
async fn refused(app: &TestApp, body: &Value) -> (u16, Vec<(String, String)>) {
    let response = app.post_email(body).await;
    let status = response.status().as_u16();
    let problem: Value = response.json().await.unwrap();
    (status, problem_fields(&problem))
}

#[tokio::test]
async fn every_bad_part_is_refused_naming_its_path() {
    let app = spawn_app_with(|_| {}).await;
    let base = email_body(&unique_recipient("bad"));
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let many: Vec<String> = (0..51).map(|i| format!("r{i}@example.com")).collect();
    let mut no_body = base.clone();
    no_body.as_object_mut().unwrap().remove("message");
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with("cc", json!(["ok@example.com", "nope"])),
            "cc[1]",
            "address",
        ),
        (with("to", json!("a@example.com, b")), "to[1]", "address"),
        (
            with("bcc", json!(["a@example.com, b@example.com"])),
            "bcc[0]",
            "one_address",
        ),
        (
            with("replyTo", json!("\"Help <help@example.com>")),
            "replyTo",
            "address",
        ),
        (
            with("from", json!("Acme <billing@acme.example")),
            "from",
            "address",
        ),
        (with("to", json!(many)), "to", "too_many_recipients"),
        (no_body, "message", "required"),
        (
            with(
                "attachments",
                json!([{"filename": "a.pdf", "content": "!!not base64!!"}]),
            ),
            "attachments[0].content",
            "base64",
        ),
        (
            with(
                "attachments",
                json!([{"filename": "../etc/passwd", "content": b64(b"x")}]),
            ),
            "attachments[0].filename",
            "path_separator",
        ),
        (
            with(
                "attachments",
                json!([{"filename": "a\r\nb", "content": b64(b"x")}]),
            ),
            "attachments[0].filename",
            "control_characters",
        ),
        (
            with("attachments", json!([{"content": b64(b"x")}])),
            "attachments[0].filename",
            "required",
        ),
        (
            with(
                "attachments",
                json!([{"filename": "a", "content": b64(b"x"), "contentType": "pdf"}]),
            ),
            "attachments[0].contentType",
            "content_type",
        ),
        (
            with(
                "attachments",
                json!([{"filename": "a.png", "content": b64(b"x"), "contentId": "logo"}]),
            ),
            "attachments[0].contentId",
            "inline_without_html",
        ),
        (
            with("headers", json!({"Bcc": "x@example.com"})),
            "headers.Bcc",
            "reserved_header",
        ),
        (
            with("headers", json!({"Content-Type": "text/html"})),
            "headers.Content-Type",
            "reserved_header",
        ),
        (
            with("headers", json!({"X-Campaign": "a\r\nBcc: x@example.com"})),
            "headers.X-Campaign",
            "line_break",
        ),
        (
            with("headers", json!({"X Bad": "v"})),
            "headers.X Bad",
            "header_name",
        ),
        (
            with("tags", json!({"bad name": "v"})),
            "tags.bad name",
            "tag_name",
        ),
        (
            with("tags", json!({"ok": "x".repeat(257)})),
            "tags.ok",
            "length",
        ),
    ];
    for (body, path, code) in cases {
        let (status, fields) = refused(&app, &body).await;
        assert_eq!(status, 400, "{path}: {fields:?}");
        assert!(
            fields.contains(&(path.to_owned(), code.to_owned())),
            "{path} {code}: got {fields:?}"
        );
    }
    // Values of the wrong type are malformed, named by their path.
    for (body, path) in [
        (with("replyTo", json!(7)), "replyTo"),
        (
            with("attachments", json!([{"filename": 7}])),
            "attachments[0].filename",
        ),
        (with("tags", json!({"a": 1})), "tags.a"),
        (
            with(
                "attachments",
                json!([{"filename": "a", "content": "eA==", "size": 1}]),
            ),
            "attachments[0]",
        ),
    ] {
        let (status, fields) = refused(&app, &body).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            fields.iter().any(|(field, _)| field.starts_with(path)),
            "{path}: {fields:?}"
        );
    }
}

#[tokio::test]
async fn grpc_names_bad_parts_by_their_proto_path() {
    use mailroom::grpc::pb::{Attachment, CreateReq};
    use tonic_types::StatusExt;
    let app = spawn_app_with(|_| {}).await;
    let status = app
        .grpc_client()
        .await
        .create(CreateReq {
            from: "sender@example.com".into(),
            to: "ok@example.com".into(),
            cc: "ok@example.com, nope".into(),
            subject: "s".into(),
            message: "m".into(),
            attachments: vec![Attachment {
                filename: "a/b".into(),
                content: vec![1],
                ..Default::default()
            }],
            headers: [("Subject".to_owned(), "x".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        ["Cc[1]", "Attachments[0].Filename", "Headers.Subject"]
    );
}

#[tokio::test]
async fn an_attachment_exactly_at_the_size_limit_passes_and_one_byte_more_does_not() {
    const LIMIT: usize = 256 * 1024;
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.limits.max_message_bytes = LIMIT;
    })
    .await;
    let to = unique_recipient("limit");
    let body = |bytes: usize| {
        let mut body = email_body(&to);
        body["attachments"] =
            json!([{"filename": "blob.bin", "content": b64(&vec![0x5au8; bytes])}]);
        body
    };
    // The largest attachment the deployment's rules take, found with those rules.
    let rules = mailroom::domain::Rules {
        limits: mailroom::domain::Limits {
            max_message_bytes: LIMIT,
            ..Default::default()
        },
        ..Default::default()
    };
    let fits = |bytes: usize| {
        let request: mailroom::wire::CreateEmail = serde_json::from_value(body(bytes)).unwrap();
        rules.new_email(request.into_draft()).is_ok()
    };
    let (mut low, mut high) = (1usize, LIMIT);
    while low + 1 < high {
        let middle = (low + high) / 2;
        if fits(middle) {
            low = middle
        } else {
            high = middle
        }
    }
    let at_limit = low;

    let over = app.post_email(&body(at_limit + 1)).await;
    assert_eq!(over.status(), 413);
    let problem: Value = over.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("limits.max_message_bytes"),
        "{problem}"
    );
    let created = app.create_email(&body(at_limit)).await;
    assert_eq!(created["attachments"][0]["size"], at_limit);
    let delivered = delivery(&smtp, to.split('@').next().unwrap()).await;
    assert!(
        delivered.data.len() <= LIMIT,
        "{} bytes delivered, over the limit of {LIMIT}",
        delivered.data.len()
    );
    let message = MessageParser::default().parse(&delivered.data).unwrap();
    assert_eq!(message.attachment(0).unwrap().contents().len(), at_limit);
}

#[tokio::test]
async fn an_asynchronous_create_too_large_for_nats_is_stored_at_once_not_lost() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let to = unique_recipient("big-async");
    let mut body = email_body(&to);
    // Over NATS's default max_payload (1 MiB) once in base64.
    body["attachments"] = json!([{"filename": "big.bin", "content": b64(&vec![7u8; 1536 * 1024])}]);
    let response = app.post_email_async(&body).await;
    assert_eq!(
        response.status(),
        201,
        "stored synchronously instead of published"
    );
    let created: Value = response.json().await.unwrap();
    app.wait_for_status(
        created["emailID"].as_str().unwrap(),
        "sent",
        Duration::from_secs(20),
    )
    .await;
    let delivered = delivery(&smtp, to.split('@').next().unwrap()).await;
    let message = MessageParser::default().parse(&delivered.data).unwrap();
    assert_eq!(message.attachment(0).unwrap().contents().len(), 1536 * 1024);
}

async fn refused_on_attempt(app: &TestApp, id: &str) -> Value {
    let (refused,): (Option<Value>,) = sqlx::query_as(
        "SELECT refused FROM email_attempts WHERE email_id = $1::uuid AND attempt = 1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    refused.unwrap_or(Value::Null)
}

#[tokio::test]
async fn refused_recipients_are_recorded_and_the_others_get_the_message() {
    let smtp = FakeSmtp::start(Behaviour::RejectSome(
        "nobody".into(),
        "550 5.1.1 no such user".into(),
    ))
    .await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    let ok = unique_recipient("partial-ok");
    let mut body = email_body(&ok);
    body["cc"] = json!(unique_recipient("nobody"));
    let created = app.create_email(&body).await;
    let id = created["emailID"].as_str().unwrap();
    app.wait_for_status(id, "sent", Duration::from_secs(20))
        .await;
    let delivered = delivery(&smtp, ok.split('@').next().unwrap()).await;
    assert_eq!(delivered.rcpt_to, [ok], "only the accepted recipient");
    let refused = refused_on_attempt(&app, id).await;
    let refused = refused.as_array().expect("the refusal is recorded");
    assert_eq!(refused.len(), 1);
    assert!(refused[0]["address"].as_str().unwrap().contains("nobody"));
    assert_eq!(refused[0]["code"], 550);
    assert!(
        refused[0]["text"]
            .as_str()
            .unwrap()
            .contains("no such user")
    );

    // Every recipient refused: nothing is sent, the email fails, each refusal is kept.
    let created = app
        .create_email(&email_body(&unique_recipient("nobody")))
        .await;
    let id = created["emailID"].as_str().unwrap();
    let failed = app
        .wait_for_status(id, "failed", Duration::from_secs(20))
        .await;
    assert!(
        failed["lastError"]
            .as_str()
            .unwrap()
            .contains("every recipient was refused")
    );
    assert_eq!(
        refused_on_attempt(&app, id).await.as_array().unwrap().len(),
        1
    );
}

/// Pulls are bounded by bytes, but never below the largest message the server takes: a
/// create event far larger than what the workers' batches may hold still arrives.
#[tokio::test]
async fn a_create_event_larger_than_a_batch_may_hold_is_still_pulled_and_delivered() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| {
        s.smtp.port = smtp.port;
        s.nats.consumers.create.workers = 1;
        s.nats.consumers.create.batch_max_bytes = 1;
    })
    .await;
    let marker = marker();
    let mut event = invoice(&marker);
    // About 400 KB of payload, 400,000 times the batch bound.
    event["attachments"][0]["content"] = json!(b64(&vec![7u8; 300_000]));
    let payload = serde_json::to_vec(&event).unwrap();
    assert!(payload.len() > 400_000, "{}", payload.len());
    app.publish_raw(&app.subject("mail:create"), payload).await;
    let delivered = delivery(&smtp, &marker).await;
    let message = MessageParser::default().parse(&delivered.data).unwrap();
    assert!(
        message
            .attachments()
            .any(|part| part.contents() == vec![7u8; 300_000].as_slice()),
        "the large attachment arrives whole"
    );
}
