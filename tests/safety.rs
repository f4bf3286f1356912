//! No silent step backwards, no panic from a timestamp, and the listings a
//! release manager works from (newest first, awaiting me), against the real
//! registry and a real server.

mod support;

use prodgate::pb::{
    ApproveRequest, AuditAction, CancelRequest, EvaluateGatesRequest, GetDeployedRequest,
    GetPolicyRequest, GetPromotionRequest, HistoryRequest, ListChecksRequest,
    ListPromotionsRequest, PromotionState, RequestPromotionRequest,
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
    let year_10000 = prodgate::pb::Timestamp {
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
            since: Some(prodgate::pb::Timestamp {
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
            at: Some(prodgate::pb::Timestamp {
                seconds: 253_402_300_799,
                nanos: 999_999_999,
            }),
        })
        .await
        .expect_err("nothing deployed");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn ids_beyond_64_bits_nul_filters_and_huge_names_answer_alike_on_every_backend() {
    let w = World::start().await;
    let repo = w.repo("team/app");
    let mut alice = w.server.client("alice").await;
    w.registry
        .push_image("team/app", Some("staging"), 1024, 1)
        .await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();

    // An id no promotion can have (beyond BIGINT, still a u64): NOT_FOUND,
    // not UNAVAILABLE ("retry") as PostgreSQL answered.
    for id in ["9223372036854775808", "18446744073709551615"] {
        let e = alice
            .get_promotion(GetPromotionRequest {
                promotion_id: id.into(),
            })
            .await
            .expect_err(id);
        assert_eq!(e.code(), tonic::Code::NotFound, "{id}: {e:?}");
        let e = alice
            .evaluate_gates(EvaluateGatesRequest {
                promotion_id: id.into(),
                ..Default::default()
            })
            .await
            .expect_err(id);
        assert_eq!(e.code(), tonic::Code::NotFound, "{id}: {e:?}");
        let e = alice
            .cancel(CancelRequest {
                promotion_id: id.into(),
                ..Default::default()
            })
            .await
            .expect_err(id);
        assert_eq!(e.code(), tonic::Code::NotFound, "{id}: {e:?}");
        let mut bob = w.server.client("bob").await;
        let e = bob
            .approve(ApproveRequest {
                promotion_id: id.into(),
                ..approve(&p.id)
            })
            .await
            .expect_err(id);
        assert_eq!(e.code(), tonic::Code::NotFound, "{id}: {e:?}");
        let h = alice
            .history(HistoryRequest {
                promotion_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"))
            .into_inner();
        assert!(h.entries.is_empty(), "{id}: {h:?}");
    }

    // A NUL byte (or any control character) in a name filter: INVALID_ARGUMENT
    // naming the field, not UNAVAILABLE on one backend and an empty OK on
    // the other.
    for bad in ["production\0", "\0", "prod\nuction"] {
        let e = alice
            .list_promotions(ListPromotionsRequest {
                environment: bad.into(),
                ..Default::default()
            })
            .await
            .expect_err(bad);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().starts_with("environment: "), "{e:?}");
        let e = alice
            .history(HistoryRequest {
                environment: bad.into(),
                ..Default::default()
            })
            .await
            .expect_err(bad);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().starts_with("environment: "), "{e:?}");
    }
    let e = alice
        .history(HistoryRequest {
            repository: format!("{repo}\0"),
            ..Default::default()
        })
        .await
        .expect_err("NUL in a repository filter");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Values far beyond any name are echoed cut short: a 20,000-byte
    // environment made the status exceed gRPC's 16 KiB metadata limit.
    let huge = "e".repeat(20_000);
    let short = |e: &tonic::Status, what: &str| {
        assert!(
            e.message().len() < 1024,
            "{what}: {} bytes",
            e.message().len()
        );
        assert!(e.message().contains("eeee…"), "{what}: {}", e.message());
    };
    let e = alice
        .get_deployed(GetDeployedRequest {
            repository: repo.clone(),
            environment: huge.clone(),
            at: None,
        })
        .await
        .expect_err("huge environment");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    short(&e, "GetDeployed environment");
    let e = alice
        .request_promotion(RequestPromotionRequest {
            source: huge.clone(),
            ..request_to(&repo, "staging", "production")
        })
        .await
        .expect_err("huge source tag");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    short(&e, "RequestPromotion source");
    let e = alice
        .list_checks(ListChecksRequest {
            repository: repo.clone(),
            digest: huge.clone(),
            ..Default::default()
        })
        .await
        .expect_err("huge digest");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    short(&e, "ListChecks digest");
    let e = alice
        .get_policy(GetPolicyRequest {
            digest: huge.clone(),
        })
        .await
        .expect_err("huge policy digest");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    short(&e, "GetPolicy digest");
    // A filter no name matches is an empty answer, not an error.
    let h = alice
        .history(HistoryRequest {
            environment: huge,
            ..Default::default()
        })
        .await
        .expect("huge environment filter")
        .into_inner();
    assert!(h.entries.is_empty());
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
            since: Some(prodgate::pb::Timestamp {
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
