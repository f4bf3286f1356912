//! The storage port: what the use cases need from durable state, independent
//! of the database behind it. [`Storage`] is the backend's side (async reads,
//! a queue of write jobs); [`Store`] is the cheap handle the use cases hold.
//!
//! A write is a job run on a [`UnitOfWork`]: it reads what it must, lets the
//! domain decide, and commits the promotion with its audit event. Jobs run
//! one at a time in arrival order (so read-modify-write is serialized:
//! concurrent approvals cannot both count), and a job's caller is answered
//! only after its writes are durable. Every committed change is published
//! as a [`Change`]: the audit entry with the promotion as it stands after it.
//! Entries about no promotion (check reports, policy changes, drift) are
//! published on a stream of their own ([`Storage::subscribe_records`]), so
//! the consumers of promotion changes never see a change without one.
//!
//! The audit log is also a Merkle tree ([`merkle`]); its heads and proofs
//! cover durable entries only, so a signed checkpoint never names an entry
//! a failed flush later removes.
//!
//! Backends: [`sled`] (the embedded default) and [`postgres`]; each
//! implements [`Storage`] and [`UnitOfWork`], and nothing above this module
//! knows which one runs. Both append by the same rules ([`chain`]: numbering,
//! hashing, entry times, the refusal of unaudited changes, what is published
//! and indexed), store the same records ([`codec`], which also upgrades the
//! earlier formats), and pass the same tests (`conformance`); each keeps only
//! its own I/O.

pub mod chain;
pub mod codec;
#[cfg(test)]
pub(crate) mod conformance;
pub mod merkle;
pub mod postgres;
pub mod sled;

use crate::domain::audit::{AuditEntry, Verification};
use crate::domain::drift::TagRecord;
use crate::domain::model::{CheckReport, Event, Promotion, PromotionId, State, Time};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A write (or anything but a read) failed: nothing was recorded.
    #[error("storage error: {0}")]
    Backend(String),
    /// A read failed; nothing was changed by it.
    #[error("could not read the store: {0}")]
    Read(String),
    /// The database cannot be used as it is (another application's schema,
    /// an encoding other than UTF8, a clock too far off); said at open.
    #[error("{0}")]
    Unusable(String),
    #[error("stored record {what} is unreadable: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("the data directory could not be flushed to disk: {0}")]
    Flush(String),
    #[error("storage refuses writes after an earlier flush failure; restart prodgate")]
    Poisoned,
    #[error("the storage writer has stopped")]
    Closed,
    #[error("the data directory holds {found}; this prodgate reads store format {supported}")]
    Format { found: String, supported: String },
    #[error("internal error: promotion {0} changed without an audit entry; nothing was written")]
    Unaudited(PromotionId),
}

/// A manifest's exact bytes and media type, as pinned at request time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// One recorded version of the effective policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub digest: String,
    pub canonical_json: String,
    /// The time of the POLICY_CHANGED entry that first recorded it.
    pub first_recorded: Time,
}

/// The Merkle tree's size and root at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    pub size: u64,
    pub root: [u8; 32],
}

/// A committed, durable change: the audit entry and the promotion as it
/// stands right after it. Consumers (apply, watch, metrics, webhooks) read
/// what happened from `entry.event.action`, never from timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub entry: AuditEntry,
    pub promotion: Promotion,
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

/// Which page: the items after `after` (exclusive; ids or sequences) in the
/// walk's direction, at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<u64>,
    pub limit: usize,
    pub newest_first: bool,
}

/// One page of results and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// What a write job needs to know about a digest's check reports before
/// recording one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckNames {
    /// Whether the check being reported already has a report.
    pub known: bool,
    /// How many distinct checks have a report, counted no further than
    /// asked ([`UnitOfWork::check_names`]).
    pub distinct: usize,
}

/// How many check reports [`Storage::checks`] reads per page.
const CHECKS_PAGE: usize = 1000;

/// Counters of the write path, for metrics and benchmarks: how many commits
/// one flush acknowledges is the point of group commit.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Committed record changes (each with one audit entry).
    pub commits: AtomicU64,
    /// Successful flushes (fsyncs) of the database.
    pub flushes: AtomicU64,
}

/// A write job's view of the store. Reads see every earlier job's writes.
pub trait UnitOfWork {
    /// The store's clock, never earlier than the last audit entry, so entry
    /// times follow sequence order.
    fn now(&mut self) -> Time;
    fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError>;
    /// The promotion a principal opened with this idempotency key, if any.
    fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<PromotionId>, StoreError>;
    /// The id the next new promotion will get.
    fn next_id(&self) -> PromotionId;
    /// Promotions of one repository and environment that are still open
    /// (PENDING_APPROVAL, WAITING or APPROVED), oldest first.
    fn open_promotions(
        &self,
        repository: &str,
        environment: &str,
    ) -> Result<Vec<Promotion>, StoreError>;
    /// Pins a manifest's bytes (content-addressed, so writing it twice is
    /// harmless); durable with the job.
    fn put_manifest(
        &mut self,
        repository: &str,
        digest: &str,
        m: &StoredManifest,
    ) -> Result<(), StoreError>;
    /// Keeps a policy version's document under its digest (content-addressed,
    /// like manifests); durable with the job. Record it with a
    /// POLICY_CHANGED entry ([`UnitOfWork::record`]) in the same job.
    fn put_policy(&mut self, digest: &str, canonical_json: &str) -> Result<(), StoreError>;
    /// The digest the newest POLICY_CHANGED entry recorded, if any.
    fn latest_policy(&self) -> Result<Option<String>, StoreError>;
    /// Chains `event` into the audit log with `after` (which replaces the
    /// stored promotion with its id, if any). Without an event nothing may
    /// have changed: an unaudited change is refused.
    fn commit(
        &mut self,
        after: &Promotion,
        event: Option<Event>,
    ) -> Result<Option<AuditEntry>, StoreError>;
    /// Chains an entry about no promotion (a check report, a policy change), timed `at` (or
    /// the last entry's time, if later).
    fn record(&mut self, event: Event, at: Time) -> Result<AuditEntry, StoreError>;
    /// Whether `check` has a report for `digest` in `repository`, and how
    /// many distinct checks do, counted up to `up_to` (a larger number
    /// reads as `up_to`), as this job sees them.
    fn check_names(
        &self,
        repository: &str,
        digest: &str,
        check: &str,
        up_to: usize,
    ) -> Result<CheckNames, StoreError>;
    /// How many writes the job made so far (a job that wrote nothing is
    /// answered even if the flush fails).
    fn writes(&self) -> usize;
}

/// For a backend's writer thread: blocks for the next job, then takes the
/// jobs already queued behind it, up to `max`, as one batch (group commit).
/// `None` once every sender is gone.
pub fn next_batch(rx: &mut mpsc::Receiver<Job>, max: usize) -> Option<Vec<Job>> {
    let mut batch = vec![rx.blocking_recv()?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Called with the outcome of the flush that covers a job's writes.
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write job as the backend runs it.
pub type Job = Box<dyn FnOnce(&mut dyn UnitOfWork) -> Completion + Send>;

/// This replica's turn at running what must run once per deployment, not
/// once per replica (the apply worker, the expiry sweep, the drift watch,
/// checkpoint publication). `term` is cancelled when the turn ends (the
/// leadership was lost, or `stop` was cancelled); the turn is given up
/// when this is dropped, so drop it only after those tasks have stopped.
pub struct Leadership {
    pub term: CancellationToken,
    /// Whether another replica led when this one first asked: what was
    /// committed before this turn began was that replica's to report.
    pub waited: bool,
    /// What keeps the turn (a database session), released on drop.
    _hold: Option<Box<dyn Send + Sync>>,
}

impl Leadership {
    /// A turn held by `hold` for as long as it lives.
    pub fn new(term: CancellationToken, waited: bool, hold: Box<dyn Send + Sync>) -> Self {
        Leadership {
            term,
            waited,
            _hold: Some(hold),
        }
    }
}

/// A storage backend.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Waits until this replica leads (`None` once `stop` is cancelled).
    /// A backend only one process can open (sled) leads at once, until
    /// `stop`.
    async fn lead(&self, stop: &CancellationToken) -> Option<Leadership> {
        if stop.is_cancelled() {
            return None;
        }
        Some(Leadership {
            term: stop.child_token(),
            waited: false,
            _hold: None,
        })
    }
    /// Whether this replica sees every change committed to the store (a
    /// backend shared by replicas must hear of the others' writes). Health
    /// reports NOT_SERVING while it does not.
    fn following(&self) -> bool {
        true
    }
    /// Queues `job`; its completion is called once its writes are durable
    /// (or refused). Errs if the backend has stopped.
    async fn submit(&self, job: Job) -> Result<(), StoreError>;
    /// Every committed, durable change, in commit order.
    fn subscribe(&self) -> broadcast::Receiver<Change>;
    /// Every committed, durable entry about no promotion
    /// ([`UnitOfWork::record`]), in commit order.
    fn subscribe_records(&self) -> broadcast::Receiver<AuditEntry>;
    fn stats(&self) -> &WriterStats;

    async fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError>;
    async fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<Promotion>, StoreError>;
    /// The manifest pinned under `digest` in `repository`, if one was stored.
    async fn manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<StoredManifest>, StoreError>;
    /// Promotions in a state, oldest id first.
    async fn in_state(&self, state: State) -> Result<Vec<Promotion>, StoreError>;
    async fn list(
        &self,
        filter: ListFilter,
        page: PageRequest,
    ) -> Result<Page<Promotion>, StoreError>;
    async fn history(
        &self,
        filter: HistoryFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEntry>, StoreError>;
    /// The APPLIED entry that put `environment`'s tag of `repository` where it
    /// was at `at` (now if `None`): the last one at or before that moment.
    async fn deployed_at(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<AuditEntry>, StoreError>;
    /// Every repository and environment whose tag prodgate moved (an APPLIED
    /// entry exists), in no particular order: what the drift watch reads.
    async fn moved_tags(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// What the audit log says about `environment`'s tag of `repository` at
    /// `at` (now if `None`): the last APPLIED entry at or before then, and
    /// the DRIFT_DETECTED and DRIFT_RESTORED entries after it up to then.
    async fn tag_record(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<TagRecord>, StoreError>;
    /// The latest report of each check for `digest` in `repository`, by
    /// check name in byte order: at most `limit` of them, those after the
    /// name `after`.
    async fn checks_page(
        &self,
        repository: &str,
        digest: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<CheckReport>, StoreError>;
    /// The latest report of every check for `digest` in `repository`, by
    /// check name: every page of [`Storage::checks_page`]. At most
    /// `max_checks_per_digest` unless the digest had more reports before
    /// that limit existed; those are all read too, since a gate must see
    /// every one.
    async fn checks(&self, repository: &str, digest: &str) -> Result<Vec<CheckReport>, StoreError> {
        let mut all: Vec<CheckReport> = Vec::new();
        loop {
            let after = all.last().map(|c| c.check.clone());
            let page = self
                .checks_page(repository, digest, after.as_deref(), CHECKS_PAGE)
                .await?;
            // An empty page cannot say where to go on: the end.
            let end = !page.more || page.items.is_empty();
            all.extend(page.items);
            if end {
                return Ok(all);
            }
        }
    }
    /// A policy version a POLICY_CHANGED entry recorded, by digest.
    async fn policy(&self, digest: &str) -> Result<Option<StoredPolicy>, StoreError>;
    /// How many entries the Merkle tree covers: every durable one.
    fn tree_size(&self) -> u64;
    /// The Merkle tree over every durable entry: its size and root.
    async fn tree_head(&self) -> Result<TreeHead, StoreError> {
        let size = self.tree_size();
        let root = self.tree_root(size).await?;
        Ok(TreeHead { size, root })
    }
    /// The root of the tree of the first `size` entries (`size` at most
    /// the head's).
    async fn tree_root(&self, size: u64) -> Result<[u8; 32], StoreError>;
    /// The inclusion proof of leaf `index` (sequence `index + 1`) in the tree
    /// of `size` entries (`index < size`, `size` at most the head's).
    async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>, StoreError>;
    /// The consistency proof from size `from` to size `to` (`1 <= from <= to`,
    /// `to` at most the head's).
    async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, StoreError>;
    /// How many entries the audit log holds (its last sequence number).
    async fn audit_len(&self) -> Result<u64, StoreError>;
    /// Checks the hash chain.
    async fn verify(&self) -> Result<Verification, StoreError>;
    /// Makes everything durable (acknowledged writes already are).
    async fn flush(&self) -> Result<(), StoreError>;
}

/// The handle the use cases hold: the backend's reads (through `Deref`) and
/// a typed [`Store::write`].
#[derive(Clone)]
pub struct Store(Arc<dyn Storage>);

impl std::ops::Deref for Store {
    type Target = dyn Storage;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl Store {
    pub fn new(backend: Arc<dyn Storage>) -> Self {
        Self(backend)
    }

    /// The members of release `id`, in order: a release's members are
    /// created in one write job, so their ids follow one another from its
    /// first member's, which is the release's id. Empty when `id` names no
    /// release.
    pub async fn release_members(&self, id: PromotionId) -> Result<Vec<Promotion>, StoreError> {
        let mut members = Vec::new();
        let mut next = id;
        while members.len() < crate::domain::release::MAX_COMPONENTS {
            match self.get(next).await? {
                Some(p) if p.release_id == Some(id) => members.push(p),
                _ => break,
            }
            next += 1;
        }
        Ok(members)
    }

    /// Runs `job` and answers after its writes are durable. The job's own
    /// error (a refusal) is returned as is; a job that wrote nothing is not
    /// failed by a later flush error.
    pub async fn write<T, E>(
        &self,
        job: impl FnOnce(&mut dyn UnitOfWork) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let boxed: Job = Box::new(move |uow: &mut dyn UnitOfWork| {
            let before = uow.writes();
            let result = job(uow);
            let wrote = uow.writes() != before;
            Box::new(move |flushed: Result<(), StoreError>| {
                let answer = match flushed {
                    Err(e) if wrote => Err(E::from(e)),
                    _ => result,
                };
                // The caller may have gone away; the write stands regardless.
                let _ = tx.send(answer);
            })
        });
        self.0.submit(boxed).await.map_err(E::from)?;
        rx.await.map_err(|_| E::from(StoreError::Closed))?
    }
}
