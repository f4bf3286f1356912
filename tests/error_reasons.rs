//! Every refusal carries a stable reason: `google.rpc.ErrorInfo` (domain
//! `prodgate`, reason = an `ErrorReason` name without its prefix, snake_case
//! metadata), read back with `tonic_types::StatusExt` as any client would,
//! from a real `prodgate serve` and a real registry.

mod support;

use prodgate::pb::{
    self, CancelRequest, GetPromotionRequest, ListPromotionsRequest, RequestPromotionRequest,
};
use std::collections::HashMap;
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{approve, request_to};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The ErrorInfo of `e`, checked for the domain, and its reason and metadata.
fn info(e: &Status) -> (String, HashMap<String, String>) {
    let i = e
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {e:?}"));
    assert_eq!(i.domain, "prodgate", "{e:?}");
    let known = pb::ErrorReason::from_str_name(&format!("ERROR_REASON_{}", i.reason));
    assert!(known.is_some(), "{} is not an ErrorReason", i.reason);
    (i.reason, i.metadata)
}

#[tokio::test]
async fn each_refusal_names_its_reason_and_the_facts_to_act_on() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&standard_config(&registry.host));
    let repo = format!("{}/team/app", registry.host);
    let digest = registry
        .push_image("team/app", Some("staging"), 1024, 1)
        .await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;

    // SOURCE_NOT_FOUND
    let e = alice
        .request_promotion(request_to(&repo, "no-such-tag", "production"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let (reason, m) = info(&e);
    assert_eq!(reason, "SOURCE_NOT_FOUND");
    assert!(m["source"].contains("no-such-tag"), "{m:?}");

    // PROMOTION_NOT_FOUND
    let e = alice
        .get_promotion(GetPromotionRequest {
            promotion_id: "999".into(),
        })
        .await
        .unwrap_err();
    let (reason, m) = info(&e);
    assert_eq!(
        (reason.as_str(), m["promotion_id"].as_str()),
        ("PROMOTION_NOT_FOUND", "999")
    );

    // UNKNOWN_ENVIRONMENT, with the BadRequest naming the field.
    let e = alice
        .request_promotion(request_to(&repo, "staging", "moon"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let (reason, m) = info(&e);
    assert_eq!(
        (reason.as_str(), m["environment"].as_str()),
        ("UNKNOWN_ENVIRONMENT", "moon")
    );
    let bad = e.get_details_bad_request().expect("a BadRequest");
    assert_eq!(bad.field_violations[0].field, "environment");

    // UNKNOWN_REGISTRY
    let e = alice
        .request_promotion(request_to(
            "elsewhere.test/team/app",
            "staging",
            "production",
        ))
        .await
        .unwrap_err();
    let (reason, m) = info(&e);
    assert_eq!(
        (reason.as_str(), m["registry"].as_str()),
        ("UNKNOWN_REGISTRY", "elsewhere.test")
    );

    // INVALID_FIELD
    let e = alice
        .list_promotions(ListPromotionsRequest {
            page_size: 100_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let (reason, m) = info(&e);
    assert_eq!(
        (reason.as_str(), m["field"].as_str()),
        ("INVALID_FIELD", "page_size")
    );

    // A promotion, then the refusals about it.
    let p = alice
        .request_promotion(RequestPromotionRequest {
            request_id: "rel-1".into(),
            ..request_to(&repo, "staging", "prod2")
        })
        .await
        .expect("request")
        .into_inner();

    // REQUEST_ID_CONFLICT
    let e = alice
        .request_promotion(RequestPromotionRequest {
            request_id: "rel-1".into(),
            reason: "another reason".into(),
            ..request_to(&repo, "staging", "prod2")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let (reason, m) = info(&e);
    assert_eq!(reason, "REQUEST_ID_CONFLICT");
    assert_eq!(
        (m["promotion_id"].as_str(), m["request_id"].as_str()),
        (p.id.as_str(), "rel-1")
    );

    // SELF_APPROVAL (rita requests, rita approves) and NOT_APPROVER.
    let mut rita = server.client("rita").await;
    let own = rita
        .request_promotion(request_to(&repo, "staging", "prod2"))
        .await
        .expect("rita requests")
        .into_inner();
    let e = rita.approve(approve(&own.id)).await.unwrap_err();
    let (reason, m) = info(&e);
    assert_eq!(
        (reason.as_str(), m["principal"].as_str()),
        ("SELF_APPROVAL", "rita")
    );
    let e = server
        .client("mallory")
        .await
        .approve(approve(&p.id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let (reason, m) = info(&e);
    assert_eq!(
        (reason.as_str(), m["environment"].as_str()),
        ("NOT_APPROVER", "prod2")
    );

    // NOT_ALLOWED_TO_CANCEL
    let e = server
        .client("mallory")
        .await
        .cancel(CancelRequest {
            promotion_id: p.id.clone(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(info(&e).0, "NOT_ALLOWED_TO_CANCEL");

    // NOOP and NOT_OPEN: production ships the digest, then a request for it
    // again, and a cancel of the finished promotion.
    let shipped = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request production")
        .into_inner();
    let done = bob
        .approve(approve(&shipped.id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(done.state, pb::PromotionState::Promoted as i32, "{done:?}");
    let e = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .unwrap_err();
    let (reason, m) = info(&e);
    assert_eq!(reason, "NOOP");
    assert_eq!(
        (m["promotion_id"].as_str(), m["digest"].as_str()),
        (shipped.id.as_str(), digest.as_str())
    );
    let e = alice
        .cancel(CancelRequest {
            promotion_id: shipped.id.clone(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let (reason, m) = info(&e);
    assert_eq!(
        (reason.as_str(), m["state"].as_str()),
        ("NOT_OPEN", "PROMOTED")
    );

    // PREREQUISITE_NOT_MET: a new build on dev, never on staging.
    let other = registry.push_image("team/app", Some("dev"), 1024, 2).await;
    let e = alice
        .request_promotion(request_to(&repo, "dev", "production"))
        .await
        .unwrap_err();
    let (reason, m) = info(&e);
    assert_eq!(reason, "PREREQUISITE_NOT_MET");
    assert_eq!(m["environment"], "production");
    assert_eq!(m["requires"], "staging");
    assert_eq!(m["digest"], other);
    // The same reason when the source is the prerequisite's own tag and it
    // does not exist: one reason for "not promoted there yet".
    registry
        .push_image("team/fresh", Some("dev"), 1024, 3)
        .await;
    let fresh = format!("{}/team/fresh", registry.host);
    let e = alice
        .request_promotion(request_to(&fresh, "staging", "production"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let (reason, m) = info(&e);
    assert_eq!(reason, "PREREQUISITE_NOT_MET", "{e:?}");
    assert_eq!(
        (m["requires"].as_str(), m["digest"].as_str()),
        ("staging", "")
    );
    assert!(e.message().contains("does not exist"), "{e:?}");

    // TOKEN_INVALID
    let e = server
        .client_with_token("not-a-token")
        .await
        .list_promotions(ListPromotionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let (reason, m) = info(&e);
    assert_eq!(
        (reason.as_str(), m["check"].as_str()),
        ("TOKEN_INVALID", "unknown_token")
    );
}
