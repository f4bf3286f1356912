//! Connecting to a prodgate server: the URL, TLS (a CA to trust, a client
//! certificate for mTLS) and the bearer token every call carries; and, when
//! that fails, [`explain`]: which setting to change and where it came from.

use super::error::chain;
use super::{CliError, ClientArgs, Source};
use crate::pb::promotion_service_client::PromotionServiceClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A server that does not accept the TCP connection (or finish the TLS
/// handshake) in this time is reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Api = PromotionServiceClient<InterceptedService<Channel, Bearer>>;

/// A connected, authenticated client of `prodgate.v1.PromotionService`.
pub struct Client {
    pub api: Api,
    timeout: Duration,
    /// Kept for [`Client::reread_token`], which authenticates the calls
    /// after it with the token `--token-file` holds then.
    channel: Channel,
    token_file: Option<PathBuf>,
}

impl Client {
    /// Reads the token and TLS files, then connects: a server that is down
    /// fails here, as unreachable, rather than on the first call.
    pub async fn connect(g: &ClientArgs) -> Result<Client, CliError> {
        let bearer = Bearer(token(g)?);
        let channel = channel(g).await?;
        Ok(Client {
            api: PromotionServiceClient::with_interceptor(channel.clone(), bearer),
            timeout: g.call_timeout(),
            channel,
            token_file: g.token_file.clone(),
        })
    }

    /// Reads `--token-file` again and authenticates the calls that follow
    /// with what it holds now, so that a `--wait` outliving its OIDC token
    /// goes on with the fresh one a job wrote there meanwhile. A token
    /// given otherwise stays as it was, and so does one from a pipe
    /// (`--token-file <(…)`, /dev/stdin), which holds its token only once.
    pub fn reread_token(&mut self) -> Result<(), CliError> {
        let Some(path) = &self.token_file else {
            return Ok(());
        };
        let read_error = |source| CliError::ReadFile {
            what: "the token file",
            path: path.clone(),
            source,
        };
        if !std::fs::metadata(path).map_err(read_error)?.is_file() {
            return Ok(());
        }
        let bearer = Bearer(Some(file_token(path)?));
        self.api = PromotionServiceClient::with_interceptor(self.channel.clone(), bearer);
        Ok(())
    }

    /// Wraps a unary request with the `--timeout` deadline. Streams get no
    /// deadline: a `--wait` may rightly take as long as the approvers do
    /// (its own limit is in [`super::wait`]).
    pub fn unary<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.timeout);
        r
    }
}

/// A channel to `--server`, with TLS for https:// URLs.
pub async fn channel(g: &ClientArgs) -> Result<Channel, CliError> {
    let bad = |reason: String| CliError::BadServer {
        url: g.server.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(g.server.clone())
        .map_err(|e| bad(chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT);
    match endpoint.uri().scheme_str() {
        Some("https") => {
            endpoint = endpoint
                .tls_config(tls(g)?)
                .map_err(|e| CliError::Tls(chain(&e)))?
        }
        Some("http") => {
            // Sending a client key or expecting a pinned CA over plain text
            // would silently drop the protection the user asked for.
            if g.ca_cert.is_some() || g.cert.is_some() || g.key.is_some() {
                return Err(CliError::TlsWithoutHttps(g.server.clone()));
            }
        }
        _ => return Err(bad("use http://HOST:PORT or https://HOST:PORT".to_owned())),
    }
    endpoint
        .connect()
        .await
        .map_err(|source| CliError::Connect {
            server: g.server.clone(),
            source,
        })
}

fn tls(g: &ClientArgs) -> Result<ClientTlsConfig, CliError> {
    crate::server::install_crypto_provider();
    // System roots, if this build has any; --ca-cert adds a private CA.
    let mut config = ClientTlsConfig::new().with_enabled_roots();
    if let Some(path) = &g.ca_cert {
        let ca = pem("the CA certificate", path, "CERTIFICATE")?;
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let (Some(cert), Some(key)) = (&g.cert, &g.key) {
        config = config.identity(Identity::from_pem(
            pem("the client certificate", cert, "CERTIFICATE")?,
            pem("the client key", key, "PRIVATE KEY")?,
        ));
    }
    Ok(config)
}

/// rustls reports a key passed as a certificate as "peer sent no
/// certificates"; checking the PEM label first names the file instead.
fn pem(what: &'static str, path: &Path, want: &'static str) -> Result<Vec<u8>, CliError> {
    let bytes = read(what, path)?;
    // "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY".
    let label = format!("{want}-----");
    if String::from_utf8_lossy(&bytes).contains(&label) {
        Ok(bytes)
    } else {
        Err(CliError::NotPem {
            path: path.to_owned(),
            want,
        })
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// `--token-file` wins over `--token`/PRODGATE_TOKEN: a file named on the
/// command line is the more deliberate choice than an inherited variable.
fn token(g: &ClientArgs) -> Result<Option<MetadataValue<Ascii>>, CliError> {
    match (&g.token_file, &g.token) {
        (Some(path), _) => file_token(path).map(Some),
        (None, Some(t)) => {
            let from = match g.origin.token {
                Source::Env => "PRODGATE_TOKEN",
                Source::Flag | Source::Default => "--token",
            };
            bearer(t, || from.to_owned()).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// The token in `path`, surrounding whitespace trimmed.
fn file_token(path: &Path) -> Result<MetadataValue<Ascii>, CliError> {
    let from = || format!("--token-file {}", path.display());
    let bytes = read("the token file", path)?;
    let text = String::from_utf8(bytes).map_err(|_| CliError::BadToken { from: from() })?;
    bearer(&text, from)
}

/// The `authorization` value for `token`; `from` names where it came from,
/// for the error.
fn bearer(token: &str, from: impl Fn() -> String) -> Result<MetadataValue<Ascii>, CliError> {
    let t = token.trim();
    if t.is_empty() {
        return Err(CliError::EmptyToken { from: from() });
    }
    let bad = || CliError::BadToken { from: from() };
    if t.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(bad());
    }
    let mut v = MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| bad())?;
    // Keeps the token out of any Debug output of the request.
    v.set_sensitive(true);
    Ok(v)
}

/// Adds `authorization: Bearer <token>` to every call; without a token the
/// server answers UNAUTHENTICATED, which is the message the user needs.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Adds to a failed client call what to change: where the token came from
/// when the server does not accept it, and which setting named the server
/// (and whether it speaks TLS or not) when it cannot be reached. After a
/// `--wait` lost its promotion, the hint is for the failure inside.
pub async fn explain(e: CliError, g: &ClientArgs) -> CliError {
    match e {
        CliError::FollowFailed { id, error } => CliError::FollowFailed {
            id,
            error: Box::new(hint(*error, g).await),
        },
        e => hint(e, g).await,
    }
}

async fn hint(e: CliError, g: &ClientArgs) -> CliError {
    let hint = match &e {
        CliError::Status(s) if s.code() == tonic::Code::Unauthenticated && !e.is_transport() => {
            Some(token_hint(g))
        }
        _ if e.is_local_timeout() => Some(format!(
            "{} accepted the connection but did not answer within {}: is it a prodgate \
             server ({})? If it is just slow, raise --timeout",
            g.server,
            humantime::format_duration(g.call_timeout()),
            server_origin(g),
        )),
        _ if e.is_transport() => {
            match tls_error(e.transport_cause()).and_then(|t| tls_hint(g, t)) {
                Some(hint) => Some(hint),
                None => Some(server_hint(g).await),
            }
        }
        _ => None,
    };
    match hint {
        Some(hint) => CliError::Hinted {
            error: Box::new(e),
            hint,
        },
        None => e,
    }
}

fn token_hint(g: &ClientArgs) -> String {
    let https = g.server.starts_with("https://");
    match (&g.token_file, g.origin.token) {
        (Some(path), _) => format!(
            "the token came from --token-file {}: check that it holds your token",
            path.display()
        ),
        (None, Source::Flag) => "the token came from --token: check it".to_owned(),
        (None, Source::Env) => "the token came from PRODGATE_TOKEN: check it, or give \
                                another with --token TOKEN or --token-file PATH"
            .to_owned(),
        (None, Source::Default) if https => "no token was given: pass --token TOKEN, set \
                                             PRODGATE_TOKEN, use --token-file PATH, or \
                                             present a client certificate (--cert, --key)"
            .to_owned(),
        (None, Source::Default) => "no token was given: pass --token TOKEN, set \
                                    PRODGATE_TOKEN or use --token-file PATH"
            .to_owned(),
    }
}

/// Which setting named the server, as a person would go and change it.
fn server_origin(g: &ClientArgs) -> &'static str {
    match g.origin.server {
        Source::Flag => "from --server",
        Source::Env => "from PRODGATE_SERVER",
        Source::Default => "the default: neither --server nor PRODGATE_SERVER was set",
    }
}

async fn server_hint(g: &ClientArgs) -> String {
    let authority = g
        .server
        .split_once("://")
        .map_or(g.server.as_str(), |(_, rest)| rest)
        .trim_end_matches('/');
    let https = g.server.starts_with("https://");
    match probe(&g.server).await {
        Some(Speaks::Tls) if !https => format!(
            "the server at {authority} speaks TLS: use https://{authority} (with --ca-cert \
             CA.pem unless its certificate is from a public CA)"
        ),
        Some(Speaks::PlainHttp2) if https => format!(
            "the server at {authority} speaks plain HTTP/2, not TLS: use http://{authority}"
        ),
        // Up and speaking TLS, yet the call failed: a TLS 1.3 server that
        // wants a client certificate often just closes the connection.
        Some(Speaks::Tls) if g.cert.is_none() => format!(
            "the server at {authority} is up but ended the connection: if it requires a \
             client certificate (mTLS), pass --cert and --key"
        ),
        Some(Speaks::Tls) => REFUSED_CLIENT_CERT.to_owned(),
        Some(Speaks::PlainHttp2) => {
            format!("the server at {authority} is up again (it may have restarted): try again")
        }
        None => format!(
            "is `prodgate serve` running at {} ({})? Set --server or PRODGATE_SERVER to its URL",
            g.server,
            server_origin(g)
        ),
    }
}

/// The rustls error somewhere in a transport failure's causes. tokio-rustls
/// wraps it in an `io::Error`, whose `source()` skips it, hence `get_ref`.
fn tls_error<'a>(
    mut cause: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a rustls::Error> {
    while let Some(e) = cause {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if wrapped.is_some() {
            return wrapped;
        }
        cause = e.source();
    }
    None
}

/// What to change when the TLS handshake failed on a certificate; other
/// failures (such as a plain-text answer) are left to [`server_hint`].
fn tls_hint(g: &ClientArgs, e: &rustls::Error) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let hint = match e {
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the server's certificate is not issued for the host in {}: use a name it is \
             issued for in --server",
            g.server
        ),
        E::InvalidCertificate(_) => match &g.ca_cert {
            Some(ca) => format!(
                "the server's certificate does not verify against --ca-cert {}: give the CA \
                 that issued it",
                ca.display()
            ),
            None => "the server's certificate is not from a CA this machine trusts: give \
                     the CA that issued it with --ca-cert PATH"
                .to_owned(),
        },
        E::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate: pass --cert and --key".to_owned()
        }
        // TLS 1.3 checks the client's certificate after the client has
        // finished its part: any alert then is about that certificate.
        E::AlertReceived(_) if g.cert.is_some() => REFUSED_CLIENT_CERT.to_owned(),
        _ => return None,
    };
    Some(hint)
}

const REFUSED_CLIENT_CERT: &str = "the server refused the client certificate (--cert): is it \
                                   issued by the server's client_ca?";

/// What answers at an address, as far as a first reply tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Tls,
    PlainHttp2,
}

/// A failed probe is no worse than no probe: it only decides the hint.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP/2 client connection preface followed by an empty SETTINGS frame.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Sends the HTTP/2 preface to the server's address and reads the first
/// bytes of the answer: a plain HTTP/2 server (tonic without TLS) answers
/// with its SETTINGS frame (frame type 4 in the fourth byte), a TLS server
/// with an alert record (content type 21, version 3.x) because the preface
/// is not a TLS record. The transport errors of a mismatch ("frame with
/// invalid size", "corrupt message of type InvalidContentType") only say
/// that something was wrong; this says what.
async fn probe(url: &str) -> Option<Speaks> {
    let uri: http::Uri = url.parse().ok()?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        s.write_all(HTTP2_PREFACE).await.ok()?;
        let mut first = [0u8; 4];
        s.read_exact(&mut first).await.ok()?;
        match first {
            [0x15 | 0x16, 0x03, ..] => Some(Speaks::Tls),
            [_, _, _, 0x04] => Some(Speaks::PlainHttp2),
            _ => None,
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt).await.ok()?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_cannot_be_sent_names_where_it_came_from() {
        let from = || "--token-file /run/t".to_owned();
        let err = |t: &str| bearer(t, from).map(|_| ()).unwrap_err().to_string();
        assert_eq!(err(" \n"), "the token from --token-file /run/t is empty");
        assert_eq!(
            err("two words"),
            "the token from --token-file /run/t must be printable ASCII without spaces"
        );
        let v = bearer(" abc\n", from).expect("a token");
        assert_eq!(v.to_str().ok(), Some("Bearer abc"));
        assert!(v.is_sensitive());
    }

    #[tokio::test]
    async fn a_token_file_is_read_again_and_a_pipe_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").expect("write the token");
        let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let mut c = Client {
            api: PromotionServiceClient::with_interceptor(channel.clone(), Bearer(None)),
            timeout: Duration::from_secs(1),
            channel,
            token_file: Some(path.clone()),
        };
        c.reread_token().expect("a readable token file");
        std::fs::write(&path, "").expect("empty the token file");
        assert!(matches!(c.reread_token(), Err(CliError::EmptyToken { .. })));
        std::fs::remove_file(&path).expect("remove the token file");
        assert!(matches!(c.reread_token(), Err(CliError::ReadFile { .. })));
        // Not a regular file: what was read at the start stays.
        c.token_file = Some(dir.path().to_owned());
        c.reread_token().expect("a directory is left alone");
        c.token_file = None;
        c.reread_token().expect("no --token-file");
    }
}
