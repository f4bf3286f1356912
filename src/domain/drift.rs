//! Drift of a tag prodgate moved: what the audit log says about the tag, and
//! what the drift watch does about what the registry shows now. Pure.

use super::audit::AuditEntry;
use super::model::Action;

/// The audit log's word on one environment's tag of one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// The APPLIED entry that last put the tag on its digest.
    pub applied: AuditEntry,
    /// The DRIFT_DETECTED and DRIFT_RESTORED entries after it, oldest first.
    pub drift: Vec<AuditEntry>,
}

impl TagRecord {
    /// The digest prodgate put under the tag.
    pub fn expected(&self) -> &str {
        &self.applied.event.digest
    }

    /// Whether the last word is a DRIFT_DETECTED entry: the watch last saw
    /// the tag carry something else, and has not seen it back since.
    pub fn drifted(&self) -> bool {
        self.drift
            .last()
            .is_some_and(|e| e.event.action == Action::DriftDetected)
    }

    /// The digests DRIFT_DETECTED entries recorded since the tag last carried
    /// the expected digest by prodgate's account (its APPLIED or the last
    /// DRIFT_RESTORED entry), newest last.
    fn observed_since_in_place(&self) -> impl Iterator<Item = &str> {
        let from = self
            .drift
            .iter()
            .rposition(|e| e.event.action == Action::DriftRestored)
            .map_or(0, |i| i + 1);
        self.drift[from..]
            .iter()
            .filter(|e| e.event.action == Action::DriftDetected)
            .map(|e| e.event.digest.as_str())
    }
}

/// What the watch does about one tag after one read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The tag carries the expected digest, as the log says: nothing.
    InPlace,
    /// The tag carries the expected digest again after a DRIFT_DETECTED
    /// entry (someone put it back, or a restore's record was cut short):
    /// record DRIFT_RESTORED, so the log no longer says it drifted.
    Back {
        /// The digest the last DRIFT_DETECTED entry observed.
        from: String,
    },
    /// A promotion of this tag is APPROVED: its move may be under way, so
    /// what the tag carries now says nothing about drift.
    InFlight,
    /// The tag carries `observed` (empty: it is gone) instead.
    Drifted {
        observed: String,
        /// No DRIFT_DETECTED entry recorded this digest yet (since the tag
        /// was last in place): record one.
        record: bool,
        /// Push the expected manifest back (`restore_on_drift`). Repeated on
        /// every read until it succeeds.
        restore: bool,
    },
}

/// Decides for a tag whose log says `record` and which the registry shows
/// carrying `observed` (`None`: the tag does not exist). `in_flight`: a
/// promotion of the tag is APPROVED.
pub fn decide(
    record: &TagRecord,
    observed: Option<&str>,
    in_flight: bool,
    restore_on_drift: bool,
) -> Decision {
    let observed = observed.unwrap_or_default();
    if observed == record.expected() {
        return match record.drift.last() {
            Some(last) if last.event.action == Action::DriftDetected => Decision::Back {
                from: last.event.digest.clone(),
            },
            _ => Decision::InPlace,
        };
    }
    if in_flight {
        return Decision::InFlight;
    }
    let seen = record.observed_since_in_place().any(|d| d == observed);
    Decision::Drifted {
        observed: observed.to_owned(),
        record: !seen,
        restore: restore_on_drift,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::GENESIS;
    use crate::domain::model::{Event, NO_PROMOTION, Time, drift_detected, drift_restored};
    use std::collections::BTreeMap;

    const A: &str = "sha256:aaaa";
    const B: &str = "sha256:bbbb";
    const C: &str = "sha256:cccc";

    fn entry(seq: u64, event: Event) -> AuditEntry {
        AuditEntry::chain(GENESIS, seq, Time::ZERO, event)
    }

    fn applied(digest: &str) -> AuditEntry {
        entry(
            1,
            Event {
                action: Action::Applied,
                actor: "prodgate".into(),
                promotion_id: 7,
                repository: "r.io/app".into(),
                environment: "production".into(),
                digest: digest.into(),
                previous_digest: String::new(),
                comment: String::new(),
                attributes: BTreeMap::new(),
            },
        )
    }

    fn detected(seq: u64, observed: &str) -> AuditEntry {
        entry(seq, drift_detected("r.io/app", "production", observed, A))
    }

    fn restored(seq: u64, from: &str) -> AuditEntry {
        entry(seq, drift_restored("r.io/app", "production", A, from))
    }

    fn record(drift: Vec<AuditEntry>) -> TagRecord {
        TagRecord {
            applied: applied(A),
            drift,
        }
    }

    fn drifted(observed: &str, record: bool, restore: bool) -> Decision {
        Decision::Drifted {
            observed: observed.into(),
            record,
            restore,
        }
    }

    #[test]
    fn a_tag_on_the_applied_digest_is_in_place() {
        assert_eq!(
            decide(&record(vec![]), Some(A), false, true),
            Decision::InPlace
        );
        assert_eq!(
            decide(
                &record(vec![detected(2, B), restored(3, B)]),
                Some(A),
                false,
                false
            ),
            Decision::InPlace
        );
        assert!(!record(vec![]).drifted());
    }

    #[test]
    fn another_digest_is_recorded_once() {
        let fresh = record(vec![]);
        assert_eq!(
            decide(&fresh, Some(B), false, false),
            drifted(B, true, false)
        );
        let seen = record(vec![detected(2, B)]);
        assert!(seen.drifted());
        assert_eq!(
            decide(&seen, Some(B), false, false),
            drifted(B, false, false)
        );
        // A second out-of-band digest is news; going back to the first is not.
        assert_eq!(
            decide(&seen, Some(C), false, false),
            drifted(C, true, false)
        );
        let both = record(vec![detected(2, B), detected(3, C)]);
        assert_eq!(
            decide(&both, Some(B), false, false),
            drifted(B, false, false)
        );
    }

    #[test]
    fn a_deleted_tag_is_drift_to_the_empty_digest() {
        assert_eq!(
            decide(&record(vec![]), None, false, false),
            drifted("", true, false)
        );
        let seen = record(vec![detected(2, "")]);
        assert_eq!(decide(&seen, None, false, false), drifted("", false, false));
    }

    #[test]
    fn nothing_is_decided_while_a_move_is_in_flight() {
        assert_eq!(
            decide(&record(vec![]), Some(B), true, true),
            Decision::InFlight
        );
        // The tag already on the expected digest needs no decision either way.
        assert_eq!(
            decide(&record(vec![]), Some(A), true, true),
            Decision::InPlace
        );
    }

    #[test]
    fn restore_is_asked_on_every_read_until_the_tag_is_back() {
        assert_eq!(
            decide(&record(vec![]), Some(B), false, true),
            drifted(B, true, true)
        );
        let seen = record(vec![detected(2, B)]);
        assert_eq!(decide(&seen, Some(B), false, true), drifted(B, false, true));
    }

    #[test]
    fn after_a_restore_the_same_digest_is_news_again() {
        let r = record(vec![detected(2, B), restored(3, B)]);
        assert!(!r.drifted());
        assert_eq!(decide(&r, Some(B), false, false), drifted(B, true, false));
    }

    #[test]
    fn a_tag_put_back_by_hand_is_recorded_as_back() {
        let r = record(vec![detected(2, B), detected(3, C)]);
        assert_eq!(
            decide(&r, Some(A), false, false),
            Decision::Back { from: C.into() }
        );
    }

    #[test]
    fn drift_events_name_no_promotion_and_the_service() {
        let e = drift_detected("r.io/app", "production", B, A);
        assert_eq!(e.promotion_id, NO_PROMOTION);
        assert_eq!(e.actor, "prodgate");
        assert_eq!((e.digest.as_str(), e.previous_digest.as_str()), (B, A));
        assert!(e.attributes.is_empty());
        let r = drift_restored("r.io/app", "production", A, B);
        assert_eq!(r.action, Action::DriftRestored);
        assert_eq!((r.digest.as_str(), r.previous_digest.as_str()), (A, B));
    }
}
