//! A fault-injecting HTTP/1.1 reverse proxy for integration tests.
//!
//! [`FaultProxy`] owns a loopback listener, the tokio task that serves it and every connection it
//! accepted; dropping it stops them all. It sits between prodgate and a test registry and forwards
//! each request to that one upstream byte for byte (bodies, headers with their case, status codes,
//! chunked or fixed-length framing), rewriting only the `Host` request header to the upstream and
//! an absolute `Location` response header that points at the upstream back to the proxy, so that
//! blob uploads keep going through it. Each downstream connection is kept alive and gets its own
//! kept-alive upstream connection.
//!
//! Tests [`inject`](FaultProxy::inject) [`Fault`]s into chosen requests (an error status, a
//! dropped connection or a delay) and read the log of every request with
//! [`requests`](FaultProxy::requests).

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self as client_http1, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, LOCATION, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Pause after a failed `accept` (such as running out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A reverse proxy on a free loopback port in front of one upstream HTTP/1.1 server.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`, where the proxy listens.
    pub host: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What to do to a matching request instead of (or before) forwarding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an OCI-style JSON error body instead of forwarding; with
    /// `retry_after`, also send `Retry-After: <seconds>`.
    Status {
        /// The HTTP status code.
        code: u16,
        /// Seconds, sent as `Retry-After`.
        retry_after: Option<u64>,
    },
    /// Read the request, then close the connection without answering.
    Drop,
    /// Wait this long, then forward normally.
    Delay(Duration),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status {
                code,
                retry_after: None,
            } => write!(f, "status {code}"),
            Fault::Status {
                code,
                retry_after: Some(seconds),
            } => write!(f, "status {code}, retry-after {seconds}s"),
            Fault::Drop => f.write_str("drop"),
            Fault::Delay(delay) => write!(f, "delay {delay:?}"),
        }
    }
}

/// One request the proxy received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query, as the client sent them.
    pub path: String,
    /// When the request head arrived.
    pub at: Instant,
    /// The injected fault ([`Fault`]'s `Display`), if any.
    pub fault: Option<String>,
    /// Status returned to the client; 0 for [`Fault::Drop`] or while still waiting upstream.
    pub status: u16,
    /// Request body bytes read so far.
    pub request_bytes: u64,
    /// Response body bytes sent so far (0 for HEAD).
    pub response_bytes: u64,
}

impl FaultProxy {
    /// Starts a proxy for `upstream` (`127.0.0.1:PORT`) on a free loopback port. It serves on a
    /// tokio task until dropped.
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy to a loopback port");
        let host = listener
            .local_addr()
            .expect("read the fault proxy's listening address")
            .to_string();
        let upstream_host = HeaderValue::from_str(upstream)
            .unwrap_or_else(|e| panic!("upstream {upstream:?} is not a valid Host value: {e}"));
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            upstream_host,
            upstream_origin: format!("http://{upstream}"),
            proxy_origin: format!("http://{host}"),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultProxy { host, shared, task }
    }

    /// `http://{host}{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.host, path)
    }

    /// Injects `fault` into the next `times` requests whose method equals `method` (or any method
    /// if `"*"`) and whose path and query contain `path_contains`. When several injections match a
    /// request, the earliest one with uses left applies.
    pub fn inject(&self, method: &str, path_contains: &str, fault: Fault, times: usize) {
        if let Fault::Status { code, .. } = fault {
            assert!(
                StatusCode::from_u16(code).is_ok(),
                "inject: {code} is not an HTTP status code"
            );
        }
        if times == 0 {
            return;
        }
        lock(&self.shared.rules).push(Rule {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// Removes every pending injection; the request log is kept.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Every request seen so far, in order of arrival, whether forwarded or faulted.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.shared.log).iter().map(Record::seen).collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task; their
        // upstream connections close once their senders and bodies are gone.
        self.task.abort();
    }
}

struct Shared {
    /// `127.0.0.1:PORT` of the upstream.
    upstream: String,
    upstream_host: HeaderValue,
    /// `http://<upstream>`, the prefix of absolute `Location`s to rewrite.
    upstream_origin: String,
    /// `http://<proxy host>`, what they are rewritten to.
    proxy_origin: String,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Record>>,
}

struct Rule {
    method: String,
    path_contains: String,
    fault: Fault,
    remaining: usize,
}

impl Rule {
    fn matches(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method == method) && path.contains(&self.path_contains)
    }
}

struct Record {
    method: String,
    path: String,
    at: Instant,
    fault: Option<String>,
    tally: Arc<Tally>,
}

impl Record {
    fn seen(&self) -> Seen {
        Seen {
            method: self.method.clone(),
            path: self.path.clone(),
            at: self.at,
            fault: self.fault.clone(),
            status: self.tally.status.load(Ordering::Acquire),
            request_bytes: self.tally.request_bytes.load(Ordering::Acquire),
            response_bytes: self.tally.response_bytes.load(Ordering::Acquire),
        }
    }
}

/// The parts of a [`Record`] that change while its exchange is under way.
#[derive(Default)]
struct Tally {
    status: AtomicU16,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

impl Shared {
    /// Uses up one application of the first rule matching the request, if any.
    fn take_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = lock(&self.rules);
        let index = rules.iter().position(|rule| rule.matches(method, path))?;
        let rule = &mut rules[index];
        let fault = rule.fault.clone();
        rule.remaining -= 1;
        if rule.remaining == 0 {
            rules.remove(index);
        }
        Some(fault)
    }

    fn record(&self, method: &str, path: &str, at: Instant, fault: Option<&Fault>) -> Arc<Tally> {
        let tally = Arc::new(Tally::default());
        lock(&self.log).push(Record {
            method: method.to_owned(),
            path: path.to_owned(),
            at,
            fault: fault.map(Fault::to_string),
            tally: Arc::clone(&tally),
        });
        tally
    }

    /// `value` with an upstream origin replaced by the proxy's, if it starts with one.
    fn rewrite_location(&self, value: &HeaderValue) -> Option<HeaderValue> {
        let rest = value.to_str().ok()?.strip_prefix(&self.upstream_origin)?;
        if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
            return None; // a different port that merely starts with the same digits
        }
        HeaderValue::from_str(&format!("{}{rest}", self.proxy_origin)).ok()
    }
}

/// The proxy never panics while holding a lock, and a poisoned log is still worth reading.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, Arc::clone(&shared)));
            }
            Err(e) => {
                eprintln!("fault proxy: accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let connection = Arc::new(Connection {
        shared,
        upstream: Mutex::new(None),
    });
    let service = service_fn(move |request| {
        let connection = Arc::clone(&connection);
        async move { connection.handle(request).await }
    });
    let served = server_http1::Builder::new()
        .keep_alive(true)
        .preserve_header_case(true)
        // Forwarded answers carry the upstream's own Date, or none.
        .auto_date_header(false)
        // A timeout would need a timer and could close idle kept-alive connections.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        let dropped = e.source().is_some_and(|source| source.is::<Dropped>());
        if !dropped && !e.is_incomplete_message() {
            eprintln!("fault proxy: client connection: {e}");
        }
    }
}

/// The error that makes hyper close a client connection without answering.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl StdError for Dropped {}

/// Request body as sent upstream.
type UpBody = Counted<Incoming>;
/// Response body before counting: forwarded from upstream, or made up here.
type OutBody = Either<Incoming, Full<Bytes>>;

/// One client connection and the upstream connection that serves it.
struct Connection {
    shared: Arc<Shared>,
    /// Idle upstream connection; `None` before the first request, or after one was lost.
    upstream: Mutex<Option<SendRequest<UpBody>>>,
}

impl Connection {
    async fn handle(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Counted<OutBody>>, Dropped> {
        let at = Instant::now();
        let method = request.method().as_str().to_owned();
        let path = request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().to_string(), |pq| pq.as_str().to_owned());
        let fault = self.shared.take_fault(&method, &path);
        let tally = self.shared.record(&method, &path, at, fault.as_ref());
        let (parts, body) = request.into_parts();
        let body = Counted::new(body, Arc::clone(&tally), Side::Request);
        let response = match fault {
            Some(Fault::Drop) => {
                drain(body).await;
                return Err(Dropped);
            }
            Some(Fault::Status { code, retry_after }) => {
                drain(body).await;
                error_response(code, retry_after, &path)
            }
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                self.forward(parts, body).await
            }
            None => self.forward(parts, body).await,
        };
        tally
            .status
            .store(response.status().as_u16(), Ordering::Release);
        Ok(response.map(|body| Counted::new(body, tally, Side::Response)))
    }

    /// Forwards the request upstream; a 502 if that fails.
    async fn forward(&self, mut parts: Parts, body: UpBody) -> Response<OutBody> {
        if parts.uri.authority().is_some() {
            // Absolute-form from a proxy-aware client: the origin server wants origin-form.
            let origin_form = parts
                .uri
                .path_and_query()
                .cloned()
                .map(|pq| Uri::builder().path_and_query(pq).build());
            match origin_form {
                Some(Ok(uri)) => parts.uri = uri,
                _ => return text_response(StatusCode::BAD_REQUEST, "fault proxy: bad target"),
            }
        }
        parts
            .headers
            .insert(HOST, self.shared.upstream_host.clone());
        match self.send(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                if let Some(location) = parts.headers.get_mut(LOCATION)
                    && let Some(rewritten) = self.shared.rewrite_location(location)
                {
                    *location = rewritten;
                }
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) => {
                let message = format!("fault proxy: upstream {}: {e}", self.shared.upstream);
                eprintln!("{message}");
                text_response(StatusCode::BAD_GATEWAY, &message)
            }
        }
    }

    /// Sends on the kept-alive upstream connection, opening a new one if there is none or it was
    /// closed. A request is retried once on a new connection only if it never left.
    async fn send(&self, mut request: Request<UpBody>) -> Result<Response<Incoming>, String> {
        let idle = lock(&self.upstream).take();
        let mut sender = match idle {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        for retry in [true, false] {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        *lock(&self.upstream) = Some(sender);
                        return Ok(response);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if retry => request = unsent,
                        _ => return Err(e.into_error().to_string()),
                    },
                }
            }
            if retry {
                sender = self.connect().await?;
            }
        }
        Err("the upstream connection closed before the request could be sent".to_owned())
    }

    async fn connect(&self) -> Result<SendRequest<UpBody>, String> {
        let upstream = &self.shared.upstream;
        let stream = TcpStream::connect(upstream)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = client_http1::Builder::new()
            .preserve_header_case(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("fault proxy: connection to {upstream}: {e}");
            }
        });
        Ok(sender)
    }
}

/// Reads and discards a request body, so the connection can stay alive after a made-up answer.
async fn drain(mut body: UpBody) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// An OCI distribution-style error answer.
fn error_response(code: u16, retry_after: Option<u64>, path: &str) -> Response<OutBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let error_code = match status.as_u16() {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 if path.contains("/manifests/") => "MANIFEST_UNKNOWN",
        404 if path.contains("/blobs/uploads/") => "BLOB_UPLOAD_UNKNOWN",
        404 if path.contains("/blobs/") => "BLOB_UNKNOWN",
        404 => "NAME_UNKNOWN",
        405 => "UNSUPPORTED",
        429 => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    };
    let reason = status.canonical_reason().unwrap_or("error");
    let body = format!(
        r#"{{"errors":[{{"code":"{error_code}","message":"{reason} (injected by the test fault proxy)","detail":null}}]}}"#
    );
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some(seconds) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn text_response(status: StatusCode, message: &str) -> Response<OutBody> {
    let body = Bytes::from(format!("{message}\n"));
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// A body that adds the length of every data frame it yields to its exchange's [`Tally`].
struct Counted<B> {
    inner: B,
    tally: Arc<Tally>,
    side: Side,
}

impl<B> Counted<B> {
    fn new(inner: B, tally: Arc<Tally>, side: Side) -> Self {
        Counted { inner, tally, side }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let counter = match this.side {
                Side::Request => &this.tally.request_bytes,
                Side::Response => &this.tally.response_bytes,
            };
            // usize always fits in u64 on the platforms Rust supports.
            counter.fetch_add(data.len() as u64, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
