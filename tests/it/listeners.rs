//! The REST and metrics listeners against clients that connect and then stall: half-sent
//! requests are closed after `http.header_read_timeout`, idle connections after
//! `http.keep_alive_timeout`, at most `http.max_connections` are open at once, and
//! fresh requests are served throughout.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::spawn_app_with;

/// Opens a connection and sends half a request line, then nothing more.
async fn half_request(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connecting");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: mail")
        .await
        .unwrap();
    stream
}

/// How long until the server closes `stream` (reads EOF or a reset), or `None` when it
/// is still open after `patience`.
async fn closed_after(
    mut stream: TcpStream,
    since: Instant,
    patience: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(patience, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    read.ok().map(|()| since.elapsed())
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_sent_requests_are_closed_within_the_timeout_while_fresh_ones_are_served()
{
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = Duration::from_secs(2);
        s.http.keep_alive_timeout = Duration::from_secs(30);
    })
    .await;
    let address = host_port(&app.address);
    let stalled = join_all((0..2000).map(|_| async {
        let stream = half_request(&address).await;
        (stream, Instant::now())
    }))
    .await;

    // Fresh requests, each on a new connection, are answered while the 2,000 wait.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let waiting = std::sync::atomic::AtomicBool::new(true);
    let prober = async {
        let mut served = 0;
        while waiting.load(std::sync::atomic::Ordering::Relaxed) {
            let response = fresh.get(app.url("/api-docs/openapi.json")).send().await;
            assert!(
                response.as_ref().is_ok_and(|r| r.status().is_success()),
                "a fresh request failed: {response:?}"
            );
            served += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served
    };
    let closing = async {
        let closed = join_all(
            stalled
                .into_iter()
                .map(|(stream, opened)| closed_after(stream, opened, Duration::from_secs(10))),
        )
        .await;
        waiting.store(false, std::sync::atomic::Ordering::Relaxed);
        closed
    };
    let (served, closed) = tokio::join!(prober, closing);
    assert!(served >= 5, "{served} fresh requests");
    let still_open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        still_open, 0,
        "{still_open} half-sent requests still open after 10 s"
    );
    let latest = closed.iter().flatten().max().unwrap();
    let earliest = closed.iter().flatten().min().unwrap();
    assert!(
        *earliest >= Duration::from_millis(1500),
        "closed before the timeout: {earliest:?}"
    );
    assert!(
        *latest <= Duration::from_secs(5),
        "the last one closed {latest:?} after it was opened"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_keep_alive_timeout_and_not_before() {
    let app = spawn_app_with(|s| {
        s.http.header_read_timeout = Duration::from_secs(1);
        s.http.keep_alive_timeout = Duration::from_secs(3);
    })
    .await;
    let mut stream = TcpStream::connect(host_port(&app.address)).await.unwrap();
    // A whole request, then nothing: idle, not stalled mid-request.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: mailroom\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let read = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..read])
    );
    let answered = Instant::now();
    let closed = closed_after(stream, answered, Duration::from_secs(10))
        .await
        .expect("the idle connection is closed");
    assert!(
        closed >= Duration::from_millis(2500) && closed <= Duration::from_secs(5),
        "closed {closed:?} after its last answer (the header timeout is 1 s, the idle one 3 s)"
    );
}

#[tokio::test]
async fn past_the_connection_bound_a_new_client_waits_for_a_free_slot() {
    let app = spawn_app_with(|s| {
        s.http.max_connections = 20;
        s.http.header_read_timeout = Duration::from_secs(2);
        s.http.keep_alive_timeout = Duration::from_secs(2);
    })
    .await;
    let address = host_port(&app.address);
    let idle: Vec<TcpStream> = join_all((0..20).map(|_| TcpStream::connect(&address)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(app.url("/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answered once a slot is free");
    assert!(response.status().is_success());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1200),
        "answered after {waited:?}, while 20 idle connections held every slot"
    );
    drop(idle);
}

#[tokio::test]
async fn the_metrics_listener_closes_half_sent_requests_too() {
    let app = spawn_app_with(|s| s.http.header_read_timeout = Duration::from_secs(1)).await;
    let opened = Instant::now();
    let stream = half_request(&host_port(&app.metrics_address)).await;
    let closed = closed_after(stream, opened, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(closed >= Duration::from_millis(800), "{closed:?}");
}
