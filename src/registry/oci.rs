//! [`Registry`] over `oci-client`: HEAD to resolve, GET by digest and PUT by
//! tag to copy a manifest, HEAD again to confirm. Every call has a deadline.

use super::{Moved, Registry, RegistryError};
use crate::domain::names::Repository;
use async_trait::async_trait;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{
    Client, Reference, RegistryOperation, client::ClientConfig, client::ClientProtocol,
};
use std::time::Duration;

/// Media types a copied manifest may have; the index types matter, or a
/// registry answers 404 for a multi-arch tag.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// One registry prodgate may talk to.
#[derive(Debug, Clone)]
pub struct RegistryHost {
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    pub auth: RegistryAuth,
}

pub struct OciRegistry {
    client: Client,
    hosts: Vec<RegistryHost>,
    timeout: Duration,
}

impl OciRegistry {
    pub fn new(hosts: Vec<RegistryHost>, timeout: Duration) -> Self {
        let insecure = hosts
            .iter()
            .filter(|h| h.insecure)
            .map(|h| h.host.clone())
            .collect();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            connect_timeout: Some(timeout),
            read_timeout: Some(timeout),
            ..ClientConfig::default()
        });
        Self {
            client,
            hosts,
            timeout,
        }
    }

    fn auth_for(&self, repo: &Repository) -> RegistryAuth {
        self.hosts
            .iter()
            .find(|h| h.host == repo.host())
            .map_or(RegistryAuth::Anonymous, |h| h.auth.clone())
    }

    /// Runs one registry call under the deadline, classifying its failure.
    async fn call<T>(
        &self,
        repo: &Repository,
        reference: &str,
        fut: impl Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| classify(repo.host(), &format!("{repo}@{reference}"), e)),
            Err(_) => Err(RegistryError::Unavailable {
                registry: repo.host().to_owned(),
                reason: format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
                retry_after: None,
            }),
        }
    }

    fn reference(repo: &Repository, reference: &str) -> Reference {
        if reference.starts_with("sha256:") {
            Reference::with_digest(
                repo.host().to_owned(),
                repo.path().to_owned(),
                reference.to_owned(),
            )
        } else {
            Reference::with_tag(
                repo.host().to_owned(),
                repo.path().to_owned(),
                reference.to_owned(),
            )
        }
    }

    async fn head(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let r = Self::reference(repo, reference);
        let auth = self.auth_for(repo);
        match self
            .call(
                repo,
                reference,
                self.client.fetch_manifest_digest(&r, &auth),
            )
            .await
        {
            Ok(d) => Ok(Some(d)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
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

    async fn move_tag(
        &self,
        repo: &Repository,
        digest: &str,
        tag: &str,
    ) -> Result<Moved, RegistryError> {
        let auth = self.auth_for(repo);
        let source = Self::reference(repo, digest);
        let target = Self::reference(repo, tag);
        // pull_manifest_raw checks the body against the digest it was asked for.
        let (bytes, _) = self
            .call(
                repo,
                digest,
                self.client
                    .pull_manifest_raw(&source, &auth, MANIFEST_TYPES),
            )
            .await?;
        let media_type = media_type_of(&bytes).ok_or_else(|| RegistryError::Protocol {
            registry: repo.host().to_owned(),
            message: format!("manifest {digest} has no recognizable media type"),
        })?;
        let previous_digest = self.head(repo, tag).await?.unwrap_or_default();
        if !matches!(auth, RegistryAuth::Anonymous) {
            self.call(
                repo,
                tag,
                self.client.auth(&target, &auth, RegistryOperation::Push),
            )
            .await?;
        }
        let content_type =
            http::HeaderValue::from_str(&media_type).map_err(|_| RegistryError::Protocol {
                registry: repo.host().to_owned(),
                message: format!("manifest {digest} has an invalid media type {media_type:?}"),
            })?;
        self.call(
            repo,
            tag,
            self.client.push_manifest_raw(&target, bytes, content_type),
        )
        .await?;
        match self.head(repo, tag).await? {
            Some(now) if now == digest => Ok(Moved { previous_digest }),
            now => Err(RegistryError::DigestMismatch {
                reference: format!("{repo}:{tag}"),
                expected: digest.to_owned(),
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

/// Sorts an oci-client error into what the caller should do.
pub fn classify(registry: &str, reference: &str, e: OciDistributionError) -> RegistryError {
    let registry = registry.to_owned();
    let status = |code: u16, message: String| match code {
        404 => RegistryError::NotFound {
            reference: reference.to_owned(),
        },
        401 | 403 => RegistryError::Denied {
            registry: registry.clone(),
            status: code,
        },
        408 | 429 | 500..=599 => RegistryError::Unavailable {
            registry: registry.clone(),
            reason: format!("HTTP {code}"),
            retry_after: None,
        },
        _ => RegistryError::Protocol {
            registry: registry.clone(),
            message: format!("HTTP {code}: {message}"),
        },
    };
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound {
            reference: reference.to_owned(),
        },
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => RegistryError::Denied {
            registry,
            status: 401,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                RegistryError::NotFound {
                    reference: reference.to_owned(),
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Denied | OciErrorCode::Unauthorized))
            {
                RegistryError::Denied {
                    registry,
                    status: 403,
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                RegistryError::Unavailable {
                    registry,
                    reason: "too many requests".into(),
                    retry_after: None,
                }
            } else {
                RegistryError::Protocol {
                    registry,
                    message: envelope.to_string(),
                }
            }
        }
        OciDistributionError::ServerError { code, message, .. } => status(code, message),
        OciDistributionError::RequestError(e) => {
            if let Some(code) = e.status() {
                status(code.as_u16(), e.to_string())
            } else {
                RegistryError::Unavailable {
                    registry,
                    reason: e.to_string(),
                    retry_after: None,
                }
            }
        }
        OciDistributionError::IoError(e) => RegistryError::Unavailable {
            registry,
            reason: e.to_string(),
            retry_after: None,
        },
        OciDistributionError::DigestError(e) => RegistryError::DigestMismatch {
            reference: reference.to_owned(),
            expected: String::new(),
            actual: e.to_string(),
        },
        other => RegistryError::Protocol {
            registry,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "u".into(),
        }
    }

    #[test]
    fn classification() {
        let c = |e| classify("r.io", "r.io/app@x", e);
        assert!(matches!(
            c(envelope(OciErrorCode::ManifestUnknown)),
            RegistryError::NotFound { .. }
        ));
        assert!(matches!(
            c(envelope(OciErrorCode::Denied)),
            RegistryError::Denied { .. }
        ));
        assert!(c(envelope(OciErrorCode::Toomanyrequests)).is_transient());
        assert!(!c(envelope(OciErrorCode::ManifestInvalid)).is_transient());
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: String::new(),
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(c(server(code)).is_transient(), "{code}");
        }
        for code in [400, 401, 403, 404, 405] {
            assert!(!c(server(code)).is_transient(), "{code}");
        }
        assert!(matches!(
            c(OciDistributionError::UnauthorizedError { url: "u".into() }),
            RegistryError::Denied { .. }
        ));
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
