//! Every gate with explicit times: the domain takes `now` as a parameter.

use super::*;
use crate::domain::model::State;
use crate::domain::policy::{Approver, Hours, Zone};
use civil::Weekday::{Friday, Monday, Sunday, Thursday, Tuesday, Wednesday};
use proptest::prelude::*;

const REPO: &str = "127.0.0.1:5000/payments/api";
const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn at(s: &str) -> Time {
    from_timestamp(s.parse::<Timestamp>().expect("a test timestamp"))
}

fn hours(start: (i8, i8), end: (i8, i8)) -> Option<Hours> {
    Some(Hours {
        start: civil::time(start.0, start.1, 0, 0),
        end: civil::time(end.0, end.1, 0, 0),
    })
}

fn window(days: &[civil::Weekday], hours: Option<Hours>, zone: &str) -> Window {
    Window {
        days: days.to_vec(),
        hours,
        time_zone: Zone::get(zone).expect("a zone of the bundled database"),
    }
}

const OFFICE: [civil::Weekday; 5] = [Monday, Tuesday, Wednesday, Thursday, Friday];

fn freeze(start: &str, end: &str, reason: &str) -> Freeze {
    Freeze {
        start: at(start),
        end: at(end),
        reason: reason.to_owned(),
    }
}

fn year_end() -> Freeze {
    freeze(
        "2026-12-20T00:00:00Z",
        "2027-01-05T00:00:00Z",
        "year-end freeze",
    )
}

/// The groups each test approver recorded with an approval.
fn recorded_groups(name: &str) -> Vec<String> {
    let groups: &[&str] = match name {
        "alice" | "bob" => &["rm"],
        "sam" => &["security"],
        "dana" => &["dba", "security"],
        _ => &[],
    };
    groups.iter().map(|g| g.to_string()).collect()
}

/// `production` requires `staging`; nothing else is gated.
fn policy() -> EnvironmentPolicy {
    EnvironmentPolicy {
        name: "production".into(),
        tag: "production".into(),
        requires: Some("staging".into()),
        approvers: vec![
            Approver::parse("group:rm"),
            Approver::parse("group:security"),
        ],
        required_approvals: 1,
        allow_self_approval: false,
        approval_ttl: Duration::from_secs(3600),
        apply_deadline: None,
        required_groups: Vec::new(),
        required_checks: Vec::new(),
        min_soak: None,
        window: None,
        break_glass: vec![Approver::parse("group:sre")],
        rollback_approvals: 1,
        freezes: Vec::new(),
        restore_on_drift: false,
        attach_record: false,
        attest: false,
        signature_keys: Vec::new(),
        wait_ttl: Duration::from_secs(7 * 24 * 3600),
    }
}

fn promotion(required: u32, approved_by: &[&str]) -> Promotion {
    let t = at("2026-03-27T09:00:00Z");
    Promotion {
        id: 7,
        repository: REPO.into(),
        environment: "production".into(),
        target_tag: "production".into(),
        source: "staging".into(),
        digest: DIGEST.into(),
        state: State::PendingApproval,
        requested_by: "dev".into(),
        reason: "ship it".into(),
        approvals: approved_by
            .iter()
            .map(|a| Approval {
                approver: a.to_string(),
                comment: String::new(),
                time: t,
                groups: recorded_groups(a),
            })
            .collect(),
        required_approvals: required,
        previous_digest: String::new(),
        created_at: t,
        updated_at: t,
        promoted_at: None,
        failure_message: String::new(),
        expires_at: t.plus(Duration::from_secs(3600)),
        request_id: String::new(),
        superseded_by: None,
        break_glass: false,
        project: String::new(),
        rollback: false,
        policy_digest: String::new(),
        waiting_for: Vec::new(),
        not_before: None,
        release_id: None,
        last_apply_error: String::new(),
        apply_attempts: 0,
    }
}

fn report(check: &str, status: CheckStatus, time: &str) -> CheckReport {
    CheckReport {
        repository: "registry.example.com/team/app".into(),
        digest: String::new(),
        check: check.into(),
        status,
        reported_by: "ci".into(),
        time: at(time),
        details_url: String::new(),
        comment: String::new(),
    }
}

/// The facts of one evaluation, owned; every gate passes unless a test
/// changes something.
struct Case {
    policy: EnvironmentPolicy,
    promotion: Promotion,
    checks: Vec<CheckReport>,
    prerequisite: Option<bool>,
    soak_since: Option<Time>,
    break_glass: bool,
    rollback: bool,
    now: Time,
    signature: Option<Verdict>,
}

impl Case {
    fn new() -> Self {
        Case {
            policy: policy(),
            promotion: promotion(1, &["alice"]),
            checks: Vec::new(),
            prerequisite: Some(true),
            soak_since: None,
            break_glass: false,
            rollback: false,
            now: at("2026-03-27T10:20:00Z"),
            signature: None,
        }
    }

    fn eval(&self) -> GateReport {
        evaluate(&Facts {
            promotion: &self.promotion,
            policy: &self.policy,
            now: self.now,
            rollback: self.rollback,
            checks: &self.checks,
            prerequisite: self.prerequisite,
            soak_since: self.soak_since,
            break_glass: self.break_glass,
            signature: self.signature.as_ref(),
        })
    }

    fn gate(&self, name: &str) -> GateResult {
        self.eval()
            .gate(name)
            .unwrap_or_else(|| panic!("gate {name} is configured"))
            .clone()
    }
}

fn names(r: &GateReport) -> Vec<&'static str> {
    r.gates.iter().map(|g| g.name).collect()
}

// ---- which gates are reported ----

#[test]
fn only_configured_gates_are_reported_approvals_always() {
    let mut c = Case::new();
    c.policy.requires = None;
    assert_eq!(names(&c.eval()), [APPROVALS]);

    c.policy.requires = Some("staging".into());
    c.policy.required_groups = vec!["security".into()];
    c.policy.required_checks = vec!["e2e".into()];
    c.policy.min_soak = Some(Duration::from_secs(60));
    c.policy.freezes = vec![year_end()];
    assert_eq!(
        names(&c.eval()),
        [
            PREREQUISITE,
            APPROVALS,
            REQUIRED_GROUPS,
            CHECKS,
            SOAK,
            FREEZE
        ]
    );

    // A window alone (no freeze) configures the window gate, not the freeze gate.
    c.policy.freezes.clear();
    c.policy.window = Some(window(&[], None, "UTC"));
    assert!(c.eval().gate(WINDOW).is_some());
    assert!(c.eval().gate(FREEZE).is_none());
}

// ---- prerequisite ----

#[test]
fn prerequisite_blocks_when_the_required_tag_does_not_carry_the_digest() {
    let mut c = Case::new();
    assert!(c.gate(PREREQUISITE).passed);
    c.prerequisite = Some(false);
    let g = c.gate(PREREQUISITE);
    assert!(!g.passed);
    assert_eq!(
        g.message,
        format!(
            "environment staging's tag of {REPO} does not carry {DIGEST}: promote it to staging first"
        )
    );
    // Not read for this call: RequestPromotion checked it.
    c.prerequisite = None;
    let g = c.gate(PREREQUISITE);
    assert!(g.passed, "{g:?}");
    assert!(g.message.contains("when the promotion was requested"));
}

// ---- approvals ----

#[test]
fn approvals_count_against_the_promotions_requirement() {
    let mut c = Case::new();
    c.promotion = promotion(2, &["alice"]);
    let r = c.eval();
    let g = r.gate(APPROVALS).expect("always reported");
    assert!(!g.passed);
    assert_eq!(
        g.message,
        "1 of 2 (alice), needs 1 more from an approver of environment production"
    );
    // The count alone does not make it un-ready (EvaluateGates).
    assert!(r.ready());
    assert!(!r.passed());

    c.promotion = promotion(2, &["alice", "bob"]);
    assert_eq!(c.gate(APPROVALS).message, "2 of 2 (alice, bob)");
    assert!(c.eval().passed());

    c.promotion = promotion(0, &[]);
    assert!(c.gate(APPROVALS).passed);
}

// ---- required groups ----

#[test]
fn required_groups_need_one_approval_by_a_member_of_each() {
    let mut c = Case::new();
    c.policy.required_groups = vec!["security".into()];
    c.promotion = promotion(2, &["alice", "bob"]);
    let g = c.gate(REQUIRED_GROUPS);
    assert!(!g.passed);
    assert_eq!(
        g.message,
        "needs an approval by a member of group `security`"
    );
    assert!(!c.eval().ready(), "a group is not the approval count");

    c.promotion = promotion(2, &["alice", "sam"]);
    let g = c.gate(REQUIRED_GROUPS);
    assert!(g.passed, "{g:?}");
    assert_eq!(g.message, "each required group approved: `security` (sam)");

    c.policy.required_groups = vec!["security".into(), "dba".into()];
    let g = c.gate(REQUIRED_GROUPS);
    assert_eq!(g.message, "needs an approval by a member of group `dba`");
    c.promotion = promotion(2, &["alice", "bob"]);
    assert_eq!(
        c.gate(REQUIRED_GROUPS).message,
        "needs an approval by a member of each of groups `security` and `dba`"
    );
    // One approver may represent several groups.
    c.promotion = promotion(2, &["alice", "dana"]);
    assert!(c.gate(REQUIRED_GROUPS).passed);
}

#[test]
fn an_approval_counts_for_the_groups_it_recorded_only() {
    let mut c = Case::new();
    c.policy.required_groups = vec!["security".into()];
    c.promotion = promotion(1, &["sam"]);
    assert!(c.gate(REQUIRED_GROUPS).passed);
    // Whatever sam's groups are now, the approval says what they were.
    c.promotion.approvals[0].groups.clear();
    assert!(!c.gate(REQUIRED_GROUPS).passed);
}

#[test]
fn a_rollback_needing_no_approvals_needs_no_group() {
    let mut c = Case::new();
    c.policy.required_groups = vec!["security".into()];
    c.promotion = promotion(0, &[]);
    c.rollback = true;
    assert!(c.gate(REQUIRED_GROUPS).passed);
}

// ---- checks ----

#[test]
fn checks_block_when_missing_or_failed_and_the_latest_report_wins() {
    use CheckStatus::{Failed, Passed};
    let mut c = Case::new();
    c.policy.required_checks = vec!["e2e".into(), "scan".into()];

    let g = c.gate(CHECKS);
    assert!(!g.passed);
    assert_eq!(
        g.message,
        format!("checks `e2e` and `scan` have no PASSED report for {DIGEST}")
    );

    c.checks = vec![
        report("e2e", Passed, "2026-03-27T09:10:00Z"),
        report("scan", Failed, "2026-03-27T09:11:00Z"),
        report("lint", Passed, "2026-03-27T09:12:00Z"),
    ];
    assert_eq!(
        c.gate(CHECKS).message,
        format!(
            "check `scan` (latest FAILED by ci at 2026-03-27T09:11:00Z) has no PASSED report for {DIGEST}"
        )
    );

    // A later PASSED unblocks...
    c.checks
        .push(report("scan", Passed, "2026-03-27T09:30:00Z"));
    let g = c.gate(CHECKS);
    assert!(g.passed, "{g:?}");
    assert_eq!(g.message, format!("`e2e` and `scan` PASSED for {DIGEST}"));

    // ...a later FAILED blocks again, whatever order the slice holds.
    c.checks
        .insert(0, report("e2e", Failed, "2026-03-27T10:00:00Z"));
    assert!(!c.gate(CHECKS).passed);

    // On equal times, the later report in the slice counts.
    c.checks = vec![
        report("e2e", Failed, "2026-03-27T09:00:00Z"),
        report("e2e", Passed, "2026-03-27T09:00:00Z"),
        report("scan", Passed, "2026-03-27T09:00:00Z"),
    ];
    assert!(c.gate(CHECKS).passed);
    c.checks.swap(0, 1);
    assert!(!c.gate(CHECKS).passed);
}

// ---- soak ----

#[test]
fn soak_counts_from_the_applied_entry_just_before_and_after() {
    let mut c = Case::new();
    c.policy.min_soak = Some(Duration::from_secs(30 * 60));
    c.soak_since = Some(at("2026-03-27T10:02:00Z"));

    c.now = at("2026-03-27T10:20:00Z");
    let g = c.gate(SOAK);
    assert!(!g.passed);
    assert_eq!(
        g.message,
        "12m left (staging since 2026-03-27T10:02:00Z, needs 30m)"
    );

    // Rounded up: never "0s left" while it blocks.
    c.now = at("2026-03-27T10:31:59.999999999Z");
    assert_eq!(
        c.gate(SOAK).message,
        "1s left (staging since 2026-03-27T10:02:00Z, needs 30m)"
    );

    c.now = at("2026-03-27T10:32:00Z");
    let g = c.gate(SOAK);
    assert!(g.passed, "{g:?}");
}

#[test]
fn soak_blocks_when_prodgate_never_moved_the_required_tag_there() {
    let mut c = Case::new();
    c.policy.min_soak = Some(Duration::from_secs(30 * 60));
    c.soak_since = None;
    let g = c.gate(SOAK);
    assert!(!g.passed);
    assert!(
        g.message.contains("moved outside prodgate"),
        "{}",
        g.message
    );
    assert!(
        g.message
            .contains(&format!("environment staging's tag of {REPO} to {DIGEST}")),
        "{}",
        g.message
    );
}

// ---- window: weekly hours ----

#[test]
fn hours_crossing_midnight_belong_to_the_day_they_open() {
    // Friday night into Saturday.
    let w = window(&[Friday], hours((22, 0), (2, 0)), "UTC");
    let open = |s: &str| window_open(&w, at(s));
    let next = |s: &str| next_opening(Some(&w), &[], at(s));

    assert!(!open("2026-03-27T21:59:59Z"));
    assert_eq!(
        next("2026-03-27T21:59:59Z"),
        Some(at("2026-03-27T22:00:00Z"))
    );
    assert!(open("2026-03-27T22:00:00Z"));
    assert_eq!(
        next("2026-03-27T22:00:00Z"),
        Some(at("2026-03-27T22:00:00Z"))
    );
    assert!(
        open("2026-03-28T01:59:59.999999999Z"),
        "Saturday after midnight"
    );
    assert!(!open("2026-03-28T02:00:00Z"), "end exclusive");
    assert_eq!(
        next("2026-03-28T02:00:00Z"),
        Some(at("2026-04-03T22:00:00Z"))
    );
    // Friday after midnight is Thursday's night, and Thursday is not allowed.
    assert!(!open("2026-03-27T01:00:00Z"));
    assert!(!open("2026-03-26T23:00:00Z"));
    assert_eq!(
        next("2026-03-27T01:00:00Z"),
        Some(at("2026-03-27T22:00:00Z"))
    );

    // Every day: the night window is open until 06:00 and opens at 22:00.
    let w = window(&[], hours((22, 0), (6, 0)), "UTC");
    assert!(window_open(&w, at("2026-03-27T03:00:00Z")));
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-03-27T06:00:00Z")),
        Some(at("2026-03-27T22:00:00Z"))
    );

    // Equal start and end: a whole day from the start.
    let w = window(&[Friday], hours((0, 0), (0, 0)), "UTC");
    assert!(window_open(&w, at("2026-03-27T00:00:00Z")));
    assert!(window_open(&w, at("2026-03-27T23:59:59Z")));
    assert!(!window_open(&w, at("2026-03-28T00:00:00Z")));
}

#[test]
fn office_hours_follow_berlin_across_the_spring_clock_change() {
    // 2026-03-29 02:00 CET becomes 03:00 CEST (01:00Z): Friday's 09:00 is
    // 08:00Z, Monday's is 07:00Z.
    let w = window(&OFFICE, hours((9, 0), (17, 0)), "Europe/Berlin");
    assert!(!window_open(&w, at("2026-03-27T07:59:59Z")));
    assert!(window_open(&w, at("2026-03-27T08:00:00Z")));
    assert!(!window_open(&w, at("2026-03-27T16:00:00Z")), "17:00 CET");
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-03-27T16:00:00Z")),
        Some(at("2026-03-30T07:00:00Z"))
    );
    assert!(window_open(&w, at("2026-03-30T07:00:00Z")));
    assert!(!window_open(&w, at("2026-03-30T06:59:59Z")));

    let mut c = Case::new();
    c.policy.window = Some(w);
    c.now = at("2026-03-28T12:00:00Z");
    let g = c.gate(WINDOW);
    assert!(!g.passed);
    assert_eq!(
        g.message,
        "production is outside its window (mon,tue,wed,thu,fri 09:00-17:00 Europe/Berlin) \
         and opens at 2026-03-30T07:00:00Z (Mon 2026-03-30 09:00 Europe/Berlin); group:sre may override it with break-glass and a reason"
    );
    c.now = at("2026-03-30T07:00:00Z");
    let g = c.gate(WINDOW);
    assert!(g.passed);
    assert_eq!(
        g.message,
        "production is open (mon,tue,wed,thu,fri 09:00-17:00 Europe/Berlin)"
    );
}

#[test]
fn a_start_the_clock_skips_opens_the_window_at_the_jump() {
    // On 2026-03-29 Berlin's clock never reads 02:30: the window opens when
    // it jumps from 02:00 CET to 03:00 CEST (01:00Z), closes at 04:00 CEST.
    let w = window(&[], hours((2, 30), (4, 0)), "Europe/Berlin");
    assert!(
        window_open(&w, at("2026-03-28T01:30:00Z")),
        "02:30 CET the day before"
    );
    assert!(!window_open(&w, at("2026-03-29T00:59:59Z")), "01:59:59 CET");
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-03-29T00:00:00Z")),
        Some(at("2026-03-29T01:00:00Z"))
    );
    assert!(window_open(&w, at("2026-03-29T01:00:00Z")), "03:00 CEST");
    assert!(!window_open(&w, at("2026-03-29T02:00:00Z")), "04:00 CEST");
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-03-29T02:00:00Z")),
        Some(at("2026-03-30T00:30:00Z")),
        "02:30 CEST on Monday"
    );

    // Hours wholly inside the skipped hour do not open that Sunday at all.
    let w = window(&[Sunday], hours((2, 0), (2, 30)), "Europe/Berlin");
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-03-28T12:00:00Z")),
        Some(at("2026-04-05T00:00:00Z")),
        "02:00 CEST a week later"
    );
}

#[test]
fn the_clock_reading_decides_when_berlin_sets_it_back_in_october() {
    // 2026-10-25 03:00 CEST becomes 02:00 CET (01:00Z): 02:00-03:00 is read twice.
    let w = window(&[], hours((2, 30), (17, 0)), "Europe/Berlin");
    assert!(window_open(&w, at("2026-10-25T00:30:00Z")), "02:30 CEST");
    assert!(window_open(&w, at("2026-10-25T00:59:59Z")), "02:59:59 CEST");
    assert!(!window_open(&w, at("2026-10-25T01:00:00Z")), "02:00 CET");
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-10-25T01:00:00Z")),
        Some(at("2026-10-25T01:30:00Z")),
        "02:30 CET, the second reading"
    );
    assert!(window_open(&w, at("2026-10-25T15:59:59Z")), "16:59:59 CET");
    assert!(!window_open(&w, at("2026-10-25T16:00:00Z")), "17:00 CET");

    // Hours that start in the repeated hour open at its second reading too.
    let w = window(&[], hours((2, 15), (2, 45)), "Europe/Berlin");
    assert!(!window_open(&w, at("2026-10-25T00:50:00Z")), "02:50 CEST");
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-10-25T00:50:00Z")),
        Some(at("2026-10-25T01:15:00Z")),
        "02:15 CET"
    );

    // Setting the clock back re-enters hours it had left: the jump opens it.
    let w = window(&[], hours((1, 30), (2, 30)), "Europe/Berlin");
    assert!(!window_open(&w, at("2026-10-25T00:40:00Z")), "02:40 CEST");
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-10-25T00:40:00Z")),
        Some(at("2026-10-25T01:00:00Z")),
        "02:00 CET"
    );

    // Office hours: Friday's 09:00 is 07:00Z, Monday's 08:00Z.
    let w = window(&OFFICE, hours((9, 0), (17, 0)), "Europe/Berlin");
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-10-23T16:00:00Z")),
        Some(at("2026-10-26T08:00:00Z"))
    );
}

#[test]
fn allowed_days_without_hours_are_whole_local_days() {
    let w = window(&[Monday], None, "Europe/Berlin");
    // Monday 2026-03-30 00:00 CEST is Sunday 22:00Z.
    assert!(!window_open(&w, at("2026-03-29T21:59:59Z")));
    assert!(window_open(&w, at("2026-03-29T22:00:00Z")));
    assert!(!window_open(&w, at("2026-03-30T22:00:00Z")));
    assert_eq!(
        next_opening(Some(&w), &[], at("2026-03-27T12:00:00Z")),
        Some(at("2026-03-29T22:00:00Z"))
    );
}

// ---- window: freezes ----

#[test]
fn a_freeze_blocks_from_its_exact_start_until_its_exclusive_end() {
    let mut c = Case::new();
    c.policy.freezes = vec![year_end()];

    c.now = at("2026-12-19T23:59:59.999999999Z");
    let g = c.gate(FREEZE);
    assert!(g.passed);
    assert_eq!(g.message, "production is not frozen");

    for now in ["2026-12-20T00:00:00Z", "2027-01-04T23:59:59.999999999Z"] {
        c.now = at(now);
        let g = c.gate(FREEZE);
        assert!(!g.passed, "{now}");
        assert_eq!(
            g.message,
            "production is frozen until 2027-01-05T00:00:00Z (year-end freeze); group:sre may override it with break-glass and a reason"
        );
    }

    c.now = at("2027-01-05T00:00:00Z");
    assert!(c.gate(FREEZE).passed);
}

#[test]
fn after_a_freeze_the_window_says_when_it_really_opens() {
    let mut c = Case::new();
    c.policy.freezes = vec![year_end()];
    c.policy.window = Some(window(&OFFICE, hours((9, 0), (17, 0)), "Europe/Berlin"));
    c.now = at("2026-12-24T10:00:00Z");
    assert_eq!(
        c.gate(FREEZE).message,
        "production is frozen until 2027-01-05T00:00:00Z (year-end freeze) \
         and opens at 2027-01-05T08:00:00Z (Tue 2027-01-05 09:00 Europe/Berlin); group:sre may override it with break-glass and a reason"
    );
}

#[test]
fn overlapping_freezes_are_all_named_and_the_opening_is_after_the_last() {
    let mut c = Case::new();
    c.policy.freezes = vec![
        year_end(),
        freeze("2027-01-04T00:00:00Z", "2027-01-10T00:00:00Z", "migration"),
    ];
    c.now = at("2026-12-24T10:00:00Z");
    assert_eq!(
        c.gate(FREEZE).message,
        "production is frozen until 2027-01-05T00:00:00Z (year-end freeze) \
         and opens at 2027-01-10T00:00:00Z; group:sre may override it with break-glass and a reason"
    );
    c.now = at("2027-01-04T12:00:00Z");
    assert_eq!(
        c.gate(FREEZE).message,
        "production is frozen until 2027-01-05T00:00:00Z (year-end freeze) \
         and until 2027-01-10T00:00:00Z (migration); group:sre may override it with break-glass and a reason"
    );
}

// ---- break-glass, rollback, the combined message ----

/// Every gate blocks.
fn everything_blocks() -> Case {
    let mut c = Case::new();
    c.policy.required_groups = vec!["security".into()];
    c.policy.required_checks = vec!["e2e".into()];
    c.policy.min_soak = Some(Duration::from_secs(30 * 60));
    c.policy.freezes = vec![year_end()];
    c.promotion = promotion(2, &["alice"]);
    c.prerequisite = Some(false);
    c.now = at("2026-12-21T10:20:00Z");
    c.soak_since = Some(at("2026-12-21T10:02:00Z"));
    c
}

#[test]
fn the_blocking_message_names_every_blocker_and_what_unblocks_it() {
    let r = everything_blocks().eval();
    assert_eq!(
        names(&r),
        [
            PREREQUISITE,
            APPROVALS,
            REQUIRED_GROUPS,
            CHECKS,
            SOAK,
            FREEZE
        ]
    );
    assert!(!r.ready());
    assert_eq!(r.overridden(), None);
    assert_eq!(
        r.blocking_message().expect("everything blocks"),
        format!(
            "prerequisite: environment staging's tag of {REPO} does not carry {DIGEST}: promote it to staging first; \
             approvals: 1 of 2 (alice), needs 1 more from an approver of environment production; \
             required_groups: needs an approval by a member of group `security`; \
             checks: check `e2e` has no PASSED report for {DIGEST}; \
             soak: 12m left (staging since 2026-12-21T10:02:00Z, needs 30m); \
             freeze: production is frozen until 2027-01-05T00:00:00Z (year-end freeze); group:sre may override it with break-glass and a reason"
        )
    );
}

#[test]
fn break_glass_overrides_only_window_and_soak_and_marks_them() {
    let mut c = everything_blocks();
    c.break_glass = true;
    let r = c.eval();
    for name in [FREEZE, SOAK] {
        let g = r.gate(name).expect("configured");
        assert!(g.passed && g.overridden, "{g:?}");
        assert!(
            g.message.starts_with("overridden by break-glass: "),
            "{g:?}"
        );
    }
    for name in [PREREQUISITE, APPROVALS, REQUIRED_GROUPS, CHECKS] {
        let g = r.gate(name).expect("configured");
        assert!(!g.passed && !g.overridden, "{g:?}");
    }
    assert_eq!(r.overridden().as_deref(), Some("freeze,soak"));
    let msg = r.blocking_message().expect("still blocked");
    assert!(!msg.contains("freeze:") && !msg.contains("soak:"), "{msg}");

    // With everything else satisfied, break-glass alone lets it through.
    c.prerequisite = Some(true);
    c.promotion = promotion(2, &["alice", "sam"]);
    c.checks = vec![report("e2e", CheckStatus::Passed, "2026-12-21T10:05:00Z")];
    let r = c.eval();
    assert!(r.passed(), "{:?}", r.blocking_message());
    assert_eq!(r.overridden().as_deref(), Some("freeze,soak"));

    // Only what blocked is marked; nothing blocked, nothing overridden.
    c.soak_since = Some(at("2026-12-01T00:00:00Z"));
    assert_eq!(c.eval().overridden().as_deref(), Some("freeze"));
    c.now = at("2027-01-05T00:00:00Z");
    assert_eq!(c.eval().overridden(), None);
}

#[test]
fn a_rollback_skips_prerequisite_checks_and_soak_but_not_the_window() {
    let mut c = everything_blocks();
    c.rollback = true;
    c.promotion = promotion(1, &["sam"]);
    let r = c.eval();
    for name in [PREREQUISITE, CHECKS, SOAK] {
        let g = r.gate(name).expect("configured");
        assert!(g.passed && !g.overridden, "{g:?}");
        assert!(g.message.contains("not evaluated for a rollback"), "{g:?}");
    }
    assert_eq!(
        r.blocking_message().as_deref(),
        Some(
            "freeze: production is frozen until 2027-01-05T00:00:00Z (year-end freeze); group:sre may override it with break-glass and a reason"
        )
    );
}

// ---- signature ----

fn signature_key() -> crate::domain::signature::SignatureKey {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let k = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    let pem = k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
    crate::domain::signature::SignatureKey::from_pem(pem.as_bytes()).unwrap()
}

fn signed_case() -> Case {
    let mut c = Case::new();
    c.policy.signature_keys = vec![signature_key()];
    c.signature = Some(Verdict::Verified {
        fingerprint: c.policy.signature_keys[0].fingerprint.clone(),
        source: "sha256-aaaa.sig layer 0".into(),
    });
    c
}

#[test]
fn the_signature_gate_runs_only_with_keys_and_passes_naming_the_key() {
    let mut c = signed_case();
    let fp = c.policy.signature_keys[0].fingerprint.clone();
    assert_eq!(names(&c.eval()), [PREREQUISITE, APPROVALS, SIGNATURE]);
    let g = c.gate(SIGNATURE);
    assert!(g.passed, "{g:?}");
    assert_eq!(
        g.message,
        format!("{DIGEST} is signed by key {fp} (sha256-aaaa.sig layer 0)")
    );
    c.policy.signature_keys.clear();
    assert_eq!(names(&c.eval()), [PREREQUISITE, APPROVALS]);
}

#[test]
fn an_unsigned_or_badly_signed_digest_blocks_saying_how_to_sign_it() {
    let mut c = signed_case();
    let fp = c.policy.signature_keys[0].fingerprint.clone();
    let how = format!(
        "sign {DIGEST} with one of the keys signature_keys names ({fp}), e.g. `cosign sign --key cosign.key {REPO}@{DIGEST}`"
    );
    c.signature = Some(Verdict::Unsigned {
        looked_at: vec!["r:sha256-a.sig".into(), "r:sha256-a".into()],
    });
    let g = c.gate(SIGNATURE);
    assert!(!g.passed, "{g:?}");
    assert_eq!(
        g.message,
        format!("no signature of {DIGEST} found (looked for r:sha256-a.sig or r:sha256-a): {how}")
    );
    c.signature = Some(Verdict::Invalid {
        reasons: vec!["x: it signs \"sha256:b\", not this digest".into()],
    });
    let g = c.gate(SIGNATURE);
    assert!(!g.passed, "{g:?}");
    assert_eq!(
        g.message,
        format!(
            "no valid signature of {DIGEST} by a configured key (x: it signs \"sha256:b\", not this digest): {how}"
        )
    );
    // Not read is never a pass.
    c.signature = None;
    assert!(!c.gate(SIGNATURE).passed);
}

#[test]
fn a_rollback_and_break_glass_do_not_skip_the_signature() {
    let mut c = signed_case();
    c.signature = Some(Verdict::Unsigned {
        looked_at: vec!["r:t".into()],
    });
    c.rollback = true;
    c.break_glass = true;
    let g = c.gate(SIGNATURE);
    assert!(!g.passed && !g.overridden, "{g:?}");
}

// ---- types ----

#[test]
fn zones_resolve_from_the_bundled_database_and_compare_by_name() {
    assert!(Zone::get("Mars/Olympus_Mons").is_err());
    let a = Zone::get("Europe/Berlin").expect("bundled");
    assert_eq!(a, Zone::get("Europe/Berlin").expect("bundled"));
    assert_ne!(a, Zone::get("Europe/Paris").expect("bundled"));
    assert_eq!(Zone::utc().name(), "UTC");
    assert_eq!(
        hours((9, 0), (17, 30)).map(|h| h.to_string()).as_deref(),
        Some("09:00-17:30")
    );
}

// ---- properties ----

const ZONES: [&str; 6] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    // DST moves the clock by 30 minutes
    "Australia/Lord_Howe",
    // DST changes at midnight
    "America/Santiago",
    "Asia/Kolkata",
];

fn arb_window() -> impl Strategy<Value = Window> {
    let quarter = (0i8..24, 0i8..4).prop_map(|(h, q)| civil::time(h, q * 15, 0, 0));
    (
        prop::collection::vec(0i8..7, 0..4),
        prop::option::of((quarter.clone(), quarter)),
        0..ZONES.len(),
    )
        .prop_map(|(days, hours, z)| Window {
            days: days
                .into_iter()
                .map(|d| civil::Weekday::from_monday_zero_offset(d).expect("0..7"))
                .collect(),
            hours: hours.map(|(start, end)| Hours { start, end }),
            time_zone: Zone::get(ZONES[z]).expect("bundled"),
        })
}

/// 2026-01-01T00:00:00Z plus `s` seconds.
fn base_plus(s: i64) -> Time {
    Time {
        seconds: 1_767_225_600 + s,
        nanos: 0,
    }
}

fn arb_freezes() -> impl Strategy<Value = Vec<Freeze>> {
    prop::collection::vec((0i64..400 * 86_400, 0i64..20 * 86_400), 0..3).prop_map(|v| {
        v.into_iter()
            .map(|(start, len)| Freeze {
                start: base_plus(start),
                end: base_plus(start + len),
                reason: "test".into(),
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The window gate passes exactly when the next opening is now; the next
    /// opening is open, and nothing between now and it is (checked on the
    /// quarter-hour grid every window and zone here lives on, plus the last
    /// nanosecond before it).
    #[test]
    fn open_iff_the_next_opening_is_now(
        w in arb_window(),
        freezes in arb_freezes(),
        now in (0i64..400 * 86_400, 0u32..1_000_000_000)
            .prop_map(|(s, n)| Time { nanos: n, ..base_plus(s) }),
    ) {
        let open = |t: Time| !freezes.iter().any(|z| z.contains(t)) && window_open(&w, t);
        let next = next_opening(Some(&w), &freezes, now);
        let next = next.expect("every window here opens within a week of any instant");
        prop_assert!(next >= now);
        prop_assert!(open(next), "{} is not open", show(next));
        prop_assert_eq!(open(now), next == now);

        let mut c = Case::new();
        c.policy.window = Some(w.clone());
        c.policy.freezes = freezes.clone();
        c.now = now;
        let r = c.eval();
        let passed = [WINDOW, FREEZE].iter().all(|n| r.gate(n).is_none_or(|g| g.passed));
        prop_assert_eq!(passed, open(now));

        if next > now {
            let before = from_timestamp(to_timestamp(next) - SignedDuration::from_nanos(1));
            prop_assert!(!open(before), "{} is open, before {}", show(before), show(next));
            let quarter = 15 * 60;
            let mut t = Time { seconds: (now.seconds / quarter + 1) * quarter, nanos: 0 };
            while t < next {
                prop_assert!(!open(t), "{} is open, before {}", show(t), show(next));
                t.seconds += quarter;
            }
        }
    }
}
