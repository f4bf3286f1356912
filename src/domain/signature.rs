//! Cosign signatures of an image digest: the public keys an environment
//! trusts (`signature_keys`), where cosign keeps a signature in a registry
//! without a referrers API, and the verification of what was found there.
//! Pure: the use case reads the registry and hands the bytes here.
//!
//! Two forms are read, both under tags derived from the digest:
//! - the legacy `sha256-<hex>.sig` image manifest: each layer of media type
//!   [`SIMPLE_SIGNING_MEDIA_TYPE`] is a simple-signing payload (JSON whose
//!   `critical.image.docker-manifest-digest` names the signed digest) and
//!   carries the base64 signature over the payload's exact bytes in its
//!   annotation [`SIGNATURE_ANNOTATION`];
//! - a Sigstore bundle (DSSE envelope of an in-toto statement whose subject
//!   is the digest) listed in the referrers tag-schema index `sha256-<hex>`.
//!
//! Trust comes from the configured keys alone, as `cosign verify --key`
//! with the transparency log ignored: a bundle's certificate, timestamps and
//! Rekor entries are not verified (a bundle signed by a Fulcio certificate
//! instead of one of the keys does not verify here).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::pkcs8::DecodePublicKey;
use p256::pkcs8::der::Document;
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use p256::pkcs8::spki::der::Decode;
use sha2::{Digest, Sha256};

/// The media type of a legacy signature's layer: the simple-signing payload.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature over the payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `artifactType` prefix of Sigstore bundles in a referrers index
/// (`application/vnd.dev.sigstore.bundle.v0.3+json` and later).
pub const BUNDLE_ARTIFACT_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
/// The in-toto payload type of a bundle's DSSE envelope.
const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The most bytes read of one payload or bundle blob. A simple-signing
/// payload is a few hundred bytes; a bundle with a certificate chain and a
/// log entry a few KiB.
pub const PAYLOAD_LIMIT: usize = 64 * 1024;

/// How many signature layers or bundles are examined per digest, so a
/// repository crowded with signatures cannot make a promotion read without
/// end.
pub const CANDIDATE_LIMIT: usize = 16;

const ID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const PRIME256V1: &str = "1.2.840.10045.3.1.7";
const ID_ED25519: &str = "1.3.101.112";

/// A public key `signature_keys` names, read at config load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureKey {
    /// `sha256:<hex>` of the DER SubjectPublicKeyInfo: what the policy
    /// document and the `signature` attribute name.
    pub fingerprint: String,
    key: Key,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// Why a key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "is not a PEM public key (expected a `-----BEGIN PUBLIC KEY-----` block, as `cosign generate-key-pair` writes to cosign.pub)"
    )]
    NotPem,
    #[error("holds a PEM {0:?} block; a public key is a \"PUBLIC KEY\" block")]
    NotPublicKey(String),
    #[error("holds a {0} key; signature_keys takes ECDSA P-256 or Ed25519 public keys")]
    Unsupported(String),
    #[error("holds a malformed {0} public key")]
    Malformed(&'static str),
}

impl SignatureKey {
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of ECDSA P-256 or Ed25519.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotPem)?;
        let (label, doc) = Document::from_pem(text.trim()).map_err(|_| KeyError::NotPem)?;
        if label != "PUBLIC KEY" {
            return Err(KeyError::NotPublicKey(label.to_owned()));
        }
        Self::from_der(doc.as_bytes())
    }

    /// A DER SubjectPublicKeyInfo.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|_| KeyError::NotPem)?;
        let oid = spki.algorithm.oid.to_string();
        let key = match oid.as_str() {
            ID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters_oid()
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                if curve != PRIME256V1 {
                    return Err(KeyError::Unsupported(format!(
                        "elliptic-curve key on curve {curve}"
                    )));
                }
                Key::P256(
                    p256::ecdsa::VerifyingKey::from_public_key_der(der)
                        .map_err(|_| KeyError::Malformed("ECDSA P-256"))?,
                )
            }
            ID_ED25519 => {
                let bytes: &[u8; 32] = spki
                    .subject_public_key
                    .as_bytes()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(KeyError::Malformed("Ed25519"))?;
                Key::Ed25519(
                    ed25519_dalek::VerifyingKey::from_bytes(bytes)
                        .map_err(|_| KeyError::Malformed("Ed25519"))?,
                )
            }
            other => return Err(KeyError::Unsupported(format!("algorithm {other}"))),
        };
        Ok(SignatureKey {
            fingerprint: format!("sha256:{}", hex::encode(Sha256::digest(der))),
            key,
        })
    }

    /// Whether `signature` is this key's signature over `message`: ECDSA
    /// with SHA-256, ASN.1 DER encoded (what cosign writes), or Ed25519
    /// over the message itself.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            Key::P256(k) => {
                use p256::ecdsa::signature::Verifier;
                p256::ecdsa::DerSignature::from_bytes(signature)
                    .is_ok_and(|s| k.verify(message, &s).is_ok())
            }
            Key::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
        }
    }
}

/// `sha256-<hex>`: the referrers tag schema's tag for `digest`; `None` for
/// a digest that is not `sha256:<64 lowercase hex>` (a tag cannot hold it).
pub fn referrers_tag(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| format!("sha256-{hex}"))
}

/// `sha256-<hex>.sig`: where cosign's legacy signatures of `digest` live.
pub fn legacy_tag(digest: &str) -> Option<String> {
    referrers_tag(digest).map(|t| format!("{t}.sig"))
}

/// One signature found in the registry, as read, before verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// A legacy layer: its payload and the annotation's base64 signature.
    SimpleSigning {
        /// Where it was found, for messages: `<repo>:sha256-….sig layer 0`.
        source: String,
        payload: Vec<u8>,
        signature: String,
    },
    /// A Sigstore bundle's JSON.
    Bundle { source: String, bundle: Vec<u8> },
    /// Something listed as a signature that could not be read (a missing
    /// or oversized blob, a layer without its annotation): why.
    Unreadable { source: String, why: String },
}

impl Candidate {
    fn source(&self) -> &str {
        match self {
            Candidate::SimpleSigning { source, .. }
            | Candidate::Bundle { source, .. }
            | Candidate::Unreadable { source, .. } => source,
        }
    }
}

/// What the registry holds for a digest: the tags looked at and every
/// signature found under them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    /// `<repo>:<tag>` of each place looked, in order.
    pub looked_at: Vec<String>,
    pub candidates: Vec<Candidate>,
}

/// The signature gate's fact: whether `digest` carries a valid signature by
/// one of the keys, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Verified {
        /// The fingerprint of the key whose signature verified.
        fingerprint: String,
        source: String,
    },
    /// Nothing under the tags looked at.
    Unsigned { looked_at: Vec<String> },
    /// Signatures were found, none valid by any key: one reason each.
    Invalid { reasons: Vec<String> },
}

/// Why one candidate does not sign `digest` with one of the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Unreadable(String),
    #[error("its payload is not JSON with a string critical.image.docker-manifest-digest")]
    NotSimpleSigning,
    #[error("it signs {0}, not this digest")]
    OtherDigest(String),
    #[error("its signature is not base64")]
    NotBase64,
    #[error("its signature verifies with none of the configured keys")]
    NoKey,
    #[error(
        "it is not a Sigstore bundle with a DSSE envelope (message signatures over an image are not cosign's form)"
    )]
    NotDsseBundle,
    #[error("its DSSE payload type is {0:?}, not {IN_TOTO_PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("its in-toto statement names no sha256 subject equal to this digest")]
    NotSubject,
}

/// The first candidate that carries a valid signature of `digest` by one
/// of `keys`, else every candidate's reason.
pub fn verify(digest: &str, keys: &[SignatureKey], found: &Found) -> Verdict {
    if found.candidates.is_empty() {
        return Verdict::Unsigned {
            looked_at: found.looked_at.clone(),
        };
    }
    let mut reasons = Vec::new();
    for c in &found.candidates {
        let verified = match c {
            Candidate::SimpleSigning {
                payload, signature, ..
            } => verify_simple_signing(digest, keys, payload, signature),
            Candidate::Bundle { bundle, .. } => verify_bundle(digest, keys, bundle),
            Candidate::Unreadable { why, .. } => Err(Rejection::Unreadable(why.clone())),
        };
        match verified {
            Ok(key) => {
                return Verdict::Verified {
                    fingerprint: key.fingerprint.clone(),
                    source: c.source().to_owned(),
                };
            }
            Err(r) => reasons.push(format!("{}: {r}", c.source())),
        }
    }
    Verdict::Invalid { reasons }
}

/// A legacy signature: the payload must name `digest`, and `signature`
/// (base64) must verify over the payload's exact bytes with one of `keys`.
pub fn verify_simple_signing<'k>(
    digest: &str,
    keys: &'k [SignatureKey],
    payload: &[u8],
    signature: &str,
) -> Result<&'k SignatureKey, Rejection> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| Rejection::NotSimpleSigning)?;
    let named = v
        .pointer("/critical/image/docker-manifest-digest")
        .and_then(serde_json::Value::as_str)
        .ok_or(Rejection::NotSimpleSigning)?;
    if named != digest {
        return Err(Rejection::OtherDigest(short(named)));
    }
    let sig = STANDARD
        .decode(signature.trim())
        .map_err(|_| Rejection::NotBase64)?;
    keys.iter()
        .find(|k| k.verifies(payload, &sig))
        .ok_or(Rejection::NoKey)
}

/// A Sigstore bundle: its DSSE envelope's signature must verify over the
/// pre-authentication encoding with one of `keys`, and its in-toto
/// statement must name `digest` as a subject.
pub fn verify_bundle<'k>(
    digest: &str,
    keys: &'k [SignatureKey],
    bundle: &[u8],
) -> Result<&'k SignatureKey, Rejection> {
    let v: serde_json::Value =
        serde_json::from_slice(bundle).map_err(|_| Rejection::NotDsseBundle)?;
    let envelope = v.get("dsseEnvelope").ok_or(Rejection::NotDsseBundle)?;
    let text = |name: &str| {
        envelope
            .get(name)
            .and_then(serde_json::Value::as_str)
            .ok_or(Rejection::NotDsseBundle)
    };
    let payload_type = text("payloadType")?;
    if payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(Rejection::PayloadType(short(payload_type)));
    }
    let payload = STANDARD
        .decode(text("payload")?)
        .map_err(|_| Rejection::NotBase64)?;
    let statement: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|_| Rejection::NotSubject)?;
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    let names_digest = statement
        .get("subject")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s.pointer("/digest/sha256")
                    .and_then(serde_json::Value::as_str)
                    == Some(hex)
            })
        });
    if !names_digest {
        return Err(Rejection::NotSubject);
    }
    let pae = pae(payload_type, &payload);
    let signatures = envelope
        .get("signatures")
        .and_then(serde_json::Value::as_array)
        .ok_or(Rejection::NotDsseBundle)?;
    for s in signatures {
        let Some(sig) = s.get("sig").and_then(serde_json::Value::as_str) else {
            continue;
        };
        let sig = STANDARD.decode(sig).map_err(|_| Rejection::NotBase64)?;
        if let Some(k) = keys.iter().find(|k| k.verifies(&pae, &sig)) {
            return Ok(k);
        }
    }
    Err(Rejection::NoKey)
}

/// DSSE's pre-authentication encoding: what a DSSE signature signs.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A value from a signature, repeated in a message: at most 100 bytes.
fn short(s: &str) -> String {
    let mut end = s.len().min(100);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if end < s.len() { "…" } else { "" };
    format!("{:?}{cut}", &s[..end])
}

#[cfg(test)]
mod tests;
