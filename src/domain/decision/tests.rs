//! The decision with plain values and a hand-moved clock: approvals that
//! wait for the gates, the quorum in any order, break-glass, no-ops, and a
//! property test over interleavings of approvals, reports and time.

use super::*;
use crate::domain::model::{CheckStatus, Precision};
use crate::domain::policy::{Approver, Freeze, Window, Zone};
use proptest::prelude::*;
use std::time::Duration;

const REPO: &str = "reg.test/team/app";
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const T0: i64 = 1_800_000_000;
/// production's `wait_ttl`.
const WAIT_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

fn t(s: i64) -> Time {
    Time {
        seconds: T0 + s,
        nanos: 0,
    }
}

fn who(name: &str, groups: &[&str]) -> Principal {
    Principal::new(name, groups.iter().map(|g| g.to_string()).collect())
}

/// production: two approvals by release managers or security, no other
/// gate until a test adds one.
fn policy() -> EnvironmentPolicy {
    EnvironmentPolicy {
        name: "production".into(),
        tag: "production".into(),
        requires: Some("staging".into()),
        approvers: vec![
            Approver::parse("group:rm"),
            Approver::parse("group:security"),
        ],
        required_approvals: 2,
        allow_self_approval: false,
        approval_ttl: Duration::from_secs(3600),
        apply_deadline: None,
        required_groups: Vec::new(),
        required_checks: Vec::new(),
        min_soak: None,
        window: None,
        break_glass: vec![Approver::parse("group:sre")],
        rollback_approvals: 2,
        freezes: Vec::new(),
        restore_on_drift: false,
        attach_record: false,
        attest: false,
        signature_keys: Vec::new(),
        wait_ttl: WAIT_TTL,
    }
}

/// What I/O found, owned.
#[derive(Default)]
struct World {
    checks: Vec<CheckReport>,
    soak_since: Option<Time>,
    prerequisite: Option<Prerequisite>,
    deployed: Option<Deployed>,
}

impl World {
    fn facts<'a>(&'a self, policy: &'a EnvironmentPolicy, now: Time) -> Facts<'a> {
        Facts {
            policy,
            policy_digest: "sha256:policy",
            now,
            checks: &self.checks,
            soak_since: self.soak_since,
            signature: None,
            prerequisite: self.prerequisite.as_ref(),
            deployed: self.deployed.as_ref(),
        }
    }
}

fn new(reason: &str) -> NewPromotion {
    NewPromotion {
        repository: REPO.into(),
        environment: "production".into(),
        source: "staging".into(),
        digest: DIGEST.into(),
        reason: reason.into(),
        request_id: String::new(),
        project: String::new(),
        rollback: false,
    }
}

fn requested(pol: &EnvironmentPolicy, w: &World, now: Time) -> Promotion {
    request(
        1,
        new("ship"),
        &who("alice", &["dev"]),
        false,
        &w.facts(pol, now),
    )
    .expect("requested")
    .promotion
}

fn passed(check: &str, at: Time) -> CheckReport {
    CheckReport {
        repository: REPO.into(),
        digest: DIGEST.into(),
        check: check.into(),
        status: CheckStatus::Passed,
        reported_by: "ci".into(),
        time: at,
        details_url: String::new(),
        comment: String::new(),
    }
}

#[test]
fn an_approval_in_the_soak_is_kept_and_the_promotion_ships_when_it_ends() {
    let mut pol = policy();
    pol.min_soak = Some(Duration::from_secs(30 * 60));
    let w = World {
        soak_since: Some(t(0)),
        ..World::default()
    };
    let p = requested(&pol, &w, t(60));
    let one = approve(&p, &who("bob", &["rm"]), false, "", &w.facts(&pol, t(120))).unwrap();
    assert_eq!(one.promotion.state, State::PendingApproval);
    let two = approve(
        &one.promotion,
        &who("sam", &["security"]),
        false,
        "ok",
        &w.facts(&pol, t(180)),
    )
    .expect("never refused by the soak");
    let p = two.promotion;
    assert_eq!(p.state, State::Waiting);
    assert_eq!(p.waiting_for, ["soak"]);
    assert_eq!(p.not_before, Some(t(1800)));
    assert_eq!(p.approvals.len(), 2);
    assert_eq!(p.expires_at, t(180).plus(WAIT_TTL), "wait_ttl from now on");
    let e = two.event.unwrap();
    assert_eq!(e.action, Action::Approved);
    assert_eq!(e.attributes["waiting_for"], "soak");
    assert!(
        !e.attributes.contains_key(POLICY_ATTRIBUTE),
        "not approved yet"
    );

    assert_eq!(
        reevaluate(&p, &w.facts(&pol, t(1799))),
        None,
        "a second early"
    );
    let o = reevaluate(&p, &w.facts(&pol, t(1800))).expect("the soak ended");
    assert_eq!(o.promotion.state, State::Approved);
    assert!(o.promotion.waiting_for.is_empty() && o.promotion.not_before.is_none());
    assert_eq!(o.promotion.policy_digest, "sha256:policy");
    assert_eq!(o.promotion.approvals, p.approvals, "approvals kept");
    let e = o.event.unwrap();
    assert_eq!(e.action, Action::GatesPassed);
    assert_eq!(e.actor, SERVICE_ACTOR);
    assert_eq!(e.attributes["gates"], "soak");
    assert_eq!(e.attributes[POLICY_ATTRIBUTE], "sha256:policy");
}

#[test]
fn a_closed_window_names_when_it_opens_and_a_check_alone_has_no_time() {
    let mut pol = policy();
    // Open only on Mondays (UTC); t(0) is 2027-01-15, a Friday.
    pol.window = Some(Window {
        days: vec![jiff::civil::Weekday::Monday],
        hours: None,
        time_zone: Zone::utc(),
    });
    pol.required_checks = vec!["e2e".into()];
    let mut w = World::default();
    let p = requested(&pol, &w, t(0));
    let p = approve(&p, &who("bob", &["rm"]), false, "", &w.facts(&pol, t(1)))
        .unwrap()
        .promotion;
    let p = approve(
        &p,
        &who("sam", &["security"]),
        false,
        "",
        &w.facts(&pol, t(2)),
    )
    .unwrap()
    .promotion;
    assert_eq!(p.state, State::Waiting);
    assert_eq!(p.waiting_for, ["checks", "window"]);
    let monday = Time {
        seconds: "2027-01-18T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second(),
        nanos: 0,
    };
    assert_eq!(
        t(0).rfc3339(Precision::Seconds),
        "2027-01-15T08:00:00Z",
        "the test's Friday"
    );
    assert_eq!(p.not_before, Some(monday));
    // Monday comes, the check has not: still waiting, for the check only.
    assert_eq!(reevaluate(&p, &w.facts(&pol, monday)), None);
    assert_eq!(not_before(&p, &w.facts(&pol, monday)), None);
    w.checks.push(passed("e2e", monday));
    let o = reevaluate(&p, &w.facts(&pol, monday)).expect("released by the check");
    assert_eq!(o.promotion.state, State::Approved);
    assert_eq!(o.event.unwrap().attributes["gates"], "checks,window");
}

#[test]
fn two_leads_and_security_approve_in_every_order() {
    let mut pol = policy();
    pol.required_groups = vec!["security".into()];
    let w = World::default();
    let people = [
        who("bob", &["rm"]),
        who("carol", &["rm"]),
        who("sam", &["security"]),
    ];
    for order in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        let mut p = requested(&pol, &w, t(0));
        for (n, i) in order.iter().enumerate() {
            let at = t(n as i64 + 1);
            let o = approve(&p, &people[*i], false, "", &w.facts(&pol, at))
                .unwrap_or_else(|e| panic!("{order:?}: {} refused: {e:?}", people[*i].name));
            assert!(o.event.is_some(), "{order:?}: recorded");
            p = o.promotion;
            let with_security = order[..=n].contains(&2);
            let expect = if n >= 1 && with_security {
                State::Approved
            } else {
                State::PendingApproval
            };
            assert_eq!(p.state, expect, "{order:?} after {}", n + 1);
            if p.state == State::Approved {
                break;
            }
        }
        assert_eq!(p.state, State::Approved, "{order:?}");
        assert!(p.approvals.iter().any(|a| a.groups == ["security"]));
    }
}

#[test]
fn groups_are_those_recorded_with_the_approval() {
    let mut pol = policy();
    pol.required_groups = vec!["security".into()];
    pol.required_approvals = 1;
    let w = World::default();
    let p = requested(&pol, &w, t(0));
    // sam was in security when he approved: that is what counts.
    let o = approve(
        &p,
        &who("sam", &["security", "oncall", "security"]),
        false,
        "",
        &w.facts(&pol, t(1)),
    )
    .unwrap();
    assert_eq!(
        o.promotion.approvals[0].groups,
        ["oncall", "security"],
        "sorted, once"
    );
    assert_eq!(o.promotion.state, State::Approved);
    assert_eq!(o.event.unwrap().attributes["groups"], "oncall,security");
    // An approval by someone outside the group is recorded and leaves it pending.
    let p = requested(&pol, &w, t(0));
    let o = approve(&p, &who("bob", &["rm"]), false, "", &w.facts(&pol, t(1))).unwrap();
    assert_eq!(o.promotion.state, State::PendingApproval);
    assert_eq!(o.promotion.approvals.len(), 1);
}

#[test]
fn break_glass_at_request_overrides_the_freeze_once_the_quorum_is_met() {
    let mut pol = policy();
    pol.freezes = vec![Freeze {
        start: t(-100),
        end: t(100_000),
        reason: "year-end".into(),
    }];
    let w = World::default();
    let f = w.facts(&pol, t(0));
    let refused = request(2, new("hotfix"), &who("mallory", &["dev"]), true, &f).unwrap_err();
    assert!(
        matches!(refused, Refusal::BreakGlass { ref allowed, .. } if allowed == "group:sre"),
        "{refused:?}"
    );
    assert_eq!(
        request(2, new(" "), &who("olga", &["sre"]), true, &f).unwrap_err(),
        Refusal::Unexplained { field: "reason" }
    );
    let o = request(2, new("hotfix"), &who("olga", &["sre"]), true, &f).unwrap();
    assert!(o.promotion.break_glass);
    assert_eq!(o.event.as_ref().unwrap().attributes["break_glass"], "true");
    assert_eq!(
        o.promotion.state,
        State::PendingApproval,
        "approvals are never skipped"
    );
    let p = approve(
        &o.promotion,
        &who("bob", &["rm"]),
        false,
        "",
        &w.facts(&pol, t(1)),
    )
    .unwrap()
    .promotion;
    let o = approve(
        &p,
        &who("sam", &["security"]),
        false,
        "",
        &w.facts(&pol, t(2)),
    )
    .unwrap();
    assert_eq!(
        o.promotion.state,
        State::Approved,
        "never waits for the freeze"
    );
    assert_eq!(o.event.unwrap().attributes["overridden"], "freeze");
    // Without break-glass the same promotion waits.
    let p = requested(&pol, &w, t(0));
    let p = approve(&p, &who("bob", &["rm"]), false, "", &w.facts(&pol, t(1)))
        .unwrap()
        .promotion;
    let p = approve(
        &p,
        &who("sam", &["security"]),
        false,
        "",
        &w.facts(&pol, t(2)),
    )
    .unwrap()
    .promotion;
    assert_eq!(p.state, State::Waiting);
    assert_eq!(p.waiting_for, ["freeze"]);
    assert_eq!(p.not_before, Some(t(100_000)));
}

#[test]
fn a_request_that_changes_nothing_or_skips_staging_is_refused_with_every_reason() {
    let pol = policy();
    let mut w = World {
        prerequisite: Some(Prerequisite {
            reference: format!("{REPO}:staging"),
            environment: "staging".into(),
            carries: Some("sha256:other".into()),
        }),
        deployed: Some(Deployed {
            digest: DIGEST.into(),
            promotion_id: 7,
            time: t(-50),
            drifted: false,
        }),
        ..World::default()
    };
    let refused = request(
        9,
        new("again"),
        &who("alice", &[]),
        false,
        &w.facts(&pol, t(0)),
    )
    .unwrap_err();
    let Refusal::Blocked(b) = refused else {
        panic!("{refused:?}")
    };
    let gates: Vec<&str> = b.iter().map(|b| b.gate).collect();
    assert_eq!(gates, ["prerequisite", "noop"]);
    assert!(
        b[1].description.contains("promotion 7"),
        "{}",
        b[1].description
    );
    assert!(b.iter().all(|b| b.subject == REPO));
    // Staging carries it: only the no-op is left.
    w.prerequisite.as_mut().unwrap().carries = Some(DIGEST.into());
    let Err(Refusal::Blocked(b)) = request(
        9,
        new("again"),
        &who("alice", &[]),
        false,
        &w.facts(&pol, t(0)),
    ) else {
        panic!("still a no-op")
    };
    assert_eq!(b.len(), 1);
    // The tag drifted away: a request puts it back, so it is allowed.
    w.deployed.as_mut().unwrap().drifted = true;
    assert!(
        request(
            9,
            new("again"),
            &who("alice", &[]),
            false,
            &w.facts(&pol, t(0))
        )
        .is_ok()
    );
}

#[test]
fn no_approvals_required_is_decided_at_request_and_may_wait() {
    let mut pol = policy();
    pol.required_approvals = 0;
    pol.min_soak = Some(Duration::from_secs(60));
    let w = World {
        soak_since: Some(t(0)),
        ..World::default()
    };
    let o = request(1, new(""), &who("ci", &[]), false, &w.facts(&pol, t(10))).unwrap();
    assert_eq!(o.promotion.state, State::Waiting);
    assert_eq!(o.promotion.not_before, Some(t(60)));
    let o = request(1, new(""), &who("ci", &[]), false, &w.facts(&pol, t(60))).unwrap();
    assert_eq!(o.promotion.state, State::Approved);
    assert_eq!(
        o.event.unwrap().attributes[POLICY_ATTRIBUTE],
        "sha256:policy"
    );
}

#[test]
fn a_waiting_promotion_expires_after_wait_ttl_not_approval_ttl() {
    let mut pol = policy();
    pol.required_checks = vec!["e2e".into()];
    let w = World::default();
    let p = requested(&pol, &w, t(0));
    let p = approve(&p, &who("bob", &["rm"]), false, "", &w.facts(&pol, t(1)))
        .unwrap()
        .promotion;
    let p = approve(
        &p,
        &who("sam", &["security"]),
        false,
        "",
        &w.facts(&pol, t(2)),
    )
    .unwrap()
    .promotion;
    assert_eq!(p.state, State::Waiting);
    // approval_ttl (1h) passes: still waiting.
    assert_eq!(reevaluate(&p, &w.facts(&pol, t(7200))), None);
    let deadline = t(2).plus(WAIT_TTL);
    assert_eq!(
        reevaluate(&p, &w.facts(&pol, deadline.plus(Duration::from_nanos(0))))
            .map(|o| o.promotion.state),
        Some(State::Expired)
    );
    // Reject and cancel still work while it waits.
    assert_eq!(
        machine::reject(&p, &who("bob", &["rm"]), &pol, "no", t(3))
            .unwrap()
            .promotion
            .state,
        State::Rejected
    );
}

#[test]
fn rollback_goes_back_past_what_rollbacks_removed() {
    let m = |previous: &str, by_rollback| TagMove {
        previous: previous.into(),
        by_rollback,
    };
    // a, b, c applied; a rollback to b (from c): current b.
    let moves = [m("c", true), m("b", false), m("a", false), m("", false)];
    assert_eq!(rollback_target(&moves, "b"), Some("a"), "not c again");
    // Then a rollback to a (from b): nothing is left.
    let moves = [
        m("b", true),
        m("c", true),
        m("b", false),
        m("a", false),
        m("", false),
    ];
    assert_eq!(rollback_target(&moves, "a"), None);
    // z, then a applied twice in a row: the target is z, never a itself.
    let moves = [m("a", false), m("z", false), m("", false)];
    assert_eq!(rollback_target(&moves, "a"), Some("z"));
}

#[test]
fn a_repeated_call_whose_effect_is_recorded_is_already_done_whatever_the_state() {
    let pol = policy();
    let w = World::default();
    let bob = who("bob", &["rm"]);
    let sam = who("sam", &["security"]);
    let p = requested(&pol, &w, t(0));
    let approve = Call::Approve { break_glass: false };
    assert!(
        !already_done(&p, &bob, approve, None),
        "nothing recorded yet"
    );
    let p = super::approve(&p, &bob, false, "", &w.facts(&pol, t(1)))
        .unwrap()
        .promotion;
    assert!(already_done(&p, &bob, approve, None));
    assert!(!already_done(&p, &sam, approve, None));
    // Under an alias, the same person.
    let mut robert = who("robert", &["rm"]);
    robert.aliases = vec!["bob".into()];
    assert!(already_done(&p, &robert, approve, None));
    // Break-glass asked for now was not recorded: not a repeat.
    let glass = Call::Approve { break_glass: true };
    assert!(!already_done(&p, &bob, glass, None));
    // Finished (whatever the end), bob's approval is still recorded.
    for state in [
        State::Promoted,
        State::Expired,
        State::Superseded,
        State::Failed,
    ] {
        let ended = Promotion { state, ..p.clone() };
        assert!(already_done(&ended, &bob, approve, None), "{state:?}");
        assert!(!already_done(&ended, &sam, approve, None), "{state:?}");
        assert!(!already_done(&ended, &bob, Call::Reject, Some("bob")));
        assert!(!already_done(&ended, &bob, Call::Cancel, Some("bob")));
    }
    let glassy = Promotion {
        break_glass: true,
        state: State::Promoted,
        ..p.clone()
    };
    assert!(already_done(&glassy, &bob, glass, None));

    // Reject and cancel: the ending entry's actor, under any of their names.
    let rejected = machine::reject(&p, &sam, &pol, "no", t(2))
        .unwrap()
        .promotion;
    assert!(already_done(&rejected, &sam, Call::Reject, Some("sam")));
    assert!(already_done(&rejected, &robert, Call::Reject, Some("bob")));
    assert!(
        !already_done(&rejected, &bob, Call::Reject, Some("sam")),
        "someone else's"
    );
    assert!(
        !already_done(&rejected, &sam, Call::Reject, None),
        "not known"
    );
    assert!(
        !already_done(&rejected, &sam, Call::Cancel, Some("sam")),
        "not cancelled"
    );
    let cancelled = machine::cancel(&p, &who("alice", &["dev"]), &pol, "", t(2))
        .unwrap()
        .promotion;
    assert!(already_done(
        &cancelled,
        &who("alice", &["dev"]),
        Call::Cancel,
        Some("alice")
    ));
    assert!(!already_done(&cancelled, &sam, Call::Cancel, Some("alice")));
    assert!(!already_done(
        &cancelled,
        &who("alice", &["dev"]),
        Call::Reject,
        Some("alice")
    ));
    // Still pending: a reject or cancel is never a repeat.
    assert!(!already_done(&p, &sam, Call::Reject, Some("sam")));
    assert!(!already_done(&p, &sam, Call::Cancel, Some("sam")));
}

#[test]
fn the_requested_entry_names_the_request_id() {
    let pol = policy();
    let w = World::default();
    let keyed = NewPromotion {
        request_id: "ci-run-7".into(),
        ..new("ship")
    };
    let o = request(
        1,
        keyed,
        &who("alice", &["dev"]),
        false,
        &w.facts(&pol, t(0)),
    )
    .unwrap();
    assert_eq!(o.promotion.request_id, "ci-run-7");
    let e = o.event.unwrap();
    assert_eq!(
        e.attributes
            .get(machine::REQUEST_ID_ATTRIBUTE)
            .map(String::as_str),
        Some("ci-run-7")
    );
    let o = request(
        1,
        new("ship"),
        &who("alice", &["dev"]),
        false,
        &w.facts(&pol, t(0)),
    )
    .unwrap();
    assert!(
        o.event.unwrap().attributes.is_empty(),
        "no key, no attribute"
    );
}

// ---- the property: approved only when every gate passes, approvals never lost ----

const POOL: &[(&str, &[&str])] = &[
    ("bob", &["rm"]),
    ("carol", &["rm"]),
    ("sam", &["security"]),
    ("dana", &["rm", "security"]),
    ("mallory", &["dev"]),
    ("alice", &["rm"]),
];

#[derive(Debug, Clone)]
enum Op {
    Approve(usize),
    Report(bool),
    Advance(u64),
    Reevaluate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..POOL.len()).prop_map(Op::Approve),
        2 => any::<bool>().prop_map(Op::Report),
        3 => (0u64..4_000).prop_map(Op::Advance),
        2 => Just(Op::Reevaluate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn approved_only_when_every_gate_passes_and_no_approval_is_lost(
        required in 1u32..=3,
        groups in any::<bool>(),
        soak in prop_oneof![Just(None), (1u64..3_000).prop_map(Some)],
        check in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut pol = policy();
        pol.required_approvals = required;
        pol.approval_ttl = Duration::from_secs(1_000_000);
        if groups {
            pol.required_groups = vec!["security".into()];
        }
        pol.min_soak = soak.map(Duration::from_secs);
        if check {
            pol.required_checks = vec!["e2e".into()];
        }
        let mut w = World { soak_since: Some(t(0)), ..World::default() };
        let mut now = t(0);
        let mut p = requested(&pol, &w, now);
        for op in ops {
            let before = p.clone();
            let outcome = match op {
                Op::Approve(i) => {
                    let (name, g) = POOL[i];
                    approve(&p, &who(name, g), false, "", &w.facts(&pol, now)).ok()
                }
                Op::Report(ok) => {
                    let mut r = passed("e2e", now);
                    if !ok {
                        r.status = CheckStatus::Failed;
                    }
                    w.checks.push(r);
                    None
                }
                Op::Advance(s) => {
                    now = now.plus(Duration::from_secs(s));
                    None
                }
                Op::Reevaluate => reevaluate(&p, &w.facts(&pol, now)),
            };
            if let Some(o) = outcome {
                p = o.promotion;
            }
            // Recorded approvals are kept, in order, each person once.
            prop_assert!(p.approvals.starts_with(&before.approvals), "an approval was lost");
            let mut names: Vec<&str> = p.approvals.iter().map(|a| a.approver.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            prop_assert_eq!(names.len(), p.approvals.len(), "someone approved twice");
            prop_assert!(!names.contains(&"alice"), "the requester approved");
            prop_assert!(!names.contains(&"mallory"), "a non-approver approved");
            if p.state == State::Approved && before.state != State::Approved {
                let report = evaluate(&p, &w.facts(&pol, now));
                prop_assert!(report.passed(), "approved with {:?}", report.blocking_message());
            }
            if p.state == State::Waiting {
                let report = evaluate(&p, &w.facts(&pol, now));
                prop_assert!(report.quorum() && !p.waiting_for.is_empty());
            }
            if p.state == State::PendingApproval {
                prop_assert!(!evaluate(&p, &w.facts(&pol, now)).quorum());
            }
        }
    }
}

// ---- the dry run ----

/// The names of a report's gates, and which block.
fn verdicts(r: &GateReport) -> Vec<(&'static str, bool)> {
    r.gates.iter().map(|g| (g.name, g.passed)).collect()
}

#[test]
fn the_dry_run_reports_what_a_request_would_meet_in_request_order() {
    let mut pol = policy();
    pol.required_checks = vec!["e2e".into()];
    let mut w = World {
        prerequisite: Some(Prerequisite {
            reference: format!("{REPO}:staging"),
            environment: "staging".into(),
            carries: Some(DIGEST.into()),
        }),
        ..World::default()
    };
    let alice = who("alice", &["dev"]);
    let r = preview(0, new(""), &alice, None, &w.facts(&pol, t(0)));
    assert_eq!(
        verdicts(&r),
        [
            (REQUESTER, true),
            (gates::PREREQUISITE, true),
            (NOOP, true),
            (gates::APPROVALS, false),
            (gates::CHECKS, false),
        ]
    );
    assert!(!r.ready(), "the e2e check is missing");
    assert_eq!(
        r.gate(NOOP).unwrap().message,
        "prodgate has not moved the production tag yet"
    );

    // Everything a request would be refused for, at once: not a requester,
    // the prerequisite not met, the tag carrying the digest already.
    w.prerequisite.as_mut().unwrap().carries = None;
    w.deployed = Some(Deployed {
        digest: DIGEST.into(),
        promotion_id: 7,
        time: t(-60),
        drifted: false,
    });
    w.checks = vec![passed("e2e", t(-10))];
    let r = preview(
        0,
        new(""),
        &alice,
        Some("alice may not request promotions of team/app".into()),
        &w.facts(&pol, t(0)),
    );
    assert_eq!(
        verdicts(&r),
        [
            (REQUESTER, false),
            (gates::PREREQUISITE, false),
            (NOOP, false),
            (gates::APPROVALS, false),
            (gates::CHECKS, true),
        ]
    );
    assert!(
        r.gate(NOOP).unwrap().message.contains("promotion 7"),
        "{r:?}"
    );
    assert_eq!(
        r.gate(REQUESTER).unwrap().message,
        "alice may not request promotions of team/app"
    );

    // A tag moved away outside prodgate: a request puts it back.
    w.deployed.as_mut().unwrap().drifted = true;
    let r = preview(0, new(""), &alice, None, &w.facts(&pol, t(0)));
    assert!(r.gate(NOOP).unwrap().passed, "{r:?}");

    // The same facts decide a real request the same way.
    w.deployed.as_mut().unwrap().drifted = false;
    let refused = request(1, new("ship"), &alice, false, &w.facts(&pol, t(0))).unwrap_err();
    let Refusal::Blocked(b) = refused else {
        panic!("{refused:?}")
    };
    let gates: Vec<&str> = b.iter().map(|b| b.gate).collect();
    assert_eq!(gates, [gates::PREREQUISITE, NOOP]);
}
