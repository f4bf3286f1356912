//! The approvers' web console (`[console]`): server-rendered pages on a
//! listener of their own, another client of the same use cases as the gRPC
//! API: every action goes through `Promotions` with the signed-in
//! principal, so authorization and the audit entry are the gRPC call's.
//!
//! - Sign-in: through the company's identity provider (`[console]
//!   identity`: OpenID Connect, code flow with PKCE; `GET /auth/login`
//!   starts it, `GET /auth/callback` finishes it, [`oidc`]), and for
//!   development `token_login` (a `[[principal]]` token, checked by the
//!   gRPC authenticator). The session is a sealed cookie ([`session`]);
//!   Log out clears it and any sign-in under way.
//! - Pages: `/` (what awaits me, my requests, the latest; a release is
//!   one row), `/promotions/{id}` (state, what changes ([`image`]: both
//!   images read from the registry), checks, approvals, gates, audit
//!   entries and their checkpoint inclusion; Approve, Reject, Cancel,
//!   break-glass) and `/releases/{id}` (the whole and each member's facts,
//!   the same buttons deciding every member at once, [`release`]).
//!   `GET /promotions/{id}/events` and `/releases/{id}/events` stream a
//!   `change` event per change (Server-Sent Events); `console.js` then
//!   re-reads the page's live section. `/history`, `/deployed` and
//!   `/policy` read only ([`browse`]).
//! - Safety: every state change is a POST carrying the session's CSRF
//!   token and an `Origin` equal to `public_url`'s (else 403, nothing
//!   recorded); a Content-Security-Policy that allows no inline script or
//!   style; maud escapes every value ([`pages`]); the listener has the
//!   connection cap and deadlines of `server::http1`.

pub mod browse;
pub mod image;
pub mod oidc;
pub mod pages;
pub mod release;
pub mod session;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::{ConsoleConfig, Live};
use crate::domain::model::{Promotion, PromotionId, State};
use crate::domain::names::Repository;
use crate::domain::policy::{EnvironmentPolicy, Principal};
use crate::domain::release::Release;
use crate::error::Error;
use crate::promotions::{HistoryQuery, ListQuery, Promotions};
use crate::store::{HistoryFilter, ListFilter};
use axum::Router;
use axum::extract::{Form, Path, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};
use maud::Markup;
use pages::Reader;
use serde::Deserialize;
use session::{Sealer, Session, Via};
use std::sync::Arc;

/// The policy every console response carries: scripts and styles from
/// this origin only (no inline ones), forms post here only, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The largest form the console reads (a comment is at most 4096 bytes).
const MAX_FORM: usize = 16 * 1024;

/// Checks shown on a promotion page (the latest report of each).
const CHECKS_SHOWN: usize = 100;

/// Promotions listed per section of `/`.
const LISTED: usize = 50;

pub struct Console {
    promotions: Promotions,
    auth: Arc<Authenticator>,
    live: Live,
    config: ConsoleConfig,
    sealer: Sealer,
    clock: Arc<dyn Clock>,
    /// Images described on promotion pages, by digest.
    images: image::Images,
    provider: oidc::Provider,
}

impl Console {
    /// `None` when the session key could not be read (only `check-config`
    /// tolerates that; `serve` reads every file).
    pub fn new(
        promotions: Promotions,
        auth: Arc<Authenticator>,
        live: Live,
        config: ConsoleConfig,
        clock: Arc<dyn Clock>,
    ) -> Option<Console> {
        let key = config.session_key.clone()?;
        let sealer = Sealer::new(key.expose(), config.secure_cookies(), config.session_ttl);
        let provider = oidc::Provider::new()
            .map_err(|e| tracing::error!(error = %e, "console: no OpenID Connect client"))
            .ok()?;
        Some(Console {
            provider,
            promotions,
            auth,
            live,
            config,
            sealer,
            clock,
            images: image::Images::default(),
        })
    }

    /// The principal a session acts as now: a token session's groups are
    /// the running config's (a principal removed since has no session).
    fn principal(&self, s: &Session) -> Option<Principal> {
        let config = self.live.get();
        let mut who = match s.via {
            Via::Token => {
                let p = config.principals.iter().find(|p| p.name == s.principal)?;
                Principal::new(p.name.clone(), p.groups.clone())
            }
            Via::Oidc => Principal::new(s.principal.clone(), s.groups.clone()),
        };
        who.aliases = config.other_names(&who.name);
        Some(who)
    }

    fn session(&self, headers: &HeaderMap) -> Option<(Session, Principal)> {
        let s = self.sealer.open(headers, self.clock.now())?;
        let who = self.principal(&s)?;
        Some((s, who))
    }
}

type Shared = Arc<Console>;

/// Every route of the console.
pub fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/auth/login", get(oidc_login))
        .route("/auth/callback", get(oidc_callback))
        .merge(subject_routes(Subject::Promotion))
        .merge(subject_routes(Subject::Release))
        .route("/history", get(browse::history))
        .route("/deployed", get(browse::deployed))
        .route("/policy", get(browse::policy))
        .route("/static/console.js", get(script))
        .route("/static/console.css", get(style))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(console)
}

/// A promotion's or a release's page, buttons and change stream: the
/// same handlers, told the subject by the route.
fn subject_routes(subject: Subject) -> Router<Shared> {
    let base = subject.base();
    let decider = |decision: Decision| -> MethodRouter<Shared> {
        post(
            move |c: Extract<Shared>, id: Path<String>, h: HeaderMap, f: Form<DecideForm>| {
                decide(c, id, h, f, decision, subject)
            },
        )
    };
    Router::new()
        .route(
            &format!("{base}/{{id}}"),
            get(move |c: Extract<Shared>, id: Path<String>, h: HeaderMap| show(c, id, h, subject)),
        )
        .route(
            &format!("{base}/{{id}}/approve"),
            decider(Decision::Approve),
        )
        .route(&format!("{base}/{{id}}/reject"), decider(Decision::Reject))
        .route(&format!("{base}/{{id}}/cancel"), decider(Decision::Cancel))
        .route(
            &format!("{base}/{{id}}/events"),
            get(move |c: Extract<Shared>, id: Path<String>, h: HeaderMap| {
                events(c, id, h, subject)
            }),
        )
}

/// What a page, its buttons and its change stream are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Promotion,
    /// A release, named by its first member's id.
    Release,
}

impl Subject {
    fn base(self) -> &'static str {
        match self {
            Subject::Promotion => "/promotions",
            Subject::Release => "/releases",
        }
    }

    fn path(self, id: PromotionId) -> String {
        format!("{}/{id}", self.base())
    }

    /// Its page: 404 when `raw_id` names none.
    async fn render(
        self,
        c: &Shared,
        s: &Session,
        who: &Principal,
        raw_id: &str,
        status: StatusCode,
        error: Option<&str>,
    ) -> Response {
        match self {
            Subject::Promotion => render_promotion(c, s, who, raw_id, status, error).await,
            Subject::Release => release::render(c, s, who, raw_id, status, error).await,
        }
    }
}

/// 404: `{id}` names no promotion (or, for a release's routes, no release).
fn not_found(reader: &Reader<'_>, subject: Subject) -> Response {
    let what = match subject {
        Subject::Promotion => "no such promotion",
        Subject::Release => "no such release",
    };
    page(
        StatusCode::NOT_FOUND,
        pages::problem(Some(reader), "Not found", what),
    )
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// Refused before anything is read or recorded: a POST whose `Origin` is
/// not the console's own (a cross-site form), or without the session's
/// CSRF token.
fn forbidden(reader: Option<&Reader<'_>>, why: &str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        pages::problem(reader, "Refused", why),
    )
}

fn same_origin(c: &Console, headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o == c.config.origin)
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("console.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}

async fn login_page(Extract(c): Extract<Shared>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    page(StatusCode::OK, sign_in_page(&c, None))
}

/// The sign-in page as configured: the identity provider's button and/or
/// the token form, with `error` above them.
fn sign_in_page(c: &Console, error: Option<&str>) -> Markup {
    let issuer = c.config.oidc.as_ref().map(|o| {
        oidc::identity(&c.live.get().identities, o).map_or_else(|| o.identity.clone(), |i| i.issuer)
    });
    pages::login(c.config.token_login, issuer.as_deref(), error)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    Extract(c): Extract<Shared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&c, &headers) {
        return forbidden(None, "this form must be sent from the console's own pages");
    }
    if !c.config.token_login {
        return page(StatusCode::NOT_FOUND, sign_in_page(&c, None));
    }
    let refused = || {
        page(
            StatusCode::UNAUTHORIZED,
            sign_in_page(&c, Some("That token is not accepted.")),
        )
    };
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", form.token.trim())) else {
        return refused();
    };
    let mut bearer = HeaderMap::new();
    bearer.insert(header::AUTHORIZATION, value);
    let Ok(who) = c.auth.authenticate(&bearer, None).await else {
        return refused();
    };
    // A token that names a [[principal]] keeps its groups in the config; a
    // JWT pasted here is an identity's (its rules mapped the groups).
    let via = if c.live.get().principals.iter().any(|p| p.name == who.name) {
        Via::Token
    } else {
        Via::Oidc
    };
    let s = Session::new(
        who.name,
        who.groups,
        via,
        c.clock.now(),
        c.config.session_ttl,
    );
    ([(header::SET_COOKIE, c.sealer.seal(&s))], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    Extract(c): Extract<Shared>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = c.session(&headers);
    if let Some((s, _)) = &session
        && (!same_origin(&c, &headers) || !s.csrf_matches(&form.csrf))
    {
        return forbidden(None, "sign out from the console's own pages");
    }
    (
        axum::response::AppendHeaders([
            (header::SET_COOKIE, c.sealer.clear()),
            (header::SET_COOKIE, c.sealer.clear_as(session::FLOW_COOKIE)),
        ]),
        Redirect::to("/login"),
    )
        .into_response()
}

/// Starts the OpenID Connect sign-in: a new `state`, `nonce` and PKCE
/// verifier in the flow cookie, and the browser sent to the provider. A
/// GET: it changes nothing but that cookie, which only the callback reads.
async fn oidc_login(Extract(c): Extract<Shared>) -> Response {
    let Some(client) = &c.config.oidc else {
        return page(StatusCode::NOT_FOUND, sign_in_page(&c, None));
    };
    let Some(identity) = oidc::identity(&c.live.get().identities, client) else {
        return oidc_refused(
            &c,
            StatusCode::SERVICE_UNAVAILABLE,
            "The console's identity provider is not configured any more.",
        );
    };
    let discovery = match c.provider.discover(&identity.issuer).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "console: OpenID Connect discovery failed");
            return oidc_refused(
                &c,
                StatusCode::BAD_GATEWAY,
                "The identity provider cannot be reached; try again in a moment.",
            );
        }
    };
    let flow = oidc::Flow::new(&client.identity, c.clock.now().seconds);
    let to = oidc::Provider::authorization_url(&discovery, client, &flow);
    (
        [(header::SET_COOKIE, flow.cookie(&c.sealer))],
        Redirect::to(&to),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The sign-in page with `why`, the sign-in under way ended, no session.
fn oidc_refused(c: &Console, status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::SET_COOKIE, c.sealer.clear_as(session::FLOW_COOKIE))],
        sign_in_page(c, Some(why)),
    )
        .into_response()
}

/// Where the provider sends the browser back: `state` must be the flow
/// cookie's, the code is exchanged with the PKCE verifier, and the ID
/// token must verify as the identity's (keys, `iss`, `aud` = `client_id`,
/// `exp`), carry the flow's `nonce`, and map through its rules.
async fn oidc_callback(
    Extract(c): Extract<Shared>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<Callback>,
) -> Response {
    let refused = |status, why: &str| oidc_refused(&c, status, why);
    let Some(client) = &c.config.oidc else {
        return page(StatusCode::NOT_FOUND, sign_in_page(&c, None));
    };
    let now = c.clock.now().seconds;
    let flow = c
        .sealer
        .open_as::<oidc::Flow>(&headers, session::FLOW_COOKIE)
        .filter(|f| f.expires > now && f.identity == client.identity);
    let Some(flow) = flow else {
        return refused(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started here, or took too long: sign in again.",
        );
    };
    if let Some(error) = &q.error {
        tracing::info!(error = %error, "console: the identity provider refused a sign-in");
        return refused(
            StatusCode::UNAUTHORIZED,
            &format!(
                "The identity provider did not sign you in ({}).",
                crate::auth::jwt::shown(error)
            ),
        );
    }
    if !q
        .state
        .as_deref()
        .is_some_and(|s| oidc::same(s, &flow.state))
    {
        tracing::info!("console: a sign-in came back with a state that is not its own");
        return refused(
            StatusCode::BAD_REQUEST,
            "The sign-in's state does not match the one this browser started: sign in again.",
        );
    }
    let Some(code) = q.code.as_deref().filter(|s| !s.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "The identity provider sent no authorization code: sign in again.",
        );
    };
    let Some(identity) = oidc::identity(&c.live.get().identities, client) else {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "The console's identity provider is not configured any more.",
        );
    };
    let unreachable = |e: oidc::ProviderError| {
        tracing::warn!(error = %e, "console: OpenID Connect sign-in failed at the provider");
        // The provider said no (a used or expired code, a client it does
        // not know): the sign-in is refused; otherwise it did not answer.
        let status = match e {
            oidc::ProviderError::Refused { .. } => StatusCode::UNAUTHORIZED,
            oidc::ProviderError::Http { .. } | oidc::ProviderError::Discovery { .. } => {
                StatusCode::BAD_GATEWAY
            }
        };
        refused(
            status,
            "The identity provider did not complete the sign-in; try again.",
        )
    };
    let discovery = match c.provider.discover(&identity.issuer).await {
        Ok(d) => d,
        Err(e) => return unreachable(e),
    };
    let id_token = match c
        .provider
        .exchange(&discovery, client, code, &flow.verifier)
        .await
    {
        Ok(t) => t,
        Err(e) => return unreachable(e),
    };
    let claims = match c.auth.verify_id_token(&id_token, &identity).await {
        Ok(claims) => claims,
        Err(e) => {
            tracing::warn!(reason = e.reason(), error = %e, "console: an ID token was refused");
            return refused(
                StatusCode::UNAUTHORIZED,
                &format!("The identity provider's ID token is not accepted: {e}."),
            );
        }
    };
    // OpenID Connect Core 3.1.3.7: a token for several audiences names
    // the party it was issued to in `azp`, which must be this console.
    if claims
        .get("azp")
        .is_some_and(|azp| azp.as_str() != Some(client.client_id.as_str()))
    {
        tracing::warn!("console: an ID token was issued to another client (azp)");
        return refused(
            StatusCode::UNAUTHORIZED,
            "The identity provider's ID token was issued to another client.",
        );
    }
    let nonce = claims.get("nonce").and_then(|n| n.as_str());
    if !nonce.is_some_and(|n| oidc::same(n, &flow.nonce)) {
        tracing::warn!("console: an ID token carried a nonce that is not the sign-in's");
        return refused(
            StatusCode::UNAUTHORIZED,
            "The ID token's nonce does not match this sign-in: sign in again.",
        );
    }
    let who = match crate::auth::jwt::map_to_principal(&claims, &identity) {
        Ok(who) => who,
        Err(e) => {
            tracing::info!(reason = e.reason(), error = %e, "console: an ID token mapped to no principal");
            return refused(
                StatusCode::FORBIDDEN,
                &format!(
                    "You are signed in at the identity provider, but prodgate does not know you: {e}."
                ),
            );
        }
    };
    tracing::info!(principal = %who.name, "console: signed in through OpenID Connect");
    let s = Session::new(
        who.name,
        who.groups,
        Via::Oidc,
        c.clock.now(),
        c.config.session_ttl,
    );
    (
        axum::response::AppendHeaders([
            (header::SET_COOKIE, c.sealer.seal(&s)),
            (header::SET_COOKIE, c.sealer.clear_as(session::FLOW_COOKIE)),
        ]),
        Redirect::to("/"),
    )
        .into_response()
}

fn reader<'a>(s: &'a Session, who: &'a Principal) -> Reader<'a> {
    Reader {
        name: &who.name,
        groups: &who.groups,
        csrf: &s.csrf,
    }
}

async fn index(Extract(c): Extract<Shared>, headers: HeaderMap) -> Response {
    let Some((s, who)) = c.session(&headers) else {
        return to_login();
    };
    let listed = |awaiting: Option<Principal>, state: Option<State>| ListQuery {
        filter: ListFilter {
            state,
            ..ListFilter::default()
        },
        after: None,
        limit: LISTED,
        newest_first: true,
        awaiting,
        project: None,
        request: None,
    };
    let awaiting = c
        .promotions
        .list(listed(Some(who.clone()), Some(State::PendingApproval)))
        .await;
    let latest = c.promotions.list(listed(None, None)).await;
    let rows = match (awaiting, latest) {
        (Ok(awaiting), Ok(latest)) => tokio::try_join!(
            release::rows(&c, awaiting.items),
            release::rows(&c, latest.items)
        ),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match rows {
        Ok((awaiting, latest)) => {
            let mine: Vec<_> = latest
                .iter()
                .filter(|row| who.is(row.requested_by()))
                .cloned()
                .collect();
            page(
                StatusCode::OK,
                pages::index(&reader(&s, &who), &awaiting, &mine, &latest),
            )
        }
        Err(e) => failure(Some(&reader(&s, &who)), e),
    }
}

/// A use case's refusal as the console answers it: the HTTP status of its
/// gRPC code, and the sentence the gRPC call would carry.
fn refusal(e: Error, subject: &str) -> (StatusCode, String) {
    let status = crate::api::error::status(e, subject);
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, status.message().to_owned())
}

/// A use case's error as a page of its own.
fn failure(reader: Option<&Reader<'_>>, e: Error) -> Response {
    let (code, message) = refusal(e, "");
    page(code, pages::problem(reader, "Refused", &message))
}

fn promotion_id(raw: &str) -> Option<PromotionId> {
    crate::api::convert::promotion_id(raw).ok()
}

/// `/promotions/{id}` or `/releases/{id}`.
async fn show(
    Extract(c): Extract<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    subject: Subject,
) -> Response {
    let Some((s, who)) = c.session(&headers) else {
        return to_login();
    };
    subject
        .render(&c, &s, &who, &id, StatusCode::OK, None)
        .await
}

async fn render_promotion(
    c: &Console,
    s: &Session,
    who: &Principal,
    raw_id: &str,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let r = reader(s, who);
    let Some(id) = promotion_id(raw_id) else {
        return not_found(&r, Subject::Promotion);
    };
    let p = match c.promotions.get(id).await {
        Ok(p) => p,
        Err(e) => return failure(Some(&r), e),
    };
    let history = c
        .promotions
        .history(HistoryQuery {
            filter: HistoryFilter {
                promotion_id: Some(id),
                ..HistoryFilter::default()
            },
            after: None,
            limit: 1000,
            newest_first: false,
        })
        .await;
    let entries = match history {
        Ok(l) => l.items,
        Err(e) => return failure(Some(&r), e),
    };
    // A member's buttons decide its whole release: judged on every member.
    let release = match p.release_id {
        Some(rid) => match c.promotions.release(rid).await {
            Ok(release) => Some(release),
            Err(e) => return failure(Some(&r), e),
        },
        None => None,
    };
    let decided = release
        .as_ref()
        .map_or(std::slice::from_ref(&p), |r| r.members.as_slice());
    let actions = actions(c, who, decided);
    let facts = member_facts(c, &p).await;
    page(
        status,
        pages::promotion(
            &r,
            &pages::PromotionView {
                promotion: &p,
                facts: &facts,
                entries: &entries,
                checkpoint_size: c.promotions.checkpoint_size(),
                actions: &actions,
                release: release.as_ref().map(|r| (r.id, r.members.len())),
                error,
            },
        ),
    )
}

/// What `who` may do about `members`: a promotion alone, or every member
/// of a release (decided together, so each member's policy must allow
/// it). Any approver sees the buttons (`may_approve` implies one); the use
/// case says why a given call is refused.
fn actions(c: &Console, who: &Principal, members: &[Promotion]) -> pages::Actions {
    let config = c.live.get();
    let each = |allowed: &dyn Fn(&EnvironmentPolicy) -> bool| {
        !members.is_empty()
            && members.iter().all(|m| {
                config
                    .governing(&m.repository)
                    .environment(&m.environment)
                    .is_some_and(allowed)
            })
    };
    let open = !members.is_empty() && members.iter().all(|m| m.state.is_undecided());
    let approver = each(&|pol| pol.is_approver(who));
    let requester = members.first().is_some_and(|m| who.is(&m.requested_by));
    pages::Actions {
        decide: open && approver,
        cancel: open && (approver || requester),
        break_glass: open && each(&|pol| pol.may_break_glass(who)),
    }
}

/// A promotion's gates (while it is open), checks and what it changes,
/// read together.
async fn member_facts(c: &Console, p: &Promotion) -> pages::MemberFacts {
    let gates = async {
        if p.state.is_terminal() {
            None
        } else {
            c.promotions.gates_of(p).await.ok().map(|e| e.report)
        }
    };
    let checks = async {
        match Repository::parse(&p.repository) {
            Ok(repo) => c
                .promotions
                .list_checks(&repo, &p.digest, None, CHECKS_SHOWN)
                .await
                .map(|l| l.items)
                .map_err(|e| refusal(e, "").1),
            Err(e) => Err(e.to_string()),
        }
    };
    let (gates, checks, changes) = tokio::join!(gates, checks, what_changes(c, p));
    pages::MemberFacts {
        gates,
        checks,
        changes,
    }
}

/// How long the page waits for the registry to describe an image: past
/// it the column says so and the page renders anyway.
const DESCRIBE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

async fn describe(c: &Console, repository: &str, digest: &str) -> Result<image::Image, String> {
    let registry = c.promotions.registry();
    match tokio::time::timeout(
        DESCRIBE_DEADLINE,
        c.images.describe(registry.as_ref(), repository, digest),
    )
    .await
    {
        Ok(described) => described,
        Err(_) => Err(format!(
            "the registry did not answer within {}s",
            DESCRIBE_DEADLINE.as_secs()
        )),
    }
}

/// The environment's digest now (GetDeployed's record) and the candidate,
/// each described; a failure is shown in its column, never fails the page.
async fn what_changes(c: &Console, p: &Promotion) -> pages::WhatChanges {
    let deployed = match Repository::parse(&p.repository) {
        Ok(repo) => c.promotions.deployed(&repo, &p.environment, None).await,
        Err(e) => Err(Error::InvalidArgument {
            field: "repository",
            message: e.to_string(),
        }),
    };
    let candidate = describe(c, &p.repository, &p.digest);
    let now = async {
        match deployed {
            Ok(record) => pages::Carried::Digest {
                since: record.applied.time,
                image: Box::new(describe(c, &p.repository, record.expected()).await),
            },
            Err(Error::NothingDeployed { .. }) => pages::Carried::Nothing,
            Err(e) => pages::Carried::Unknown(refusal(e, "").1),
        }
    };
    let (now, candidate) = tokio::join!(now, candidate);
    pages::WhatChanges { now, candidate }
}

#[derive(Deserialize)]
struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    break_glass: Option<String>,
}

#[derive(Clone, Copy)]
enum Decision {
    Approve,
    Reject,
    Cancel,
}

/// Approve, Reject or Cancel, as the gRPC call would: the same use case,
/// the signed-in principal, the same refusals (shown on the page).
async fn decide(
    Extract(c): Extract<Shared>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<DecideForm>,
    decision: Decision,
    subject: Subject,
) -> Response {
    let Some((s, who)) = c.session(&headers) else {
        return to_login();
    };
    if !same_origin(&c, &headers) {
        return forbidden(
            Some(&reader(&s, &who)),
            "this form must be sent from the console's own pages",
        );
    }
    if !s.csrf_matches(&form.csrf) {
        return forbidden(
            Some(&reader(&s, &who)),
            "the form's CSRF token is missing or stale: reload the page and try again",
        );
    }
    let Some(id) = promotion_id(&raw_id) else {
        return not_found(&reader(&s, &who), subject);
    };
    // A promotion's id on a release's route decides nothing.
    if subject == Subject::Release
        && let Err(e) = c.promotions.release(id).await
    {
        return release::refused(&reader(&s, &who), e);
    }
    let comment = match crate::api::convert::text("comment", &form.comment) {
        Ok(t) => t,
        Err(e) => return failure(Some(&reader(&s, &who)), e),
    };
    let break_glass = form.break_glass.as_deref() == Some("true");
    let done = match decision {
        Decision::Approve => {
            c.promotions
                .approve(who.clone(), id, comment, break_glass)
                .await
        }
        Decision::Reject => c.promotions.reject(who.clone(), id, comment).await,
        Decision::Cancel => c.promotions.cancel(who.clone(), id, comment).await,
    };
    match done {
        Ok(_) => Redirect::to(&subject.path(id)).into_response(),
        Err(e) => {
            let (code, message) = refusal(e, &id.to_string());
            subject
                .render(&c, &s, &who, &raw_id, code, Some(&message))
                .await
        }
    }
}

/// `change` whenever the promotion (or the release) changes, the first
/// its state now; `end` once it has ended (every member, for a release):
/// the page's script re-reads the live section on each. A comment every
/// 15 s keeps proxies from closing it.
async fn events(
    Extract(c): Extract<Shared>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    subject: Subject,
) -> Response {
    let Some((s, who)) = c.session(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Some(id) = promotion_id(&raw_id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let watched = match subject {
        Subject::Promotion => c
            .promotions
            .watch(&who, id)
            .await
            .map(|rx| stream(rx, |p: &Promotion| (p.state, p.state.is_terminal()))),
        Subject::Release => c.promotions.watch_release(&who, id).await.map(|rx| {
            stream(rx, |r: &Release| {
                (r.state(), r.members.iter().all(|m| m.state.is_terminal()))
            })
        }),
    };
    watched.unwrap_or_else(|e| failure(Some(&reader(&s, &who)), e))
}

/// Server-Sent Events of a watch: each item's state label, as `end` when
/// `read` says it has ended, else as `change`.
fn stream<T: Send + 'static>(
    changes: tokio::sync::mpsc::Receiver<Result<T, Error>>,
    read: fn(&T) -> (State, bool),
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(changes),
        move |change| {
            let event = match change.as_ref().map(read) {
                Ok((state, true)) => Event::default().event("end").data(state.label()),
                Ok((state, false)) => Event::default().event("change").data(state.label()),
                Err(_) => Event::default().event("end").data("lost"),
            };
            Ok::<_, std::convert::Infallible>(event)
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}
