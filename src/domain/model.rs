//! The promotion record, its states, and the audit events it produces.

use jiff::fmt::temporal::DateTimePrinter;
use jiff::{SignedDuration, civil};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time with the precision the audit hash covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Time {
    pub seconds: i64,
    pub nanos: u32,
}

impl Time {
    pub const ZERO: Time = Time {
        seconds: 0,
        nanos: 0,
    };

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(_) => Self::ZERO,
        }
    }

    /// `2026-11-26T18:00:00.123456789Z`: RFC 3339 in UTC with `Z`, the one
    /// renderer of instants (jiff's printer). Through civil time in UTC, not
    /// `jiff::Timestamp`, whose range stops a day short of
    /// 9999-12-31T23:59:59Z (room for any offset), the last instant the API
    /// accepts. Outside the years -9999..=9999 no date can be printed; the
    /// API refuses such times, but rendering must never be what fails, so
    /// they read `…s from 1970-01-01T00:00:00Z`.
    pub fn rfc3339(self, precision: Precision) -> String {
        const EPOCH: civil::DateTime = civil::date(1970, 1, 1).at(0, 0, 0, 0);
        let nanos = self.nanos.min(999_999_999);
        let Some(utc) = i32::try_from(nanos)
            .ok()
            .and_then(|n| EPOCH.checked_add(SignedDuration::new(self.seconds, n)).ok())
        else {
            return format!("{}s from 1970-01-01T00:00:00Z", self.seconds);
        };
        let digits = match precision {
            Precision::Seconds => Some(0),
            Precision::Exact if nanos == 0 => Some(0),
            Precision::Exact if nanos.is_multiple_of(1_000_000) => Some(3),
            Precision::Exact if nanos.is_multiple_of(1_000) => Some(6),
            Precision::Exact | Precision::Nanos => Some(9),
            Precision::Shortest => None,
        };
        let mut out = DateTimePrinter::new()
            .precision(digits)
            .datetime_to_string(&utc);
        out.push('Z');
        out
    }

    /// From `self` to `later`, zero if `later` is not later.
    pub fn until(self, later: Time) -> Duration {
        let nanos = |t: Time| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        let d = (nanos(later) - nanos(self)).max(0);
        Duration::new(
            u64::try_from(d / 1_000_000_000).unwrap_or(u64::MAX),
            u32::try_from(d % 1_000_000_000).unwrap_or(0),
        )
    }

    pub fn plus(self, d: Duration) -> Self {
        let total = i128::from(self.nanos) + i128::from(d.subsec_nanos());
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Self {
            seconds: self
                .seconds
                .saturating_add(secs)
                .saturating_add(i64::from(total >= 1_000_000_000)),
            nanos: u32::try_from(total % 1_000_000_000).unwrap_or(0),
        }
    }
}

/// How many fractional digits [`Time::rfc3339`] shows. Each one is a format
/// already in use; the policy digest and attached records depend on theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Whole seconds, for tables.
    Seconds,
    /// 0, 3, 6 or 9 digits, whichever loses nothing: the proto3 JSON rule
    /// (`-o json`).
    Exact,
    /// As few digits as lose nothing (`.12`), none for whole seconds: jiff's
    /// own `Display`, as the canonical policy document (which its digest
    /// covers) and the gates' messages print instants.
    Shortest,
    /// Always nine digits: the attached promotion record and error messages.
    Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    PendingApproval,
    Approved,
    Promoted,
    Rejected,
    Cancelled,
    Expired,
    Failed,
    /// A newer promotion of the same repository and environment won.
    Superseded,
    /// The approvals are complete and another gate (soak, window, freeze,
    /// checks, signature) still blocks; prodgate moves it on by itself.
    /// Last, so the stored variant index of every older state stays.
    Waiting,
}

impl State {
    pub const ALL: [State; 9] = [
        State::PendingApproval,
        State::Approved,
        State::Promoted,
        State::Rejected,
        State::Cancelled,
        State::Expired,
        State::Failed,
        State::Superseded,
        State::Waiting,
    ];

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            State::PendingApproval | State::Waiting | State::Approved
        )
    }

    /// Open and not yet APPROVED: it may still be approved, rejected or
    /// cancelled (approvals are recorded in either).
    pub fn is_undecided(self) -> bool {
        matches!(self, State::PendingApproval | State::Waiting)
    }

    /// Stable one-byte code used in storage keys.
    pub fn code(self) -> u8 {
        match self {
            State::PendingApproval => 1,
            State::Approved => 2,
            State::Promoted => 3,
            State::Rejected => 4,
            State::Cancelled => 5,
            State::Expired => 6,
            State::Failed => 7,
            State::Superseded => 8,
            State::Waiting => 9,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::PendingApproval => "PENDING_APPROVAL",
            State::Approved => "APPROVED",
            State::Promoted => "PROMOTED",
            State::Rejected => "REJECTED",
            State::Cancelled => "CANCELLED",
            State::Expired => "EXPIRED",
            State::Failed => "FAILED",
            State::Superseded => "SUPERSEDED",
            State::Waiting => "WAITING",
        }
    }
}

/// What an audit entry records. The numbers are part of the hash format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Requested,
    Approved,
    Rejected,
    Cancelled,
    Expired,
    Applied,
    ApplyFailed,
    Superseded,
    /// A validation check's result for a digest; no promotion.
    CheckReported,
    /// The effective policy changed (at start or on a reload); no
    /// promotion; attribute `policy` is its digest.
    PolicyChanged,
    /// The drift watch found a tag off the digest prodgate moved it to; no
    /// promotion (see [`drift_detected`]).
    DriftDetected,
    /// prodgate pushed the approved manifest back under a drifted tag; no
    /// promotion (see [`drift_restored`]).
    DriftRestored,
    /// A WAITING promotion's gates all passed and it became APPROVED
    /// (actor `prodgate`; attributes `gates`, `policy`).
    GatesPassed,
}

impl Action {
    pub fn number(self) -> u32 {
        match self {
            Action::Requested => 1,
            Action::Approved => 2,
            Action::Rejected => 3,
            Action::Cancelled => 4,
            Action::Expired => 5,
            Action::Applied => 6,
            Action::ApplyFailed => 7,
            Action::Superseded => 8,
            Action::CheckReported => 9,
            Action::PolicyChanged => 10,
            Action::DriftDetected => 11,
            Action::DriftRestored => 12,
            Action::GatesPassed => 13,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approver: String,
    pub comment: String,
    pub time: Time,
    /// The approver's groups when they approved, sorted: `required_groups`
    /// is judged on these only, so a later group change alters nothing.
    pub groups: Vec<String>,
}

pub type PromotionId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub id: PromotionId,
    pub repository: String,
    pub environment: String,
    pub target_tag: String,
    pub source: String,
    /// Pinned when the promotion is requested; the only digest it can move.
    pub digest: String,
    pub state: State,
    pub requested_by: String,
    pub reason: String,
    pub approvals: Vec<Approval>,
    pub required_approvals: u32,
    pub previous_digest: String,
    pub created_at: Time,
    pub updated_at: Time,
    pub promoted_at: Option<Time>,
    pub failure_message: String,
    pub expires_at: Time,
    /// The requester's idempotency key, if any.
    pub request_id: String,
    /// The newer promotion that ended this one as SUPERSEDED.
    pub superseded_by: Option<PromotionId>,
    /// A break-glass call overrode the window or soak gate for it.
    pub break_glass: bool,
    /// The project whose policy governs its repository ("" for the
    /// top-level defaults), when it was requested.
    pub project: String,
    /// Opened by Rollback: back to a digest the tag carried before.
    pub rollback: bool,
    /// The digest of the policy version under which it became APPROVED
    /// (empty before).
    pub policy_digest: String,
    /// While WAITING: the gates that still block, in evaluation order.
    pub waiting_for: Vec<String>,
    /// While WAITING: the earliest time the time gates can all be open;
    /// `None` when only checks or a signature block.
    pub not_before: Option<Time>,
    /// The release it is a member of: the id of the release's first member
    /// (a release's members are created in one write, so their ids follow
    /// one another from it). `None` for a promotion of its own.
    pub release_id: Option<PromotionId>,
    /// While APPROVED: the last transient registry error of the tag move and
    /// how many attempts were made. Progress, not state: it is not audited
    /// (one entry per retry would flood the log), so it is not stored with
    /// the record; the store's backend keeps it beside (see
    /// `store::Storage::apply_progress`).
    #[serde(skip)]
    pub last_apply_error: String,
    #[serde(skip)]
    pub apply_attempts: u32,
}

/// The content of one audit entry before it is numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub action: Action,
    pub actor: String,
    pub promotion_id: PromotionId,
    pub repository: String,
    pub environment: String,
    pub digest: String,
    pub previous_digest: String,
    pub comment: String,
    /// Named facts of the entry (e.g. `policy`, `check`, `break_glass`),
    /// hashed after `comment` when present (see `audit::HashInput`).
    pub attributes: BTreeMap<String, String>,
}

/// What a validation check reported for a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckStatus {
    Passed,
    Failed,
}

impl CheckStatus {
    /// The `status` attribute of a CHECK_REPORTED entry.
    pub fn label(self) -> &'static str {
        match self {
            CheckStatus::Passed => "passed",
            CheckStatus::Failed => "failed",
        }
    }

    /// As people read it (and as the proto names it): `PASSED`, `FAILED`.
    pub fn name(self) -> &'static str {
        match self {
            CheckStatus::Passed => "PASSED",
            CheckStatus::Failed => "FAILED",
        }
    }

    pub fn from_label(s: &str) -> Option<Self> {
        match s {
            "passed" => Some(CheckStatus::Passed),
            "failed" => Some(CheckStatus::Failed),
            _ => None,
        }
    }
}

/// The latest report of one check for one digest, read back from its
/// CHECK_REPORTED audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub repository: String,
    pub digest: String,
    pub check: String,
    pub status: CheckStatus,
    pub reported_by: String,
    pub time: Time,
    pub details_url: String,
    pub comment: String,
}

impl CheckReport {
    /// The CHECK_REPORTED event that records this report (its time is the
    /// entry's). Attributes: `check`, `status`, and `url` when given.
    pub fn event(&self) -> Event {
        let mut attributes = BTreeMap::new();
        attributes.insert("check".to_owned(), self.check.clone());
        attributes.insert("status".to_owned(), self.status.label().to_owned());
        if !self.details_url.is_empty() {
            attributes.insert("url".to_owned(), self.details_url.clone());
        }
        Event {
            action: Action::CheckReported,
            actor: self.reported_by.clone(),
            promotion_id: NO_PROMOTION,
            repository: self.repository.clone(),
            environment: String::new(),
            digest: self.digest.clone(),
            previous_digest: String::new(),
            comment: self.comment.clone(),
            attributes,
        }
    }

    /// The report a CHECK_REPORTED entry records, if it is one.
    pub fn from_entry(e: &crate::domain::audit::AuditEntry) -> Option<Self> {
        let ev = &e.event;
        if ev.action != Action::CheckReported {
            return None;
        }
        Some(Self {
            repository: ev.repository.clone(),
            digest: ev.digest.clone(),
            check: ev.attributes.get("check")?.clone(),
            status: CheckStatus::from_label(ev.attributes.get("status")?)?,
            reported_by: ev.actor.clone(),
            time: e.time,
            details_url: ev.attributes.get("url").cloned().unwrap_or_default(),
            comment: ev.comment.clone(),
        })
    }
}

/// Whether a report of a check may be recorded for a digest whose reports
/// name `distinct` checks (`known`: this check among them): a known check
/// may always be reported again; a new one only while fewer than `limit`
/// are, so what a digest's checks take is bounded.
pub fn may_record_check(known: bool, distinct: usize, limit: usize) -> bool {
    known || distinct < limit
}

/// The POLICY_CHANGED event recording the policy version `digest`, which
/// the service writes on its own.
pub fn policy_changed(digest: &str) -> Event {
    let mut attributes = BTreeMap::new();
    attributes.insert(POLICY_ATTRIBUTE.to_owned(), digest.to_owned());
    Event {
        action: Action::PolicyChanged,
        actor: SERVICE_ACTOR.to_owned(),
        promotion_id: NO_PROMOTION,
        repository: String::new(),
        environment: String::new(),
        digest: String::new(),
        previous_digest: String::new(),
        comment: String::new(),
        attributes,
    }
}

/// The DRIFT_DETECTED event: `environment`'s tag of `repository` carries
/// `observed` (empty: the tag is gone) instead of `expected`, the digest
/// prodgate last moved it to.
pub fn drift_detected(
    repository: &str,
    environment: &str,
    observed: &str,
    expected: &str,
) -> Event {
    service_event(
        Action::DriftDetected,
        repository,
        environment,
        observed,
        expected,
    )
}

/// The DRIFT_RESTORED event: prodgate pushed `restored` back under the tag,
/// which carried `observed` (empty: the tag was gone).
pub fn drift_restored(
    repository: &str,
    environment: &str,
    restored: &str,
    observed: &str,
) -> Event {
    service_event(
        Action::DriftRestored,
        repository,
        environment,
        restored,
        observed,
    )
}

fn service_event(
    action: Action,
    repository: &str,
    environment: &str,
    digest: &str,
    previous_digest: &str,
) -> Event {
    Event {
        action,
        actor: SERVICE_ACTOR.to_owned(),
        promotion_id: NO_PROMOTION,
        repository: repository.to_owned(),
        environment: environment.to_owned(),
        digest: digest.to_owned(),
        previous_digest: previous_digest.to_owned(),
        comment: String::new(),
        attributes: BTreeMap::new(),
    }
}

/// The attribute naming a policy version's digest: on POLICY_CHANGED
/// entries, and on the entry that makes a promotion APPROVED.
pub const POLICY_ATTRIBUTE: &str = "policy";

/// The attribute naming the fingerprint of the key whose signature passed
/// the signature gate, on the entry that makes a promotion APPROVED.
pub const SIGNATURE_ATTRIBUTE: &str = "signature";

/// `promotion_id` of entries about no promotion (check reports); hashed and
/// shown as the empty string. Promotion ids start at 1.
pub const NO_PROMOTION: PromotionId = 0;

/// The actor of entries the service writes on its own.
pub const SERVICE_ACTOR: &str = "prodgate";

#[cfg(test)]
mod check_limit_tests {
    use super::may_record_check;

    #[test]
    fn a_new_check_needs_room_a_known_one_never_does() {
        assert!(may_record_check(false, 0, 1));
        assert!(may_record_check(false, 63, 64));
        assert!(!may_record_check(false, 64, 64));
        assert!(
            !may_record_check(false, 3000, 64),
            "reported before the limit"
        );
        assert!(may_record_check(true, 64, 64));
        assert!(may_record_check(true, 3000, 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_renderer_four_precisions() {
        let t = Time {
            seconds: 1_795_703_520,
            nanos: 120_000_000,
        };
        assert_eq!(t.rfc3339(Precision::Seconds), "2026-11-26T14:32:00Z");
        assert_eq!(t.rfc3339(Precision::Exact), "2026-11-26T14:32:00.120Z");
        assert_eq!(t.rfc3339(Precision::Shortest), "2026-11-26T14:32:00.12Z");
        assert_eq!(
            t.rfc3339(Precision::Nanos),
            "2026-11-26T14:32:00.120000000Z"
        );
        // Records and messages printed humantime's nanos format until jiff.
        for seconds in [0, 86_399, 951_782_400, 1_795_703_520, 253_402_300_799] {
            for nanos in [0, 5, 120_000_000, 999_999_999] {
                let t = Time { seconds, nanos };
                let st = UNIX_EPOCH + Duration::new(u64::try_from(seconds).unwrap_or(0), nanos);
                assert_eq!(
                    t.rfc3339(Precision::Nanos),
                    humantime::format_rfc3339_nanos(st).to_string()
                );
            }
        }
        let first = Time {
            seconds: -62_135_596_800,
            nanos: 0,
        };
        assert_eq!(first.rfc3339(Precision::Exact), "0001-01-01T00:00:00Z");
        let beyond = Time {
            seconds: 253_402_300_800 * 2,
            nanos: 0,
        };
        assert_eq!(
            beyond.rfc3339(Precision::Seconds),
            "506804601600s from 1970-01-01T00:00:00Z"
        );
    }
}
