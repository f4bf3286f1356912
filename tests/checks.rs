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
            ..Default::default()
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
    let at = |t: &Option<prodgate::pb::Timestamp>| t.map(|t| (t.seconds, t.nanos));
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
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(none.checks.is_empty());
}

/// A server where alice reports checks, the repository and a digest.
async fn reporting() -> (TestRegistry, TestServer, String, String) {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&format!(
        "check_reporters = [\"alice\"]\n{}",
        standard_config(&registry.host)
    ));
    let repo = format!("{}/team/app", registry.host);
    let digest = format!("sha256:{}", "d".repeat(64));
    (registry, server, repo, digest)
}

#[tokio::test]
async fn a_digest_takes_at_most_max_checks_per_digest_distinct_names() {
    let (_registry, server, repo, digest) = reporting().await;
    let mut alice = server.client("alice").await;
    for i in 0..64 {
        alice
            .report_check(report(
                &repo,
                &digest,
                &format!("c{i:02}"),
                CheckStatus::Passed,
            ))
            .await
            .unwrap_or_else(|e| panic!("check {i}: {e:?}"));
    }
    let of_repo = HistoryRequest {
        repository: repo.clone(),
        ..Default::default()
    };
    assert_eq!(history(&mut alice, of_repo.clone()).await.len(), 64);
    // The 65th distinct name is refused, naming the limit, the repository
    // and the digest; nothing is recorded.
    let e = alice
        .report_check(report(&repo, &digest, "c64", CheckStatus::Passed))
        .await
        .expect_err("a 65th check name");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    for part in ["max_checks_per_digest = 64", repo.as_str(), digest.as_str()] {
        assert!(e.message().contains(part), "{part}: {e:?}");
    }
    assert_eq!(history(&mut alice, of_repo.clone()).await.len(), 64);
    // A known name may still be reported again, and its latest report counts.
    let again = alice
        .report_check(report(&repo, &digest, "c07", CheckStatus::Failed))
        .await
        .expect("re-report c07")
        .into_inner();
    assert_eq!(again.status, CheckStatus::Failed as i32);
    assert_eq!(history(&mut alice, of_repo).await.len(), 65);
    let checks = all_checks(&mut alice, &repo, &digest, 0).await;
    assert_eq!(checks.len(), 64);
    let c07 = checks.iter().find(|c| c.check == "c07").expect("c07");
    assert_eq!(c07.status, CheckStatus::Failed as i32);
    // The cap is per digest.
    alice
        .report_check(report(
            &repo,
            &format!("sha256:{}", "e".repeat(64)),
            "c64",
            CheckStatus::Passed,
        ))
        .await
        .expect("another digest has room");
}

#[tokio::test]
async fn concurrent_new_names_cannot_overrun_a_configured_limit() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&format!(
        "check_reporters = [\"alice\"]\nmax_checks_per_digest = 3\n{}",
        standard_config(&registry.host)
    ));
    let repo = format!("{}/team/app", registry.host);
    let digest = format!("sha256:{}", "d".repeat(64));
    let alice = server.client("alice").await;
    for n in ["a", "b"] {
        alice
            .clone()
            .report_check(report(&repo, &digest, n, CheckStatus::Passed))
            .await
            .expect("room for it");
    }
    // Ten new names at once for the last place: one gets it.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (mut c, req) = (
            alice.clone(),
            report(&repo, &digest, &format!("new{i}"), CheckStatus::Passed),
        );
        calls.spawn(async move { c.report_check(req).await });
    }
    let mut accepted = 0;
    while let Some(r) = calls.join_next().await {
        match r.expect("call task") {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("max_checks_per_digest = 3"), "{e:?}");
            }
        }
    }
    assert_eq!(accepted, 1);
    let mut alice = alice;
    assert_eq!(all_checks(&mut alice, &repo, &digest, 0).await.len(), 3);
}

/// Every check of `digest`, following page tokens; asserts every page but
/// the last is full.
async fn all_checks(
    c: &mut support::server::Client,
    repo: &str,
    digest: &str,
    page_size: i32,
) -> Vec<prodgate::pb::CheckResult> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_checks(ListChecksRequest {
                repository: repo.to_owned(),
                digest: digest.to_owned(),
                page_size,
                page_token: token.clone(),
            })
            .await
            .expect("list checks")
            .into_inner();
        let last = page.next_page_token.is_empty();
        if page_size > 0 && !last {
            assert_eq!(page.checks.len(), page_size as usize, "a full page");
        }
        all.extend(page.checks);
        if last {
            return all;
        }
        assert_ne!(page.next_page_token, token, "the token advances");
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn list_checks_pages_by_name_and_refuses_foreign_tokens() {
    let (_registry, server, repo, digest) = reporting().await;
    let mut alice = server.client("alice").await;
    let names = ["zz", "a-b", "ab", "m", "e2e", "a.c", "scan"];
    for n in names {
        alice
            .report_check(report(&repo, &digest, n, CheckStatus::Passed))
            .await
            .expect("report");
    }
    let mut sorted = names.map(str::to_owned).to_vec();
    sorted.sort();
    for size in [1, 3, 7, 0, 1000] {
        let got: Vec<String> = all_checks(&mut alice, &repo, &digest, size)
            .await
            .into_iter()
            .map(|c| c.check)
            .collect();
        assert_eq!(got, sorted, "page_size {size}: each once, by name");
    }
    let first = alice
        .list_checks(ListChecksRequest {
            repository: repo.clone(),
            digest: digest.clone(),
            page_size: 3,
            ..Default::default()
        })
        .await
        .expect("first page")
        .into_inner();
    assert_eq!(first.checks.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let list = |digest: &str, page_size: i32, page_token: &str| ListChecksRequest {
        repository: repo.clone(),
        digest: digest.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
    };
    let other = format!("sha256:{}", "e".repeat(64));
    for (bad, field) in [
        (list(&digest, 3, "not-a-token"), "page_token"),
        (list(&other, 3, &first.next_page_token), "page_token"),
        (list(&digest, -1, ""), "page_size"),
        (list(&digest, 1001, ""), "page_size"),
    ] {
        let e = alice.list_checks(bad).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{e:?}");
    }
}

#[tokio::test]
async fn details_url_must_be_http_or_https() {
    let (_registry, server, repo, digest) = reporting().await;
    let mut alice = server.client("alice").await;
    let with_url = |url: &str| ReportCheckRequest {
        details_url: url.to_owned(),
        ..report(&repo, &digest, "e2e", CheckStatus::Passed)
    };
    for bad in [
        "javascript:alert(1)",
        "ftp://x",
        "data:text/html,hi",
        "/relative/path",
        "ci.example/42",
        "https://ci.example/a b",
        " javascript:alert(1)",
    ] {
        let e = alice.report_check(with_url(bad)).await.expect_err(bad);
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().starts_with("details_url"), "{bad}: {e:?}");
    }
    let too_long = format!("https://ci.example/{}", "a".repeat(4096));
    let e = alice
        .report_check(with_url(&too_long))
        .await
        .expect_err("too long");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let of_repo = HistoryRequest {
        repository: repo.clone(),
        ..Default::default()
    };
    assert!(history(&mut alice, of_repo.clone()).await.is_empty());
    for good in [
        "",
        "http://ci.example/1",
        "HTTPS://ci.example:8443/run?id=2#log",
    ] {
        let r = alice
            .report_check(with_url(good))
            .await
            .unwrap_or_else(|e| panic!("{good}: {e:?}"))
            .into_inner();
        assert_eq!(r.details_url, good, "stored as sent");
    }
    assert_eq!(history(&mut alice, of_repo).await.len(), 3);
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
async fn an_approval_waits_for_a_missing_or_failed_check_and_the_tag_moves_once_it_passes() {
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
    // EvaluateGates says what blocks, without changing anything.
    let gates = bob
        .evaluate_gates(prodgate::pb::EvaluateGatesRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
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
    assert!(!gate("checks").passed && gate("checks").message.contains("`e2e`"));
    assert!(gate("checks").message.contains(&p.digest));
    assert!(!gate("approvals").passed, "bob has not approved yet");
    // The CLI shows the same, one line per gate.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(["gates", &p.id, "--server"])
        .arg(format!("http://{}", server.addr))
        .env("PRODGATE_TOKEN", support::server::token("bob"))
        .output()
        .expect("run prodgate gates");
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A blocking gate is exit 7, so a script can branch on it.
    assert_eq!(out.status.code(), Some(7), "{text} {stderr}");
    assert!(
        stderr.contains(&format!("promotion {} is blocked by ", p.id)) && stderr.contains("checks"),
        "{stderr}"
    );
    assert!(text.contains("BLOCK checks"), "{text}");
    // No report yet: the approval is recorded and the promotion waits.
    let waiting = bob
        .approve(support::approve(&p.id))
        .await
        .expect("an approval is recorded whatever the checks say")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    assert_eq!(waiting.waiting_for, ["checks"]);
    assert_eq!(waiting.not_before, None, "no time opens a check");
    // A FAILED report leaves it waiting.
    alice
        .report_check(report(&repo, &p.digest, "e2e", CheckStatus::Failed))
        .await
        .expect("report failed");
    assert_eq!(
        support::get(&mut alice, &p.id).await.state,
        PromotionState::Waiting as i32
    );
    // A later PASSED releases it: nobody acts, the tag moves.
    alice
        .report_check(report(&repo, &p.digest, "e2e", CheckStatus::Passed))
        .await
        .expect("report passed");
    support::wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        std::time::Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        registry
            .tag_digest("team/app", "production")
            .await
            .as_deref(),
        Some(p.digest.as_str())
    );
    let entries = history(
        &mut alice,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let passed = entries
        .iter()
        .find(|e| e.action == AuditAction::GatesPassed as i32)
        .expect("a GATES_PASSED entry");
    assert_eq!(passed.actor, "prodgate");
    assert_eq!(passed.attributes["gates"], "checks");
    assert!(passed.attributes.contains_key("policy"));
    assert_eq!(passed.hash, expected_hash(passed));
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
async fn a_freeze_and_soak_make_the_approval_wait_naming_each() {
    use prodgate::pb::PromotionState;
    // A soak far longer than the test.
    let (_registry, server, p) = frozen_candidate("min_soak = \"1h\"\n").await;
    let waiting = server
        .client("bob")
        .await
        .approve(support::approve(&p.id))
        .await
        .expect("recorded though frozen and not soaked")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    assert_eq!(
        waiting.waiting_for,
        ["soak", "freeze"],
        "the passed check is not a blocker"
    );
    let not_before = waiting.not_before.expect("time opens both");
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3500;
    assert!(not_before.seconds >= in_an_hour, "{not_before:?}");
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
    let waiting = bob
        .approve(support::approve(&p.id))
        .await
        .expect("recorded, and waits for the freeze")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
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
        .find(|e| e.action == AuditAction::Approved as i32 && e.actor == "erin")
        .expect("erin's approval");
    assert_eq!(approved.attributes["break_glass"], "true");
    assert_eq!(approved.attributes["overridden"], "freeze");
    assert_eq!(approved.hash, expected_hash(approved));
}

#[tokio::test]
async fn a_reader_sees_what_a_waiting_promotion_still_waits_for() {
    use prodgate::pb::PromotionState;
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&gated_config(&registry.host, "min_soak = \"1h\""));
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
    let waiting = server
        .client("bob")
        .await
        .approve(support::approve(&p.id))
        .await
        .expect("recorded")
        .into_inner();
    assert_eq!(waiting.waiting_for, ["checks", "soak"]);
    alice
        .report_check(report(&repo, &p.digest, "e2e", CheckStatus::Passed))
        .await
        .expect("report passed");
    let now = support::get(&mut alice, &p.id).await;
    assert_eq!(now.state, PromotionState::Waiting as i32);
    assert_eq!(now.waiting_for, ["soak"], "the check passed since");
    assert_eq!(now.not_before, waiting.not_before);
}
