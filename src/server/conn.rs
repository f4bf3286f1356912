//! Accepting connections without letting clients exhaust the process. Every
//! listener (gRPC, metrics) accepts through [`accept`]: its own cap on
//! connections at once, and accept errors (out of file descriptors) answered
//! with a growing pause and a throttled log line instead of a busy loop.
//! For gRPC, [`incoming`] also closes a connection unless it finishes the TLS
//! handshake (with TLS) and sends the HTTP/2 preface within
//! `handshake_timeout`.
//!
//! Neither hyper nor tonic bounds the time before the preface, and tonic
//! retries a failed accept at once (a core at 100 % while descriptors are
//! exhausted), so accepting happens here and [`super::grpc`] is handed
//! finished connections. TLS is accepted here too: under tonic's TLS the preface is
//! encrypted and cannot be watched for.

use crate::backoff::Delays;
use crate::telemetry::Throttle;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// First pause after a failed accept; doubles up to [`ACCEPT_BACKOFF_MAX`]
/// while accepting keeps failing. Running out of descriptors lasts until
/// connections close, which takes up to a handshake timeout: retrying sooner
/// than every few milliseconds only burns CPU.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often the accept loop may log the same complaint.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// Accepts on `listener` until `stop` is cancelled, then closes it (new
/// clients are refused at once and go elsewhere). `upgrade` turns a TCP
/// connection into the stream tonic serves: the identity for plain HTTP/2,
/// the TLS handshake otherwise; it runs on its own task, under the deadline.
pub fn incoming<S, F, Fut>(
    listener: TcpListener,
    limits: Limits,
    upgrade: F,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Conn<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
{
    // Finished connections wait here until they are taken; a few suffice
    // because each is taken at once.
    let (tx, rx) = mpsc::channel(16);
    let handshake_timeout = limits.handshake_timeout;
    let take = move |tcp: TcpStream, slot: OwnedSemaphorePermit| {
        let deadline = Instant::now() + handshake_timeout;
        let upgrading = upgrade(tcp);
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout_at(deadline, upgrading).await {
                Ok(Ok(io)) => {
                    // Err: the server stopped; dropping the connection closes it.
                    let expiry = tokio::time::sleep_until(deadline);
                    let _ = tx.send(Conn::new(io, expiry, slot)).await;
                }
                // Per connection and caused by the client: not worth more than debug.
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake not finished in time; closed"),
            }
        });
    };
    tokio::spawn(accept(
        listener,
        "max_connections",
        limits.max_connections,
        take,
        stop,
    ));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The accept loop every listener shares: at most `max_connections`
/// connections at once (`setting` names the key that sets it, for the log),
/// each handed to `take` with the slot it holds until dropped; accept errors
/// back off. Returns when `stop` is cancelled, closing the listener.
pub async fn accept(
    listener: TcpListener,
    setting: &'static str,
    max_connections: usize,
    mut take: impl FnMut(TcpStream, OwnedSemaphorePermit) + Send,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let full = Throttle::new(LOG_EVERY);
    let failing = Throttle::new(LOG_EVERY);
    let mut backoff = Delays::new(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
    loop {
        // A slot first: at the limit, clients wait in the listen backlog
        // (where they cost no descriptor) until a connection closes.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(suppressed) = full.allow() {
                    tracing::warn!(
                        setting,
                        limit = max_connections,
                        suppressed,
                        "connection limit reached; new connections wait until one closes \
                         (raise the setting, within the open-file limit, if this is normal load)"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return, // closed: never happens, the loop owns it
                    },
                    _ = stop.cancelled() => return,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                backoff.reset();
                tcp
            }
            // The client gave up before we took its connection: nothing to wait for.
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                let pause = backoff.next_delay();
                if let Some(suppressed) = failing.allow() {
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        suppressed,
                        "cannot accept connections; if out of file descriptors, raise the \
                         open-file limit (LimitNOFILE) or lower max_connections"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
        };
        // Without it a response written in two pieces waits for the client's
        // delayed ACK: ~40 ms per call.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        take(tcp, slot);
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// An accepted connection: holds one of the `max_connections` slots until
/// dropped, and fails its reads once the deadline passes unless the HTTP/2
/// preface has arrived by then (hyper then closes it).
pub struct Conn<S> {
    io: S,
    /// Bytes of [`PREFACE`] received so far; `None` once a byte differed.
    preface: Option<usize>,
    /// Completes at the deadline; dropped once the preface is complete.
    deadline: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _slot: OwnedSemaphorePermit,
}

impl<S> Conn<S> {
    /// `expiry` completes at the deadline (a timer; tests complete it by hand).
    fn new(
        io: S,
        expiry: impl Future<Output = ()> + Send + 'static,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            io,
            preface: Some(0),
            deadline: Some(Box::pin(expiry)),
            _slot: slot,
        }
    }

    /// Follows the first bytes read. A wrong preface is left to hyper, which
    /// refuses it; the deadline still stands meanwhile.
    fn saw(&mut self, bytes: &[u8]) {
        let Some(seen) = self.preface else { return };
        let want = &PREFACE[seen..];
        let n = want.len().min(bytes.len());
        if bytes[..n] != want[..n] {
            self.preface = None;
            return;
        }
        self.preface = Some(seen + n);
        if seen + n == PREFACE.len() {
            self.deadline = None;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Polled before the read, so the timer wakes a read that waits forever.
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within handshake_timeout",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.deadline.is_some() {
            let filled = buf.filled();
            // Only the bytes this read added.
            let new = &filled[before..];
            this.saw(new);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The inner stream's peer address and, with TLS, the client certificate
/// that [`crate::auth`] reads through `Request::peer_certs`.
impl<S: Connected> Connected for Conn<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::oneshot;

    /// A connection whose deadline passes when the returned sender is used
    /// (or dropped): time is in the test's hands.
    fn conn(io: DuplexStream) -> (Conn<DuplexStream>, oneshot::Sender<()>) {
        let slot = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a fresh semaphore has a permit");
        let (expire, expired) = oneshot::channel();
        let expiry = async move {
            let _ = expired.await;
        };
        (Conn::new(io, expiry, slot), expire)
    }

    #[tokio::test]
    async fn a_silent_connection_fails_at_the_deadline() {
        let (_client, server) = tokio::io::duplex(64);
        let (mut c, expire) = conn(server);
        let mut buf = [0; 16];
        // A read that waits for the client is woken by the deadline.
        let read = tokio::spawn(async move { c.read(&mut buf).await });
        // One turn of this single-threaded runtime: the read is now waiting.
        tokio::task::yield_now().await;
        assert!(!read.is_finished());
        let _ = expire.send(());
        let e = read.await.expect("read task").expect_err("must time out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn the_preface_in_pieces_lifts_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut c, expire) = conn(server);
        let mut buf = [0; 64];
        for piece in [&PREFACE[..3], &PREFACE[3..20], &PREFACE[20..]] {
            client.write_all(piece).await.expect("write");
            let n = c.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], piece);
        }
        let _ = expire.send(());
        client.write_all(b"after").await.expect("write");
        let n = c.read(&mut buf).await.expect("no deadline any more");
        assert_eq!(&buf[..n], b"after");
    }

    #[tokio::test]
    async fn bytes_that_are_not_the_preface_keep_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut c, expire) = conn(server);
        let mut buf = [0; 64];
        let wrong = b"GET / HTTP/1.1\r\n\r\n";
        client.write_all(wrong).await.expect("write");
        c.read_exact(&mut buf[..wrong.len()])
            .await
            .expect("data is passed on");
        // Nor does the real preface after a wrong start lift it.
        client.write_all(PREFACE).await.expect("write");
        c.read_exact(&mut buf[..PREFACE.len()])
            .await
            .expect("data is passed on");
        let _ = expire.send(());
        client.write_all(b"more").await.expect("write");
        let e = c.read(&mut buf).await.expect_err("must time out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
