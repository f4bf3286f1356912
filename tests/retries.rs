//! Safe retries, end to end: a real registry and a real `prodgate serve`.
//! Approve, Reject and Cancel repeated by the person whose call is recorded
//! answer OK with the promotion as it is and record nothing, even once it
//! ended; anyone else is still refused. A promotion carries the key it was
//! requested with, and ListPromotions finds the caller's own by that key.

mod support;

use prodgate::pb::{
    self, CancelRequest, HistoryRequest, ListPromotionsRequest, PromotionState, RejectRequest,
};
use std::time::Duration;
use support::server::Client;
use support::{World, approve, get, history, request_to, wait_for_state};
use tonic::Code;

/// Ships image `seed` to staging, then `who` requests production with
/// `request_id`; the request.
async fn candidate(w: &World, who: &mut Client, seed: u64, request_id: &str) -> pb::Promotion {
    let repo = w.repo("team/app");
    w.registry
        .push_image("team/app", Some("dev"), 1024, seed)
        .await;
    who.request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    who.request_promotion(pb::RequestPromotionRequest {
        request_id: request_id.to_owned(),
        ..request_to(&repo, "staging", "production")
    })
    .await
    .expect("request production")
    .into_inner()
}

async fn entries(c: &mut Client, id: &str) -> Vec<pb::AuditEntry> {
    history(
        c,
        HistoryRequest {
            promotion_id: id.to_owned(),
            ..Default::default()
        },
    )
    .await
}

fn reject(id: &str) -> RejectRequest {
    RejectRequest {
        promotion_id: id.to_owned(),
        comment: "not this one".into(),
    }
}

fn cancel(id: &str) -> CancelRequest {
    CancelRequest {
        promotion_id: id.to_owned(),
        comment: String::new(),
    }
}

#[tokio::test]
async fn an_approval_repeated_after_the_promotion_shipped_is_ok_and_records_nothing() {
    let w = World::start().await;
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;
    let p = candidate(&w, &mut alice, 1, "ci-run-1").await;
    assert_eq!(p.request_id, "ci-run-1");
    let requested = &entries(&mut alice, &p.id).await[0];
    assert_eq!(
        requested.attributes.get("request_id").map(String::as_str),
        Some("ci-run-1"),
        "{requested:?}"
    );

    bob.approve(approve(&p.id)).await.expect("approve");
    let promoted = wait_for_state(
        &mut bob,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    let before = entries(&mut bob, &p.id).await;

    // bob's answer was lost: he asks again and gets the promotion as it is.
    let again = bob
        .approve(approve(&p.id))
        .await
        .expect("a repeated approval is OK")
        .into_inner();
    assert_eq!(again.state, PromotionState::Promoted as i32, "{again:?}");
    assert_eq!(again, promoted);
    assert_eq!(entries(&mut bob, &p.id).await, before, "nothing recorded");

    // Anyone else is still told it is over.
    let late = w
        .server
        .client("dave")
        .await
        .approve(approve(&p.id))
        .await
        .expect_err("dave did not approve it");
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("PROMOTED"), "{late:?}");
    assert_eq!(entries(&mut bob, &p.id).await, before);
}

#[tokio::test]
async fn a_rejection_or_cancellation_repeated_by_its_author_is_ok_and_records_nothing() {
    let w = World::start().await;
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;

    let p = candidate(&w, &mut alice, 1, "").await;
    assert_eq!(p.request_id, "", "requested without a key");
    let first = bob
        .reject(reject(&p.id))
        .await
        .expect("reject")
        .into_inner();
    assert_eq!(first.state, PromotionState::Rejected as i32);
    let before = entries(&mut bob, &p.id).await;
    let second = bob
        .reject(reject(&p.id))
        .await
        .expect("a repeated rejection is OK")
        .into_inner();
    assert_eq!(second, first);
    assert_eq!(entries(&mut bob, &p.id).await, before, "nothing recorded");
    let other = w
        .server
        .client("dave")
        .await
        .reject(reject(&p.id))
        .await
        .expect_err("dave did not reject it");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    // Rejected is not cancelled: bob's cancel is a new call, refused.
    let cancelled = bob.cancel(cancel(&p.id)).await.expect_err("not open");
    assert_eq!(cancelled.code(), Code::FailedPrecondition, "{cancelled:?}");

    let q = candidate(&w, &mut alice, 2, "").await;
    let first = alice
        .cancel(cancel(&q.id))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(first.state, PromotionState::Cancelled as i32);
    let before = entries(&mut alice, &q.id).await;
    let second = alice
        .cancel(cancel(&q.id))
        .await
        .expect("a repeated cancellation is OK")
        .into_inner();
    assert_eq!(second, first);
    assert_eq!(entries(&mut alice, &q.id).await, before, "nothing recorded");
    let other = bob.cancel(cancel(&q.id)).await.expect_err("bob did not");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert_eq!(get(&mut alice, &q.id).await, first);
}

#[tokio::test]
async fn list_promotions_finds_the_callers_own_promotion_by_request_id() {
    let w = World::start().await;
    let mut alice = w.server.client("alice").await;
    let mut carol = w.server.client("carol").await;
    let mine = candidate(&w, &mut alice, 1, "deploy-42").await;
    let hers = candidate(&w, &mut carol, 2, "deploy-42").await;
    assert_ne!(mine.id, hers.id, "the key is scoped to the principal");

    let by_key = |request_id: &str| ListPromotionsRequest {
        request_id: request_id.to_owned(),
        ..Default::default()
    };
    let ids = |r: pb::ListPromotionsResponse| {
        assert!(r.next_page_token.is_empty());
        r.promotions.into_iter().map(|p| p.id).collect::<Vec<_>>()
    };
    let found = alice
        .list_promotions(by_key("deploy-42"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(found.promotions, [get(&mut alice, &mine.id).await]);
    assert_eq!(found.promotions[0].request_id, "deploy-42");
    let found = carol
        .list_promotions(by_key("deploy-42"))
        .await
        .expect("list");
    assert_eq!(ids(found.into_inner()), [hers.id.as_str()]);
    // Not bob's key, nor a key alice never used.
    let bob = w
        .server
        .client("bob")
        .await
        .list_promotions(by_key("deploy-42"))
        .await
        .expect("list");
    assert!(ids(bob.into_inner()).is_empty());
    let none = alice
        .list_promotions(by_key("deploy-43"))
        .await
        .expect("list");
    assert!(ids(none.into_inner()).is_empty());
    // The other filters still apply.
    let pending = alice
        .list_promotions(ListPromotionsRequest {
            state: PromotionState::PendingApproval as i32,
            environment: "production".into(),
            ..by_key("deploy-42")
        })
        .await
        .expect("list");
    assert_eq!(ids(pending.into_inner()), [mine.id.as_str()]);
    let rejected = alice
        .list_promotions(ListPromotionsRequest {
            state: PromotionState::Rejected as i32,
            ..by_key("deploy-42")
        })
        .await
        .expect("list");
    assert!(ids(rejected.into_inner()).is_empty());
    // Validated as RequestPromotion validates it.
    let bad = alice
        .list_promotions(by_key("line\nbreak"))
        .await
        .expect_err("a control character");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("request_id"), "{bad:?}");

    // Once ended, the key still finds it.
    w.server
        .client("bob")
        .await
        .reject(reject(&mine.id))
        .await
        .expect("reject");
    let found = alice
        .list_promotions(by_key("deploy-42"))
        .await
        .expect("list");
    let found = found.into_inner().promotions;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].state, PromotionState::Rejected as i32);
}
