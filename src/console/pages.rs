//! The console's pages, as maud templates: compiled into the binary, and
//! every value spliced in is HTML-escaped by construction (`(value)`), so
//! reasons, comments and anything a registry wrote show as text. No inline
//! script or style: the CSP allows only `/static/console.{js,css}`.

use super::image::Image;
use crate::config::reading::{Change, entry, render};
use crate::domain::audit::AuditEntry;
use crate::domain::drift::TagRecord;
use crate::domain::gates::GateReport;
use crate::domain::model::{
    Approval, CheckReport, CheckStatus, Precision, Promotion, PromotionId, State, Time,
};
use crate::domain::names::short_digest;
use crate::domain::release::Release;
use crate::store::StoredPolicy;
use maud::{DOCTYPE, Markup, html};
use serde_json::{Map, Value};

/// What every signed-in page knows about the reader.
pub struct Reader<'a> {
    pub name: &'a str,
    pub groups: &'a [String],
    pub csrf: &'a str,
}

fn time(t: Time) -> String {
    t.rfc3339(Precision::Seconds)
}

fn state_class(s: State) -> &'static str {
    match s {
        State::Promoted => "ok",
        State::PendingApproval | State::Waiting | State::Approved => "open",
        _ => "ended",
    }
}

fn layout(title: &str, reader: Option<&Reader<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · prodgate" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "prodgate" }
                    @if let Some(r) = reader {
                        nav {
                            a href="/" { "Awaiting" }
                            a href="/history" { "History" }
                            a href="/deployed" { "Deployed" }
                            a href="/policy" { "Policy" }
                        }
                        span.who {
                            (r.name)
                            @if !r.groups.is_empty() { " (" (r.groups.join(", ")) ")" }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(r.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in page: the identity provider's button when `[console]
/// identity` is set (`issuer` names it), the token form when `token_login`
/// is on.
pub fn login(token_login: bool, issuer: Option<&str>, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if let Some(issuer) = issuer {
                // A link, not a form: the CSP's `form-action 'self'` would
                // stop a form's redirect on to the provider.
                p { a.button #oidc href="/auth/login" { "Sign in with " (issuer) } }
            }
            @if token_login {
                form method="post" action="/login" {
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="off" required;
                    button type="submit" { "Sign in" }
                }
                p.hint { "For development: the token of a [[principal]] in the server's config." }
            }
            @if issuer.is_none() && !token_login {
                p { "No sign-in method is configured: set [console] token_login or identity." }
            }
        },
    )
}

/// One row of a list on `/`: a promotion, or a release (its members
/// shown as one row).
#[derive(Debug, Clone)]
pub enum Row {
    Promotion(Box<Promotion>),
    Release(Release),
}

impl Row {
    pub fn requested_by(&self) -> &str {
        match self {
            Row::Promotion(p) => &p.requested_by,
            Row::Release(r) => r.requested_by(),
        }
    }
}

fn rows(rows: &[Row]) -> Markup {
    html! {
        table.promotions {
            thead { tr { th { "ID" } th { "State" } th { "Repository" } th { "Environment" } th { "Requested by" } th { "Reason" } th { "Created" } } }
            tbody {
                @for row in rows {
                    @match row {
                        Row::Promotion(p) => tr {
                            td { a href={ "/promotions/" (p.id) } { (p.id) } }
                            td { (state_badge(p.state)) }
                            td { (p.repository) }
                            td { (p.environment) }
                            td { (p.requested_by) }
                            td.reason { (p.reason) }
                            td { (moment(p.created_at)) }
                        },
                        Row::Release(r) => tr.release {
                            td { a href={ "/releases/" (r.id) } { "release " (r.id) } }
                            td { (state_badge(r.state())) }
                            td.images { (r.members.len()) " images" }
                            td { (r.environment()) }
                            td { (r.requested_by()) }
                            td.reason { (r.reason()) }
                            td { (moment(r.created_at())) }
                        },
                    }
                }
            }
        }
    }
}

fn state_badge(s: State) -> Markup {
    html! { span class={ "state " (state_class(s)) } { (s.label()) } }
}

fn moment(t: Time) -> Markup {
    html! { time datetime=(time(t)) { (time(t)) } }
}

/// `/`: what awaits the reader, their recent requests, the latest.
pub fn index(reader: &Reader<'_>, awaiting: &[Row], mine: &[Row], latest: &[Row]) -> Markup {
    layout(
        "Awaiting",
        Some(reader),
        html! {
            section #awaiting {
                h1 { "Awaiting your approval" }
                @if awaiting.is_empty() { p.empty { "Nothing awaits you." } } @else { (rows(awaiting)) }
            }
            section #mine {
                h2 { "Your recent requests" }
                @if mine.is_empty() { p.empty { "None." } } @else { (rows(mine)) }
            }
            section #latest {
                h2 { "Latest promotions" }
                @if latest.is_empty() { p.empty { "None yet." } } @else { (rows(latest)) }
            }
        },
    )
}

/// Where a block is shown: alone on a promotion's page (its elements
/// carry ids), or as one member's on a release's page (classes only, so
/// no id repeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Page,
    Member,
}

impl Scope {
    fn id(self, name: &str) -> Option<&str> {
        (self == Scope::Page).then_some(name)
    }
}

/// What the environment's tag carries now, by prodgate's record.
pub enum Carried {
    /// No APPLIED entry: prodgate never moved this tag.
    Nothing,
    /// The record could not be read.
    Unknown(String),
    Digest {
        since: Time,
        image: Box<Result<Image, String>>,
    },
}

/// "What changes": the digest the environment carries now beside the
/// candidate, each described from its manifest and config.
pub struct WhatChanges {
    pub now: Carried,
    pub candidate: Result<Image, String>,
}

/// `1.2 MiB (1258291 bytes)`.
fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    // Precision is lost only above 2^53 bytes, far past any image.
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({n} bytes)")
}

fn image_facts(image: &Result<Image, String>) -> Markup {
    html! {
        @match image {
            Err(why) => p.error.unreadable { "could not read: " (why) }
            Ok(i) => dl.facts {
                dt { "Digest" } dd.digest { (i.digest) }
                dt { "Created" } dd.created { (i.created.as_deref().unwrap_or("-")) }
                dt { "Version" } dd.version { (i.version.as_deref().unwrap_or("-")) }
                dt { "Revision" } dd.revision {
                    @match (i.revision.as_deref(), i.revision_link()) {
                        (Some(r), Some(link)) => a href=(link) rel="noopener noreferrer" { (r) },
                        (Some(r), None) => (r),
                        (None, Some(link)) => a href=(link) rel="noopener noreferrer" { (link) },
                        (None, None) => "-",
                    }
                }
                dt { "Source" } dd.source { (i.source.as_deref().unwrap_or("-")) }
                dt { "Size" } dd.size {
                    @match i.size { Some(n) => (size(n)), None => "-" }
                    @if let Some(p) = &i.described { " (" (p.to_string()) ")" }
                }
                @if !i.platforms.is_empty() {
                    dt { "Platforms" } dd.platforms {
                        (i.platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                    }
                }
            }
        }
    }
}

fn what_changes(environment: &str, w: &WhatChanges, scope: Scope) -> Markup {
    html! {
        section.what-changes id=[scope.id("changes")] {
            h2 { "What changes" }
            div.changes {
                div.now id=[scope.id("now")] {
                    h3 { "Now in " (environment) }
                    @match &w.now {
                        Carried::Nothing => p.empty { "nothing yet" },
                        Carried::Unknown(why) => p.error.unreadable { "could not read: " (why) },
                        Carried::Digest { since, image } => {
                            p.since { "since " (moment(*since)) }
                            (image_facts(image))
                        }
                    }
                }
                div.candidate id=[scope.id("candidate")] {
                    h3 { "Candidate" }
                    (image_facts(&w.candidate))
                }
            }
        }
    }
}

/// What a promotion page shows of one promotion beside its record, read
/// for it (a release's page reads it for each member).
pub struct MemberFacts {
    /// `None` once it is finished (or the gates could not be evaluated).
    pub gates: Option<GateReport>,
    pub checks: Result<Vec<CheckReport>, String>,
    pub changes: WhatChanges,
}

/// What the reader may do on a promotion page.
pub struct Actions {
    /// Approve and Reject (open, and the reader may approve).
    pub decide: bool,
    /// Cancel (open, and the reader requested it or may approve).
    pub cancel: bool,
    /// The policy's break_glass names the reader.
    pub break_glass: bool,
}

/// Everything a promotion page shows.
pub struct PromotionView<'a> {
    pub promotion: &'a Promotion,
    pub facts: &'a MemberFacts,
    pub entries: &'a [AuditEntry],
    /// The current checkpoint's size: entries up to it are included.
    pub checkpoint_size: u64,
    pub actions: &'a Actions,
    /// The release it is a member of: its id and how many images it has.
    pub release: Option<(PromotionId, usize)>,
    pub error: Option<&'a str>,
}

/// `/promotions/{id}`.
pub fn promotion(reader: &Reader<'_>, view: &PromotionView<'_>) -> Markup {
    let PromotionView {
        promotion: p,
        facts,
        entries,
        checkpoint_size,
        actions,
        release,
        error,
    } = *view;
    let title = format!("Promotion {}", p.id);
    let note = release.map(|(id, images)| {
        html! {
            p.hint #decides-release {
                "These buttons decide all " (images) " images of "
                a href={ "/releases/" (id) } { "release " (id) } " together."
            }
        }
    });
    layout(
        &title,
        Some(reader),
        html! {
            h1 { "Promotion " (p.id) ": " (p.repository) " → " (p.environment) }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            section #live data-watch={ "/promotions/" (p.id) "/events" } {
                dl.facts {
                    dt { "State" } dd #state { (state_badge(p.state)) }
                    @if let Some((id, images)) = release {
                        dt { "Release" } dd #member-of {
                            "member of " a href={ "/releases/" (id) } { "release " (id) } " (" (images) " images)"
                        }
                    }
                    (waiting(p, Scope::Page))
                    @if !p.state.is_terminal() { dt { "Expires" } dd { (countdown(p.expires_at)) } }
                    dt { "Repository" } dd { (p.repository) }
                    dt { "Environment" } dd { (p.environment) " (tag " (p.target_tag) ")" }
                    dt { "Digest" } dd.digest { (p.digest) }
                    dt { "Source" } dd { (p.source) }
                    dt { "Requested by" } dd #requested-by { (p.requested_by) }
                    dt { "Reason" } dd #reason { (p.reason) }
                    @if !p.failure_message.is_empty() { dt { "Failure" } dd { (p.failure_message) } }
                    @if !p.policy_digest.is_empty() { dt { "Policy" } dd.digest { (p.policy_digest) } }
                }
                (what_changes(&p.environment, &facts.changes, Scope::Page))
                (check_list(&facts.checks, Scope::Page))
                (approval_list(&p.approvals, p.required_approvals))
                (gate_table(facts.gates.as_ref(), Scope::Page))
            }
            (decide_form(reader, &format!("/promotions/{}", p.id), actions, note))
            section #history {
                h2 { "Audit entries" }
                table {
                    thead { tr { th { "Sequence" } th { "Checkpoint" } th { "Time" } th { "Action" } th { "Actor" } th { "Comment" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { (e.sequence) }
                                td.checkpoint {
                                    @if e.sequence <= checkpoint_size { "included" } @else { "not yet" }
                                }
                                td { (moment(e.time)) }
                                td { (action_name(e)) }
                                td { (e.event.actor) }
                                td { (e.event.comment) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Everything a release page shows.
pub struct ReleaseView<'a> {
    pub release: &'a Release,
    /// Each member's facts, in the members' order.
    pub facts: &'a [MemberFacts],
    pub actions: &'a Actions,
    pub error: Option<&'a str>,
}

/// `/releases/{id}`: the whole, its approvals, then each member with what
/// it changes.
pub fn release(reader: &Reader<'_>, view: &ReleaseView<'_>) -> Markup {
    let ReleaseView {
        release: r,
        facts,
        actions,
        error,
    } = *view;
    let state = r.state();
    let images = r.members.len();
    // Each member needs its own approvals; the release moves once all have.
    let required = r.members.iter().map(|m| m.required_approvals).max();
    let note = html! {
        p.hint #decides-release { "These buttons decide all " (images) " images together." }
    };
    layout(
        &format!("Release {}", r.id),
        Some(reader),
        html! {
            h1 { "Release " (r.id) ": " (images) " images → " (r.environment()) }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            section #live data-watch={ "/releases/" (r.id) "/events" } {
                dl.facts {
                    dt { "State" } dd #state { (state_badge(state)) }
                    @if !state.is_terminal() {
                        @if let Some(m) = r.members.first() { dt { "Expires" } dd { (countdown(m.expires_at)) } }
                    }
                    dt { "Environment" } dd #environment { (r.environment()) }
                    dt { "Requested by" } dd #requested-by { (r.requested_by()) }
                    dt { "Reason" } dd #reason { (r.reason()) }
                    dt { "Created" } dd { (moment(r.created_at())) }
                    dt { "Updated" } dd { (moment(r.updated_at())) }
                    @if !r.failure_message().is_empty() { dt { "Failure" } dd #failure { (r.failure_message()) } }
                }
                (approval_list(r.approvals(), required.unwrap_or(0)))
                h2 { "Members" }
                ol #members {
                    @for (m, f) in r.members.iter().zip(facts) { (member(m, f)) }
                }
            }
            (decide_form(reader, &format!("/releases/{}", r.id), actions, Some(note)))
        },
    )
}

/// One member on its release's page.
fn member(m: &Promotion, f: &MemberFacts) -> Markup {
    html! {
        li.member id={ "member-" (m.id) } {
            h2 { a.promotion href={ "/promotions/" (m.id) } { "Promotion " (m.id) } ": " span.repository { (m.repository) } }
            dl.facts {
                dt { "State" } dd.member-state { (state_badge(m.state)) }
                dt { "Digest" } dd.digest title=(m.digest) { (short_digest(&m.digest)) }
                (waiting(m, Scope::Member))
                @if !m.failure_message.is_empty() { dt { "Failure" } dd.failure { (m.failure_message) } }
            }
            (what_changes(&m.environment, &f.changes, Scope::Member))
            (check_list(&f.checks, Scope::Member))
            (gate_table(f.gates.as_ref(), Scope::Member))
        }
    }
}

/// A time that counts down (or up) in the page's script.
fn countdown(t: Time) -> Markup {
    html! { time data-countdown=(time(t)) datetime=(time(t)) { (time(t)) } }
}

/// What a WAITING promotion waits for, as `dt`/`dd` pairs.
fn waiting(p: &Promotion, scope: Scope) -> Markup {
    html! {
        @if p.state == State::Waiting {
            dt { "Waiting for" } dd.waiting-for id=[scope.id("waiting-for")] { (p.waiting_for.join(", ")) }
            @if let Some(t) = p.not_before { dt { "Not before" } dd { (countdown(t)) } }
        }
    }
}

fn approval_list(approvals: &[Approval], required: u32) -> Markup {
    html! {
        h2 { "Approvals " (approvals.len()) " of " (required) }
        ul #approvals {
            @for a in approvals {
                li {
                    strong { (a.approver) }
                    @if !a.groups.is_empty() { " (" (a.groups.join(", ")) ")" }
                    " at " (moment(a.time))
                    @if !a.comment.is_empty() { ": " q { (a.comment) } }
                }
            }
        }
    }
}

fn gate_table(gates: Option<&GateReport>, scope: Scope) -> Markup {
    html! {
        @if let Some(g) = gates {
            h2 { "Gates" }
            table.gates id=[scope.id("gates")] {
                @for gate in &g.gates {
                    tr class=(if gate.passed { "pass" } else { "block" }) {
                        td { (if gate.passed { "pass" } else { "BLOCK" }) }
                        td { (gate.name) }
                        td { (gate.message) }
                    }
                }
            }
        }
    }
}

/// Approve, Reject, Cancel (and break-glass) as `actions` allows, posting
/// to `{base}/approve|reject|cancel`; `note` says what they decide.
fn decide_form(reader: &Reader<'_>, base: &str, actions: &Actions, note: Option<Markup>) -> Markup {
    html! {
        @if actions.decide || actions.cancel {
            section #decide {
                h2 { "Decide" }
                @if let Some(n) = note { (n) }
                form method="post" {
                    input type="hidden" name="csrf" value=(reader.csrf);
                    label for="comment" { "Comment" }
                    textarea #comment name="comment" rows="3" maxlength="4096" {}
                    @if actions.break_glass {
                        label.break-glass {
                            input type="checkbox" name="break_glass" value="true";
                            " Break glass (overrides window, freeze and soak; say why in the comment)"
                        }
                    }
                    div.buttons {
                        @if actions.decide {
                            button #approve type="submit" formaction={ (base) "/approve" } { "Approve" }
                            button #reject type="submit" formaction={ (base) "/reject" } { "Reject" }
                        }
                        @if actions.cancel {
                            button #cancel type="submit" formaction={ (base) "/cancel" } { "Cancel" }
                        }
                    }
                }
            }
        }
    }
}

/// A promotion id as a link to its page; none for entries about no
/// promotion (id 0).
fn promotion_link(id: u64) -> Markup {
    html! {
        @if id == 0 { "-" } @else { a href={ "/promotions/" (id) } { (id) } }
    }
}

/// What `/history`'s form was sent with, echoed back into it.
pub struct HistoryFields<'a> {
    pub repository: &'a str,
    pub environment: &'a str,
    pub since: &'a str,
    pub until: &'a str,
}

/// `/history`: the audit log, newest first, filtered.
pub fn history(
    reader: &Reader<'_>,
    f: &HistoryFields<'_>,
    entries: &[AuditEntry],
    next: Option<&str>,
    error: Option<&str>,
) -> Markup {
    layout(
        "History",
        Some(reader),
        html! {
            h1 { "History" }
            form #history-filter method="get" action="/history" {
                label { "Repository " input name="repository" value=(f.repository) placeholder="registry.example/team/app"; }
                label { "Environment " input name="environment" value=(f.environment); }
                label { "Since " input name="since" value=(f.since) placeholder="2026-11-26T14:32:00Z"; }
                label { "Until " input name="until" value=(f.until) placeholder="RFC 3339"; }
                div.buttons { button type="submit" { "Filter" } }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if entries.is_empty() && error.is_none() { p.empty { "No entry matches." } }
            @if !entries.is_empty() {
                table #entries {
                    thead { tr { th { "Sequence" } th { "Time" } th { "Action" } th { "Promotion" } th { "Repository" } th { "Environment" } th { "Digest" } th { "Actor" } th { "Comment" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { (e.sequence) }
                                td { time datetime=(time(e.time)) { (time(e.time)) } }
                                td.action { (action_name(e)) }
                                td.promotion { (promotion_link(e.event.promotion_id)) }
                                td.repository { (e.event.repository) }
                                td.environment { (e.event.environment) }
                                td.digest title=(e.event.digest) { (short_digest(&e.event.digest)) }
                                td { (e.event.actor) }
                                td { (e.event.comment) }
                            }
                        }
                    }
                }
            }
            @if let Some(n) = next { p { a #next href=(n) { "Older entries" } } }
        },
    )
}

/// One tag on `/deployed`: its record then (`None`: nothing then), or why
/// it could not be read.
pub struct DeployedRow {
    pub repository: String,
    pub environment: String,
    pub record: Result<Option<TagRecord>, String>,
}

fn drift(record: &TagRecord) -> Markup {
    html! {
        @if record.drifted() {
            @let observed = record.drift.last().map_or("", |e| e.event.digest.as_str());
            span.drift.block {
                "drifted: the tag carries "
                @if observed.is_empty() { "nothing (deleted)" } @else { span.digest { (observed) } }
            }
        } @else if record.drift.is_empty() {
            span.drift { "none" }
        } @else {
            span.drift { "restored" }
        }
    }
}

/// `/deployed` (now) and `/deployed?at=` (then).
pub fn deployed(
    reader: &Reader<'_>,
    at: &str,
    rows: &[DeployedRow],
    more: bool,
    error: Option<&str>,
) -> Markup {
    let then = !at.trim().is_empty() && error.is_none();
    layout(
        "Deployed",
        Some(reader),
        html! {
            h1 {
                @if then { "What ran at " (at.trim()) } @else { "Deployed now" }
            }
            form #deployed-at method="get" action="/deployed" {
                label { "At " input name="at" value=(at) placeholder="2026-11-26T14:32:00Z"; }
                div.buttons { button type="submit" { "Show" } @if then { a href="/deployed" { "Now" } } }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if rows.is_empty() && error.is_none() { p.empty { "prodgate has moved no tag yet." } }
            @if !rows.is_empty() {
                table #deployed {
                    thead { tr { th { "Repository" } th { "Environment" } th { "Digest" } th { "Since" } th { "Promotion" } th { "Drift" } } }
                    tbody {
                        @for r in rows {
                            tr {
                                td.repository { (r.repository) }
                                td.environment { (r.environment) }
                                @match &r.record {
                                    Err(why) => td.error colspan="4" { "could not read: " (why) },
                                    Ok(None) => td.empty colspan="4" { "nothing then" },
                                    Ok(Some(record)) => {
                                        td.digest { (record.expected()) }
                                        td.since { time datetime=(time(record.applied.time)) { (time(record.applied.time)) } }
                                        td { (promotion_link(record.applied.event.promotion_id)) }
                                        td { (drift(record)) }
                                    }
                                }
                            }
                        }
                    }
                }
                @if more { p.hint { "Only the first " (rows.len()) " tags are shown." } }
            }
        },
    )
}

/// The version before the running policy, and what changed from it.
pub enum Previous {
    /// No earlier version is recorded (or none in reach).
    None,
    Unreadable(String),
    Diff {
        policy: StoredPolicy,
        changes: Vec<Change>,
    },
}

fn section_keys(keys: &Map<String, Value>) -> Markup {
    html! {
        ul.keys {
            // The document's format version says nothing to a reader.
            @for (k, v) in keys.iter().filter(|(k, _)| *k != "format") {
                @if let Some(line) = entry(k, v) { li { (line) } }
            }
        }
    }
}

/// `/policy`: the running policy cut into sections (principals,
/// environments with their gates, projects), then the diff to the
/// version before it.
pub fn policy(
    reader: &Reader<'_>,
    running: &StoredPolicy,
    sections: &[(String, Map<String, Value>)],
    previous: &Previous,
) -> Markup {
    layout(
        "Policy",
        Some(reader),
        html! {
            h1 { "Policy in force" }
            dl.facts {
                dt { "Digest" } dd.digest #policy-digest { (running.digest) }
                dt { "First recorded" } dd { time datetime=(time(running.first_recorded)) { (time(running.first_recorded)) } }
            }
            section #policy-sections {
                @for (name, keys) in sections {
                    @if name == "policy" {
                        h2 { "Defaults" }
                    } @else if name.starts_with("principal ") {
                        h3.principal { (name) }
                    } @else {
                        h2 { (name) }
                    }
                    (section_keys(keys))
                }
            }
            section #policy-diff {
                h2 { "Changes from the version before" }
                @match previous {
                    Previous::None => p.empty { "No earlier version is recorded." },
                    Previous::Unreadable(why) => p.error { "could not read: " (why) },
                    Previous::Diff { policy, changes } => {
                        p { "From " span.digest { (policy.digest) } " (first recorded "
                            time datetime=(time(policy.first_recorded)) { (time(policy.first_recorded)) } ")" }
                        @if changes.is_empty() { p.empty { "No change." } } @else {
                            table {
                                thead { tr { th { "Section" } th { "Key" } th { "Before" } th { "Now" } } }
                                tbody {
                                    @for c in changes {
                                        tr {
                                            td { (c.section) }
                                            td { @if c.key.is_empty() { "(whole section)" } @else { (c.key) } }
                                            td { (c.old.as_ref().map_or_else(|| "(unset)".to_owned(), render)) }
                                            td { (c.new.as_ref().map_or_else(|| "(unset)".to_owned(), render)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Whether `s` may be a link's target: an http(s) URL, nothing else
/// (`javascript:`, `data:` and relative references are shown as text).
pub fn is_http_url(s: &str) -> bool {
    let lower = s.trim().to_ascii_lowercase();
    lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .is_some_and(|rest| !rest.is_empty())
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The candidate's checks: the latest report of each.
fn check_list(checks: &Result<Vec<CheckReport>, String>, scope: Scope) -> Markup {
    html! {
        section.checks id=[scope.id("checks")] {
            h2 { "Checks" }
            @match checks {
                Err(why) => p.error { "could not read: " (why) },
                Ok(list) if list.is_empty() => p.empty { "No check has reported on this digest." },
                Ok(list) => table {
                    thead { tr { th { "Check" } th { "Status" } th { "Reported by" } th { "Time" } th { "Details" } } }
                    tbody {
                        @for c in list {
                            tr class=(if c.status == CheckStatus::Passed { "pass" } else { "block" }) {
                                td.check { (c.check) }
                                td.status { (c.status.label()) }
                                td.reporter { (c.reported_by) }
                                td { time datetime=(time(c.time)) { (time(c.time)) } }
                                td.details {
                                    @if is_http_url(&c.details_url) {
                                        a href=(c.details_url.trim()) rel="noopener noreferrer" { "details" }
                                    } @else if !c.details_url.is_empty() {
                                        (c.details_url)
                                    }
                                    @if !c.comment.is_empty() { " " q { (c.comment) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn action_name(e: &AuditEntry) -> &'static str {
    i32::try_from(e.event.action.number())
        .ok()
        .and_then(|n| crate::pb::AuditAction::try_from(n).ok())
        .map_or("?", |a| {
            let name = a.as_str_name();
            name.strip_prefix("AUDIT_ACTION_").unwrap_or(name)
        })
}

/// A page for a refusal that has no page of its own (403, 404).
pub fn problem(reader: Option<&Reader<'_>>, title: &str, message: &str) -> Markup {
    layout(
        title,
        reader,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/" { "Back to what awaits you" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_become_links() {
        assert!(is_http_url("https://ci.example/run/1"));
        assert!(is_http_url("HTTP://ci.example"));
        assert!(!is_http_url("javascript:alert(1)"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("/relative"));
        assert!(!is_http_url("https://a.example/x y"));
    }
}
