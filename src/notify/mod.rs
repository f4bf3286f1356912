//! Webhook notifications: a JSON POST per promotion event (from the store's
//! changes) and per drift entry (from its promotion-less records) to each
//! configured `[[notify]]` URL that subscribed to it. Each webhook has its
//! own bounded queue and delivery task with retries, so a slow or dead
//! receiver never blocks or fails a promotion; when its queue is full,
//! events are dropped with a warning. [`slack`] owns the `kind = "slack"`
//! entries: approval requests in a channel, and their buttons.
//!
//! Every delivery is signed when its webhook has a `secret_file`, twice
//! with the same key, so receivers can reuse the verification they have:
//! `x-prodgate-signature-256: sha256=<hex HMAC-SHA256 of the body>` (the
//! scheme GitHub webhooks use) and, as the Standard Webhooks specification
//! has it, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "<webhook-id>.<webhook-timestamp>.<body>">`, whose signed timestamp lets
//! a receiver refuse replays. `x-prodgate-event` names the event;
//! `x-prodgate-delivery` and `webhook-id` are one random id, the same on
//! every retry of one delivery; `webhook-timestamp` is the attempt's time in
//! Unix seconds (so each attempt is signed anew). The body carries the audit
//! entry's `sequence` and `entry_hash`.
//!
//! A release is one item: the entries one write recorded for its members
//! (its request, its approval, its tags moved; see [`steps`]) are one
//! delivery, whose top-level fields are its first member's and whose
//! `members` lists every member entry of that step (promotion id,
//! repository, tag, digests, state, `sequence`, `entry_hash`), in commit
//! order. Every body carries `release_id`: the release's id, or `""`.
//!
//! Redirects are never followed: a receiver's 3xx is a failed attempt. A
//! followed redirect would hand the signed body to an address nobody
//! configured (and 302/303 would turn the POST into a GET).

pub mod slack;
pub mod steps;

use crate::backoff::Delays;
use crate::config::{NotifyConfig, NotifyEvent, Secret};
use crate::domain::audit::AuditEntry;
use crate::domain::model::{Action, Promotion, State};
use crate::pb;
use crate::store::{Change, Store};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::time::{Duration, SystemTime};
use steps::{Step, Steps};
use tokio::sync::{broadcast, mpsc};

const QUEUE: usize = 1000;
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(5);

/// The body of a notification. `sequence` and `entry_hash` name the audit
/// entry it reports, so a receiver can de-duplicate retried deliveries and
/// check the entry against `History`; `action` is that entry's action (as
/// the proto names it). A drift notification is about no promotion: its
/// promotion fields are empty, `digest` and `previous_digest` are the
/// entry's. A release step's notification is its first member's, with
/// `release_id` and every member entry of the step in `members`.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub event: &'static str,
    pub action: &'static str,
    pub sequence: u64,
    pub entry_hash: String,
    pub promotion_id: String,
    pub repository: String,
    pub environment: String,
    pub target_tag: String,
    pub digest: String,
    pub state: &'static str,
    pub requested_by: String,
    pub reason: String,
    pub approvers: Vec<String>,
    pub required_approvals: u32,
    pub previous_digest: String,
    pub failure_message: String,
    pub superseded_by: String,
    /// The release the promotion is a member of, or empty.
    pub release_id: String,
    /// A release step's member entries, in commit order; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
}

/// One member entry of a release step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub promotion_id: String,
    pub repository: String,
    pub target_tag: String,
    pub digest: String,
    pub previous_digest: String,
    pub state: &'static str,
    pub sequence: u64,
    pub entry_hash: String,
}

impl Member {
    fn of(c: &Change) -> Member {
        let p = &c.promotion;
        Member {
            promotion_id: p.id.to_string(),
            repository: p.repository.clone(),
            target_tag: p.target_tag.clone(),
            digest: p.digest.clone(),
            previous_digest: p.previous_digest.clone(),
            state: p.state.label(),
            sequence: c.entry.sequence,
            entry_hash: hex::encode(c.entry.hash),
        }
    }
}

/// The events a committed change represents: the one its audit entry's
/// action names, and `break_glass` when the call used break-glass.
pub fn events_of(c: &Change) -> Vec<NotifyEvent> {
    let mut events: Vec<NotifyEvent> = event_of(c).into_iter().collect();
    // A request that needs no approval may wait at once.
    if c.entry.event.action == Action::Requested && c.promotion.state == State::Waiting {
        events.push(NotifyEvent::Waiting);
    }
    if c.entry
        .event
        .attributes
        .get("break_glass")
        .map(String::as_str)
        == Some("true")
    {
        events.push(NotifyEvent::BreakGlass);
    }
    events
}

/// The event a committed change's action represents, if any. An approval
/// is an event only when it is the last one needed (the promotion became
/// APPROVED).
pub fn event_of(c: &Change) -> Option<NotifyEvent> {
    Some(match c.entry.event.action {
        Action::Requested => NotifyEvent::Requested,
        Action::Approved if c.promotion.state == State::Approved => NotifyEvent::Approved,
        Action::Approved if c.promotion.state == State::Waiting => NotifyEvent::Waiting,
        Action::Approved => return None,
        Action::GatesPassed => NotifyEvent::GatesPassed,
        Action::Applied => NotifyEvent::Promoted,
        Action::ApplyFailed => NotifyEvent::Failed,
        Action::Rejected => NotifyEvent::Rejected,
        Action::Cancelled => NotifyEvent::Cancelled,
        Action::Expired => NotifyEvent::Expired,
        Action::Superseded => NotifyEvent::Superseded,
        // Not a promotion's change (and not on the change stream).
        Action::CheckReported
        | Action::PolicyChanged
        | Action::DriftDetected
        | Action::DriftRestored => return None,
    })
}

/// The event an entry about no promotion represents, if any.
pub fn record_event(e: &AuditEntry) -> Option<NotifyEvent> {
    match e.event.action {
        Action::DriftDetected | Action::DriftRestored => Some(NotifyEvent::Drift),
        Action::CheckReported | Action::PolicyChanged => None,
        // Promotions' actions come as changes.
        Action::Requested
        | Action::Approved
        | Action::Rejected
        | Action::Cancelled
        | Action::Expired
        | Action::Applied
        | Action::ApplyFailed
        | Action::Superseded
        | Action::GatesPassed => None,
    }
}

/// `AUDIT_ACTION_APPLIED` and so on, as History shows it.
fn action_name(a: Action) -> &'static str {
    i32::try_from(a.number())
        .ok()
        .and_then(|n| pb::AuditAction::try_from(n).ok())
        .map_or("AUDIT_ACTION_UNSPECIFIED", |a| a.as_str_name())
}

fn record_notification(event: NotifyEvent, e: &AuditEntry) -> Notification {
    let ev = &e.event;
    Notification {
        event: event.name(),
        action: action_name(ev.action),
        sequence: e.sequence,
        entry_hash: hex::encode(e.hash),
        promotion_id: String::new(),
        repository: ev.repository.clone(),
        environment: ev.environment.clone(),
        target_tag: String::new(),
        digest: ev.digest.clone(),
        state: "",
        requested_by: String::new(),
        reason: String::new(),
        approvers: Vec::new(),
        required_approvals: 0,
        previous_digest: ev.previous_digest.clone(),
        failure_message: String::new(),
        superseded_by: String::new(),
        release_id: String::new(),
        members: Vec::new(),
    }
}

fn notification(event: NotifyEvent, c: &Change) -> Notification {
    let p: &Promotion = &c.promotion;
    Notification {
        event: event.name(),
        action: action_name(c.entry.event.action),
        sequence: c.entry.sequence,
        entry_hash: hex::encode(c.entry.hash),
        promotion_id: p.id.to_string(),
        repository: p.repository.clone(),
        environment: p.environment.clone(),
        target_tag: p.target_tag.clone(),
        digest: p.digest.clone(),
        state: p.state.label(),
        requested_by: p.requested_by.clone(),
        reason: p.reason.clone(),
        approvers: p.approvals.iter().map(|a| a.approver.clone()).collect(),
        required_approvals: p.required_approvals,
        previous_digest: p.previous_digest.clone(),
        failure_message: p.failure_message.clone(),
        superseded_by: p.superseded_by.map(|id| id.to_string()).unwrap_or_default(),
        release_id: p.release_id.map(|id| id.to_string()).unwrap_or_default(),
        members: Vec::new(),
    }
}

/// The notifications of a step, one per event any of its changes
/// represents, in order: a single change's as before; a release step's
/// top-level fields are those of its first member entry that represents
/// the event, and `members` holds every member entry of the step.
pub fn step_notifications(step: &Step) -> Vec<(NotifyEvent, Notification)> {
    let mut events: Vec<(NotifyEvent, &Change)> = Vec::new();
    for c in step.changes() {
        for e in events_of(c) {
            if !events.iter().any(|(seen, _)| *seen == e) {
                events.push((e, c));
            }
        }
    }
    events
        .into_iter()
        .map(|(event, c)| {
            let mut n = notification(event, c);
            if step.release().is_some() {
                n.members = step.changes().iter().map(Member::of).collect();
            }
            (event, n)
        })
        .collect()
}

/// Fans committed changes (a release's step as one) and drift records out
/// to the webhooks until the change stream closes. `store` is read for a
/// release's member count.
pub async fn run(
    hooks: Vec<NotifyConfig>,
    store: Store,
    changes: broadcast::Receiver<Change>,
    mut records: broadcast::Receiver<AuditEntry>,
) {
    if hooks.is_empty() {
        return;
    }
    let client = match client(TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; notifications are off");
            return;
        }
    };
    let queues: Vec<(NotifyConfig, mpsc::Sender<Notification>)> = hooks
        .into_iter()
        .map(|h| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(deliver(client.clone(), h.url.clone(), h.secret.clone(), rx));
            (h, tx)
        })
        .collect();
    let mut changes = Steps::new(changes, store);
    let send = |event: NotifyEvent, n: &dyn Fn() -> Notification| {
        for (hook, tx) in &queues {
            if hook.events.contains(&event) && tx.try_send(n()).is_err() {
                tracing::warn!(url = %shown(&hook.url), event = event.name(), "webhook queue full; event dropped");
            }
        }
    };
    let mut records_open = true;
    loop {
        tokio::select! {
            s = changes.next() => match s {
                Ok(step) => {
                    for (event, n) in step_notifications(&step) {
                        send(event, &|| n.clone());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "webhooks missed promotion changes");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            r = records.recv(), if records_open => match r {
                Ok(e) => {
                    if let Some(event) = record_event(&e) {
                        send(event, &|| record_notification(event, &e));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "webhooks missed audit entries about no promotion");
                }
                Err(broadcast::error::RecvError::Closed) => records_open = false,
            },
        }
    }
}

/// The HTTP client of every notification (webhooks, Slack): a timeout, no
/// proxy, no redirects followed, prodgate's user agent.
fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("prodgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// HMAC-SHA256 under `key`, for webhook and Slack signatures.
pub(crate) fn hmac(key: &Secret) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

/// `sha256=<hex HMAC-SHA256 of body under key>`.
pub fn signature(key: &Secret, body: &[u8]) -> String {
    let mut mac = hmac(key);
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Standard Webhooks signature: `v1,<base64 HMAC-SHA256 under key of
/// "<id>.<timestamp>.<body>">`. The specification's libraries take the key
/// as base64 (`whsec_` + base64 of the same bytes).
pub fn standard_signature(key: &Secret, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = hmac(key);
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The headers of one attempt of a delivery: the event, the delivery id
/// (also as `webhook-id`), the attempt's `webhook-timestamp`, and with a
/// key both signatures.
fn attempt_headers(
    event: &'static str,
    delivery: &str,
    timestamp: u64,
    body: &[u8],
    key: Option<&Secret>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("x-prodgate-event", event.to_owned()),
        ("x-prodgate-delivery", delivery.to_owned()),
        ("webhook-id", delivery.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
    ];
    if let Some(key) = key {
        headers.push(("x-prodgate-signature-256", signature(key, body)));
        headers.push((
            "webhook-signature",
            standard_signature(key, delivery, timestamp, body),
        ));
    }
    headers
}

/// Now in Unix seconds, from the wall clock rather than the injected
/// [`crate::clock::Clock`]: receivers hold `webhook-timestamp` against
/// their own wall clock to refuse replays.
fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A webhook URL as logs show it: scheme, host, port and path. A URL may
/// carry a token in its user part or query (`?token=…`), and secrets never
/// reach a log.
fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.query().is_some() { "?…" } else { "" };
            format!(
                "{}://{}{port}{}{rest}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            )
        }
        Err(_) => "(a URL that does not parse)".to_owned(),
    }
}

async fn deliver(
    client: reqwest::Client,
    target: String,
    secret: Option<Secret>,
    mut rx: mpsc::Receiver<Notification>,
) {
    let url = shown(&target);
    while let Some(n) = rx.recv().await {
        let body = match serde_json::to_vec(&n) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a notification");
                continue;
            }
        };
        // One random id per delivery, the same on every retry of it:
        // receivers de-duplicate by it (or by the entry's sequence).
        let delivery = hex::encode(rand::random::<[u8; 16]>());
        // No cap: ATTEMPTS ends the doubling first.
        let mut backoff = Delays::new(FIRST_BACKOFF, Duration::MAX);
        for attempt in 1..=ATTEMPTS {
            let mut post = client
                .post(&target)
                .header(http::header::CONTENT_TYPE, "application/json");
            for (name, value) in
                attempt_headers(n.event, &delivery, unix_seconds(), &body, secret.as_ref())
            {
                post = post.header(name, value);
            }
            let sent = post.body(body.clone()).send().await;
            match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if r.status().is_redirection() => {
                    tracing::warn!(%url, attempt, status = %r.status(), "webhook answered with a redirect, which is not followed");
                }
                Ok(r) => tracing::warn!(%url, attempt, status = %r.status(), "webhook refused"),
                // Without the URL: reqwest's error names the whole of it.
                Err(e) => {
                    tracing::warn!(%url, attempt, error = %e.without_url(), "webhook unreachable")
                }
            }
            if attempt == ATTEMPTS {
                tracing::error!(%url, event = n.event, sequence = n.sequence, promotion = %n.promotion_id, "webhook gave up");
            } else {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_carry_no_credentials() {
        assert_eq!(
            shown("https://user:s3cret@hooks.example.com:8443/p/x?token=abc#f"),
            "https://hooks.example.com:8443/p/x?…"
        );
        assert_eq!(shown("http://127.0.0.1/hook"), "http://127.0.0.1/hook");
        assert!(!shown("not a url s3cret").contains("s3cret"));
    }

    #[test]
    fn a_break_glass_approval_is_also_a_break_glass_event() {
        use crate::domain::audit::{AuditEntry, GENESIS};
        use crate::domain::machine::{self, NewPromotion};
        use crate::domain::model::Time;
        use crate::domain::policy::{Approver, Principal};
        let who = |n: &str| Principal::new(n, vec![]);
        let config = crate::config::Config::parse(
            "[[principal]]\nname = \"bob\"\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000002\"\n\
             [[environment]]\nname = \"production\"\ntag = \"production\"\napprovers = [\"bob\"]\nrequired_approvals = 1\n",
        )
        .expect("config");
        let policy = config.environment("production").expect("production");
        assert_eq!(policy.approvers, vec![Approver::parse("bob")]);
        let new = NewPromotion {
            repository: "r.io/app".into(),
            environment: "production".into(),
            source: "staging".into(),
            digest: format!("sha256:{}", "1".repeat(64)),
            reason: "ship".into(),
            request_id: String::new(),
            project: String::new(),
            rollback: false,
        };
        let p = machine::request(1, new, &who("alice"), policy, Time::ZERO).promotion;
        let mut o = machine::approve(&p, &who("bob"), policy, "hotfix", Time::ZERO).unwrap();
        // What `decision::approve` makes of it where no other gate is configured.
        o.promotion.state = crate::domain::model::State::Approved;
        let change = |o: &machine::Outcome| Change {
            entry: AuditEntry::chain(GENESIS, 2, Time::ZERO, o.event.clone().unwrap()),
            promotion: o.promotion.clone(),
        };
        assert_eq!(events_of(&change(&o)), vec![NotifyEvent::Approved]);
        if let Some(e) = &mut o.event {
            e.attributes.insert("break_glass".into(), "true".into());
        }
        assert_eq!(
            events_of(&change(&o)),
            vec![NotifyEvent::Approved, NotifyEvent::BreakGlass]
        );
    }

    #[test]
    fn an_approval_that_waits_is_a_waiting_event_and_its_release_gates_passed() {
        use crate::domain::audit::{AuditEntry, GENESIS};
        use crate::domain::model::{Action, Event, Promotion, State, Time};
        let event = |action| Event {
            action,
            actor: "bob".into(),
            promotion_id: 1,
            repository: "r.io/app".into(),
            environment: "production".into(),
            digest: String::new(),
            previous_digest: String::new(),
            comment: String::new(),
            attributes: Default::default(),
        };
        let change = |action, state| {
            let mut promotion = Promotion {
                id: 1,
                repository: "r.io/app".into(),
                environment: "production".into(),
                target_tag: "production".into(),
                source: "staging".into(),
                digest: String::new(),
                state,
                requested_by: "alice".into(),
                reason: String::new(),
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
                waiting_for: vec!["soak".into()],
                not_before: None,
                release_id: None,
                last_apply_error: String::new(),
                apply_attempts: 0,
            };
            promotion.state = state;
            Change {
                entry: AuditEntry::chain(GENESIS, 2, Time::ZERO, event(action)),
                promotion,
            }
        };
        assert_eq!(
            events_of(&change(Action::Approved, State::Waiting)),
            vec![NotifyEvent::Waiting]
        );
        assert_eq!(
            events_of(&change(Action::Approved, State::PendingApproval)),
            Vec::<NotifyEvent>::new()
        );
        assert_eq!(
            events_of(&change(Action::GatesPassed, State::Approved)),
            vec![NotifyEvent::GatesPassed]
        );
        assert_eq!(
            events_of(&change(Action::Requested, State::Waiting)),
            vec![NotifyEvent::Requested, NotifyEvent::Waiting]
        );
        assert_eq!(NotifyEvent::Waiting.name(), "waiting");
        assert_eq!(NotifyEvent::GatesPassed.name(), "gates_passed");
    }

    #[test]
    fn a_release_step_is_one_notification_per_event_naming_every_member() {
        use crate::domain::model::State;
        use steps::tests::change;
        let mut changes: Vec<Change> = (10..13)
            .map(|id| change(id, Some(10), Action::Approved))
            .collect();
        for c in &mut changes {
            c.promotion.state = State::Approved;
        }
        // The last member still waits for a check.
        changes[2].promotion.state = State::Waiting;
        let step = Step::new(Some(10), changes).expect("a step");
        let sent = step_notifications(&step);
        let events: Vec<_> = sent
            .iter()
            .map(|(e, n)| (*e, n.promotion_id.as_str()))
            .collect();
        assert_eq!(
            events,
            [(NotifyEvent::Approved, "10"), (NotifyEvent::Waiting, "12")]
        );
        for (_, n) in &sent {
            assert_eq!(n.release_id, "10");
            let members: Vec<_> = n
                .members
                .iter()
                .map(|m| (m.promotion_id.as_str(), m.state, m.sequence))
                .collect();
            assert_eq!(
                members,
                [
                    ("10", "APPROVED", 10),
                    ("11", "APPROVED", 11),
                    ("12", "WAITING", 12)
                ]
            );
        }
        let body = serde_json::to_value(&sent[0].1).expect("json");
        assert_eq!(body["members"][1]["repository"], "r.io/app11");
        assert_eq!(
            body["members"][1]["entry_hash"],
            hex::encode(step.changes()[1].entry.hash)
        );

        // A single promotion: as before, with an empty release_id and no members.
        let one = Step::new(None, vec![change(9, None, Action::Requested)]).expect("a step");
        let sent = step_notifications(&one);
        assert_eq!(sent.len(), 1);
        let body = serde_json::to_value(&sent[0].1).expect("json");
        assert_eq!(body["release_id"], "");
        assert!(body.get("members").is_none(), "{body}");
    }

    #[test]
    fn drift_entries_are_drift_events_about_no_promotion() {
        use crate::domain::audit::GENESIS;
        use crate::domain::model::{Time, drift_detected, drift_restored, policy_changed};
        let entry = |e| AuditEntry::chain(GENESIS, 5, Time::ZERO, e);
        let detected = entry(drift_detected(
            "r.io/app",
            "production",
            "sha256:b",
            "sha256:a",
        ));
        assert_eq!(record_event(&detected), Some(NotifyEvent::Drift));
        let n = record_notification(NotifyEvent::Drift, &detected);
        assert_eq!(
            (n.event, n.action, n.sequence),
            ("drift", "AUDIT_ACTION_DRIFT_DETECTED", 5)
        );
        assert_eq!(
            (n.digest.as_str(), n.previous_digest.as_str()),
            ("sha256:b", "sha256:a")
        );
        assert_eq!(n.promotion_id, "");
        let restored = entry(drift_restored(
            "r.io/app",
            "production",
            "sha256:a",
            "sha256:b",
        ));
        assert_eq!(record_event(&restored), Some(NotifyEvent::Drift));
        assert_eq!(record_event(&entry(policy_changed("sha256:p"))), None);
    }

    #[test]
    fn standard_signatures_are_v1_base64_hmac_of_id_timestamp_and_body() {
        // The example of the Standard Webhooks specification and its
        // libraries' tests: secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.
        let key = Secret::new(
            base64::engine::general_purpose::STANDARD
                .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .expect("base64"),
        );
        assert_eq!(
            standard_signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn attempts_carry_both_signatures_only_with_a_key() {
        let names = |h: &[(&'static str, String)]| h.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        let value = |h: &[(&'static str, String)], name: &str| {
            h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        };
        let unsigned = attempt_headers("promoted", "d1", 1700000000, b"{}", None);
        assert_eq!(
            names(&unsigned),
            [
                "x-prodgate-event",
                "x-prodgate-delivery",
                "webhook-id",
                "webhook-timestamp"
            ]
        );
        assert_eq!(value(&unsigned, "webhook-id").as_deref(), Some("d1"));
        assert_eq!(
            value(&unsigned, "webhook-timestamp").as_deref(),
            Some("1700000000")
        );
        let key = Secret::new(b"Jefe".to_vec());
        let signed = attempt_headers("promoted", "d1", 1700000000, b"{}", Some(&key));
        assert_eq!(
            value(&signed, "x-prodgate-signature-256"),
            Some(signature(&key, b"{}"))
        );
        assert_eq!(
            value(&signed, "webhook-signature"),
            Some(standard_signature(&key, "d1", 1700000000, b"{}"))
        );
        // Each attempt has its own timestamp, so its own signature.
        let later = attempt_headers("promoted", "d1", 1700000001, b"{}", Some(&key));
        assert_ne!(
            value(&later, "webhook-signature"),
            value(&signed, "webhook-signature")
        );
        assert_eq!(value(&later, "webhook-id"), value(&signed, "webhook-id"));
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = Secret::new(b"Jefe".to_vec());
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
