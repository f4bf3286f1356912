//! The promotion state machine. Every function is pure: it takes the current
//! record, the actor, the policy and the time, and returns the next record with
//! the audit event that records the change, or the reason for refusing it.
//!
//! ```text
//! PENDING_APPROVAL --approve (last)--> APPROVED --applied--> PROMOTED
//!        |  \--reject--> REJECTED                 \--apply failed--> FAILED
//!        |---cancel--> CANCELLED
//!        |---ttl passed--> EXPIRED
//!        \---a newer one applied--> SUPERSEDED <--a newer one approved-- APPROVED
//! ```
//!
//! Supersession is how the tag never silently steps backwards: once a
//! promotion of a repository's environment is applied, every older one still
//! open (pending, or approved and waiting) ends SUPERSEDED; and an approved
//! promotion still waiting for its tag move gives way to a newer approved
//! one (the apply worker checks before each attempt, so a push in flight
//! finishes first). Moving back on purpose is a rollback, not an accident.

use super::model::{Action, Approval, Event, Promotion, PromotionId, SERVICE_ACTOR, State, Time};
use super::policy::{EnvironmentPolicy, Principal};

/// Why a transition was refused. Refusals change nothing and write nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{principal} is not a designated approver of environment {environment}{governed}")]
    NotApprover {
        principal: String,
        environment: String,
        /// Who approves there, and the project whose policy says so (empty
        /// where that is not known).
        governed: String,
    },
    #[error(
        "{principal} requested this promotion and environment {environment} does not allow self-approval; another approver must approve it"
    )]
    SelfApproval {
        principal: String,
        environment: String,
    },
    #[error(
        "only the requester or an approver of environment {environment} may cancel this promotion"
    )]
    NotAllowedToCancel { environment: String },
    #[error("promotion {id} is {state} and can no longer be {verb}{by}", state = state.label(),
        by = superseded_by.map_or_else(String::new, |n| format!(
            " (promotion {n} of the same repository and environment replaced it; request again to ship this digest)")))]
    NotPending {
        id: PromotionId,
        state: State,
        verb: &'static str,
        superseded_by: Option<PromotionId>,
    },
    #[error("promotion {id} is {state}, not APPROVED", state = state.label())]
    NotApproved { id: PromotionId, state: State },
}

/// A transition's result: the new record and, if anything happened, its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub promotion: Promotion,
    pub event: Option<Event>,
}

/// What a requester asks for, validated and with the digest already pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPromotion {
    pub repository: String,
    pub environment: String,
    pub source: String,
    pub digest: String,
    pub reason: String,
    pub request_id: String,
    /// The governing project ("" for the defaults).
    pub project: String,
    /// A rollback (its REQUESTED entry says `kind = "rollback"`).
    pub rollback: bool,
}

/// The entry recording `action` on `p` (as it stands after it).
pub fn entry(p: &Promotion, action: Action, actor: &str, comment: &str) -> Event {
    Event {
        action,
        actor: actor.to_owned(),
        promotion_id: p.id,
        repository: p.repository.clone(),
        environment: p.environment.clone(),
        digest: p.digest.clone(),
        previous_digest: p.previous_digest.clone(),
        comment: comment.to_owned(),
        attributes: Default::default(),
    }
}

/// Opens a promotion, PENDING_APPROVAL; [`super::decision::request`]
/// decides at once when no approvals are required.
pub fn request(
    id: PromotionId,
    new: NewPromotion,
    requester: &Principal,
    policy: &EnvironmentPolicy,
    now: Time,
) -> Outcome {
    let state = State::PendingApproval;
    let p = Promotion {
        id,
        repository: new.repository,
        environment: new.environment,
        target_tag: policy.tag.clone(),
        source: new.source,
        digest: new.digest,
        state,
        requested_by: requester.name.clone(),
        reason: new.reason,
        approvals: Vec::new(),
        required_approvals: policy.required_approvals,
        previous_digest: String::new(),
        created_at: now,
        updated_at: now,
        promoted_at: None,
        failure_message: String::new(),
        expires_at: now.plus(policy.approval_ttl),
        request_id: new.request_id,
        superseded_by: None,
        break_glass: false,
        project: new.project,
        rollback: new.rollback,
        policy_digest: String::new(),
        waiting_for: Vec::new(),
        not_before: None,
        release_id: None,
        last_apply_error: String::new(),
        apply_attempts: 0,
    };
    let mut e = entry(&p, Action::Requested, &requester.name, &p.reason);
    if p.rollback {
        e.attributes.insert("kind".into(), "rollback".into());
    }
    if !p.request_id.is_empty() {
        e.attributes
            .insert(REQUEST_ID_ATTRIBUTE.into(), p.request_id.clone());
    }
    Outcome {
        promotion: p,
        event: Some(e),
    }
}

/// An undecided promotion past its deadline (`approval_ttl` while pending,
/// `wait_ttl` while waiting), as the service records it.
pub fn expire_if_due(p: &Promotion, now: Time) -> Option<Outcome> {
    if !p.state.is_undecided() || now < p.expires_at {
        return None;
    }
    let mut next = p.clone();
    next.state = State::Expired;
    next.updated_at = now;
    let why = match p.state {
        State::Waiting => format!(
            "wait_ttl elapsed while waiting for {}",
            p.waiting_for.join(", ")
        ),
        _ => "approval_ttl elapsed".to_owned(),
    };
    let e = entry(&next, Action::Expired, SERVICE_ACTOR, &why);
    Some(Outcome {
        promotion: next,
        event: Some(e),
    })
}

fn require_undecided(p: &Promotion, verb: &'static str) -> Result<(), DomainError> {
    if p.state.is_undecided() {
        Ok(())
    } else {
        Err(DomainError::NotPending {
            id: p.id,
            state: p.state,
            verb,
            superseded_by: p.superseded_by,
        })
    }
}

fn require_approver(
    p: &Promotion,
    who: &Principal,
    policy: &EnvironmentPolicy,
) -> Result<(), DomainError> {
    if policy.is_approver(who) {
        Ok(())
    } else {
        let project = if p.project.is_empty() {
            String::new()
        } else {
            format!(" of project {}", p.project)
        };
        Err(DomainError::NotApprover {
            principal: who.name.clone(),
            environment: p.environment.clone(),
            governed: format!(
                "{project} (its approvers: {})",
                super::policy::describe(&policy.approvers)
            ),
        })
    }
}

/// Whether `who`'s approval is still needed now (what "awaiting me"
/// lists): the promotion is pending (a WAITING one has its quorum) and not
/// overdue, `who` is an approver, not the requester (unless the policy
/// allows self-approval), and has not approved it yet.
pub fn may_approve(p: &Promotion, who: &Principal, policy: &EnvironmentPolicy, now: Time) -> bool {
    p.state == State::PendingApproval
        && now < p.expires_at
        && policy.is_approver(who)
        && (!who.is(&p.requested_by) || policy.allow_self_approval)
        && !p.approvals.iter().any(|a| who.is(&a.approver))
}

/// Records an approval while the promotion is undecided, whatever the other
/// gates say; whether it completes the quorum is
/// [`super::decision::approve`]'s to decide. The same person twice counts
/// once and changes nothing. Callers expire a due promotion first
/// ([`expire_if_due`]).
pub fn approve(
    p: &Promotion,
    who: &Principal,
    policy: &EnvironmentPolicy,
    comment: &str,
    now: Time,
) -> Result<Outcome, DomainError> {
    // A finished promotion's state first: it is the answer whoever asks.
    require_undecided(p, "approved")?;
    require_approver(p, who, policy)?;
    if who.is(&p.requested_by) && !policy.allow_self_approval {
        return Err(DomainError::SelfApproval {
            principal: who.name.clone(),
            environment: p.environment.clone(),
        });
    }
    if p.approvals.iter().any(|a| who.is(&a.approver)) {
        return Ok(Outcome {
            promotion: p.clone(),
            event: None,
        });
    }
    let mut next = p.clone();
    let groups = recorded_groups(who);
    next.approvals.push(Approval {
        approver: who.name.clone(),
        comment: comment.to_owned(),
        time: now,
        groups: groups.clone(),
    });
    next.updated_at = now;
    let mut e = entry(&next, Action::Approved, &who.name, comment);
    // The groups the approval counts for, in the log an auditor reads
    // (absent for an approver in no group).
    if !groups.is_empty() {
        e.attributes
            .insert(GROUPS_ATTRIBUTE.to_owned(), groups.join(","));
    }
    Ok(Outcome {
        promotion: next,
        event: Some(e),
    })
}

pub fn reject(
    p: &Promotion,
    who: &Principal,
    policy: &EnvironmentPolicy,
    comment: &str,
    now: Time,
) -> Result<Outcome, DomainError> {
    require_undecided(p, "rejected")?;
    require_approver(p, who, policy)?;
    let mut next = p.clone();
    next.state = State::Rejected;
    next.updated_at = now;
    let e = entry(&next, Action::Rejected, &who.name, comment);
    Ok(Outcome {
        promotion: next,
        event: Some(e),
    })
}

pub fn cancel(
    p: &Promotion,
    who: &Principal,
    policy: &EnvironmentPolicy,
    comment: &str,
    now: Time,
) -> Result<Outcome, DomainError> {
    require_undecided(p, "cancelled")?;
    if !who.is(&p.requested_by) && !policy.is_approver(who) {
        return Err(DomainError::NotAllowedToCancel {
            environment: p.environment.clone(),
        });
    }
    let mut next = p.clone();
    next.state = State::Cancelled;
    next.updated_at = now;
    let e = entry(&next, Action::Cancelled, &who.name, comment);
    Ok(Outcome {
        promotion: next,
        event: Some(e),
    })
}

/// The tag now carries the pinned digest.
pub fn applied(p: &Promotion, previous_digest: &str, now: Time) -> Result<Outcome, DomainError> {
    require_approved(p)?;
    let mut next = p.clone();
    next.state = State::Promoted;
    next.previous_digest = previous_digest.to_owned();
    next.promoted_at = Some(now);
    next.updated_at = now;
    let e = entry(&next, Action::Applied, SERVICE_ACTOR, "");
    Ok(Outcome {
        promotion: next,
        event: Some(e),
    })
}

/// The registry refused the move for good.
pub fn apply_failed(p: &Promotion, message: &str, now: Time) -> Result<Outcome, DomainError> {
    require_approved(p)?;
    let mut next = p.clone();
    next.state = State::Failed;
    next.failure_message = message.to_owned();
    next.updated_at = now;
    let e = entry(&next, Action::ApplyFailed, SERVICE_ACTOR, message);
    Ok(Outcome {
        promotion: next,
        event: Some(e),
    })
}

/// Ends `p` (still open: pending, or approved and not yet applied) because
/// `newer`, a later promotion of the same repository and environment, was
/// applied or approved first. `None` when `p` is not older or not open.
pub fn supersede(p: &Promotion, newer: &Promotion, now: Time) -> Option<Outcome> {
    let open = matches!(
        p.state,
        State::PendingApproval | State::Waiting | State::Approved
    );
    let same_target = p.repository == newer.repository && p.environment == newer.environment;
    if !open || !same_target || p.id >= newer.id {
        return None;
    }
    let mut next = p.clone();
    next.state = State::Superseded;
    next.superseded_by = Some(newer.id);
    next.updated_at = now;
    let comment = match newer.state {
        State::Promoted => format!(
            "superseded by promotion {}, which moved {} to {}",
            newer.id, newer.target_tag, newer.digest
        ),
        _ => format!(
            "superseded by promotion {} ({}), approved while this one waited for its tag move",
            newer.id, newer.digest
        ),
    };
    let e = entry(&next, Action::Superseded, SERVICE_ACTOR, &comment);
    Some(Outcome {
        promotion: next,
        event: Some(e),
    })
}

/// The REQUESTED entry's attribute holding the idempotency key the
/// promotion was requested with (absent without one).
pub const REQUEST_ID_ATTRIBUTE: &str = "request_id";

/// The APPROVED entry's attribute naming the approver's groups then,
/// sorted and comma-separated.
pub const GROUPS_ATTRIBUTE: &str = "groups";

/// `who`'s groups as an approval records them: sorted, each once.
pub fn recorded_groups(who: &Principal) -> Vec<String> {
    let mut g = who.groups.clone();
    g.sort();
    g.dedup();
    g
}

fn require_approved(p: &Promotion) -> Result<(), DomainError> {
    if p.state == State::Approved {
        Ok(())
    } else {
        Err(DomainError::NotApproved {
            id: p.id,
            state: p.state,
        })
    }
}

/// What the tests here drive: the service decides through `decision`, and
/// with no gate but the approvals configured these are its request and
/// approve, in this module's terms.
#[cfg(test)]
mod via_decision {
    use super::{DomainError, NewPromotion, Outcome};
    use crate::domain::decision::{self, Refusal};
    use crate::domain::model::{Promotion, PromotionId, Time};
    use crate::domain::policy::{EnvironmentPolicy, Principal};

    pub fn request(
        id: PromotionId,
        new: NewPromotion,
        requester: &Principal,
        policy: &EnvironmentPolicy,
        now: Time,
    ) -> Outcome {
        decision::request(
            id,
            new,
            requester,
            false,
            &decision::bare_facts(policy, now),
        )
        .expect("no refusing gate is configured")
    }

    pub fn approve(
        p: &Promotion,
        who: &Principal,
        policy: &EnvironmentPolicy,
        comment: &str,
        now: Time,
    ) -> Result<Outcome, DomainError> {
        decision::approve(p, who, false, comment, &decision::bare_facts(policy, now)).map_err(|r| {
            match r {
                Refusal::Domain(d) => d,
                other => panic!("not a domain refusal: {other:?}"),
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use crate::domain::policy::Approver;
    use std::time::Duration;
    use via_decision::{approve, request};

    fn who(name: &str, groups: &[&str]) -> Principal {
        Principal::new(name, groups.iter().map(|g| g.to_string()).collect())
    }

    fn policy(required: u32) -> EnvironmentPolicy {
        EnvironmentPolicy {
            name: "production".into(),
            tag: "production".into(),
            requires: Some("staging".into()),
            approvers: vec![Approver::parse("group:rm"), Approver::parse("carol")],
            required_approvals: required,
            allow_self_approval: false,
            approval_ttl: Duration::from_secs(60),
            apply_deadline: None,
            required_groups: Vec::new(),
            required_checks: Vec::new(),
            min_soak: None,
            window: None,
            break_glass: Vec::new(),
            rollback_approvals: required,
            freezes: Vec::new(),
            restore_on_drift: false,
            attach_record: false,
            attest: false,
            signature_keys: Vec::new(),
            wait_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }

    fn t(s: i64) -> Time {
        Time {
            seconds: s,
            nanos: 0,
        }
    }

    /// A promotion of r.io/app to production, PENDING_APPROVAL (for other
    /// modules' tests too).
    pub(crate) fn pending(required: u32) -> Promotion {
        let new = NewPromotion {
            repository: "r.io/app".into(),
            environment: "production".into(),
            source: "staging".into(),
            digest: format!("sha256:{}", "1".repeat(64)),
            reason: "ship".into(),
            request_id: String::new(),
            project: String::new(),
            rollback: false,
        };
        request(1, new, &who("alice", &["rm"]), &policy(required), t(100)).promotion
    }

    #[test]
    fn request_pins_and_sets_deadline() {
        let p = pending(1);
        assert_eq!(p.state, State::PendingApproval);
        assert_eq!(p.expires_at, t(160));
        assert_eq!(p.target_tag, "production");
        let auto = {
            let new = NewPromotion {
                repository: "r.io/app".into(),
                environment: "production".into(),
                source: "s".into(),
                digest: "d".into(),
                reason: String::new(),
                request_id: String::new(),
                project: String::new(),
                rollback: false,
            };
            request(2, new, &who("alice", &[]), &policy(0), t(0))
        };
        assert_eq!(auto.promotion.state, State::Approved);
        assert_eq!(auto.event.unwrap().action, Action::Requested);
    }

    #[test]
    fn approvals_and_refusals() {
        let pol = policy(2);
        let p = pending(2);
        // The requester is in the approver group but may not approve alone.
        assert!(matches!(
            approve(&p, &who("alice", &["rm"]), &pol, "", t(101)),
            Err(DomainError::SelfApproval { .. })
        ));
        assert!(matches!(
            approve(&p, &who("mallory", &["dev"]), &pol, "", t(101)),
            Err(DomainError::NotApprover { .. })
        ));
        assert!(!may_approve(&p, &who("alice", &["rm"]), &pol, t(101)));
        assert!(!may_approve(&p, &who("mallory", &["dev"]), &pol, t(101)));
        assert!(may_approve(&p, &who("carol", &[]), &pol, t(101)));
        assert!(
            !may_approve(&p, &who("carol", &[]), &pol, t(160)),
            "overdue"
        );
        let o = approve(&p, &who("carol", &[]), &pol, "lgtm", t(102)).unwrap();
        assert_eq!(o.promotion.state, State::PendingApproval);
        assert!(!may_approve(&o.promotion, &who("carol", &[]), &pol, t(102)));
        assert!(may_approve(
            &o.promotion,
            &who("bob", &["rm"]),
            &pol,
            t(102)
        ));
        assert_eq!(o.event.as_ref().unwrap().actor, "carol");
        let again = approve(&o.promotion, &who("carol", &[]), &pol, "", t(103)).unwrap();
        assert!(again.event.is_none());
        assert_eq!(again.promotion, o.promotion);
        let done = approve(&o.promotion, &who("bob", &["rm"]), &pol, "", t(104)).unwrap();
        assert_eq!(done.promotion.state, State::Approved);
        assert_eq!(done.promotion.approvals.len(), 2);
        assert!(matches!(
            approve(&done.promotion, &who("dave", &["rm"]), &pol, "", t(105)),
            Err(DomainError::NotPending { .. })
        ));
        let mut selfish = pol.clone();
        selfish.allow_self_approval = true;
        let p1 = pending(1);
        let o = approve(&p1, &who("alice", &["rm"]), &selfish, "", t(101)).unwrap();
        assert_eq!(o.promotion.state, State::Approved);
    }

    #[test]
    fn reject_cancel_expire_apply() {
        let pol = policy(1);
        let p = pending(1);
        assert!(reject(&p, &who("alice", &[]), &pol, "", t(101)).is_err());
        let r = reject(&p, &who("carol", &[]), &pol, "no", t(101)).unwrap();
        assert_eq!(r.promotion.state, State::Rejected);
        assert!(cancel(&r.promotion, &who("alice", &[]), &pol, "", t(102)).is_err());
        assert!(matches!(
            cancel(&p, &who("eve", &[]), &pol, "", t(101)),
            Err(DomainError::NotAllowedToCancel { .. })
        ));
        let c = cancel(&p, &who("alice", &[]), &pol, "", t(101)).unwrap();
        assert_eq!(c.promotion.state, State::Cancelled);

        assert!(expire_if_due(&p, t(159)).is_none());
        let e = expire_if_due(&p, t(160)).unwrap();
        assert_eq!(e.promotion.state, State::Expired);
        assert_eq!(e.event.unwrap().actor, SERVICE_ACTOR);
        assert!(expire_if_due(&e.promotion, t(999)).is_none());

        assert!(applied(&p, "", t(101)).is_err());
        let a = approve(&p, &who("carol", &[]), &pol, "", t(101)).unwrap();
        let done = applied(&a.promotion, "sha256:old", t(102)).unwrap();
        assert_eq!(done.promotion.state, State::Promoted);
        assert_eq!(done.promotion.previous_digest, "sha256:old");
        assert_eq!(done.event.unwrap().previous_digest, "sha256:old");
        assert!(applied(&done.promotion, "", t(103)).is_err());
        let f = apply_failed(&a.promotion, "gone", t(102)).unwrap();
        assert_eq!(f.promotion.state, State::Failed);
        assert_eq!(f.promotion.failure_message, "gone");
    }
}

/// Property test: arbitrary sequences of operations over a few promotions,
/// driven through this module's functions exactly as the service drives them,
/// with every emitted event chained into an audit log.
#[cfg(test)]
mod proptests {
    use super::*;
    use crate::domain::audit::{AuditEntry, GENESIS, Verifier};
    use crate::domain::policy::Approver;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::TestCaseError;

    use std::collections::{HashMap, HashSet};
    use std::time::Duration;
    use via_decision::{approve, request};

    /// The principals acting. Approvers of every environment are `group:rm`,
    /// `carol` and `group:sre`, so alice, bob, carol and dave approve (by group
    /// or by name) and mallory and eve do not. Any of them may be a requester.
    const POOL: &[(&str, &[&str])] = &[
        ("alice", &["rm"]),
        ("bob", &["dev", "rm"]),
        ("carol", &[]),
        ("dave", &["sre"]),
        ("mallory", &["dev"]),
        ("eve", &[]),
    ];
    const COMMENTS: &[&str] = &["", "lgtm", "not now", "ünïcödé ✓"];
    const FAILURES: &[&str] = &["manifest unknown", "denied", "x"];
    const START: Time = Time {
        seconds: 1_700_000_000,
        nanos: 0,
    };

    fn principal(i: usize) -> Principal {
        let (name, groups) = POOL[i % POOL.len()];
        Principal::new(
            name.to_owned(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
        )
    }

    fn by_name(name: &str) -> Principal {
        let i = POOL
            .iter()
            .position(|(n, _)| *n == name)
            .expect("pool name");
        principal(i)
    }

    fn policy(required: u32, allow_self: bool, ttl: Duration) -> EnvironmentPolicy {
        EnvironmentPolicy {
            name: format!("env-{required}-{allow_self}"),
            tag: format!("tag-{required}-{allow_self}"),
            requires: Some("staging".to_owned()),
            approvers: ["group:rm", "carol", "group:sre"]
                .into_iter()
                .map(Approver::parse)
                .collect(),
            required_approvals: required,
            allow_self_approval: allow_self,
            approval_ttl: ttl,
            apply_deadline: None,
            required_groups: Vec::new(),
            required_checks: Vec::new(),
            min_soak: None,
            window: None,
            break_glass: Vec::new(),
            rollback_approvals: required,
            freezes: Vec::new(),
            restore_on_drift: false,
            attach_record: false,
            attest: false,
            signature_keys: Vec::new(),
            wait_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }

    fn nanos(t: Time) -> i128 {
        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
    }

    fn from_nanos(n: i128) -> Time {
        Time {
            seconds: i64::try_from(n.div_euclid(1_000_000_000)).unwrap(),
            nanos: u32::try_from(n.rem_euclid(1_000_000_000)).unwrap(),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create {
            required: u32,
            allow_self: bool,
            requester: usize,
            ttl: Duration,
        },
        Approve {
            target: Index,
            who: usize,
            comment: usize,
        },
        Reject {
            target: Index,
            who: usize,
            comment: usize,
        },
        Cancel {
            target: Index,
            who: usize,
            comment: usize,
        },
        /// Time passes.
        Advance(Duration),
        /// Time jumps to just before, exactly at, or just after a deadline.
        ToDeadline {
            target: Index,
            offset_ns: i128,
        },
        /// The expiry sweep (or a read) records an overdue promotion.
        Sweep {
            target: Index,
        },
        Applied {
            target: Index,
            previous: bool,
        },
        ApplyFailed {
            target: Index,
            message: usize,
        },
        /// A newer promotion (`by`) of the same target was applied or approved.
        Supersede {
            target: Index,
            by: Index,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = 0..POOL.len();
        let comment = 0..COMMENTS.len();
        prop_oneof![
            3 => (0u32..=3, any::<bool>(), 0..POOL.len(), 1u64..=60, prop_oneof![Just(0u32), 0u32..1_000_000_000])
                .prop_map(|(required, allow_self, requester, s, n)| Op::Create {
                    required,
                    allow_self,
                    requester,
                    ttl: Duration::new(s, n),
                }),
            6 => (any::<Index>(), who.clone(), comment.clone())
                .prop_map(|(target, who, comment)| Op::Approve { target, who, comment }),
            2 => (any::<Index>(), who.clone(), comment.clone())
                .prop_map(|(target, who, comment)| Op::Reject { target, who, comment }),
            2 => (any::<Index>(), who, comment)
                .prop_map(|(target, who, comment)| Op::Cancel { target, who, comment }),
            3 => (0u64..=30, prop_oneof![Just(0u32), 0u32..1_000_000_000])
                .prop_map(|(s, n)| Op::Advance(Duration::new(s, n))),
            1 => (any::<Index>(), -1i128..=1)
                .prop_map(|(target, offset_ns)| Op::ToDeadline { target, offset_ns }),
            1 => any::<Index>().prop_map(|target| Op::Sweep { target }),
            2 => (any::<Index>(), any::<bool>())
                .prop_map(|(target, previous)| Op::Applied { target, previous }),
            1 => (any::<Index>(), 0..FAILURES.len())
                .prop_map(|(target, message)| Op::ApplyFailed { target, message }),
            1 => (any::<Index>(), any::<Index>())
                .prop_map(|(target, by)| Op::Supersede { target, by }),
        ]
    }

    /// What the rules say an operation must do to a record.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        Refused,
        Unchanged,
        Moves(State),
    }

    struct Tracked {
        p: Promotion,
        /// The record as requested: the fields that must never change.
        created: Promotion,
        policy: EnvironmentPolicy,
        was_approved: bool,
        applied_events: u32,
        /// Events that end an APPROVED promotion (Applied, ApplyFailed).
        apply_events: u32,
    }

    struct Harness {
        now: Time,
        next_id: PromotionId,
        promotions: Vec<Tracked>,
        chain: Vec<AuditEntry>,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                now: START,
                next_id: 1,
                promotions: Vec::new(),
                chain: Vec::new(),
            }
        }

        /// Numbers and chains an event, as the store's writer does.
        fn record(&mut self, e: Event) -> Result<(), TestCaseError> {
            let (prev_hash, prev_time) = self
                .chain
                .last()
                .map_or((GENESIS, START), |l| (l.hash, l.time));
            prop_assert!(self.now >= prev_time, "audit time went backwards");
            let sequence = self.chain.len() as u64 + 1;
            self.chain
                .push(AuditEntry::chain(prev_hash, sequence, self.now, e));
            Ok(())
        }

        /// Checks an outcome against the expectation and, if it changed
        /// anything, stores the record and chains its event.
        fn settle(
            &mut self,
            i: usize,
            result: Result<Outcome, DomainError>,
            expect: Expect,
            action: Action,
        ) -> Result<(), TestCaseError> {
            let before = self.promotions[i].p.clone();
            let o = match (result, expect) {
                (Err(_), Expect::Refused) => return Ok(()),
                (Err(e), _) => {
                    return Err(TestCaseError::fail(format!(
                        "{action:?} refused ({e}) but {expect:?} was expected"
                    )));
                }
                (Ok(o), Expect::Refused) => {
                    return Err(TestCaseError::fail(format!(
                        "{action:?} should have been refused, got {o:?}"
                    )));
                }
                (Ok(o), _) => o,
            };
            let Some(e) = o.event else {
                prop_assert_eq!(expect, Expect::Unchanged);
                prop_assert_eq!(&o.promotion, &before, "no event but the record changed");
                return Ok(());
            };
            let Expect::Moves(state) = expect else {
                return Err(TestCaseError::fail(format!(
                    "{action:?} emitted {e:?} but nothing should have happened"
                )));
            };
            let next = o.promotion;
            prop_assert_eq!(next.state, state);
            prop_assert_eq!(e.action, action);
            prop_assert_eq!(e.promotion_id, next.id);
            prop_assert_eq!(&e.repository, &next.repository);
            prop_assert_eq!(&e.environment, &next.environment);
            prop_assert_eq!(&e.digest, &next.digest);
            prop_assert_eq!(&e.previous_digest, &next.previous_digest);
            prop_assert_eq!(next.updated_at, self.now);
            prop_assert!(next != before, "an event without a change");
            if action == Action::Applied {
                prop_assert_eq!(before.state, State::Approved);
                prop_assert!(self.promotions[i].was_approved);
                self.promotions[i].applied_events += 1;
            }
            if matches!(action, Action::Applied | Action::ApplyFailed) {
                self.promotions[i].apply_events += 1;
            }
            if next.state == State::Approved {
                self.promotions[i].was_approved = true;
            }
            self.promotions[i].p = next;
            self.record(e)
        }

        /// What the service does before a decision: record a due expiry and
        /// skip the decision. True if it expired.
        fn expire_first(&mut self, i: usize) -> Result<bool, TestCaseError> {
            let p = &self.promotions[i].p;
            let due = p.state == State::PendingApproval && self.now >= p.expires_at;
            match expire_if_due(p, self.now) {
                Some(o) => {
                    prop_assert!(due, "expired before its deadline");
                    self.settle(i, Ok(o), Expect::Moves(State::Expired), Action::Expired)?;
                    Ok(true)
                }
                None => {
                    prop_assert!(!due, "an overdue pending promotion did not expire");
                    Ok(false)
                }
            }
        }

        fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
            let n = self.promotions.len();
            let target = |ix: &Index| (n > 0).then(|| ix.index(n));
            match op {
                Op::Create {
                    required,
                    allow_self,
                    requester,
                    ttl,
                } => {
                    let pol = policy(*required, *allow_self, *ttl);
                    let id = self.next_id;
                    self.next_id += 1;
                    let new = NewPromotion {
                        repository: "registry.example.com/team/app".to_owned(),
                        environment: pol.name.clone(),
                        source: "staging".to_owned(),
                        digest: format!("sha256:{id:064x}"),
                        reason: format!("ship {id}"),
                        request_id: String::new(),
                        project: String::new(),
                        rollback: false,
                    };
                    let o = request(id, new, &principal(*requester), &pol, self.now);
                    let p = o.promotion;
                    let e = o.event.expect("request always records an event");
                    prop_assert_eq!(e.action, Action::Requested);
                    prop_assert_eq!(e.promotion_id, id);
                    prop_assert_eq!(&e.actor, &p.requested_by);
                    let want = if *required == 0 {
                        State::Approved
                    } else {
                        State::PendingApproval
                    };
                    prop_assert_eq!(p.state, want);
                    prop_assert_eq!(p.expires_at, self.now.plus(*ttl));
                    prop_assert!(p.approvals.is_empty());
                    self.promotions.push(Tracked {
                        was_approved: p.state == State::Approved,
                        created: p.clone(),
                        p,
                        policy: pol,
                        applied_events: 0,
                        apply_events: 0,
                    });
                    self.record(e)?;
                }
                Op::Approve {
                    target: t,
                    who,
                    comment,
                }
                | Op::Reject {
                    target: t,
                    who,
                    comment,
                }
                | Op::Cancel {
                    target: t,
                    who,
                    comment,
                } => {
                    let Some(i) = target(t) else { return Ok(()) };
                    if self.expire_first(i)? {
                        return Ok(());
                    }
                    let who = principal(*who);
                    let comment = COMMENTS[*comment];
                    let (p, pol) = (&self.promotions[i].p, &self.promotions[i].policy);
                    let pending = p.state == State::PendingApproval;
                    let approver = pol.is_approver(&who);
                    let (result, expect, action) = match op {
                        Op::Approve { .. } => {
                            let expect = if !approver
                                || (who.name == p.requested_by && !pol.allow_self_approval)
                                || !pending
                            {
                                Expect::Refused
                            } else if p.approvals.iter().any(|a| a.approver == who.name) {
                                Expect::Unchanged
                            } else if p.approvals.len() + 1 >= p.required_approvals as usize {
                                Expect::Moves(State::Approved)
                            } else {
                                Expect::Moves(State::PendingApproval)
                            };
                            (
                                approve(p, &who, pol, comment, self.now),
                                expect,
                                Action::Approved,
                            )
                        }
                        Op::Reject { .. } => (
                            reject(p, &who, pol, comment, self.now),
                            if approver && pending {
                                Expect::Moves(State::Rejected)
                            } else {
                                Expect::Refused
                            },
                            Action::Rejected,
                        ),
                        _ => (
                            cancel(p, &who, pol, comment, self.now),
                            if (approver || who.name == p.requested_by) && pending {
                                Expect::Moves(State::Cancelled)
                            } else {
                                Expect::Refused
                            },
                            Action::Cancelled,
                        ),
                    };
                    if let Ok(Outcome { event: Some(e), .. }) = &result {
                        prop_assert_eq!(&e.actor, &who.name);
                        prop_assert_eq!(&e.comment, comment);
                    }
                    self.settle(i, result, expect, action)?;
                }
                Op::Advance(d) => self.now = self.now.plus(*d),
                Op::ToDeadline {
                    target: t,
                    offset_ns,
                } => {
                    let Some(i) = target(t) else { return Ok(()) };
                    let to = from_nanos(nanos(self.promotions[i].p.expires_at) + offset_ns);
                    self.now = self.now.max(to);
                }
                Op::Sweep { target: t } => {
                    let Some(i) = target(t) else { return Ok(()) };
                    self.expire_first(i)?;
                }
                Op::Applied {
                    target: t,
                    previous,
                } => {
                    let Some(i) = target(t) else { return Ok(()) };
                    let p = &self.promotions[i].p;
                    let prev = if *previous {
                        format!("sha256:{}", "e".repeat(64))
                    } else {
                        String::new()
                    };
                    let expect = if p.state == State::Approved {
                        Expect::Moves(State::Promoted)
                    } else {
                        Expect::Refused
                    };
                    let result = applied(p, &prev, self.now);
                    if let Ok(o) = &result {
                        prop_assert_eq!(&o.promotion.previous_digest, &prev);
                        prop_assert_eq!(o.promotion.promoted_at, Some(self.now));
                    }
                    self.settle(i, result, expect, Action::Applied)?;
                }
                Op::ApplyFailed { target: t, message } => {
                    let Some(i) = target(t) else { return Ok(()) };
                    let p = &self.promotions[i].p;
                    let expect = if p.state == State::Approved {
                        Expect::Moves(State::Failed)
                    } else {
                        Expect::Refused
                    };
                    let result = apply_failed(p, FAILURES[*message], self.now);
                    self.settle(i, result, expect, Action::ApplyFailed)?;
                }
                Op::Supersede { target: t, by } => {
                    let (Some(i), Some(j)) = (target(t), target(by)) else {
                        return Ok(());
                    };
                    let (p, newer) = (&self.promotions[i].p, &self.promotions[j].p);
                    // One repository; the environment comes from the policy.
                    let open = matches!(p.state, State::PendingApproval | State::Approved);
                    let same = p.environment == newer.environment;
                    let expect = if open && same && p.id < newer.id {
                        Expect::Moves(State::Superseded)
                    } else {
                        Expect::Refused
                    };
                    let by_id = newer.id;
                    let result = supersede(p, newer, self.now).ok_or(DomainError::NotApproved {
                        id: p.id,
                        state: p.state,
                    });
                    if let Ok(o) = &result {
                        prop_assert_eq!(o.promotion.superseded_by, Some(by_id));
                        prop_assert_eq!(
                            &o.event.as_ref().map(|e| e.actor.clone()),
                            &Some(SERVICE_ACTOR.to_owned())
                        );
                    }
                    self.settle(i, result, expect, Action::Superseded)?;
                }
            }
            Ok(())
        }

        /// Invariants of every record, checked after every step.
        fn check(&self, before: &[Promotion]) -> Result<(), TestCaseError> {
            for (i, t) in self.promotions.iter().enumerate() {
                let p = &t.p;
                if let Some(old) = before.get(i) {
                    if old.state.is_terminal() {
                        prop_assert_eq!(p, old, "a terminal record changed");
                    }
                    prop_assert!(p.updated_at >= old.updated_at);
                    prop_assert!(
                        p.approvals.starts_with(&old.approvals),
                        "approvals were rewritten"
                    );
                }
                let c = &t.created;
                prop_assert_eq!(
                    (
                        p.id,
                        &p.repository,
                        &p.environment,
                        &p.target_tag,
                        &p.source,
                        &p.digest,
                        &p.requested_by,
                        &p.reason,
                        p.required_approvals,
                        p.created_at,
                        p.expires_at,
                        &p.request_id
                    ),
                    (
                        c.id,
                        &c.repository,
                        &c.environment,
                        &c.target_tag,
                        &c.source,
                        &c.digest,
                        &c.requested_by,
                        &c.reason,
                        c.required_approvals,
                        c.created_at,
                        c.expires_at,
                        &c.request_id
                    ),
                    "a pinned field changed"
                );
                let required = p.required_approvals as usize;
                prop_assert!(
                    p.approvals.len() <= required,
                    "more approvals than required"
                );
                let mut seen = HashSet::new();
                for a in &p.approvals {
                    prop_assert!(seen.insert(&a.approver), "{} approved twice", a.approver);
                    prop_assert!(
                        t.policy.is_approver(&by_name(&a.approver)),
                        "{} is not an approver",
                        a.approver
                    );
                    prop_assert!(a.time >= p.created_at && a.time <= p.updated_at);
                    if !t.policy.allow_self_approval {
                        prop_assert_ne!(&a.approver, &p.requested_by, "self-approval");
                    }
                }
                match p.state {
                    State::Approved | State::Promoted | State::Failed => {
                        prop_assert!(p.approvals.len() >= required, "approved too early");
                        prop_assert!(t.was_approved);
                    }
                    State::PendingApproval => {
                        prop_assert!(p.approvals.len() < required, "enough approvals but pending")
                    }
                    State::Expired => prop_assert!(p.updated_at >= p.expires_at),
                    State::Rejected | State::Cancelled => {}
                    State::Superseded => {
                        prop_assert!(p.superseded_by.is_some_and(|by| by > p.id));
                    }
                    State::Waiting => prop_assert!(false, "no gate here makes it wait"),
                }
                prop_assert_eq!(p.superseded_by.is_some(), p.state == State::Superseded);
                prop_assert_eq!(p.promoted_at.is_some(), p.state == State::Promoted);
                prop_assert_eq!(!p.failure_message.is_empty(), p.state == State::Failed);
                if p.state != State::Promoted {
                    prop_assert!(p.previous_digest.is_empty());
                }
                prop_assert!(p.created_at <= p.updated_at && p.updated_at <= self.now);
                prop_assert!(t.applied_events <= 1, "applied twice");
                prop_assert!(t.apply_events <= 1, "applied or failed twice");
                prop_assert_eq!(
                    t.apply_events == 1,
                    matches!(p.state, State::Promoted | State::Failed)
                );
            }
            Ok(())
        }

        /// Checks the chain entries from `from` on: numbering and times.
        fn check_chain(&self, from: usize) -> Result<(), TestCaseError> {
            for (i, e) in self.chain.iter().enumerate().skip(from) {
                prop_assert_eq!(e.sequence, i as u64 + 1);
                let (prev_hash, prev_time) = match i {
                    0 => (GENESIS, START),
                    _ => (self.chain[i - 1].hash, self.chain[i - 1].time),
                };
                prop_assert_eq!(e.prev_hash, prev_hash);
                prop_assert!(e.time >= prev_time);
                prop_assert_eq!(e.time, self.now);
            }
            Ok(())
        }

        /// The whole log: it verifies, and each promotion's entries tell a
        /// lawful story that ends in the record's state.
        fn finish(&self, tamper: Index) -> Result<(), TestCaseError> {
            let mut v = Verifier::default();
            for e in &self.chain {
                prop_assert!(v.push(e), "chain broke at {}", e.sequence);
            }
            let r = v.finish();
            prop_assert_eq!(r.first_bad_sequence, None, "{}", r.message);
            prop_assert_eq!(r.entries_checked, self.chain.len() as u64);
            prop_assert_eq!(r.head_hash, self.chain.last().map_or(GENESIS, |e| e.hash));

            let mut story: HashMap<PromotionId, Vec<Action>> = HashMap::new();
            for e in &self.chain {
                story
                    .entry(e.event.promotion_id)
                    .or_default()
                    .push(e.event.action);
            }
            prop_assert_eq!(story.len(), self.promotions.len());
            for t in &self.promotions {
                let acts = &story[&t.p.id];
                prop_assert_eq!(acts[0], Action::Requested);
                let approvals = acts.iter().filter(|a| **a == Action::Approved).count();
                prop_assert_eq!(approvals, t.p.approvals.len());
                let last = acts.last().copied().unwrap_or(Action::Requested);
                let ends = acts
                    .iter()
                    .filter(|a| !matches!(a, Action::Requested | Action::Approved))
                    .count();
                prop_assert!(ends <= 1, "two ends: {acts:?}");
                if ends == 1 {
                    prop_assert!(
                        !matches!(last, Action::Requested | Action::Approved),
                        "entries after the end: {acts:?}"
                    );
                }
                let state = match last {
                    Action::Rejected => Some(State::Rejected),
                    Action::Cancelled => Some(State::Cancelled),
                    Action::Expired => Some(State::Expired),
                    Action::Applied => Some(State::Promoted),
                    Action::ApplyFailed => Some(State::Failed),
                    Action::Superseded => Some(State::Superseded),
                    Action::Requested | Action::Approved => None,
                    Action::GatesPassed
                    | Action::CheckReported
                    | Action::PolicyChanged
                    | Action::DriftDetected
                    | Action::DriftRestored => {
                        return Err(TestCaseError::fail(
                            "a promotion's entry is about no promotion",
                        ));
                    }
                };
                match state {
                    Some(s) => prop_assert_eq!(t.p.state, s),
                    None => prop_assert!(!t.p.state.is_terminal()),
                }
            }

            // Altering any entry is caught at that entry.
            if !self.chain.is_empty() {
                let at = tamper.index(self.chain.len());
                let mut bad = self.chain.clone();
                bad[at].event.comment.push('!');
                let mut v = Verifier::default();
                for e in &bad {
                    v.push(e);
                }
                prop_assert_eq!(v.finish().first_bad_sequence, Some(at as u64 + 1));
            }
            Ok(())
        }
    }

    fn config() -> ProptestConfig {
        // PROPTEST_CASES overrides the count, e.g. for a longer run.
        let mut c = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = 256;
        }
        c
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn state_machine_invariants(ops in prop::collection::vec(op(), 1..=60), tamper in any::<Index>()) {
            let mut h = Harness::new();
            for op in &ops {
                let before: Vec<Promotion> = h.promotions.iter().map(|t| t.p.clone()).collect();
                let chain_len = h.chain.len();
                h.step(op)?;
                prop_assert!(h.chain.len() <= chain_len + 1, "one step, more than one entry");
                h.check(&before)?;
                h.check_chain(chain_len)?;
            }
            h.finish(tamper)?;
        }
    }
}
