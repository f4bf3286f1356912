//! The export bundle (`prodgate export`) and its offline check
//! (`prodgate verify-export`): JSON lines an auditor can verify with nothing
//! but the log's verifier key. The README documents the format well enough
//! to write another verifier:
//!
//! 1. `{"type":"checkpoint","size":N,"root_hash":HEX,"note":NOTE}`: the
//!    signed checkpoint the bundle is checked against;
//! 2. `{"type":"inclusion_proof","leaf_index":M,"tree_size":N,"hashes":[HEX…]}`:
//!    the RFC 9162 inclusion proof of the first exported entry (sequence
//!    M+1); its left-hand hashes stand for every entry before it;
//! 3. one `{"type":"entry",…}` per entry, sequences M+1 to N in order, with
//!    every hashed field as hashed (`time_seconds`, `time_nanos`, the action
//!    number, `promotion_id` as text, `attributes`), `prev_hash` and `hash`.
//!
//! The check: the note's signature by the given key; the note's size and
//! root equal the bundle's; each entry's hash recomputed and chained to the
//! one before; the inclusion proof valid for the first entry; and the root
//! recomputed from the proof's left-hand hashes and every exported entry
//! equal to the checkpoint's, which binds every exported entry to it.

use crate::domain::audit::HashInput;
use crate::domain::model::Time;
use serde::{Deserialize, Serialize};
use signed_note::{Note, StandardVerifier, Verifier, VerifierList};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use tlog_tiles::checkpoint::Checkpoint;
use tlog_tiles::tlog::{self, Hash, HashReader};

/// Longest line read: an entry is a few KiB of text at most.
const MAX_LINE: usize = 1 << 20;

/// One line of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    Checkpoint {
        size: u64,
        root_hash: String,
        note: String,
    },
    InclusionProof {
        leaf_index: u64,
        tree_size: u64,
        hashes: Vec<String>,
    },
    /// Boxed: an entry is far larger than the other lines.
    Entry(Box<Entry>),
}

/// An audit entry with every field the hash covers, as hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub sequence: u64,
    pub time_seconds: i64,
    pub time_nanos: u32,
    pub action: u32,
    pub actor: String,
    pub promotion_id: String,
    pub repository: String,
    pub environment: String,
    pub digest: String,
    pub previous_digest: String,
    pub comment: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub prev_hash: String,
    pub hash: String,
}

impl Entry {
    /// What the entry's fields hash to (`None` if `prev_hash` is not 32
    /// bytes of hex).
    pub fn computed_hash(&self) -> Option<[u8; 32]> {
        Some(
            HashInput {
                prev_hash: &hex32(&self.prev_hash)?,
                sequence: self.sequence,
                time: Time {
                    seconds: self.time_seconds,
                    nanos: self.time_nanos,
                },
                action_number: self.action,
                actor: &self.actor,
                promotion_id: &self.promotion_id,
                repository: &self.repository,
                environment: &self.environment,
                digest: &self.digest,
                previous_digest: &self.previous_digest,
                comment: &self.comment,
                attributes: &self.attributes,
            }
            .hash(),
        )
    }
}

/// What a verified bundle covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub origin: String,
    pub key_name: String,
    pub tree_size: u64,
    /// The first exported sequence.
    pub first: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("line {line}: {message}")]
    Malformed { line: usize, message: String },
    #[error("the verifier key is not a signed-note Ed25519 verifier key (<name>+<8 hex>+<base64>)")]
    BadKey,
    #[error("the checkpoint's signature does not verify with this key: {0}")]
    Signature(String),
    #[error("the checkpoint note says {what} {note}, the bundle says {bundle}")]
    Mismatch {
        what: &'static str,
        note: String,
        bundle: String,
    },
    #[error("entry {sequence}: {message}")]
    BadEntry { sequence: u64, message: String },
    #[error("the inclusion proof of entry {0} does not lead to the checkpoint's root")]
    BadProof(u64),
    #[error(
        "the exported entries do not lead to the checkpoint's root: an entry was changed, added or left out"
    )]
    BadRoot,
    #[error("cannot read the bundle: {0}")]
    Read(String),
    /// A checkpoint alone proves nothing about any entry.
    #[error(
        "the bundle holds no entries, only the checkpoint at size {0}: there is nothing to verify"
    )]
    NoEntries(u64),
}

/// 32 bytes from lowercase or uppercase hex, if that is what `s` is.
pub fn hex32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// An entry's line form, from the entry as History sends it.
pub fn entry_line(e: &crate::pb::AuditEntry) -> Line {
    let time = e.time.unwrap_or_default();
    Line::Entry(Box::new(Entry {
        sequence: e.sequence,
        time_seconds: time.seconds,
        time_nanos: u32::try_from(time.nanos).unwrap_or(0),
        action: u32::try_from(e.action).unwrap_or(0),
        actor: e.actor.clone(),
        promotion_id: e.promotion_id.clone(),
        repository: e.repository.clone(),
        environment: e.environment.clone(),
        digest: e.digest.clone(),
        previous_digest: e.previous_digest.clone(),
        comment: e.comment.clone(),
        attributes: e.attributes.clone().into_iter().collect(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }))
}

/// Reads bundle lines, each at most [`MAX_LINE`] bytes.
fn lines(mut r: impl BufRead) -> impl Iterator<Item = Result<(usize, Line), BundleError>> {
    let mut n = 0;
    std::iter::from_fn(move || {
        let mut buf = Vec::new();
        n += 1;
        let read = std::io::Read::take(&mut r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf);
        match read {
            Err(e) => Some(Err(BundleError::Read(e.to_string()))),
            Ok(0) => None,
            Ok(_) if buf.len() > MAX_LINE => Some(Err(BundleError::Malformed {
                line: n,
                message: format!("longer than {MAX_LINE} bytes"),
            })),
            Ok(_) => Some(
                serde_json::from_slice::<Line>(&buf)
                    .map(|l| (n, l))
                    .map_err(|e| BundleError::Malformed {
                        line: n,
                        message: e.to_string(),
                    }),
            ),
        }
    })
}

/// Stored tree nodes in memory, by stored hash index.
#[derive(Default)]
struct Nodes(HashMap<u64, Hash>);

impl HashReader for Nodes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|i| self.0.get(i).copied().ok_or(tlog::Error::IndexesNotInTree))
            .collect()
    }
}

/// RFC 9162 §2.1.3.2: checks `proof` for leaf `index` in a tree of `size`
/// with root `root`, and returns the left-hand hashes it passed, lowest
/// first: the roots of the complete subtrees that make up the leaves
/// before `index`.
fn left_hashes(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    proof: &[[u8; 32]],
    root: [u8; 32],
) -> Option<Vec<[u8; 32]>> {
    if index >= size {
        return None;
    }
    let node = |l: &[u8; 32], r: &[u8; 32]| tlog::node_hash(Hash(*l), Hash(*r)).0;
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    let mut left = Vec::new();
    for p in proof {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            left.push(*p);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0 && r == root).then_some(left)
}

/// Verifies a bundle against `verifier_key`.
pub fn verify(r: impl BufRead, verifier_key: &str) -> Result<Report, BundleError> {
    let verifier = StandardVerifier::new(verifier_key.trim()).map_err(|_| BundleError::BadKey)?;
    let key_name = verifier.name().to_owned();
    let mut lines = lines(r);
    let malformed = |line, message: &str| BundleError::Malformed {
        line,
        message: message.to_owned(),
    };
    // 1. The checkpoint and its signature.
    let (size, root, note) = match lines.next().transpose()? {
        Some((
            _,
            Line::Checkpoint {
                size,
                root_hash,
                note,
            },
        )) => (
            size,
            hex32(&root_hash).ok_or_else(|| malformed(1, "root_hash is not 32 bytes of hex"))?,
            note,
        ),
        _ => return Err(malformed(1, "the first line must be the checkpoint")),
    };
    let signed = Note::from_bytes(note.as_bytes())
        .map_err(|e| BundleError::Signature(format!("not a signed note: {e}")))?;
    signed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| BundleError::Signature(e.to_string()))?;
    let body = Checkpoint::from_bytes(signed.text())
        .map_err(|e| BundleError::Signature(format!("the note is no checkpoint: {e}")))?;
    if body.size() != size {
        return Err(BundleError::Mismatch {
            what: "size",
            note: body.size().to_string(),
            bundle: size.to_string(),
        });
    }
    if body.hash().0 != root {
        return Err(BundleError::Mismatch {
            what: "root",
            note: hex::encode(body.hash().0),
            bundle: hex::encode(root),
        });
    }
    let report = |first| Report {
        origin: body.origin().to_owned(),
        key_name: key_name.clone(),
        tree_size: size,
        first,
    };
    // 2. The inclusion proof of the first entry (absent: nothing exported,
    // and a checkpoint alone proves nothing).
    let (first, proof) = match lines.next().transpose()? {
        None => return Err(BundleError::NoEntries(size)),
        Some((
            n,
            Line::InclusionProof {
                leaf_index,
                tree_size,
                hashes,
            },
        )) => {
            if tree_size != size {
                return Err(malformed(n, "the inclusion proof is for another tree size"));
            }
            let hashes = hashes
                .iter()
                .map(|h| hex32(h))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| malformed(n, "a proof hash is not 32 bytes of hex"))?;
            (leaf_index, hashes)
        }
        Some((n, _)) => return Err(malformed(n, "the second line must be the inclusion proof")),
    };
    // 3. The entries: hashes, chain, and the tree they build.
    let mut nodes = Nodes::default();
    let mut prev: Option<[u8; 32]> = (first == 0).then_some([0u8; 32]);
    let mut next = first + 1;
    for item in lines {
        let (n, line) = item?;
        let Line::Entry(e) = line else {
            return Err(malformed(n, "only entries follow the proof"));
        };
        let bad = |message: String| BundleError::BadEntry {
            sequence: e.sequence,
            message,
        };
        if e.sequence != next || e.sequence > size {
            return Err(bad(format!(
                "expected sequence {next} (the checkpoint covers 1 to {size})"
            )));
        }
        let (Some(prev_hash), Some(hash)) = (hex32(&e.prev_hash), hex32(&e.hash)) else {
            return Err(bad("prev_hash and hash must be 32 bytes of hex".into()));
        };
        if prev.is_some_and(|p| p != prev_hash) {
            return Err(bad("prev_hash is not the previous entry's hash".into()));
        }
        let computed = e.computed_hash().unwrap_or_default();
        if computed != hash {
            return Err(bad(format!(
                "its fields hash to {}, not to its hash {}",
                hex::encode(computed),
                e.hash
            )));
        }
        if e.sequence == first + 1 {
            let left = left_hashes(first, size, tlog::record_hash(&hash).0, &proof, root)
                .ok_or(BundleError::BadProof(e.sequence))?;
            // Lowest first: the i-th left hash is the block of the i-th set
            // bit of `first`, counted from the lowest.
            let bits = (0..64).filter(|b| first >> b & 1 == 1);
            for (h, b) in left.into_iter().zip(bits) {
                let start = first & !((1u64 << b << 1).wrapping_sub(1));
                nodes
                    .0
                    .insert(tlog::stored_hash_index(b as u8, start >> b), Hash(h));
            }
        }
        let stored =
            tlog::stored_hashes_for_record_hash(e.sequence - 1, tlog::record_hash(&hash), &nodes)
                .map_err(|_| BundleError::BadRoot)?;
        let at = tlog::stored_hash_index(0, e.sequence - 1);
        for (i, h) in (at..).zip(stored) {
            nodes.0.insert(i, h);
        }
        prev = Some(hash);
        next += 1;
    }
    if next != size + 1 {
        return Err(BundleError::BadEntry {
            sequence: next,
            message: format!("missing: the checkpoint covers entries up to {size}"),
        });
    }
    match tlog::tree_hash(size, &nodes) {
        Ok(h) if h.0 == root => Ok(report(first + 1)),
        _ => Err(BundleError::BadRoot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::AuditEntry;
    use crate::domain::model::{Action, Event};
    use crate::store::merkle::{self, MemoryNodes};

    /// A log of `n` entries, its tree, and a signed checkpoint of it.
    struct Log {
        entries: Vec<AuditEntry>,
        tree: MemoryNodes,
        note: String,
        vkey: String,
    }

    fn log(n: u64) -> Log {
        let mut entries: Vec<AuditEntry> = Vec::new();
        let mut tree = MemoryNodes::default();
        for seq in 1..=n {
            let prev = entries.last().map_or([0u8; 32], |e| e.hash);
            let mut attributes = BTreeMap::new();
            if seq % 3 == 0 {
                attributes.insert("policy".to_owned(), format!("sha256:{seq:064}"));
            }
            let e = AuditEntry::chain(
                prev,
                seq,
                Time {
                    seconds: 1_800_000_000 + seq as i64,
                    nanos: 7,
                },
                Event {
                    action: Action::Requested,
                    actor: "alice".into(),
                    promotion_id: seq,
                    repository: "r.test/app".into(),
                    environment: "production".into(),
                    digest: format!("sha256:{seq:064}"),
                    previous_digest: String::new(),
                    comment: format!("entry {seq}"),
                    attributes,
                },
            );
            tree.append(seq, &e.hash);
            entries.push(e);
        }
        let (skey, vkey) = crate::evidence::keygen("test.example/log").unwrap();
        let signer = signed_note::StandardSigner::new(&skey).unwrap();
        let root = merkle::root(n, &tree).unwrap();
        let body = Checkpoint::new("test.example/log", n, Hash(root), "")
            .unwrap()
            .to_bytes();
        let mut note = Note::new(&body, &[]).unwrap();
        note.add_sigs(&[&signer]).unwrap();
        Log {
            entries,
            tree,
            note: String::from_utf8(note.to_bytes()).unwrap(),
            vkey,
        }
    }

    fn bundle(l: &Log, since: u64, edit: impl Fn(&mut Vec<Line>)) -> Vec<u8> {
        let n = l.entries.len() as u64;
        let mut lines = vec![Line::Checkpoint {
            size: n,
            root_hash: hex::encode(merkle::root(n, &l.tree).unwrap()),
            note: l.note.clone(),
        }];
        if since <= n {
            lines.push(Line::InclusionProof {
                leaf_index: since - 1,
                tree_size: n,
                hashes: merkle::inclusion_proof(since - 1, n, &l.tree)
                    .unwrap()
                    .iter()
                    .map(hex::encode)
                    .collect(),
            });
            for e in &l.entries[since as usize - 1..] {
                lines.push(entry_line(&crate::api::convert::audit_entry(e)));
            }
        }
        edit(&mut lines);
        let mut out = Vec::new();
        for line in lines {
            out.extend(serde_json::to_vec(&line).unwrap());
            out.push(b'\n');
        }
        out
    }

    fn entry_mut(line: &mut Line) -> &mut Entry {
        match line {
            Line::Entry(e) => e,
            other => panic!("not an entry: {other:?}"),
        }
    }

    #[test]
    fn a_bundle_verifies_from_any_first_entry() {
        for n in [1u64, 2, 7, 8, 13] {
            let l = log(n);
            for since in 1..=n {
                let r = verify(&bundle(&l, since, |_| {})[..], &l.vkey)
                    .unwrap_or_else(|e| panic!("size {n} since {since}: {e}"));
                assert_eq!((r.tree_size, r.first), (n, since));
                assert_eq!(r.origin, "test.example/log");
            }
            // A checkpoint without entries proves nothing.
            assert_eq!(
                verify(&bundle(&l, n + 1, |_| {})[..], &l.vkey),
                Err(BundleError::NoEntries(n))
            );
        }
    }

    #[test]
    fn tampering_is_refused_precisely() {
        let l = log(13);
        let check =
            |since, edit: &dyn Fn(&mut Vec<Line>)| verify(&bundle(&l, since, edit)[..], &l.vkey);
        // A changed comment: its hash no longer matches.
        let e = check(5, &|lines| entry_mut(&mut lines[3]).comment.push('!'));
        assert!(
            matches!(e, Err(BundleError::BadEntry { sequence: 6, .. })),
            "{e:?}"
        );
        // A changed entry rehashed consistently, chain and all: the root
        // gives it away.
        let e = check(5, &|lines| {
            let mut prev = None;
            for (i, line) in lines.iter_mut().enumerate().skip(2) {
                let en = entry_mut(line);
                if let Some(p) = prev {
                    en.prev_hash = p;
                }
                if i == 4 {
                    en.comment.push('!');
                }
                en.hash = hex::encode(en.computed_hash().unwrap());
                prev = Some(en.hash.clone());
            }
        });
        assert!(
            matches!(e, Err(BundleError::BadRoot | BundleError::BadProof(_))),
            "{e:?}"
        );
        // A left-out entry.
        let e = check(5, &|lines| {
            lines.remove(6);
        });
        assert!(matches!(e, Err(BundleError::BadEntry { .. })), "{e:?}");
        // Another key, or a note for another size.
        let other = log(2);
        assert!(matches!(
            verify(&bundle(&l, 5, |_| {})[..], &other.vkey),
            Err(BundleError::Signature(_))
        ));
        let e = check(5, &|lines| {
            if let Line::Checkpoint { size, .. } = &mut lines[0] {
                *size = 12;
            }
        });
        assert!(
            matches!(e, Err(BundleError::Mismatch { what: "size", .. })),
            "{e:?}"
        );
        assert!(matches!(
            verify(&b"not json\n"[..], &l.vkey),
            Err(BundleError::Malformed { line: 1, .. })
        ));
        assert_eq!(
            verify(&b""[..], "nonsense").unwrap_err(),
            BundleError::BadKey
        );
    }
}
