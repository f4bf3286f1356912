//! The audit hash chain: the exact byte layout of an entry's hash, and the
//! verification anyone holding `History` output can repeat without prodgate.

use super::model::{Event, Time};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub type Hash = [u8; 32];

/// `prev_hash` of the first entry.
pub const GENESIS: Hash = [0; 32];

/// One numbered, chained audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub sequence: u64,
    pub time: Time,
    pub event: Event,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// The fields the hash covers, borrowed so that a verifier can hash what it
/// was given without building an entry.
pub struct HashInput<'a> {
    pub prev_hash: &'a Hash,
    pub sequence: u64,
    pub time: Time,
    pub action_number: u32,
    pub actor: &'a str,
    pub promotion_id: &'a str,
    pub repository: &'a str,
    pub environment: &'a str,
    pub digest: &'a str,
    pub previous_digest: &'a str,
    pub comment: &'a str,
    /// Hashed after `comment` only when there are any, so entries without
    /// attributes hash exactly as before attributes existed. A BTreeMap
    /// iterates keys in ascending byte order, the documented order.
    pub attributes: &'a BTreeMap<String, String>,
}

impl HashInput<'_> {
    pub fn hash(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(self.prev_hash);
        h.update(self.sequence.to_be_bytes());
        h.update(self.time.seconds.to_be_bytes());
        h.update(self.time.nanos.to_be_bytes());
        h.update(self.action_number.to_be_bytes());
        for field in [
            self.actor,
            self.promotion_id,
            self.repository,
            self.environment,
            self.digest,
            self.previous_digest,
            self.comment,
        ] {
            put(&mut h, field);
        }
        if !self.attributes.is_empty() {
            let count = u32::try_from(self.attributes.len()).unwrap_or(u32::MAX);
            h.update(count.to_be_bytes());
            for (key, value) in self.attributes {
                put(&mut h, key);
                put(&mut h, value);
            }
        }
        h.finalize().into()
    }
}

/// `promotion_id` as hashed and shown: empty for entries about no promotion.
pub fn promotion_id_text(id: crate::domain::model::PromotionId) -> String {
    if id == crate::domain::model::NO_PROMOTION {
        String::new()
    } else {
        id.to_string()
    }
}

/// A field as its UTF-8 length (u32 BE) and bytes.
fn put(h: &mut Sha256, field: &str) {
    // Free-text fields are capped far below 4 GiB at the API boundary.
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    h.update(len.to_be_bytes());
    h.update(field.as_bytes());
}

impl AuditEntry {
    /// Numbers and chains `event` after the entry whose hash is `prev_hash`.
    pub fn chain(prev_hash: Hash, sequence: u64, time: Time, event: Event) -> Self {
        let hash = hash_of(&prev_hash, sequence, time, &event);
        Self {
            sequence,
            time,
            event,
            prev_hash,
            hash,
        }
    }

    /// Recomputes this entry's hash from its content.
    pub fn computed_hash(&self) -> Hash {
        hash_of(&self.prev_hash, self.sequence, self.time, &self.event)
    }
}

fn hash_of(prev_hash: &Hash, sequence: u64, time: Time, e: &Event) -> Hash {
    HashInput {
        prev_hash,
        sequence,
        time,
        action_number: e.action.number(),
        actor: &e.actor,
        promotion_id: &promotion_id_text(e.promotion_id),
        repository: &e.repository,
        environment: &e.environment,
        digest: &e.digest,
        previous_digest: &e.previous_digest,
        comment: &e.comment,
        attributes: &e.attributes,
    }
    .hash()
}

/// Outcome of checking a chain from its first entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub entries_checked: u64,
    /// The first sequence whose entry is missing, out of place or altered.
    pub first_bad_sequence: Option<u64>,
    pub head_hash: Hash,
    pub message: String,
}

/// Incremental verifier, fed entries in stored order. A clone taken while
/// unbroken can resume from where it stood (the server keeps its verified
/// prefix that way).
#[derive(Debug, Clone)]
pub struct Verifier {
    expected_sequence: u64,
    prev_hash: Hash,
    checked: u64,
    failure: Option<(u64, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            expected_sequence: 1,
            prev_hash: GENESIS,
            checked: 0,
            failure: None,
        }
    }
}

impl Verifier {
    /// Returns false once the chain is broken; later entries are not checked.
    pub fn push(&mut self, entry: &AuditEntry) -> bool {
        if self.failure.is_some() {
            return false;
        }
        self.checked += 1;
        let problem = if entry.sequence != self.expected_sequence {
            Some(format!(
                "expected sequence {} but found {}",
                self.expected_sequence, entry.sequence
            ))
        } else if entry.prev_hash != self.prev_hash {
            Some(format!(
                "entry {}: prev_hash does not match the hash of entry {}",
                entry.sequence,
                self.expected_sequence - 1
            ))
        } else if entry.computed_hash() != entry.hash {
            Some(format!(
                "entry {}: content does not match its hash (altered after it was written)",
                entry.sequence
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            self.failure = Some((self.expected_sequence, message));
            return false;
        }
        self.expected_sequence += 1;
        self.prev_hash = entry.hash;
        true
    }

    /// The sequence the next entry must have.
    pub fn next_sequence(&self) -> u64 {
        self.expected_sequence
    }

    pub fn is_broken(&self) -> bool {
        self.failure.is_some()
    }

    /// A sequence number the caller failed to read (e.g. undecodable) counts as bad.
    pub fn fail(&mut self, sequence: u64, message: String) {
        if self.failure.is_none() {
            self.checked += 1;
            self.failure = Some((sequence, message));
        }
    }

    pub fn finish(self) -> Verification {
        match self.failure {
            Some((seq, message)) => Verification {
                entries_checked: self.checked,
                first_bad_sequence: Some(seq),
                head_hash: self.prev_hash,
                message,
            },
            None => Verification {
                entries_checked: self.checked,
                first_bad_sequence: None,
                head_hash: self.prev_hash,
                message: format!("{} entries verified", self.checked),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Action;

    fn event(comment: &str) -> Event {
        Event {
            action: Action::Requested,
            actor: "alice".into(),
            promotion_id: 7,
            repository: "r.io/app".into(),
            environment: "production".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            previous_digest: String::new(),
            comment: comment.into(),
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn hash_matches_the_documented_layout() {
        let t = Time {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        let e = AuditEntry::chain(GENESIS, 1, t, event("why"));
        // Rebuild the byte string by hand, as an outside verifier would.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&1_700_000_000i64.to_be_bytes());
        bytes.extend_from_slice(&5u32.to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes());
        for f in [
            "alice",
            "7",
            "r.io/app",
            "production",
            &format!("sha256:{}", "a".repeat(64)),
            "",
            "why",
        ] {
            bytes.extend_from_slice(&(f.len() as u32).to_be_bytes());
            bytes.extend_from_slice(f.as_bytes());
        }
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(e.hash, expected);
    }

    #[test]
    fn attributes_are_hashed_after_the_comment_in_key_order() {
        let t = Time::ZERO;
        let plain = AuditEntry::chain(GENESIS, 1, t, event("why"));
        let mut with = event("why");
        with.attributes.insert("status".into(), "passed".into());
        with.attributes.insert("check".into(), "e2e".into());
        let e = AuditEntry::chain(GENESIS, 1, t, with);
        assert_ne!(e.hash, plain.hash, "attributes are covered");
        // The layout without attributes, then count and sorted pairs.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&0i64.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes());
        let digest = format!("sha256:{}", "a".repeat(64));
        let fields = [
            "alice",
            "7",
            "r.io/app",
            "production",
            &digest,
            "",
            "why", // the entry
        ];
        let mut put = |f: &str| {
            bytes.extend_from_slice(&(f.len() as u32).to_be_bytes());
            bytes.extend_from_slice(f.as_bytes());
        };
        for f in fields {
            put(f);
        }
        let count = 2u32.to_be_bytes();
        let mut tail = count.to_vec();
        for f in ["check", "e2e", "status", "passed"] {
            tail.extend_from_slice(&(f.len() as u32).to_be_bytes());
            tail.extend_from_slice(f.as_bytes());
        }
        bytes.extend_from_slice(&tail);
        let expected: Hash = Sha256::digest(&bytes).into();
        assert_eq!(e.hash, expected);
        assert_eq!(e.computed_hash(), e.hash);
    }

    #[test]
    fn verifier_names_the_first_bad_entry() {
        let t = Time::ZERO;
        let a = AuditEntry::chain(GENESIS, 1, t, event("a"));
        let b = AuditEntry::chain(a.hash, 2, t, event("b"));
        let c = AuditEntry::chain(b.hash, 3, t, event("c"));
        let mut v = Verifier::default();
        assert!([&a, &b, &c].iter().all(|e| v.push(e)));
        let ok = v.finish();
        assert_eq!(ok.first_bad_sequence, None);
        assert_eq!(ok.entries_checked, 3);
        assert_eq!(ok.head_hash, c.hash);

        let mut tampered = b.clone();
        tampered.event.comment = "B".into();
        let mut v = Verifier::default();
        v.push(&a);
        assert!(!v.push(&tampered));
        assert!(!v.push(&c));
        assert_eq!(v.finish().first_bad_sequence, Some(2));

        let mut v = Verifier::default();
        v.push(&a);
        assert!(!v.push(&c), "a gap is a break");
        assert_eq!(v.finish().first_bad_sequence, Some(2));
    }
}
