//! Connection limits: idle connections close, long calls end after the connection's age
//! and grace, and shutdown does not wait on streams forever.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mailroom::grpc::pb::SearchReq;
use tokio::io::AsyncReadExt;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn an_idle_connection_is_closed_and_the_client_reconnects_for_its_next_call() {
    let app =
        spawn_app_with(|s| s.grpc.max_connection_idle = Some(Duration::from_millis(300))).await;

    // A connection that never starts a call is closed after the idle limit, well before
    // the TLS handshake timeout.
    let address = app.grpc_address.trim_start_matches("https://");
    let mut raw = tokio::net::TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("the server closes the idle connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let mut client = app.grpc_client().await;
    client.search(SearchReq::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    client
        .search(SearchReq::default())
        .await
        .expect("a call after the idle close succeeds on a new connection");
}

#[tokio::test]
async fn a_stream_outliving_the_connection_age_and_its_grace_is_cut_off() {
    let app = spawn_app_with(|s| {
        s.grpc.max_connection_age = Some(Duration::from_millis(500));
        s.grpc.max_connection_age_grace = Duration::from_millis(500);
    })
    .await;
    // Age counts from the connection's start.
    let started = Instant::now();
    let mut health = HealthClient::new(app.grpc_channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // The stream ends (with an error) once age and grace are over.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.next().await {
                Some(Ok(_update)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream is cut off");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The client moves to a new connection.
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a new connection serves the next call");
}

#[tokio::test]
async fn shutdown_cuts_off_open_streams_after_the_grace() {
    let mut app =
        spawn_app_with(|s| s.grpc.max_connection_age_grace = Duration::from_millis(300)).await;
    let mut health = HealthClient::new(app.grpc_channel().await);
    let _watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an open stream held the shutdown for {:?}",
        started.elapsed()
    );
}
