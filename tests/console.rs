//! The approvers' console in a real browser (Debian's chromium through
//! chromedriver, `support::browser`), against a real `prodgate serve` and a
//! real registry: sign-in with a token, what awaits me, a promotion page
//! that updates live when another approver acts over gRPC, Approve with a
//! comment (the audit entry names the signed-in principal), Reject, Cancel,
//! text a user wrote shown as text, and forged POSTs refused; what a
//! promotion changes (both images described from the registry), checks,
//! `/history`, `/deployed` (now and then) and `/policy`.

mod support;

use prodgate::pb::{self, HistoryRequest, PromotionState};
use std::path::Path;
use std::time::Duration;
use support::browser::Browser;
use support::console::{ConsoleSetup, sign_in};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, standard_config};
use support::{approve, entries, get, history, request_to, wait_for_state};

const REVISION: &str = "org.opencontainers.image.revision";
const SOURCE: &str = "org.opencontainers.image.source";
const VERSION: &str = "org.opencontainers.image.version";

/// A reason that would run script if it were not escaped.
const HOSTILE: &str = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\"> ship 1.4";

struct Console {
    server: TestServer,
    registry: TestRegistry,
    base: String,
    /// The config the server started with.
    config: String,
    _setup: ConsoleSetup,
}

impl Console {
    async fn start() -> Console {
        let registry = TestRegistry::start().await;
        let config_of = |setup: &ConsoleSetup| {
            format!(
                "check_reporters = [\"carol\"]\n{}{}",
                standard_config(&registry.host),
                setup.toml("token_login = true\n")
            )
        };
        let (setup, server) = ConsoleSetup::serve(config_of);
        let config = config_of(&setup);
        Console {
            server,
            registry,
            base: setup.base.clone(),
            config,
            _setup: setup,
        }
    }

    fn repo(&self) -> String {
        format!("{}/team/app", self.registry.host)
    }

    async fn client(&self, who: &str) -> Client {
        self.server.client(who).await
    }

    /// A promotion of a new image, through staging, to `env`, by `who`.
    async fn candidate(&self, who: &str, env: &str, seed: u64, reason: &str) -> pb::Promotion {
        self.registry
            .push_image("team/app", Some("staging"), 1024, seed)
            .await;
        let mut c = self.client(who).await;
        c.request_promotion(pb::RequestPromotionRequest {
            reason: reason.into(),
            ..request_to(&self.repo(), "staging", env)
        })
        .await
        .expect("request")
        .into_inner()
    }
}

#[tokio::test]
async fn an_approver_signs_in_sees_what_awaits_and_decides_in_the_browser() {
    let w = Console::start().await;
    let mut alice = w.client("alice").await;
    // prod2 needs two approvals: dave's over gRPC, then bob's in the page.
    let shipped = w.candidate("alice", "prod2", 1, HOSTILE).await;
    let browser = Browser::start().await;
    browser
        .run("console_approver", async |b| {
            // Signed out: the sign-in form; a wrong token is refused.
            b.goto(&format!("{}/", w.base)).await;
            b.fill("input[name=token]", "not-a-token").await;
            b.click("form[action='/login'] button[type=submit]").await;
            b.wait_for_text(".error", "That token is not accepted.")
                .await;
            sign_in(b, &w.base, "bob-token").await;
            let cookie = b
                .cookie("prodgate_session")
                .await
                .expect("a session cookie");
            assert_eq!(cookie.http_only(), Some(true));
            assert_eq!(format!("{:?}", cookie.same_site()), "Some(Lax)");

            // What awaits bob: the promotion, its reason as text.
            b.wait_for(&format!("#awaiting a[href='/promotions/{}']", shipped.id))
                .await;
            let listed = b.text("#awaiting td.reason").await;
            assert_eq!(listed, HOSTILE);
            assert_eq!(b.title().await, "Awaiting · prodgate", "no script ran");
            if let Ok(dir) = std::env::var("PRODGATE_CONSOLE_SCREENSHOTS") {
                b.screenshot(&Path::new(&dir).join("console-awaiting.png"))
                    .await;
            }

            // The promotion's page; dave approves over gRPC meanwhile, and
            // the page shows it without a reload.
            b.click(&format!("#awaiting a[href='/promotions/{}']", shipped.id))
                .await;
            assert_eq!(b.text("#reason").await, HOSTILE);
            assert_eq!(
                b.title().await,
                format!("Promotion {} · prodgate", shipped.id)
            );
            b.wait_for_text("#state", "PENDING_APPROVAL").await;
            w.client("dave")
                .await
                .approve(approve(&shipped.id))
                .await
                .expect("dave approves");
            b.wait_for_text("#approvals li:first-child strong", "dave")
                .await;

            // bob approves with a comment: the second approval ships it.
            b.fill("#comment", "checked the <b>changelog</b>").await;
            b.click("#approve").await;
            wait_for_state(
                &mut alice,
                &shipped.id,
                PromotionState::Promoted,
                Duration::from_secs(30),
            )
            .await;
            b.wait_for_text("#state", "PROMOTED").await;
            b.wait_for_text("#approvals li:last-child q", "checked the <b>changelog</b>")
                .await;
            let approved = entries(&mut alice, &shipped.id, pb::AuditAction::Approved).await;
            let bobs: Vec<_> = approved.iter().filter(|e| e.actor == "bob").collect();
            assert_eq!(bobs.len(), 1, "{approved:?}");
            assert_eq!(bobs[0].comment, "checked the <b>changelog</b>");

            // Reject another one.
            let doomed = w.candidate("alice", "production", 2, "1.5").await;
            b.goto(&format!("{}/promotions/{}", w.base, doomed.id))
                .await;
            b.fill("#comment", "not this week").await;
            b.click("#reject").await;
            b.wait_for_text("#state", "REJECTED").await;
            let p = get(&mut alice, &doomed.id).await;
            assert_eq!(p.state, PromotionState::Rejected as i32);
            let rejected = entries(&mut alice, &doomed.id, pb::AuditAction::Rejected).await;
            assert_eq!(rejected[0].actor, "bob");

            // bob cancels his own request.
            let own = w.candidate("bob", "production", 3, "mine").await;
            b.goto(&format!("{}/promotions/{}", w.base, own.id)).await;
            b.click("#cancel").await;
            b.wait_for_text("#state", "CANCELLED").await;

            // Log out: back to the sign-in form, the session gone.
            b.click("form.logout button").await;
            b.wait_for("input[name=token]").await;
            assert!(b.cookie("prodgate_session").await.is_none());
        })
        .await;
}

#[tokio::test]
async fn forged_posts_are_refused_and_record_nothing() {
    let w = Console::start().await;
    let mut alice = w.client("alice").await;
    let p = w.candidate("alice", "production", 1, "1.4").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // Sign in as bob without a browser: the session cookie and the CSRF
    // token of the page's form.
    let signed = http
        .post(format!("{}/login", w.base))
        .header("origin", &w.base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=bob-token")
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed.status(), 303);
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = http
        .get(format!("{}/promotions/{}", w.base, p.id))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a csrf field")
        .to_owned();
    let before = history(&mut alice, HistoryRequest::default()).await.len();
    let post = |origin: &'static str, body: String| {
        let (http, cookie, url) = (
            http.clone(),
            cookie.clone(),
            format!("{}/promotions/{}/approve", w.base, p.id),
        );
        let origin = if origin.is_empty() {
            w.base.clone()
        } else {
            origin.to_owned()
        };
        async move {
            http.post(url)
                .header("origin", origin)
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .expect("post")
                .status()
        }
    };
    // From another site, with the right token: refused.
    assert_eq!(
        post("http://evil.example", format!("csrf={csrf}")).await,
        403
    );
    // From here, without the token, or with another: refused.
    assert_eq!(post("", "comment=x".into()).await, 403);
    assert_eq!(post("", format!("csrf={}", "0".repeat(64))).await, 403);
    assert_eq!(
        history(&mut alice, HistoryRequest::default()).await.len(),
        before
    );
    assert_eq!(
        get(&mut alice, &p.id).await.state,
        PromotionState::PendingApproval as i32
    );
    // The same form, properly sent: recorded.
    assert_eq!(post("", format!("csrf={csrf}&comment=ok")).await, 303);
    wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test]
async fn a_promotion_shows_what_changes_and_the_log_deployed_and_policy_pages_read() {
    let w = Console::start().await;
    let mut alice = w.client("alice").await;
    let labeled = |seed: u64, revision: &'static str, version: &'static str| {
        let registry = &w.registry;
        async move {
            registry
                .push_labeled_image(
                    "team/app",
                    Some("staging"),
                    2048,
                    seed,
                    &[
                        (REVISION, revision),
                        (SOURCE, "https://github.com/acme/app"),
                        (VERSION, version),
                    ],
                )
                .await
        }
    };
    let request = async |c: &mut Client, env: &str, reason: &str| {
        c.request_promotion(pb::RequestPromotionRequest {
            reason: reason.into(),
            ..request_to(&w.repo(), "staging", env)
        })
        .await
        .expect("request")
        .into_inner()
    };
    // 1.4.0 runs in production (bob approved it over gRPC)...
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let before_any = prodgate::domain::model::Time::from_system(an_hour_ago)
        .rfc3339(prodgate::domain::model::Precision::Seconds);
    let running = labeled(1, "0a1b2c3d", "1.4.0").await;
    let first = request(&mut alice, "production", "1.4.0").await;
    w.client("bob")
        .await
        .approve(approve(&first.id))
        .await
        .expect("bob approves");
    wait_for_state(
        &mut alice,
        &first.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    // ... and 1.5.0 waits to replace it; a CI check reported on it.
    let candidate = labeled(2, "4e5f6a7b", "1.5.0").await;
    let second = request(&mut alice, "production", "1.5.0: faster checkout").await;
    w.client("carol")
        .await
        .report_check(pb::ReportCheckRequest {
            repository: w.repo(),
            digest: candidate.clone(),
            check: "unit-tests".into(),
            status: pb::CheckStatus::Passed as i32,
            details_url: "https://ci.example/runs/42".into(),
            comment: String::new(),
        })
        .await
        .expect("a check report");
    // A label holding script, on its way to prod2 (where nothing ran yet).
    let hostile = labeled(3, "deadbeef", HOSTILE).await;
    let third = request(&mut alice, "prod2", "hostile labels").await;

    let browser = Browser::start().await;
    browser
        .run("console_pages", async |b| {
            sign_in(b, &w.base, "bob-token").await;
            b.goto(&format!("{}/promotions/{}", w.base, second.id))
                .await;
            assert_eq!(b.text("#now .digest").await, running);
            assert_eq!(b.text("#candidate .digest").await, candidate);
            assert_eq!(b.text("#now .version").await, "1.4.0");
            assert_eq!(b.text("#candidate .version").await, "1.5.0");
            assert_eq!(b.text("#candidate .created").await, "2026-12-01T10:00:00Z");
            let link = b.wait_for("#candidate .revision a").await;
            assert_eq!(
                link.attr("href").await.expect("href").as_deref(),
                Some("https://github.com/acme/app/commit/4e5f6a7b")
            );
            assert_eq!(
                link.attr("rel").await.expect("rel").as_deref(),
                Some("noopener noreferrer")
            );
            assert_eq!(b.text("#checks td.check").await, "unit-tests");
            assert_eq!(b.text("#checks td.reporter").await, "carol");
            let details = b.wait_for("#checks td.details a").await;
            assert_eq!(
                details.attr("href").await.expect("href").as_deref(),
                Some("https://ci.example/runs/42")
            );
            b.wait_for_text("#history td.checkpoint", "included").await;
            if let Ok(dir) = std::env::var("PRODGATE_CONSOLE_SCREENSHOTS") {
                b.screenshot(&Path::new(&dir).join("console-promotion.png"))
                    .await;
            }

            // A label is text: shown as written, no script run.
            b.goto(&format!("{}/promotions/{}", w.base, third.id)).await;
            assert_eq!(b.text("#now .empty").await, "nothing yet");
            assert_eq!(b.text("#candidate .digest").await, hostile);
            assert_eq!(b.text("#candidate .version").await, HOSTILE);
            assert_eq!(
                b.title().await,
                format!("Promotion {} · prodgate", third.id),
                "no script ran"
            );

            // /history, filtered by environment through its form.
            b.click("header nav a[href='/history']").await;
            b.wait_for("#history-filter").await;
            b.fill("#history-filter input[name=environment]", "prod2")
                .await;
            b.click("#history-filter button[type=submit]").await;
            b.wait_for_text("#entries td.environment", "prod2").await;
            let envs = b
                .client()
                .find_all(fantoccini::Locator::Css("#entries td.environment"))
                .await
                .expect("rows");
            for e in envs {
                assert_eq!(e.text().await.expect("text"), "prod2");
            }
            assert!(
                b.client()
                    .find(fantoccini::Locator::Css(&format!(
                        "#entries a[href='/promotions/{}']",
                        third.id
                    )))
                    .await
                    .is_ok()
            );
            b.fill("#history-filter input[name=environment]", "nowhere")
                .await;
            b.click("#history-filter button[type=submit]").await;
            b.wait_for_text("p.empty", "No entry matches.").await;

            // /deployed now, and before anything ran.
            b.click("header nav a[href='/deployed']").await;
            b.wait_for_text("#deployed td.environment", "production")
                .await;
            assert_eq!(b.text("#deployed td.repository").await, w.repo());
            assert_eq!(b.text("#deployed td.digest").await, running);
            assert_eq!(b.text("#deployed .drift").await, "none");
            b.goto(&format!("{}/deployed?at={before_any}", w.base))
                .await;
            b.wait_for_text("h1", &format!("What ran at {before_any}"))
                .await;
            assert_eq!(b.text("#deployed td.empty").await, "nothing then");

            // /policy: the running policy, by section.
            b.click("header nav a[href='/policy']").await;
            b.wait_for_text("h1", "Policy in force").await;
            assert!(b.text("#policy-digest").await.starts_with("sha256:"));
            let sections = b.text("#policy-sections").await;
            assert!(sections.contains("environment production"), "{sections}");
            assert!(sections.contains("required_approvals: 2"), "{sections}");
            assert_eq!(
                b.text("#policy-diff p.empty").await,
                "No earlier version is recorded."
            );
        })
        .await;

    // A reload adds an environment: /policy shows it as the change from
    // the version before.
    let old = alice
        .get_policy(pb::GetPolicyRequest::default())
        .await
        .expect("policy")
        .into_inner()
        .digest;
    w.server.write_config(&format!(
        "{}\n[[environment]]\nname = \"canary\"\ntag = \"canary\"\nrequired_approvals = 0\n",
        w.config
    ));
    w.server.hangup();
    // The reload runs in the server process: poll until it took effect.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alice
        .get_policy(pb::GetPolicyRequest::default())
        .await
        .expect("policy")
        .into_inner()
        .digest
        == old
    {
        assert!(std::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser
        .run("console_policy_diff", async |b| {
            b.goto(&format!("{}/policy", w.base)).await;
            b.wait_for_text("#policy-diff td", "environment canary")
                .await;
            assert_eq!(
                b.text("#policy-diff td:nth-child(2)").await,
                "(whole section)"
            );
            assert!(b.text("#policy-diff p").await.contains(&old));
        })
        .await;

    // Every page needs a session.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for path in [
        "/history",
        "/deployed",
        "/deployed?at=2026-01-01T00:00:00Z",
        "/policy",
    ] {
        let r = http
            .get(format!("{}{path}", w.base))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()["location"], "/login", "{path}");
    }
}
