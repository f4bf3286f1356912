//! Signing in to the console through the company's identity provider
//! (`[console] identity`), in a real browser against a real `prodgate
//! serve`, with an OpenID Connect provider of the tests' own
//! (`support::idp`): the code flow with PKCE, the ID token's claims mapped
//! by the identity's rules to the principal that then approves (the audit
//! entry names it); a wrong `nonce` or `state`, a forged ID token, one
//! issued to another client (`azp`) and a person no rule maps are refused
//! with no session.

mod support;

use prodgate::pb::{self, HistoryRequest, PromotionState};
use serde_json::json;
use std::time::Duration;
use support::browser::Browser;
use support::console::ConsoleSetup;
use support::idp::{FakeIdp, Knobs};
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{history, request_to, wait_for_state};

const CLIENT_ID: &str = "prodgate-console";
const CLIENT_SECRET: &str = "console-s3cret";
/// What the rule makes of the person the fake provider signs in.
const MAPPED: &str = "sso:rosa@acme.test";

struct World {
    server: TestServer,
    registry: TestRegistry,
    idp: FakeIdp,
    base: String,
    _console: ConsoleSetup,
}

impl World {
    async fn start() -> World {
        let registry = TestRegistry::start().await;
        let idp = FakeIdp::start(
            CLIENT_ID,
            CLIENT_SECRET,
            json!({
                "sub": "00u42",
                "email": "rosa@acme.test",
                "email_verified": "true",
                "groups": ["release-managers", "everyone"],
            }),
        )
        .await;
        let issuer = &idp.issuer;
        let config_of = |console: &ConsoleSetup| {
            let secret = console.dir.path().join("client.secret");
            std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).expect("write secret");
            format!(
                r#"{}
[[identity]]
name = "company"
issuer = "{issuer}"
audience = "prodgate"
jwks_url = "{issuer}/jwks"
[[identity.rule]]
claims = {{ email_verified = "true" }}
principal = "sso:{{email}}"
groups_claim = "groups"
{}"#,
                standard_config(&registry.host),
                console.toml(&format!(
                    "identity = \"company\"\nclient_id = \"{CLIENT_ID}\"\n\
                 client_secret_file = {secret:?}\nscopes = [\"email\", \"groups\"]\n"
                )),
            )
        };
        let (console, server) = ConsoleSetup::serve(config_of);
        let base = console.base.clone();
        World {
            server,
            registry,
            idp,
            base,
            _console: console,
        }
    }

    /// A promotion of a new image from staging to production, by alice.
    async fn candidate(&self, seed: u64) -> pb::Promotion {
        self.registry
            .push_image("team/app", Some("staging"), 1024, seed)
            .await;
        let repo = format!("{}/team/app", self.registry.host);
        self.server
            .client("alice")
            .await
            .request_promotion(pb::RequestPromotionRequest {
                reason: "1.4".into(),
                ..request_to(&repo, "staging", "production")
            })
            .await
            .expect("request")
            .into_inner()
    }

    /// One sign-in without a browser, each redirect followed by hand:
    /// the callback's status and `Set-Cookie` headers.
    async fn sign_in_by_hand(&self) -> (u16, Vec<String>) {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let start = http
            .get(format!("{}/auth/login", self.base))
            .send()
            .await
            .expect("start");
        assert_eq!(start.status(), 303);
        let flow = start.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        assert!(flow.starts_with("prodgate_oidc="), "{flow}");
        let at_idp = http
            .get(start.headers()["location"].to_str().unwrap())
            .send()
            .await
            .expect("authorize");
        assert_eq!(at_idp.status(), 303);
        let back = http
            .get(at_idp.headers()["location"].to_str().unwrap())
            .header("cookie", flow)
            .send()
            .await
            .expect("callback");
        let cookies = back
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        (back.status().as_u16(), cookies)
    }
}

/// Whether one of these `Set-Cookie` values opens a session.
fn opens_session(set_cookies: &[String]) -> bool {
    set_cookies
        .iter()
        .any(|c| c.starts_with("prodgate_session=") && !c.starts_with("prodgate_session=;"))
}

#[tokio::test]
async fn an_approver_signs_in_at_the_identity_provider_and_approves_as_the_mapped_principal() {
    let w = World::start().await;
    let p = w.candidate(1).await;
    let browser = Browser::start().await;
    browser
        .run("console_oidc_sign_in", async |b| {
            // Signed out: the provider's button, and no token form.
            b.goto(&format!("{}/", w.base)).await;
            b.wait_for_text("#oidc", &format!("Sign in with {}", w.idp.issuer))
                .await;
            assert!(
                b.client()
                    .find(fantoccini::Locator::Css("input[name=token]"))
                    .await
                    .is_err(),
                "no token form without token_login"
            );
            b.click("#oidc").await;
            b.wait_for("form.logout").await;
            b.wait_for_text(
                "span.who",
                &format!("{MAPPED} (release-managers, everyone)"),
            )
            .await;
            let cookie = b.cookie("prodgate_session").await.expect("a session");
            assert_eq!(cookie.http_only(), Some(true));
            assert!(
                b.cookie("prodgate_oidc").await.is_none(),
                "the sign-in's cookie is gone once it is over"
            );

            // What the provider saw: code flow, S256, a state and a nonce
            // of 256 bits, the scopes, the redirect URI; the exchange
            // passed its PKCE check with the client's credentials.
            let asked = w.idp.authorizations();
            assert_eq!(asked.len(), 1);
            let a = &asked[0].params;
            assert_eq!(a["code_challenge_method"], "S256");
            assert_eq!(a["scope"], "openid email groups");
            assert_eq!(a["redirect_uri"], format!("{}/auth/callback", w.base));
            assert_eq!(a["state"].len(), 43);
            assert_eq!(a["nonce"].len(), 43);
            assert_ne!(a["state"], a["nonce"]);
            let exchanged = w.idp.token_calls();
            assert_eq!(exchanged.len(), 1);
            assert!(exchanged[0].answered, "{exchanged:?}");
            assert_eq!(exchanged[0].params["code_verifier"].len(), 43);

            // The awaiting list, as the mapped principal; approve.
            b.click(&format!("#awaiting a[href='/promotions/{}']", p.id))
                .await;
            b.fill("#comment", "signed in through the IdP").await;
            b.click("#approve").await;
            let mut alice = w.server.client("alice").await;
            wait_for_state(
                &mut alice,
                &p.id,
                PromotionState::Promoted,
                Duration::from_secs(30),
            )
            .await;
            b.wait_for_text("#state", "PROMOTED").await;
            let approved: Vec<_> = history(
                &mut alice,
                HistoryRequest {
                    promotion_id: p.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .into_iter()
            .filter(|e| e.action == pb::AuditAction::Approved as i32)
            .collect();
            assert_eq!(approved.len(), 1, "{approved:?}");
            assert_eq!(approved[0].actor, MAPPED);
            assert_eq!(approved[0].comment, "signed in through the IdP");

            // Log out: both cookies gone, the button again.
            b.click("form.logout button").await;
            b.wait_for("#oidc").await;
            assert!(b.cookie("prodgate_session").await.is_none());
        })
        .await;
}

#[tokio::test]
async fn a_wrong_nonce_state_or_signature_or_an_unmapped_person_is_refused_without_a_session() {
    let w = World::start().await;
    let browser = Browser::start().await;
    browser
        .run("console_oidc_refusals", async |b| {
            // The ID token carries another nonce: refused after the
            // exchange, the page says why.
            w.idp.set_knobs(Knobs {
                wrong_nonce: true,
                ..Knobs::default()
            });
            b.goto(&format!("{}/login", w.base)).await;
            b.click("#oidc").await;
            b.wait_for_text(
                ".error",
                "The ID token's nonce does not match this sign-in: sign in again.",
            )
            .await;
            assert!(b.url().await.contains("/auth/callback"));
            assert!(b.cookie("prodgate_session").await.is_none());
            assert!(b.cookie("prodgate_oidc").await.is_none());
            assert!(
                b.client()
                    .find(fantoccini::Locator::Css("form.logout"))
                    .await
                    .is_err()
            );

            // Back with another state: refused before any exchange.
            w.idp.set_knobs(Knobs {
                wrong_state: true,
                ..Knobs::default()
            });
            let exchanges = w.idp.token_calls().len();
            b.click("#oidc").await;
            b.wait_for_text(
                ".error",
                "The sign-in's state does not match the one this browser started: sign in again.",
            )
            .await;
            assert!(b.cookie("prodgate_session").await.is_none());
            assert_eq!(w.idp.token_calls().len(), exchanges, "no code exchanged");

            // An ID token signed by a key that is not the issuer's.
            w.idp.set_knobs(Knobs {
                forged: true,
                ..Knobs::default()
            });
            b.click("#oidc").await;
            b.wait_for_text(
                ".error",
                &format!(
                    "The identity provider's ID token is not accepted: token from {:?}: \
                     the signature does not verify with key \"idp-1\".",
                    w.idp.issuer
                ),
            )
            .await;
            assert!(b.cookie("prodgate_session").await.is_none());

            // Someone no rule maps.
            w.idp.set_knobs(Knobs::default());
            w.idp.set_person(
                json!({"sub": "00u43", "email": "eve@acme.test", "email_verified": "false"}),
            );
            b.click("#oidc").await;
            b.wait_for_text(
                ".error",
                &format!(
                    "You are signed in at the identity provider, but prodgate does not know you: \
                     token from {:?} matched no rule.",
                    w.idp.issuer
                ),
            )
            .await;
            assert!(b.cookie("prodgate_session").await.is_none());

            // A token issued to another client (`azp`).
            w.idp.set_person(json!({
                "sub": "00u42",
                "email": "rosa@acme.test",
                "email_verified": "true",
                "azp": "someone-else",
            }));
            b.click("#oidc").await;
            b.wait_for_text(
                ".error",
                "The identity provider's ID token was issued to another client.",
            )
            .await;
            assert!(b.cookie("prodgate_session").await.is_none());

            // A sound sign-in still works afterwards.
            w.idp.set_person(json!({
                "azp": CLIENT_ID,
                "sub": "00u42",
                "email": "rosa@acme.test",
                "email_verified": "true",
                "groups": ["release-managers", "everyone"],
            }));
            b.click("#oidc").await;
            b.wait_for_text(
                "span.who",
                &format!("{MAPPED} (release-managers, everyone)"),
            )
            .await;
        })
        .await;

    // The statuses, without a browser: 401 and 400, no session cookie.
    w.idp.set_knobs(Knobs {
        wrong_nonce: true,
        ..Knobs::default()
    });
    let (status, cookies) = w.sign_in_by_hand().await;
    assert_eq!(status, 401, "{cookies:?}");
    assert!(!opens_session(&cookies), "{cookies:?}");
    w.idp.set_knobs(Knobs {
        wrong_state: true,
        ..Knobs::default()
    });
    let (status, cookies) = w.sign_in_by_hand().await;
    assert_eq!(status, 400);
    assert!(!opens_session(&cookies), "{cookies:?}");
    w.idp.set_knobs(Knobs::default());
    let (status, cookies) = w.sign_in_by_hand().await;
    assert_eq!(status, 303);
    assert!(opens_session(&cookies), "{cookies:?}");
    // A callback without the sign-in's cookie (another browser, or a
    // forged link) opens nothing.
    let stray = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/auth/callback?code=x&state=y", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stray.status(), 400);
}
