//! `prodgate migrate --from-sled`: a real `prodgate serve` on sled records
//! promotions, a check report and a policy change (SIGHUP); after it stops,
//! migrate copies its data directory into a private PostgreSQL cluster's
//! database, and `prodgate serve` on that database, same config but
//! `[storage] backend = "postgres"`, answers as the sled server did: the
//! same History entry for entry (hashes included), promotions, policy
//! versions, checks, checkpoint root and chain verdict; its chain goes on
//! from there. A running server's store, and a database that is no longer
//! empty, are refused.

mod support;

use prodgate::pb::{
    self, CheckStatus, GetCheckpointRequest, GetPolicyRequest, HistoryRequest, ListChecksRequest,
    ReportCheckRequest, VerifyAuditLogRequest,
};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};
use support::postgres::{Cluster, TestDatabase};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, standard_config, token};
use support::{approve, expected_hash, get, history, request_to, wait_for_state};

fn migrate(data_dir: &Path, db: &TestDatabase) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .arg("migrate")
        .arg("--from-sled")
        .arg(data_dir)
        .arg("--to")
        .arg(&db.url)
        .arg("--password-file")
        .arg(&db.password_file)
        .output()
        .expect("run prodgate migrate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a client can see of the store: every answer the copy must keep.
#[derive(Debug, PartialEq)]
struct Seen {
    history: Vec<pb::AuditEntry>,
    promotions: Vec<pb::Promotion>,
    policies: Vec<pb::Policy>,
    checks: Vec<pb::CheckResult>,
    checkpoint: (u64, String),
    verified: pb::VerifyAuditLogResponse,
}

async fn seen(
    c: &mut Client,
    ids: &[String],
    policies: &[String],
    repo: &str,
    digest: &str,
) -> Seen {
    let mut promotions = Vec::new();
    for id in ids {
        promotions.push(get(c, id).await);
    }
    let mut versions = Vec::new();
    for d in policies {
        versions.push(
            c.get_policy(GetPolicyRequest { digest: d.clone() })
                .await
                .expect("get policy")
                .into_inner(),
        );
    }
    let checks = c
        .list_checks(ListChecksRequest {
            repository: repo.to_owned(),
            digest: digest.to_owned(),
            ..Default::default()
        })
        .await
        .expect("list checks")
        .into_inner()
        .checks;
    let cp = c
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    let verified = c
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    Seen {
        history: history(c, HistoryRequest::default()).await,
        promotions,
        policies: versions,
        checks,
        checkpoint: (cp.size, cp.root_hash),
        verified,
    }
}

async fn current_policy(c: &mut Client) -> String {
    c.get_policy(GetPolicyRequest::default())
        .await
        .expect("get policy")
        .into_inner()
        .digest
}

#[tokio::test]
async fn a_sled_store_migrated_to_postgresql_answers_the_same_and_goes_on() {
    if support::server::skip_on_postgres(
        "migrates a sled data directory, so its source server runs on sled",
    ) {
        return;
    }
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let digest = registry.push_image("app", Some("staging"), 512, 1).await;
    let repo = format!("{}/app", registry.host);
    let config = format!(
        "check_reporters = [\"alice\"]\n{}",
        standard_config(&registry.host)
    );
    let mut sled = TestServer::start(&config);
    let mut alice = sled.client("alice").await;
    let mut bob = sled.client("bob").await;

    // A promotion applied (request, approval, APPLIED), one left pending
    // with an idempotency key, a check report, and a policy change.
    let first = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    bob.approve(approve(&first.id)).await.expect("approve");
    wait_for_state(
        &mut alice,
        &first.id,
        pb::PromotionState::Promoted,
        Duration::from_secs(10),
    )
    .await;
    let pending = alice
        .request_promotion(pb::RequestPromotionRequest {
            request_id: "release-42".into(),
            ..request_to(&repo, "staging", "prod2")
        })
        .await
        .expect("request prod2")
        .into_inner();
    alice
        .report_check(ReportCheckRequest {
            repository: repo.clone(),
            digest: digest.clone(),
            check: "e2e".into(),
            status: CheckStatus::Passed as i32,
            details_url: "https://ci.example/e2e/1".into(),
            comment: "green".into(),
        })
        .await
        .expect("report a check");
    let policy_before = current_policy(&mut alice).await;
    let changed = config.replace(
        "approvers = [\"group:release-managers\", \"carol\"]\nrequired_approvals = 1",
        "approvers = [\"rita\"]\nrequired_approvals = 1",
    );
    assert_ne!(changed, config);
    sled.write_config(&changed);
    sled.hangup();
    // The reload runs in the other process; its new version is how a client
    // sees that it finished.
    let deadline = Instant::now() + Duration::from_secs(10);
    let policy_after = loop {
        let now = current_policy(&mut alice).await;
        if now != policy_before {
            break now;
        }
        assert!(Instant::now() < deadline, "no reload\n{}", sled.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids = [first.id.clone(), pending.id.clone()];
    let policies = [policy_before, policy_after];
    let before = seen(&mut alice, &ids, &policies, &repo, &digest).await;
    assert!(before.verified.ok, "{:?}", before.verified);
    assert_eq!(before.checks.len(), 1);
    use pb::AuditAction::*;
    let actions: Vec<i32> = before.history.iter().map(|e| e.action).collect();
    for a in [Requested, Approved, Applied, CheckReported, PolicyChanged] {
        assert!(actions.contains(&(a as i32)), "no {a:?} in {actions:?}");
    }

    // A running server's store is refused: its lock is held.
    let out = migrate(&sled.data_dir(), &db);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("locked"),
        "{}",
        text(&out.stderr)
    );

    assert_eq!(sled.terminate(), Some(0), "{}", sled.log());
    let out = migrate(&sled.data_dir(), &db);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains(&db.password) && !text(&out.stderr).contains(&db.password));
    let n = before.history.len();
    assert!(
        stdout.starts_with(&format!(
            "ok: copied and checked {n} audit entries, 2 promotions, "
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("head_hash: {}\n", before.verified.head_hash)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("root_hash: {}\n", before.checkpoint.1)),
        "{stdout}"
    );

    // The same config on PostgreSQL answers exactly as sled did; starting
    // under the same policy records nothing new.
    let pg = TestServer::start(&format!("{changed}\n{}", db.storage_toml()));
    assert!(pg.log().contains("postgres (url = "), "{}", pg.log());
    let mut alice = pg.client("alice").await;
    let after = seen(&mut alice, &ids, &policies, &repo, &digest).await;
    assert_eq!(after, before);
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(["verify-log", "--server", &format!("http://{}", pg.addr)])
        .args(["--token", &token("alice")])
        .output()
        .expect("run prodgate verify-log");
    assert!(
        cli.status.success() && text(&cli.stdout).contains(&before.verified.head_hash),
        "{}{}",
        text(&cli.stdout),
        text(&cli.stderr)
    );

    // The idempotency key and the pending promotion carry over: the same
    // request answers the same promotion; the chain goes on from the copied
    // head, and ids after the copied ones.
    let again = alice
        .request_promotion(pb::RequestPromotionRequest {
            request_id: "release-42".into(),
            ..request_to(&repo, "staging", "prod2")
        })
        .await
        .expect("repeat the request")
        .into_inner();
    assert_eq!(again.id, pending.id);
    let next = alice
        .request_promotion(request_to(&repo, "staging", "selfok"))
        .await
        .expect("a new request")
        .into_inner();
    assert!(
        next.id.parse::<u64>().unwrap() > pending.id.parse::<u64>().unwrap(),
        "{next:?}"
    );
    let entries = history(&mut alice, HistoryRequest::default()).await;
    assert_eq!(entries[..n], before.history[..]);
    assert_eq!(entries[n].sequence, n as u64 + 1);
    assert_eq!(entries[n].prev_hash, before.verified.head_hash);
    assert_eq!(entries[n].hash, expected_hash(&entries[n]));
    let v = alice
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.ok && v.entries_checked == n as u64 + 1, "{v:?}");

    // The database is no longer empty: a second copy is refused whole.
    let out = migrate(&sled.data_dir(), &db);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("already holds prodgate data") && stderr.contains("audit:"),
        "{stderr}"
    );
    let len = history(&mut alice, HistoryRequest::default()).await.len();
    assert_eq!(len, n + 1, "the refused copy wrote nothing");
}
