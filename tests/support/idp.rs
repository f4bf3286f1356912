//! An OpenID Connect authorization server of the tests' own, on a free
//! loopback port: discovery (`/.well-known/openid-configuration`), its
//! JWKS (`/jwks`), `/authorize`, which signs the person in at once and
//! redirects back with a code (recording the PKCE challenge, `state` and
//! `nonce` it was given), and `/token`, which checks the client, the
//! redirect URI and the `code_verifier` against the `S256` challenge and
//! answers a signed ID token (ES256, a key made in the test) carrying the
//! nonce. Knobs make it misbehave: a wrong `nonce` in the ID token, or a
//! redirect with a wrong `state`.

use super::oidc::{SigningKey, jwks, now};
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One `/authorize` request, as received.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub params: HashMap<String, String>,
}

/// One `/token` request and whether it was answered with an ID token.
#[derive(Debug, Clone)]
pub struct TokenCall {
    pub params: HashMap<String, String>,
    pub authorization: Option<String>,
    pub answered: bool,
}

/// How the fake misbehaves on the next sign-ins.
#[derive(Debug, Clone, Copy, Default)]
pub struct Knobs {
    /// The ID token carries a nonce other than the one `/authorize` got.
    pub wrong_nonce: bool,
    /// `/authorize` redirects back with a state other than the one it got.
    pub wrong_state: bool,
    /// The ID token is signed by a key not in the JWKS, under the JWKS
    /// key's `kid`.
    pub forged: bool,
}

struct Pending {
    challenge: String,
    nonce: String,
    redirect_uri: String,
}

struct Inner {
    issuer: String,
    client_id: String,
    client_secret: String,
    key: SigningKey,
    /// Signs when `forged` is set.
    other_key: SigningKey,
    /// The claims of the person who signs in (besides iss, aud, exp, iat, nonce).
    person: Mutex<Value>,
    knobs: Mutex<Knobs>,
    codes: Mutex<HashMap<String, Pending>>,
    authorizations: Mutex<Vec<Authorization>>,
    tokens: Mutex<Vec<TokenCall>>,
}

pub struct FakeIdp {
    /// `http://127.0.0.1:PORT`: the issuer, and the base of every endpoint.
    pub issuer: String,
    inner: Arc<Inner>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeIdp {
    /// A provider that knows one confidential client.
    pub async fn start(client_id: &str, client_secret: &str, person: Value) -> FakeIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake identity provider");
        let addr = listener.local_addr().expect("its address");
        let issuer = format!("http://{addr}");
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            key: SigningKey::es256("idp-1"),
            other_key: SigningKey::es256("idp-1"),
            person: Mutex::new(person),
            knobs: Mutex::default(),
            codes: Mutex::default(),
            authorizations: Mutex::default(),
            tokens: Mutex::default(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(keys))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the fake identity provider serves");
        });
        FakeIdp {
            issuer,
            inner,
            _server: server,
        }
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        *self.inner.knobs.lock().unwrap() = knobs;
    }

    /// The claims of whoever signs in next.
    pub fn set_person(&self, person: Value) {
        *self.inner.person.lock().unwrap() = person;
    }

    pub fn authorizations(&self) -> Vec<Authorization> {
        self.inner.authorizations.lock().unwrap().clone()
    }

    pub fn token_calls(&self) -> Vec<TokenCall> {
        self.inner.tokens.lock().unwrap().clone()
    }
}

fn json_answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn discovery(State(idp): State<Arc<Inner>>) -> Response {
    let i = &idp.issuer;
    json_answer(
        StatusCode::OK,
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "jwks_uri": format!("{i}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }),
    )
}

async fn keys(State(idp): State<Arc<Inner>>) -> Response {
    ([("content-type", "application/json")], jwks(&[&idp.key])).into_response()
}

fn bad(error: &str, description: &str) -> Response {
    json_answer(
        StatusCode::BAD_REQUEST,
        json!({"error": error, "error_description": description}),
    )
}

/// Signs the person in without asking and sends the browser back.
async fn authorize(
    State(idp): State<Arc<Inner>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    idp.authorizations.lock().unwrap().push(Authorization {
        params: params.clone(),
    });
    let p = |k: &str| params.get(k).cloned().unwrap_or_default();
    let scopes = p("scope");
    if p("response_type") != "code"
        || p("client_id") != idp.client_id
        || p("code_challenge_method") != "S256"
        || p("code_challenge").is_empty()
        || !scopes.split(' ').any(|s| s == "openid")
        || p("redirect_uri").is_empty()
    {
        return (
            StatusCode::BAD_REQUEST,
            "not an authorization request I accept",
        )
            .into_response();
    }
    let code = b64(&rand::random::<[u8; 16]>());
    idp.codes.lock().unwrap().insert(
        code.clone(),
        Pending {
            challenge: p("code_challenge"),
            nonce: p("nonce"),
            redirect_uri: p("redirect_uri"),
        },
    );
    let knobs = *idp.knobs.lock().unwrap();
    let state = if knobs.wrong_state {
        b64(&rand::random::<[u8; 32]>())
    } else {
        p("state")
    };
    let mut back = reqwest::Url::parse(&p("redirect_uri")).expect("a redirect URI");
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state);
    Redirect::to(back.as_str()).into_response()
}

/// Exchanges a code for an ID token: the client's Basic credentials, the
/// redirect URI and the PKCE verifier must all fit.
async fn token(
    State(idp): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = answer(&idp, &params, authorization.as_deref());
    idp.tokens.lock().unwrap().push(TokenCall {
        params,
        authorization,
        answered: answer.0,
    });
    answer.1
}

fn answer(
    idp: &Inner,
    params: &HashMap<String, String>,
    authorization: Option<&str>,
) -> (bool, Response) {
    let p = |k: &str| params.get(k).cloned().unwrap_or_default();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", idp.client_id, idp.client_secret))
    );
    if authorization != Some(basic.as_str()) {
        return (
            false,
            json_answer(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"})),
        );
    }
    if p("grant_type") != "authorization_code" {
        return (
            false,
            bad("unsupported_grant_type", "authorization_code only"),
        );
    }
    // A code is good once.
    let Some(pending) = idp.codes.lock().unwrap().remove(&p("code")) else {
        return (false, bad("invalid_grant", "unknown or used code"));
    };
    if p("redirect_uri") != pending.redirect_uri {
        return (false, bad("invalid_grant", "redirect_uri differs"));
    }
    if b64(&Sha256::digest(p("code_verifier").as_bytes())) != pending.challenge {
        return (
            false,
            bad("invalid_grant", "code_verifier does not fit the challenge"),
        );
    }
    let knobs = *idp.knobs.lock().unwrap();
    let nonce = if knobs.wrong_nonce {
        b64(&rand::random::<[u8; 32]>())
    } else {
        pending.nonce
    };
    let mut claims = idp.person.lock().unwrap().clone();
    let t = now();
    for (k, v) in [
        ("iss", json!(idp.issuer)),
        ("aud", json!(idp.client_id)),
        ("iat", json!(t)),
        ("exp", json!(t + 300)),
        ("nonce", json!(nonce)),
    ] {
        claims[k] = v;
    }
    (
        true,
        json_answer(
            StatusCode::OK,
            json!({
                "access_token": b64(&rand::random::<[u8; 16]>()),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": if knobs.forged { &idp.other_key } else { &idp.key }.sign(&claims),
            }),
        ),
    )
}
