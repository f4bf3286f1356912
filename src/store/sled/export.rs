//! A stopped server's store, read for `prodgate migrate`: the audit
//! records as stored (their bytes are what the PostgreSQL backend stores
//! too), the pinned manifests and policy versions, and the checks the
//! copy is compared against (chain, promotions, Merkle root).
//!
//! Opened as `verify-log --data-dir` opens it ([`dir::open_existing`]): it
//! refuses a running server's store and creates nothing. What only a
//! server's start repairs (a directory in an earlier format, entries a failed flush
//! refused) is refused with the one step that fixes it, rather than
//! repaired here: the copy must be of a store a server would serve.

use super::keys::decode_manifest;
use super::{Trees, dir, horizon, keys};
use crate::domain::audit::{Verification, Verifier};
use crate::domain::model::{Promotion, PromotionId};
use crate::store::codec::{Record, decode_record, decode_stored_promotion};
use crate::store::{StoreError, StoredManifest};
use std::path::{Path, PathBuf};

/// One audit record: the entry, the promotion after it, and the bytes it is
/// stored as.
pub struct Exported {
    pub record: Record,
    pub bytes: Vec<u8>,
}

/// A stopped server's store, open for reading; sled's lock keeps a server
/// from starting on it meanwhile.
pub struct Snapshot {
    trees: Trees,
    dir: PathBuf,
}

fn needs_start(dir: &Path, why: &str) -> dir::DirError {
    dir::DirError::NeedsStart {
        dir: dir.to_owned(),
        why: why.to_owned(),
    }
}

impl Snapshot {
    pub fn open(dir: &Path) -> Result<Snapshot, dir::DirError> {
        let (trees, format) = super::open_offline(dir)?;
        // The copy stores the records' bytes as they are: they must be in
        // the format the PostgreSQL backend reads.
        if let Some(n) = format.filter(|n| *n != super::FORMAT_VERSION) {
            return Err(needs_start(dir, &format!("is in store format {n}")));
        }
        let refused = horizon::peek(dir).map_err(|source| dir::DirError::Unreadable {
            dir: dir.join(horizon::FILE_NAME),
            source,
        })?;
        if let Some(acknowledged) = refused {
            return Err(needs_start(
                dir,
                &format!(
                    "holds audit entries after sequence {acknowledged} whose flush failed (their callers were refused)"
                ),
            ));
        }
        Ok(Snapshot {
            trees,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every audit record in sequence order.
    pub fn audit(&self) -> impl Iterator<Item = Result<Exported, StoreError>> + '_ {
        self.trees.audit.iter().map(|kv| {
            let (k, v) = kv?;
            let record = decode_record(keys::number(&k), &v)?;
            if keys::read_u64(&k) != Some(record.entry.sequence) {
                return Err(StoreError::Corrupt {
                    what: format!("audit entry {}", record.entry.sequence),
                    reason: "stored under another sequence".into(),
                });
            }
            Ok(Exported {
                record,
                bytes: v.to_vec(),
            })
        })
    }

    /// The audit log's last sequence.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        self.trees.audit_len()
    }

    /// The chain check `verify-log --data-dir` runs.
    pub fn verify(&self) -> Result<Verification, StoreError> {
        Ok(self.trees.verify_from(Verifier::default())?.0)
    }

    /// Every stored promotion record, by id.
    pub fn promotions(
        &self,
    ) -> impl Iterator<Item = Result<(PromotionId, Promotion), StoreError>> + '_ {
        self.trees.promotions.iter().map(|kv| {
            let (k, v) = kv?;
            let p = decode_stored_promotion(keys::number(&k), &v)?.promotion;
            Ok((p.id, p))
        })
    }

    /// Every pinned manifest: repository, digest, manifest.
    pub fn manifests(
        &self,
    ) -> impl Iterator<Item = Result<(String, String, StoredManifest), StoreError>> + '_ {
        self.trees.manifests.iter().map(|kv| {
            let (k, v) = kv?;
            let corrupt = |reason: &str| StoreError::Corrupt {
                what: format!("pinned manifest {}", String::from_utf8_lossy(&k)),
                reason: reason.to_owned(),
            };
            let zero = k
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt("a key without repository and digest"))?;
            let text = |b: &[u8]| {
                std::str::from_utf8(b)
                    .map(str::to_owned)
                    .map_err(|_| corrupt("a key that is not UTF-8"))
            };
            let (repository, digest) = (text(&k[..zero])?, text(&k[zero + 1..])?);
            let m = decode_manifest(&v).ok_or_else(|| corrupt("bad encoding"))?;
            Ok((repository, digest, m))
        })
    }

    /// Every kept policy version: digest, canonical JSON.
    pub fn policies(&self) -> impl Iterator<Item = Result<(String, String), StoreError>> + '_ {
        self.trees.policies.iter().map(|kv| {
            let (k, v) = kv?;
            let corrupt = || StoreError::Corrupt {
                what: format!("policy {}", String::from_utf8_lossy(&k)),
                reason: "not UTF-8".into(),
            };
            let digest = String::from_utf8(k.to_vec()).map_err(|_| corrupt())?;
            let json = String::from_utf8(v.to_vec()).map_err(|_| corrupt())?;
            Ok((digest, json))
        })
    }

    /// The root of the first `size` entries from sled's stored Merkle
    /// nodes, or `None` where they do not cover `size` (a server's start
    /// adds the missing ones; the copy computes its own either way).
    pub fn tree_root(&self, size: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let stored = self.trees.merkle.stored()?;
        if stored < crate::store::merkle::stored_count(size) {
            return Ok(None);
        }
        crate::store::merkle::root(size, &self.trees.merkle).map(Some)
    }
}
