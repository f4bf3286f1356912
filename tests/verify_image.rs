//! `prodgate verify-image` from the outside: the real binary against a real
//! registry, reading attestations laid out as the server lays them out
//! (statements signed with the library, appended with
//! `attach::attestation::merge` under cosign's `sha256-<hex>.att` tag).
//! Every refusal is checked for its exit code and its reason.

mod support;

use prodgate::attach::attestation::{
    self, ENVELOPE_MEDIA_TYPE, PREDICATE_TYPE_ANNOTATION, SIGNATURE_ANNOTATION,
};
use prodgate::attest::{self, Attestor, Envelope, Summary, VSA_TYPE};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::proxy::{Fault, FaultProxy};
use support::registry::{OCI_CONFIG, OCI_MANIFEST, TestRegistry};
use support::server::{registry_toml, standard_config};
use tempfile::TempDir;

const PROVENANCE: &str = "https://slsa.dev/provenance/v1";

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn prodgate(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .env_remove("PRODGATE_SERVER")
        .env_remove("PRODGATE_TOKEN")
        .env_remove("PRODGATE_CONFIG")
        .args(args)
        .output()
        .expect("run prodgate");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A registry, a config naming it (plain HTTP, as the other tests' servers
/// reach it), and an attestation key pair.
struct Setup {
    registry: TestRegistry,
    dir: TempDir,
    config: PathBuf,
    public: PathBuf,
    attestor: Attestor,
}

impl Setup {
    async fn start() -> Setup {
        Setup::with(TestRegistry::start().await, |_, host| standard_config(host))
    }

    /// A setup on `registry` whose config is `config(dir, registry host)`
    /// (`dir` is the setup's own, for files the config names).
    fn with(registry: TestRegistry, config: impl FnOnce(&Path, &str) -> String) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config(dir.path(), &registry.host);
        let config = dir.path().join("prodgate.toml");
        std::fs::write(&config, text).expect("write the config");
        let (private, public_pem) = attest::keygen();
        let public = dir.path().join("attest.pub");
        std::fs::write(&public, public_pem).expect("write attest.pub");
        Setup {
            registry,
            dir,
            config,
            public,
            attestor: Attestor::from_pem(&private).expect("a key"),
        }
    }

    fn repo(&self, path: &str) -> String {
        format!("{}/{path}", self.registry.host)
    }

    /// `verify-image IMAGE --env ENV --key KEY --config <the config>`.
    fn verify(&self, image: &str, env: &str, key: &Path) -> Out {
        self.verify_with(image, env, key, &self.config)
    }

    fn verify_with(&self, image: &str, env: &str, key: &Path, config: &Path) -> Out {
        let (key, config) = (path(key), path(config));
        prodgate(&[
            "verify-image",
            image,
            "--env",
            env,
            "--key",
            key,
            "--config",
            config,
        ])
    }

    /// prodgate's signed VSA of `digest` in `repo` for `environment`, as
    /// the server makes it after promotion `id`.
    fn envelope(&self, repo: &str, digest: &str, environment: &str, id: &str) -> Vec<u8> {
        let mut extra = serde_json::Map::new();
        extra.insert("promotionId".into(), json!(id));
        extra.insert("approvals".into(), json!([{"principal": "bob"}]));
        let summary = Summary {
            verifier_id: "https://prodgate.example",
            repository: &self.repo(repo),
            digest,
            environment,
            project: "",
            policy_digest: &format!("sha256:{}", "b".repeat(64)),
            time_verified: "2026-12-07T18:00:00Z",
            extra,
        };
        serde_json::to_vec(&self.attestor.sign(&attest::statement(&summary))).expect("JSON")
    }

    /// Appends `envelope` to the attestation tag of `digest` the way the
    /// server does: the envelope blob, then the merged config and manifest.
    async fn append(&self, repo: &str, digest: &str, envelope: &[u8], predicate: &str, id: &str) {
        let tag = attestation::tag(digest).expect("a sha256 digest");
        let existing = self.registry.manifest(repo, &tag).await.map(|(_, b)| b);
        self.registry.push_blob(repo, envelope).await;
        let merged = attestation::merge(existing.as_deref(), envelope, predicate, id)
            .expect("a manifest with layers")
            .expect("a new layer");
        self.registry.push_blob(repo, &merged.config).await;
        self.registry
            .put_manifest_bytes(repo, &tag, OCI_MANIFEST, &merged.manifest.bytes)
            .await;
    }

    async fn image(&self, repo: &str, tag: &str, seed: u64) -> String {
        self.registry.push_image(repo, Some(tag), 64, seed).await
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[track_caller]
fn assert_refused(out: &Out, reason: &str) {
    assert_eq!(out.code, Some(9), "{out:#?}");
    assert!(out.stdout.contains(reason), "{reason:?} in {out:#?}");
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("NOT VERIFIED: "),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("accepted"), "{out:#?}");
}

#[tokio::test]
async fn an_image_attested_for_production_is_verified_by_tag_and_by_digest() {
    let s = Setup::start().await;
    let digest = s.image("team/app", "v1", 1).await;
    let envelope = s.envelope("team/app", &digest, "production", "42");
    s.append("team/app", &digest, &envelope, VSA_TYPE, "42")
        .await;

    let out = s.verify(&s.repo("team/app:v1"), "production", &s.public);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let tag = attestation::tag(&digest).expect("tag");
    assert_eq!(
        out.stdout,
        format!(
            "image: {repo}@{digest}\n\
             attestations: tag {tag}, 1 layer\n\
             layer 1: accepted: VSA PASSED for production, promotion 42, verified \
             2026-12-07T18:00:00Z by https://prodgate.example, policy sha256:{policy}\n\
             VERIFIED: {repo}@{digest} is attested for production (layer 1)\n",
            repo = s.repo("team/app"),
            policy = "b".repeat(64),
        )
    );
    assert_eq!(out.stderr, "", "{out:#?}");

    let by_digest = s.verify(
        &format!("{}@{digest}", s.repo("team/app")),
        "production",
        &s.public,
    );
    assert_eq!(by_digest.code, Some(0), "{by_digest:#?}");
    assert!(by_digest.stdout.contains("promotion 42"), "{by_digest:#?}");

    // `latest` when no tag is given: this one carries another image.
    s.image("team/app", "latest", 2).await;
    let latest = s.verify(&s.repo("team/app"), "production", &s.public);
    assert_refused(&latest, "no attestations for sha256:");
}

#[tokio::test]
async fn an_image_attested_only_for_staging_is_refused_for_production() {
    let s = Setup::start().await;
    let digest = s.image("team/app", "v1", 1).await;
    let envelope = s.envelope("team/app", &digest, "staging", "7");
    s.append("team/app", &digest, &envelope, VSA_TYPE, "7")
        .await;

    let out = s.verify(&s.repo("team/app:v1"), "production", &s.public);
    assert_refused(
        &out,
        "layer 1: rejected: for environment staging, not production\n",
    );
    assert!(
        out.stdout.contains(&format!(
            "NOT VERIFIED: no attestation of {}@{digest} verifies for production",
            s.repo("team/app")
        )),
        "{out:#?}"
    );
    // The verdict is on stdout; stderr stays quiet, as for `verify-log`.
    assert_eq!(out.stderr, "", "{out:#?}");

    let staging = s.verify(&s.repo("team/app:v1"), "staging", &s.public);
    assert_eq!(staging.code, Some(0), "{staging:#?}");
    assert!(
        staging
            .stdout
            .contains("accepted: VSA PASSED for staging, promotion 7"),
        "{staging:#?}"
    );
}

#[tokio::test]
async fn a_tampered_envelope_and_a_wrong_key_are_refused() {
    let s = Setup::start().await;
    let digest = s.image("team/app", "v1", 1).await;
    // Signed for staging, then edited to say production.
    let signed: Envelope =
        serde_json::from_slice(&s.envelope("team/app", &digest, "staging", "7")).expect("JSON");
    let b64 = base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let mut statement: Value =
        serde_json::from_slice(&b64.decode(&signed.payload).expect("base64")).expect("JSON");
    statement["predicate"]["environment"] = json!("production");
    statement["predicate"]["verifiedLevels"] = json!([attest::level("production")]);
    let tampered = Envelope {
        payload: b64.encode(serde_json::to_vec(&statement).expect("JSON")),
        ..signed
    };
    let tampered = serde_json::to_vec(&tampered).expect("JSON");
    s.append("team/app", &digest, &tampered, VSA_TYPE, "7")
        .await;

    let out = s.verify(&s.repo("team/app:v1"), "production", &s.public);
    assert_refused(
        &out,
        &format!(
            "layer 1: rejected: the signature does not verify with {}\n",
            s.public.display()
        ),
    );

    // A genuine attestation, checked with another key.
    let other = s.image("team/other", "v1", 2).await;
    let envelope = s.envelope("team/other", &other, "production", "8");
    s.append("team/other", &other, &envelope, VSA_TYPE, "8")
        .await;
    let (_, wrong_pem) = attest::keygen();
    let wrong = s.dir.path().join("wrong.pub");
    std::fs::write(&wrong, wrong_pem).expect("write wrong.pub");
    let out = s.verify(&s.repo("team/other:v1"), "production", &wrong);
    assert_refused(
        &out,
        &format!(
            "layer 1: rejected: the signature does not verify with {}\n",
            wrong.display()
        ),
    );
    assert_eq!(
        s.verify(&s.repo("team/other:v1"), "production", &s.public)
            .code,
        Some(0)
    );
}

#[tokio::test]
async fn an_image_without_an_attestation_tag_is_refused() {
    let s = Setup::start().await;
    let digest = s.image("team/app", "v1", 1).await;
    let out = s.verify(&s.repo("team/app:v1"), "production", &s.public);
    assert_refused(
        &out,
        &format!(
            "NOT VERIFIED: no attestations for {digest} (no tag {})\n",
            attestation::tag(&digest).expect("tag")
        ),
    );
}

#[tokio::test]
async fn a_foreign_layer_beside_prodgates_is_skipped_and_prodgates_accepted() {
    let s = Setup::start().await;
    let digest = s.image("team/app", "v1", 1).await;
    // What `cosign attest --type slsaprovenance1` leaves: its own key, its
    // own predicate, no prodgate annotation.
    let (cosign_private, _) = attest::keygen();
    let cosign = Attestor::from_pem(&cosign_private).expect("a key");
    let provenance = serde_json::to_vec(&cosign.sign(&json!({
        "_type": attest::STATEMENT_TYPE,
        "subject": [{"name": s.repo("team/app"), "digest": {"sha256": &digest[7..]}}],
        "predicateType": PROVENANCE,
        "predicate": {"buildDefinition": {}},
    })))
    .expect("JSON");
    let layer = s.registry.push_blob("team/app", &provenance).await;
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    }))
    .expect("JSON");
    let config_digest = s.registry.push_blob("team/app", &config).await;
    let cosigns = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{
            "mediaType": ENVELOPE_MEDIA_TYPE,
            "digest": layer,
            "size": provenance.len(),
            "annotations": {SIGNATURE_ANNOTATION: "", PREDICATE_TYPE_ANNOTATION: PROVENANCE},
        }],
    }))
    .expect("JSON");
    let tag = attestation::tag(&digest).expect("tag");
    s.registry
        .put_manifest_bytes("team/app", &tag, OCI_MANIFEST, &cosigns)
        .await;

    let alone = s.verify(&s.repo("team/app:v1"), "production", &s.public);
    assert_refused(
        &alone,
        &format!("layer 1: skipped: predicate {PROVENANCE}\n"),
    );

    let envelope = s.envelope("team/app", &digest, "production", "42");
    s.append("team/app", &digest, &envelope, VSA_TYPE, "42")
        .await;
    let out = s.verify(&s.repo("team/app:v1"), "production", &s.public);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stdout.contains(&format!(
            "attestations: tag {tag}, 2 layers\n\
             layer 1: skipped: predicate {PROVENANCE}\n\
             layer 2: accepted: VSA PASSED for production, promotion 42,"
        )),
        "{out:#?}"
    );
    assert!(
        out.stdout
            .ends_with("is attested for production (layer 2)\n"),
        "{out:#?}"
    );
}

#[tokio::test]
async fn what_cannot_be_checked_fails_with_its_own_code_and_reason() {
    let s = Setup::start().await;
    s.image("team/app", "v1", 1).await;

    // No such tag: the registry's answer, 3 as for the server's NOT_FOUND.
    let out = s.verify(&s.repo("team/app:nope"), "production", &s.public);
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "prodgate: {} is not in the registry",
            s.repo("team/app:nope")
        ),
        "{out:#?}"
    );
    let out = s.verify(&s.repo("team/none:v1"), "production", &s.public);
    assert_eq!(out.code, Some(3), "{out:#?}");

    // A key file that is no public key: named, never quoted.
    let private = s.dir.path().join("attest.key");
    let (private_pem, _) = attest::keygen();
    std::fs::write(&private, &private_pem).expect("write attest.key");
    let out = s.verify(&s.repo("team/app:v1"), "production", &private);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.starts_with(&format!(
            "prodgate: {}: not an ECDSA P-256 public key in PEM",
            private.display()
        )),
        "{out:#?}"
    );
    let body: String = private_pem.lines().nth(1).unwrap_or("").to_owned();
    assert!(!out.stderr.contains(&body), "{out:#?}");
    let out = s.verify(
        &s.repo("team/app:v1"),
        "production",
        &s.dir.path().join("absent.pub"),
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("cannot read attestation public key"),
        "{out:#?}"
    );

    // A malformed IMAGE is a flag value that does not parse.
    let out = s.verify("team/app:v1", "production", &s.public);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("expected host[:port]/repository"),
        "{out:#?}"
    );

    // Without --config the registry is reached over HTTPS only: this one
    // speaks plain HTTP, so nothing is verified.
    let out = prodgate(&[
        "verify-image",
        &s.repo("team/app:v1"),
        "--env",
        "production",
        "--key",
        path(&s.public),
    ]);
    assert!(matches!(out.code, Some(3 | 4)), "{out:#?}");
    assert!(!out.stdout.contains("VERIFIED"), "{out:#?}");
}

#[tokio::test]
async fn the_registry_is_reached_with_the_credentials_of_the_config() {
    let registry = TestRegistry::start_with_basic_auth("ci", "s3cret").await;
    let s = Setup::with(registry, |dir, host| {
        let password = dir.join("password");
        std::fs::write(&password, "s3cret\n").expect("write the password");
        standard_config(host).replace(
            &registry_toml(host),
            &format!(
                "[[registry]]\nhost = \"{host}\"\ninsecure = true\nusername = \"ci\"\n\
                 password_file = {:?}\n",
                path(&password)
            ),
        )
    });
    let digest = s.image("team/app", "v1", 1).await;
    let envelope = s.envelope("team/app", &digest, "production", "42");
    s.append("team/app", &digest, &envelope, VSA_TYPE, "42")
        .await;

    let out = s.verify(&s.repo("team/app:v1"), "production", &s.public);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("promotion 42"), "{out:#?}");

    // The same registry without the credentials: refused, exit 3.
    let anonymous = s.dir.path().join("anonymous.toml");
    std::fs::write(&anonymous, standard_config(&s.registry.host)).expect("write");
    let out = s.verify_with(&s.repo("team/app:v1"), "production", &s.public, &anonymous);
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert!(
        out.stderr
            .contains("refused prodgate's credentials (HTTP 401)"),
        "{out:#?}"
    );
}

// Multi-threaded: the proxy serves on this runtime while the test blocks
// on the prodgate process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_the_registry_fails_to_hand_over_is_its_error_not_a_verdict() {
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(&registry.host).await;
    let s = Setup::with(registry, |_, _| standard_config(&proxy.host));
    let digest = s.image("team/app", "v1", 1).await;
    let envelope = s.envelope("team/app", &digest, "production", "42");
    s.append("team/app", &digest, &envelope, VSA_TYPE, "42")
        .await;
    let image = format!("{}/team/app:v1", proxy.host);
    proxy.inject(
        "GET",
        "/blobs/",
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        100,
    );

    let out = s.verify(&image, "production", &s.public);
    assert_eq!(out.code, Some(4), "{out:#?}");
    assert!(
        out.stdout.contains(&format!(
            "layer 1: not read: registry {} is unavailable",
            proxy.host
        )),
        "{out:#?}"
    );
    assert!(
        out.stdout.ends_with("; layer 1 could not be read\n"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("is unavailable"), "{out:#?}");

    proxy.clear();
    let out = s.verify(&image, "production", &s.public);
    assert_eq!(out.code, Some(0), "{out:#?}");
}
