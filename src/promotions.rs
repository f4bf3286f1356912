//! The use cases behind the RPCs: each takes validated input and the caller,
//! asks the registry what it must, and hands the state change to the store
//! (a write job on a unit of work), where the domain state machine decides
//! it. Time comes from the injected clock; filters and pages are this
//! layer's vocabulary (re-exported from the storage port).

use crate::apply::Progress;
use crate::clock::Clock;
use crate::config::{Config, Live};
use crate::domain::audit::{AuditEntry, Verification};
use crate::domain::drift::TagRecord;
use crate::domain::gates;
use crate::domain::machine::{self, NewPromotion, Outcome};
use crate::domain::model::{
    CheckReport, CheckStatus, POLICY_ATTRIBUTE, Precision, Promotion, PromotionId,
    SIGNATURE_ATTRIBUTE, State, Time, may_record_check, policy_changed,
};
use crate::domain::names::{Repository, Source};
use crate::domain::policy::{EnvironmentPolicy, Principal};
use crate::domain::signature::{self, Verdict};
use crate::error::Error;
use crate::registry::{Manifest, Registry};
use crate::store::{Change, PageRequest, Store, StoredManifest, StoredPolicy, UnitOfWork};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub use crate::store::{HistoryFilter, ListFilter};

/// One page of a listing and the cursor to continue after (`None` at the
/// end): an id or sequence, or for checks a check name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T, K = u64> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

/// A ListPromotions call, validated.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub after: Option<PromotionId>,
    pub limit: usize,
    pub newest_first: bool,
    /// Only pending promotions this principal may approve now.
    pub awaiting: Option<Principal>,
    /// Only promotions of repositories this `[[project]]` governs now.
    pub project: Option<String>,
}

/// What the gates need that takes I/O, read before the write job (the job
/// itself runs on the writer and only reads the store).
#[derive(Debug, Clone, Default)]
struct GateInputs {
    checks: Vec<CheckReport>,
    soak_since: Option<Time>,
    /// Read when the policy names `signature_keys`.
    signature: Option<Verdict>,
}

/// Refuses break-glass from anyone the policy's `break_glass` does not
/// name, and without a reason (or comment) saying why.
fn check_break_glass(
    used: bool,
    who: &Principal,
    policy: &EnvironmentPolicy,
    why: &str,
    field: &'static str,
) -> Result<(), Error> {
    if !used {
        return Ok(());
    }
    if !policy.may_break_glass(who) {
        return Err(Error::NotBreakGlass {
            principal: who.name.clone(),
            environment: policy.name.clone(),
            allowed: crate::domain::policy::describe(&policy.break_glass),
        });
    }
    if why.trim().is_empty() {
        return Err(Error::InvalidArgument {
            field,
            message: "is required with break_glass: say why the window or soak must be overridden"
                .into(),
        });
    }
    Ok(())
}

/// Marks the outcome of a permitted break-glass call: the promotion, and
/// its entry's attributes `break_glass` and `overridden` (the gates it
/// overrode, if it completed the promotion).
fn mark_break_glass(o: &mut Outcome, report: Option<&gates::GateReport>) {
    o.promotion.break_glass = true;
    if let Some(e) = &mut o.event {
        e.attributes.insert("break_glass".into(), "true".into());
        if let Some(overridden) = report.and_then(gates::GateReport::overridden) {
            e.attributes.insert("overridden".into(), overridden);
        }
    }
}

/// Evaluates every gate for `o`, the promotion as the call would leave it,
/// when it would become APPROVED; refuses with all blockers named. When
/// they pass, stamps the policy version that allowed it on the promotion
/// and on its entry (attribute `policy`). Returns the report it passed
/// (None when nothing was evaluated).
fn enforce_gates(
    config: &Config,
    o: &mut Outcome,
    policy: &EnvironmentPolicy,
    inputs: &GateInputs,
    now: Time,
    break_glass: bool,
) -> Result<Option<gates::GateReport>, Error> {
    if o.promotion.state != State::Approved {
        return Ok(None);
    }
    let report = evaluate(config, &o.promotion, policy, inputs, now, break_glass);
    if let Some(m) = report.blocking_message() {
        return Err(Error::GatesBlocked(m));
    }
    o.promotion.policy_digest = config.policy.digest.clone();
    if let Some(e) = &mut o.event {
        e.attributes
            .insert(POLICY_ATTRIBUTE.to_owned(), config.policy.digest.clone());
        // The gate passed, so with keys configured a signature verified.
        if let (false, Some(Verdict::Verified { fingerprint, .. })) =
            (policy.signature_keys.is_empty(), &inputs.signature)
        {
            e.attributes
                .insert(SIGNATURE_ATTRIBUTE.to_owned(), fingerprint.clone());
        }
    }
    Ok(Some(report))
}

/// Every gate of `p`'s policy, from the facts gathered for it: the one
/// evaluation behind both enforcement and EvaluateGates.
fn evaluate(
    config: &Config,
    p: &Promotion,
    policy: &EnvironmentPolicy,
    inputs: &GateInputs,
    now: Time,
    break_glass: bool,
) -> gates::GateReport {
    let approvers = principals_of(config, p);
    gates::evaluate(&gates::Facts {
        promotion: p,
        policy,
        now,
        rollback: p.rollback,
        approvers: &approvers,
        checks: &inputs.checks,
        // Checked when the promotion was requested (its digest was pinned
        // from what the prerequisite's tag carried then); not read again:
        // what was approved is that digest, whatever the tag does since.
        prerequisite: None,
        soak_since: inputs.soak_since,
        break_glass,
        signature: inputs.signature.as_ref(),
    })
}

/// The approvers of `p` with their groups as the configuration knows them.
fn principals_of(config: &Config, p: &Promotion) -> Vec<Principal> {
    p.approvals
        .iter()
        .filter_map(|a| config.principals.iter().find(|c| c.name == a.approver))
        .map(|c| Principal::new(c.name.clone(), c.groups.clone()))
        .collect()
}

/// The effective policy of `environment` for `repository`: its project's,
/// or the top-level one (see `Config::governing`).
fn policy_of<'c>(
    config: &'c Config,
    repository: &str,
    environment: &str,
) -> Result<&'c EnvironmentPolicy, Error> {
    config
        .governing(repository)
        .environment(environment)
        .ok_or_else(|| Error::InvalidArgument {
            field: "environment",
            message: format!(
                "no environment named {:?} is configured (known: {})",
                crate::domain::names::echo(environment),
                config
                    .environments
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// A validated ReportCheck.
#[derive(Debug, Clone)]
pub struct CheckInput {
    pub repository: Repository,
    pub digest: String,
    pub check: String,
    pub status: CheckStatus,
    pub details_url: String,
    pub comment: String,
}

/// A History call, validated.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub filter: HistoryFilter,
    pub after: Option<u64>,
    pub limit: usize,
    pub newest_first: bool,
}

/// A validated RequestPromotion.
#[derive(Debug, Clone)]
pub struct RequestInput {
    pub repository: Repository,
    pub source: Source,
    pub environment: String,
    pub reason: String,
    pub request_id: String,
    /// Override the window and soak gates (the policy's `break_glass` only).
    pub break_glass: bool,
    /// A rollback (from [`Promotions::rollback`]): no prerequisite check,
    /// `rollback_approvals` instead of `required_approvals`.
    pub rollback: bool,
}

/// A validated Rollback.
#[derive(Debug, Clone)]
pub struct RollbackInput {
    pub repository: Repository,
    pub environment: String,
    /// `None`: the digest the tag carried before its current one.
    pub digest: Option<String>,
    pub reason: String,
    pub request_id: String,
    pub break_glass: bool,
}

/// What an approver-facing call does to a pending promotion.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Approve { break_glass: bool },
    Reject,
    Cancel,
}

#[derive(Clone)]
pub struct Promotions {
    /// The running config; each call takes one snapshot and keeps it.
    config: Live,
    store: Store,
    registry: Arc<dyn Registry>,
    clock: Arc<dyn Clock>,
    /// The apply worker's retry state, shown on APPROVED promotions.
    progress: Progress,
    /// Cancelled when the server starts draining: open watches end then.
    draining: CancellationToken,
    /// Open watches per principal, bounded by `max_watches_per_principal`.
    watches: Arc<Watches>,
}

/// How many WatchPromotion streams each principal has open. Each holds a
/// task, two subscriptions and a buffer on the server; without a bound one
/// caller could open them until memory runs out.
#[derive(Default)]
struct Watches {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open watch, counted until dropped (when its task ends).
struct WatchSlot {
    watches: Arc<Watches>,
    principal: String,
}

impl Watches {
    fn open(self: &Arc<Self>, principal: &str, limit: usize) -> Result<WatchSlot, Error> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(principal.to_owned()).or_default();
        if *n >= limit {
            return Err(Error::TooManyWatches {
                principal: principal.to_owned(),
                limit,
            });
        }
        *n += 1;
        Ok(WatchSlot {
            watches: self.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.watches.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

impl Promotions {
    pub fn new(
        config: Live,
        store: Store,
        registry: Arc<dyn Registry>,
        clock: Arc<dyn Clock>,
        progress: Progress,
        draining: CancellationToken,
    ) -> Self {
        Self {
            config,
            store,
            registry,
            clock,
            progress,
            draining,
            watches: Arc::default(),
        }
    }

    pub async fn request(&self, who: Principal, input: RequestInput) -> Result<Promotion, Error> {
        let config = self.config.get();
        self.request_under(config, who, input).await
    }

    async fn request_under(
        &self,
        config: Arc<Config>,
        who: Principal,
        input: RequestInput,
    ) -> Result<Promotion, Error> {
        let repository = input.repository.to_string();
        let governance = config.governing(&repository);
        if governance.project().is_none()
            && config.unclaimed_repositories == crate::config::Unclaimed::Refuse
        {
            return Err(Error::Unclaimed {
                repository,
                patterns: config.project_patterns(),
            });
        }
        if !governance.may_request(&who) {
            return Err(Error::NotRequester {
                principal: who.name,
                repository,
                project: governance.project_name().to_owned(),
                requesters: crate::config::describe(governance.requesters().unwrap_or_default()),
            });
        }
        let mut policy = policy_of(&config, &repository, &input.environment)?.clone();
        if input.rollback {
            policy.required_approvals = policy.rollback_approvals;
        }
        if policy.required_approvals > 0 && input.reason.trim().is_empty() {
            return Err(Error::InvalidArgument {
                field: "reason",
                message: format!(
                    "is required for environment {}, which needs approval: say what this promotion ships and why, for the approvers and the audit log",
                    policy.name
                ),
            });
        }
        if config.registry(input.repository.host()).is_none() {
            return Err(Error::InvalidArgument {
                field: "repository",
                message: format!(
                    "registry {} is not configured; prodgate only promotes within its configured registries",
                    input.repository.host()
                ),
            });
        }
        // A retried request answers from the record, whatever the tags do now.
        if !input.request_id.is_empty()
            && let Some(existing) = self
                .store
                .find_request(&who.name, &input.request_id)
                .await?
        {
            return same_request(existing, &input);
        }
        let source_ref = input.source.as_reference().to_owned();
        // Pin the manifest itself: the apply pushes these exact bytes. A digest
        // already pinned for this repository is immutable content seen there
        // before, so it needs no registry round trip; a tag always does.
        let known = match &input.source {
            Source::Digest(d) => self
                .store
                .manifest(&input.repository.to_string(), d)
                .await?
                .map(|m| Manifest {
                    digest: source_ref.clone(),
                    media_type: m.media_type,
                    bytes: m.bytes,
                }),
            Source::Tag(_) => None,
        };
        let manifest = match known {
            Some(m) => m,
            None => self
                .registry
                .fetch(&input.repository, &source_ref)
                .await?
                .ok_or_else(|| {
                    Error::SourceNotFound(format!("{}:{source_ref}", input.repository))
                })?,
        };
        let digest = manifest.digest.clone();
        // A rollback's digest passed the prerequisite when it was first
        // promoted here.
        if let Some(required) = policy.requires.as_ref().filter(|_| !input.rollback) {
            let prereq = policy_of(&config, &repository, required)?;
            // The source tag is the prerequisite's tag: the fetch just read it.
            let carried = if source_ref == prereq.tag {
                Some(digest.clone())
            } else {
                self.registry
                    .resolve(&input.repository, &prereq.tag)
                    .await?
            };
            if carried.as_deref() != Some(digest.as_str()) {
                return Err(Error::PrerequisiteNotMet {
                    repository: input.repository.to_string(),
                    message: format!(
                        "environment {} requires {}: {digest} must first be promoted there, but {}:{} {}",
                        policy.name,
                        prereq.name,
                        input.repository,
                        prereq.tag,
                        carried.map_or_else(
                            || "does not exist".to_owned(),
                            |d| format!("points to {d}")
                        ),
                    ),
                });
            }
        }
        let pinned = StoredManifest {
            media_type: manifest.media_type,
            bytes: manifest.bytes,
        };
        let break_glass = input.break_glass;
        check_break_glass(break_glass, &who, &policy, &input.reason, "reason")?;
        let inputs = self
            .gate_inputs(&repository, &policy, &manifest.digest)
            .await?;
        let mut changes = self.store.subscribe();
        let job_config = config.clone();
        let new = NewPromotion {
            project: governance.project_name().to_owned(),
            repository: input.repository.to_string(),
            environment: input.environment.clone(),
            source: source_ref,
            digest,
            reason: input.reason.clone(),
            request_id: input.request_id.clone(),
            rollback: input.rollback,
        };
        let created = self
            .store
            .write(move |tx: &mut dyn UnitOfWork| {
                if !new.request_id.is_empty()
                    && let Some(id) = tx.find_request(&who.name, &new.request_id)?
                {
                    let existing = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
                    return same_request(existing, &input);
                }
                let now = tx.now();
                let mut o = machine::request(tx.next_id(), new, &who, &policy, now);
                let report =
                    enforce_gates(&job_config, &mut o, &policy, &inputs, now, break_glass)?;
                if break_glass {
                    mark_break_glass(&mut o, report.as_ref());
                }
                tx.put_manifest(&o.promotion.repository, &o.promotion.digest, &pinned)?;
                tx.commit(&o.promotion, o.event)?;
                Ok(o.promotion)
            })
            .await?;
        Ok(self.settled(&config, created, &mut changes).await)
    }

    /// Opens a promotion back to a digest prodgate applied to the
    /// environment before (default: the one before the current), with the
    /// environment's `rollback_approvals`.
    pub async fn rollback(&self, who: Principal, input: RollbackInput) -> Result<Promotion, Error> {
        let repository = input.repository.to_string();
        if input.reason.trim().is_empty() {
            return Err(Error::InvalidArgument {
                field: "reason",
                message: "is required for a rollback: say why the tag goes back".into(),
            });
        }
        let config = self.config.get();
        policy_of(&config, &repository, &input.environment)?;
        let refused = |why: String| {
            Err(Error::RollbackRefused {
                repository: repository.clone(),
                environment: input.environment.clone(),
                why,
            })
        };
        let Some(current) = self
            .store
            .deployed_at(&repository, &input.environment, None)
            .await?
        else {
            return refused("prodgate has not moved its tag yet".into());
        };
        let target = match &input.digest {
            None if current.event.previous_digest.is_empty() => {
                return refused(format!(
                    "its tag carried nothing before {}; name a digest",
                    current.event.digest
                ));
            }
            None => current.event.previous_digest.clone(),
            Some(d) if *d == current.event.digest => {
                return refused(format!("its tag already carries {d}"));
            }
            Some(d) => {
                if !self.was_applied(&repository, &input.environment, d).await? {
                    return refused(format!(
                        "prodgate never moved its tag to {d}; a rollback goes back to a digest it carried"
                    ));
                }
                d.clone()
            }
        };
        let request = RequestInput {
            repository: input.repository,
            source: Source::Digest(target),
            environment: input.environment,
            reason: input.reason,
            request_id: input.request_id,
            break_glass: input.break_glass,
            rollback: true,
        };
        self.request_under(config, who, request).await
    }

    /// Whether an APPLIED entry moved `environment`'s tag of `repository` to
    /// `digest` (walks that tag's history, newest first).
    async fn was_applied(
        &self,
        repository: &str,
        environment: &str,
        digest: &str,
    ) -> Result<bool, Error> {
        let filter = HistoryFilter {
            repository: Some(repository.to_owned()),
            environment: Some(environment.to_owned()),
            ..Default::default()
        };
        let mut after = None;
        loop {
            let page = self
                .store
                .history(
                    filter.clone(),
                    PageRequest {
                        after,
                        limit: 1000,
                        newest_first: true,
                    },
                )
                .await?;
            if page.items.iter().any(|e| {
                e.event.action == crate::domain::model::Action::Applied && e.event.digest == digest
            }) {
                return Ok(true);
            }
            match (page.more, page.items.last()) {
                (true, Some(last)) => after = Some(last.sequence),
                _ => return Ok(false),
            }
        }
    }

    pub async fn approve(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
        break_glass: bool,
    ) -> Result<Promotion, Error> {
        let mut changes = self.store.subscribe();
        let config = self.config.get();
        let p = self
            .decide(
                config.clone(),
                Decision::Approve { break_glass },
                who,
                id,
                comment,
            )
            .await?;
        Ok(self.settled(&config, p, &mut changes).await)
    }

    pub async fn reject(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        self.decide(self.config.get(), Decision::Reject, who, id, comment)
            .await
    }

    pub async fn cancel(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        self.decide(self.config.get(), Decision::Cancel, who, id, comment)
            .await
    }

    async fn decide(
        &self,
        config: Arc<Config>,
        decision: Decision,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        // The gates' inputs for the approval that would complete it; read
        // for any pending approval, since which one completes it is decided
        // on the writer.
        let inputs = match decision {
            Decision::Approve { .. } => match self.store.get(id).await? {
                Some(p) if p.state == State::PendingApproval => {
                    match config.governing(&p.repository).environment(&p.environment) {
                        Some(policy) => {
                            let policy = policy.clone();
                            self.gate_inputs(&p.repository, &policy, &p.digest).await?
                        }
                        None => GateInputs::default(),
                    }
                }
                _ => GateInputs::default(),
            },
            Decision::Reject | Decision::Cancel => GateInputs::default(),
        };
        self.store
            .write(move |tx: &mut dyn UnitOfWork| {
                let p = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
                let now = tx.now();
                expire_due(tx, &p, now)?;
                let governing = config.governing(&p.repository);
                let policy = governing.environment(&p.environment).ok_or_else(|| {
                    Error::Domain(machine::DomainError::NotApprover {
                        principal: who.name.clone(),
                        environment: p.environment.clone(),
                        governed: " (it is no longer configured)".into(),
                    })
                })?;
                let o: Outcome = match decision {
                    Decision::Approve { break_glass } => {
                        check_break_glass(break_glass, &who, policy, &comment, "comment")?;
                        if machine::may_approve(&p, &who, policy, now) {
                            let approvers = principals_of(&config, &p);
                            gates::check_last_slot(&p, policy, &approvers, &who)?;
                        }
                        let mut o = machine::approve(&p, &who, policy, &comment, now)?;
                        let report =
                            enforce_gates(&config, &mut o, policy, &inputs, now, break_glass)?;
                        if break_glass {
                            mark_break_glass(&mut o, report.as_ref());
                        }
                        o
                    }
                    Decision::Reject => machine::reject(&p, &who, policy, &comment, now)?,
                    Decision::Cancel => machine::cancel(&p, &who, policy, &comment, now)?,
                };
                // A repeated approval has no event; commit writes nothing then.
                tx.commit(&o.promotion, o.event)?;
                Ok(o.promotion)
            })
            .await
    }

    /// Reads what the checks, soak and signature gates of `policy` need for
    /// `digest` (nothing when they are not configured).
    async fn gate_inputs(
        &self,
        repository: &str,
        policy: &EnvironmentPolicy,
        digest: &str,
    ) -> Result<GateInputs, Error> {
        let checks = if policy.required_checks.is_empty() {
            Vec::new()
        } else {
            self.store.checks(repository, digest).await?
        };
        let soak_since = match (&policy.min_soak, &policy.requires) {
            (Some(_), Some(requires)) => self
                .store
                .deployed_at(repository, requires, None)
                .await?
                .filter(|e| e.event.digest == digest)
                .map(|e| e.time),
            _ => None,
        };
        let signature = if policy.signature_keys.is_empty() {
            None
        } else {
            let repo = Repository::parse(repository).map_err(|e| {
                Error::Internal(format!(
                    "stored repository {repository:?} does not parse: {e}"
                ))
            })?;
            let found = crate::registry::signatures::find(&*self.registry, &repo, digest).await?;
            Some(signature::verify(digest, &policy.signature_keys, &found))
        };
        Ok(GateInputs {
            checks,
            soak_since,
            signature,
        })
    }

    /// Waits up to `apply_wait` for an APPROVED promotion's tag move, so the
    /// common case answers PROMOTED; a slow registry answers APPROVED.
    async fn settled(
        &self,
        config: &Config,
        p: Promotion,
        changes: &mut broadcast::Receiver<Change>,
    ) -> Promotion {
        if p.state != State::Approved || config.apply_wait.is_zero() {
            return p;
        }
        let id = p.id;
        let wait = async {
            loop {
                match changes.recv().await {
                    Ok(c) if c.promotion.id == id && c.promotion.state.is_terminal() => {
                        return Some(c.promotion);
                    }
                    Ok(_) => {}
                    // Missed messages: the record itself is the truth.
                    Err(broadcast::error::RecvError::Lagged(_)) => return None,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        match tokio::time::timeout(config.apply_wait, wait).await {
            Ok(Some(done)) => done,
            _ => self.get(id).await.unwrap_or(p),
        }
    }

    /// The promotion, recording its expiry first if it is overdue, with the
    /// apply worker's retry state while it is APPROVED.
    pub async fn get(&self, id: PromotionId) -> Result<Promotion, Error> {
        let mut p = self
            .store
            .get(id)
            .await?
            .ok_or(Error::PromotionNotFound(id))?;
        if machine::expire_if_due(&p, self.clock.now()).is_some() {
            return self.expire(id).await;
        }
        self.progress.overlay(&mut p);
        Ok(p)
    }

    /// Records the expiry of `id` if it is (still) overdue; returns the record.
    pub async fn expire(&self, id: PromotionId) -> Result<Promotion, Error> {
        self.store
            .write(move |tx: &mut dyn UnitOfWork| {
                let p = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
                let now = tx.now();
                match machine::expire_if_due(&p, now) {
                    Some(o) => {
                        tx.commit(&o.promotion, o.event)?;
                        Ok(o.promotion)
                    }
                    None => Ok(p),
                }
            })
            .await
    }

    /// Records the expiry of every overdue pending promotion.
    pub async fn sweep_expired(&self) -> Result<usize, Error> {
        let pending = self.store.in_state(State::PendingApproval).await?;
        let now = self.clock.now();
        let mut n = 0;
        for p in pending.into_iter().filter(|p| p.expires_at <= now) {
            if self.expire(p.id).await?.state == State::Expired {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A page of promotions. With `awaiting`, only pending promotions that
    /// principal may approve now; with `project`, only those of
    /// repositories that project governs. Either way the walk goes on past
    /// those left out, so a page is short only at the end, and the cursor is
    /// the last promotion examined, not the last returned.
    pub async fn list(&self, q: ListQuery) -> Result<Listing<Promotion>, Error> {
        let config = self.config.get();
        if let Some(name) = &q.project
            && !config.projects.iter().any(|p| &p.name == name)
        {
            return Err(Error::InvalidArgument {
                field: "project",
                message: unknown_project(name, &config.projects),
            });
        }
        if q.awaiting.is_none() && q.project.is_none() {
            let page = self
                .store
                .list(
                    q.filter,
                    PageRequest {
                        after: q.after,
                        limit: q.limit,
                        newest_first: q.newest_first,
                    },
                )
                .await?;
            let next = page.items.last().map(|p| p.id).filter(|_| page.more);
            let mut items = page.items;
            for p in &mut items {
                self.progress.overlay(p);
            }
            return Ok(Listing { items, next });
        }
        if q.awaiting.is_some() && q.filter.state.is_some_and(|s| s != State::PendingApproval) {
            return Err(Error::InvalidArgument {
                field: "awaiting_me",
                message: "lists PENDING_APPROVAL promotions only; leave state unset".into(),
            });
        }
        let filter = match q.awaiting {
            Some(_) => ListFilter {
                state: Some(State::PendingApproval),
                ..q.filter
            },
            None => q.filter,
        };
        let now = self.clock.now();
        let mut items = Vec::new();
        let mut after = q.after;
        loop {
            let page = self
                .store
                .list(
                    filter.clone(),
                    PageRequest {
                        after,
                        limit: q.limit.max(1),
                        newest_first: q.newest_first,
                    },
                )
                .await?;
            for mut p in page.items {
                after = Some(p.id);
                let governance = config.governing(&p.repository);
                let in_project = q
                    .project
                    .as_ref()
                    .is_none_or(|name| governance.project_name() == name);
                let may = q.awaiting.as_ref().is_none_or(|who| {
                    governance
                        .environment(&p.environment)
                        .is_some_and(|policy| machine::may_approve(&p, who, policy, now))
                });
                if in_project && may {
                    self.progress.overlay(&mut p);
                    items.push(p);
                    if items.len() == q.limit {
                        return Ok(Listing { items, next: after });
                    }
                }
            }
            if !page.more {
                return Ok(Listing { items, next: None });
            }
        }
    }

    pub async fn history(&self, q: HistoryQuery) -> Result<Listing<AuditEntry>, Error> {
        let page = self
            .store
            .history(
                q.filter,
                PageRequest {
                    after: q.after,
                    limit: q.limit,
                    newest_first: q.newest_first,
                },
            )
            .await?;
        let next = page.items.last().map(|e| e.sequence).filter(|_| page.more);
        Ok(Listing {
            items: page.items,
            next,
        })
    }

    /// The current state of `id` now, then every change until a terminal
    /// state or until the receiver is dropped. When the server shuts down
    /// first, the last item is [`Error::ShuttingDown`]: watch again elsewhere.
    pub async fn watch(
        &self,
        who: &Principal,
        id: PromotionId,
    ) -> Result<mpsc::Receiver<Result<Promotion, Error>>, Error> {
        let limit = self.config.get().max_watches_per_principal;
        let slot = self.watches.open(&who.name, limit)?;
        // Subscribe before reading, so no change between the two is missed.
        let mut changes = self.store.subscribe();
        let mut attempts = self.progress.subscribe();
        let first = self.get(id).await?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        let draining = self.draining.clone();
        tokio::spawn(async move {
            // Counted while this task runs: it ends when the stream closes.
            let _slot = slot;
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !last.state.is_terminal() {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    _ = draining.cancelled() => {
                        let _ = tx.send(Err(Error::ShuttingDown)).await;
                        return;
                    }
                    change = changes.recv() => match change {
                        Ok(c) if c.promotion.id == id => {
                            let mut p = c.promotion;
                            this.progress.overlay(&mut p);
                            p
                        }
                        Ok(_) => continue,
                        // Missed changes: the record is the truth.
                        Err(broadcast::error::RecvError::Lagged(_)) => match this.get(id).await {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // A retry of the tag move: show its error and count.
                    attempt = attempts.recv() => match attempt {
                        Ok(n) if n != id => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            match this.get(id).await {
                                Ok(p) => p,
                                Err(_) => return,
                            }
                        }
                        // The worker's progress lives as long as `this`.
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if next != last {
                    last = next;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// The APPLIED entry behind what `environment`'s tag carried at `at`,
    /// and the drift watch's entries since.
    pub async fn deployed(
        &self,
        repository: &Repository,
        environment: &str,
        at: Option<Time>,
    ) -> Result<TagRecord, Error> {
        policy_of(&self.config.get(), &repository.to_string(), environment)?;
        self.store
            .tag_record(&repository.to_string(), environment, at)
            .await?
            .ok_or_else(|| Error::NothingDeployed {
                repository: repository.to_string(),
                environment: environment.to_owned(),
                at: at.map_or_else(|| "now".to_owned(), |t| t.rfc3339(Precision::Nanos)),
            })
    }

    /// Records a check result for a digest (its latest report per check
    /// counts for the checks gate). Only check reporters may.
    pub async fn report_check(
        &self,
        who: Principal,
        input: CheckInput,
    ) -> Result<CheckReport, Error> {
        let repository = input.repository.to_string();
        if !self.config.get().governing(&repository).may_report(&who) {
            return Err(Error::NotCheckReporter {
                principal: who.name,
                repository,
            });
        }
        let mut report = CheckReport {
            repository,
            digest: input.digest,
            check: input.check,
            status: input.status,
            reported_by: who.name,
            time: Time::ZERO,
            details_url: input.details_url,
            comment: input.comment,
        };
        let event = report.event();
        let limit = self.config.get().max_checks_per_digest;
        let (repository, digest, check) = (
            report.repository.clone(),
            report.digest.clone(),
            report.check.clone(),
        );
        let entry = self
            .store
            .write(move |tx: &mut dyn UnitOfWork| {
                // Counted in the write job, which runs alone: two new names
                // reported at once cannot both take the last place.
                let names = tx.check_names(&repository, &digest, &check, limit)?;
                if !may_record_check(names.known, names.distinct, limit) {
                    return Err(Error::TooManyChecks {
                        repository,
                        digest,
                        limit,
                    });
                }
                let now = tx.now();
                Ok::<_, Error>(tx.record(event, now)?)
            })
            .await?;
        report.time = entry.time;
        Ok(report)
    }

    /// Every gate configured for promotion `id`, evaluated now as it stands
    /// (the approvals gate says how many are missing). Reads only.
    pub async fn evaluate_gates(&self, id: PromotionId) -> Result<gates::GateReport, Error> {
        let p = self.get(id).await?;
        let config = self.config.get();
        let governing = config.governing(&p.repository);
        let policy = governing
            .environment(&p.environment)
            .ok_or_else(|| Error::InvalidArgument {
                field: "promotion_id",
                message: format!(
                    "promotion {id}'s environment {} is no longer configured",
                    p.environment
                ),
            })?
            .clone();
        let inputs = self.gate_inputs(&p.repository, &policy, &p.digest).await?;
        Ok(evaluate(
            &config,
            &p,
            &policy,
            &inputs,
            self.clock.now(),
            false,
        ))
    }

    /// Records the running policy version (a POLICY_CHANGED entry, actor
    /// `prodgate`) unless it is the one the log last recorded; at start.
    pub async fn record_policy(&self) -> Result<Option<AuditEntry>, Error> {
        self.record_version(&self.config.get()).await
    }

    /// Runs `next` from now on, after recording its policy version if it
    /// differs from the last recorded one, so that nothing is ever decided
    /// under a version the log does not hold. If recording fails the
    /// running config stays. Calls already under way finish under the
    /// version they started with (their entries name it).
    pub async fn adopt(&self, next: Config) -> Result<Option<AuditEntry>, Error> {
        let next = Arc::new(next);
        let entry = self.record_version(&next).await?;
        self.config.replace(next);
        Ok(entry)
    }

    async fn record_version(&self, config: &Config) -> Result<Option<AuditEntry>, Error> {
        let digest = config.policy.digest.clone();
        let json = config.policy.canonical_json.clone();
        self.store
            .write(move |tx: &mut dyn UnitOfWork| {
                if tx.latest_policy()?.as_deref() == Some(digest.as_str()) {
                    return Ok(None);
                }
                tx.put_policy(&digest, &json)?;
                let now = tx.now();
                Ok::<_, Error>(Some(tx.record(policy_changed(&digest), now)?))
            })
            .await
    }

    /// A recorded policy version; `None`: the running one.
    pub async fn policy(&self, digest: Option<&str>) -> Result<StoredPolicy, Error> {
        let running = self.config.get();
        let digest = digest.unwrap_or(&running.policy.digest);
        self.store
            .policy(digest)
            .await?
            .ok_or_else(|| Error::PolicyNotFound(digest.to_owned()))
    }

    /// A page of the latest report of each check for a digest, by check
    /// name, after the name `after`.
    pub async fn list_checks(
        &self,
        repository: &Repository,
        digest: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Listing<CheckReport, String>, Error> {
        let page = self
            .store
            .checks_page(&repository.to_string(), digest, after, limit)
            .await?;
        let next = page
            .items
            .last()
            .map(|c| c.check.clone())
            .filter(|_| page.more);
        Ok(Listing {
            items: page.items,
            next,
        })
    }

    pub async fn verify(&self) -> Result<Verification, Error> {
        Ok(self.store.verify().await?)
    }
}

/// Writes the EXPIRED entry of an overdue promotion and refuses the call.
fn expire_due(tx: &mut dyn UnitOfWork, p: &Promotion, now: Time) -> Result<(), Error> {
    match machine::expire_if_due(p, now) {
        Some(o) => {
            tx.commit(&o.promotion, o.event)?;
            Err(Error::Expired {
                id: p.id,
                expires_at: p.expires_at.rfc3339(Precision::Nanos),
            })
        }
        None => Ok(()),
    }
}

/// An idempotent retry returns the original; a reused key with other
/// parameters is refused.
fn same_request(existing: Promotion, input: &RequestInput) -> Result<Promotion, Error> {
    let same = existing.repository == input.repository.to_string()
        && existing.source == input.source.as_reference()
        && existing.environment == input.environment
        && existing.reason == input.reason;
    if same {
        Ok(existing)
    } else {
        Err(Error::RequestIdReused {
            request_id: input.request_id.clone(),
            promotion_id: existing.id,
        })
    }
}

/// The INVALID_ARGUMENT message for a project name no `[[project]]` has:
/// the names that exist, at most a screenful of them.
fn unknown_project(name: &str, projects: &[crate::config::ProjectConfig]) -> String {
    const SHOWN: usize = 20;
    let names: Vec<&str> = projects
        .iter()
        .take(SHOWN)
        .map(|p| p.name.as_str())
        .collect();
    match projects.len() {
        0 => format!("no project {name:?}: the config has no [[project]]"),
        n if n > SHOWN => format!(
            "no project {name:?}; projects: {}, … ({} more)",
            names.join(", "),
            n - SHOWN
        ),
        _ => format!("no project {name:?}; projects: {}", names.join(", ")),
    }
}

#[cfg(test)]
mod tests;
