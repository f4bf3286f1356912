//! Three real `prodgate serve` replicas on one PostgreSQL database (a
//! private cluster, tests/support/postgres.rs) and the real registry:
//! writes through all of them keep one gapless chain and one promotion per
//! request id; concurrent approvals on different replicas count exactly the
//! required number and the tag moves once; the leader killed while an
//! approved promotion waits on a frozen registry leaves it to another
//! replica, which applies it once; a frozen leader (SIGSTOP) hands over
//! and stops leading when it thaws; a watch on one replica sees a change
//! made through another at once; webhooks are sent once, not once per
//! replica.

mod support;

use prodgate::pb::{self, PromotionState, WatchPromotionRequest};
use std::process::Command;
use std::time::{Duration, Instant};
use support::postgres::{Cluster, TestDatabase};
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config};
use support::{actions_of, approve, assert_one_chain, request_to, wait_for_state};
use tonic::Code;

const REPLICAS: usize = 3;
/// The leader's log line (src/store/postgres/leader.rs).
const LEADS: &str = "this replica leads";

fn config(registry: &TestRegistry, db: &TestDatabase) -> String {
    format!("{}\n{}", standard_config(&registry.host), db.storage_toml())
}

fn replicas(registry: &TestRegistry, db: &TestDatabase) -> Vec<TestServer> {
    let config = config(registry, db);
    (0..REPLICAS).map(|_| TestServer::start(&config)).collect()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

/// Which replica leads: the one that logged so. Leadership is taken in the
/// background after start-up, so the logs are read until one says it.
async fn leader(servers: &[TestServer]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leading: Vec<usize> = (0..servers.len())
            .filter(|&i| servers[i].log().contains(LEADS))
            .collect();
        match leading.as_slice() {
            [one] => return *one,
            [] => assert!(Instant::now() < deadline, "no replica leads"),
            more => panic!("several replicas lead at once: {more:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn writes_through_three_replicas_keep_one_gapless_chain() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    registry.push_image("app", Some("staging"), 256, 1).await;
    let repo = format!("{}/app", registry.host);
    let servers = replicas(&registry, &db);
    let mut writers = Vec::new();
    for (r, server) in servers.iter().enumerate() {
        for w in 0..6 {
            let mut c = server.client("alice").await;
            let repo = repo.clone();
            writers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..8 {
                    let mut req = request_to(&repo, "staging", "production");
                    // Request ids shared by the replicas: each names one
                    // promotion, whichever replica a retry reaches.
                    req.request_id = format!("w{w}-{i}");
                    let p = c.request_promotion(req).await.expect("request");
                    ids.push((r, format!("w{w}-{i}"), p.into_inner().id));
                }
                ids
            }));
        }
    }
    let mut by_request = std::collections::HashMap::new();
    for w in writers {
        for (replica, request_id, id) in w.await.expect("join") {
            let first = by_request.entry(request_id.clone()).or_insert(id.clone());
            assert_eq!(
                *first, id,
                "request id {request_id} named two promotions (replica {replica})"
            );
        }
    }
    assert_eq!(by_request.len(), 6 * 8);
    // Every replica sees the same single chain, and its own check agrees.
    let mut lengths = Vec::new();
    for server in &servers {
        let mut c = server.client("alice").await;
        let entries = assert_one_chain(&mut c).await;
        let requested = entries
            .iter()
            .filter(|e| e.action == pb::AuditAction::Requested as i32)
            .count();
        assert_eq!(requested, 6 * 8);
        lengths.push(entries.len());
    }
    assert!(lengths.windows(2).all(|w| w[0] == w[1]), "{lengths:?}");
}

#[tokio::test]
async fn concurrent_approvals_on_three_replicas_count_exactly_two_and_apply_once() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let digest = registry.push_image("app", Some("staging"), 256, 2).await;
    let repo = format!("{}/app", registry.host);
    let servers = replicas(&registry, &db);
    let mut alice = servers[0].client("alice").await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "prod2"))
        .await
        .expect("request")
        .into_inner();
    assert_eq!(p.required_approvals, 2);
    let mut calls = Vec::new();
    for (i, who) in ["bob", "carol", "dave", "erin", "rita", "bob"]
        .iter()
        .enumerate()
    {
        let mut c = servers[i % REPLICAS].client(who).await;
        let id = p.id.clone();
        calls.push(tokio::spawn(async move { c.approve(approve(&id)).await }));
    }
    for call in calls {
        if let Err(e) = call.await.expect("join") {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        }
    }
    let done = wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done.approvals.len(), 2, "{done:?}");
    use pb::AuditAction::*;
    assert_eq!(
        actions_of(&mut alice, &p.id).await,
        [Requested, Approved, Approved, Applied]
    );
    assert_eq!(
        registry.tag_digest("app", "prod2").await.as_deref(),
        Some(digest.as_str())
    );
    assert_one_chain(&mut alice).await;
}

#[tokio::test]
async fn a_killed_leaders_approved_promotion_is_applied_once_by_another_replica() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let digest = registry.push_image("app", Some("staging"), 256, 3).await;
    let repo = format!("{}/app", registry.host);
    let mut servers = replicas(&registry, &db);
    let lead = leader(&servers).await;
    let follower = (lead + 1) % REPLICAS;
    let mut alice = servers[follower].client("alice").await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    // The registry hangs: the leader's tag move cannot finish.
    signal(registry.pid(), "-STOP");
    let mut bob = servers[follower].client("bob").await;
    bob.approve(approve(&p.id)).await.expect("approve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !servers[lead].log().contains("tag move failed; retrying") {
        assert!(
            Instant::now() < deadline,
            "the leader never tried: {}",
            servers[lead].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    servers[lead].kill();
    // Another replica takes over; the promotion stays APPROVED while the
    // registry is frozen, and no new approval is asked for.
    let survivors: Vec<usize> = (0..REPLICAS).filter(|&i| i != lead).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let next = loop {
        if let Some(&i) = survivors
            .iter()
            .find(|&&i| servers[i].log().contains(LEADS))
        {
            break i;
        }
        assert!(Instant::now() < deadline, "no replica took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    signal(registry.pid(), "-CONT");
    let done = wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done.digest, digest);
    assert_eq!(done.approvals.len(), 1);
    assert!(
        servers[next].log().contains("tag applied"),
        "{}",
        servers[next].log()
    );
    use pb::AuditAction::*;
    assert_eq!(
        actions_of(&mut alice, &p.id).await,
        [Requested, Approved, Applied]
    );
    assert_eq!(
        registry.tag_digest("app", "production").await.as_deref(),
        Some(digest.as_str())
    );
    assert_one_chain(&mut alice).await;
}

#[tokio::test]
async fn a_watch_on_one_replica_sees_a_change_made_through_another() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    registry.push_image("app", Some("staging"), 256, 4).await;
    let repo = format!("{}/app", registry.host);
    let servers = replicas(&registry, &db);
    let mut alice_a = servers[0].client("alice").await;
    let p = alice_a
        .request_promotion(request_to(&repo, "staging", "prod2"))
        .await
        .expect("request")
        .into_inner();
    let mut stream = servers[1]
        .client("alice")
        .await
        .watch_promotion(WatchPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("state");
    assert_eq!(first.state, PromotionState::PendingApproval as i32);
    assert!(first.approvals.is_empty());
    // One approval of two, through replica A: nothing else happens to the
    // promotion, so only the cross-replica notification can bring it to B.
    servers[0]
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve");
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the change reached the other replica in time")
        .expect("stream")
        .expect("state");
    assert_eq!(next.state, PromotionState::PendingApproval as i32);
    let approvers: Vec<&str> = next.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(approvers, ["bob"]);
    // The second approval through replica C: B's watch follows to the end.
    servers[2]
        .client("carol")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve");
    let mut last = next;
    while last.state != PromotionState::Promoted as i32 {
        last = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the next change in time")
            .expect("stream")
            .expect("state");
    }
    assert!(stream.message().await.expect("stream").is_none());
}

#[tokio::test]
async fn a_frozen_leader_hands_over_and_stops_leading_when_it_thaws() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let digest = registry.push_image("app", Some("staging"), 256, 5).await;
    let repo = format!("{}/app", registry.host);
    let servers = replicas(&registry, &db);
    let lead = leader(&servers).await;
    let follower = (lead + 1) % REPLICAS;
    let mut alice = servers[follower].client("alice").await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    // Frozen, its socket stays open: only the session's idle timeout on
    // the database side lets another replica lead.
    signal(servers[lead].pid(), "-STOP");
    let mut bob = servers[follower].client("bob").await;
    bob.approve(approve(&p.id)).await.expect("approve");
    let done = wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done.digest, digest);
    signal(servers[lead].pid(), "-CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !servers[lead].log().contains("no longer leading") {
        assert!(
            Instant::now() < deadline,
            "the thawed leader still leads: {}",
            servers[lead].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use pb::AuditAction::*;
    assert_eq!(
        actions_of(&mut alice, &p.id).await,
        [Requested, Approved, Applied]
    );
    assert_one_chain(&mut alice).await;
}

#[tokio::test]
async fn webhooks_are_sent_once_however_many_replicas_see_the_change() {
    use axum::{Router, routing::post};
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let app = Router::new().route(
        "/hook",
        post(move |body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_str(&body).expect("json body"));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let hook = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    registry.push_image("app", Some("staging"), 256, 6).await;
    let repo = format!("{}/app", registry.host);
    let config = format!(
        "{}\n[[notify]]\nurl = \"http://{hook}/hook\"\nevents = [\"requested\", \"approved\", \"promoted\"]\n",
        config(&registry, &db)
    );
    let servers: Vec<TestServer> = (0..REPLICAS).map(|_| TestServer::start(&config)).collect();
    let mut ids = Vec::new();
    for (ask, decide) in [(0, 1), (2, 0)] {
        // A new image each time: production already carries the last one.
        registry
            .push_image("app", Some("staging"), 256, 60 + ask as u64)
            .await;
        let p = servers[ask]
            .client("alice")
            .await
            .request_promotion(request_to(&repo, "staging", "production"))
            .await
            .expect("request")
            .into_inner();
        servers[decide]
            .client("bob")
            .await
            .approve(approve(&p.id))
            .await
            .expect("approve");
        ids.push(p.id);
    }
    // Each replica's webhook deliveries are in commit order: once the last
    // change's arrives, a second sender's copies of the first would have too.
    let event = |n: serde_json::Value| {
        let field = |k: &str| n[k].as_str().expect("a string field").to_owned();
        (field("promotion_id"), field("event"))
    };
    let mut events = Vec::new();
    while events.last() != Some(&(ids[1].clone(), "promoted".to_owned())) {
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("notification in time")
            .expect("receiver open");
        events.push(event(n));
    }
    while let Ok(n) = rx.try_recv() {
        events.push(event(n));
    }
    let expected: Vec<(String, String)> = ids
        .iter()
        .flat_map(|id| ["requested", "approved", "promoted"].map(|e| (id.clone(), e.to_owned())))
        .collect();
    assert_eq!(events, expected);
}

/// The health service's answer from `server`.
async fn health(server: &TestServer) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(server.channel().await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health check")
        .into_inner()
        .status
}

#[tokio::test]
async fn a_leader_that_cannot_follow_the_log_steps_down_and_stops_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let digest = registry.push_image("app", Some("staging"), 256, 6).await;
    let repo = format!("{}/app", registry.host);
    let servers = replicas(&registry, &db);
    let lead = leader(&servers).await;
    let follower = (lead + 1) % REPLICAS;
    let mut alice = servers[follower].client("alice").await;
    // Every connection the replicas need is open before new ones are
    // refused: reads take the four read connections in turn.
    for s in &servers {
        assert_eq!(health(s).await, ServingStatus::Serving as i32);
        let mut c = s.client("alice").await;
        for _ in 0..8 {
            c.list_promotions(pb::ListPromotionsRequest::default())
                .await
                .expect("list");
        }
    }
    // The leader's listening connection ends and cannot come back (the
    // database takes no new connections), while its leadership session,
    // its writer and every other replica keep theirs.
    cluster.psql(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    ));
    let ended = cluster.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{}' AND application_name = 'prodgate listen {}'",
        db.name,
        servers[lead].pid()
    ));
    assert_eq!(ended, "1", "the leader's listening connection");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !servers[lead]
        .log()
        .contains("cannot follow other replicas' changes: no longer leading")
    {
        assert!(
            Instant::now() < deadline,
            "a leader that cannot follow kept leading:\n{}",
            servers[lead].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&servers[lead]).await != ServingStatus::NotServing as i32 {
        assert!(Instant::now() < deadline, "health stayed SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another replica leads and applies what is approved through a third.
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    servers[follower]
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve");
    let done = wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done.digest, digest);
    assert!(
        (0..REPLICAS)
            .filter(|&i| i != lead)
            .any(|i| servers[i].log().contains(LEADS)),
        "no other replica took over"
    );
    // Connections allowed again: it follows, and serves, again.
    cluster.psql(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&servers[lead]).await != ServingStatus::Serving as i32 {
        assert!(
            Instant::now() < deadline,
            "it never served again:\n{}",
            servers[lead].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_waiting_promotion_moves_once_when_its_soak_ends_on_three_replicas() {
    let Some(cluster) = Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let registry = TestRegistry::start().await;
    let digest = registry.push_image("app", Some("dev"), 256, 7).await;
    let repo = format!("{}/app", registry.host);
    let config = format!(
        "{}\n[[environment]]\nname = \"soaked\"\ntag = \"soaked\"\nrequires = \"staging\"\n\
         approvers = [\"group:release-managers\"]\nrequired_approvals = 1\nmin_soak = \"3s\"\n",
        config(&registry, &db)
    );
    let servers: Vec<TestServer> = (0..REPLICAS).map(|_| TestServer::start(&config)).collect();
    let mut alice = servers[0].client("alice").await;
    alice
        .request_promotion(request_to(&repo, "dev", "staging"))
        .await
        .expect("staging");
    let p = servers[1]
        .client("alice")
        .await
        .request_promotion(request_to(&repo, "staging", "soaked"))
        .await
        .expect("request")
        .into_inner();
    // Approved on a replica that may not lead: it waits for the soak, and
    // only the leader's timer moves it.
    let waiting = servers[2]
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("recorded in the soak")
        .into_inner();
    assert_eq!(waiting.state, PromotionState::Waiting as i32, "{waiting:?}");
    wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    use pb::AuditAction::*;
    assert_eq!(
        actions_of(&mut alice, &p.id).await,
        [Requested, Approved, GatesPassed, Applied]
    );
    assert_eq!(
        registry.tag_digest("app", "soaked").await.as_deref(),
        Some(digest.as_str())
    );
    assert_one_chain(&mut alice).await;
}
