//! A token service for Distribution's `auth: token`, as registries run with
//! one (Harbor, GitLab, a self-hosted Distribution) have it.
//!
//! [`TokenServer`] answers `GET /token?service=…&scope=repository:NAME:ACTIONS`
//! with Basic credentials by `{"token": JWT, "expires_in": N}`, the JWT granting
//! exactly the scopes asked for. It is a [`Hostile`] server that behaves, so
//! every request is recorded and a test can assert which scopes were asked
//! for, by whom and how often. [`Signer`] holds the signing key: the registry
//! trusts its self-signed certificate (`rootcertbundle`), and the
//! [`TestRegistry`](super::registry::TestRegistry) harness mints its own
//! tokens with it rather than going through the token flow.
//!
//! The JWT is ES256 with the certificate in the `x5c` header: rcgen (with
//! ring) makes ECDSA keys but not RSA ones, and Distribution accepts either.

use super::hostile::{Hostile, Reply, Seen, TestCa};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

pub const SERVICE: &str = "prodgate-test-registry";
pub const ISSUER: &str = "prodgate-test-token-service";

/// The key tokens are signed with and its self-signed certificate.
pub struct Signer {
    key: EncodingKey,
    /// Standard base64 of the certificate's DER, for the `x5c` header.
    x5c: String,
    /// The certificate (PEM): the registry's `rootcertbundle`.
    pub cert_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Signer {
    pub fn new() -> Signer {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let key = KeyPair::generate().expect("token signing key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("signer params");
        params
            .distinguished_name
            .push(DnType::CommonName, "prodgate test token signer");
        let cert = params.self_signed(&key).expect("signer certificate");
        let dir = tempfile::Builder::new()
            .prefix("prodgate-token-signer-")
            .tempdir()
            .expect("temp dir for the signer");
        let cert_file = dir.path().join("signer.pem");
        std::fs::write(&cert_file, cert.pem()).expect("write the signer certificate");
        Signer {
            key: EncodingKey::from_ec_der(&key.serialize_der()),
            x5c: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            cert_file,
            _dir: dir,
        }
    }

    /// A token for `account` granting `access` (repository name, actions)
    /// for `lifetime_secs`.
    pub fn mint(
        &self,
        account: &str,
        access: &[(String, Vec<String>)],
        lifetime_secs: u64,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let access: Vec<_> = access
            .iter()
            .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
            .collect();
        let claims = json!({
            "iss": ISSUER,
            "sub": account,
            // A plain string: Distribution 2.8 reads `aud` as one.
            "aud": SERVICE,
            "exp": now + lifetime_secs,
            "nbf": now.saturating_sub(5),
            "iat": now,
            "jti": format!("{:016x}", rand::random::<u64>()),
            "access": access,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.x5c = Some(vec![self.x5c.clone()]);
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign a token")
    }
}

/// One request the token service answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The Basic user name, if credentials came and were right.
    pub account: Option<String>,
    /// Every `scope` parameter, as sent.
    pub scopes: Vec<String>,
    pub service: Option<String>,
}

/// What the handler shares with the test.
#[derive(Default)]
struct State {
    /// User name -> the one password accepted.
    users: HashMap<String, String>,
    log: Vec<TokenRequest>,
}

pub struct TokenServer {
    /// Serves until dropped.
    server: Hostile,
    signer: Arc<Signer>,
    state: Arc<Mutex<State>>,
}

impl TokenServer {
    /// A plain-HTTP token service for `user`/`password` whose tokens live
    /// `expires_in` seconds.
    pub async fn start(user: &str, password: &str, expires_in: u64) -> TokenServer {
        Self::start_with(None, user, password, expires_in).await
    }

    /// Like [`TokenServer::start`], over HTTPS with a certificate of `ca`.
    pub async fn start_tls(
        ca: &TestCa,
        user: &str,
        password: &str,
        expires_in: u64,
    ) -> TokenServer {
        Self::start_with(Some(ca), user, password, expires_in).await
    }

    async fn start_with(
        ca: Option<&TestCa>,
        user: &str,
        password: &str,
        expires_in: u64,
    ) -> TokenServer {
        let signer = Arc::new(Signer::new());
        let state = Arc::new(Mutex::new(State {
            users: HashMap::from([(user.to_owned(), password.to_owned())]),
            log: Vec::new(),
        }));
        let handler = {
            let (signer, state) = (Arc::clone(&signer), Arc::clone(&state));
            move |seen: &Seen| answer(seen, &signer, &state, expires_in)
        };
        let server = match ca {
            Some(ca) => Hostile::start_tls(ca, handler).await,
            None => Hostile::start(handler).await,
        };
        TokenServer {
            server,
            signer,
            state,
        }
    }

    /// The realm URL the registry names in its challenges.
    pub fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }

    pub fn signer(&self) -> Arc<Signer> {
        Arc::clone(&self.signer)
    }

    /// Accepts `password` for `user` from now on, and no other.
    pub fn set_password(&self, user: &str, password: &str) {
        self.state()
            .users
            .insert(user.to_owned(), password.to_owned());
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state().log.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The scopes of every request, in order (one string per request, its
    /// scopes joined by a space).
    pub fn scopes(&self) -> Vec<String> {
        self.requests().iter().map(|r| r.scopes.join(" ")).collect()
    }
}

fn query(seen: &Seen) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x{}", seen.target))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The user of the request's Basic credentials, if they are right.
fn account(seen: &Seen, users: &HashMap<String, String>) -> Option<String> {
    let encoded = seen.authorization()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (users.get(user).map(String::as_str) == Some(password)).then(|| user.to_owned())
}

fn answer(seen: &Seen, signer: &Signer, state: &Mutex<State>, expires_in: u64) -> Reply {
    let q = query(seen);
    let param = |name: &'static str| -> Vec<String> {
        q.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let request = TokenRequest {
        account: account(seen, &state.users),
        scopes: param("scope"),
        service: param("service").into_iter().next(),
    };
    state.log.push(request.clone());
    drop(state);
    let Some(account) = request.account else {
        return Reply::status(401).header("www-authenticate", "Basic realm=\"token\"");
    };
    if request.service.as_deref() != Some(SERVICE) {
        return Reply::status(400);
    }
    // `repository:NAME:ACTIONS`; NAME holds no colon in these tests.
    let access: Vec<(String, Vec<String>)> = request
        .scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("repository"), Some(name), Some(actions)) => Some((
                    name.to_owned(),
                    actions.split(',').map(str::to_owned).collect(),
                )),
                _ => None,
            }
        })
        .collect();
    let token = signer.mint(&account, &access, expires_in);
    Reply::json(&json!({"token": token, "expires_in": expires_in}).to_string())
}
