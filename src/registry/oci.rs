//! [`Registry`] over the OCI distribution HTTP API. The three calls a tag move
//! needs (GET a manifest by digest, HEAD a tag, PUT a manifest) are made
//! directly with reqwest, so prodgate sees every status and header
//! (`Retry-After`, `Docker-Content-Digest`, `Content-Type`) and makes no
//! request it does not need; `oci-client` negotiates credentials (bearer-token
//! challenges) when a registry answers 401. Every request has a deadline.

use super::{Manifest, Moved, Registry, RegistryError};
use crate::domain::names::Repository;
use async_trait::async_trait;
use oci_client::secrets::RegistryAuth;
use oci_client::{
    Client, Reference, RegistryOperation, client::ClientConfig, client::ClientProtocol,
};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Media types a copied manifest may have; without the index types a
/// registry answers 404 for a multi-arch tag.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

const DIGEST_HEADER: &str = "docker-content-digest";

/// One registry prodgate may talk to.
#[derive(Debug, Clone)]
pub struct RegistryHost {
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    pub auth: RegistryAuth,
}

pub struct OciRegistry {
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    http: reqwest::Client,
    oci: Client,
    hosts: Vec<RegistryHost>,
    timeout: Duration,
    /// Authorization header per (repository, push?) once a registry asked for one.
    authorizations: Mutex<HashMap<(String, bool), HeaderValue>>,
}

/// A response reduced to what the callers read.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl OciRegistry {
    pub fn new(
        hosts: Vec<RegistryHost>,
        timeout: Duration,
        metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    ) -> Result<Self, RegistryError> {
        let insecure: Vec<String> = hosts
            .iter()
            .filter(|h| h.insecure)
            .map(|h| h.host.clone())
            .collect();
        let oci = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            connect_timeout: Some(timeout),
            read_timeout: Some(timeout),
            ..ClientConfig::default()
        });
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .no_proxy()
            .user_agent(concat!("prodgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Protocol {
                registry: String::new(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self {
            metrics,
            http,
            oci,
            hosts,
            timeout,
            authorizations: Mutex::new(HashMap::new()),
        })
    }

    fn host(&self, repo: &Repository) -> Option<&RegistryHost> {
        self.hosts.iter().find(|h| h.host == repo.host())
    }

    fn manifest_url(&self, repo: &Repository, reference: &str) -> String {
        let scheme = if self.host(repo).is_some_and(|h| h.insecure) {
            "http"
        } else {
            "https"
        };
        format!(
            "{scheme}://{}/v2/{}/manifests/{reference}",
            repo.host(),
            repo.path()
        )
    }

    fn cached_authorization(&self, repo: &Repository, push: bool) -> Option<HeaderValue> {
        self.authorizations
            .lock()
            .ok()
            .and_then(|m| m.get(&(repo.to_string(), push)).cloned())
    }

    /// Asks for credentials the way the registry's 401 challenge demands.
    async fn authorize(
        &self,
        repo: &Repository,
        push: bool,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let auth = self
            .host(repo)
            .map_or(RegistryAuth::Anonymous, |h| h.auth.clone());
        let reference = Reference::with_tag(
            repo.host().to_owned(),
            repo.path().to_owned(),
            "latest".into(),
        );
        let op = if push {
            RegistryOperation::Push
        } else {
            RegistryOperation::Pull
        };
        let token = tokio::time::timeout(self.timeout, self.oci.auth(&reference, &auth, op))
            .await
            .map_err(|_| unavailable(repo, "no answer from the token service".into(), None))?
            .map_err(|e| {
                tracing::warn!(registry = %repo.host(), error = %e, "credential negotiation failed");
                RegistryError::Denied {
                    registry: repo.host().to_owned(),
                    status: 401,
                }
            })?;
        let value = match (token, &auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(user, password)) => {
                use base64::Engine;
                let b =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {b}"))
            }
            (None, _) => None,
        };
        let header = value
            .and_then(|v| HeaderValue::from_str(&v).ok())
            .map(|mut h| {
                h.set_sensitive(true);
                h
            });
        if let (Some(h), Ok(mut m)) = (&header, self.authorizations.lock()) {
            m.insert((repo.to_string(), push), h.clone());
        }
        Ok(header)
    }

    /// One HTTP request with the cached authorization; on 401, negotiate
    /// credentials once and repeat.
    async fn send(
        &self,
        repo: &Repository,
        method: Method,
        reference: &str,
        body: Option<(bytes::Bytes, HeaderValue)>,
    ) -> Result<Answer, RegistryError> {
        let push = method == Method::PUT;
        let mut authorization = self.cached_authorization(repo, push);
        let mut negotiated = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), self.manifest_url(repo, reference))
                .header(ACCEPT, MANIFEST_TYPES);
            if let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a.clone());
            }
            if let Some((bytes, content_type)) = &body {
                req = req
                    .header(CONTENT_TYPE, content_type.clone())
                    .body(bytes.clone());
            }
            let sent = req.send().await;
            if let Some(m) = &self.metrics {
                let outcome = match &sent {
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(_) => "error".to_owned(),
                };
                m.registry_request(&format!("{method} manifest"), &outcome);
            }
            let res = sent.map_err(|e| transport_error(repo, e))?;
            let status = res.status();
            let headers = res.headers().clone();
            let body = res.bytes().await.map_err(|e| transport_error(repo, e))?;
            if status == StatusCode::UNAUTHORIZED && !negotiated {
                negotiated = true;
                if let Some(a) = self.authorize(repo, push).await? {
                    authorization = Some(a);
                    continue;
                }
            }
            return Ok(Answer {
                status,
                headers,
                body,
            });
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
        match a.headers.get(DIGEST_HEADER).and_then(|v| v.to_str().ok()) {
            Some(d) => Ok(Some(d.to_owned())),
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

fn transport_error(repo: &Repository, e: reqwest::Error) -> RegistryError {
    let reason = if e.is_timeout() {
        "no answer in time".to_owned()
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        format!("request failed: {e}")
    };
    unavailable(repo, reason, None)
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
    let detail = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)])
            .trim()
            .to_owned();
        if text.is_empty() {
            format!("HTTP {code}")
        } else {
            format!("HTTP {code}: {text}")
        }
    };
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
            reason: detail(),
            retry_after: retry_after(headers, SystemTime::now()),
        },
        _ => RegistryError::Protocol {
            registry: registry.to_owned(),
            message: detail(),
        },
    }
}

fn check(repo: &Repository, reference: &str, a: &Answer) -> Result<(), RegistryError> {
    if a.status.is_success() {
        Ok(())
    } else {
        Err(classify_status(
            repo.host(),
            &format!("{repo}@{reference}"),
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
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                reference: format!("{repo}@{reference}"),
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
            bytes: got.body.to_vec(),
        }))
    }

    async fn move_tag(
        &self,
        repo: &Repository,
        manifest: &Manifest,
        tag: &str,
    ) -> Result<Moved, RegistryError> {
        let content_type =
            HeaderValue::from_str(&manifest.media_type).map_err(|_| RegistryError::Protocol {
                registry: repo.host().to_owned(),
                message: format!("invalid media type {:?}", manifest.media_type),
            })?;
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
                reference: format!("{repo}:{tag}"),
                expected: manifest.digest.clone(),
                actual: now.unwrap_or_else(|| "nothing".into()),
            }),
        }
    }
}

/// `mediaType` from the manifest body, or inferred from its shape when absent
/// (it is optional in OCI manifests).
pub fn media_type_of(bytes: &[u8]) -> Option<String> {
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
