//! A webhook receiver of the tests' own, on a free loopback port: it keeps
//! each delivery's headers and raw body, in the order received, and
//! answers 200. Signatures are checked the way a receiver would, from the
//! specifications, not from prodgate's code.

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use std::time::Duration;
use tokio::sync::mpsc;

/// One delivery: its headers and raw body.
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: String,
}

impl Delivery {
    /// Header `name`, which must be there.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// Whether both signatures verify under `key`: GitHub's
    /// `x-prodgate-signature-256` and Standard Webhooks' `webhook-signature`.
    pub fn signed_with(&self, key: &[u8]) -> bool {
        let id = self.header("webhook-id");
        let timestamp = self.header("webhook-timestamp");
        self.header("x-prodgate-signature-256") == github_signature(key, &self.body)
            && self.header("webhook-signature")
                == standard_signature(key, &id, &timestamp, &self.body)
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, as GitHub signs.
pub fn github_signature(key: &[u8], body: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("key");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, as Standard Webhooks
/// signs.
pub fn standard_signature(key: &[u8], id: &str, timestamp: &str, body: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`, the `url` for the config.
    pub url: String,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Delivery { headers, body });
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            rx,
        }
    }

    /// The next delivery, failing after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Delivery {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no webhook delivery within {limit:?}"))
            .expect("the receiver is open")
    }
}
