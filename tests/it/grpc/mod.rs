//! The gRPC API over TLS as its clients see it: a client generated from
//! `proto/email.proto`, one generated from the original service's proto, the health
//! service and reflection. Every client trusts only the test CA.

mod api;
mod auth;
mod connection;
mod errors;
mod health;
mod original;
mod reflection;

use mailroom::grpc::pb::CreateReq;

/// A valid create request for `to`.
pub fn create_req(to: &str) -> CreateReq {
    CreateReq {
        from: "sender@example.com".into(),
        to: to.into(),
        subject: "Hello over gRPC".into(),
        message: "This message travelled over TLS.".into(),
        ..Default::default()
    }
}
