//! `--output table`: what people read. Aligned columns for lists, a
//! `key: value` block for one promotion. Not a stable format; scripts use
//! `--output json`.

use super::time::{Precision, relative, rfc3339};
use crate::api::convert;
use crate::domain::model::State;
use crate::domain::{gates, release};
use crate::pb;
use crate::pb::Timestamp;
use std::collections::HashMap;
use std::time::SystemTime;
use unicode_width::UnicodeWidthStr;

/// Column separator.
const GAP: &str = "  ";

/// The freeze gate's name in `waiting_for` (a time gate, like soak and window).
const FREEZE: &str = "freeze";

pub fn state_label(n: i32) -> String {
    match pb::PromotionState::try_from(n) {
        Ok(s) => label(s.as_str_name(), "PROMOTION_STATE_"),
        Err(_) => n.to_string(),
    }
}

fn action_label(n: i32) -> String {
    match pb::AuditAction::try_from(n) {
        Ok(a) => label(a.as_str_name(), "AUDIT_ACTION_"),
        Err(_) => n.to_string(),
    }
}

fn label(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_owned()
}

/// Server-provided text goes to a terminal: control characters (newlines
/// that would break the columns, escape sequences that clear the screen)
/// and bidi controls (which reorder what is shown) are printed escaped,
/// visibly, as `\u{1b}`; JSON output keeps the exact text.
pub fn clean(s: &str) -> String {
    crate::telemetry::visible(s).into_owned()
}

/// `registry.example.com/team/app@sha256:…`: what `docker pull` and other
/// tools take, so it can be pasted as is.
fn reference(repository: &str, digest: &str) -> String {
    if repository.is_empty() || digest.is_empty() {
        clean(digest)
    } else {
        clean(&format!("{repository}@{digest}"))
    }
}

fn is(p: &pb::Promotion, state: pb::PromotionState) -> bool {
    p.state == state as i32
}

/// `sha256:0123456789ab`, safe for a terminal.
pub fn short_digest(d: &str) -> String {
    clean(crate::domain::names::short_digest(d))
}

/// `s` followed by spaces up to `width` terminal cells. Not `{:width$}`,
/// which counts chars: `名前` is two chars but four cells.
fn pad(s: &str, width: usize) -> String {
    let mut out = s.to_owned();
    out.push_str(&" ".repeat(width.saturating_sub(s.width())));
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

fn approvals(p: &pb::Promotion) -> String {
    format!("{}/{}", p.approvals.len(), p.required_approvals)
}

fn age(ts: Option<&Timestamp>, now: SystemTime) -> String {
    ts.map_or_else(|| "-".to_owned(), |t| relative(t, now))
}

/// `2026-11-26T14:32:00Z (3m ago)`.
fn moment(ts: &Timestamp, now: SystemTime) -> String {
    format!(
        "{} ({})",
        rfc3339(ts, Precision::Seconds),
        relative(ts, now)
    )
}

/// Left-aligned columns; the last column is not padded.
fn grid(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.width())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&pad(cell, widths[i]));
                line.push_str(GAP);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const LIST_HEADER: [&str; 8] = [
    "ID",
    "STATE",
    "REPOSITORY",
    "ENV",
    "DIGEST",
    "REQUESTED BY",
    "APPROVALS",
    "AGE",
];

/// Indent of a release's members under its row in `list`.
const MEMBER_INDENT: &str = "  ";

fn header() -> Vec<String> {
    LIST_HEADER.map(str::to_owned).to_vec()
}

fn promotion_row(p: &pb::Promotion, now: SystemTime) -> Vec<String> {
    vec![
        clean(&p.id),
        state_label(p.state),
        or_dash(clean(&p.repository)),
        or_dash(clean(&p.environment)),
        or_dash(short_digest(&p.digest)),
        or_dash(clean(&p.requested_by)),
        approvals(p),
        age(p.created_at.as_ref(), now),
    ]
}

/// Every promotion a row of its own: a release's members as `release`
/// shows them.
pub fn promotions(ps: &[pb::Promotion], now: SystemTime) -> String {
    let mut rows = vec![header()];
    rows.extend(ps.iter().map(|p| promotion_row(p, now)));
    grid(&rows)
}

/// `list`: one row per promotion, except that the members of a release
/// make one row for the release (its id, the state of the whole, its
/// environment, requester, approvals and age, how many images) with each
/// member indented beneath it (id, state, repository, short digest), in
/// the order their tags move. A release's members are grouped where the
/// first of them appears; when a filter or --limit leaves some out, the
/// row is of those listed (the count and the state are theirs; `prodgate
/// get-release ID` shows the whole).
pub fn listing(ps: &[pb::Promotion], now: SystemTime) -> String {
    let mut releases: HashMap<&str, Vec<&pb::Promotion>> = HashMap::new();
    for p in ps.iter().filter(|p| !p.release_id.is_empty()) {
        releases.entry(&p.release_id).or_default().push(p);
    }
    let mut rows = vec![header()];
    for p in ps {
        if p.release_id.is_empty() {
            rows.push(promotion_row(p, now));
            continue;
        }
        // The first of its members seen takes the whole group; the rest
        // are already shown.
        let Some(mut members) = releases.remove(p.release_id.as_str()) else {
            continue;
        };
        members.sort_by_key(|m| (m.id.parse::<u64>().ok(), m.id.as_str()));
        rows.push(release_row(&p.release_id, &members, now));
        rows.extend(members.iter().map(|m| {
            vec![
                format!("{MEMBER_INDENT}{}", clean(&m.id)),
                state_label(m.state),
                or_dash(clean(&m.repository)),
                String::new(),
                or_dash(short_digest(&m.digest)),
            ]
        }));
    }
    grid(&rows)
}

/// A release's row in `list`, from the `members` listed (at least one).
fn release_row(id: &str, members: &[&pb::Promotion], now: SystemTime) -> Vec<String> {
    let Some(first) = members.first() else {
        return vec![clean(id)];
    };
    let images = match members.len() {
        1 => "release: 1 image".to_owned(),
        n => format!("release: {n} images"),
    };
    vec![
        clean(id),
        whole_state(members),
        images,
        or_dash(clean(&first.environment)),
        String::new(),
        or_dash(clean(&first.requested_by)),
        // Every member carries the release's approvals.
        approvals(first),
        age(first.created_at.as_ref(), now),
    ]
}

/// The state of the whole as the server derives Release.state
/// ([`crate::domain::release::state_of`]), from the members listed; a
/// state this client does not know is shown as it came.
fn whole_state(members: &[&pb::Promotion]) -> String {
    let known = |m: &&pb::Promotion| {
        State::ALL
            .into_iter()
            .find(|s| convert::state(*s) as i32 == m.state)
    };
    match members.iter().map(known).collect::<Option<Vec<State>>>() {
        Some(states) => state_label(convert::state(release::state_of(states)) as i32),
        None => members
            .iter()
            .find(|m| known(m).is_none())
            .map_or_else(String::new, |m| state_label(m.state)),
    }
}

/// A release: who asked for what and its state, then its members as
/// `promotions` lists them, in the order their tags move.
pub fn release(r: &pb::Release, now: SystemTime) -> String {
    let mut rows = vec![
        ("release", clean(&r.id)),
        ("state", state_label(r.state)),
        ("environment", clean(&r.environment)),
        ("requested by", clean(&r.requested_by)),
        ("reason", clean(&r.reason)),
    ];
    // Every member carries the release's approvals and the count it needs.
    let count = r.members.first().map_or_else(
        || r.approvals.len().to_string(),
        |m| format!("{}/{}", r.approvals.len(), m.required_approvals),
    );
    rows.extend(approval_rows(&r.approvals, count, now));
    if !r.failure_message.is_empty() {
        rows.push(("failure", clean(&r.failure_message)));
    }
    let mut out = key_values(&rows);
    out.push_str(&promotions(&r.members, now));
    out
}

/// `approvals: 1/2` (`count`), then each approver with their groups, when
/// and their comment, one line each.
fn approval_rows(
    given: &[pb::Approval],
    count: String,
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let mut rows = vec![("approvals", count)];
    let approvers: Vec<String> = given.iter().map(approver).collect();
    let approver_width = approvers.iter().map(|a| a.width()).max().unwrap_or(0);
    for (a, who) in given.iter().zip(&approvers) {
        let mut line = format!("  {}", pad(who, approver_width));
        if let Some(t) = &a.time {
            line.push_str(&format!("  {}", moment(t, now)));
        }
        if !a.comment.is_empty() {
            line.push_str(&format!("  {:?}", clean(&a.comment)));
        }
        rows.push(("", line));
    }
    rows
}

/// The audit log shows absolute times: it is read against other logs.
pub fn audit_entries(es: &[pb::AuditEntry]) -> String {
    let header = [
        "SEQ",
        "TIME",
        "ACTION",
        "ACTOR",
        "PROMOTION",
        "REPOSITORY",
        "ENV",
        "DIGEST",
        "COMMENT",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    rows.extend(es.iter().map(|e| {
        vec![
            e.sequence.to_string(),
            e.time
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| rfc3339(t, Precision::Seconds)),
            action_label(e.action),
            or_dash(clean(&e.actor)),
            or_dash(clean(&e.promotion_id)),
            or_dash(clean(&e.repository)),
            or_dash(clean(&e.environment)),
            or_dash(short_digest(&e.digest)),
            comment_and_attributes(e),
        ]
    }));
    grid(&rows)
}

/// The comment, then the entry's attributes as `key=value` in key order
/// (`policy=sha256:…`, `check=e2e status=passed`), so the table shows
/// every fact the hash covers.
fn comment_and_attributes(e: &pb::AuditEntry) -> String {
    let mut keys: Vec<&String> = e.attributes.keys().collect();
    keys.sort();
    let mut parts: Vec<String> = Vec::new();
    if !e.comment.is_empty() {
        parts.push(clean(&e.comment));
    }
    parts.extend(
        keys.into_iter()
            .map(|k| format!("{}={}", clean(k), clean(&e.attributes[k]))),
    );
    parts.join(" ")
}

/// Every field of one promotion, for `get` and the answers of
/// request/approve/reject/cancel. Full digests here: this is what gets
/// pasted into incident notes.
pub fn promotion(p: &pb::Promotion, now: SystemTime) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", clean(&p.id)),
        ("state", state_label(p.state)),
        ("repository", clean(&p.repository)),
        ("environment", clean(&p.environment)),
        ("target tag", clean(&p.target_tag)),
        ("source", clean(&p.source)),
        ("digest", reference(&p.repository, &p.digest)),
    ];
    if !p.previous_digest.is_empty() {
        rows.push((
            "previous digest",
            reference(&p.repository, &p.previous_digest),
        ));
    }
    if !p.superseded_by.is_empty() {
        rows.push(("superseded by", clean(&p.superseded_by)));
    }
    if !p.project.is_empty() {
        rows.push(("project", clean(&p.project)));
    }
    if p.rollback {
        rows.push((
            "rollback",
            "yes: back to a digest this tag carried before".into(),
        ));
    }
    if !p.release_id.is_empty() {
        let id = clean(&p.release_id);
        rows.push((
            "release",
            format!("{id} (with its other members: prodgate get-release {id})"),
        ));
    }
    rows.push(("requested by", clean(&p.requested_by)));
    rows.push(("reason", clean(&p.reason)));
    rows.extend(approval_rows(&p.approvals, approvals(p), now));
    if !p.waiting_for.is_empty() {
        let names: Vec<String> = p.waiting_for.iter().map(|g| clean(g)).collect();
        rows.push(("waiting for", names.join(", ")));
    }
    if let Some(t) = &p.not_before {
        rows.push(("not before", moment(t, now)));
    }
    // Only a pending promotion can still expire; an ended one never will.
    let expires = if is(p, pb::PromotionState::PendingApproval) {
        &p.expires_at
    } else {
        &None
    };
    let times = [
        ("created", &p.created_at),
        ("updated", &p.updated_at),
        ("expires", expires),
        ("promoted", &p.promoted_at),
    ];
    for (key, t) in times {
        if let Some(t) = t {
            rows.push((key, moment(t, now)));
        }
    }
    if !p.policy_digest.is_empty() {
        rows.push(("policy", clean(&p.policy_digest)));
    }
    if p.break_glass {
        rows.push((
            "break-glass",
            "used (its audit entry says what it overrode)".into(),
        ));
    }
    if !p.failure_message.is_empty() {
        rows.push(("failure", clean(&p.failure_message)));
    }
    if let Some(e) = apply_error(p) {
        rows.push(("apply error", e));
    }
    key_values(&rows)
}

/// `carol (security, sre)`: the approver and the groups they approved with.
fn approver(a: &pb::Approval) -> String {
    let name = clean(&a.approver);
    if a.groups.is_empty() {
        return name;
    }
    let groups: Vec<String> = a.groups.iter().map(|g| clean(g)).collect();
    format!("{name} ({})", groups.join(", "))
}

/// `soak (until 2026-11-26T15:32:00Z), window (opens …), checks`: the gates
/// a WAITING promotion waits for, the time gates with `not_before` (the
/// earliest moment they can all be open).
fn waiting_for(p: &pb::Promotion) -> String {
    let at = p
        .not_before
        .as_ref()
        .map(|t| rfc3339(t, Precision::Seconds));
    let gates: Vec<String> = p
        .waiting_for
        .iter()
        .map(|g| match (g.as_str(), &at) {
            (gates::SOAK | FREEZE, Some(t)) => format!("{} (until {t})", clean(g)),
            (gates::WINDOW, Some(t)) => format!("{} (opens {t})", clean(g)),
            _ => clean(g),
        })
        .collect();
    gates.join(", ")
}

/// The answer of `approve` when the approval was recorded and another gate
/// still holds the promotion (WAITING): which, and until when.
pub fn approval_waiting(p: &pb::Promotion) -> String {
    if p.waiting_for.is_empty() {
        return "recorded; waiting for its gates to pass\n".to_owned();
    }
    format!("recorded; waiting for: {}\n", waiting_for(p))
}

/// While APPROVED with a registry that keeps failing: why the tag has not
/// moved yet, and how often it was tried (the worker keeps trying).
fn apply_error(p: &pb::Promotion) -> Option<String> {
    if !is(p, pb::PromotionState::Approved) || p.last_apply_error.is_empty() {
        return None;
    }
    Some(format!(
        "{} (attempt {}; retrying)",
        clean(&p.last_apply_error),
        p.apply_attempts
    ))
}

/// `promotion 7: PROMOTED (approvals 1/1)`: one line per change under
/// --wait, the last one with the final state and what it means.
pub fn progress(p: &pb::Promotion) -> String {
    let mut line = format!("promotion {}: {}", clean(&p.id), state_label(p.state),);
    if !p.superseded_by.is_empty() {
        line.push_str(&format!(" by promotion {}", clean(&p.superseded_by)));
    }
    line.push_str(&format!(" (approvals {})", approvals(p)));
    if is(p, pb::PromotionState::Promoted) && !p.digest.is_empty() {
        line.push_str(&format!(
            ": {}:{} is {}",
            clean(&p.repository),
            clean(&p.target_tag),
            reference(&p.repository, &p.digest)
        ));
    }
    if is(p, pb::PromotionState::Waiting) && !p.waiting_for.is_empty() {
        line.push_str(&format!(": waiting for {}", waiting_for(p)));
    }
    if !p.failure_message.is_empty() {
        line.push_str(&format!(": {}", clean(&p.failure_message)));
    }
    if let Some(e) = apply_error(p) {
        line.push_str(&format!(": tag move failed: {e}"));
    }
    line.push('\n');
    line
}

pub fn deployed(d: &pb::Deployed, repository: &str, now: SystemTime) -> String {
    let mut rows = vec![
        ("digest", reference(repository, &d.digest)),
        ("promotion", clean(&d.promotion_id)),
    ];
    if !d.release_id.is_empty() {
        rows.push(("release", clean(&d.release_id)));
    }
    if let Some(t) = &d.since {
        rows.push(("since", moment(t, now)));
    }
    if d.drifted {
        rows.push((
            "drifted",
            "yes: the registry's tag carries something else (see history)".to_owned(),
        ));
    }
    key_values(&rows)
}

/// The wording `verify-log --data-dir` has always printed.
pub fn verification(v: &pb::VerifyAuditLogResponse) -> String {
    if v.ok {
        format!(
            "ok: {} entries, head {}\n",
            v.entries_checked,
            clean(&v.head_hash)
        )
    } else {
        format!(
            "BROKEN at sequence {}: {}\n",
            v.first_bad_sequence,
            clean(&v.message)
        )
    }
}

/// One line per check: name, status, who reported it when, its details.
pub fn checks(checks: &[pb::CheckResult]) -> String {
    if checks.is_empty() {
        return "no check reports for this digest\n".to_owned();
    }
    let mut out = format!(
        "{:<16} {:<7} {:<16} {:<20} DETAILS\n",
        "CHECK", "STATUS", "REPORTED BY", "TIME"
    );
    for r in checks {
        let status = match pb::CheckStatus::try_from(r.status) {
            Ok(s) => label(s.as_str_name(), "CHECK_STATUS_"),
            Err(_) => r.status.to_string(),
        };
        let time = r
            .time
            .as_ref()
            .map_or_else(|| "-".to_owned(), |t| rfc3339(t, Precision::Seconds));
        let details = if r.details_url.is_empty() {
            clean(&r.comment)
        } else {
            clean(&r.details_url)
        };
        out.push_str(&format!(
            "{} {:<7} {} {:<20} {}\n",
            pad(&clean(&r.check), 16),
            status,
            pad(&clean(&r.reported_by), 16),
            time,
            details
        ));
    }
    out
}

/// The size and root, then the signed note as it is (a blank line before
/// its signature lines), or why there is none.
pub fn checkpoint(c: &pb::Checkpoint) -> String {
    let mut out = format!("size {}\nroot {}\n", c.size, clean(&c.root_hash));
    if c.note.is_empty() {
        out.push_str("(unsigned: the server has no [checkpoint] key)\n");
    } else {
        out.push('\n');
        for line in c.note.lines() {
            out.push_str(&clean(line));
            out.push('\n');
        }
    }
    out
}

/// The digest, when it was first recorded, and the policy per project and
/// environment (the canonical document, which the digest covers, is in
/// `-o json`).
pub fn policy(p: &pb::Policy) -> String {
    super::policy::summary(p)
}

/// One line per gate, then whether only approvals are missing.
pub fn gate_report(r: &pb::GateReport) -> String {
    let mut out = String::new();
    for g in &r.gates {
        let verdict = if g.passed { "pass " } else { "BLOCK" };
        out.push_str(&format!(
            "{verdict} {} {}\n",
            pad(&clean(&g.name), 15),
            clean(&g.message)
        ));
    }
    out.push_str(if r.ready {
        "ready: only approvals (if any) are missing\n"
    } else {
        "not ready: a gate other than approvals blocks\n"
    });
    out
}

fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in rows {
        let key = if key.is_empty() {
            String::new()
        } else {
            format!("{key}:")
        };
        let line = format!("{key:width$} {value}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn deployed_says_drifted_only_when_it_is() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut d = pb::Deployed {
            digest: format!("sha256:{}", "a".repeat(64)),
            promotion_id: "7".into(),
            since: at(820),
            drifted: false,
            release_id: String::new(),
        };
        assert!(!deployed(&d, "r/app", now).contains("drifted"));
        d.drifted = true;
        let text = deployed(&d, "r/app", now);
        assert!(
            text.lines()
                .any(|l| l.starts_with("drifted:") && l.ends_with("(see history)")),
            "{text}"
        );
    }

    /// A promotion as `list` gets it, 3m old at 1000 s; `release` empty
    /// for none.
    fn listed(id: &str, release: &str, state: pb::PromotionState, repo: &str) -> pb::Promotion {
        pb::Promotion {
            id: id.into(),
            release_id: release.into(),
            repository: repo.into(),
            environment: "production".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            state: state as i32,
            requested_by: "alice".into(),
            required_approvals: 1,
            created_at: at(820),
            ..Default::default()
        }
    }

    #[test]
    fn list_columns_line_up() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let p = |id: &str, state, repo: &str| listed(id, "", state, repo);
        let text = promotions(
            &[
                p("7", pb::PromotionState::PendingApproval, "r/app"),
                p("12", pb::PromotionState::Promoted, "r/a\nb\u{1b}[2J"),
            ],
            now,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ID  STATE             REPOSITORY       ENV"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("7   PENDING_APPROVAL  r/app"),
            "{text}"
        );
        assert!(
            lines[2].contains(r"PROMOTED          r/a\nb\u{1b}[2J  production"),
            "{text}"
        );
        assert!(lines[2].contains("sha256:aaaaaaaaaaaa  alice"), "{text}");
        assert!(lines[2].ends_with("0/1        3m ago"), "{text}");
    }

    #[test]
    fn a_release_is_one_row_with_its_members_beneath() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let p = listed;
        use pb::PromotionState::{Approved, PendingApproval, Promoted, Waiting};
        let page = [
            p("4", "", Promoted, "r/app"),
            // Newest first: the members come in reverse; they are shown in
            // the order their tags move.
            p("7", "5", Approved, "r/shop/web"),
            p("6", "5", Waiting, "r/shop/worker"),
            p("5", "5", Approved, "r/shop/api"),
            p("8", "", PendingApproval, "r/app"),
        ];
        let text = listing(&page, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        let at = |col: &str| lines[0].find(col).expect("column");
        assert!(lines[1].starts_with("4    PROMOTED  "), "{text}");
        // The release: the least advanced member's state, how many images.
        let release = lines[2];
        assert!(release.starts_with("5    WAITING  "), "{text}");
        assert_eq!(release.find("release: 3 images"), Some(at("REPOSITORY")));
        assert_eq!(release.find("production"), Some(at("ENV")));
        assert_eq!(release.find("alice"), Some(at("REQUESTED BY")));
        assert!(release.ends_with("0/1        3m ago"), "{text}");
        assert!(!release.contains("sha256"), "{text}");
        for (line, (id, state, repo)) in lines[3..6].iter().zip([
            ("5", "APPROVED", "r/shop/api"),
            ("6", "WAITING", "r/shop/worker"),
            ("7", "APPROVED", "r/shop/web"),
        ]) {
            assert!(line.starts_with(&format!("  {id}  ")), "{text}");
            assert_eq!(line.find(state), Some(at("STATE")), "{text}");
            assert_eq!(line.find(repo), Some(at("REPOSITORY")), "{text}");
            assert_eq!(
                line.find("sha256:aaaaaaaaaaaa"),
                Some(at("DIGEST")),
                "{text}"
            );
            assert!(line.ends_with("sha256:aaaaaaaaaaaa"), "{text}");
        }
        assert!(lines[6].starts_with("8    PENDING_APPROVAL"), "{text}");

        // A filter that left members out still groups what it has; a
        // member apart from the others joins them.
        let text = listing(
            &[
                p("6", "5", Promoted, "r/shop/worker"),
                p("9", "", Promoted, "r/app"),
                p("7", "5", Promoted, "r/shop/web"),
            ],
            now,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[1].starts_with("5    PROMOTED  release: 2 images"),
            "{text}"
        );
        assert!(lines[2].starts_with("  6  PROMOTED"), "{text}");
        assert!(lines[3].starts_with("  7  PROMOTED"), "{text}");
        assert!(lines[4].starts_with("9    PROMOTED"), "{text}");
        // A state this client does not know is shown as its number; a
        // release id a terminal would act on is escaped.
        let text = listing(
            &[
                p("5", "5\u{1b}", Promoted, "r/a"),
                p("6", "5\u{1b}", Promoted, "r/b"),
            ],
            now,
        );
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with(r"5\u{1b}  PROMOTED  release: 2 images")),
            "{text}"
        );
        let mut odd = p("5", "5", Promoted, "r/a");
        odd.state = 42;
        let text = listing(&[odd, p("6", "5", Promoted, "r/b")], now);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("5    42  ")),
            "{text}"
        );
    }

    #[test]
    fn a_release_shows_its_approvals_once_then_its_members() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_703_520 + 180);
        let approval = pb::Approval {
            approver: "bob".into(),
            comment: "lgtm".into(),
            time: at(1_795_703_520),
            groups: vec!["release-managers".into()],
        };
        let approved = pb::PromotionState::Approved;
        let mut members = vec![
            listed("5", "5", approved, "r/shop/api"),
            listed("6", "5", approved, "r/shop/web"),
        ];
        for m in &mut members {
            m.approvals = vec![approval.clone()];
        }
        let r = pb::Release {
            id: "5".into(),
            environment: "production".into(),
            state: approved as i32,
            members,
            requested_by: "alice".into(),
            reason: "shop 2.0".into(),
            approvals: vec![approval],
            ..Default::default()
        };
        let text = release(&r, now);
        let head = format!(
            "release:      5\nstate:        APPROVED\nenvironment:  production\n\
             requested by: alice\nreason:       shop 2.0\napprovals:    1/1\n\
             {}bob (release-managers)  2026-11-26T14:32:00Z (3m ago)  \"lgtm\"\nID  STATE ",
            " ".repeat(16)
        );
        assert!(text.starts_with(&head), "{text}");
        assert_eq!(text.matches("bob").count(), 1, "{text}");
        assert!(
            text.lines()
                .nth(9)
                .is_some_and(|l| l.starts_with("6   APPROVED  r/shop/web")),
            "{text}"
        );
    }

    #[test]
    fn wide_characters_take_two_columns() {
        let row = |a: &str, b: &str| vec![a.to_owned(), b.to_owned()];
        let text = grid(&[
            row("NAME", "STATE"),
            row("名前", "PROMOTED"),
            row("r/app", "FAILED"),
        ]);
        assert_eq!(text, "NAME   STATE\n名前   PROMOTED\nr/app  FAILED\n");
    }

    #[test]
    fn one_promotion_is_a_key_value_block() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_703_520 + 180);
        let p = pb::Promotion {
            id: "7".into(),
            state: pb::PromotionState::Promoted as i32,
            approvals: vec![pb::Approval {
                approver: "bob".into(),
                comment: "lgtm".into(),
                time: at(1_795_703_520),
                groups: Vec::new(),
            }],
            required_approvals: 1,
            ..Default::default()
        };
        let text = promotion(&p, now);
        assert!(
            text.starts_with("id:           7\nstate:        PROMOTED\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "approvals:    1/1\n                bob  2026-11-26T14:32:00Z (3m ago)  \"lgtm\"\n"
            ),
            "{text}"
        );
        assert_eq!(progress(&p), "promotion 7: PROMOTED (approvals 1/1)\n");
    }

    fn sample(state: pb::PromotionState) -> pb::Promotion {
        pb::Promotion {
            id: "7".into(),
            repository: "r.example/team/app".into(),
            environment: "production".into(),
            target_tag: "production".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            previous_digest: format!("sha256:{}", "b".repeat(64)),
            state: state as i32,
            required_approvals: 1,
            created_at: at(1_795_703_520),
            expires_at: at(1_795_703_520 + 3600),
            ..Default::default()
        }
    }

    #[test]
    fn digests_are_references_and_expiry_shows_only_while_pending() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_703_520 + 180);
        let pending = promotion(&sample(pb::PromotionState::PendingApproval), now);
        let digest = format!(
            "digest:          r.example/team/app@sha256:{}\n",
            "a".repeat(64)
        );
        assert!(pending.contains(&digest), "{pending}");
        let previous = format!(
            "previous digest: r.example/team/app@sha256:{}\n",
            "b".repeat(64)
        );
        assert!(pending.contains(&previous), "{pending}");
        assert!(
            pending.contains("expires:         2026-11-26T15:32:00Z (in 57m)\n"),
            "{pending}"
        );
        for ended in [
            pb::PromotionState::Promoted,
            pb::PromotionState::Rejected,
            pb::PromotionState::Cancelled,
            pb::PromotionState::Expired,
            pb::PromotionState::Failed,
            pb::PromotionState::Superseded,
            pb::PromotionState::Approved,
        ] {
            let text = promotion(&sample(ended), now);
            assert!(!text.contains("expires"), "{ended:?}: {text}");
        }
    }

    #[test]
    fn superseded_and_failing_apply_are_shown() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_703_520 + 180);
        let mut p = sample(pb::PromotionState::Superseded);
        p.superseded_by = "9".into();
        let text = promotion(&p, now);
        assert!(text.contains("state:           SUPERSEDED\n"), "{text}");
        assert!(text.contains("superseded by:   9\n"), "{text}");
        assert_eq!(
            progress(&p),
            "promotion 7: SUPERSEDED by promotion 9 (approvals 0/1)\n"
        );

        let mut p = sample(pb::PromotionState::Approved);
        p.last_apply_error = "registry r is unavailable: HTTP 503\u{1b}[2J".into();
        p.apply_attempts = 4;
        let text = promotion(&p, now);
        assert!(
            text.contains(
                r"apply error:     registry r is unavailable: HTTP 503\u{1b}[2J (attempt 4; retrying)"
            ),
            "{text}"
        );
        assert!(
            progress(&p).contains(": tag move failed: registry r"),
            "{}",
            progress(&p)
        );
        // Once the tag moved, a stale error is not shown.
        p.state = pb::PromotionState::Promoted as i32;
        assert!(!promotion(&p, now).contains("apply error"));
        assert_eq!(
            progress(&p),
            format!(
                "promotion 7: PROMOTED (approvals 0/1): r.example/team/app:production is \
                 r.example/team/app@sha256:{}\n",
                "a".repeat(64)
            )
        );
    }

    fn waiting() -> pb::Promotion {
        let mut p = sample(pb::PromotionState::Waiting);
        p.required_approvals = 2;
        p.approvals = vec![
            pb::Approval {
                approver: "bob".into(),
                time: at(1_795_703_520),
                groups: vec!["release-managers".into()],
                ..Default::default()
            },
            pb::Approval {
                approver: "carol".into(),
                comment: "ok".into(),
                time: at(1_795_703_520 + 60),
                groups: vec!["security".into(), "sre".into()],
            },
        ];
        p.waiting_for = vec!["soak".into(), "window".into(), "checks".into()];
        p.not_before = at(1_795_703_520 + 3600);
        p
    }

    #[test]
    fn a_waiting_promotion_says_what_it_waits_for_and_until_when() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_703_520 + 180);
        let p = waiting();
        let text = promotion(&p, now);
        assert!(text.contains("state:           WAITING\n"), "{text}");
        let indent = " ".repeat(19);
        assert!(
            text.contains(&format!(
                "approvals:       2/2\n\
                 {indent}bob (release-managers)  2026-11-26T14:32:00Z (3m ago)\n\
                 {indent}carol (security, sre)   2026-11-26T14:33:00Z (2m ago)  \"ok\"\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("waiting for:     soak, window, checks\n"),
            "{text}"
        );
        assert!(
            text.contains("not before:      2026-11-26T15:32:00Z (in 57m)\n"),
            "{text}"
        );
        // Not pending any more: its approval deadline no longer applies.
        assert!(!text.contains("expires"), "{text}");
        let until =
            "soak (until 2026-11-26T15:32:00Z), window (opens 2026-11-26T15:32:00Z), checks";
        assert_eq!(
            approval_waiting(&p),
            format!("recorded; waiting for: {until}\n")
        );
        assert_eq!(
            progress(&p),
            format!("promotion 7: WAITING (approvals 2/2): waiting for {until}\n")
        );
        let row = promotions(std::slice::from_ref(&p), now);
        assert!(
            row.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("7   WAITING  ")),
            "{row}"
        );

        // Only checks or a signature missing: no time to show.
        let mut p = waiting();
        p.waiting_for = vec!["signature".into()];
        p.not_before = None;
        let text = promotion(&p, now);
        assert!(text.contains("waiting for:     signature\n"), "{text}");
        assert!(!text.contains("not before"), "{text}");
        assert_eq!(approval_waiting(&p), "recorded; waiting for: signature\n");
        // A gate name from the server is shown escaped.
        p.waiting_for = vec!["fr\u{1b}[2Jeeze".into()];
        assert_eq!(
            approval_waiting(&p),
            "recorded; waiting for: fr\\u{1b}[2Jeeze\n"
        );
        // Without groups an approver is just the name.
        let mut p = waiting();
        p.state = pb::PromotionState::Approved as i32;
        p.waiting_for.clear();
        p.not_before = None;
        p.approvals[0].groups.clear();
        let text = promotion(&p, now);
        let bob = format!(
            "\n{}bob{}2026-11-26T14:32:00Z",
            " ".repeat(19),
            " ".repeat(20)
        );
        assert!(text.contains(&bob), "{text}");
        assert!(!text.contains("waiting for"), "{text}");
        assert_eq!(progress(&p), "promotion 7: APPROVED (approvals 2/2)\n");
    }
}
