//! Records derived from the audit log (the promotion record and the
//! indexes), and the start-up repairs of them: finishing a derivation a
//! crash cut short (`redo_derived`), rolling back entries a failed flush
//! refused (`roll_back`), and migrating a directory of an earlier format
//! (`migrate`).

use super::{Trees, keys, postings, stored_promotion};
use crate::domain::audit::AuditEntry;
use crate::domain::model::{Action, CheckReport, Promotion, State};
use crate::store::StoreError;
use crate::store::chain::Indexed;
use crate::store::codec::{
    Old, Record, RecordRef, StoredPromotion, StoredPromotionRef, decode_record, encode,
    upgrade_record, upgrade_stored_promotion,
};

/// Writes what is derived from one audit record, given the promotion's
/// stored value before it: the indexes first, the promotion's value last.
/// Its audit list then ends with this sequence, which is how [`redo_derived`]
/// tells a finished derivation from one a crash cut short. Every step is
/// idempotent, so running it twice for the same record changes nothing.
pub fn derive(
    t: &Trees,
    before: Option<&StoredPromotion>,
    entry: &AuditEntry,
    after: &Promotion,
) -> Result<(), StoreError> {
    super::merkle::append(t, entry)?;
    let (id, seq) = (after.id, entry.sequence);
    postings::append(
        &t.index,
        &keys::audit_by_repository_prefix(&entry.event.repository),
        seq,
    )?;
    postings::append(
        &t.index,
        &keys::audit_by_environment_prefix(&entry.event.environment),
        seq,
    )?;
    if let Some((repository, environment)) = Indexed::of(entry, Some(after)).moved_tag {
        t.index
            .insert(keys::moved_tag(repository, environment), &[])?;
    }
    match before.map(|b| b.promotion.state) {
        None => {
            postings::append(
                &t.index,
                &keys::promotions_by_repository_prefix(&after.repository),
                id,
            )?;
            postings::append(
                &t.index,
                &keys::promotions_by_environment_prefix(&after.environment),
                id,
            )?;
            if !after.request_id.is_empty() {
                t.index.insert(
                    keys::request_id(&after.requested_by, &after.request_id),
                    &keys::u64_key(id),
                )?;
            }
        }
        Some(state) if state != after.state => {
            t.index.remove(keys::promotion_in_state(state, id))?;
        }
        Some(_) => {}
    }
    if before.is_none_or(|b| b.promotion.state != after.state) {
        t.index
            .insert(keys::promotion_in_state(after.state, id), &[])?;
    }
    let mut audit = before.map(|b| b.audit.clone()).unwrap_or_default();
    if audit.last().is_none_or(|&last| last < seq) {
        audit.push(seq);
    }
    t.promotions.insert(
        keys::u64_key(id),
        encode(&StoredPromotionRef {
            audit: &audit,
            promotion: after,
        }),
    )?;
    Ok(())
}

/// What is derived from an entry about no promotion: its audit postings
/// and, for a check report, the latest-report key, written last (it names
/// the sequence, which is how `is_derived` tells it finished). Idempotent.
pub fn derive_event(t: &Trees, entry: &AuditEntry) -> Result<(), StoreError> {
    super::merkle::append(t, entry)?;
    let (e, seq) = (&entry.event, entry.sequence);
    postings::append(
        &t.index,
        &keys::audit_by_repository_prefix(&e.repository),
        seq,
    )?;
    if !e.environment.is_empty() {
        postings::append(
            &t.index,
            &keys::audit_by_environment_prefix(&e.environment),
            seq,
        )?;
    }
    if let Some(r) = Indexed::of(entry, None).check {
        t.index.insert(
            keys::check(&r.repository, &r.digest, &r.check),
            &keys::u64_key(seq),
        )?;
    }
    Ok(())
}

/// Whether everything derived from `record` was written.
fn is_derived(t: &Trees, record: &Record) -> Result<bool, StoreError> {
    let seq = record.entry.sequence;
    Ok(match &record.promotion {
        Some(p) => {
            stored_promotion(&t.promotions, p.id)?.is_some_and(|s| s.audit.last() >= Some(&seq))
        }
        None => match CheckReport::from_entry(&record.entry) {
            Some(r) => t
                .index
                .get(keys::check(&r.repository, &r.digest, &r.check))?
                .and_then(|v| keys::read_u64(&v))
                .is_some_and(|latest| latest >= seq),
            None => {
                let prefix = keys::audit_by_repository_prefix(&record.entry.event.repository);
                postings::from(&t.index, &prefix, seq).next().transpose()? == Some(seq)
            }
        },
    })
}

/// Finishes the derivations a crash cut short: walks back from the newest
/// audit record to the first one whose promotion value already lists it,
/// then derives the rest in order. sled recovers a prefix of what was
/// written, and each commit writes its audit record first and the
/// promotion's value last, so only the newest records can be unfinished.
pub fn redo_derived(t: &Trees) -> Result<(), StoreError> {
    let mut unfinished = Vec::new();
    for kv in t.audit.iter().rev() {
        let (k, v) = kv?;
        let record = decode_record(keys::number(&k), &v)?;
        if is_derived(t, &record)? {
            break;
        }
        unfinished.push(record);
    }
    if unfinished.is_empty() {
        return Ok(());
    }
    for record in unfinished.iter().rev() {
        match &record.promotion {
            Some(p) => {
                let before = stored_promotion(&t.promotions, p.id)?;
                derive(t, before.as_ref(), &record.entry, p)?;
            }
            None => derive_event(t, &record.entry)?,
        }
    }
    t.db.flush()?;
    tracing::info!(
        entries = unfinished.len(),
        "finished indexing audit entries written just before the last stop"
    );
    Ok(())
}

/// Removes every audit record after `acknowledged`, newest first, and undoes
/// what was derived from it. Those records were written before a flush that
/// failed, so their callers were told nothing changed. Tolerates a record
/// whose derivation was cut short.
pub fn roll_back(t: &Trees, acknowledged: u64) -> Result<usize, StoreError> {
    let mut undone = 0;
    while let Some((k, v)) = t.audit.last()? {
        if keys::read_u64(&k).is_none_or(|seq| seq <= acknowledged) {
            break;
        }
        let record = decode_record(keys::number(&k), &v)?;
        undo(t, &record)?;
        t.audit.remove(&k)?;
        undone += 1;
    }
    Ok(undone)
}

/// Undoes an entry about no promotion: its postings, and a check report's
/// latest-report key goes back to the report before it (if any).
fn undo_event(t: &Trees, entry: &AuditEntry) -> Result<(), StoreError> {
    let (e, seq) = (&entry.event, entry.sequence);
    let by_repository = keys::audit_by_repository_prefix(&e.repository);
    postings::remove(&t.index, &by_repository, seq)?;
    if !e.environment.is_empty() {
        postings::remove(
            &t.index,
            &keys::audit_by_environment_prefix(&e.environment),
            seq,
        )?;
    }
    let Some(r) = CheckReport::from_entry(entry) else {
        return Ok(());
    };
    let key = keys::check(&r.repository, &r.digest, &r.check);
    // Rare (a refused flush): walk the repository's entries back.
    for earlier in postings::down_from(&t.index, &by_repository, seq.saturating_sub(1)) {
        let earlier = earlier?;
        let k = keys::u64_key(earlier);
        let Some(v) = t.audit.get(k)? else { continue };
        let before = decode_record(keys::number(&k), &v)?.entry;
        if let Some(b) = CheckReport::from_entry(&before)
            && b.digest == r.digest
            && b.check == r.check
        {
            t.index.insert(key, &keys::u64_key(earlier))?;
            return Ok(());
        }
    }
    t.index.remove(key)?;
    Ok(())
}

fn undo(t: &Trees, record: &Record) -> Result<(), StoreError> {
    let Some(after) = &record.promotion else {
        return undo_event(t, &record.entry);
    };
    let seq = record.entry.sequence;
    let id = after.id;
    postings::remove(
        &t.index,
        &keys::audit_by_repository_prefix(&record.entry.event.repository),
        seq,
    )?;
    postings::remove(
        &t.index,
        &keys::audit_by_environment_prefix(&record.entry.event.environment),
        seq,
    )?;
    if record.entry.event.action == Action::Applied
        && t.deployed_at(&after.repository, &after.environment, None)?
            .is_none()
    {
        // Its postings are gone, so this finds only older APPLIED entries.
        t.index
            .remove(keys::moved_tag(&after.repository, &after.environment))?;
    }
    let mut audit = stored_promotion(&t.promotions, id)?
        .map(|s| s.audit)
        .unwrap_or_default();
    audit.retain(|&s| s < seq);
    // The promotion as it was before: the snapshot of its previous entry.
    let previous = match audit.last() {
        Some(&prev) => {
            let key = keys::u64_key(prev);
            let v = t.audit.get(key)?.ok_or_else(|| StoreError::Corrupt {
                what: format!("audit entry {prev}"),
                reason: format!("promotion {id} lists it, but it is missing"),
            })?;
            decode_record(keys::number(&key), &v)?.promotion
        }
        None => None,
    };
    if previous.as_ref().is_none_or(|p| p.state != after.state) {
        t.index.remove(keys::promotion_in_state(after.state, id))?;
    }
    match previous {
        Some(p) => {
            t.index.insert(keys::promotion_in_state(p.state, id), &[])?;
            t.promotions.insert(
                keys::u64_key(id),
                encode(&StoredPromotionRef {
                    audit: &audit,
                    promotion: &p,
                }),
            )?;
        }
        None => {
            postings::remove(
                &t.index,
                &keys::promotions_by_repository_prefix(&after.repository),
                id,
            )?;
            postings::remove(
                &t.index,
                &keys::promotions_by_environment_prefix(&after.environment),
                id,
            )?;
            if !after.request_id.is_empty() {
                t.index
                    .remove(keys::request_id(&after.requested_by, &after.request_id))?;
            }
            t.promotions.remove(keys::u64_key(id))?;
        }
    }
    Ok(())
}

/// Writes the `T` key of every tag a PROMOTED promotion moved, once per
/// directory written before those keys existed (then marks it). Every
/// APPLIED entry ends its promotion PROMOTED, so those are all of them.
/// Idempotent: a run cut short runs again at the next start.
pub fn index_moved_tags(t: &Trees) -> Result<(), StoreError> {
    if t.meta.get(keys::MOVED_TAGS)?.is_some() {
        return Ok(());
    }
    let mut tags = 0;
    for id in super::query::state_ids(&t.index, State::Promoted, 0) {
        if let Some(p) = t.get(id?)? {
            t.index
                .insert(keys::moved_tag(&p.repository, &p.environment), &[])?;
            tags += 1;
        }
    }
    t.meta.insert(keys::MOVED_TAGS, &[])?;
    t.db.flush()?;
    if tags > 0 {
        tracing::info!(promotions = tags, "indexed the tags prodgate moved");
    }
    Ok(())
}

/// Records rewritten per sled transaction while migrating.
const MIGRATION_CHUNK: usize = 1000;

/// Rewrites a directory in format `from` as the current format: every
/// audit record and promotion value in the current shape (see
/// `store::codec`), and from format 2 the index of promotions by
/// environment too. Each tree is rewritten a chunk per sled transaction
/// that also advances the tree's progress key in `meta`, so a chunk is
/// rewritten whole or not at all and a run cut short goes on after the
/// last whole chunk at the next start, never reading a rewritten record as
/// the old format. The progress keys name the format they migrate to: a
/// format 2 or 3 directory whose migration to format 4 an earlier build cut
/// short holds that build's progress keys (`keys::MIGRATED_AUDIT_4`), and
/// the records up to them are read as format 4. The caller flushes, then
/// marks the format (which removes the progress keys). Returns how many
/// records of each tree it rewrote.
pub fn migrate(t: &Trees, from: Old) -> Result<(u64, u64), StoreError> {
    migrate_some(t, from, usize::MAX)
}

/// [`migrate`], stopping after `limit` records of each tree (as a crash
/// would; for tests).
pub(super) fn migrate_some(t: &Trees, from: Old, limit: usize) -> Result<(u64, u64), StoreError> {
    // Only a format 2 or 3 directory can hold them: marking format 4
    // removed them.
    let to_4_audit = t.meta.get(keys::MIGRATED_AUDIT_4)?;
    let to_4_promotions = t.meta.get(keys::MIGRATED_PROMOTIONS_4)?;
    let written_in = |to_4: &Option<sled::IVec>, k: &[u8]| match to_4 {
        Some(last) if k <= last.as_ref() => Old::V4,
        _ => from,
    };
    let records = upgrade_tree(t, &t.audit, keys::MIGRATED_AUDIT, limit, |k, v| {
        let r = upgrade_record(written_in(&to_4_audit, k), keys::number(k), v)?;
        Ok(encode(&RecordRef {
            entry: &r.entry,
            promotion: r.promotion.as_ref(),
        }))
    })?;
    let promotions = upgrade_tree(
        t,
        &t.promotions,
        keys::MIGRATED_PROMOTIONS,
        limit,
        |k, v| {
            let s = upgrade_stored_promotion(written_in(&to_4_promotions, k), keys::number(k), v)?;
            if from == Old::V2 {
                // Before the chunk's transaction: appending is idempotent, and
                // a chunk cut short is read again.
                postings::append(
                    &t.index,
                    &keys::promotions_by_environment_prefix(&s.promotion.environment),
                    s.promotion.id,
                )?;
            }
            Ok(encode(&StoredPromotionRef {
                audit: &s.audit,
                promotion: &s.promotion,
            }))
        },
    )?;
    Ok((records, promotions))
}

/// Rewrites each value of `tree` after the key its progress key `progress`
/// names with `upgrade`, a chunk per transaction with the progress key, up
/// to `limit` values.
fn upgrade_tree(
    t: &Trees,
    tree: &sled::Tree,
    progress: &[u8],
    limit: usize,
    upgrade: impl Fn(&[u8], &[u8]) -> Result<Vec<u8>, StoreError>,
) -> Result<u64, StoreError> {
    use sled::Transactional;
    use sled::transaction::{ConflictableTransactionError, TransactionError};
    use std::ops::Bound;
    let mut after = t.meta.get(progress)?;
    let mut done = 0;
    while done < limit {
        let from = after
            .as_ref()
            .map_or(Bound::Unbounded, |k| Bound::Excluded(k.clone()));
        let mut chunk = Vec::new();
        for kv in tree
            .range::<sled::IVec, _>((from, Bound::Unbounded))
            .take(MIGRATION_CHUNK.min(limit - done))
        {
            let (k, v) = kv?;
            let upgraded = upgrade(&k, &v)?;
            chunk.push((k, upgraded));
        }
        let Some((last, _)) = chunk.last() else {
            break;
        };
        let last = last.clone();
        (tree, &t.meta)
            .transaction(|(tree, meta)| {
                for (k, v) in &chunk {
                    tree.insert(k, v.as_slice())?;
                }
                meta.insert(progress, &last)?;
                Ok::<_, ConflictableTransactionError<std::convert::Infallible>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::from(e),
                TransactionError::Abort(never) => match never {},
            })?;
        done += chunk.len();
        after = Some(last);
    }
    Ok(done as u64)
}
