//! The worker that moves tags. It watches committed changes for APPROVED
//! promotions (and, at start-up, picks up every APPROVED promotion a previous
//! run left behind), and applies them one at a time per repository and
//! environment, in approval order. Transient registry errors are retried with
//! capped, jittered exponential backoff; permanent ones end the promotion as
//! FAILED.
//!
//! On shutdown the worker stops taking new promotions and lets each lane finish
//! the tag move it is in (a safe point), so no move is left half-recorded. A
//! crash instead leaves the promotion APPROVED; the next start applies it again,
//! which is idempotent for the registry.

use crate::domain::machine;
use crate::domain::model::{Promotion, PromotionId, State};
use crate::domain::names::Repository;
use crate::error::Error;
use crate::registry::{Manifest, Moved, Registry, RegistryError};
use crate::shutdown::signalled;
use crate::store::Store;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long shutdown waits for tag moves in progress.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Applies approved promotions until `stop` turns true (or the store closes),
/// then waits up to [`SHUTDOWN_GRACE`] for the moves in progress.
pub async fn run(store: Store, registry: Arc<dyn Registry>, mut stop: watch::Receiver<bool>) {
    // Subscribe before the scan so nothing approved in between is missed; a
    // promotion seen twice is skipped the second time by its state.
    let mut changes = store.subscribe();
    let mut lanes = Lanes {
        store: store.clone(),
        registry,
        stop: stop.clone(),
        lanes: HashMap::new(),
        tasks: JoinSet::new(),
    };
    lanes.enqueue_all_approved().await;
    loop {
        tokio::select! {
            _ = signalled(&mut stop) => break,
            change = changes.recv() => match change {
                Ok(p) if p.state == State::Approved => lanes.enqueue(&p),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "change stream lagged; rescanning approved promotions");
                    lanes.enqueue_all_approved().await;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    lanes.lanes.clear();
    if tokio::time::timeout(SHUTDOWN_GRACE, lanes.tasks.join_all())
        .await
        .is_err()
    {
        tracing::warn!("tag moves still running at shutdown; they resume on the next start");
    }
}

struct Lanes {
    store: Store,
    registry: Arc<dyn Registry>,
    stop: watch::Receiver<bool>,
    lanes: HashMap<(String, String), mpsc::UnboundedSender<PromotionId>>,
    tasks: JoinSet<()>,
}

impl Lanes {
    async fn enqueue_all_approved(&mut self) {
        match self.store.read(|s| s.in_state(State::Approved)).await {
            Ok(mut approved) => {
                approved.sort_by_key(|p| (p.updated_at, p.id));
                for p in &approved {
                    self.enqueue(p);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list approved promotions"),
        }
    }

    fn enqueue(&mut self, p: &Promotion) {
        let key = (p.repository.clone(), p.environment.clone());
        let lane = self.lanes.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.tasks.spawn(run_lane(
                self.store.clone(),
                self.registry.clone(),
                rx,
                self.stop.clone(),
            ));
            tx
        });
        // The lane task ends only when this sender is dropped.
        let _ = lane.send(p.id);
    }
}

async fn run_lane(
    store: Store,
    registry: Arc<dyn Registry>,
    mut rx: mpsc::UnboundedReceiver<PromotionId>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let id = tokio::select! {
            biased;
            _ = signalled(&mut stop) => return,
            id = rx.recv() => match id {
                Some(id) => id,
                None => return,
            },
        };
        apply_one(&store, registry.as_ref(), id, &mut stop).await;
    }
}

async fn current(store: &Store, id: PromotionId) -> Option<Promotion> {
    match store.read(move |s| s.get(id)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(promotion = id, error = %e, "cannot read promotion");
            None
        }
    }
}

async fn apply_one(
    store: &Store,
    registry: &dyn Registry,
    id: PromotionId,
    stop: &mut watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0u32;
    loop {
        // Re-read every attempt: it may have been applied already or ended elsewhere.
        let Some(p) = current(store, id).await else {
            return;
        };
        if p.state != State::Approved {
            return;
        }
        attempt += 1;
        let result = match Repository::parse(&p.repository) {
            Ok(repo) => move_pinned(store, registry, &repo, &p).await,
            Err(e) => Err(RegistryError::Protocol {
                registry: String::new(),
                message: format!("stored repository {:?} is invalid: {e}", p.repository),
            }),
        };
        match result {
            Ok(mut moved) => {
                if moved.previous_digest == p.digest {
                    // Resumed after a crash between the push and its record:
                    // the tag already carries this digest, so what it carried
                    // before is the digest prodgate last moved it to.
                    let (repo, env) = (p.repository.clone(), p.environment.clone());
                    if let Ok(Some(e)) = store.read(move |s| s.deployed_at(&repo, &env, None)).await
                    {
                        moved.previous_digest = e.event.digest;
                    }
                }
                tracing::info!(promotion = id, repository = %p.repository, tag = %p.target_tag,
                    digest = %p.digest, previous = %moved.previous_digest, attempt, "tag applied");
                record(store, id, Ok(moved)).await;
                return;
            }
            Err(e) if e.is_transient() => {
                let wait = match &e {
                    RegistryError::Unavailable {
                        retry_after: Some(r),
                        ..
                    } => (*r).min(MAX_BACKOFF),
                    _ => jitter(backoff),
                };
                tracing::warn!(promotion = id, attempt, error = %e, retry_in = ?wait, "tag move failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Stopping between attempts is safe: nothing was moved.
                    _ = signalled(stop) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tracing::error!(promotion = id, attempt, error = %e, "tag move failed for good");
                record(store, id, Err(e.to_string())).await;
                return;
            }
        }
    }
}

/// Pushes the manifest pinned at request time. Every request pins one, so
/// the fetch by digest (which the registry client checks against the
/// digest) only covers a pin that cannot be read.
async fn move_pinned(
    store: &Store,
    registry: &dyn Registry,
    repo: &Repository,
    p: &Promotion,
) -> Result<Moved, RegistryError> {
    let (repository, digest) = (p.repository.clone(), p.digest.clone());
    let pinned = store
        .read(move |s| s.manifest(&repository, &digest))
        .await
        .ok()
        .flatten();
    let manifest = match pinned {
        Some(m) => Manifest {
            digest: p.digest.clone(),
            media_type: m.media_type,
            bytes: m.bytes,
        },
        None => registry
            .fetch(repo, &p.digest)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                reference: format!("{repo}@{}", p.digest),
            })?,
    };
    registry.move_tag(repo, &manifest, &p.target_tag).await
}

/// Between half and all of `d`, so many waiting lanes do not retry in step.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
}

async fn record(store: &Store, id: PromotionId, outcome: Result<Moved, String>) {
    let written = store
        .write(move |tx| {
            let p = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
            let now = tx.now();
            let o = match &outcome {
                Ok(moved) => machine::applied(&p, &moved.previous_digest, now)?,
                Err(message) => machine::apply_failed(&p, message, now)?,
            };
            tx.commit(&o.promotion, o.event)?;
            Ok::<_, Error>(())
        })
        .await;
    if let Err(e) = written {
        // The promotion stays APPROVED and is applied again after a restart.
        tracing::error!(promotion = id, error = %e, "cannot record the tag move");
    }
}
