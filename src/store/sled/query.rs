//! Reads: records by id, pages of promotions and audit entries through the
//! indexes (never a full scan where an index or a seek can bound the walk),
//! the deployed digest at a moment, and the chain check.

use super::keys::decode_manifest;
use super::{Trees, keys, postings, request_id_of, stored_promotion};
use crate::domain::audit::{AuditEntry, Verification, Verifier};
use crate::domain::drift::TagRecord;
use crate::domain::model::{
    Action, CheckReport, POLICY_ATTRIBUTE, Promotion, PromotionId, State, Time,
};
use crate::store::codec::{decode_entry, decode_stored_promotion};
use crate::store::{
    CheckNames, HistoryFilter, ListFilter, Page, PageRequest, StoreError, StoredManifest,
    StoredPolicy,
};

type Ids<'a> = Box<dyn Iterator<Item = Result<u64, StoreError>> + 'a>;

/// Fills a page during a walk: takes items up to the limit, and on the one
/// after that notes that more follow and asks the walk to stop.
struct PageBuilder<T> {
    page: Page<T>,
    limit: usize,
}

impl<T> PageBuilder<T> {
    fn new(limit: usize) -> Self {
        Self {
            page: Page {
                items: Vec::new(),
                more: false,
            },
            limit,
        }
    }

    /// Whether the walk should go on.
    fn offer(&mut self, item: T) -> bool {
        if self.page.items.len() == self.limit {
            self.page.more = true;
            return false;
        }
        self.page.items.push(item);
        true
    }

    fn finish(self) -> Page<T> {
        self.page
    }
}

/// The inclusive range of ids or sequences a page walks, from its cursor.
fn bounds(page: &PageRequest, first: u64) -> (u64, u64) {
    match (page.newest_first, page.after) {
        (false, after) => (after.map_or(first, |a| a.saturating_add(1)), u64::MAX),
        (true, None) => (first, u64::MAX),
        (true, Some(a)) => (first, a.saturating_sub(1)),
    }
}

/// The ids under the state index for `state`, from `start` on, ascending.
pub fn state_ids(
    index: &sled::Tree,
    state: State,
    start: u64,
) -> impl DoubleEndedIterator<Item = Result<u64, StoreError>> + '_ {
    state_range(index, state, start, u64::MAX)
}

fn state_range(
    index: &sled::Tree,
    state: State,
    lo: u64,
    hi: u64,
) -> impl DoubleEndedIterator<Item = Result<u64, StoreError>> + '_ {
    let prefix = keys::promotions_by_state_prefix(state);
    // Every key under the prefix is the prefix and 8 bytes.
    index
        .range(keys::indexed(&prefix, lo)..=keys::indexed(&prefix, hi))
        .filter_map(|kv| match kv {
            Ok((k, _)) => keys::tail_u64(&k).map(Ok),
            Err(e) => Some(Err(e.into())),
        })
}

/// The members of a posting list within `lo..=hi`, walked up from `lo` or
/// down from `hi`; the walk stops at the far bound.
fn posting_range<'a>(
    index: &'a sled::Tree,
    prefix: &[u8],
    lo: u64,
    hi: u64,
    down: bool,
) -> Ids<'a> {
    let within = move |r: &sled::Result<u64>| r.as_ref().map_or(true, |&n| n >= lo && n <= hi);
    if down {
        Box::new(
            postings::down_from(index, prefix, hi)
                .take_while(within)
                .map(|r| r.map_err(StoreError::from)),
        )
    } else {
        Box::new(
            postings::from(index, prefix, lo)
                .take_while(within)
                .map(|r| r.map_err(StoreError::from)),
        )
    }
}

impl Trees {
    /// POLICY_CHANGED entries, newest first. They are the only entries about
    /// no repository, so the postings of repository "" are exactly them.
    fn policy_entries(&self) -> impl Iterator<Item = Result<AuditEntry, StoreError>> + '_ {
        let prefix = keys::audit_by_repository_prefix("");
        // Collected first: the walk borrows the prefix, and there are few.
        let seqs: Vec<sled::Result<u64>> =
            postings::down_from(&self.index, &prefix, u64::MAX).collect();
        seqs.into_iter()
            .map(|seq| {
                let key = keys::u64_key(seq?);
                let v = self.audit.get(key)?.ok_or_else(|| StoreError::Corrupt {
                    what: format!("audit entry {}", keys::read_u64(&key).unwrap_or(0)),
                    reason: "indexed but missing".into(),
                })?;
                decode_entry(keys::number(&key), &v)
            })
            .filter(|e| {
                e.as_ref()
                    .map_or(true, |e| e.event.action == Action::PolicyChanged)
            })
    }

    pub fn latest_policy(&self) -> Result<Option<String>, StoreError> {
        match self.policy_entries().next().transpose()? {
            Some(e) => Ok(e.event.attributes.get(POLICY_ATTRIBUTE).cloned()),
            None => Ok(None),
        }
    }

    /// The version recorded under `digest`, timed by its first record.
    /// Walks every POLICY_CHANGED entry: there is one per start or reload
    /// that changed the policy, a few thousand in years of operation.
    pub fn policy(&self, digest: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let Some(json) = self.policies.get(keys::policy(digest))? else {
            return Ok(None);
        };
        let mut first = None;
        for e in self.policy_entries() {
            let e = e?;
            if e.event.attributes.get(POLICY_ATTRIBUTE).map(String::as_str) == Some(digest) {
                first = Some(e.time);
            }
        }
        // Stored but never recorded: a job cut short before its entry.
        let Some(first_recorded) = first else {
            return Ok(None);
        };
        let canonical_json = String::from_utf8(json.to_vec()).map_err(|e| StoreError::Corrupt {
            what: format!("policy {digest}"),
            reason: e.to_string(),
        })?;
        Ok(Some(StoredPolicy {
            digest: digest.to_owned(),
            canonical_json,
            first_recorded,
        }))
    }

    pub fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError> {
        Ok(stored_promotion(&self.promotions, id)?.map(|s| s.promotion))
    }

    pub fn manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<StoredManifest>, StoreError> {
        self.manifests
            .get(keys::manifest(repository, digest))?
            .map(|v| {
                decode_manifest(&v).ok_or_else(|| StoreError::Corrupt {
                    what: format!("manifest {digest}"),
                    reason: "bad encoding".into(),
                })
            })
            .transpose()
    }

    pub fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<Promotion>, StoreError> {
        match request_id_of(&self.index, principal, request_id)? {
            Some(id) => self.get(id),
            None => Ok(None),
        }
    }

    fn entry(&self, sequence: u64) -> Result<Option<AuditEntry>, StoreError> {
        let key = keys::u64_key(sequence);
        self.audit
            .get(key)?
            .map(|v| decode_entry(sequence, &v))
            .transpose()
    }

    pub fn in_state(&self, state: State) -> Result<Vec<Promotion>, StoreError> {
        let mut out = Vec::new();
        for id in state_ids(&self.index, state, 0) {
            if let Some(p) = self.get(id?)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// One page of promotions in id order (or reverse), after the cursor.
    /// Walks the most selective index the filter names.
    pub fn list(
        &self,
        filter: &ListFilter,
        page: PageRequest,
    ) -> Result<Page<Promotion>, StoreError> {
        let (lo, hi) = bounds(&page, 1);
        let down = page.newest_first;
        let matches = |p: &Promotion| {
            filter
                .repository
                .as_ref()
                .is_none_or(|r| *r == p.repository)
                && filter
                    .environment
                    .as_ref()
                    .is_none_or(|e| *e == p.environment)
                && filter.state.is_none_or(|s| s == p.state)
        };
        let ids: Option<Ids<'_>> = match (&filter.repository, &filter.environment, filter.state) {
            (Some(r), _, _) => Some(posting_range(
                &self.index,
                &keys::promotions_by_repository_prefix(r),
                lo,
                hi,
                down,
            )),
            (None, Some(e), _) => Some(posting_range(
                &self.index,
                &keys::promotions_by_environment_prefix(e),
                lo,
                hi,
                down,
            )),
            (None, None, Some(s)) => {
                let range = state_range(&self.index, s, lo, hi);
                Some(if down {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                })
            }
            (None, None, None) => None,
        };
        let mut builder = PageBuilder::new(page.limit);
        match ids {
            Some(ids) => {
                for id in ids {
                    if let Some(p) = self.get(id?)?
                        && matches(&p)
                        && !builder.offer(p)
                    {
                        break;
                    }
                }
            }
            None => {
                let range = self.promotions.range(keys::u64_key(lo)..=keys::u64_key(hi));
                let walk: Box<dyn Iterator<Item = _>> = if down {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                for kv in walk {
                    let (k, v) = kv?;
                    let p = decode_stored_promotion(keys::number(&k), &v)?.promotion;
                    if !builder.offer(p) {
                        break;
                    }
                }
            }
        }
        Ok(builder.finish())
    }

    /// A page of a digest's latest check reports: the `C` keys sort by
    /// check name, so the walk seeks past `after` and stops at the limit.
    pub fn checks_page(
        &self,
        repository: &str,
        digest: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<CheckReport>, StoreError> {
        use std::ops::Bound;
        let prefix = keys::checks_prefix(repository, digest);
        let start = match after {
            Some(name) => Bound::Excluded(keys::check(repository, digest, name)),
            None => Bound::Included(prefix.clone()),
        };
        let mut builder = PageBuilder::new(limit);
        for kv in self.index.range((start, Bound::Unbounded)) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some(seq) = keys::read_u64(&v) else {
                continue;
            };
            if let Some(e) = self.entry(seq)?
                && let Some(report) = CheckReport::from_entry(&e)
                && !builder.offer(report)
            {
                break;
            }
        }
        Ok(builder.finish())
    }

    /// What a write job needs before recording a report of `check`.
    pub fn check_names(
        &self,
        repository: &str,
        digest: &str,
        check: &str,
        up_to: usize,
    ) -> Result<CheckNames, StoreError> {
        let known = self
            .index
            .contains_key(keys::check(repository, digest, check))?;
        let mut distinct = 0;
        for k in self
            .index
            .scan_prefix(keys::checks_prefix(repository, digest))
            .keys()
            .take(up_to)
        {
            k?;
            distinct += 1;
        }
        Ok(CheckNames { known, distinct })
    }

    /// How many entries the audit log holds (its last sequence number).
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .audit
            .last()?
            .and_then(|(k, _)| keys::read_u64(&k))
            .unwrap_or(0))
    }

    /// The first sequence whose entry time is at or after `t` (one past the
    /// end if none): entry times never decrease along the sequence, so a
    /// binary search over sequences finds it in ~20 reads at 1M entries.
    fn first_at_or_after(&self, t: Time, len: u64) -> Result<u64, StoreError> {
        let (mut lo, mut hi) = (1, len + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let before = self.entry(mid)?.is_some_and(|e| e.time < t);
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The last sequence whose entry time is at or before `t` (0 if none).
    fn last_at_or_before(&self, t: Time, len: u64) -> Result<u64, StoreError> {
        let just_after = t.plus(std::time::Duration::from_nanos(1));
        Ok(self.first_at_or_after(just_after, len)?.saturating_sub(1))
    }

    /// One page of audit entries in sequence order (or reverse), after the
    /// cursor. `since`/`until` bound the walk by seeking, not by scanning.
    pub fn history(
        &self,
        filter: &HistoryFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let len = self.audit_len()?;
        let (mut lo, mut hi) = bounds(&page, 1);
        hi = hi.min(len);
        if let Some(since) = filter.since {
            lo = lo.max(self.first_at_or_after(since, len)?);
        }
        if let Some(until) = filter.until {
            hi = hi.min(self.last_at_or_before(until, len)?);
        }
        let mut builder = PageBuilder::new(page.limit);
        if lo > hi {
            return Ok(builder.finish());
        }
        let down = page.newest_first;
        let matches = |e: &AuditEntry| {
            filter
                .repository
                .as_ref()
                .is_none_or(|r| *r == e.event.repository)
                && filter
                    .environment
                    .as_ref()
                    .is_none_or(|env| *env == e.event.environment)
                && filter
                    .promotion_id
                    .is_none_or(|id| id == e.event.promotion_id)
        };
        let in_range =
            move |s: &Result<u64, StoreError>| s.as_ref().map_or(true, |&s| s >= lo && s <= hi);
        let sequences: Ids<'_> = if let Some(id) = filter.promotion_id {
            // A promotion lists its own entries: a handful, so no index.
            let mut audit = stored_promotion(&self.promotions, id)?
                .map(|s| s.audit)
                .unwrap_or_default();
            if down {
                audit.reverse();
            }
            Box::new(audit.into_iter().map(Ok).filter(in_range))
        } else if let Some(r) = &filter.repository {
            let prefix = keys::audit_by_repository_prefix(r);
            posting_range(&self.index, &prefix, lo, hi, down)
        } else if let Some(env) = &filter.environment {
            let prefix = keys::audit_by_environment_prefix(env);
            posting_range(&self.index, &prefix, lo, hi, down)
        } else if down {
            Box::new((lo..=hi).rev().map(Ok))
        } else {
            Box::new((lo..=hi).map(Ok))
        };
        for seq in sequences {
            let seq = seq?;
            if let Some(e) = self.entry(seq)?
                && matches(&e)
                && !builder.offer(e)
            {
                break;
            }
        }
        Ok(builder.finish())
    }

    pub fn deployed_at(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        if !self.ever_moved(repository, environment)? {
            return Ok(None);
        }
        self.walk_to_deployed(repository, environment, at)
    }

    /// [`Trees::deployed_at`] for a tag [`Trees::ever_moved`] said moved:
    /// the walk without the check (the caller made it already).
    pub(super) fn walk_to_deployed(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let prefix = keys::audit_by_repository_prefix(repository);
        let end = match at {
            Some(t) => self.last_at_or_before(t, self.audit_len()?)?,
            None => u64::MAX,
        };
        for seq in postings::down_from(&self.index, &prefix, end) {
            let Some(e) = self.entry(seq?)? else { continue };
            if e.event.environment == environment && e.event.action == Action::Applied {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Whether prodgate ever moved the tag (its `T` key, written with the
    /// first APPLIED entry): without one, the walks above would read every
    /// entry of the repository to find none. Every request reads its
    /// target tag's record (the no-op fact), so an environment nothing was
    /// applied to yet cost a request a walk of the whole repository.
    pub(super) fn ever_moved(
        &self,
        repository: &str,
        environment: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .index
            .contains_key(keys::moved_tag(repository, environment))?)
    }

    pub fn moved_tags(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.index.scan_prefix(keys::moved_tags_prefix()) {
            let (k, _) = kv?;
            match keys::read_moved_tag(&k) {
                Some(pair) => out.push(pair),
                None => {
                    return Err(StoreError::Corrupt {
                        what: "a moved-tag index key".into(),
                        reason: "not a repository and an environment".into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Walks the repository's entries down from `at` to the last APPLIED
    /// one of the environment, keeping the drift entries on the way: as
    /// bounded as [`Trees::deployed_at`].
    pub fn tag_record(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<TagRecord>, StoreError> {
        if !self.ever_moved(repository, environment)? {
            return Ok(None);
        }
        self.walk_to_tag_record(repository, environment, at)
    }

    /// [`Trees::tag_record`] for a tag [`Trees::ever_moved`] said moved:
    /// the walk without the check (the caller made it already).
    pub(super) fn walk_to_tag_record(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<TagRecord>, StoreError> {
        let prefix = keys::audit_by_repository_prefix(repository);
        let end = match at {
            Some(t) => self.last_at_or_before(t, self.audit_len()?)?,
            None => u64::MAX,
        };
        let mut drift = Vec::new();
        for seq in postings::down_from(&self.index, &prefix, end) {
            let Some(e) = self.entry(seq?)? else { continue };
            if e.event.environment != environment {
                continue;
            }
            match e.event.action {
                Action::Applied => {
                    drift.reverse();
                    return Ok(Some(TagRecord { applied: e, drift }));
                }
                Action::DriftDetected | Action::DriftRestored => drift.push(e),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Checks the chain from where `v` stands to the newest entry.
    pub fn verify_from(&self, v: Verifier) -> Result<(Verification, Verifier), StoreError> {
        self.verify_with(v, decode_entry)
    }

    /// Like `verify_from`, decoding entries with `decode` (format 2's
    /// decoder checks a store that was not migrated).
    pub fn verify_with(
        &self,
        mut v: Verifier,
        decode: fn(u64, &[u8]) -> Result<AuditEntry, StoreError>,
    ) -> Result<(Verification, Verifier), StoreError> {
        for kv in self.audit.range(keys::u64_key(v.next_sequence())..) {
            let (k, val) = kv?;
            match decode(keys::number(&k), &val) {
                Ok(e) => {
                    if !v.push(&e) {
                        break;
                    }
                }
                Err(e) => {
                    v.fail(keys::number(&k), e.to_string());
                    break;
                }
            }
        }
        Ok((v.clone().finish(), v))
    }
}
