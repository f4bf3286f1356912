//! prodgate benchmarks, end to end against a release-built `prodgate serve`
//! and Debian's `docker-registry` on loopback:
//!
//! ```sh
//! cargo bench --bench prodgate -- [apply|writes|reads|all] [--smoke]
//! ```
//!
//! - `apply`: cost of applying an approved promotion as the image grows
//!   (1 MiB, 100 MiB, 1 GiB of layers), next to `skopeo copy` and a
//!   pull-everything-then-push client (what `docker pull/tag/push` does),
//!   all through the counting proxy of `tests/support/proxy.rs`.
//! - `writes`: durable write throughput and latency at 1..256 concurrent
//!   clients, next to the disk's raw fsync rate and an empty RPC (health
//!   check), with the group-commit factor from prodgate's `/metrics`.
//! - `reads`: a data directory bulk-loaded through `Store::write` to 1,000,000
//!   audit entries, then start-up time, read latencies, resident memory and
//!   bytes on disk per entry.
//!
//! Every scenario prints a table; the run ends with one line `JSON: {...}`.
//! `--smoke` runs everything at tiny sizes; it checks that each scenario
//! produced numbers, never how good they are (exit status 1 if one did not).
//!
//! For profiling, not for recorded runs:
//! - `PRODGATE_BENCH_READS_DATA=DIR` keeps the reads scenario's data
//!   directory at `DIR` and reuses it on later runs (skipping the bulk load);
//!   with `PRODGATE_BENCH_READS_LOAD_ONLY=1` the run stops after the load.
//! - `PRODGATE_BENCH_READS_ENTRIES=N` loads N entries instead of 1,000,000.
//! - `PRODGATE_BENCH_WRITE_CLIENTS=64` runs only the listed write levels.
//!
//! Results are written up in BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../tests/support/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../tests/support/registry.rs"]
mod registry;
#[allow(dead_code)]
#[path = "../tests/support/server.rs"]
mod server;

use prodgate::clock::SystemClock;
use prodgate::domain::machine::{self, NewPromotion};
use prodgate::domain::model::{Promotion, PromotionId};
use prodgate::domain::policy::{Approver, EnvironmentPolicy, Principal};
use prodgate::error::Error as PgError;
use prodgate::pb::promotion_service_client::PromotionServiceClient;
use prodgate::pb::{
    ApproveRequest, GetDeployedRequest, GetPromotionRequest, HistoryRequest, ListPromotionsRequest,
    PromotionState, RejectRequest, RequestPromotionRequest, WatchPromotionRequest,
};
use prodgate::store::{Store, StoredManifest, UnitOfWork};
use proxy::{FaultProxy, Seen};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use registry::TestRegistry;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use serde_json::{Value, json};
use server::{Bearer, Client, TestServer};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const MIB: usize = 1024 * 1024;
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// The registry host written into bulk-loaded records; never contacted.
const READS_HOST: &str = "registry.bench.example";
/// Clients per HTTP/2 connection in the write and empty-RPC loads.
const CLIENTS_PER_CHANNEL: usize = 8;
/// At most this many connections, whatever the client count.
const MAX_CHANNELS: usize = 8;

// ---------------------------------------------------------------- arguments

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Apply,
    Writes,
    Reads,
}

struct Args {
    scenarios: Vec<Scenario>,
    smoke: bool,
}

fn parse_args() -> Args {
    let mut scenarios = Vec::new();
    let mut smoke = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            // cargo passes `--bench` to every bench target.
            "--bench" => {}
            "--smoke" => smoke = true,
            "apply" => scenarios.push(Scenario::Apply),
            "writes" => scenarios.push(Scenario::Writes),
            "reads" => scenarios.push(Scenario::Reads),
            "all" => scenarios.extend([Scenario::Apply, Scenario::Writes, Scenario::Reads]),
            other => {
                eprintln!(
                    "unknown argument {other:?}\nusage: cargo bench --bench prodgate -- [apply|writes|reads|all] [--smoke]"
                );
                std::process::exit(2);
            }
        }
    }
    if scenarios.is_empty() {
        scenarios = vec![Scenario::Apply, Scenario::Writes, Scenario::Reads];
    }
    scenarios.dedup();
    Args { scenarios, smoke }
}

// ------------------------------------------------------------------ results

/// One target of the brief, judged on this run's numbers.
struct Target {
    scenario: &'static str,
    name: String,
    goal: String,
    measured: String,
    met: bool,
}

/// Everything a run reports: JSON sections, targets, and the numbers that
/// must exist (finite and positive) for the run to count as having worked.
#[derive(Default)]
struct Report {
    sections: serde_json::Map<String, Value>,
    targets: Vec<Target>,
    required: Vec<(String, f64)>,
}

impl Report {
    fn target(
        &mut self,
        scenario: &'static str,
        name: &str,
        goal: &str,
        measured: String,
        met: bool,
    ) {
        self.targets.push(Target {
            scenario,
            name: name.to_owned(),
            goal: goal.to_owned(),
            measured,
            met,
        });
    }

    fn require(&mut self, what: impl Into<String>, v: f64) {
        self.required.push((what.into(), v));
    }

    fn print_targets(&self, scenario: &str) {
        let rows: Vec<Vec<String>> = self
            .targets
            .iter()
            .filter(|t| t.scenario == scenario)
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.goal.clone(),
                    t.measured.clone(),
                    if t.met { "met" } else { "MISSED" }.to_owned(),
                ]
            })
            .collect();
        print_table(
            &format!("{scenario}: targets"),
            &["target", "goal", "measured", "verdict"],
            &rows,
        );
    }
}

fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = width[i]))
            .collect();
        println!("  {}", s.join("  "));
    };
    println!("\n== {title} ==");
    line(header.to_vec());
    line(
        width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Rounds for display and JSON.
fn r2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Latency percentiles (nearest rank) of samples in microseconds, in ms.
struct Percentiles {
    n: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn percentiles(mut micros: Vec<u32>) -> Percentiles {
    micros.sort_unstable();
    let at = |q: f64| -> f64 {
        if micros.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
        f64::from(micros[rank - 1]) / 1000.0
    };
    Percentiles {
        n: micros.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

fn micros_since(t: Instant) -> u32 {
    u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)
}

fn human_bytes(b: usize) -> String {
    if b >= 1024 * MIB {
        format!("{} GiB", b / (1024 * MIB))
    } else {
        format!("{} MiB", b / MIB)
    }
}

// ------------------------------------------------------------------ machine

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn machine() -> Value {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": cpu,
        "memory_gib": r2(mem_kb as f64 / 1024.0 / 1024.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg_at_start": read("/proc/loadavg").trim(),
        "source": source_revision(),
    })
}

/// The commit the server was built from, and whether src/ had local changes.
fn source_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
            ])
            .is_some_and(|s| !s.is_empty());
            format!(
                "{head}{}",
                if dirty {
                    " + uncommitted changes in src/"
                } else {
                    ""
                }
            )
        }
        None => "unknown".to_owned(),
    }
}

/// The 1-minute load average, to show whether other processes competed.
fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    read(&format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

// ------------------------------------------------------------------- server

/// A prodgate config: top-level keys first, then the tables. Environments:
/// `production` (one approval by a release manager, no prerequisite),
/// `staging` (no approval) and `canary` (one approval).
fn config(registry_host: &str, metrics_port: Option<u16>) -> String {
    let mut s = String::new();
    if let Some(p) = metrics_port {
        s.push_str(&format!("metrics_listen = \"127.0.0.1:{p}\"\n"));
    }
    s.push_str(
        "apply_wait = \"1s\"\nregistry_timeout = \"60s\"\nexpiry_sweep_interval = \"60s\"\n",
    );
    s.push_str(&format!(
        "[[registry]]\nhost = \"{registry_host}\"\ninsecure = true\n"
    ));
    s.push_str(&server::principals_toml());
    s.push_str(
        r#"
[[environment]]
name = "production"
tag = "production"
approvers = ["group:release-managers"]
required_approvals = 1
approval_ttl = "24h"

[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0

[[environment]]
name = "canary"
tag = "canary"
approvers = ["group:release-managers"]
required_approvals = 1
approval_ttl = "24h"
"#,
    );
    s
}

fn start_server(config: &str, data_dir: Option<&Path>) -> TestServer {
    tokio::task::block_in_place(|| match data_dir {
        Some(d) => TestServer::start_with_data_dir(config, d),
        None => TestServer::start(config),
    })
}

fn client(channel: &Channel, who: &str) -> Client {
    PromotionServiceClient::with_interceptor(channel.clone(), Bearer::token(&server::token(who)))
}

fn state_of(p: &prodgate::pb::Promotion) -> PromotionState {
    PromotionState::try_from(p.state).unwrap_or(PromotionState::Unspecified)
}

fn terminal(s: PromotionState) -> bool {
    !matches!(
        s,
        PromotionState::PendingApproval | PromotionState::Approved | PromotionState::Unspecified
    )
}

async fn scrape_store_counters(http: &reqwest::Client, port: u16) -> (u64, u64) {
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

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("build the HTTP client")
}

// -------------------------------------------------------------------- apply

/// Pushes a single-layer OCI image with `layer_bytes` random bytes straight
/// to the registry under `tag`; returns the manifest digest. (The test
/// helper copies the layer and has a 30 s deadline, too tight for 1 GiB on
/// a busy machine.)
async fn push_image(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    tag: &str,
    layer_bytes: usize,
    seed: u64,
) -> String {
    let mut layer = vec![0u8; layer_bytes];
    StdRng::seed_from_u64(seed).fill_bytes(&mut layer);
    let layer_digest = sha256_digest(&layer);
    push_blob(http, registry, repo, layer, &layer_digest).await;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { "prodgate.bench.seed": seed.to_string() } },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))
    .expect("config json");
    let config_digest = sha256_digest(&config);
    let config_len = config.len();
    push_blob(http, registry, repo, config, &config_digest).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": registry::OCI_MANIFEST,
        "config": { "mediaType": registry::OCI_CONFIG, "digest": config_digest, "size": config_len },
        "layers": [{ "mediaType": registry::OCI_LAYER, "digest": layer_digest, "size": layer_bytes }],
    }))
    .expect("manifest json");
    let digest = sha256_digest(&manifest);
    let r = http
        .put(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
        .header(CONTENT_TYPE, registry::OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(r.status().as_u16(), 201, "PUT manifest: {}", r.status());
    digest
}

async fn push_blob(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    data: Vec<u8>,
    digest: &str,
) {
    let r = http
        .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST upload");
    assert_eq!(r.status().as_u16(), 202, "POST upload: {}", r.status());
    let location = r
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("upload Location")
        .to_owned();
    let mut url = reqwest::Url::parse(&format!("http://{registry}/"))
        .and_then(|b| b.join(&location))
        .expect("Location is a URL");
    url.query_pairs_mut().append_pair("digest", digest);
    let r = http
        .put(url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(data)
        .send()
        .await
        .expect("PUT blob");
    assert_eq!(r.status().as_u16(), 201, "PUT blob: {}", r.status());
}

fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// What one copy cost, from the proxy's log.
#[derive(Clone, Default)]
struct Traffic {
    requests: usize,
    /// Request + response body bytes of `/blobs/` requests.
    blob_bytes: u64,
    /// Request + response body bytes of every request.
    body_bytes: u64,
    /// "GET manifests, HEAD manifests, ..." of the requests.
    shape: String,
}

fn traffic(seen: &[Seen]) -> Traffic {
    let mut t = Traffic {
        requests: seen.len(),
        ..Traffic::default()
    };
    let mut shape = Vec::new();
    for s in seen {
        let bytes = s.request_bytes + s.response_bytes;
        t.body_bytes += bytes;
        let kind = if s.path.contains("/blobs/uploads") {
            "uploads"
        } else if s.path.contains("/blobs/") {
            t.blob_bytes += bytes;
            "blob"
        } else if s.path.contains("/manifests/") {
            "manifest"
        } else {
            "other"
        };
        shape.push(format!("{} {kind}", s.method));
    }
    t.shape = shape.join(", ");
    t
}

/// Samples of one copy method at one size.
#[derive(Default)]
struct Samples {
    ms: Vec<f64>,
    traffic: Vec<Traffic>,
    failures: Vec<String>,
}

impl Samples {
    fn median_ms(&self) -> f64 {
        median(&self.ms)
    }
    fn max_requests(&self) -> usize {
        self.traffic.iter().map(|t| t.requests).max().unwrap_or(0)
    }
    fn max_blob_bytes(&self) -> u64 {
        self.traffic.iter().map(|t| t.blob_bytes).max().unwrap_or(0)
    }
    fn json(&self) -> Value {
        json!({
            "median_ms": r2(self.median_ms()),
            "samples_ms": self.ms.iter().map(|v| r2(*v)).collect::<Vec<_>>(),
            "max_registry_requests": self.max_requests(),
            "max_blob_bytes": self.max_blob_bytes(),
            "max_body_bytes": self.traffic.iter().map(|t| t.body_bytes).max().unwrap_or(0),
            "request_shape": self.traffic.first().map(|t| t.shape.clone()).unwrap_or_default(),
            "failures": self.failures,
        })
    }
}

/// Approve → PROMOTED through prodgate; the clock starts at the final Approve.
async fn prodgate_apply(
    alice: &mut Client,
    bob: &mut Client,
    proxy: &FaultProxy,
    repo: &str,
) -> Result<(f64, Traffic), String> {
    let p = alice
        .request_promotion(RequestPromotionRequest {
            repository: repo.to_owned(),
            source: "staging".into(),
            environment: "production".into(),
            reason: "bench apply".into(),
            request_id: String::new(),
        })
        .await
        .map_err(|e| format!("request: {e}"))?
        .into_inner();
    let before = proxy.requests().len();
    let t = Instant::now();
    let mut done = bob
        .approve(ApproveRequest {
            promotion_id: p.id.clone(),
            comment: "bench".into(),
        })
        .await
        .map_err(|e| format!("approve: {e}"))?
        .into_inner();
    if !terminal(state_of(&done)) {
        let mut stream = bob
            .watch_promotion(WatchPromotionRequest {
                promotion_id: p.id.clone(),
            })
            .await
            .map_err(|e| format!("watch: {e}"))?
            .into_inner();
        while let Some(next) = stream.message().await.map_err(|e| format!("watch: {e}"))? {
            done = next;
            if terminal(state_of(&done)) {
                break;
            }
        }
    }
    let elapsed = ms(t.elapsed());
    if state_of(&done) != PromotionState::Promoted {
        return Err(format!(
            "ended {:?}: {}",
            state_of(&done),
            done.failure_message
        ));
    }
    Ok((elapsed, traffic(&proxy.requests()[before..])))
}

/// `skopeo copy` of `:staging` to `:skopeo-prod` through the proxy.
fn skopeo_copy(proxy: &str, repo: &str) -> Result<f64, String> {
    let t = Instant::now();
    let out = Command::new("skopeo")
        .args([
            "copy".to_owned(),
            format!("docker://{proxy}/{repo}:staging"),
            format!("docker://{proxy}/{repo}:skopeo-prod"),
            "--src-tls-verify=false".to_owned(),
            "--dest-tls-verify=false".to_owned(),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run skopeo (apt-get install -y skopeo): {e}"))?;
    let elapsed = ms(t.elapsed());
    if !out.status.success() {
        return Err(format!(
            "skopeo failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(elapsed)
}

/// What `docker pull; docker tag; docker push` does on the wire: the
/// manifest, every blob in full (digest-verified), a HEAD per blob (all
/// exist, so nothing is uploaded) and the manifest PUT under the new tag.
async fn pull_push(http: &reqwest::Client, proxy: &str, repo: &str) -> Result<f64, String> {
    let base = format!("http://{proxy}/v2/{repo}");
    let t = Instant::now();
    let r = http
        .get(format!("{base}/manifests/staging"))
        .header(ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await
        .map_err(|e| format!("GET manifest: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("GET manifest: {}", r.status()));
    }
    let content_type = r
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .ok_or("manifest without content type")?;
    let manifest = r.bytes().await.map_err(|e| format!("read manifest: {e}"))?;
    let m: Value = serde_json::from_slice(&manifest).map_err(|e| format!("manifest: {e}"))?;
    let mut blobs: Vec<String> = vec![
        m["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ];
    if let Some(layers) = m["layers"].as_array() {
        blobs.extend(
            layers
                .iter()
                .filter_map(|l| l["digest"].as_str().map(str::to_owned)),
        );
    }
    for d in &blobs {
        let mut r = http
            .get(format!("{base}/blobs/{d}"))
            .send()
            .await
            .map_err(|e| format!("GET blob: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("GET blob {d}: {}", r.status()));
        }
        let mut h = Sha256::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| format!("read blob: {e}"))? {
            h.update(&chunk);
        }
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != *d {
            return Err(format!("blob {d} arrived as {got}"));
        }
    }
    for d in &blobs {
        let r = http
            .head(format!("{base}/blobs/{d}"))
            .send()
            .await
            .map_err(|e| format!("HEAD blob: {e}"))?;
        if r.status().as_u16() != 200 {
            return Err(format!("HEAD blob {d}: {}", r.status()));
        }
    }
    let r = http
        .put(format!("{base}/manifests/pull-prod"))
        .header(CONTENT_TYPE, content_type)
        .body(manifest)
        .send()
        .await
        .map_err(|e| format!("PUT manifest: {e}"))?;
    if r.status().as_u16() != 201 {
        return Err(format!("PUT manifest: {}", r.status()));
    }
    Ok(ms(t.elapsed()))
}

async fn scenario_apply(smoke: bool, registry: &TestRegistry, report: &mut Report) {
    let load_before = loadavg();
    let proxy = FaultProxy::start(&registry.host).await;
    let server = start_server(&config(&proxy.host, None), None);
    let channel = server.channel().await;
    let (mut alice, mut bob) = (client(&channel, "alice"), client(&channel, "bob"));
    let http = http_client();
    let sizes: Vec<usize> = if smoke {
        vec![MIB, 4 * MIB]
    } else {
        vec![MIB, 100 * MIB, 1024 * MIB]
    };
    let skopeo_present = Command::new("skopeo")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !skopeo_present {
        eprintln!(
            "apply: skopeo is not installed (apt-get install -y skopeo); its column stays empty"
        );
    }
    let mut rows = Vec::new();
    let mut per_size = Vec::new();
    let mut by_size: Vec<(usize, f64, f64, f64)> = Vec::new();
    let mut all_prodgate_traffic: Vec<Traffic> = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let path = format!("bench/apply-{}mib", size / MIB);
        let t = Instant::now();
        push_image(
            &http,
            &registry.host,
            &path,
            "staging",
            size,
            100 + i as u64,
        )
        .await;
        let push_ms = ms(t.elapsed());
        let repo = format!("{}/{path}", proxy.host);
        let big = size >= 1024 * MIB;
        let (n_prodgate, n_skopeo, n_pull) = match (smoke, big) {
            (true, _) => (3, 2, 2),
            (false, false) => (15, 5, 5),
            (false, true) => (15, 5, 3),
        };
        let mut pg = Samples::default();
        for _ in 0..n_prodgate {
            match prodgate_apply(&mut alice, &mut bob, &proxy, &repo).await {
                Ok((v, tr)) => {
                    pg.ms.push(v);
                    pg.traffic.push(tr);
                }
                Err(e) => pg.failures.push(e),
            }
        }
        let mut sk = Samples::default();
        if skopeo_present {
            for _ in 0..n_skopeo {
                let before = proxy.requests().len();
                let (host, p) = (proxy.host.clone(), path.clone());
                let r = tokio::task::spawn_blocking(move || skopeo_copy(&host, &p))
                    .await
                    .expect("skopeo task");
                match r {
                    Ok(v) => {
                        sk.ms.push(v);
                        sk.traffic.push(traffic(&proxy.requests()[before..]));
                    }
                    Err(e) => sk.failures.push(e),
                }
            }
        }
        let mut pp = Samples::default();
        for _ in 0..n_pull {
            let before = proxy.requests().len();
            match pull_push(&http, &proxy.host, &path).await {
                Ok(v) => {
                    pp.ms.push(v);
                    pp.traffic.push(traffic(&proxy.requests()[before..]));
                }
                Err(e) => pp.failures.push(e),
            }
        }
        for (what, s) in [("prodgate", &pg), ("skopeo", &sk), ("pull/push", &pp)] {
            for f in &s.failures {
                eprintln!("apply {} {what}: {f}", human_bytes(size));
            }
        }
        report.require(
            format!("apply {} prodgate median", human_bytes(size)),
            pg.median_ms(),
        );
        report.require(
            format!("apply {} pull/push median", human_bytes(size)),
            pp.median_ms(),
        );
        if skopeo_present {
            report.require(
                format!("apply {} skopeo median", human_bytes(size)),
                sk.median_ms(),
            );
        }
        all_prodgate_traffic.extend(pg.traffic.iter().cloned());
        let cell = |s: &Samples| {
            if s.ms.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", s.median_ms())
            }
        };
        rows.push(vec![
            human_bytes(size),
            format!("{:.0}", push_ms),
            cell(&pg),
            pg.max_requests().to_string(),
            pg.max_blob_bytes().to_string(),
            cell(&sk),
            sk.max_requests().to_string(),
            sk.max_blob_bytes().to_string(),
            cell(&pp),
            pp.max_requests().to_string(),
            pp.max_blob_bytes().to_string(),
            format!("{}/{}/{}", pg.ms.len(), sk.ms.len(), pp.ms.len()),
        ]);
        by_size.push((size, pg.median_ms(), sk.median_ms(), pp.median_ms()));
        per_size.push(json!({
            "layer_bytes": size,
            "push_to_registry_ms": r2(push_ms),
            "prodgate": pg.json(),
            "skopeo": sk.json(),
            "pull_push": pp.json(),
        }));
    }
    print_table(
        "apply: approve -> PROMOTED vs skopeo copy vs pull/tag/push (medians, ms; requests and blob body bytes per copy, max over reps)",
        &[
            "layers",
            "push ms",
            "prodgate",
            "reqs",
            "blob B",
            "skopeo",
            "reqs",
            "blob B",
            "pull/push",
            "reqs",
            "blob B",
            "reps",
        ],
        &rows,
    );
    if let Some(t) = all_prodgate_traffic.first() {
        println!("  prodgate requests per apply: {}", t.shape);
    }
    let (small, large) = (by_size[0], by_size[by_size.len() - 1]);
    let growth = large.1 / small.1;
    let pull_vs = large.3 / large.1;
    let skopeo_vs = large.2 / large.1;
    println!(
        "  apply {} / {}: {growth:.2}x;  pull/push / prodgate at {}: {pull_vs:.1}x;  skopeo / prodgate: {skopeo_vs:.1}x",
        human_bytes(large.0),
        human_bytes(small.0),
        human_bytes(large.0)
    );
    let max_reqs = all_prodgate_traffic
        .iter()
        .map(|t| t.requests)
        .max()
        .unwrap_or(0);
    let max_blob = all_prodgate_traffic
        .iter()
        .map(|t| t.blob_bytes)
        .max()
        .unwrap_or(0);
    report.target(
        "apply",
        &format!(
            "apply time {} vs {}",
            human_bytes(large.0),
            human_bytes(small.0)
        ),
        "<= 1.2x",
        format!("{growth:.2}x ({:.1} vs {:.1} ms)", large.1, small.1),
        growth <= 1.2,
    );
    report.target(
        "apply",
        "registry requests per apply",
        "<= 3",
        max_reqs.to_string(),
        max_reqs <= 3,
    );
    report.target(
        "apply",
        "blob bytes per apply",
        "0",
        max_blob.to_string(),
        max_blob == 0,
    );
    report.target(
        "apply",
        &format!("pull/push vs prodgate at {}", human_bytes(large.0)),
        ">= 50x faster",
        format!("{pull_vs:.1}x ({:.0} vs {:.1} ms)", large.3, large.1),
        pull_vs >= 50.0,
    );
    report.print_targets("apply");
    report.sections.insert(
        "apply".into(),
        json!({
            "sizes": per_size,
            "apply_growth_largest_vs_smallest": r2(growth),
            "pull_push_vs_prodgate_largest": r2(pull_vs),
            "skopeo_vs_prodgate_largest": r2(skopeo_vs),
            "skopeo_installed": skopeo_present,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        }),
    );
}

// ------------------------------------------------------------------- writes

/// Appends 4 KiB and fsyncs, for `dur`: the disk's durable-write ceiling.
fn raw_fsync_rate(dir: &Path, dur: Duration) -> (f64, Percentiles) {
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

/// One load level's outcome.
struct Load {
    ops: u64,
    errors: u64,
    secs: f64,
    all: Percentiles,
    first_error: Option<String>,
    /// p50 of RequestPromotion and of Reject separately (writes only).
    p50_request: f64,
    p50_reject: f64,
}

impl Load {
    /// All of a level's calls as one distribution, measured from `start`.
    fn new(r: ClientResult, start: Instant) -> Load {
        let mut lat = r.request;
        lat.extend(r.reject);
        Load {
            ops: lat.len() as u64,
            errors: r.errors,
            secs: start.elapsed().as_secs_f64(),
            all: percentiles(lat),
            first_error: r.first_error,
            p50_request: f64::NAN,
            p50_reject: f64::NAN,
        }
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

async fn channels(server: &TestServer, clients: usize) -> Vec<Channel> {
    let n = clients.div_ceil(CLIENTS_PER_CHANNEL).clamp(1, MAX_CHANNELS);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(server.channel().await);
    }
    v
}

#[derive(Default)]
struct ClientResult {
    request: Vec<u32>,
    reject: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

/// Waits for every client task of a level and merges what they measured.
async fn join_clients(mut tasks: tokio::task::JoinSet<ClientResult>, what: &str) -> ClientResult {
    let mut all = ClientResult::default();
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap_or_else(|e| panic!("{what} client task: {e}"));
        all.request.extend(r.request);
        all.reject.extend(r.reject);
        all.errors += r.errors;
        all.first_error = all.first_error.or(r.first_error);
    }
    all
}

/// RequestPromotion → Reject cycles by `clients` clients until `dur` passes.
async fn write_load(
    chans: &[Channel],
    clients: usize,
    repo: &str,
    digest: &str,
    dur: Duration,
) -> Load {
    let start = Instant::now() + Duration::from_millis(50);
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let ch = &chans[i % chans.len()];
        let (mut alice, mut bob) = (client(ch, "alice"), client(ch, "bob"));
        let (repo, digest) = (repo.to_owned(), digest.to_owned());
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut r = ClientResult::default();
            let fail = |r: &mut ClientResult, e: tonic::Status| {
                r.errors += 1;
                r.first_error.get_or_insert_with(|| e.to_string());
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                let p = alice
                    .request_promotion(RequestPromotionRequest {
                        repository: repo.clone(),
                        source: digest.clone(),
                        environment: "production".into(),
                        reason: "bench write".into(),
                        request_id: String::new(),
                    })
                    .await;
                let p = match p {
                    Ok(p) => {
                        r.request.push(micros_since(t));
                        p.into_inner()
                    }
                    Err(e) => {
                        fail(&mut r, e);
                        continue;
                    }
                };
                let t = Instant::now();
                match bob
                    .reject(RejectRequest {
                        promotion_id: p.id,
                        comment: "bench".into(),
                    })
                    .await
                {
                    Ok(_) => r.reject.push(micros_since(t)),
                    Err(e) => fail(&mut r, e),
                }
            }
            r
        });
    }
    let all = join_clients(tasks, "write").await;
    Load {
        p50_request: percentiles(all.request.clone()).p50,
        p50_reject: percentiles(all.reject.clone()).p50,
        ..Load::new(all, start)
    }
}

/// GET of one manifest by digest, straight at the registry, by `clients`
/// clients until `dur` passes: the registry call every RequestPromotion makes.
async fn registry_load(url: &str, clients: usize, dur: Duration) -> Load {
    let http = http_client();
    let start = Instant::now() + Duration::from_millis(50);
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), url.to_owned());
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut r = ClientResult::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let got = match http.get(&url).header(ACCEPT, MANIFEST_ACCEPT).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        resp.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(resp) => Err(resp.status().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match got {
                    Ok(()) => r.request.push(micros_since(t)),
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
            }
            r
        });
    }
    Load::new(join_clients(tasks, "registry").await, start)
}

/// grpc.health.v1 Health/Check by `clients` clients until `dur` passes.
async fn health_load(chans: &[Channel], clients: usize, dur: Duration) -> Load {
    let start = Instant::now() + Duration::from_millis(50);
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let mut h = HealthClient::new(chans[i % chans.len()].clone());
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut r = ClientResult::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                match h
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(_) => r.request.push(micros_since(t)),
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            r
        });
    }
    Load::new(join_clients(tasks, "health").await, start)
}

async fn scenario_writes(smoke: bool, registry: &TestRegistry, report: &mut Report) {
    let load_before = loadavg();
    let metrics_port = free_port();
    let server = start_server(&config(&registry.host, Some(metrics_port)), None);
    let http = http_client();
    let digest = push_image(&http, &registry.host, "bench/writes", "staging", 4096, 7).await;
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
    let rss_kb = proc_status_kb(server.pid(), "VmHWM:");
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
        report.print_targets("writes");
    } else {
        println!("  (targets are judged at 64 clients, which smoke mode does not run)");
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
            "server_peak_rss_kib": rss_kb,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        }),
    );
}

// -------------------------------------------------------------------- reads

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

fn fixture() -> Fixture {
    let env = |name: &str, required: u32| EnvironmentPolicy {
        name: name.to_owned(),
        tag: name.to_owned(),
        requires: None,
        approvers: vec![Approver::parse("group:release-managers")],
        required_approvals: required,
        allow_self_approval: false,
        approval_ttl: Duration::from_secs(24 * 3600),
        apply_deadline: None,
    };
    let p = |name: &str, groups: &[&str]| Principal {
        name: name.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    Fixture {
        production: env("production", 1),
        staging: env("staging", 0),
        canary: env("canary", 1),
        requesters: vec![
            p("alice", &["developers"]),
            p("rita", &["developers", "release-managers"]),
        ],
        approvers: vec![
            p("bob", &["release-managers"]),
            p("dave", &["release-managers"]),
            p("erin", &["release-managers"]),
        ],
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
        "mediaType": registry::OCI_MANIFEST,
        "config": { "mediaType": registry::OCI_CONFIG, "digest": random_digest(rng), "size": rng.random_range(500..5000u64) },
        "layers": layers,
    }))
    .expect("manifest json");
    (
        sha256_digest(&bytes),
        StoredManifest {
            media_type: registry::OCI_MANIFEST.to_owned(),
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
    };
    let previous = random_digest(rng);
    let pol = policy.clone();
    let p: Promotion = store
        .write(move |tx: &mut dyn UnitOfWork| {
            let now = tx.now();
            let o = machine::request(tx.next_id(), new, &requester, &pol, now);
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
                machine::approve(p, &approver, &policy, "lgtm", now)
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
}

impl ReadCall {
    const ALL: [ReadCall; 5] = [
        ReadCall::History,
        ReadCall::List,
        ReadCall::ListByRepository,
        ReadCall::Get,
        ReadCall::Deployed,
    ];

    fn name(self) -> &'static str {
        match self {
            ReadCall::History => "History by repository, page 100",
            ReadCall::List => "ListPromotions, page 100",
            ReadCall::ListByRepository => "ListPromotions by repository, page 100",
            ReadCall::Get => "GetPromotion (random id)",
            ReadCall::Deployed => "GetDeployed (random repository)",
        }
    }

    fn is_page(self) -> bool {
        matches!(
            self,
            ReadCall::History | ReadCall::List | ReadCall::ListByRepository
        )
    }
}

/// One read RPC; returns how many items it answered with.
async fn read_call(
    c: &mut Client,
    kind: ReadCall,
    repo: &str,
    id: u64,
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
        ReadCall::List => c
            .list_promotions(ListPromotionsRequest {
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .promotions
            .len(),
        ReadCall::ListByRepository => c
            .list_promotions(ListPromotionsRequest {
                repository: repo.to_owned(),
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
        let mut c = client(&ch, "alice");
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

async fn scenario_reads(smoke: bool, report: &mut Report) {
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
    let rss_start = proc_status_kb(server.pid(), "VmRSS:");

    let mut rng = StdRng::seed_from_u64(42);
    let repo_picks: Vec<String> = (0..calls)
        .map(|_| reads_repository(rng.random_range(0..repos)))
        .collect();
    let id_picks: Vec<u64> = (0..calls)
        .map(|_| rng.random_range(1..=loaded.promotions))
        .collect();
    let mut rows = Vec::new();
    let mut json_calls = serde_json::Map::new();
    let mut page_p99 = Vec::new();
    for kind in ReadCall::ALL {
        let mut lat = Vec::with_capacity(calls);
        let (mut errors, mut first) = (0u64, None);
        for i in 0..calls {
            let t = Instant::now();
            match read_call(&mut alice, kind, &repo_picks[i], id_picks[i]).await {
                Ok(_) => lat.push(micros_since(t)),
                Err(e) => {
                    errors += 1;
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let p = percentiles(lat);
        let name = kind.name();
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
        ]);
        json_calls.insert(
            name.to_owned(),
            json!({ "calls": p.n, "errors": errors, "p50_ms": p.p50, "p99_ms": p.p99, "max_ms": p.max, "first_error": first }),
        );
    }
    let rss_end = proc_status_kb(server.pid(), "VmRSS:");
    let hwm = proc_status_kb(server.pid(), "VmHWM:");
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
    let rss_restart = proc_status_kb(server.pid(), "VmRSS:");
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
        &["call", "calls", "errors", "p50 ms", "p99 ms", "max ms"],
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

// --------------------------------------------------------------------- main

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let report = rt.block_on(run(&args));
    let wall = started.elapsed().as_secs_f64();

    let bad: Vec<&(String, f64)> = report
        .required
        .iter()
        .filter(|(_, v)| !(v.is_finite() && *v > 0.0))
        .collect();
    let mut summary = serde_json::Map::new();
    summary.insert(
        "mode".into(),
        json!(if args.smoke { "smoke" } else { "full" }),
    );
    summary.insert(
        "scenarios".into(),
        json!(
            args.scenarios
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect::<Vec<_>>()
        ),
    );
    summary.insert("machine".into(), machine());
    summary.insert("wall_seconds".into(), json!(r2(wall)));
    summary.extend(report.sections);
    summary.insert(
        "targets".into(),
        Value::Array(
            report
                .targets
                .iter()
                .map(|t| json!({ "scenario": t.scenario, "name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met }))
                .collect(),
        ),
    );
    summary.insert(
        "missing_numbers".into(),
        json!(bad.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>()),
    );
    println!("\nbench wall time: {wall:.1} s");
    println!("JSON: {}", Value::Object(summary));
    if !bad.is_empty() {
        for (what, v) in &bad {
            eprintln!("no usable number for {what}: {v}");
        }
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Report {
    let mut report = Report::default();
    println!(
        "prodgate bench ({}): {:?}; {} CPUs; load average {}",
        if args.smoke { "smoke" } else { "full" },
        args.scenarios,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let needs_registry = args
        .scenarios
        .iter()
        .any(|s| matches!(s, Scenario::Apply | Scenario::Writes));
    let registry = if needs_registry {
        Some(TestRegistry::start().await)
    } else {
        None
    };
    for s in &args.scenarios {
        let t = Instant::now();
        match (s, &registry) {
            (Scenario::Apply, Some(r)) => scenario_apply(args.smoke, r, &mut report).await,
            (Scenario::Writes, Some(r)) => scenario_writes(args.smoke, r, &mut report).await,
            (Scenario::Reads, _) => scenario_reads(args.smoke, &mut report).await,
            _ => unreachable!("the registry runs for apply and writes"),
        }
        println!("  ({s:?} took {:.1} s)", t.elapsed().as_secs_f64());
    }
    report
}
