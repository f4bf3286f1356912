//! The record on the image end to end: a real `prodgate serve` with
//! `attach_record = true` on production and a signing key, in front of a real
//! registry (through the fault proxy, so pushes can be made to fail), and
//! the referrers tag-schema index `sha256-<hex>` read back through the
//! registry's own API.

mod support;

use prodgate::pb::{AuditAction, HistoryRequest, PromotionState};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::proxy::{Fault, FaultProxy};
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{approve, expected_hash, history, request_to, wait_for_state};

const LIMIT: Duration = Duration::from_secs(30);
const ORIGIN: &str = "attach.test/audit";
const PRODGATE: &str = "application/vnd.prodgate.promotion.v1+json";
const SIGSTORE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const FAILURES: &str = "prodgate_attach_failures_total{environment=\"production\"}";

struct Setup {
    registry: TestRegistry,
    proxy: FaultProxy,
    server: TestServer,
    _keys: tempfile::TempDir,
}

fn keygen(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(["keygen", "--name", "attach.test", "--out"])
        .arg(dir)
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "{out:?}");
}

async fn start() -> Setup {
    let keys = tempfile::tempdir().unwrap();
    keygen(keys.path());
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(&registry.host).await;
    let config = format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}\n[checkpoint]\norigin = \"{ORIGIN}\"\nkey_file = {:?}\n",
        standard_config(&proxy.host).replace(
            "name = \"production\"\ntag = \"production\"\n",
            "name = \"production\"\ntag = \"production\"\nattach_record = true\n",
        ),
        keys.path().join("attach.test.key").display().to_string(),
    );
    assert!(config.contains("attach_record = true"));
    let server = TestServer::start(&config);
    Setup {
        registry,
        proxy,
        server,
        _keys: keys,
    }
}

impl Setup {
    /// Requests and approves production for what `path`'s staging tag
    /// carries; returns the promotion id once it is PROMOTED.
    async fn promote(&self, path: &str) -> String {
        let repo = format!("{}/{path}", self.proxy.host);
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
        p.id
    }

    /// The referrers index of `digest` once it lists the record of
    /// `promotion`. Polled: a background task in another process makes it.
    async fn index_listing(&self, path: &str, digest: &str, promotion: &str) -> Value {
        let tag = digest.replace("sha256:", "sha256-");
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some((content_type, bytes)) = self.registry.manifest_polled(path, &tag).await {
                assert_eq!(content_type, OCI_INDEX);
                let index: Value = serde_json::from_slice(&bytes).expect("index JSON");
                if record_entry(&index, promotion).is_some() {
                    return index;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the record of {promotion} never appeared under {tag}; server log:\n{}",
                self.server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn blob(&self, path: &str, digest: &str) -> Vec<u8> {
        self.registry.blob(path, digest).await
    }

    async fn metric(&self, name: &str) -> f64 {
        support::metric(self.server.metrics_addr(), name).await
    }

    /// A cosign-3-style Sigstore bundle referring to `digest`, listed in
    /// its referrers index the way cosign lists it; returns the index entry.
    async fn cosign_bundle(&self, path: &str, digest: &str) -> Value {
        let (media_type, subject) = self.registry.manifest(path, digest).await.unwrap();
        let config = self.registry.push_blob(path, b"{}").await;
        let bundle = br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#;
        let layer = self.registry.push_blob(path, bundle).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGSTORE,
            "config": {"mediaType": EMPTY, "digest": config, "size": 2},
            "layers": [{"mediaType": SIGSTORE, "digest": layer, "size": bundle.len()}],
            "subject": {"mediaType": media_type, "digest": digest, "size": subject.len()},
        }))
        .unwrap();
        let bundle_digest = format!("sha256:{}", sha256_hex(&manifest));
        self.registry
            .put_manifest_bytes(path, &bundle_digest, OCI_MANIFEST, &manifest)
            .await;
        let entry = json!({
            "mediaType": OCI_MANIFEST,
            "digest": bundle_digest,
            "size": manifest.len(),
            "artifactType": SIGSTORE,
            "annotations": {"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
        });
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry],
        }))
        .unwrap();
        self.registry
            .put_manifest_bytes(
                path,
                &digest.replace("sha256:", "sha256-"),
                OCI_INDEX,
                &index,
            )
            .await;
        entry
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The index entry of prodgate's record of `promotion`, if listed.
fn record_entry<'a>(index: &'a Value, promotion: &str) -> Option<&'a Value> {
    index["manifests"].as_array()?.iter().find(|d| {
        d["artifactType"] == PRODGATE && d["annotations"]["dev.prodgate.promotion.id"] == promotion
    })
}

// Multi-threaded: the test blocks in the server's drop while clients close.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_record_is_attached_next_to_cosigns_bundle_and_names_its_audit_entry() {
    let s = start().await;
    let digest = s.registry.push_image("app", Some("staging"), 1024, 1).await;
    let cosign = s.cosign_bundle("app", &digest).await;
    let id = s.promote("app").await;

    let index = s.index_listing("app", &digest, &id).await;
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(entries[0], cosign, "cosign's entry is kept as it was");
    let entry = record_entry(&index, &id).unwrap();
    assert_eq!(entry["mediaType"], OCI_MANIFEST);

    // The artifact: the empty config, one layer, the promoted image as subject.
    let artifact_digest = entry["digest"].as_str().unwrap();
    let (content_type, bytes) = s.registry.manifest("app", artifact_digest).await.unwrap();
    assert_eq!(content_type, OCI_MANIFEST);
    assert_eq!(entry["size"], bytes.len());
    let artifact: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(artifact["artifactType"], PRODGATE);
    assert_eq!(artifact["config"]["mediaType"], EMPTY);
    let config = s
        .blob("app", artifact["config"]["digest"].as_str().unwrap())
        .await;
    assert_eq!(config, b"{}");
    let (image_type, image) = s.registry.manifest("app", &digest).await.unwrap();
    assert_eq!(artifact["subject"]["digest"], digest);
    assert_eq!(artifact["subject"]["mediaType"], image_type);
    assert_eq!(artifact["subject"]["size"], image.len());
    let layers = artifact["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], PRODGATE);

    // The record: the promotion, and its APPLIED entry as History shows it.
    let layer = s.blob("app", layers[0]["digest"].as_str().unwrap()).await;
    let record: Value = serde_json::from_slice(&layer).unwrap();
    assert_eq!(record["promotion_id"], id);
    assert_eq!(record["repository"], format!("{}/app", s.proxy.host));
    assert_eq!(record["environment"], "production");
    assert_eq!(record["digest"], digest);
    assert_eq!(record["requested_by"], "alice");
    assert_eq!(record["approvals"][0]["approver"], "bob");
    let policy = record["policy_digest"].as_str().unwrap();
    assert!(policy.starts_with("sha256:"), "{policy}");
    let mut c = s.server.client("alice").await;
    let entries = history(
        &mut c,
        HistoryRequest {
            promotion_id: id.clone(),
            ..Default::default()
        },
    )
    .await;
    let applied = entries
        .iter()
        .find(|e| e.action == AuditAction::Applied as i32)
        .expect("an APPLIED entry");
    assert_eq!(record["applied"]["sequence"], applied.sequence);
    assert_eq!(record["applied"]["hash"], applied.hash);
    assert_eq!(applied.hash, expected_hash(applied));
    assert_eq!(record["previous_digest"], applied.previous_digest);

    // A signed checkpoint that covers the entry.
    let size = record["checkpoint"]["size"].as_u64().unwrap();
    assert!(size >= applied.sequence, "{size} < {}", applied.sequence);
    let note = record["checkpoint"]["note"].as_str().unwrap();
    assert!(note.starts_with(&format!("{ORIGIN}\n{size}\n")), "{note:?}");
    assert!(note.contains("\n\n— attach.test "), "{note:?}");
    assert_eq!(s.metric(FAILURES).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_failing_push_neither_fails_the_promotion_nor_stops_the_record() {
    let s = start().await;
    let digest = s.registry.push_image("app", Some("staging"), 1024, 2).await;
    // Moving a tag uploads no blob: only the record's uploads fail.
    s.proxy.inject(
        "POST",
        "/blobs/uploads/",
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        3,
    );
    let id = s.promote("app").await;
    let index = s.index_listing("app", &digest, &id).await;
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    assert_eq!(s.metric(FAILURES).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_record_not_attached_before_a_restart_is_attached_after_it() {
    let mut s = start().await;
    let digest = s.registry.push_image("app", Some("staging"), 1024, 3).await;
    s.proxy.inject(
        "POST",
        "/blobs/uploads/",
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        usize::MAX,
    );
    let id = s.promote("app").await;
    // A failed attempt first, so the restart interrupts a retrying record.
    let deadline = Instant::now() + LIMIT;
    while s.metric(FAILURES).await < 1.0 {
        assert!(Instant::now() < deadline, "{}", s.server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tag = digest.replace("sha256:", "sha256-");
    assert_eq!(s.registry.manifest("app", &tag).await, None);
    s.server.kill_and_restart();
    s.proxy.clear();
    let index = s.index_listing("app", &digest, &id).await;
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
}
