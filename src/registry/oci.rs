//! [`Registry`] over the OCI distribution HTTP API. The three calls a tag move
//! needs (GET a manifest by digest, HEAD a tag, PUT a manifest), the GET
//! of a small blob the signature gate needs, and what attaching a record
//! needs (a monolithic blob upload: POST, then PUT to the `Location` on the
//! registry's own origin; a manifest PUT by digest or tag; an index GET by
//! tag) are made directly with reqwest, so prodgate sees every status and header
//! (`Retry-After`, `Docker-Content-Digest`, `Content-Type`) and makes no
//! request it does not need. Every request has a deadline.
//!
//! prodgate answers a registry's 401 challenge itself rather than through
//! oci-client, which sends the password to whatever token realm a registry
//! names and reads answers of any size. The rules, each enforced before a
//! request is sent:
//!
//! - Basic credentials go only to the configured registry: the manifest URLs
//!   prodgate builds from its configured host, and redirects only within the
//!   same origin. "Another host" means another scheme, host or port, compared
//!   exactly as written, with no name resolution: `127.0.0.1:5000` and
//!   `localhost:5000` are different hosts. A redirect anywhere else is refused
//!   (not followed, not even without credentials), so a registry cannot send
//!   prodgate's requests to a host nobody configured.
//! - A Bearer challenge's token realm gets the credentials only over HTTPS, on
//!   any host (Docker Hub and others keep their token service elsewhere), or
//!   over plain HTTP when the registry itself is configured `insecure = true`
//!   (its traffic is plain text anyway). Any other realm is refused, with an
//!   error naming it and the rule, and receives no request at all.
//! - A token is asked for one repository, `pull` to read and `pull,push` to
//!   push, and reused until shortly before its `expires_in`; then the next
//!   one is fetched before the request, not after a refusal. Headers made
//!   with credentials that have since been read again (a rotated secret,
//!   see [`super::credentials`]) are not reused.
//! - A registry's `ca_cert` is trusted for that registry and the token realm
//!   it names, by a client of its own; a certificate that does not verify
//!   is refused, not retried, with a message naming `ca_cert`.
//! - What prodgate pushes is capped before it is sent: a blob at
//!   [`PUSH_BLOB_LIMIT`], a manifest at [`MANIFEST_LIMIT`]; a push asks for
//!   a `pull,push` token like a tag move.
//! - Every body is read with a cap: a manifest (or index) up to [`MANIFEST_LIMIT`]
//!   (`Content-Length` checked first, a streamed body counted as it arrives),
//!   a blob (only a signature's payload is ever read) up to the caller's cap,
//!   token answers and error bodies up to [`BODY_LIMIT`]; registry text
//!   repeated in an error is cut to [`ECHO_LIMIT`] bytes.

use super::credentials::{Credentials, Current};
use super::{
    INDEX_MEDIA_TYPE, MANIFEST_LIMIT, Manifest, Moved, PUSH_BLOB_LIMIT, Registry, RegistryError,
};
use crate::body::read_capped;
use crate::config::{Config, CredentialSource, RegistryCredentials};
use crate::domain::names::Repository;
use async_trait::async_trait;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Media types a copied manifest may have; without the index types a
/// registry answers 404 for a multi-arch tag.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

const DIGEST_HEADER: &str = "docker-content-digest";

/// The most prodgate reads of any answer that is not a manifest: a token
/// answer (a JWT of a few KiB) or an error body, of which only
/// [`ECHO_LIMIT`] bytes are ever shown.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How much of a registry's own text (an error body, a realm) an error
/// message repeats. Control characters are escaped where messages are
/// printed, not here.
pub const ECHO_LIMIT: usize = 512;

/// Longer than any digest of a registered algorithm (sha512: 135 bytes).
const DIGEST_MAX: usize = 256;

/// Redirects followed within one origin before prodgate gives up
/// (reqwest's default limit).
const MAX_REDIRECTS: usize = 10;

/// One registry prodgate may talk to.
#[derive(Debug, Clone)]
pub struct RegistryHost {
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// As read at start-up.
    pub credentials: Option<RegistryCredentials>,
    /// Where to read them again when they rotate.
    pub credential_source: CredentialSource,
    /// Certificates (DER) trusted for this registry and its token realm,
    /// besides the system's roots: `ca_cert`.
    pub ca_certificates: Vec<Vec<u8>>,
}

impl RegistryHost {
    /// The config's `[[registry]]` entries: credentials (and where to read
    /// them again), `insecure`, `ca_cert`.
    pub fn configured(config: &Config) -> Vec<RegistryHost> {
        config
            .registries
            .iter()
            .map(|r| RegistryHost {
                host: r.host.clone(),
                insecure: r.insecure,
                credentials: r.credentials.clone(),
                credential_source: r.credential_source.clone(),
                ca_certificates: r
                    .ca_cert
                    .as_ref()
                    .map(|c| c.certificates.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// A registry without credentials or extra roots.
    pub fn anonymous(host: &str, insecure: bool) -> Self {
        Self {
            host: host.to_owned(),
            insecure,
            credentials: None,
            credential_source: CredentialSource::None,
            ca_certificates: Vec::new(),
        }
    }
}

/// A configured registry as the client uses it.
struct Host {
    name: String,
    insecure: bool,
    /// Its own client when it has a `ca_cert`, so that CA is trusted for
    /// this registry (and its token realm) only.
    http: reqwest::Client,
    credentials: Credentials,
}

pub struct OciRegistry {
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// For registries without a `ca_cert` (and hosts nobody configured,
    /// which are reached anonymously).
    http: reqwest::Client,
    hosts: Vec<Host>,
    /// Authorization header per (repository, push?) once a registry asked for one.
    authorizations: Mutex<HashMap<(String, bool), Authorization>>,
}

/// An `Authorization` header a registry asked for, and how long to use it.
struct Authorization {
    header: HeaderValue,
    /// What the registry asked for, to make the next header without first
    /// being refused once more.
    challenge: Challenge,
    /// [`Current::generation`] of the credentials it was made with: once they
    /// are read again and differ, it is not reused.
    generation: u64,
    /// For a token: when to fetch a new one (shortly before it expires).
    renew_at: Option<Instant>,
}

/// A token from a token service, and how long it may be used.
struct Token {
    token: String,
    lifetime: Duration,
}

/// A token's lifetime when the answer has no `expires_in` (Distribution's
/// token specification: 60 seconds).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// How long before its expiry a token is renewed: a tenth of its lifetime,
/// at most this, so that a request never goes out with a token that expires
/// on the way.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(30);

fn renew_at(sent: Instant, lifetime: Duration) -> Instant {
    sent + lifetime - (lifetime / 10).min(TOKEN_RENEW_MARGIN)
}

/// A response reduced to what the callers read.
/// What a request is about.
#[derive(Debug, Clone, Copy)]
enum Resource<'a> {
    /// A manifest by tag or digest, read up to [`MANIFEST_LIMIT`].
    Manifest(&'a str),
    /// A blob by digest (checked to be `sha256:<hex>` before it enters a
    /// URL), read up to `limit` bytes.
    Blob { digest: &'a str, limit: usize },
    /// An image index by tag, asked for as [`INDEX_MEDIA_TYPE`] only, read
    /// up to [`MANIFEST_LIMIT`].
    Index(&'a str),
    /// The start of a blob upload (`POST …/blobs/uploads/`).
    Uploads,
    /// Where the registry said to PUT an upload's bytes (its `Location`,
    /// checked to be on the registry's own origin), with `digest=` added.
    Upload(&'a Url),
}

impl Resource<'_> {
    /// The metric label's noun.
    fn kind(&self) -> &'static str {
        match self {
            Resource::Manifest(_) => "manifest",
            Resource::Blob { .. } => "blob",
            Resource::Index(_) => "index",
            Resource::Uploads | Resource::Upload(_) => "upload",
        }
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// What a registry's `WWW-Authenticate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    /// Fetch a token from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// Basic, an unknown scheme, or no usable challenge: present the
    /// configured credentials to the registry itself, if any.
    Other,
}

fn http_client(timeout: Duration, roots: &[Vec<u8>]) -> Result<reqwest::Client, String> {
    let roots = roots
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a ca_cert certificate is not usable: {e}"))?;
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .no_proxy()
        .redirect(redirect_policy())
        .user_agent(concat!("prodgate/", env!("CARGO_PKG_VERSION")))
        // Added to the system's roots, not instead of them: a token realm
        // elsewhere may well have a public certificate.
        .tls_certs_merge(roots)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

impl OciRegistry {
    /// The client `serve` uses, and `verify-image --config`: the config's
    /// `[[registry]]` entries ([`RegistryHost::configured`]) and
    /// `registry_timeout`; any other host is anonymous HTTPS with the
    /// system's roots.
    pub fn from_config(
        config: &Config,
        metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    ) -> Result<Self, RegistryError> {
        Self::new(
            RegistryHost::configured(config),
            config.registry_timeout,
            metrics,
        )
    }

    pub fn new(
        hosts: Vec<RegistryHost>,
        timeout: Duration,
        metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    ) -> Result<Self, RegistryError> {
        let http = http_client(timeout, &[]).map_err(|message| RegistryError::Protocol {
            registry: String::new(),
            message,
        })?;
        let hosts = hosts
            .into_iter()
            .map(|h| {
                let http = if h.ca_certificates.is_empty() {
                    http.clone()
                } else {
                    http_client(timeout, &h.ca_certificates).map_err(|message| {
                        RegistryError::Protocol {
                            registry: h.host.clone(),
                            message,
                        }
                    })?
                };
                Ok(Host {
                    credentials: Credentials::new(
                        &h.host,
                        h.credential_source,
                        h.credentials,
                        timeout,
                    ),
                    name: h.host,
                    insecure: h.insecure,
                    http,
                })
            })
            .collect::<Result<_, RegistryError>>()?;
        Ok(Self {
            metrics,
            http,
            hosts,
            authorizations: Mutex::new(HashMap::new()),
        })
    }

    fn host(&self, repo: &Repository) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == repo.host())
    }

    fn http(&self, repo: &Repository) -> &reqwest::Client {
        self.host(repo).map_or(&self.http, |h| &h.http)
    }

    fn insecure(&self, repo: &Repository) -> bool {
        self.host(repo).is_some_and(|h| h.insecure)
    }

    async fn credentials(&self, repo: &Repository) -> Current {
        match self.host(repo) {
            Some(h) => h.credentials.current().await,
            None => Current {
                credentials: None,
                generation: 0,
            },
        }
    }

    /// After a refusal: whether the credentials changed when read again.
    async fn refresh(&self, repo: &Repository) -> bool {
        match self.host(repo) {
            Some(h) => h.credentials.refresh().await,
            None => false,
        }
    }

    fn manifest_url(&self, repo: &Repository, reference: &str) -> String {
        let scheme = if self.insecure(repo) { "http" } else { "https" };
        format!(
            "{scheme}://{}/v2/{}/manifests/{reference}",
            repo.host(),
            repo.path()
        )
    }

    fn uploads_url(&self, repo: &Repository) -> String {
        let scheme = if self.insecure(repo) { "http" } else { "https" };
        format!(
            "{scheme}://{}/v2/{}/blobs/uploads/",
            repo.host(),
            repo.path()
        )
    }

    fn blob_url(&self, repo: &Repository, digest: &str) -> String {
        let scheme = if self.insecure(repo) { "http" } else { "https" };
        format!(
            "{scheme}://{}/v2/{}/blobs/{digest}",
            repo.host(),
            repo.path()
        )
    }

    /// The header to send first. One made with the current credentials (a
    /// token: not yet due for renewal) is reused; otherwise, once a registry
    /// has asked for credentials, the next header is made right away (a new
    /// token fetched shortly before the old one expires) rather than after
    /// another 401. A renewal that fails sends nothing: the 401 that follows
    /// negotiates again and reports what went wrong.
    async fn first_authorization(
        &self,
        repo: &Repository,
        push: bool,
        current: &Current,
    ) -> Option<HeaderValue> {
        let now = Instant::now();
        let renew = {
            let cached = self.authorizations.lock().ok()?;
            let a = cached.get(&(repo.to_string(), push))?;
            if a.generation == current.generation && a.renew_at.is_none_or(|at| now < at) {
                return Some(a.header.clone());
            }
            a.challenge.clone()
        };
        self.authorize(repo, push, &renew, current)
            .await
            .ok()
            .flatten()
    }

    /// Answers the registry's 401 `challenge` with `current` credentials,
    /// under the rules in the module comment.
    async fn authorize(
        &self,
        repo: &Repository,
        push: bool,
        challenge: &Challenge,
        current: &Current,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let auth = current.credentials.as_ref();
        let (header, renew) = match (challenge, auth) {
            (Challenge::Bearer { realm, service }, auth) => {
                let sent = Instant::now();
                let token = self
                    .token(repo, push, realm, service.as_deref(), auth)
                    .await?;
                (
                    sensitive(&format!("Bearer {}", token.token)),
                    Some(renew_at(sent, token.lifetime)),
                )
            }
            (Challenge::Other, Some(c)) => (basic_authorization(&c.username, &c.password), None),
            (Challenge::Other, None) => (None, None),
        };
        if let (Some(h), Ok(mut m)) = (&header, self.authorizations.lock()) {
            m.insert(
                (repo.to_string(), push),
                Authorization {
                    header: h.clone(),
                    challenge: challenge.clone(),
                    generation: current.generation,
                    renew_at: renew,
                },
            );
        }
        Ok(header)
    }

    /// A token from `realm` for pulling (and pushing) `repo`, the way
    /// Distribution's token auth specifies: GET with `service` and `scope`,
    /// Basic credentials if configured, `{"token": …, "expires_in": …}` back.
    async fn token(
        &self,
        repo: &Repository,
        push: bool,
        realm: &str,
        service: Option<&str>,
        auth: Option<&RegistryCredentials>,
    ) -> Result<Token, RegistryError> {
        let mut url = realm_url(repo, realm, self.insecure(repo))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            let actions = if push { "pull,push" } else { "pull" };
            query.append_pair("scope", &format!("repository:{}:{actions}", repo.path()));
        }
        let mut req = self
            .http(repo)
            .get(url.clone())
            .header(ACCEPT, "application/json");
        if let Some(c) = auth
            && let Some(h) = basic_authorization(&c.username, &c.password)
        {
            req = req.header(AUTHORIZATION, h);
        }
        let sent = req.send().await;
        self.count("GET token", &sent);
        let realm_text = echo(realm.as_bytes());
        let token_error =
            |e: reqwest::Error| transport_error_at(repo, &format!("token service {realm_text}"), e);
        let mut res = sent.map_err(token_error)?;
        refuse_redirect(repo, &Method::GET, &res)?;
        let status = res.status();
        let headers = res.headers().clone();
        let (body, complete) = read_capped(&mut res, BODY_LIMIT)
            .await
            .map_err(token_error)?;
        match status.as_u16() {
            200..=299 => {}
            401 | 403 => {
                return Err(RegistryError::Denied {
                    registry: repo.host().to_owned(),
                    status: status.as_u16(),
                });
            }
            408 | 429 | 500..=599 => {
                return Err(unavailable(
                    repo,
                    format!(
                        "token service {realm_text}: {}",
                        status_detail(status, &body)
                    ),
                    retry_after(&headers, SystemTime::now()),
                ));
            }
            _ => {
                return Err(protocol(
                    repo,
                    format!(
                        "token service {realm_text} answered {}",
                        status_detail(status, &body)
                    ),
                ));
            }
        }
        if !complete {
            return Err(protocol(
                repo,
                format!("token service {realm_text} sent an answer over {BODY_LIMIT} bytes"),
            ));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        // serde's message would quote the body, which may hold a token.
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            protocol(
                repo,
                format!("token service {realm_text} sent an answer that is not JSON with a token"),
            )
        })?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        // `token` is Distribution's field, `access_token` the OAuth2 alias.
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .map(|token| Token { token, lifetime })
            .ok_or_else(|| {
                protocol(
                    repo,
                    format!("token service {realm_text} sent an answer without a token"),
                )
            })
    }

    fn count<T>(&self, operation: &str, sent: &Result<reqwest::Response, T>) {
        if let Some(m) = &self.metrics {
            let outcome = match sent {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_owned(),
            };
            m.registry_request(operation, &outcome);
        }
    }

    /// One HTTP request with the cached authorization; on 401, negotiate
    /// credentials and repeat. If the registry (or its token service) still
    /// refuses, the credentials are read again and, if they changed (a
    /// rotated secret), negotiated once more. The body of a successful GET is
    /// a manifest and may be up to [`MANIFEST_LIMIT`]; any other body is cut
    /// at [`BODY_LIMIT`].
    async fn send(
        &self,
        repo: &Repository,
        method: Method,
        reference: &str,
        body: Option<(bytes::Bytes, HeaderValue)>,
    ) -> Result<Answer, RegistryError> {
        self.send_to(repo, method, Resource::Manifest(reference), body)
            .await
    }

    /// [`OciRegistry::send`] to a manifest or a blob.
    async fn send_to(
        &self,
        repo: &Repository,
        method: Method,
        resource: Resource<'_>,
        body: Option<(bytes::Bytes, HeaderValue)>,
    ) -> Result<Answer, RegistryError> {
        let push = method == Method::PUT || method == Method::POST;
        let mut current = self.credentials(repo).await;
        let mut authorization = self.first_authorization(repo, push, &current).await;
        let mut negotiated = false;
        let mut refreshed = false;
        loop {
            let mut req = match resource {
                Resource::Manifest(reference) => self
                    .http(repo)
                    .request(method.clone(), self.manifest_url(repo, reference))
                    .header(ACCEPT, MANIFEST_TYPES),
                Resource::Blob { digest, .. } => self
                    .http(repo)
                    .request(method.clone(), self.blob_url(repo, digest)),
                Resource::Index(tag) => self
                    .http(repo)
                    .request(method.clone(), self.manifest_url(repo, tag))
                    .header(ACCEPT, INDEX_MEDIA_TYPE),
                Resource::Uploads => self
                    .http(repo)
                    .request(method.clone(), self.uploads_url(repo)),
                Resource::Upload(url) => self.http(repo).request(method.clone(), url.clone()),
            };
            if let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a.clone());
            }
            if let Some((bytes, content_type)) = &body {
                req = req
                    .header(CONTENT_TYPE, content_type.clone())
                    .body(bytes.clone());
            }
            let sent = req.send().await;
            self.count(&format!("{method} {}", resource.kind()), &sent);
            let mut res = sent.map_err(|e| transport_error(repo, e))?;
            refuse_redirect(repo, &method, &res)?;
            let status = res.status();
            let headers = res.headers().clone();
            let body = if method == Method::GET && status.is_success() {
                match resource {
                    Resource::Manifest(reference) | Resource::Index(reference) => {
                        read_manifest(repo, reference, &mut res).await?
                    }
                    Resource::Blob { digest, limit } => {
                        read_blob(repo, digest, limit, &mut res).await?
                    }
                    Resource::Uploads | Resource::Upload(_) => {
                        read_capped(&mut res, BODY_LIMIT)
                            .await
                            .map_err(|e| transport_error(repo, e))?
                            .0
                    }
                }
            } else {
                read_capped(&mut res, BODY_LIMIT)
                    .await
                    .map_err(|e| transport_error(repo, e))?
                    .0
            };
            let answer = Answer {
                status,
                headers,
                body,
            };
            if status != StatusCode::UNAUTHORIZED {
                return Ok(answer);
            }
            if negotiated {
                // Refused what was just negotiated: worth one more try only
                // with credentials that changed when read again.
                if refreshed || !self.refresh(repo).await {
                    return Ok(answer);
                }
                refreshed = true;
                current = self.credentials(repo).await;
            }
            negotiated = true;
            let challenge = challenge(&answer.headers);
            let header = match self.authorize(repo, push, &challenge, &current).await {
                // The token service refused them: the same question.
                Err(RegistryError::Denied { .. }) if !refreshed && self.refresh(repo).await => {
                    refreshed = true;
                    current = self.credentials(repo).await;
                    self.authorize(repo, push, &challenge, &current).await?
                }
                other => other?,
            };
            match header {
                Some(a) => authorization = Some(a),
                None => return Ok(answer),
            }
        }
    }

    /// The digest `reference` points to, `None` if it does not exist.
    async fn head(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let a = self.send(repo, Method::HEAD, reference, None).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(repo, reference, &a)?;
        match a.headers.get(DIGEST_HEADER) {
            Some(d) => digest_header(repo, d).map(Some),
            // The header is optional in the spec: fall back to hashing the body.
            None => {
                let g = self.send(repo, Method::GET, reference, None).await?;
                if g.status == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                check(repo, reference, &g)?;
                Ok(Some(sha256_digest(&g.body)))
            }
        }
    }
}

/// Follows a redirect only within the origin of the first request (see the
/// module comment); anything else stops and reaches [`refuse_redirect`].
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let within = attempt
            .previous()
            .first()
            .is_some_and(|first| same_origin(first, attempt.url()));
        if within && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Same scheme, host and port, as written: no name resolution, so
/// `127.0.0.1` and `localhost` differ.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A redirect the policy stopped (to another origin, or too many) is an
/// error naming where it pointed, not an answer.
fn refuse_redirect(
    repo: &Repository,
    method: &Method,
    res: &reqwest::Response,
) -> Result<(), RegistryError> {
    let Some(location) = res
        .status()
        .is_redirection()
        .then(|| res.headers().get(LOCATION))
        .flatten()
    else {
        return Ok(());
    };
    let from = res.url();
    let to = location.to_str().ok().and_then(|l| from.join(l).ok());
    let target = to.as_ref().map_or_else(
        || echo(location.as_bytes()),
        |u| echo(u.as_str().as_bytes()),
    );
    let reason = if to.as_ref().is_some_and(|to| same_origin(from, to)) {
        format!(
            "refused to follow {method} {from}: more than {MAX_REDIRECTS} redirects (the last to {target})"
        )
    } else {
        format!(
            "refused to follow the redirect of {method} {from} to {target}: prodgate follows \
             redirects only within the same scheme, host and port, so that its requests and \
             credentials never leave the host they were meant for"
        )
    };
    Err(RegistryError::Refused {
        registry: repo.host().to_owned(),
        reason,
    })
}

/// The realm a Bearer challenge names, if it may receive credentials: HTTPS,
/// or plain HTTP for a registry configured `insecure = true`. Applied without
/// credentials too: a plain-HTTP realm for an HTTPS registry is a mistake or
/// an attack either way, and one rule is easier to reason about.
fn realm_url(repo: &Repository, realm: &str, insecure: bool) -> Result<Url, RegistryError> {
    let refused = |rule: &str| RegistryError::Refused {
        registry: repo.host().to_owned(),
        reason: format!(
            "refused to send credentials to the token realm {}: {rule}",
            echo(realm.as_bytes())
        ),
    };
    let url = Url::parse(realm).map_err(|_| refused("the realm is not an absolute URL"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if insecure => Ok(url),
        "http" => Err(refused(
            "a token realm must use https unless the registry is configured with insecure = true",
        )),
        _ => Err(refused("a token realm must be an https URL")),
    }
}

/// The first Bearer challenge with a realm among the `WWW-Authenticate`
/// headers, else [`Challenge::Other`]. A header that does not parse is
/// skipped, as if absent.
fn challenge(headers: &HeaderMap) -> Challenge {
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        let Ok(challenges) = http_auth::parse_challenges(text) else {
            continue;
        };
        for c in challenges {
            if !c.scheme.eq_ignore_ascii_case("bearer") {
                continue;
            }
            let param = |name: &str| {
                c.params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            if let Some(realm) = param("realm") {
                return Challenge::Bearer {
                    realm,
                    service: param("service"),
                };
            }
        }
    }
    Challenge::Other
}

fn sensitive(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok().map(|mut h| {
        h.set_sensitive(true);
        h
    })
}

fn basic_authorization(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    sensitive(&format!("Basic {b}"))
}

/// A manifest body, refused over [`MANIFEST_LIMIT`]: by its `Content-Length`
/// before reading anything, else once the streamed body passes the limit.
async fn read_manifest(
    repo: &Repository,
    reference: &str,
    res: &mut reqwest::Response,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = |size| RegistryError::ManifestTooLarge {
        reference: reference_text(repo, reference),
        size,
    };
    if let Some(n) = res.content_length()
        && n > MANIFEST_LIMIT
    {
        return Err(too_large(Some(n)));
    }
    let limit = usize::try_from(MANIFEST_LIMIT).unwrap_or(usize::MAX);
    let (body, complete) = read_capped(res, limit)
        .await
        .map_err(|e| transport_error(repo, e))?;
    if complete {
        Ok(body)
    } else {
        Err(too_large(None))
    }
}

/// A blob body, refused over `limit` like [`read_manifest`] refuses a
/// manifest.
async fn read_blob(
    repo: &Repository,
    digest: &str,
    limit: usize,
    res: &mut reqwest::Response,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = |size| RegistryError::BlobTooLarge {
        reference: reference_text(repo, digest),
        limit,
        size,
    };
    if let Some(n) = res.content_length()
        && n > limit as u64
    {
        return Err(too_large(Some(n)));
    }
    let (body, complete) = read_capped(res, limit)
        .await
        .map_err(|e| transport_error(repo, e))?;
    if complete {
        Ok(body)
    } else {
        Err(too_large(None))
    }
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits: the only
/// digests prodgate puts into a blob URL (anything else from a manifest
/// could reach another path).
fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A `Docker-Content-Digest` value, if it has the shape of an OCI digest
/// (`algorithm:encoded`, at most [`DIGEST_MAX`] bytes). It is compared,
/// stored in the audit log and repeated in messages, so anything else from
/// the registry is refused rather than carried along.
fn digest_header(repo: &Repository, value: &HeaderValue) -> Result<String, RegistryError> {
    let text = value.to_str().unwrap_or_default();
    let shaped = text.split_once(':').is_some_and(|(algorithm, encoded)| {
        !algorithm.is_empty()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            && !encoded.is_empty()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
    });
    if shaped && text.len() <= DIGEST_MAX {
        Ok(text.to_owned())
    } else {
        Err(protocol(
            repo,
            format!(
                "{DIGEST_HEADER} {:?} is not a digest",
                echo(value.as_bytes())
            ),
        ))
    }
}

/// `repo@sha256:…` for a digest, `repo:tag` for a tag.
fn reference_text(repo: &Repository, reference: &str) -> String {
    if reference.contains(':') {
        format!("{repo}@{reference}")
    } else {
        format!("{repo}:{reference}")
    }
}

/// At most [`ECHO_LIMIT`] bytes of a registry's text, cut on a character
/// boundary, saying how much was left out.
pub fn echo(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= ECHO_LIMIT {
        return text.to_owned();
    }
    let mut end = ECHO_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut to {ECHO_LIMIT} bytes)", &text[..end])
}

fn status_detail(status: StatusCode, body: &[u8]) -> String {
    let text = echo(body);
    if text.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {text}", status.as_u16())
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn unavailable(repo: &Repository, reason: String, retry_after: Option<Duration>) -> RegistryError {
    RegistryError::Unavailable {
        registry: repo.host().to_owned(),
        reason,
        retry_after,
    }
}

fn protocol(repo: &Repository, message: String) -> RegistryError {
    RegistryError::Protocol {
        registry: repo.host().to_owned(),
        message,
    }
}

fn transport_error(repo: &Repository, e: reqwest::Error) -> RegistryError {
    transport_error_at(repo, "", e)
}

/// A request to `what` (the registry itself when empty) that got no answer.
/// A certificate that does not verify is [`RegistryError::Refused`]:
/// retrying cannot help, the registry's certificate or prodgate's `ca_cert`
/// must change, and the message says so.
fn transport_error_at(repo: &Repository, what: &str, e: reqwest::Error) -> RegistryError {
    let at = |reason: String| {
        if what.is_empty() {
            reason
        } else {
            format!("{what}: {reason}")
        }
    };
    if let Some(cert) = certificate_error(&e) {
        return RegistryError::Refused {
            registry: repo.host().to_owned(),
            reason: at(format!(
                "its TLS certificate is not trusted ({cert}); if an internal CA issued it, \
                 name that CA's certificate in ca_cert of the registry's [[registry]] section"
            )),
        };
    }
    unavailable(repo, at(transport_reason(&e)), None)
}

/// The rustls certificate error somewhere in `e`'s chain of causes.
/// `io::Error::source` skips the error an `io::Error` wraps (and reqwest
/// nests them), so an `io::Error` is followed through `get_ref`.
fn certificate_error(e: &reqwest::Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls @ rustls::Error::InvalidCertificate(_)) =
            err.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".to_owned()
    } else if e.is_connect() {
        format!("cannot connect: {}", causes(e))
    } else {
        format!("request failed: {}", causes(e))
    }
}

/// `e` and its causes, each once: reqwest's own message names only the URL.
fn causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Sorts a non-success answer into what the caller should do.
pub fn classify_status(
    registry: &str,
    reference: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> RegistryError {
    let code = status.as_u16();
    match code {
        404 => RegistryError::NotFound {
            reference: reference.to_owned(),
        },
        401 | 403 => RegistryError::Denied {
            registry: registry.to_owned(),
            status: code,
        },
        408 | 429 | 500..=599 => RegistryError::Unavailable {
            registry: registry.to_owned(),
            reason: status_detail(status, body),
            retry_after: retry_after(headers, SystemTime::now()),
        },
        _ => RegistryError::Protocol {
            registry: registry.to_owned(),
            message: status_detail(status, body),
        },
    }
}

fn check(repo: &Repository, reference: &str, a: &Answer) -> Result<(), RegistryError> {
    if a.status.is_success() {
        Ok(())
    } else {
        Err(classify_status(
            repo.host(),
            &reference_text(repo, reference),
            a.status,
            &a.headers,
            &a.body,
        ))
    }
}

#[async_trait]
impl Registry for OciRegistry {
    async fn resolve(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        self.head(repo, reference).await
    }

    async fn fetch(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let got = self.send(repo, Method::GET, reference, None).await?;
        if got.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(repo, reference, &got)?;
        let digest = sha256_digest(&got.body);
        // By digest the body must hash to it; by tag, to what the registry says.
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            got.headers
                .get(DIGEST_HEADER)
                .map(|d| digest_header(repo, d))
                .transpose()?
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                reference: reference_text(repo, reference),
                expected,
                actual: digest,
            });
        }
        // Keep the type the registry stored it under, so a copy is exact.
        let media_type = got
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|s| s.contains("manifest") || s.contains("index"))
            .map(str::to_owned)
            .or_else(|| media_type_of(&got.body))
            .ok_or_else(|| RegistryError::Protocol {
                registry: repo.host().to_owned(),
                message: format!("manifest {digest} has no recognizable media type"),
            })?;
        Ok(Some(Manifest {
            digest,
            media_type,
            bytes: got.body,
        }))
    }

    async fn fetch_blob(
        &self,
        repo: &Repository,
        digest: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        if !is_sha256_digest(digest) {
            return Err(protocol(
                repo,
                format!(
                    "blob digest {:?} is not sha256:<64 hex digits>",
                    echo(digest.as_bytes())
                ),
            ));
        }
        // Registries that keep blobs in object storage (Docker Hub, ECR,
        // GCR, Distribution on S3) answer a blob GET with a redirect to
        // another host, which the redirect rule above refuses: there the
        // signature gate fails with that refusal. Following it without
        // credentials (the body is checked against its digest anyway) would
        // be safe but changes a rule this module promises; not done yet.
        let got = self
            .send_to(repo, Method::GET, Resource::Blob { digest, limit }, None)
            .await?;
        if got.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(repo, digest, &got)?;
        let actual = sha256_digest(&got.body);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                reference: reference_text(repo, digest),
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(Some(got.body))
    }

    async fn move_tag(
        &self,
        repo: &Repository,
        manifest: &Manifest,
        tag: &str,
    ) -> Result<Moved, RegistryError> {
        // The bytes were pinned at request time and have since sat in the
        // store (or came from a fetch): push only bytes that still hash to the
        // digest the promotion was approved for. Checked before any request,
        // so a mismatch moves nothing and, being permanent, fails the
        // promotion instead of retrying.
        let content_type = pushable(repo, manifest)?;
        // Compare before write: what the tag carries right before the push.
        let previous_digest = self.head(repo, tag).await?.unwrap_or_default();
        let body = bytes::Bytes::from(manifest.bytes.clone());
        let put = self
            .send(repo, Method::PUT, tag, Some((body, content_type)))
            .await?;
        check(repo, tag, &put)?;
        // Read back: a concurrent writer between our PUT and now is reported.
        match self.head(repo, tag).await? {
            Some(now) if now == manifest.digest => Ok(Moved { previous_digest }),
            now => Err(RegistryError::DigestMismatch {
                reference: reference_text(repo, tag),
                expected: manifest.digest.clone(),
                actual: now.unwrap_or_else(|| "nothing".into()),
            }),
        }
    }

    async fn push_blob(&self, repo: &Repository, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = sha256_digest(bytes);
        if bytes.len() > PUSH_BLOB_LIMIT {
            return Err(RegistryError::BlobTooLarge {
                reference: reference_text(repo, &digest),
                limit: PUSH_BLOB_LIMIT,
                size: Some(bytes.len() as u64),
            });
        }
        let started = self
            .send_to(repo, Method::POST, Resource::Uploads, None)
            .await?;
        check(repo, &digest, &started)?;
        // The upload's URL: relative or absolute, but on the registry's own
        // origin, where prodgate's credentials may go (module comment).
        let base = Url::parse(&self.uploads_url(repo))
            .map_err(|e| protocol(repo, format!("cannot form the upload URL: {e}")))?;
        let location = started
            .headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| protocol(repo, "a blob upload started without a Location".into()))?;
        let mut url = base.join(location).map_err(|_| {
            protocol(
                repo,
                format!(
                    "blob upload Location {:?} is not a URL",
                    echo(location.as_bytes())
                ),
            )
        })?;
        if !same_origin(&base, &url) {
            return Err(RegistryError::Refused {
                registry: repo.host().to_owned(),
                reason: format!(
                    "refused to upload to {}: a blob upload must stay on the registry's own \
                     scheme, host and port",
                    echo(url.as_str().as_bytes())
                ),
            });
        }
        url.query_pairs_mut().append_pair("digest", &digest);
        let body = bytes::Bytes::from(bytes.to_vec());
        let put = self
            .send_to(
                repo,
                Method::PUT,
                Resource::Upload(&url),
                Some((body, HeaderValue::from_static("application/octet-stream"))),
            )
            .await?;
        check(repo, &digest, &put)?;
        Ok(digest)
    }

    async fn push_manifest(
        &self,
        repo: &Repository,
        manifest: &Manifest,
        reference: &str,
    ) -> Result<(), RegistryError> {
        let content_type = pushable(repo, manifest)?;
        let body = bytes::Bytes::from(manifest.bytes.clone());
        let put = self
            .send(repo, Method::PUT, reference, Some((body, content_type)))
            .await?;
        check(repo, reference, &put)?;
        // The registry names what it stored; another digest means it kept
        // other bytes than these (it may not, for an exact push).
        if let Some(d) = put.headers.get(DIGEST_HEADER) {
            let stored = digest_header(repo, d)?;
            if stored != manifest.digest {
                return Err(RegistryError::DigestMismatch {
                    reference: reference_text(repo, reference),
                    expected: manifest.digest.clone(),
                    actual: stored,
                });
            }
        }
        Ok(())
    }

    async fn fetch_index(
        &self,
        repo: &Repository,
        tag: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let got = self
            .send_to(repo, Method::GET, Resource::Index(tag), None)
            .await?;
        if got.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(repo, tag, &got)?;
        let digest = sha256_digest(&got.body);
        if let Some(d) = got.headers.get(DIGEST_HEADER) {
            let expected = digest_header(repo, d)?;
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    reference: reference_text(repo, tag),
                    expected,
                    actual: digest,
                });
            }
        }
        match media_type_of(&got.body) {
            Some(t) if t == INDEX_MEDIA_TYPE => Ok(Some(Manifest {
                digest,
                media_type: t,
                bytes: got.body,
            })),
            other => Err(protocol(
                repo,
                format!(
                    "{} holds {}, not an OCI image index",
                    reference_text(repo, tag),
                    other.map_or_else(
                        || "no recognizable manifest".to_owned(),
                        |t| echo(t.as_bytes())
                    )
                ),
            )),
        }
    }
}

/// The `Content-Type` to push `manifest` with, once its bytes are known to
/// hash to its digest and to fit [`MANIFEST_LIMIT`]; checked before any
/// request, so a mismatch pushes nothing.
fn pushable(repo: &Repository, manifest: &Manifest) -> Result<HeaderValue, RegistryError> {
    let actual = sha256_digest(&manifest.bytes);
    if actual != manifest.digest {
        return Err(RegistryError::DigestMismatch {
            reference: format!(
                "the manifest pinned for {}",
                reference_text(repo, &manifest.digest)
            ),
            expected: manifest.digest.clone(),
            actual,
        });
    }
    if manifest.bytes.len() as u64 > MANIFEST_LIMIT {
        return Err(RegistryError::ManifestTooLarge {
            reference: reference_text(repo, &manifest.digest),
            size: Some(manifest.bytes.len() as u64),
        });
    }
    HeaderValue::from_str(&manifest.media_type).map_err(|_| RegistryError::Protocol {
        registry: repo.host().to_owned(),
        message: format!(
            "invalid media type {:?}",
            echo(manifest.media_type.as_bytes())
        ),
    })
}

/// `mediaType` from the manifest body, or inferred from its shape when absent
/// (it is optional in OCI manifests).
pub fn media_type_of(bytes: &[u8]) -> Option<String> {
    // `Value`, not oci-spec: only the shape is asked, and a manifest being
    // copied must not be refused for a field oci-spec's types require.
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str()) {
        return Some(mt.to_owned());
    }
    if v.get("manifests").is_some() {
        Some("application/vnd.oci.image.index.v1+json".into())
    } else if v.get("config").is_some() {
        Some("application/vnd.oci.image.manifest.v1+json".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(retry: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(r) = retry {
            h.insert(RETRY_AFTER, HeaderValue::from_str(r).unwrap());
        }
        h
    }

    #[test]
    fn classification() {
        let c = |code: u16, h: &HeaderMap| {
            classify_status(
                "r.io",
                "r.io/app@x",
                StatusCode::from_u16(code).unwrap(),
                h,
                b"{}",
            )
        };
        let none = headers(None);
        assert!(matches!(c(404, &none), RegistryError::NotFound { .. }));
        assert!(matches!(
            c(401, &none),
            RegistryError::Denied { status: 401, .. }
        ));
        assert!(matches!(
            c(403, &none),
            RegistryError::Denied { status: 403, .. }
        ));
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(c(code, &none).is_transient(), "{code}");
        }
        for code in [400, 401, 403, 404, 405, 409] {
            assert!(!c(code, &none).is_transient(), "{code}");
        }
        match c(429, &headers(Some("7"))) {
            RegistryError::Unavailable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(Some(&later)), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(Some(&past)), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(Some("soon")), now), None);
        assert_eq!(retry_after(&headers(None), now), None);
    }

    #[test]
    fn media_types() {
        assert_eq!(
            media_type_of(br#"{"mediaType":"application/x","config":{}}"#).as_deref(),
            Some("application/x")
        );
        assert_eq!(
            media_type_of(br#"{"manifests":[]}"#).as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(
            media_type_of(br#"{"config":{}}"#).as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(media_type_of(b"{}"), None);
        assert_eq!(media_type_of(b"not json"), None);
    }
}

#[cfg(test)]
mod hardening_tests {
    //! The rules of the module comment that need no other process; the
    //! integration tests in `tests/registry_hardening.rs` cover the rest
    //! through a real server.
    use super::*;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::Arc;

    fn repo(host: &str) -> Repository {
        Repository::parse(&format!("{host}/app")).expect("valid repository")
    }

    #[test]
    fn challenges() {
        let parse = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).expect("ascii"));
            }
            challenge(&h)
        };
        assert_eq!(
            parse(&[
                r#"Bearer realm="https://auth.example/token?a=1",service="reg \"x\"",scope="repository:app:pull""#
            ]),
            Challenge::Bearer {
                realm: "https://auth.example/token?a=1".into(),
                service: Some(r#"reg "x""#.into()),
            }
        );
        // Several challenges in one header or several headers: Bearer wins.
        assert_eq!(
            parse(&[r#"Basic realm="r", bearer realm="https://a/t""#]),
            Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None
            }
        );
        assert_eq!(
            parse(&[r#"Basic realm="r""#, r#"Bearer realm="https://a/t""#]),
            Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None
            }
        );
        assert_eq!(parse(&[r#"Basic realm="basic-realm""#]), Challenge::Other);
        assert_eq!(parse(&["Bearer service=\"x\""]), Challenge::Other);
        assert_eq!(parse(&["Bearer realm=\"unterminated"]), Challenge::Other);
        assert_eq!(parse(&[]), Challenge::Other);
    }

    #[test]
    fn realms_receive_credentials_only_over_https_or_for_insecure_registries() {
        let r = repo("127.0.0.1:5000");
        assert!(realm_url(&r, "https://auth.example/token", false).is_ok());
        assert!(realm_url(&r, "https://auth.example/token", true).is_ok());
        assert!(realm_url(&r, "http://127.0.0.1:5001/token", true).is_ok());
        for (realm, insecure, rule) in [
            (
                "http://127.0.0.1:5001/token",
                false,
                "must use https unless",
            ),
            ("ftp://auth.example/token", true, "must be an https URL"),
            ("/token", true, "not an absolute URL"),
        ] {
            match realm_url(&r, realm, insecure) {
                Err(RegistryError::Refused { registry, reason }) => {
                    assert_eq!(registry, "127.0.0.1:5000");
                    assert!(reason.contains(realm), "{reason}");
                    assert!(reason.contains(rule), "{reason}");
                }
                other => panic!("{realm}: {other:?}"),
            }
        }
    }

    #[test]
    fn origins_compare_as_written() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert!(same_origin(
            &u("http://127.0.0.1:5000/v2/a"),
            &u("http://127.0.0.1:5000/v2/b?x")
        ));
        assert!(same_origin(&u("https://r.io/a"), &u("https://r.io:443/b")));
        assert!(!same_origin(
            &u("http://127.0.0.1:5000/"),
            &u("http://localhost:5000/")
        ));
        assert!(!same_origin(
            &u("http://127.0.0.1:5000/"),
            &u("http://127.0.0.1:5001/")
        ));
        assert!(!same_origin(&u("https://r.io/"), &u("http://r.io:443/")));
    }

    #[test]
    fn digest_headers_are_digests() {
        let r = repo("r.io");
        let ok = |v: &str| digest_header(&r, &HeaderValue::from_str(v).expect("ascii"));
        let sha = format!("sha256:{}", "a".repeat(64));
        assert_eq!(ok(&sha).ok(), Some(sha.clone()));
        assert!(ok(&format!("sha512:{}", "b".repeat(128))).is_ok());
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "SHA256:abc",
            "sha256:a b",
            "sha256:a/../b",
            &format!("sha256:{}", "a".repeat(300)),
        ] {
            assert!(
                matches!(ok(bad), Err(RegistryError::Protocol { .. })),
                "{bad:?}"
            );
        }
        let long = format!("sha256:{}", "a".repeat(100_000));
        let e = ok(&long).expect_err("too long").to_string();
        assert!(e.len() < 700, "{}", e.len());
    }

    #[test]
    fn echoed_text_is_bounded() {
        assert_eq!(echo(b"  short  "), "short");
        let long = "é".repeat(ECHO_LIMIT);
        let cut = echo(long.as_bytes());
        assert!(cut.len() < ECHO_LIMIT + 40, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("… (cut to {ECHO_LIMIT} bytes)")),
            "{cut}"
        );
        let status = classify_status(
            "r.io",
            "r.io/app:v1",
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            "x".repeat(100_000).as_bytes(),
        );
        assert!(
            status.to_string().len() < 700,
            "{}",
            status.to_string().len()
        );
    }

    /// A registry that answers HEAD with `digest`, PUT with 201, and records
    /// every request line.
    async fn recording_registry(digest: String) -> (String, Arc<Mutex<Vec<String>>>) {
        let status = |m: &Method| match *m {
            Method::PUT => 201,
            Method::HEAD => 200,
            _ => 404,
        };
        scripted_registry(
            status,
            hyper::header::HeaderName::from_static(DIGEST_HEADER),
            digest,
        )
        .await
    }

    /// A registry whose blob uploads start with `location` and that
    /// records every request line.
    async fn uploading_registry(location: String) -> (String, Arc<Mutex<Vec<String>>>) {
        let status = |m: &Method| match *m {
            Method::POST => 202,
            Method::PUT => 201,
            _ => 404,
        };
        scripted_registry(status, LOCATION, location).await
    }

    /// A registry that answers each request with `status(method)`, an empty
    /// body and the header `name: value`, and records every request line
    /// (method and URI).
    async fn scripted_registry(
        status: fn(&Method) -> u16,
        name: hyper::header::HeaderName,
        value: String,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let host = listener.local_addr().expect("address").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, name, value) = (Arc::clone(&log), name.clone(), value.clone());
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    if let Ok(mut l) = log.lock() {
                        l.push(format!("{} {}", req.method(), req.uri()));
                    }
                    let res = hyper::Response::builder()
                        .status(status(req.method()))
                        .header(name.clone(), value.clone())
                        .body(Full::new(bytes::Bytes::new()));
                    async move { res }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        (host, seen)
    }

    #[tokio::test]
    async fn blob_uploads_stay_on_the_registrys_origin_and_are_capped() {
        crate::server::install_crypto_provider();
        let client = |host: &str| {
            OciRegistry::new(
                vec![RegistryHost::anonymous(host, true)],
                Duration::from_secs(5),
                None,
            )
            .expect("client")
        };
        // A relative Location: the PUT goes there, with the digest added.
        let (host, seen) = uploading_registry("/v2/app/blobs/uploads/u1?_state=s".into()).await;
        let digest = client(&host)
            .push_blob(&repo(&host), b"{}")
            .await
            .expect("uploaded");
        assert_eq!(digest, sha256_digest(b"{}"));
        let requests = seen.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(
            requests,
            vec![
                "POST /v2/app/blobs/uploads/".to_owned(),
                format!(
                    "PUT /v2/app/blobs/uploads/u1?_state=s&digest={}",
                    digest.replace(':', "%3A")
                ),
            ]
        );

        // Elsewhere: refused, and the bytes are not sent anywhere.
        let (host, seen) =
            uploading_registry("http://localhost:1/v2/app/blobs/uploads/u2".into()).await;
        let err = client(&host)
            .push_blob(&repo(&host), b"{}")
            .await
            .expect_err("another origin");
        assert!(matches!(err, RegistryError::Refused { .. }), "{err:?}");
        let requests = seen.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(requests, vec!["POST /v2/app/blobs/uploads/".to_owned()]);

        // Over the cap: refused before any request.
        let (host, seen) = uploading_registry("/u".into()).await;
        let err = client(&host)
            .push_blob(&repo(&host), &vec![0; PUSH_BLOB_LIMIT + 1])
            .await
            .expect_err("too large");
        assert!(matches!(err, RegistryError::BlobTooLarge { .. }), "{err:?}");
        assert!(seen.lock().map(|l| l.is_empty()).unwrap_or(false));
    }

    #[tokio::test]
    async fn move_tag_pushes_nothing_when_pinned_bytes_do_not_match_their_digest() {
        crate::server::install_crypto_provider();
        let bytes = br#"{"schemaVersion":2,"config":{}}"#.to_vec();
        let digest = sha256_digest(&bytes);
        // The registry confirms whatever digest it is asked about, so only
        // prodgate's own check can stop the push.
        let (host, seen) = recording_registry(digest.clone()).await;
        let registry = OciRegistry::new(
            vec![RegistryHost::anonymous(&host, true)],
            Duration::from_secs(5),
            None,
        )
        .expect("client");
        let mut tampered = bytes.clone();
        tampered.extend_from_slice(b" ");
        let manifest = Manifest {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: tampered.clone(),
        };
        let err = registry
            .move_tag(&repo(&host), &manifest, "production")
            .await
            .expect_err("tampered bytes must not be pushed");
        match &err {
            RegistryError::DigestMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &digest);
                assert_eq!(actual, &sha256_digest(&tampered));
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.is_transient(), "a mismatch must fail, not retry");
        let requests = seen.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(
            !requests.iter().any(|r| r.starts_with("PUT")),
            "{requests:?}"
        );

        // The same registry accepts the untampered bytes: the refusal above
        // came from the check, not from the setup.
        let good = Manifest { bytes, ..manifest };
        registry
            .move_tag(&repo(&host), &good, "production")
            .await
            .expect("intact bytes are pushed");
        let requests = seen.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(
            requests.contains(&"PUT /v2/app/manifests/production".to_owned()),
            "{requests:?}"
        );
    }
}
