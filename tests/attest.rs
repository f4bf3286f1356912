//! Signed attestations end to end: a real `prodgate serve` with `attest =
//! true` on staging and production and an `[attest]` key, in front of a
//! real registry (through the fault proxy, so pushes can be made to fail).
//! cosign's attestation tag `sha256-<hex>.att` is read back through the
//! registry's own API and each envelope is verified by securesystemslib
//! (`support/dsse_verify.py`), a DSSE implementation that shares nothing
//! with prodgate.

mod support;

use prodgate::pb::{AuditAction, HistoryRequest, PromotionState, RollbackRequest};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::proxy::{Fault, FaultProxy};
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{approve, history, request_to, wait_for_state};

const LIMIT: Duration = Duration::from_secs(30);
const VSA: &str = "https://slsa.dev/verification_summary/v1";
const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const VERIFIER: &str = "https://prodgate.attest.test";
const FAILURES: &str = "prodgate_attest_failures_total{environment=\"production\"}";

struct Setup {
    registry: TestRegistry,
    proxy: FaultProxy,
    server: TestServer,
    keys: tempfile::TempDir,
}

fn prodgate(args: &[&str], dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(args)
        .arg(dir)
        .output()
        .expect("run prodgate");
    assert!(out.status.success(), "{out:?}");
}

async fn start() -> Setup {
    let keys = tempfile::tempdir().unwrap();
    prodgate(&["keygen", "--name", "attest.test", "--out"], keys.path());
    prodgate(&["keygen", "--attest", "--out"], keys.path());
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(&registry.host).await;
    let config = format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}\n[checkpoint]\norigin = \"attest.test/audit\"\nkey_file = {:?}\n\
         [attest]\nkey_file = {:?}\nverifier_id = \"{VERIFIER}\"\n",
        standard_config(&proxy.host)
            .replace(
                "name = \"production\"\ntag = \"production\"\n",
                "name = \"production\"\ntag = \"production\"\nattest = true\n",
            )
            .replace(
                "name = \"staging\"\ntag = \"staging\"\n",
                "name = \"staging\"\ntag = \"staging\"\nattest = true\n",
            ),
        keys.path().join("attest.test.key").display().to_string(),
        keys.path().join("attest.key").display().to_string(),
    );
    assert_eq!(config.matches("attest = true").count(), 2, "{config}");
    let server = TestServer::start(&config);
    Setup {
        registry,
        proxy,
        server,
        keys,
    }
}

impl Setup {
    fn repo(&self, path: &str) -> String {
        format!("{}/{path}", self.proxy.host)
    }

    fn public_key(&self) -> PathBuf {
        self.keys.path().join("attest.pub")
    }

    /// Requests `env` from `source` of `path` and, when it needs one,
    /// approves it; returns the promotion id once it is PROMOTED.
    async fn promote(&self, path: &str, source: &str, env: &str) -> String {
        let p = self
            .server
            .client("alice")
            .await
            .request_promotion(request_to(&self.repo(path), source, env))
            .await
            .expect("request")
            .into_inner();
        let mut bob = self.server.client("bob").await;
        if p.state == PromotionState::PendingApproval as i32 {
            bob.approve(approve(&p.id)).await.expect("approve");
        }
        wait_for_state(&mut bob, &p.id, PromotionState::Promoted, LIMIT).await;
        p.id
    }

    /// The manifest under `digest`'s attestation tag once a layer of it is
    /// annotated with `promotion`. Polled: a background task in another
    /// process makes it.
    async fn attestations(&self, path: &str, digest: &str, promotion: &str) -> Value {
        let tag = format!("{}.att", digest.replace("sha256:", "sha256-"));
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some((content_type, bytes)) = self.registry.manifest_polled(path, &tag).await {
                assert_eq!(content_type, OCI_MANIFEST);
                let manifest: Value = serde_json::from_slice(&bytes).expect("manifest JSON");
                if layer_of(&manifest, promotion).is_some() {
                    return manifest;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no attestation of {promotion} under {tag}; server log:\n{}",
                self.server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn blob(&self, path: &str, digest: &str) -> Vec<u8> {
        self.registry.blob(path, digest).await
    }

    /// The Statement of `promotion`'s envelope, verified by securesystemslib
    /// against `attest.pub`.
    async fn verified_statement(&self, path: &str, manifest: &Value, promotion: &str) -> Value {
        let layer = layer_of(manifest, promotion).expect("the promotion's layer");
        let envelope = self
            .blob(path, layer["digest"].as_str().expect("digest"))
            .await;
        let (ok, out) = dsse_verify(&envelope, &self.public_key());
        assert!(ok, "securesystemslib refused the envelope: {out}");
        serde_json::from_str(&out).expect("the payload is JSON")
    }

    async fn metric(&self, name: &str) -> f64 {
        support::metric(self.server.metrics_addr(), name).await
    }

    /// An attestation as `cosign attest` writes it (a provenance envelope
    /// of its own), under `digest`'s tag before prodgate writes there;
    /// returns its layer.
    async fn cosign_attestation(&self, path: &str, digest: &str) -> Value {
        let envelope = br#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"","sig":"MEUCIQ=="}]}"#;
        let layer_digest = self.registry.push_blob(path, envelope).await;
        let config = format!(
            r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}},"config":{{}}}}"#
        );
        let config_digest = self.registry.push_blob(path, config.as_bytes()).await;
        let layer = json!({
            "mediaType": DSSE,
            "size": envelope.len(),
            "digest": layer_digest,
            "annotations": {
                "dev.cosignproject.cosign/signature": "",
                "predicateType": "https://slsa.dev/provenance/v1",
            },
        });
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
            "layers": [layer],
        }))
        .unwrap();
        let tag = format!("{}.att", digest.replace("sha256:", "sha256-"));
        self.registry
            .put_manifest_bytes(path, &tag, OCI_MANIFEST, &manifest)
            .await;
        layer
    }
}

/// prodgate's layer for `promotion`.
fn layer_of<'a>(manifest: &'a Value, promotion: &str) -> Option<&'a Value> {
    manifest["layers"]
        .as_array()?
        .iter()
        .find(|l| l["annotations"]["dev.prodgate.promotion.id"] == promotion)
}

/// securesystemslib's verdict on `envelope` under the PEM key at `key`, and
/// what it printed (the payload, or why not).
fn dsse_verify(envelope: &[u8], key: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envelope.json");
    std::fs::write(&file, envelope).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/dsse_verify.py");
    let out = Command::new(support::python())
        .arg(script)
        .arg(&file)
        .arg(key)
        .output()
        .expect("run dsse_verify.py");
    let text = String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    })
    .into_owned();
    (out.status.success(), text)
}

// Multi-threaded: the test blocks in the server's drop while clients close.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_promotion_is_attested_where_cosign_looks_and_securesystemslib_verifies_it() {
    let s = start().await;
    let digest = s.registry.push_image("app", Some("staging"), 1024, 1).await;
    let cosigns = s.cosign_attestation("app", &digest).await;
    let id = s.promote("app", "staging", "production").await;

    let manifest = s.attestations("app", &digest, &id).await;
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{manifest}");
    assert_eq!(layers[0], cosigns, "cosign's attestation is kept as it was");
    let ours = layer_of(&manifest, &id).unwrap();
    assert_eq!(ours["mediaType"], DSSE);
    assert_eq!(
        ours["annotations"]["dev.cosignproject.cosign/signature"],
        ""
    );
    assert_eq!(ours["annotations"]["predicateType"], VSA);
    // The config lists both layers, as cosign's does.
    let config: Value = serde_json::from_slice(
        &s.blob("app", manifest["config"]["digest"].as_str().unwrap())
            .await,
    )
    .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([layers[0]["digest"], layers[1]["digest"]])
    );

    let st = s.verified_statement("app", &manifest, &id).await;
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], VSA);
    assert_eq!(st["subject"][0]["name"], s.repo("app"));
    assert_eq!(st["subject"][0]["digest"]["sha256"], &digest[7..]);
    let p = &st["predicate"];
    assert_eq!(p["verifier"]["id"], VERIFIER);
    assert_eq!(p["verificationResult"], "PASSED");
    assert_eq!(p["environment"], "production");
    assert_eq!(
        p["verifiedLevels"],
        json!(["PRODGATE_ENVIRONMENT_PRODUCTION"])
    );
    assert_eq!(p["resourceUri"], format!("{}@{digest}", s.repo("app")));
    assert_eq!(
        p["policy"]["uri"],
        format!("{VERIFIER}/policy/-/production")
    );
    assert_eq!(p["promotionId"], id);
    assert_eq!(p["rollback"], false);
    assert_eq!(p["approvals"][0]["principal"], "bob");

    // The policy digest and the APPLIED entry are the ones prodgate recorded.
    let mut c = s.server.client("alice").await;
    let promotion = support::get(&mut c, &id).await;
    assert_eq!(
        format!(
            "sha256:{}",
            p["policy"]["digest"]["sha256"].as_str().unwrap()
        ),
        promotion.policy_digest
    );
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
    assert_eq!(p["applied"]["sequence"], applied.sequence);
    assert_eq!(p["applied"]["hash"], applied.hash);
    assert!(p["checkpoint"]["size"].as_u64().unwrap() >= applied.sequence);
    assert_eq!(p["timeVerified"], p["applied"]["time"]);

    // Another key does not verify it; nor does a changed payload.
    let other = tempfile::tempdir().unwrap();
    prodgate(&["keygen", "--attest", "--out"], other.path());
    let envelope = s.blob("app", ours["digest"].as_str().unwrap()).await;
    let (ok, why) = dsse_verify(&envelope, &other.path().join("attest.pub"));
    assert!(!ok, "verified under another key");
    assert!(why.contains("does not verify"), "{why}");
    assert_eq!(s.metric(FAILURES).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn each_promotion_and_rollback_attests_its_own_digest_and_environment() {
    let s = start().await;
    let first = s.registry.push_image("app", Some("dev"), 1024, 2).await;
    let staged = s.promote("app", "dev", "staging").await;
    let m = s.attestations("app", &first, &staged).await;
    let st = s.verified_statement("app", &m, &staged).await;
    assert_eq!(st["predicate"]["environment"], "staging");
    assert_eq!(
        st["predicate"]["verifiedLevels"],
        json!(["PRODGATE_ENVIRONMENT_STAGING"])
    );
    let shipped = s.promote("app", "staging", "production").await;
    let m = s.attestations("app", &first, &shipped).await;
    assert_eq!(m["layers"].as_array().unwrap().len(), 2, "staging's kept");
    let st = s.verified_statement("app", &m, &shipped).await;
    assert_eq!(st["predicate"]["environment"], "production");

    // A second digest is attested under its own tag.
    let second = s.registry.push_image("app", Some("dev"), 1024, 3).await;
    s.promote("app", "dev", "staging").await;
    let next = s.promote("app", "staging", "production").await;
    let m = s.attestations("app", &second, &next).await;
    let st = s.verified_statement("app", &m, &next).await;
    assert_eq!(st["subject"][0]["digest"]["sha256"], &second[7..]);

    // Rolling production back attests the first digest again, as a rollback.
    let mut bob = s.server.client("bob").await;
    let rollback = s
        .server
        .client("alice")
        .await
        .rollback(RollbackRequest {
            repository: s.repo("app"),
            environment: "production".into(),
            reason: "bad release".into(),
            ..Default::default()
        })
        .await
        .expect("rollback")
        .into_inner();
    if rollback.state == PromotionState::PendingApproval as i32 {
        bob.approve(approve(&rollback.id)).await.expect("approve");
    }
    wait_for_state(&mut bob, &rollback.id, PromotionState::Promoted, LIMIT).await;
    let m = s.attestations("app", &first, &rollback.id).await;
    assert_eq!(m["layers"].as_array().unwrap().len(), 3, "{m}");
    let st = s.verified_statement("app", &m, &rollback.id).await;
    assert_eq!(st["predicate"]["rollback"], true);
    assert_eq!(st["predicate"]["previousDigest"], second);
    assert_eq!(st["subject"][0]["digest"]["sha256"], &first[7..]);
    // The digest that left production keeps its attestation.
    let m = s.attestations("app", &second, &next).await;
    assert!(layer_of(&m, &next).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_failing_registry_neither_fails_the_promotion_nor_loses_the_attestation() {
    let mut s = start().await;
    let digest = s.registry.push_image("app", Some("staging"), 1024, 4).await;
    // Moving a tag uploads no blob: only the attestation's uploads fail.
    s.proxy.inject(
        "POST",
        "/blobs/uploads/",
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        usize::MAX,
    );
    let id = s.promote("app", "staging", "production").await;
    let deadline = Instant::now() + LIMIT;
    while s.metric(FAILURES).await < 2.0 {
        assert!(Instant::now() < deadline, "{}", s.server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tag = format!("{}.att", digest.replace("sha256:", "sha256-"));
    assert_eq!(s.registry.manifest("app", &tag).await, None);
    // Made again after a restart, once the registry takes pushes.
    s.server.kill_and_restart();
    s.proxy.clear();
    let m = s.attestations("app", &digest, &id).await;
    assert_eq!(m["layers"].as_array().unwrap().len(), 1, "{m}");
    s.verified_statement("app", &m, &id).await;
}

/// `prodgate verify-image IMAGE --env ENV --key KEY --config <the server's
/// own config>`: its exit code and what it printed.
fn verify_image(s: &Setup, image: &str, env: &str, key: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(["verify-image", image, "--env", env, "--key"])
        .arg(key)
        .arg("--config")
        .arg(s.server.dir().join("prodgate.toml"))
        .output()
        .expect("run verify-image");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn verify_image_accepts_what_prodgate_promoted_and_nothing_else() {
    let s = start().await;
    let digest = s.registry.push_image("app", Some("dev"), 1024, 5).await;
    let staged = s.promote("app", "dev", "staging").await;
    s.attestations("app", &digest, &staged).await;
    let key = s.public_key();
    let image = format!("{}:staging", s.repo("app"));

    // Promoted to staging only: refused for production, accepted for staging.
    let (code, out) = verify_image(&s, &image, "production", &key);
    assert_eq!(code, Some(9), "{out}");
    assert!(
        out.contains("for environment staging, not production"),
        "{out}"
    );
    let (code, out) = verify_image(&s, &image, "staging", &key);
    assert_eq!(code, Some(0), "{out}");

    let shipped = s.promote("app", "staging", "production").await;
    let m = s.attestations("app", &digest, &shipped).await;
    let image = format!("{}:production", s.repo("app"));
    let (code, out) = verify_image(&s, &image, "production", &key);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("VSA PASSED for production, promotion {shipped}")),
        "{out}"
    );

    // Another key: refused.
    let other = tempfile::tempdir().unwrap();
    prodgate(&["keygen", "--attest", "--out"], other.path());
    let (code, out) = verify_image(&s, &image, "production", &other.path().join("attest.pub"));
    assert_eq!(code, Some(9), "{out}");
    assert!(out.contains("does not verify"), "{out}");

    // The production envelope with its payload changed (staging's says
    // staging, so it stays refused): refused.
    let ours = layer_of(&m, &shipped).unwrap().clone();
    let envelope = s.blob("app", ours["digest"].as_str().unwrap()).await;
    let mut e: Value = serde_json::from_slice(&envelope).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut st: Value =
        serde_json::from_slice(&b64.decode(e["payload"].as_str().unwrap()).unwrap()).unwrap();
    st["predicate"]["promotionId"] = json!("9999");
    e["payload"] = json!(b64.encode(serde_json::to_vec(&st).unwrap()));
    let tampered = serde_json::to_vec(&e).unwrap();
    let tampered_digest = s.registry.push_blob("app", &tampered).await;
    let mut forged = m.clone();
    for l in forged["layers"].as_array_mut().unwrap() {
        if l["digest"] == ours["digest"] {
            l["digest"] = json!(tampered_digest);
            l["size"] = json!(tampered.len());
        }
    }
    let tag = format!("{}.att", digest.replace("sha256:", "sha256-"));
    s.registry
        .put_manifest_bytes(
            "app",
            &tag,
            OCI_MANIFEST,
            &serde_json::to_vec(&forged).unwrap(),
        )
        .await;
    let (code, out) = verify_image(&s, &image, "production", &key);
    assert_eq!(code, Some(9), "{out}");
    assert!(out.contains("does not verify"), "{out}");
}
