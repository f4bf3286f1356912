//! The richer error model on the wire: a refusal by a gate carries a
//! `google.rpc.PreconditionFailure` (one violation per blocker: type = the
//! gate, subject = the repository or the promotion id), and an
//! INVALID_ARGUMENT a `google.rpc.BadRequest` naming the field. Read back
//! with `tonic_types::StatusExt`, as any client would, from a real
//! `prodgate serve` and a real registry.

mod support;

use prodgate::pb::{
    GetDeployedRequest, ListChecksRequest, PromotionState, RequestPromotionRequest,
};
use support::registry::TestRegistry;
use support::server::{TestServer, principals_toml, registry_toml};
use support::{approve, request_to};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// staging (no approval), production (requires staging), and two
/// environments whose window never opens while the test runs: `night`
/// (nobody approves) and `gated` (requires staging, one approval).
fn config(registry_host: &str) -> String {
    // An hour-long window twelve hours from now, in UTC.
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        / 3600
        + 12)
        % 24;
    let hours = format!("{hour:02}:00-{:02}:00", (hour + 1) % 24);
    format!(
        "{}{}\n\
         [[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n\n\
         [[environment]]\nname = \"production\"\ntag = \"production\"\nrequires = \"staging\"\n\
         approvers = [\"group:release-managers\"]\nrequired_approvals = 1\n\n\
         [[environment]]\nname = \"night\"\ntag = \"night\"\nrequired_approvals = 0\n\
         allowed_hours = \"{hours}\"\ntime_zone = \"UTC\"\n\n\
         [[environment]]\nname = \"gated\"\ntag = \"gated\"\nrequires = \"staging\"\n\
         approvers = [\"group:release-managers\"]\nrequired_approvals = 1\n\
         allowed_hours = \"{hours}\"\ntime_zone = \"UTC\"\n",
        registry_toml(registry_host),
        principals_toml(),
    )
}

/// (type, subject) of every PreconditionFailure violation.
fn violations(e: &Status) -> Vec<(String, String)> {
    e.get_details_precondition_failure()
        .unwrap_or_else(|| panic!("no PreconditionFailure in {e:?}"))
        .violations
        .into_iter()
        .map(|v| {
            assert!(!v.description.is_empty(), "{e:?}");
            (v.r#type, v.subject)
        })
        .collect()
}

/// The field of the one BadRequest violation.
#[track_caller]
fn bad_field(e: &Status) -> String {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let b = e
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {e:?}"));
    assert_eq!(b.field_violations.len(), 1, "{e:?}");
    let v = &b.field_violations[0];
    assert!(
        e.message().starts_with(&v.field) && e.message().ends_with(&v.description),
        "the message names the field and says the description: {e:?}"
    );
    v.field.clone()
}

#[tokio::test]
async fn refusals_name_their_gates_and_bad_fields_their_field() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host));
    let repo = format!("{}/team/app", registry.host);
    registry.push_image("team/app", Some("dev"), 1024, 1).await;
    let mut alice = server.client("alice").await;

    // The prerequisite: staging does not carry what dev points to.
    let e = alice
        .request_promotion(request_to(&repo, "dev", "production"))
        .await
        .expect_err("staging does not carry it");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(violations(&e), [("prerequisite".to_owned(), repo.clone())]);
    let description = &e
        .get_details_precondition_failure()
        .expect("details")
        .violations[0]
        .description;
    assert_eq!(description, e.message(), "the sentence a person reads");

    // INVALID_ARGUMENT, from the conversions and from the handlers alike.
    let e = alice
        .request_promotion(RequestPromotionRequest {
            environment: String::new(),
            ..request_to(&repo, "dev", "production")
        })
        .await
        .expect_err("no environment");
    assert_eq!(bad_field(&e), "environment");
    let e = alice.approve(approve("x")).await.expect_err("not an id");
    assert_eq!(bad_field(&e), "promotion_id");
    let e = alice
        .get_deployed(GetDeployedRequest {
            repository: repo.clone(),
            environment: String::new(),
            at: None,
        })
        .await
        .expect_err("no environment");
    assert_eq!(bad_field(&e), "environment");
    let checks = |digest: &str, page_token: &str| ListChecksRequest {
        repository: repo.clone(),
        digest: digest.to_owned(),
        page_size: 0,
        page_token: page_token.to_owned(),
    };
    let e = alice
        .list_checks(checks("sha256:nothex", ""))
        .await
        .expect_err("a bad digest");
    assert_eq!(bad_field(&e), "digest");
    let digest = format!("sha256:{}", "a".repeat(64));
    let e = alice
        .list_checks(checks(&digest, "forged"))
        .await
        .expect_err("a forged token");
    assert_eq!(bad_field(&e), "page_token");

    // Other refusals carry no gate details.
    let e = alice
        .get_promotion(prodgate::pb::GetPromotionRequest {
            promotion_id: "999".into(),
        })
        .await
        .expect_err("no such promotion");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.get_details_precondition_failure().is_none(), "{e:?}");
    assert!(e.get_details_bad_request().is_none(), "{e:?}");
}

/// Today a closed window refuses the request (or the approval); once the
/// decision moves promotions to WAITING instead, these calls succeed. Either
/// way, a FAILED_PRECONDITION names the window.
#[tokio::test]
async fn a_closed_window_is_named_when_it_refuses() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host));
    let repo = format!("{}/team/app", registry.host);
    registry.push_image("team/app", Some("dev"), 1024, 1).await;
    let mut alice = server.client("alice").await;

    // No approval needed: the request itself meets the window. No promotion
    // exists yet, so the subject is the repository.
    match alice
        .request_promotion(request_to(&repo, "dev", "night"))
        .await
    {
        Err(e) if e.code() == Code::FailedPrecondition => {
            assert!(
                violations(&e).contains(&("window".to_owned(), repo.clone())),
                "{e:?}"
            );
        }
        Err(e) => panic!("{e:?}"),
        Ok(p) => assert_ne!(p.into_inner().state, PromotionState::Promoted as i32),
    }

    // The approval meets it: the subject is the promotion.
    alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    let p = alice
        .request_promotion(request_to(&repo, "staging", "gated"))
        .await
        .expect("request gated")
        .into_inner();
    match server.client("bob").await.approve(approve(&p.id)).await {
        Err(e) if e.code() == Code::FailedPrecondition => {
            assert!(
                violations(&e).contains(&("window".to_owned(), p.id.clone())),
                "{e:?}"
            );
        }
        Err(e) => panic!("{e:?}"),
        Ok(p) => assert_ne!(p.into_inner().state, PromotionState::Promoted as i32),
    }

    // Break-glass by someone the environment does not allow: refused as
    // before (PERMISSION_DENIED), and named.
    let e = alice
        .request_promotion(RequestPromotionRequest {
            break_glass: true,
            ..request_to(&repo, "dev", "night")
        })
        .await
        .expect_err("alice may not break glass");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(violations(&e), [("break_glass".to_owned(), repo.clone())]);
}
