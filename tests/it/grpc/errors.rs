//! Every status code the email service answers, with the details a client can act on.

use mailroom::grpc::pb::{CreateReq, GetByIdReq, SearchReq};
use tonic::{
    Code,
    transport::{Channel, ClientTlsConfig},
};
use tonic_types::StatusExt;

use super::create_req;
use crate::helpers::{spawn_app, spawn_app_with, unique_recipient};

/// The (field, reason) pairs of a status' `google.rpc.BadRequest`.
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.reason))
        .collect()
}

#[tokio::test]
async fn an_invalid_address_is_invalid_argument_naming_the_to_field() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let status = client
        .create(create_req("alice at example dot com"))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status), vec![("To".into(), "ADDRESS".into())]);
    assert!(status.message().starts_with("To: "), "{}", status.message());
}

#[tokio::test]
async fn empty_fields_are_each_reported_as_required() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let status = client.create(CreateReq::default()).await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    let required = |field: &str| (field.to_owned(), "REQUIRED".to_owned());
    assert_eq!(
        violations(&status),
        vec![
            required("From"),
            required("To"),
            required("Subject"),
            required("Message")
        ]
    );
}

#[tokio::test]
async fn a_line_break_in_the_subject_is_refused() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let status = client
        .create(CreateReq {
            subject: "Hi\r\nBcc: victim@example.com".into(),
            ..create_req(&unique_recipient("grpc-crlf"))
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&status),
        vec![("Subject".into(), "LINE_BREAK".into())]
    );
}

#[tokio::test]
async fn a_request_over_the_message_size_limit_is_refused_before_any_work() {
    let app = spawn_app_with(|s| s.grpc.max_message_bytes = 64 * 1024).await;
    let mut client = app.grpc_client().await;
    let status = client
        .create(CreateReq {
            message: "x".repeat(100 * 1024),
            ..create_req(&unique_recipient("grpc-large"))
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(app.stored_emails().await, 0);
}

#[tokio::test]
async fn a_malformed_id_is_invalid_argument_naming_the_id() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let status = client
        .get_by_id(GetByIdReq {
            email_id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status), vec![("EmailID".into(), "UUID".into())]);
}

#[tokio::test]
async fn an_unknown_id_is_not_found() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let id = uuid::Uuid::now_v7().to_string();
    let status = client
        .get_by_id(GetByIdReq {
            email_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&id), "{}", status.message());
}

#[tokio::test]
async fn an_idempotency_key_reused_for_other_content_is_already_exists() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let first = client
        .create(CreateReq {
            idempotency_key: "grpc-reused".into(),
            ..create_req(&unique_recipient("grpc-conflict"))
        })
        .await
        .unwrap()
        .into_inner();
    let status = client
        .create(CreateReq {
            idempotency_key: "grpc-reused".into(),
            message: "Something else entirely.".into(),
            ..create_req(&unique_recipient("grpc-conflict"))
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::AlreadyExists);
    let info = status
        .get_details_error_info()
        .expect("an ErrorInfo detail");
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(info.metadata["existingEmailID"], first.email_id);
}

#[tokio::test]
async fn search_refuses_a_negative_page_and_a_size_over_100() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let status = client
        .search(SearchReq {
            search: "anything".into(),
            page: -1,
            size: 101,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&status),
        vec![
            ("page".into(), "RANGE".into()),
            ("size".into(), "RANGE".into())
        ]
    );
}

#[tokio::test]
async fn clients_that_do_not_trust_the_ca_or_skip_tls_get_nothing() {
    let app = spawn_app().await;
    let address = app.grpc_address.clone();

    // TLS without the development CA among the trusted roots.
    let untrusting = Channel::from_shared(address.clone())
        .unwrap()
        .tls_config(ClientTlsConfig::new())
        .unwrap()
        .connect()
        .await;
    assert!(untrusting.is_err(), "the handshake fails");

    // Plain HTTP/2 on the TLS port.
    let plaintext = Channel::from_shared(address.replace("https://", "http://"))
        .unwrap()
        .connect_lazy();
    let status = mailroom::grpc::pb::email_service_client::EmailServiceClient::new(plaintext)
        .get_by_id(GetByIdReq {
            email_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    // The server never speaks plain HTTP/2: the call dies with the connection.
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{status:?}"
    );
}
