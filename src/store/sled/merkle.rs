//! The Merkle tree's stored nodes in sled (see `store::merkle`). Derived
//! from the audit log like the indexes: written with each entry, cut back
//! with a refused entry, and rebuilt at open for entries that have none (a
//! store written before the tree existed or before this layout, or a crash
//! between an entry and its nodes).
//!
//! Layout: tree `merkle_chunks`, key = chunk number (u64, big-endian),
//! value = the 32-byte hashes of stored hash indexes `chunk × CHUNK ..`,
//! concatenated; every chunk but the last is full. Nodes are only ever
//! appended in index order, so the first [`Nodes::stored`] indexes are
//! present. One key per node (the first layout, tree `merkle`) made the
//! nodes twice as many sled keys as everything else together: sled splits
//! a leaf page past 16 keys and keeps per-page bookkeeping in memory, so at
//! 1,000,000 entries the per-node layout held about half of sled's ~460,000
//! pages and of its page table's memory (BENCHMARKS.md). Chunks of 16
//! nodes (512 bytes) keep a proof's reads small; the chunk being filled is
//! kept in memory (see [`Nodes`]).

use super::{Trees, keys};
use crate::domain::audit::AuditEntry;
use crate::store::StoreError;
use crate::store::codec::decode_entry;
use crate::store::merkle::{self, NodeReader};

/// Nodes per stored value.
const CHUNK: u64 = 16;
const NODE: usize = 32;
const TREE: &str = "merkle_chunks";
/// The first layout's tree, dropped once the nodes are in [`TREE`].
const OLD_TREE: &str = "merkle";

/// The stored nodes, by stored hash index. The chunk being filled (the
/// tail) is kept in memory and written to sled when it fills and at the end
/// of each of the writer's batches ([`Nodes::sync`], before the batch's
/// flush), so appending an entry costs no sled write most of the time.
/// Nodes are derived: a crash that loses an unwritten tail loses nothing
/// [`repair`] does not rebuild at the next start. Readers see the tail too.
#[derive(Clone)]
pub struct Nodes {
    tree: sled::Tree,
    tail: std::sync::Arc<std::sync::Mutex<Option<Tail>>>,
}

/// The last chunk, as appended; `dirty` until written to sled.
struct Tail {
    chunk: u64,
    value: Vec<u8>,
    dirty: bool,
}

impl Tail {
    /// Writes the chunk to sled if it changed since it was last written.
    fn write_to(&mut self, tree: &sled::Tree) -> Result<(), StoreError> {
        if self.dirty {
            tree.insert(keys::u64_key(self.chunk), self.value.as_slice())?;
            self.dirty = false;
        }
        Ok(())
    }
}

impl Nodes {
    pub fn open(db: &sled::Db) -> Result<Nodes, StoreError> {
        Ok(Nodes {
            tree: db.open_tree(TREE)?,
            tail: Default::default(),
        })
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Option<Tail>> {
        // The tail is consistent after every statement that changes it.
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many nodes are stored: indexes `0..` this.
    pub fn stored(&self) -> Result<u64, StoreError> {
        if let Some(t) = self.tail().as_ref() {
            return Ok(t.chunk * CHUNK + (t.value.len() / NODE) as u64);
        }
        Ok(match self.tree.last()? {
            Some((k, v)) => keys::read_u64(&k).map_or(0, |c| c * CHUNK + (v.len() / NODE) as u64),
            None => 0,
        })
    }

    /// Writes the tail to sled if it changed since it was last written.
    pub fn sync(&self) -> Result<(), StoreError> {
        match self.tail().as_mut() {
            Some(t) => t.write_to(&self.tree),
            None => Ok(()),
        }
    }

    /// Stores `nodes` under consecutive indexes from `first`, which is at
    /// most [`Nodes::stored`] (nodes are appended in order; writing an index
    /// again writes the same hash, so appending an entry twice changes
    /// nothing).
    fn put(&self, first: u64, nodes: &[[u8; 32]]) -> Result<(), StoreError> {
        let mut guard = self.tail();
        let mut index = first;
        let mut rest = nodes;
        while !rest.is_empty() {
            let (chunk, slot) = (index / CHUNK, (index % CHUNK) as usize);
            if guard.as_ref().is_none_or(|t| t.chunk != chunk) {
                if let Some(t) = guard.as_mut() {
                    t.write_to(&self.tree)?;
                }
                let value = self
                    .tree
                    .get(keys::u64_key(chunk))?
                    .map_or_else(Vec::new, |v| v.to_vec());
                *guard = Some(Tail {
                    chunk,
                    value,
                    dirty: false,
                });
            }
            let Some(tail) = guard.as_mut() else {
                unreachable!("the tail was set above");
            };
            let take = rest.len().min(CHUNK as usize - slot);
            if tail.value.len() < slot * NODE {
                return Err(corrupt(
                    index,
                    format!(
                        "appended after a gap: its chunk holds {} nodes",
                        tail.value.len() / NODE
                    ),
                ));
            }
            let end = tail.value.len().max((slot + take) * NODE);
            tail.value.resize(end, 0);
            for (i, node) in rest[..take].iter().enumerate() {
                tail.value[(slot + i) * NODE..(slot + i + 1) * NODE].copy_from_slice(node);
            }
            tail.dirty = true;
            if tail.value.len() == CHUNK as usize * NODE {
                tail.write_to(&self.tree)?;
            }
            index += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Keeps the first `keep` nodes and removes the rest.
    fn keep(&self, keep: u64) -> Result<(), StoreError> {
        self.sync()?;
        *self.tail() = None;
        while let Some((k, v)) = self.tree.last()? {
            let Some(start) = keys::read_u64(&k).map(|c| c * CHUNK) else {
                self.tree.remove(k)?;
                continue;
            };
            if start >= keep {
                self.tree.remove(k)?;
                continue;
            }
            let len = (keep - start) as usize * NODE;
            if v.len() > len {
                self.tree.insert(k, &v[..len])?;
            }
            break;
        }
        Ok(())
    }
}

fn corrupt(index: u64, reason: String) -> StoreError {
    StoreError::Corrupt {
        what: format!("Merkle node {index}"),
        reason,
    }
}

impl NodeReader for Nodes {
    fn node(&self, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let (chunk, slot) = (index / CHUNK, (index % CHUNK) as usize * NODE);
        if let Some(t) = self.tail().as_ref().filter(|t| t.chunk == chunk) {
            return Ok(t
                .value
                .get(slot..slot + NODE)
                .and_then(|h| h.try_into().ok()));
        }
        let Some(v) = self.tree.get(keys::u64_key(chunk))? else {
            return Ok(None);
        };
        match v.get(slot..slot + NODE) {
            Some(h) => h
                .try_into()
                .map(Some)
                .map_err(|_| corrupt(index, "not 32 bytes".into())),
            None if v.len() % NODE != 0 => Err(corrupt(
                index,
                format!("its chunk is {} bytes, not a multiple of 32", v.len()),
            )),
            None => Ok(None),
        }
    }
}

/// Stores the nodes `entry` adds. Idempotent: the same entry gives the same
/// nodes under the same indexes. Does nothing while the nodes of earlier
/// entries are missing: after a crash lost the chunk being filled, the
/// start finishes a derivation cut short (`redo_derived`) before [`repair`]
/// rebuilds the missing nodes, this entry's included.
pub fn append(t: &Trees, entry: &AuditEntry) -> Result<(), StoreError> {
    if t.merkle.stored()? < merkle::stored_count(entry.sequence.saturating_sub(1)) {
        return Ok(());
    }
    let (first, nodes) = merkle::nodes_for(entry.sequence, &entry.hash, &t.merkle)?;
    t.merkle.put(first, &nodes)
}

/// Removes the nodes of every entry after the first `size`.
pub fn truncate(t: &Trees, size: u64) -> Result<(), StoreError> {
    t.merkle.keep(merkle::stored_count(size))
}

/// Stores the nodes of entries that have none and drops the first layout's
/// tree; returns how many entries were added to the tree.
pub fn repair(t: &Trees) -> Result<u64, StoreError> {
    let len = match t.audit.last()? {
        Some((k, _)) => keys::read_u64(&k).unwrap_or(0),
        None => 0,
    };
    let have = t.merkle.stored()?;
    // The entries whose nodes are all stored: the largest size whose count
    // fits. A partly stored entry is written again from its first node.
    let mut done = 0;
    while done < len && merkle::stored_count(done + 1) <= have {
        done += 1;
    }
    if done < len {
        truncate(t, done)?;
        for seq in done + 1..=len {
            let key = keys::u64_key(seq);
            let v = t.audit.get(key)?.ok_or_else(|| StoreError::Corrupt {
                what: format!("audit entry {seq}"),
                reason: "missing from the log".into(),
            })?;
            append(t, &decode_entry(keys::number(&key), &v)?)?;
        }
    }
    // What `redo_derived` and the loop above appended, before the caller's
    // flush.
    t.merkle.sync()?;
    // Only after the nodes above are in place: a crash before this line
    // leaves the old tree to be dropped at the next start.
    if t.db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == OLD_TREE.as_bytes())
    {
        // Emptied key by key first: sled's `drop_tree` reads every page of
        // the tree into memory at once (hundreds of MB at a million
        // entries), while single removes stay within its cache.
        let old = t.db.open_tree(OLD_TREE)?;
        for key in old.iter().keys() {
            old.remove(key?)?;
        }
        t.db.drop_tree(OLD_TREE)?;
        tracing::info!(
            "dropped the Merkle nodes' first layout (tree `merkle`); they are in `merkle_chunks`"
        );
    }
    Ok(len - done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::merkle::MemoryNodes;

    fn nodes() -> Nodes {
        let db = sled::Config::new().temporary(true).open().unwrap();
        Nodes::open(&db).unwrap()
    }

    fn hash(i: u64) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&i.to_be_bytes());
        h[31] = 0xaa;
        h
    }

    /// Appending entry by entry across chunk boundaries stores what the
    /// in-memory reference stores, and answers roots alike.
    #[test]
    fn chunks_hold_what_one_key_per_node_held() {
        let n = nodes();
        let mut reference = MemoryNodes::default();
        for seq in 1..=100u64 {
            let (first, stored) = merkle::nodes_for(seq, &hash(seq), &n).unwrap();
            n.put(first, &stored).unwrap();
            reference.append(seq, &hash(seq));
            assert_eq!(n.stored().unwrap(), merkle::stored_count(seq));
        }
        for i in 0..merkle::stored_count(100) {
            assert_eq!(n.node(i).unwrap(), reference.node(i).unwrap(), "node {i}");
        }
        assert_eq!(n.node(merkle::stored_count(100)).unwrap(), None);
        for size in [1, 16, 17, 64, 99, 100] {
            assert_eq!(
                merkle::root(size, &n).unwrap(),
                merkle::root(size, &reference).unwrap()
            );
        }
    }

    /// Keeping a prefix cuts inside a chunk and drops later chunks; nodes
    /// appended again after it are the same.
    #[test]
    fn keep_cuts_back_to_a_prefix() {
        let n = nodes();
        for seq in 1..=40u64 {
            let (first, stored) = merkle::nodes_for(seq, &hash(seq), &n).unwrap();
            n.put(first, &stored).unwrap();
        }
        let root = merkle::root(40, &n).unwrap();
        let keep = merkle::stored_count(13);
        n.keep(keep).unwrap();
        assert_eq!(n.stored().unwrap(), keep);
        assert_eq!(n.node(keep).unwrap(), None);
        for seq in 14..=40u64 {
            let (first, stored) = merkle::nodes_for(seq, &hash(seq), &n).unwrap();
            n.put(first, &stored).unwrap();
        }
        assert_eq!(merkle::root(40, &n).unwrap(), root);
    }

    /// The chunk being filled reaches sled when it fills or on `sync`,
    /// not before: what a view over the same tree after a crash would see.
    #[test]
    fn the_tail_reaches_sled_when_full_or_synced() {
        let n = nodes();
        let after_crash = || Nodes {
            tree: n.tree.clone(),
            tail: Default::default(),
        };
        for seq in 1..=3u64 {
            let (first, stored) = merkle::nodes_for(seq, &hash(seq), &n).unwrap();
            n.put(first, &stored).unwrap();
        }
        assert_eq!(n.stored().unwrap(), merkle::stored_count(3));
        assert_eq!(after_crash().stored().unwrap(), 0);
        n.sync().unwrap();
        assert_eq!(after_crash().stored().unwrap(), merkle::stored_count(3));
        for seq in 4..=12u64 {
            let (first, stored) = merkle::nodes_for(seq, &hash(seq), &n).unwrap();
            n.put(first, &stored).unwrap();
        }
        // 12 entries store 22 nodes: the first chunk is full and written.
        assert_eq!(merkle::stored_count(12), 22);
        assert_eq!(after_crash().stored().unwrap(), CHUNK);
        assert_eq!(
            after_crash().node(CHUNK - 1).unwrap(),
            n.node(CHUNK - 1).unwrap()
        );
    }

    /// A write past the stored nodes would leave a hole: refused.
    #[test]
    fn a_gap_is_refused() {
        let n = nodes();
        n.put(0, &[hash(0)]).unwrap();
        assert!(matches!(
            n.put(5, &[hash(5)]),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(n.stored().unwrap(), 1);
    }
}
