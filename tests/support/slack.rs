//! A fake Slack of the tests' own, on a free loopback port: the Web API
//! methods prodgate calls (`/api/chat.postMessage`, `/api/chat.update`),
//! a `response_url` base (`/hooks/…`) and a place nobody should post to
//! (`/elsewhere/…`; any other path too). Every call is recorded; tests wait for calls with a
//! deadline, woken by each new one.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `chat.postMessage`, `chat.update`, `hooks/<rest>` or `elsewhere/<rest>`.
    pub what: String,
    pub authorization: Option<String>,
    pub body: Value,
    /// What the fake answered (a Web API call's JSON), or null.
    pub answered: Value,
}

#[derive(Default)]
struct Recorded {
    calls: Mutex<Vec<Call>>,
    /// Web API calls still to answer with HTTP 429 `Retry-After: 1`.
    rate_limited: Mutex<u32>,
}

#[derive(Clone)]
struct Fake {
    recorded: Arc<Recorded>,
    changed: Arc<watch::Sender<usize>>,
}

impl Fake {
    fn record(&self, what: String, headers: &HeaderMap, body: Value, answered: Value) {
        let mut calls = self.recorded.calls.lock().unwrap();
        calls.push(Call {
            what,
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
            answered,
        });
        self.changed.send_replace(calls.len());
    }
}

pub struct FakeSlack {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    fake: Fake,
    _server: tokio::task::JoinHandle<()>,
}

/// The channel id the fake answers with (the config may name a channel).
pub const CHANNEL_ID: &str = "C0RELEASES";

impl FakeSlack {
    pub async fn start() -> FakeSlack {
        let fake = Fake {
            recorded: Arc::default(),
            changed: Arc::new(watch::Sender::new(0)),
        };
        let app = Router::new()
            .route("/api/{method}", post(api))
            .route("/hooks/{*rest}", post(hook))
            .route("/elsewhere/{*rest}", post(elsewhere))
            .fallback(other)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Slack");
        let addr = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake Slack serves");
        });
        FakeSlack {
            base: format!("http://{addr}"),
            fake,
            _server: server,
        }
    }

    /// `api_url` for the config.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base)
    }

    /// `hooks_url` for the config.
    pub fn hooks_url(&self) -> String {
        format!("{}/hooks/", self.base)
    }

    /// The next `n` Web API calls are answered HTTP 429 with `Retry-After: 1`.
    pub fn rate_limit(&self, n: u32) {
        *self.fake.recorded.rate_limited.lock().unwrap() = n;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.fake.recorded.calls.lock().unwrap().clone()
    }

    /// The calls of one kind (`chat.postMessage`, `hooks/…` prefix, …).
    pub fn calls_to(&self, prefix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.what.starts_with(prefix))
            .collect()
    }

    /// Waits until `done` holds for the calls so far, failing after `limit`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Call]) -> bool,
    ) -> Vec<Call> {
        let mut changes = self.fake.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                panic!("fake Slack: no {what} within {limit:?}; calls: {calls:#?}");
            }
        }
    }
}

async fn api(
    State(fake): State<Fake>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut limited = fake.recorded.rate_limited.lock().unwrap();
        if *limited > 0 {
            *limited -= 1;
            drop(limited);
            fake.record(format!("429 {method}"), &headers, Value::Null, Value::Null);
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
        }
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return answer(json!({"ok": false, "error": "invalid_json"}));
    };
    if headers.get("authorization").is_none() {
        return answer(json!({"ok": false, "error": "not_authed"}));
    }
    let reply = match method.as_str() {
        "chat.postMessage" => {
            let n = fake.recorded.calls.lock().unwrap().len();
            json!({"ok": true, "channel": CHANNEL_ID, "ts": format!("1700000000.{n:06}")})
        }
        "chat.update" => json!({"ok": true, "channel": json["channel"], "ts": json["ts"]}),
        _ => json!({"ok": false, "error": "unknown_method"}),
    };
    fake.record(method, &headers, json, reply.clone());
    answer(reply)
}

/// A Web API answer (axum's `Json` needs a feature prodgate does not build).
fn answer(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

async fn hook(
    State(fake): State<Fake>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.record(format!("hooks/{rest}"), &headers, json, Value::Null);
    StatusCode::OK
}

async fn elsewhere(
    State(fake): State<Fake>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.record(format!("elsewhere/{rest}"), &headers, json, Value::Null);
    StatusCode::OK
}

/// Any other path: recorded as `other <path>`, answered 404.
async fn other(State(fake): State<Fake>, uri: axum::http::Uri, headers: HeaderMap) -> StatusCode {
    fake.record(
        format!("other {}", uri.path()),
        &headers,
        Value::Null,
        Value::Null,
    );
    StatusCode::NOT_FOUND
}
