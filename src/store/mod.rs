//! All durable state, in sled: promotion records, the hash-chained audit log
//! and the indexes that serve List and History without full scans.
//!
//! Writes go through one writer thread ([`Store::write`]). It runs each job
//! against the current state (so read-modify-write is serialized: concurrent
//! approvals cannot both count) and commits it ([`Tx::commit`]): one sled
//! insert of the audit entry together with the promotion as it stands after
//! it, then the promotion record and indexes derived from that. It hands the
//! batch of jobs that arrived while it was busy to a flusher thread, which
//! runs one `flush` (fsync) for every batch that arrived while its previous
//! flush ran, and only then answers their callers: nothing is acknowledged
//! before it is on disk, many writes share one fsync, and applying the next
//! batch overlaps the current fsync.
//!
//! Crash paths, both handled in [`Store::open`]:
//! - killed between an audit insert and its last derived write: the newest
//!   audit records are derived again (`redo_derived`);
//! - a failed flush: the store refuses every later write (fail closed), the
//!   flusher records the last acknowledged sequence in the refusal horizon
//!   file (`horizon`), and the next start removes the refused entries
//!   (`roll_back`). Until that restart, reads may still show them.
//!
//! Measured reasons for this shape (BENCHMARKS.md): sled 0.34 transactions
//! and batches take a global lock that waits for a running flush, and sled
//! keeps in-memory bookkeeping per 16-entry leaf, so keys are kept few
//! (`postings`) and records compact (postcard).

mod horizon;
mod keys;
mod postings;

use crate::domain::audit::{AuditEntry, GENESIS, Hash, Verification, Verifier};
use crate::domain::model::{Action, Event, Promotion, PromotionId, State, Time};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc, oneshot};

/// How many queued jobs one flush may acknowledge at most.
const MAX_BATCH: usize = 512;
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
/// Format 1 (JSON records, one sled transaction per commit) had no marker.
const FORMAT_VERSION: u64 = 2;

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
    #[error(
        "the data directory holds {found}; this prodgate reads store format {FORMAT_VERSION} only"
    )]
    Format { found: String },
    #[error("internal error: promotion {0} changed without an audit entry; nothing was written")]
    Unaudited(PromotionId),
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

/// The value of an `audit` key: the entry and the promotion as it stood
/// right after it. Writing it is a commit's single atomic step; everything
/// else is derived from it (see [`derive`]).
#[derive(Serialize)]
struct RecordRef<'a> {
    entry: &'a AuditEntry,
    promotion: &'a Promotion,
}

#[derive(Deserialize)]
struct Record {
    entry: AuditEntry,
    promotion: Promotion,
}

/// The value of a `promotions` key: the promotion and the sequences of its
/// audit entries, ascending. The last sequence says which audit record the
/// value was derived from.
#[derive(Serialize)]
struct StoredPromotionRef<'a> {
    audit: &'a [u64],
    promotion: &'a Promotion,
}

#[derive(Deserialize)]
struct StoredPromotion {
    audit: Vec<u64>,
    promotion: Promotion,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
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

fn decode_record(key: &[u8], bytes: &[u8]) -> Result<Record, StoreError> {
    decode(
        || format!("audit entry {}", keys::read_u64(key).unwrap_or(0)),
        bytes,
    )
}

/// Only the entry: it comes first in the record, so the promotion after it
/// is not decoded (History pages read many entries and no promotions).
fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    postcard::take_from_bytes::<AuditEntry>(bytes)
        .map(|(entry, _promotion)| entry)
        .map_err(|e| StoreError::Corrupt {
            what: format!("audit entry {}", keys::read_u64(key).unwrap_or(0)),
            reason: e.to_string(),
        })
}

fn decode_promotion(key: &[u8], bytes: &[u8]) -> Result<StoredPromotion, StoreError> {
    decode(
        || format!("promotion {}", keys::read_u64(key).unwrap_or(0)),
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
        check_format(&trees)?;
        let horizon_error = |doing: &str, e: std::io::Error| {
            StoreError::Sled(format!("cannot {doing} {}: {e}", horizon::FILE_NAME))
        };
        let mut horizon = horizon::Horizon::open(dir).map_err(|e| horizon_error("open", e))?;
        if let Some(acknowledged) = horizon.read().map_err(|e| horizon_error("read", e))? {
            let undone = roll_back(&trees, acknowledged)?;
            trees.db.flush()?;
            horizon.clear().map_err(|e| horizon_error("clear", e))?;
            tracing::warn!(
                acknowledged_through = acknowledged,
                removed = undone,
                "removed audit entries whose flush had failed (their callers were refused)"
            );
        }
        redo_derived(&trees)?;
        let state = WriterState::load(trees.clone())?;
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let tx_changes = changes.clone();
        let stats = Arc::new(WriterStats::default());
        let (to_flusher, flusher_rx) = std::sync::mpsc::channel();
        let flusher = Flusher {
            db: trees.db.clone(),
            horizon,
            acknowledged: state.next_sequence - 1,
            poisoned: state.poisoned.clone(),
            changes: tx_changes,
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("prodgate-store-flusher".into())
            .spawn(move || flusher.run(flusher_rx))
            .map_err(|e| StoreError::Sled(format!("cannot start the flusher thread: {e}")))?;
        // If this spawn fails, `to_flusher` is dropped with the closure and
        // the flusher ends on its own.
        std::thread::Builder::new()
            .name("prodgate-store-writer".into())
            .spawn(move || run_writer(state, rx, to_flusher))
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
        Ok(stored_promotion(&self.trees.promotions, id)?.map(|s| s.promotion))
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

    /// The ids under a key-per-member index prefix (the state index), from
    /// `start` on, in order.
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

    /// The ids or sequences in a posting list, from `start` on, ascending.
    fn postings_from<'a>(
        &'a self,
        prefix: &[u8],
        start: u64,
    ) -> impl Iterator<Item = Result<u64, StoreError>> + 'a {
        postings::from(&self.trees.index, prefix, start).map(|r| r.map_err(StoreError::from))
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
        let state_prefix = filter.state.map(keys::promotions_by_state_prefix);
        let ids: Option<Box<dyn Iterator<Item = Result<u64, StoreError>>>> =
            match (&filter.repository, &state_prefix) {
                (Some(r), _) => Some(Box::new(
                    self.postings_from(&keys::promotions_by_repository_prefix(r), start),
                )),
                (None, Some(prefix)) => Some(Box::new(self.index_tails(prefix, start))),
                (None, None) => None,
            };
        let mut page = PageBuilder::new(limit);
        match ids {
            Some(ids) => {
                for id in ids {
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
                    let p = decode_promotion(&k, &v)?.promotion;
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
        let sequences: Option<Box<dyn Iterator<Item = Result<u64, StoreError>>>> =
            if let Some(id) = filter.promotion_id {
                // A promotion lists its own entries: a handful, so no index.
                let audit = stored_promotion(&self.trees.promotions, id)?
                    .map(|s| s.audit)
                    .unwrap_or_default();
                Some(Box::new(
                    audit.into_iter().filter(move |&seq| seq >= start).map(Ok),
                ))
            } else if let Some(r) = &filter.repository {
                Some(Box::new(
                    self.postings_from(&keys::audit_by_repository_prefix(r), start),
                ))
            } else {
                filter.environment.as_deref().map(|env| {
                    Box::new(self.postings_from(&keys::audit_by_environment_prefix(env), start))
                        as Box<dyn Iterator<Item = _>>
                })
            };
        let mut page = PageBuilder::new(limit);
        let mut visit = |e: AuditEntry| !past_until(&e) && (!matches(&e) || page.offer(e));
        match sequences {
            Some(sequences) => {
                for seq in sequences {
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
        for seq in postings::newest_first(&self.trees.index, &prefix) {
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

fn stored_promotion(
    tree: &sled::Tree,
    id: PromotionId,
) -> Result<Option<StoredPromotion>, StoreError> {
    let key = keys::u64_key(id);
    tree.get(key)?
        .map(|v| decode_promotion(&key, &v))
        .transpose()
}

/// Refuses a data directory in another store format; marks a new one.
fn check_format(t: &Trees) -> Result<(), StoreError> {
    match t.meta.get(keys::FORMAT)? {
        Some(v) if keys::read_u64(&v) == Some(FORMAT_VERSION) => Ok(()),
        Some(v) => Err(StoreError::Format {
            found: match keys::read_u64(&v) {
                Some(n) => format!("store format {n}"),
                None => "an unreadable store format marker".into(),
            },
        }),
        None if t.audit.is_empty() && t.promotions.is_empty() => {
            t.meta
                .insert(keys::FORMAT, &keys::u64_key(FORMAT_VERSION))?;
            t.db.flush()?;
            Ok(())
        }
        None => Err(StoreError::Format {
            found: "store format 1 (written by an earlier prodgate)".into(),
        }),
    }
}

/// Writes what is derived from one audit record, given the promotion's
/// stored value before it: the indexes first, the promotion's value last.
/// Its audit list then ends with this sequence, which is how [`redo_derived`]
/// tells a finished derivation from one a crash cut short. Every step is
/// idempotent, so running it twice for the same record changes nothing.
fn derive(
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
fn redo_derived(t: &Trees) -> Result<(), StoreError> {
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
fn roll_back(t: &Trees, acknowledged: u64) -> Result<usize, StoreError> {
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
            if !after.request_id.is_empty() {
                t.index
                    .remove(keys::request_id(&after.requested_by, &after.request_id))?;
            }
            t.promotions.remove(keys::u64_key(id))?;
        }
    }
    Ok(())
}

/// What only the writer thread knows: the chain's head and the id counter.
struct WriterState {
    trees: Trees,
    next_sequence: u64,
    head_hash: Hash,
    last_time: Time,
    next_id: PromotionId,
    /// Set by the flusher when a flush fails; shared with the writer so no
    /// later job commits anything.
    poisoned: Arc<AtomicBool>,
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
        // Ids are never reused: promotions are never deleted, and the newest
        // one's value is derived before the writer starts.
        let next_id = trees
            .promotions
            .last()?
            .and_then(|(k, _)| keys::read_u64(&k))
            .map_or(1, |id| id + 1);
        Ok(Self {
            trees,
            next_sequence,
            head_hash,
            last_time,
            next_id,
            poisoned: Arc::new(AtomicBool::new(false)),
        })
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
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
        Ok(stored_promotion(&self.state.trees.promotions, id)?.map(|s| s.promotion))
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
        if self.state.is_poisoned() {
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

    /// Chains `event` into the audit log with `after` (which replaces the
    /// stored promotion with its id, if any), then updates the promotion
    /// record and indexes.
    ///
    /// The audit record, written in one sled insert, is the commit: sled
    /// applies a single insert atomically, and the derived keys written after
    /// it are finished by `redo_derived` if a crash cuts them short. No sled
    /// transaction or batch is used: in sled 0.34 those take a global write
    /// lock that waits for any running flush, which would stop the writer
    /// from applying the next batch while the flusher fsyncs the last one.
    /// If a derived write fails the store is poisoned (refuses all writes
    /// until a restart re-derives it).
    pub fn commit(
        &mut self,
        after: &Promotion,
        event: Option<Event>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        if self.state.is_poisoned() {
            return Err(StoreError::Poisoned);
        }
        let stored = stored_promotion(&self.state.trees.promotions, after.id)?;
        let Some(event) = event else {
            // Only a repeated approval has no event, and it changes nothing.
            return if stored.is_some_and(|s| s.promotion == *after) {
                Ok(None)
            } else {
                Err(StoreError::Unaudited(after.id))
            };
        };
        let time = after.updated_at.max(self.state.last_time);
        let entry = AuditEntry::chain(self.state.head_hash, self.state.next_sequence, time, event);
        let t = &self.state.trees;
        t.audit.insert(
            keys::u64_key(entry.sequence),
            encode(&RecordRef {
                entry: &entry,
                promotion: after,
            }),
        )?;
        self.writes += 1;
        self.state.next_sequence = entry.sequence + 1;
        self.state.head_hash = entry.hash;
        self.state.last_time = entry.time;
        if stored.is_none() {
            self.state.next_id = self.state.next_id.max(after.id + 1);
        }
        if let Err(e) = derive(t, stored.as_ref(), &entry, after) {
            tracing::error!(error = %e, "indexing a committed audit entry failed; refusing all further writes");
            self.state.poisoned.store(true, Ordering::Release);
            return Err(e.into());
        }
        self.changed.push(after.clone());
        Ok(Some(entry))
    }
}

/// One committed batch on its way to the flusher.
struct Committed {
    completions: Vec<Completion>,
    changed: Vec<Promotion>,
    writes: usize,
    /// The newest audit sequence once the batch was applied.
    last_sequence: u64,
}

/// Applies jobs in arrival order and hands each committed batch to the
/// flusher thread, so batch N+1 is applied while batch N is being fsynced.
/// A batch is answered only by a flush that started after it was committed,
/// so nothing is acknowledged before it is on disk.
fn run_writer(
    mut state: WriterState,
    mut rx: mpsc::Receiver<Job>,
    to_flusher: std::sync::mpsc::Sender<Committed>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut committed = Committed {
            completions: Vec::with_capacity(batch.len()),
            changed: Vec::new(),
            writes: 0,
            last_sequence: 0,
        };
        for job in batch {
            let mut tx = Tx {
                state: &mut state,
                changed: &mut committed.changed,
                writes: 0,
            };
            committed.completions.push(job(&mut tx));
            committed.writes += tx.writes;
        }
        committed.last_sequence = state.next_sequence - 1;
        if to_flusher.send(committed).is_err() {
            // The flusher only ends when this sender is dropped.
            break;
        }
    }
}

/// The flusher thread's state.
struct Flusher {
    db: sled::Db,
    horizon: horizon::Horizon,
    /// The newest audit sequence a successful flush covered.
    acknowledged: u64,
    poisoned: Arc<AtomicBool>,
    changes: broadcast::Sender<Promotion>,
    stats: Arc<WriterStats>,
}

impl Flusher {
    /// Flushes once for every batch that arrived while the previous flush
    /// ran, then answers those batches and publishes their changes. A failed
    /// flush poisons the store: that batch and every later one is refused,
    /// and the refusal horizon makes the next start remove them.
    fn run(mut self, rx: std::sync::mpsc::Receiver<Committed>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter());
            let flushed = self.flush(&group);
            for committed in group {
                for c in committed.completions {
                    c(flushed.clone());
                }
                if flushed.is_ok() {
                    for p in committed.changed {
                        // No subscriber is fine.
                        let _ = self.changes.send(p);
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

#[cfg(test)]
mod tests;
