//! Server reflection, v1 and v1alpha, which grpcurl and similar tools rely on.

use futures::StreamExt;
use prost::Message;
use prost_types::FileDescriptorProto;
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::spawn_app;

#[tokio::test]
async fn reflection_v1_lists_the_services_and_describes_the_api_and_its_error_details() {
    use v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.grpc_channel().await);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = futures::stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "emailService.EmailService".into(),
        )),
        ask(MessageRequest::FileContainingSymbol(
            "google.rpc.BadRequest".into(),
        )),
    ]);
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .expect("reflection answers")
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected the list of services");
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "emailService.EmailService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(services.contains(&expected), "{expected} in {services:?}");
    }

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected the file declaring the service");
    };
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .find(|file| file.package() == "emailService")
        .expect("the emailService file");
    let methods: Vec<_> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        vec![
            "Create",
            "GetByID",
            "Search",
            "CreateBatch",
            "List",
            "Cancel",
            "Reschedule"
        ]
    );

    // The error details INVALID_ARGUMENT carries can be decoded by reflection clients.
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected the file declaring google.rpc.BadRequest");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_email_service() {
    use v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.grpc_channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected the list of services");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "emailService.EmailService"),
        "{list:?}"
    );
}
