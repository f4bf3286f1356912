//! The audit log as an RFC 9162 Merkle tree, for every backend: leaf *i*
//! (sequence *i*+1) has leaf hash SHA-256(0x00 ‖ the entry's 32-byte hash),
//! interior nodes SHA-256(0x01 ‖ left ‖ right).
//!
//! A backend stores the tree's nodes as they complete, in the flat order of
//! Go's `sumdb/tlog` ("stored hash index"; `tlog_tiles` is its Rust port):
//! appending entry *n* stores its leaf hash and the hash of every subtree it
//! completes, under consecutive indexes from `stored_hash_index(0, n)`. Roots
//! and proofs then read at most a few dozen stored nodes, whatever the size
//! of the log, and nothing is recomputed. A backend provides a
//! [`NodeReader`] over its stored nodes; the functions here do the rest.

use crate::store::StoreError;
pub use tlog_tiles::tlog::Hash;
use tlog_tiles::tlog::{self, HashReader};

/// A backend's read access to its stored nodes, by stored hash index.
pub trait NodeReader {
    /// The node stored at `index`, if it was.
    fn node(&self, index: u64) -> Result<Option<[u8; 32]>, StoreError>;
}

/// Adapts a [`NodeReader`] to `tlog_tiles`, which requires every requested
/// hash or an error (never a short answer).
struct Reader<'a, R: NodeReader + ?Sized>(&'a R);

impl<R: NodeReader + ?Sized> HashReader for Reader<'_, R> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|&i| match self.0.node(i) {
                Ok(Some(h)) => Ok(Hash(h)),
                Ok(None) | Err(_) => Err(tlog::Error::IndexesNotInTree),
            })
            .collect()
    }
}

fn failed(doing: &str, e: tlog::Error) -> StoreError {
    StoreError::Corrupt {
        what: "the audit log's Merkle tree".into(),
        reason: format!("{doing}: {e}"),
    }
}

/// The leaf hash of an entry whose chain hash is `entry_hash`.
pub fn leaf_hash(entry_hash: &[u8; 32]) -> Hash {
    tlog::record_hash(entry_hash)
}

/// The nodes to store when entry `sequence` is appended, with the index of
/// the first (the rest follow it). Reads the completed subtrees it joins.
pub fn nodes_for(
    sequence: u64,
    entry_hash: &[u8; 32],
    r: &(impl NodeReader + ?Sized),
) -> Result<(u64, Vec<[u8; 32]>), StoreError> {
    let n = sequence
        .checked_sub(1)
        .ok_or_else(|| failed("appending", tlog::Error::InvalidInput("sequence 0".into())))?;
    let hashes = tlog::stored_hashes_for_record_hash(n, leaf_hash(entry_hash), &Reader(r))
        .map_err(|e| failed(&format!("appending entry {sequence}"), e))?;
    Ok((
        tlog::stored_hash_index(0, n),
        hashes.into_iter().map(|h| h.0).collect(),
    ))
}

/// The stored indexes of the perfect subtrees a tree of `size` entries is
/// made of, largest (leftmost) first: its frontier. Appending the entries
/// after `size` reads no stored node but these and the nodes those appends
/// store themselves ([`nodes_for`] reads only left siblings of the subtrees
/// it completes, and a left sibling entirely within the first `size`
/// entries whose right sibling is not is one of these), so a writer that
/// holds them needs to read nothing else.
pub fn frontier(size: u64) -> Vec<u64> {
    let mut start = 0;
    (0..u64::BITS as u8)
        .rev()
        .filter(|&level| size >> level & 1 == 1)
        .map(|level| {
            let index = tlog::stored_hash_index(level, start >> level);
            start += 1 << level;
            index
        })
        .collect()
}

/// How many nodes a tree of `size` entries has stored.
pub fn stored_count(size: u64) -> u64 {
    tlog::stored_hash_count(size)
}

/// The root hash of the tree of the first `size` entries.
pub fn root(size: u64, r: &(impl NodeReader + ?Sized)) -> Result<[u8; 32], StoreError> {
    tlog::tree_hash(size, &Reader(r))
        .map(|h| h.0)
        .map_err(|e| failed(&format!("the root of size {size}"), e))
}

/// The RFC 9162 inclusion proof of leaf `index` in the tree of `size`.
pub fn inclusion_proof(
    index: u64,
    size: u64,
    r: &(impl NodeReader + ?Sized),
) -> Result<Vec<[u8; 32]>, StoreError> {
    tlog::prove_record(size, index, &Reader(r))
        .map(|p| p.into_iter().map(|h| h.0).collect())
        .map_err(|e| failed(&format!("proving leaf {index} in size {size}"), e))
}

/// The RFC 9162 consistency proof from the tree of `from` entries to the
/// tree of `to` (`1 <= from <= to`).
pub fn consistency_proof(
    from: u64,
    to: u64,
    r: &(impl NodeReader + ?Sized),
) -> Result<Vec<[u8; 32]>, StoreError> {
    tlog::prove_tree(to, from, &Reader(r))
        .map(|p| p.into_iter().map(|h| h.0).collect())
        .map_err(|e| failed(&format!("proving size {from} in size {to}"), e))
}

/// A tree's stored nodes in memory: for tests of what reads them, and for
/// the CLI, which rebuilds a tree from entries it fetched to learn its
/// roots without trusting the server's.
#[derive(Default)]
pub struct MemoryNodes(pub std::collections::HashMap<u64, [u8; 32]>);

impl MemoryNodes {
    /// Stores the nodes entry `sequence` adds, as a backend does; entries
    /// must come in order from 1.
    pub fn push(&mut self, sequence: u64, entry_hash: &[u8; 32]) -> Result<(), StoreError> {
        let (first, nodes) = nodes_for(sequence, entry_hash, self)?;
        for (i, n) in (first..).zip(nodes) {
            self.0.insert(i, n);
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn append(&mut self, sequence: u64, entry_hash: &[u8; 32]) {
        self.push(sequence, entry_hash).unwrap();
    }
}

impl NodeReader for MemoryNodes {
    fn node(&self, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.0.get(&index).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn entry_hash(i: u64) -> [u8; 32] {
        Sha256::digest(i.to_be_bytes()).into()
    }

    /// MTH of RFC 9162 §2.1.1, written out recursively: the reference.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest(b"").into(),
            1 => {
                let mut h = Sha256::new();
                h.update([0u8]);
                h.update(leaves[0]);
                h.finalize().into()
            }
            n => {
                // The largest power of two smaller than n.
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                let mut h = Sha256::new();
                h.update([1u8]);
                h.update(mth(&leaves[..k]));
                h.update(mth(&leaves[k..]));
                h.finalize().into()
            }
        }
    }

    /// A writer holding only a tree's frontier appends exactly the nodes a
    /// writer holding the whole tree does (what the PostgreSQL writer keeps
    /// across its batches instead of reading them back).
    #[test]
    fn the_frontier_is_all_that_appending_reads() {
        let mut full = MemoryNodes::default();
        for seq in 1..=300u64 {
            full.append(seq, &entry_hash(seq));
        }
        for size in 0..=260u64 {
            let indexes = frontier(size);
            assert_eq!(indexes.len() as u32, size.count_ones(), "size {size}");
            let mut kept = MemoryNodes(indexes.iter().map(|&i| (i, full.0[&i])).collect());
            if size > 0 {
                assert_eq!(root(size, &kept).unwrap(), root(size, &full).unwrap());
            }
            for seq in size + 1..=size + 40 {
                kept.push(seq, &entry_hash(seq)).unwrap();
            }
            for (i, h) in &kept.0 {
                assert_eq!(full.0.get(i), Some(h), "size {size}, node {i}");
            }
            assert_eq!(
                root(size + 40, &kept).unwrap(),
                root(size + 40, &full).unwrap()
            );
        }
    }

    #[test]
    fn stored_nodes_give_the_rfc_9162_root_at_every_size() {
        let mut m = MemoryNodes::default();
        let mut leaves = Vec::new();
        for seq in 1..=70u64 {
            let h = entry_hash(seq);
            m.append(seq, &h);
            leaves.push(h);
            assert_eq!(m.0.len() as u64, stored_count(seq));
            assert_eq!(root(seq, &m).unwrap(), mth(&leaves), "size {seq}");
        }
        // Proofs verify with the reference checks, and a missing node is an
        // error, never a panic or a short proof.
        let root70 = Hash(root(70, &m).unwrap());
        for index in [0, 31, 69] {
            let p: Vec<Hash> = inclusion_proof(index, 70, &m)
                .unwrap()
                .into_iter()
                .map(Hash)
                .collect();
            tlog::check_record(&p, 70, root70, index, leaf_hash(&leaves[index as usize])).unwrap();
        }
        let p: Vec<Hash> = consistency_proof(13, 70, &m)
            .unwrap()
            .into_iter()
            .map(Hash)
            .collect();
        tlog::check_tree(&p, 70, root70, 13, Hash(root(13, &m).unwrap())).unwrap();
        m.0.remove(&0);
        assert!(inclusion_proof(1, 70, &m).is_err());
    }
}
