//! Real parts for integration tests: Debian's `docker-registry`, a
//! `prodgate serve` process, each on a free loopback port with temp storage,
//! a private PostgreSQL cluster for the PostgreSQL backend, and a headless
//! chromium for the browser tests.
#![allow(dead_code)]
pub mod browser;
pub mod console;
pub mod hostile;
pub mod idp;
pub mod oidc;
pub mod postgres;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod slack;
pub mod token_server;
pub mod webhook;

use registry::TestRegistry;
use server::{TestServer, standard_config};

/// A registry and a prodgate server configured for it.
pub struct World {
    pub registry: TestRegistry,
    pub server: TestServer,
}

impl World {
    pub async fn start() -> World {
        let registry = TestRegistry::start().await;
        let server = TestServer::start(&standard_config(&registry.host));
        World { registry, server }
    }

    /// `<registry host>/<path>`, the repository name clients send.
    pub fn repo(&self, path: &str) -> String {
        format!("{}/{}", self.registry.host, path)
    }
}

use prodgate::pb::{
    self, ApproveRequest, GetPromotionRequest, HistoryRequest, PromotionState,
    RequestPromotionRequest,
};
use server::Client;
use std::time::{Duration, Instant};

/// Every History entry matching `filter`, following page tokens.
pub async fn history(c: &mut Client, filter: HistoryRequest) -> Vec<pb::AuditEntry> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .history(HistoryRequest {
                page_token: token,
                ..filter.clone()
            })
            .await
            .expect("history")
            .into_inner();
        all.extend(page.entries);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

/// Every audit entry of promotion `id`, in order.
pub async fn promotion_history(c: &mut Client, id: &str) -> Vec<pb::AuditEntry> {
    history(
        c,
        HistoryRequest {
            promotion_id: id.into(),
            ..Default::default()
        },
    )
    .await
}

/// The entries of promotion `id` with `action`.
pub async fn entries(c: &mut Client, id: &str, action: pb::AuditAction) -> Vec<pb::AuditEntry> {
    promotion_history(c, id)
        .await
        .into_iter()
        .filter(|e| e.action == action as i32)
        .collect()
}

/// The audit actions recorded for one promotion, in order.
pub async fn actions_of(c: &mut Client, promotion_id: &str) -> Vec<pb::AuditAction> {
    promotion_history(c, promotion_id)
        .await
        .iter()
        .map(|e| pb::AuditAction::try_from(e.action).expect("known action"))
        .collect()
}

pub async fn get(c: &mut Client, id: &str) -> pb::Promotion {
    c.get_promotion(GetPromotionRequest {
        promotion_id: id.to_owned(),
    })
    .await
    .expect("get")
    .into_inner()
}

/// Polls until `id` reaches `want`, failing after `limit`. The states come
/// from a background worker in another process, so polling is the only way
/// to observe them.
pub async fn wait_for_state(
    c: &mut Client,
    id: &str,
    want: PromotionState,
    limit: Duration,
) -> pb::Promotion {
    let deadline = Instant::now() + limit;
    loop {
        let p = get(c, id).await;
        if p.state == want as i32 {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {want:?}: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A RequestPromotion of `source` in `repo` to `env`.
pub fn request_to(repo: &str, source: &str, env: &str) -> RequestPromotionRequest {
    RequestPromotionRequest {
        repository: repo.to_owned(),
        source: source.to_owned(),
        environment: env.to_owned(),
        reason: format!("ship {source} to {env}"),
        request_id: String::new(),
        break_glass: false,
    }
}

/// An Approve of `id` without a comment.
pub fn approve(id: &str) -> ApproveRequest {
    ApproveRequest {
        promotion_id: id.to_owned(),
        comment: String::new(),
        break_glass: false,
    }
}

/// The documented hash of an entry (README "The audit hash"), computed here
/// independently of prodgate's code, attributes included.
pub fn expected_hash(e: &pb::AuditEntry) -> String {
    use sha2::{Digest, Sha256};
    let mut b = Vec::new();
    let put = |b: &mut Vec<u8>, f: &str| {
        b.extend_from_slice(&(f.len() as u32).to_be_bytes());
        b.extend_from_slice(f.as_bytes());
    };
    b.extend_from_slice(&hex::decode(&e.prev_hash).expect("hex prev_hash"));
    b.extend_from_slice(&e.sequence.to_be_bytes());
    let t = e.time.expect("time");
    b.extend_from_slice(&t.seconds.to_be_bytes());
    b.extend_from_slice(&(t.nanos as u32).to_be_bytes());
    b.extend_from_slice(&(e.action as u32).to_be_bytes());
    for f in [
        &e.actor,
        &e.promotion_id,
        &e.repository,
        &e.environment,
        &e.digest,
        &e.previous_digest,
        &e.comment,
    ] {
        put(&mut b, f);
    }
    if !e.attributes.is_empty() {
        b.extend_from_slice(&(e.attributes.len() as u32).to_be_bytes());
        let mut keys: Vec<&String> = e.attributes.keys().collect();
        // Ascending byte order of the key.
        keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for k in keys {
            put(&mut b, k);
            put(&mut b, &e.attributes[k]);
        }
    }
    hex::encode(Sha256::digest(&b))
}

/// The whole log is one chain: sequences 1..=n without a gap, each hash
/// recomputed from its fields, each prev_hash the hash before it; and the
/// server's own check agrees.
pub async fn assert_one_chain(c: &mut Client) -> Vec<pb::AuditEntry> {
    let entries = history(c, HistoryRequest::default()).await;
    let mut prev = "0".repeat(64);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1, "a gap before {e:?}");
        assert_eq!(e.prev_hash, prev, "entry {}", e.sequence);
        assert_eq!(e.hash, expected_hash(e), "entry {}", e.sequence);
        prev = e.hash.clone();
    }
    let v = c
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.entries_checked, entries.len() as u64);
    assert_eq!(v.head_hash, prev);
    entries
}

/// The Python that `scripts/python-env` makes (grpcio-tools, grpcio-status,
/// securesystemslib): `PRODGATE_TEST_PYTHON` as `scripts/test` sets it, or
/// that script's default venv.
pub fn python() -> std::path::PathBuf {
    let python = std::env::var_os("PRODGATE_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/prodgate-proto-venv/bin/python".into());
    assert!(
        python.exists(),
        "{} does not exist: run scripts/test, or set PRODGATE_TEST_PYTHON to the python \
         scripts/python-env prints",
        python.display()
    );
    python
}

/// The Prometheus text at `http://{addr}/metrics`.
pub async fn scrape(addr: &str) -> String {
    // reqwest is built without a crypto provider of its own.
    prodgate::server::install_crypto_provider();
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

/// `name{labels} value` lines of a Prometheus text exposition.
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_owned(), v.parse::<f64>().expect("sample value"))
        })
        .collect()
}

/// The value of sample `name` (with its labels, as exposed) at the
/// Prometheus endpoint `http://{addr}/metrics`; -1 when it is absent.
pub async fn metric(addr: &str, name: &str) -> f64 {
    parse_metrics(&scrape(addr).await)
        .get(name)
        .copied()
        .unwrap_or(-1.0)
}
