//! Releases against a real `prodgate serve` and a real registry: several
//! images requested in one call, one promotion per component created in
//! one write, read back as one release, and approved, rejected or
//! cancelled as one (a member is never decided apart from its release).

mod support;

use prodgate::pb::{
    self, GetReleaseRequest, HistoryRequest, ListPromotionsRequest, PromotionState, RejectRequest,
    ReleaseComponent, RequestReleaseRequest,
};
use std::time::Duration;
use support::proxy::{Fault, FaultProxy};
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{approve, history, wait_for_state};
use tonic::Code;
use tonic_types::StatusExt;

const LIMIT: Duration = Duration::from_secs(30);
const PATHS: [&str; 3] = ["shop/api", "shop/worker", "shop/web"];

struct Setup {
    registry: TestRegistry,
    server: TestServer,
    /// Between prodgate and the registry, in the tests that inject faults;
    /// the repositories prodgate knows are then under its host.
    proxy: Option<FaultProxy>,
}

impl Setup {
    /// Three repositories whose `staging` tags carry an image each.
    async fn start() -> (Setup, Vec<String>) {
        Setup::start_with(|c| c).await
    }

    /// As [`Setup::start`], with the config `edit` makes of the standard one.
    async fn start_with(edit: impl FnOnce(String) -> String) -> (Setup, Vec<String>) {
        let registry = TestRegistry::start().await;
        let server = TestServer::start(&edit(standard_config(&registry.host)));
        let mut digests = Vec::new();
        for (i, path) in PATHS.iter().enumerate() {
            digests.push(
                registry
                    .push_image(path, Some("staging"), 512, 10 + i as u64)
                    .await,
            );
        }
        let proxy = None;
        (
            Setup {
                registry,
                server,
                proxy,
            },
            digests,
        )
    }

    /// As [`Setup::start`], with prodgate reaching the registry through a
    /// fault proxy; the `staging` images from `seed` on. Returns the
    /// images `production` carried before when `production_seed` is given
    /// (pushed from that seed on), else nothing for them.
    async fn behind_proxy(
        seed: u64,
        production_seed: Option<u64>,
    ) -> (Setup, Vec<String>, Vec<String>) {
        let registry = TestRegistry::start().await;
        let proxy = FaultProxy::start(&registry.host).await;
        let (mut before, mut digests) = (Vec::new(), Vec::new());
        for (i, path) in PATHS.iter().enumerate() {
            if let Some(p) = production_seed {
                before.push(
                    registry
                        .push_image(path, Some("production"), 512, p + i as u64)
                        .await,
                );
            }
            digests.push(
                registry
                    .push_image(path, Some("staging"), 512, seed + i as u64)
                    .await,
            );
        }
        let server = TestServer::start(&standard_config(&proxy.host));
        let proxy = Some(proxy);
        (
            Setup {
                registry,
                server,
                proxy,
            },
            digests,
            before,
        )
    }

    /// Waits (up to [`LIMIT`]) until `path`'s production tag exists.
    async fn moved(&self, path: &str) {
        let deadline = std::time::Instant::now() + LIMIT;
        while self.registry.tag_digest(path, "production").await.is_none() {
            assert!(std::time::Instant::now() < deadline, "{path} never moved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn proxy(&self) -> &FaultProxy {
        self.proxy.as_ref().expect("a setup behind a proxy")
    }

    /// As [`Setup::start`], where shop/web's production needs an e2e
    /// check (alice reports checks); the others do not.
    async fn with_web_check() -> (Setup, Vec<String>) {
        Setup::start_with(|c| {
            format!(
                "check_reporters = [\"alice\"]\n{c}\n[[project]]\nname = \"web\"\n\
                 repositories = [\"*/shop/web\"]\n[[project.environment]]\nname = \"production\"\n\
                 required_checks = [\"e2e\"]\n"
            )
        })
        .await
    }

    fn repo(&self, path: &str) -> String {
        let host = match &self.proxy {
            Some(p) => &p.host,
            None => &self.registry.host,
        };
        format!("{host}/{path}")
    }

    /// alice's promotion of `path` alone, from staging to production.
    async fn single(&self, path: &str) -> pb::Promotion {
        self.server
            .client("alice")
            .await
            .request_promotion(support::request_to(
                &self.repo(path),
                "staging",
                "production",
            ))
            .await
            .expect("a promotion of its own")
            .into_inner()
    }

    fn request(&self, paths: &[&str], request_id: &str) -> RequestReleaseRequest {
        RequestReleaseRequest {
            environment: "production".into(),
            reason: "shop 2.0: api, worker and web together".into(),
            request_id: request_id.into(),
            components: paths
                .iter()
                .map(|p| ReleaseComponent {
                    repository: self.repo(p),
                    source: "staging".into(),
                })
                .collect(),
            break_glass: false,
        }
    }

    /// The release `req` opens, requested by alice.
    async fn open(&self, req: RequestReleaseRequest) -> pb::Release {
        self.server
            .client("alice")
            .await
            .request_release(req)
            .await
            .expect("request release")
            .into_inner()
    }

    async fn release(&self, id: &str) -> pb::Release {
        self.server
            .client("alice")
            .await
            .get_release(GetReleaseRequest {
                release_id: id.into(),
            })
            .await
            .expect("get release")
            .into_inner()
    }

    /// How many promotions exist.
    async fn count(&self) -> usize {
        self.server
            .client("alice")
            .await
            .list_promotions(ListPromotionsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .promotions
            .len()
    }
}

// Multi-threaded: the test blocks in the server's drop while clients close.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_release_is_requested_in_one_write_and_approved_once() {
    let (s, digests) = Setup::start().await;
    let mut alice = s.server.client("alice").await;
    let r = alice
        .request_release(s.request(&PATHS, "shop-2.0"))
        .await
        .expect("request release")
        .into_inner();
    assert_eq!(r.state, PromotionState::PendingApproval as i32);
    assert_eq!(r.environment, "production");
    assert_eq!(r.requested_by, "alice");
    assert_eq!(r.members.len(), 3);
    // One member per component, in order, each pinned to what staging
    // carried, each naming the release (its first member's id).
    for (i, m) in r.members.iter().enumerate() {
        assert_eq!(m.repository, s.repo(PATHS[i]));
        assert_eq!(m.digest, digests[i]);
        assert_eq!(m.release_id, r.id);
        assert_eq!(m.state, PromotionState::PendingApproval as i32);
    }
    assert_eq!(r.members[0].id, r.id);
    assert_eq!(r.members[0].request_id, "shop-2.0");
    // Their REQUESTED entries name the release.
    for m in &r.members {
        let entries = support::promotion_history(&mut alice, &m.id).await;
        assert_eq!(entries[0].attributes["release"], r.id, "{entries:?}");
    }
    assert_eq!(s.release(&r.id).await, r, "GetRelease answers the same");

    // A retry with the same key returns the release; nothing new is opened.
    let again = alice
        .request_release(s.request(&PATHS, "shop-2.0"))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.id, r.id);
    assert_eq!(s.count().await, 3);

    // A watch of the release sees it now, then each change, to its end.
    let mut watch = alice
        .watch_release(pb::WatchReleaseRequest {
            release_id: r.id.clone(),
        })
        .await
        .expect("watch release")
        .into_inner();
    let now = watch.message().await.expect("first").expect("the release");
    assert_eq!(now.state, PromotionState::PendingApproval as i32);

    // Approving any member approves the release: every tag moves.
    let mut bob = s.server.client("bob").await;
    bob.approve(approve(&r.members[1].id))
        .await
        .expect("approve a member");
    for (i, m) in r.members.iter().enumerate() {
        let p = wait_for_state(&mut bob, &m.id, PromotionState::Promoted, LIMIT).await;
        assert_eq!(p.approvals.len(), 1, "{p:?}");
        assert_eq!(p.approvals[0].approver, "bob");
        assert_eq!(
            s.registry
                .tag_digest(PATHS[i], "production")
                .await
                .as_deref(),
            Some(digests[i].as_str())
        );
    }
    let done = s.release(&r.id).await;
    assert_eq!(done.state, PromotionState::Promoted as i32);
    let mut last = now;
    while let Some(next) = watch.message().await.expect("a change") {
        last = next;
    }
    assert_eq!(last, done, "the watch ends with the release as it ended");
    // Listed, by environment and by the state of the whole; GetDeployed
    // names the release.
    let listed = alice
        .list_releases(pb::ListReleasesRequest {
            environment: "production".into(),
            state: PromotionState::Promoted as i32,
            ..Default::default()
        })
        .await
        .expect("list releases")
        .into_inner();
    assert_eq!(listed.releases, vec![done.clone()]);
    assert!(listed.next_page_token.is_empty());
    let none = alice
        .list_releases(pb::ListReleasesRequest {
            environment: "staging".into(),
            ..Default::default()
        })
        .await
        .expect("list releases")
        .into_inner();
    assert!(none.releases.is_empty());
    let deployed = alice
        .get_deployed(pb::GetDeployedRequest {
            repository: s.repo("shop/web"),
            environment: "production".into(),
            at: None,
        })
        .await
        .expect("deployed")
        .into_inner();
    assert_eq!(deployed.release_id, r.id);
    // The tags moved in the order given.
    let applied: Vec<String> = history(&mut bob, HistoryRequest::default())
        .await
        .into_iter()
        .filter(|e| e.action == pb::AuditAction::Applied as i32)
        .map(|e| e.promotion_id)
        .collect();
    let ids: Vec<String> = r.members.iter().map(|m| m.id.clone()).collect();
    assert_eq!(applied, ids);
    assert_eq!(done.approvals.len(), 1);
    // The approvals are recorded once per member, in the same commit, each
    // naming the release.
    let approved: Vec<pb::AuditEntry> = history(&mut bob, HistoryRequest::default())
        .await
        .into_iter()
        .filter(|e| e.action == pb::AuditAction::Approved as i32)
        .collect();
    assert_eq!(approved.len(), 3, "{approved:?}");
    assert!(approved.iter().all(|e| e.attributes["release"] == r.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn rejecting_a_member_rejects_the_release() {
    let (s, _) = Setup::start().await;
    let r = s
        .server
        .client("alice")
        .await
        .request_release(s.request(&PATHS[..2], ""))
        .await
        .expect("request release")
        .into_inner();
    s.server
        .client("bob")
        .await
        .reject(RejectRequest {
            promotion_id: r.members[0].id.clone(),
            comment: "not this week".into(),
        })
        .await
        .expect("reject");
    let after = s.release(&r.id).await;
    assert_eq!(after.state, PromotionState::Rejected as i32);
    assert!(
        after
            .members
            .iter()
            .all(|m| m.state == PromotionState::Rejected as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_refused_component_refuses_the_release_and_records_nothing() {
    let (s, _) = Setup::start().await;
    let mut alice = s.server.client("alice").await;
    // One component: that is a promotion.
    let e = alice
        .request_release(s.request(&PATHS[..1], ""))
        .await
        .expect_err("one component");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("2 to 50"), "{e:?}");
    // The same repository twice.
    let e = alice
        .request_release(s.request(&["shop/api", "shop/api"], ""))
        .await
        .expect_err("twice");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("components[1] repeats"), "{e:?}");
    // Components not in staging (their source, the prerequisite's tag, does
    // not exist): refused as their own requests would be, one blocker per
    // component, each under its repository.
    let e = alice
        .request_release(s.request(&["shop/missing", "shop/api", "shop/gone"], ""))
        .await
        .expect_err("a missing source");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("shop/missing"), "{e:?}");
    let violations: Vec<(String, String)> = e
        .get_details_precondition_failure()
        .expect("a PreconditionFailure")
        .violations
        .into_iter()
        .map(|v| (v.r#type, v.subject))
        .collect();
    assert_eq!(
        violations,
        [
            ("prerequisite".to_owned(), s.repo("shop/missing")),
            ("prerequisite".to_owned(), s.repo("shop/gone")),
        ]
    );
    // A malformed component is named by its index.
    let mut bad = s.request(&PATHS[..2], "");
    bad.components[1].source = "no such tag!".into();
    let e = alice.request_release(bad).await.expect_err("bad source");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("components[1].source"), "{e:?}");
    assert_eq!(s.count().await, 0, "nothing was recorded");
    // GetRelease of a promotion of its own: NOT_FOUND.
    let single = s.single("shop/api").await;
    let e = alice
        .get_release(GetReleaseRequest {
            release_id: single.id.clone(),
        })
        .await
        .expect_err("not a release");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_member_waiting_for_its_check_holds_the_whole_release() {
    let (s, digests) = Setup::with_web_check().await;
    let mut alice = s.server.client("alice").await;
    let r = alice
        .request_release(s.request(&PATHS, ""))
        .await
        .expect("request release")
        .into_inner();
    let mut bob = s.server.client("bob").await;
    // Approve answers once the tag moved, or after apply_wait (1 s) without
    // the move: api is approved but may not move while web waits.
    let api = bob
        .approve(approve(&r.members[0].id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(api.state, PromotionState::Approved as i32, "{api:?}");
    let held = s.release(&r.id).await;
    assert_eq!(held.state, PromotionState::Waiting as i32, "{held:?}");
    assert_eq!(held.members[2].state, PromotionState::Waiting as i32);
    assert_eq!(held.members[2].waiting_for, vec!["checks".to_owned()]);
    for path in &PATHS {
        assert_eq!(
            s.registry.tag_digest(path, "production").await,
            None,
            "{path} moved"
        );
    }
    // The check passes: the release moves, all of it.
    alice
        .report_check(pb::ReportCheckRequest {
            repository: s.repo("shop/web"),
            digest: digests[2].clone(),
            check: "e2e".into(),
            status: pb::CheckStatus::Passed as i32,
            details_url: String::new(),
            comment: String::new(),
        })
        .await
        .expect("report");
    for m in &r.members {
        wait_for_state(&mut bob, &m.id, PromotionState::Promoted, LIMIT).await;
    }
    for (i, path) in PATHS.iter().enumerate() {
        assert_eq!(
            s.registry.tag_digest(path, "production").await.as_deref(),
            Some(digests[i].as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_member_the_registry_refuses_moves_the_others_back_and_fails_the_release() {
    // What production carries before the release.
    let (s, _, before) = Setup::behind_proxy(30, Some(20)).await;
    let repo = |path: &str| s.repo(path);
    // The registry refuses web's production tag for good.
    s.proxy().inject(
        "PUT",
        "/shop/web/manifests/production",
        Fault::Status {
            code: 400,
            retry_after: None,
        },
        usize::MAX,
    );
    let r = s
        .server
        .client("alice")
        .await
        .request_release(s.request(&PATHS, ""))
        .await
        .expect("request release")
        .into_inner();
    let mut bob = s.server.client("bob").await;
    bob.approve(approve(&r.id)).await.expect("approve");
    for m in &r.members {
        let p = wait_for_state(&mut bob, &m.id, PromotionState::Failed, LIMIT).await;
        assert!(
            p.failure_message.contains(&format!(
                "member {} ({})",
                r.members[2].id,
                repo("shop/web")
            )),
            "{p:?}"
        );
        assert!(p.failure_message.contains("undone"), "{p:?}");
    }
    // api and worker moved, then moved back; web never moved.
    for (i, path) in PATHS.iter().enumerate() {
        assert_eq!(
            s.registry.tag_digest(path, "production").await.as_deref(),
            Some(before[i].as_str()),
            "{path}"
        );
    }
    // Every member's failure is recorded with the release, the moved ones
    // with what became of their tag.
    let failed: Vec<pb::AuditEntry> = history(&mut bob, HistoryRequest::default())
        .await
        .into_iter()
        .filter(|e| e.action == pb::AuditAction::ApplyFailed as i32)
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed.iter().all(|e| e.attributes["release"] == r.id));
    for (i, m) in r.members.iter().enumerate().take(2) {
        let e = failed.iter().find(|e| e.promotion_id == m.id).unwrap();
        assert_eq!(
            e.attributes["compensation"],
            format!("moved production back to {}", before[i]),
            "{e:?}"
        );
    }
    assert!(
        !failed
            .iter()
            .find(|e| e.promotion_id == r.members[2].id)
            .unwrap()
            .attributes
            .contains_key("compensation")
    );
    assert_eq!(s.release(&r.id).await.state, PromotionState::Failed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn prodgate_killed_between_two_members_moves_resumes_the_release() {
    let (mut s, digests, _) = Setup::behind_proxy(40, None).await;
    // worker's move hangs, so the kill comes after api's and before its own.
    s.proxy().inject(
        "PUT",
        "/shop/worker/manifests/production",
        Fault::Delay(Duration::from_secs(60)),
        1,
    );
    let r = s
        .server
        .client("alice")
        .await
        .request_release(s.request(&PATHS, ""))
        .await
        .expect("request release")
        .into_inner();
    s.server
        .client("bob")
        .await
        .approve(approve(&r.id))
        .await
        .expect("approve");
    s.moved("shop/api").await;
    // Nothing is recorded yet: the release is APPROVED as a whole.
    assert_eq!(
        s.release(&r.id).await.state,
        PromotionState::Approved as i32
    );
    s.server.kill_and_restart();
    s.proxy().clear();
    let mut bob = s.server.client("bob").await;
    for m in &r.members {
        wait_for_state(&mut bob, &m.id, PromotionState::Promoted, LIMIT).await;
    }
    for (i, path) in PATHS.iter().enumerate() {
        assert_eq!(
            s.registry.tag_digest(path, "production").await.as_deref(),
            Some(digests[i].as_str())
        );
    }
    // api's APPLIED entry does not claim production carried its own digest
    // before (what it found after the restart): prodgate never moved that
    // tag before, so what it carried is not known.
    let applied: Vec<pb::AuditEntry> = history(&mut bob, HistoryRequest::default())
        .await
        .into_iter()
        .filter(|e| e.action == pb::AuditAction::Applied as i32)
        .collect();
    assert_eq!(applied.len(), 3);
    assert_eq!(applied[0].previous_digest, "");
}

/// `prodgate ARGS` as `who` against the server, and its exit code and stdout.
fn cli(s: &Setup, who: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .env_remove("PRODGATE_CONFIG")
        .env("PRODGATE_SERVER", format!("http://{}", s.server.addr))
        .env("PRODGATE_TOKEN", support::server::token(who))
        .args(args)
        .output()
        .expect("run prodgate");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `prodgate ARGS -o json` as `who`, which must succeed with one line: its
/// object.
fn cli_json(s: &Setup, who: &str, args: &[&str]) -> serde_json::Value {
    let args = [args, &["-o", "json"]].concat();
    let (code, out) = cli(s, who, &args);
    assert_eq!(code, Some(0), "{out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: not one JSON line: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_cli_requests_shows_and_approves_a_release() {
    let (s, digests) = Setup::start().await;
    let api = format!("{}:staging", s.repo("shop/api"));
    let web = format!("{}@{}", s.repo("shop/web"), digests[2]);
    let r = cli_json(
        &s,
        "alice",
        &[
            "release",
            &api,
            &web,
            "--env",
            "production",
            "--reason",
            "shop 2.0",
        ],
    );
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["members"].as_array().unwrap().len(), 2);
    assert_eq!(r["members"][1]["digest"], digests[2]);

    // Approving the second member approves the release.
    let second = r["members"][1]["id"].as_str().unwrap().to_owned();
    let (code, out) = cli(&s, "bob", &["approve", &second]);
    assert_eq!(code, Some(0), "{out}");
    let mut bob = s.server.client("bob").await;
    wait_for_state(&mut bob, &id, PromotionState::Promoted, LIMIT).await;
    let (code, out) = cli(&s, "bob", &["get-release", &id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("release:      {id}")), "{out}");
    assert!(out.contains("state:        PROMOTED"), "{out}");
    assert!(
        out.contains("shop/api") && out.contains("shop/web"),
        "{out}"
    );
    let (_, out) = cli(&s, "bob", &["get", &second]);
    assert!(out.contains(&format!("release:      {id}")), "{out}");

    // A component without a source is a bad flag value (exit 1).
    let (code, out) = cli(
        &s,
        "alice",
        &[
            "release",
            &s.repo("shop/api"),
            &web,
            "--env",
            "production",
            "--reason",
            "x",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("REPOSITORY:SOURCE"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_newer_promotion_of_a_members_tag_supersedes_the_whole_release() {
    // shop/web's production needs an e2e check, so the release is held.
    let (s, digests) = Setup::with_web_check().await;
    let mut alice = s.server.client("alice").await;
    let r = alice
        .request_release(s.request(&["shop/api", "shop/web"], ""))
        .await
        .expect("request release")
        .into_inner();
    let mut bob = s.server.client("bob").await;
    bob.approve(approve(&r.id)).await.expect("approve");
    // A promotion of api of its own, approved after the release: it moves
    // api's tag, and the release's api member gives way to it.
    let single = s.single("shop/api").await;
    bob.approve(approve(&single.id))
        .await
        .expect("approve single");
    wait_for_state(&mut bob, &single.id, PromotionState::Promoted, LIMIT).await;
    let api = wait_for_state(&mut bob, &r.id, PromotionState::Superseded, LIMIT).await;
    assert_eq!(api.superseded_by, single.id);
    assert_eq!(
        s.registry
            .tag_digest("shop/api", "production")
            .await
            .as_deref(),
        Some(digests[0].as_str())
    );
    // Superseded in one member, the release is superseded whole, in the
    // same write: web, still waiting for its check, ends with it.
    let web = s.release(&r.id).await.members[1].clone();
    assert_eq!(web.state, PromotionState::Superseded as i32, "{web:?}");
    assert_eq!(web.superseded_by, single.id);
    assert_eq!(
        s.release(&r.id).await.state,
        PromotionState::Superseded as i32
    );
    let entries = support::promotion_history(&mut bob, &web.id).await;
    let last = entries.last().expect("entries");
    assert_eq!(last.action, pb::AuditAction::Superseded as i32);
    assert_eq!(last.attributes["release"], r.id);
    assert!(
        last.comment.contains(&format!("member {} ", r.id)),
        "{last:?}"
    );
    let api_entry = support::promotion_history(&mut bob, &r.id).await;
    assert_eq!(
        api_entry.last().expect("entries").sequence + 1,
        last.sequence,
        "both supersessions are one write"
    );
    assert_eq!(s.registry.tag_digest("shop/web", "production").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_release_supersedes_an_older_promotion_of_a_members_tag() {
    let (s, digests) = Setup::start().await;
    let mut alice = s.server.client("alice").await;
    let mut bob = s.server.client("bob").await;
    // A promotion of api of its own, still pending when the release ships.
    let single = s.single("shop/api").await;
    let r = alice
        .request_release(s.request(&["shop/api", "shop/worker"], ""))
        .await
        .expect("request release")
        .into_inner();
    bob.approve(approve(&r.id)).await.expect("approve");
    for m in &r.members {
        wait_for_state(&mut bob, &m.id, PromotionState::Promoted, LIMIT).await;
    }
    // Moving api's tag superseded the older open promotion of it, in the
    // same write, as a single promotion's move does.
    let older = wait_for_state(&mut bob, &single.id, PromotionState::Superseded, LIMIT).await;
    assert_eq!(older.superseded_by, r.members[0].id);
    let entries = support::promotion_history(&mut bob, &single.id).await;
    let last = entries.last().expect("entries");
    assert_eq!(last.action, pb::AuditAction::Superseded as i32);
    assert!(last.comment.contains(&digests[0]), "{last:?}");
    assert!(!last.attributes.contains_key("release"), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn two_releases_sharing_a_tag_move_one_after_the_other() {
    let (s, digests, _) = Setup::behind_proxy(60, None).await;
    let mut alice = s.server.client("alice").await;
    let mut bob = s.server.client("bob").await;
    // Release A moves api, then worker, whose move hangs a while.
    s.proxy().inject(
        "PUT",
        "/shop/worker/manifests/production",
        Fault::Delay(Duration::from_secs(4)),
        1,
    );
    let a = alice
        .request_release(s.request(&["shop/api", "shop/worker"], ""))
        .await
        .expect("request A")
        .into_inner();
    bob.approve(approve(&a.id)).await.expect("approve A");
    s.moved("shop/api").await;
    // Meanwhile a newer api reaches staging, and release B (web, then api)
    // is approved: its api waits for A's lane, so B moves after A.
    let api2 = s
        .registry
        .push_image("shop/api", Some("staging"), 512, 70)
        .await;
    let b = alice
        .request_release(s.request(&["shop/web", "shop/api"], ""))
        .await
        .expect("request B")
        .into_inner();
    assert_eq!(
        s.release(&a.id).await.state,
        PromotionState::Approved as i32,
        "A still moving"
    );
    bob.approve(approve(&b.id)).await.expect("approve B");
    for m in a.members.iter().chain(&b.members) {
        wait_for_state(&mut bob, &m.id, PromotionState::Promoted, LIMIT).await;
    }
    // Each tag carries what the record says moved it last.
    let carried = [api2.as_str(), digests[1].as_str(), digests[2].as_str()];
    for (path, digest) in PATHS.iter().zip(carried) {
        assert_eq!(
            s.registry.tag_digest(path, "production").await.as_deref(),
            Some(digest),
            "{path}"
        );
    }
    let applied: Vec<pb::AuditEntry> = history(&mut bob, HistoryRequest::default())
        .await
        .into_iter()
        .filter(|e| e.action == pb::AuditAction::Applied as i32)
        .collect();
    let ids: Vec<&str> = applied.iter().map(|e| e.promotion_id.as_str()).collect();
    let order: Vec<&str> = a
        .members
        .iter()
        .chain(&b.members)
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(ids, order, "A recorded whole, then B");
    // B's api moved from A's api.
    assert_eq!(applied[3].previous_digest, digests[0]);
}

/// A release file with `components` (repository path, source) in that
/// order, after the keys in `head`.
fn release_file(s: &Setup, head: &str, components: &[(&str, &str)]) -> String {
    let mut text = head.to_owned();
    for (path, source) in components {
        text.push_str(&format!(
            "\n[[component]]\nrepository = \"{}\"\nsource = \"{source}\"\n",
            s.repo(path)
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_cli_requests_a_release_from_a_file_in_the_files_order() {
    let (s, digests) = Setup::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("release.toml");
    let path = file.to_str().expect("a UTF-8 path");
    // web, api, worker: not the order the repositories were made in.
    let head = "environment = \"staging\"\nreason = \"shop 2.0\"\nrequest_id = \"shop-2.0\"\n";
    let order = [
        ("shop/web", digests[2].as_str()),
        ("shop/api", "staging"),
        ("shop/worker", "staging"),
    ];
    std::fs::write(&file, release_file(&s, head, &order)).expect("write the file");
    // --env on the command line wins over the file's environment.
    let r = cli_json(
        &s,
        "alice",
        &["release", "--from-file", path, "--env", "production"],
    );
    assert_eq!(r["environment"], "production");
    assert_eq!(r["reason"], "shop 2.0");
    assert_eq!(r["state"], "PROMOTION_STATE_PENDING_APPROVAL");
    let members = r["members"].as_array().expect("members");
    let repositories: Vec<&str> = members
        .iter()
        .map(|m| m["repository"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        repositories,
        [
            s.repo("shop/web"),
            s.repo("shop/api"),
            s.repo("shop/worker")
        ]
    );
    let pinned: Vec<&str> = members
        .iter()
        .map(|m| m["digest"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(pinned, [&*digests[2], &*digests[0], &*digests[1]]);
    assert_eq!(members[0]["requestId"], "shop-2.0");
    assert_eq!(s.count().await, 3);

    // Refused before anything is sent, each naming what to change; nothing
    // is recorded. A key the format does not have: the file, the key, the
    // line (its 7th: the first component's).
    let typo = dir.path().join("typo.toml");
    let text = release_file(&s, head, &order).replacen("source =", "tag =", 1);
    std::fs::write(&typo, text).expect("write the file");
    let typo = typo.to_str().expect("a UTF-8 path");
    let (code, out) = cli(&s, "alice", &["release", "--from-file", typo]);
    assert_eq!(code, Some(1), "{out}");
    for want in [typo, "unknown field `tag`", "line 7"] {
        assert!(out.contains(want), "{want:?} in {out}");
    }
    // A file that is not there.
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().expect("a UTF-8 path");
    let (code, out) = cli(&s, "alice", &["release", "--from-file", missing]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("cannot read release file {missing}")),
        "{out}"
    );
    // A file and components on the command line: which one is meant?
    let api = format!("{}:staging", s.repo("shop/api"));
    let web = format!("{}:staging", s.repo("shop/web"));
    let (code, out) = cli(
        &s,
        "alice",
        &[
            "release",
            "--from-file",
            path,
            &api,
            &web,
            "--env",
            "production",
            "--reason",
            "x",
        ],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("--from-file") && out.contains("cannot be used with"),
        "{out}"
    );
    assert_eq!(s.count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn list_shows_a_release_as_one_row_with_its_members_beneath() {
    let (s, digests) = Setup::start().await;
    s.registry
        .push_image("team/app", Some("staging"), 512, 99)
        .await;
    let mut alice = s.server.client("alice").await;
    let single = |env: &str| support::request_to(&s.repo("team/app"), "staging", env);
    let before = alice
        .request_promotion(single("production"))
        .await
        .expect("request")
        .into_inner();
    let r = s.open(s.request(&PATHS, "")).await;
    let after = alice
        .request_promotion(single("prod2"))
        .await
        .expect("request")
        .into_inner();

    let (code, out) = cli(&s, "alice", &["list"]);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1 + 1 + 1 + 3 + 1, "{out}");
    let header = lines[0];
    let at = |col: &str| header.find(col).expect("column");
    let first_word = |l: &str| l.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(first_word(lines[1]), before.id, "{out}");
    assert_eq!(
        lines[1].find(&s.repo("team/app")),
        Some(at("REPOSITORY")),
        "{out}"
    );
    // The release: one row for the whole, its members indented beneath in
    // the order their tags move.
    let release = lines[2];
    assert_eq!(first_word(release), r.id, "{out}");
    assert_eq!(release.find("PENDING_APPROVAL"), Some(at("STATE")), "{out}");
    assert_eq!(
        release.find("release: 3 images"),
        Some(at("REPOSITORY")),
        "{out}"
    );
    assert_eq!(release.find("production"), Some(at("ENV")), "{out}");
    assert_eq!(release.find("alice"), Some(at("REQUESTED BY")), "{out}");
    for (i, m) in r.members.iter().enumerate() {
        let line = lines[3 + i];
        assert!(line.starts_with(&format!("  {} ", m.id)), "{out}");
        assert_eq!(line.find("PENDING_APPROVAL"), Some(at("STATE")), "{out}");
        assert_eq!(
            line.find(&s.repo(PATHS[i])),
            Some(at("REPOSITORY")),
            "{out}"
        );
        assert_eq!(line.find(&digests[i][..19]), Some(at("DIGEST")), "{out}");
    }
    assert_eq!(first_word(lines[6]), after.id, "{out}");
    assert!(lines[6].contains("prod2"), "{out}");

    // Filtered to one member, the release still shows as such.
    let (code, out) = cli(&s, "alice", &["list", "--repository", &s.repo("shop/web")]);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].contains("release: 1 image"), "{out}");
    assert!(
        lines[2].starts_with(&format!("  {} ", r.members[2].id)),
        "{out}"
    );

    // -o json stays one Promotion per line, each member naming its release.
    let (code, out) = cli(&s, "alice", &["list", "-o", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let releases: Vec<&str> = listed
        .iter()
        .map(|p| p["releaseId"].as_str().unwrap_or_default())
        .collect();
    let id = r.id.as_str();
    assert_eq!(releases, ["", id, id, id, ""], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn approving_or_rejecting_a_member_prints_the_whole_release() {
    let (s, _) = Setup::start().await;
    let r = s.open(s.request(&PATHS, "")).await;
    let (code, out) = cli(&s, "bob", &["approve", &r.members[1].id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("release:      {}\n", r.id)), "{out}");
    // Every member, each with its state: approved, or promoted already.
    for (i, m) in r.members.iter().enumerate() {
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(m.id.as_str()))
            .unwrap_or_else(|| panic!("no row for member {} in {out}", m.id));
        assert!(row.contains(&s.repo(PATHS[i])), "{out}");
        assert!(
            row.contains("APPROVED") || row.contains("PROMOTED"),
            "{out}"
        );
    }

    // Rejecting one member of another release shows all of them rejected.
    let to_prod2 = |paths: &[&str]| RequestReleaseRequest {
        environment: "prod2".into(),
        ..s.request(paths, "")
    };
    let r = s.open(to_prod2(&PATHS[..2])).await;
    let (code, out) = cli(
        &s,
        "bob",
        &["reject", &r.members[0].id, "--comment", "not this week"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("state:        REJECTED\n"), "{out}");
    for m in &r.members {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{} ", m.id)) && l.contains("REJECTED")),
            "{out}"
        );
    }

    // -o json is the one Promotion the call answered, as for any promotion.
    let r = s.open(to_prod2(&PATHS[1..])).await;
    let p = cli_json(&s, "alice", &["cancel", &r.members[1].id]);
    assert_eq!(p["id"], r.members[1].id.as_str());
    assert_eq!(p["releaseId"], r.id.as_str());
    assert_eq!(p["state"], "PROMOTION_STATE_CANCELLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn approving_a_member_that_waits_for_its_check_says_what_it_waits_for() {
    let (s, _) = Setup::with_web_check().await;
    let r = s.open(s.request(&PATHS, "")).await;
    let web = &r.members[2].id;
    let (code, out) = cli(&s, "bob", &["approve", web]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("state:        WAITING\n"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{web} ")) && l.contains("WAITING")),
        "{out}"
    );
    assert!(out.ends_with("recorded; waiting for: checks\n"), "{out}");
}
