//! Slack approvals, the receiving half: the **Approve** and **Reject**
//! buttons of [`super`]'s messages come back as interactions, POSTed by
//! Slack to `{console public_url}/slack/interactions` ([`PATH`]).
//!
//! - [`verify`]: Slack's v0 request signature, `v0=` + hex HMAC-SHA256
//!   under the signing secret of `v0:{X-Slack-Request-Timestamp}:{raw
//!   body}`, compared in constant time; a timestamp more than five minutes
//!   from now is refused, so a captured request cannot be replayed later.
//! - [`parse`]: the form-encoded `payload` JSON of a `block_actions`
//!   interaction: who clicked, which button, which promotion, where to answer.
//! - [`interactions`]: the axum handler. A request that does not verify is
//!   answered 401 and nothing is recorded. One that does is acknowledged at
//!   once (Slack waits three seconds at most); then, in a task of its own,
//!   the Slack user is mapped to a principal through `[[principal]] aliases
//!   = ["slack:U…"]`, the approval or rejection goes through the same use
//!   case as the gRPC call (the audit entry's actor is the alias, as for any
//!   alias), and the outcome, or why nothing was recorded, is posted to the
//!   interaction's `response_url`: only when it is under a configured
//!   `hooks_url` (same scheme, host and port, path under its path), never
//!   anywhere else.
//!
//! A verified request can be replayed within its five minutes; that is
//! harmless here, since an approval or rejection already recorded for the
//! same person is a repeat the use cases answer without a new entry.

use crate::config::{Config, Live, Secret};
use crate::domain::model::{Promotion, PromotionId};
use crate::error::Error;
use crate::promotions::Promotions;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Where the console serves the handler.
pub const PATH: &str = "/slack/interactions";
/// The largest interaction accepted; Slack's `block_actions` payloads are
/// a few KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// How far a request's timestamp may be from now, either way.
pub const MAX_SKEW_SECONDS: i64 = 5 * 60;
/// Attempts at posting to a `response_url`.
const RESPONSE_ATTEMPTS: u32 = 3;

/// Why an interaction was refused before anything was done (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no X-Slack-Request-Timestamp header, or not Unix seconds")]
    Timestamp,
    #[error("X-Slack-Request-Timestamp is more than 5 minutes from now")]
    Stale,
    #[error("no X-Slack-Signature header, or not `v0=<hex>`")]
    Malformed,
    #[error("X-Slack-Signature does not verify with any configured signing secret")]
    Signature,
}

fn mac(secret: &Secret, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = crate::notify::hmac(secret);
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// `v0=<hex HMAC-SHA256 of "v0:{timestamp}:{body}">`, as Slack signs.
pub fn sign(secret: &Secret, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Whether `signature` is Slack's signature of `body` at `timestamp` under
/// one of `secrets`, and `timestamp` (Unix seconds) is within
/// [`MAX_SKEW_SECONDS`] of `now`.
pub fn verify(
    secrets: &[Secret],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), Refusal> {
    let timestamp = timestamp.ok_or(Refusal::Timestamp)?;
    let at: i64 = timestamp.parse().map_err(|_| Refusal::Timestamp)?;
    if now.abs_diff(at) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(Refusal::Stale);
    }
    let sent = signature
        .and_then(|s| s.strip_prefix("v0="))
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Refusal::Malformed)?;
    // `verify_slice` compares in constant time.
    match secrets
        .iter()
        .any(|s| mac(s, timestamp, body).verify_slice(&sent).is_ok())
    {
        true => Ok(()),
        false => Err(Refusal::Signature),
    }
}

/// What the button asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

/// A button click on one of prodgate's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    /// The Slack user id (`U0123ABCD`).
    pub user: String,
    pub decision: Decision,
    pub promotion: PromotionId,
    pub response_url: Option<String>,
}

#[derive(serde::Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: Option<User>,
    #[serde(default)]
    actions: Vec<PayloadAction>,
    response_url: Option<String>,
}

#[derive(serde::Deserialize)]
struct User {
    id: String,
}

#[derive(serde::Deserialize)]
struct PayloadAction {
    action_id: String,
    #[serde(default)]
    value: String,
}

/// The button click a verified body holds; `None` for an interaction that
/// is not one of prodgate's buttons (Slack sends others to the same URL).
pub fn parse(body: &[u8]) -> Result<Option<Interaction>, String> {
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v)
        .ok_or("no `payload` field")?;
    let p: Payload = serde_json::from_str(&payload)
        .map_err(|e| format!("`payload` is not an interaction: {e}"))?;
    if p.kind != "block_actions" {
        return Ok(None);
    }
    let Some(action) = p.actions.first() else {
        return Ok(None);
    };
    let decision = match action.action_id.as_str() {
        "approve" => Decision::Approve,
        "reject" => Decision::Reject,
        _ => return Ok(None),
    };
    let promotion = action.value.parse().map_err(|_| {
        format!(
            "the button's value {:?} is not a promotion id",
            action.value
        )
    })?;
    let user = p.user.ok_or("no `user`")?.id;
    if user.is_empty() {
        return Err("an empty `user.id`".into());
    }
    Ok(Some(Interaction {
        user,
        decision,
        promotion,
        response_url: p.response_url,
    }))
}

/// Whether `url` is under `base`: same scheme, host and port, and a path
/// that starts with `base`'s (which ends with `/`), no user part.
pub fn under(url: &str, base: &str) -> bool {
    let (Ok(u), Ok(b)) = (reqwest::Url::parse(url), reqwest::Url::parse(base)) else {
        return false;
    };
    u.scheme() == b.scheme()
        && u.host_str().is_some()
        && u.host_str() == b.host_str()
        && u.port_or_known_default() == b.port_or_known_default()
        && u.username().is_empty()
        && u.password().is_none()
        && u.path().starts_with(b.path())
}

/// What the interactions handler needs: the running config (principals and
/// their aliases), the use cases, and the Slack notifiers' signing secrets
/// and `hooks_url`s (bound at start, as the notifiers are).
#[derive(Clone)]
pub struct SlackInteractions {
    inner: Arc<Inner>,
}

struct Inner {
    config: Live,
    promotions: Promotions,
    secrets: Vec<Secret>,
    hooks: Vec<String>,
    client: reqwest::Client,
    /// The answers in flight, so shutdown (and tests) can wait for them.
    tasks: TaskTracker,
}

impl SlackInteractions {
    /// `None` when no `[[notify]] kind = "slack"` has a signing secret:
    /// then nothing could verify, and the console should not route
    /// [`PATH`] at all.
    pub fn new(config: Live, promotions: Promotions) -> Result<Option<Self>, String> {
        let running: Arc<Config> = config.get();
        let secrets: Vec<Secret> = running
            .slack
            .iter()
            .filter_map(|s| s.signing_secret.clone())
            .collect();
        if secrets.is_empty() {
            return Ok(None);
        }
        let hooks = running.slack.iter().map(|s| s.hooks_url.clone()).collect();
        let client = super::client().map_err(|e| format!("cannot build the Slack client: {e}"))?;
        Ok(Some(SlackInteractions {
            inner: Arc::new(Inner {
                config,
                promotions,
                secrets,
                hooks,
                client,
                tasks: TaskTracker::new(),
            }),
        }))
    }

    /// `POST` [`PATH`] → [`interactions`], bodies over [`MAX_BODY`] refused.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route(PATH, axum::routing::post(interactions))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }

    /// Waits until every answer in flight has been recorded and posted.
    pub async fn settled(&self) {
        let tasks = &self.inner.tasks;
        tasks.close();
        tasks.wait().await;
        tasks.reopen();
    }
}

/// The handler of [`PATH`]: 401 when the signature or timestamp does not
/// verify (nothing recorded), 413 over [`MAX_BODY`], 400 for a verified
/// body that is no interaction, otherwise 200 at once, the decision and
/// its answer to `response_url` following in a task of their own.
pub async fn interactions(
    State(s): State<SlackInteractions>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.len() > MAX_BODY {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(r) = verify(
        &s.inner.secrets,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        // The wall clock, not the injected one: Slack's timestamps are its.
        i64::try_from(crate::notify::unix_seconds()).unwrap_or(i64::MAX),
    ) {
        // Debug, as for refused gRPC credentials: anyone can send these.
        tracing::debug!(refused = %r, "Slack interaction refused");
        return (StatusCode::UNAUTHORIZED, r.to_string()).into_response();
    }
    let interaction = match parse(&body) {
        Ok(Some(i)) => i,
        Ok(None) => return StatusCode::OK.into_response(),
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let inner = s.inner.clone();
    s.inner
        .tasks
        .spawn(async move { act(&inner, interaction).await });
    StatusCode::OK.into_response()
}

/// Records the decision as the mapped principal and answers it.
async fn act(inner: &Inner, i: Interaction) {
    let alias = format!("slack:{}", i.user);
    let config = inner.config.get();
    let sentence = match config.principal_by_alias(&alias) {
        None => {
            tracing::warn!(%alias, promotion = i.promotion, "Slack user is no principal's alias; nothing recorded");
            format!(
                "Nothing recorded: your Slack user is not a prodgate principal. An operator can add \
                 \"{alias}\" to the `aliases` of your [[principal]]."
            )
        }
        Some(who) => {
            let done = match i.decision {
                Decision::Approve => {
                    inner
                        .promotions
                        .approve(who, i.promotion, String::new(), false)
                        .await
                }
                Decision::Reject => {
                    inner
                        .promotions
                        .reject(who, i.promotion, String::new())
                        .await
                }
            };
            match done {
                Ok(p) => outcome(i.decision, &p),
                Err(e) => refusal(&e, i.promotion),
            }
        }
    };
    let Some(url) = i.response_url else { return };
    if !inner.hooks.iter().any(|h| under(&url, h)) {
        tracing::warn!(
            promotion = i.promotion,
            "the interaction's response_url is not under any hooks_url; not answered"
        );
        return;
    }
    respond(&inner.client, &url, &sentence).await;
}

/// The sentence of a recorded decision: of the release, when `p` is one's
/// member (its members were decided together).
fn outcome(d: Decision, p: &Promotion) -> String {
    if let Some(rid) = p.release_id {
        let what = format!("release {rid} (to {})", p.environment);
        return match d {
            // The state of the whole shows in the release's message.
            Decision::Approve => format!("You approved {what}: every member at once."),
            Decision::Reject => format!("You rejected {what}: every member at once."),
        };
    }
    let what = format!("{} to {}", p.repository, p.environment);
    match d {
        Decision::Approve => format!(
            "You approved promotion {} ({what}); it is now {}.",
            p.id,
            p.state.label()
        ),
        Decision::Reject => format!("You rejected promotion {} ({what}).", p.id),
    }
}

/// Why nothing was recorded, as the clicker can act on it; a fault of
/// prodgate's own is logged and not described.
fn refusal(e: &Error, id: PromotionId) -> String {
    match e {
        Error::Internal(_) | Error::Store(_) | Error::Registry(_) | Error::ShuttingDown => {
            tracing::error!(promotion = id, error = %e, "a Slack decision failed");
            format!(
                "Nothing recorded for promotion {id}: prodgate could not complete it just now; \
                 try again in a moment."
            )
        }
        Error::InvalidArgument { .. }
        | Error::NotRequester { .. }
        | Error::PromotionNotFound(_)
        | Error::UnknownEnvironment { .. }
        | Error::UnknownRegistry { .. }
        | Error::SourceNotFound(_)
        | Error::RequestIdReused { .. }
        | Error::PolicyNotFound(_)
        | Error::OutOfRange { .. }
        | Error::NothingDeployed { .. }
        | Error::Expired { .. }
        | Error::NotCheckReporter { .. }
        | Error::TooManyChecks { .. }
        | Error::NotBreakGlass { .. }
        | Error::RollbackRefused { .. }
        | Error::Blocked(_)
        | Error::Unclaimed { .. }
        | Error::TooManyWatches { .. }
        | Error::Domain(_) => format!("Nothing recorded: {e}."),
    }
}

/// Posts `text` to `url` as an ephemeral answer (only the clicker sees it),
/// a few attempts at most; never follows a redirect.
async fn respond(client: &reqwest::Client, url: &str, text: &str) {
    let body = serde_json::json!({
        "response_type": "ephemeral",
        "replace_original": false,
        "text": text,
    })
    .to_string();
    let mut backoff =
        crate::backoff::Delays::new(Duration::from_millis(300), Duration::from_secs(5));
    for attempt in 1..=RESPONSE_ATTEMPTS {
        let sent = client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        // The URL itself is a credential for the next 30 minutes: not logged.
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::warn!(attempt, status = %r.status(), "Slack response_url refused the answer")
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e.without_url(), "Slack response_url unreachable")
            }
        }
        if attempt < RESPONSE_ATTEMPTS {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_531_420_618;

    #[test]
    fn slacks_documented_example_verifies() {
        // api.slack.com/authentication/verifying-requests-from-slack
        let secret = Secret::new(b"8f742231b10e8888abcd99yyyzzz85a5".to_vec());
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(sign(&secret, "1531420618", body), sig);
        let other = Secret::new(b"other".to_vec());
        let both = [other.clone(), secret.clone()];
        assert_eq!(
            verify(&both, Some("1531420618"), Some(sig), body, NOW),
            Ok(())
        );
        assert_eq!(
            verify(&[other], Some("1531420618"), Some(sig), body, NOW),
            Err(Refusal::Signature)
        );
        let mut tampered = body.to_vec();
        tampered[0] = b'T';
        assert_eq!(
            verify(&both, Some("1531420618"), Some(sig), &tampered, NOW),
            Err(Refusal::Signature)
        );
    }

    #[test]
    fn timestamps_more_than_five_minutes_away_are_refused() {
        let secret = Secret::new(b"s".to_vec());
        let at = |t: i64| {
            let ts = t.to_string();
            verify(
                std::slice::from_ref(&secret),
                Some(&ts),
                Some(&sign(&secret, &ts, b"x")),
                b"x",
                NOW,
            )
        };
        assert_eq!(at(NOW - 300), Ok(()));
        assert_eq!(at(NOW + 300), Ok(()));
        assert_eq!(at(NOW - 301), Err(Refusal::Stale));
        assert_eq!(at(NOW + 301), Err(Refusal::Stale));
        let s = [secret.clone()];
        assert_eq!(
            verify(&s, None, Some("v0=00"), b"x", NOW),
            Err(Refusal::Timestamp)
        );
        assert_eq!(
            verify(&s, Some("soon"), Some("v0=00"), b"x", NOW),
            Err(Refusal::Timestamp)
        );
        let ts = NOW.to_string();
        assert_eq!(
            verify(&s, Some(&ts), None, b"x", NOW),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            verify(&s, Some(&ts), Some("v1=00"), b"x", NOW),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            verify(&s, Some(&ts), Some("v0=zz"), b"x", NOW),
            Err(Refusal::Malformed)
        );
    }

    fn form(payload: &serde_json::Value) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
            .into_bytes()
    }

    #[test]
    fn block_actions_of_prodgates_buttons_are_parsed() {
        let click = |action: &str, value: &str| {
            form(&serde_json::json!({
                "type": "block_actions",
                "user": {"id": "U0BOB", "username": "bob"},
                "actions": [{"action_id": action, "block_id": "prodgate", "value": value}],
                "response_url": "https://hooks.slack.com/actions/T1/2/x",
            }))
        };
        assert_eq!(
            parse(&click("approve", "42")),
            Ok(Some(Interaction {
                user: "U0BOB".into(),
                decision: Decision::Approve,
                promotion: 42,
                response_url: Some("https://hooks.slack.com/actions/T1/2/x".into()),
            }))
        );
        assert_eq!(
            parse(&click("reject", "7")).unwrap().unwrap().decision,
            Decision::Reject
        );
        assert_eq!(parse(&click("other", "7")), Ok(None));
        assert!(parse(&click("approve", "seven")).is_err());
        assert_eq!(
            parse(&form(&serde_json::json!({"type": "view_submission"}))),
            Ok(None)
        );
        assert!(parse(b"nothing=here").is_err());
        assert!(parse(b"payload=%7Bnot%20json").is_err());
    }

    #[test]
    fn answers_go_only_under_the_hooks_base() {
        let base = "https://hooks.slack.com/";
        assert!(under("https://hooks.slack.com/actions/T1/2/x", base));
        assert!(under("https://hooks.slack.com:443/actions/T1/2/x", base));
        assert!(!under("http://hooks.slack.com/actions/T1/2/x", base));
        assert!(!under("https://hooks.slack.com.evil.test/actions", base));
        assert!(!under("https://evil.test/https://hooks.slack.com/", base));
        assert!(!under("https://hooks.slack.com:8443/actions", base));
        assert!(!under("https://user@hooks.slack.com/actions", base));
        assert!(!under("not a url", base));
        let fake = "http://127.0.0.1:8080/hooks/";
        assert!(under("http://127.0.0.1:8080/hooks/a/b", fake));
        assert!(!under("http://127.0.0.1:8080/hooksevil/a", fake));
        assert!(!under("http://127.0.0.1:8080/elsewhere", fake));
        assert!(!under("http://127.0.0.1:8081/hooks/a", fake));
    }
}
