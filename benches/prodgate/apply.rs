//! The apply scenario: what applying an approved promotion costs as the
//! image grows, next to `skopeo copy` and a pull-everything-then-push client,
//! all counted by the fault proxy of `tests/support/proxy.rs`.

use crate::report::{MIB, Report, human_bytes, loadavg, median, ms, print_table, r2};
use crate::setup::{config, http_client, start_server};
use crate::support::proxy::{FaultProxy, Seen};
use crate::support::registry::{MANIFEST_ACCEPT, TestRegistry};
use crate::support::server::{Client, client_on};
use prodgate::pb::{
    ApproveRequest, PromotionState, RequestPromotionRequest, WatchPromotionRequest,
};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::process::{Command, Stdio};
use std::time::Instant;

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

fn state_of(p: &prodgate::pb::Promotion) -> PromotionState {
    PromotionState::try_from(p.state).unwrap_or(PromotionState::Unspecified)
}

fn terminal(s: PromotionState) -> bool {
    !matches!(
        s,
        PromotionState::PendingApproval | PromotionState::Approved | PromotionState::Unspecified
    )
}

/// Puts on `path`'s staging tag a variant of its manifest with the same
/// layers and an annotation naming `rep`, so each rep promotes a new digest.
async fn restage(registry: &TestRegistry, path: &str, rep: usize) {
    let (content_type, bytes) = registry
        .manifest(path, "staging")
        .await
        .expect("the staged manifest");
    let mut m: Value = serde_json::from_slice(&bytes).expect("a JSON manifest");
    m["annotations"] = json!({ "bench.prodgate/rep": rep.to_string() });
    let bytes = serde_json::to_vec(&m).expect("serialize the manifest");
    registry
        .put_manifest_bytes(path, "staging", &content_type, &bytes)
        .await;
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
            break_glass: false,
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
            break_glass: false,
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

pub async fn run(smoke: bool, registry: &TestRegistry, report: &mut Report) {
    let load_before = loadavg();
    let proxy = FaultProxy::start(&registry.host).await;
    let server = start_server(&config(&proxy.host, None), None);
    let channel = server.channel().await;
    let (mut alice, mut bob) = (client_on(&channel, "alice"), client_on(&channel, "bob"));
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
        registry
            .push_image(&path, Some("staging"), size, 100 + i as u64)
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
        for rep in 0..n_prodgate {
            // A new manifest on staging for each rep (the same layers, an
            // annotation naming the rep): a request for the digest
            // production already carries would change nothing and is
            // refused.
            restage(registry, &path, rep).await;
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
