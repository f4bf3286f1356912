//! The registry side: resolving tags to digests and moving a tag by copying a
//! manifest, behind the [`Registry`] trait so error mapping can be tested
//! without a network. [`oci::OciRegistry`] is the real implementation.

pub mod oci;

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
}

impl RegistryError {
    /// Whether trying the same call again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unavailable { .. } => true,
            RegistryError::NotFound { .. }
            | RegistryError::Denied { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::Protocol { .. } => false,
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

    /// Points `tag` at `manifest` by pushing its exact bytes (no blob moves):
    /// reads where the tag points first, pushes, reads the tag back to confirm.
    async fn move_tag(
        &self,
        repo: &Repository,
        manifest: &Manifest,
        tag: &str,
    ) -> Result<Moved, RegistryError>;
}
