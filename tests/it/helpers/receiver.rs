//! A webhook receiver for the tests: a real HTTP server on 127.0.0.1 that records every
//! request and answers as scripted (statuses in turn, then a default).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use serde_json::Value;

use super::wait_for;

/// A request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> String {
        self.headers[name].to_str().unwrap().to_owned()
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// A temporary redirect to `/redirected` on the same server (which records the
    /// requests that follow it).
    Redirect,
    /// Answers nothing for this long (longer than the client waits).
    Hang(Duration),
}

#[derive(Default)]
struct Script {
    received: Vec<Received>,
    redirected: usize,
    replies: VecDeque<Reply>,
    otherwise: Option<Reply>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

async fn redirected(State(script): State<Arc<Mutex<Script>>>) -> StatusCode {
    script.lock().unwrap().redirected += 1;
    StatusCode::OK
}

async fn receive(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let reply = {
        let mut script = script.lock().unwrap();
        script.received.push(Received { headers, body });
        script
            .replies
            .pop_front()
            .or(script.otherwise)
            .unwrap_or(Reply::Status(204))
    };
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::Redirect => (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, "/redirected")],
        )
            .into_response(),
        Reply::Hang(time) => {
            tokio::time::sleep(time).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

impl Receiver {
    /// Answers `replies` in turn, then `otherwise`.
    pub async fn start(replies: &[Reply], otherwise: Reply) -> Receiver {
        let script = Arc::new(Mutex::new(Script {
            replies: replies.iter().copied().collect(),
            otherwise: Some(otherwise),
            ..Script::default()
        }));
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/redirected", post(redirected))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, script, task }
    }

    /// Accepts everything.
    pub async fn accepting() -> Receiver {
        Receiver::start(&[], Reply::Status(200)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// Requests that followed a redirect.
    pub fn redirected(&self) -> usize {
        self.script.lock().unwrap().redirected
    }

    /// From now on, answers `reply`.
    pub fn answer(&self, reply: Reply) {
        let mut script = self.script.lock().unwrap();
        script.replies.clear();
        script.otherwise = Some(reply);
    }

    /// Waits until `count` requests matching `filter` have arrived, and returns them.
    pub async fn wait_for(
        &self,
        count: usize,
        within: Duration,
        filter: impl Fn(&Received) -> bool,
    ) -> Vec<Received> {
        wait_for(within, &format!("{count} webhook requests"), || {
            let matching: Vec<Received> =
                self.received().into_iter().filter(|r| filter(r)).collect();
            async move { (matching.len() >= count).then_some(matching) }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
