//! Connecting to a prodgate server: the URL, TLS (a CA to trust, a client
//! certificate for mTLS) and the bearer token every call carries.

use super::error::chain;
use super::{CliError, GlobalArgs};
use crate::pb::promotion_service_client::PromotionServiceClient;
use std::path::Path;
use std::time::Duration;
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
}

impl Client {
    /// Reads the token and TLS files, then connects: a server that is down
    /// fails here, as unreachable, rather than on the first call.
    pub async fn connect(g: &GlobalArgs) -> Result<Client, CliError> {
        let bearer = Bearer(token(g)?);
        let channel = channel(g).await?;
        Ok(Client {
            api: PromotionServiceClient::with_interceptor(channel, bearer),
            timeout: g.timeout,
        })
    }

    /// Wraps a unary request with the `--timeout` deadline. Streams get no
    /// deadline: a `--wait` may rightly take as long as the approvers do.
    pub fn unary<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.timeout);
        r
    }
}

/// A channel to `--server`, with TLS for https:// URLs.
pub async fn channel(g: &GlobalArgs) -> Result<Channel, CliError> {
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
    endpoint.connect().await.map_err(|e| CliError::Connect {
        server: g.server.clone(),
        reason: chain(&e),
    })
}

fn tls(g: &GlobalArgs) -> Result<ClientTlsConfig, CliError> {
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
fn token(g: &GlobalArgs) -> Result<Option<MetadataValue<Ascii>>, CliError> {
    let token = match (&g.token_file, &g.token) {
        (Some(path), _) => {
            let bytes = read("the token file", path)?;
            let text = String::from_utf8(bytes).map_err(|_| CliError::BadToken)?;
            Some(text.trim().to_owned())
        }
        (None, Some(t)) => Some(t.trim().to_owned()),
        (None, None) => None,
    };
    match token {
        None => Ok(None),
        Some(t) if t.is_empty() => Err(CliError::EmptyToken),
        Some(t) if t.chars().any(|c| !c.is_ascii_graphic()) => Err(CliError::BadToken),
        Some(t) => {
            let mut v =
                MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| CliError::BadToken)?;
            // Keeps the token out of any Debug output of the request.
            v.set_sensitive(true);
            Ok(Some(v))
        }
    }
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
