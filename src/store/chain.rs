//! The append rules of the audit chain, the same on every backend: each
//! backend's writer drives an [`Appender`] per write job and keeps only its
//! own I/O. The rules: the chain's [`Head`] numbers and hashes each entry
//! after the previous one; entry times never go back (a clock that steps
//! back reads as the last entry's time); a promotion changes only with an
//! audit entry ([`StoreError::Unaudited`] otherwise); a committed entry is
//! published (as a [`Change`], or on the records stream for an entry about
//! no promotion) only once everything it derives was written; and what an
//! entry indexes beside the log ([`Indexed`]).

use crate::clock::Clock;
use crate::domain::audit::{AuditEntry, GENESIS, Hash};
use crate::domain::model::{Action, CheckReport, Event, Promotion, PromotionId, Time};
use crate::store::{Change, StoreError};

/// The chain's head and the id counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub next_sequence: u64,
    pub hash: Hash,
    pub last_time: Time,
    pub next_id: PromotionId,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            next_sequence: 1,
            hash: GENESIS,
            last_time: Time::ZERO,
            next_id: 1,
        }
    }
}

impl Head {
    /// The head after `last`, the newest entry, where the highest promotion
    /// id is `max_id`. Ids are never reused: promotions are never deleted.
    pub fn after(last: Option<&AuditEntry>, max_id: Option<PromotionId>) -> Head {
        let mut head = Head {
            next_id: max_id.map_or(1, |id| id + 1),
            ..Head::default()
        };
        if let Some(e) = last {
            head.next_sequence = e.sequence + 1;
            head.hash = e.hash;
            head.last_time = e.time;
        }
        head
    }

    /// The sequence of the newest entry (0 for none).
    pub fn last_sequence(&self) -> u64 {
        self.next_sequence - 1
    }

    /// `event` chained after the head, timed `at` or the last entry's time
    /// if that is later.
    fn chain(&self, event: Event, at: Time) -> AuditEntry {
        AuditEntry::chain(self.hash, self.next_sequence, at.max(self.last_time), event)
    }

    fn advance(&mut self, entry: &AuditEntry) {
        self.next_sequence = entry.sequence + 1;
        self.hash = entry.hash;
        self.last_time = entry.time;
    }
}

/// What a batch of jobs committed, to publish once it is durable.
#[derive(Debug, Default)]
pub struct Outbox {
    pub changed: Vec<Change>,
    pub recorded: Vec<AuditEntry>,
}

/// One write job's appends: it advances the head and fills the outbox.
pub struct Appender<'a> {
    head: &'a mut Head,
    outbox: &'a mut Outbox,
    writes: usize,
}

impl<'a> Appender<'a> {
    pub fn new(head: &'a mut Head, outbox: &'a mut Outbox) -> Self {
        Appender {
            head,
            outbox,
            writes: 0,
        }
    }

    pub fn head(&self) -> &Head {
        self.head
    }

    /// How many entries the job appended.
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// `clock`'s time, never earlier than the last entry's (nor than an
    /// earlier reading), so entry times follow sequence order.
    pub fn now(&mut self, clock: &dyn Clock) -> Time {
        let now = clock.now().max(self.head.last_time);
        self.head.last_time = now;
        now
    }

    /// Commits `after` (stored as `stored` before) with `event`. Without an
    /// event nothing may have changed: unchanged is `Ok(None)`, anything
    /// else is refused. With one, `write` stores the entry with `after` (the
    /// commit's single durable step, after which the head moves on) and
    /// `derive` what follows from it; the change is published only if both
    /// succeed.
    pub fn commit(
        &mut self,
        stored: Option<&Promotion>,
        after: &Promotion,
        event: Option<Event>,
        write: impl FnOnce(&AuditEntry) -> Result<(), StoreError>,
        derive: impl FnOnce(&AuditEntry) -> Result<(), StoreError>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let Some(event) = event else {
            // Only a repeated approval has no event, and it changes nothing.
            return if stored == Some(after) {
                Ok(None)
            } else {
                Err(StoreError::Unaudited(after.id))
            };
        };
        let entry = self.head.chain(event, after.updated_at);
        self.append(&entry, write)?;
        if stored.is_none() {
            self.head.next_id = self.head.next_id.max(after.id + 1);
        }
        derive(&entry)?;
        self.outbox.changed.push(Change {
            entry: entry.clone(),
            promotion: after.clone(),
        });
        Ok(Some(entry))
    }

    /// Appends an entry about no promotion, timed `at` (or the last entry's
    /// time, if later), as [`Appender::commit`] does; published on the
    /// records stream.
    pub fn record(
        &mut self,
        event: Event,
        at: Time,
        write: impl FnOnce(&AuditEntry) -> Result<(), StoreError>,
        derive: impl FnOnce(&AuditEntry) -> Result<(), StoreError>,
    ) -> Result<AuditEntry, StoreError> {
        let entry = self.head.chain(event, at);
        self.append(&entry, write)?;
        derive(&entry)?;
        self.outbox.recorded.push(entry.clone());
        Ok(entry)
    }

    fn append(
        &mut self,
        entry: &AuditEntry,
        write: impl FnOnce(&AuditEntry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        write(entry)?;
        self.writes += 1;
        self.head.advance(entry);
        Ok(())
    }
}

/// What an entry adds to the indexes every backend keeps beside the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<'a> {
    /// The check report it records: the latest of its check, for its digest.
    pub check: Option<CheckReport>,
    /// The tag (repository, environment) an APPLIED entry moved: what the
    /// drift watch reads.
    pub moved_tag: Option<(&'a str, &'a str)>,
}

impl<'a> Indexed<'a> {
    pub fn of(entry: &AuditEntry, promotion: Option<&'a Promotion>) -> Self {
        Indexed {
            check: CheckReport::from_entry(entry),
            moved_tag: promotion
                .filter(|_| entry.event.action == Action::Applied)
                .map(|p| (p.repository.as_str(), p.environment.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::model::policy_changed;

    #[test]
    fn the_head_numbers_chains_and_never_goes_back_in_time() {
        let mut head = Head::default();
        let mut outbox = Outbox::default();
        let t = |seconds| Time { seconds, nanos: 0 };
        let clock = ManualClock::at(t(100));
        let mut a = Appender::new(&mut head, &mut outbox);
        assert_eq!(a.now(&clock), t(100));
        let first = a
            .record(policy_changed("sha256:a"), t(90), |_| Ok(()), |_| Ok(()))
            .unwrap();
        assert_eq!(
            (first.sequence, first.prev_hash, first.time),
            (1, GENESIS, t(100))
        );
        let second = a
            .record(policy_changed("sha256:b"), t(200), |_| Ok(()), |_| Ok(()))
            .unwrap();
        assert_eq!((second.sequence, second.prev_hash), (2, first.hash));
        assert_eq!(a.now(&clock), t(200), "the clock is behind the last entry");
        // A failed write appends nothing; a failed derivation publishes nothing.
        let failed = |_: &AuditEntry| Err(StoreError::Backend("no".into()));
        assert!(
            a.record(policy_changed("c"), t(300), failed, |_| Ok(()))
                .is_err()
        );
        assert_eq!(a.head().next_sequence, 3);
        assert!(
            a.record(policy_changed("c"), t(300), |_| Ok(()), failed)
                .is_err()
        );
        assert_eq!((a.writes(), a.head().next_sequence), (3, 4));
        assert_eq!(outbox.recorded, vec![first, second]);
        assert_eq!(Head::after(outbox.recorded.last(), Some(7)).next_id, 8);
    }
}
