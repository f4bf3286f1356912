//! Release steps: the committed changes a notifier reads, with the entries
//! one write job recorded for a release (one per member, consecutive, the
//! same action) gathered into one [`Step`], so webhooks and Slack show a
//! release as one item; any other change is a step of its own.
//!
//! The change stream marks no job's end, so a release step ends when a
//! change that is not part of it arrives, when it holds the release's last
//! member (its id read once per release and remembered for the newest
//! [`RELEASES`]: a release's membership never changes), or after [`QUIET`]
//! with no change (a step whose last member had no entry, having ended
//! before, say). [`Gather`] is the pure part; [`Steps`] reads the stream.

use crate::domain::model::{Action, PromotionId};
use crate::store::{Change, Store};
use hashlink::LruCache;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::broadcast;

/// How long a release step waits for its next member's entry before it is
/// taken as complete. A job's entries are broadcast together, so this only
/// passes when the step is complete already.
pub const QUIET: Duration = Duration::from_millis(100);
/// Releases whose last member id is remembered.
pub const RELEASES: usize = 256;

/// Changes that make one notification: a single change, or the entries of
/// one release step in commit order (ascending member id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    release: Option<PromotionId>,
    /// Never empty: [`Step::new`] refuses none.
    changes: Vec<Change>,
}

impl Step {
    /// The step of `changes` (of `release`, if any); `None` when empty.
    pub fn new(release: Option<PromotionId>, changes: Vec<Change>) -> Option<Step> {
        (!changes.is_empty()).then_some(Step { release, changes })
    }

    fn one(c: Change) -> Step {
        Step {
            release: None,
            changes: vec![c],
        }
    }

    /// The release the changes are members of, if any.
    pub fn release(&self) -> Option<PromotionId> {
        self.release
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The step's first change.
    pub fn first(&self) -> &Change {
        // Never empty (`new` refuses it; the others put one in), and
        // nothing takes a change out.
        &self.changes[0]
    }
}

/// The release step being gathered: consecutive changes of one release
/// with one action, each of a later member than the one before, so it
/// holds at most a release's members ([`crate::domain::release::MAX_COMPONENTS`]).
#[derive(Debug, Default)]
pub struct Gather {
    open: Option<(PromotionId, Action, Vec<Change>)>,
}

impl Gather {
    /// Takes the next committed change; `last` is the last member id of
    /// its release, when known. Answers the steps it completes (at most
    /// two: the open one and this change's).
    pub fn push(&mut self, c: Change, last: Option<PromotionId>) -> Vec<Step> {
        let mut done = Vec::new();
        let action = c.entry.event.action;
        let belongs = match (&self.open, c.promotion.release_id) {
            (Some((rid, a, held)), Some(r)) => {
                *rid == r
                    && *a == action
                    && held.last().is_some_and(|h| h.promotion.id < c.promotion.id)
            }
            _ => false,
        };
        if !belongs {
            done.extend(self.flush());
        }
        let Some(rid) = c.promotion.release_id else {
            done.push(Step::one(c));
            return done;
        };
        let complete = last.is_some_and(|l| c.promotion.id >= l);
        match &mut self.open {
            Some((_, _, held)) => held.push(c),
            None => self.open = Some((rid, action, vec![c])),
        }
        if complete {
            done.extend(self.flush());
        }
        done
    }

    /// The open step, ended now.
    pub fn flush(&mut self) -> Option<Step> {
        self.open
            .take()
            .and_then(|(rid, _, changes)| Step::new(Some(rid), changes))
    }

    /// Whether a step is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// The steps of a change stream. Cancel-safe: a change received is kept
/// until its step is handed out, so `next` may sit in a `select!`.
pub struct Steps {
    changes: broadcast::Receiver<Change>,
    store: Store,
    last: LruCache<PromotionId, PromotionId>,
    gather: Gather,
    ready: VecDeque<Step>,
    /// A change received whose release's last member is being read.
    held: Option<Change>,
    /// When the open step ends if no change comes: a deadline rather than
    /// a timeout per call, so calls cancelled by a `select!` (a drift
    /// record arriving) do not put it off.
    quiet: tokio::time::Instant,
}

impl Steps {
    pub fn new(changes: broadcast::Receiver<Change>, store: Store) -> Steps {
        Steps {
            changes,
            store,
            last: LruCache::new(RELEASES),
            gather: Gather::default(),
            ready: VecDeque::new(),
            held: None,
            quiet: tokio::time::Instant::now(),
        }
    }

    /// The next step. A lag is reported after the open step is handed
    /// out (incomplete); `Closed` after the last step.
    pub async fn next(&mut self) -> Result<Step, broadcast::error::RecvError> {
        loop {
            if let Some(s) = self.ready.pop_front() {
                return Ok(s);
            }
            if let Some(c) = &self.held {
                let last = self.last_member(c.promotion.release_id).await;
                if let Some(c) = self.held.take() {
                    self.ready.extend(self.gather.push(c, last));
                    self.quiet = tokio::time::Instant::now() + QUIET;
                }
                continue;
            }
            let received = if self.gather.is_open() {
                match tokio::time::timeout_at(self.quiet, self.changes.recv()).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.ready.extend(self.gather.flush());
                        continue;
                    }
                }
            } else {
                self.changes.recv().await
            };
            match received {
                Ok(c) => self.held = Some(c),
                Err(e) => {
                    if let Some(s) = self.gather.flush() {
                        // The error comes again at the next call, after
                        // this step: a lag is counted from now on, and a
                        // closed channel stays closed.
                        if let broadcast::error::RecvError::Lagged(_) = e {
                            self.ready.push_back(s);
                            return Err(e);
                        }
                        return Ok(s);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The last member id of release `rid`, read once per release; `None`
    /// when it cannot be read (the step then ends by [`QUIET`]).
    async fn last_member(&mut self, rid: Option<PromotionId>) -> Option<PromotionId> {
        let rid = rid?;
        if let Some(last) = self.last.get(&rid) {
            return Some(*last);
        }
        match self.store.release_members(rid).await {
            Ok(members) => {
                let last = members.last()?.id;
                self.last.insert(rid, last);
                Some(last)
            }
            Err(e) => {
                tracing::warn!(release = rid, error = %e, "cannot read a release's members; its step ends when the stream is quiet");
                None
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::audit::{AuditEntry, GENESIS};
    use crate::domain::model::{Event, Promotion, State, Time};

    /// A change of promotion `id` (of `release`, if any) by `action`.
    pub(crate) fn change(id: PromotionId, release: Option<PromotionId>, action: Action) -> Change {
        let promotion = Promotion {
            id,
            repository: format!("r.io/app{id}"),
            release_id: release,
            ..crate::notify::slack::tests::promotion(State::PendingApproval)
        };
        let event = Event {
            action,
            actor: "bob".into(),
            promotion_id: id,
            repository: promotion.repository.clone(),
            environment: promotion.environment.clone(),
            digest: String::new(),
            previous_digest: String::new(),
            comment: String::new(),
            attributes: Default::default(),
        };
        Change {
            entry: AuditEntry::chain(GENESIS, id, Time::ZERO, event),
            promotion,
        }
    }

    /// Feeds `changes` (with the last member id of release 10, members 10
    /// to 12, known or not) and ends with a quiet period: each step as the
    /// ids it holds.
    fn steps(changes: Vec<Change>, known: bool) -> Vec<(Option<PromotionId>, Vec<PromotionId>)> {
        let mut g = Gather::default();
        let mut out = Vec::new();
        for c in changes {
            let last = (c.promotion.release_id == Some(10) && known).then_some(12);
            out.extend(g.push(c, last));
        }
        out.extend(g.flush());
        out.into_iter()
            .map(|s| {
                (
                    s.release(),
                    s.changes().iter().map(|c| c.promotion.id).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_release_step_is_one_step_and_single_changes_stay_single() {
        let r = Some(10);
        let seq = vec![
            change(9, None, Action::Requested),
            change(10, r, Action::Requested),
            change(11, r, Action::Requested),
            change(12, r, Action::Requested),
            change(13, None, Action::Requested),
            change(10, r, Action::Approved),
            change(11, r, Action::Approved),
            change(12, r, Action::Approved),
            change(10, r, Action::Applied),
            change(11, r, Action::Applied),
            change(12, r, Action::Applied),
            change(9, None, Action::Superseded),
        ];
        let want = vec![
            (None, vec![9]),
            (r, vec![10, 11, 12]),
            (None, vec![13]),
            (r, vec![10, 11, 12]),
            (r, vec![10, 11, 12]),
            (None, vec![9]),
        ];
        assert_eq!(steps(seq.clone(), true), want);
        // Without the member count, a change of another action, another
        // promotion or an earlier member ends the step just as well.
        assert_eq!(steps(seq, false), want);
    }

    /// A stream whose release 10 the store does not know (so its member
    /// count cannot be read), read while another source ticks faster than
    /// [`QUIET`]: the open step still ends after a quiet period, and the
    /// single change after it follows.
    #[tokio::test]
    async fn without_the_member_count_a_step_ends_when_the_stream_is_quiet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::sled::open(
            &dir.path().join("data"),
            std::sync::Arc::new(crate::clock::SystemClock),
        )
        .expect("sled");
        let (tx, rx) = broadcast::channel(16);
        let mut steps = Steps::new(rx, store);
        for id in [10, 11] {
            tx.send(change(id, Some(10), Action::Approved))
                .expect("sent");
        }
        let mut ticks = tokio::time::interval(QUIET / 5);
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 2 {
            tokio::select! {
                s = steps.next() => {
                    let s = s.expect("a step");
                    got.push(s.changes().iter().map(|c| c.promotion.id).collect::<Vec<_>>());
                    if got.len() == 1 {
                        tx.send(change(13, None, Action::Requested)).expect("sent");
                    }
                }
                _ = ticks.tick() => {}
                _ = tokio::time::sleep_until(deadline) => panic!("no steps in time: {got:?}"),
            }
        }
        assert_eq!(got, [vec![10, 11], vec![13]]);
        drop(tx);
        assert!(steps.next().await.is_err(), "closed");
    }

    #[test]
    fn the_last_member_ends_a_step_at_once() {
        let mut g = Gather::default();
        assert!(
            g.push(change(10, Some(10), Action::Approved), Some(11))
                .is_empty()
        );
        let done = g.push(change(11, Some(10), Action::Approved), Some(11));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].changes().len(), 2);
        assert!(!g.is_open(), "nothing waits for a quiet period");
    }

    #[test]
    fn a_step_without_its_last_member_ends_with_the_next_job() {
        let r = Some(10);
        // Member 12 had ended: two jobs of approvals (two approvers needed)
        // hold members 10 and 11 only, and are two steps.
        let seq = vec![
            change(10, r, Action::Approved),
            change(11, r, Action::Approved),
            change(10, r, Action::Approved),
            change(11, r, Action::Approved),
            // Another release's step right after.
            change(20, Some(20), Action::Approved),
            change(21, Some(20), Action::Approved),
        ];
        assert_eq!(
            steps(seq, true),
            vec![
                (r, vec![10, 11]),
                (r, vec![10, 11]),
                (Some(20), vec![20, 21])
            ]
        );
    }
}
