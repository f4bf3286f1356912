//! The drift watch: every `drift_check_interval` it reads each tag prodgate
//! moved, and when the registry shows another digest there than the one
//! prodgate last put (and no move of that tag is in flight) it records
//! DRIFT_DETECTED, once per distinct observed digest; with the environment's
//! `restore_on_drift` it pushes the approved manifest back and records
//! DRIFT_RESTORED. What to do is [`crate::domain::drift::decide`]; this
//! module gathers its facts and carries it out.
//!
//! Each tag is checked under its [`TagLocks`] lock, which the apply lanes
//! hold around a move and its record: the audit log, the open promotions and
//! the registry then cannot change under the check because of prodgate
//! itself, and a restore never lands between a promotion's push and its
//! record. The first check runs one interval after the start. On shutdown
//! the watch finishes the tag it is checking (a safe point), so a restore
//! is not left without its entry.

use crate::apply::{TagLocks, move_pinned};
use crate::config::Live;
use crate::domain::drift::{Decision, decide};
use crate::domain::model::{Event, State, drift_detected, drift_restored};
use crate::domain::names::Repository;
use crate::registry::{Registry, RegistryError};
use crate::store::{Store, StoreError, UnitOfWork};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why one tag could not be checked this time; the next interval tries again.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the tag: {0}")]
    Read(RegistryError),
    #[error("cannot push the approved manifest back: {0}")]
    Restore(RegistryError),
    #[error("stored repository {repository:?} is invalid: {reason}")]
    Repository { repository: String, reason: String },
}

/// What the watch needs besides the store and the registry.
pub struct Settings {
    /// Environments' `restore_on_drift`, read at every check (a reload
    /// changes it).
    pub config: Live,
    /// `drift_check_interval`.
    pub every: Duration,
    /// Shared with the apply worker.
    pub tags: TagLocks,
}

/// Checks every moved tag each interval until `stop` is cancelled.
pub async fn run(
    store: Store,
    registry: Arc<dyn Registry>,
    settings: Settings,
    stop: CancellationToken,
) {
    let watch = Watch {
        store,
        registry,
        config: settings.config,
        tags: settings.tags,
    };
    let every = settings.every;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let tags = match watch.store.moved_tags().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "drift watch: cannot list the tags prodgate moved");
                continue;
            }
        };
        for (repository, environment) in tags {
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = watch.check(&repository, &environment).await {
                tracing::warn!(%repository, %environment, error = %e, "drift watch: tag not checked");
            }
        }
    }
}

struct Watch {
    store: Store,
    registry: Arc<dyn Registry>,
    config: Live,
    tags: TagLocks,
}

impl Watch {
    /// Reads one tag and acts on what it carries.
    async fn check(&self, repository: &str, environment: &str) -> Result<(), DriftError> {
        let _tag = self.tags.lock(repository, environment).await;
        let Some(record) = self.store.tag_record(repository, environment, None).await? else {
            return Ok(());
        };
        // The tag the APPLIED promotion moved (an environment's tag may
        // have been renamed in the config since).
        let Some(applied) = self.store.get(record.applied.event.promotion_id).await? else {
            return Ok(());
        };
        let repo = Repository::parse(repository).map_err(|e| DriftError::Repository {
            repository: repository.to_owned(),
            reason: e.to_string(),
        })?;
        let tag = applied.target_tag;
        let observed = self
            .registry
            .resolve(&repo, &tag)
            .await
            .map_err(DriftError::Read)?;
        let in_flight = self
            .store
            .in_state(State::Approved)
            .await?
            .iter()
            .any(|p| p.repository == repository && p.environment == environment);
        let restore_on_drift = self
            .config
            .get()
            .governing(repository)
            .environment(environment)
            .is_some_and(|e| e.restore_on_drift);
        let expected = record.expected().to_owned();
        match decide(&record, observed.as_deref(), in_flight, restore_on_drift) {
            Decision::InPlace | Decision::InFlight => Ok(()),
            Decision::Back { from } => {
                tracing::info!(%repository, %environment, %tag, digest = %expected,
                    "drift watch: the tag carries the approved digest again");
                let mut event = drift_restored(repository, environment, &expected, &from);
                event.comment = "found the tag back on the approved digest".into();
                self.record(event).await
            }
            Decision::Drifted {
                observed,
                record,
                restore,
            } => {
                if record {
                    tracing::warn!(%repository, %environment, %tag, expected = %expected,
                        observed = %observed, "drift watch: the tag was moved outside prodgate");
                    self.record(drift_detected(
                        repository,
                        environment,
                        &observed,
                        &expected,
                    ))
                    .await?;
                }
                if !restore {
                    return Ok(());
                }
                let moved =
                    move_pinned(&self.store, self.registry.as_ref(), &repo, &expected, &tag)
                        .await
                        .map_err(DriftError::Restore)?;
                tracing::info!(%repository, %environment, %tag, digest = %expected,
                    replaced = %moved.previous_digest, "drift watch: restored the approved digest");
                self.record(drift_restored(
                    repository,
                    environment,
                    &expected,
                    &moved.previous_digest,
                ))
                .await
            }
        }
    }

    async fn record(&self, event: Event) -> Result<(), DriftError> {
        self.store
            .write(move |tx: &mut dyn UnitOfWork| {
                let now = tx.now();
                tx.record(event, now)
            })
            .await?;
        Ok(())
    }
}
