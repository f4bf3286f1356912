//! No silent step backwards, no panic from a timestamp, and the listings a
//! release manager works from (newest first, awaiting me), against the real
//! registry and a real server.

mod support;

use prodgate::pb::{
    AuditAction, GetDeployedRequest, HistoryRequest, ListPromotionsRequest, PromotionState,
};
use support::{World, actions_of, approve, get, request_to};

fn state(p: &prodgate::pb::Promotion) -> PromotionState {
    PromotionState::try_from(p.state).expect("known state")
}

#[tokio::test]
async fn a_stale_approval_is_superseded_and_the_tag_stays() {
    let w = World::start().await;
    let repo = w.repo("team/app");
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;
    let old = w
        .registry
        .push_image("team/app", Some("staging"), 1024, 1)
        .await;
    let stale = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request the old image")
        .into_inner();
    let new = w
        .registry
        .push_image("team/app", Some("staging"), 1024, 2)
        .await;
    let fresh = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request the new image")
        .into_inner();
    assert_eq!(
        (stale.digest.as_str(), fresh.digest.as_str()),
        (old.as_str(), new.as_str())
    );
    let done = bob
        .approve(approve(&fresh.id))
        .await
        .expect("approve the new one")
        .into_inner();
    assert_eq!(state(&done), PromotionState::Promoted, "{done:?}");

    let superseded = get(&mut alice, &stale.id).await;
    assert_eq!(state(&superseded), PromotionState::Superseded);
    assert_eq!(superseded.superseded_by, fresh.id);
    assert_eq!(
        actions_of(&mut alice, &stale.id).await,
        [AuditAction::Requested, AuditAction::Superseded]
    );
    let entry = support::history(
        &mut alice,
        HistoryRequest {
            promotion_id: stale.id.clone(),
            ..Default::default()
        },
    )
    .await
    .pop()
    .expect("the supersession entry");
    assert_eq!(entry.actor, "prodgate");
    assert!(
        entry.comment.contains(&format!("promotion {}", fresh.id)),
        "{entry:?}"
    );

    // Approving the stale one is refused and moves nothing.
    let refused = bob
        .approve(approve(&stale.id))
        .await
        .expect_err("approving a superseded promotion");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("SUPERSEDED"), "{refused:?}");
    assert_eq!(
        w.registry
            .tag_digest("team/app", "production")
            .await
            .as_deref(),
        Some(new.as_str())
    );
}

#[tokio::test]
async fn timestamps_outside_years_1_to_9999_are_invalid_not_a_panic() {
    let w = World::start().await;
    let repo = w.repo("team/app");
    let mut alice = w.server.client("alice").await;
    let year_10000 = prost_types::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    };
    let e = alice
        .get_deployed(GetDeployedRequest {
            repository: repo.clone(),
            environment: "production".into(),
            at: Some(year_10000),
        })
        .await
        .expect_err("year 10000");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("at:"), "{e:?}");
    let e = alice
        .history(HistoryRequest {
            since: Some(prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect_err("before year 1");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // The server is fine: the last moment of 9999 is a valid question.
    let e = alice
        .get_deployed(GetDeployedRequest {
            repository: repo,
            environment: "production".into(),
            at: Some(prost_types::Timestamp {
                seconds: 253_402_300_799,
                nanos: 999_999_999,
            }),
        })
        .await
        .expect_err("nothing deployed");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn listings_newest_first_and_awaiting_me() {
    let w = World::start().await;
    let repo = w.repo("team/app");
    w.registry
        .push_image("team/app", Some("staging"), 1024, 1)
        .await;
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;
    let mut ids = Vec::new();
    for requester in ["alice", "bob", "alice"] {
        let p = w
            .server
            .client(requester)
            .await
            .request_promotion(request_to(&repo, "staging", "production"))
            .await
            .expect("request")
            .into_inner();
        ids.push(p.id);
    }
    let list = |c: &mut support::server::Client, req: ListPromotionsRequest| {
        let mut c = c.clone();
        async move { c.list_promotions(req).await.expect("list").into_inner() }
    };
    let id_list = |r: prodgate::pb::ListPromotionsResponse| {
        r.promotions.into_iter().map(|p| p.id).collect::<Vec<_>>()
    };
    let newest = list(
        &mut alice,
        ListPromotionsRequest {
            newest_first: true,
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(id_list(newest.clone()), [ids[2].clone(), ids[1].clone()]);
    let rest = list(
        &mut alice,
        ListPromotionsRequest {
            newest_first: true,
            page_size: 2,
            page_token: newest.next_page_token,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(id_list(rest.clone()), [ids[0].clone()]);
    assert!(rest.next_page_token.is_empty());

    // bob (release manager) may approve alice's two, not his own.
    let awaiting = ListPromotionsRequest {
        awaiting_me: true,
        ..Default::default()
    };
    let bobs = list(&mut bob, awaiting.clone()).await;
    assert_eq!(id_list(bobs), [ids[0].clone(), ids[2].clone()]);
    // alice is no approver: nothing awaits her.
    assert!(
        list(&mut alice, awaiting.clone())
            .await
            .promotions
            .is_empty()
    );
    // Once bob approved one, it no longer awaits him (it moved the tag and
    // superseded the older pending ones).
    bob.approve(approve(&ids[2])).await.expect("approve");
    assert!(list(&mut bob, awaiting).await.promotions.is_empty());

    // History newest first: the last entry is the supersession of the
    // oldest pending promotion, written with the tag move.
    let h = alice
        .history(HistoryRequest {
            newest_first: true,
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner();
    let all = support::history(&mut alice, HistoryRequest::default()).await;
    assert_eq!(h.entries.first(), all.last());
    assert_eq!(h.entries.len(), 1);
    assert!(!h.next_page_token.is_empty());
    // A `since` in the future matches nothing.
    let future = alice
        .history(HistoryRequest {
            since: Some(prost_types::Timestamp {
                seconds: 253_402_300_000,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("history since the future")
        .into_inner();
    assert!(future.entries.is_empty());
}
