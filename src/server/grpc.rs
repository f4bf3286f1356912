//! Serving the accepted gRPC connections over HTTP/2: keepalive pings (a
//! peer that does not answer within the keepalive timeout is closed), and
//! an idle timeout: a connection with no stream open for `idle_timeout` is
//! sent GOAWAY and closed, so a client that sent the preface and then
//! nothing (or one that simply stays connected) cannot hold a descriptor
//! and a `max_connections` slot for good.
//!
//! Why not tonic's own `serve_with_incoming_shutdown`: it has no idle
//! timeout, and which streams a connection has open is only known per
//! connection, where tonic gives no hook. This loop does what tonic's does
//! for the services here (hyper's HTTP/2 server with the same settings,
//! the connection's `ConnectInfo` in each request's extensions, GOAWAY to
//! every connection at shutdown); the one thing left out is tonic's
//! server-side `grpc-timeout`, which the client enforces itself by
//! resetting the stream at its deadline (hyper then drops the call, and
//! the metrics layer counts it as DEADLINE_EXCEEDED).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// After GOAWAY, how long a connection with nothing open may wait for its
/// peer to hang up before it is dropped. hyper's graceful close waits for
/// the peer to acknowledge a PING, which a silent peer never does.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub idle_timeout: Duration,
    /// GOAWAY to a connection this old; `None`: never.
    pub max_connection_age: Option<Duration>,
}

/// Serves every connection `incoming` yields with `service` until
/// `shutdown` completes; then sends each GOAWAY and returns once all of
/// them have closed.
pub async fn serve<IO, S, B>(
    incoming: impl Stream<Item = IO>,
    service: S,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(Some(settings.keepalive_interval))
        .keep_alive_timeout(settings.keepalive_timeout);
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(incoming);
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            _ = &mut shutdown => break,
            io = incoming.next() => match io {
                Some(io) => io,
                None => break,
            },
        };
        connections.spawn(connection(
            io,
            service.clone(),
            builder.clone(),
            settings.idle_timeout,
            settings.max_connection_age,
            closing.clone(),
        ));
    }
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// One connection, until it closes: GOAWAY once it has been idle for
/// `idle_timeout`, once it is `max_age` old, or when `closing` is
/// cancelled; dropped once, after GOAWAY, nothing is open and
/// [`CLOSE_GRACE`] has passed. Calls in progress at GOAWAY finish (a watch
/// keeps its connection until it ends); new calls go to a new connection,
/// which a client balancing over replicas may open elsewhere.
async fn connection<IO, S, B>(
    io: IO,
    service: S,
    builder: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    idle_timeout: Duration,
    max_age: Option<Duration>,
    closing: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let info = io.connect_info();
    let (open, streams) = watch::channel(0usize);
    let open = Arc::new(open);
    let call = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(tonic::body::Body::new);
        // What tonic's server does: auth reads the client certificate here.
        req.extensions_mut().insert(info.clone());
        let stream = OpenStream::new(open.clone());
        let call = service.clone().oneshot(req);
        async move {
            let res = call.await?;
            Ok::<_, Infallible>(res.map(|body| Tracked {
                body,
                _stream: stream,
            }))
        }
    });
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), call);
    tokio::pin!(conn);
    let idle = idle(streams.clone(), idle_timeout);
    tokio::pin!(idle);
    let aged = async {
        match max_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(aged);
    let mut goaway: Option<Instant> = None;
    loop {
        let dropped = async {
            match goaway {
                Some(at) => {
                    tokio::time::sleep_until(at + CLOSE_GRACE).await;
                    let mut streams = streams.clone();
                    let _ = streams.wait_for(|n| *n == 0).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut idle, if goaway.is_none() => {
                tracing::debug!(?idle_timeout, "connection idle: GOAWAY");
                conn.as_mut().graceful_shutdown();
                goaway = Some(Instant::now());
            }
            _ = &mut aged, if goaway.is_none() => {
                tracing::debug!(?max_age, "connection reached max_connection_age: GOAWAY");
                conn.as_mut().graceful_shutdown();
                goaway = Some(Instant::now());
            }
            _ = closing.cancelled(), if goaway.is_none() => {
                conn.as_mut().graceful_shutdown();
                goaway = Some(Instant::now());
            }
            _ = dropped => {
                tracing::debug!("the peer did not hang up after GOAWAY; closed");
                return;
            }
        }
    }
}

/// Completes once no stream has been open for `after` in a row.
async fn idle(mut streams: watch::Receiver<usize>, after: Duration) {
    loop {
        if streams.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        match tokio::time::timeout(after, streams.changed()).await {
            Err(_) => return,
            Ok(Err(_)) => return,
            Ok(Ok(())) => {}
        }
    }
}

/// Counts one open stream, from the call until its response body ends or
/// is dropped (the stream finished or was reset).
struct OpenStream(Arc<watch::Sender<usize>>);

impl OpenStream {
    fn new(open: Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|n| *n += 1);
        OpenStream(open)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its stream counted as open while it lives.
struct Tracked<B> {
    body: B,
    _stream: OpenStream,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_last_stream_to_end_and_restarts_on_each() {
        let (open, streams) = watch::channel(0usize);
        let open = Arc::new(open);
        let after = Duration::from_secs(10);
        let started = Instant::now();
        let stream = OpenStream::new(open.clone());
        let idle = tokio::spawn(idle(streams, after));
        // A stream open for longer than the timeout keeps the connection.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!idle.is_finished());
        drop(stream);
        let closed_at = Instant::now();
        // A short stream in the quiet period starts the wait again.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(OpenStream::new(open.clone()));
        let last = Instant::now();
        idle.await.expect("idle task");
        assert!(Instant::now() >= last + after);
        assert!(Instant::now() > closed_at + after);
        assert!(Instant::now() - started >= Duration::from_secs(40));
    }
}
