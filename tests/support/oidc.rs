//! An OIDC issuer of the tests' own: signing keys (ES256 from rcgen, RS256
//! from `openssl`), their JWKS, and tokens minted with any claims and
//! header, well-formed or forged.
//!
//! RSA keys come from the `openssl` command (Debian has it, and so does
//! CI): rcgen with ring makes only ECDSA and Ed25519 keys, and the pure-Rust
//! `rsa` crate generates a 2048-bit key in many seconds in a debug build.
//! jsonwebtoken then loads the PKCS#1 DER and derives the JWK from it.

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// One signing key and its public JWK (with `kid`, `alg` and `use`).
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn es256(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate().expect("an ECDSA P-256 key");
        Self::with(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(&pair.serialize_der()),
        )
    }

    pub fn rs256(kid: &str) -> SigningKey {
        let out = Command::new("sh")
            .arg("-c")
            .arg("openssl genrsa -traditional 2048 2>/dev/null | openssl rsa -outform DER -traditional 2>/dev/null")
            .output()
            .expect("run openssl (the RSA test keys come from it)");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "openssl made no RSA key"
        );
        Self::with(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_der(&out.stdout),
        )
    }

    fn with(kid: &str, alg: Algorithm, key: EncodingKey) -> SigningKey {
        let jwk = Jwk::from_encoding_key(&key, alg).expect("a JWK from the key");
        let mut jwk = serde_json::to_value(jwk).expect("JWK as JSON");
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        SigningKey {
            kid: kid.to_owned(),
            alg,
            key,
            jwk,
        }
    }

    /// A token with these claims, its header naming this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token signed by this key whose header names `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign a token")
    }
}

/// A JWKS document with these keys.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// `alg: none`: a header, the claims and an empty signature.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string()),
        b64.encode(claims.to_string())
    )
}

/// HS256 with `secret` (the key-confusion attack passes the issuer's
/// public key as the HMAC secret).
pub fn hs256(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_secret(secret).expect("an HMAC key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign HS256")
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}
