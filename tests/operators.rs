//! What orchestrators and incident reviews rely on: watching a promotion
//! instead of polling, and asking what an environment ran at a moment.

mod support;

use prodgate::pb::{
    ApproveRequest, GetDeployedRequest, PromotionState, RequestPromotionRequest,
    WatchPromotionRequest,
};
use support::World;
use tonic::Code;

fn request(repo: &str) -> RequestPromotionRequest {
    RequestPromotionRequest {
        repository: repo.to_owned(),
        source: "staging".into(),
        environment: "production".into(),
        reason: "operators".into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn watch_streams_every_state_until_terminal() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request(&w.repo("app")))
        .await
        .expect("request")
        .into_inner();
    let mut stream = alice
        .watch_promotion(WatchPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("stream")
        .expect("current state");
    assert_eq!(first.state, PromotionState::PendingApproval as i32);
    w.server
        .client("bob")
        .await
        .approve(ApproveRequest {
            promotion_id: p.id.clone(),
            comment: String::new(),
        })
        .await
        .expect("approve");
    let mut states = vec![first.state];
    while let Some(p) = stream.message().await.expect("stream") {
        states.push(p.state);
    }
    assert_eq!(
        states,
        [
            PromotionState::PendingApproval as i32,
            PromotionState::Approved as i32,
            PromotionState::Promoted as i32
        ]
    );
    // A terminal promotion sends its state and ends.
    let mut again = alice
        .watch_promotion(WatchPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let only = again.message().await.expect("stream").expect("state");
    assert_eq!(only.state, PromotionState::Promoted as i32);
    assert!(again.message().await.expect("stream").is_none());
    let e = alice
        .watch_promotion(WatchPromotionRequest {
            promotion_id: "777".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn get_deployed_answers_for_any_moment() {
    let w = World::start().await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;
    let deployed = |at| GetDeployedRequest {
        repository: repo.clone(),
        environment: "production".into(),
        at,
    };
    let e = alice
        .get_deployed(deployed(None))
        .await
        .expect_err("nothing yet");
    assert_eq!(e.code(), Code::NotFound);

    let mut promoted = Vec::new();
    for seed in [1, 2] {
        let digest = w
            .registry
            .push_image("app", Some("staging"), 1024, seed)
            .await;
        let p = alice
            .request_promotion(request(&repo))
            .await
            .expect("request")
            .into_inner();
        let done = bob
            .approve(ApproveRequest {
                promotion_id: p.id.clone(),
                comment: String::new(),
            })
            .await
            .expect("approve")
            .into_inner();
        assert_eq!(done.state, PromotionState::Promoted as i32);
        promoted.push((digest, done));
    }
    let (a, pa) = &promoted[0];
    let (b, pb) = &promoted[1];
    let before = pa.created_at;
    let between = pb.created_at;
    let e = alice
        .get_deployed(deployed(before))
        .await
        .expect_err("before the first move");
    assert_eq!(e.code(), Code::NotFound);
    let then = alice
        .get_deployed(deployed(between))
        .await
        .expect("between")
        .into_inner();
    assert_eq!(&then.digest, a);
    assert_eq!(then.promotion_id, pa.id);
    assert_eq!(then.since, pa.promoted_at);
    let now = alice
        .get_deployed(deployed(None))
        .await
        .expect("now")
        .into_inner();
    assert_eq!(&now.digest, b);
    assert_eq!(now.promotion_id, pb.id);

    for bad in [
        GetDeployedRequest {
            environment: "moon".into(),
            ..deployed(None)
        },
        GetDeployedRequest {
            repository: "no-host".into(),
            ..deployed(None)
        },
        GetDeployedRequest {
            environment: String::new(),
            ..deployed(None)
        },
    ] {
        let e = alice.get_deployed(bad).await.expect_err("invalid");
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}
