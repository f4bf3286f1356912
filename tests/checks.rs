//! Validation checks reported by pipelines: who may report, the latest
//! report per check, and their audit entries (attributes in the hash),
//! against a real server.

mod support;

use prodgate::pb::{
    AuditAction, CheckStatus, HistoryRequest, ListChecksRequest, ReportCheckRequest,
    VerifyAuditLogRequest,
};
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{expected_hash, history};
use tonic::Code;

fn report(repo: &str, digest: &str, check: &str, status: CheckStatus) -> ReportCheckRequest {
    ReportCheckRequest {
        repository: repo.to_owned(),
        digest: digest.to_owned(),
        check: check.to_owned(),
        status: status as i32,
        details_url: format!("https://ci.example/{check}/42"),
        comment: format!("{check} run 42"),
    }
}

#[tokio::test]
async fn check_reporters_report_and_the_latest_report_per_check_counts() {
    let registry = TestRegistry::start().await;
    // Top-level keys come before the first table.
    let server = TestServer::start(&format!(
        "check_reporters = [\"alice\"]\n{}",
        standard_config(&registry.host)
    ));
    let repo = format!("{}/team/app", registry.host);
    let digest = format!("sha256:{}", "d".repeat(64));
    let mut alice = server.client("alice").await;
    let mut mallory = server.client("mallory").await;

    // Not a reporter: refused, nothing recorded.
    let e = mallory
        .report_check(report(&repo, &digest, "e2e", CheckStatus::Passed))
        .await
        .expect_err("mallory is no check reporter");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let of_repo = HistoryRequest {
        repository: repo.clone(),
        ..Default::default()
    };
    assert!(history(&mut alice, of_repo.clone()).await.is_empty());
    // Malformed reports name the field.
    for (bad, field) in [
        (report(&repo, &digest, "E2E!", CheckStatus::Passed), "check"),
        (
            report(&repo, &digest, "e2e", CheckStatus::Unspecified),
            "status",
        ),
        (
            report(&repo, "sha256:abc", "e2e", CheckStatus::Passed),
            "digest",
        ),
    ] {
        let e = alice.report_check(bad).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{e:?}");
    }

    let first = alice
        .report_check(report(&repo, &digest, "e2e", CheckStatus::Failed))
        .await
        .expect("report e2e failed")
        .into_inner();
    assert_eq!(first.reported_by, "alice");
    alice
        .report_check(report(&repo, &digest, "scan", CheckStatus::Passed))
        .await
        .expect("report scan");
    alice
        .report_check(report(&repo, &digest, "e2e", CheckStatus::Passed))
        .await
        .expect("report e2e passed");
    let mut checks = alice
        .list_checks(ListChecksRequest {
            repository: repo.clone(),
            digest: digest.clone(),
        })
        .await
        .expect("list checks")
        .into_inner()
        .checks;
    checks.sort_by(|a, b| a.check.cmp(&b.check));
    let got: Vec<(&str, i32)> = checks
        .iter()
        .map(|c| (c.check.as_str(), c.status))
        .collect();
    assert_eq!(
        got,
        [
            ("e2e", CheckStatus::Passed as i32),
            ("scan", CheckStatus::Passed as i32)
        ]
    );
    assert_eq!(checks[0].details_url, "https://ci.example/e2e/42");
    let at = |t: &Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    assert!(
        at(&checks[0].time) > at(&first.time),
        "the latest report counts"
    );

    // Each report is an audit entry about no promotion, its facts in
    // attributes that the documented hash covers.
    let entries = history(&mut alice, of_repo).await;
    assert_eq!(entries.len(), 3);
    for e in &entries {
        assert_eq!(e.action, AuditAction::CheckReported as i32);
        assert_eq!((e.promotion_id.as_str(), e.environment.as_str()), ("", ""));
        assert_eq!(e.repository, repo);
        assert_eq!(e.digest, digest);
        assert_eq!(e.actor, "alice");
        assert_eq!(e.hash, expected_hash(e), "entry {}", e.sequence);
    }
    let last = entries.last().expect("an entry");
    assert_eq!(last.attributes["check"], "e2e");
    assert_eq!(last.attributes["status"], "passed");
    assert_eq!(last.attributes["url"], "https://ci.example/e2e/42");
    let v = alice
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.ok, "{v:?}");
    // Another digest has no reports.
    let none = alice
        .list_checks(ListChecksRequest {
            repository: repo,
            digest: format!("sha256:{}", "e".repeat(64)),
        })
        .await
        .expect("list")
        .into_inner();
    assert!(none.checks.is_empty());
}

/// A config whose production needs the `e2e` check, a release manager among
/// its approvers, and 60 s of soak in staging; alice reports checks.
fn gated_config(registry_host: &str, extra: &str) -> String {
    format!(
        "check_reporters = [\"alice\"]\n{}{}\n\
         [[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n\n\
         [[environment]]\nname = \"production\"\ntag = \"production\"\nrequires = \"staging\"\n\
         approvers = [\"group:release-managers\", \"carol\"]\nrequired_approvals = 1\n\
         required_checks = [\"e2e\"]\n{extra}\n",
        support::server::registry_toml(registry_host),
        support::server::principals_toml(),
    )
}

#[tokio::test]
async fn a_missing_or_failed_check_blocks_the_final_approval_until_it_passes() {
    use prodgate::pb::PromotionState;
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&gated_config(&registry.host, ""));
    let repo = format!("{}/team/app", registry.host);
    registry.push_image("team/app", Some("dev"), 1024, 1).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let staged = alice
        .request_promotion(support::request_to(&repo, "dev", "staging"))
        .await
        .expect("staging")
        .into_inner();
    assert_eq!(staged.state, PromotionState::Promoted as i32, "{staged:?}");
    let p = alice
        .request_promotion(support::request_to(&repo, "staging", "production"))
        .await
        .expect("request production")
        .into_inner();
    let entries_before = history(&mut alice, HistoryRequest::default()).await.len();
    // No report yet: refused, naming the check and the digest; nothing recorded.
    let e = bob
        .approve(support::approve(&p.id))
        .await
        .expect_err("no e2e report");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("`e2e`"), "{e:?}");
    assert!(e.message().contains(&p.digest), "{e:?}");
    assert_eq!(
        history(&mut alice, HistoryRequest::default()).await.len(),
        entries_before
    );
    // A FAILED report still blocks.
    alice
        .report_check(report(&repo, &p.digest, "e2e", CheckStatus::Failed))
        .await
        .expect("report failed");
    let e = bob
        .approve(support::approve(&p.id))
        .await
        .expect_err("e2e failed");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("FAILED"), "{e:?}");
    // EvaluateGates says what blocks, without changing anything.
    let gates = bob
        .evaluate_gates(prodgate::pb::EvaluateGatesRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("evaluate gates")
        .into_inner();
    assert!(!gates.ready, "{gates:?}");
    let gate = |name: &str| {
        gates
            .gates
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no {name} gate in {gates:?}"))
    };
    assert!(!gate("checks").passed && gate("checks").message.contains("FAILED"));
    assert!(!gate("approvals").passed, "bob has not approved yet");
    // The CLI shows the same, one line per gate.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(["gates", &p.id, "--server"])
        .arg(format!("http://{}", server.addr))
        .env("PRODGATE_TOKEN", support::server::token("bob"))
        .output()
        .expect("run prodgate gates");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("BLOCK checks"), "{text}");
    assert!(text.contains("not ready"), "{text}");
    // A later PASSED unblocks, and the tag moves.
    alice
        .report_check(report(&repo, &p.digest, "e2e", CheckStatus::Passed))
        .await
        .expect("report passed");
    let ready = bob
        .evaluate_gates(prodgate::pb::EvaluateGatesRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("evaluate gates")
        .into_inner();
    assert!(ready.ready, "only the approval count blocks now: {ready:?}");
    let done = bob
        .approve(support::approve(&p.id))
        .await
        .expect("approve once e2e passed")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    assert_eq!(
        registry
            .tag_digest("team/app", "production")
            .await
            .as_deref(),
        Some(p.digest.as_str())
    );
}

/// A server whose production (with `production_keys`) is frozen for the
/// hour around now, and a production promotion in it that passed staging and
/// its `e2e` check.
async fn frozen_candidate(
    production_keys: &str,
) -> (TestRegistry, TestServer, prodgate::pb::Promotion) {
    let registry = TestRegistry::start().await;
    let now = std::time::SystemTime::now();
    let rfc = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let extra = format!(
        "{production_keys}\n[[freeze]]\nenvironments = [\"production\"]\nstart = \"{}\"\nend = \"{}\"\nreason = \"year-end freeze\"\n",
        rfc(now - std::time::Duration::from_secs(3600)),
        rfc(now + std::time::Duration::from_secs(3600)),
    );
    let server = TestServer::start(&gated_config(&registry.host, &extra));
    let repo = format!("{}/team/app", registry.host);
    registry.push_image("team/app", Some("dev"), 1024, 1).await;
    let mut alice = server.client("alice").await;
    alice
        .request_promotion(support::request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    let p = alice
        .request_promotion(support::request_to(&repo, "staging", "production"))
        .await
        .expect("request production")
        .into_inner();
    alice
        .report_check(report(&repo, &p.digest, "e2e", CheckStatus::Passed))
        .await
        .expect("report passed");
    (registry, server, p)
}

#[tokio::test]
async fn a_freeze_and_soak_block_naming_each_blocker() {
    // A soak far longer than the test.
    let (_registry, server, p) = frozen_candidate("min_soak = \"1h\"\n").await;
    let e = server
        .client("bob")
        .await
        .approve(support::approve(&p.id))
        .await
        .expect_err("frozen and not soaked");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let m = e.message();
    assert!(m.contains("soak:") && m.contains("left"), "{m}");
    assert!(
        m.contains("window:") && m.contains("year-end freeze"),
        "{m}"
    );
    assert!(
        !m.contains("checks:"),
        "the passed check is not a blocker: {m}"
    );
}

#[tokio::test]
async fn break_glass_overrides_a_freeze_only_for_its_principals_and_is_marked() {
    use prodgate::pb::{ApproveRequest, PromotionState};
    let (_registry, server, p) = frozen_candidate("break_glass = [\"erin\"]\n").await;
    let mut alice = server.client("alice").await;
    let glass = |comment: &str| ApproveRequest {
        promotion_id: p.id.clone(),
        comment: comment.to_owned(),
        break_glass: true,
    };
    let mut bob = server.client("bob").await;
    let e = bob
        .approve(support::approve(&p.id))
        .await
        .expect_err("frozen");
    assert!(e.message().contains("year-end freeze"), "{e:?}");
    // bob is an approver but not a break-glass principal.
    let e = bob
        .approve(glass("hotfix for INC-7"))
        .await
        .expect_err("bob may not break glass");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut erin = server.client("erin").await;
    let e = erin
        .approve(glass(""))
        .await
        .expect_err("break glass needs a reason");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("comment"), "{e:?}");
    let done = erin
        .approve(glass("hotfix for INC-7"))
        .await
        .expect("erin breaks glass")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    assert!(done.break_glass);
    let entries = history(
        &mut alice,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let approved = entries
        .iter()
        .find(|e| e.action == AuditAction::Approved as i32)
        .expect("the approval");
    assert_eq!(approved.actor, "erin");
    assert_eq!(approved.attributes["break_glass"], "true");
    assert_eq!(approved.attributes["overridden"], "window");
    assert_eq!(approved.hash, expected_hash(approved));
}
