//! Crash safety and registry faults against real processes: prodgate killed
//! with SIGKILL mid-write, the registry frozen with SIGSTOP, graceful
//! shutdown, and offline verification of a tampered audit log.

mod support;

use prodgate::pb::{
    AuditAction, HistoryRequest, ListPromotionsRequest, PromotionState, RejectRequest,
    RequestPromotionRequest, VerifyAuditLogRequest,
};
use rand::Rng;
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::server::Client;
use support::{World, approve, get, wait_for_state};

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

fn request(repo: &str) -> RequestPromotionRequest {
    RequestPromotionRequest {
        repository: repo.to_owned(),
        source: "staging".into(),
        environment: "production".into(),
        reason: "crash test".into(),
        request_id: String::new(),
        break_glass: false,
    }
}

async fn history(c: &mut Client, promotion_id: &str) -> Vec<prodgate::pb::AuditEntry> {
    support::history(
        c,
        HistoryRequest {
            promotion_id: promotion_id.to_owned(),
            page_size: 1000,
            ..Default::default()
        },
    )
    .await
}

/// Every promotion that matches `filter`, all pages.
async fn list_all(c: &mut Client, filter: ListPromotionsRequest) -> Vec<prodgate::pb::Promotion> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_promotions(ListPromotionsRequest {
                page_size: 1000,
                page_token: token,
                ..filter.clone()
            })
            .await
            .expect("list")
            .into_inner();
        out.extend(page.promotions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Every promotion's state, by id.
async fn all_states(c: &mut Client) -> HashMap<String, i32> {
    list_all(c, ListPromotionsRequest::default())
        .await
        .into_iter()
        .map(|p| (p.id, p.state))
        .collect()
}

/// The store derives its indexes from the audit log after each commit, and
/// a restart finishes a derivation a kill cut short: every filtered read must
/// agree with the unfiltered log and records.
async fn assert_indexes_agree(
    c: &mut Client,
    repo: &str,
    states: &HashMap<String, i32>,
    cycle: usize,
) {
    // The apply worker may still append APPLIED entries and move APPROVED
    // promotions to PROMOTED while this reads, so later reads are cut at
    // what the first one saw, and APPROVED and PROMOTED are checked together.
    // Every entry about a promotion (not the start's POLICY_CHANGED ones,
    // which name no repository).
    let all: Vec<u64> = history(c, "")
        .await
        .iter()
        .filter(|e| !e.repository.is_empty())
        .map(|e| e.sequence)
        .collect();
    let newest = all.last().copied().unwrap_or(0);
    for (what, filter) in [
        (
            "repository",
            HistoryRequest {
                repository: repo.to_owned(),
                page_size: 1000,
                ..Default::default()
            },
        ),
        (
            "environment",
            HistoryRequest {
                environment: "production".into(),
                page_size: 1000,
                ..Default::default()
            },
        ),
    ] {
        let filtered: Vec<u64> = support::history(c, filter)
            .await
            .iter()
            .map(|e| e.sequence)
            .filter(|&s| s <= newest)
            .collect();
        assert_eq!(filtered, all, "cycle {cycle}: History by {what}");
    }
    let ids_in = |wanted: &[PromotionState]| -> Vec<String> {
        let mut ids: Vec<String> = states
            .iter()
            .filter(|(_, s)| wanted.iter().any(|w| *w as i32 == **s))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    };
    for group in [
        &[PromotionState::Rejected][..],
        // The apply worker moves promotions along this order (a tag move
        // supersedes older pending and approved ones), so reading the states
        // in it shows a move between two reads twice, never not at all.
        &[
            PromotionState::PendingApproval,
            PromotionState::Approved,
            PromotionState::Promoted,
            PromotionState::Superseded,
        ],
    ] {
        let mut listed = Vec::new();
        for state in group {
            let filter = ListPromotionsRequest {
                state: *state as i32,
                ..Default::default()
            };
            listed.extend(list_all(c, filter).await.into_iter().map(|p| p.id));
        }
        listed.sort();
        listed.dedup();
        assert_eq!(
            listed,
            ids_in(group),
            "cycle {cycle}: ListPromotions in {group:?}"
        );
    }
}

/// What a client was told, which must survive any crash.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ack {
    Requested,
    Rejected,
    Approved,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let cycles: usize = std::env::var("PRODGATE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let World {
        registry,
        mut server,
    } = w;
    let acks: Arc<Mutex<HashMap<String, Vec<Ack>>>> = Arc::default();
    let mut rng = rand::rng();
    for cycle in 0..cycles {
        // A new build on staging each cycle: once production carries a
        // digest, requests for it change nothing and are refused.
        registry
            .push_image("app", Some("staging"), 1024, 2 + cycle as u64)
            .await;
        let mut workers = Vec::new();
        for worker in 0..6 {
            let mut alice = server.client("alice").await;
            let mut bob = server.client("bob").await;
            let acks = acks.clone();
            let repo = repo.clone();
            workers.push(tokio::spawn(async move {
                for i in 0.. {
                    let Ok(p) = alice.request_promotion(request(&repo)).await else {
                        return;
                    };
                    let id = p.into_inner().id;
                    acks.lock()
                        .unwrap()
                        .entry(id.clone())
                        .or_default()
                        .push(Ack::Requested);
                    let decide = approve(&id);
                    // Mostly rejections; now and then a real tag move.
                    let ack = if (worker + i) % 5 == 0 {
                        bob.approve(decide).await.map(|_| Ack::Approved)
                    } else {
                        bob.reject(RejectRequest {
                            promotion_id: id.clone(),
                            comment: String::new(),
                        })
                        .await
                        .map(|_| Ack::Rejected)
                    };
                    match ack {
                        Ok(a) => acks.lock().unwrap().entry(id).or_default().push(a),
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..120))).await;
        server.kill_and_restart();
        for w in workers {
            w.await.expect("worker");
        }

        let mut c = server.client("bob").await;
        let v = c
            .verify_audit_log(VerifyAuditLogRequest {})
            .await
            .expect("verify")
            .into_inner();
        assert!(v.ok, "cycle {cycle}: {v:?}");
        // One read of everything per cycle: all promotions and the whole log.
        let acks = acks.lock().unwrap().clone();
        let states = all_states(&mut c).await;
        let mut entries: HashMap<(String, i32), usize> = HashMap::new();
        for e in history(&mut c, "").await {
            *entries.entry((e.promotion_id, e.action)).or_default() += 1;
        }
        assert_indexes_agree(&mut c, &repo, &states, cycle).await;
        for (id, told) in &acks {
            let state = *states
                .get(id)
                .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged promotion {id} is gone"));
            for a in told {
                let (state_ok, action) = match a {
                    Ack::Requested => (true, AuditAction::Requested),
                    Ack::Rejected => (
                        state == PromotionState::Rejected as i32,
                        AuditAction::Rejected,
                    ),
                    // A newer approved promotion of the same tag supersedes
                    // an approved one still waiting for its move.
                    Ack::Approved => (
                        [
                            PromotionState::Approved,
                            PromotionState::Promoted,
                            PromotionState::Superseded,
                        ]
                        .iter()
                        .any(|s| *s as i32 == state),
                        AuditAction::Approved,
                    ),
                };
                assert!(
                    state_ok,
                    "cycle {cycle}: {id} was acknowledged {a:?} but is in state {state}"
                );
                assert_eq!(
                    entries
                        .get(&(id.clone(), action as i32))
                        .copied()
                        .unwrap_or(0),
                    1,
                    "cycle {cycle}: {id} acknowledged {a:?}"
                );
            }
        }
    }
    let acks = acks.lock().unwrap().clone();
    assert!(
        acks.len() >= cycles,
        "too little work got through: {}",
        acks.len()
    );
    // Every acknowledged approval ends as exactly one tag move, or gives way
    // to a newer one without moving the tag.
    let mut c = server.client("bob").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (id, told) in acks.iter() {
        if told.contains(&Ack::Approved) {
            let p = loop {
                let p = get(&mut c, id).await;
                if p.state != PromotionState::Approved as i32 {
                    break p;
                }
                assert!(Instant::now() < deadline, "{id} is still APPROVED");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let applied = history(&mut c, id)
                .await
                .iter()
                .filter(|e| e.action == AuditAction::Applied as i32)
                .count();
            match PromotionState::try_from(p.state) {
                Ok(PromotionState::Promoted) => assert_eq!(applied, 1, "{id}"),
                Ok(PromotionState::Superseded) => assert_eq!(applied, 0, "{id}"),
                other => panic!("{id} ended {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_frozen_registry_does_not_block_approval() {
    let w = World::start().await;
    let digest = w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request(&repo))
        .await
        .expect("request")
        .into_inner();
    signal(w.registry.pid(), "-STOP");
    let started = Instant::now();
    let approved = w.server.client("bob").await.approve(approve(&p.id)).await;
    let took = started.elapsed();
    signal(w.registry.pid(), "-CONT");
    let approved = approved.expect("approve").into_inner();
    assert_eq!(approved.state, PromotionState::Approved as i32);
    assert!(took < Duration::from_secs(2), "Approve took {took:?}");
    wait_for_state(
        &mut alice,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        w.registry.tag_digest("app", "production").await.as_deref(),
        Some(digest.as_str())
    );
}

#[tokio::test]
async fn an_approved_move_resumes_after_a_crash() {
    let w = World::start().await;
    let digest = w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let World {
        registry,
        mut server,
    } = w;
    let p = server
        .client("alice")
        .await
        .request_promotion(request(&repo))
        .await
        .expect("request")
        .into_inner();
    signal(registry.pid(), "-STOP");
    let approved = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(approved.state, PromotionState::Approved as i32);
    server.kill_and_restart();
    signal(registry.pid(), "-CONT");
    let mut c = server.client("alice").await;
    wait_for_state(
        &mut c,
        &p.id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        registry.tag_digest("app", "production").await.as_deref(),
        Some(digest.as_str())
    );
    let actions: Vec<i32> = history(&mut c, &p.id)
        .await
        .iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            AuditAction::Requested as i32,
            AuditAction::Approved as i32,
            AuditAction::Applied as i32
        ]
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    alice
        .request_promotion(request(&w.repo("app")))
        .await
        .expect("request");
    let World {
        registry: _r,
        mut server,
    } = w;
    // Hang up first: terminate() blocks this (single-threaded) runtime, so the
    // client could not answer the server's goodbye.
    drop(alice);
    let code = server.terminate();
    assert_eq!(code, Some(0), "log:\n{}", server.log());
    assert!(server.log().contains("stopped"), "{}", server.log());
}

#[tokio::test]
async fn verify_log_offline_names_a_tampered_entry() {
    if support::server::skip_on_postgres("tampers with sled's files and reads them offline") {
        return;
    }
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    for _ in 0..3 {
        alice
            .request_promotion(request(&w.repo("app")))
            .await
            .expect("request");
    }
    let World {
        registry: _r,
        mut server,
    } = w;
    drop(alice);
    assert_eq!(server.terminate(), Some(0));
    let data = server.data_dir();
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_prodgate"))
            .args(["verify-log", "--data-dir"])
            .arg(&data)
            .output()
            .expect("run verify-log")
    };
    let ok = verify();
    assert!(ok.status.success(), "{ok:?}");
    // The start's POLICY_CHANGED entry and three about promotions.
    assert!(String::from_utf8_lossy(&ok.stdout).contains("4 entries"));
    {
        let db = sled::open(&data).expect("open data dir");
        let audit = db.open_tree("audit").expect("audit tree");
        let key = 2u64.to_be_bytes();
        let stored = audit.get(key).expect("read").expect("entry 2");
        // Same length, so the record still decodes and only the hash
        // chain can tell.
        let (from, to) = (b"crash test", b"crash TEST");
        let mut bytes = stored.to_vec();
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("entry 2 holds the request's reason");
        bytes[at..at + from.len()].copy_from_slice(to);
        audit.insert(key, bytes).expect("tamper");
        db.flush().expect("flush");
    }
    let bad = verify();
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("sequence 2"), "{out}");
}

/// A small tmpfs mounted over a temp dir, unmounted on drop. Needs root, as
/// the tests and CI run here.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mounting a tmpfs needs root");
        Tmpfs { dir }
    }

    /// Takes every free byte, so the next write fails with ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).expect("create filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // Sub-chunk leftovers.
        while f.write_all(&[0]).is_ok() {}
    }

    fn unfill(&self) {
        std::fs::remove_file(self.filler()).expect("remove filler");
    }

    fn filler(&self) -> std::path::PathBuf {
        self.dir.path().join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_closed() {
    if support::server::skip_on_postgres(
        "fills the disk of the sled data directory; PostgreSQL's disk is the cluster's",
    ) {
        return;
    }
    let fs = Tmpfs::mount();
    let registry = support::registry::TestRegistry::start().await;
    registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = format!("{}/app", registry.host);
    let mut server = support::server::TestServer::start_with_data_dir(
        &support::server::standard_config(&registry.host),
        &fs.dir.path().join("data"),
    );
    let mut alice = server.client("alice").await;
    let p = alice
        .request_promotion(request(&repo))
        .await
        .expect("request")
        .into_inner();

    fs.fill();
    // sled still has room in the log segment it is writing; keep writing until
    // it needs more, which the full disk refuses.
    let mut acknowledged = 0;
    let refusal = loop {
        match alice.request_promotion(request(&repo)).await {
            Ok(_) => acknowledged += 1,
            Err(e) => break e,
        }
        assert!(acknowledged < 20_000, "the disk never filled up");
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains("nothing was changed"),
        "{}",
        refusal.message()
    );
    // From now on every change is refused, the approval included.
    let e = server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect_err("cannot be recorded");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(registry.tag_digest("app", "production").await, None);

    fs.unfill();
    server.kill_and_restart();
    let mut c = server.client("alice").await;
    let after = get(&mut c, &p.id).await;
    assert_eq!(
        after.state,
        PromotionState::PendingApproval as i32,
        "{after:?}"
    );
    // The start's POLICY_CHANGED entry, the first request, and the
    // acknowledged ones.
    assert_eq!(
        history(&mut c, "").await.len(),
        2 + acknowledged,
        "{}",
        server.log()
    );
    let v = c
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(registry.tag_digest("app", "production").await, None);
}

#[tokio::test]
async fn an_older_promotion_approved_after_a_newer_one_never_moves_the_tag_back() {
    let w = World::start().await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;
    let a = w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let first = alice
        .request_promotion(request(&repo))
        .await
        .expect("request")
        .into_inner();
    let b = w.registry.push_image("app", Some("staging"), 1024, 2).await;
    let second = alice
        .request_promotion(request(&repo))
        .await
        .expect("request")
        .into_inner();
    signal(w.registry.pid(), "-STOP");
    // Approved in the opposite order of their requests.
    for id in [&second.id, &first.id] {
        let p = bob
            .approve(approve(id))
            .await
            .expect("approve")
            .into_inner();
        assert_eq!(p.state, PromotionState::Approved as i32);
    }
    signal(w.registry.pid(), "-CONT");
    let limit = Duration::from_secs(30);
    // The newer one moves the tag (approval order), and its move supersedes
    // the older one that waited behind it: production never goes back to a.
    wait_for_state(&mut alice, &second.id, PromotionState::Promoted, limit).await;
    let f = wait_for_state(&mut alice, &first.id, PromotionState::Superseded, limit).await;
    assert_eq!(f.superseded_by, second.id);
    assert_ne!(a, b);
    assert_eq!(
        w.registry.tag_digest("app", "production").await.as_deref(),
        Some(b.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_watches_so_clients_move_on() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request(&w.repo("app")))
        .await
        .expect("request")
        .into_inner();
    let mut stream = alice
        .watch_promotion(prodgate::pb::WatchPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    stream.message().await.expect("first").expect("state");
    let World {
        registry: _r,
        mut server,
    } = w;
    let started = Instant::now();
    let exit = tokio::task::spawn_blocking(move || (server.terminate(), server));
    let end = stream
        .message()
        .await
        .expect_err("the watch is ended by shutdown");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    drop(stream);
    drop(alice);
    let (code, server) = exit.await.expect("join");
    assert_eq!(code, Some(0), "{}", server.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the watcher: {:?}",
        started.elapsed()
    );
}
