//! Wire compatibility: a client generated from the original service's proto
//! (`tests/proto/original_email.proto`, verbatim, compiled by `build.rs` on its own)
//! talks to mailroom over TLS and sees what it wrote.

mod original {
    //! Client code generated from the original proto only.
    #![allow(clippy::all, clippy::pedantic, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/original/email_service.rs"));
}

use original::{CreateReq, GetByIdReq, SearchReq, email_service_client::EmailServiceClient};

use crate::helpers::{spawn_app, unique_recipient, with_test_key};

#[tokio::test]
async fn a_client_of_the_original_proto_creates_reads_and_searches() {
    let app = spawn_app().await;
    let mut client = EmailServiceClient::with_interceptor(app.grpc_channel().await, with_test_key);
    let to = unique_recipient("original");

    let created = client
        .create(CreateReq {
            from: "sender@example.com".into(),
            to: to.clone(),
            subject: "Legacy subject line".into(),
            message: "Legacy message body, not the subject.".into(),
        })
        .await
        .expect("Create succeeds")
        .into_inner();
    assert_eq!(created.status, "Ok");

    // The original CreateRes carries no id: find the email by searching for it.
    let found = client
        .search(SearchReq {
            search: "legacy".into(),
            page: 0,
            size: 0,
        })
        .await
        .expect("Search succeeds")
        .into_inner();
    assert_eq!(
        (
            found.total_count,
            found.total_pages,
            found.page,
            found.size,
            found.has_more
        ),
        (1, 1, 1, 10, false)
    );
    let listed = &found.emails[0];
    assert_eq!(listed.to, to);
    assert_eq!(listed.subject, "Legacy subject line");
    assert_eq!(listed.message, "Legacy message body, not the subject.");

    let email = client
        .get_by_id(GetByIdReq {
            email_id: listed.email_id.clone(),
        })
        .await
        .expect("GetByID succeeds")
        .into_inner()
        .email
        .expect("an email");
    assert_eq!(email.email_id, listed.email_id);
    assert_eq!(email.from, "sender@example.com");
    assert_eq!(email.to, to);
    assert_eq!(email.subject, "Legacy subject line");
    assert_eq!(email.message, "Legacy message body, not the subject.");
    assert!(email.created_at.is_some());
}
