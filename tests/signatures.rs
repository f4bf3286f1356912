//! The signature gate against the real registry and a real server: images
//! signed in the test the way cosign stores signatures (the legacy
//! `sha256-<hex>.sig` manifest, and a Sigstore bundle in the referrers
//! tag-schema index `sha256-<hex>`), by keys made here, and the promotions
//! that pass or are blocked by them.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use prodgate::pb::{EvaluateGatesRequest, HistoryRequest, PromotionState, RollbackRequest};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use support::registry::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, TestRegistry};
use support::server::{Client, TestServer, principals_toml, registry_toml};
use support::{approve, history, request_to};

const REPO: &str = "team/app";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// A signing key of either kind cosign makes.
enum Key {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl Key {
    fn p256(seed: u8) -> Key {
        Key::P256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("a P-256 scalar"))
    }

    fn ed25519(seed: u8) -> Key {
        Key::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    /// The DER SubjectPublicKeyInfo.
    fn public_der(&self) -> Vec<u8> {
        match self {
            Key::P256(k) => k
                .verifying_key()
                .to_public_key_der()
                .expect("encode")
                .into_vec(),
            Key::Ed25519(k) => {
                // RFC 8410: SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING key }
                let mut der = vec![
                    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
                ];
                der.extend_from_slice(k.verifying_key().as_bytes());
                der
            }
        }
    }

    /// What cosign.pub holds.
    fn public_pem(&self) -> String {
        match self {
            Key::P256(k) => k
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("encode"),
            Key::Ed25519(_) => format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                STANDARD.encode(self.public_der())
            ),
        }
    }

    /// `sha256:<hex>` of the DER key: what the `signature` attribute names.
    fn fingerprint(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.public_der())))
    }

    /// cosign's signature: ECDSA over SHA-256 in ASN.1 DER, or Ed25519.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Key::P256(k) => {
                let s: p256::ecdsa::DerSignature = k.sign(message);
                s.as_bytes().to_vec()
            }
            Key::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(message).to_bytes().to_vec()
            }
        }
    }

    fn write(&self, dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, self.public_pem()).expect("write the public key");
        path.to_str().expect("utf-8 path").to_owned()
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

/// Pushes cosign's legacy signature of `digest` by `key`, whose payload
/// names `names` (the digest itself unless a test lies): the payload blob,
/// an empty config, and the manifest under `sha256-<hex>.sig`.
async fn sign_legacy(registry: &TestRegistry, digest: &str, names: &str, key: &Key) {
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": format!("{}/{REPO}", registry.host)},
            "image": {"docker-manifest-digest": names},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("payload");
    let signature = STANDARD.encode(key.sign(&payload));
    let layer = registry.push_blob(REPO, &payload).await;
    let config = registry.push_blob(REPO, b"{}").await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [{
            "mediaType": SIMPLE_SIGNING,
            "digest": layer,
            "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": signature},
        }],
    }))
    .expect("manifest");
    let tag = format!("sha256-{}.sig", hex_of(digest));
    registry
        .put_manifest_bytes(REPO, &tag, OCI_MANIFEST, &manifest)
        .await;
}

/// Pushes a Sigstore bundle (a DSSE envelope of an in-toto statement about
/// `digest`, signed by `key`) as an artifact whose subject is `digest`, and
/// the referrers tag-schema index `sha256-<hex>` listing it.
async fn sign_bundle(registry: &TestRegistry, digest: &str, key: &Key) {
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": format!("{}/{REPO}", registry.host), "digest": {"sha256": hex_of(digest)}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }))
    .expect("statement");
    let payload_type = "application/vnd.in-toto+json";
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        statement.len()
    )
    .into_bytes();
    pae.extend_from_slice(&statement);
    let bundle = serde_json::to_vec(&json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": key.fingerprint()}},
        "dsseEnvelope": {
            "payload": STANDARD.encode(&statement),
            "payloadType": payload_type,
            "signatures": [{"sig": STANDARD.encode(key.sign(&pae)), "keyid": ""}],
        },
    }))
    .expect("bundle");
    let layer = registry.push_blob(REPO, &bundle).await;
    let empty = registry.push_blob(REPO, b"{}").await;
    let (subject_type, subject) = registry.manifest(REPO, digest).await.expect("the subject");
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": BUNDLE, "digest": layer, "size": bundle.len()}],
        "subject": {"mediaType": subject_type, "digest": digest, "size": subject.len()},
    }))
    .expect("artifact");
    let artifact_digest = format!("sha256:{}", hex::encode(Sha256::digest(&artifact)));
    registry
        .put_manifest_bytes(REPO, &artifact_digest, OCI_MANIFEST, &artifact)
        .await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE,
            "digest": artifact_digest,
            "size": artifact.len(),
        }],
    }))
    .expect("index");
    let tag = format!("sha256-{}", hex_of(digest));
    registry
        .put_manifest_bytes(REPO, &tag, OCI_INDEX, &index)
        .await;
}

/// Staging without a gate; production needs one approval and a signature
/// by one of `keys` (paths); rollbacks need no approval.
fn config(host: &str, keys: &[String]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!(
        "{}{}\n[[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n\n\
         [[environment]]\nname = \"production\"\ntag = \"production\"\nrequires = \"staging\"\n\
         approvers = [\"group:release-managers\"]\nrequired_approvals = 1\n\
         rollback_approvals = 0\nsignature_keys = [{}]\n",
        registry_toml(host),
        principals_toml(),
        keys.join(", ")
    )
}

struct Setup {
    registry: TestRegistry,
    server: TestServer,
    alice: Client,
    bob: Client,
    trusted: Key,
    ed25519: Key,
    _keys: tempfile::TempDir,
}

async fn setup() -> Setup {
    let registry = TestRegistry::start().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let trusted = Key::p256(1);
    let ed25519 = Key::ed25519(2);
    let paths = [
        trusted.write(keys.path(), "cosign.pub"),
        ed25519.write(keys.path(), "ed25519.pub"),
    ];
    let server = TestServer::start(&config(&registry.host, &paths));
    let (alice, bob) = (server.client("alice").await, server.client("bob").await);
    Setup {
        registry,
        server,
        alice,
        bob,
        trusted,
        ed25519,
        _keys: keys,
    }
}

impl Setup {
    fn repo(&self) -> String {
        format!("{}/{REPO}", self.registry.host)
    }

    /// Pushes image `seed` under `dev` and promotes it to staging.
    async fn staged(&mut self, seed: u64) -> String {
        let digest = self.registry.push_image(REPO, Some("dev"), 256, seed).await;
        self.alice
            .request_promotion(request_to(&self.repo(), "dev", "staging"))
            .await
            .expect("staging");
        digest
    }

    /// Requests production for what staging carries; returns the id.
    async fn request_production(&mut self) -> String {
        self.alice
            .request_promotion(request_to(&self.repo(), "staging", "production"))
            .await
            .expect("request production")
            .into_inner()
            .id
    }

    /// The attributes of the entry that made `id` APPROVED.
    async fn approving_attributes(
        &mut self,
        id: &str,
    ) -> std::collections::BTreeMap<String, String> {
        history(
            &mut self.alice,
            HistoryRequest {
                promotion_id: id.to_owned(),
                ..Default::default()
            },
        )
        .await
        .into_iter()
        .find(|e| e.attributes.contains_key("policy"))
        .expect("the approving entry")
        .attributes
    }
}

#[tokio::test]
async fn a_signed_image_is_promoted_and_its_approval_names_the_key() {
    let mut s = setup().await;
    let digest = s.staged(1).await;
    sign_legacy(&s.registry, &digest, &digest, &s.trusted).await;
    let id = s.request_production().await;
    let gates = s
        .alice
        .evaluate_gates(EvaluateGatesRequest {
            promotion_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("evaluate gates")
        .into_inner();
    let g = gates
        .gates
        .iter()
        .find(|g| g.name == "signature")
        .expect("EvaluateGates lists the signature gate");
    assert!(g.passed, "{g:?}");
    assert!(g.message.contains(&s.trusted.fingerprint()), "{g:?}");
    let done = s
        .bob
        .approve(approve(&id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    let attributes = s.approving_attributes(&id).await;
    assert_eq!(attributes["signature"], s.trusted.fingerprint());
    assert_eq!(
        s.registry.tag_digest(REPO, "production").await.as_deref(),
        Some(digest.as_str())
    );

    // An Ed25519 key from the list works the same way.
    let second = s.staged(2).await;
    sign_legacy(&s.registry, &second, &second, &s.ed25519).await;
    let id = s.request_production().await;
    let done = s
        .bob
        .approve(approve(&id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    assert_eq!(
        s.approving_attributes(&id).await["signature"],
        s.ed25519.fingerprint()
    );
}

/// The approval that would complete `id` is refused for want of a
/// signature; the message (after `signature: `) is returned.
/// The signature gate's message for `id` as EvaluateGates reports it,
/// prefixed `signature: `, asserting that it blocks.
async fn refused(s: &mut Setup, id: &str) -> String {
    let report = s
        .bob
        .evaluate_gates(prodgate::pb::EvaluateGatesRequest {
            promotion_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("evaluate")
        .into_inner();
    let g = report
        .gates
        .iter()
        .find(|g| g.name == "signature")
        .unwrap_or_else(|| panic!("a signature gate: {report:?}"));
    assert!(!g.passed, "{g:?}");
    format!("signature: {}", g.message)
}

/// A signature arrives in the registry, not through prodgate: a reload
/// (SIGHUP) makes the waiting promotions be looked at at once rather than
/// at the next periodic recheck.
async fn look_again(s: &Setup) {
    s.server.hangup();
}

#[tokio::test]
async fn unsigned_wrong_key_and_another_digests_signature_block() {
    let mut s = setup().await;
    let digest = s.staged(1).await;
    let other = s.registry.push_image(REPO, None, 256, 99).await;
    let id = s.request_production().await;
    let legacy = format!("{}:sha256-{}.sig", s.repo(), hex_of(&digest));
    // The approval is recorded; the promotion waits for a signature.
    let waiting = s
        .bob
        .approve(approve(&id))
        .await
        .expect("recorded")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    assert_eq!(waiting.waiting_for, ["signature"]);

    // Unsigned: the message names where it looked and how to sign.
    let m = refused(&mut s, &id).await;
    assert!(
        m.starts_with(&format!(
            "signature: no signature of {digest} found (looked for {legacy} or "
        )),
        "{m}"
    );
    assert!(m.contains("cosign sign --key"), "{m}");
    assert!(m.contains(&s.trusted.fingerprint()), "{m}");

    // Signed, but by a key production does not trust.
    sign_legacy(&s.registry, &digest, &digest, &Key::p256(9)).await;
    let m = refused(&mut s, &id).await;
    assert!(
        m.contains("verifies with none of the configured keys"),
        "{m}"
    );

    // A valid signature by the trusted key of another digest, put under
    // this digest's tag.
    sign_legacy(&s.registry, &digest, &other, &s.trusted).await;
    let m = refused(&mut s, &id).await;
    assert!(
        m.contains(&format!("it signs \"{other}\", not this digest")),
        "{m}"
    );

    let p = support::get(&mut s.alice, &id).await;
    assert_eq!(p.state, PromotionState::Waiting as i32, "{p:?}");
    assert_ne!(
        s.registry.tag_digest(REPO, "production").await.as_deref(),
        Some(digest.as_str())
    );

    // Signed properly at last: it ships without another approval.
    sign_legacy(&s.registry, &digest, &digest, &s.trusted).await;
    look_again(&s).await;
    support::wait_for_state(
        &mut s.alice,
        &id,
        PromotionState::Promoted,
        std::time::Duration::from_secs(20),
    )
    .await;
}

#[tokio::test]
async fn a_sigstore_bundle_in_the_referrers_index_is_a_signature() {
    let mut s = setup().await;
    let digest = s.staged(1).await;
    sign_bundle(&s.registry, &digest, &s.trusted).await;
    let id = s.request_production().await;
    let done = s
        .bob
        .approve(approve(&id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    assert_eq!(
        s.approving_attributes(&id).await["signature"],
        s.trusted.fingerprint()
    );
}

#[tokio::test]
async fn a_rollback_checks_the_signature_again() {
    let mut s = setup().await;
    let old = s.staged(1).await;
    sign_legacy(&s.registry, &old, &old, &s.trusted).await;
    let id = s.request_production().await;
    s.bob.approve(approve(&id)).await.expect("approve old");
    let new = s.staged(2).await;
    sign_legacy(&s.registry, &new, &new, &s.trusted).await;
    let id = s.request_production().await;
    s.bob.approve(approve(&id)).await.expect("approve new");

    // The old digest's signature is gone (say, its key's signatures were
    // purged): a rollback to it is refused, though it passed before.
    let sig = format!("sha256-{}.sig", hex_of(&old));
    let sig_digest = s
        .registry
        .tag_digest(REPO, &sig)
        .await
        .expect("the old signature");
    s.registry.delete_manifest(REPO, &sig_digest).await;
    let rollback = RollbackRequest {
        repository: s.repo(),
        environment: "production".into(),
        digest: String::new(),
        reason: "INC-7: new build breaks checkout".into(),
        request_id: String::new(),
        break_glass: false,
    };
    let waiting = s
        .alice
        .rollback(rollback)
        .await
        .expect("the rollback is opened")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    assert_eq!(
        waiting.waiting_for,
        ["signature"],
        "the old digest is no longer signed"
    );
    let m = refused(&mut s, &waiting.id).await;
    assert!(m.contains("signature: no signature of"), "{m}");

    sign_legacy(&s.registry, &old, &old, &s.trusted).await;
    look_again(&s).await;
    let done = support::wait_for_state(
        &mut s.alice,
        &waiting.id,
        PromotionState::Promoted,
        std::time::Duration::from_secs(20),
    )
    .await;
    assert_eq!(done.digest, old);
    assert_eq!(
        s.approving_attributes(&done.id).await["signature"],
        s.trusted.fingerprint()
    );
}
