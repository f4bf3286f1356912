//! The drift watch end to end: a real `prodgate serve` with a short
//! `drift_check_interval` in front of a real registry whose production tag
//! is moved behind prodgate's back through the registry's own API.

mod support;

use prodgate::pb::{self, AuditAction, GetDeployedRequest, HistoryRequest, PromotionState};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, standard_config};
use support::{approve, expected_hash, history, request_to, wait_for_state};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(20);

/// The standard config with a fast drift watch, metrics, a webhook for
/// `drift`, and a project `restored/*` whose production restores drift.
fn config(registry_host: &str, metrics: &str, hook: &str) -> String {
    format!(
        "drift_check_interval = \"200ms\"\nmetrics_listen = \"{metrics}\"\n{}
[[project]]
name = \"restored\"
repositories = [\"{registry_host}/restored/*\"]
[[project.environment]]
name = \"production\"
restore_on_drift = true

[[notify]]
url = \"http://{hook}/hook\"
events = [\"drift\"]
",
        standard_config(registry_host)
    )
}

struct Setup {
    registry: TestRegistry,
    server: TestServer,
    hooks: mpsc::UnboundedReceiver<serde_json::Value>,
}

async fn start() -> Setup {
    use axum::{Router, routing::post};
    let (tx, hooks) = mpsc::unbounded_channel::<serde_json::Value>();
    let app = Router::new().route(
        "/hook",
        post(move |body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_str(&body).expect("json body"));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let hook = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host, "127.0.0.1:0", &hook));
    Setup {
        registry,
        server,
        hooks,
    }
}

impl Setup {
    /// Promotes the image pushed as `seed` under `staging` of `path` to
    /// production; returns its digest.
    async fn promote(&self, path: &str, seed: u64) -> String {
        let digest = self
            .registry
            .push_image(path, Some("staging"), 1024, seed)
            .await;
        let repo = format!("{}/{path}", self.registry.host);
        let p = self
            .server
            .client("alice")
            .await
            .request_promotion(request_to(&repo, "staging", "production"))
            .await
            .expect("request")
            .into_inner();
        let mut bob = self.server.client("bob").await;
        bob.approve(approve(&p.id)).await.expect("approve");
        wait_for_state(&mut bob, &p.id, PromotionState::Promoted, LIMIT).await;
        assert_eq!(
            self.registry.tag_digest(path, "production").await,
            Some(digest.clone())
        );
        digest
    }

    /// The metric samples, by name with labels.
    async fn metrics(&self) -> HashMap<String, f64> {
        support::parse_metrics(&support::scrape(self.server.metrics_addr()).await)
    }

    /// Manifest HEADs sent to the registry so far: each drift check of the
    /// one watched tag sends one.
    async fn heads(&self) -> f64 {
        self.metrics()
            .await
            .iter()
            .filter(|(k, _)| {
                k.starts_with("prodgate_registry_requests_total{operation=\"HEAD manifest\"")
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Waits until the watch has read the tags `n` more times.
    async fn wait_for_checks(&self, n: f64) {
        let want = self.heads().await + n;
        let deadline = Instant::now() + LIMIT;
        while self.heads().await < want {
            assert!(Instant::now() < deadline, "the drift watch stopped reading");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn next_hook(&mut self) -> serde_json::Value {
        tokio::time::timeout(LIMIT, self.hooks.recv())
            .await
            .expect("notification in time")
            .expect("receiver open")
    }
}

/// The drift entries of `repo`, oldest first.
async fn drift_entries(c: &mut Client, repo: &str) -> Vec<pb::AuditEntry> {
    let mut all = history(
        c,
        HistoryRequest {
            repository: repo.to_owned(),
            ..Default::default()
        },
    )
    .await;
    all.retain(|e| {
        e.action == AuditAction::DriftDetected as i32
            || e.action == AuditAction::DriftRestored as i32
    });
    all
}

/// Polls History until `repo` has `n` drift entries.
async fn wait_for_drift(c: &mut Client, repo: &str, n: usize) -> Vec<pb::AuditEntry> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let entries = drift_entries(c, repo).await;
        if entries.len() >= n {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "{repo}: {} drift entries, expected {n}: {entries:?}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn deployed(c: &mut Client, repo: &str, at: Option<prodgate::pb::Timestamp>) -> pb::Deployed {
    c.get_deployed(GetDeployedRequest {
        repository: repo.to_owned(),
        environment: "production".into(),
        at,
    })
    .await
    .expect("deployed")
    .into_inner()
}

fn action(e: &pb::AuditEntry) -> AuditAction {
    AuditAction::try_from(e.action).expect("known action")
}

#[tokio::test]
async fn an_out_of_band_push_is_recorded_once_per_digest_and_not_undone() {
    let mut s = start().await;
    let repo = format!("{}/team/app", s.registry.host);
    let approved = s.promote("team/app", 1).await;
    let mut carol = s.server.client("carol").await;
    assert!(!deployed(&mut carol, &repo, None).await.drifted);

    // Someone with push rights moves production to another image.
    let rogue = s
        .registry
        .push_image("team/app", Some("production"), 1024, 2)
        .await;
    let entries = wait_for_drift(&mut carol, &repo, 1).await;
    let e = &entries[0];
    assert_eq!(action(e), AuditAction::DriftDetected);
    assert_eq!(e.actor, "prodgate");
    assert_eq!(e.promotion_id, "");
    assert_eq!(e.repository, repo);
    assert_eq!(e.environment, "production");
    assert_eq!(e.digest, rogue);
    assert_eq!(e.previous_digest, approved);
    assert!(e.attributes.is_empty());
    assert_eq!(e.hash, expected_hash(e), "documented hash of a drift entry");

    let d = deployed(&mut carol, &repo, None).await;
    assert!(d.drifted);
    assert_eq!(
        d.digest, approved,
        "GetDeployed names what prodgate approved"
    );
    // Without restore_on_drift the tag is left where it was moved.
    assert_eq!(
        s.registry.tag_digest("team/app", "production").await,
        Some(rogue.clone())
    );
    let hook = s.next_hook().await;
    assert_eq!(hook["event"], "drift");
    assert_eq!(hook["action"], "AUDIT_ACTION_DRIFT_DETECTED");
    assert_eq!(hook["digest"], rogue.as_str());
    assert_eq!(hook["previous_digest"], approved.as_str());
    assert_eq!(hook["sequence"].as_u64(), Some(e.sequence));
    assert_eq!(hook["entry_hash"], e.hash.as_str());

    // More checks of the same digest add nothing.
    s.wait_for_checks(3.0).await;
    assert_eq!(drift_entries(&mut carol, &repo).await.len(), 1);

    // A second out-of-band digest is recorded, then a deleted tag.
    let second = s
        .registry
        .push_image("team/app", Some("production"), 1024, 3)
        .await;
    let entries = wait_for_drift(&mut carol, &repo, 2).await;
    assert_eq!(entries[1].digest, second);
    assert_eq!(entries[1].previous_digest, approved);
    s.registry.delete_manifest("team/app", &second).await;
    let entries = wait_for_drift(&mut carol, &repo, 3).await;
    assert_eq!(action(&entries[2]), AuditAction::DriftDetected);
    assert_eq!(entries[2].digest, "", "a deleted tag is drift to nothing");
    for want in [second.as_str(), ""] {
        assert_eq!(s.next_hook().await["digest"], want);
    }
    s.wait_for_checks(2.0).await;
    assert_eq!(drift_entries(&mut carol, &repo).await.len(), 3);
    let m = s.metrics().await;
    assert_eq!(
        m.get("prodgate_drift_detected_total{environment=\"production\"}"),
        Some(&3.0)
    );

    // A promotion moves the tag on: no longer drifted, and its own move is
    // not drift.
    let next = s.promote("team/app", 4).await;
    let d = deployed(&mut carol, &repo, None).await;
    assert_eq!(d.digest, next);
    assert!(!d.drifted);
    s.wait_for_checks(2.0).await;
    assert_eq!(drift_entries(&mut carol, &repo).await.len(), 3);
}

#[tokio::test]
async fn restore_on_drift_pushes_the_approved_manifest_back() {
    let mut s = start().await;
    let repo = format!("{}/restored/app", s.registry.host);
    let approved = s.promote("restored/app", 1).await;
    let rogue = s
        .registry
        .push_image("restored/app", Some("production"), 1024, 2)
        .await;
    let mut carol = s.server.client("carol").await;
    let entries = wait_for_drift(&mut carol, &repo, 2).await;
    let (detected, restored) = (&entries[0], &entries[1]);
    assert_eq!(action(detected), AuditAction::DriftDetected);
    assert_eq!(detected.digest, rogue);
    assert_eq!(action(restored), AuditAction::DriftRestored);
    assert_eq!(restored.actor, "prodgate");
    assert_eq!(restored.promotion_id, "");
    assert_eq!(restored.digest, approved);
    assert_eq!(restored.previous_digest, rogue);
    assert_eq!(restored.hash, expected_hash(restored));
    assert_eq!(
        s.registry.tag_digest("restored/app", "production").await,
        Some(approved.clone()),
        "the tag carries the approved digest again"
    );
    // Drifted between the two entries, not after.
    assert!(deployed(&mut carol, &repo, detected.time).await.drifted);
    let d = deployed(&mut carol, &repo, None).await;
    assert!(!d.drifted);
    assert_eq!(d.digest, approved);
    let actions: Vec<_> = [s.next_hook().await, s.next_hook().await]
        .iter()
        .map(|h| h["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["AUDIT_ACTION_DRIFT_DETECTED", "AUDIT_ACTION_DRIFT_RESTORED"]
    );

    // Restored, the tag is in place: later checks record nothing; the same
    // out-of-band digest again is news again.
    s.wait_for_checks(2.0).await;
    assert_eq!(drift_entries(&mut carol, &repo).await.len(), 2);
    s.registry.retag("restored/app", &rogue, "production").await;
    let entries = wait_for_drift(&mut carol, &repo, 4).await;
    assert_eq!(
        entries.iter().map(action).collect::<Vec<_>>(),
        [
            AuditAction::DriftDetected,
            AuditAction::DriftRestored,
            AuditAction::DriftDetected,
            AuditAction::DriftRestored
        ]
    );
    assert_eq!(
        s.registry.tag_digest("restored/app", "production").await,
        Some(approved)
    );
}
