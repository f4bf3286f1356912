//! The record on the image: after a promotion to an environment with
//! `attach_record = true` is APPLIED, push an OCI artifact holding its
//! record ([`record::Record`]: who asked, who approved, under which policy,
//! the checks, the APPLIED entry and a signed checkpoint covering it) whose
//! `subject` is the promoted manifest, and list it in the referrers
//! tag-schema index `sha256-<hex>` (Distribution has no referrers API), next
//! to cosign's signatures and whatever else is there.
//!
//! It never delays or fails a promotion: the worker follows the store's
//! committed changes, each record is made by a task of its own, retried with
//! capped exponential backoff until [`DEADLINE`]; every failed attempt counts
//! in `prodgate_attach_failures_total`. The index is read, merged and
//! written back with compare-before-write (the tag must still carry what was
//! read right before the push, and carries the merged index right after),
//! so a concurrent writer's entry is not lost: a lost race reads again.
//!
//! No state of its own: a record is attached when the index lists an entry
//! with prodgate's `artifactType` and the promotion's id annotation. At
//! start the worker looks at the newest [`LOOKBACK_PROMOTIONS`] PROMOTED
//! promotions of the last [`LOOKBACK`] whose environment attaches records,
//! and makes those the index does not list (a restart, or a deadline passed
//! while the registry was down). Shutdown drops the tasks in flight: an
//! artifact pushed without its index entry is harmless and made again.

pub mod attestation;
pub mod record;

use crate::apply::TagLocks;
use crate::backoff::{Delays, jitter};
use crate::clock::Clock;
use crate::config::Live;
use crate::domain::audit::AuditEntry;
use crate::domain::model::{Action, Promotion, PromotionId, State};
use crate::domain::names::Repository;
use crate::evidence::Evidence;
use crate::metrics::Metrics;
use crate::registry::{Manifest, Registry, RegistryError};
use crate::store::{HistoryFilter, ListFilter, PageRequest, Store, StoreError};
use record::{ARTIFACT_TYPE, Descriptor, EMPTY_CONFIG, IndexError, Record};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one record is retried; after that, only the next start tries
/// again (within [`LOOKBACK`]).
pub const DEADLINE: Duration = Duration::from_secs(60 * 60);
/// How far back the start-up scan looks for records not attached yet.
pub const LOOKBACK: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// At most this many PROMOTED promotions (the newest) are looked at then:
/// each costs a read of its index.
pub const LOOKBACK_PROMOTIONS: usize = 100;
/// Reads and writes of one index in one attempt before the attempt fails
/// because other writers kept changing it.
const INDEX_ROUNDS: u32 = 5;
/// History entries of one promotion read to find its APPLIED entry (a
/// promotion has a handful).
const PROMOTION_ENTRIES: usize = 64;

/// Why one attempt at a record failed; all are retried until [`DEADLINE`].
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the checkpoint: {0}")]
    Checkpoint(crate::error::Error),
    /// Heads cover durable entries; the APPLIED one is about to be covered.
    #[error("the checkpoint (size {size}) does not cover entry {sequence} yet")]
    NotCovered { size: u64, sequence: u64 },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{tag}: {source}")]
    Index { tag: String, source: IndexError },
    #[error("the referrers index {tag} changed under every one of {INDEX_ROUNDS} writes")]
    Raced { tag: String },
    #[error("stored repository {repository:?} is invalid: {reason}")]
    Repository { repository: String, reason: String },
    #[error("digest {0} has no referrers tag (only sha256 digests do)")]
    Digest(String),
    #[error("neither the store nor the registry holds the manifest {0}")]
    NoSubject(String),
}

impl AttachError {
    /// Whether the attempt counts as a failure (waiting for the checkpoint
    /// to cover the entry does not).
    fn counts(&self) -> bool {
        !matches!(self, AttachError::NotCovered { .. })
    }
}

/// What the worker needs besides the store, the registry and the evidence.
pub struct Settings {
    /// Environments' `attach_record`, read for every APPLIED change (a
    /// reload changes it).
    pub config: Live,
    pub clock: Arc<dyn Clock>,
    pub metrics: Option<Arc<Metrics>>,
}

struct Worker {
    store: Store,
    registry: Arc<dyn Registry>,
    evidence: Evidence,
    settings: Settings,
    /// One writer per index in this process; other processes are what
    /// compare-before-write is for.
    indexes: TagLocks,
}

/// Attaches records of APPLIED promotions until `stop` is cancelled.
pub async fn run(
    store: Store,
    registry: Arc<dyn Registry>,
    evidence: Evidence,
    settings: Settings,
    stop: CancellationToken,
) {
    // Subscribe before the scan so nothing applied in between is missed; a
    // promotion already in flight is not started twice.
    let mut changes = store.subscribe();
    let worker = Arc::new(Worker {
        store,
        registry,
        evidence,
        settings,
        indexes: TagLocks::default(),
    });
    let mut tasks = Tasks {
        worker: Arc::clone(&worker),
        set: JoinSet::new(),
        in_flight: HashSet::new(),
        stop: stop.clone(),
    };
    for (p, applied) in worker.backlog().await {
        tasks.start(p, applied);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = tasks.set.join_next(), if !tasks.set.is_empty() => {
                if let Ok(id) = done {
                    tasks.in_flight.remove(&id);
                }
            }
            change = changes.recv() => match change {
                Ok(c) if c.entry.event.action == Action::Applied && worker.wanted(&c.promotion) => {
                    tasks.start(c.promotion, c.entry);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "attach: change stream lagged; rescanning promoted promotions");
                    for (p, applied) in worker.backlog().await {
                        tasks.start(p, applied);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    tasks.set.shutdown().await;
}

/// The records being made, one task each, each promotion once at a time.
struct Tasks {
    worker: Arc<Worker>,
    set: JoinSet<PromotionId>,
    in_flight: HashSet<PromotionId>,
    stop: CancellationToken,
}

impl Tasks {
    fn start(&mut self, p: Promotion, applied: AuditEntry) {
        if self.in_flight.insert(p.id) {
            let worker = Arc::clone(&self.worker);
            self.set
                .spawn(worker.attach_until_done(p, applied, self.stop.clone()));
        }
    }
}

impl Worker {
    /// Whether `p`'s environment attaches records now.
    fn wanted(&self, p: &Promotion) -> bool {
        self.settings
            .config
            .get()
            .governing(&p.repository)
            .environment(&p.environment)
            .is_some_and(|e| e.attach_record)
    }

    /// Recent PROMOTED promotions of environments that attach records, with
    /// their APPLIED entries (see the module comment for the bounds).
    async fn backlog(&self) -> Vec<(Promotion, AuditEntry)> {
        let now = self.settings.clock.now();
        let since = now.seconds.saturating_sub(LOOKBACK.as_secs() as i64);
        let promoted = self
            .store
            .list(
                ListFilter {
                    state: Some(State::Promoted),
                    ..ListFilter::default()
                },
                PageRequest {
                    after: None,
                    limit: LOOKBACK_PROMOTIONS,
                    newest_first: true,
                },
            )
            .await;
        let promoted = match promoted {
            Ok(page) => page.items,
            Err(e) => {
                tracing::error!(error = %e, "attach: cannot list promoted promotions");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for p in promoted {
            if !self.wanted(&p) || p.promoted_at.is_none_or(|t| t.seconds < since) {
                continue;
            }
            match self.applied_entry(p.id).await {
                Ok(Some(e)) => out.push((p, e)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(promotion = p.id, error = %e, "attach: cannot read the APPLIED entry")
                }
            }
        }
        out
    }

    async fn applied_entry(&self, id: PromotionId) -> Result<Option<AuditEntry>, StoreError> {
        let page = self
            .store
            .history(
                HistoryFilter {
                    promotion_id: Some(id),
                    ..HistoryFilter::default()
                },
                PageRequest {
                    after: None,
                    limit: PROMOTION_ENTRIES,
                    newest_first: true,
                },
            )
            .await?;
        Ok(page
            .items
            .into_iter()
            .find(|e| e.event.action == Action::Applied))
    }

    /// Tries until the record is attached, [`DEADLINE`] passes or `stop`.
    async fn attach_until_done(
        self: Arc<Self>,
        p: Promotion,
        applied: AuditEntry,
        stop: CancellationToken,
    ) -> PromotionId {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut backoff = Delays::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match self.attach(&p, &applied).await {
                Ok(()) => {
                    tracing::info!(promotion = p.id, repository = %p.repository,
                        environment = %p.environment, digest = %p.digest, attempts,
                        "attached the promotion's record to the image");
                    return p.id;
                }
                Err(e) => e,
            };
            if error.counts()
                && let Some(m) = &self.settings.metrics
            {
                m.attach_failure(&p.environment);
            }
            let backoff = backoff.next_delay();
            // A registry's Retry-After, if longer, is honoured.
            let wait = match &error {
                AttachError::Registry(RegistryError::Unavailable {
                    retry_after: Some(after),
                    ..
                }) => backoff.max(*after).min(MAX_BACKOFF),
                _ => backoff,
            };
            let wait = jitter(wait);
            if tokio::time::Instant::now() + wait > deadline {
                tracing::error!(promotion = p.id, repository = %p.repository,
                    environment = %p.environment, attempts, error = %error,
                    "attach: giving up on the record for now; the next start tries again");
                return p.id;
            }
            tracing::warn!(promotion = p.id, repository = %p.repository,
                environment = %p.environment, attempts, error = %error,
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "attach: the record is not attached yet");
            tokio::select! {
                _ = stop.cancelled() => return p.id,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt: nothing if the index lists the record already, else
    /// push the artifact and list it.
    async fn attach(&self, p: &Promotion, applied: &AuditEntry) -> Result<(), AttachError> {
        let repo = Repository::parse(&p.repository).map_err(|e| AttachError::Repository {
            repository: p.repository.clone(),
            reason: e.to_string(),
        })?;
        let tag =
            record::index_tag(&p.digest).ok_or_else(|| AttachError::Digest(p.digest.clone()))?;
        let id = p.id.to_string();
        let index_error = |source| AttachError::Index {
            tag: tag.clone(),
            source,
        };
        let _index = self.indexes.lock(&p.repository, &tag).await;
        let mut current = self.registry.fetch_index(&repo, &tag).await?;
        if lists(current.as_ref(), &id).map_err(index_error)? {
            return Ok(());
        }
        let artifact = self.push_artifact(&repo, p, applied).await?;
        for round in 0..INDEX_ROUNDS {
            if round > 0 {
                current = self.registry.fetch_index(&repo, &tag).await?;
                if lists(current.as_ref(), &id).map_err(index_error)? {
                    return Ok(());
                }
            }
            let bytes = current.as_ref().map(|m| m.bytes.as_slice());
            let Some(merged) = record::merge(bytes, &artifact, &id).map_err(index_error)? else {
                return Ok(());
            };
            // Compare before write: the tag still carries what was merged.
            let now = self.registry.resolve(&repo, &tag).await?;
            if now.as_deref() != current.as_ref().map(|m| m.digest.as_str()) {
                continue;
            }
            self.registry.push_manifest(&repo, &merged, &tag).await?;
            // Read back: another writer in between means merging again.
            if self.registry.resolve(&repo, &tag).await?.as_deref() == Some(&merged.digest) {
                return Ok(());
            }
        }
        Err(AttachError::Raced { tag })
    }

    /// Makes the record and pushes its blobs and artifact manifest (by
    /// digest: the index names it).
    async fn push_artifact(
        &self,
        repo: &Repository,
        p: &Promotion,
        applied: &AuditEntry,
    ) -> Result<Manifest, AttachError> {
        let head = self
            .evidence
            .checkpoint()
            .await
            .map_err(AttachError::Checkpoint)?;
        if head.size < applied.sequence {
            return Err(AttachError::NotCovered {
                size: head.size,
                sequence: applied.sequence,
            });
        }
        let checks = self.store.checks(&p.repository, &p.digest).await?;
        let layer = Record::new(p, applied, &checks, &head).to_bytes();
        // The subject's type and size from the manifest pinned at request
        // time (the bytes the tag was moved to).
        let subject = match self.store.manifest(&p.repository, &p.digest).await? {
            Some(m) => Descriptor::of(&m.media_type, &m.bytes),
            None => match self.registry.fetch(repo, &p.digest).await? {
                Some(m) => Descriptor::of(&m.media_type, &m.bytes),
                None => return Err(AttachError::NoSubject(p.digest.clone())),
            },
        };
        if subject.digest != p.digest {
            return Err(AttachError::NoSubject(p.digest.clone()));
        }
        self.registry.push_blob(repo, EMPTY_CONFIG).await?;
        self.registry.push_blob(repo, &layer).await?;
        let artifact = record::artifact(
            &Descriptor::of(ARTIFACT_TYPE, &layer),
            &subject,
            &p.id.to_string(),
        );
        self.registry
            .push_manifest(repo, &artifact, &artifact.digest)
            .await?;
        Ok(artifact)
    }
}

/// Whether `index` (absent: no index yet) lists the record of promotion `id`.
fn lists(index: Option<&Manifest>, id: &str) -> Result<bool, IndexError> {
    index.map_or(Ok(false), |m| record::lists(&m.bytes, id))
}
