//! The use cases behind the RPCs. Each gathers the facts a decision needs
//! by I/O ([`facts`]), then runs a write job on a unit of work in which
//! `domain::decision` decides and the store commits the result with its
//! audit entries. Time comes from the injected clock; filters and pages are
//! this layer's vocabulary (re-exported from the storage port).
//!
//! - [`commands`]: request, rollback, approve, reject, cancel, re-evaluate,
//!   expire, report a check: every call that writes;
//! - [`facts`]: what the store and the registry say, read before a write;
//! - [`queries`]: reads (get, list, history, gates, checks, policy);
//! - [`watch`]: WatchPromotion streams and waiting for a tag move;
//! - [`policy`]: recording the policy version in force;
//! - [`waiting`]: the leader's task that moves WAITING promotions on;
//! - [`releases`]: several promotions requested and decided as one.

mod commands;
mod facts;
mod policy;
mod queries;
mod releases;
pub mod waiting;
mod watch;

use crate::apply::Progress;
use crate::clock::Clock;
use crate::config::{Config, Live};
use crate::domain::model::{CheckStatus, PromotionId};
use crate::domain::names::{Repository, Source};
use crate::domain::policy::{EnvironmentPolicy, Principal};
use crate::error::Error;
use crate::registry::Registry;
use crate::store::Store;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use crate::store::{HistoryFilter, ListFilter};
pub use releases::ReleaseInput;
use watch::Watches;

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
    /// Only the promotion this principal (by name) requested with this
    /// idempotency key, if any: (principal, key).
    pub request: Option<(String, String)>,
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

/// Every gate as it stands, and what it was evaluated under
/// (EvaluateGates' answer).
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub report: crate::domain::gates::GateReport,
    /// The `[[project]]` governing the repository now ("" for the
    /// top-level defaults).
    pub project: String,
    /// The digest of the policy version the gates were evaluated under.
    pub policy_digest: String,
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
    /// Counts the configurations adopted (reloads), so the waiting task
    /// looks at WAITING promotions again under the new policy.
    reloaded: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Promotions {
    /// The registry the use cases read: the console describes images
    /// (manifest and config) through it, reading only.
    pub fn registry(&self) -> Arc<dyn Registry> {
        self.registry.clone()
    }

    /// Changes once per adopted configuration.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

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
            reloaded: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
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
        .ok_or_else(|| Error::UnknownEnvironment {
            name: crate::domain::names::echo(environment),
            known: config
                .environments
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
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
