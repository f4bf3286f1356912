//! Slack approvals end to end, against a fake Slack of the tests' own
//! (tests/support/slack.rs) and the real registry.
//!
//! - Posting: a real `prodgate serve` posts an approval request with both
//!   buttons, then updates that message when the promotion is approved
//!   through gRPC and again when its tag moves; a 429 is retried after its
//!   `Retry-After`; no secret reaches the server's log.
//! - Interactions: the handler runs in this process, in an axum router over
//!   the real use cases (sled in a temp dir, the real registry), driven
//!   with requests signed as Slack signs them; their answers are awaited
//!   with `SlackInteractions::settled`, not by sleeping. One test clicks
//!   through a real server's console listener.

mod support;

use hmac::{Hmac, Mac};
use prodgate::config::{Config, Live};
use prodgate::domain::names::{Repository, Source};
use prodgate::domain::policy::Principal;
use prodgate::notify::slack::interactions::{PATH, SlackInteractions};
use prodgate::pb::{PromotionState, ReleaseComponent, RequestReleaseRequest};
use prodgate::promotions::{HistoryFilter, HistoryQuery, Promotions, RequestInput};
use prodgate::registry::oci::{OciRegistry, RegistryHost};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::registry::TestRegistry;
use support::server::{TestServer, registry_toml, standard_config};
use support::slack::{CHANNEL_ID, Call, FakeSlack};
use support::{approve, request_to, wait_for_state};

const BOT_TOKEN: &str = "xoxb-0000-s3cr3t-bot-token";
const SIGNING_SECRET: &str = "s3cr3t-signing-secret-0123456789";

/// A `[[notify]] kind = "slack"` section for `slack`, its secret files
/// written under `dir`.
fn slack_toml(dir: &Path, slack: &FakeSlack) -> String {
    let token = dir.join("bot.token");
    let signing = dir.join("signing.secret");
    std::fs::write(&token, format!("{BOT_TOKEN}\n")).unwrap();
    std::fs::write(&signing, format!("{SIGNING_SECRET}\n")).unwrap();
    format!(
        "\n[[notify]]\nkind = \"slack\"\nchannel = \"#releases\"\nbot_token_file = {:?}\n\
         signing_secret_file = {:?}\napi_url = {:?}\nhooks_url = {:?}\n",
        token.display().to_string(),
        signing.display().to_string(),
        slack.api_url(),
        slack.hooks_url(),
    )
}

/// The buttons of a message: (action_id, value).
fn buttons(body: &Value) -> Vec<(String, String)> {
    body["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["action_id"].as_str().unwrap_or("").to_owned(),
                e["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Every call once the fake Slack has had a `chat.update` saying
/// *Promoted*.
async fn promoted_update(slack: &FakeSlack) -> Vec<Call> {
    slack
        .wait_for(
            "chat.update saying Promoted",
            Duration::from_secs(20),
            |c| {
                named(c, "chat.update")
                    .iter()
                    .any(|u| u.body["blocks"].to_string().contains("*Promoted*"))
            },
        )
        .await
}

fn named<'c>(calls: &'c [Call], what: &str) -> Vec<&'c Call> {
    calls.iter().filter(|c| c.what == what).collect()
}

#[tokio::test]
async fn a_request_is_posted_with_both_buttons_and_updated_as_it_moves_on() {
    let registry = TestRegistry::start().await;
    let slack = FakeSlack::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!(
        "{}{}",
        standard_config(&registry.host),
        slack_toml(secrets.path(), &slack)
    ));
    let mut alice = server.client("alice").await;
    let repo = format!("{}/team/app", registry.host);
    registry.push_image("team/app", Some("dev"), 1024, 1).await;
    // staging needs no approval: no message.
    let staged = alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging")
        .into_inner();
    wait_for_state(
        &mut alice,
        &staged.id,
        PromotionState::Promoted,
        Duration::from_secs(10),
    )
    .await;

    // The first post is rate limited; prodgate waits its Retry-After.
    slack.rate_limit(1);
    let mut request = request_to(&repo, "staging", "production");
    request.reason = "hotfix <!channel> & <b>friends</b>".into();
    let p = alice
        .request_promotion(request)
        .await
        .expect("request production")
        .into_inner();
    let calls = slack
        .wait_for("chat.postMessage", Duration::from_secs(20), |c| {
            !named(c, "chat.postMessage").is_empty()
        })
        .await;
    assert_eq!(calls[0].what, "429 chat.postMessage", "{calls:#?}");
    let posts = named(&calls, "chat.postMessage");
    assert_eq!(posts.len(), 1, "only the request that needs approval");
    let post = posts[0];
    assert_eq!(
        post.authorization.as_deref(),
        Some(format!("Bearer {BOT_TOKEN}").as_str())
    );
    assert_eq!(post.body["channel"], "#releases");
    assert_eq!(
        buttons(&post.body),
        [
            ("approve".to_owned(), p.id.clone()),
            ("reject".to_owned(), p.id.clone())
        ]
    );
    let text = post.body["blocks"].to_string();
    for shown in [
        repo.as_str(),
        "production",
        p.digest.as_str(),
        "alice",
        "hotfix &lt;!channel&gt; &amp; &lt;b&gt;friends&lt;/b&gt;",
    ] {
        assert!(text.contains(shown), "{shown:?} not in {text}");
    }
    assert!(!text.contains("<!channel>"), "{text}");

    // Approved through gRPC: the message says so, then says it shipped.
    server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("bob approves");
    let calls = promoted_update(&slack).await;
    let updates = named(&calls, "chat.update");
    assert!(updates.len() >= 2, "{updates:#?}");
    let ts = &post.answered["ts"];
    assert!(ts.is_string(), "{post:?}");
    for u in &updates {
        assert_eq!(u.body["channel"], CHANNEL_ID, "the id the post returned");
        assert_eq!(&u.body["ts"], ts);
        assert_eq!(
            u.authorization.as_deref(),
            Some(format!("Bearer {BOT_TOKEN}").as_str())
        );
    }
    let first = updates[0].body["blocks"].to_string();
    assert!(first.contains("*Approved* by bob"), "{first}");
    let last = updates.last().unwrap();
    assert!(last.body["blocks"].to_string().contains("approved by bob"));
    assert!(buttons(&last.body).is_empty(), "no buttons once promoted");

    let log = server.log();
    assert!(!log.contains(BOT_TOKEN) && !log.contains("s3cr3t"), "{log}");
}

#[tokio::test]
async fn a_slack_that_keeps_refusing_never_holds_a_promotion_back() {
    let registry = TestRegistry::start().await;
    let slack = FakeSlack::start().await;
    // Every Web API call is rate limited: the notifier waits and retries.
    slack.rate_limit(u32::MAX);
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!(
        "{}{}",
        standard_config(&registry.host),
        slack_toml(secrets.path(), &slack)
    ));
    let mut alice = server.client("alice").await;
    let repo = format!("{}/team/app", registry.host);
    registry.push_image("team/app", Some("dev"), 1024, 2).await;
    let staged = alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging")
        .into_inner();
    wait_for_state(
        &mut alice,
        &staged.id,
        PromotionState::Promoted,
        Duration::from_secs(10),
    )
    .await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request production")
        .into_inner();
    server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("bob approves");
    wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(10),
    )
    .await;
    let calls = slack.calls();
    assert!(
        calls.iter().all(|c| c.what == "429 chat.postMessage"),
        "{calls:#?}"
    );
    assert!(!server.log().contains(BOT_TOKEN));
}

/// The use cases and the interactions handler in this process, served on a
/// free port, with the fake Slack as `hooks_url`.
struct Console {
    promotions: Promotions,
    interactions: SlackInteractions,
    url: String,
    repo: String,
    _dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

/// alice requests; bob (a release manager) approves as `slack:U0BOB`;
/// mallory (`slack:U0MALLORY`) is no approver of production.
fn interactions_config(host: &str, dir: &Path, slack: &FakeSlack) -> String {
    let hash = |name: &str| hex::encode(Sha256::digest(format!("{name}-token").as_bytes()));
    format!(
        "apply_wait = \"0s\"\n{}\
         [[principal]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\ngroups = [\"developers\"]\n\
         [[principal]]\nname = \"bob\"\ntoken_sha256 = \"{}\"\ngroups = [\"release-managers\"]\n\
         aliases = [\"slack:U0BOB\"]\n\
         [[principal]]\nname = \"mallory\"\ntoken_sha256 = \"{}\"\naliases = [\"slack:U0MALLORY\"]\n\
         [[environment]]\nname = \"production\"\ntag = \"production\"\n\
         approvers = [\"group:release-managers\"]\nrequired_approvals = 1\n{}",
        registry_toml(host),
        hash("alice"),
        hash("bob"),
        hash("mallory"),
        slack_toml(dir, slack),
    )
}

impl Console {
    async fn start(registry: &TestRegistry, slack: &FakeSlack) -> Console {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Config::parse(&interactions_config(&registry.host, dir.path(), slack)).expect("config");
        let live = Live::new(config);
        let clock: Arc<dyn prodgate::clock::Clock> = Arc::new(prodgate::clock::SystemClock);
        let store = prodgate::store::sled::open(&dir.path().join("data"), clock.clone())
            .expect("open sled");
        let oci = OciRegistry::new(
            vec![RegistryHost::anonymous(&registry.host, true)],
            Duration::from_secs(5),
            None,
        )
        .expect("registry client");
        let stop = tokio_util::sync::CancellationToken::new();
        let promotions = Promotions::new(
            live.clone(),
            store,
            Arc::new(oci),
            clock,
            prodgate::apply::Progress::default(),
            stop.clone(),
        );
        let interactions = SlackInteractions::new(live, promotions.clone())
            .expect("client")
            .expect("a Slack notifier is configured");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
        let app = interactions.clone().router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Console {
            promotions,
            interactions,
            url,
            repo: format!("{}/team/app", registry.host),
            _dir: dir,
            _stop: stop.drop_guard(),
        }
    }

    async fn request(&self) -> u64 {
        let p = self
            .promotions
            .request(
                Principal::new("alice", vec!["developers".into()]),
                RequestInput {
                    repository: Repository::parse(&self.repo).unwrap(),
                    source: Source::parse("dev").unwrap(),
                    environment: "production".into(),
                    reason: "ship it".into(),
                    request_id: String::new(),
                    break_glass: false,
                    rollback: false,
                },
            )
            .await
            .expect("request");
        p.id
    }

    /// Every audit entry: (action, actor).
    async fn audit(&self) -> Vec<(String, String)> {
        let page = self
            .promotions
            .history(HistoryQuery {
                filter: HistoryFilter::default(),
                after: None,
                limit: 1000,
                newest_first: false,
            })
            .await
            .expect("history");
        page.items
            .iter()
            .map(|e| (format!("{:?}", e.event.action), e.event.actor.clone()))
            .collect()
    }

    /// POSTs `body` with these Slack headers; the status code.
    async fn post(&self, timestamp: i64, signature: &str, body: &str) -> u16 {
        reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", timestamp.to_string())
            .header("x-slack-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .expect("the handler answers")
            .status()
            .as_u16()
    }

    /// POSTs `body` signed as Slack signs it, now.
    async fn signed(&self, body: &str) -> u16 {
        let now = unix_now();
        self.post(now, &slack_signature(SIGNING_SECRET, now, body), body)
            .await
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Slack's v0 signature, computed here rather than by prodgate's code.
fn slack_signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A click on `action` of promotion `id` by Slack user `user`, form-encoded.
fn click(user: &str, action: &str, id: u64, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0TEAM"},
        "team": {"id": "T0TEAM"},
        "container": {"type": "message", "message_ts": "1700000000.000001"},
        "actions": [{
            "type": "button",
            "action_id": action,
            "block_id": "prodgate",
            "value": id.to_string(),
            "action_ts": "1700000001.000001",
        }],
        "response_url": response_url,
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

#[tokio::test]
async fn a_signed_click_approves_as_the_mapped_principal_and_nothing_else_records_anything() {
    let registry = TestRegistry::start().await;
    registry.push_image("team/app", Some("dev"), 1024, 7).await;
    let slack = FakeSlack::start().await;
    let console = Console::start(&registry, &slack).await;
    let id = console.request().await;
    let hook = |n: u32| format!("{}/hooks/actions/T0TEAM/{n}/x", slack.base);
    let before = console.audit().await;

    // A bad signature and an old timestamp: 401, nothing recorded, no answer.
    let approve = click("U0BOB", "approve", id, &hook(1));
    let now = unix_now();
    let forged = slack_signature("not-the-secret", now, &approve);
    assert_eq!(console.post(now, &forged, &approve).await, 401);
    let old = now - 6 * 60;
    let stale = slack_signature(SIGNING_SECRET, old, &approve);
    assert_eq!(console.post(old, &stale, &approve).await, 401);
    let tampered = approve.replace("U0BOB", "U0BOC");
    let signed_other = slack_signature(SIGNING_SECRET, now, &approve);
    assert_eq!(console.post(now, &signed_other, &tampered).await, 401);
    console.interactions.settled().await;
    assert_eq!(console.audit().await, before);
    assert!(slack.calls().is_empty(), "{:#?}", slack.calls());

    // An unmapped user: acknowledged, told so, nothing recorded.
    assert_eq!(
        console
            .signed(&click("U0NOBODY", "approve", id, &hook(2)))
            .await,
        200
    );
    console.interactions.settled().await;
    assert_eq!(console.audit().await, before);
    let answers = slack.calls_to("hooks/actions/T0TEAM/2/");
    assert_eq!(answers.len(), 1, "{:#?}", slack.calls());
    let said = answers[0].body["text"].as_str().unwrap();
    assert!(
        said.contains("not a prodgate principal") && said.contains("slack:U0NOBODY"),
        "{said}"
    );
    assert_eq!(answers[0].body["response_type"], "ephemeral");

    // A mapped user who is no approver: the refusal sentence.
    assert_eq!(
        console
            .signed(&click("U0MALLORY", "approve", id, &hook(3)))
            .await,
        200
    );
    console.interactions.settled().await;
    assert_eq!(console.audit().await, before);
    let said = slack.calls_to("hooks/actions/T0TEAM/3/")[0].body["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        said.starts_with("Nothing recorded: ")
            && said.contains("not a designated approver of environment production"),
        "{said}"
    );

    // bob's click: the approval is recorded under his Slack alias, and the
    // outcome is sent to the response_url.
    assert_eq!(
        console
            .signed(&click("U0BOB", "approve", id, &hook(4)))
            .await,
        200
    );
    console.interactions.settled().await;
    let after = console.audit().await;
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert_eq!(
        after.last().unwrap(),
        &("Approved".to_owned(), "slack:U0BOB".to_owned())
    );
    let p = console.promotions.get(id).await.unwrap();
    assert_eq!(p.approvals[0].approver, "slack:U0BOB");
    assert_eq!(p.approvals[0].groups, ["release-managers"]);
    let said = slack.calls_to("hooks/actions/T0TEAM/4/")[0].body["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        said.starts_with(&format!("You approved promotion {id} (")),
        "{said}"
    );

    // The same signed request again (a replay within its five minutes):
    // answered from the record, no second entry.
    let again = click("U0BOB", "approve", id, &hook(5));
    assert_eq!(console.signed(&again).await, 200);
    console.interactions.settled().await;
    assert_eq!(console.audit().await, after);
    assert!(
        slack.calls_to("hooks/actions/T0TEAM/5/")[0].body["text"]
            .as_str()
            .unwrap()
            .starts_with("You approved"),
    );
    assert_eq!(slack.calls_to("elsewhere").len(), 0);
    assert_eq!(slack.calls_to("other").len(), 0);
}

#[tokio::test]
async fn a_response_url_outside_hooks_url_is_never_called() {
    let registry = TestRegistry::start().await;
    registry.push_image("team/app", Some("dev"), 1024, 8).await;
    let slack = FakeSlack::start().await;
    let console = Console::start(&registry, &slack).await;
    let id = console.request().await;
    let elsewhere = [
        format!("{}/elsewhere/actions/1", slack.base),
        // The hooks path as a prefix of another segment.
        format!("{}/hooksevil/actions/1", slack.base),
        // Another host (the fake's address under another name).
        format!(
            "{}/hooks/actions/1",
            slack.base.replace("127.0.0.1", "localhost")
        ),
    ];
    for url in &elsewhere {
        assert_eq!(
            console
                .signed(&click("U0MALLORY", "approve", id, url))
                .await,
            200
        );
    }
    // A rejection still goes through the use case; its answer goes nowhere.
    assert_eq!(
        console
            .signed(&click("U0BOB", "reject", id, &elsewhere[0]))
            .await,
        200
    );
    console.interactions.settled().await;
    assert!(slack.calls().is_empty(), "{:#?}", slack.calls());
    let p = console.promotions.get(id).await.unwrap();
    assert_eq!(p.state, prodgate::domain::model::State::Rejected);
    assert_eq!(
        console.audit().await.last().unwrap(),
        &("Rejected".to_owned(), "slack:U0BOB".to_owned())
    );
}

/// Through a real `prodgate serve`: the message links to the console, and
/// the console's listener takes Slack's signed clicks (no session or CSRF
/// token: the signature authenticates them).
#[tokio::test]
async fn a_click_on_a_real_server_approves_through_its_console_listener() {
    let registry = TestRegistry::start().await;
    registry.push_image("team/app", Some("dev"), 1024, 9).await;
    let slack = FakeSlack::start().await;
    let (console, server) = support::console::ConsoleSetup::serve(|console| {
        format!(
            "{}{}",
            interactions_config(&registry.host, console.dir.path(), &slack),
            console.toml(""),
        )
    });
    let base = console.base.clone();
    let mut alice = server.client("alice").await;
    let repo = format!("{}/team/app", registry.host);
    let p = alice
        .request_promotion(request_to(&repo, "dev", "production"))
        .await
        .expect("request")
        .into_inner();
    let calls = slack
        .wait_for("chat.postMessage", Duration::from_secs(20), |c| {
            !named(c, "chat.postMessage").is_empty()
        })
        .await;
    let text = named(&calls, "chat.postMessage")[0].body["blocks"].to_string();
    assert!(
        text.contains(&format!("{base}/promotions/{}", p.id)),
        "{text}"
    );
    let url = format!("{base}{PATH}");
    let http = reqwest::Client::new();
    let body = click(
        "U0BOB",
        "approve",
        p.id.parse().unwrap(),
        &format!("{}/hooks/actions/T0TEAM/9/x", slack.base),
    );
    let send = |signature: String, now: i64| {
        http.post(&url)
            .header("x-slack-request-timestamp", now.to_string())
            .header("x-slack-signature", signature)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
    };
    let now = unix_now();
    let refused = send(slack_signature("not-the-secret", now, &body), now)
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);
    let ok = send(slack_signature(SIGNING_SECRET, now, &body), now)
        .await
        .expect("post");
    assert_eq!(ok.status(), 200);
    let done = wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done.approvals[0].approver, "slack:U0BOB");
}

/// A release is one item, in Slack and in webhooks: one message listing
/// every member with buttons on the release's id (a signed click approves
/// every member), rewritten as the whole moves; and one webhook delivery
/// per step of the release (requested, approved, promoted), each naming
/// every member, signed as any delivery.
#[tokio::test]
async fn a_release_is_one_message_and_one_delivery_per_step() {
    const PATHS: [&str; 3] = ["shop/api", "shop/worker", "shop/web"];
    let registry = TestRegistry::start().await;
    let mut digests = Vec::new();
    for (i, path) in PATHS.iter().enumerate() {
        digests.push(
            registry
                .push_image(path, Some("dev"), 512, 30 + i as u64)
                .await,
        );
    }
    let slack = FakeSlack::start().await;
    let mut hook = support::webhook::Receiver::start().await;
    let (console, server) = support::console::ConsoleSetup::serve(|console| {
        let key = console.dir.path().join("hook.secret");
        std::fs::write(&key, "hook-s3cret\n").unwrap();
        format!(
            "{}\n[[notify]]\nurl = {:?}\nevents = [\"requested\", \"approved\", \"promoted\"]\n\
             secret_file = {:?}\n{}",
            interactions_config(&registry.host, console.dir.path(), &slack),
            hook.url,
            key.display().to_string(),
            console.toml(""),
        )
    });
    let base = console.base.clone();
    let mut alice = server.client("alice").await;
    let r = alice
        .request_release(RequestReleaseRequest {
            environment: "production".into(),
            reason: "shop 2.0 <!here>".into(),
            request_id: String::new(),
            components: PATHS
                .iter()
                .map(|p| ReleaseComponent {
                    repository: format!("{}/{p}", registry.host),
                    source: "dev".into(),
                })
                .collect(),
            break_glass: false,
        })
        .await
        .expect("request the release")
        .into_inner();
    let ids: Vec<String> = r.members.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 3);

    // One message, listing every member, its buttons on the release's id.
    let calls = slack
        .wait_for("chat.postMessage", Duration::from_secs(20), |c| {
            !named(c, "chat.postMessage").is_empty()
        })
        .await;
    let posts = named(&calls, "chat.postMessage");
    let post = posts[0].clone();
    assert_eq!(
        buttons(&post.body),
        [
            ("approve".to_owned(), r.id.clone()),
            ("reject".to_owned(), r.id.clone())
        ]
    );
    let text = post.body["blocks"].to_string();
    for (path, digest) in PATHS.iter().zip(&digests) {
        assert!(
            text.contains(&format!("{}/{path}", registry.host)),
            "{text}"
        );
        // The short digest: the algorithm and 12 hex digits.
        assert!(text.contains(&format!("`{}`", &digest[..19])), "{text}");
    }
    assert!(
        text.contains(&format!("{base}/releases/{}", r.id)),
        "{text}"
    );
    assert!(text.contains("alice") && text.contains("shop 2.0 &lt;!here&gt;"));

    // bob's signed click on the release's Approve approves every member,
    // and the tags move.
    let body = click(
        "U0BOB",
        "approve",
        r.id.parse().unwrap(),
        &format!("{}/hooks/actions/T0TEAM/1/x", slack.base),
    );
    let now = unix_now();
    let answer = reqwest::Client::new()
        .post(format!("{base}{PATH}"))
        .header("x-slack-request-timestamp", now.to_string())
        .header(
            "x-slack-signature",
            slack_signature(SIGNING_SECRET, now, &body),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("post the click");
    assert_eq!(answer.status(), 200);
    for id in &ids {
        let m = wait_for_state(
            &mut alice,
            id,
            PromotionState::Promoted,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(m.approvals[0].approver, "slack:U0BOB");
    }
    let calls = promoted_update(&slack).await;
    assert_eq!(named(&calls, "chat.postMessage").len(), 1, "{calls:#?}");
    let updates = named(&calls, "chat.update");
    for u in &updates {
        assert_eq!(
            u.body["ts"], post.answered["ts"],
            "the release's one message"
        );
    }
    let approved = updates[0].body["blocks"].to_string();
    assert!(approved.contains("*Approved* by <@U0BOB>"), "{approved}");
    let last = updates.last().unwrap();
    let shipped = last.body["blocks"].to_string();
    assert!(shipped.contains("all 3 tags moved"), "{shipped}");
    assert_eq!(shipped.matches("PROMOTED").count(), 3, "{shipped}");
    assert!(buttons(&last.body).is_empty(), "no buttons once promoted");
    let said = slack.calls_to("hooks/actions/T0TEAM/1/")[0].body["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        said.starts_with(&format!("You approved release {}", r.id)),
        "{said}"
    );

    // The webhook: one delivery per step, in order, each the first
    // member's with every member's entry; deliveries of one receiver come
    // in commit order, so a delivery per member would have come first.
    let mut steps = Vec::new();
    for _ in 0..3 {
        let d = hook.next(Duration::from_secs(20)).await;
        assert!(d.signed_with(b"hook-s3cret"), "{:?} {}", d.headers, d.body);
        let n = d.json();
        assert_eq!(d.header("x-prodgate-event"), n["event"].as_str().unwrap());
        assert_eq!(n["release_id"], r.id.as_str());
        assert_eq!(n["promotion_id"], r.id.as_str());
        let members = n["members"].as_array().expect("members").clone();
        let listed: Vec<&str> = members
            .iter()
            .map(|m| m["promotion_id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
        for (m, digest) in members.iter().zip(&digests) {
            assert_eq!(m["digest"], digest.as_str());
            assert_eq!(m["target_tag"], "production");
        }
        steps.push((
            n["event"].as_str().unwrap().to_owned(),
            members
                .iter()
                .map(|m| m["state"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>(),
        ));
    }
    let all = |s: &str| vec![s.to_owned(); 3];
    assert_eq!(
        steps,
        [
            ("requested".to_owned(), all("PENDING_APPROVAL")),
            ("approved".to_owned(), all("APPROVED")),
            ("promoted".to_owned(), all("PROMOTED")),
        ]
    );
    assert!(!server.log().contains("hook-s3cret"));
}
