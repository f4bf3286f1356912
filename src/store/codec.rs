//! How records are encoded on both backends: postcard, which writes fields
//! in order without names, for the audit record (the entry and the
//! promotion as it stands after it, byte-identical on sled and PostgreSQL,
//! so `migrate --from-sled` copies it as is) and for the promotion (sled
//! stores it with its entries' sequences, PostgreSQL bare). Being positional,
//! a record only decodes as the shape it was written in: every change of a
//! stored type is a new format, and the shapes of the earlier ones live
//! here with their upgrade to the current one (sled migrates a data
//! directory at open, PostgreSQL its rows in a schema migration).
//!
//! Formats, numbered as sled's store format:
//! - 2: no `Event::attributes`, and the promotion ended at `request_id`;
//!   every record had a promotion.
//! - 3: `Event::attributes`; the promotion gained `superseded_by`,
//!   `break_glass`, `project`, `rollback`, `policy_digest`; records about no
//!   promotion (check reports, policy changes, drift).
//! - 4: `Approval::groups`, and the promotion gained `waiting_for` and
//!   `not_before`. The audit entry is as in format 3 (the new `State` and
//!   `Action` variants came last, so older indexes stand), so an entry's
//!   bytes, and its hash, never change in a migration.
//! - 5 (current): the promotion gained `release_id` (`None` for every
//!   promotion of an earlier format). The audit entry is as in format 3.

use crate::domain::audit::{AuditEntry, Hash};
use crate::domain::model::{Action, Approval, Event, Promotion, PromotionId, State, Time};
use crate::store::StoreError;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The value of an audit record: the entry and the promotion as it stood
/// right after it (none for entries about no promotion, such as check
/// reports). The entry comes first, so it can be read alone.
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

/// sled's value of a promotion: the sequences of its audit entries,
/// ascending, and the promotion. The last sequence says which audit record
/// the value was derived from.
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

fn corrupt(what: String, reason: String) -> StoreError {
    StoreError::Corrupt { what, reason }
}

/// Decodes the whole of `bytes` as a `T`. postcard's `from_bytes` ignores
/// what follows the value, so a record of an earlier format could pass for
/// the current one (or the other way round) with fields read from the
/// wrong bytes; every byte must be used.
fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(corrupt(
            what(),
            format!("{} bytes after the record", rest.len()),
        )),
        Err(e) => Err(corrupt(what(), e.to_string())),
    }
}

fn entry_what(sequence: u64) -> impl FnOnce() -> String {
    move || format!("audit entry {sequence}")
}

fn promotion_what(id: PromotionId) -> impl FnOnce() -> String {
    move || format!("promotion {id}")
}

/// The audit record stored under `sequence`.
pub fn decode_record(sequence: u64, bytes: &[u8]) -> Result<Record, StoreError> {
    decode(entry_what(sequence), bytes)
}

/// Only the entry of the audit record stored under `sequence`: it comes
/// first, so the promotion after it is not decoded (History pages read many
/// entries and no promotions). Reads formats 3, 4 and 5 alike.
pub fn decode_entry(sequence: u64, bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    postcard::take_from_bytes::<AuditEntry>(bytes)
        .map(|(entry, _promotion)| entry)
        .map_err(|e| corrupt(entry_what(sequence)(), e.to_string()))
}

/// The entry of an audit record of a format 2 store (for checking it
/// offline, which does not migrate it). A migration cut short leaves
/// records of a later format in it too; those are the ones that do not
/// decode whole as format 2.
pub fn decode_entry_v2(sequence: u64, bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    match decode::<RecordV2>(entry_what(sequence), bytes) {
        Ok(old) => Ok(old.entry.into()),
        Err(e) => decode_record(sequence, bytes)
            .map(|r| r.entry)
            .or_else(|_| upgrade_record(Old::V4, sequence, bytes).map(|r| r.entry))
            .or_else(|_| upgrade_record(Old::V3, sequence, bytes).map(|r| r.entry))
            .map_err(|_| e),
    }
}

/// A promotion as PostgreSQL stores it (bare).
pub fn decode_promotion(id: PromotionId, bytes: &[u8]) -> Result<Promotion, StoreError> {
    decode(promotion_what(id), bytes)
}

/// A promotion as sled stores it (with its audit sequences).
pub fn decode_stored_promotion(
    id: PromotionId,
    bytes: &[u8],
) -> Result<StoredPromotion, StoreError> {
    decode(promotion_what(id), bytes)
}

/// An earlier format whose records this build upgrades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Old {
    V2,
    V3,
    V4,
}

impl Old {
    /// The earlier format of store format `n`, if this build upgrades it.
    pub fn of(n: u64) -> Option<Old> {
        match n {
            2 => Some(Old::V2),
            3 => Some(Old::V3),
            4 => Some(Old::V4),
            _ => None,
        }
    }

    pub fn number(self) -> u64 {
        match self {
            Old::V2 => 2,
            Old::V3 => 3,
            Old::V4 => 4,
        }
    }
}

/// Decodes `bytes` written in format `from` as `V4` (or `V3` or `V2`,
/// converted), for records whose format 2, 3 and 4 shapes are `V2`, `V3`
/// and `V4`. A format 2 store may hold format 3 records too: an earlier
/// build's migration from format 2 to 3, cut short, rewrote some of them in
/// place before marking the store; whole-record decoding tells the two
/// apart. (A migration to format 4 or later, cut short, says which records
/// it rewrote: see sled's `derive::migrate`.)
fn decode_old<V2, V3, V4>(
    from: Old,
    what: impl Fn() -> String,
    bytes: &[u8],
) -> Result<V4, StoreError>
where
    V2: DeserializeOwned + Into<V3>,
    V3: DeserializeOwned + Into<V4>,
    V4: DeserializeOwned,
{
    match from {
        Old::V4 => decode(what, bytes),
        Old::V3 => decode::<V3>(what, bytes).map(Into::into),
        Old::V2 => decode::<V2>(&what, bytes)
            .map(Into::into)
            .or_else(|_| decode::<V3>(what, bytes))
            .map(Into::into),
    }
}

/// An audit record written in format `from`, in the current shape.
pub fn upgrade_record(from: Old, sequence: u64, bytes: &[u8]) -> Result<Record, StoreError> {
    let old: RecordV4 =
        decode_old::<RecordV2, RecordV3, _>(from, || format!("audit entry {sequence}"), bytes)?;
    Ok(Record {
        entry: old.entry,
        promotion: old.promotion.map(Promotion::from),
    })
}

/// sled's promotion value written in format `from`, in the current shape.
pub fn upgrade_stored_promotion(
    from: Old,
    id: PromotionId,
    bytes: &[u8],
) -> Result<StoredPromotion, StoreError> {
    let old: StoredPromotionV4 = decode_old::<StoredPromotionV2, StoredPromotionV3, _>(
        from,
        || format!("promotion {id}"),
        bytes,
    )?;
    Ok(StoredPromotion {
        audit: old.audit,
        promotion: old.promotion.into(),
    })
}

/// A bare promotion (PostgreSQL's) written in format `from`, in the
/// current shape.
pub fn upgrade_promotion(
    from: Old,
    id: PromotionId,
    bytes: &[u8],
) -> Result<Promotion, StoreError> {
    decode_old::<PromotionV2, PromotionV3, PromotionV4>(from, || format!("promotion {id}"), bytes)
        .map(Promotion::from)
}

/// Format 4's promotion: today's fields up to `not_before`, its approvals
/// today's `Approval` (a format that changes `Approval` keeps format 4's
/// here as `ApprovalV4`). Format 5 appended `release_id`. (Format 4 changed
/// the approvals, inside the fields format 2 had, so it cannot nest format
/// 3's as format 3 nests format 2's.)
#[derive(Deserialize)]
struct PromotionV4 {
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
    superseded_by: Option<PromotionId>,
    break_glass: bool,
    project: String,
    rollback: bool,
    policy_digest: String,
    waiting_for: Vec<String>,
    not_before: Option<Time>,
}

impl From<PromotionV4> for Promotion {
    fn from(p: PromotionV4) -> Self {
        let PromotionV4 {
            id,
            repository,
            environment,
            target_tag,
            source,
            digest,
            state,
            requested_by,
            reason,
            approvals,
            required_approvals,
            previous_digest,
            created_at,
            updated_at,
            promoted_at,
            failure_message,
            expires_at,
            request_id,
            superseded_by,
            break_glass,
            project,
            rollback,
            policy_digest,
            waiting_for,
            not_before,
        } = p;
        Promotion {
            id,
            repository,
            environment,
            target_tag,
            source,
            digest,
            state,
            requested_by,
            reason,
            approvals,
            required_approvals,
            previous_digest,
            created_at,
            updated_at,
            promoted_at,
            failure_message,
            expires_at,
            request_id,
            superseded_by,
            break_glass,
            project,
            rollback,
            policy_digest,
            waiting_for,
            not_before,
            // No promotion was a release's member before format 5.
            release_id: None,
            last_apply_error: String::new(),
            apply_attempts: 0,
        }
    }
}

#[derive(Deserialize)]
struct RecordV4 {
    entry: AuditEntry,
    promotion: Option<PromotionV4>,
}

#[derive(Deserialize)]
struct StoredPromotionV4 {
    audit: Vec<u64>,
    promotion: PromotionV4,
}

/// Format 3's approval: format 4 appended `groups`.
#[derive(Deserialize)]
struct ApprovalV3 {
    approver: String,
    comment: String,
    time: Time,
}

impl From<ApprovalV3> for Approval {
    fn from(a: ApprovalV3) -> Self {
        Approval {
            approver: a.approver,
            comment: a.comment,
            time: a.time,
            // Not recorded then: judged as an approver in no group.
            groups: Vec::new(),
        }
    }
}

/// Format 3's promotion: format 2's and five more fields. Format 4
/// appended `waiting_for` and `not_before` (and the approvals' groups).
/// postcard writes a nested struct's fields in place, so nesting format 2's
/// is the same encoding as listing its fields.
#[derive(Deserialize)]
struct PromotionV3 {
    v2: PromotionV2,
    superseded_by: Option<PromotionId>,
    break_glass: bool,
    project: String,
    rollback: bool,
    policy_digest: String,
}

impl From<PromotionV3> for PromotionV4 {
    fn from(p: PromotionV3) -> Self {
        let PromotionV3 {
            v2:
                PromotionV2 {
                    id,
                    repository,
                    environment,
                    target_tag,
                    source,
                    digest,
                    state,
                    requested_by,
                    reason,
                    approvals,
                    required_approvals,
                    previous_digest,
                    created_at,
                    updated_at,
                    promoted_at,
                    failure_message,
                    expires_at,
                    request_id,
                },
            superseded_by,
            break_glass,
            project,
            rollback,
            policy_digest,
        } = p;
        PromotionV4 {
            id,
            repository,
            environment,
            target_tag,
            source,
            digest,
            state,
            requested_by,
            reason,
            approvals: approvals.into_iter().map(Approval::from).collect(),
            required_approvals,
            previous_digest,
            created_at,
            updated_at,
            promoted_at,
            failure_message,
            expires_at,
            request_id,
            superseded_by,
            break_glass,
            project,
            rollback,
            policy_digest,
            // No promotion waited before format 4 (`State::Waiting` is new).
            waiting_for: Vec::new(),
            not_before: None,
        }
    }
}

#[derive(Deserialize)]
struct RecordV3 {
    entry: AuditEntry,
    promotion: Option<PromotionV3>,
}

impl From<RecordV3> for RecordV4 {
    fn from(r: RecordV3) -> Self {
        RecordV4 {
            entry: r.entry,
            promotion: r.promotion.map(Into::into),
        }
    }
}

#[derive(Deserialize)]
struct StoredPromotionV3 {
    audit: Vec<u64>,
    promotion: PromotionV3,
}

impl From<StoredPromotionV3> for StoredPromotionV4 {
    fn from(s: StoredPromotionV3) -> Self {
        StoredPromotionV4 {
            audit: s.audit,
            promotion: s.promotion.into(),
        }
    }
}

/// Format 2's event: format 3 appended `attributes`.
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
                // Hashed only when present, so the entry's hash stands.
                attributes: Default::default(),
            },
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// Format 2's promotion: it ended at `request_id`.
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
    approvals: Vec<ApprovalV3>,
    required_approvals: u32,
    previous_digest: String,
    created_at: Time,
    updated_at: Time,
    promoted_at: Option<Time>,
    failure_message: String,
    expires_at: Time,
    request_id: String,
}

impl From<PromotionV2> for PromotionV3 {
    fn from(v2: PromotionV2) -> Self {
        PromotionV3 {
            v2,
            superseded_by: None,
            break_glass: false,
            project: String::new(),
            rollback: false,
            policy_digest: String::new(),
        }
    }
}

/// Every format 2 record had a promotion (there were no entries about none).
#[derive(Deserialize)]
struct RecordV2 {
    entry: AuditEntryV2,
    promotion: PromotionV2,
}

impl From<RecordV2> for RecordV3 {
    fn from(r: RecordV2) -> Self {
        RecordV3 {
            entry: r.entry.into(),
            promotion: Some(r.promotion.into()),
        }
    }
}

#[derive(Deserialize)]
struct StoredPromotionV2 {
    audit: Vec<u64>,
    promotion: PromotionV2,
}

impl From<StoredPromotionV2> for StoredPromotionV3 {
    fn from(s: StoredPromotionV2) -> Self {
        StoredPromotionV3 {
            audit: s.audit,
            promotion: s.promotion.into(),
        }
    }
}

/// Records as earlier formats wrote them, built field by field from the
/// current types (postcard writes a tuple as a struct: fields in order,
/// nothing else), not from the shapes above, so tests of the upgrades do
/// not check the decoder against itself.
#[cfg(test)]
pub(crate) mod written {
    use super::{AuditEntry, Promotion, encode};

    /// Format 4's promotion: up to `not_before`. `p` must hold nothing
    /// format 4 could not.
    pub fn promotion_v4(p: &Promotion) -> Vec<u8> {
        assert!(p.release_id.is_none());
        let approvals: Vec<_> = p
            .approvals
            .iter()
            .map(|a| (&a.approver, &a.comment, a.time, &a.groups))
            .collect();
        encode(&(
            (
                p.id,
                &p.repository,
                &p.environment,
                &p.target_tag,
                &p.source,
                &p.digest,
                p.state,
                &p.requested_by,
                &p.reason,
                approvals,
                p.required_approvals,
                &p.previous_digest,
            ),
            (
                p.created_at,
                p.updated_at,
                p.promoted_at,
                &p.failure_message,
                p.expires_at,
                &p.request_id,
                p.superseded_by,
                p.break_glass,
                &p.project,
                p.rollback,
                &p.policy_digest,
            ),
            (&p.waiting_for, p.not_before),
        ))
    }

    /// Format 3's promotion: up to `policy_digest`, approvals without
    /// groups. `p` must hold nothing format 3 could not.
    pub fn promotion_v3(p: &Promotion) -> Vec<u8> {
        assert!(p.waiting_for.is_empty() && p.not_before.is_none() && p.release_id.is_none());
        assert!(p.approvals.iter().all(|a| a.groups.is_empty()));
        let mut out = promotion_v2(p);
        out.extend(encode(&(
            p.superseded_by,
            p.break_glass,
            &p.project,
            p.rollback,
            &p.policy_digest,
        )));
        out
    }

    /// Format 2's promotion: up to `request_id`.
    pub fn promotion_v2(p: &Promotion) -> Vec<u8> {
        let approvals: Vec<_> = p
            .approvals
            .iter()
            .map(|a| (&a.approver, &a.comment, a.time))
            .collect();
        encode(&(
            (
                p.id,
                &p.repository,
                &p.environment,
                &p.target_tag,
                &p.source,
                &p.digest,
                p.state,
                &p.requested_by,
                &p.reason,
                approvals,
                p.required_approvals,
                &p.previous_digest,
            ),
            (
                p.created_at,
                p.updated_at,
                p.promoted_at,
                &p.failure_message,
                p.expires_at,
                &p.request_id,
            ),
        ))
    }

    /// A format 4 audit record.
    pub fn record_v4(entry: &AuditEntry, promotion: Option<&Promotion>) -> Vec<u8> {
        record_with(entry, promotion, promotion_v4)
    }

    /// A format 3 audit record.
    pub fn record_v3(entry: &AuditEntry, promotion: Option<&Promotion>) -> Vec<u8> {
        record_with(entry, promotion, promotion_v3)
    }

    /// An audit record of format 3 or later: the entry, then the promotion
    /// (written by `promotion`) as an option.
    fn record_with(
        entry: &AuditEntry,
        promotion: Option<&Promotion>,
        written: fn(&Promotion) -> Vec<u8>,
    ) -> Vec<u8> {
        let mut out = encode(entry);
        match promotion {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                out.extend(written(p));
            }
        }
        out
    }

    /// A format 2 audit record: the entry without attributes, and always a
    /// promotion (with no option tag).
    pub fn record_v2(entry: &AuditEntry, promotion: &Promotion) -> Vec<u8> {
        let (e, ev) = (entry, &entry.event);
        assert!(ev.attributes.is_empty());
        let mut out = encode(&(
            e.sequence,
            e.time,
            (
                ev.action,
                &ev.actor,
                ev.promotion_id,
                &ev.repository,
                &ev.environment,
                &ev.digest,
                &ev.previous_digest,
                &ev.comment,
            ),
            e.prev_hash,
            e.hash,
        ));
        out.extend(promotion_v2(promotion));
        out
    }

    /// sled's promotion value in format `format` (2, 3 or 4).
    pub fn stored_promotion(audit: &[u64], p: &Promotion, format: u64) -> Vec<u8> {
        let mut out = encode(&audit);
        out.extend(match format {
            2 => promotion_v2(p),
            3 => promotion_v3(p),
            4 => promotion_v4(p),
            _ => panic!("no format {format} promotion is written here"),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{CheckReport, CheckStatus};

    fn promotion() -> Promotion {
        let t = Time {
            seconds: 1_800_000_000,
            nanos: 5,
        };
        Promotion {
            id: 7,
            repository: "r.io/a".into(),
            environment: "production".into(),
            target_tag: "production".into(),
            source: "staging".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            state: State::Approved,
            requested_by: "alice".into(),
            reason: "ship".into(),
            approvals: vec![
                Approval {
                    approver: "bob".into(),
                    comment: "lgtm".into(),
                    time: t,
                    groups: vec![],
                },
                Approval {
                    approver: "carol".into(),
                    comment: String::new(),
                    time: t,
                    groups: vec![],
                },
            ],
            required_approvals: 2,
            previous_digest: String::new(),
            created_at: t,
            updated_at: t,
            promoted_at: None,
            failure_message: String::new(),
            expires_at: t,
            request_id: "k".into(),
            superseded_by: Some(9),
            break_glass: true,
            project: "team".into(),
            rollback: false,
            policy_digest: "sha256:p".into(),
            waiting_for: vec![],
            not_before: None,
            release_id: None,
            last_apply_error: String::new(),
            apply_attempts: 0,
        }
    }

    fn entry(promotion: Option<&Promotion>) -> AuditEntry {
        let event = match promotion {
            Some(p) => Event {
                action: Action::Approved,
                actor: "carol".into(),
                promotion_id: p.id,
                repository: p.repository.clone(),
                environment: p.environment.clone(),
                digest: p.digest.clone(),
                previous_digest: String::new(),
                comment: String::new(),
                attributes: Default::default(),
            },
            None => CheckReport {
                repository: "r.io/a".into(),
                digest: "sha256:d".into(),
                check: "e2e".into(),
                status: CheckStatus::Passed,
                reported_by: "ci".into(),
                time: Time::ZERO,
                details_url: String::new(),
                comment: String::new(),
            }
            .event(),
        };
        AuditEntry::chain(crate::domain::audit::GENESIS, 3, Time::ZERO, event)
    }

    /// The record re-encoded in the current format: its entry's bytes are
    /// the old record's first bytes, unchanged, and so is its hash.
    fn reencoded_keeps_the_entry(old: &[u8], r: &Record) -> Vec<u8> {
        let entry = encode(&r.entry);
        assert!(old.starts_with(&entry), "the entry's bytes changed");
        assert_eq!(r.entry.computed_hash(), r.entry.hash);
        let new = encode(&RecordRef {
            entry: &r.entry,
            promotion: r.promotion.as_ref(),
        });
        assert!(new.starts_with(&entry));
        assert_eq!(decode_entry(3, &new).unwrap(), r.entry);
        new
    }

    #[test]
    fn a_format_4_record_does_not_pass_for_the_current_one_and_upgrades_without_a_release() {
        let mut p = promotion();
        // Everything format 4 could hold.
        p.state = State::Waiting;
        p.approvals[0].groups = vec!["sre".into()];
        p.waiting_for = vec!["soak".into()];
        p.not_before = Some(Time {
            seconds: 1_800_000_600,
            nanos: 0,
        });
        let e = entry(Some(&p));
        let old = written::record_v4(&e, Some(&p));
        assert!(decode_record(3, &old).is_err(), "format 4 read as format 5");
        let r = upgrade_record(Old::V4, 3, &old).unwrap();
        assert_eq!((&r.entry, r.promotion.as_ref()), (&e, Some(&p)));
        assert_eq!(r.promotion.as_ref().unwrap().release_id, None);
        let new = reencoded_keeps_the_entry(&old, &r);
        assert_eq!(decode_record(3, &new).unwrap().promotion, Some(p.clone()));
        let old = written::stored_promotion(&[1, 3], &p, 4);
        assert!(decode_stored_promotion(7, &old).is_err());
        let s = upgrade_stored_promotion(Old::V4, 7, &old).unwrap();
        assert_eq!((s.audit, s.promotion), (vec![1, 3], p.clone()));
        let bare = written::promotion_v4(&p);
        assert!(decode_promotion(7, &bare).is_err());
        assert_eq!(upgrade_promotion(Old::V4, 7, &bare).unwrap(), p);
        // An entry about no promotion is the same bytes in both formats.
        let none = entry(None);
        let old = written::record_v4(&none, None);
        assert_eq!(decode_record(3, &old).unwrap().entry, none);
        assert_eq!(upgrade_record(Old::V4, 3, &old).unwrap().entry, none);
        // The current format, a release's member too, is not taken for the
        // old one, and reads back whole.
        p.release_id = Some(7);
        let current = encode(&RecordRef {
            entry: &e,
            promotion: Some(&p),
        });
        assert!(upgrade_record(Old::V4, 3, &current).is_err());
        assert_eq!(
            decode_record(3, &current).unwrap().promotion,
            Some(p.clone())
        );
        let bare = encode(&p);
        assert!(upgrade_promotion(Old::V4, 7, &bare).is_err());
        assert_eq!(decode_promotion(7, &bare).unwrap(), p);
        let stored = encode(&StoredPromotionRef {
            audit: &[3],
            promotion: &p,
        });
        assert!(upgrade_stored_promotion(Old::V4, 7, &stored).is_err());
        assert_eq!(decode_stored_promotion(7, &stored).unwrap().promotion, p);
    }

    #[test]
    fn a_format_3_record_does_not_pass_for_the_current_one_and_upgrades_with_its_fields() {
        let p = promotion();
        let e = entry(Some(&p));
        let old = written::record_v3(&e, Some(&p));
        assert!(decode_record(3, &old).is_err(), "format 3 read as format 4");
        let r = upgrade_record(Old::V3, 3, &old).unwrap();
        reencoded_keeps_the_entry(&old, &r);
        assert_eq!((r.entry, r.promotion), (e.clone(), Some(p.clone())));
        let old = written::stored_promotion(&[1, 3], &p, 3);
        assert!(decode_stored_promotion(7, &old).is_err());
        let s = upgrade_stored_promotion(Old::V3, 7, &old).unwrap();
        assert_eq!((s.audit, s.promotion), (vec![1, 3], p.clone()));
        let bare = written::promotion_v3(&p);
        assert!(decode_promotion(7, &bare).is_err());
        assert_eq!(upgrade_promotion(Old::V3, 7, &bare).unwrap(), p);
        // An entry about no promotion is the same bytes in both formats.
        let e = entry(None);
        let old = written::record_v3(&e, None);
        assert_eq!(decode_record(3, &old).unwrap().entry, e);
        assert_eq!(upgrade_record(Old::V3, 3, &old).unwrap().entry, e);
        // The current format is not taken for the old one.
        let current = encode(&RecordRef {
            entry: &e,
            promotion: Some(&p),
        });
        assert!(upgrade_record(Old::V3, 3, &current).is_err());
    }

    #[test]
    fn a_format_2_record_upgrades_and_its_entry_keeps_its_hash() {
        let mut p = promotion();
        // What format 2 could not hold reads as its default.
        p.superseded_by = None;
        p.break_glass = false;
        p.project = String::new();
        p.policy_digest = String::new();
        let e = entry(Some(&p));
        let old = written::record_v2(&e, &p);
        let r = upgrade_record(Old::V2, 3, &old).unwrap();
        assert_eq!((&r.entry, r.promotion.as_ref()), (&e, Some(&p)));
        assert_eq!(r.entry.computed_hash(), r.entry.hash);
        assert_eq!(decode_entry_v2(3, &old).unwrap(), e);
        // Format 2 had no attributes: the entry is the same bytes once the
        // empty map's length is added after the event.
        let new = encode(&RecordRef {
            entry: &r.entry,
            promotion: r.promotion.as_ref(),
        });
        assert_eq!(decode_entry(3, &new).unwrap().computed_hash(), e.hash);
        // A format 3 record in a format 2 store (an earlier build's
        // migration, cut short) is read as what it is.
        let v3 = written::record_v3(&e, Some(&p));
        assert_eq!(
            upgrade_record(Old::V2, 3, &v3).unwrap().promotion,
            Some(p.clone())
        );
        assert_eq!(decode_entry_v2(3, &v3).unwrap(), e);
        // So is a format 4 record (an earlier build's migration to format
        // 4, cut short), and one of the current format, for verify-log.
        let v4 = written::record_v4(&e, Some(&p));
        assert_eq!(decode_entry_v2(3, &v4).unwrap(), e);
        let current = encode(&RecordRef {
            entry: &e,
            promotion: Some(&p),
        });
        assert_eq!(decode_entry_v2(3, &current).unwrap(), e);
        let s =
            upgrade_stored_promotion(Old::V2, 7, &written::stored_promotion(&[3], &p, 2)).unwrap();
        assert_eq!(s.promotion, p);
    }
}
