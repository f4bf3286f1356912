//! WatchPromotion streams against a real `prodgate serve`: one principal
//! may hold at most `max_watches_per_principal` open (RESOURCE_EXHAUSTED
//! naming the limit beyond it, a closed one frees its place), and a closed
//! watch gives its memory back: the server's RSS after repeated rounds of
//! many watches opened and closed stays where the first round left it.

mod support;

use prodgate::pb::WatchPromotionRequest;
use std::time::{Duration, Instant};
use support::registry::TestRegistry;
use support::request_to;
use support::server::{TestServer, client_on, standard_config};
use tonic::Code;

/// The server's resident set, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A pending production promotion to watch.
async fn pending(registry: &TestRegistry, server: &TestServer) -> String {
    let repo = format!("{}/acme/app", registry.host);
    registry
        .push_image("acme/app", Some("staging"), 512, 1)
        .await;
    server
        .client("alice")
        .await
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner()
        .id
}

fn watch(id: &str) -> WatchPromotionRequest {
    WatchPromotionRequest {
        promotion_id: id.to_owned(),
    }
}

#[tokio::test]
async fn one_principal_may_hold_a_bounded_number_of_watches() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&format!(
        "max_watches_per_principal = 3\n{}",
        standard_config(&registry.host)
    ));
    let id = pending(&registry, &server).await;
    let mut alice = server.client("alice").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = alice
            .watch_promotion(watch(&id))
            .await
            .expect("watch")
            .into_inner();
        s.message()
            .await
            .expect("first item")
            .expect("current state");
        open.push(s);
    }
    let e = alice
        .watch_promotion(watch(&id))
        .await
        .expect_err("a fourth watch");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("max_watches_per_principal = 3"),
        "{e:?}"
    );
    // Another principal has places of its own.
    server
        .client("bob")
        .await
        .watch_promotion(watch(&id))
        .await
        .expect("bob watches");
    // A closed watch frees its place (once the server sees the stream end).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match alice.watch_promotion(watch(&id)).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a closed watch did not free its place: {e:?}"),
        }
    }
}

#[tokio::test]
async fn closed_watches_give_their_memory_back() {
    const WATCHES: usize = 2000;
    const ROUNDS: usize = 20;
    let registry = TestRegistry::start().await;
    // As the shipped Dockerfile and systemd unit run it.
    let server = TestServer::start_with_env(
        &format!(
            "max_watches_per_principal = {WATCHES}\n{}",
            standard_config(&registry.host)
        ),
        &[("MALLOC_ARENA_MAX", "2".into())],
    );
    let id = pending(&registry, &server).await;
    // Two connections: at most 1,024 streams each.
    let channels = [server.channel().await, server.channel().await];
    let before = rss_kib(server.pid());
    let mut peaks = Vec::new();
    for _ in 0..ROUNDS {
        let mut open = Vec::with_capacity(WATCHES);
        // The limit is exactly one round's watches: a round opens them all
        // only once the server has let go of the previous round's.
        let deadline = Instant::now() + Duration::from_secs(30);
        while open.len() < WATCHES {
            let mut c = client_on(&channels[open.len() % 2], "alice");
            match c.watch_promotion(watch(&id)).await {
                Ok(s) => {
                    let mut s = s.into_inner();
                    s.message()
                        .await
                        .expect("first item")
                        .expect("current state");
                    open.push(s);
                }
                Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the previous round's watches were not freed: {e:?}"),
            }
        }
        peaks.push(rss_kib(server.pid()));
        drop(open);
    }
    eprintln!(
        "server RSS {before} KiB before; with {WATCHES} watches open, round by round (KiB): {peaks:?}"
    );
    // The allocator settles over the first rounds, slowly and in steps: on
    // a busy machine it was seen adding 1-2 MiB a round up to round 12
    // (CI, session 8; the full suite here, session 9), jumping by 2.8 MiB
    // and by 9 MiB between two late rounds, and levelling out by round 15
    // (thirty rounds run by hand: under 0.3 MiB a round from there). A leak
    // of even 1 KiB per closed watch adds 2 MiB every round, however many
    // came before, so it shows in *every* round-to-round difference; a
    // settling step shows in one. The median of the last eight differences
    // (rounds 12 to 20) sees the first and ignores up to three of the
    // second (a least-squares slope over five rounds let one 2.8 MiB step
    // fail the test, and twelve rounds were too few to settle).
    let mut steps: Vec<i64> = peaks[ROUNDS - 9..]
        .windows(2)
        .map(|w| w[1] as i64 - w[0] as i64)
        .collect();
    steps.sort_unstable();
    let median = (steps[3] + steps[4]) / 2;
    assert!(
        median < 1024,
        "RSS grew by a median {median} KiB a round over the last eight rounds: {peaks:?}"
    );
}
