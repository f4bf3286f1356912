//! prodgate benchmarks, end to end against a release-built `prodgate serve`
//! and Debian's `docker-registry` on loopback:
//!
//! ```sh
//! cargo bench --bench prodgate -- [apply|writes|pgwrites|reads|all] [--smoke]
//! ```
//!
//! - `apply`: cost of applying an approved promotion as the image grows
//!   (1 MiB, 100 MiB, 1 GiB of layers), next to `skopeo copy` and a
//!   pull-everything-then-push client (what `docker pull/tag/push` does),
//!   all through the counting proxy of `tests/support/proxy.rs`.
//! - `writes`: durable write throughput and latency at 1..256 concurrent
//!   clients, next to the disk's raw fsync rate and an empty RPC (health
//!   check), with the group-commit factor from prodgate's `/metrics`.
//! - `pgwrites`: durable writes/s and latency at 64 clients with prodgate on
//!   PostgreSQL (a private cluster, `fsync` and `synchronous_commit` on), one
//!   replica and three, beside `pgbench`'s insert rate on the same server and
//!   sled's number from `writes` (when it ran in the same run).
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
//!
//! # Layout
//! - this file: the arguments, the scenarios in order, the final `JSON:` line.
//! - [`apply`], [`writes`], [`pgwrites`], [`reads`]: one scenario each, with its table,
//!   targets and JSON section.
//! - [`setup`]: the prodgate server every scenario measures (its config,
//!   start, clients, `/metrics`).
//! - [`load`]: closed-loop load from concurrent clients, and latency
//!   percentiles.
//! - [`report`]: targets, tables, rounding, and the machine the run was on.
//! - `support`: the integration tests' registry, proxy and server
//!   and PostgreSQL cluster (`tests/support/`), shared rather than copied.

mod apply;
mod load;
mod pgwrites;
mod reads;
mod report;
mod setup;
#[path = "../../tests/support/mod.rs"]
mod support;
mod writes;

use report::{Report, loadavg, machine, r2};
use serde_json::{Value, json};
use std::time::Instant;
use support::registry::TestRegistry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Apply,
    Writes,
    PgWrites,
    Reads,
}

/// Every scenario, in the order `all` runs them: `pgwrites` after `writes`,
/// so that it can show sled's number beside PostgreSQL's.
const ALL: [Scenario; 4] = [
    Scenario::Apply,
    Scenario::Writes,
    Scenario::PgWrites,
    Scenario::Reads,
];

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
            "pgwrites" => scenarios.push(Scenario::PgWrites),
            "reads" => scenarios.push(Scenario::Reads),
            "all" => scenarios.extend(ALL),
            other => {
                eprintln!(
                    "unknown argument {other:?}\nusage: cargo bench --bench prodgate -- [apply|writes|pgwrites|reads|all] [--smoke]"
                );
                std::process::exit(2);
            }
        }
    }
    if scenarios.is_empty() {
        scenarios = ALL.to_vec();
    }
    scenarios.dedup();
    Args { scenarios, smoke }
}

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
        .any(|s| matches!(s, Scenario::Apply | Scenario::Writes | Scenario::PgWrites));
    let registry = if needs_registry {
        Some(TestRegistry::start().await)
    } else {
        None
    };
    for s in &args.scenarios {
        let t = Instant::now();
        match (s, &registry) {
            (Scenario::Apply, Some(r)) => apply::run(args.smoke, r, &mut report).await,
            (Scenario::Writes, Some(r)) => writes::run(args.smoke, r, &mut report).await,
            (Scenario::PgWrites, Some(r)) => pgwrites::run(args.smoke, r, &mut report).await,
            (Scenario::Reads, _) => reads::run(args.smoke, &mut report).await,
            _ => unreachable!("the registry runs for apply, writes and pgwrites"),
        }
        println!("  ({s:?} took {:.1} s)", t.elapsed().as_secs_f64());
    }
    report
}
