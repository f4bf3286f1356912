//! The writes scenario: durable write throughput and latency at 1..256
//! concurrent clients, next to the disk's raw fsync rate, an empty RPC and
//! the registry GET every RequestPromotion makes, with the group-commit
//! factor from prodgate's `/metrics`.

use crate::load::{
    Caller, ClientResult, Load, Percentiles, channels, closed_loop, micros_since, percentiles,
};
use crate::report::{Report, cpu_seconds, loadavg, median, print_table, r2, resident_kib};
use crate::setup::{config, http_client, start_server};
use crate::support::registry::{MANIFEST_ACCEPT, TestRegistry, free_port};
use crate::support::server::{Client, client_on};
use prodgate::pb::{GetPromotionRequest, RejectRequest, RequestPromotionRequest};
use reqwest::header::ACCEPT;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Appends 4 KiB and fsyncs, for `dur`: the disk's durable-write ceiling.
pub fn raw_fsync_rate(dir: &Path, dur: Duration) -> (f64, Percentiles) {
    let path = dir.join("bench-fsync.tmp");
    let mut f = std::fs::File::create(&path).expect("create the fsync probe file");
    let block = [0x5au8; 4096];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur && lat.len() < 1_000_000 {
        let t = Instant::now();
        f.write_all(&block).expect("write");
        f.sync_all().expect("fsync");
        lat.push(micros_since(t));
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    (rate, percentiles(lat))
}

/// A RequestPromotion → Reject cycle: two durable writes. `source` is a
/// digest (no registry call once pinned) or a tag (one HEAD). Without
/// `reject`, RequestPromotion alone (its promotions stay pending).
struct WriteCycle {
    alice: Client,
    bob: Client,
    repo: String,
    source: String,
    reject: bool,
}

impl Caller for WriteCycle {
    async fn call(&mut self, r: &mut ClientResult) {
        let t = Instant::now();
        let p = self
            .alice
            .request_promotion(RequestPromotionRequest {
                repository: self.repo.clone(),
                source: self.source.clone(),
                environment: "production".into(),
                reason: "bench write".into(),
                request_id: String::new(),
                break_glass: false,
            })
            .await;
        let p = match p {
            Ok(p) => {
                r.request.push(micros_since(t));
                p.into_inner()
            }
            Err(e) => return r.error(e),
        };
        if !self.reject {
            return;
        }
        let t = Instant::now();
        match self
            .bob
            .reject(RejectRequest {
                promotion_id: p.id,
                comment: "bench".into(),
            })
            .await
        {
            Ok(_) => r.reject.push(micros_since(t)),
            Err(e) => r.error(e),
        }
    }
}

/// RequestPromotion → Reject cycles by `clients` clients until `dur` passes,
/// requesting `source` (a digest or a tag).
pub async fn write_load(
    chans: &[Channel],
    clients: usize,
    repo: &str,
    source: &str,
    dur: Duration,
) -> Load {
    request_load(chans, clients, repo, source, true, dur).await
}

/// RequestPromotion of `source` by `clients` clients until `dur` passes,
/// each followed by a Reject if `reject`.
async fn request_load(
    chans: &[Channel],
    clients: usize,
    repo: &str,
    source: &str,
    reject: bool,
    dur: Duration,
) -> Load {
    let callers = (0..clients)
        .map(|i| {
            let ch = &chans[i % chans.len()];
            WriteCycle {
                alice: client_on(ch, "alice"),
                bob: client_on(ch, "bob"),
                repo: repo.to_owned(),
                source: source.to_owned(),
                reject,
            }
        })
        .collect();
    let (all, start) = closed_loop(callers, dur, "write").await;
    Load {
        p50_request: percentiles(all.request.clone()).p50,
        p50_reject: percentiles(all.reject.clone()).p50,
        ..Load::new(all, start)
    }
}

/// A GET of one manifest by digest, straight at the registry.
struct ManifestGet {
    http: reqwest::Client,
    url: String,
}

impl Caller for ManifestGet {
    async fn call(&mut self, r: &mut ClientResult) {
        let t = Instant::now();
        let got = match self
            .http
            .get(&self.url)
            .header(ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                resp.bytes().await.map(|_| ()).map_err(|e| e.to_string())
            }
            Ok(resp) => Err(resp.status().to_string()),
            Err(e) => Err(e.to_string()),
        };
        match got {
            Ok(()) => r.request.push(micros_since(t)),
            Err(e) => r.error(e),
        }
    }
}

/// GET of one manifest by digest, straight at the registry, by `clients`
/// clients until `dur` passes: the registry call every RequestPromotion makes.
async fn registry_load(url: &str, clients: usize, dur: Duration) -> Load {
    let http = http_client();
    let callers = (0..clients)
        .map(|_| ManifestGet {
            http: http.clone(),
            url: url.to_owned(),
        })
        .collect();
    let (all, start) = closed_loop(callers, dur, "registry").await;
    Load::new(all, start)
}

/// grpc.health.v1 Health/Check: an RPC that does nothing.
struct HealthCheck(HealthClient<Channel>);

impl Caller for HealthCheck {
    async fn call(&mut self, r: &mut ClientResult) {
        let t = Instant::now();
        match self
            .0
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(_) => r.request.push(micros_since(t)),
            Err(e) => r.error(e),
        }
    }
}

/// grpc.health.v1 Health/Check by `clients` clients until `dur` passes.
async fn health_load(chans: &[Channel], clients: usize, dur: Duration) -> Load {
    let callers = (0..clients)
        .map(|i| HealthCheck(HealthClient::new(chans[i % chans.len()].clone())))
        .collect();
    let (all, start) = closed_loop(callers, dur, "health").await;
    Load::new(all, start)
}

/// GetPromotion of one promotion: the same authentication, request
/// handling and response as a write, with no write. What a write costs
/// beyond this is the store's part (the job, its wake-ups, the flush).
struct ReadOne {
    client: Client,
    id: String,
}

impl Caller for ReadOne {
    async fn call(&mut self, r: &mut ClientResult) {
        let t = Instant::now();
        match self
            .client
            .get_promotion(GetPromotionRequest {
                promotion_id: self.id.clone(),
            })
            .await
        {
            Ok(_) => r.request.push(micros_since(t)),
            Err(e) => r.error(e),
        }
    }
}

/// GetPromotion of `id` by `clients` clients until `dur` passes.
async fn read_load(chans: &[Channel], clients: usize, id: &str, dur: Duration) -> Load {
    let callers = (0..clients)
        .map(|i| ReadOne {
            client: client_on(&chans[i % chans.len()], "alice"),
            id: id.to_owned(),
        })
        .collect();
    let (all, start) = closed_loop(callers, dur, "read").await;
    Load::new(all, start)
}

/// One interleaved round: writes, then reads of one promotion, then empty
/// RPCs, on the same connections right after each other, so all three
/// meet the same machine (other work on it, the allocator's state, the
/// data directory's size). With each phase's CPU per call, of the server
/// and of the bench (the client) apart: the ratio moves with both. The
/// read is the floor of a write: a write does everything the read does,
/// and the store's part besides, so reads ÷ empty bounds what writes ÷
/// empty could reach with a store that cost nothing.
struct Round {
    writes: f64,
    reads: f64,
    empty: f64,
    write_cpu: CallCpu,
    read_cpu: CallCpu,
    empty_cpu: CallCpu,
}

impl Round {
    fn ratio(&self) -> f64 {
        self.writes / self.empty
    }

    fn read_ratio(&self) -> f64 {
        self.reads / self.empty
    }
}

/// CPU microseconds per call in one phase: the server's, the bench's.
#[derive(Clone, Copy)]
struct CallCpu {
    server_us: f64,
    client_us: f64,
}

impl CallCpu {
    /// Runs `phase`, counting the CPU both processes spent per call in it.
    async fn of(server_pid: u32, phase: impl std::future::Future<Output = Load>) -> (Load, Self) {
        let server = Some(server_pid);
        let (s0, c0) = (cpu_seconds(server), cpu_seconds(None));
        let l = phase.await;
        let (s1, c1) = (cpu_seconds(server), cpu_seconds(None));
        let per_call = |secs: f64| secs * 1e6 / l.ops.max(1) as f64;
        let cpu = CallCpu {
            server_us: per_call(s1 - s0),
            client_us: per_call(c1 - c0),
        };
        (l, cpu)
    }
}

/// `rounds` rounds at `clients` clients of `dur` writes followed by `dur`
/// empty RPCs: writes per empty RPC judged per round, since the machine's
/// speed drifts between rounds more than within one.
async fn interleaved(
    server_pid: u32,
    chans: &[Channel],
    clients: usize,
    repo: &str,
    digest: &str,
    rounds: usize,
    dur: Duration,
) -> Vec<Round> {
    // The promotion the read phase reads: pending, like those the writes
    // phase creates before their Reject.
    let id = client_on(&chans[0], "alice")
        .request_promotion(RequestPromotionRequest {
            repository: repo.to_owned(),
            source: digest.to_owned(),
            environment: "production".into(),
            reason: "bench read".into(),
            request_id: String::new(),
            break_glass: false,
        })
        .await
        .expect("RequestPromotion for the read phase")
        .into_inner()
        .id;
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (w, write_cpu) =
            CallCpu::of(server_pid, write_load(chans, clients, repo, digest, dur)).await;
        let (g, read_cpu) = CallCpu::of(server_pid, read_load(chans, clients, &id, dur)).await;
        let (h, empty_cpu) = CallCpu::of(server_pid, health_load(chans, clients, dur)).await;
        for (what, l) in [("writes", &w), ("reads", &g), ("health", &h)] {
            if let Some(e) = &l.first_error {
                eprintln!(
                    "writes: interleaved {what}: {} errors, first: {e}",
                    l.errors
                );
            }
        }
        out.push(Round {
            writes: w.rate(),
            reads: g.rate(),
            empty: h.rate(),
            write_cpu,
            read_cpu,
            empty_cpu,
        });
    }
    out
}

/// Requests by tag beside the registry's own GET of that tag's manifest,
/// interleaved as [`interleaved`] does: RequestPromotion by tag alone (as
/// issue 23 measured it; the promotions stay pending), then manifest GETs
/// by `clients` clients straight at the registry. Each request makes one
/// registry round trip (a HEAD of the tag, its digest pinned).
async fn by_tag_rounds(
    chans: &[Channel],
    clients: usize,
    repo: &str,
    tag: &str,
    tag_url: &str,
    rounds: usize,
    dur: Duration,
) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let w = request_load(chans, clients, repo, tag, false, dur).await;
        let g = registry_load(tag_url, clients, dur).await;
        for (what, l) in [("requests by tag", &w), ("registry GET", &g)] {
            if let Some(e) = &l.first_error {
                eprintln!("writes: {what}: {} errors, first: {e}", l.errors);
            }
        }
        out.push((w.requests as f64 / w.secs, g.rate()));
    }
    out
}

pub async fn scrape_store_counters(http: &reqwest::Client, port: u16) -> (u64, u64) {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    (
        get("prodgate_store_commits_total "),
        get("prodgate_store_flushes_total "),
    )
}

pub async fn run(smoke: bool, registry: &TestRegistry, report: &mut Report) {
    let load_before = loadavg();
    let metrics_port = free_port();
    let server = start_server(&config(&registry.host, Some(metrics_port)), None);
    let http = http_client();
    let digest = registry
        .push_image("bench/writes", Some("staging"), 4096, 7)
        .await;
    let repo = format!("{}/bench/writes", registry.host);
    let manifest_url = format!(
        "http://{}/v2/bench/writes/manifests/{digest}",
        registry.host
    );
    let dur = Duration::from_secs(if smoke { 1 } else { 5 });
    // `PRODGATE_BENCH_WRITE_CLIENTS=64` runs only the listed levels, e.g. to
    // attach `perf` to one of them.
    let levels: Vec<usize> = match std::env::var("PRODGATE_BENCH_WRITE_CLIENTS") {
        Ok(list) => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .expect("PRODGATE_BENCH_WRITE_CLIENTS: numbers")
            })
            .collect(),
        Err(_) if smoke => vec![1, 4],
        Err(_) => vec![1, 16, 64, 256],
    };

    let probe_dir = server.dir().to_owned();
    let fsync_dur = Duration::from_millis(if smoke { 500 } else { 2000 });
    let probe = |dir: PathBuf| async move {
        tokio::task::spawn_blocking(move || raw_fsync_rate(&dir, fsync_dur))
            .await
            .expect("fsync probe")
    };
    let fsync_before = probe(probe_dir.clone()).await;

    let mut levels_done = Vec::new();
    for &c in &levels {
        let chans = channels(&server, c).await;
        let (commits0, flushes0) = scrape_store_counters(&http, metrics_port).await;
        let w = write_load(&chans, c, &repo, &digest, dur).await;
        let (commits1, flushes1) = scrape_store_counters(&http, metrics_port).await;
        let h = health_load(&chans, c, dur).await;
        let g = registry_load(&manifest_url, c, dur).await;
        for (what, l) in [("writes", &w), ("health", &h), ("registry GET", &g)] {
            if let Some(e) = &l.first_error {
                eprintln!(
                    "writes: {c} clients, {what}: {} errors, first: {e}",
                    l.errors
                );
            }
        }
        report.require(format!("writes ops/s at {c}"), w.rate());
        report.require(format!("health ops/s at {c}"), h.rate());
        report.require(format!("registry GET/s at {c}"), g.rate());
        levels_done.push((
            c,
            chans.len(),
            w,
            h,
            g,
            commits1 - commits0,
            flushes1 - flushes0,
        ));
    }
    // The disk is shared with whatever else runs: probe it again, and judge
    // against the faster of the two probes (the stricter reference).
    let fsync_after = probe(probe_dir).await;
    let fsync_rate = fsync_before.0.max(fsync_after.0);
    report.require("raw fsync rate", fsync_rate);
    print_table(
        "writes: the disk (4 KiB append + fsync loop in the data dir's filesystem)",
        &["probe", "fsyncs/s", "p50 ms", "p99 ms"],
        &[("before", &fsync_before), ("after", &fsync_after)]
            .iter()
            .map(|(when, (rate, lat))| {
                vec![
                    (*when).to_owned(),
                    format!("{rate:.0}"),
                    format!("{:.2}", lat.p50),
                    format!("{:.2}", lat.p99),
                ]
            })
            .collect::<Vec<_>>(),
    );

    let mut rows = Vec::new();
    let mut json_levels = Vec::new();
    let mut at64: Option<(f64, f64)> = None;
    for (c, conns, w, h, g, commits, flushes) in &levels_done {
        let per_flush = *commits as f64 / (*flushes).max(1) as f64;
        let flush_rate = *flushes as f64 / w.secs;
        if *c == 64 {
            at64 = Some((w.rate(), w.all.p99));
        }
        rows.push(vec![
            c.to_string(),
            conns.to_string(),
            format!("{:.0}", w.rate()),
            format!("{:.2}", w.all.p50),
            format!("{:.2}", w.all.p99),
            format!("{:.2}", w.all.p999),
            format!("{:.2}/{:.2}", w.p50_request, w.p50_reject),
            w.errors.to_string(),
            format!("{:.1}", per_flush),
            format!("{flush_rate:.0}"),
            format!("{:.2}", w.rate() / fsync_rate),
            format!("{:.0}", h.rate()),
            format!("{:.2}", h.all.p50),
            format!("{:.2}", h.all.p99),
            format!("{:.3}", w.rate() / h.rate()),
            format!("{:.0}", g.rate()),
            format!("{:.2}", g.all.p50),
        ]);
        json_levels.push(json!({
            "clients": c,
            "connections": conns,
            "writes": {
                "ops": w.ops, "errors": w.errors, "seconds": r2(w.secs),
                "ops_per_s": r2(w.rate()),
                "p50_ms": w.all.p50, "p99_ms": w.all.p99, "p999_ms": w.all.p999, "max_ms": w.all.max,
                "p50_request_ms": w.p50_request, "p50_reject_ms": w.p50_reject,
                "first_error": w.first_error,
            },
            "store": {
                "commits": commits, "flushes": flushes,
                "commits_per_flush": r2(per_flush),
                "flushes_per_s": r2(flush_rate),
            },
            "writes_vs_raw_fsync": w.rate() / fsync_rate,
            "health": {
                "ops": h.ops, "errors": h.errors, "ops_per_s": r2(h.rate()),
                "p50_ms": h.all.p50, "p99_ms": h.all.p99, "p999_ms": h.all.p999,
            },
            "writes_vs_empty_rpc": w.rate() / h.rate(),
            "registry_manifest_get": {
                "ops": g.ops, "errors": g.errors, "ops_per_s": r2(g.rate()),
                "p50_ms": g.all.p50, "p99_ms": g.all.p99,
            },
        }));
    }
    // Writes per empty RPC, judged per interleaved round (issue 23's
    // measure): 64 clients, 5 rounds of 2 s + 2 s (smoke: 4 clients, 2
    // rounds of 0.5 s + 0.5 s).
    let (ic, rounds_n, phase) = if smoke {
        (4, 2, Duration::from_millis(500))
    } else {
        (64, 5, Duration::from_secs(2))
    };
    let ichans = channels(&server, ic).await;
    let rounds = interleaved(server.pid(), &ichans, ic, &repo, &digest, rounds_n, phase).await;
    for (i, r) in rounds.iter().enumerate() {
        report.require(format!("interleaved round {} writes/s", i + 1), r.writes);
        report.require(format!("interleaved round {} empty RPC/s", i + 1), r.empty);
        report.require(format!("interleaved round {} reads/s", i + 1), r.reads);
    }
    let ratio = median(&rounds.iter().map(Round::ratio).collect::<Vec<_>>());
    let read_ratio = median(&rounds.iter().map(Round::read_ratio).collect::<Vec<_>>());
    print_table(
        &format!(
            "writes: interleaved rounds at {ic} clients ({:.1} s each of RequestPromotion -> Reject, GetPromotion, Health/Check, per round)",
            phase.as_secs_f64(),
        ),
        &[
            "round",
            "writes/s",
            "reads/s",
            "empty RPC/s",
            "writes/empty",
            "reads/empty",
            "server CPU us/write",
            "/read",
            "/empty",
            "bench CPU us/write",
            "/read",
            "/empty",
        ],
        &rounds
            .iter()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    (i + 1).to_string(),
                    format!("{:.0}", r.writes),
                    format!("{:.0}", r.reads),
                    format!("{:.0}", r.empty),
                    format!("{:.3}", r.ratio()),
                    format!("{:.3}", r.read_ratio()),
                    format!("{:.0}", r.write_cpu.server_us),
                    format!("{:.0}", r.read_cpu.server_us),
                    format!("{:.0}", r.empty_cpu.server_us),
                    format!("{:.0}", r.write_cpu.client_us),
                    format!("{:.0}", r.read_cpu.client_us),
                    format!("{:.0}", r.empty_cpu.client_us),
                ]
            })
            .chain(std::iter::once({
                let m = |f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
                vec![
                    "median".to_owned(),
                    format!("{:.0}", m(|r| r.writes)),
                    format!("{:.0}", m(|r| r.reads)),
                    format!("{:.0}", m(|r| r.empty)),
                    format!("{ratio:.3}"),
                    format!("{read_ratio:.3}"),
                    format!("{:.0}", m(|r| r.write_cpu.server_us)),
                    format!("{:.0}", m(|r| r.read_cpu.server_us)),
                    format!("{:.0}", m(|r| r.empty_cpu.server_us)),
                    format!("{:.0}", m(|r| r.write_cpu.client_us)),
                    format!("{:.0}", m(|r| r.read_cpu.client_us)),
                    format!("{:.0}", m(|r| r.empty_cpu.client_us)),
                ]
            }))
            .collect::<Vec<_>>(),
    );
    if !smoke {
        report.target(
            "writes",
            "writes / empty RPC at 64 clients (median of interleaved rounds)",
            ">= 0.5",
            format!("{ratio:.3}"),
            ratio >= 0.5,
        );
    }
    // Requests by tag ÷ the registry's manifest GET of the tag, per round.
    let tag_url = format!("http://{}/v2/bench/writes/manifests/staging", registry.host);
    let tag_rounds = by_tag_rounds(&ichans, ic, &repo, "staging", &tag_url, rounds_n, phase).await;
    let tag_ratio = median(&tag_rounds.iter().map(|(r, g)| r / g).collect::<Vec<_>>());
    print_table(
        &format!(
            "writes: requests by tag at {ic} clients ({:.1} s of RequestPromotion of a tag, then {:.1} s of the registry's manifest GET of the tag, per round)",
            phase.as_secs_f64(),
            phase.as_secs_f64()
        ),
        &[
            "round",
            "requests by tag/s",
            "registry GET/s",
            "requests/GET",
        ],
        &tag_rounds
            .iter()
            .enumerate()
            .map(|(i, (r, g))| {
                vec![
                    (i + 1).to_string(),
                    format!("{r:.0}"),
                    format!("{g:.0}"),
                    format!("{:.3}", r / g),
                ]
            })
            .chain(std::iter::once(vec![
                "median".to_owned(),
                String::new(),
                String::new(),
                format!("{tag_ratio:.3}"),
            ]))
            .collect::<Vec<_>>(),
    );
    if !smoke {
        report.target(
            "writes",
            "requests by tag / registry manifest GET at 64 clients (median of interleaved rounds)",
            ">= 0.8",
            format!("{tag_ratio:.3}"),
            tag_ratio >= 0.8,
        );
    }
    let by_tag_json = json!({
        "rounds": tag_rounds.iter().map(|(r, g)| json!({
            "requests_per_s": r2(*r),
            "registry_get_per_s": r2(*g),
            "ratio": r / g,
        })).collect::<Vec<_>>(),
        "median_ratio": tag_ratio,
    });
    let interleaved_json = json!({
        "clients": ic,
        "phase_seconds": phase.as_secs_f64(),
        "rounds": rounds.iter().map(|r| json!({
            "writes_per_s": r2(r.writes),
            "reads_per_s": r2(r.reads),
            "empty_rpc_per_s": r2(r.empty),
            "ratio": r.ratio(),
            "read_ratio": r.read_ratio(),
            "server_cpu_us_per_write": r2(r.write_cpu.server_us),
            "server_cpu_us_per_read": r2(r.read_cpu.server_us),
            "server_cpu_us_per_empty": r2(r.empty_cpu.server_us),
            "bench_cpu_us_per_write": r2(r.write_cpu.client_us),
            "bench_cpu_us_per_read": r2(r.read_cpu.client_us),
            "bench_cpu_us_per_empty": r2(r.empty_cpu.client_us),
        })).collect::<Vec<_>>(),
        "median_ratio": ratio,
        "median_read_ratio": read_ratio,
    });
    let rss_kb = resident_kib(server.pid()).peak;
    print_table(
        &format!(
            "writes: RequestPromotion -> Reject cycles, every RPC one durable write ({}s per level; server peak RSS {} MiB)",
            dur.as_secs(),
            rss_kb / 1024
        ),
        &[
            "clients",
            "conns",
            "writes/s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "p50 req/rej",
            "errors",
            "writes/fsync",
            "fsyncs/s",
            "x raw fsync",
            "empty RPC/s",
            "p50 ms",
            "p99 ms",
            "writes/empty",
            "reg GET/s",
            "p50 ms",
        ],
        &rows,
    );
    if let Some((rate, p99)) = at64 {
        report.target(
            "writes",
            "writes/s at 64 clients vs raw fsync",
            ">= 10x",
            format!("{:.1}x ({rate:.0} vs {fsync_rate:.0}/s)", rate / fsync_rate),
            rate >= 10.0 * fsync_rate,
        );
        report.target(
            "writes",
            "writes/s at 64 clients",
            ">= 5000/s",
            format!("{rate:.0}/s"),
            rate >= 5000.0,
        );
        report.target(
            "writes",
            "p99 at 64 clients",
            "<= 25 ms",
            format!("{p99:.2} ms"),
            p99 <= 25.0,
        );
    }
    if smoke {
        println!("  (targets are judged at 64 clients, which smoke mode does not run)");
    } else {
        report.print_targets("writes");
    }
    report.sections.insert(
        "writes".into(),
        json!({
            "seconds_per_level": dur.as_secs(),
            "raw_fsync": {
                "reference_per_s": r2(fsync_rate),
                "before": { "per_s": r2(fsync_before.0), "p50_ms": fsync_before.1.p50, "p99_ms": fsync_before.1.p99 },
                "after": { "per_s": r2(fsync_after.0), "p50_ms": fsync_after.1.p50, "p99_ms": fsync_after.1.p99 },
            },
            "levels": json_levels,
            "interleaved": interleaved_json,
            "requests_by_tag": by_tag_json,
            "server_peak_rss_kib": rss_kb,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        }),
    );
}
