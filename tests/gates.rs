//! Gates end to end that `tests/checks.rs` (checks, freeze, soak blocking,
//! break-glass) does not cover: required groups, allowed hours, and a soak
//! that ends. A real registry and a real `prodgate serve`.

mod support;

use prodgate::pb::{EvaluateGatesRequest, PromotionState};
use std::time::{Duration, Instant};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, principals_toml, registry_toml};
use support::{approve, get, request_to};

/// staging (no approval) and production (requires staging) with `keys`.
fn config(registry_host: &str, keys: &str) -> String {
    format!(
        "{}{}\n[[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n\n\
         [[environment]]\nname = \"production\"\ntag = \"production\"\nrequires = \"staging\"\n{keys}\n",
        registry_toml(registry_host),
        principals_toml(),
    )
}

/// A production promotion of an image that passed staging, requested by
/// alice.
async fn candidate(registry: &TestRegistry, server: &TestServer) -> prodgate::pb::Promotion {
    let repo = format!("{}/team/app", registry.host);
    registry.push_image("team/app", Some("dev"), 1024, 1).await;
    let mut alice = server.client("alice").await;
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

#[tokio::test]
async fn a_required_group_must_be_among_the_approvers() {
    let registry = TestRegistry::start().await;
    // Release managers approve; one approval must come from a developer
    // (rita is both).
    let server = TestServer::start(&config(
        &registry.host,
        "approvers = [\"group:release-managers\"]\nrequired_approvals = 2\nrequired_groups = [\"developers\"]",
    ));
    let p = candidate(&registry, &server).await;
    let mut alice = server.client("alice").await;
    // The first approval leaves a slot open: recorded.
    let one = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("bob approves")
        .into_inner();
    assert_eq!(one.state, PromotionState::PendingApproval as i32);
    // dave's approval makes two, with no developer among them: recorded,
    // and the promotion still needs a developer's.
    let two = server
        .client("dave")
        .await
        .approve(approve(&p.id))
        .await
        .expect("dave's approval is recorded in any order")
        .into_inner();
    assert_eq!(two.state, PromotionState::PendingApproval as i32, "{two:?}");
    let report = alice
        .evaluate_gates(EvaluateGatesRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        })
        .await
        .expect("evaluate")
        .into_inner();
    let groups = report
        .gates
        .iter()
        .find(|g| g.name == "required_groups")
        .expect("the required_groups gate");
    assert!(
        !groups.passed && groups.message.contains("developers"),
        "{groups:?}"
    );
    // rita is a developer: her approval, the third, completes it.
    let done = server
        .client("rita")
        .await
        .approve(approve(&p.id))
        .await
        .expect("rita approves")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    assert_eq!(
        done.approvals
            .iter()
            .map(|a| a.approver.as_str())
            .collect::<Vec<_>>(),
        ["bob", "dave", "rita"]
    );
    assert_eq!(done.approvals[2].groups, ["developers", "release-managers"]);
}

#[tokio::test]
async fn outside_the_allowed_hours_the_window_blocks() {
    let registry = TestRegistry::start().await;
    // An hour-long window twelve hours from now, in UTC: closed now
    // whenever the test runs.
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        / 3600
        + 12)
        % 24;
    let hours = format!("{hour:02}:00-{:02}:00", (hour + 1) % 24);
    let server = TestServer::start(&config(
        &registry.host,
        &format!(
            "approvers = [\"group:release-managers\"]\nrequired_approvals = 1\nallowed_hours = \"{hours}\"\ntime_zone = \"UTC\""
        ),
    ));
    let p = candidate(&registry, &server).await;
    let mut bob = server.client("bob").await;
    let waiting = bob
        .approve(approve(&p.id))
        .await
        .expect("recorded outside the window")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    assert_eq!(waiting.waiting_for, ["window"]);
    // It opens at the top of the window's hour, within a day.
    let opens = waiting.not_before.expect("the window's opening").seconds;
    assert_eq!(opens % 3600, 0, "{opens}");
    assert_eq!((opens / 3600) % 24, hour as i64);
    let report = bob
        .evaluate_gates(EvaluateGatesRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        })
        .await
        .expect("evaluate")
        .into_inner();
    let window = report
        .gates
        .iter()
        .find(|g| g.name == "window")
        .expect("a window gate");
    assert!(!window.passed, "{report:?}");
    assert!(window.message.contains(&hours), "{}", window.message);
    assert_eq!(get(&mut bob, &p.id).await.approvals.len(), 1);
}

/// Polls EvaluateGates until the soak gate passes, failing after `limit`:
/// the soak ends on the server's clock, in another process.
async fn soaked(c: &mut Client, id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let report = c
            .evaluate_gates(EvaluateGatesRequest {
                promotion_id: id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("evaluate")
            .into_inner();
        let soak = report
            .gates
            .iter()
            .find(|g| g.name == "soak")
            .expect("a soak gate");
        if soak.passed {
            return;
        }
        assert!(Instant::now() < deadline, "still soaking: {report:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_soak_gate_counts_down_and_an_approval_after_it_ships_at_once() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(
        &registry.host,
        "approvers = [\"group:release-managers\"]\nrequired_approvals = 1\nmin_soak = \"2s\"",
    ));
    let p = candidate(&registry, &server).await;
    let mut bob = server.client("bob").await;
    let report = bob
        .evaluate_gates(EvaluateGatesRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        })
        .await
        .expect("evaluate")
        .into_inner();
    let soak = report
        .gates
        .iter()
        .find(|g| g.name == "soak")
        .expect("soak");
    assert!(!soak.passed && soak.message.contains("left"), "{soak:?}");
    soaked(&mut bob, &p.id, Duration::from_secs(10)).await;
    let done = bob
        .approve(approve(&p.id))
        .await
        .expect("soaked")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
}
