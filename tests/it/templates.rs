//! Templates: saved and versioned over REST, rendered when an email is created (REST,
//! its asynchronous path, batches, gRPC, NATS create events), HTML escaped in the HTML
//! part only, strict about missing variables, bounded, and pinned to the version an
//! email was made from. Delivered mail is read back with `mail-parser`.

use std::time::Duration;

use mail_parser::MessageParser;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    SEND_ONLY_KEY, TestApp, problem_fields as fields,
    smtp::{Behaviour, FakeSmtp},
    spawn_app, spawn_app_with, unique_recipient, wait_for, with_send_only_key,
};

/// Calls the API with the test key: the status and the JSON answer (null for none).
async fn call(app: &TestApp, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    call(app, Method::POST, path, Some(body)).await
}

async fn put(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    call(app, Method::PUT, path, Some(body)).await
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    call(app, Method::GET, path, None).await
}

/// The detail of the problem's one violation of `field`.
fn detail_of(problem: &Value, field: &str) -> String {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == field)
        .unwrap_or_else(|| panic!("no violation of {field}: {problem}"))["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The welcome template: a subject, a text and an HTML part, all reading `user.name`.
fn welcome(name: &str) -> Value {
    json!({
        "name": name,
        "subject": "Welcome, {{ user.name }}",
        "message": "Hello {{ user.name }},\n{% for item in items %}- {{ item }}\n{% endfor %}",
        "html": "<p>Hello <b>{{ user.name }}</b></p><ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>"
    })
}

/// A JSON object as the `google.protobuf.Struct` gRPC callers send.
fn struct_of(value: &Value) -> prost_types::Struct {
    fn value_of(value: &Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(value_of).collect(),
            }),
            Value::Object(_) => Kind::StructValue(struct_of(value)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    prost_types::Struct {
        fields: value
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, value)| (name.clone(), value_of(value)))
            .collect(),
    }
}

async fn save(app: &TestApp, template: &Value) -> Value {
    let (status, saved) = post(app, "/api/v1/templates", template).await;
    assert_eq!(status, 201, "{saved}");
    saved
}

fn from_template(to: &str, template: Value) -> Value {
    json!({"from": "Acme <hello@acme.example>", "to": to, "template": template})
}

#[tokio::test]
async fn a_template_is_saved_versioned_read_listed_and_deleted() {
    let app = spawn_app().await;
    let saved = save(&app, &welcome("welcome")).await;
    assert_eq!(saved["name"], "welcome");
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["latestVersion"], 1);
    assert!(saved["createdAt"].is_string() && saved["updatedAt"].is_string());
    let id = saved["id"].as_str().unwrap().to_owned();

    // A name is unique.
    let (status, problem) = post(&app, "/api/v1/templates", &welcome("welcome")).await;
    assert_eq!(status, 409, "{problem}");

    // Each save is a new version; the old one stays readable, by name or by id.
    let mut changed = welcome("welcome");
    changed["subject"] = json!("Hi {{ user.name }}!");
    let (status, v2) = put(&app, "/api/v1/templates/welcome", &changed).await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(
        (v2["version"].as_i64(), v2["id"].as_str()),
        (Some(2), Some(id.as_str()))
    );
    let (_, newest) = get(&app, &format!("/api/v1/templates/{id}")).await;
    assert_eq!(newest["subject"], "Hi {{ user.name }}!");
    assert_eq!(newest["latestVersion"], 2);
    let (status, v1) = get(&app, "/api/v1/templates/welcome/versions/1").await;
    assert_eq!(status, 200);
    assert_eq!(v1["subject"], "Welcome, {{ user.name }}");
    assert_eq!(
        (v1["version"].as_i64(), v1["latestVersion"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        get(&app, "/api/v1/templates/welcome/versions/3").await.0,
        404
    );
    assert_eq!(
        get(&app, "/api/v1/templates/welcome/versions/0").await.0,
        400
    );
    assert_eq!(
        get(&app, "/api/v1/templates/welcome/versions/x").await.0,
        400
    );

    // PUT without a name keeps it; another name is refused.
    let mut renamed = welcome("hello");
    renamed["subject"] = json!("x");
    let (status, problem) = put(&app, "/api/v1/templates/welcome", &renamed).await;
    assert_eq!(status, 400);
    assert_eq!(fields(&problem), [("name".to_owned(), "rename".to_owned())]);
    let (status, _) = put(
        &app,
        "/api/v1/templates/welcome",
        &json!({"subject": "v3", "message": "m"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        put(&app, "/api/v1/templates/nope", &welcome("nope"))
            .await
            .0,
        404
    );

    // Listed newest first, at their newest versions, a page at a time.
    save(&app, &welcome("receipt")).await;
    let (_, page) = get(&app, "/api/v1/templates?limit=1").await;
    assert_eq!(page["templates"][0]["name"], "receipt");
    let cursor = page["nextCursor"].as_str().unwrap();
    let (_, rest) = get(&app, &format!("/api/v1/templates?limit=1&cursor={cursor}")).await;
    assert_eq!(rest["templates"][0]["name"], "welcome");
    assert_eq!(rest["templates"][0]["version"], 3);
    assert!(rest["nextCursor"].is_null());

    // Deleted with its versions.
    let (status, _) = call(&app, Method::DELETE, "/api/v1/templates/welcome", None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&app, Method::DELETE, "/api/v1/templates/welcome", None).await;
    assert_eq!(status, 404);
    assert_eq!(get(&app, &format!("/api/v1/templates/{id}")).await.0, 404);
    assert_eq!(
        get(&app, "/api/v1/templates/welcome/versions/1").await.0,
        404
    );
    // The name is free again.
    save(&app, &welcome("welcome")).await;
}

#[tokio::test]
async fn bad_templates_are_refused_naming_the_field_and_the_line() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"name": "Welcome", "subject": "s", "message": "m"}),
            "name",
            "template_name",
        ),
        (
            json!({"name": "0190f4a2-3b4c-7d5e-8f60-1a2b3c4d5e6f", "subject": "s", "message": "m"}),
            "name",
            "template_name",
        ),
        (json!({"subject": "s", "message": "m"}), "name", "required"),
        (json!({"name": "a", "message": "m"}), "subject", "required"),
        (json!({"name": "a", "subject": "s"}), "message", "required"),
        (
            json!({"name": "a", "subject": "s", "html": "<p>\n{% if x %}\n{{ x }</p>"}),
            "html",
            "template_syntax",
        ),
        (
            json!({"name": "a", "subject": "{{ x", "message": "m"}),
            "subject",
            "template_syntax",
        ),
        (
            json!({"name": "a", "subject": "s", "message": "a\0b"}),
            "message",
            "nul_character",
        ),
    ];
    for (body, field, code) in cases {
        let (status, problem) = post(&app, "/api/v1/templates", &body).await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert_eq!(
            fields(&problem),
            [(field.to_owned(), code.to_owned())],
            "{body}"
        );
    }
    let (_, problem) = post(
        &app,
        "/api/v1/templates",
        &json!({"name": "a", "subject": "s", "html": "<p>\n{% if x %}\n{{ x }</p>"}),
    )
    .await;
    let detail = detail_of(&problem, "html");
    assert!(detail.contains("line 3"), "{detail}");
    let (status, _) = post(
        &app,
        "/api/v1/templates",
        &json!({"name": "a", "subject": "s", "message": "m", "bogus": 1}),
    )
    .await;
    assert_eq!(status, 400, "unknown fields are refused");
    let (_, list) = get(&app, "/api/v1/templates").await;
    assert_eq!(list["templates"], json!([]), "nothing was saved");
}

#[tokio::test]
async fn an_email_from_a_template_is_rendered_escaped_in_html_only_and_pinned_to_its_version() {
    let smtp = FakeSmtp::start(Behaviour::Accept).await;
    let app = spawn_app_with(|s| s.smtp.port = smtp.port).await;
    save(&app, &welcome("welcome")).await;
    let to = unique_recipient("template");
    let variables = json!({"user": {"name": "Tom & <Jerry>"}, "items": ["tea", "cake"]});
    let created = app
        .create_email(&from_template(
            &to,
            json!({"name": "welcome", "variables": variables}),
        ))
        .await;
    assert_eq!(
        created["template"],
        json!({"name": "welcome", "version": 1})
    );
    assert_eq!(created["subject"], "Welcome, Tom & <Jerry>");
    assert_eq!(created["message"], "Hello Tom & <Jerry>,\n- tea\n- cake\n");
    assert_eq!(
        created["html"],
        "<p>Hello <b>Tom &amp; &lt;Jerry&gt;</b></p><ul><li>tea</li><li>cake</li></ul>"
    );

    // As delivered, read by an independent parser.
    let delivered = smtp.delivery_to(&to).await;
    let message = MessageParser::default().parse(&delivered.data).unwrap();
    assert_eq!(message.subject(), Some("Welcome, Tom & <Jerry>"));
    // Lines end in CRLF on the wire.
    assert_eq!(
        message.body_text(0).as_deref(),
        Some("Hello Tom & <Jerry>,\r\n- tea\r\n- cake\r\n")
    );
    assert_eq!(
        message.body_html(0).as_deref(),
        Some("<p>Hello <b>Tom &amp; &lt;Jerry&gt;</b></p><ul><li>tea</li><li>cake</li></ul>")
    );

    // A new version changes no email made before, and an email may ask for an old one.
    let mut v2 = welcome("welcome");
    v2["subject"] = json!("Hi again, {{ user.name }}");
    assert_eq!(put(&app, "/api/v1/templates/welcome", &v2).await.0, 200);
    let id = created["emailID"].as_str().unwrap();
    let stored: Value = app.get_email(id).await.json().await.unwrap();
    assert_eq!(stored["subject"], "Welcome, Tom & <Jerry>");
    assert_eq!(stored["template"], json!({"name": "welcome", "version": 1}));
    let newest = app
        .create_email(&from_template(
            &unique_recipient("template"),
            json!({"name": "welcome", "variables": variables}),
        ))
        .await;
    assert_eq!(newest["subject"], "Hi again, Tom & <Jerry>");
    assert_eq!(newest["template"]["version"], 2);
    let template_id = get(&app, "/api/v1/templates/welcome").await.1["id"].clone();
    let pinned = app
        .create_email(&from_template(
            &unique_recipient("template"),
            json!({"id": template_id, "version": 1, "variables": variables}),
        ))
        .await;
    assert_eq!(pinned["subject"], "Welcome, Tom & <Jerry>");
    assert_eq!(pinned["template"], json!({"name": "welcome", "version": 1}));
}

#[tokio::test]
async fn missing_variables_unknown_templates_and_conflicting_parts_are_refused() {
    let app = spawn_app().await;
    save(&app, &welcome("welcome")).await;
    let to = unique_recipient("refused");
    let refused = |template: Value| {
        let app = &app;
        let to = to.clone();
        async move {
            let response = app.post_email(&from_template(&to, template)).await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    let (status, problem) =
        refused(json!({"name": "welcome", "variables": {"user": {}, "items": []}})).await;
    assert_eq!(status, 400);
    assert_eq!(
        fields(&problem),
        [(
            "template.variables".to_owned(),
            "template_variable".to_owned()
        )]
    );
    let detail = detail_of(&problem, "template.variables");
    assert!(detail.contains("`user.name`"), "{detail}");

    let (_, problem) = refused(json!({"name": "nope"})).await;
    assert_eq!(
        fields(&problem),
        [("template.name".to_owned(), "unknown_template".to_owned())]
    );
    let (_, problem) = refused(json!({"name": "welcome", "version": 7})).await;
    assert_eq!(
        fields(&problem),
        [("template.version".to_owned(), "unknown_template".to_owned())]
    );
    let (_, problem) = refused(json!({"name": "welcome", "id": "x"})).await;
    assert_eq!(
        fields(&problem),
        [("template".to_owned(), "ambiguous".to_owned())]
    );
    let (_, problem) = refused(json!({"variables": {}})).await;
    assert_eq!(
        fields(&problem),
        [("template".to_owned(), "required".to_owned())]
    );
    let (_, problem) = refused(json!({"name": "welcome", "version": 0})).await;
    assert_eq!(
        fields(&problem),
        [("template.version".to_owned(), "range".to_owned())]
    );

    // Giving the parts a template renders is refused.
    let mut both = from_template(&to, json!({"name": "welcome"}));
    both["subject"] = json!("mine");
    let response = app.post_email(&both).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        fields(&problem),
        [("subject".to_owned(), "template_conflict".to_owned())]
    );

    // A variable that brings a line break into the subject.
    let (status, problem) = refused(json!({
        "name": "welcome",
        "variables": {"user": {"name": "x\r\nBcc: victim@example.com"}, "items": []}
    }))
    .await;
    assert_eq!(status, 400);
    let detail = detail_of(&problem, "subject");
    assert!(detail.contains("rendered from the template"), "{detail}");
    assert_eq!(app.stored_emails().await, 0, "nothing refused was stored");
}

#[tokio::test]
async fn a_preview_renders_without_storing_and_rendering_is_bounded() {
    let app = spawn_app().await;
    save(&app, &welcome("welcome")).await;
    let (status, rendered) = post(
        &app,
        "/api/v1/templates/welcome/render",
        &json!({"variables": {"user": {"name": "<Ann>"}, "items": ["a"]}}),
    )
    .await;
    assert_eq!(status, 200, "{rendered}");
    assert_eq!(
        rendered,
        json!({
            "subject": "Welcome, <Ann>",
            "message": "Hello <Ann>,\n- a\n",
            "html": "<p>Hello <b>&lt;Ann&gt;</b></p><ul><li>a</li></ul>"
        })
    );
    let (status, problem) = post(&app, "/api/v1/templates/welcome/render", &json!({})).await;
    assert_eq!(status, 400);
    let detail = detail_of(&problem, "template.variables");
    assert!(detail.contains("`user` is undefined"), "{detail}");
    assert_eq!(
        post(&app, "/api/v1/templates/nope/render", &json!({}))
            .await
            .0,
        404
    );

    // Work and output are bounded: a clear error, not a stuck worker.
    save(
        &app,
        &json!({
            "name": "endless",
            "subject": "s",
            "message": "{% for i in range(n) %}{% for j in range(n) %}{{ j }}{% endfor %}{% endfor %}"
        }),
    )
    .await;
    let (status, problem) = post(
        &app,
        "/api/v1/templates/endless/render",
        &json!({"variables": {"n": 100000}}),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(
        fields(&problem),
        [("message".to_owned(), "template_limit".to_owned())]
    );
    let response = app
        .post_email(&from_template(
            &unique_recipient("endless"),
            json!({"name": "endless", "variables": {"n": 100000}}),
        ))
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(app.stored_emails().await, 0, "a preview stores nothing");
}

#[tokio::test]
async fn templates_render_in_batches_on_the_asynchronous_path_over_grpc_and_in_nats_events() {
    use mailroom::grpc::pb::CreateReq;
    use tonic_types::StatusExt;
    let app = spawn_app().await;
    save(&app, &welcome("welcome")).await;
    let variables = json!({"user": {"name": "Bo"}, "items": [1, 2]});

    // A batch: each email renders on its own; a missing variable is named by its path.
    let (status, problem) = post(
        &app,
        "/api/v1/email/batch",
        &json!({"emails": [
            from_template(&unique_recipient("batch"), json!({"name": "welcome", "variables": variables})),
            from_template(&unique_recipient("batch"), json!({"name": "welcome"})),
        ]}),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(
        fields(&problem),
        [(
            "emails[1].template.variables".to_owned(),
            "template_variable".to_owned()
        )]
    );
    let (status, batch) = post(
        &app,
        "/api/v1/email/batch",
        &json!({"emails": [
            from_template(&unique_recipient("batch"), json!({"name": "welcome", "variables": variables})),
            {"from": "a@acme.example", "to": unique_recipient("batch"), "subject": "plain", "message": "m"},
        ]}),
    )
    .await;
    assert_eq!(status, 201, "{batch}");
    assert_eq!(batch["emails"][0]["subject"], "Welcome, Bo");
    assert_eq!(batch["emails"][0]["message"], "Hello Bo,\n- 1\n- 2\n");
    assert!(batch["emails"][1]["template"].is_null());

    // The asynchronous path renders at once (errors are the caller's 400) and records
    // the version with the email the worker stores.
    let response = app
        .post_email_async(&from_template(
            &unique_recipient("async"),
            json!({"name": "welcome", "variables": variables}),
        ))
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["emailID"].as_str().unwrap();
    let stored = wait_for(Duration::from_secs(10), "the worker stores it", || async {
        let response = app.get_email(id).await;
        (response.status() == 200).then_some(())?;
        response.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(stored["subject"], "Welcome, Bo");
    assert_eq!(stored["template"], json!({"name": "welcome", "version": 1}));
    let response = app
        .post_email_async(&from_template(
            &unique_recipient("async"),
            json!({"name": "welcome"}),
        ))
        .await;
    assert_eq!(response.status(), 400);

    // gRPC: TemplateName, TemplateVersion, TemplateVariables (a Struct).
    let created = app
        .grpc_client()
        .await
        .create(CreateReq {
            from: "Acme <hello@acme.example>".into(),
            to: unique_recipient("grpc"),
            template_name: "welcome".into(),
            template_version: 1,
            template_variables: Some(struct_of(&variables)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let email = created.email.unwrap();
    assert_eq!(email.subject, "Welcome, Bo");
    assert_eq!(
        email.message, "Hello Bo,\n- 1\n- 2\n",
        "whole numbers stay whole"
    );
    assert_eq!(
        (email.template_name.as_str(), email.template_version),
        ("welcome", 1)
    );
    let status = app
        .grpc_client()
        .await
        .create(CreateReq {
            from: "Acme <hello@acme.example>".into(),
            to: unique_recipient("grpc"),
            template_name: "welcome".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "TemplateVariables");

    // A NATS create event naming a template; one missing a variable is a dead letter.
    let nats_id = uuid::Uuid::now_v7().to_string();
    let mut event = from_template(
        &unique_recipient("nats"),
        json!({"name": "welcome", "variables": variables}),
    );
    event["emailID"] = json!(nats_id);
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&event).unwrap(),
    )
    .await;
    let stored = wait_for(
        Duration::from_secs(10),
        "the event's email is stored",
        || async {
            let response = app.get_email(&nats_id).await;
            (response.status() == 200).then_some(())?;
            response.json::<Value>().await.ok()
        },
    )
    .await;
    assert_eq!(stored["subject"], "Welcome, Bo");
    assert_eq!(stored["template"], json!({"name": "welcome", "version": 1}));
    let marker = unique_recipient("nats-dead");
    let poison = from_template(&marker, json!({"name": "welcome"}));
    app.publish_raw(
        &app.subject("mail:create"),
        serde_json::to_vec(&poison).unwrap(),
    )
    .await;
    let letters = app
        .messages_on(&app.subject("mail:errors"), 1, Duration::from_secs(10))
        .await;
    let letter = letters
        .iter()
        .find(|l| l["data"].as_str().is_some_and(|d| d.contains(&marker)))
        .unwrap_or_else(|| panic!("a dead letter for the event: {letters:?}"));
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("template.variables: `user` is undefined")),
        "the dead letter says which variable: {letter}"
    );
}

#[tokio::test]
async fn templates_need_the_admin_scope() {
    let app = spawn_app_with(with_send_only_key).await;
    let client = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/templates"),
        (reqwest::Method::POST, "/api/v1/templates"),
        (reqwest::Method::GET, "/api/v1/templates/welcome"),
        (reqwest::Method::POST, "/api/v1/templates/welcome/render"),
    ] {
        let response = client
            .request(method.clone(), app.url(path))
            .bearer_auth(SEND_ONLY_KEY)
            .json(&welcome("welcome"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
    }
}
