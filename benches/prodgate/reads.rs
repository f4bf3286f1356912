//! The reads scenario: a data directory bulk-loaded through `Store::write`
//! and `domain::machine` to 1,000,000 audit entries, then the server's
//! start-up time, read latencies, resident memory and bytes on disk per
//! entry.

use crate::load::{micros_since, percentiles};
use crate::report::{MIB, Report, Resident, loadavg, ms, print_table, r2, resident_kib};
use crate::setup::{config, start_server};
use crate::support::hostile::digest_of;
use crate::support::registry::{OCI_CONFIG, OCI_MANIFEST};
use crate::support::server::{Client, TestServer, client_on};
use prodgate::clock::SystemClock;
use prodgate::config::{Config, Files};
use prodgate::domain::decision;
use prodgate::domain::machine::{self, NewPromotion};
use prodgate::domain::model::{Promotion, PromotionId};
use prodgate::domain::policy::{EnvironmentPolicy, Principal};
use prodgate::error::Error as PgError;
use prodgate::pb::{
    GetCheckpointRequest, GetConsistencyProofRequest, GetDeployedRequest, GetInclusionProofRequest,
    GetPromotionRequest, HistoryRequest, ListPromotionsRequest, VerifyAuditLogRequest,
};
use prodgate::store::{Store, StoredManifest, UnitOfWork};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The registry host written into bulk-loaded records; never contacted.
const READS_HOST: &str = "registry.bench.example";

/// What one bulk-loaded promotion goes through.
#[derive(Clone, Copy)]
enum Story {
    /// production: request, approve, applied (3 entries)
    Promoted,
    /// production: request, reject (2)
    Rejected,
    /// staging (no approval): request, applied (2)
    Staged,
    /// canary: request, approve, applied (3)
    Canary,
    /// production: request only, left pending (1); fills the last entry
    Pending,
}

impl Story {
    fn entries(self) -> u64 {
        match self {
            Story::Promoted | Story::Canary => 3,
            Story::Rejected | Story::Staged => 2,
            Story::Pending => 1,
        }
    }
}

struct Fixture {
    production: EnvironmentPolicy,
    staging: EnvironmentPolicy,
    canary: EnvironmentPolicy,
    requesters: Vec<Principal>,
    approvers: Vec<Principal>,
}

/// The policies and principals of the config the reads server runs with,
/// so the loaded records are what that server would have written.
fn fixture() -> Fixture {
    let c = Config::parse_with(&config(READS_HOST, None), Files::WarnIfAbsent)
        .expect("the bench's own config is valid")
        .config;
    let env = |name: &str| {
        c.environment(name)
            .unwrap_or_else(|| panic!("the bench config has no environment {name}"))
            .clone()
    };
    let who = |name: &str| {
        let p = c
            .principals
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("the bench config has no principal {name}"));
        Principal::new(p.name.clone(), p.groups.clone())
    };
    Fixture {
        production: env("production"),
        staging: env("staging"),
        canary: env("canary"),
        requesters: vec![who("alice"), who("rita")],
        approvers: vec![who("bob"), who("dave"), who("erin")],
    }
}

fn reads_repository(i: usize) -> String {
    format!("{READS_HOST}/team{:02}/service{i:04}", i % 40)
}

fn random_digest(rng: &mut StdRng) -> String {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    format!("sha256:{}", hex::encode(b))
}

/// A plausible OCI image manifest (config and five layers, ~1 KiB) and its
/// digest: what the request path pins next to the promotion.
fn random_manifest(rng: &mut StdRng) -> (String, StoredManifest) {
    let layers: Vec<Value> = (0..5)
        .map(|_| {
            json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": random_digest(rng),
                "size": rng.random_range(1_000..50_000_000u64),
            })
        })
        .collect();
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": random_digest(rng), "size": rng.random_range(500..5000u64) },
        "layers": layers,
    }))
    .expect("manifest json");
    (
        digest_of(&bytes),
        StoredManifest {
            media_type: OCI_MANIFEST.to_owned(),
            bytes,
        },
    )
}

/// Writes one promotion's story through `Store::write` with the state
/// machine, one write (one commit) per transition, as the server does; the
/// request also pins its manifest, as the request path does.
async fn load_story(
    store: &Store,
    fx: &Fixture,
    story: Story,
    repository: String,
    rng: &mut StdRng,
) -> Result<(), PgError> {
    let policy = match story {
        Story::Staged => fx.staging.clone(),
        Story::Canary => fx.canary.clone(),
        _ => fx.production.clone(),
    };
    let requester = fx.requesters[rng.random_range(0..fx.requesters.len())].clone();
    let approver = fx.approvers[rng.random_range(0..fx.approvers.len())].clone();
    let release = rng.random_range(0..10_000);
    let (digest, manifest) = random_manifest(rng);
    let new = NewPromotion {
        repository,
        environment: policy.name.clone(),
        source: format!("v1.{release}"),
        digest,
        reason: format!("release 1.{release}: routine rollout"),
        request_id: String::new(),
        project: String::new(),
        rollback: false,
    };
    let previous = random_digest(rng);
    let pol = policy.clone();
    let p: Promotion = store
        .write(move |tx: &mut dyn UnitOfWork| {
            let now = tx.now();
            // As the service decides it (no gate but approvals here).
            let f = decision::bare_facts(&pol, now);
            let o = decision::request(tx.next_id(), new, &requester, false, &f)
                .map_err(PgError::from)?;
            tx.put_manifest(&o.promotion.repository, &o.promotion.digest, &manifest)?;
            tx.commit(&o.promotion, o.event)?;
            Ok::<_, PgError>(o.promotion)
        })
        .await?;
    let id = p.id;
    match story {
        Story::Pending => {}
        Story::Rejected => {
            step(store, id, move |p, now| {
                machine::reject(p, &approver, &policy, "not this week", now)
            })
            .await?;
        }
        Story::Staged => {
            step(store, id, move |p, now| machine::applied(p, &previous, now)).await?;
        }
        Story::Promoted | Story::Canary => {
            step(store, id, move |p, now| {
                let f = decision::bare_facts(&policy, now);
                decision::approve(p, &approver, false, "lgtm", &f).map_err(|r| match r {
                    decision::Refusal::Domain(d) => d,
                    other => unreachable!("no gate refuses here: {other:?}"),
                })
            })
            .await?;
            step(store, id, move |p, now| machine::applied(p, &previous, now)).await?;
        }
    }
    Ok(())
}

/// One transition of a stored promotion, committed with its audit entry.
async fn step(
    store: &Store,
    id: PromotionId,
    f: impl FnOnce(
        &Promotion,
        prodgate::domain::model::Time,
    ) -> Result<machine::Outcome, machine::DomainError>
    + Send
    + 'static,
) -> Result<(), PgError> {
    store
        .write(move |tx: &mut dyn UnitOfWork| {
            let p = tx.get(id)?.ok_or(PgError::PromotionNotFound(id))?;
            let now = tx.now();
            let o = f(&p, now)?;
            tx.commit(&o.promotion, o.event)?;
            Ok::<_, PgError>(())
        })
        .await
}

struct Loaded {
    entries: u64,
    promotions: u64,
    secs: f64,
    commits: u64,
    flushes: u64,
}

impl Loaded {
    fn json(&self) -> Value {
        json!({
            "entries": self.entries, "promotions": self.promotions, "seconds": self.secs,
            "commits": self.commits, "flushes": self.flushes,
        })
    }

    fn from_json(v: &Value) -> Loaded {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Loaded {
            entries: n("entries"),
            promotions: n("promotions"),
            secs: v["seconds"].as_f64().unwrap_or(f64::NAN),
            commits: n("commits"),
            flushes: n("flushes"),
        }
    }
}

/// Fills `dir` to `target` audit entries with `writers` concurrent writers.
async fn bulk_load(dir: &Path, target: u64, repos: usize, writers: usize) -> Loaded {
    let store = prodgate::store::sled::open(dir, Arc::new(SystemClock))
        .expect("open the store for bulk load");
    let claimed = Arc::new(AtomicU64::new(0));
    let fx = Arc::new(fixture());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (store, claimed, fx) = (store.clone(), claimed.clone(), fx.clone());
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(0xbe9c_0000 + w as u64);
            let mut promotions = 0u64;
            loop {
                let mut story = match rng.random_range(0..100) {
                    0..60 => Story::Promoted,
                    60..75 => Story::Rejected,
                    75..95 => Story::Staged,
                    _ => Story::Canary,
                };
                let got = claimed.fetch_add(story.entries(), Ordering::Relaxed);
                if got >= target {
                    break;
                }
                story = match target - got {
                    1 => Story::Pending,
                    2 if story.entries() > 2 => Story::Rejected,
                    _ => story,
                };
                let repo = reads_repository(rng.random_range(0..repos));
                load_story(&store, &fx, story, repo, &mut rng)
                    .await
                    .expect("bulk-load write");
                promotions += 1;
            }
            promotions
        });
    }
    let mut promotions = 0;
    let progress = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(15));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = store.stats().commits.load(Ordering::Relaxed);
                println!(
                    "  bulk load: {n} of {target} entries after {:.0} s ({:.0}/s)",
                    started.elapsed().as_secs_f64(),
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    while let Some(n) = tasks.join_next().await {
        promotions += n.expect("bulk-load task");
    }
    progress.abort();
    let _ = progress.await;
    let secs = started.elapsed().as_secs_f64();
    let entries = store.audit_len().await.expect("audit length");
    let stats = store.stats();
    let (commits, flushes) = (
        stats.commits.load(Ordering::Relaxed),
        stats.flushes.load(Ordering::Relaxed),
    );
    drop(store);
    wait_for_writer_exit();
    Loaded {
        entries,
        promotions,
        secs,
        commits,
        flushes,
    }
}

/// The store's writer thread closes the database after its final flush once
/// the last handle is gone; the server cannot open it before that.
fn wait_for_writer_exit() {
    let deadline = Instant::now() + Duration::from_secs(300);
    let alive = || {
        std::fs::read_dir("/proc/self/task").is_ok_and(|d| {
            d.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("prodgate-store"))
            })
        })
    };
    while alive() {
        assert!(Instant::now() < deadline, "the store writer did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dir_size(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut allocated) = (0, 0);
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                let (a, b) = dir_size(&e.path());
                apparent += a;
                allocated += b;
            } else {
                apparent += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

#[derive(Clone, Copy)]
enum ReadCall {
    History,
    List,
    ListByRepository,
    Get,
    Deployed,
    // Reads any caller can send that once scanned the whole log (issue 9):
    // now a seek, an index and a verified prefix.
    HistoryFromTheFuture,
    ListByUnusedEnvironment,
    Verify,
    // Evidence (issue 12): proofs read stored Merkle nodes, never recompute.
    Checkpoint,
    Inclusion,
    Consistency,
}

impl ReadCall {
    const ALL: [ReadCall; 11] = [
        ReadCall::History,
        ReadCall::List,
        ReadCall::ListByRepository,
        ReadCall::Get,
        ReadCall::Deployed,
        ReadCall::HistoryFromTheFuture,
        ReadCall::ListByUnusedEnvironment,
        ReadCall::Verify,
        ReadCall::Checkpoint,
        ReadCall::Inclusion,
        ReadCall::Consistency,
    ];

    fn name(self) -> &'static str {
        match self {
            ReadCall::History => "History by repository, page 100",
            ReadCall::List => "ListPromotions, page 100",
            ReadCall::ListByRepository => "ListPromotions by repository, page 100",
            ReadCall::Get => "GetPromotion (random id)",
            ReadCall::Deployed => "GetDeployed (random repository)",
            ReadCall::HistoryFromTheFuture => "History since tomorrow (matches nothing)",
            ReadCall::ListByUnusedEnvironment => {
                "ListPromotions by an environment with no promotions"
            }
            ReadCall::Verify => "VerifyAuditLog (the first call checks everything)",
            ReadCall::Checkpoint => "GetCheckpoint (tree head, unsigned)",
            ReadCall::Inclusion => "GetInclusionProof (random entry, current size)",
            ReadCall::Consistency => "GetConsistencyProof (random size to current)",
        }
    }

    /// Calls with a p99 target of 5 ms.
    fn is_page(self) -> bool {
        !matches!(self, ReadCall::Get | ReadCall::Deployed)
    }
}

/// One read RPC; returns how many items it answered with.
async fn read_call(
    c: &mut Client,
    kind: ReadCall,
    repo: &str,
    id: u64,
    sequence: u64,
) -> Result<usize, tonic::Status> {
    Ok(match kind {
        ReadCall::History => c
            .history(HistoryRequest {
                repository: repo.to_owned(),
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .entries
            .len(),
        ReadCall::List | ReadCall::ListByRepository => c
            .list_promotions(ListPromotionsRequest {
                repository: match kind {
                    ReadCall::ListByRepository => repo.to_owned(),
                    _ => String::new(),
                },
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .promotions
            .len(),
        ReadCall::Get => {
            c.get_promotion(GetPromotionRequest {
                promotion_id: id.to_string(),
            })
            .await?;
            1
        }
        ReadCall::Deployed => {
            c.get_deployed(GetDeployedRequest {
                repository: repo.to_owned(),
                environment: "production".into(),
                at: None,
            })
            .await?;
            1
        }
        ReadCall::HistoryFromTheFuture => {
            let tomorrow = std::time::SystemTime::now() + Duration::from_secs(86_400);
            c.history(HistoryRequest {
                since: Some(prodgate::pb::Timestamp::from(tomorrow)),
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .entries
            .len()
        }
        ReadCall::ListByUnusedEnvironment => c
            .list_promotions(ListPromotionsRequest {
                environment: "no-such-environment".into(),
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .promotions
            .len(),
        ReadCall::Checkpoint => {
            c.get_checkpoint(GetCheckpointRequest {}).await?;
            1
        }
        ReadCall::Inclusion => c
            .get_inclusion_proof(GetInclusionProofRequest {
                sequence,
                tree_size: 0,
            })
            .await?
            .into_inner()
            .hashes
            .len(),
        ReadCall::Consistency => c
            .get_consistency_proof(GetConsistencyProofRequest {
                from_size: sequence,
                to_size: 0,
            })
            .await?
            .into_inner()
            .hashes
            .len(),
        ReadCall::Verify => {
            let v = c
                .verify_audit_log(VerifyAuditLogRequest {})
                .await?
                .into_inner();
            if !v.ok {
                return Err(tonic::Status::data_loss(v.message));
            }
            1
        }
    })
}

/// Starts `prodgate serve` on `data` and polls until an RPC succeeds; returns
/// the server, a client, and the times from spawn to the listening line and
/// to the first successful RPC.
async fn start_and_connect(data: &Path) -> (TestServer, Client, f64, f64) {
    let spawned = Instant::now();
    let server = start_server(&config(READS_HOST, None), Some(data));
    let listening_ms = ms(spawned.elapsed());
    let alice = loop {
        let ch = server.channel().await;
        let mut c = client_on(&ch, "alice");
        let ok = c
            .get_promotion(GetPromotionRequest {
                promotion_id: "1".into(),
            })
            .await
            .is_ok();
        if ok {
            break c;
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(300),
            "server never answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (server, alice, listening_ms, ms(spawned.elapsed()))
}

pub async fn run(smoke: bool, report: &mut Report) {
    let load_before = loadavg();
    let (mut target, repos, calls) = if smoke {
        (5_000u64, 100usize, 50usize)
    } else {
        (1_000_000, 1000, 1000)
    };
    // `PRODGATE_BENCH_READS_ENTRIES=200000` loads fewer entries, to compare
    // bytes per entry between store changes quickly. Not for recorded runs.
    if let Ok(n) = std::env::var("PRODGATE_BENCH_READS_ENTRIES") {
        target = n.parse().expect("PRODGATE_BENCH_READS_ENTRIES: a number");
    }
    let dir = tempfile::Builder::new()
        .prefix("prodgate-bench-reads-")
        .tempdir()
        .expect("temp dir");
    // For iterating on read performance without reloading: keep the data
    // directory at PRODGATE_BENCH_READS_DATA and reuse it when it is there.
    let kept = std::env::var_os("PRODGATE_BENCH_READS_DATA").map(PathBuf::from);
    let data = kept.clone().unwrap_or_else(|| dir.path().join("data"));
    let sidecar = data.with_extension("bench-load.json");
    let reused = kept.is_some() && sidecar.exists();
    let loaded = if reused {
        let v: Value = serde_json::from_slice(&std::fs::read(&sidecar).expect("read sidecar"))
            .expect("sidecar json");
        println!(
            "  reads: reusing {} (load numbers from its first run)",
            data.display()
        );
        Loaded::from_json(&v)
    } else {
        let l = bulk_load(&data, target, repos, 256).await;
        if kept.is_some() {
            std::fs::write(&sidecar, l.json().to_string()).expect("write sidecar");
            // `PRODGATE_BENCH_READS_LOAD_ONLY=1` stops here, so copies of a
            // directory sled has not reopened yet can be used to profile the
            // first start after the load.
            if std::env::var_os("PRODGATE_BENCH_READS_LOAD_ONLY").is_some() {
                println!("  reads: loaded {} and stopped", data.display());
                return;
            }
        }
        l
    };
    let load_rate = loaded.entries as f64 / loaded.secs;
    let (apparent, allocated) = dir_size(&data);
    let per_entry = apparent as f64 / loaded.entries as f64;
    report.require("reads load rate", load_rate);
    print_table(
        "reads: bulk load through Store::write + domain::machine (256 concurrent writers)",
        &[
            "entries",
            "promotions",
            "repos",
            "seconds",
            "entries/s",
            "commits/flush",
            "disk MiB",
            "alloc MiB",
            "B/entry",
        ],
        &[vec![
            loaded.entries.to_string(),
            loaded.promotions.to_string(),
            repos.to_string(),
            format!("{:.1}", loaded.secs),
            format!("{load_rate:.0}"),
            format!(
                "{:.1}",
                loaded.commits as f64 / loaded.flushes.max(1) as f64
            ),
            format!("{:.1}", apparent as f64 / MIB as f64),
            format!("{:.1}", allocated as f64 / MIB as f64),
            format!("{per_entry:.0}"),
        ]],
    );

    // The first start after the load is a restart after a million writes:
    // sled replays its log since its last start-up snapshot.
    let (server, mut alice, listening_ms, startup_ms) = start_and_connect(&data).await;
    let rss_start = resident_kib(server.pid()).now;

    let mut rng = StdRng::seed_from_u64(42);
    let repo_picks: Vec<String> = (0..calls)
        .map(|_| reads_repository(rng.random_range(0..repos)))
        .collect();
    let id_picks: Vec<u64> = (0..calls)
        .map(|_| rng.random_range(1..=loaded.promotions))
        .collect();
    let size = alice
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map_or(1, |c| c.into_inner().size.max(1));
    let seq_picks: Vec<u64> = (0..calls).map(|_| rng.random_range(1..=size)).collect();
    let mut rows = Vec::new();
    let mut json_calls = serde_json::Map::new();
    let mut page_p99 = Vec::new();
    for kind in ReadCall::ALL {
        let mut lat = Vec::with_capacity(calls);
        let (mut errors, mut first) = (0u64, None);
        for i in 0..calls {
            let t = Instant::now();
            match read_call(&mut alice, kind, &repo_picks[i], id_picks[i], seq_picks[i]).await {
                Ok(_) => lat.push(micros_since(t)),
                Err(e) => {
                    errors += 1;
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let p = percentiles(lat);
        let name = kind.name();
        // Resident memory after each kind of call, so the table shows which
        // reads raise the peak (issue 23: the whole VerifyAuditLog walk).
        let Resident { now: rss, peak } = resident_kib(server.pid());
        if let Some(e) = &first {
            eprintln!("reads {name}: {errors} errors, first: {e}");
        }
        report.require(format!("reads {name} p50"), p.p50);
        if kind.is_page() {
            page_p99.push((name, p.p99));
        }
        rows.push(vec![
            name.to_owned(),
            p.n.to_string(),
            errors.to_string(),
            format!("{:.2}", p.p50),
            format!("{:.2}", p.p99),
            format!("{:.2}", p.max),
            (rss / 1024).to_string(),
            (peak / 1024).to_string(),
        ]);
        json_calls.insert(
            name.to_owned(),
            json!({ "calls": p.n, "errors": errors, "p50_ms": p.p50, "p99_ms": p.p99, "max_ms": p.max, "first_error": first, "rss_kib_after": rss, "peak_kib_after": peak }),
        );
    }
    let Resident {
        now: rss_end,
        peak: hwm,
    } = resident_kib(server.pid());
    report.require("reads server RSS", rss_end as f64);
    report.require("reads startup", startup_ms);
    // A clean stop and an immediate second start: nothing to replay now.
    drop(alice);
    let mut server = server;
    let stopped = Instant::now();
    tokio::task::block_in_place(|| server.terminate());
    let stop_ms = ms(stopped.elapsed());
    drop(server);
    let (server, alice, _, restart_ms) = start_and_connect(&data).await;
    let rss_restart = resident_kib(server.pid()).now;
    drop(alice);
    drop(server);
    print_table(
        &format!(
            "reads: {} entries; first start after the load {startup_ms:.0} ms (listening after {listening_ms:.0} ms), clean stop {stop_ms:.0} ms, restart {restart_ms:.0} ms; RSS {} MiB after start-up, {} MiB after reads (peak {} MiB), {} MiB after restart",
            loaded.entries,
            rss_start / 1024,
            rss_end / 1024,
            hwm / 1024,
            rss_restart / 1024
        ),
        &[
            "call",
            "calls",
            "errors",
            "p50 ms",
            "p99 ms",
            "max ms",
            "RSS MiB after",
            "peak MiB after",
        ],
        &rows,
    );
    for (name, p99) in &page_p99 {
        report.target(
            "reads",
            &format!("{name} p99"),
            "<= 5 ms",
            format!("{p99:.2} ms"),
            *p99 <= 5.0,
        );
    }
    report.target(
        "reads",
        "start-up (spawn -> first RPC), first start after the load",
        "<= 1 s",
        format!("{startup_ms:.0} ms"),
        startup_ms <= 1000.0,
    );
    let rss_mb = rss_end.max(hwm) as f64 * 1024.0 / 1e6;
    report.target(
        "reads",
        "server resident memory (peak)",
        "<= 150 MB",
        format!("{rss_mb:.0} MB"),
        rss_mb <= 150.0,
    );
    report.print_targets("reads");
    report.sections.insert(
        "reads".into(),
        json!({
            "load": {
                "entries": loaded.entries, "promotions": loaded.promotions, "repositories": repos,
                "writers": 256, "seconds": r2(loaded.secs), "entries_per_s": r2(load_rate),
                "commits": loaded.commits, "flushes": loaded.flushes,
            },
            "disk": { "apparent_bytes": apparent, "allocated_bytes": allocated, "bytes_per_entry": r2(per_entry) },
            "startup_ms": r2(startup_ms),
            "listening_ms": r2(listening_ms),
            "clean_stop_ms": r2(stop_ms),
            "restart_ms": r2(restart_ms),
            "reused_data_dir": reused,
            "rss_kib": { "after_startup": rss_start, "after_reads": rss_end, "peak": hwm, "after_restart": rss_restart },
            "calls": json_calls,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        }),
    );
    drop(dir);
}
