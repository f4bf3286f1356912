//! Who is calling. The principal comes only from the call's credentials,
//! never from a request field: a bearer token matched against configured
//! SHA-256 hashes in constant time, a JWT from a trusted `[[identity]]`
//! issuer mapped by its rules, or, with mTLS, the common name of the
//! verified client certificate. With `client_auth = "required"` (the
//! default) every connection has a certificate, so it admits the caller to
//! the listener and a token, when sent, takes precedence: a job holding a
//! machine certificate can still act as a token principal. With
//! `client_auth = "optional"` a certificate is presented by choice, so it
//! is a claim of who calls: it must be bound to a principal, and with a
//! token as well both must name the same one (or the token an alias of
//! it), or the call is refused.
//!
//! - [`jwt`]: what makes a bearer token a JWT, its claims, its mapping;
//! - [`keys`]: the issuers' signing keys (JWKS), cached and refreshed;
//! - [`layer`]: the tower service in front of the API that runs all this.
//!
//! The console's OpenID Connect sign-in verifies its ID tokens here too
//! ([`Authenticator::verify_id_token`]): the same keys, algorithms and
//! claim checks as a bearer JWT of that `[[identity]]`, then its rules.
//!
//! Verifying a JWT may have to fetch the issuer's keys (the first call, or
//! a token signed with a key the issuer just rotated in), which is I/O, so
//! authentication is async and runs in [`layer::Authenticate`] rather than
//! in a tonic interceptor (those are synchronous). Calls with a static
//! token or a cached key never wait on anything.

pub mod jwt;
pub mod keys;
pub mod layer;

use crate::clock::Clock;
use crate::config::{ClientAuth, Config, IdentityConfig, JwsAlgorithm, Live};
use crate::domain::policy::Principal;
use crate::metrics::Metrics;
use jwt::shown;
use keys::{KeyCache, KeyError};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Why a call was not authenticated. Messages say which check failed and
/// name the issuer or key, never the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("{0}")]
    BadHeader(&'static str),
    #[error("unknown token")]
    UnknownToken,
    #[error("{0}")]
    Certificate(String),
    #[error(
        "the client certificate names principal {certificate:?} and the token names {token:?}: \
         the two name different principals (send the token over a connection without the \
         certificate, or neither)"
    )]
    PrincipalMismatch { certificate: String, token: String },
    #[error("{message}")]
    Malformed { message: String },
    #[error("{}", match issuer {
        Some(i) => format!("the token's issuer {} is not a trusted [[identity]]", shown(i)),
        None => "the token has no `iss` claim".to_owned(),
    })]
    UntrustedIssuer { issuer: Option<String> },
    #[error("token from {}: {message}", shown(issuer))]
    Algorithm { issuer: String, message: String },
    #[error("token from {}: {source}", shown(issuer))]
    UnknownKey { issuer: String, source: KeyError },
    #[error(
        "token from {}: the signature does not verify with key {}",
        shown(issuer),
        shown(kid)
    )]
    Signature { issuer: String, kid: String },
    #[error("token from {} expired {seconds_ago} s ago", shown(issuer))]
    Expired { issuer: String, seconds_ago: i64 },
    #[error(
        "token from {} is not valid yet: its `{claim}` is {seconds_ahead} s ahead",
        shown(issuer)
    )]
    NotYetValid {
        issuer: String,
        claim: &'static str,
        seconds_ahead: i64,
    },
    #[error(
        "token from {}: its `aud` does not include {}",
        shown(issuer),
        shown(audience)
    )]
    Audience { issuer: String, audience: String },
    #[error("token from {}: no `{claim}` claim: {why}", shown(issuer))]
    MissingClaim {
        issuer: String,
        claim: &'static str,
        why: &'static str,
    },
    #[error(
        "token from {}: it lives {seconds} s (exp - iat), more than max_lifetime ({max_seconds} s)",
        shown(issuer)
    )]
    Lifetime {
        issuer: String,
        seconds: i64,
        max_seconds: u64,
    },
    #[error("token from {} matched no rule", shown(issuer))]
    NoRule { issuer: String },
    #[error("token from {}: {message}", shown(issuer))]
    Mapping { issuer: String, message: String },
    #[error("cannot get the signing keys of {}: {message}", shown(issuer))]
    KeysUnavailable { issuer: String, message: String },
}

impl AuthError {
    /// Every value of the `reason` label of `prodgate_auth_failures_total`.
    pub const REASONS: [&'static str; 18] = [
        "missing_credentials",
        "bad_header",
        "unknown_token",
        "certificate",
        "principal_mismatch",
        "malformed",
        "untrusted_issuer",
        "algorithm",
        "unknown_kid",
        "signature",
        "expired",
        "not_yet_valid",
        "audience",
        "missing_claim",
        "lifetime",
        "no_rule",
        "mapping",
        "jwks_unavailable",
    ];

    /// The metric label: one of [`AuthError::REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::BadHeader(_) => "bad_header",
            AuthError::UnknownToken => "unknown_token",
            AuthError::Certificate(_) => "certificate",
            AuthError::PrincipalMismatch { .. } => "principal_mismatch",
            AuthError::Malformed { .. } => "malformed",
            AuthError::UntrustedIssuer { .. } => "untrusted_issuer",
            AuthError::Algorithm { .. } => "algorithm",
            AuthError::UnknownKey { .. } => "unknown_kid",
            AuthError::Signature { .. } => "signature",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::Audience { .. } => "audience",
            AuthError::MissingClaim { .. } => "missing_claim",
            AuthError::Lifetime { .. } => "lifetime",
            AuthError::NoRule { .. } => "no_rule",
            AuthError::Mapping { .. } => "mapping",
            AuthError::KeysUnavailable { .. } => "jwks_unavailable",
        }
    }

    /// UNAUTHENTICATED, except when prodgate could not get an issuer's keys:
    /// then the token may be fine and a retry may pass, so UNAVAILABLE.
    /// Each with a `google.rpc.ErrorInfo`: `TOKEN_EXPIRED`, `TOKEN_INVALID`
    /// (metadata `check`: [`AuthError::reason`]) or `REGISTRY_UNAVAILABLE`.
    pub fn to_status(&self) -> Status {
        use crate::pb::ErrorReason as R;
        let (code, reason) = match self {
            AuthError::KeysUnavailable { .. } => (tonic::Code::Unavailable, R::RegistryUnavailable),
            AuthError::Expired { .. } => (tonic::Code::Unauthenticated, R::TokenExpired),
            AuthError::Missing
            | AuthError::BadHeader(_)
            | AuthError::UnknownToken
            | AuthError::Certificate(_)
            | AuthError::PrincipalMismatch { .. }
            | AuthError::Malformed { .. }
            | AuthError::UntrustedIssuer { .. }
            | AuthError::Algorithm { .. }
            | AuthError::UnknownKey { .. }
            | AuthError::Signature { .. }
            | AuthError::NotYetValid { .. }
            | AuthError::Audience { .. }
            | AuthError::MissingClaim { .. }
            | AuthError::Lifetime { .. }
            | AuthError::NoRule { .. }
            | AuthError::Mapping { .. } => (tonic::Code::Unauthenticated, R::TokenInvalid),
        };
        let metadata =
            std::collections::HashMap::from([("check".to_owned(), self.reason().to_owned())]);
        let details = tonic_types::ErrorDetails::with_error_info(
            crate::api::error::reason_name(reason),
            crate::api::error::DOMAIN,
            metadata,
        );
        use tonic_types::StatusExt;
        Status::with_error_details(code, self.to_string(), details)
    }
}

/// Matches credentials against the running config's principals and
/// identities (a reload changes who they are without a restart).
pub struct Authenticator {
    config: Live,
    keys: KeyCache,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
}

impl Authenticator {
    pub fn new(
        config: Live,
        clock: Arc<dyn Clock>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, String> {
        Ok(Self {
            config,
            keys: KeyCache::new()?,
            clock,
            metrics,
        })
    }

    /// The caller of a request with these headers and, with mTLS, this
    /// verified client certificate (DER). A failure is counted and logged
    /// (without the token) before it is returned.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        certificate: Option<&[u8]>,
    ) -> Result<Principal, AuthError> {
        let mut result = self.identify(headers, certificate).await;
        if let Ok(who) = &mut result {
            who.aliases = self.config.get().other_names(&who.name);
        }
        if let Err(e) = &result {
            if let Some(m) = &self.metrics {
                m.auth_failure(e.reason());
            }
            tracing::debug!(reason = e.reason(), error = %e, "call not authenticated");
        }
        result
    }

    async fn identify(
        &self,
        headers: &http::HeaderMap,
        certificate: Option<&[u8]>,
    ) -> Result<Principal, AuthError> {
        let header = headers.get("authorization");
        let (Some(der), Some(_)) = (certificate, header) else {
            return match certificate {
                Some(der) => self.certificate(der),
                None => self.bearer(header).await,
            };
        };
        let config = self.config.get();
        let optional = config
            .tls
            .as_ref()
            .and_then(|t| t.client_ca.as_ref())
            .is_some_and(|ca| ca.auth == ClientAuth::Optional);
        if !optional {
            return self.bearer(header).await;
        }
        let by_certificate = self.certificate(der).map_err(|e| match e {
            AuthError::Certificate(m) => AuthError::Certificate(format!(
                "{m}; with client_auth = \"optional\" a certificate presented must name a \
                 principal, even with a token"
            )),
            e => e,
        })?;
        let by_token = self.bearer(header).await?;
        let same = by_token.name == by_certificate.name
            || config
                .other_names(&by_certificate.name)
                .contains(&by_token.name);
        if !same {
            return Err(AuthError::PrincipalMismatch {
                certificate: by_certificate.name,
                token: by_token.name,
            });
        }
        Ok(by_token)
    }

    /// The principal whose verified client certificate (DER) has this CN.
    fn certificate(&self, der: &[u8]) -> Result<Principal, AuthError> {
        let cn = common_name(der).ok_or_else(|| {
            AuthError::Certificate("the client certificate has no common name".into())
        })?;
        self.config
            .get()
            .principals
            .iter()
            .find(|p| p.certificate_cn.as_deref() == Some(cn.as_str()))
            .map(|p| Principal::new(p.name.clone(), p.groups.clone()))
            .ok_or_else(|| {
                AuthError::Certificate(format!(
                    "no principal is bound to client certificate CN {cn:?}"
                ))
            })
    }

    async fn bearer(&self, header: Option<&http::HeaderValue>) -> Result<Principal, AuthError> {
        let header = header
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::BadHeader("the authorization metadata is not valid ASCII"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::BadHeader(
                "the authorization metadata must be `Bearer <token>`",
            ))?;
        // One snapshot for the whole call: a reload mid-call changes nothing here.
        let config = self.config.get();
        // Static tokens first, whatever they look like, so every token that
        // worked before identities existed works the same now.
        if let Some(p) = static_token(&config, token) {
            return Ok(p);
        }
        match jwt::parse(token) {
            None => Err(AuthError::UnknownToken),
            Some(t) => self.verify_jwt(&config, t).await,
        }
    }

    /// A JWT: its issuer's identity, then `alg`, key, signature, claims and
    /// rules, in that order; the first failure is the answer.
    async fn verify_jwt(
        &self,
        config: &Config,
        t: jwt::Unverified<'_>,
    ) -> Result<Principal, AuthError> {
        let iss = t.claims.get("iss").and_then(|v| v.as_str());
        let identity = config
            .identities
            .iter()
            .find(|i| Some(i.issuer.as_str()) == iss)
            .ok_or_else(|| AuthError::UntrustedIssuer {
                issuer: iss.map(str::to_owned),
            })?;
        let claims = self.verified_claims(identity, &t).await?;
        jwt::map_to_principal(&claims, identity)
    }

    /// An OpenID Connect ID token the console received from `identity`'s
    /// token endpoint: the same checks as a bearer JWT of that issuer (its
    /// `alg`, key, signature, time claims and `aud` = the identity's
    /// `audience`, which the console sets to its `client_id`), returning
    /// the verified claims; the caller checks `nonce` and maps them with
    /// [`jwt::map_to_principal`].
    pub async fn verify_id_token(
        &self,
        token: &str,
        identity: &IdentityConfig,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let t = jwt::parse(token).ok_or_else(|| AuthError::Malformed {
            message: "the identity provider's ID token is not a JWT".into(),
        })?;
        let iss = t.claims.get("iss").and_then(|v| v.as_str());
        if iss != Some(identity.issuer.as_str()) {
            return Err(AuthError::UntrustedIssuer {
                issuer: iss.map(str::to_owned),
            });
        }
        self.verified_claims(identity, &t).await
    }

    /// `alg`, key, signature and claims of a token of `identity`.
    async fn verified_claims(
        &self,
        identity: &IdentityConfig,
        t: &jwt::Unverified<'_>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let issuer = || identity.issuer.clone();
        let alg = JwsAlgorithm::from_name(&t.alg)
            .filter(|a| identity.algorithms.contains(a))
            .ok_or_else(|| AuthError::Algorithm {
                issuer: issuer(),
                message: format!(
                    "alg {} is not accepted (algorithms: {})",
                    shown(&t.alg),
                    identity
                        .algorithms
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let key = self
            .keys
            .key(&identity.keys, t.kid.as_deref(), alg)
            .await
            .map_err(|e| match e {
                KeyError::Unavailable(message) => AuthError::KeysUnavailable {
                    issuer: issuer(),
                    message,
                },
                e @ (KeyError::UnknownKid { .. } | KeyError::NoKid { .. }) => {
                    AuthError::UnknownKey {
                        issuer: issuer(),
                        source: e,
                    }
                }
            })?;
        let kid = key.kid.clone().unwrap_or_default();
        // The key decides how it may be used, not the token: an RSA key
        // never checks an ES256 signature, a key pinned to RS256 never a PS256 one.
        if key.kind != alg.key_kind() || key.alg.is_some_and(|a| a != alg) {
            return Err(AuthError::Algorithm {
                issuer: issuer(),
                message: format!(
                    "alg {} does not fit key {} ({}{})",
                    alg.name(),
                    shown(&kid),
                    key.kind.name(),
                    key.alg
                        .map(|a| format!(", for {}", a.name()))
                        .unwrap_or_default()
                ),
            });
        }
        let mut validation = jsonwebtoken::Validation::new(alg.to_jwt());
        // The claims are checked below, with our clock and our messages.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let verified = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            t.token,
            &key.key,
            &validation,
        )
        .map_err(|_| AuthError::Signature {
            issuer: issuer(),
            kid: kid.clone(),
        })?;
        jwt::check_claims(&verified.claims, identity, self.clock.now().seconds)?;
        Ok(verified.claims)
    }
}

/// The principal whose token hash matches, looking at every principal so
/// the time taken does not depend on which matched.
fn static_token(config: &Config, token: &str) -> Option<Principal> {
    let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for p in &config.principals {
        if p.token_sha256
            .is_some_and(|h| bool::from(h.ct_eq(&presented)))
        {
            found = Some(p);
        }
    }
    found.map(|p| Principal::new(p.name.clone(), p.groups.clone()))
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The principal [`layer::Authenticate`] attached; also named on the call's span.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    let p = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| AuthError::Missing.to_status())?;
    tracing::Span::current().record("principal", p.name.as_str());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let config = crate::config::Config::parse(&format!(
            "[[principal]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\ngroups = [\"rm\"]\n",
            hex::encode(Sha256::digest(b"s3cret"))
        ))
        .unwrap();
        Authenticator::new(Live::new(config), Arc::new(crate::clock::SystemClock), None).unwrap()
    }

    fn headers(v: &str) -> http::HeaderMap {
        let mut m = http::HeaderMap::new();
        m.insert("authorization", v.parse().unwrap());
        m
    }

    #[tokio::test]
    async fn tokens() {
        let a = auth();
        let p = a
            .authenticate(&headers("Bearer s3cret"), None)
            .await
            .unwrap();
        assert_eq!(p.name, "alice");
        assert_eq!(p.groups, vec!["rm".to_string()]);
        for bad in ["Bearer wrong", "s3cret", "Basic s3cret", "Bearer "] {
            let e = a.authenticate(&headers(bad), None).await.unwrap_err();
            assert_eq!(e.to_status().code(), tonic::Code::Unauthenticated, "{bad}");
        }
        let e = a
            .authenticate(&http::HeaderMap::new(), None)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "missing_credentials");
        // A JWT from an issuer nobody trusts is named as such.
        let e = a
            .authenticate(
                &headers("Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln"),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "untrusted_issuer");
        assert!(!e.to_string().contains("eyJ"), "{e}");
    }

    #[test]
    fn every_reason_is_listed_once() {
        let mut r = AuthError::REASONS.to_vec();
        r.sort();
        r.dedup();
        assert_eq!(r.len(), AuthError::REASONS.len());
    }
}
