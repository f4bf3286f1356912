//! The console's pages, as maud templates: compiled into the binary, and
//! every value spliced in is HTML-escaped by construction (`(value)`), so
//! reasons, comments and anything a registry wrote show as text. No inline
//! script or style: the CSP allows only `/static/console.{js,css}`.

use crate::domain::audit::AuditEntry;
use crate::domain::gates::GateReport;
use crate::domain::model::{Precision, Promotion, State, Time};
use maud::{DOCTYPE, Markup, html};

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

fn promotion_rows(ps: &[Promotion]) -> Markup {
    html! {
        table.promotions {
            thead { tr { th { "ID" } th { "State" } th { "Repository" } th { "Environment" } th { "Requested by" } th { "Reason" } th { "Created" } } }
            tbody {
                @for p in ps {
                    tr {
                        td { a href={ "/promotions/" (p.id) } { (p.id) } }
                        td { span class={ "state " (state_class(p.state)) } { (p.state.label()) } }
                        td { (p.repository) }
                        td { (p.environment) }
                        td { (p.requested_by) }
                        td.reason { (p.reason) }
                        td { time datetime=(time(p.created_at)) { (time(p.created_at)) } }
                    }
                }
            }
        }
    }
}

/// `/`: what awaits the reader, their recent requests, the latest.
pub fn index(
    reader: &Reader<'_>,
    awaiting: &[Promotion],
    mine: &[Promotion],
    latest: &[Promotion],
) -> Markup {
    layout(
        "Awaiting",
        Some(reader),
        html! {
            section #awaiting {
                h1 { "Awaiting your approval" }
                @if awaiting.is_empty() { p.empty { "Nothing awaits you." } } @else { (promotion_rows(awaiting)) }
            }
            section #mine {
                h2 { "Your recent requests" }
                @if mine.is_empty() { p.empty { "None." } } @else { (promotion_rows(mine)) }
            }
            section #latest {
                h2 { "Latest promotions" }
                @if latest.is_empty() { p.empty { "None yet." } } @else { (promotion_rows(latest)) }
            }
        },
    )
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

/// `/promotions/{id}`.
pub fn promotion(
    reader: &Reader<'_>,
    p: &Promotion,
    gates: Option<&GateReport>,
    entries: &[AuditEntry],
    actions: &Actions,
    error: Option<&str>,
) -> Markup {
    let title = format!("Promotion {}", p.id);
    layout(
        &title,
        Some(reader),
        html! {
            h1 { "Promotion " (p.id) ": " (p.repository) " → " (p.environment) }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            section #live data-watch={ "/promotions/" (p.id) "/events" } {
                dl.facts {
                    dt { "State" } dd #state { span class={ "state " (state_class(p.state)) } { (p.state.label()) } }
                    @if p.state == State::Waiting {
                        dt { "Waiting for" } dd #waiting-for { (p.waiting_for.join(", ")) }
                        @if let Some(t) = p.not_before {
                            dt { "Not before" } dd { time data-countdown=(time(t)) datetime=(time(t)) { (time(t)) } }
                        }
                    }
                    @if !p.state.is_terminal() {
                        dt { "Expires" } dd { time data-countdown=(time(p.expires_at)) datetime=(time(p.expires_at)) { (time(p.expires_at)) } }
                    }
                    dt { "Repository" } dd { (p.repository) }
                    dt { "Environment" } dd { (p.environment) " (tag " (p.target_tag) ")" }
                    dt { "Digest" } dd.digest { (p.digest) }
                    dt { "Source" } dd { (p.source) }
                    dt { "Requested by" } dd #requested-by { (p.requested_by) }
                    dt { "Reason" } dd #reason { (p.reason) }
                    @if !p.failure_message.is_empty() { dt { "Failure" } dd { (p.failure_message) } }
                    @if !p.policy_digest.is_empty() { dt { "Policy" } dd.digest { (p.policy_digest) } }
                }
                h2 { "Approvals " (p.approvals.len()) " of " (p.required_approvals) }
                ul #approvals {
                    @for a in &p.approvals {
                        li {
                            strong { (a.approver) }
                            @if !a.groups.is_empty() { " (" (a.groups.join(", ")) ")" }
                            " at " time datetime=(time(a.time)) { (time(a.time)) }
                            @if !a.comment.is_empty() { ": " q { (a.comment) } }
                        }
                    }
                }
                @if let Some(g) = gates {
                    h2 { "Gates" }
                    table #gates {
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
            @if actions.decide || actions.cancel {
                section #decide {
                    h2 { "Decide" }
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
                                button #approve type="submit" formaction={ "/promotions/" (p.id) "/approve" } { "Approve" }
                                button #reject type="submit" formaction={ "/promotions/" (p.id) "/reject" } { "Reject" }
                            }
                            @if actions.cancel {
                                button #cancel type="submit" formaction={ "/promotions/" (p.id) "/cancel" } { "Cancel" }
                            }
                        }
                    }
                }
            }
            section #history {
                h2 { "Audit entries" }
                table {
                    thead { tr { th { "Sequence" } th { "Time" } th { "Action" } th { "Actor" } th { "Comment" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { (e.sequence) }
                                td { time datetime=(time(e.time)) { (time(e.time)) } }
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
