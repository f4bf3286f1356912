//! Rollback: back to a digest the environment's tag carried before, on
//! purpose and under the environment's rollback approvals, against the real
//! registry and a real server.

mod support;

use prodgate::pb::{AuditAction, HistoryRequest, PromotionState, RollbackRequest};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, principals_toml, registry_toml};
use support::{approve, history, request_to};
use tonic::Code;

/// Staging applied on request; production needs one approval and
/// `rollback_approvals` for a rollback.
fn config(host: &str, rollback_approvals: u32) -> String {
    format!(
        "{}{}\n[[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n\n\
         [[environment]]\nname = \"production\"\ntag = \"production\"\nrequires = \"staging\"\n\
         approvers = [\"group:release-managers\"]\nrequired_approvals = 1\n\
         rollback_approvals = {rollback_approvals}\n",
        registry_toml(host),
        principals_toml(),
    )
}

/// Ships image `seed` through staging to production; returns its digest.
async fn ship(registry: &TestRegistry, alice: &mut Client, bob: &mut Client, seed: u64) -> String {
    let repo = format!("{}/team/app", registry.host);
    let digest = registry
        .push_image("team/app", Some("dev"), 1024, seed)
        .await;
    alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("production")
        .into_inner();
    let done = bob
        .approve(approve(&p.id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    digest
}

fn rollback(repo: &str, digest: &str) -> RollbackRequest {
    RollbackRequest {
        repository: repo.to_owned(),
        environment: "production".into(),
        digest: digest.to_owned(),
        reason: "INC-42: 1.5 breaks checkout".into(),
        request_id: String::new(),
        break_glass: false,
    }
}

#[tokio::test]
async fn rollback_goes_back_to_the_previous_digest_under_rollback_approvals() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host, 1));
    let repo = format!("{}/team/app", registry.host);
    let (mut alice, mut bob) = (server.client("alice").await, server.client("bob").await);
    let old = ship(&registry, &mut alice, &mut bob, 1).await;
    let new = ship(&registry, &mut alice, &mut bob, 2).await;

    // No digest: the one production carried before the current one.
    let r = alice
        .rollback(rollback(&repo, ""))
        .await
        .expect("rollback")
        .into_inner();
    assert!(r.rollback);
    assert_eq!(r.digest, old);
    assert_eq!(r.state, PromotionState::PendingApproval as i32, "{r:?}");
    let done = bob
        .approve(approve(&r.id))
        .await
        .expect("approve the rollback")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    assert_eq!(done.previous_digest, new);
    assert_eq!(
        registry
            .tag_digest("team/app", "production")
            .await
            .as_deref(),
        Some(old.as_str())
    );
    let requested = history(
        &mut alice,
        HistoryRequest {
            promotion_id: r.id.clone(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .find(|e| e.action == AuditAction::Requested as i32)
    .expect("the request");
    assert_eq!(requested.attributes["kind"], "rollback");
    assert_eq!(requested.hash, support::expected_hash(&requested));

    // Explicitly forward again to `new`, a digest production carried before.
    let forward = alice
        .rollback(rollback(&repo, &new))
        .await
        .expect("back to new")
        .into_inner();
    assert_eq!(forward.digest, new);

    // Refused: the current digest, a digest never applied here, no reason.
    let e = alice
        .rollback(rollback(&repo, &old))
        .await
        .expect_err("already there");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("already carries"), "{e:?}");
    let never = format!("sha256:{}", "7".repeat(64));
    let e = alice
        .rollback(rollback(&repo, &never))
        .await
        .expect_err("never applied");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("never moved"), "{e:?}");
    let e = alice
        .rollback(RollbackRequest {
            reason: " ".into(),
            ..rollback(&repo, "")
        })
        .await
        .expect_err("no reason");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn rollback_approvals_zero_applies_at_once_and_nothing_to_roll_back_is_refused() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host, 0));
    let repo = format!("{}/team/app", registry.host);
    let (mut alice, mut bob) = (server.client("alice").await, server.client("bob").await);
    let e = alice
        .rollback(rollback(&repo, ""))
        .await
        .expect_err("nothing deployed");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let old = ship(&registry, &mut alice, &mut bob, 1).await;
    ship(&registry, &mut alice, &mut bob, 2).await;
    let r = alice
        .rollback(rollback(&repo, ""))
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(r.state, PromotionState::Promoted as i32, "{r:?}");
    assert_eq!(
        registry
            .tag_digest("team/app", "production")
            .await
            .as_deref(),
        Some(old.as_str())
    );
}

#[tokio::test]
async fn rolling_back_twice_never_brings_back_what_was_rolled_back() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host, 0));
    let repo = format!("{}/team/app", registry.host);
    let (mut alice, mut bob) = (server.client("alice").await, server.client("bob").await);
    let one = ship(&registry, &mut alice, &mut bob, 1).await;
    let two = ship(&registry, &mut alice, &mut bob, 2).await;
    let three = ship(&registry, &mut alice, &mut bob, 3).await;
    let first = alice
        .rollback(rollback(&repo, ""))
        .await
        .expect("first rollback")
        .into_inner();
    assert_eq!(first.state, PromotionState::Promoted as i32, "{first:?}");
    assert_eq!(first.digest, two, "back from 3 to 2");
    // The tag carried 3 before 2: a default rollback must not return to
    // the release just rolled back.
    let second = alice
        .rollback(rollback(&repo, ""))
        .await
        .expect("second rollback")
        .into_inner();
    assert_eq!(second.digest, one, "back from 2 to 1, skipping 3");
    assert_ne!(second.digest, three);
    assert_eq!(second.state, PromotionState::Promoted as i32, "{second:?}");
    // Nothing is left: 2 and 3 were rolled away from, 1 is current.
    let e = alice
        .rollback(rollback(&repo, ""))
        .await
        .expect_err("nothing left");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no digest is left"), "{e:?}");
    // An explicit digest still works.
    let back = alice
        .rollback(rollback(&repo, &three))
        .await
        .expect("explicit rollback to 3")
        .into_inner();
    assert_eq!(back.digest, three);
}

#[tokio::test]
async fn a_rollback_retried_with_its_request_id_after_it_moved_the_tag_is_answered_from_the_record()
{
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host, 0));
    let repo = format!("{}/team/app", registry.host);
    let (mut alice, mut bob) = (server.client("alice").await, server.client("bob").await);
    let first = ship(&registry, &mut alice, &mut bob, 1).await;
    let second = ship(&registry, &mut alice, &mut bob, 2).await;
    ship(&registry, &mut alice, &mut bob, 3).await;
    let keyed = RollbackRequest {
        request_id: "inc-42".into(),
        ..rollback(&repo, "")
    };
    let r = alice
        .rollback(keyed.clone())
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(r.state, PromotionState::Promoted as i32, "{r:?}");
    assert_eq!(r.digest, second);
    let recorded = history(&mut alice, HistoryRequest::default()).await.len();
    // The answer was lost; the retry must not roll back one step further
    // (to `first`), nor be refused because the tag has moved.
    let again = alice
        .rollback(keyed.clone())
        .await
        .expect("the retry is answered")
        .into_inner();
    assert_eq!((again.id, again.digest), (r.id.clone(), second.clone()));
    let by_digest = alice
        .rollback(RollbackRequest {
            digest: second.clone(),
            ..keyed.clone()
        })
        .await
        .expect("the retry naming the digest it went back to")
        .into_inner();
    assert_eq!(by_digest.id, r.id);
    assert_eq!(
        history(&mut alice, HistoryRequest::default()).await.len(),
        recorded,
        "retries record nothing"
    );
    // The key names that rollback: another target under it is a conflict.
    let e = alice
        .rollback(RollbackRequest {
            digest: first,
            ..keyed
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(
        registry
            .tag_digest("team/app", "production")
            .await
            .as_deref(),
        Some(second.as_str())
    );
}
