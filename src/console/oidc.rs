//! Sign-in through an OpenID Connect provider (`[console] identity`): the
//! authorization code flow with PKCE (`S256`), a random `state` and
//! `nonce` kept in a sealed cookie ([`session::FLOW_COOKIE`]) for the
//! callback, discovery at `{issuer}/.well-known/openid-configuration`,
//! and the ID token verified and mapped by the same code as any bearer JWT
//! of that `[[identity]]` ([`crate::auth::Authenticator::verify_id_token`],
//! [`crate::auth::jwt::map_to_principal`]): its keys (the identity's JWKS
//! cache), its `algorithms`, its `[[identity.rule]]`s.
//!
//! Not the `openidconnect` crate: it verifies ID tokens with its own JWKS
//! fetching and its own crypto stack (rsa, p256/p384 of other versions,
//! chrono, rand 0.8) and maps no claims, so the console would hold a
//! second key cache and a second notion of which algorithms and keys an
//! issuer may use beside `src/auth`. What remains is three small HTTP
//! steps (discovery, the redirect, the code exchange) over the reqwest
//! client the process already builds.
//!
//! Every request here has a deadline ([`TIMEOUT`]), follows no redirect and
//! reads at most [`MAX_BODY`] bytes.

use super::session::{self, FLOW_COOKIE, Sealer};
use crate::config::{ConsoleOidc, IdentityConfig};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Deadline of one request to the identity provider, connect included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest discovery document or token response read.
pub const MAX_BODY: usize = 64 * 1024;
/// A discovery document is fetched again after this.
pub const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// What a sign-in under way keeps for its callback (sealed, so the browser
/// can neither read nor change it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flow {
    pub state: String,
    pub nonce: String,
    /// The PKCE `code_verifier`.
    pub verifier: String,
    /// The identity it was started with: a reload that changes
    /// `[console] identity` ends the sign-ins under way.
    pub identity: String,
    /// Unix seconds after which the callback refuses it.
    pub expires: i64,
}

impl Flow {
    pub fn new(identity: &str, now: i64) -> Flow {
        Flow {
            state: random(),
            nonce: random(),
            verifier: random(),
            identity: identity.to_owned(),
            expires: now.saturating_add(session::FLOW_TTL.as_secs() as i64),
        }
    }

    /// `S256`: base64url(SHA-256(verifier)).
    pub fn challenge(&self) -> String {
        b64(&Sha256::digest(self.verifier.as_bytes()))
    }

    pub fn cookie(&self, sealer: &Sealer) -> String {
        sealer.seal_as(FLOW_COOKIE, self, session::FLOW_TTL)
    }
}

/// Whether two secrets are equal, in constant time.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// 256 random bits, base64url (43 characters: a valid PKCE verifier too).
fn random() -> String {
    b64(&rand::random::<[u8; 32]>())
}

/// Why the provider could not be used. Logged in full; people see a
/// sentence without the details.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("the discovery document of {issuer}: {message}")]
    Discovery { issuer: String, message: String },
    #[error("the token endpoint refused the code: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
}

/// The part of a discovery document the console uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

/// The provider's client: discovery (cached), the authorization URL, the
/// code exchange.
pub struct Provider {
    http: reqwest::Client,
    /// The last discovery document, its issuer and when it was fetched.
    discovery: Mutex<Option<(Instant, String, Arc<Discovery>)>>,
}

impl Provider {
    pub fn new() -> Result<Provider, String> {
        // As for the JWKS client (auth/keys.rs): the process installs ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("prodgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the OpenID Connect HTTP client: {e}"))?;
        Ok(Provider {
            http,
            discovery: Mutex::new(None),
        })
    }

    /// The issuer's discovery document, fetched at most once per
    /// [`DISCOVERY_MAX_AGE`] while it answers.
    pub async fn discover(&self, issuer: &str) -> Result<Arc<Discovery>, ProviderError> {
        {
            let held = self
                .discovery
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((at, i, d)) = held.as_ref()
                && i == issuer
                && at.elapsed() < DISCOVERY_MAX_AGE
            {
                return Ok(d.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let bad = |message: String| ProviderError::Discovery {
            issuer: issuer.to_owned(),
            message,
        };
        let resp = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| http_error(&url, e))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(ProviderError::Http {
                url,
                message: format!("answered {}", resp.status()),
            });
        }
        let body = read(&url, resp).await?;
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        // OpenID Connect Discovery 1.0, 4.3: the document's issuer is the
        // one asked about, or the document is not to be used.
        if d.issuer != issuer {
            return Err(bad(format!("its issuer is {:?}", d.issuer)));
        }
        for (name, endpoint) in [
            ("authorization_endpoint", &d.authorization_endpoint),
            ("token_endpoint", &d.token_endpoint),
        ] {
            if !acceptable(endpoint) {
                return Err(bad(format!(
                    "{name} {endpoint:?} is not https:// (plain http only on loopback)"
                )));
            }
        }
        let d = Arc::new(d);
        *self
            .discovery
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), issuer.to_owned(), d.clone()));
        Ok(d)
    }

    /// Where the browser goes to sign in.
    pub fn authorization_url(d: &Discovery, client: &ConsoleOidc, flow: &Flow) -> String {
        let mut url = match reqwest::Url::parse(&d.authorization_endpoint) {
            Ok(u) => u,
            // Checked by `discover`.
            Err(_) => return d.authorization_endpoint.clone(),
        };
        let scope = std::iter::once("openid")
            .chain(client.scopes.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("scope", &scope)
            .append_pair("state", &flow.state)
            .append_pair("nonce", &flow.nonce)
            .append_pair("code_challenge", &flow.challenge())
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    /// The ID token the token endpoint gives for `code` (not verified yet).
    /// A confidential client authenticates with `client_secret_basic`.
    pub async fn exchange(
        &self,
        d: &Discovery,
        client: &ConsoleOidc,
        code: &str,
        verifier: &str,
    ) -> Result<String, ProviderError> {
        let mut req = self
            .http
            .post(&d.token_endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some(secret) = &client.client_secret {
            // RFC 6749 2.3.1: both are form-encoded before the Basic encoding.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let secret = String::from_utf8_lossy(secret.expose());
            req = req.basic_auth(enc(&client.client_id), Some(enc(&secret)));
        }
        let body = token_form(client, code, verifier);
        let url = d.token_endpoint.clone();
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| http_error(&url, e))?;
        let status = resp.status();
        let body = read(&url, resp).await?;
        #[derive(Deserialize)]
        struct Answer {
            id_token: Option<String>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| ProviderError::Http {
            url: url.clone(),
            message: format!("answered {status} with no token response: {e}"),
        })?;
        if let Some(error) = answer.error {
            return Err(ProviderError::Refused {
                error,
                description: answer.error_description,
            });
        }
        match answer.id_token {
            Some(t) if status.is_success() => Ok(t),
            _ => Err(ProviderError::Http {
                url,
                message: format!("answered {status} without an id_token"),
            }),
        }
    }
}

/// The token request's body; `client_id` in it for a public client (a
/// confidential one authenticates with Basic instead).
fn token_form(client: &ConsoleOidc, code: &str, verifier: &str) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &client.redirect_uri)
        .append_pair("code_verifier", verifier);
    if client.client_secret.is_none() {
        form.append_pair("client_id", &client.client_id);
    }
    form.finish()
}

/// The identity `[console] identity` names in the running config, with
/// `client_id` as the audience its ID tokens must carry.
pub fn identity(identities: &[IdentityConfig], client: &ConsoleOidc) -> Option<IdentityConfig> {
    let mut i = identities
        .iter()
        .find(|i| i.name.as_deref() == Some(client.identity.as_str()))?
        .clone();
    i.audience = client.client_id.clone();
    Some(i)
}

/// HTTPS, or plain HTTP to a loopback address (tests, a sidecar).
fn acceptable(endpoint: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    let loopback = || {
        u.host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            })
    };
    u.username().is_empty() && (u.scheme() == "https" || (u.scheme() == "http" && loopback()))
}

fn http_error(url: &str, e: reqwest::Error) -> ProviderError {
    ProviderError::Http {
        url: url.to_owned(),
        message: e.without_url().to_string(),
    }
}

async fn read(url: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let too_big = || ProviderError::Http {
        url: url.to_owned(),
        message: format!("the answer is larger than {MAX_BODY} bytes"),
    };
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_big());
    }
    match crate::body::read_capped(&mut resp, MAX_BODY).await {
        Ok((body, true)) => Ok(body),
        Ok((_, false)) => Err(too_big()),
        Err(e) => Err(http_error(url, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_s256_of_the_verifier() {
        // RFC 7636, appendix B.
        let flow = Flow {
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            ..Flow::new("sso", 0)
        };
        assert_eq!(
            flow.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (a, b) = (Flow::new("sso", 0), Flow::new("sso", 0));
        assert_ne!(a.state, b.state);
        assert_ne!(a.nonce, a.state);
        assert_eq!(a.verifier.len(), 43);
        assert!(same(&a.state, &a.state.clone()) && !same(&a.state, &b.state));
    }

    #[test]
    fn endpoints_are_https_or_loopback() {
        assert!(acceptable("https://idp.example/authorize"));
        assert!(acceptable("http://127.0.0.1:8080/token"));
        assert!(!acceptable("http://idp.example/token"));
        assert!(!acceptable("https://user@idp.example/token"));
        assert!(!acceptable("javascript:alert(1)"));
    }
}
