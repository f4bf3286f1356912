//! All durable state, in sled: promotion records, the hash-chained audit log
//! and the indexes that serve List and History without full scans.
//!
//! Writes go through one writer thread ([`Store::write`]). It runs each job
//! against the current state (so read-modify-write is serialized: concurrent
//! approvals cannot both count), commits the record and its audit entry in one
//! sled transaction, and then flushes once for every job that arrived while it
//! was busy: a job's caller is answered only after that flush, so nothing is
//! acknowledged before it is on disk, and many writes share one fsync.
//!
//! If a flush fails the store refuses every later write (fail closed): sled's
//! memory may then hold changes that never reached the disk.

mod keys;

use crate::domain::audit::{AuditEntry, GENESIS, Hash, Verification, Verifier};
use crate::domain::model::{Action, Event, Promotion, PromotionId, State, Time};
use serde::{Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc, oneshot};

/// How many queued jobs one flush may acknowledge at most.
const MAX_BATCH: usize = 512;
/// Depth of the writer's queue; callers wait (asynchronously) beyond it.
const QUEUE_DEPTH: usize = 4096;
/// sled's page cache. Its default (1 GiB) would dominate the process's memory;
/// the working set (pending promotions, recent audit pages) is far smaller.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Committed changes kept for slow subscribers before they lag.
const CHANGES_CAPACITY: usize = 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(String),
    #[error("stored record {what} is unreadable: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("the data directory could not be flushed to disk: {0}")]
    Flush(String),
    #[error("storage refuses writes after an earlier flush failure; restart prodgate")]
    Poisoned,
    #[error("the storage writer has stopped")]
    Closed,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

#[derive(Clone)]
struct Trees {
    db: sled::Db,
    promotions: sled::Tree,
    audit: sled::Tree,
    index: sled::Tree,
    meta: sled::Tree,
    /// Pinned manifests by repository and digest: the exact bytes a promotion
    /// will push, seen in that repository when it was requested.
    manifests: sled::Tree,
}

/// A manifest's exact bytes and media type, as pinned at request time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl StoredManifest {
    /// `u32 BE length of media_type | media_type | bytes`
    fn encode(&self) -> Vec<u8> {
        let mt = self.media_type.as_bytes();
        let mut out = Vec::with_capacity(4 + mt.len() + self.bytes.len());
        out.extend_from_slice(&u32::try_from(mt.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(mt);
        out.extend_from_slice(&self.bytes);
        out
    }

    fn decode(v: &[u8]) -> Option<Self> {
        let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
        let media_type = std::str::from_utf8(v.get(4..4 + len)?).ok()?.to_owned();
        Some(Self {
            media_type,
            bytes: v.get(4 + len..)?.to_vec(),
        })
    }
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&mut Tx<'_>) -> Completion + Send>;

/// Handle to the database. Cheap to clone; the writer stops when the last
/// handle is dropped, after a final flush.
#[derive(Clone)]
pub struct Store {
    trees: Trees,
    jobs: mpsc::Sender<Job>,
    changes: broadcast::Sender<Promotion>,
    stats: Arc<WriterStats>,
}

/// Counters of the writer, for metrics and benchmarks: how many commits one
/// flush acknowledges is the point of group commit.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Committed record changes (each with at most one audit entry).
    pub commits: AtomicU64,
    /// Successful flushes (fsyncs) of the database.
    pub flushes: AtomicU64,
}

/// Filters of ListPromotions; empty fields match all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ListFilter {
    pub repository: Option<String>,
    pub environment: Option<String>,
    pub state: Option<State>,
}

/// Filters of History; empty fields match all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HistoryFilter {
    pub repository: Option<String>,
    pub environment: Option<String>,
    pub promotion_id: Option<PromotionId>,
    pub since: Option<Time>,
    pub until: Option<Time>,
}

/// One page of results and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// Fills a page during a scan: takes items up to the limit, and on the one
/// after that notes that more follow and asks the scan to stop.
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

    /// Whether the scan should go on.
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

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: what(),
        reason: e.to_string(),
    })
}

fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    decode(
        || format!("audit entry {}", keys::read_u64(key).unwrap_or(0)),
        bytes,
    )
}

impl Store {
    /// Opens (or creates) the database under `dir` and starts the writer.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from the writer's explicit flush, not a timer.
            .flush_every_ms(None)
            .cache_capacity(CACHE_BYTES)
            .open()?;
        let trees = Trees {
            promotions: db.open_tree("promotions")?,
            audit: db.open_tree("audit")?,
            index: db.open_tree("index")?,
            meta: db.open_tree("meta")?,
            manifests: db.open_tree("manifests")?,
            db,
        };
        let state = WriterState::load(trees.clone())?;
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let tx_changes = changes.clone();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("prodgate-store-writer".into())
            .spawn(move || run_writer(state, rx, tx_changes, writer_stats))
            .map_err(|e| StoreError::Sled(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            trees,
            jobs,
            changes,
            stats,
        })
    }

    /// Runs `job` on the writer thread and answers after its writes are flushed.
    /// The job's own error (a refusal) is returned as is.
    pub async fn write<T, E>(
        &self,
        job: impl FnOnce(&mut Tx<'_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let boxed: Job = Box::new(move |t: &mut Tx<'_>| {
            let before = t.writes;
            let result = job(t);
            let wrote = t.writes != before;
            Box::new(move |flushed: Result<(), StoreError>| {
                let answer = match flushed {
                    Err(e) if wrote => Err(E::from(e)),
                    _ => result,
                };
                // The caller may have gone away; the write stands regardless.
                let _ = tx.send(answer);
            })
        });
        self.jobs
            .send(boxed)
            .await
            .map_err(|_| E::from(StoreError::Closed))?;
        rx.await.map_err(|_| E::from(StoreError::Closed))?
    }

    /// Runs `f` (reads) on the blocking pool, off the async worker threads:
    /// a sled read may wait for the disk.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Sled(format!("read task failed: {e}")))?
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Every committed, flushed change to a promotion, in commit order.
    pub fn subscribe(&self) -> broadcast::Receiver<Promotion> {
        self.changes.subscribe()
    }

    pub fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError> {
        get_promotion(&self.trees.promotions, id)
    }

    /// The manifest pinned under `digest`, if one was stored.
    pub fn manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<StoredManifest>, StoreError> {
        self.trees
            .manifests
            .get(keys::manifest(repository, digest))?
            .map(|v| {
                StoredManifest::decode(&v).ok_or_else(|| StoreError::Corrupt {
                    what: format!("manifest {digest}"),
                    reason: "bad encoding".into(),
                })
            })
            .transpose()
    }

    /// The promotion a principal opened with this idempotency key, if any.
    pub fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<Promotion>, StoreError> {
        match request_id_of(&self.trees.index, principal, request_id)? {
            Some(id) => self.get(id),
            None => Ok(None),
        }
    }

    /// The ids or sequences under an index prefix, from `start` on, in order.
    fn index_tails<'a>(
        &'a self,
        prefix: &'a [u8],
        start: u64,
    ) -> impl DoubleEndedIterator<Item = Result<u64, StoreError>> + 'a {
        // Every key under the prefix is the prefix and 8 bytes.
        self.trees
            .index
            .range(keys::indexed(prefix, start)..=keys::indexed(prefix, u64::MAX))
            .filter_map(|kv| match kv {
                Ok((k, _)) => keys::tail_u64(&k).map(Ok),
                Err(e) => Some(Err(e.into())),
            })
    }

    fn entry(&self, sequence: u64) -> Result<Option<AuditEntry>, StoreError> {
        let key = keys::u64_key(sequence);
        self.trees
            .audit
            .get(key)?
            .map(|v| decode_entry(&key, &v))
            .transpose()
    }

    /// Promotions in a state, oldest id first.
    pub fn in_state(&self, state: State) -> Result<Vec<Promotion>, StoreError> {
        let prefix = keys::promotions_by_state_prefix(state);
        let mut out = Vec::new();
        for id in self.index_tails(&prefix, 0) {
            if let Some(p) = self.get(id?)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// One page of promotions in id order, after `after` (exclusive).
    pub fn list(
        &self,
        filter: &ListFilter,
        after: Option<PromotionId>,
        limit: usize,
    ) -> Result<Page<Promotion>, StoreError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
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
        let index_prefix = match (&filter.repository, filter.state) {
            (Some(r), _) => Some(keys::promotions_by_repository_prefix(r)),
            (None, Some(s)) => Some(keys::promotions_by_state_prefix(s)),
            (None, None) => None,
        };
        let mut page = PageBuilder::new(limit);
        match index_prefix {
            Some(prefix) => {
                for id in self.index_tails(&prefix, start) {
                    if let Some(p) = self.get(id?)?
                        && matches(&p)
                        && !page.offer(p)
                    {
                        break;
                    }
                }
            }
            None => {
                for kv in self.trees.promotions.range(keys::u64_key(start)..) {
                    let (k, v) = kv?;
                    let p: Promotion = decode(
                        || format!("promotion {}", keys::read_u64(&k).unwrap_or(0)),
                        &v,
                    )?;
                    if matches(&p) && !page.offer(p) {
                        break;
                    }
                }
            }
        }
        Ok(page.finish())
    }

    /// One page of audit entries in sequence order, after `after` (exclusive).
    pub fn history(
        &self,
        filter: &HistoryFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let start = after.map_or(1, |a| a.saturating_add(1));
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
                && filter.since.is_none_or(|s| e.time >= s)
        };
        // Entry times never decrease along the sequence, so `until` ends the scan.
        let past_until = |e: &AuditEntry| filter.until.is_some_and(|u| e.time > u);
        let index_prefix = if let Some(id) = filter.promotion_id {
            Some(keys::audit_by_promotion_prefix(id))
        } else if let Some(r) = &filter.repository {
            Some(keys::audit_by_repository_prefix(r))
        } else {
            filter
                .environment
                .as_deref()
                .map(keys::audit_by_environment_prefix)
        };
        let mut page = PageBuilder::new(limit);
        let mut visit = |e: AuditEntry| !past_until(&e) && (!matches(&e) || page.offer(e));
        match index_prefix {
            Some(prefix) => {
                for seq in self.index_tails(&prefix, start) {
                    if let Some(e) = self.entry(seq?)?
                        && !visit(e)
                    {
                        break;
                    }
                }
            }
            None => {
                for kv in self.trees.audit.range(keys::u64_key(start)..) {
                    let (k, v) = kv?;
                    if !visit(decode_entry(&k, &v)?) {
                        break;
                    }
                }
            }
        }
        Ok(page.finish())
    }

    /// The APPLIED entry that put `environment`'s tag of `repository` where it
    /// was at `at` (now if `None`): the last one at or before that moment.
    pub fn deployed_at(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let prefix = keys::audit_by_repository_prefix(repository);
        // Newest first.
        for seq in self.index_tails(&prefix, 0).rev() {
            let Some(e) = self.entry(seq?)? else { continue };
            if at.is_some_and(|t| e.time > t) {
                continue;
            }
            if e.event.environment == environment && e.event.action == Action::Applied {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// How many entries the audit log holds (its last sequence number).
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .trees
            .audit
            .last()?
            .and_then(|(k, _)| keys::read_u64(&k))
            .unwrap_or(0))
    }

    /// Writes everything to disk (acknowledged writes already are).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.trees.db.flush()?;
        Ok(())
    }

    /// Recomputes the whole chain from the stored entries.
    pub fn verify(&self) -> Result<Verification, StoreError> {
        verify_tree(&self.trees.audit)
    }
}

/// Checks the audit chain of the database under `dir` without a running server.
pub fn verify_offline(dir: &Path) -> Result<Verification, StoreError> {
    let db = sled::Config::new().path(dir).open()?;
    verify_tree(&db.open_tree("audit")?)
}

fn verify_tree(audit: &sled::Tree) -> Result<Verification, StoreError> {
    let mut v = Verifier::default();
    for kv in audit.iter() {
        let (k, val) = kv?;
        match decode_entry(&k, &val) {
            Ok(e) => {
                if !v.push(&e) {
                    break;
                }
            }
            Err(e) => {
                v.fail(keys::read_u64(&k).unwrap_or(0), e.to_string());
                break;
            }
        }
    }
    Ok(v.finish())
}

/// The promotion id stored under a principal's idempotency key.
fn request_id_of(
    index: &sled::Tree,
    principal: &str,
    request_id: &str,
) -> Result<Option<PromotionId>, StoreError> {
    Ok(index
        .get(keys::request_id(principal, request_id))?
        .and_then(|v| keys::read_u64(&v)))
}

fn get_promotion(tree: &sled::Tree, id: PromotionId) -> Result<Option<Promotion>, StoreError> {
    tree.get(keys::u64_key(id))?
        .map(|v| decode(|| format!("promotion {id}"), &v))
        .transpose()
}

/// What only the writer thread knows: the chain's head and the id counter.
struct WriterState {
    trees: Trees,
    next_sequence: u64,
    head_hash: Hash,
    last_time: Time,
    next_id: PromotionId,
    poisoned: bool,
}

impl WriterState {
    fn load(trees: Trees) -> Result<Self, StoreError> {
        let (next_sequence, head_hash, last_time) = match trees.audit.last()? {
            Some((k, v)) => {
                let e = decode_entry(&k, &v)?;
                (e.sequence + 1, e.hash, e.time)
            }
            None => (1, GENESIS, Time::ZERO),
        };
        let next_id = trees
            .meta
            .get(keys::NEXT_ID)?
            .and_then(|v| keys::read_u64(&v))
            .unwrap_or(1);
        Ok(Self {
            trees,
            next_sequence,
            head_hash,
            last_time,
            next_id,
            poisoned: false,
        })
    }
}

/// A write job's view of the store, valid on the writer thread only.
pub struct Tx<'a> {
    state: &'a mut WriterState,
    changed: &'a mut Vec<Promotion>,
    writes: usize,
}

impl Tx<'_> {
    /// The wall clock, never earlier than the last audit entry, so entry times
    /// follow sequence order.
    pub fn now(&mut self) -> Time {
        let now = Time::now().max(self.state.last_time);
        self.state.last_time = now;
        now
    }

    pub fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError> {
        get_promotion(&self.state.trees.promotions, id)
    }

    /// The promotion a principal opened with this idempotency key, if any.
    pub fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<PromotionId>, StoreError> {
        request_id_of(&self.state.trees.index, principal, request_id)
    }

    /// Pins a manifest's bytes (content-addressed, so writing it twice is
    /// harmless); it reaches the disk with the job's flush.
    pub fn put_manifest(
        &mut self,
        repository: &str,
        digest: &str,
        m: &StoredManifest,
    ) -> Result<(), StoreError> {
        if self.state.poisoned {
            return Err(StoreError::Poisoned);
        }
        self.state
            .trees
            .manifests
            .insert(keys::manifest(repository, digest), m.encode())?;
        Ok(())
    }

    /// The id the next new promotion will get.
    pub fn next_id(&self) -> PromotionId {
        self.state.next_id
    }

    /// Writes `after` (replacing `before`, if any) and chains `event` into the
    /// audit log, all in one transaction. Nothing is written if it fails.
    pub fn commit(
        &mut self,
        before: Option<&Promotion>,
        after: &Promotion,
        event: Option<Event>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        if self.state.poisoned {
            return Err(StoreError::Poisoned);
        }
        let time = after.updated_at.max(self.state.last_time);
        let entry = event
            .map(|e| AuditEntry::chain(self.state.head_hash, self.state.next_sequence, time, e));
        let is_new = before.is_none();
        let t = &self.state.trees;
        let result: Result<(), TransactionError<StoreError>> =
            (&t.promotions, &t.audit, &t.index, &t.meta).transaction(
                |(promotions, audit, index, meta)| {
                    let id = after.id;
                    promotions.insert(&keys::u64_key(id), encode(after))?;
                    if let Some(b) = before
                        && b.state != after.state
                    {
                        index.remove(keys::indexed(
                            &keys::promotions_by_state_prefix(b.state),
                            id,
                        ))?;
                    }
                    index.insert(
                        keys::indexed(&keys::promotions_by_state_prefix(after.state), id),
                        &[],
                    )?;
                    if is_new {
                        index.insert(
                            keys::indexed(
                                &keys::promotions_by_repository_prefix(&after.repository),
                                id,
                            ),
                            &[],
                        )?;
                        if !after.request_id.is_empty() {
                            index.insert(
                                keys::request_id(&after.requested_by, &after.request_id),
                                &keys::u64_key(id),
                            )?;
                        }
                        meta.insert(keys::NEXT_ID, &keys::u64_key(id + 1))?;
                    }
                    if let Some(e) = &entry {
                        let seq = e.sequence;
                        audit.insert(&keys::u64_key(seq), encode(e))?;
                        for prefix in [
                            keys::audit_by_promotion_prefix(id),
                            keys::audit_by_repository_prefix(&e.event.repository),
                            keys::audit_by_environment_prefix(&e.event.environment),
                        ] {
                            index.insert(keys::indexed(&prefix, seq), &[])?;
                        }
                    }
                    Ok::<(), ConflictableTransactionError<StoreError>>(())
                },
            );
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        self.writes += 1;
        if is_new {
            self.state.next_id = self.state.next_id.max(after.id + 1);
        }
        if let Some(e) = &entry {
            self.state.next_sequence = e.sequence + 1;
            self.state.head_hash = e.hash;
            self.state.last_time = e.time;
        }
        self.changed.push(after.clone());
        Ok(entry)
    }
}

fn run_writer(
    mut state: WriterState,
    mut rx: mpsc::Receiver<Job>,
    changes: broadcast::Sender<Promotion>,
    stats: Arc<WriterStats>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut changed = Vec::new();
        let mut completions = Vec::with_capacity(batch.len());
        let mut writes = 0;
        for job in batch {
            let mut tx = Tx {
                state: &mut state,
                changed: &mut changed,
                writes: 0,
            };
            completions.push(job(&mut tx));
            writes += tx.writes;
        }
        let flushed = if writes == 0 {
            Ok(())
        } else if state.poisoned {
            Err(StoreError::Poisoned)
        } else {
            match state.trees.db.flush() {
                Ok(_) => {
                    stats.flushes.fetch_add(1, Ordering::Relaxed);
                    stats.commits.fetch_add(writes as u64, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(error = %e, "flush failed; refusing all further writes");
                    state.poisoned = true;
                    Err(StoreError::Flush(e.to_string()))
                }
            }
        };
        for c in completions {
            c(flushed.clone());
        }
        if flushed.is_ok() {
            for p in changed {
                // No subscriber is fine.
                let _ = changes.send(p);
            }
        }
    }
    if let Err(e) = state.trees.db.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
}
