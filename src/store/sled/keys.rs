//! Key layout (store format 5). Numbers are big-endian so sled's byte order
//! is numeric order.
//!
//! | tree         | key                                   | value                              |
//! |--------------|---------------------------------------|------------------------------------|
//! | `audit`      | sequence                              | entry + promotion after it (postcard) |
//! | `promotions` | id                                    | its audit sequences + promotion (postcard) |
//! | `index`      | `R` repository 0x00 first-sequence    | posting chunk of sequences         |
//! |              | `E` environment 0x00 first-sequence   | posting chunk of sequences         |
//! |              | `r` repository 0x00 first-id          | posting chunk of ids               |
//! |              | `e` environment 0x00 first-id         | posting chunk of ids               |
//! |              | `S` state-code id                     | (empty)                            |
//! |              | `I` principal 0x00 request_id         | id                                 |
//! |              | `C` repository 0x00 digest 0x00 check | sequence of its latest report      |
//! |              | `T` repository 0x00 environment       | (empty): prodgate moved this tag   |
//! | `meta`       | `format`                              | u64 (5)                            |
//! |              | `moved-tags`                          | (empty): the `T` keys are complete |
//! |              | `migrated-audit-5`, `migrated-promotions-5` | while migrating: the last key rewritten |
//! |              | `migrated-audit`, `migrated-promotions` | an earlier build's migration to format 4, cut short: the last key it rewrote |
//! | `manifests`  | repository 0x00 digest                | media type, bytes                  |
//! | `policies`   | digest (`sha256:<hex>`)               | the policy's canonical JSON        |
//!
//! The `audit` tree is the source of truth; `promotions` and `index` are
//! derived from it (see `Tx::commit`). Posting chunks are described in
//! `postings`. The records' encodings, and what each format changed in
//! them, are in `store::codec`; besides those, format 3 added the `e`
//! index. A directory of format 2, 3 or 4 is migrated when it is opened
//! (`derive::migrate`). The `T` keys came later within format 3: a
//! directory without the `moved-tags` marker gets them from its PROMOTED
//! promotions when it is opened (`index_moved_tags`). (A build without them
//! that writes to a marked directory leaves its own moves out of the index,
//! so its tags are not watched for drift.) Repository, environment and
//! principal names never contain 0x00: the repository grammar forbids it
//! and config validation refuses it.

use crate::domain::model::State;
use crate::store::StoredManifest;

pub const FORMAT: &[u8] = b"format";
/// While migrating from an earlier format: the last `audit` key rewritten.
/// The keys name the format they migrate to, so that a build never takes
/// the progress of a migration to another format for its own.
pub const MIGRATED_AUDIT: &[u8] = b"migrated-audit-5";
/// While migrating from an earlier format: the last `promotions` key
/// rewritten.
pub const MIGRATED_PROMOTIONS: &[u8] = b"migrated-promotions-5";
/// The progress keys of the format 4 build's migration (from format 2 or
/// 3), which did not name their format: left by one cut short, they say
/// up to which key the records are in format 4 already.
pub const MIGRATED_AUDIT_4: &[u8] = b"migrated-audit";
pub const MIGRATED_PROMOTIONS_4: &[u8] = b"migrated-promotions";
/// Marks a directory whose `T` keys cover every APPLIED entry.
pub const MOVED_TAGS: &[u8] = b"moved-tags";

pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The sequence or id an `audit` or `promotions` key holds, for decoding
/// its value (0 names a malformed key in the error).
pub fn number(key: &[u8]) -> u64 {
    read_u64(key).unwrap_or(0)
}

/// The trailing 8 bytes of an index key: the id or sequence it points at.
pub fn tail_u64(key: &[u8]) -> Option<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|start| read_u64(&key[start..]))
}

fn named(tag: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 10);
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

fn with_u64(mut prefix: Vec<u8>, n: u64) -> Vec<u8> {
    prefix.extend_from_slice(&n.to_be_bytes());
    prefix
}

pub fn audit_by_repository_prefix(repository: &str) -> Vec<u8> {
    named(b'R', repository)
}

pub fn audit_by_environment_prefix(environment: &str) -> Vec<u8> {
    named(b'E', environment)
}

pub fn promotions_by_state_prefix(state: State) -> Vec<u8> {
    vec![b'S', state.code()]
}

/// The state index key of promotion `id` in `state`.
pub fn promotion_in_state(state: State, id: u64) -> Vec<u8> {
    indexed(&promotions_by_state_prefix(state), id)
}

pub fn promotions_by_repository_prefix(repository: &str) -> Vec<u8> {
    named(b'r', repository)
}

pub fn promotions_by_environment_prefix(environment: &str) -> Vec<u8> {
    named(b'e', environment)
}

/// The latest-report key of `check` for `digest` in `repository`.
pub fn check(repository: &str, digest: &str, check: &str) -> Vec<u8> {
    let mut k = checks_prefix(repository, digest);
    k.extend_from_slice(check.as_bytes());
    k
}

/// Every check of `digest` in `repository`.
pub fn checks_prefix(repository: &str, digest: &str) -> Vec<u8> {
    let mut k = named(b'C', repository);
    k.extend_from_slice(digest.as_bytes());
    k.push(0);
    k
}

/// The key saying prodgate moved `environment`'s tag of `repository`.
pub fn moved_tag(repository: &str, environment: &str) -> Vec<u8> {
    let mut k = moved_tags_prefix();
    k.extend_from_slice(repository.as_bytes());
    k.push(0);
    k.extend_from_slice(environment.as_bytes());
    k
}

pub fn moved_tags_prefix() -> Vec<u8> {
    vec![b'T']
}

/// The repository and environment of a [`moved_tag`] key.
pub fn read_moved_tag(key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(b"T")?;
    let zero = rest.iter().position(|b| *b == 0)?;
    let repository = std::str::from_utf8(&rest[..zero]).ok()?;
    let environment = std::str::from_utf8(&rest[zero + 1..]).ok()?;
    Some((repository.to_owned(), environment.to_owned()))
}

pub fn request_id(principal: &str, request_id: &str) -> Vec<u8> {
    let mut k = named(b'I', principal);
    k.extend_from_slice(request_id.as_bytes());
    k
}

pub fn manifest(repository: &str, digest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(repository.len() + digest.len() + 1);
    k.extend_from_slice(repository.as_bytes());
    k.push(0);
    k.extend_from_slice(digest.as_bytes());
    k
}

pub fn policy(digest: &str) -> Vec<u8> {
    digest.as_bytes().to_vec()
}

/// Index key = prefix followed by the id or sequence.
pub fn indexed(prefix: &[u8], n: u64) -> Vec<u8> {
    with_u64(prefix.to_vec(), n)
}

/// A `manifests` value: `u32 BE length of media_type | media_type | bytes`.
pub fn encode_manifest(m: &StoredManifest) -> Vec<u8> {
    let mt = m.media_type.as_bytes();
    let mut out = Vec::with_capacity(4 + mt.len() + m.bytes.len());
    out.extend_from_slice(&u32::try_from(mt.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(mt);
    out.extend_from_slice(&m.bytes);
    out
}

pub fn decode_manifest(v: &[u8]) -> Option<StoredManifest> {
    let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let media_type = std::str::from_utf8(v.get(4..4 + len)?).ok()?.to_owned();
    Some(StoredManifest {
        media_type,
        bytes: v.get(4 + len..)?.to_vec(),
    })
}
