//! The promotion state machine. Every function is pure: it takes the current
//! record, the actor, the policy and the time, and returns the next record with
//! the audit event that records the change, or the reason for refusing it.
//!
//! ```text
//! PENDING_APPROVAL --approve (last)--> APPROVED --applied--> PROMOTED
//!        |  \--reject--> REJECTED                 \--apply failed--> FAILED
//!        |---cancel--> CANCELLED
//!        \---ttl passed--> EXPIRED
//! ```

use super::model::{Action, Approval, Event, Promotion, PromotionId, SERVICE_ACTOR, State, Time};
use super::policy::{EnvironmentPolicy, Principal};

/// Why a transition was refused. Refusals change nothing and write nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{principal} is not a designated approver of environment {environment}")]
    NotApprover {
        principal: String,
        environment: String,
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
    #[error("promotion {id} is {state} and can no longer be {verb}", state = state.label())]
    NotPending {
        id: PromotionId,
        state: State,
        verb: &'static str,
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
}

fn event(p: &Promotion, action: Action, actor: &str, comment: &str) -> Event {
    Event {
        action,
        actor: actor.to_owned(),
        promotion_id: p.id,
        repository: p.repository.clone(),
        environment: p.environment.clone(),
        digest: p.digest.clone(),
        previous_digest: p.previous_digest.clone(),
        comment: comment.to_owned(),
    }
}

/// Opens a promotion. With no approvals required it is APPROVED at once.
pub fn request(
    id: PromotionId,
    new: NewPromotion,
    requester: &Principal,
    policy: &EnvironmentPolicy,
    now: Time,
) -> Outcome {
    let state = if policy.required_approvals == 0 {
        State::Approved
    } else {
        State::PendingApproval
    };
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
    };
    let e = event(&p, Action::Requested, &requester.name, &p.reason);
    Outcome {
        promotion: p,
        event: Some(e),
    }
}

/// A pending promotion past its deadline, as the service records it.
pub fn expire_if_due(p: &Promotion, now: Time) -> Option<Outcome> {
    if p.state != State::PendingApproval || now < p.expires_at {
        return None;
    }
    let mut next = p.clone();
    next.state = State::Expired;
    next.updated_at = now;
    let e = event(
        &next,
        Action::Expired,
        SERVICE_ACTOR,
        "approval_ttl elapsed",
    );
    Some(Outcome {
        promotion: next,
        event: Some(e),
    })
}

fn require_pending(p: &Promotion, verb: &'static str) -> Result<(), DomainError> {
    if p.state == State::PendingApproval {
        Ok(())
    } else {
        Err(DomainError::NotPending {
            id: p.id,
            state: p.state,
            verb,
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
        Err(DomainError::NotApprover {
            principal: who.name.clone(),
            environment: p.environment.clone(),
        })
    }
}

/// Records an approval. The same approver twice counts once and changes nothing.
/// Callers expire a due promotion first ([`expire_if_due`]).
pub fn approve(
    p: &Promotion,
    who: &Principal,
    policy: &EnvironmentPolicy,
    comment: &str,
    now: Time,
) -> Result<Outcome, DomainError> {
    require_approver(p, who, policy)?;
    if who.name == p.requested_by && !policy.allow_self_approval {
        return Err(DomainError::SelfApproval {
            principal: who.name.clone(),
            environment: p.environment.clone(),
        });
    }
    require_pending(p, "approved")?;
    if p.approvals.iter().any(|a| a.approver == who.name) {
        return Ok(Outcome {
            promotion: p.clone(),
            event: None,
        });
    }
    let mut next = p.clone();
    next.approvals.push(Approval {
        approver: who.name.clone(),
        comment: comment.to_owned(),
        time: now,
    });
    if next.approvals.len() >= next.required_approvals as usize {
        next.state = State::Approved;
    }
    next.updated_at = now;
    let e = event(&next, Action::Approved, &who.name, comment);
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
    require_approver(p, who, policy)?;
    require_pending(p, "rejected")?;
    let mut next = p.clone();
    next.state = State::Rejected;
    next.updated_at = now;
    let e = event(&next, Action::Rejected, &who.name, comment);
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
    if who.name != p.requested_by && !policy.is_approver(who) {
        return Err(DomainError::NotAllowedToCancel {
            environment: p.environment.clone(),
        });
    }
    require_pending(p, "cancelled")?;
    let mut next = p.clone();
    next.state = State::Cancelled;
    next.updated_at = now;
    let e = event(&next, Action::Cancelled, &who.name, comment);
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
    let e = event(&next, Action::Applied, SERVICE_ACTOR, "");
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
    let e = event(&next, Action::ApplyFailed, SERVICE_ACTOR, message);
    Ok(Outcome {
        promotion: next,
        event: Some(e),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::Approver;
    use std::time::Duration;

    fn who(name: &str, groups: &[&str]) -> Principal {
        Principal {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
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
        }
    }

    fn t(s: i64) -> Time {
        Time {
            seconds: s,
            nanos: 0,
        }
    }

    fn pending(required: u32) -> Promotion {
        let new = NewPromotion {
            repository: "r.io/app".into(),
            environment: "production".into(),
            source: "staging".into(),
            digest: format!("sha256:{}", "1".repeat(64)),
            reason: "ship".into(),
            request_id: String::new(),
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
        let o = approve(&p, &who("carol", &[]), &pol, "lgtm", t(102)).unwrap();
        assert_eq!(o.promotion.state, State::PendingApproval);
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
