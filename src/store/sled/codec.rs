//! How records are encoded in sled: postcard for the audit record and the
//! promotion record, a length-prefixed pair for pinned manifests, and the
//! decoder of the previous format (2) that the start-up migration reads.

use crate::domain::audit::{AuditEntry, Hash};
use crate::domain::model::{Action, Approval, Event, Promotion, PromotionId, State, Time};
use crate::store::{StoreError, StoredManifest};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::keys;

/// The value of an `audit` key: the entry and the promotion as it stood
/// right after it (none for entries about no promotion, such as check
/// reports). Writing it is a commit's single atomic step; everything else is
/// derived from it (see `derive`).
#[derive(Serialize)]
pub struct RecordRef<'a> {
    pub entry: &'a AuditEntry,
    pub promotion: Option<&'a Promotion>,
}

#[derive(Deserialize)]
pub struct Record {
    pub entry: AuditEntry,
    pub promotion: Option<Promotion>,
}

/// The value of a `promotions` key: the promotion and the sequences of its
/// audit entries, ascending. The last sequence says which audit record the
/// value was derived from.
#[derive(Serialize)]
pub struct StoredPromotionRef<'a> {
    pub audit: &'a [u64],
    pub promotion: &'a Promotion,
}

#[derive(Deserialize)]
pub struct StoredPromotion {
    pub audit: Vec<u64>,
    pub promotion: Promotion,
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain structs of strings and numbers cannot fail.
    postcard::to_stdvec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what: what(),
        reason: e.to_string(),
    })
}

pub fn decode_record(key: &[u8], bytes: &[u8]) -> Result<Record, StoreError> {
    decode(
        || format!("audit entry {}", keys::read_u64(key).unwrap_or(0)),
        bytes,
    )
}

/// Only the entry: it comes first in the record, so the promotion after it
/// is not decoded (History pages read many entries and no promotions).
pub fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    postcard::take_from_bytes::<AuditEntry>(bytes)
        .map(|(entry, _promotion)| entry)
        .map_err(|e| StoreError::Corrupt {
            what: format!("audit entry {}", keys::read_u64(key).unwrap_or(0)),
            reason: e.to_string(),
        })
}

pub fn decode_promotion(key: &[u8], bytes: &[u8]) -> Result<StoredPromotion, StoreError> {
    decode(
        || format!("promotion {}", keys::read_u64(key).unwrap_or(0)),
        bytes,
    )
}

/// `u32 BE length of media_type | media_type | bytes`
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

/// Format 2's audit entry: format 3 appended `attributes` to the event.
#[derive(Deserialize)]
struct EventV2 {
    action: Action,
    actor: String,
    promotion_id: PromotionId,
    repository: String,
    environment: String,
    digest: String,
    previous_digest: String,
    comment: String,
}

#[derive(Deserialize)]
struct AuditEntryV2 {
    sequence: u64,
    time: Time,
    event: EventV2,
    prev_hash: Hash,
    hash: Hash,
}

impl From<AuditEntryV2> for AuditEntry {
    fn from(e: AuditEntryV2) -> Self {
        let v = e.event;
        AuditEntry {
            sequence: e.sequence,
            time: e.time,
            event: Event {
                action: v.action,
                actor: v.actor,
                promotion_id: v.promotion_id,
                repository: v.repository,
                environment: v.environment,
                digest: v.digest,
                previous_digest: v.previous_digest,
                comment: v.comment,
                attributes: Default::default(),
            },
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// The entry of a format 2 audit record (for checking a format 2 store
/// offline, which does not migrate it).
pub fn decode_entry_v2(key: &[u8], bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    postcard::take_from_bytes::<AuditEntryV2>(bytes)
        .map(|(entry, _promotion)| entry.into())
        .map_err(|e| StoreError::Corrupt {
            what: format!("audit entry {}", keys::read_u64(key).unwrap_or(0)),
            reason: e.to_string(),
        })
}

/// Format 2's promotion: format 3 appended `superseded_by`.
#[derive(Deserialize)]
struct PromotionV2 {
    id: PromotionId,
    repository: String,
    environment: String,
    target_tag: String,
    source: String,
    digest: String,
    state: State,
    requested_by: String,
    reason: String,
    approvals: Vec<Approval>,
    required_approvals: u32,
    previous_digest: String,
    created_at: Time,
    updated_at: Time,
    promoted_at: Option<Time>,
    failure_message: String,
    expires_at: Time,
    request_id: String,
}

impl From<PromotionV2> for Promotion {
    fn from(p: PromotionV2) -> Self {
        Promotion {
            id: p.id,
            repository: p.repository,
            environment: p.environment,
            target_tag: p.target_tag,
            source: p.source,
            digest: p.digest,
            state: p.state,
            requested_by: p.requested_by,
            reason: p.reason,
            approvals: p.approvals,
            required_approvals: p.required_approvals,
            previous_digest: p.previous_digest,
            created_at: p.created_at,
            updated_at: p.updated_at,
            promoted_at: p.promoted_at,
            failure_message: p.failure_message,
            expires_at: p.expires_at,
            request_id: p.request_id,
            superseded_by: None,
            break_glass: false,
            project: String::new(),
            rollback: false,
            policy_digest: String::new(),
            waiting_for: Vec::new(),
            not_before: None,
            last_apply_error: String::new(),
            apply_attempts: 0,
        }
    }
}

#[derive(Deserialize)]
struct RecordV2 {
    entry: AuditEntryV2,
    promotion: PromotionV2,
}

#[derive(Deserialize)]
struct StoredPromotionV2 {
    audit: Vec<u64>,
    promotion: PromotionV2,
}

/// A format 2 audit record in format 3, or `None` if it is already format 3
/// (so an interrupted migration can run again).
pub fn upgrade_record(bytes: &[u8]) -> Option<Vec<u8>> {
    if postcard::from_bytes::<Record>(bytes).is_ok() {
        return None;
    }
    let old: RecordV2 = postcard::from_bytes(bytes).ok()?;
    let promotion = Promotion::from(old.promotion);
    Some(encode(&RecordRef {
        entry: &AuditEntry::from(old.entry),
        promotion: Some(&promotion),
    }))
}

/// A format 2 promotion record in format 3 with the promotion, or `None`
/// if it is already format 3.
pub fn upgrade_promotion(bytes: &[u8]) -> Option<(Vec<u8>, Promotion)> {
    if postcard::from_bytes::<StoredPromotion>(bytes).is_ok() {
        return None;
    }
    let old: StoredPromotionV2 = postcard::from_bytes(bytes).ok()?;
    let promotion = Promotion::from(old.promotion);
    let encoded = encode(&StoredPromotionRef {
        audit: &old.audit,
        promotion: &promotion,
    });
    Some((encoded, promotion))
}
