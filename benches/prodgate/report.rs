//! What a run reports: the targets judged, the JSON sections, the tables
//! printed, and the machine the numbers came from.

use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

pub const MIB: usize = 1024 * 1024;

/// One target of the brief, judged on this run's numbers.
pub struct Target {
    pub scenario: &'static str,
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// Everything a run reports: JSON sections, targets, and the numbers that
/// must exist (finite and positive) for the run to count as having worked.
#[derive(Default)]
pub struct Report {
    pub sections: serde_json::Map<String, Value>,
    pub targets: Vec<Target>,
    pub required: Vec<(String, f64)>,
}

impl Report {
    pub fn target(
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

    pub fn require(&mut self, what: impl Into<String>, v: f64) {
        self.required.push((what.into(), v));
    }

    pub fn print_targets(&self, scenario: &str) {
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

pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
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
pub fn r2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

pub fn human_bytes(b: usize) -> String {
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

/// The machine and source the numbers came from, for the JSON line.
pub fn machine() -> Value {
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
pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU time (user + system) the kernel has counted for process `pid` (the
/// bench itself for `None`), in seconds; 0 if unreadable. In clock ticks
/// (1/100 s here), fine enough for phases of seconds.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let process = match pid.map(i32::try_from) {
        None => procfs::process::Process::myself(),
        Some(Ok(pid)) => procfs::process::Process::new(pid),
        Some(Err(e)) => Err(procfs::ProcError::Other(e.to_string())),
    };
    process.and_then(|p| p.stat()).map_or(0.0, |st| {
        (st.utime + st.stime) as f64 / procfs::ticks_per_second() as f64
    })
}

/// What `/proc/<pid>/status` says of a process's memory, in KiB.
#[derive(Clone, Copy)]
pub struct Resident {
    /// `VmRSS`: resident now.
    pub now: u64,
    /// `VmHWM`: the most it has been resident.
    pub peak: u64,
}

/// `pid`'s resident memory now and at its peak; zeros if unreadable.
pub fn resident_kib(pid: u32) -> Resident {
    let status = i32::try_from(pid)
        .ok()
        .and_then(|pid| procfs::process::Process::new(pid).ok())
        .and_then(|p| p.status().ok());
    Resident {
        now: status.as_ref().and_then(|s| s.vmrss).unwrap_or(0),
        peak: status.as_ref().and_then(|s| s.vmhwm).unwrap_or(0),
    }
}
