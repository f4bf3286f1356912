//! Policy versions and SIGHUP reload end to end, on a real registry and a
//! real `prodgate serve`: the start records the policy (POLICY_CHANGED),
//! the approving entry and the promotion name the version that allowed
//! them, a reload changes who may approve without a restart and records
//! the new version, an invalid file or a `[tls]` change keeps the running
//! config, and every recorded version stays retrievable with GetPolicy.

mod support;

use prodgate::pb::{self, AuditAction, GetPolicyRequest, HistoryRequest, PromotionState};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{approve, expected_hash, history, request_to};
use tonic::Code;

fn with_metrics(metrics: &str, config: &str) -> String {
    format!("metrics_listen = \"{metrics}\"\n{config}")
}

/// `prodgate_config_reloads_total` by result, scraped now.
async fn reloads(metrics: &str) -> HashMap<String, f64> {
    support::scrape(metrics)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("prodgate_config_reloads_total{result=\""))
        .filter_map(|l| {
            let (result, value) = l.split_once("\"} ")?;
            Some((result.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sends SIGHUP and waits until the server counts one more reload with
/// `result`. The reload runs in another process: its counter is how a
/// client observes that it finished.
async fn reload(server: &TestServer, result: &str) {
    let metrics = server.metrics_addr();
    let before = reloads(metrics).await.get(result).copied().unwrap_or(0.0);
    server.hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = reloads(metrics).await;
        if now.get(result).copied().unwrap_or(0.0) > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {result} reload counted: {now:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn policy(c: &mut support::server::Client, digest: &str) -> pb::Policy {
    c.get_policy(GetPolicyRequest {
        digest: digest.to_owned(),
    })
    .await
    .expect("get policy")
    .into_inner()
}

fn policy_entries(entries: &[pb::AuditEntry]) -> Vec<&pb::AuditEntry> {
    entries
        .iter()
        .filter(|e| e.action == AuditAction::PolicyChanged as i32)
        .collect()
}

#[tokio::test]
async fn policy_versions_are_recorded_named_and_reloaded_without_a_restart() {
    let registry = TestRegistry::start().await;
    registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = format!("{}/app", registry.host);
    let config = with_metrics("127.0.0.1:0", &standard_config(&registry.host));
    let mut server = TestServer::start(&config);
    let mut alice = server.client("alice").await;

    // The start recorded the running policy; its digest is the SHA-256 of
    // the document GetPolicy returns, recomputed here.
    let first = policy(&mut alice, "").await;
    assert_eq!(
        first.digest,
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(first.canonical_json.as_bytes()))
        )
    );
    let doc: serde_json::Value = serde_json::from_str(&first.canonical_json).expect("JSON");
    assert!(
        !first.canonical_json.contains("token"),
        "no token hashes in the policy: {}",
        first.canonical_json
    );
    assert_eq!(doc["environments"][1]["name"], "production");
    let entries = history(&mut alice, HistoryRequest::default()).await;
    let recorded = policy_entries(&entries);
    assert_eq!(recorded.len(), 1);
    let e = recorded[0];
    assert_eq!(e.actor, "prodgate");
    assert_eq!(e.attributes["policy"], first.digest);
    assert_eq!(e.hash, expected_hash(e));
    assert_eq!(first.first_recorded, e.time);

    // The approval that makes a promotion APPROVED names the version.
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    assert!(p.policy_digest.is_empty());
    let done = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(done.state, PromotionState::Promoted as i32);
    assert_eq!(done.policy_digest, first.digest);
    let trail = history(
        &mut alice,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let approving = trail
        .iter()
        .find(|e| e.action == AuditAction::Approved as i32)
        .expect("approved entry");
    assert_eq!(approving.attributes["policy"], first.digest);
    assert_eq!(approving.hash, expected_hash(approving));

    // A restart under the same policy records nothing new.
    server.kill_and_restart_in_place();
    let mut alice = server.client("alice").await;
    let entries = history(&mut alice, HistoryRequest::default()).await;
    assert_eq!(policy_entries(&entries).len(), 1);

    // Reload: only rita may approve production now, and a new principal
    // exists. No restart: same process.
    let pid = server.pid();
    let hash = hex::encode(Sha256::digest(b"nina-token"));
    let changed = config
        .replace(
            "approvers = [\"group:release-managers\", \"carol\"]\nrequired_approvals = 1",
            "approvers = [\"rita\"]\nrequired_approvals = 1",
        )
        .replace(
            "[[environment]]\nname = \"staging\"",
            &format!(
                "[[principal]]\nname = \"nina\"\ntoken_sha256 = \"{hash}\"\n\n[[environment]]\nname = \"staging\""
            ),
        );
    assert_ne!(changed, config);
    server.write_config(&changed);
    reload(&server, "success").await;
    assert_eq!(server.pid(), pid);
    let second = policy(&mut alice, "").await;
    assert_ne!(second.digest, first.digest);
    let entries = history(&mut alice, HistoryRequest::default()).await;
    let recorded = policy_entries(&entries);
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].attributes["policy"], second.digest);
    assert_eq!(recorded[1].hash, expected_hash(recorded[1]));
    // Every recorded version stays retrievable.
    let old = policy(&mut alice, &first.digest).await;
    assert_eq!(old.canonical_json, first.canonical_json);
    // The new policy decides: bob no longer approves, rita does; nina's
    // token works. (A new image: production already carries the first.)
    registry.push_image("app", Some("staging"), 1024, 2).await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let refused = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect_err("bob is no approver any more");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let done = server
        .client("rita")
        .await
        .approve(approve(&p.id))
        .await
        .expect("rita approves")
        .into_inner();
    assert_eq!(done.policy_digest, second.digest);
    server
        .client("nina")
        .await
        .get_policy(GetPolicyRequest::default())
        .await
        .expect("nina is known now");

    // An invalid file keeps the running config and names the key.
    server.write_config(&changed.replace("required_approvals = 1", "required_approvals = -1"));
    reload(&server, "failure").await;
    assert_eq!(policy(&mut alice, "").await.digest, second.digest);
    assert!(
        server.log().contains("required_approvals"),
        "the error names the key:\n{}",
        server.log()
    );
    // So does a file that changes what is bound at start.
    let cert = server.dir().join("cert.pem");
    std::fs::write(&cert, "not used").expect("write");
    server.write_config(&format!(
        "{changed}\n[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        cert.display().to_string()
    ));
    reload(&server, "failure").await;
    assert!(server.log().contains("tls: changed"), "{}", server.log());
    let entries = history(&mut alice, HistoryRequest::default()).await;
    assert_eq!(
        policy_entries(&entries).len(),
        2,
        "refused reloads record nothing"
    );
    // Unknown versions are NOT_FOUND, malformed ones INVALID_ARGUMENT.
    let e = alice
        .get_policy(GetPolicyRequest {
            digest: format!("sha256:{}", "0".repeat(64)),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    let e = alice
        .get_policy(GetPolicyRequest {
            digest: "latest".into(),
        })
        .await
        .expect_err("malformed");
    assert_eq!(e.code(), Code::InvalidArgument);
}
