//! The write path: one writer thread applies jobs in arrival order and
//! commits each change as a single audit-record insert plus its derived
//! records; a flusher thread fsyncs each batch and only then answers its
//! callers and publishes its changes. Applying batch N+1 overlaps the fsync
//! of batch N, and one fsync acknowledges every write that queued meanwhile
//! (group commit).

use super::derive::{derive, derive_event};
use super::{Trees, horizon, keys, request_id_of, stored_promotion};
use crate::clock::Clock;
use crate::domain::audit::AuditEntry;
use crate::domain::model::{Event, Promotion, PromotionId, State, Time};
use crate::store::chain::{Appender, Head, Outbox};
use crate::store::codec::{RecordRef, decode_entry, encode};
use crate::store::{
    Change, CheckNames, Completion, Job, StoreError, StoredManifest, UnitOfWork, WriterStats,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{broadcast, mpsc};

/// How many queued jobs one flush may acknowledge at most.
pub const MAX_BATCH: usize = 512;

/// What only the writer thread knows: the chain's head and the id counter.
pub struct WriterState {
    pub trees: Trees,
    pub head: Head,
    clock: Arc<dyn Clock>,
    /// Set by the flusher when a flush fails; shared with the writer so no
    /// later job commits anything.
    pub poisoned: Arc<AtomicBool>,
}

impl WriterState {
    pub fn load(trees: Trees, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let last = match trees.audit.last()? {
            Some((k, v)) => Some(decode_entry(keys::number(&k), &v)?),
            None => None,
        };
        // The newest promotion's value is derived before the writer starts.
        let max_id = trees
            .promotions
            .last()?
            .and_then(|(k, _)| keys::read_u64(&k));
        Ok(Self {
            head: Head::after(last.as_ref(), max_id),
            trees,
            clock,
            poisoned: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// A write job's view of the store, valid on the writer thread only.
pub struct Tx<'a> {
    trees: &'a Trees,
    clock: &'a dyn Clock,
    poisoned: &'a AtomicBool,
    chain: Appender<'a>,
}

impl<'a> Tx<'a> {
    /// A job's view of `state`; what it commits goes to `outbox`.
    pub fn new(state: &'a mut WriterState, outbox: &'a mut Outbox) -> Self {
        Tx {
            trees: &state.trees,
            clock: state.clock.as_ref(),
            poisoned: &state.poisoned,
            chain: Appender::new(&mut state.head, outbox),
        }
    }

    fn refuse_if_poisoned(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }
}

/// What follows a committed audit record: if writing it fails, the store is
/// poisoned (refuses all writes until a restart re-derives it).
fn derived(poisoned: &AtomicBool, result: Result<(), StoreError>) -> Result<(), StoreError> {
    if let Err(e) = &result {
        tracing::error!(error = %e, "indexing a committed audit entry failed; refusing all further writes");
        poisoned.store(true, Ordering::Release);
    }
    result
}

/// Writes the audit record: a single sled insert, the commit.
fn insert_record(
    t: &Trees,
    entry: &AuditEntry,
    promotion: Option<&Promotion>,
) -> Result<(), StoreError> {
    t.audit
        .insert(
            keys::u64_key(entry.sequence),
            encode(&RecordRef { entry, promotion }),
        )
        .map(drop)
        .map_err(StoreError::from)
}

impl UnitOfWork for Tx<'_> {
    fn now(&mut self) -> Time {
        self.chain.now(self.clock)
    }

    fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError> {
        Ok(stored_promotion(&self.trees.promotions, id)?.map(|s| s.promotion))
    }

    fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<PromotionId>, StoreError> {
        request_id_of(&self.trees.index, principal, request_id)
    }

    fn next_id(&self) -> PromotionId {
        self.chain.head().next_id
    }

    fn open_promotions(
        &self,
        repository: &str,
        environment: &str,
    ) -> Result<Vec<Promotion>, StoreError> {
        // The open states are the short-lived ones, so their index is small;
        // the per-state walk avoids an index by repository and state.
        let mut open = Vec::new();
        for state in [State::PendingApproval, State::Waiting, State::Approved] {
            for id in super::query::state_ids(&self.trees.index, state, 0) {
                if let Some(p) = self.get(id?)?
                    && p.repository == repository
                    && p.environment == environment
                {
                    open.push(p);
                }
            }
        }
        open.sort_by_key(|p| p.id);
        Ok(open)
    }

    fn put_manifest(
        &mut self,
        repository: &str,
        digest: &str,
        m: &StoredManifest,
    ) -> Result<(), StoreError> {
        self.refuse_if_poisoned()?;
        self.trees
            .manifests
            .insert(keys::manifest(repository, digest), keys::encode_manifest(m))?;
        Ok(())
    }

    fn put_policy(&mut self, digest: &str, canonical_json: &str) -> Result<(), StoreError> {
        self.refuse_if_poisoned()?;
        self.trees
            .policies
            .insert(keys::policy(digest), canonical_json.as_bytes())?;
        Ok(())
    }

    fn latest_policy(&self) -> Result<Option<String>, StoreError> {
        self.trees.latest_policy()
    }

    /// The audit record, written in one sled insert, is the commit: sled
    /// applies a single insert atomically, and the derived keys written after
    /// it are finished by `redo_derived` if a crash cuts them short. No sled
    /// transaction or batch is used: in sled 0.34 those take a global write
    /// lock that waits for any running flush, which would stop the writer
    /// from applying the next batch while the flusher fsyncs the last one.
    /// If a derived write fails the store is poisoned (refuses all writes
    /// until a restart re-derives it).
    fn commit(
        &mut self,
        after: &Promotion,
        event: Option<Event>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        self.refuse_if_poisoned()?;
        let (t, poisoned) = (self.trees, self.poisoned);
        let stored = stored_promotion(&t.promotions, after.id)?;
        self.chain.commit(
            stored.as_ref().map(|s| &s.promotion),
            after,
            event,
            |entry| insert_record(t, entry, Some(after)),
            |entry| derived(poisoned, derive(t, stored.as_ref(), entry, after)),
        )
    }

    /// Like `commit`, for an entry about no promotion: one insert of the
    /// record, then its indexes (`derive_event`). Published on the records
    /// stream, not as a [`Change`] (that stream is about promotions).
    fn record(&mut self, event: Event, at: Time) -> Result<AuditEntry, StoreError> {
        self.refuse_if_poisoned()?;
        let (t, poisoned) = (self.trees, self.poisoned);
        self.chain.record(
            event,
            at,
            |entry| insert_record(t, entry, None),
            |entry| derived(poisoned, derive_event(t, entry)),
        )
    }

    fn check_names(
        &self,
        repository: &str,
        digest: &str,
        check: &str,
        up_to: usize,
    ) -> Result<CheckNames, StoreError> {
        self.trees.check_names(repository, digest, check, up_to)
    }

    fn writes(&self) -> usize {
        self.chain.writes()
    }
}

/// One committed batch on its way to the flusher.
pub struct Committed {
    completions: Vec<Completion>,
    outbox: Outbox,
    writes: usize,
    /// The newest audit sequence once the batch was applied.
    last_sequence: u64,
}

/// Applies jobs in arrival order and hands each committed batch to the
/// flusher thread, so batch N+1 is applied while batch N is being fsynced.
/// A batch is answered only by a flush that started after it was committed,
/// so nothing is acknowledged before it is on disk.
pub fn run_writer(
    mut state: WriterState,
    mut rx: mpsc::Receiver<Job>,
    to_flusher: std::sync::mpsc::Sender<Committed>,
) {
    while let Some(batch) = crate::store::next_batch(&mut rx, MAX_BATCH) {
        let mut committed = Committed {
            completions: Vec::with_capacity(batch.len()),
            outbox: Outbox::default(),
            writes: 0,
            last_sequence: 0,
        };
        for job in batch {
            let mut tx = Tx::new(&mut state, &mut committed.outbox);
            committed.completions.push(job(&mut tx));
            committed.writes += tx.writes();
        }
        committed.last_sequence = state.head.last_sequence();
        // The Merkle tree's partly filled chunk, so the flush covers it.
        if let Err(e) = state.trees.merkle.sync() {
            tracing::error!(error = %e, "storing Merkle nodes failed; refusing all further writes");
            state.poisoned.store(true, Ordering::Release);
        }
        if to_flusher.send(committed).is_err() {
            // The flusher only ends when this sender is dropped.
            break;
        }
    }
}

/// The flusher thread's state.
pub struct Flusher {
    pub db: sled::Db,
    pub horizon: horizon::Horizon,
    /// The newest audit sequence a successful flush covered.
    pub acknowledged: u64,
    /// `acknowledged`, for readers (tree heads stop there).
    pub durable: Arc<std::sync::atomic::AtomicU64>,
    pub poisoned: Arc<AtomicBool>,
    pub changes: broadcast::Sender<Change>,
    pub records: broadcast::Sender<AuditEntry>,
    pub stats: Arc<WriterStats>,
}

impl Flusher {
    /// Flushes once for every batch that arrived while the previous flush
    /// ran, then answers those batches and publishes their changes. A failed
    /// flush poisons the store: that batch and every later one is refused,
    /// and the refusal horizon makes the next start remove them.
    pub fn run(mut self, rx: std::sync::mpsc::Receiver<Committed>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter());
            let flushed = self.flush(&group);
            for committed in group {
                for c in committed.completions {
                    c(flushed.clone());
                }
                if flushed.is_ok() {
                    for change in committed.outbox.changed {
                        // No subscriber is fine.
                        let _ = self.changes.send(change);
                    }
                    for entry in committed.outbox.recorded {
                        let _ = self.records.send(entry);
                    }
                }
            }
        }
        if !self.poisoned.load(Ordering::Acquire)
            && let Err(e) = self.db.flush()
        {
            tracing::error!(error = %e, "final flush failed");
        }
    }

    fn flush(&mut self, group: &[Committed]) -> Result<(), StoreError> {
        let writes: usize = group.iter().map(|c| c.writes).sum();
        if writes == 0 {
            return Ok(());
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        match self.db.flush() {
            Ok(_) => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .commits
                    .fetch_add(writes as u64, Ordering::Relaxed);
                let newest = group.iter().map(|c| c.last_sequence).max();
                self.acknowledged = newest.unwrap_or(0).max(self.acknowledged);
                self.durable.store(self.acknowledged, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "flush failed; refusing all further writes");
                self.poisoned.store(true, Ordering::Release);
                if let Err(h) = self.horizon.record(self.acknowledged) {
                    tracing::error!(
                        error = %h,
                        "cannot record the refusal horizon; entries refused just now may reappear after a restart"
                    );
                }
                Err(StoreError::Flush(e.to_string()))
            }
        }
    }
}
