//! A private PostgreSQL cluster for tests: Debian's `postgresql` binaries,
//! `initdb` in a temp dir owned by the `postgres` user (root cannot run
//! the server), a free loopback port, scram-sha-256 with a random
//! password. One shared cluster per test process ([`Cluster::shared`]) and
//! a fresh database per test ([`Cluster::database`]); a test that stops
//! PostgreSQL starts a cluster of its own ([`Cluster::start`]).
//!
//! A cluster is stopped when its owner drops it, and in any case when the
//! test process ends: a watchdog reads a pipe whose only writer is this
//! process, so it sees end-of-file on exit (however the process ends) and
//! stops the cluster then. The shared cluster lives in a static, which is
//! never dropped; the watchdog is what stops it.
//!
//! Used by the integration tests and, through `#[path]`, by the library's
//! use-case tests, so both run on the same support code.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    password: String,
    /// Closing it (drop, or the process ending) stops the cluster.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

/// A database of its own for one test.
pub struct TestDatabase {
    pub name: String,
    /// `postgres://postgres@127.0.0.1:PORT/NAME`, without the password.
    pub url: String,
    /// A file holding the password (`[storage] password_file`).
    pub password_file: PathBuf,
    pub password: String,
}

impl TestDatabase {
    /// The `[storage]` section of a config that uses this database.
    pub fn storage_toml(&self) -> String {
        format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n",
            self.url,
            self.password_file.display()
        )
    }
}

/// Debian installs each major version under /usr/lib/postgresql/N/bin;
/// the newest one is used.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether tests may skip for want of PostgreSQL: never in CI, where
/// scripts/test installs it.
fn may_skip() -> bool {
    std::env::var_os("CI").is_none()
}

fn run(what: &str, cmd: &mut Command) {
    if let Err(e) = try_run(what, cmd) {
        panic!("{e}");
    }
}

fn try_run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// How many ports a cluster's start tries: the port is free when chosen
/// but is only bound when the postmaster starts, so another process (a
/// test binary running beside this one) may take it in between.
const START_ATTEMPTS: usize = 5;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// The process's shared cluster, started on first use; `None` (with a
    /// message saying why) where PostgreSQL is not installed, outside CI.
    pub fn shared() -> Option<&'static Cluster> {
        static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
        SHARED.get_or_init(Cluster::start).as_ref()
    }

    /// A new cluster of the caller's own; `None` as for [`Cluster::shared`].
    /// It runs with `fsync = off`: the tests kill prodgate, never the machine.
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(false)
    }

    /// Like [`Cluster::start`], but durable as a production server is
    /// (`fsync = on`, `synchronous_commit = on`): for the benchmarks, whose
    /// write numbers mean nothing if a commit does not reach the disk.
    pub fn start_durable() -> Option<Cluster> {
        Cluster::start_with(true)
    }

    fn start_with(durable: bool) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            assert!(
                may_skip(),
                "PostgreSQL's initdb is not installed (scripts/test installs the `postgresql` package)"
            );
            eprintln!(
                "SKIPPED: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); `apt-get install postgresql` or scripts/test runs these tests"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("prodgate-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &password).expect("password file");
        std::fs::create_dir(dir.join("run")).expect("socket dir");
        run(
            "chown",
            Command::new("chown").arg("-R").arg("postgres:").arg(&dir),
        );
        let data = dir.join("data");
        run(
            "initdb",
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "scram-sha-256", "-U", "postgres", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        let durability = if durable {
            "fsync = on\nsynchronous_commit = on\n"
        } else {
            // The tests kill prodgate, never the machine: PostgreSQL's own
            // fsync only costs time there.
            "fsync = off\n"
        };
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             {durability}max_connections = 300\n",
            dir.join("run").display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
        text.push_str(&conf);
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            password,
            watchdog: Mutex::new(None),
        };
        let mut attempt = 1;
        loop {
            cluster.port = free_port();
            // A fresh log, so that what is read below is this attempt's.
            let _ = std::fs::remove_file(cluster.dir.join("log"));
            std::fs::write(&conf_path, format!("{text}port = {}\n", cluster.port))
                .expect("postgresql.conf");
            let Err(e) = cluster.try_pg_ctl("start") else {
                break;
            };
            let log = std::fs::read_to_string(cluster.dir.join("log")).unwrap_or_default();
            // Only a port taken since it was chosen is worth another try.
            assert!(
                attempt < START_ATTEMPTS && log.contains("could not bind"),
                "{e}\nPostgreSQL's log:\n{log}"
            );
            attempt += 1;
        }
        cluster.watch();
        Some(cluster)
    }

    fn pg_ctl(&self, action: &str) {
        if let Err(e) = self.try_pg_ctl(action) {
            panic!("{e}");
        }
    }

    fn try_pg_ctl(&self, action: &str) -> Result<(), String> {
        try_run(
            &format!("pg_ctl {action}"),
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-m", "fast", "-l"])
                .arg(self.dir.join("log"))
                .arg(action),
        )
    }

    /// Starts the watchdog that stops the cluster and removes its directory
    /// once this process closes the pipe.
    fn watch(&self) {
        let script = format!(
            "read _; runuser -u postgres -- '{}' -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display(),
            self.dir.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog");
        let stdin = child.stdin.take().expect("watchdog stdin");
        *self.watchdog.lock().unwrap() = Some((child, stdin));
    }

    /// Stops the server (a clean, fast shutdown); [`Cluster::resume`]
    /// starts it again on the same port with the same data.
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    pub fn resume(&self) {
        self.pg_ctl("start");
    }

    /// Runs SQL as the superuser with psql, on the `postgres` database.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A fresh, empty database.
    pub fn database(&self) -> TestDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "prodgate_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {name}"));
        let password_file = self.dir.join(format!("{name}.password"));
        std::fs::write(&password_file, &self.password).expect("password file");
        TestDatabase {
            url: format!("postgres://postgres@127.0.0.1:{}/{name}", self.port),
            name,
            password_file,
            password: self.password.clone(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of PostgreSQL's programs (`pgbench`, `psql`, …).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The superuser's password (also in every [`TestDatabase`]).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog stop the cluster; wait for it
        // so the next test does not race the shutdown.
        let taken = self.watchdog.lock().map(|mut w| w.take());
        if let Ok(Some((mut child, stdin))) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}
