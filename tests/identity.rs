//! Callers with JWTs from trusted issuers (`[[identity]]`), end to end: a
//! real `prodgate serve` trusting a GitHub-Actions-style issuer whose JWKS
//! is a file and a company IdP whose JWKS is served over loopback HTTP,
//! with tokens minted here (ES256 and RS256). Accepted tokens act as the
//! principal their rule maps them to; every kind of bad token is refused
//! with UNAUTHENTICATED naming the check, and counted by reason; keys
//! rotate without a restart; static tokens work as before.

mod support;

use prodgate::pb::{self, AuditAction, HistoryRequest, ListPromotionsRequest, PromotionState};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use support::hostile::{Hostile, Reply};
use support::oidc::{SigningKey, hs256, jwks, now, unsigned};
use support::registry::TestRegistry;
use support::server::{TestServer, registry_toml, standard_config};
use support::{approve, history, request_to};
use tonic::Code;

const CI_ISSUER: &str = "https://token.actions.githubusercontent.test";
const IDP_ISSUER: &str = "https://idp.acme.test";

/// The GitHub-Actions-style issuer (keys in `jwks_file`) and the company
/// IdP (keys at `jwks_url`), as the README's examples have them.
fn identities(jwks_file: &Path, jwks_url: &str) -> String {
    format!(
        r#"
[[identity]]
issuer = "{CI_ISSUER}"
audience = "prodgate"
jwks_file = {file:?}
max_lifetime = "1h"
[[identity.rule]]
claims = {{ repository_owner = "acme", ref = "refs/heads/main" }}
principal = "ci:{{repository}}"
groups = ["ci", "{{repository_owner}}-ci"]

[[identity]]
issuer = "{IDP_ISSUER}"
audience = "prodgate"
jwks_url = "{jwks_url}"
algorithms = ["RS256"]
[[identity.rule]]
principal = "sso:{{email}}"
groups_claim = "groups"
"#,
        file = jwks_file.display().to_string()
    )
}

/// Claims of a CI job's token on acme/app's main branch.
fn ci_claims() -> Value {
    let t = now();
    json!({
        "iss": CI_ISSUER,
        "aud": "prodgate",
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app",
        "repository_owner": "acme",
        "ref": "refs/heads/main",
        "workflow": "promote",
        "iat": t,
        "nbf": t,
        "exp": t + 300,
    })
}

/// Claims of a release manager's token from the company IdP.
fn person_claims(email: &str) -> Value {
    let t = now();
    json!({
        "iss": IDP_ISSUER,
        "aud": ["prodgate", "wiki"],
        "sub": "00u1abc",
        "email": email,
        "groups": ["release-managers", "staff"],
        "iat": t,
        "exp": t + 600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("claims object").remove(key);
    claims
}

/// A loopback HTTP server answering every request with `body`'s current
/// value (the test changes it to rotate keys).
async fn jwks_server(body: Arc<Mutex<String>>) -> Hostile {
    Hostile::start(move |_| Reply::json(&body.lock().unwrap_or_else(PoisonError::into_inner))).await
}

async fn list_as(server: &TestServer, token: &str) -> Result<(), tonic::Status> {
    server
        .client_with_token(token)
        .await
        .list_promotions(ListPromotionsRequest::default())
        .await
        .map(drop)
}

/// `prodgate_auth_failures_total` by reason, scraped now.
async fn failures(metrics: &str) -> HashMap<String, u64> {
    support::scrape(metrics)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("prodgate_auth_failures_total{reason=\""))
        .filter_map(|l| {
            let (reason, value) = l.split_once("\"} ")?;
            Some((reason.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn tokens_act_as_the_principal_their_rule_maps_them_to() {
    prodgate::server::install_crypto_provider();
    let registry = TestRegistry::start().await;
    let digest = registry
        .push_image("acme/app", Some("staging"), 1024, 1)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ci_key = SigningKey::es256("gh-1");
    let jwks_file = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&ci_key])).expect("write the JWKS");
    let idp_key = SigningKey::rs256("idp-1");
    let idp = jwks_server(Arc::new(Mutex::new(jwks(&[&idp_key])))).await;
    // Only acme's CI may request acme's promotions: its group comes from
    // the `{repository_owner}-ci` template.
    let config = format!(
        "{}{}\n[[project]]\nname = \"acme\"\nrepositories = [\"{}/acme/*\"]\nrequesters = [\"group:acme-ci\"]\n",
        standard_config(&registry.host),
        identities(&jwks_file, &format!("{}/jwks", idp.url())),
        registry.host
    );
    let server = TestServer::start(&config);
    let repo = format!("{}/acme/app", registry.host);

    let mut ci = server.client_with_token(&ci_key.sign(&ci_claims())).await;
    let p = ci
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("CI's token requests")
        .into_inner();
    assert_eq!(p.requested_by, "ci:acme/app");
    assert_eq!(p.digest, digest);
    // A static principal outside acme-ci may not.
    let e = server
        .client("alice")
        .await
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect_err("alice is not in acme-ci");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The person's groups come from the IdP's `groups` claim; the URL's
    // keys are fetched on first use.
    let mut ann = server
        .client_with_token(&idp_key.sign(&person_claims("ann@acme.test")))
        .await;
    let done = ann
        .approve(approve(&p.id))
        .await
        .expect("a release manager from the IdP approves")
        .into_inner();
    assert_eq!(
        PromotionState::try_from(done.state),
        Ok(PromotionState::Promoted),
        "{done:?}"
    );
    assert_eq!(done.approvals[0].approver, "sso:ann@acme.test");
    assert_eq!(
        registry.tag_digest("acme/app", "production").await,
        Some(digest)
    );

    let entries = history(
        &mut ann,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let actors: Vec<(AuditAction, &str)> = entries
        .iter()
        .map(|e| {
            (
                AuditAction::try_from(e.action).expect("action"),
                e.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        actors,
        [
            (AuditAction::Requested, "ci:acme/app"),
            (AuditAction::Approved, "sso:ann@acme.test"),
            (AuditAction::Applied, "prodgate"),
        ]
    );

    // The identities are part of the recorded policy, their keys are not.
    let policy = ann
        .get_policy(pb::GetPolicyRequest::default())
        .await
        .expect("policy")
        .into_inner();
    assert!(
        policy
            .canonical_json
            .contains("\"principal\":\"ci:{repository}\"")
    );
    assert!(
        !policy.canonical_json.contains("jwks"),
        "{}",
        policy.canonical_json
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_naming_the_check_and_counted_by_reason() {
    prodgate::server::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let ci_key = SigningKey::es256("gh-1");
    let rsa = SigningKey::rs256("gh-rsa");
    let jwks_file = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&ci_key, &rsa])).expect("write the JWKS");
    let idp_key = SigningKey::rs256("idp-1");
    let idp = jwks_server(Arc::new(Mutex::new(jwks(&[&idp_key])))).await;
    let config = format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}{}{}",
        registry_toml("127.0.0.1:1"),
        support::server::principals_toml(),
        identities(&jwks_file, &format!("{}/jwks", idp.url())),
    );
    let server = TestServer::start(&config);

    // Good tokens, and the static tokens as before.
    list_as(&server, &ci_key.sign(&ci_claims()))
        .await
        .expect("ES256 CI token");
    list_as(&server, &rsa.sign(&ci_claims()))
        .await
        .expect("RS256 CI token");
    list_as(&server, &support::server::token("alice"))
        .await
        .expect("a static token");

    let t = now();
    let stranger = SigningKey::es256("gh-1");
    let public_key = jwks(&[&rsa]);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            ci_key.sign(&with(
                with(ci_claims(), "exp", json!(t - 120)),
                "iat",
                json!(t - 400),
            )),
            "expired",
        ),
        (
            "not_yet_valid",
            ci_key.sign(&with(ci_claims(), "nbf", json!(t + 600))),
            "not valid yet: its `nbf`",
        ),
        (
            "untrusted_issuer",
            ci_key.sign(&with(ci_claims(), "iss", json!("https://evil.test"))),
            "issuer \"https://evil.test\" is not a trusted [[identity]]",
        ),
        (
            "audience",
            ci_key.sign(&with(ci_claims(), "aud", json!("someone-else"))),
            "`aud` does not include \"prodgate\"",
        ),
        (
            "signature",
            stranger.sign(&ci_claims()),
            "signature does not verify with key \"gh-1\"",
        ),
        (
            "unknown_kid",
            stranger.sign_as("gh-9", &ci_claims()),
            "no key \"gh-9\"",
        ),
        (
            "algorithm",
            unsigned("gh-1", &ci_claims()),
            "alg \"none\" is not accepted",
        ),
        (
            "algorithm",
            hs256("gh-rsa", public_key.as_bytes(), &ci_claims()),
            "alg \"HS256\" is not accepted",
        ),
        (
            "algorithm",
            // An RS256 header on the EC key's kid: the key decides.
            rsa.sign_as("gh-1", &ci_claims()),
            "alg RS256 does not fit key \"gh-1\"",
        ),
        (
            "missing_claim",
            ci_key.sign(&without(ci_claims(), "exp")),
            "no `exp` claim",
        ),
        (
            "lifetime",
            ci_key.sign(&with(ci_claims(), "exp", json!(t + 7200))),
            "more than max_lifetime (3600 s)",
        ),
        (
            "no_rule",
            ci_key.sign(&with(ci_claims(), "ref", json!("refs/heads/feature"))),
            "token from \"https://token.actions.githubusercontent.test\" matched no rule",
        ),
        (
            "algorithm",
            // The IdP allows RS256 only.
            SigningKey::es256("idp-1").sign(&person_claims("ann@acme.test")),
            "alg \"ES256\" is not accepted (algorithms: RS256)",
        ),
        (
            "unknown_token",
            "not-a-configured-token".to_owned(),
            "unknown token",
        ),
    ];
    let mut expected: HashMap<String, u64> = HashMap::new();
    for (reason, token, message) in &cases {
        let e = list_as(&server, token)
            .await
            .expect_err(&format!("a token failing {reason} is refused"));
        assert_eq!(e.code(), Code::Unauthenticated, "{reason}: {e:?}");
        assert!(
            e.message().contains(message),
            "{reason}: {:?} does not say {message:?}",
            e.message()
        );
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(
                !e.message().contains(part),
                "{reason}: the message shows the token"
            );
        }
        *expected.entry((*reason).to_owned()).or_default() += 1;
    }
    let log = server.log();
    for (_, token, _) in &cases {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(
            signature.len() < 8 || !log.contains(signature),
            "the log shows a token"
        );
    }
    let counted = failures(server.metrics_addr()).await;
    for (reason, n) in &expected {
        assert_eq!(counted.get(reason), Some(n), "reason {reason}: {counted:?}");
    }
    assert_eq!(counted.get("mapping"), Some(&0), "{counted:?}");
}

#[tokio::test]
async fn rotated_keys_are_used_without_a_restart() {
    prodgate::server::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let old = SigningKey::es256("gh-2025");
    let jwks_file = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&old])).expect("write the JWKS");
    let idp_old = SigningKey::rs256("idp-2025");
    let served = Arc::new(Mutex::new(jwks(&[&idp_old])));
    let idp = jwks_server(served.clone()).await;
    let config = format!(
        "{}{}{}",
        registry_toml("127.0.0.1:1"),
        support::server::principals_toml(),
        identities(&jwks_file, &format!("{}/jwks", idp.url())),
    );
    let server = TestServer::start(&config);

    // The file: the issuer replaces its key.
    list_as(&server, &old.sign(&ci_claims()))
        .await
        .expect("old key");
    let new = SigningKey::es256("gh-2026");
    std::fs::write(&jwks_file, jwks(&[&new])).expect("rotate the JWKS file");
    list_as(&server, &new.sign(&ci_claims()))
        .await
        .expect("a new kid re-reads the file at once");
    // The withdrawn key stops working once the change is seen (the file's
    // metadata is looked at about once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match list_as(&server, &old.sign(&ci_claims())).await {
            Err(e) => {
                assert_eq!(e.code(), Code::Unauthenticated);
                assert!(e.message().contains("no key \"gh-2025\""), "{e:?}");
                break;
            }
            Ok(()) => assert!(Instant::now() < deadline, "the withdrawn key still works"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The URL: fetched on first use, and again for the first unknown kid.
    let person = person_claims("ann@acme.test");
    list_as(&server, &idp_old.sign(&person))
        .await
        .expect("old IdP key");
    assert_eq!(idp.requests().len(), 1);
    let idp_new = SigningKey::rs256("idp-2026");
    *served.lock().unwrap_or_else(PoisonError::into_inner) = jwks(&[&idp_old, &idp_new]);
    list_as(&server, &idp_new.sign(&person))
        .await
        .expect("a new kid refetches the JWKS");
    assert_eq!(idp.requests().len(), 2);
    // Made-up kids do not make prodgate hammer the issuer: one refetch per 30 s.
    for i in 0..3 {
        let e = list_as(&server, &idp_new.sign_as(&format!("made-up-{i}"), &person))
            .await
            .expect_err("an unknown kid");
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    assert_eq!(idp.requests().len(), 2, "{:?}", idp.requests());
    assert!(idp.requests().iter().all(|r| r.path() == "/jwks"));
}

#[tokio::test]
async fn identities_reload_with_the_policy() {
    prodgate::server::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let key = SigningKey::es256("gh-1");
    let jwks_file = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&key])).expect("write the JWKS");
    let base = format!(
        "{}{}",
        registry_toml("127.0.0.1:1"),
        support::server::principals_toml()
    );
    let server = TestServer::start(&base);
    let token = key.sign(&ci_claims());
    let e = list_as(&server, &token).await.expect_err("no identity yet");
    assert!(e.message().contains("not a trusted [[identity]]"), "{e:?}");

    let trusting = format!(
        "{base}\n[[identity]]\nissuer = \"{CI_ISSUER}\"\naudience = \"prodgate\"\njwks_file = {:?}\n[[identity.rule]]\nclaims = {{ repository_owner = \"acme\" }}\nprincipal = \"ci:{{repository}}\"\n",
        jwks_file.display().to_string()
    );
    server.write_config(&trusting);
    server.hangup();
    // The reload happens in the server's own time: poll for its effect.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = list_as(&server, &token).await {
        assert!(
            Instant::now() < deadline,
            "never trusted after the reload: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `scripts/demo-oidc` with `args`, run from the repository root; its
/// stdout, trimmed.
fn demo_oidc(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("scripts/demo-oidc"))
        .args(args)
        .current_dir(root)
        .output()
        .expect("run scripts/demo-oidc");
    assert!(
        out.status.success(),
        "scripts/demo-oidc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .trim()
        .to_owned()
}

/// The README's "Try it locally": `scripts/demo-oidc` makes the key and
/// mints the tokens, `deploy/prodgate.oidc.example.toml` (only its registry
/// host and its `jwks_file` pointed at this test's) is the config.
#[tokio::test]
async fn the_demo_issuer_script_mints_tokens_the_oidc_example_accepts() {
    prodgate::server::install_crypto_provider();
    let registry = TestRegistry::start().await;
    let digest = registry
        .push_image("acme/app", Some("staging"), 512, 7)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = dir.path().join("demo-oidc");
    let demo = demo.to_str().expect("utf-8 temp path");
    demo_oidc(&["init", demo]);

    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prodgate.oidc.example.toml"),
    )
    .expect("read the example");
    let mut config = example.clone();
    for (from, to) in [
        (
            "\"127.0.0.1:5000\"".to_owned(),
            format!("{:?}", registry.host),
        ),
        (
            "\"demo-oidc/jwks.json\"".to_owned(),
            format!("{:?}", format!("{demo}/jwks.json")),
        ),
    ] {
        assert_eq!(example.matches(&from).count(), 1, "{from} in the example");
        config = config.replace(&from, &to);
    }
    let server = TestServer::start(&config);
    let repo = format!("{}/acme/app", registry.host);

    let ci_token = |git_ref: &str, extra: &[&str]| {
        let sub = format!("repo:acme/app:ref:{git_ref}");
        let git_ref = format!("ref={git_ref}");
        let mut args = vec![
            "token",
            demo,
            "--sub",
            &sub,
            "--claim",
            "repository=acme/app",
            "--claim",
            "repository_owner=acme",
            "--claim",
            &git_ref,
        ];
        args.extend_from_slice(extra);
        demo_oidc(&args)
    };

    let p = server
        .client_with_token(&ci_token("refs/heads/main", &[]))
        .await
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("the main branch's token requests")
        .into_inner();
    assert_eq!(p.requested_by, "ci:acme/app");
    assert_eq!(p.digest, digest);
    // The example's static token for bob approves.
    let mut bob = server.client_with_token("bob-demo-token").await;
    let done = bob
        .approve(approve(&p.id))
        .await
        .expect("bob approves")
        .into_inner();
    assert_eq!(
        PromotionState::try_from(done.state),
        Ok(PromotionState::Promoted),
        "{done:?}"
    );
    let requested = history(
        &mut bob,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .find(|e| e.action == AuditAction::Requested as i32)
    .expect("a REQUESTED entry");
    assert_eq!(requested.actor, "ci:acme/app");

    for (what, token, message) in [
        (
            "a feature branch",
            ci_token("refs/heads/feature", &[]),
            "token from \"https://demo-oidc.invalid\" matched no rule",
        ),
        (
            "a token minted an hour ago",
            ci_token("refs/heads/main", &["--ago", "3600"]),
            "expired",
        ),
    ] {
        let e = list_as(&server, &token).await.expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(e.message().contains(message), "{what}: {e:?}");
    }
}

#[tokio::test]
async fn one_person_under_two_names_is_one_person() {
    prodgate::server::install_crypto_provider();
    let registry = TestRegistry::start().await;
    registry
        .push_image("acme/app", Some("staging"), 1024, 1)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ci_key = SigningKey::es256("gh-1");
    let jwks_file = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&ci_key])).expect("write the JWKS");
    let idp_key = SigningKey::rs256("idp-1");
    let idp = jwks_server(Arc::new(Mutex::new(jwks(&[&idp_key])))).await;
    // bob (a static token) also logs in through the IdP as sso:bob@acme.test.
    let config = format!(
        "{}{}",
        standard_config(&registry.host).replacen(
            "name = \"bob\"\n",
            "name = \"bob\"\naliases = [\"sso:bob@acme.test\"]\n",
            1
        ),
        identities(&jwks_file, &format!("{}/jwks", idp.url())),
    );
    let server = TestServer::start(&config);
    let repo = format!("{}/acme/app", registry.host);
    let mut bob = server.client("bob").await;
    let mut sso_bob = server
        .client_with_token(&idp_key.sign(&person_claims("bob@acme.test")))
        .await;

    // bob requests with his token and cannot approve under his other name.
    let p = bob
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("bob requests")
        .into_inner();
    let e = sso_bob
        .approve(approve(&p.id))
        .await
        .expect_err("the requester under another name");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Two approvals needed: bob's two names count once.
    let p2 = server
        .client("alice")
        .await
        .request_promotion(request_to(&repo, "staging", "prod2"))
        .await
        .expect("alice requests")
        .into_inner();
    bob.approve(approve(&p2.id)).await.expect("bob approves");
    let again = sso_bob
        .approve(approve(&p2.id))
        .await
        .expect("the same person again changes nothing")
        .into_inner();
    assert_eq!(
        PromotionState::try_from(again.state),
        Ok(PromotionState::PendingApproval)
    );
    assert_eq!(again.approvals.len(), 1, "{again:?}");
    // Nor does it wait for him under his other name.
    let waiting = sso_bob
        .list_promotions(ListPromotionsRequest {
            awaiting_me: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(
        waiting
            .promotions
            .iter()
            .all(|w| w.id != p2.id && w.id != p.id)
    );

    // The audit log keeps the name each acted under.
    let done = server
        .client("dave")
        .await
        .approve(approve(&p2.id))
        .await
        .expect("a second person")
        .into_inner();
    let approvers: Vec<&str> = done.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(approvers, ["bob", "dave"]);
    let p3 = server
        .client("alice")
        .await
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("alice requests")
        .into_inner();
    let approved = sso_bob
        .approve(approve(&p3.id))
        .await
        .expect("bob approves alice's request under his IdP name")
        .into_inner();
    assert_eq!(approved.approvals[0].approver, "sso:bob@acme.test");
}

/// A JWKS endpoint on a thread of its own that answers `body` after
/// `delay` (changeable while it runs), counting requests; a slow issuer
/// the async tests cannot stall themselves with.
struct SlowJwks {
    url: String,
    delay: Arc<Mutex<Duration>>,
    served: Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowJwks {
    fn start(body: String) -> SlowJwks {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (d, n) = (delay.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (d, n, body) = (d.clone(), n.clone(), body.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf);
                    n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let wait = *d.lock().unwrap_or_else(PoisonError::into_inner);
                    std::thread::sleep(wait);
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        SlowJwks { url, delay, served }
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_slow_refetch_never_holds_up_tokens_whose_key_is_cached() {
    prodgate::server::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let ci_key = SigningKey::es256("gh-1");
    let jwks_file = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&ci_key])).expect("write the JWKS");
    let idp_key = SigningKey::rs256("idp-1");
    let idp = SlowJwks::start(jwks(&[&idp_key]));
    let server = TestServer::start(&format!(
        "{}{}",
        standard_config("127.0.0.1:9"),
        identities(&jwks_file, &idp.url)
    ));
    let good = idp_key.sign(&person_claims("ann@acme.test"));
    list_as(&server, &good)
        .await
        .expect("keys fetched on first use");
    assert_eq!(idp.served(), 1);

    // The issuer turns slow; a token with a kid it never had sends the
    // server to fetch again.
    *idp.delay.lock().unwrap_or_else(PoisonError::into_inner) = Duration::from_secs(4);
    let forged = idp_key.sign_as("idp-unknown", &person_claims("ann@acme.test"));
    let refetch = {
        let client = server.client_with_token(&forged).await;
        tokio::spawn(async move {
            let mut client = client;
            client
                .list_promotions(ListPromotionsRequest::default())
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while idp.served() < 2 {
        assert!(Instant::now() < deadline, "no refetch for the unknown kid");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The fetch is under way: a token whose key is cached does not wait.
    let started = Instant::now();
    list_as(&server, &good).await.expect("cached key");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a cached key waited {took:?} for the refetch"
    );
    assert!(!refetch.is_finished(), "the refetch was not slow after all");
    let e = refetch.await.expect("task").expect_err("an unknown kid");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

#[tokio::test]
async fn made_up_kids_do_not_make_the_server_reread_its_jwks_file() {
    prodgate::server::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let ci_key = SigningKey::es256("gh-1");
    let jwks_file = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&ci_key])).expect("write the JWKS");
    let server = TestServer::start(&format!(
        "{}{}",
        standard_config("127.0.0.1:9"),
        identities(&jwks_file, "http://127.0.0.1:9/jwks")
    ));
    list_as(&server, &ci_key.sign(&ci_claims()))
        .await
        .expect("the file's key");
    for i in 0..200 {
        let forged = ci_key.sign_as(&format!("forged-{i}"), &ci_claims());
        let e = list_as(&server, &forged).await.expect_err("unknown kid");
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let loads = server.log().matches("JWKS loaded").count();
    assert!(loads <= 2, "{loads} JWKS loads for 200 made-up kids");
    // A rotated file is still used at once (its stamp changed).
    let rotated = SigningKey::es256("gh-2");
    std::fs::write(&jwks_file, jwks(&[&ci_key, &rotated])).expect("rotate");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match list_as(&server, &rotated.sign(&ci_claims())).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the rotated key was never used: {e:?}"),
        }
    }
}

#[tokio::test]
async fn an_idp_group_satisfies_required_groups_and_is_recorded_with_the_approval() {
    prodgate::server::install_crypto_provider();
    let registry = TestRegistry::start().await;
    let digest = registry
        .push_image("acme/app", Some("staging"), 1024, 1)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ci_key = SigningKey::es256("gh-1");
    let jwks_file = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&ci_key])).expect("write the JWKS");
    let idp_key = SigningKey::rs256("idp-1");
    let idp = jwks_server(Arc::new(Mutex::new(jwks(&[&idp_key])))).await;
    // acme's production needs two approvals, one by security; security is
    // a group only the IdP knows (no [[principal]] is in it).
    let config = format!(
        "{}{}\n[[project]]\nname = \"acme\"\nrepositories = [\"{}/acme/*\"]\n\
         [[project.environment]]\nname = \"production\"\n\
         approvers = [\"group:release-managers\", \"group:security\"]\n\
         required_approvals = 2\nrequired_groups = [\"security\"]\n",
        standard_config(&registry.host),
        identities(&jwks_file, &format!("{}/jwks", idp.url())),
        registry.host
    );
    let server = TestServer::start(&config);
    let repo = format!("{}/acme/app", registry.host);
    let p = server
        .client("alice")
        .await
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    // bob (release-managers, from [[principal]]) approves first.
    let one = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("bob approves")
        .into_inner();
    assert_eq!(one.state, PromotionState::PendingApproval as i32);
    // sam logs in with the IdP; his `groups` claim says security.
    let sam = with(
        person_claims("sam@acme.test"),
        "groups",
        json!(["security", "staff"]),
    );
    let done = server
        .client_with_token(&idp_key.sign(&sam))
        .await
        .approve(approve(&p.id))
        .await
        .expect("sam approves")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    assert_eq!(done.approvals[1].approver, "sso:sam@acme.test");
    assert_eq!(done.approvals[1].groups, ["security", "staff"]);
    assert_eq!(
        registry.tag_digest("acme/app", "production").await,
        Some(digest)
    );
    let entries = history(
        &mut server.client("alice").await,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let by_sam = entries
        .iter()
        .find(|e| e.actor == "sso:sam@acme.test")
        .expect("sam's entry");
    assert_eq!(by_sam.attributes["groups"], "security,staff");
}
