//! The embedded backend: sled under the data directory. The audit log is the
//! source of truth; promotion records and indexes are derived from it.
//!
//! - `writer`: one writer thread commits, a flusher thread fsyncs before
//!   anyone is answered (group commit, fail closed).
//! - `derive`: derived records, and the start-up repairs: finishing a
//!   derivation a crash cut short, rolling back entries whose flush failed
//!   (the refusal horizon, `horizon`), migrating formats 2, 3 and 4.
//! - `export`: a stopped server's store, read for `prodgate migrate`.
//! - `query`: reads through the indexes; `keys`: the key layout (records
//!   are encoded by [`crate::store::codec`]); `postings`: packed posting
//!   lists.
//!
//! Measured reasons for this shape (BENCHMARKS.md): sled 0.34 transactions
//! and batches take a global lock that waits for a running flush, and sled
//! keeps in-memory bookkeeping per 16-entry leaf, so keys are kept few
//! (`postings`) and records compact (postcard).

mod derive;
pub mod dir;
pub(crate) mod export;
mod horizon;
mod keys;
mod merkle;
mod postings;
mod query;
mod writer;

use crate::clock::Clock;
use crate::domain::audit::{AuditEntry, Verification, Verifier};
use crate::domain::drift::TagRecord;
use crate::domain::model::{CheckReport, Promotion, PromotionId, State, Time};
use crate::store::codec::{self, StoredPromotion, decode_stored_promotion};
use crate::store::{
    Change, HistoryFilter, Job, ListFilter, Page, PageRequest, Storage, Store, StoreError,
    StoredManifest, StoredPolicy, WriterStats,
};
use async_trait::async_trait;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

/// Depth of the writer's queue; callers wait (asynchronously) beyond it.
const QUEUE_DEPTH: usize = 4096;
/// sled's page cache. Its default (1 GiB) would dominate the process's memory;
/// the working set (pending promotions, recent audit pages) is far smaller.
/// sled counts serialized bytes, the heap holds about three times that: at
/// 1M audit entries 64 MiB gave a 204 MiB process, 16 MiB 126 MiB, with
/// History pages still under 5 ms at p99 (BENCHMARKS.md).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Committed changes kept for slow subscribers before they lag.
const CHANGES_CAPACITY: usize = 1024;
/// The on-disk layout this build reads and writes (`keys` describes it).
/// Format 1 (JSON records, one sled transaction per commit) had no marker;
/// formats 2, 3 and 4 (earlier record shapes, see `store::codec`) are
/// migrated at open.
const FORMAT_VERSION: u64 = 5;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

#[derive(Clone)]
pub struct Trees {
    db: sled::Db,
    promotions: sled::Tree,
    audit: sled::Tree,
    index: sled::Tree,
    meta: sled::Tree,
    /// Pinned manifests by repository and digest: the exact bytes a promotion
    /// will push, seen in that repository when it was requested.
    manifests: sled::Tree,
    /// Policy versions' canonical JSON by digest.
    policies: sled::Tree,
    /// The audit log's Merkle tree nodes (`merkle_chunks`).
    merkle: merkle::Nodes,
}

impl Trees {
    fn open(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Trees {
            promotions: db.open_tree("promotions")?,
            audit: db.open_tree("audit")?,
            index: db.open_tree("index")?,
            meta: db.open_tree("meta")?,
            manifests: db.open_tree("manifests")?,
            policies: db.open_tree("policies")?,
            merkle: merkle::Nodes::open(&db)?,
            db,
        })
    }
}

/// The sled backend. Cheap to clone; the writer stops when the last handle
/// is dropped, after a final flush.
#[derive(Clone)]
pub struct SledStore {
    trees: Trees,
    jobs: mpsc::Sender<Job>,
    changes: broadcast::Sender<Change>,
    records: broadcast::Sender<AuditEntry>,
    stats: Arc<WriterStats>,
    /// The verifier as it stood after the last successful check: the next
    /// VerifyAuditLog hashes only newer entries (the offline `verify-log`
    /// always checks everything). The lock also keeps checks one at a time.
    verified: Arc<Mutex<Verifier>>,
    /// The newest sequence a successful flush covered (the flusher's
    /// `acknowledged`): tree heads and proofs stop there.
    durable: Arc<AtomicU64>,
}

/// Opens (or creates) the sled store under `dir` as the service's [`Store`].
pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Store, StoreError> {
    Ok(Store::new(Arc::new(SledStore::open(dir, clock)?)))
}

impl SledStore {
    /// Opens (or creates) the database under `dir`, repairs what a crash or a
    /// refused flush left, and starts the writer and flusher threads.
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from the writer's explicit flush, not a timer.
            .flush_every_ms(None)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| dir::open_failed(dir, e))?;
        let trees = Trees::open(db)?;
        check_format(&trees)?;
        let horizon_error = |doing: &str, e: std::io::Error| {
            StoreError::Backend(format!("cannot {doing} {}: {e}", horizon::FILE_NAME))
        };
        let mut horizon = horizon::Horizon::open(dir).map_err(|e| horizon_error("open", e))?;
        if let Some(acknowledged) = horizon.read().map_err(|e| horizon_error("read", e))? {
            let undone = derive::roll_back(&trees, acknowledged)?;
            merkle::truncate(&trees, acknowledged)?;
            trees.db.flush()?;
            horizon.clear().map_err(|e| horizon_error("clear", e))?;
            tracing::warn!(
                acknowledged_through = acknowledged,
                removed = undone,
                "removed audit entries whose flush had failed (their callers were refused)"
            );
        }
        derive::redo_derived(&trees)?;
        let added = merkle::repair(&trees)?;
        if added > 0 {
            trees.db.flush()?;
            tracing::info!(entries = added, "added audit entries to the Merkle tree");
        }
        derive::index_moved_tags(&trees)?;
        let state = writer::WriterState::load(trees.clone(), clock)?;
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let (records, _) = broadcast::channel(CHANGES_CAPACITY);
        let stats = Arc::new(WriterStats::default());
        let (to_flusher, flusher_rx) = std::sync::mpsc::channel();
        let durable = Arc::new(AtomicU64::new(state.head.last_sequence()));
        let flusher = writer::Flusher {
            db: trees.db.clone(),
            horizon,
            durable: durable.clone(),
            acknowledged: state.head.last_sequence(),
            poisoned: state.poisoned.clone(),
            changes: changes.clone(),
            records: records.clone(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("prodgate-store-flusher".into())
            .spawn(move || flusher.run(flusher_rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the flusher thread: {e}")))?;
        // If this spawn fails, `to_flusher` is dropped with the closure and
        // the flusher ends on its own.
        std::thread::Builder::new()
            .name("prodgate-store-writer".into())
            .spawn(move || writer::run_writer(state, rx, to_flusher))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(SledStore {
            trees,
            jobs,
            changes,
            records,
            stats,
            verified: Arc::new(Mutex::new(Verifier::default())),
            durable,
        })
    }

    /// Runs `f` (reads) on the blocking pool, off the async worker threads:
    /// a walk or a scan reads many pages, and a page sled does not hold
    /// waits for the disk. Its failures are [`StoreError::Read`]: nothing
    /// was changed by them.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.blocking(f).await.map_err(read_failed)
    }

    /// Runs `f`, a lookup of a few keys, right on the calling async worker.
    /// Such a lookup costs a few microseconds from sled's cache, at worst a
    /// `pread` of one page, while handing it to the blocking pool and back
    /// costs two thread wake-ups: measured at 64 clients (issue 23), moving
    /// the write path's lookups here cut the server's CPU per write from
    /// ~300 to ~155 µs. Walks and scans stay on the pool ([`Self::read`]).
    fn lookup<T>(&self, f: impl FnOnce(&Trees) -> Result<T, StoreError>) -> Result<T, StoreError> {
        f(&self.trees).map_err(read_failed)
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let trees = self.trees.clone();
        tokio::task::spawn_blocking(move || f(&trees))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
    }
}

/// A failed read changed nothing: [`StoreError::Read`].
fn read_failed(e: StoreError) -> StoreError {
    match e {
        StoreError::Backend(m) => StoreError::Read(m),
        other => other,
    }
}

#[async_trait]
impl Storage for SledStore {
    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn subscribe_records(&self) -> broadcast::Receiver<AuditEntry> {
        self.records.subscribe()
    }

    fn stats(&self) -> &WriterStats {
        &self.stats
    }

    async fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError> {
        self.lookup(|t| t.get(id))
    }

    async fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<Promotion>, StoreError> {
        self.lookup(|t| t.find_request(principal, request_id))
    }

    async fn manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<StoredManifest>, StoreError> {
        self.lookup(|t| t.manifest(repository, digest))
    }

    async fn in_state(&self, state: State) -> Result<Vec<Promotion>, StoreError> {
        self.read(move |t| t.in_state(state)).await
    }

    async fn list(
        &self,
        filter: ListFilter,
        page: PageRequest,
    ) -> Result<Page<Promotion>, StoreError> {
        self.read(move |t| t.list(&filter, page)).await
    }

    async fn history(
        &self,
        filter: HistoryFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEntry>, StoreError> {
        self.read(move |t| t.history(&filter, page)).await
    }

    async fn deployed_at(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        // A tag never moved has nothing to walk: answered here.
        if !self.lookup(|t| t.ever_moved(repository, environment))? {
            return Ok(None);
        }
        let (repository, environment) = (repository.to_owned(), environment.to_owned());
        self.read(move |t| t.walk_to_deployed(&repository, &environment, at))
            .await
    }

    async fn moved_tags(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|t| t.moved_tags()).await
    }

    async fn tag_record(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<TagRecord>, StoreError> {
        // Every request reads its target tag's record: a tag never moved
        // (any environment nothing was applied to yet) is answered here.
        if !self.lookup(|t| t.ever_moved(repository, environment))? {
            return Ok(None);
        }
        let (repository, environment) = (repository.to_owned(), environment.to_owned());
        self.read(move |t| t.walk_to_tag_record(&repository, &environment, at))
            .await
    }

    async fn checks_page(
        &self,
        repository: &str,
        digest: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<CheckReport>, StoreError> {
        let (repository, digest) = (repository.to_owned(), digest.to_owned());
        let after = after.map(str::to_owned);
        self.read(move |t| t.checks_page(&repository, &digest, after.as_deref(), limit))
            .await
    }

    async fn policy(&self, digest: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let digest = digest.to_owned();
        self.read(move |t| t.policy(&digest)).await
    }

    fn tree_size(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    async fn tree_root(&self, size: u64) -> Result<[u8; 32], StoreError> {
        self.read(move |t| crate::store::merkle::root(size, &t.merkle))
            .await
    }

    async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.read(move |t| crate::store::merkle::inclusion_proof(index, size, &t.merkle))
            .await
    }

    async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.read(move |t| crate::store::merkle::consistency_proof(from, to, &t.merkle))
            .await
    }

    async fn audit_len(&self) -> Result<u64, StoreError> {
        self.read(|t| t.audit_len()).await
    }

    async fn verify(&self) -> Result<Verification, StoreError> {
        let verified = self.verified.clone();
        self.read(move |t| {
            let mut prefix = verified.lock().unwrap_or_else(|p| p.into_inner());
            let (result, after) = t.verify_from(prefix.clone())?;
            if !after.is_broken() {
                *prefix = after;
            }
            Ok(result)
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|t| t.db.flush().map(drop).map_err(StoreError::from))
            .await
    }
}

/// Checks the audit chain of the store under `dir` without a running server;
/// refuses a directory that holds no prodgate store ([`dir::open_existing`]).
pub fn verify_offline(dir: &Path) -> Result<Verification, dir::DirError> {
    let (trees, format) = open_offline(dir)?;
    // Formats 3, 4 and 5 store the entry alike.
    let decode = match format {
        Some(2) => codec::decode_entry_v2,
        _ => codec::decode_entry,
    };
    Ok(trees.verify_with(Verifier::default(), decode)?.0)
}

/// The store under `dir` for an offline tool ([`dir::open_existing`]) and
/// its format marker.
fn open_offline(dir: &Path) -> Result<(Trees, Option<u64>), dir::DirError> {
    let db = dir::open_existing(dir)?;
    // `open_existing` checked the tree names: opening them creates nothing.
    let trees = Trees::open(db)?;
    let format = trees
        .meta
        .get(keys::FORMAT)?
        .and_then(|v| keys::read_u64(&v));
    Ok((trees, format))
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

fn stored_promotion(
    tree: &sled::Tree,
    id: PromotionId,
) -> Result<Option<StoredPromotion>, StoreError> {
    let key = keys::u64_key(id);
    tree.get(key)?
        .map(|v| decode_stored_promotion(id, &v))
        .transpose()
}

fn format_error(found: String) -> StoreError {
    StoreError::Format {
        found,
        supported: format!("{FORMAT_VERSION} (and migrates formats 2, 3 and 4)"),
    }
}

/// Refuses a data directory in a format this build cannot read, migrates
/// formats 2, 3 and 4, and marks a new directory.
fn check_format(t: &Trees) -> Result<(), StoreError> {
    // One batch of one tree, applied atomically: the migration's progress
    // markers go with the old format's marker.
    let mark = |t: &Trees| -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(keys::FORMAT, &keys::u64_key(FORMAT_VERSION));
        batch.remove(keys::MIGRATED_AUDIT);
        batch.remove(keys::MIGRATED_PROMOTIONS);
        batch.remove(keys::MIGRATED_AUDIT_4);
        batch.remove(keys::MIGRATED_PROMOTIONS_4);
        t.meta.apply_batch(batch)?;
        t.db.flush()?;
        Ok(())
    };
    match t.meta.get(keys::FORMAT)?.map(|v| keys::read_u64(&v)) {
        Some(Some(FORMAT_VERSION)) => Ok(()),
        Some(Some(n)) => {
            let Some(from) = codec::Old::of(n) else {
                return Err(format_error(format!("store format {n}")));
            };
            let (records, promotions) = derive::migrate(t, from)?;
            // Every rewritten record is on disk before the marker says so.
            t.db.flush()?;
            mark(t)?;
            tracing::info!(
                records,
                promotions,
                "migrated the data directory from store format {n} to {FORMAT_VERSION}"
            );
            Ok(())
        }
        Some(None) => Err(format_error("an unreadable store format marker".into())),
        None if t.audit.is_empty() && t.promotions.is_empty() => mark(t),
        None => Err(format_error(
            "store format 1 (written by an earlier prodgate)".into(),
        )),
    }
}

#[cfg(test)]
mod tests;
