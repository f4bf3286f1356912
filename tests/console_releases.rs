//! A release on the approvers' console, in a real browser (Debian's
//! chromium through chromedriver, `support::browser`) against a real
//! `prodgate serve` and a real registry: `/` lists the release as one row,
//! its page shows every member with what it changes, a member's page says
//! its buttons decide the whole release, and one Approve in the browser
//! moves every tag while another tab on the page follows live; Reject
//! and the requester's Cancel there end every member.

mod support;

use prodgate::pb::{self, PromotionState, ReleaseComponent, RequestReleaseRequest};
use std::path::Path;
use std::time::Duration;
use support::browser::Browser;
use support::console::{ConsoleSetup, sign_in};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, standard_config};
use support::{approve, entries, wait_for_state};

const PATHS: [&str; 3] = ["shop/api", "shop/worker", "shop/web"];
const LIMIT: Duration = Duration::from_secs(30);

/// A reason that would run script if it were not escaped.
const HOSTILE: &str = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\"> shop 2.1";

/// The three repositories' `staging` tags, pointed at new images of
/// `version` (a label, as CI would write it; `seed` makes them differ).
async fn push_all(registry: &TestRegistry, seed: u64, version: &str) -> Vec<String> {
    let mut digests = Vec::new();
    for (i, path) in PATHS.iter().enumerate() {
        let labels = [
            ("org.opencontainers.image.version", version),
            (
                "org.opencontainers.image.source",
                "https://github.com/acme/shop",
            ),
        ];
        digests.push(
            registry
                .push_labeled_image(path, Some("staging"), 2048, seed + i as u64, &labels)
                .await,
        );
    }
    digests
}

/// alice's RequestRelease of what the three `staging` tags carry, to production.
async fn request(alice: &mut Client, host: &str, reason: &str) -> pb::Release {
    alice
        .request_release(RequestReleaseRequest {
            environment: "production".into(),
            reason: reason.into(),
            request_id: String::new(),
            components: PATHS
                .iter()
                .map(|p| ReleaseComponent {
                    repository: format!("{host}/{p}"),
                    source: "staging".into(),
                })
                .collect(),
            break_glass: false,
        })
        .await
        .expect("request release")
        .into_inner()
}

/// Waits until every member of `r` is PROMOTED.
async fn promoted(c: &mut Client, r: &pb::Release) {
    for m in &r.members {
        wait_for_state(c, &m.id, PromotionState::Promoted, LIMIT).await;
    }
}

/// A registry, and a server with the console (token sign-in) on it.
async fn start() -> (TestRegistry, ConsoleSetup, TestServer) {
    let registry = TestRegistry::start().await;
    let (setup, server) = ConsoleSetup::serve(|setup| {
        format!(
            "{}{}",
            standard_config(&registry.host),
            setup.toml("token_login = true\n")
        )
    });
    (registry, setup, server)
}

/// How many elements match `css` now.
async fn count(b: &Browser, css: &str) -> usize {
    b.client()
        .find_all(fantoccini::Locator::Css(css))
        .await
        .expect("find")
        .len()
}

// Multi-threaded: the test blocks in the server's drop while clients close.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_release_is_one_row_one_page_and_one_approval_in_the_browser() {
    let (registry, setup, server) = start().await;
    let base = setup.base.clone();
    let mut alice = server.client("alice").await;
    // Shop 2.0 runs in production (bob approved it over gRPC) ...
    let running = push_all(&registry, 10, "2.0.0").await;
    let first = request(&mut alice, &registry.host, "shop 2.0").await;
    let mut bob = server.client("bob").await;
    bob.approve(approve(&first.id)).await.expect("bob approves");
    promoted(&mut alice, &first).await;
    // ... and 2.1 waits to replace it, as one release of three images.
    let candidates = push_all(&registry, 20, "2.1.0").await;
    let r = request(&mut alice, &registry.host, HOSTILE).await;
    let members: Vec<&str> = r.members.iter().map(|m| m.id.as_str()).collect();

    let browser = Browser::start().await;
    browser
        .run("console_release", async |b| {
            sign_in(b, &base, "bob-token").await;
            // One row for the release, none for its members; both
            // releases are one row each among the latest.
            b.wait_for(&format!("#awaiting a[href='/releases/{}']", r.id))
                .await;
            assert_eq!(count(b, "#awaiting tbody tr").await, 1);
            assert_eq!(count(b, "#awaiting a[href^='/promotions/']").await, 0);
            assert_eq!(b.text("#awaiting td.images").await, "3 images");
            assert_eq!(b.text("#awaiting td.reason").await, HOSTILE);
            assert_eq!(count(b, "#latest tbody tr.release").await, 2);
            assert_eq!(count(b, "#latest a[href^='/promotions/']").await, 0);

            // A member's page sends the reader to its release.
            b.goto(&format!("{base}/promotions/{}", members[1])).await;
            let link = b.wait_for("#member-of a").await;
            assert_eq!(
                link.attr("href").await.expect("href").as_deref(),
                Some(format!("/releases/{}", r.id).as_str())
            );
            assert_eq!(
                b.text("#decides-release").await,
                format!(
                    "These buttons decide all 3 images of release {} together.",
                    r.id
                )
            );
            // A member other than the first names no release.
            b.goto(&format!("{base}/releases/{}", members[1])).await;
            b.wait_for_text("h1", "Not found").await;

            b.goto(&format!("{base}/")).await;
            b.click(&format!("#awaiting a[href='/releases/{}']", r.id))
                .await;
            b.wait_for_text("#state", "PENDING_APPROVAL").await;
            assert_eq!(b.title().await, format!("Release {} · prodgate", r.id));
            assert_eq!(b.text("#reason").await, HOSTILE, "shown as text");
            assert_eq!(b.text("#requested-by").await, "alice");
            // Every member in order: its page, its digest, what it changes.
            assert_eq!(count(b, "#members > li.member").await, 3);
            for (i, m) in r.members.iter().enumerate() {
                let at = format!("#member-{}", m.id);
                assert_eq!(
                    b.text(&format!("#members > li:nth-child({}) .repository", i + 1))
                        .await,
                    format!("{}/{}", registry.host, PATHS[i])
                );
                let digest = b.wait_for(&format!("{at} > dl.facts dd.digest")).await;
                assert_eq!(
                    digest.attr("title").await.expect("title").as_deref(),
                    Some(candidates[i].as_str())
                );
                let page = b.wait_for(&format!("{at} a.promotion")).await;
                assert_eq!(
                    page.attr("href").await.expect("href").as_deref(),
                    Some(format!("/promotions/{}", m.id).as_str())
                );
                assert_eq!(b.text(&format!("{at} .now .digest")).await, running[i]);
                assert_eq!(
                    b.text(&format!("{at} .candidate .digest")).await,
                    candidates[i]
                );
                assert_eq!(b.text(&format!("{at} .now .version")).await, "2.0.0");
                assert_eq!(b.text(&format!("{at} .candidate .version")).await, "2.1.0");
            }
            if let Ok(dir) = std::env::var("PRODGATE_CONSOLE_SCREENSHOTS") {
                // The members, where what each changes shows.
                b.client()
                    .execute(
                        "document.getElementById('members').scrollIntoView()",
                        vec![],
                    )
                    .await
                    .expect("scroll");
                b.screenshot(&Path::new(&dir).join("console-release.png"))
                    .await;
            }

            // A post from another site, without the form's token, or to a
            // member that is not the release's first decides nothing.
            let session = b.cookie("prodgate_session").await.expect("a session");
            let csrf = b
                .wait_for("input[name=csrf]")
                .await
                .attr("value")
                .await
                .expect("value")
                .expect("a CSRF token");
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client");
            let post = async |id: &str, origin: &str, body: String| {
                http.post(format!("{base}/releases/{id}/approve"))
                    .header("origin", origin)
                    .header("cookie", format!("prodgate_session={}", session.value()))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .expect("post")
                    .status()
            };
            let forged = post(&r.id, "http://evil.example", format!("csrf={csrf}")).await;
            assert_eq!(forged, 403);
            assert_eq!(post(&r.id, &base, "comment=x".into()).await, 403);
            assert_eq!(post(members[1], &base, format!("csrf={csrf}")).await, 404);

            // This tab stays on the page, marked; bob approves in another.
            let watching = b.client().window().await.expect("window");
            b.client()
                .execute("document.body.dataset.kept = 'yes'", vec![])
                .await
                .expect("mark the page");
            let other = b.client().new_window(true).await.expect("a new tab");
            b.client()
                .switch_to_window(other.handle)
                .await
                .expect("switch");
            b.goto(&format!("{base}/releases/{}", r.id)).await;
            b.fill("#comment", "shop 2.1 <b>lgtm</b>").await;
            b.click("#approve").await;
            b.wait_for_text("#state", "PROMOTED").await;
            b.client().close_window().await.expect("close the tab");
            b.client()
                .switch_to_window(watching)
                .await
                .expect("switch back");
            b.wait_for_text("#state", "PROMOTED").await;
            b.wait_for_text("#approvals li q", "shop 2.1 <b>lgtm</b>")
                .await;
            let kept = b
                .client()
                .execute("return document.body.dataset.kept", vec![])
                .await
                .expect("read the mark");
            assert_eq!(kept, "yes", "updated in place, not reloaded");
            assert_eq!(count(b, "#decide").await, 0, "nothing left to decide");
            assert_eq!(b.title().await, format!("Release {} · prodgate", r.id));
        })
        .await;

    // Every tag moved; each member's approval is bob's, naming the release.
    promoted(&mut alice, &r).await;
    for (i, m) in r.members.iter().enumerate() {
        assert_eq!(
            registry.tag_digest(PATHS[i], "production").await.as_deref(),
            Some(candidates[i].as_str())
        );
        let approved = entries(&mut alice, &m.id, pb::AuditAction::Approved).await;
        assert_eq!(approved.len(), 1, "{approved:?}");
        assert_eq!(approved[0].actor, "bob");
        assert_eq!(approved[0].comment, "shop 2.1 <b>lgtm</b>");
        assert_eq!(approved[0].attributes["release"], r.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn reject_and_the_requesters_cancel_on_a_release_page_end_every_member() {
    let (registry, setup, server) = start().await;
    let base = setup.base.clone();
    let mut alice = server.client("alice").await;
    push_all(&registry, 10, "2.0.0").await;
    let doomed = request(&mut alice, &registry.host, "shop 2.0").await;
    let withdrawn = request(&mut alice, &registry.host, "shop 2.0, again").await;
    // A promotion of its own is no release.
    let single = alice
        .request_promotion(pb::RequestPromotionRequest {
            reason: "api alone".into(),
            ..support::request_to(
                &format!("{}/{}", registry.host, PATHS[0]),
                "staging",
                "prod2",
            )
        })
        .await
        .expect("request")
        .into_inner();

    let browser = Browser::start().await;
    browser
        .run("console_release_reject_cancel", async |b| {
            sign_in(b, &base, "bob-token").await;
            b.goto(&format!("{base}/releases/{}", single.id)).await;
            b.wait_for_text("h1", "Not found").await;

            b.goto(&format!("{base}/releases/{}", doomed.id)).await;
            b.fill("#comment", "not this week").await;
            b.click("#reject").await;
            b.wait_for_text("#state", "REJECTED").await;
            for m in &doomed.members {
                b.wait_for_text(&format!("#member-{} dd.member-state", m.id), "REJECTED")
                    .await;
            }

            // alice may not approve: only her Cancel is offered.
            b.click("form.logout button").await;
            sign_in(b, &base, "alice-token").await;
            b.goto(&format!("{base}/releases/{}", withdrawn.id)).await;
            b.wait_for("#cancel").await;
            assert_eq!(count(b, "#approve").await, 0);
            b.click("#cancel").await;
            b.wait_for_text("#state", "CANCELLED").await;
        })
        .await;

    for (release, action, state, actor) in [
        (
            &doomed,
            pb::AuditAction::Rejected,
            PromotionState::Rejected,
            "bob",
        ),
        (
            &withdrawn,
            pb::AuditAction::Cancelled,
            PromotionState::Cancelled,
            "alice",
        ),
    ] {
        for m in &release.members {
            let p = support::get(&mut alice, &m.id).await;
            assert_eq!(p.state, state as i32, "{p:?}");
            let ended = entries(&mut alice, &m.id, action).await;
            assert_eq!(ended.len(), 1, "{ended:?}");
            assert_eq!(ended[0].actor, actor);
            assert_eq!(ended[0].attributes["release"], release.id);
        }
    }
}
