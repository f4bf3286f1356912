//! Approvals that wait for the gates, end to end: a real registry and a
//! real `prodgate serve`. An approval given during a soak or a freeze is
//! recorded, the promotion waits (WAITING), and it ships by itself when the
//! gates open, across a restart too. Also: break-glass at request time, and
//! a request that would change nothing.

mod support;

use prodgate::pb::{
    AuditAction, HistoryRequest, ListPromotionsRequest, PromotionState, RequestPromotionRequest,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, principals_toml, registry_toml};
use support::{approve, get, history, request_to, wait_for_state};
use tonic::Code;
use tonic_types::StatusExt;

/// staging (no approval) and production (requires staging, one approval by
/// a release manager) with `keys`.
fn config(host: &str, keys: &str) -> String {
    format!(
        "{}{}\n[[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n\n\
         [[environment]]\nname = \"production\"\ntag = \"production\"\nrequires = \"staging\"\n\
         approvers = [\"group:release-managers\"]\nrequired_approvals = 1\n{keys}\n",
        registry_toml(host),
        principals_toml(),
    )
}

/// Ships image `seed` to staging and requests production; the request.
async fn candidate(
    registry: &TestRegistry,
    alice: &mut Client,
    seed: u64,
) -> prodgate::pb::Promotion {
    let repo = format!("{}/team/app", registry.host);
    registry
        .push_image("team/app", Some("dev"), 1024, seed)
        .await;
    alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request production")
        .into_inner()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

async fn actions(c: &mut Client, id: &str) -> Vec<AuditAction> {
    support::actions_of(c, id).await
}

#[tokio::test]
async fn an_approval_in_the_soak_is_kept_and_the_tag_moves_by_itself_when_it_ends() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host, "min_soak = \"3s\""));
    let mut alice = server.client("alice").await;
    let p = candidate(&registry, &mut alice, 1).await;
    let waiting = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("recorded during the soak")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    assert_eq!(waiting.waiting_for, ["soak"]);
    assert_eq!(waiting.approvals.len(), 1);
    assert_eq!(waiting.approvals[0].groups, ["release-managers"]);
    let not_before = waiting.not_before.expect("the soak's end");
    assert!(not_before.seconds <= unix_now() + 4, "{not_before:?}");
    // Listed among the waiting.
    let listed = alice
        .list_promotions(ListPromotionsRequest {
            state: PromotionState::Waiting as i32,
            ..Default::default()
        })
        .await
        .expect("list waiting")
        .into_inner();
    assert_eq!(listed.promotions.len(), 1);
    // Nobody acts again: it ships when the soak ends. The CLI follows it
    // through WAITING and exits 0 on PROMOTED.
    let out = tokio::task::spawn_blocking({
        let (id, addr) = (p.id.clone(), server.addr.clone());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_prodgate"))
                .args(["get", &id, "--wait", "--timeout", "30s", "--server"])
                .arg(format!("http://{addr}"))
                .env("PRODGATE_TOKEN", support::server::token("alice"))
                .output()
                .expect("run prodgate get --wait")
        }
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PROMOTED"), "{text}");
    let done = get(&mut alice, &p.id).await;
    assert_eq!(done.state, PromotionState::Promoted as i32);
    assert!(
        done.waiting_for.is_empty() && done.not_before.is_none(),
        "{done:?}"
    );
    assert_eq!(
        registry
            .tag_digest("team/app", "production")
            .await
            .as_deref(),
        Some(p.digest.as_str())
    );
    assert_eq!(
        actions(&mut alice, &p.id).await,
        [
            AuditAction::Requested,
            AuditAction::Approved,
            AuditAction::GatesPassed,
            AuditAction::Applied
        ]
    );
    let entries = history(
        &mut alice,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let passed = &entries[2];
    assert_eq!(passed.actor, "prodgate");
    assert_eq!(passed.attributes["gates"], "soak");
    assert_eq!(passed.attributes["policy"], done.policy_digest);
    assert!(passed.time.unwrap().seconds >= not_before.seconds);
}

#[tokio::test]
async fn killed_while_waiting_and_restarted_after_not_before_it_ships_once() {
    let registry = TestRegistry::start().await;
    let mut server = TestServer::start(&config(&registry.host, "min_soak = \"4s\""));
    let mut alice = server.client("alice").await;
    let p = candidate(&registry, &mut alice, 2).await;
    let waiting = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("recorded")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32);
    let not_before = waiting.not_before.expect("the soak's end").seconds;
    server.kill();
    // The gate opens while prodgate is down.
    while unix_now() <= not_before {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill_and_restart();
    let mut alice = server.client("alice").await;
    wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    let acts = actions(&mut alice, &p.id).await;
    let count = |a: AuditAction| acts.iter().filter(|x| **x == a).count();
    assert_eq!(count(AuditAction::GatesPassed), 1, "{acts:?}");
    assert_eq!(count(AuditAction::Applied), 1, "{acts:?}");
    support::assert_one_chain(&mut alice).await;
}

#[tokio::test]
async fn break_glass_at_request_time_overrides_a_freeze_once_approved() {
    let registry = TestRegistry::start().await;
    let rfc = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let now = SystemTime::now();
    let keys = format!(
        "break_glass = [\"erin\"]\n\n[[freeze]]\nenvironments = [\"production\"]\nstart = \"{}\"\nend = \"{}\"\nreason = \"year-end freeze\"\n",
        rfc(now - Duration::from_secs(3600)),
        rfc(now + Duration::from_secs(3600)),
    );
    let server = TestServer::start(&config(&registry.host, &keys));
    let repo = format!("{}/team/app", registry.host);
    registry.push_image("team/app", Some("dev"), 1024, 3).await;
    let mut alice = server.client("alice").await;
    alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    let glass = RequestPromotionRequest {
        break_glass: true,
        reason: "INC-7 hotfix".into(),
        ..request_to(&repo, "staging", "production")
    };
    let e = alice
        .request_promotion(glass.clone())
        .await
        .expect_err("alice may not break glass");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("erin"), "names who may: {e:?}");
    let p = server
        .client("erin")
        .await
        .request_promotion(glass)
        .await
        .expect("erin breaks glass")
        .into_inner();
    assert!(p.break_glass);
    assert_eq!(
        p.state,
        PromotionState::PendingApproval as i32,
        "approvals are never skipped"
    );
    let done = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(
        done.state,
        PromotionState::Promoted as i32,
        "never waits: {done:?}"
    );
    let entries = history(
        &mut alice,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(entries[0].attributes["break_glass"], "true");
    let approved = entries
        .iter()
        .find(|e| e.action == AuditAction::Approved as i32)
        .expect("the approval");
    assert_eq!(approved.attributes["overridden"], "freeze");
}

#[tokio::test]
async fn a_request_for_what_the_tag_already_carries_opens_nothing() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host, ""));
    let repo = format!("{}/team/app", registry.host);
    let mut alice = server.client("alice").await;
    registry.push_image("team/app", Some("dev"), 1024, 4).await;
    alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    let keyed = RequestPromotionRequest {
        request_id: "ship-4".into(),
        ..request_to(&repo, "staging", "production")
    };
    let p = alice
        .request_promotion(keyed.clone())
        .await
        .expect("request production")
        .into_inner();
    server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve");
    wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(20),
    )
    .await;
    let count = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.list_promotions(ListPromotionsRequest::default())
                .await
                .expect("list")
                .into_inner()
                .promotions
                .len()
        }
    };
    let before = count(&mut alice).await;
    // A retry of the request that put it there answers that promotion.
    let retried = alice
        .request_promotion(keyed)
        .await
        .expect("an idempotent retry")
        .into_inner();
    assert_eq!(retried.id, p.id);
    assert_eq!(retried.state, PromotionState::Promoted as i32);
    // A new request for the same digest would change nothing: refused.
    let e = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect_err("production already carries it");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(&format!("promotion {}", p.id)),
        "{e:?}"
    );
    let failure = e
        .get_details_precondition_failure()
        .expect("a PreconditionFailure");
    assert_eq!(failure.violations.len(), 1, "{failure:?}");
    assert_eq!(failure.violations[0].r#type, "noop");
    assert_eq!(failure.violations[0].subject, repo);
    assert_eq!(count(&mut alice).await, before, "nothing opened");
    assert_eq!(
        get(&mut alice, &p.id).await.state,
        PromotionState::Promoted as i32
    );
}

#[tokio::test]
async fn a_promotion_waits_no_longer_than_wait_ttl() {
    let registry = TestRegistry::start().await;
    // A soak far longer than the test, and a wait_ttl of two seconds.
    let server = TestServer::start(&config(
        &registry.host,
        "min_soak = \"1h\"\napproval_ttl = \"1s\"\nwait_ttl = \"2s\"",
    ));
    let mut alice = server.client("alice").await;
    let p = candidate(&registry, &mut alice, 5).await;
    let waiting = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("recorded in the soak")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    // approval_ttl (1s) no longer applies; wait_ttl counts from the approval.
    let approved_at = waiting.approvals[0].time.expect("time");
    let expires = waiting.expires_at.expect("a deadline");
    assert_eq!(expires.seconds - approved_at.seconds, 2, "{waiting:?}");
    let done = wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Expired,
        Duration::from_secs(20),
    )
    .await;
    assert!(done.updated_at.unwrap().seconds >= expires.seconds);
    let entries = history(
        &mut alice,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let expired = entries.last().expect("entries");
    assert_eq!(expired.action, AuditAction::Expired as i32);
    assert_eq!(expired.actor, "prodgate");
    assert!(expired.comment.contains("wait_ttl"), "{expired:?}");
}

#[tokio::test]
async fn a_waiting_promotion_gives_way_to_a_newer_one_applied_first() {
    let registry = TestRegistry::start().await;
    let rfc = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let now = SystemTime::now();
    let keys = format!(
        "break_glass = [\"erin\"]\n\n[[freeze]]\nenvironments = [\"production\"]\nstart = \"{}\"\nend = \"{}\"\nreason = \"year-end freeze\"\n",
        rfc(now - Duration::from_secs(3600)),
        rfc(now + Duration::from_secs(3600)),
    );
    let server = TestServer::start(&config(&registry.host, &keys));
    let repo = format!("{}/team/app", registry.host);
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let older = candidate(&registry, &mut alice, 6).await;
    let waiting = bob
        .approve(approve(&older.id))
        .await
        .expect("recorded in the freeze")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32);
    // A hotfix, newer, breaks glass and ships first.
    registry.push_image("team/app", Some("dev"), 1024, 7).await;
    alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    let hotfix = server
        .client("erin")
        .await
        .request_promotion(RequestPromotionRequest {
            break_glass: true,
            reason: "INC-9 hotfix".into(),
            ..request_to(&repo, "staging", "production")
        })
        .await
        .expect("erin breaks glass")
        .into_inner();
    let done = bob
        .approve(approve(&hotfix.id))
        .await
        .expect("approve the hotfix")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    // The older one never moves the tag back.
    let older = get(&mut alice, &older.id).await;
    assert_eq!(older.state, PromotionState::Superseded as i32, "{older:?}");
    assert_eq!(older.superseded_by, hotfix.id);
}

#[tokio::test]
async fn a_freeze_that_ends_seconds_later_lets_the_approval_ship_by_itself() {
    let registry = TestRegistry::start().await;
    let rfc = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    // The freeze must still hold when bob approves: on a machine slow
    // enough to start the server, ship staging and request in more than
    // the window, try again with a window twice as long.
    let mut window = Duration::from_secs(3);
    let (_server, mut alice, p, waiting, end) = loop {
        let now = SystemTime::now();
        let end = now + window;
        let keys = format!(
            "\n[[freeze]]\nenvironments = [\"production\"]\nstart = \"{}\"\nend = \"{}\"\nreason = \"deploy review\"\n",
            rfc(now - Duration::from_secs(60)),
            rfc(end),
        );
        let server = TestServer::start(&config(&registry.host, &keys));
        let mut alice = server.client("alice").await;
        let p = candidate(&registry, &mut alice, 8 + window.as_secs()).await;
        let waiting = server
            .client("bob")
            .await
            .approve(approve(&p.id))
            .await
            .expect("recorded in the freeze")
            .into_inner();
        if waiting.state == PromotionState::Waiting as i32 {
            break (server, alice, p, waiting, end);
        }
        assert!(
            SystemTime::now() >= end && window < Duration::from_secs(48),
            "not WAITING although the freeze held: {waiting:?}"
        );
        window *= 2;
    };
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    assert_eq!(waiting.waiting_for, ["freeze"]);
    let opens = waiting.not_before.expect("the freeze's end");
    let end_ms = end.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert_eq!(
        opens.seconds * 1000 + i64::from(opens.nanos) / 1_000_000,
        end_ms,
        "not_before is the freeze's end"
    );
    let done = wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        window + Duration::from_secs(20),
    )
    .await;
    assert!(done.promoted_at.unwrap().seconds >= opens.seconds);
    // A finished promotion has no gates left to evaluate.
    let e = alice
        .evaluate_gates(prodgate::pb::EvaluateGatesRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("finished");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("PROMOTED"), "{e:?}");
}
