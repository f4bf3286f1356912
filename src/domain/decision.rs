//! The whole decision about a promotion, one pure function per command: a
//! reducer `(promotion, command, facts) -> (promotion, entries)` or a
//! refusal naming every blocker.
//!
//! The use cases gather the [`Facts`] by I/O first (what the prerequisite's
//! tag carries, the checks reported, when the soak began, the signature
//! verdict, what the target tag carries now), then run one of these inside a
//! write job and commit what it returns. Nothing here reads a clock, a store
//! or a registry, so every rule is tested with plain values.
//!
//! ```text
//! request ─┬─ prerequisite/no-op fails ──> refused (nothing recorded)
//!          └─> PENDING_APPROVAL ──approve (quorum)──┬─> APPROVED (gates pass)
//!                    (no approvals required) ───────┘     ^
//!                                                  └─> WAITING ──gates pass──┘ (GATES_PASSED)
//! ```
//!
//! The quorum is `required_approvals` distinct persons whose recorded groups
//! cover every required group; approvals are recorded in any order while the
//! promotion is open, whatever the other gates say. Once the quorum is met
//! the other gates decide between APPROVED and WAITING; a WAITING promotion
//! is re-evaluated ([`reevaluate`]) when a check is reported, when its
//! `not_before` arrives, on a policy reload and at start.

use super::gates::{self, GateReport};
use super::machine::{self, DomainError, NewPromotion, Outcome};
use super::model::{
    Action, CheckReport, Event, POLICY_ATTRIBUTE, Promotion, PromotionId, SERVICE_ACTOR,
    SIGNATURE_ATTRIBUTE, State, Time,
};
use super::policy::{EnvironmentPolicy, Principal};
use super::signature::Verdict;

/// The gate a request for what the tag already carries fails.
pub const NOOP: &str = "noop";
/// The gate a break-glass call by someone not allowed to fails.
pub const BREAK_GLASS: &str = "break_glass";
/// The gate a dry run by someone the project's `requesters` does not name
/// fails (a real request is refused PERMISSION_DENIED instead).
pub const REQUESTER: &str = "requester";

/// What the decision rests on besides the promotion: the policy in force,
/// the time, and what I/O found before the write job.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub policy: &'a EnvironmentPolicy,
    /// The digest of the policy version in force (stamped on the entry that
    /// makes a promotion APPROVED).
    pub policy_digest: &'a str,
    pub now: Time,
    /// Reports about the pinned digest, in recorded order.
    pub checks: &'a [CheckReport],
    /// When the latest APPLIED entry moved the `requires` environment's tag
    /// to the digest.
    pub soak_since: Option<Time>,
    /// The signature verdict, read when the policy names `signature_keys`.
    pub signature: Option<&'a Verdict>,
    /// Request only: what the `requires` environment's tag carries now.
    pub prerequisite: Option<&'a Prerequisite>,
    /// Request only: what prodgate last applied to the target tag.
    pub deployed: Option<&'a Deployed>,
}

/// The `requires` environment's tag as read for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prerequisite {
    /// `repository:tag`, as the refusal names it.
    pub reference: String,
    pub environment: String,
    /// The digest it carries; `None`: the tag does not exist.
    pub carries: Option<String>,
}

/// The APPLIED entry behind what the target tag carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub digest: String,
    /// The promotion whose tag move it recorded.
    pub promotion_id: PromotionId,
    pub time: Time,
    /// The drift watch last saw the tag carry something else (and has not
    /// restored it since).
    pub drifted: bool,
}

/// One reason a command is refused: the gate, what it is about (a promotion
/// id or a repository), and the sentence a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub gate: &'static str,
    pub subject: String,
    pub description: String,
    /// Named facts for programs (snake_case keys): what a caller needs to
    /// act without parsing `description`.
    pub facts: Vec<(&'static str, String)>,
}

/// Why a command is refused. A refusal changes nothing and records nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Who may act, or the promotion's state.
    Domain(DomainError),
    /// Break-glass by a principal the policy's `break_glass` does not name.
    BreakGlass {
        principal: String,
        environment: String,
        allowed: String,
    },
    /// Break-glass without a word on why (`field` is the request's).
    Unexplained { field: &'static str },
    /// Gates that refuse rather than wait: every one that fails.
    Blocked(Vec<Blocker>),
}

impl From<DomainError> for Refusal {
    fn from(e: DomainError) -> Self {
        Refusal::Domain(e)
    }
}

/// Opens a promotion: refused when its prerequisite is not met or it would
/// change nothing; otherwise PENDING_APPROVAL, or, with no approvals
/// required, decided at once by the other gates.
pub fn request(
    id: PromotionId,
    new: NewPromotion,
    who: &Principal,
    break_glass: bool,
    f: &Facts<'_>,
) -> Result<Outcome, Refusal> {
    check_break_glass(break_glass, who, f.policy, &new.reason, "reason")?;
    let mut blockers = Vec::new();
    if !new.rollback
        && let (Some(env), Some(pre)) = (f.policy.requires.as_deref(), f.prerequisite)
        && pre.carries.as_deref() != Some(new.digest.as_str())
    {
        blockers.push(prerequisite_unmet(
            &new.repository,
            f.policy,
            env,
            pre,
            &new.digest,
        ));
    }
    blockers.extend(noop(&new, f));
    if !blockers.is_empty() {
        return Err(Refusal::Blocked(blockers));
    }
    let mut o = machine::request(id, new, who, f.policy, f.now);
    if break_glass {
        o.promotion.break_glass = true;
        mark(&mut o.event, "break_glass", "true");
    }
    settle(&mut o, f);
    Ok(o)
}

/// The refusal of a request whose prerequisite is not met: `pre` (the
/// `requires` environment's tag) does not carry `digest`. `digest` is ""
/// when the source is that very tag and it does not exist, so there is no
/// digest to speak of.
pub fn prerequisite_unmet(
    repository: &str,
    policy: &EnvironmentPolicy,
    requires: &str,
    pre: &Prerequisite,
    digest: &str,
) -> Blocker {
    let what = if digest.is_empty() {
        "the image"
    } else {
        digest
    };
    Blocker {
        gate: gates::PREREQUISITE,
        subject: repository.to_owned(),
        description: format!(
            "environment {} requires {requires}: {what} must first be promoted there, but {} {}",
            policy.name,
            pre.reference,
            pre.carries
                .as_ref()
                .map_or_else(|| "does not exist".to_owned(), |d| format!("points to {d}")),
        ),
        facts: vec![
            ("environment", policy.name.clone()),
            ("requires", requires.to_owned()),
            ("digest", digest.to_owned()),
            ("repository", repository.to_owned()),
        ],
    }
}

/// A request for the digest the target tag already carries (put there by
/// prodgate and not drifted since) would change nothing.
fn noop(new: &NewPromotion, f: &Facts<'_>) -> Option<Blocker> {
    let d = f
        .deployed
        .filter(|d| d.digest == new.digest && !d.drifted)?;
    Some(Blocker {
        gate: NOOP,
        subject: new.repository.clone(),
        description: format!(
            "the {} tag of {} already carries {} (promotion {} moved it there at {}); a promotion would change nothing",
            f.policy.tag,
            new.repository,
            new.digest,
            d.promotion_id,
            d.time.rfc3339(super::model::Precision::Seconds),
        ),
        facts: vec![
            ("promotion_id", d.promotion_id.to_string()),
            ("digest", new.digest.clone()),
        ],
    })
}

/// What a request by `who` would meet now, recording nothing: the dry run
/// EvaluateGates answers. Every gate [`evaluate`] reports for the promotion
/// the request would open, with two more in front: [`REQUESTER`] (whether
/// `who` may request here at all; `refused_requester` is the sentence when
/// not, which a real request returns as PERMISSION_DENIED) and [`NOOP`]
/// (whether the tag already carries the digest). `id` is a placeholder:
/// nothing is opened.
pub fn preview(
    id: PromotionId,
    new: NewPromotion,
    who: &Principal,
    refused_requester: Option<String>,
    f: &Facts<'_>,
) -> GateReport {
    let requester = match refused_requester {
        None => gates::pass(
            REQUESTER,
            format!("{} may request promotions of {}", who.name, new.repository),
        ),
        Some(why) => gates::block(REQUESTER, why),
    };
    let noop = match noop(&new, f) {
        Some(b) => gates::block(NOOP, b.description),
        None => gates::pass(
            NOOP,
            match f.deployed {
                Some(d) if d.drifted => format!(
                    "the {} tag was moved away from {} outside prodgate: a promotion puts it back",
                    f.policy.tag, d.digest
                ),
                Some(d) => format!("the {} tag carries {} now", f.policy.tag, d.digest),
                None => format!("prodgate has not moved the {} tag yet", f.policy.tag),
            },
        ),
    };
    let o = machine::request(id, new, who, f.policy, f.now);
    let mut report = evaluate(&o.promotion, f);
    let after_prerequisite = usize::from(report.gate(gates::PREREQUISITE).is_some());
    report.gates.insert(after_prerequisite, noop);
    report.gates.insert(0, requester);
    report
}

/// An approver-facing call on an existing promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Approve { break_glass: bool },
    Reject,
    Cancel,
}

/// Whether `call` by `who` repeats one whose effect `p` already records:
/// `who`'s approval (with break-glass, if the call asks for it), or the
/// REJECTED or CANCELLED end `who` gave it. Such a call is answered with
/// `p` as it is now, whatever its state, and records nothing, so a client
/// may retry any of them safely. It is asked before anything else (expiry,
/// who may act, the state), since a retry's answer must not depend on what
/// happened since the first call.
///
/// `ended_by` is the actor of the entry that ended `p` (its REJECTED or
/// CANCELLED entry), which the record does not keep; `None` when `p` has
/// not ended that way, or when that is not known.
pub fn already_done(p: &Promotion, who: &Principal, call: Call, ended_by: Option<&str>) -> bool {
    let ended_by_who = |state| p.state == state && ended_by.is_some_and(|a| who.is(a));
    match call {
        Call::Approve { break_glass } => {
            p.approvals.iter().any(|a| who.is(&a.approver)) && (!break_glass || p.break_glass)
        }
        Call::Reject => ended_by_who(State::Rejected),
        Call::Cancel => ended_by_who(State::Cancelled),
    }
}

/// Records `who`'s approval (each person once; a repeat changes nothing),
/// then, once the quorum is met, lets the other gates decide between
/// APPROVED and WAITING. Never refused by a gate.
pub fn approve(
    p: &Promotion,
    who: &Principal,
    break_glass: bool,
    comment: &str,
    f: &Facts<'_>,
) -> Result<Outcome, Refusal> {
    let mut o = machine::approve(p, who, f.policy, comment, f.now)?;
    check_break_glass(break_glass, who, f.policy, comment, "comment")?;
    let breaks_glass_now = break_glass && !p.break_glass;
    if o.event.is_none() && !breaks_glass_now {
        // A repeated approval (and no new break-glass): nothing to record.
        return Ok(o);
    }
    let mut event = o.event.take().unwrap_or_else(|| {
        // The same approver again, now breaking glass: recorded as an
        // approval entry of its own so the audit log says who and why.
        machine::entry(&o.promotion, Action::Approved, &who.name, comment)
    });
    if break_glass {
        o.promotion.break_glass = true;
        event.attributes.insert("break_glass".into(), "true".into());
    }
    o.event = Some(event);
    settle(&mut o, f);
    Ok(o)
}

/// A WAITING promotion whose gates now all pass becomes APPROVED, recorded
/// as GATES_PASSED; an overdue one (past `wait_ttl`) EXPIRED. `None` when
/// nothing changes (still waiting, or not WAITING at all).
pub fn reevaluate(p: &Promotion, f: &Facts<'_>) -> Option<Outcome> {
    if p.state != State::Waiting {
        return None;
    }
    if let Some(o) = machine::expire_if_due(p, f.now) {
        return Some(o);
    }
    let report = evaluate(p, f);
    if !report.passed() {
        return None;
    }
    let mut next = p.clone();
    let waited = p.waiting_for.join(",");
    next.state = State::Approved;
    next.waiting_for = Vec::new();
    next.not_before = None;
    next.updated_at = f.now;
    let mut event = machine::entry(
        &next,
        Action::GatesPassed,
        SERVICE_ACTOR,
        &format!("the gates it waited for passed: {waited}"),
    );
    event.attributes.insert("gates".into(), waited);
    let mut o = Outcome {
        promotion: next,
        event: Some(event),
    };
    stamp_approved(&mut o, &report, f);
    Some(o)
}

/// One move of an environment's tag (an APPLIED entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagMove {
    /// The digest the move replaced ("" when the tag was new).
    pub previous: String,
    /// The move was a rollback's.
    pub by_rollback: bool,
}

/// Rollback's default target, from the tag's moves newest first: the
/// newest digest a move replaced that is not `current` and that no
/// rollback moved the tag away from, so rolling back twice never brings
/// back what the first rollback removed. `None`: nothing is left.
pub fn rollback_target<'m>(moves: &'m [TagMove], current: &str) -> Option<&'m str> {
    let rolled_away: Vec<&str> = moves
        .iter()
        .filter(|m| m.by_rollback)
        .map(|m| m.previous.as_str())
        .collect();
    moves
        .iter()
        .map(|m| m.previous.as_str())
        .find(|d| !d.is_empty() && *d != current && !rolled_away.contains(d))
}

/// Every gate of `p`, evaluated on `f` (also EvaluateGates' answer).
pub fn evaluate(p: &Promotion, f: &Facts<'_>) -> GateReport {
    gates::evaluate(&gate_facts(p, f))
}

/// When `p`'s blocking time gates can all be open (`None`: none blocks,
/// or one never opens by time alone).
pub fn not_before(p: &Promotion, f: &Facts<'_>) -> Option<Time> {
    let gf = gate_facts(p, f);
    gates::not_before(&gf, &gates::evaluate(&gf))
}

fn gate_facts<'a>(p: &'a Promotion, f: &Facts<'a>) -> gates::Facts<'a> {
    gates::Facts {
        promotion: p,
        policy: f.policy,
        now: f.now,
        rollback: p.rollback,
        checks: f.checks,
        // Read for a request; afterwards the pinned digest is what was
        // approved, whatever the prerequisite's tag does since.
        prerequisite: f
            .prerequisite
            .map(|pre| pre.carries.as_deref() == Some(p.digest.as_str())),
        soak_since: f.soak_since,
        break_glass: p.break_glass,
        signature: f.signature,
    }
}

/// Once the quorum is met, the gates decide between APPROVED and WAITING.
/// The outcome's event (REQUESTED or APPROVED) records the result. A
/// promotion already WAITING keeps the deadline it got when it began to.
fn settle(o: &mut Outcome, f: &Facts<'_>) {
    if !o.promotion.state.is_undecided() {
        return;
    }
    let report = evaluate(&o.promotion, f);
    if !report.quorum() {
        return;
    }
    if report.passed() {
        o.promotion.state = State::Approved;
        stamp_approved(o, &report, f);
        return;
    }
    let gf = gate_facts(&o.promotion, f);
    let not_before = gates::not_before(&gf, &report);
    let p = &mut o.promotion;
    if p.state != State::Waiting {
        p.state = State::Waiting;
        p.expires_at = f.now.plus(f.policy.wait_ttl);
    }
    p.waiting_for = report.blocking_names();
    p.not_before = not_before;
    if let Some(e) = &mut o.event {
        e.attributes
            .insert("waiting_for".into(), p.waiting_for.join(","));
    }
}

/// Stamps the policy version that allowed an APPROVED promotion on it and
/// its entry, with the signing key and what break-glass overrode.
fn stamp_approved(o: &mut Outcome, report: &GateReport, f: &Facts<'_>) {
    o.promotion.policy_digest = f.policy_digest.to_owned();
    let Some(e) = &mut o.event else { return };
    e.attributes
        .insert(POLICY_ATTRIBUTE.to_owned(), f.policy_digest.to_owned());
    if let (false, Some(Verdict::Verified { fingerprint, .. })) =
        (f.policy.signature_keys.is_empty(), f.signature)
    {
        e.attributes
            .insert(SIGNATURE_ATTRIBUTE.to_owned(), fingerprint.clone());
    }
    if let Some(overridden) = report.overridden() {
        e.attributes.insert("overridden".into(), overridden);
    }
}

fn mark(event: &mut Option<Event>, key: &str, value: &str) {
    if let Some(e) = event {
        e.attributes.insert(key.into(), value.into());
    }
}

/// Break-glass by someone the policy does not name is refused outright;
/// without a reason it is an invalid call.
fn check_break_glass(
    used: bool,
    who: &Principal,
    policy: &EnvironmentPolicy,
    why: &str,
    field: &'static str,
) -> Result<(), Refusal> {
    if !used {
        return Ok(());
    }
    if !policy.may_break_glass(who) {
        return Err(Refusal::BreakGlass {
            principal: who.name.clone(),
            environment: policy.name.clone(),
            allowed: super::policy::describe(&policy.break_glass),
        });
    }
    if why.trim().is_empty() {
        return Err(Refusal::Unexplained { field });
    }
    Ok(())
}

/// Facts with nothing but the policy and the time, for callers whose
/// policy configures no gate besides the approvals, so nothing else needs
/// reading (tests, the benchmark's bulk load).
pub fn bare_facts(policy: &EnvironmentPolicy, now: Time) -> Facts<'_> {
    Facts {
        policy,
        policy_digest: "",
        now,
        checks: &[],
        soak_since: None,
        signature: None,
        prerequisite: None,
        deployed: None,
    }
}

#[cfg(test)]
mod tests;
