//! Records derived from the audit log (the promotion record and the
//! indexes), and the start-up repairs of them: finishing a derivation a
//! crash cut short (`redo_derived`), rolling back entries a failed flush
//! refused (`roll_back`), and migrating a format 2 directory (`migrate`).

use super::codec::{
    Record, StoredPromotion, StoredPromotionRef, decode_promotion, decode_record, encode,
    upgrade_promotion, upgrade_record,
};
use super::{Trees, keys, postings, stored_promotion};
use crate::domain::audit::AuditEntry;
use crate::domain::model::Promotion;
use crate::store::StoreError;

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
) -> sled::Result<()> {
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

/// Finishes the derivations a crash cut short: walks back from the newest
/// audit record to the first one whose promotion value already lists it,
/// then derives the rest in order. sled recovers a prefix of what was
/// written, and each commit writes its audit record first and the
/// promotion's value last, so only the newest records can be unfinished.
pub fn redo_derived(t: &Trees) -> Result<(), StoreError> {
    let mut unfinished = Vec::new();
    for kv in t.audit.iter().rev() {
        let (k, v) = kv?;
        let record = decode_record(&k, &v)?;
        let stored = stored_promotion(&t.promotions, record.promotion.id)?;
        if stored.is_some_and(|s| s.audit.last() >= Some(&record.entry.sequence)) {
            break;
        }
        unfinished.push(record);
    }
    if unfinished.is_empty() {
        return Ok(());
    }
    for record in unfinished.iter().rev() {
        let before = stored_promotion(&t.promotions, record.promotion.id)?;
        derive(t, before.as_ref(), &record.entry, &record.promotion)?;
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
        let record = decode_record(&k, &v)?;
        undo(t, &record)?;
        t.audit.remove(&k)?;
        undone += 1;
    }
    Ok(undone)
}

fn undo(t: &Trees, record: &Record) -> Result<(), StoreError> {
    let (after, seq) = (&record.promotion, record.entry.sequence);
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
            Some(decode_record(&key, &v)?.promotion)
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

/// Rewrites a format 2 directory as format 3: every record gains
/// `superseded_by` (none), and promotions are indexed by environment.
/// Idempotent (records already in format 3 are left alone, postings
/// ignore repeats), so a migration cut short runs again at the next start;
/// the caller marks the format only after this returns and is flushed.
pub fn migrate(t: &Trees) -> Result<(u64, u64), StoreError> {
    let mut records = 0;
    for kv in t.audit.iter() {
        let (k, v) = kv?;
        if let Some(upgraded) = upgrade_record(&v) {
            t.audit.insert(k, upgraded)?;
            records += 1;
        }
    }
    let mut promotions = 0;
    for kv in t.promotions.iter() {
        let (k, v) = kv?;
        let promotion = match upgrade_promotion(&v) {
            Some((upgraded, p)) => {
                t.promotions.insert(&k, upgraded)?;
                p
            }
            None => decode_promotion(&k, &v)?.promotion,
        };
        postings::append(
            &t.index,
            &keys::promotions_by_environment_prefix(&promotion.environment),
            promotion.id,
        )?;
        promotions += 1;
    }
    Ok((records, promotions))
}
