//! A registry (or token service) of the tests' own that misbehaves on purpose, for what
//! Distribution never does: name a token realm on another host, redirect to another server,
//! serve a 100 MB manifest, stream a body without end.
//!
//! [`Hostile`] owns a loopback listener (plain HTTP, or HTTPS with a certificate from a
//! [`TestCa`]) and the task that serves it; dropping it stops both. Every request is answered by
//! the test's handler and recorded, so a test can also prove a server was *not* contacted, or was
//! contacted without credentials. Generated bodies are produced as hyper asks for them and
//! counted, so a test can tell how much of a large body the client actually took.

use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http_body_util::{Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// One request a hostile server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn host(&self) -> Option<&str> {
        self.headers.get(HOST).and_then(|v| v.to_str().ok())
    }

    pub fn authorization(&self) -> Option<&str> {
        self.headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// What a hostile server answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A complete body, sent with its `Content-Length`.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// `len` bytes of `x` made as they are sent: with a `Content-Length` when `sized`, else
    /// chunked with none.
    Generated {
        status: u16,
        headers: Vec<(String, String)>,
        len: u64,
        sized: bool,
    },
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// 200 with `body` as an OCI image manifest, with its digest header.
    pub fn manifest(body: &[u8]) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![
                ("content-type".into(), MANIFEST_TYPE.into()),
                ("docker-content-digest".into(), digest_of(body)),
            ],
            body: body.to_vec(),
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: &str) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Full { headers, .. } | Reply::Generated { headers, .. } => {
                headers.push((name.to_owned(), value.to_owned()))
            }
        }
        self
    }
}

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A small valid OCI image manifest; `salt` makes distinct ones.
pub fn manifest_json(salt: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[],"annotations":{{"salt":"{salt}"}}}}"#,
        "0".repeat(64)
    )
    .into_bytes()
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

type Handler = Box<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Shared {
    handler: Handler,
    seen: Mutex<Vec<Seen>>,
    /// Bytes of generated bodies handed to hyper so far.
    generated: AtomicU64,
}

/// A hostile HTTP(S) server on a free loopback port.
pub struct Hostile {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Hostile {
    /// Plain HTTP.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Hostile {
        Self::listen(None, Box::new(handler)).await
    }

    /// HTTPS with a certificate from `ca` for `127.0.0.1` and `localhost`.
    pub async fn start_tls(
        ca: &TestCa,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Hostile {
        Self::listen(Some(ca.acceptor.clone()), Box::new(handler)).await
    }

    async fn listen(tls: Option<TlsAcceptor>, handler: Handler) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a hostile server to a loopback port");
        let host = listener
            .local_addr()
            .expect("read the hostile server's address")
            .to_string();
        let shared = Arc::new(Shared {
            handler,
            seen: Mutex::new(Vec::new()),
            generated: AtomicU64::new(0),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(accept_loop(listener, tls, Arc::clone(&shared)));
        Hostile {
            host,
            scheme,
            shared,
            task,
        }
    }

    /// `scheme://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Bytes of [`Reply::Generated`] bodies handed to the connection so far.
    pub fn generated_bytes(&self) -> u64 {
        self.shared.generated.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let (tls, shared) = (tls.clone(), Arc::clone(&shared));
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let reply = answer(&shared, req);
                async move { Ok::<_, Infallible>(reply) }
            });
            // Errors here are the client hanging up mid-body, which is what
            // several tests provoke.
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

type ReplyBody = Either<Full<Bytes>, Generated>;

fn answer(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ReplyBody> {
    let seen = Seen {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req.headers().clone(),
    };
    let reply = (shared.handler)(&seen);
    shared
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(seen);
    let (status, headers, body) = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => (status, headers, Either::Left(Full::new(Bytes::from(body)))),
        Reply::Generated {
            status,
            headers,
            len,
            sized,
        } => (
            status,
            headers,
            Either::Right(Generated {
                left: len,
                sized,
                shared: Arc::clone(shared),
            }),
        ),
    };
    let mut res = Response::builder().status(status);
    for (name, value) in headers {
        res = res.header(name, value);
    }
    res.body(body).expect("a valid test response")
}

const CHUNK: usize = 64 * 1024;
static FILL: [u8; CHUNK] = [b'x'; CHUNK];

/// A body of `x` produced only as hyper polls for it.
pub struct Generated {
    left: u64,
    sized: bool,
    shared: Arc<Shared>,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64);
        self.left -= n;
        self.shared.generated.fetch_add(n, Ordering::SeqCst);
        let n = usize::try_from(n).unwrap_or(CHUNK);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}

/// A CA made for one test, its certificate in a PEM file (for a client's
/// `SSL_CERT_FILE`) and a server certificate it issued for `127.0.0.1` and
/// `localhost`.
pub struct TestCa {
    pub ca_file: PathBuf,
    /// The server certificate and its key (PEM), for a server other than
    /// [`Hostile`] (e.g. `docker-registry`) to serve.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    acceptor: TlsAcceptor,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hostile test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params")
            .signed_by(&key, &issuer)
            .expect("server cert");
        let dir = tempfile::Builder::new()
            .prefix("prodgate-hostile-ca-")
            .tempdir()
            .expect("temp dir for the CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write the CA certificate");
        let cert_file = dir.path().join("server.pem");
        std::fs::write(&cert_file, cert.pem()).expect("write the server certificate");
        let key_file = dir.path().join("server.key");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the server key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server TLS config");
        TestCa {
            ca_file,
            cert_file,
            key_file,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            _dir: dir,
        }
    }
}
