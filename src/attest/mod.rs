//! Signed in-toto attestations of prodgate's decisions (issue 21's first
//! part): an in-toto Statement v1 whose predicate is a SLSA Verification
//! Summary Attestation, in a DSSE envelope signed with an ECDSA P-256 key,
//! the kind `cosign import-key-pair` takes and `cosign verify-attestation
//! --key` checks. This module is pure: building the statement, the DSSE
//! pre-authentication encoding, the signature, and making a key pair;
//! [`verify`] is the other side, what an admission controller checks.
//!
//! DSSE (<https://github.com/secure-systems-lab/dsse>, protocol v1): the
//! signature covers `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP
//! LEN(body) SP body`, LEN in ASCII decimal; the envelope carries the body
//! base64-encoded (standard alphabet, padded) and each signature's `sig`
//! base64 of the ASN.1 DER ECDSA signature, as cosign writes it.

pub mod verify;

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The envelope's `payloadType`.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The Statement's `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of a Verification Summary Attestation.
pub const VSA_TYPE: &str = "https://slsa.dev/verification_summary/v1";

/// A DSSE envelope, serialized as its JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    /// base64 of the Statement's JSON bytes.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Empty: cosign's key-based attestations name no key id.
    pub keyid: String,
    /// base64 of the ASN.1 DER signature over the PAE.
    pub sig: String,
}

/// The DSSE v1 pre-authentication encoding of `body` under `payload_type`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Signs statements with an attestation key.
pub struct Attestor {
    key: SigningKey,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attestor(<P-256 key redacted>)")
    }
}

/// Why a key file is not an attestation key (never its content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an ECDSA P-256 private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----); make one with `prodgate keygen --attest`"
)]
pub struct NotAKey;

impl Attestor {
    /// The key of a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Attestor, NotAKey> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(|key| Attestor { key })
            .map_err(|_| NotAKey)
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`), what
    /// `cosign verify-attestation --key` takes.
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("a P-256 public key encodes")
    }

    /// `statement` in a DSSE envelope signed with this key.
    pub fn sign(&self, statement: &Value) -> Envelope {
        let body = serde_json::to_vec(statement).expect("JSON values serialize");
        let signature: DerSignature = self.key.sign(&pae(PAYLOAD_TYPE, &body));
        let b64 = base64::engine::general_purpose::STANDARD;
        Envelope {
            payload_type: PAYLOAD_TYPE.to_owned(),
            payload: b64.encode(&body),
            signatures: vec![EnvelopeSignature {
                keyid: String::new(),
                sig: b64.encode(signature.as_bytes()),
            }],
        }
    }
}

/// A new key pair: the private key as PKCS#8 PEM, the public key as PEM.
pub fn keygen() -> (String, String) {
    let key = loop {
        // A uniformly random 32-byte string is a valid scalar but for a
        // negligible fraction of values: draw again then.
        if let Ok(k) = SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
            break k;
        }
    };
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("a P-256 key encodes")
        .to_string();
    let public = Attestor { key }.public_pem();
    (private, public)
}

/// What one verification summary says: prodgate (`verifier_id`) found
/// `repository@digest` allowed into `environment` under a policy version.
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    pub verifier_id: &'a str,
    pub repository: &'a str,
    /// `sha256:<hex>`.
    pub digest: &'a str,
    pub environment: &'a str,
    /// The `[[project]]` governing the repository ("" for the top level).
    pub project: &'a str,
    /// `sha256:<hex>` of the policy version in force.
    pub policy_digest: &'a str,
    /// RFC 3339: the APPLIED entry's time.
    pub time_verified: &'a str,
    /// Extra fields, which the VSA spec lets verifiers ignore (the
    /// promotion id, approvals, checks, the APPLIED entry…).
    pub extra: serde_json::Map<String, Value>,
}

/// The custom `verifiedLevels` entry naming an environment:
/// `PRODGATE_ENVIRONMENT_<NAME>` (upper-cased, `-` and `.` as `_`).
pub fn level(environment: &str) -> String {
    let name: String = environment
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    format!("PRODGATE_ENVIRONMENT_{name}")
}

/// The in-toto Statement v1 of `s`, its predicate a SLSA VSA v1.
pub fn statement(s: &Summary<'_>) -> Value {
    let hex = s.digest.strip_prefix("sha256:").unwrap_or(s.digest);
    let policy_hex = s
        .policy_digest
        .strip_prefix("sha256:")
        .unwrap_or(s.policy_digest);
    let project = if s.project.is_empty() { "-" } else { s.project };
    let mut predicate = json!({
        "verifier": { "id": s.verifier_id },
        "timeVerified": s.time_verified,
        "resourceUri": format!("{}@{}", s.repository, s.digest),
        "policy": {
            "uri": format!("{}/policy/{project}/{}", s.verifier_id.trim_end_matches('/'), s.environment),
            "digest": { "sha256": policy_hex },
        },
        "verificationResult": "PASSED",
        "verifiedLevels": [level(s.environment)],
        "environment": s.environment,
    });
    if let Value::Object(p) = &mut predicate {
        for (k, v) in &s.extra {
            p.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": s.repository, "digest": { "sha256": hex } }],
        "predicateType": VSA_TYPE,
        "predicate": predicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature, VerifyingKey};
    use p256::pkcs8::DecodePublicKey;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn summary() -> Summary<'static> {
        let mut extra = serde_json::Map::new();
        extra.insert("promotionId".into(), json!("42"));
        Summary {
            verifier_id: "https://prodgate.acme.test",
            repository: "reg.test/team/app",
            digest: DIGEST,
            environment: "production",
            project: "",
            policy_digest: "sha256:abcd",
            time_verified: "2026-12-07T16:00:00Z",
            extra,
        }
    }

    /// DSSE verification written from the spec, sharing nothing with the
    /// signing side but the crypto primitive.
    fn verify(envelope: &Envelope, public_pem: &str) -> Option<Value> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = b64.decode(&envelope.payload).ok()?;
        let mut message = b"DSSEv1 ".to_vec();
        message.extend(envelope.payload_type.len().to_string().bytes());
        message.push(b' ');
        message.extend(envelope.payload_type.bytes());
        message.push(b' ');
        message.extend(body.len().to_string().bytes());
        message.push(b' ');
        message.extend(&body);
        let key = VerifyingKey::from_public_key_pem(public_pem).ok()?;
        let ok = envelope.signatures.iter().any(|s| {
            b64.decode(&s.sig)
                .ok()
                .and_then(|der| Signature::from_der(&der).ok())
                .is_some_and(|sig| key.verify(&message, &sig).is_ok())
        });
        ok.then(|| serde_json::from_slice(&body).ok()).flatten()
    }

    #[test]
    fn a_signed_statement_verifies_under_its_public_key_only() {
        let (private, public) = keygen();
        assert!(
            private.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{private}"
        );
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
        let a = Attestor::from_pem(&private).unwrap();
        assert_eq!(a.public_pem(), public);
        let envelope = a.sign(&statement(&summary()));
        assert_eq!(envelope.payload_type, PAYLOAD_TYPE);
        assert_eq!(envelope.signatures[0].keyid, "");
        let st = verify(&envelope, &public).expect("verifies");
        assert_eq!(st["_type"], STATEMENT_TYPE);
        assert_eq!(st["predicateType"], VSA_TYPE);
        assert_eq!(st["subject"][0]["name"], "reg.test/team/app");
        assert_eq!(st["subject"][0]["digest"]["sha256"], &DIGEST[7..]);
        let p = &st["predicate"];
        assert_eq!(p["verificationResult"], "PASSED");
        assert_eq!(p["verifiedLevels"][0], "PRODGATE_ENVIRONMENT_PRODUCTION");
        assert_eq!(p["environment"], "production");
        assert_eq!(p["policy"]["digest"]["sha256"], "abcd");
        assert_eq!(p["resourceUri"], format!("reg.test/team/app@{DIGEST}"));
        assert_eq!(p["promotionId"], "42");

        // Another key, a changed payload, a changed type: no.
        let (_, other) = keygen();
        assert!(verify(&envelope, &other).is_none());
        let mut tampered = envelope.clone();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut body: Value =
            serde_json::from_slice(&b64.decode(&envelope.payload).unwrap()).unwrap();
        body["subject"][0]["digest"]["sha256"] = json!("2".repeat(64));
        tampered.payload = b64.encode(serde_json::to_vec(&body).unwrap());
        assert!(verify(&tampered, &public).is_none());
        let mut retyped = envelope.clone();
        retyped.payload_type = "application/json".into();
        assert!(verify(&retyped, &public).is_none());
    }

    #[test]
    fn the_pae_is_the_spec_s_example() {
        // DSSE protocol.md: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn keys_that_are_not_p256_pkcs8_are_refused_without_echoing_them() {
        for bad in [
            "",
            "secret",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        ] {
            let e = Attestor::from_pem(bad).unwrap_err().to_string();
            assert!(e.contains("PKCS#8") && !e.contains("AAAA"), "{e}");
        }
        assert_eq!(level("prod-eu.1"), "PRODGATE_ENVIRONMENT_PROD_EU_1");
    }
}
