//! The Merkle tree's stored nodes in sled (tree `merkle`: stored hash index
//! → 32-byte hash; see `store::merkle`). Derived from the audit log like the
//! indexes: written with each entry, cut back with a refused entry, and
//! rebuilt at open for entries that have none (a store written before the
//! tree existed, or a crash between an entry and its nodes).

use super::codec::decode_entry;
use super::{Trees, keys};
use crate::domain::audit::AuditEntry;
use crate::store::StoreError;
use crate::store::merkle::{self, NodeReader};

impl NodeReader for sled::Tree {
    fn node(&self, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        match self.get(keys::u64_key(index))? {
            None => Ok(None),
            Some(v) => v
                .as_ref()
                .try_into()
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    what: format!("Merkle node {index}"),
                    reason: format!("{} bytes, not 32", v.len()),
                }),
        }
    }
}

/// Stores the nodes `entry` adds. Idempotent: the same entry gives the same
/// nodes under the same indexes.
pub fn append(t: &Trees, entry: &AuditEntry) -> Result<(), StoreError> {
    let (first, nodes) = merkle::nodes_for(entry.sequence, &entry.hash, &t.merkle)?;
    for (i, node) in (first..).zip(nodes) {
        t.merkle.insert(keys::u64_key(i), &node)?;
    }
    Ok(())
}

/// How many nodes are stored (they are written in index order).
fn stored(t: &Trees) -> Result<u64, StoreError> {
    Ok(match t.merkle.last()? {
        Some((k, _)) => keys::read_u64(&k).map_or(0, |i| i + 1),
        None => 0,
    })
}

/// Removes the nodes of every entry after the first `size`.
pub fn truncate(t: &Trees, size: u64) -> Result<(), StoreError> {
    let keep = merkle::stored_count(size);
    while let Some((k, _)) = t.merkle.last()? {
        if keys::read_u64(&k).is_none_or(|i| i < keep) {
            break;
        }
        t.merkle.remove(k)?;
    }
    Ok(())
}

/// Stores the nodes of entries that have none; returns how many entries
/// were added to the tree.
pub fn repair(t: &Trees) -> Result<u64, StoreError> {
    let len = match t.audit.last()? {
        Some((k, _)) => keys::read_u64(&k).unwrap_or(0),
        None => 0,
    };
    let have = stored(t)?;
    // The entries whose nodes are all stored: the largest size whose count
    // fits. A partly stored entry is written again from its first node.
    let mut done = 0;
    while done < len && merkle::stored_count(done + 1) <= have {
        done += 1;
    }
    if done == len {
        return Ok(0);
    }
    truncate(t, done)?;
    for seq in done + 1..=len {
        let key = keys::u64_key(seq);
        let v = t.audit.get(key)?.ok_or_else(|| StoreError::Corrupt {
            what: format!("audit entry {seq}"),
            reason: "missing from the log".into(),
        })?;
        append(t, &decode_entry(&key, &v)?)?;
    }
    Ok(len - done)
}
