//! Slack approvals, the posting half: each `[[notify]] kind = "slack"`
//! posts a Block Kit message (`chat.postMessage`) when a promotion that
//! needs approval is requested, with **Approve** and **Reject** buttons
//! (`action_id` `approve` / `reject`, `value` the promotion id), and
//! rewrites that message (`chat.update`) as the promotion moves on, saying
//! what happened and by whom; the buttons go once it can no longer be
//! approved or rejected. The buttons come back through [`interactions`].
//!
//! A release is one message: posted once its request (every member, one
//! write: a [`super::steps::Step`]) is complete, listing each member's
//! repository and short digest, with buttons whose `value` is the release
//! id (deciding any member decides the release), linked to the console's
//! `/releases/{id}`; each later step of the release rewrites it with the
//! state of the whole (its members as the store holds them, read once per
//! step) and who acted.
//!
//! As with webhooks, each notifier has its own bounded queue and delivery
//! task: Slack being slow, down or refusing never blocks or fails a
//! promotion; a full queue drops the event with a warning. Each call is
//! retried with backoff (an HTTP 429's `Retry-After` is honoured), has a
//! timeout, and never follows a redirect (it would carry the bot token to an
//! address nobody configured).
//!
//! Where each message is (channel id and `ts`) is kept in memory only, for
//! the newest [`REMEMBERED`] promotions and releases (by release id), by
//! the leading replica (which alone posts): after a restart or a change of
//! leader, or for a promotion older than those, the message is left as it
//! was rather than a new one posted mid-way (a second message would read
//! as a second request). The console page it links to always shows the
//! current state.

pub mod interactions;

use super::steps::{Step, Steps};
use crate::backoff::Delays;
use crate::config::{Secret, SlackConfig};
use crate::domain::model::{Action, Promotion, PromotionId, State};
use crate::domain::release::Release;
use crate::store::{Change, Store};
use hashlink::LruCache;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

const QUEUE: usize = 1000;
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest `Retry-After` waited for; a longer one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Promotions whose message is remembered for updates, newest first.
pub const REMEMBERED: usize = 10_000;
/// Slack refuses a section text over 3000 characters; a reason is cut
/// well before, since the other lines share the message.
const REASON_CHARS: usize = 1500;

/// The HTTP client of every Slack call (Web API and `response_url`).
fn client() -> Result<reqwest::Client, reqwest::Error> {
    super::client(TIMEOUT)
}

/// What a message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    One(Box<Promotion>),
    Release(Release),
}

impl Subject {
    /// The promotion's id, or the release's: the key of its message.
    fn id(&self) -> PromotionId {
        match self {
            Subject::One(p) => p.id,
            Subject::Release(r) => r.id,
        }
    }

    fn message(&self, status: Option<&str>, console: Option<&str>) -> (String, Value) {
        match self {
            Subject::One(p) => message(p, status, console),
            Subject::Release(r) => release_message(r, status, console),
        }
    }
}

/// What a committed step asks of a Slack notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    /// A new approval request: post its message.
    Post(Subject),
    /// A later step: rewrite its message with this status.
    Update(Subject, String),
}

/// The job a committed change makes, if any: a post for a request that
/// needs approval, an update for each later step of a promotion.
fn job_of(c: &Change) -> Option<Job> {
    let p = &c.promotion;
    let e = &c.entry.event;
    match asks(e.action)? {
        Asks::Post => {
            (p.required_approvals > 0).then(|| Job::Post(Subject::One(Box::new(p.clone()))))
        }
        Asks::Update => Some(Job::Update(
            Subject::One(Box::new(p.clone())),
            status(e.action, p, &e.actor, &e.comment),
        )),
    }
}

/// What an entry asks of the message about its promotion or release.
enum Asks {
    /// A request: a message is posted if it needs approval.
    Post,
    /// A later step: the message is rewritten.
    Update,
}

fn asks(action: Action) -> Option<Asks> {
    match action {
        Action::Requested => Some(Asks::Post),
        Action::Approved
        | Action::GatesPassed
        | Action::Applied
        | Action::ApplyFailed
        | Action::Rejected
        | Action::Cancelled
        | Action::Expired
        | Action::Superseded => Some(Asks::Update),
        Action::CheckReported
        | Action::PolicyChanged
        | Action::DriftDetected
        | Action::DriftRestored => None,
    }
}

/// The job a step of release `rid` makes, if any: a post for a request
/// that needs approval (the step holds every member), an update for each
/// later step. `stored` is the release's members as the store holds them
/// (read for a later step only); the step's own entries stand for the
/// members they are about.
fn release_job(rid: PromotionId, step: &Step, stored: Vec<Promotion>) -> Option<Job> {
    let mut members = stored;
    for c in step.changes() {
        match members.iter_mut().find(|m| m.id == c.promotion.id) {
            Some(m) => *m = c.promotion.clone(),
            None => members.push(c.promotion.clone()),
        }
    }
    members.sort_by_key(|m| m.id);
    let release = Release::of(members).filter(|r| r.id == rid)?;
    let first = step.first();
    let e = &first.entry.event;
    match asks(e.action)? {
        // Members may be governed by different projects: the release
        // waits for approval if any of them does.
        Asks::Post => release
            .members
            .iter()
            .any(|m| m.required_approvals > 0)
            .then_some(Job::Post(Subject::Release(release))),
        Asks::Update => {
            let line = release_status(e.action, &release, &first.promotion, &e.actor, &e.comment);
            Some(Job::Update(Subject::Release(release), line))
        }
    }
}

/// The status line of release `r` after `action` by `actor`, of which `p`
/// is the first member entry: as a promotion's, in the state of the whole.
fn release_status(
    action: Action,
    r: &Release,
    p: &Promotion,
    actor: &str,
    comment: &str,
) -> String {
    match action {
        Action::Applied => format!(
            ":rocket: *Promoted*: all {} tags moved (approved by {})",
            r.members.len(),
            approvers(p)
        ),
        Action::Superseded => format!(
            ":arrow_heading_down: *Superseded*: {} by a newer promotion; the release stops",
            escape(&p.repository)
        ),
        _ => {
            let mut whole = p.clone();
            whole.state = r.state();
            whole.waiting_for = r
                .members
                .iter()
                .flat_map(|m| m.waiting_for.iter().cloned())
                .collect();
            status(action, &whole, actor, comment)
        }
    }
}

/// Slack's mrkdwn escapes: `&`, `<` and `>` are its control characters
/// (links, mentions); everything else shows as written.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A principal's name as the message shows it: a Slack alias
/// (`slack:U0123`) as a mention of that user, anything else escaped.
fn who(name: &str) -> String {
    match name.strip_prefix("slack:") {
        Some(id) if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()) => {
            format!("<@{id}>")
        }
        _ => escape(name),
    }
}

fn approvers(p: &Promotion) -> String {
    p.approvals
        .iter()
        .map(|a| who(&a.approver))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The status line of a promotion after `action` by `actor`.
fn status(action: Action, p: &Promotion, actor: &str, comment: &str) -> String {
    let by = who(actor);
    let said = match comment.trim() {
        "" => String::new(),
        c => format!(": {}", escape(&clip(c, REASON_CHARS))),
    };
    match (action, p.state) {
        (Action::Approved, State::PendingApproval) => format!(
            ":heavy_check_mark: Approved by {by} ({} of {} approvals){said}",
            p.approvals.len(),
            p.required_approvals
        ),
        (Action::Approved, State::Waiting) => format!(
            ":hourglass_flowing_sand: *Waiting* for {} (approved by {})",
            escape(&p.waiting_for.join(", ")),
            approvers(p)
        ),
        (Action::Approved, _) => format!(
            ":white_check_mark: *Approved* by {}; the tag moves next",
            approvers(p)
        ),
        (Action::GatesPassed, _) => format!(
            ":white_check_mark: *Gates passed*; the tag moves next (approved by {})",
            approvers(p)
        ),
        (Action::Applied, _) => format!(
            ":rocket: *Promoted*: `{}` now carries this digest (approved by {})",
            escape(&p.target_tag),
            approvers(p)
        ),
        (Action::ApplyFailed, _) => format!(
            ":x: *Failed*: {}",
            escape(&clip(&p.failure_message, REASON_CHARS))
        ),
        (Action::Rejected, _) => format!(":no_entry: *Rejected* by {by}{said}"),
        (Action::Cancelled, _) => format!(":heavy_multiplication_x: *Cancelled* by {by}{said}"),
        (Action::Expired, _) => ":clock3: *Expired* before it was done".to_owned(),
        (Action::Superseded, _) => match p.superseded_by {
            Some(id) => format!(":arrow_heading_down: *Superseded* by promotion {id}"),
            None => ":arrow_heading_down: *Superseded* by a newer promotion".to_owned(),
        },
        (
            Action::Requested
            | Action::CheckReported
            | Action::PolicyChanged
            | Action::DriftDetected
            | Action::DriftRestored,
            _,
        ) => format!("*{}*", p.state.label()),
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// The console page `{public_url}/{page}/{id}` (`promotions` or
/// `releases`), when the console's public URL is known.
fn console_link(console: Option<&str>, page: &str, id: PromotionId) -> Option<String> {
    console.map(|c| format!("{}/{page}/{id}", c.trim_end_matches('/')))
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
}

/// The reason, cut, if there is one.
fn reason_block(reason: &str) -> Option<Value> {
    (!reason.trim().is_empty())
        .then(|| section(format!("*Reason*\n{}", escape(&clip(reason, REASON_CHARS)))))
}

/// `{Promotion|Release} {id}` and the link to its console page.
fn context_block(what: &str, page: &str, id: PromotionId, console: Option<&str>) -> Value {
    let context = match console_link(console, page, id) {
        Some(url) => format!(
            "{what} {id} · <{}|Open in the prodgate console>",
            escape(&url)
        ),
        None => format!("{what} {id}"),
    };
    json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": context}],
    })
}

/// Approve and Reject, their `value` the id the decision is made on.
fn buttons_block(id: PromotionId) -> Value {
    let id = id.to_string();
    json!({
        "type": "actions",
        "block_id": "prodgate",
        "elements": [
            {"type": "button", "action_id": "approve", "style": "primary",
             "text": {"type": "plain_text", "text": "Approve"}, "value": id},
            {"type": "button", "action_id": "reject", "style": "danger",
             "text": {"type": "plain_text", "text": "Reject"}, "value": id},
        ],
    })
}

/// The message of promotion `p` (its `text` fallback and `blocks`), with
/// `status` on top when it has moved on, and the buttons while it may still
/// be approved or rejected.
pub fn message(p: &Promotion, status: Option<&str>, console: Option<&str>) -> (String, Value) {
    let text = format!(
        "Approval requested: {} to {} (promotion {})",
        p.repository, p.environment, p.id
    );
    let mut blocks = Vec::new();
    if let Some(s) = status {
        blocks.push(section(s.to_owned()));
    }
    blocks.push(json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!(
            "*Approval requested* to promote `{}` to *{}*",
            escape(&p.repository),
            escape(&p.environment)
        )},
        "fields": [
            {"type": "mrkdwn", "text": format!("*Repository*\n{}", escape(&p.repository))},
            {"type": "mrkdwn", "text": format!("*Environment*\n{}", escape(&p.environment))},
            {"type": "mrkdwn", "text": format!("*Digest*\n`{}`", escape(&p.digest))},
            {"type": "mrkdwn", "text": format!("*Requested by*\n{}", who(&p.requested_by))},
        ],
    }));
    blocks.extend(reason_block(&p.reason));
    blocks.push(context_block("Promotion", "promotions", p.id, console));
    if p.state.is_undecided() {
        blocks.push(buttons_block(p.id));
    }
    (text, Value::Array(blocks))
}

/// Members listed per section: 50 lines would pass Slack's 3000
/// characters of a section text.
const MEMBERS_PER_SECTION: usize = 10;

/// The message of release `r`: as a promotion's, with a line per member
/// (repository, short digest, and its state once the release moved on),
/// and buttons on the release's id while the whole may be decided.
pub fn release_message(
    r: &Release,
    status: Option<&str>,
    console: Option<&str>,
) -> (String, Value) {
    let text = format!(
        "Approval requested: release {} ({} images) to {}",
        r.id,
        r.members.len(),
        r.environment()
    );
    let mut blocks = Vec::new();
    if let Some(s) = status {
        blocks.push(section(s.to_owned()));
    }
    blocks.push(json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!(
            "*Approval requested* to release {} images to *{}* together",
            r.members.len(),
            escape(r.environment())
        )},
        "fields": [
            {"type": "mrkdwn", "text": format!("*Environment*\n{}", escape(r.environment()))},
            {"type": "mrkdwn", "text": format!("*Requested by*\n{}", who(r.requested_by()))},
        ],
    }));
    for chunk in r.members.chunks(MEMBERS_PER_SECTION) {
        let lines: Vec<String> = chunk
            .iter()
            .map(|m| {
                let state = match status {
                    Some(_) => format!(" · {}", m.state.label()),
                    None => String::new(),
                };
                format!(
                    "• `{}` `{}`{state}",
                    escape(&m.repository),
                    escape(crate::domain::names::short_digest(&m.digest))
                )
            })
            .collect();
        blocks.push(section(lines.join("\n")));
    }
    blocks.extend(reason_block(r.reason()));
    blocks.push(context_block("Release", "releases", r.id, console));
    if r.state().is_undecided() {
        blocks.push(buttons_block(r.id));
    }
    (text, Value::Array(blocks))
}

/// Posts approval requests and updates them, for every Slack notifier,
/// until the change stream closes. `console` is the console's public URL,
/// when one is configured: messages link to its promotion pages.
pub async fn run(
    notifiers: Vec<SlackConfig>,
    console: Option<String>,
    store: Store,
    changes: broadcast::Receiver<Change>,
) {
    if notifiers.is_empty() {
        return;
    }
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Slack client; Slack notifications are off");
            return;
        }
    };
    let mut queues = Vec::new();
    for n in notifiers {
        // `serve` reads every file; only `check-config` leaves one out.
        let Some(token) = n.bot_token.clone() else {
            tracing::error!(channel = %n.channel, "no bot token read; this Slack notifier is off");
            continue;
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let channel = n.channel.clone();
        tokio::spawn(deliver(
            Api {
                client: client.clone(),
                base: n.api_url.clone(),
                token,
            },
            n.channel,
            console.clone(),
            rx,
        ));
        queues.push((channel, tx));
    }
    let mut steps = Steps::new(changes, store.clone());
    loop {
        match steps.next().await {
            Ok(step) => {
                let job = match step.release() {
                    None => job_of(step.first()),
                    Some(rid) => {
                        // A request holds every member; a later step is
                        // shown with the whole.
                        let stored = match step.first().entry.event.action {
                            Action::Requested => Vec::new(),
                            _ => store.release_members(rid).await.unwrap_or_else(|e| {
                                tracing::warn!(release = rid, error = %e, "cannot read a release's members; its message shows this step's");
                                Vec::new()
                            }),
                        };
                        release_job(rid, &step, stored)
                    }
                };
                let Some(job) = job else { continue };
                for (channel, tx) in &queues {
                    if tx.try_send(job.clone()).is_err() {
                        tracing::warn!(%channel, id = step.first().promotion.id, "Slack queue full; event dropped");
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "Slack notifications missed promotion changes");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Where each posted message is: channel id and `ts` by promotion (or
/// release), the newest [`REMEMBERED`] only (read with `peek`, so the oldest post goes
/// first).
type Messages = LruCache<PromotionId, (String, String)>;

async fn deliver(api: Api, channel: String, console: Option<String>, mut rx: mpsc::Receiver<Job>) {
    let mut messages = Messages::new(REMEMBERED);
    while let Some(job) = rx.recv().await {
        match job {
            Job::Post(p) => {
                let (text, blocks) = p.message(None, console.as_deref());
                let body = json!({"channel": channel, "text": text, "blocks": blocks});
                match api.call("chat.postMessage", &body).await {
                    Ok(posted) => match (posted.channel, posted.ts) {
                        (Some(c), Some(ts)) => {
                            messages.insert(p.id(), (c, ts));
                        }
                        _ => tracing::warn!(
                            id = p.id(),
                            "chat.postMessage answered without channel and ts; the message will not be updated"
                        ),
                    },
                    Err(e) => {
                        tracing::error!(%channel, id = p.id(), error = %e, "Slack message not posted")
                    }
                }
            }
            Job::Update(p, status) => {
                let Some((c, ts)) = messages.peek(&p.id()).cloned() else {
                    tracing::debug!(
                        id = p.id(),
                        "no Slack message of this promotion is known here (not posted, or before a restart)"
                    );
                    continue;
                };
                let (text, blocks) = p.message(Some(&status), console.as_deref());
                let body = json!({"channel": c, "ts": ts, "text": text, "blocks": blocks});
                if let Err(e) = api.call("chat.update", &body).await {
                    tracing::error!(%channel, id = p.id(), error = %e, "Slack message not updated");
                }
            }
        }
    }
}

/// Why a Web API call gave up. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Slack answered ok=false: {0}")]
    Slack(String),
    #[error("{attempts} attempts failed; the last: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("the bot token holds characters an HTTP header cannot carry")]
    BadToken,
}

/// The fields of a Web API answer prodgate reads.
#[derive(Debug, serde::Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    ts: Option<String>,
}

/// Slack's `error` codes that a later attempt may not get.
fn retryable(error: &str) -> bool {
    matches!(
        error,
        "ratelimited"
            | "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout"
    )
}

/// An HTTP 429's `Retry-After` (seconds, as Slack sends it), capped.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// One notifier's Web API: its base URL and bot token.
struct Api {
    client: reqwest::Client,
    base: String,
    token: Secret,
}

impl Api {
    /// POSTs `body` to `method`, retrying what may pass later.
    async fn call(&self, method: &str, body: &Value) -> Result<Answer, ApiError> {
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend_from_slice(self.token.expose());
        let mut auth = http::HeaderValue::from_bytes(&bearer).map_err(|_| ApiError::BadToken)?;
        auth.set_sensitive(true);
        let url = format!("{}/{method}", self.base);
        let body = body.to_string();
        let mut backoff = Delays::new(FIRST_BACKOFF, MAX_RETRY_AFTER);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .client
                .post(&url)
                .header(http::header::AUTHORIZATION, auth.clone())
                .header(
                    http::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                )
                .body(body.clone())
                .send()
                .await;
            let mut pause = None;
            match sent {
                Ok(r) if r.status() == http::StatusCode::TOO_MANY_REQUESTS => {
                    pause = retry_after(r.headers());
                    last = "HTTP 429 (rate limited)".to_owned();
                }
                Ok(r) if r.status().is_success() => match answer(r).await {
                    Ok(a) if a.ok => return Ok(a),
                    Ok(a) => {
                        let error = a.error.unwrap_or_else(|| "(no error code)".into());
                        if !retryable(&error) {
                            return Err(ApiError::Slack(error));
                        }
                        last = format!("ok=false: {error}");
                    }
                    Err(e) => last = e,
                },
                Ok(r) if r.status().is_redirection() => {
                    last = format!("HTTP {} (a redirect, not followed)", r.status());
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                // Without the URL, as for webhooks.
                Err(e) => last = e.without_url().to_string(),
            }
            tracing::warn!(method, attempt, error = %last, "Slack call failed");
            if attempt < ATTEMPTS {
                let wait = pause.unwrap_or_else(|| backoff.next_delay());
                tokio::time::sleep(wait).await;
            }
        }
        Err(ApiError::GaveUp {
            attempts: ATTEMPTS,
            last,
        })
    }
}

/// Reads a Web API answer, bounded: Slack's answers are small.
async fn answer(mut r: reqwest::Response) -> Result<Answer, String> {
    const LIMIT: usize = 1 << 20;
    let (bytes, complete) = crate::body::read_capped(&mut r, LIMIT)
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !complete {
        return Err("the answer is larger than 1 MiB".into());
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not Slack's JSON: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::model::{Approval, Time};

    /// Promotion 42 of `r.io/team/app` to production, in `state`.
    pub(crate) fn promotion(state: State) -> Promotion {
        Promotion {
            id: 42,
            repository: "r.io/team/app".into(),
            environment: "production".into(),
            target_tag: "production".into(),
            source: "staging".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            state,
            requested_by: "alice".into(),
            reason: "fix <script>alert(1)</script> & <!channel>".into(),
            approvals: Vec::new(),
            required_approvals: 1,
            previous_digest: String::new(),
            created_at: Time::ZERO,
            updated_at: Time::ZERO,
            promoted_at: None,
            failure_message: String::new(),
            expires_at: Time::ZERO,
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

    fn buttons(blocks: &Value) -> Vec<(String, String)> {
        blocks
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().unwrap().clone())
            .map(|e| {
                (
                    e["action_id"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_request_has_both_buttons_an_escaped_reason_and_the_console_link() {
        let p = promotion(State::PendingApproval);
        let (text, blocks) = message(&p, None, Some("https://prodgate.example.com/"));
        assert!(text.contains("r.io/team/app") && text.contains("production"));
        assert_eq!(
            buttons(&blocks),
            [
                ("approve".into(), "42".into()),
                ("reject".into(), "42".into())
            ]
        );
        let all = blocks.to_string();
        assert!(all.contains("fix &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;!channel&gt;"));
        assert!(!all.contains("<script>") && !all.contains("<!channel>"));
        assert!(
            all.contains(
                "<https://prodgate.example.com/promotions/42|Open in the prodgate console>"
            )
        );
        assert!(all.contains(&p.digest) && all.contains("alice"));
        let (_, without) = message(&p, None, None);
        assert!(!without.to_string().contains("/promotions/"));
    }

    #[test]
    fn buttons_go_once_the_promotion_can_no_longer_be_decided() {
        for state in State::ALL {
            let (_, blocks) = message(&promotion(state), Some("x"), None);
            assert_eq!(
                buttons(&blocks).is_empty(),
                !state.is_undecided(),
                "{state:?}"
            );
        }
    }

    #[test]
    fn status_lines_say_what_happened_and_by_whom() {
        let mut p = promotion(State::Approved);
        p.approvals.push(Approval {
            approver: "slack:U0BOB".into(),
            groups: Vec::new(),
            time: Time::ZERO,
            comment: String::new(),
        });
        let s = status(Action::Approved, &p, "slack:U0BOB", "");
        assert!(s.contains("*Approved* by <@U0BOB>"), "{s}");
        p.state = State::Promoted;
        let s = status(Action::Applied, &p, "prodgate", "");
        assert!(s.contains("*Promoted*") && s.contains("<@U0BOB>"), "{s}");
        p.state = State::Rejected;
        let s = status(Action::Rejected, &p, "carol<b>", "no & never");
        assert_eq!(s, ":no_entry: *Rejected* by carol&lt;b&gt;: no &amp; never");
        p.state = State::PendingApproval;
        p.required_approvals = 2;
        let s = status(Action::Approved, &p, "bob", "");
        assert!(s.contains("(1 of 2 approvals)"), "{s}");
    }

    #[test]
    fn only_requests_that_need_approval_are_posted() {
        use crate::domain::audit::{AuditEntry, GENESIS};
        use crate::domain::model::Event;
        let change = |action, p: Promotion| Change {
            entry: AuditEntry::chain(
                GENESIS,
                2,
                Time::ZERO,
                Event {
                    action,
                    actor: "bob".into(),
                    promotion_id: p.id,
                    repository: p.repository.clone(),
                    environment: p.environment.clone(),
                    digest: p.digest.clone(),
                    previous_digest: String::new(),
                    comment: String::new(),
                    attributes: Default::default(),
                },
            ),
            promotion: p,
        };
        let p = promotion(State::PendingApproval);
        assert_eq!(
            job_of(&change(Action::Requested, p.clone())),
            Some(Job::Post(Subject::One(Box::new(p.clone()))))
        );
        let free = Promotion {
            required_approvals: 0,
            state: State::Approved,
            ..p.clone()
        };
        assert_eq!(job_of(&change(Action::Requested, free)), None);
        assert!(matches!(
            job_of(&change(Action::Expired, promotion(State::Expired))),
            Some(Job::Update(..))
        ));
        assert_eq!(job_of(&change(Action::CheckReported, p)), None);
    }

    /// Release 42 of three members in `state`, and their changes by `action`.
    fn release(state: State, action: Action) -> (Vec<Promotion>, Vec<Change>) {
        let changes: Vec<Change> = (0..3)
            .map(|i| {
                let mut c = crate::notify::steps::tests::change(42 + i, Some(42), action);
                c.promotion = Promotion {
                    repository: format!("r.io/shop/part{i}"),
                    digest: format!("sha256:{}", i.to_string().repeat(64)),
                    ..c.promotion
                };
                c.promotion.state = state;
                c
            })
            .collect();
        (
            changes.iter().map(|c| c.promotion.clone()).collect(),
            changes,
        )
    }

    fn step(changes: Vec<Change>) -> Step {
        Step::new(Some(42), changes).expect("a step")
    }

    #[test]
    fn a_release_is_one_message_listing_its_members_with_buttons_on_its_id() {
        let (members, changes) = release(State::PendingApproval, Action::Requested);
        let Some(Job::Post(subject)) = release_job(42, &step(changes), Vec::new()) else {
            panic!("a request that needs approval is posted");
        };
        assert_eq!(subject.id(), 42);
        let (text, blocks) = subject.message(None, Some("https://prodgate.example.com"));
        assert!(
            text.contains("release 42") && text.contains("3 images"),
            "{text}"
        );
        assert_eq!(
            buttons(&blocks),
            [
                ("approve".into(), "42".into()),
                ("reject".into(), "42".into())
            ]
        );
        let all = blocks.to_string();
        for m in &members {
            assert!(all.contains(&m.repository), "{all}");
            assert!(
                all.contains(&m.digest[..19]) && !all.contains(&m.digest),
                "{all}"
            );
        }
        assert!(
            all.contains("<https://prodgate.example.com/releases/42|Open in the prodgate console>")
        );
        assert!(
            all.contains("fix &lt;script&gt;") && all.contains("alice"),
            "{all}"
        );
        // A request that needs no approval posts nothing.
        let (_, mut free) = release(State::Approved, Action::Requested);
        for c in &mut free {
            c.promotion.required_approvals = 0;
        }
        assert_eq!(release_job(42, &step(free), Vec::new()), None);
    }

    #[test]
    fn a_release_step_updates_its_message_with_the_whole() {
        // Approved: members 42 and 43 in the step, 44 read from the store
        // as it stands (WAITING for its check): the whole waits.
        let (mut stored, changes) = release(State::Approved, Action::Approved);
        stored[2].state = State::Waiting;
        stored[2].waiting_for = vec!["soak".into()];
        let approved = step(changes[..2].to_vec());
        let Some(Job::Update(Subject::Release(r), line)) = release_job(42, &approved, stored)
        else {
            panic!("an update");
        };
        assert_eq!(r.members.len(), 3);
        assert_eq!(r.state(), State::Waiting);
        assert!(line.contains("*Waiting* for soak"), "{line}");
        let (_, blocks) = Subject::Release(r).message(Some(&line), None);
        // Waiting, it may still be rejected, as a promotion may.
        assert_eq!(buttons(&blocks).len(), 2);
        assert!(
            blocks.to_string().contains("WAITING"),
            "each member's state"
        );
        // Promoted: every tag moved.
        let promoted = step(release(State::Promoted, Action::Applied).1);
        let Some(Job::Update(subject, line)) = release_job(42, &promoted, Vec::new()) else {
            panic!("an update");
        };
        assert!(line.contains("*Promoted*: all 3 tags moved"), "{line}");
        assert!(buttons(&subject.message(Some(&line), None).1).is_empty());
        // A step of another release's members is no job of this one.
        assert_eq!(release_job(7, &promoted, Vec::new()), None);
    }

    #[test]
    fn the_newest_messages_are_remembered() {
        let mut m = Messages::new(REMEMBERED);
        for id in 0..(REMEMBERED as u64 + 5) {
            m.insert(id, ("C1".into(), format!("{id}.0")));
        }
        assert_eq!(m.len(), REMEMBERED);
        assert!(m.peek(&4).is_none() && m.peek(&5).is_some());
    }

    #[test]
    fn retry_after_is_seconds_and_capped() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(http::header::RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn clipping_keeps_whole_characters() {
        assert_eq!(clip("名前です", 2), "名前…");
        assert_eq!(clip("ok", 2), "ok");
    }
}
