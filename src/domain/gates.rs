//! The gates in front of an environment's tag. A gate is a pure function
//! from the [`Facts`] a use case gathered to pass or block with a message;
//! [`evaluate`] runs every gate the environment configures and reports all
//! of them, so a refusal names every blocker at once and says what would
//! unblock it.
//!
//! Adding a gate touches three places: its function here (and its line in
//! [`evaluate`]), its config key, and its test. What a verdict does to a
//! promotion (refuse, wait, approve) is [`super::decision`]'s.

use super::model::{Approval, Precision, Promotion, Time};
use super::policy::{EnvironmentPolicy, Freeze, Window};
use super::signature::Verdict;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, civil};
use std::time::Duration;

pub const PREREQUISITE: &str = "prerequisite";
pub const APPROVALS: &str = "approvals";
pub const REQUIRED_GROUPS: &str = "required_groups";
pub const CHECKS: &str = "checks";
pub const SOAK: &str = "soak";
pub const WINDOW: &str = "window";
pub const FREEZE: &str = "freeze";
pub const SIGNATURE: &str = "signature";

/// The gates break-glass may override, in the order the audit attribute
/// `overridden` lists them (`window,freeze,soak`). Never approvals, groups,
/// checks or a signature.
pub const BREAK_GLASS_OVERRIDES: [&str; 3] = [WINDOW, FREEZE, SOAK];

/// The gates time alone opens: a promotion waiting only for them knows
/// when it moves ([`not_before`]).
pub const TIME_GATES: [&str; 3] = [SOAK, WINDOW, FREEZE];

/// The gates a promotion whose approvals are complete waits for, rather
/// than being refused: time, checks still to be reported, a signature
/// still to be pushed.
pub const WAITABLE: [&str; 5] = [CHECKS, SIGNATURE, SOAK, WINDOW, FREEZE];

/// How far past an instant [`next_opening`] looks for a weekly window: a
/// week, plus a week for the day a clock change swallows the hours.
const HORIZON_DAYS: i16 = 15;

pub use crate::domain::model::{CheckReport, CheckStatus};

/// What the gates decide on, gathered by the use case.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The promotion as it would be after the call being decided: for the
    /// Approve that fills the last slot, with that approval in it.
    pub promotion: &'a Promotion,
    pub policy: &'a EnvironmentPolicy,
    pub now: Time,
    /// A rollback skips the prerequisite, checks and soak gates: its digest
    /// passed them before.
    pub rollback: bool,
    /// Reports about the repository's pinned digest, in the order they were
    /// recorded; several per check may be given: the latest counts (on equal
    /// times, the later in the slice).
    pub checks: &'a [CheckReport],
    /// Whether the `requires` environment's tag carries the digest now.
    /// `None`: not read for this call; the gate then relies on the check
    /// RequestPromotion made (it refuses a digest the tag does not carry).
    pub prerequisite: Option<bool>,
    /// When the latest APPLIED entry moved the `requires` environment's tag
    /// of this repository to this digest; `None`: no entry did.
    pub soak_since: Option<Time>,
    /// The promotion is marked break-glass (by a principal the policy's
    /// `break_glass` names; the decision refuses anyone else).
    pub break_glass: bool,
    /// What the registry holds for the digest, verified against the
    /// policy's `signature_keys`; `None`: not read (the gate then blocks).
    pub signature: Option<&'a Verdict>,
}

/// One gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateResult {
    /// One of [`PREREQUISITE`], [`APPROVALS`], [`REQUIRED_GROUPS`],
    /// [`CHECKS`], [`SIGNATURE`], [`SOAK`], [`WINDOW`], [`FREEZE`].
    pub name: &'static str,
    pub passed: bool,
    /// Passed only because break-glass overrode a block; the message says
    /// what it overrode.
    pub overridden: bool,
    pub message: String,
}

/// Every gate configured for a promotion, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GateReport {
    pub gates: Vec<GateResult>,
}

impl GateReport {
    pub fn gate(&self, name: &str) -> Option<&GateResult> {
        self.gates.iter().find(|g| g.name == name)
    }

    pub fn blocking(&self) -> impl Iterator<Item = &GateResult> {
        self.gates.iter().filter(|g| !g.passed)
    }

    /// Nothing blocks: the promotion may become APPROVED.
    pub fn passed(&self) -> bool {
        self.blocking().next().is_none()
    }

    /// No gate other than the approval count blocks (EvaluateGates' `ready`).
    pub fn ready(&self) -> bool {
        self.blocking().all(|g| g.name == APPROVALS)
    }

    /// The quorum is recorded: the approval count and the required groups
    /// pass (whatever the other gates say).
    pub fn quorum(&self) -> bool {
        self.blocking()
            .all(|g| g.name != APPROVALS && g.name != REQUIRED_GROUPS)
    }

    /// The names of the blocking gates, in evaluation order.
    pub fn blocking_names(&self) -> Vec<String> {
        self.blocking().map(|g| g.name.to_owned()).collect()
    }

    /// Every blocking gate and what would unblock it, `; `-separated, each
    /// as `name: message`; `None` when nothing blocks.
    pub fn blocking_message(&self) -> Option<String> {
        let parts: Vec<String> = self
            .blocking()
            .map(|g| format!("{}: {}", g.name, g.message))
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The gates break-glass overrode, as the `overridden` attribute
    /// (`window,soak`); `None` when it overrode nothing.
    pub fn overridden(&self) -> Option<String> {
        let names: Vec<&str> = BREAK_GLASS_OVERRIDES
            .into_iter()
            .filter(|n| self.gate(n).is_some_and(|g| g.overridden))
            .collect();
        (!names.is_empty()).then(|| names.join(","))
    }
}

/// Runs every gate the environment configures: approvals always, the
/// others when their keys are set.
pub fn evaluate(f: &Facts<'_>) -> GateReport {
    let gates = [
        prerequisite(f),
        Some(approvals(f)),
        required_groups(f),
        checks(f),
        signature(f),
        soak(f),
        window(f),
        freeze(f),
    ];
    GateReport {
        gates: gates.into_iter().flatten().collect(),
    }
}

/// A gate that passes, with what it found.
pub fn pass(name: &'static str, message: String) -> GateResult {
    GateResult {
        name,
        passed: true,
        overridden: false,
        message,
    }
}

/// A gate that blocks, with what would unblock it.
pub fn block(name: &'static str, message: String) -> GateResult {
    GateResult {
        name,
        passed: false,
        overridden: false,
        message,
    }
}

/// Break-glass turns a block of a gate it may override into a marked pass.
fn break_glass(f: &Facts<'_>, g: GateResult) -> GateResult {
    if g.passed || !f.break_glass || !BREAK_GLASS_OVERRIDES.contains(&g.name) {
        return g;
    }
    GateResult {
        passed: true,
        overridden: true,
        message: format!("overridden by break-glass: {}", g.message),
        ..g
    }
}

fn skipped_for_rollback(name: &'static str, f: &Facts<'_>) -> GateResult {
    pass(
        name,
        format!(
            "not evaluated for a rollback: {} passed it before",
            f.promotion.digest
        ),
    )
}

fn prerequisite(f: &Facts<'_>) -> Option<GateResult> {
    let req = f.policy.requires.as_deref()?;
    let p = f.promotion;
    if f.rollback {
        return Some(skipped_for_rollback(PREREQUISITE, f));
    }
    Some(match f.prerequisite {
        Some(true) => pass(
            PREREQUISITE,
            format!(
                "environment {req}'s tag of {} carries {}",
                p.repository, p.digest
            ),
        ),
        Some(false) => block(
            PREREQUISITE,
            format!(
                "environment {req}'s tag of {} does not carry {}: promote it to {req} first",
                p.repository, p.digest
            ),
        ),
        None => pass(
            PREREQUISITE,
            format!(
                "environment {req}'s tag of {} carried {} when the promotion was requested",
                p.repository, p.digest
            ),
        ),
    })
}

fn approvals(f: &Facts<'_>) -> GateResult {
    let p = f.promotion;
    let have = p.approvals.len();
    let need = p.required_approvals as usize;
    let who = if p.approvals.is_empty() {
        String::new()
    } else {
        format!(" ({})", approver_names(&p.approvals))
    };
    if need == 0 {
        pass(APPROVALS, "none required".to_owned())
    } else if have >= need {
        pass(APPROVALS, format!("{have} of {need}{who}"))
    } else {
        block(
            APPROVALS,
            format!(
                "{have} of {need}{who}, needs {} more from an approver of environment {}",
                need - have,
                p.environment
            ),
        )
    }
}

fn approver_names(approvals: &[Approval]) -> String {
    let names: Vec<&str> = approvals.iter().map(|a| a.approver.as_str()).collect();
    names.join(", ")
}

/// The required groups no recorded approval represents, in the policy's
/// order. An approval counts for the groups it recorded, never for the
/// groups its approver has now.
fn unrepresented<'p>(policy: &'p EnvironmentPolicy, approvals: &[Approval]) -> Vec<&'p str> {
    policy
        .required_groups
        .iter()
        .filter(|g| !approvals.iter().any(|a| a.groups.contains(g)))
        .map(String::as_str)
        .collect()
}

fn required_groups(f: &Facts<'_>) -> Option<GateResult> {
    if f.policy.required_groups.is_empty() {
        return None;
    }
    let p = f.promotion;
    if p.required_approvals == 0 {
        // A rollback with `rollback_approvals = 0`: nobody approves, so no
        // group can; the configuration chose that.
        return Some(pass(
            REQUIRED_GROUPS,
            "no approvals required, so no group needs to approve".to_owned(),
        ));
    }
    let missing = unrepresented(f.policy, &p.approvals);
    Some(if missing.is_empty() {
        let by: Vec<String> = f
            .policy
            .required_groups
            .iter()
            .map(|g| {
                let who = p
                    .approvals
                    .iter()
                    .find(|a| a.groups.contains(g))
                    .map_or("", |a| a.approver.as_str());
                format!("`{g}` ({who})")
            })
            .collect();
        pass(
            REQUIRED_GROUPS,
            format!("each required group approved: {}", and_list(&by)),
        )
    } else {
        block(REQUIRED_GROUPS, needs_groups(&missing))
    })
}

fn needs_groups(missing: &[&str]) -> String {
    let quoted: Vec<String> = missing.iter().map(|g| format!("`{g}`")).collect();
    let noun = if missing.len() == 1 {
        "group"
    } else {
        "each of groups"
    };
    format!(
        "needs an approval by a member of {noun} {}",
        and_list(&quoted)
    )
}

/// The latest report of `check`; on equal times the later in the slice.
pub fn latest_report<'a>(reports: &'a [CheckReport], check: &str) -> Option<&'a CheckReport> {
    reports
        .iter()
        .filter(|r| r.check == check)
        .fold(None, |best: Option<&CheckReport>, r| match best {
            Some(b) if b.time > r.time => Some(b),
            _ => Some(r),
        })
}

fn checks(f: &Facts<'_>) -> Option<GateResult> {
    if f.policy.required_checks.is_empty() {
        return None;
    }
    if f.rollback {
        return Some(skipped_for_rollback(CHECKS, f));
    }
    let digest = &f.promotion.digest;
    let failing: Vec<String> = f
        .policy
        .required_checks
        .iter()
        .filter_map(|c| match latest_report(f.checks, c) {
            Some(r) if r.status == CheckStatus::Passed => None,
            Some(r) => Some(format!(
                "`{c}` (latest {} by {} at {})",
                r.status.name(),
                r.reported_by,
                show(r.time)
            )),
            None => Some(format!("`{c}`")),
        })
        .collect();
    Some(match failing.len() {
        0 => {
            let names: Vec<String> = f
                .policy
                .required_checks
                .iter()
                .map(|c| format!("`{c}`"))
                .collect();
            pass(CHECKS, format!("{} PASSED for {digest}", and_list(&names)))
        }
        1 => block(
            CHECKS,
            format!("check {} has no PASSED report for {digest}", failing[0]),
        ),
        _ => block(
            CHECKS,
            format!(
                "checks {} have no PASSED report for {digest}",
                and_list(&failing)
            ),
        ),
    })
}

/// Unlike checks and soak, a rollback is checked too: a key may have been
/// revoked (removed from `signature_keys`) since the digest first passed.
fn signature(f: &Facts<'_>) -> Option<GateResult> {
    let keys = &f.policy.signature_keys;
    if keys.is_empty() {
        return None;
    }
    let digest = &f.promotion.digest;
    let fingerprints: Vec<String> = keys.iter().map(|k| k.fingerprint.clone()).collect();
    let sign = format!(
        "sign {digest} with one of the keys signature_keys names ({}), e.g. `cosign sign --key cosign.key {}@{digest}`",
        and_list(&fingerprints),
        f.promotion.repository
    );
    Some(match f.signature {
        Some(Verdict::Verified {
            fingerprint,
            source,
        }) => pass(
            SIGNATURE,
            format!("{digest} is signed by key {fingerprint} ({source})"),
        ),
        Some(Verdict::Unsigned { looked_at }) => block(
            SIGNATURE,
            format!(
                "no signature of {digest} found (looked for {}): {sign}",
                or_list(looked_at)
            ),
        ),
        Some(Verdict::Invalid { reasons }) => block(
            SIGNATURE,
            format!(
                "no valid signature of {digest} by a configured key ({}): {sign}",
                reasons.join("; ")
            ),
        ),
        None => block(
            SIGNATURE,
            format!("the signatures of {digest} were not read for this decision; repeat the call"),
        ),
    })
}

fn soak(f: &Facts<'_>) -> Option<GateResult> {
    let min = f.policy.min_soak?;
    if f.rollback {
        return Some(skipped_for_rollback(SOAK, f));
    }
    let p = f.promotion;
    // The config refuses min_soak without requires; say something true anyway.
    let req = f
        .policy
        .requires
        .as_deref()
        .unwrap_or("the required environment");
    let g = match f.soak_since {
        None => block(
            SOAK,
            format!(
                "no APPLIED entry moved environment {req}'s tag of {} to {} (the tag was moved outside prodgate, or never), so its soak cannot be counted: promote the digest to {req} through prodgate and wait {}",
                p.repository,
                p.digest,
                show_duration(min)
            ),
        ),
        Some(since) => {
            let ready = since.plus(min);
            if f.now >= ready {
                pass(
                    SOAK,
                    format!(
                        "on {req} since {} (needs {})",
                        show(since),
                        show_duration(min)
                    ),
                )
            } else {
                block(
                    SOAK,
                    format!(
                        "{} left ({req} since {}, needs {})",
                        show_duration(f.now.until(ready)),
                        show(since),
                        show_duration(min)
                    ),
                )
            }
        }
    };
    Some(break_glass(f, g))
}

fn window(f: &Facts<'_>) -> Option<GateResult> {
    let w = f.policy.window.as_ref()?;
    let env = &f.policy.name;
    if window_open(w, f.now) {
        return Some(pass(WINDOW, format!("{env} is open ({})", describe(w))));
    }
    let mut message = format!("{env} is outside its window ({})", describe(w));
    message.push_str(&opening(f, None));
    message.push_str(&break_glass_hint(f));
    Some(break_glass(f, block(WINDOW, message)))
}

fn freeze(f: &Facts<'_>) -> Option<GateResult> {
    let freezes = &f.policy.freezes;
    if freezes.is_empty() {
        return None;
    }
    let env = &f.policy.name;
    let frozen: Vec<&Freeze> = freezes.iter().filter(|z| z.contains(f.now)).collect();
    if frozen.is_empty() {
        return Some(pass(FREEZE, format!("{env} is not frozen")));
    }
    let until: Vec<String> = frozen
        .iter()
        .map(|z| format!("until {} ({})", show(z.end), z.reason))
        .collect();
    let mut message = format!("{env} is frozen {}", and_list(&until));
    message.push_str(&opening(f, frozen.iter().map(|z| z.end).max()));
    message.push_str(&break_glass_hint(f));
    Some(break_glass(f, block(FREEZE, message)))
}

/// ` and opens at …`: when the window and freezes together next let it
/// through; nothing when that is `thaw` (the end of the freeze just named).
fn opening(f: &Facts<'_>, thaw: Option<Time>) -> String {
    let w = f.policy.window.as_ref();
    match next_opening(w, &f.policy.freezes, f.now) {
        Some(t) if Some(t) == thaw => String::new(),
        Some(t) => match w {
            Some(w) => format!(" and opens at {} ({})", show(t), show_local(w, t)),
            None => format!(" and opens at {}", show(t)),
        },
        None => format!(" and does not open within {HORIZON_DAYS} days of its last freeze"),
    }
}

/// Who can act now, for someone who cannot wait (nothing once break-glass
/// is in use).
fn break_glass_hint(f: &Facts<'_>) -> String {
    let env = &f.policy.name;
    if f.break_glass {
        String::new()
    } else if f.policy.break_glass.is_empty() {
        format!("; nobody may break glass in {env}")
    } else {
        format!(
            "; {} may override it with break-glass and a reason",
            super::policy::describe(&f.policy.break_glass)
        )
    }
}

/// The earliest time every blocking time gate (soak, window, freeze) of
/// `report` can be open at once; `None` when none blocks or one never opens
/// by time alone (a soak that cannot be counted, a window that does not
/// open within the horizon).
pub fn not_before(f: &Facts<'_>, report: &GateReport) -> Option<Time> {
    let blocks = |name: &str| report.gate(name).is_some_and(|g| !g.passed);
    if !TIME_GATES.into_iter().any(blocks) {
        return None;
    }
    let mut from = f.now;
    if blocks(SOAK) {
        let ready = f.soak_since?.plus(f.policy.min_soak?);
        from = from.max(ready);
    }
    if f.policy.window.is_some() || !f.policy.freezes.is_empty() {
        from = next_opening(f.policy.window.as_ref(), &f.policy.freezes, from)?;
    }
    Some(from)
}

/// Whether the weekly window (freezes aside) is open at `t`: the zone's
/// clock reads a time within the hours on an allowed day, where the part of
/// hours crossing midnight after it belongs to the day before. The clock's
/// reading decides, so a clock set back can briefly leave and re-enter the
/// hours.
pub fn window_open(w: &Window, t: Time) -> bool {
    open_at(w, to_timestamp(t))
}

fn open_at(w: &Window, ts: Timestamp) -> bool {
    let local = w.time_zone.time_zone().to_datetime(ts);
    let allowed = |d: civil::Weekday| w.days.is_empty() || w.days.contains(&d);
    let day = local.date().weekday();
    let time = local.time();
    match w.hours {
        None => allowed(day),
        Some(h) if !h.crosses_midnight() => allowed(day) && h.start <= time && time < h.end,
        Some(h) => (allowed(day) && h.start <= time) || (allowed(day.previous()) && time < h.end),
    }
}

/// The earliest instant at or after `now` at which the window gate passes:
/// outside every freeze and, with a window, inside it. `None` when the
/// window does not open within [`HORIZON_DAYS`] after the last freeze
/// (possible only for an instant near the end of jiff's range).
pub fn next_opening(window: Option<&Window>, freezes: &[Freeze], now: Time) -> Option<Time> {
    let thaw = |t: Time| {
        freezes
            .iter()
            .filter(|z| z.contains(t))
            .map(|z| z.end)
            .max()
    };
    let mut t = now;
    // A turn either passes the end of a freeze for good, or finds the window
    // open and returns, or finds it open inside a freeze (whose end the next
    // turn passes): at most two turns per freeze, plus one.
    for _ in 0..=2 * freezes.len() + 1 {
        if let Some(end) = thaw(t) {
            t = end;
            continue;
        }
        let Some(w) = window else { return Some(t) };
        let open = from_timestamp(next_weekly_opening(w, to_timestamp(t))?);
        if thaw(open).is_none() {
            return Some(open);
        }
        t = open;
    }
    None
}

/// The earliest instant at or after `from` at which the weekly window is
/// open. The window can only become open where the local clock reads an
/// opening hour or a midnight (the day changes), or jumps (a time zone
/// transition: forward past a skipped opening hour, or back into the
/// hours), so those instants are the only candidates.
fn next_weekly_opening(w: &Window, from: Timestamp) -> Option<Timestamp> {
    if open_at(w, from) {
        return Some(from);
    }
    let tz = w.time_zone.time_zone();
    let horizon = from
        .checked_add(SignedDuration::from_hours(24 * i64::from(HORIZON_DAYS + 1)))
        .ok()?;
    let today = tz.to_datetime(from).date();
    let mut candidates: Vec<Timestamp> = tz
        .following(from)
        .map(|tr| tr.timestamp())
        .take_while(|ts| *ts <= horizon)
        .collect();
    for k in -1..=HORIZON_DAYS {
        let Ok(day) = today.checked_add(jiff::Span::new().days(k)) else {
            continue;
        };
        candidates.extend(instants_reading(
            tz,
            day.to_datetime(civil::Time::midnight()),
        ));
        if let Some(h) = w.hours {
            candidates.extend(instants_reading(tz, day.to_datetime(h.start)));
        }
    }
    candidates
        .into_iter()
        .filter(|c| *c > from && *c <= horizon && open_at(w, *c))
        .min()
}

/// The instants at which the zone's clock reads `dt`: one, two when the
/// clock is set back over it (a fold), none when the clock skips it (a gap:
/// the jump past it is a transition, a candidate of its own).
fn instants_reading(tz: &TimeZone, dt: civil::DateTime) -> Vec<Timestamp> {
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => {
            offset.to_timestamp(dt).ok().into_iter().collect()
        }
        AmbiguousOffset::Fold { before, after } => [before, after]
            .into_iter()
            .filter_map(|o| o.to_timestamp(dt).ok())
            .collect(),
        AmbiguousOffset::Gap { .. } => Vec::new(),
    }
}

/// Outside jiff's range (years -9999..=9999) times clamp to its ends; the
/// API refuses such times, but evaluation must never be what fails.
fn to_timestamp(t: Time) -> Timestamp {
    let nanos = i32::try_from(t.nanos.min(999_999_999)).unwrap_or(0);
    Timestamp::new(t.seconds, nanos).unwrap_or(if t.seconds < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

fn from_timestamp(ts: Timestamp) -> Time {
    let (mut seconds, mut nanos) = (ts.as_second(), ts.subsec_nanosecond());
    if nanos < 0 {
        seconds -= 1;
        nanos += 1_000_000_000;
    }
    Time {
        seconds,
        nanos: u32::try_from(nanos).unwrap_or(0),
    }
}

/// `2027-01-05T00:00:00Z`: RFC 3339 in UTC, fractions only when present.
fn show(t: Time) -> String {
    t.rfc3339(Precision::Shortest)
}

/// `Tue 2027-01-05 09:00 Europe/Berlin`
fn show_local(w: &Window, t: Time) -> String {
    let z = to_timestamp(t).to_zoned(w.time_zone.time_zone().clone());
    format!("{} {}", z.strftime("%a %Y-%m-%d %H:%M"), w.time_zone.name())
}

fn describe(w: &Window) -> String {
    let days = if w.days.is_empty() {
        "every day".to_owned()
    } else {
        let names: Vec<&str> = w.days.iter().map(|d| weekday_name(*d)).collect();
        names.join(",")
    };
    let hours = w
        .hours
        .map_or_else(|| "all day".to_owned(), |h| h.to_string());
    format!("{days} {hours} {}", w.time_zone.name())
}

/// The spelling of `allowed_days`.
pub fn weekday_name(d: civil::Weekday) -> &'static str {
    match d {
        civil::Weekday::Monday => "mon",
        civil::Weekday::Tuesday => "tue",
        civil::Weekday::Wednesday => "wed",
        civil::Weekday::Thursday => "thu",
        civil::Weekday::Friday => "fri",
        civil::Weekday::Saturday => "sat",
        civil::Weekday::Sunday => "sun",
    }
}

/// `12m`, `1h 30m`: whole seconds, rounded up so that "1s left" is never
/// shown as "0s left".
fn show_duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests;
