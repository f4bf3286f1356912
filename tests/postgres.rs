//! The PostgreSQL backend behind a real `prodgate serve`: a private
//! cluster (tests/support/postgres.rs), the real registry, and the same
//! answers as on sled: promotions, History, VerifyAuditLog, tree heads and
//! proofs; acknowledged writes survive SIGKILL of prodgate; concurrent
//! writers keep one gapless chain; PostgreSQL stopping gives UNAVAILABLE
//! and health NOT_SERVING, and its return recovers without restarting
//! prodgate.
//!
//! One replica here; several replicas on one database are in
//! tests/replicas.rs.

mod support;

use prodgate::pb::{self, GetCheckpointRequest, GetInclusionProofRequest, GetPromotionRequest};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::postgres::{Cluster, TestDatabase};
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{actions_of, approve, assert_one_chain, request_to, wait_for_state};
use tonic::Code;

fn config(registry: &TestRegistry, db: &TestDatabase) -> String {
    format!("{}\n{}", standard_config(&registry.host), db.storage_toml())
}

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// RFC 9162 §2.1.1 over the entries' leaf hashes, computed here.
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha(&[]),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            sha(&[&[1], &mth(&leaves[..k]), &mth(&leaves[k..])])
        }
    }
}

#[tokio::test]
async fn a_promotion_on_postgresql_is_recorded_proved_and_survives_sigkill() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let mut server = TestServer::start(&config(&registry, &db));
    assert!(
        server.log().contains("postgres (url = "),
        "{}",
        server.log()
    );
    assert!(!server.log().contains(&db.password), "the password leaked");
    let repo = format!("{}/app", registry.host);
    let digest = registry.push_image("app", Some("staging"), 512, 1).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    bob.approve(approve(&p.id)).await.expect("approve");
    let done = wait_for_state(
        &mut alice,
        &p.id,
        pb::PromotionState::Promoted,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(done.digest, digest);
    assert_eq!(
        registry.tag_digest("app", "production").await.as_deref(),
        Some(digest.as_str())
    );
    use pb::AuditAction::*;
    assert_eq!(
        actions_of(&mut alice, &p.id).await,
        [Requested, Approved, Applied]
    );

    // The tree head covers every committed entry; its root and proofs are
    // the ones RFC 9162 gives for the entries History shows.
    let entries = assert_one_chain(&mut alice).await;
    let cp = alice
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    assert_eq!(cp.size, entries.len() as u64);
    let leaves: Vec<[u8; 32]> = entries
        .iter()
        .map(|e| sha(&[&[0], &hex::decode(&e.hash).unwrap()]))
        .collect();
    assert_eq!(cp.root_hash, hex::encode(mth(&leaves)));
    for seq in 1..=cp.size {
        let proof = alice
            .get_inclusion_proof(GetInclusionProofRequest {
                sequence: seq,
                tree_size: cp.size,
            })
            .await
            .expect("inclusion proof")
            .into_inner();
        assert_eq!(proof.leaf_index, seq - 1);
    }

    // Writers in flight when prodgate is killed: every acknowledged one is
    // there after the restart, and the chain goes on without a gap.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = server.client("alice").await;
        let (repo, acknowledged) = (repo.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                // prod2 (two approvals): production already carries the
                // digest, so a request there would change nothing.
                let mut r = request_to(&repo, "staging", "prod2");
                r.request_id = format!("w{w}-{i}");
                match c.request_promotion(r).await {
                    Ok(p) => acknowledged.lock().unwrap().push(p.into_inner().id),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once some writes were acknowledged, while the others are in flight.
    for _ in 0..1000 {
        if acknowledged.lock().unwrap().len() >= 20 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill_and_restart();
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 20, "{}", acknowledged.len());
    let mut alice = server.client("alice").await;
    for id in &acknowledged {
        alice
            .get_promotion(GetPromotionRequest {
                promotion_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged promotion {id} lost: {e:?}"));
    }
    let before = assert_one_chain(&mut alice).await.len();
    alice
        .request_promotion(request_to(&repo, "staging", "prod2"))
        .await
        .expect("a request after the restart");
    assert!(assert_one_chain(&mut alice).await.len() > before);
}

#[tokio::test]
async fn thirty_two_concurrent_writers_keep_one_gapless_chain() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry, &db));
    let repo = format!("{}/app", registry.host);
    registry.push_image("app", Some("staging"), 256, 2).await;
    let mut writers = Vec::new();
    for w in 0..32 {
        let mut c = server.client("alice").await;
        let repo = repo.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..4 {
                let mut r = request_to(&repo, "staging", "production");
                r.request_id = format!("w{w}-{i}");
                c.request_promotion(r).await.expect("request");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut alice = server.client("alice").await;
    let entries = assert_one_chain(&mut alice).await;
    let requested = entries
        .iter()
        .filter(|e| e.action == pb::AuditAction::Requested as i32)
        .count();
    assert_eq!(requested, 32 * 4);
    // The same request id again is the same promotion, not a new one.
    let mut r = request_to(&repo, "staging", "production");
    r.request_id = "w7-3".into();
    let again = alice.request_promotion(r).await.unwrap().into_inner();
    assert_eq!(assert_one_chain(&mut alice).await.len(), entries.len());
    assert!(!again.id.is_empty());
}

#[tokio::test]
async fn postgresql_stopped_is_unavailable_and_not_serving_until_it_returns() {
    // A cluster of its own: stopping the shared one would fail other tests.
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry, &db));
    let repo = format!("{}/app", registry.host);
    registry.push_image("app", Some("staging"), 256, 3).await;
    let mut alice = server.client("alice").await;
    let first = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let before = assert_one_chain(&mut alice).await.len();
    // Health as a load balancer watches it: each change is pushed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await)
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health watch")
        .into_inner();
    let mut next_status = async move || {
        tokio::time::timeout(Duration::from_secs(10), health.message())
            .await
            .expect("a health change in time")
            .expect("health stream")
            .expect("health stream open")
            .status
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(next_status().await, ServingStatus::Serving as i32);

    cluster.stop();
    assert_eq!(next_status().await, ServingStatus::NotServing as i32);
    let e = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Why, in PostgreSQL's or the connection's own words, not "db error";
    // a write says nothing was recorded, a read that it could not read.
    assert!(
        (e.message().starts_with("the change was not recorded")
            || e.message().starts_with("could not read the store"))
            && e.message().ends_with("; retry"),
        "{e:?}"
    );
    assert!(!e.message().ends_with("db error; retry"), "{e:?}");
    let e = alice
        .get_promotion(GetPromotionRequest {
            promotion_id: first.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().starts_with("could not read the store: ") && e.message().ends_with("; retry"),
        "{e:?}"
    );
    assert!(!e.message().contains("not recorded"), "{e:?}");

    // Back: the next calls succeed on new connections, without a restart
    // of prodgate, and the refused write left nothing behind.
    cluster.resume();
    assert_eq!(next_status().await, ServingStatus::Serving as i32);
    alice
        .get_promotion(GetPromotionRequest {
            promotion_id: first.id.clone(),
        })
        .await
        .expect("a read after PostgreSQL came back");
    alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("a write after PostgreSQL came back");
    let entries = assert_one_chain(&mut alice).await;
    // Only the new request: the refused one left no entry, no gap.
    assert_eq!(entries.len(), before + 1, "{entries:?}");
}

#[tokio::test]
async fn serve_refuses_another_applications_schema_with_a_sentence_not_a_panic() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    // golang-migrate's table: serve panicked on it (exit 101).
    let out = std::process::Command::new(cluster.bin().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url, "-c"])
        .arg("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL); INSERT INTO schema_migrations VALUES (3, false)")
        .env("PGPASSWORD", &db.password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let registry = TestRegistry::start().await;
    let exited =
        support::server::serve_until_exit(&config(&registry, &db), Duration::from_secs(30));
    assert_eq!(exited.code, Some(1), "{}", exited.log);
    assert!(
        exited.log.contains(
            "the database holds a table `schema_migrations` (schema `public`) that is not prodgate's: give prodgate a database (or schema) of its own"
        ),
        "{}",
        exited.log
    );
    assert!(!exited.log.contains("panicked"), "{}", exited.log);
    assert!(!exited.log.contains(&db.password), "the password leaked");
}
