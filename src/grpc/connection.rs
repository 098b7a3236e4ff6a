//! Connection limits tonic does not enforce itself: closing a connection that has had no
//! call in flight for `max_connection_idle` (gRPC's MaxConnectionIdle), and cutting off
//! calls that are still running `max_connection_age_grace` after the connection was told
//! to go away (by `max_connection_age` or by shutdown).
//!
//! tonic owns each HTTP/2 connection, so the one handle left is the socket:
//! [`TrackedStream`] wraps every accepted TCP stream and ends it by reporting end of
//! stream to hyper, which then drops the connection. [`CallTrackerLayer`] counts the
//! calls in flight on each connection, through the [`ConnectionInfo`] tonic copies into
//! every request's extensions.
//!
//! Closing at the socket sends no GOAWAY first. So an idle connection is only closed when
//! no request bytes are waiting on it, and a client that starts a call at that very
//! moment sees UNAVAILABLE and retries, as after any dropped connection. A connection
//! reaching `max_connection_age` does get a GOAWAY: tonic sends it.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{body::Body, transport::server::Connected};
use tower::{Layer, Service};

/// The limits one connection lives under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Close after this long without a call in flight.
    pub idle: Option<Duration>,
    /// The age at which tonic sends a GOAWAY.
    pub age: Option<Duration>,
    /// How long calls may run on after a GOAWAY.
    pub grace: Duration,
}

/// Calls in flight on one connection, and since when there have been none.
#[derive(Debug)]
struct Activity {
    in_flight: usize,
    idle_since: Instant,
}

#[derive(Debug)]
pub struct ConnectionActivity(Mutex<Activity>);

impl ConnectionActivity {
    fn new() -> Self {
        ConnectionActivity(Mutex::new(Activity {
            in_flight: 0,
            idle_since: Instant::now(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        // The counters stay consistent even if a holder panicked: every critical section
        // is a single assignment.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a call until the returned guard is dropped.
    pub fn call_started(self: &Arc<Self>) -> CallGuard {
        self.lock().in_flight += 1;
        CallGuard(self.clone())
    }

    /// Since when no call has been in flight; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let activity = self.lock();
        (activity.in_flight == 0).then_some(activity.idle_since)
    }
}

/// One call in flight; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard(Arc<ConnectionActivity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut activity = self.0.lock();
        activity.in_flight -= 1;
        if activity.in_flight == 0 {
            activity.idle_since = Instant::now();
        }
    }
}

/// What tonic copies into the extensions of every request on a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote_addr: Option<SocketAddr>,
    activity: Arc<ConnectionActivity>,
}

/// An accepted connection that ends itself when it has been idle too long or when its
/// calls outlive their grace.
pub struct TrackedStream<IO = TcpStream> {
    inner: IO,
    remote_addr: Option<SocketAddr>,
    activity: Arc<ConnectionActivity>,
    /// The idle limit and the next time to check it; `None`: no limit.
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    grace: Duration,
    /// When the connection is cut off, whatever is in flight; `None`: not planned.
    cutoff: Option<Pin<Box<Sleep>>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    draining: bool,
    ended: bool,
}

impl TrackedStream<TcpStream> {
    pub fn new(stream: TcpStream, limits: Limits, shutdown: CancellationToken) -> Self {
        let remote_addr = stream.peer_addr().ok();
        Self::wrap(stream, remote_addr, limits, shutdown)
    }
}

impl<IO> TrackedStream<IO> {
    pub fn wrap(
        inner: IO,
        remote_addr: Option<SocketAddr>,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        TrackedStream {
            inner,
            remote_addr,
            activity: Arc::new(ConnectionActivity::new()),
            idle: limits
                .idle
                .map(|idle| (idle, Box::pin(tokio::time::sleep(idle)))),
            grace: limits.grace,
            cutoff: limits
                .age
                .map(|age| Box::pin(tokio::time::sleep(age.saturating_add(limits.grace)))),
            shutdown: Box::pin(shutdown.cancelled_owned()),
            draining: false,
            ended: false,
        }
    }

    /// Whether the connection must end now, whatever is in flight.
    fn cut_off(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.draining && self.shutdown.as_mut().poll(cx).is_ready() {
            // Shutdown has sent its GOAWAY; calls get the same grace as after one for age.
            self.draining = true;
            let at = Instant::now() + self.grace;
            match &mut self.cutoff {
                Some(cutoff) if cutoff.deadline() <= at => {}
                Some(cutoff) => cutoff.as_mut().reset(at),
                None => self.cutoff = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.cutoff
            .as_mut()
            .is_some_and(|cutoff| cutoff.as_mut().poll(cx).is_ready())
    }

    /// Whether the connection has been without a call for the idle limit. Re-arms the
    /// check otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((idle, check)) = &mut self.idle else {
            return false;
        };
        while check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.activity.idle_since() {
                Some(since) if since + *idle <= now => return true,
                Some(since) => check.as_mut().reset(since + *idle),
                // Idleness can start no sooner than now.
                None => check.as_mut().reset(now + *idle),
            }
        }
        false
    }

    /// Restarts the idle check, when bytes show the client is active again.
    fn postpone_idle_check(&mut self) {
        if let Some((idle, check)) = &mut self.idle {
            check.as_mut().reset(Instant::now() + *idle);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for TrackedStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        if this.cut_off(cx) {
            tracing::debug!(peer = ?this.remote_addr, "gRPC connection cut off after its grace");
            this.ended = true;
            return Poll::Ready(Ok(()));
        }
        if this.idle_expired(cx) {
            let filled = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                // Nothing is waiting: end the connection (end of stream for hyper).
                Poll::Pending => {
                    tracing::debug!(peer = ?this.remote_addr, "closing an idle gRPC connection");
                    this.ended = true;
                    return Poll::Ready(Ok(()));
                }
                // The client is sending again: a call is probably on its way.
                Poll::Ready(Ok(())) if buf.filled().len() > filled => {
                    this.postpone_idle_check();
                    return Poll::Ready(Ok(()));
                }
                ready => return ready,
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for TrackedStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<IO> Connected for TrackedStream<IO> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            remote_addr: self.remote_addr,
            activity: self.activity.clone(),
        }
    }
}

/// Counts each call on its connection from the request until the end of the response
/// body (streaming calls included).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallTrackerLayer;

impl<S> Layer<S> for CallTrackerLayer {
    type Service = CallTracker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTracker { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallTracker<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for CallTracker<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| info.activity.call_started());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call counted until it is finished or dropped.
struct GuardedBody {
    inner: Body,
    _guard: CallGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    fn tracked(
        limits: Limits,
        shutdown: &CancellationToken,
    ) -> (TrackedStream<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(1024);
        (
            TrackedStream::wrap(server, None, limits, shutdown.clone()),
            client,
        )
    }

    const IDLE: Limits = Limits {
        idle: Some(Duration::from_secs(60)),
        age: None,
        grace: Duration::from_secs(5),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_calls_ends_after_the_idle_limit() {
        let shutdown = CancellationToken::new();
        let (mut server, _client) = tracked(IDLE, &shutdown);
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = server.read(&mut buf).await.unwrap();
        assert_eq!(read, 0, "end of stream");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_in_flight_keeps_the_connection_open() {
        let shutdown = CancellationToken::new();
        let (mut server, mut client) = tracked(IDLE, &shutdown);
        let call = server.connect_info().activity.call_started();
        let started = Instant::now();
        let mut buf = [0u8; 16];

        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(300)).await;
            drop(call);
            client.write_all(b"x").await.unwrap();
            // Keep the client end open while the server reads.
            std::future::pending::<()>().await;
        });
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        assert_eq!(started.elapsed(), Duration::from_secs(300));

        // Idleness counts from the end of the last call.
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), Duration::from_secs(360));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_limit_a_quiet_connection_stays_open() {
        let shutdown = CancellationToken::new();
        let limits = Limits { idle: None, ..IDLE };
        let (mut server, _client) = tracked(limits, &shutdown);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(3600), server.read(&mut buf)).await;
        assert!(read.is_err(), "still open after an hour");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_cut_off_after_the_age_and_its_grace() {
        let shutdown = CancellationToken::new();
        let limits = Limits {
            idle: Some(Duration::from_secs(60)),
            age: Some(Duration::from_secs(600)),
            grace: Duration::from_secs(30),
        };
        let (mut server, _client) = tracked(limits, &shutdown);
        let _call = server.connect_info().activity.call_started();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), Duration::from_secs(630));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_off_calls_after_the_grace() {
        let shutdown = CancellationToken::new();
        let (mut server, _client) = tracked(IDLE, &shutdown);
        let _call = server.connect_info().activity.call_started();
        let started = Instant::now();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            stop.cancel();
        });
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), Duration::from_secs(105));
    }
}
