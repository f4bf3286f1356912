//! Checking one of prodgate's attestations without the server, the way an
//! admission controller (Kyverno's `verifyImages`, `cosign
//! verify-attestation --key`) does: a DSSE envelope's bytes, the attestation
//! public key, the image digest and the environment in, the accepted
//! summary or the precise reason for refusing it out. Pure: no I/O; the
//! `verify-image` command fetches the envelopes.
//!
//! The order is DSSE's: nothing in the payload is looked at before a
//! signature over its PAE verifies, so a reason that quotes the statement
//! quotes what the key signed. What is quoted is cut to a few dozen
//! characters (the envelope is the registry's, up to the caller's limit).

use super::{PAYLOAD_TYPE, STATEMENT_TYPE, VSA_TYPE, level, pae};
use crate::domain::names::echo;
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::Value;

/// An attestation public key (what `attest.pub` holds).
pub type PublicKey = VerifyingKey;

/// Signatures tried per envelope: each costs a P-256 verification, and an
/// envelope of a megabyte could list thousands. cosign writes one.
pub const MAX_SIGNATURES: usize = 16;

/// The verdict the VSA must state.
const PASSED: &str = "PASSED";

// DSSE lets a signer use the standard or the URL-safe alphabet, padded or
// not; cosign writes standard and padded.
const PADDING: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, PADDING);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, PADDING);

fn base64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).or_else(|_| URL_SAFE.decode(s)).ok()
}

/// Why a key file is not an attestation public key (never its content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an ECDSA P-256 public key in PEM (-----BEGIN PUBLIC KEY-----), as `prodgate keygen --attest` writes attest.pub"
)]
pub struct NotAPublicKey;

/// The key of a PEM file (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo).
pub fn public_key(pem: &str) -> Result<PublicKey, NotAPublicKey> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|_| NotAPublicKey)
}

/// What an accepted attestation says, for the report. Every field but
/// `environment` is what the VSA states, if it states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub environment: String,
    /// `promotionId` (prodgate's own field), as a string or a number.
    pub promotion_id: Option<String>,
    pub time_verified: Option<String>,
    pub verifier_id: Option<String>,
    /// `sha256:<hex>` of `policy.digest.sha256`.
    pub policy_digest: Option<String>,
}

impl std::fmt::Display for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VSA {PASSED} for {}", self.environment)?;
        if let Some(id) = &self.promotion_id {
            write!(f, ", promotion {id}")?;
        }
        if let Some(t) = &self.time_verified {
            write!(f, ", verified {t}")?;
        }
        if let Some(v) = &self.verifier_id {
            write!(f, " by {v}")?;
        }
        if let Some(p) = &self.policy_digest {
            write!(f, ", policy {p}")?;
        }
        Ok(())
    }
}

/// Why an envelope does not attest the image for the environment. Values
/// quoted are cut ([`echo`]); only [`Rejection::PayloadType`]'s is unsigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not a DSSE envelope: {0}")]
    NotAnEnvelope(String),
    #[error("payload type {0:?}, not {PAYLOAD_TYPE}")]
    PayloadType(String),
    #[error("the payload is not base64")]
    PayloadEncoding,
    #[error("the envelope has no signatures")]
    Unsigned,
    /// No signature (of the first [`MAX_SIGNATURES`]) verifies: another
    /// key signed it, or the payload changed since.
    #[error("the signature does not verify with the key")]
    Signature,
    #[error("the payload is not an in-toto statement: {0}")]
    NotAStatement(String),
    #[error("statement type {0:?}, not {STATEMENT_TYPE}")]
    StatementType(String),
    /// A signed statement of another kind (provenance, an SBOM…): not a
    /// VSA, so it says nothing either way.
    #[error("predicate {0}")]
    Predicate(String),
    /// `found`: the first subject's sha256, if it has one.
    #[error("about {}, not {digest}", found.as_ref().map_or_else(|| "no sha256 subject".to_owned(), |h| format!("sha256:{h}")))]
    Subject {
        digest: String,
        found: Option<String>,
    },
    #[error("verification result {0}, not {PASSED}")]
    Result(String),
    #[error("for environment {found}, not {wanted}")]
    Environment { wanted: String, found: String },
    #[error("verifiedLevels lacks {0}")]
    Level(String),
}

/// Checks `envelope` (a DSSE envelope's JSON) against `key`, then its
/// statement: an in-toto Statement v1 whose subject includes `digest`
/// (`sha256:<hex>`), whose predicate is a VSA that PASSED for
/// `environment` and lists its [`level`].
pub fn verify(
    envelope: &[u8],
    key: &PublicKey,
    digest: &str,
    environment: &str,
) -> Result<Accepted, Rejection> {
    let envelope: super::Envelope = serde_json::from_slice(envelope)
        .map_err(|e| Rejection::NotAnEnvelope(without_position(&e)))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(Rejection::PayloadType(echo(&envelope.payload_type)));
    }
    let body = base64(&envelope.payload).ok_or(Rejection::PayloadEncoding)?;
    if envelope.signatures.is_empty() {
        return Err(Rejection::Unsigned);
    }
    let message = pae(&envelope.payload_type, &body);
    let verifies = envelope
        .signatures
        .iter()
        .take(MAX_SIGNATURES)
        .filter_map(|s| Signature::from_der(&base64(&s.sig)?).ok())
        .any(|sig| key.verify(&message, &sig).is_ok());
    if !verifies {
        return Err(Rejection::Signature);
    }
    let statement: Value = serde_json::from_slice(&body)
        .map_err(|e| Rejection::NotAStatement(without_position(&e)))?;
    if !statement.is_object() {
        return Err(Rejection::NotAStatement("not a JSON object".into()));
    }
    check_statement(&statement, digest, environment)
}

fn check_statement(st: &Value, digest: &str, environment: &str) -> Result<Accepted, Rejection> {
    let text = |v: &Value| v.as_str().map(echo);
    let shown = |v: &Value| text(v).unwrap_or_else(|| "(none)".to_owned());
    if st["_type"] != STATEMENT_TYPE {
        return Err(Rejection::StatementType(shown(&st["_type"])));
    }
    if st["predicateType"] != VSA_TYPE {
        return Err(Rejection::Predicate(shown(&st["predicateType"])));
    }
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let subjects = st["subject"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !subjects.iter().any(|s| s["digest"]["sha256"] == hex) {
        return Err(Rejection::Subject {
            digest: digest.to_owned(),
            found: subjects.first().and_then(|s| text(&s["digest"]["sha256"])),
        });
    }
    let p = &st["predicate"];
    if p["verificationResult"] != PASSED {
        return Err(Rejection::Result(shown(&p["verificationResult"])));
    }
    if p["environment"] != environment {
        return Err(Rejection::Environment {
            wanted: environment.to_owned(),
            found: shown(&p["environment"]),
        });
    }
    let wanted = level(environment);
    let levels = p["verifiedLevels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if !levels.iter().any(|l| *l == wanted.as_str()) {
        return Err(Rejection::Level(wanted));
    }
    Ok(Accepted {
        environment: environment.to_owned(),
        promotion_id: match &p["promotionId"] {
            Value::String(s) => Some(echo(s)),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        },
        time_verified: text(&p["timeVerified"]),
        verifier_id: text(&p["verifier"]["id"]),
        policy_digest: text(&p["policy"]["digest"]["sha256"]).map(|h| format!("sha256:{h}")),
    })
}

/// serde_json's message without "at line 1 column 9": the reason is what
/// helps, and it never quotes the input.
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::{Attestor, Envelope, Summary, keygen, statement};
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{DerSignature, SigningKey};
    use p256::pkcs8::DecodePrivateKey;
    use serde_json::json;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn summary(environment: &str) -> Summary<'_> {
        let mut extra = serde_json::Map::new();
        extra.insert("promotionId".into(), json!("42"));
        Summary {
            verifier_id: "https://prodgate.example",
            repository: "reg.test/team/app",
            digest: DIGEST,
            environment,
            project: "",
            policy_digest: "sha256:abcd",
            time_verified: "2026-12-07T18:00:00Z",
            extra,
        }
    }

    struct Keys {
        attestor: Attestor,
        public: PublicKey,
        private_pem: String,
    }

    fn keys() -> Keys {
        let (private_pem, public_pem) = keygen();
        Keys {
            attestor: Attestor::from_pem(&private_pem).unwrap(),
            public: public_key(&public_pem).unwrap(),
            private_pem,
        }
    }

    fn bytes(e: &Envelope) -> Vec<u8> {
        serde_json::to_vec(e).unwrap()
    }

    /// An envelope over `statement` as it stands, signed by `keys`, built
    /// here from the DSSE spec (PAE written out by hand, not [`pae`]).
    fn signed_by_hand(keys: &Keys, payload_type: &str, statement: &Value) -> Vec<u8> {
        let body = serde_json::to_vec(statement).unwrap();
        let mut message = format!("DSSEv1 {} {payload_type} ", payload_type.len()).into_bytes();
        message.extend(format!("{} ", body.len()).bytes());
        message.extend(&body);
        let key = SigningKey::from_pkcs8_pem(&keys.private_pem).unwrap();
        let sig: DerSignature = key.sign(&message);
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::to_vec(&json!({
            "payloadType": payload_type,
            "payload": b64.encode(&body),
            "signatures": [{"keyid": "", "sig": b64.encode(sig.as_bytes())}],
        }))
        .unwrap()
    }

    #[test]
    fn prodgates_own_attestation_is_accepted_for_its_digest_and_environment() {
        let k = keys();
        let e = k.attestor.sign(&statement(&summary("production")));
        let a = verify(&bytes(&e), &k.public, DIGEST, "production").unwrap();
        assert_eq!(
            a.to_string(),
            "VSA PASSED for production, promotion 42, verified 2026-12-07T18:00:00Z by \
             https://prodgate.example, policy sha256:abcd"
        );
    }

    #[test]
    fn the_signature_is_checked_over_the_spec_s_pae_built_independently() {
        let k = keys();
        let st = statement(&summary("production"));
        let envelope = signed_by_hand(&k, PAYLOAD_TYPE, &st);
        assert!(verify(&envelope, &k.public, DIGEST, "production").is_ok());
        // The same bytes signed with the PAE's lengths off by one are not.
        let body = serde_json::to_vec(&st).unwrap();
        let wrong = format!(
            "DSSEv1 {} {PAYLOAD_TYPE} {} ",
            PAYLOAD_TYPE.len(),
            body.len() + 1
        );
        let mut message = wrong.into_bytes();
        message.extend(&body);
        let key = SigningKey::from_pkcs8_pem(&k.private_pem).unwrap();
        let sig: DerSignature = key.sign(&message);
        let mut e: Envelope = serde_json::from_slice(&envelope).unwrap();
        e.signatures[0].sig = base64::engine::general_purpose::STANDARD.encode(sig.as_bytes());
        assert_eq!(
            verify(&bytes(&e), &k.public, DIGEST, "production"),
            Err(Rejection::Signature)
        );
    }

    #[test]
    fn another_key_or_a_changed_payload_does_not_verify() {
        let k = keys();
        let e = k.attestor.sign(&statement(&summary("production")));
        assert_eq!(
            verify(&bytes(&e), &keys().public, DIGEST, "production"),
            Err(Rejection::Signature)
        );
        // The statement made to say staging after it was signed.
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut st: Value = serde_json::from_slice(&b64.decode(&e.payload).unwrap()).unwrap();
        st["subject"][0]["digest"]["sha256"] = json!(&OTHER[7..]);
        let mut tampered = e.clone();
        tampered.payload = b64.encode(serde_json::to_vec(&st).unwrap());
        assert_eq!(
            verify(&bytes(&tampered), &k.public, OTHER, "production"),
            Err(Rejection::Signature)
        );
        // One good signature among bad ones is enough; none at all is not.
        let mut more = e.clone();
        more.signatures.insert(0, e.signatures[0].clone());
        more.signatures[0].sig = "AAAA".into();
        assert!(verify(&bytes(&more), &k.public, DIGEST, "production").is_ok());
        let mut none = e.clone();
        none.signatures.clear();
        assert_eq!(
            verify(&bytes(&none), &k.public, DIGEST, "production"),
            Err(Rejection::Unsigned)
        );
    }

    #[test]
    fn a_signed_envelope_of_another_payload_type_is_refused() {
        let k = keys();
        let st = statement(&summary("production"));
        let e = signed_by_hand(&k, "application/json", &st);
        assert_eq!(
            verify(&e, &k.public, DIGEST, "production"),
            Err(Rejection::PayloadType("application/json".into()))
        );
    }

    #[test]
    fn what_the_statement_says_must_match_the_image_and_environment() {
        let k = keys();
        let ok = statement(&summary("production"));
        let check = |st: &Value, digest: &str, env: &str| {
            verify(
                &signed_by_hand(&k, PAYLOAD_TYPE, st),
                &k.public,
                digest,
                env,
            )
        };
        assert_eq!(
            check(&ok, OTHER, "production"),
            Err(Rejection::Subject {
                digest: OTHER.into(),
                found: Some(DIGEST[7..].into())
            })
        );
        assert_eq!(
            check(&ok, OTHER, "production").unwrap_err().to_string(),
            format!("about {DIGEST}, not {OTHER}")
        );
        let staging = check(&statement(&summary("staging")), DIGEST, "production").unwrap_err();
        assert_eq!(
            staging.to_string(),
            "for environment staging, not production"
        );

        let mut failed = ok.clone();
        failed["predicate"]["verificationResult"] = json!("FAILED");
        assert_eq!(
            check(&failed, DIGEST, "production"),
            Err(Rejection::Result("FAILED".into()))
        );
        let mut unlevelled = ok.clone();
        unlevelled["predicate"]["verifiedLevels"] = json!(["PRODGATE_ENVIRONMENT_STAGING"]);
        assert_eq!(
            check(&unlevelled, DIGEST, "production"),
            Err(Rejection::Level("PRODGATE_ENVIRONMENT_PRODUCTION".into()))
        );
        let mut provenance = ok.clone();
        provenance["predicateType"] = json!("https://slsa.dev/provenance/v1");
        assert_eq!(
            check(&provenance, DIGEST, "production"),
            Err(Rejection::Predicate(
                "https://slsa.dev/provenance/v1".into()
            ))
        );
        let mut v01 = ok.clone();
        v01["_type"] = json!("https://in-toto.io/Statement/v0.1");
        assert!(matches!(
            check(&v01, DIGEST, "production"),
            Err(Rejection::StatementType(_))
        ));
        let mut several = ok.clone();
        several["subject"] = json!([
            {"name": "a", "digest": {"sha256": &OTHER[7..]}},
            {"name": "b", "digest": {"sha256": &DIGEST[7..]}},
        ]);
        assert!(check(&several, DIGEST, "production").is_ok());
        let mut numbered = ok.clone();
        numbered["predicate"]["promotionId"] = json!(7);
        assert_eq!(
            check(&numbered, DIGEST, "production")
                .unwrap()
                .promotion_id
                .as_deref(),
            Some("7")
        );
    }

    #[test]
    fn what_is_not_an_envelope_or_a_statement_is_refused_without_quoting_it() {
        let k = keys();
        for bad in [&b"not json"[..], b"[]", b"{\"payloadType\": 1}"] {
            let r = verify(bad, &k.public, DIGEST, "production").unwrap_err();
            assert!(matches!(r, Rejection::NotAnEnvelope(_)), "{r:?}");
            assert!(!r.to_string().contains("not json"), "{r}");
        }
        let not_b64 = json!({"payloadType": PAYLOAD_TYPE, "payload": "!!", "signatures": []});
        assert_eq!(
            verify(
                &serde_json::to_vec(&not_b64).unwrap(),
                &k.public,
                DIGEST,
                "p"
            ),
            Err(Rejection::PayloadEncoding)
        );
        // Signed, but the body is not JSON.
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = SigningKey::from_pkcs8_pem(&k.private_pem).unwrap();
        let sig: DerSignature = key.sign(&pae(PAYLOAD_TYPE, b"hello"));
        let e = Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: b64.encode(b"hello"),
            signatures: vec![crate::attest::EnvelopeSignature {
                keyid: String::new(),
                sig: b64.encode(sig.as_bytes()),
            }],
        };
        assert!(matches!(
            verify(&bytes(&e), &k.public, DIGEST, "production"),
            Err(Rejection::NotAStatement(_))
        ));
        // A quoted value is cut.
        let long = "x".repeat(10_000);
        let e = signed_by_hand(&k, &long, &json!({}));
        let r = verify(&e, &k.public, DIGEST, "production").unwrap_err();
        assert!(r.to_string().len() < 200, "{r}");
    }

    #[test]
    fn the_url_safe_unpadded_base64_dsse_allows_is_read() {
        let k = keys();
        let mut e = k.attestor.sign(&statement(&summary("production")));
        let std = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        e.payload = url.encode(std.decode(&e.payload).unwrap());
        e.signatures[0].sig = url.encode(std.decode(&e.signatures[0].sig).unwrap());
        assert!(verify(&bytes(&e), &k.public, DIGEST, "production").is_ok());
    }

    #[test]
    fn public_keys_are_read_from_pem_and_nothing_else_without_echoing_it() {
        let (private, public) = keygen();
        assert!(public_key(&public).is_ok());
        for bad in [
            "",
            "secret",
            private.as_str(),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        ] {
            let e = public_key(bad).unwrap_err().to_string();
            assert!(e.contains("BEGIN PUBLIC KEY") && !e.contains("AAAA"), "{e}");
        }
    }
}
