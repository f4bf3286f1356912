//! The registry side: resolving tags to digests and moving a tag by copying a
//! manifest, behind the [`Registry`] trait so error mapping can be tested
//! without a network. [`oci::OciRegistry`] is the real implementation;
//! [`credentials`] keeps its credentials current while the server runs;
//! [`signatures`] finds cosign's signatures of a digest.

pub mod credentials;
pub mod oci;
pub mod signatures;

use crate::domain::names::Repository;
use async_trait::async_trait;

/// A registry failure, classified by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference} is not in the registry")]
    NotFound { reference: String },
    #[error("registry {registry} refused prodgate's credentials (HTTP {status})")]
    Denied { registry: String, status: u16 },
    /// Worth retrying: connection errors, timeouts, 408, 429 and 5xx.
    #[error("registry {registry} is unavailable: {reason}")]
    Unavailable {
        registry: String,
        reason: String,
        /// The registry's `Retry-After`, when it sent one.
        retry_after: Option<std::time::Duration>,
    },
    #[error("{reference} resolved to {actual}, expected {expected}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("registry {registry} answered unexpectedly: {message}")]
    Protocol { registry: String, message: String },
    /// prodgate would not do what the registry asked: send credentials to a
    /// token realm that breaks the rules in [`oci`], or follow a redirect to
    /// another host. Permanent: the registry or its configuration must change.
    #[error("registry {registry}: {reason}")]
    Refused { registry: String, reason: String },
    /// A manifest over [`MANIFEST_LIMIT`]; `size` is `None` when the registry
    /// sent no `Content-Length` and reading stopped at the limit.
    #[error("manifest {reference} is {}, over the 4 MiB limit for manifests", size_text(.size))]
    ManifestTooLarge {
        reference: String,
        size: Option<u64>,
    },
    /// A blob over the caller's `limit`; `size` as for [`Self::ManifestTooLarge`].
    #[error("blob {reference} is {}, over the {limit}-byte limit for it", blob_size_text(.size, *.limit))]
    BlobTooLarge {
        reference: String,
        limit: usize,
        size: Option<u64>,
    },
}

/// The largest manifest prodgate reads: Distribution's own limit
/// (`maxManifestBodySize`, 4 MiB), so nothing bigger can be pushed back anyway.
pub const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;

/// The largest blob prodgate uploads. The only blobs it pushes are a
/// promotion record (a few KiB) and the empty config; one request carries
/// the whole blob (a monolithic upload), so it is kept small.
pub const PUSH_BLOB_LIMIT: usize = 1024 * 1024;

/// The media type of an OCI image index (what the referrers tag schema
/// keeps under `sha256-<hex>`).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn size_text(size: &Option<u64>) -> String {
    match size {
        Some(n) => format!("{n} bytes"),
        None => format!("more than {MANIFEST_LIMIT} bytes (sent without a Content-Length)"),
    }
}

fn blob_size_text(size: &Option<u64>, limit: usize) -> String {
    match size {
        Some(n) => format!("{n} bytes"),
        None => format!("more than {limit} bytes (sent without a Content-Length)"),
    }
}

impl RegistryError {
    /// Whether trying the same call again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unavailable { .. } => true,
            RegistryError::NotFound { .. }
            | RegistryError::Denied { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::Refused { .. }
            | RegistryError::ManifestTooLarge { .. }
            | RegistryError::BlobTooLarge { .. } => false,
        }
    }
}

/// A manifest exactly as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `sha256:` of `bytes`, verified.
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// What a tag move found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Where the tag pointed right before the push; empty if it did not exist.
    pub previous_digest: String,
}

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The digest `reference` (a tag or digest) points to now, or `None` if absent.
    async fn resolve(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<String>, RegistryError>;

    /// The manifest `reference` (a tag or digest) points to now, or `None`.
    async fn fetch(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError>;

    /// The blob `digest` (`sha256:<hex>`) of `repo`, checked against its
    /// digest, or `None` if absent; refused over `limit` bytes
    /// ([`RegistryError::BlobTooLarge`]).
    async fn fetch_blob(
        &self,
        repo: &Repository,
        digest: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, RegistryError>;

    /// Points `tag` at `manifest` by pushing its exact bytes (no blob moves):
    /// reads where the tag points first, pushes, reads the tag back to confirm.
    async fn move_tag(
        &self,
        repo: &Repository,
        manifest: &Manifest,
        tag: &str,
    ) -> Result<Moved, RegistryError>;

    /// Uploads `bytes` as a blob of `repo` in one request (a monolithic
    /// upload: POST, then PUT with the digest) and returns its digest
    /// (`sha256:<hex>`); refused over [`PUSH_BLOB_LIMIT`] before any request.
    async fn push_blob(&self, repo: &Repository, bytes: &[u8]) -> Result<String, RegistryError>;

    /// Pushes `manifest`'s exact bytes under `reference`: its own digest or
    /// a tag. Refused before any request when the bytes do not hash to its
    /// digest or are over [`MANIFEST_LIMIT`]. Nothing is compared or read
    /// back: callers that race other writers do that around it.
    async fn push_manifest(
        &self,
        repo: &Repository,
        manifest: &Manifest,
        reference: &str,
    ) -> Result<(), RegistryError>;

    /// The OCI image index `tag` points to, asked for as
    /// [`INDEX_MEDIA_TYPE`] only, or `None` if the tag does not exist; read
    /// up to [`MANIFEST_LIMIT`]. A tag carrying anything but an index is
    /// [`RegistryError::Protocol`].
    async fn fetch_index(
        &self,
        repo: &Repository,
        tag: &str,
    ) -> Result<Option<Manifest>, RegistryError>;
}
