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
//!
//! The tag never silently steps backwards: recording a promotion as applied
//! supersedes every older open promotion of the same repository and
//! environment in the same write, and before each attempt (and when a newer
//! one is approved while it waits between retries) a lane gives way to a
//! newer APPROVED promotion of its tag by superseding the older one. While
//! it retries, the last error and the attempt count are kept in [`Progress`]
//! and shown on the promotion.
//!
//! An environment's `apply_deadline` bounds the retries: an APPROVED
//! promotion not applied by then (counted from its approval, on the injected
//! clock) ends FAILED with the last error, unless a final read of the tag
//! finds the digest already there (a push whose answer was lost), which
//! records it as applied.
//!
//! A release's members wait in their tags' lanes like any promotion; once
//! every member is approved and its lane holds it ([`Held`]), the first
//! member's lane moves all the tags in order and records them in one
//! write (or moves back what moved and records them all FAILED). A
//! supersession of a member supersedes its whole release in the same
//! write.

use crate::backoff::{Delays, jitter};
use crate::clock::Clock;
use crate::config::Live;
use crate::domain::machine;
use crate::domain::model::{Promotion, PromotionId, State, Time};
use crate::domain::names::Repository;
use crate::domain::release::{self, Turn};
use crate::error::Error;
use crate::registry::{Manifest, Moved, Registry, RegistryError};
use crate::store::{Store, UnitOfWork};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The retry state of tag moves in progress: the last transient error and
/// the attempt count per APPROVED promotion. Not audited (one entry per
/// retry would flood the log) and not stored: after a restart the count
/// starts again. Subscribers learn which promotion's state changed.
#[derive(Clone)]
pub struct Progress {
    attempts: Arc<Mutex<HashMap<PromotionId, (String, u32)>>>,
    changed: broadcast::Sender<PromotionId>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            attempts: Arc::default(),
            changed: broadcast::channel(256).0,
        }
    }
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PromotionId, (String, u32)>> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, id: PromotionId, error: String, attempts: u32) {
        self.lock().insert(id, (error, attempts));
        let _ = self.changed.send(id);
    }

    fn clear(&self, id: PromotionId) {
        if self.lock().remove(&id).is_some() {
            let _ = self.changed.send(id);
        }
    }

    /// Fills `p.last_apply_error`/`apply_attempts` while it is APPROVED.
    pub fn overlay(&self, p: &mut Promotion) {
        if p.state != State::Approved {
            return;
        }
        if let Some((error, attempts)) = self.lock().get(&p.id) {
            p.last_apply_error.clone_from(error);
            p.apply_attempts = *attempts;
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PromotionId> {
        self.changed.subscribe()
    }
}

/// One tag move at a time per repository and environment. The apply lanes
/// and the drift watch take a tag's lock around a move and its record, so a
/// drift restore never lands between a promotion's push and its read-back
/// or record (which would fail the promotion, or put the tag back under a
/// digest it was just approved away from).
#[derive(Clone, Default)]
pub struct TagLocks(Arc<Mutex<HashMap<(String, String), TagLock>>>);

/// One tag's lock; held across awaits, so tokio's.
type TagLock = Arc<tokio::sync::Mutex<()>>;

impl TagLocks {
    pub async fn lock(
        &self,
        repository: &str,
        environment: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let tag = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((repository.to_owned(), environment.to_owned()))
            .or_default()
            .clone();
        tag.lock_owned().await
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long shutdown waits for tag moves in progress.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Applies approved promotions until `stop` is cancelled (or the store closes),
/// then waits up to [`SHUTDOWN_GRACE`] for the moves in progress.
/// What the worker needs besides the store and the registry.
pub struct Settings {
    /// Environments' `apply_deadline`.
    pub config: Live,
    pub clock: Arc<dyn Clock>,
    pub progress: Progress,
    /// Shared with the drift watch.
    pub tags: TagLocks,
}

pub async fn run(
    store: Store,
    registry: Arc<dyn Registry>,
    settings: Settings,
    stop: CancellationToken,
) {
    // Subscribe before the scan so nothing approved in between is missed; a
    // promotion seen twice is skipped the second time by its state.
    let mut changes = store.subscribe();
    let mut lanes = Lanes {
        worker: Worker {
            store: store.clone(),
            registry,
            config: settings.config,
            clock: settings.clock,
            progress: settings.progress,
            tags: settings.tags,
            held: Held::default(),
        },
        stop: stop.clone(),
        lanes: HashMap::new(),
        tasks: JoinSet::new(),
    };
    lanes.enqueue_all_approved().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            change = changes.recv() => match change {
                // A release member too: it waits for its release's turn
                // in its lane, where its siblings' changes reach it.
                Ok(c) if c.promotion.state == State::Approved => lanes.enqueue(&c.promotion),
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

/// What every lane shares.
#[derive(Clone)]
struct Worker {
    store: Store,
    registry: Arc<dyn Registry>,
    config: Live,
    clock: Arc<dyn Clock>,
    progress: Progress,
    tags: TagLocks,
    held: Held,
}

/// The release members their lanes hold now: each at the head of its
/// tag's lane, waiting for its release's turn. A release moves only once
/// its lanes hold every member it moves, so a release never moves a tag
/// whose lane is still busy with another promotion: two releases (or a
/// release and a single promotion) sharing a tag move one after the other,
/// in the order they reached its lane. (Waiting cannot go round in a
/// circle: a member queued behind an older promotion of its tag makes that
/// one give way, as a newer approval always does.)
#[derive(Clone, Default)]
struct Held {
    ids: Arc<Mutex<HashSet<PromotionId>>>,
    /// Bumped at every change of `ids`.
    changed: Arc<watch::Sender<()>>,
}

impl Held {
    fn ids(&self) -> std::sync::MutexGuard<'_, HashSet<PromotionId>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `id` until the guard is dropped.
    fn hold(&self, id: PromotionId) -> Holding {
        self.ids().insert(id);
        self.changed.send_modify(|_| {});
        Holding {
            held: self.clone(),
            id,
        }
    }

    fn all(&self, members: &[&Promotion]) -> bool {
        let ids = self.ids();
        members.iter().all(|m| ids.contains(&m.id))
    }
}

/// A member held by its lane; let go when dropped.
struct Holding {
    held: Held,
    id: PromotionId,
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.held.ids().remove(&self.id);
        self.held.changed.send_modify(|_| {});
    }
}

/// One repository environment's queue, and the newest promotion approved
/// for it (a waiting older one gives way to it).
struct Lane {
    queue: mpsc::UnboundedSender<PromotionId>,
    newest: watch::Sender<PromotionId>,
}

struct Lanes {
    worker: Worker,
    stop: CancellationToken,
    lanes: HashMap<(String, String), Lane>,
    tasks: JoinSet<()>,
}

impl Lanes {
    async fn enqueue_all_approved(&mut self) {
        match self.worker.store.in_state(State::Approved).await {
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
            let (queue, rx) = mpsc::unbounded_channel();
            let (newest, newest_rx) = watch::channel(0);
            self.tasks.spawn(run_lane(
                self.worker.clone(),
                rx,
                newest_rx,
                self.stop.clone(),
            ));
            Lane { queue, newest }
        });
        lane.newest.send_if_modified(|n| {
            let newer = p.id > *n;
            *n = (*n).max(p.id);
            newer
        });
        // The lane task ends only when this sender is dropped.
        let _ = lane.queue.send(p.id);
    }
}

async fn run_lane(
    worker: Worker,
    mut rx: mpsc::UnboundedReceiver<PromotionId>,
    mut newest: watch::Receiver<PromotionId>,
    stop: CancellationToken,
) {
    loop {
        let id = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            id = rx.recv() => match id {
                Some(id) => id,
                None => return,
            },
        };
        worker.apply_one(id, &mut newest, &stop).await;
        worker.progress.clear(id);
    }
}

async fn current(store: &Store, id: PromotionId) -> Option<Promotion> {
    match store.get(id).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(promotion = id, error = %e, "cannot read promotion");
            None
        }
    }
}

impl Worker {
    async fn apply_one(
        &self,
        id: PromotionId,
        newest: &mut watch::Receiver<PromotionId>,
        stop: &CancellationToken,
    ) {
        let (store, registry) = (&self.store, self.registry.as_ref());
        let mut backoff = Delays::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempt = 0u32;
        let mut last_error = String::new();
        loop {
            // Re-read every attempt: it may have been applied already or ended elsewhere.
            let Some(p) = current(store, id).await else {
                return;
            };
            if p.state != State::Approved {
                return;
            }
            if *newest.borrow_and_update() > id && give_way(store, id).await {
                return;
            }
            // A release moves as one, from its first member's lane.
            if let Some(rid) = p.release_id {
                self.release_member(rid, id, newest, stop).await;
                return;
            }
            // While APPROVED, `updated_at` is when it was approved.
            let deadline = self
                .config
                .get()
                .governing(&p.repository)
                .environment(&p.environment)
                .and_then(|e| e.apply_deadline)
                .map(|d| (d, p.updated_at.plus(d)));
            if let Some((limit, at)) = deadline
                && attempt > 0
                && self.clock.now() >= at
            {
                self.past_deadline(&p, limit, &last_error).await;
                return;
            }
            attempt += 1;
            // Held through the record: the drift watch must not restore the
            // old digest between this push and its APPLIED entry.
            let tag = self.tags.lock(&p.repository, &p.environment).await;
            let result = match Repository::parse(&p.repository) {
                Ok(repo) => move_pinned(store, registry, &repo, &p.digest, &p.target_tag).await,
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
                        if let Ok(Some(e)) =
                            store.deployed_at(&p.repository, &p.environment, None).await
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
                    // Taken on every transient failure, Retry-After or not.
                    let backoff = backoff.next_delay();
                    let wait = match &e {
                        RegistryError::Unavailable {
                            retry_after: Some(r),
                            ..
                        } => (*r).min(MAX_BACKOFF),
                        _ => jitter(backoff),
                    };
                    let wait = match deadline {
                        Some((_, at)) => wait.min(until(self.clock.now(), at)),
                        None => wait,
                    };
                    tracing::warn!(promotion = id, attempt, error = %e, retry_in = ?wait, "tag move failed; retrying");
                    drop(tag);
                    last_error = e.to_string();
                    self.progress.note(id, last_error.clone(), attempt);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // A newer promotion of this tag was approved: the loop's
                        // check lets it through instead of waiting out the backoff.
                        _ = newest.changed() => {}
                        // Stopping between attempts is safe: nothing was moved.
                        _ = stop.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::error!(promotion = id, attempt, error = %e, "tag move failed for good");
                    record(store, id, Err(e.to_string())).await;
                    return;
                }
            }
        }
    }
}

impl Worker {
    /// Holds member `id`'s lane while it is APPROVED, so a promotion of the
    /// same tag approved after it moves after the release (or, newer,
    /// supersedes the member, as it would a single promotion, which stops
    /// the release). The release is run again at each change of a member.
    async fn release_member(
        &self,
        rid: PromotionId,
        id: PromotionId,
        newest: &mut watch::Receiver<PromotionId>,
        stop: &CancellationToken,
    ) {
        let mut changes = self.store.subscribe();
        // Subscribed before holding: the first member's lane sees every
        // member its siblings' lanes hold from now on.
        let mut held = self.held.changed.subscribe();
        let _holding = self.held.hold(id);
        loop {
            // The first member's lane moves the release; once the first
            // member is no longer APPROVED (it ended, or still waits), any
            // member's lane may find the release stopped and record it.
            let first_approved = rid != id
                && current(&self.store, rid)
                    .await
                    .is_some_and(|f| f.state == State::Approved);
            if !first_approved {
                self.apply_release(rid, stop).await;
            }
            match current(&self.store, id).await {
                Some(p) if p.state == State::Approved => {}
                _ => return,
            }
            if *newest.borrow_and_update() > id && give_way(&self.store, id).await {
                return;
            }
            // Until a member changes, or a newer promotion of this tag comes.
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    changed = newest.changed() => match changed {
                        Ok(()) => break,
                        // The lane is going away: shutting down.
                        Err(_) => return,
                    },
                    change = changes.recv() => match change {
                        Ok(c) if c.promotion.release_id == Some(rid) => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // Another member held: maybe the release's turn.
                    Ok(()) = held.changed(), if id == rid => break,
                }
            }
        }
    }

    /// Moves every tag of release `rid` in the order given, once all its
    /// members are approved, then records them all APPLIED in one write.
    /// A move that fails for good (or past the first member's
    /// `apply_deadline`) moves the tags already moved back to what they
    /// carried, and records every member FAILED in one write, naming the
    /// member that failed and what was undone. Nothing is recorded before
    /// the end: after a crash the members are still APPROVED and the next
    /// start runs the same plan again (moving a tag to the digest it
    /// carries is harmless).
    async fn apply_release(&self, rid: PromotionId, stop: &CancellationToken) {
        let members = match self.store.release_members(rid).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(release = rid, error = %e, "cannot read a release's members");
                return;
            }
        };
        let view: Vec<(PromotionId, State, &str)> = members
            .iter()
            .map(|m| (m.id, m.state, m.repository.as_str()))
            .collect();
        match release::turn(&view) {
            Turn::Go => {}
            Turn::Wait => return,
            Turn::Stop(why) => {
                tracing::error!(release = rid, error = %why, "release stopped");
                record_release(&self.store, rid, Err((why, Vec::new()))).await;
                return;
            }
        }
        let moving: Vec<&Promotion> = members
            .iter()
            .filter(|m| m.state == State::Approved)
            .collect();
        if !self.held.all(&moving) {
            // A member's lane is still busy with an earlier promotion of
            // its tag; that lane holds it once done, which brings the
            // release back here.
            return;
        }
        let deadline = moving.first().and_then(|p| {
            self.config
                .get()
                .governing(&p.repository)
                .environment(&p.environment)
                .and_then(|e| e.apply_deadline)
                .map(|d| (d, p.updated_at.plus(d)))
        });
        let mut moved: Vec<(&Promotion, Moved)> = Vec::new();
        for p in &moving {
            match self.move_member(p, deadline, stop).await {
                Some(Ok(m)) => moved.push((p, m)),
                // Stopping: nothing recorded; the next start moves again.
                None => return,
                Some(Err(e)) => {
                    let undone = self.move_back(&moved).await;
                    let why = format!(
                        "release {rid}: member {} ({}) could not move: {e}; {}",
                        p.id,
                        p.repository,
                        describe_undone(&undone)
                    );
                    tracing::error!(release = rid, error = %why, "release failed");
                    record_release(&self.store, rid, Err((why, undone))).await;
                    return;
                }
            }
        }
        tracing::info!(release = rid, members = moved.len(), "release applied");
        let applied = moved
            .into_iter()
            .map(|(p, m)| (p.id, m.previous_digest))
            .collect();
        record_release(&self.store, rid, Ok(applied)).await;
    }

    /// One member's move, retried while the registry fails transiently and
    /// `deadline` has not passed: the move, the error that ends the
    /// release, or `None` when stopping.
    async fn move_member(
        &self,
        p: &Promotion,
        deadline: Option<(Duration, Time)>,
        stop: &CancellationToken,
    ) -> Option<Result<Moved, String>> {
        let repo = match Repository::parse(&p.repository) {
            Ok(r) => r,
            Err(e) => return Some(Err(format!("stored repository is invalid: {e}"))),
        };
        let mut backoff = Delays::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let tag = self.tags.lock(&p.repository, &p.environment).await;
            let result = move_pinned(
                &self.store,
                self.registry.as_ref(),
                &repo,
                &p.digest,
                &p.target_tag,
            )
            .await;
            drop(tag);
            match result {
                Ok(mut moved) => {
                    if moved.previous_digest == p.digest {
                        // Moved before a restart: what it carried before is
                        // what prodgate last moved it to, or unknown (empty)
                        // when prodgate never moved it (a move back then
                        // leaves it, and says so).
                        moved.previous_digest = match self
                            .store
                            .deployed_at(&p.repository, &p.environment, None)
                            .await
                        {
                            Ok(Some(e)) => e.event.digest,
                            _ => String::new(),
                        };
                    }
                    return Some(Ok(moved));
                }
                Err(e) if e.is_transient() => {
                    let wait = jitter(backoff.next_delay());
                    if let Some((limit, at)) = deadline
                        && self.clock.now() >= at
                    {
                        return Some(Err(format!(
                            "not within apply_deadline ({}); last error: {e}",
                            humantime::format_duration(limit)
                        )));
                    }
                    tracing::warn!(promotion = p.id, attempt, error = %e, retry_in = ?wait,
                        "release member's tag move failed; retrying");
                    self.progress.note(p.id, e.to_string(), attempt);
                    let wait = match deadline {
                        Some((_, at)) => wait.min(until(self.clock.now(), at)),
                        None => wait,
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return None,
                    }
                }
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }

    /// Moves the tags of `moved` back to what they carried, newest first:
    /// per member, what became of its tag.
    async fn move_back(&self, moved: &[(&Promotion, Moved)]) -> Vec<(PromotionId, String)> {
        let mut undone = Vec::new();
        for (p, m) in moved.iter().rev() {
            let what = if m.previous_digest.is_empty() {
                format!(
                    "left {} at {}: the tag did not exist before, and the registry API cannot remove a tag",
                    p.target_tag, p.digest
                )
            } else {
                let tag = self.tags.lock(&p.repository, &p.environment).await;
                let back = match Repository::parse(&p.repository) {
                    Ok(repo) => move_pinned(
                        &self.store,
                        self.registry.as_ref(),
                        &repo,
                        &m.previous_digest,
                        &p.target_tag,
                    )
                    .await
                    .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                drop(tag);
                match back {
                    Ok(_) => format!("moved {} back to {}", p.target_tag, m.previous_digest),
                    Err(e) => format!(
                        "could not move {} back to {}: {e}; it carries {}",
                        p.target_tag, m.previous_digest, p.digest
                    ),
                }
            };
            undone.push((p.id, what));
        }
        undone.reverse();
        undone
    }

    /// The apply deadline passed: one last read of the tag decides. The
    /// digest already there means a push whose answer was lost (applied);
    /// anything else, or no answer, ends the promotion FAILED.
    async fn past_deadline(&self, p: &Promotion, limit: Duration, last_error: &str) {
        let carried = match Repository::parse(&p.repository) {
            Ok(repo) => self.registry.resolve(&repo, &p.target_tag).await,
            Err(e) => Err(RegistryError::Protocol {
                registry: String::new(),
                message: format!("stored repository {:?} is invalid: {e}", p.repository),
            }),
        };
        if matches!(&carried, Ok(Some(d)) if *d == p.digest) {
            let previous = self
                .store
                .deployed_at(&p.repository, &p.environment, None)
                .await
                .ok()
                .flatten()
                .map(|e| e.event.digest)
                .unwrap_or_default();
            tracing::info!(
                promotion = p.id,
                "apply deadline passed, but the tag already carries the digest"
            );
            record(
                &self.store,
                p.id,
                Ok(Moved {
                    previous_digest: previous,
                }),
            )
            .await;
            return;
        }
        let message = format!(
            "the tag move did not succeed within apply_deadline ({}); last error: {last_error}",
            humantime::format_duration(limit)
        );
        tracing::error!(promotion = p.id, error = %message, "giving up on the tag move");
        record(&self.store, p.id, Err(message)).await;
    }
}

/// How long from `now` until `at` (zero if past).
fn until(now: Time, at: Time) -> Duration {
    let nanos = |t: Time| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let left = (nanos(at) - nanos(now)).max(0);
    Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
}

/// Supersedes APPROVED promotion `id` if a newer promotion of the same
/// repository and environment is APPROVED too; true if it did.
async fn give_way(store: &Store, id: PromotionId) -> bool {
    let written = store
        .write(move |tx: &mut dyn UnitOfWork| {
            let Some(p) = tx.get(id)? else {
                return Ok(false);
            };
            let newer = tx
                .open_promotions(&p.repository, &p.environment)?
                .into_iter()
                .rfind(|o| o.id > id && o.state == State::Approved);
            match newer {
                Some(n) => {
                    let now = tx.now();
                    supersede(tx, &p, &n, now)
                }
                None => Ok(false),
            }
        })
        .await;
    match written {
        Ok(superseded) => {
            if superseded {
                tracing::info!(
                    promotion = id,
                    "superseded by a newer approved promotion of the same tag"
                );
            }
            superseded
        }
        Err(e) => {
            tracing::error!(promotion = id, error = %e, "cannot record the supersession");
            false
        }
    }
}

/// Points `tag` at the manifest pinned under `digest` at request time (a
/// promotion's move, or the drift watch's restore). Every request pins one,
/// so the fetch by digest (which the registry client checks against the
/// digest) only covers a pin that cannot be read.
pub async fn move_pinned(
    store: &Store,
    registry: &dyn Registry,
    repo: &Repository,
    digest: &str,
    tag: &str,
) -> Result<Moved, RegistryError> {
    let pinned = store
        .manifest(&repo.to_string(), digest)
        .await
        .ok()
        .flatten();
    let manifest = match pinned {
        Some(m) => Manifest {
            digest: digest.to_owned(),
            media_type: m.media_type,
            bytes: m.bytes,
        },
        None => registry
            .fetch(repo, digest)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                reference: format!("{repo}@{digest}"),
            })?,
    };
    registry.move_tag(repo, &manifest, tag).await
}

/// Per member: the digest its tag carried before (applied), or what became
/// of its tag (undone).
type PerMember = Vec<(PromotionId, String)>;

/// How a release ended: every member moved (with what each tag carried
/// before), or the failure message and what was undone.
type ReleaseOutcome = Result<PerMember, (String, PerMember)>;

/// What was undone, for the failure message.
fn describe_undone(undone: &[(PromotionId, String)]) -> String {
    if undone.is_empty() {
        return "no tag had moved".into();
    }
    let parts: Vec<String> = undone
        .iter()
        .map(|(id, what)| format!("member {id}: {what}"))
        .collect();
    format!("undone: {}", parts.join("; "))
}

/// Records a release's outcome in one write: every APPROVED member APPLIED
/// (with the digest its tag carried before; each supersedes the older open
/// promotions of its tag, as a single one does), or every APPROVED member
/// FAILED with the message, the moved ones with attribute `compensation`
/// saying what became of their tag. Each entry has attribute `release`.
async fn record_release(store: &Store, rid: PromotionId, outcome: ReleaseOutcome) {
    let written = store
        .write(move |tx: &mut dyn UnitOfWork| {
            let now = tx.now();
            let mut promoted = Vec::new();
            for p in members_in(tx, rid)? {
                if p.state != State::Approved {
                    continue;
                }
                let mut o = match &outcome {
                    Ok(applied) => {
                        let previous = applied
                            .iter()
                            .find(|(m, _)| *m == p.id)
                            .map_or("", |(_, d)| d.as_str());
                        machine::applied(&p, previous, now)?
                    }
                    Err((message, _)) => machine::apply_failed(&p, message, now)?,
                };
                release::mark(&mut o);
                if let (Some(e), Err((_, undone))) = (o.event.as_mut(), &outcome)
                    && let Some((_, what)) = undone.iter().find(|(m, _)| *m == p.id)
                {
                    e.attributes.insert("compensation".into(), what.clone());
                }
                tx.commit(&o.promotion, o.event)?;
                if o.promotion.state == State::Promoted {
                    promoted.push(o.promotion);
                }
            }
            // After every member's entry, so that the release's entries
            // follow one another (notifiers show them as one step).
            for newer in &promoted {
                supersede_older(tx, newer, now)?;
            }
            Ok::<_, Error>(())
        })
        .await;
    if let Err(e) = written {
        // The members stay APPROVED and the release is applied again after a restart.
        tracing::error!(release = rid, error = %e, "cannot record the release");
    }
}

/// Records the outcome; an applied promotion supersedes, in the same write,
/// every older promotion of its repository and environment still open.
async fn record(store: &Store, id: PromotionId, outcome: Result<Moved, String>) {
    let written = store
        .write(move |tx: &mut dyn UnitOfWork| {
            let p = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
            let now = tx.now();
            let o = match &outcome {
                Ok(moved) => machine::applied(&p, &moved.previous_digest, now)?,
                Err(message) => machine::apply_failed(&p, message, now)?,
            };
            tx.commit(&o.promotion, o.event)?;
            if o.promotion.state == State::Promoted {
                supersede_older(tx, &o.promotion, now)?;
            }
            Ok::<_, Error>(())
        })
        .await;
    if let Err(e) = written {
        // The promotion stays APPROVED and is applied again after a restart.
        tracing::error!(promotion = id, error = %e, "cannot record the tag move");
    }
}

/// The members of release `rid` as the write job `tx` sees them, in
/// order (their ids follow one another from `rid`).
fn members_in(tx: &dyn UnitOfWork, rid: PromotionId) -> Result<Vec<Promotion>, Error> {
    let mut members = Vec::new();
    let mut id = rid;
    while let Some(p) = tx.get(id)?.filter(|p| p.release_id == Some(rid)) {
        members.push(p);
        id += 1;
    }
    Ok(members)
}

/// Supersedes, in `tx`, every promotion of `applied`'s tag older than it
/// and still open (none of its own release's: they are recorded with it).
fn supersede_older(tx: &mut dyn UnitOfWork, applied: &Promotion, now: Time) -> Result<(), Error> {
    for older in tx.open_promotions(&applied.repository, &applied.environment)? {
        if older.release_id.is_none() || older.release_id != applied.release_id {
            supersede(tx, &older, applied, now)?;
        }
    }
    Ok(())
}

/// Supersedes `older` by `newer` of the same tag in `tx`, and with it every
/// other open member of `older`'s release, if it is one's (a release
/// superseded in any member is superseded whole). Whether `older` was.
fn supersede(
    tx: &mut dyn UnitOfWork,
    older: &Promotion,
    newer: &Promotion,
    now: Time,
) -> Result<bool, Error> {
    let Some(mut o) = machine::supersede(older, newer, now) else {
        return Ok(false);
    };
    release::mark(&mut o);
    tx.commit(&o.promotion, o.event)?;
    if let Some(rid) = older.release_id {
        for sibling in members_in(tx, rid)? {
            if let Some(s) = release::superseded_with(&sibling, &o.promotion, newer, now) {
                tx.commit(&s.promotion, s.event)?;
            }
        }
    }
    Ok(true)
}
