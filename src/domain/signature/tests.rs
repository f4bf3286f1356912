//! Keys and signatures made here with the same crates cosign's formats
//! name (ECDSA P-256 with SHA-256 in DER, Ed25519), fed to the verifier.

use super::*;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{EncodePublicKey, LineEnding};

const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OTHER: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn p256_key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
}

fn p256_pem(k: &p256::ecdsa::SigningKey) -> String {
    k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap()
}

fn ed25519_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

/// SubjectPublicKeyInfo of an Ed25519 key (RFC 8410), as PEM.
fn ed25519_pem(k: &ed25519_dalek::SigningKey) -> String {
    let mut der = hex::decode("302a300506032b6570032100").unwrap();
    der.extend_from_slice(k.verifying_key().as_bytes());
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(der)
    )
}

fn payload(digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": "127.0.0.1:5000/team/app"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap()
}

fn sign_p256(k: &p256::ecdsa::SigningKey, message: &[u8]) -> String {
    let sig: p256::ecdsa::DerSignature = k.sign(message);
    STANDARD.encode(sig.as_bytes())
}

fn sign_ed25519(k: &ed25519_dalek::SigningKey, message: &[u8]) -> String {
    use ed25519_dalek::Signer;
    STANDARD.encode(k.sign(message).to_bytes())
}

fn key(pem: &str) -> SignatureKey {
    SignatureKey::from_pem(pem.as_bytes()).unwrap()
}

#[test]
fn keys_read_from_pem_with_the_fingerprint_of_their_der() {
    let p = p256_key(1);
    let k = key(&p256_pem(&p));
    let der = p.verifying_key().to_public_key_der().unwrap();
    assert_eq!(
        k.fingerprint,
        format!("sha256:{}", hex::encode(Sha256::digest(der.as_bytes())))
    );
    let e = key(&ed25519_pem(&ed25519_key(2)));
    assert!(e.fingerprint.starts_with("sha256:"));
    assert_ne!(e.fingerprint, k.fingerprint);
}

#[test]
fn other_files_are_refused_saying_what_they_are() {
    assert_eq!(SignatureKey::from_pem(b"not a key"), Err(KeyError::NotPem));
    let private = "-----BEGIN PRIVATE KEY-----\nMBswDQYJKoZIhvcNAQEBBQADCgAwBwICAQACAQM=\n-----END PRIVATE KEY-----\n";
    assert_eq!(
        SignatureKey::from_pem(private.as_bytes()),
        Err(KeyError::NotPublicKey("PRIVATE KEY".into()))
    );
    // An RSA key (rsaEncryption, 1.2.840.113549.1.1.1) with a dummy body.
    let rsa = "-----BEGIN PUBLIC KEY-----\nMBswDQYJKoZIhvcNAQEBBQADCgAwBwICAQACAQM=\n-----END PUBLIC KEY-----\n";
    assert!(matches!(
        SignatureKey::from_pem(rsa.as_bytes()),
        Err(KeyError::Unsupported(a)) if a.contains("1.2.840.113549.1.1.1")
    ));
}

#[test]
fn tags_derive_from_sha256_digests_only() {
    assert_eq!(
        legacy_tag(DIGEST).unwrap(),
        format!("sha256-{}.sig", &DIGEST[7..])
    );
    assert_eq!(
        referrers_tag(DIGEST).unwrap(),
        format!("sha256-{}", &DIGEST[7..])
    );
    assert_eq!(legacy_tag("sha512:abcd"), None);
    assert_eq!(legacy_tag(&DIGEST.to_uppercase()), None);
}

#[test]
fn a_simple_signing_payload_verifies_by_p256_and_ed25519() {
    let p = p256_key(1);
    let e = ed25519_key(2);
    let keys = [key(&p256_pem(&p)), key(&ed25519_pem(&e))];
    let body = payload(DIGEST);
    let by_p256 = verify_simple_signing(DIGEST, &keys, &body, &sign_p256(&p, &body)).unwrap();
    assert_eq!(by_p256.fingerprint, keys[0].fingerprint);
    let by_ed = verify_simple_signing(DIGEST, &keys, &body, &sign_ed25519(&e, &body)).unwrap();
    assert_eq!(by_ed.fingerprint, keys[1].fingerprint);
}

#[test]
fn a_signature_by_another_key_over_other_bytes_or_for_another_digest_fails() {
    let p = p256_key(1);
    let keys = [key(&p256_pem(&p))];
    let body = payload(DIGEST);
    // Another key.
    let stranger = p256_key(9);
    assert_eq!(
        verify_simple_signing(DIGEST, &keys, &body, &sign_p256(&stranger, &body)),
        Err(Rejection::NoKey)
    );
    // The signature is over the exact bytes: re-serialized JSON differs.
    let sig = sign_p256(&p, &body);
    let mut spaced = body.clone();
    spaced.push(b' ');
    assert_eq!(
        verify_simple_signing(DIGEST, &keys, &spaced, &sig),
        Err(Rejection::NoKey)
    );
    // A valid signature of a payload naming another digest.
    let other = payload(OTHER);
    assert_eq!(
        verify_simple_signing(DIGEST, &keys, &other, &sign_p256(&p, &other)),
        Err(Rejection::OtherDigest(format!("{OTHER:?}")))
    );
    assert_eq!(
        verify_simple_signing(DIGEST, &keys, b"{}", &sig),
        Err(Rejection::NotSimpleSigning)
    );
    assert_eq!(
        verify_simple_signing(DIGEST, &keys, &body, "not base64!"),
        Err(Rejection::NotBase64)
    );
}

fn bundle(digest_hex: &str, sign: impl Fn(&[u8]) -> String) -> Vec<u8> {
    let statement = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "127.0.0.1:5000/team/app", "digest": {"sha256": digest_hex}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }))
    .unwrap();
    let sig = sign(&pae(IN_TOTO_PAYLOAD_TYPE, &statement));
    serde_json::to_vec(&serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "test"}},
        "dsseEnvelope": {
            "payload": STANDARD.encode(&statement),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": sig, "keyid": ""}],
        },
    }))
    .unwrap()
}

#[test]
fn the_dsse_pae_is_the_specs() {
    assert_eq!(
        pae("http://example.com/HelloWorld", b"hello world"),
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    );
}

#[test]
fn a_bundle_verifies_when_its_statement_names_the_digest() {
    let p = p256_key(1);
    let keys = [key(&p256_pem(&p))];
    let good = bundle(&DIGEST[7..], |m| sign_p256(&p, m));
    assert_eq!(
        verify_bundle(DIGEST, &keys, &good).unwrap().fingerprint,
        keys[0].fingerprint
    );
    let other = bundle(&OTHER[7..], |m| sign_p256(&p, m));
    assert_eq!(
        verify_bundle(DIGEST, &keys, &other),
        Err(Rejection::NotSubject)
    );
    let stranger = p256_key(9);
    let foreign = bundle(&DIGEST[7..], |m| sign_p256(&stranger, m));
    assert_eq!(
        verify_bundle(DIGEST, &keys, &foreign),
        Err(Rejection::NoKey)
    );
    assert_eq!(
        verify_bundle(DIGEST, &keys, br#"{"messageSignature":{}}"#),
        Err(Rejection::NotDsseBundle)
    );
}

#[test]
fn the_verdict_names_the_first_valid_signature_or_every_reason() {
    let p = p256_key(1);
    let keys = [key(&p256_pem(&p))];
    let body = payload(DIGEST);
    let unreadable = Candidate::Unreadable {
        source: "r:t layer 0".into(),
        why: "its payload blob is missing".into(),
    };
    let good = Candidate::SimpleSigning {
        source: "r:t layer 1".into(),
        payload: body.clone(),
        signature: sign_p256(&p, &body),
    };
    let found = Found {
        looked_at: vec!["r:t".into()],
        candidates: vec![unreadable.clone(), good],
    };
    assert_eq!(
        verify(DIGEST, &keys, &found),
        Verdict::Verified {
            fingerprint: keys[0].fingerprint.clone(),
            source: "r:t layer 1".into()
        }
    );
    let bad = Found {
        looked_at: vec!["r:t".into()],
        candidates: vec![unreadable],
    };
    assert_eq!(
        verify(DIGEST, &keys, &bad),
        Verdict::Invalid {
            reasons: vec!["r:t layer 0: its payload blob is missing".into()]
        }
    );
    assert_eq!(
        verify(
            DIGEST,
            &keys,
            &Found {
                looked_at: vec!["r:t".into()],
                candidates: vec![],
            }
        ),
        Verdict::Unsigned {
            looked_at: vec!["r:t".into()]
        }
    );
}
