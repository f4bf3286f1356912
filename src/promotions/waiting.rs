//! The leader's task that moves WAITING promotions on by themselves.
//!
//! It looks at a WAITING promotion again when something its gates read may
//! have changed: a check reported for its digest, its `not_before` (or its
//! `wait_ttl` deadline) arriving, a policy reload, and at the start of each
//! leadership term (which covers gates that opened while prodgate was
//! down). Times are kept in one ordered map and the task sleeps until the
//! earliest, so nothing polls every promotion. A promotion waiting for a
//! signature has no event to wake it (the signature arrives in the
//! registry, not here), so it is looked at every [`SIGNATURE_RECHECK`].
//!
//! The task runs on the leader only (one per PostgreSQL cluster), and each
//! look is one write job that re-reads the record: a promotion moves once.

use super::Promotions;
use crate::clock::Clock;
use crate::domain::gates;
use crate::domain::model::{Action, Promotion, PromotionId, State, Time};
use crate::store::Store;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How often a promotion waiting for a signature is looked at again.
pub const SIGNATURE_RECHECK: Duration = Duration::from_secs(60);

/// The longest sleep between looks at the clock: a wall clock set forward
/// is noticed within this long.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What the task knows of one WAITING promotion.
#[derive(Debug, Clone)]
struct Waiting {
    repository: String,
    digest: String,
    /// When to look again.
    due: Time,
}

#[derive(Default)]
struct Schedule {
    waiting: HashMap<PromotionId, Waiting>,
    by_time: BTreeSet<(Time, PromotionId)>,
}

impl Schedule {
    fn put(&mut self, id: PromotionId, w: Waiting) {
        self.remove(id);
        self.by_time.insert((w.due, id));
        self.waiting.insert(id, w);
    }

    fn remove(&mut self, id: PromotionId) {
        if let Some(old) = self.waiting.remove(&id) {
            self.by_time.remove(&(old.due, id));
        }
    }

    fn next_due(&self) -> Option<Time> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// The promotions due at `now`, taken off the schedule.
    fn take_due(&mut self, now: Time) -> Vec<(PromotionId, Waiting)> {
        let due: Vec<PromotionId> = self
            .by_time
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| {
                let w = self.waiting.get(&id).cloned()?;
                self.remove(id);
                Some((id, w))
            })
            .collect()
    }

    fn about(&self, repository: &str, digest: &str) -> Vec<(PromotionId, Waiting)> {
        self.waiting
            .iter()
            .filter(|(_, w)| w.repository == repository && w.digest == digest)
            .map(|(id, w)| (*id, w.clone()))
            .collect()
    }
}

/// When to look at `p` again by time alone: `not_before`, a signature
/// recheck, or its deadline, whichever comes first.
fn due(p: &Promotion, not_before: Option<Time>, now: Time) -> Time {
    let mut at = not_before.unwrap_or(p.expires_at).min(p.expires_at);
    if p.waiting_for.iter().any(|g| g == gates::SIGNATURE) {
        at = at.min(now.plus(SIGNATURE_RECHECK));
    }
    at
}

/// Runs until `stop`: looks at every WAITING promotion now, then as its
/// events and times come.
pub async fn run(promotions: Promotions, store: Store, stop: CancellationToken) {
    // Subscribe before the scan so nothing that starts waiting in between
    // is missed.
    let mut changes = store.subscribe();
    let mut records = store.subscribe_records();
    let mut reloads = promotions.reloads();
    let clock: Arc<dyn Clock> = promotions.clock.clone();
    let mut schedule = Schedule::default();
    rescan(&promotions, &store, &mut schedule).await;
    loop {
        let now = clock.now();
        let sleep = schedule
            .next_due()
            .map_or(MAX_SLEEP, |t| now.until(t).min(MAX_SLEEP));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {
                for (id, w) in schedule.take_due(clock.now()) {
                    look(&promotions, &mut schedule, id, w).await;
                }
            }
            change = changes.recv() => match change {
                Ok(c) if c.promotion.state == State::Waiting => {
                    let p = c.promotion;
                    let at = due(&p, p.not_before, clock.now());
                    schedule.put(p.id, Waiting { repository: p.repository, digest: p.digest, due: at });
                }
                Ok(c) => schedule.remove(c.promotion.id),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    rescan(&promotions, &store, &mut schedule).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            record = records.recv() => match record {
                Ok(e) if e.event.action == Action::CheckReported => {
                    for (id, w) in schedule.about(&e.event.repository, &e.event.digest) {
                        look(&promotions, &mut schedule, id, w).await;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    rescan(&promotions, &store, &mut schedule).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            reload = reloads.changed() => {
                if reload.is_err() {
                    return;
                }
                rescan(&promotions, &store, &mut schedule).await;
            }
        }
    }
}

/// Looks at every WAITING promotion the store holds.
async fn rescan(promotions: &Promotions, store: &Store, schedule: &mut Schedule) {
    match store.in_state(State::Waiting).await {
        Ok(waiting) => {
            *schedule = Schedule::default();
            for p in waiting {
                let w = Waiting {
                    repository: p.repository,
                    digest: p.digest,
                    due: p.expires_at,
                };
                look(promotions, schedule, p.id, w).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list waiting promotions"),
    }
}

/// Re-evaluates one promotion and schedules its next look while it still
/// waits. A failed look is tried again after [`MAX_SLEEP`].
async fn look(promotions: &Promotions, schedule: &mut Schedule, id: PromotionId, w: Waiting) {
    let now = promotions.clock.now();
    match promotions.reevaluate(id).await {
        Ok(r) if r.promotion.state == State::Waiting => {
            let due = due(&r.promotion, r.not_before, now);
            schedule.put(id, Waiting { due, ..w });
        }
        Ok(r) => {
            if r.promotion.state == State::Approved {
                tracing::info!(promotion = id, "gates passed; the tag moves next");
            }
            schedule.remove(id);
        }
        Err(e) => {
            tracing::warn!(promotion = id, error = %e, "cannot re-evaluate a waiting promotion; trying again");
            let due = now.plus(MAX_SLEEP);
            schedule.put(id, Waiting { due, ..w });
        }
    }
}
