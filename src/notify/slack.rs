//! Slack approvals, the posting half: each `[[notify]] kind = "slack"`
//! posts a Block Kit message (`chat.postMessage`) when a promotion that
//! needs approval is requested, with **Approve** and **Reject** buttons
//! (`action_id` `approve` / `reject`, `value` the promotion id), and
//! rewrites that message (`chat.update`) as the promotion moves on, saying
//! what happened and by whom; the buttons go once it can no longer be
//! approved or rejected. The buttons come back through [`interactions`].
//!
//! As with webhooks, each notifier has its own bounded queue and delivery
//! task: Slack being slow, down or refusing never blocks or fails a
//! promotion; a full queue drops the event with a warning. Each call is
//! retried with backoff (an HTTP 429's `Retry-After` is honoured), has a
//! timeout, and never follows a redirect (it would carry the bot token to an
//! address nobody configured).
//!
//! Where each message is (channel id and `ts`) is kept in memory only, for
//! the newest [`REMEMBERED`] promotions, by the leading replica (which alone
//! posts): after a restart or a change of leader, or for a promotion older
//! than those, the message is left as it was rather than a new one
//! posted mid-way (a second message would read as a second request). The
//! console page it links to always shows the current state.

pub mod interactions;

use crate::backoff::Delays;
use crate::config::{Secret, SlackConfig};
use crate::domain::model::{Action, Promotion, PromotionId, State};
use crate::store::Change;
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

/// What a committed change asks of a Slack notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    /// A new approval request: post its message.
    Post(Promotion),
    /// A later step of a promotion: rewrite its message with this status.
    Update(Promotion, String),
}

/// The job a committed change makes, if any: a post for a request that
/// needs approval, an update for each later step of a promotion.
fn job_of(c: &Change) -> Option<Job> {
    let p = &c.promotion;
    let e = &c.entry.event;
    match e.action {
        Action::Requested if p.required_approvals > 0 => Some(Job::Post(p.clone())),
        Action::Requested => None,
        Action::Approved
        | Action::GatesPassed
        | Action::Applied
        | Action::ApplyFailed
        | Action::Rejected
        | Action::Cancelled
        | Action::Expired
        | Action::Superseded => Some(Job::Update(
            p.clone(),
            status(e.action, p, &e.actor, &e.comment),
        )),
        Action::CheckReported
        | Action::PolicyChanged
        | Action::DriftDetected
        | Action::DriftRestored => None,
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

/// The console page of promotion `id`, when the console's public URL is known.
fn console_link(console: Option<&str>, id: PromotionId) -> Option<String> {
    console.map(|c| format!("{}/promotions/{id}", c.trim_end_matches('/')))
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
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": s}}));
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
    if !p.reason.trim().is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!(
                "*Reason*\n{}",
                escape(&clip(&p.reason, REASON_CHARS))
            )},
        }));
    }
    let context = match console_link(console, p.id) {
        Some(url) => format!(
            "Promotion {} · <{}|Open in the prodgate console>",
            p.id,
            escape(&url)
        ),
        None => format!("Promotion {}", p.id),
    };
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": context}],
    }));
    if p.state.is_undecided() {
        let id = p.id.to_string();
        blocks.push(json!({
            "type": "actions",
            "block_id": "prodgate",
            "elements": [
                {"type": "button", "action_id": "approve", "style": "primary",
                 "text": {"type": "plain_text", "text": "Approve"}, "value": id},
                {"type": "button", "action_id": "reject", "style": "danger",
                 "text": {"type": "plain_text", "text": "Reject"}, "value": id},
            ],
        }));
    }
    (text, Value::Array(blocks))
}

/// Posts approval requests and updates them, for every Slack notifier,
/// until the change stream closes. `console` is the console's public URL,
/// when one is configured: messages link to its promotion pages.
pub async fn run(
    notifiers: Vec<SlackConfig>,
    console: Option<String>,
    mut changes: broadcast::Receiver<Change>,
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
    loop {
        match changes.recv().await {
            Ok(c) => {
                let Some(job) = job_of(&c) else { continue };
                for (channel, tx) in &queues {
                    if tx.try_send(job.clone()).is_err() {
                        tracing::warn!(%channel, promotion = c.promotion.id, "Slack queue full; event dropped");
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

/// Where each posted message is: channel id and `ts` by promotion, the
/// newest [`REMEMBERED`] only (read with `peek`, so the oldest post goes
/// first).
type Messages = LruCache<PromotionId, (String, String)>;

async fn deliver(api: Api, channel: String, console: Option<String>, mut rx: mpsc::Receiver<Job>) {
    let mut messages = Messages::new(REMEMBERED);
    while let Some(job) = rx.recv().await {
        match job {
            Job::Post(p) => {
                let (text, blocks) = message(&p, None, console.as_deref());
                let body = json!({"channel": channel, "text": text, "blocks": blocks});
                match api.call("chat.postMessage", &body).await {
                    Ok(posted) => match (posted.channel, posted.ts) {
                        (Some(c), Some(ts)) => {
                            messages.insert(p.id, (c, ts));
                        }
                        _ => tracing::warn!(
                            promotion = p.id,
                            "chat.postMessage answered without channel and ts; the message will not be updated"
                        ),
                    },
                    Err(e) => {
                        tracing::error!(%channel, promotion = p.id, error = %e, "Slack message not posted")
                    }
                }
            }
            Job::Update(p, status) => {
                let Some((c, ts)) = messages.peek(&p.id).cloned() else {
                    tracing::debug!(
                        promotion = p.id,
                        "no Slack message of this promotion is known here (not posted, or before a restart)"
                    );
                    continue;
                };
                let (text, blocks) = message(&p, Some(&status), console.as_deref());
                let body = json!({"channel": c, "ts": ts, "text": text, "blocks": blocks});
                if let Err(e) = api.call("chat.update", &body).await {
                    tracing::error!(%channel, promotion = p.id, error = %e, "Slack message not updated");
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
mod tests {
    use super::*;
    use crate::domain::model::{Approval, Time};

    fn promotion(state: State) -> Promotion {
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
            Some(Job::Post(p.clone()))
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
