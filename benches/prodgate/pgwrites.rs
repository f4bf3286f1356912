//! The pgwrites scenario: durable writes/s at 64 clients with prodgate on
//! PostgreSQL (a private cluster with `fsync = on` and `synchronous_commit
//! = on`), one replica and three, beside `pgbench`'s own insert rate on the
//! same server, the cluster's raw fsync rate, and sled's number from the
//! writes scenario when it ran in the same run.

use crate::load::{Load, Percentiles, percentiles};
use crate::report::{Report, loadavg, print_table, r2};
use crate::setup::{config, start_server};
use crate::support::postgres::Cluster;
use crate::support::registry::{TestRegistry, free_port};
use crate::support::server::TestServer;
use crate::writes::{raw_fsync_rate, scrape_store_counters, write_load};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Clients per HTTP/2 connection, as in the writes scenario.
const CLIENTS_PER_CHANNEL: usize = 8;

/// One prodgate configuration's run.
struct Replicated {
    replicas: usize,
    connections: usize,
    load: Load,
    /// Writes and transactions summed over the replicas' `/metrics`.
    commits: u64,
    flushes: u64,
}

/// What `pgbench` measured.
struct PgBench {
    tps: f64,
    transactions: u64,
    failed: u64,
    lat: Percentiles,
}

/// Connections for `clients` clients over `servers`: about
/// [`CLIENTS_PER_CHANNEL`] clients each, a whole number per replica, and
/// connection `j` on replica `j % replicas`, so client `i` (on connection
/// `i % n`, see `write_load`) lands on replica `i % replicas` and the
/// clients spread evenly.
async fn spread_channels(servers: &[TestServer], clients: usize) -> Vec<Channel> {
    let r = servers.len();
    let n = clients.div_ceil(CLIENTS_PER_CHANNEL).div_ceil(r) * r;
    let mut v = Vec::with_capacity(n);
    for j in 0..n {
        v.push(servers[j % r].channel().await);
    }
    v
}

async fn prodgate_on_postgres(
    cluster: &Cluster,
    registry: &TestRegistry,
    replicas: usize,
    clients: usize,
    dur: Duration,
) -> Replicated {
    let db = tokio::task::block_in_place(|| cluster.database());
    let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
    let servers: Vec<TestServer> = ports
        .iter()
        .map(|p| {
            let cfg = format!(
                "{}\n{}",
                config(&registry.host, Some(*p)),
                db.storage_toml()
            );
            start_server(&cfg, None)
        })
        .collect();
    let digest = registry
        .push_image("bench/pgwrites", Some("staging"), 4096, 11)
        .await;
    let repo = format!("{}/bench/pgwrites", registry.host);
    let chans = spread_channels(&servers, clients).await;
    let http = crate::setup::http_client();
    let counters = |http: reqwest::Client, ports: Vec<u16>| async move {
        let (mut c, mut f) = (0, 0);
        for p in ports {
            let (c1, f1) = scrape_store_counters(&http, p).await;
            c += c1;
            f += f1;
        }
        (c, f)
    };
    let (c0, f0) = counters(http.clone(), ports.clone()).await;
    let load = write_load(&chans, clients, &repo, &digest, dur).await;
    let (c1, f1) = counters(http, ports).await;
    if let Some(e) = &load.first_error {
        eprintln!(
            "pgwrites: {replicas} replica(s), {clients} clients: {} errors, first: {e}",
            load.errors
        );
    }
    Replicated {
        replicas,
        connections: chans.len(),
        load,
        commits: c1 - c0,
        flushes: f1 - f0,
    }
}

/// `pgbench` on the same server: `clients` connections, each inserting one
/// row per transaction for `secs` seconds, prepared statements, over TCP
/// with the same password authentication as prodgate. `Err` says why it
/// did not run.
fn pgbench(cluster: &Cluster, clients: usize, secs: u64) -> Result<PgBench, String> {
    let bin = cluster.bin().join("pgbench");
    if !bin.exists() {
        return Err(format!("{} is not installed", bin.display()));
    }
    // About the size of a promotion's audit row; an identity key and a
    // timestamp, as the audit table has.
    cluster.psql(
        "DROP TABLE IF EXISTS bench_insert; \
         CREATE TABLE bench_insert (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         at timestamptz NOT NULL DEFAULT now(), body text NOT NULL)",
    );
    let dir = tempfile::Builder::new()
        .prefix("prodgate-pgbench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let script = dir.path().join("insert.sql");
    std::fs::write(
        &script,
        format!(
            "INSERT INTO bench_insert (body) VALUES ('{}');\n",
            "x".repeat(200)
        ),
    )
    .map_err(|e| format!("write the pgbench script: {e}"))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = Command::new(&bin)
        .current_dir(dir.path())
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-n",
            "-M",
            "prepared",
            "-l",
        ])
        .arg("-p")
        .arg(cluster.port.to_string())
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(threads.min(clients).to_string())
        .arg("-T")
        .arg(secs.to_string())
        .arg("-f")
        .arg(&script)
        .arg("postgres")
        .env("PGPASSWORD", cluster.password())
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |prefix: &str| {
        stdout.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
    };
    let tps = field("tps = ").ok_or_else(|| format!("no tps in pgbench's output: {stdout}"))?;
    let transactions = field("number of transactions actually processed:").unwrap_or(0.0) as u64;
    let failed = field("number of failed transactions:").unwrap_or(0.0) as u64;
    Ok(PgBench {
        tps,
        transactions,
        failed,
        lat: percentiles(transaction_log_latencies(dir.path())),
    })
}

/// The latencies (µs) in pgbench's per-transaction logs (`-l`: one file per
/// thread, `client transaction latency_us script epoch epoch_us` a line).
fn transaction_log_latencies(dir: &Path) -> Vec<u32> {
    let mut lat = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lat;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("pgbench_log") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok()),
        );
    }
    lat
}

/// sled's writes/s, p50 and p99 at `clients` from the writes scenario, if
/// it ran before in this run.
fn sled_from_writes(report: &Report, clients: usize) -> Option<(f64, f64, f64)> {
    let levels = report.sections.get("writes")?.get("levels")?.as_array()?;
    let w = levels
        .iter()
        .find(|l| l.get("clients").and_then(Value::as_u64) == Some(clients as u64))?
        .get("writes")?;
    Some((
        w.get("ops_per_s")?.as_f64()?,
        w.get("p50_ms")?.as_f64()?,
        w.get("p99_ms")?.as_f64()?,
    ))
}

pub async fn run(smoke: bool, registry: &TestRegistry, report: &mut Report) {
    let load_before = loadavg();
    let Some(cluster) = tokio::task::block_in_place(Cluster::start_durable) else {
        println!("  pgwrites: skipped, PostgreSQL is not installed");
        return;
    };
    let clients = if smoke { 4 } else { 64 };
    let dur = Duration::from_secs(if smoke { 1 } else { 5 });

    let fsync_dur = Duration::from_millis(if smoke { 500 } else { 2000 });
    let probe_dir = cluster.dir().to_owned();
    let fsync = tokio::task::spawn_blocking(move || raw_fsync_rate(&probe_dir, fsync_dur))
        .await
        .expect("fsync probe");

    let mut runs = Vec::new();
    for replicas in [1, 3] {
        let t = Instant::now();
        let r = prodgate_on_postgres(&cluster, registry, replicas, clients, dur).await;
        report.require(
            format!("pgwrites ops/s, {replicas} replica(s)"),
            r.load.rate(),
        );
        println!(
            "  pgwrites: {replicas} replica(s) took {:.1} s",
            t.elapsed().as_secs_f64()
        );
        runs.push(r);
    }
    // After the replicas are gone, so that they do not compete with it.
    let pgb = tokio::task::block_in_place(|| pgbench(&cluster, clients, dur.as_secs()));
    match &pgb {
        Ok(p) => report.require("pgbench insert tps", p.tps),
        Err(why) => println!("  pgwrites: pgbench skipped: {why}"),
    }
    let sled = sled_from_writes(report, clients);

    let mut rows = Vec::new();
    for r in &runs {
        let l = &r.load;
        rows.push(vec![
            format!(
                "prodgate on PostgreSQL, {} replica{}",
                r.replicas,
                if r.replicas == 1 { "" } else { "s" }
            ),
            r.connections.to_string(),
            format!("{:.0}", l.rate()),
            format!("{:.2}", l.all.p50),
            format!("{:.2}", l.all.p99),
            l.errors.to_string(),
            format!("{:.1}", r.commits as f64 / r.flushes.max(1) as f64),
            format!("{:.0}", r.flushes as f64 / l.secs),
            format!("{:.2}", l.rate() / fsync.0),
        ]);
    }
    if let Ok(p) = &pgb {
        rows.push(vec![
            "pgbench INSERT, same server".into(),
            clients.to_string(),
            format!("{:.0}", p.tps),
            format!("{:.2}", p.lat.p50),
            format!("{:.2}", p.lat.p99),
            p.failed.to_string(),
            "1.0".into(),
            format!("{:.0}", p.tps),
            format!("{:.2}", p.tps / fsync.0),
        ]);
    }
    match sled {
        Some((rate, p50, p99)) => rows.push(vec![
            "prodgate on sled (writes scenario)".into(),
            clients.div_ceil(CLIENTS_PER_CHANNEL).min(8).to_string(),
            format!("{rate:.0}"),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]),
        None => println!(
            "  (sled at {clients} clients: run the `writes` scenario in the same run, or see BENCHMARKS.md)"
        ),
    }
    rows.push(vec![
        "raw 4 KiB append + fsync".into(),
        "1".into(),
        format!("{:.0}", fsync.0),
        format!("{:.2}", fsync.1.p50),
        format!("{:.2}", fsync.1.p99),
        "-".into(),
        "-".into(),
        format!("{:.0}", fsync.0),
        "1.00".into(),
    ]);
    print_table(
        &format!(
            "pgwrites: {clients} clients, durable writes (fsync = on, synchronous_commit = on; prodgate: RequestPromotion -> Reject, every RPC one write; {}s each)",
            dur.as_secs()
        ),
        &[
            "system",
            "conns",
            "writes/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "writes/txn",
            "txns/s",
            "x raw fsync",
        ],
        &rows,
    );

    let json_runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            let l = &r.load;
            json!({
                "replicas": r.replicas,
                "connections": r.connections,
                "ops": l.ops, "errors": l.errors, "seconds": r2(l.secs),
                "ops_per_s": r2(l.rate()),
                "p50_ms": l.all.p50, "p99_ms": l.all.p99, "p999_ms": l.all.p999, "max_ms": l.all.max,
                "p50_request_ms": l.p50_request, "p50_reject_ms": l.p50_reject,
                "first_error": l.first_error,
                "store": {
                    "commits": r.commits, "transactions": r.flushes,
                    "commits_per_transaction": r2(r.commits as f64 / r.flushes.max(1) as f64),
                    "transactions_per_s": r2(r.flushes as f64 / l.secs),
                },
                "vs_raw_fsync": r2(l.rate() / fsync.0),
            })
        })
        .collect();
    report.sections.insert(
        "pgwrites".into(),
        json!({
            "clients": clients,
            "seconds": dur.as_secs(),
            "postgres": { "fsync": "on", "synchronous_commit": "on" },
            "prodgate": json_runs,
            "pgbench": match &pgb {
                Ok(p) => json!({
                    "tps": r2(p.tps), "transactions": p.transactions, "failed": p.failed,
                    "p50_ms": p.lat.p50, "p99_ms": p.lat.p99, "p999_ms": p.lat.p999,
                    "script": "INSERT of one 200-byte row, prepared, -n",
                }),
                Err(why) => json!({ "skipped": why }),
            },
            "sled_from_writes": sled.map(|(rate, p50, p99)| json!({
                "ops_per_s": rate, "p50_ms": p50, "p99_ms": p99,
            })),
            "raw_fsync": { "per_s": r2(fsync.0), "p50_ms": fsync.1.p50, "p99_ms": fsync.1.p99 },
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        }),
    );
}
