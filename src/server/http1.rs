//! Serving a small HTTP/1.1 app (the `/metrics` endpoint) on a listener of
//! its own, with limits of its own: at most `max_connections` at once
//! ([`super::conn::accept`]), a complete request head within `head_timeout`
//! (also between requests on a kept-alive connection), and a connection
//! over which no byte moves for `idle_timeout` is closed. Nobody needs a
//! token to reach this listener, so none of that may depend on the peer's
//! good will; and its cap is its own, so it never takes the descriptors the
//! gRPC listener needs. axum's own `serve` has neither a cap nor deadlines.

use super::conn::accept;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The key that sets `max_connections`, named in the log at the cap.
    pub setting: &'static str,
    pub max_connections: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
}

/// How long a connection may take to finish once shutdown asked it to.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` is cancelled, then closes every
/// connection (within [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve(
    listener: TcpListener,
    limits: Limits,
    app: axum::Router,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let take = {
        let (connections, stop) = (connections.clone(), stop.clone());
        move |tcp: TcpStream, slot: tokio::sync::OwnedSemaphorePermit| {
            connections.spawn(connection(tcp, limits, app.clone(), stop.clone(), slot));
        }
    };
    accept(listener, limits.setting, limits.max_connections, take, stop).await;
    connections.close();
    connections.wait().await;
}

async fn connection(
    tcp: TcpStream,
    limits: Limits,
    app: axum::Router,
    stop: CancellationToken,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let io = Quiet::new(tcp, limits.idle_timeout);
    let call = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), call);
    tokio::pin!(conn);
    tokio::select! {
        r = &mut conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

/// A connection whose reads and writes fail once no byte has moved either
/// way for `idle`: a peer that stops reading a response (or trickles
/// nothing) is closed instead of holding its slot.
struct Quiet<S> {
    io: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Quiet<S> {
    fn new(io: S, idle: Duration) -> Self {
        Quiet {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Err once the deadline has passed; registers the waker otherwise, so a
    /// read or write that waits forever is woken at the deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no data moved within idle_timeout",
            ));
        }
        Ok(())
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Quiet<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.moved();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Quiet<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if n > 0 {
            this.moved();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_peer_is_cut_off_and_traffic_keeps_it() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut q = Quiet::new(server, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.write_all(b"hi").await.expect("write");
        assert_eq!(q.read(&mut buf).await.expect("read"), 2);
        // Eight seconds after the last byte: still open.
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.write_all(b"more").await.expect("write");
        assert_eq!(q.read(&mut buf).await.expect("read"), 4);
        // Then nothing: the waiting read fails at the deadline.
        let e = q.read(&mut buf).await.expect_err("must time out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
