//! EvaluateGates as a dry run: "would a request by me be allowed now, and
//! what would block it?", answered from a real `prodgate serve` and a real
//! registry, recording nothing.

mod support;

use prodgate::pb::{self, EvaluateGatesRequest, GetPolicyRequest, HistoryRequest};
use std::time::Duration;
use support::registry::TestRegistry;
use support::server::{Client, TestServer, standard_config};
use support::{approve, history, request_to, wait_for_state};
use tonic::Code;
use tonic_types::StatusExt;

/// The standard environments, and a project `payments` whose requesters
/// are alice alone.
fn config(registry_host: &str) -> String {
    format!(
        "{}\n[[project]]\nname = \"payments\"\nrepositories = [\"{registry_host}/payments/*\"]\n\
         requesters = [\"alice\"]\n",
        standard_config(registry_host)
    )
}

fn dry_run(repo: &str, source: &str, environment: &str) -> EvaluateGatesRequest {
    EvaluateGatesRequest {
        repository: repo.into(),
        environment: environment.into(),
        source: source.into(),
        ..Default::default()
    }
}

/// Each gate's name and whether it passes, in report order.
fn verdicts(r: &pb::GateReport) -> Vec<(&str, bool)> {
    r.gates
        .iter()
        .map(|g| (g.name.as_str(), g.passed))
        .collect()
}

fn message<'r>(r: &'r pb::GateReport, gate: &str) -> &'r str {
    &r.gates
        .iter()
        .find(|g| g.name == gate)
        .unwrap_or_else(|| panic!("no gate {gate} in {r:?}"))
        .message
}

/// Everything recorded: audit entries and promotions.
async fn recorded(c: &mut Client) -> (usize, usize) {
    let entries = history(c, HistoryRequest::default()).await.len();
    let promotions = c
        .list_promotions(pb::ListPromotionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .promotions
        .len();
    (entries, promotions)
}

#[tokio::test]
async fn a_dry_run_answers_what_a_request_would_meet_and_records_nothing() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host));
    let repo = format!("{}/payments/app", registry.host);
    let staged = registry
        .push_image("payments/app", Some("staging"), 1024, 1)
        .await;
    registry
        .push_image("payments/app", Some("dev"), 1024, 2)
        .await;
    let mut alice = server.client("alice").await;
    let mut mallory = server.client("mallory").await;
    let before = recorded(&mut alice).await;

    // Allowed: only the approval is missing.
    let r = alice
        .evaluate_gates(dry_run(&repo, "staging", "production"))
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(
        verdicts(&r),
        [
            ("requester", true),
            ("prerequisite", true),
            ("noop", true),
            ("approvals", false)
        ]
    );
    assert!(r.ready, "{r:?}");
    assert_eq!(r.project, "payments");
    let running = alice
        .get_policy(GetPolicyRequest::default())
        .await
        .expect("policy")
        .into_inner();
    assert_eq!(r.policy_digest, running.digest);

    // Blocked, every reason at once: mallory is no requester of payments,
    // and dev's digest never reached staging.
    let r = mallory
        .evaluate_gates(dry_run(&repo, "dev", "production"))
        .await
        .expect("a blocked dry run is an answer, not a refusal")
        .into_inner();
    assert_eq!(
        verdicts(&r),
        [
            ("requester", false),
            ("prerequisite", false),
            ("noop", true),
            ("approvals", false)
        ]
    );
    assert!(!r.ready);
    assert!(message(&r, "requester").contains("mallory"), "{r:?}");
    assert!(message(&r, "prerequisite").contains("staging"), "{r:?}");
    // The request itself is refused for the same reasons.
    let e = mallory
        .request_promotion(request_to(&repo, "dev", "production"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = alice
        .request_promotion(request_to(&repo, "dev", "production"))
        .await
        .unwrap_err();
    assert_eq!(
        e.get_details_error_info().map(|i| i.reason).as_deref(),
        Some("PREREQUISITE_NOT_MET"),
        "{e:?}"
    );
    assert_eq!(
        recorded(&mut alice).await,
        before,
        "dry runs and refusals record nothing"
    );

    // Once production carries the digest, a dry run says a request would
    // change nothing, and which promotion put it there.
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
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
        pb::PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    let after = recorded(&mut alice).await;
    let r = alice
        .evaluate_gates(dry_run(&repo, &staged, "production"))
        .await
        .expect("dry run by digest")
        .into_inner();
    assert_eq!(
        verdicts(&r)[..3],
        [("requester", true), ("prerequisite", true), ("noop", false)]
    );
    assert!(
        message(&r, "noop").contains(&format!("promotion {}", p.id)),
        "{r:?}"
    );
    assert_eq!(recorded(&mut alice).await, after);
}

#[tokio::test]
async fn a_dry_run_is_refused_only_where_no_gate_could_say_why() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host));
    let repo = format!("{}/payments/app", registry.host);
    registry
        .push_image("payments/app", Some("staging"), 1024, 1)
        .await;
    let mut alice = server.client("alice").await;
    let reason = |e: &tonic::Status| {
        e.get_details_error_info()
            .map(|i| (i.reason, i.metadata))
            .unwrap_or_else(|| panic!("no ErrorInfo on {e:?}"))
    };
    let field = |e: &tonic::Status| {
        e.get_details_bad_request()
            .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
            .unwrap_or_else(|| panic!("no BadRequest on {e:?}"))
    };

    // Both forms at once, or a dry run missing a field: the field named.
    let both = EvaluateGatesRequest {
        promotion_id: "1".into(),
        ..dry_run(&repo, "staging", "production")
    };
    let e = alice.evaluate_gates(both).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(reason(&e).0, "INVALID_FIELD");
    assert_eq!(field(&e), "repository");
    let e = alice
        .evaluate_gates(dry_run(&repo, "", "production"))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "source");
    let e = alice
        .evaluate_gates(EvaluateGatesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(field(&e), "promotion_id");

    // What a request would be refused for before any gate.
    let e = alice
        .evaluate_gates(dry_run(&repo, "no-such-tag", "production"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (r, m) = reason(&e);
    assert_eq!(r, "SOURCE_NOT_FOUND");
    assert!(m["source"].contains("no-such-tag"), "{m:?}");
    let e = alice
        .evaluate_gates(dry_run(&repo, "staging", "moon"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e).0, "UNKNOWN_ENVIRONMENT");
}
