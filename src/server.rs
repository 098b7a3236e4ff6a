//! Serving an axum [`Router`] on a bound listener (HTTP/1.1, and HTTP/2 with prior
//! knowledge) so that clients which connect and then do nothing, or send half a
//! request, cannot hold the process's connections and file descriptors:
//!
//! - at most `max_connections` are open at once; past that, new ones wait in the
//!   listen backlog until one closes (they are not refused, and not accepted either);
//! - a connection that started a request (sent its first byte) but has not sent the
//!   whole head within `header_read_timeout` is closed;
//! - a connection with no request in flight and nothing sent for `keep_alive_timeout`
//!   is closed.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a kept-alive
//! connection waits for its next request, so it would close nginx's upstream connections
//! after a few idle seconds, sooner than nginx expects (its `keepalive_timeout` is 60 s)
//! and racing the requests nginx sends on them. Here the head timer starts with the
//! first byte of a request, and idleness has its own, longer, limit.
//!
//! On shutdown the listener stops accepting, each connection finishes the requests it
//! is serving (idle ones close at once), and `serve` returns when all are closed.

use std::{
    io,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of descriptors, or a connection reset before it was taken:
                    // nothing to do but wait a moment and go on.
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Responses are written whole; there is nothing to gain from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, app, limits, shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// What a connection's watchdog knows: when it last became idle, whether a request has
/// begun since, and how many are being answered.
struct Activity {
    /// The time base of the millisecond counters below.
    origin: Instant,
    /// When the connection last had nothing in flight (ms since `origin`).
    idle_since: AtomicU64,
    /// When the first byte after `idle_since` arrived (ms since `origin`, +1; 0: none).
    request_started: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            idle_since: AtomicU64::new(0),
            request_started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.request_started.load(Ordering::Relaxed) == 0
        {
            self.request_started
                .store(self.now() + 1, Ordering::Relaxed);
        }
    }

    fn request_began(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.request_started.store(0, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
            self.request_started.store(0, Ordering::Relaxed);
        }
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.now();
        match self.request_started.load(Ordering::Relaxed) {
            0 => {
                let idle = now.saturating_sub(self.idle_since.load(Ordering::Relaxed));
                (idle >= limits.keep_alive_timeout.as_millis() as u64).then_some("idle")
            }
            started => {
                let reading = now.saturating_sub(started - 1);
                (reading >= limits.header_read_timeout.as_millis() as u64)
                    .then_some("request head not received in time")
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = Tracked {
        inner: TowerToHyperService::new(
            app.map_request(|request: Request<Incoming>| request.map(Body::new)),
        ),
        activity: activity.clone(),
    };
    let builder = Builder::new(TokioExecutor::new());
    let mut connection = pin!(builder.serve_connection_with_upgrades(io, service));
    let mut watchdog = tokio::time::interval(watch_period(&limits));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::trace!(error = %err, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = watchdog.tick() => {
                if let Some(reason) = activity.expired(&limits) {
                    tracing::debug!(reason, "closing a connection");
                    return;
                }
            }
        }
    }
}

/// How often a connection checks its timers: often enough to close within about a tenth
/// of the shorter one.
fn watch_period(limits: &Limits) -> Duration {
    (limits.header_read_timeout.min(limits.keep_alive_timeout) / 10)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Counts a request as in flight from the moment hyper hands it over until its response
/// is ready (the bodies mailroom sends are written right after).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        self.activity.request_began();
        let guard = InFlight(self.activity.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(guard);
            response
        })
    }
}

/// Ends a request's time in flight however its future ends (answered or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The connection's socket, telling the watchdog when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's limit of open files to its hard limit, so `max_connections`,
/// not the operating system's default soft limit (often 1024), decides how many clients
/// are served. Answers the limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: 10,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_keep_alive_timeout() {
        let activity = Activity::new();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(activity.expired(&limits()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.expired(&limits()), Some("idle"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_request_head_must_arrive_within_the_header_timeout() {
        let activity = Activity::new();
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.bytes_arrived();
        tokio::time::advance(Duration::from_secs(9)).await;
        activity.bytes_arrived();
        assert_eq!(
            activity.expired(&limits()),
            None,
            "more bytes do not reset the timer"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            activity.expired(&limits()),
            Some("request head not received in time")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_never_expires_and_idleness_counts_from_its_end() {
        let activity = Activity::new();
        activity.bytes_arrived();
        activity.request_began();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(activity.expired(&limits()), None);
        activity.request_ended();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(activity.expired(&limits()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.expired(&limits()), Some("idle"));
    }
}
