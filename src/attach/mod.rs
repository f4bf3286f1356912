//! What prodgate attaches to an image after promoting it, one [`Kind`] per
//! worker:
//!
//! - **The record** (`attach_record = true`): an OCI artifact holding the
//!   promotion's record ([`record::Record`]: who asked, who approved, under
//!   which policy, the checks, the APPLIED entry and a signed checkpoint
//!   covering it) whose `subject` is the promoted manifest, listed in the
//!   referrers tag-schema index `sha256-<hex>` (Distribution has no
//!   referrers API), next to cosign's signatures and whatever else is there.
//! - **The attestation** (`attest = true`, with `[attest]`): an in-toto
//!   Statement whose predicate is a SLSA VSA ([`crate::attest`]), signed in
//!   a DSSE envelope and appended to cosign's attestation manifest under
//!   `sha256-<hex>.att` ([`attestation`]), where `cosign
//!   verify-attestation`, Kyverno and policy-controller look. A rollback is
//!   attested like any promotion (`rollback: true` in the predicate); a
//!   digest that leaves an environment keeps its attestation (admission
//!   policies check the environment and time instead).
//!
//! Neither delays or fails a promotion: a worker follows the store's
//! committed changes, each item is made by a task of its own, retried with
//! capped exponential backoff until [`DEADLINE`]; every failed attempt counts
//! in `prodgate_attach_failures_total` or `prodgate_attest_failures_total`.
//! The shared tag (the index, the attestation manifest) is read, merged and
//! written back with compare-before-write (the tag must still carry what was
//! read right before the push, and carries the merged manifest right
//! after), so a concurrent writer's entry is not lost: a lost race reads
//! again.
//!
//! No state of its own: an item is attached when the tag lists an entry
//! with the promotion's id annotation. At start a worker looks at the
//! newest [`LOOKBACK_PROMOTIONS`] PROMOTED promotions of the last
//! [`LOOKBACK`] whose environment wants its kind, and makes those the tag
//! does not list (a restart, or a deadline passed while the registry was
//! down). Shutdown drops the tasks in flight: a blob or artifact pushed
//! without its entry is harmless and made again.

pub mod attestation;
pub mod record;

use crate::apply::TagLocks;
use crate::attest::{Attestor, Summary, VSA_TYPE};
use crate::backoff::{Delays, jitter};
use crate::clock::Clock;
use crate::config::Live;
use crate::domain::audit::AuditEntry;
use crate::domain::model::{Action, CheckReport, Precision, Promotion, PromotionId, State};
use crate::domain::names::Repository;
use crate::domain::policy::EnvironmentPolicy;
use crate::evidence::{Evidence, SignedHead};
use crate::metrics::Metrics;
use crate::registry::{Manifest, Registry, RegistryError};
use crate::store::{HistoryFilter, ListFilter, PageRequest, Store, StoreError};
use attestation::LayoutError;
use record::{ARTIFACT_TYPE, Descriptor, EMPTY_CONFIG, IndexError, Record};
use serde_json::{Value, json};
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
    #[error("{tag}: {source}")]
    Attestations { tag: String, source: LayoutError },
    #[error("the tag {tag} changed under every one of {INDEX_ROUNDS} writes")]
    Raced { tag: String },
    #[error("stored repository {repository:?} is invalid: {reason}")]
    Repository { repository: String, reason: String },
    #[error("digest {0} has no referrers or attestation tag (only sha256 digests do)")]
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

/// What a worker attaches.
pub enum Kind {
    /// The promotion's record, listed in the referrers index.
    Record,
    /// A signed VSA, appended to cosign's attestation manifest.
    Attestation {
        attestor: Attestor,
        /// `[attest] verifier_id`.
        verifier_id: String,
    },
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Record => "record",
            Kind::Attestation { .. } => "attestation",
        }
    }

    /// Whether an environment with policy `e` wants this kind.
    fn wanted_by(&self, e: &EnvironmentPolicy) -> bool {
        match self {
            Kind::Record => e.attach_record,
            Kind::Attestation { .. } => e.attest,
        }
    }
}

/// What the worker needs besides the store, the registry and the evidence.
pub struct Settings {
    pub kind: Kind,
    /// Environments' `attach_record` and `attest`, read for every APPLIED
    /// change (a reload changes them).
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

/// Attaches `settings.kind` to the images of APPLIED promotions until
/// `stop` is cancelled.
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
                    tracing::warn!(missed = n, kind = worker.settings.kind.name(),
                        "attach: change stream lagged; rescanning promoted promotions");
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
    /// Whether `p`'s environment wants this worker's kind now.
    fn wanted(&self, p: &Promotion) -> bool {
        self.settings
            .config
            .get()
            .governing(&p.repository)
            .environment(&p.environment)
            .is_some_and(|e| self.settings.kind.wanted_by(e))
    }

    /// Recent PROMOTED promotions of environments that want this kind, with
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
                tracing::error!(error = %e, kind = self.settings.kind.name(),
                    "attach: cannot list promoted promotions");
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

    /// Tries until the item is attached, [`DEADLINE`] passes or `stop`.
    async fn attach_until_done(
        self: Arc<Self>,
        p: Promotion,
        applied: AuditEntry,
        stop: CancellationToken,
    ) -> PromotionId {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut backoff = Delays::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempts = 0u32;
        let kind = self.settings.kind.name();
        loop {
            attempts += 1;
            let error = match self.attach(&p, &applied).await {
                Ok(()) => {
                    tracing::info!(promotion = p.id, repository = %p.repository,
                        environment = %p.environment, digest = %p.digest, attempts, kind,
                        "attached the promotion's {kind} to the image");
                    return p.id;
                }
                Err(e) => e,
            };
            if error.counts()
                && let Some(m) = &self.settings.metrics
            {
                match self.settings.kind {
                    Kind::Record => m.attach_failure(&p.environment),
                    Kind::Attestation { .. } => m.attest_failure(&p.environment),
                }
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
                    environment = %p.environment, attempts, error = %error, kind,
                    "attach: giving up on the {kind} for now; the next start tries again");
                return p.id;
            }
            tracing::warn!(promotion = p.id, repository = %p.repository,
                environment = %p.environment, attempts, error = %error, kind,
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "attach: the {kind} is not attached yet");
            tokio::select! {
                _ = stop.cancelled() => return p.id,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt at this worker's kind.
    async fn attach(&self, p: &Promotion, applied: &AuditEntry) -> Result<(), AttachError> {
        let repo = Repository::parse(&p.repository).map_err(|e| AttachError::Repository {
            repository: p.repository.clone(),
            reason: e.to_string(),
        })?;
        match &self.settings.kind {
            Kind::Record => self.attach_record(&repo, p, applied).await,
            Kind::Attestation {
                attestor,
                verifier_id,
            } => {
                self.attach_attestation(&repo, p, applied, attestor, verifier_id)
                    .await
            }
        }
    }

    /// Nothing if the index lists the record already, else push the
    /// artifact and list it.
    async fn attach_record(
        &self,
        repo: &Repository,
        p: &Promotion,
        applied: &AuditEntry,
    ) -> Result<(), AttachError> {
        let tag =
            record::index_tag(&p.digest).ok_or_else(|| AttachError::Digest(p.digest.clone()))?;
        let _index = self.indexes.lock(&p.repository, &tag).await;
        let shared = Shared::Index;
        let current = shared.read(&*self.registry, repo, &tag).await?;
        if shared.lists(current.as_ref(), &tag, p.id)? {
            return Ok(());
        }
        let artifact = self.push_artifact(repo, p, applied).await?;
        let id = p.id.to_string();
        self.list_under(repo, &tag, current, &shared, p.id, |index| {
            record::merge(index, &artifact, &id)
                .map(|m| m.map(|m| (None, m)))
                .map_err(|source| AttachError::Index {
                    tag: tag.clone(),
                    source,
                })
        })
        .await
    }

    /// Nothing if the attestation manifest holds this promotion's
    /// attestation already, else sign one, push the envelope and append it.
    async fn attach_attestation(
        &self,
        repo: &Repository,
        p: &Promotion,
        applied: &AuditEntry,
        attestor: &Attestor,
        verifier_id: &str,
    ) -> Result<(), AttachError> {
        let tag =
            attestation::tag(&p.digest).ok_or_else(|| AttachError::Digest(p.digest.clone()))?;
        let _tag = self.indexes.lock(&p.repository, &tag).await;
        let shared = Shared::Attestations;
        let current = shared.read(&*self.registry, repo, &tag).await?;
        if shared.lists(current.as_ref(), &tag, p.id)? {
            return Ok(());
        }
        let head = self.covering(applied).await?;
        let checks = self.store.checks(&p.repository, &p.digest).await?;
        let statement = crate::attest::statement(&Summary {
            verifier_id,
            repository: &p.repository,
            digest: &p.digest,
            environment: &p.environment,
            project: &p.project,
            policy_digest: &p.policy_digest,
            time_verified: &applied.time.rfc3339(Precision::Nanos),
            extra: vsa_extra(p, applied, &checks, &head),
        });
        // Plain strings: serializing cannot fail.
        let envelope = serde_json::to_vec(&attestor.sign(&statement)).unwrap_or_default();
        self.registry.push_blob(repo, &envelope).await?;
        let id = p.id.to_string();
        self.list_under(repo, &tag, current, &shared, p.id, |existing| {
            attestation::merge(existing, &envelope, VSA_TYPE, &id)
                .map(|m| m.map(|m| (Some(m.config), m.manifest)))
                .map_err(|source| AttachError::Attestations {
                    tag: tag.clone(),
                    source,
                })
        })
        .await
    }

    /// Lists promotion `id`'s entry under `tag`, starting from `current`
    /// (what the tag carried when this attempt began): `merge` it in (the
    /// merged manifest, and a blob to push before it; `None`: listed
    /// already), compare before write, push, read back; a lost race reads
    /// again, up to [`INDEX_ROUNDS`] times.
    async fn list_under(
        &self,
        repo: &Repository,
        tag: &str,
        mut current: Option<Manifest>,
        shared: &Shared,
        id: PromotionId,
        merge: impl Fn(Option<&[u8]>) -> Result<Option<(Option<Vec<u8>>, Manifest)>, AttachError>,
    ) -> Result<(), AttachError> {
        for round in 0..INDEX_ROUNDS {
            if round > 0 {
                current = shared.read(&*self.registry, repo, tag).await?;
                if shared.lists(current.as_ref(), tag, id)? {
                    return Ok(());
                }
            }
            let Some((blob, merged)) = merge(current.as_ref().map(|m| m.bytes.as_slice()))? else {
                return Ok(());
            };
            if let Some(blob) = blob {
                self.registry.push_blob(repo, &blob).await?;
            }
            // Compare before write: the tag still carries what was merged.
            let now = self.registry.resolve(repo, tag).await?;
            if now.as_deref() != current.as_ref().map(|m| m.digest.as_str()) {
                continue;
            }
            self.registry.push_manifest(repo, &merged, tag).await?;
            // Read back: another writer in between means merging again.
            if self.registry.resolve(repo, tag).await?.as_deref() == Some(&merged.digest) {
                return Ok(());
            }
        }
        Err(AttachError::Raced {
            tag: tag.to_owned(),
        })
    }

    /// A tree head covering `applied`: the record and the attestation both
    /// name one.
    async fn covering(&self, applied: &AuditEntry) -> Result<SignedHead, AttachError> {
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
        Ok(head)
    }

    /// Makes the record and pushes its blobs and artifact manifest (by
    /// digest: the index names it).
    async fn push_artifact(
        &self,
        repo: &Repository,
        p: &Promotion,
        applied: &AuditEntry,
    ) -> Result<Manifest, AttachError> {
        let head = self.covering(applied).await?;
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

/// The tag several writers share, and how prodgate's entries are found in
/// it and merged into it.
enum Shared {
    /// The referrers index `sha256-<hex>`.
    Index,
    /// cosign's attestation manifest `sha256-<hex>.att`.
    Attestations,
}

impl Shared {
    async fn read(
        &self,
        registry: &dyn Registry,
        repo: &Repository,
        tag: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        match self {
            Shared::Index => registry.fetch_index(repo, tag).await,
            Shared::Attestations => registry.fetch(repo, tag).await,
        }
    }

    /// Whether `current` (absent: the tag does not exist) lists promotion
    /// `id`'s entry.
    fn lists(
        &self,
        current: Option<&Manifest>,
        tag: &str,
        id: PromotionId,
    ) -> Result<bool, AttachError> {
        let Some(m) = current else {
            return Ok(false);
        };
        let id = id.to_string();
        match self {
            Shared::Index => record::lists(&m.bytes, &id).map_err(|source| AttachError::Index {
                tag: tag.to_owned(),
                source,
            }),
            Shared::Attestations => {
                attestation::lists(&m.bytes, &id).map_err(|source| AttachError::Attestations {
                    tag: tag.to_owned(),
                    source,
                })
            }
        }
    }
}

/// The VSA's extra fields, which the spec lets verifiers ignore: what
/// prodgate decided and the evidence an auditor follows back to the log.
fn vsa_extra(
    p: &Promotion,
    applied: &AuditEntry,
    checks: &[CheckReport],
    head: &SignedHead,
) -> serde_json::Map<String, Value> {
    let approvals: Vec<Value> = p
        .approvals
        .iter()
        .map(|a| {
            json!({
                "principal": a.approver,
                "groups": a.groups,
                "time": a.time.rfc3339(Precision::Nanos),
            })
        })
        .collect();
    let checks: Vec<Value> = checks
        .iter()
        .map(|c| {
            json!({
                "check": c.check,
                "status": c.status.name(),
                "reportedBy": c.reported_by,
                "time": c.time.rfc3339(Precision::Nanos),
                "detailsUrl": c.details_url,
            })
        })
        .collect();
    let extra = json!({
        "promotionId": p.id.to_string(),
        "targetTag": p.target_tag,
        "requestedBy": p.requested_by,
        "approvals": approvals,
        "breakGlass": p.break_glass,
        "checks": checks,
        "rollback": p.rollback,
        "previousDigest": p.previous_digest,
        "applied": {
            "sequence": applied.sequence,
            "hash": hex::encode(applied.hash),
            "time": applied.time.rfc3339(Precision::Nanos),
        },
        "checkpoint": {
            "size": head.size,
            "rootHash": hex::encode(head.root),
            "note": head.note,
        },
    });
    match extra {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}
