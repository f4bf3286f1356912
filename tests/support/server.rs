//! Starts a real `prodgate serve` process on a free loopback port with a
//! config and data directory of its own, and gives typed gRPC clients that
//! authenticate as the test principals.
//!
//! With `PRODGATE_TEST_BACKEND=postgres` every server stores its data in
//! PostgreSQL instead of sled: one database per data directory on the test
//! process's shared cluster (tests/support/postgres.rs), so the same tests
//! run on both backends and a restart on the same data directory finds the
//! same data.

use prodgate::pb::promotion_service_client::PromotionServiceClient;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;
use tempfile::TempDir;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The variable that picks the backend of every [`TestServer`]: unset or
/// `sled` (the default), or `postgres`.
pub const BACKEND_VAR: &str = "PRODGATE_TEST_BACKEND";

/// Whether this run stores the test servers' data in PostgreSQL.
pub fn backend_is_postgres() -> bool {
    match std::env::var(BACKEND_VAR) {
        Ok(v) if v == "postgres" => true,
        Ok(v) if v.is_empty() || v == "sled" => false,
        Ok(v) => panic!("{BACKEND_VAR}={v:?}: expected `sled` or `postgres`"),
        Err(_) => false,
    }
}

/// For a test that is about sled itself (its files, its lock, offline
/// reads of the data directory): true, saying so, when this run is on
/// PostgreSQL, where the test has nothing to check. `why` names what the
/// test needs from sled.
pub fn skip_on_postgres(why: &str) -> bool {
    let skip = backend_is_postgres();
    if skip {
        eprintln!("skipped on PostgreSQL: {why}");
    }
    skip
}

/// `config` as this run's backend needs it: on PostgreSQL, with a
/// `[storage]` section for the database that belongs to `data_dir`, unless
/// the test chose its own `[storage]`.
fn with_backend(config: &str, data_dir: &Path) -> String {
    if !backend_is_postgres() || config.lines().any(|l| l.trim() == "[storage]") {
        return config.to_owned();
    }
    format!("{config}\n{}", database_for(data_dir))
}

/// The `[storage]` section of the database that belongs to `data_dir`,
/// created on first use: restarts and second servers on one data directory
/// share its data, as they would with sled.
fn database_for(data_dir: &Path) -> String {
    static DATABASES: std::sync::Mutex<std::collections::BTreeMap<PathBuf, String>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    databases
        .entry(data_dir.to_owned())
        .or_insert_with(|| {
            let cluster = super::postgres::Cluster::shared().unwrap_or_else(|| {
                panic!("{BACKEND_VAR}=postgres, but PostgreSQL is not installed")
            });
            cluster.database().storage_toml()
        })
        .clone()
}

/// Principals of the standard test config: name, groups.
pub const PRINCIPALS: &[(&str, &[&str])] = &[
    ("alice", &["developers"]),
    ("bob", &["release-managers"]),
    ("carol", &[]),
    ("dave", &["release-managers"]),
    ("erin", &["release-managers"]),
    ("rita", &["developers", "release-managers"]),
    ("mallory", &[]),
];

/// Every test principal's token is `<name>-token`.
pub fn token(name: &str) -> String {
    format!("{name}-token")
}

/// `[[registry]]` and `[[principal]]` sections for `registry_host`, plus the
/// environments every test uses: `staging` (no approval), `production`
/// (requires staging, one of release-managers or carol), `prod2` (two
/// approvals), `shortlived` (expires after a second) and `selfok` (self
/// approval allowed).
pub fn standard_config(registry_host: &str) -> String {
    let mut s = "registry_timeout = \"3s\"\nexpiry_sweep_interval = \"200ms\"\n".to_owned();
    s.push_str(&registry_toml(registry_host));
    s.push_str(&principals_toml());
    s.push_str(
        r#"
[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0

[[environment]]
name = "production"
tag = "production"
requires = "staging"
approvers = ["group:release-managers", "carol"]
required_approvals = 1

[[environment]]
name = "prod2"
tag = "prod2"
requires = "staging"
approvers = ["group:release-managers", "carol"]
required_approvals = 2

[[environment]]
name = "shortlived"
tag = "shortlived"
approvers = ["group:release-managers"]
required_approvals = 1
approval_ttl = "1s"

[[environment]]
name = "selfok"
tag = "selfok"
approvers = ["group:release-managers"]
required_approvals = 1
allow_self_approval = true
"#,
    );
    s
}

/// A `[[registry]]` section for the plain-HTTP registry at `host`.
pub fn registry_toml(host: &str) -> String {
    format!("[[registry]]\nhost = \"{host}\"\ninsecure = true\n")
}

/// `[[principal]]` sections for [`PRINCIPALS`], each with its test token.
pub fn principals_toml() -> String {
    let mut s = String::new();
    for (name, groups) in PRINCIPALS {
        let hash = hex::encode(Sha256::digest(token(name).as_bytes()));
        let groups: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
        s.push_str(&format!(
            "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\ngroups = [{}]\n",
            groups.join(", ")
        ));
    }
    s
}

pub struct TestServer {
    pub addr: String,
    /// Where the process serves `/metrics`, when its config has
    /// `metrics_listen` (give `127.0.0.1:0`: a port the test picked could
    /// be taken by another process before the server binds it). A restart
    /// binds anew.
    metrics: Option<String>,
    child: Child,
    /// Copies the rest of the server's log to `server.log`; ends when the
    /// process does.
    log_copier: Option<JoinHandle<()>>,
    dir: TempDir,
    data_dir: PathBuf,
    /// Extra environment of the process, kept for restarts.
    env: Vec<(String, std::ffi::OsString)>,
}

impl TestServer {
    /// Starts `prodgate serve` with `config` (listen and data_dir are set here).
    pub fn start(config: &str) -> TestServer {
        Self::try_start(config).unwrap_or_else(|log| did_not_start(&log))
    }

    /// Like [`TestServer::start`], or the log of a server that ended
    /// before it listened (e.g. a port in its config was taken).
    pub fn try_start(config: &str) -> Result<TestServer, String> {
        let (dir, data_dir) = prepare(config, None);
        Self::try_spawn(dir, data_dir, Vec::new())
    }

    /// Like [`TestServer::start`], with extra environment variables (e.g. a
    /// `PATH` with a fake credential helper first).
    pub fn start_with_env(config: &str, env: &[(&str, std::ffi::OsString)]) -> TestServer {
        let (dir, data_dir) = prepare(config, None);
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        Self::try_spawn(dir, data_dir, env).unwrap_or_else(|log| did_not_start(&log))
    }

    /// Like [`TestServer::start`], with the data directory at `data_dir`.
    pub fn start_with_data_dir(config: &str, data_dir: &Path) -> TestServer {
        Self::start_with_data_dir_and_env(config, data_dir, &[])
    }

    /// [`TestServer::start_with_data_dir`] with extra environment variables.
    pub fn start_with_data_dir_and_env(
        config: &str,
        data_dir: &Path,
        env: &[(&str, std::ffi::OsString)],
    ) -> TestServer {
        let (dir, data_dir) = prepare(config, Some(data_dir));
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        Self::try_spawn(dir, data_dir, env).unwrap_or_else(|log| did_not_start(&log))
    }

    fn try_spawn(
        dir: TempDir,
        data_dir: PathBuf,
        env: Vec<(String, std::ffi::OsString)>,
    ) -> Result<TestServer, String> {
        let (child, addr, metrics, log_copier) =
            try_spawn_child(dir.path(), &data_dir, &env, "127.0.0.1:0")?;
        Ok(TestServer {
            addr,
            metrics,
            child,
            log_copier: Some(log_copier),
            dir,
            data_dir,
            env,
        })
    }

    /// Waits for the process to end and its log to be copied in full.
    fn reap(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait();
        if let Some(copier) = self.log_copier.take() {
            let _ = copier.join();
        }
        status
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The `host:port` of `/metrics` (the config must set `metrics_listen`).
    pub fn metrics_addr(&self) -> &str {
        self.metrics
            .as_deref()
            .expect("the server's config sets metrics_listen")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the config file (the running server reads it on SIGHUP or
    /// at its next start).
    pub fn write_config(&self, config: &str) {
        write_config_file(self.dir.path(), config, &self.data_dir);
    }

    /// Sends SIGHUP: the server re-reads its config file.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Kills the process with SIGKILL (no chance to flush anything more) and
    /// starts a new one on the same config and data directory.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.reap();
        let (child, addr, metrics, log_copier) =
            spawn_child(self.dir.path(), &self.data_dir, &self.env, "127.0.0.1:0");
        self.child = child;
        self.addr = addr;
        self.metrics = metrics;
        self.log_copier = Some(log_copier);
    }

    /// Kills the process with SIGKILL and waits for it to end (its log
    /// stays readable).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.reap();
    }

    /// Like [`TestServer::kill_and_restart`], on the same address, so that
    /// clients holding the URL find the new process: a server restart as
    /// its clients see it.
    pub fn kill_and_restart_in_place(&mut self) {
        let _ = self.child.kill();
        let _ = self.reap();
        let (child, addr, metrics, log_copier) =
            spawn_child(self.dir.path(), &self.data_dir, &self.env, &self.addr);
        self.child = child;
        self.addr = addr;
        self.metrics = metrics;
        self.log_copier = Some(log_copier);
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        self.reap().expect("wait for prodgate").code()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid uri")
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect to prodgate")
    }

    /// A client authenticated as `name` (see [`token`]).
    pub async fn client(&self, name: &str) -> Client {
        client_on(&self.channel().await, name)
    }

    pub async fn client_with_token(&self, token: &str) -> Client {
        PromotionServiceClient::with_interceptor(self.channel().await, Bearer::token(token))
    }

    /// A client that sends no credentials.
    pub async fn anonymous(&self) -> Client {
        PromotionServiceClient::with_interceptor(self.channel().await, Bearer(None))
    }
}

/// What a `prodgate serve` that was expected to stop on its own did.
pub struct Exited {
    /// The exit code; `None` if it was still running at the limit (then
    /// killed) or died of a signal.
    pub code: Option<i32>,
    /// The first MiB of its log.
    pub log: String,
    /// The size of its whole log, in bytes.
    pub log_bytes: u64,
}

/// Runs `prodgate serve` with `config` (on this run's backend) and waits
/// for it to exit, at most `limit`; for servers that must refuse to start.
pub fn serve_until_exit(config: &str, limit: Duration) -> Exited {
    use std::io::Read;
    let dir = tempfile::Builder::new()
        .prefix("prodgate-test-")
        .tempdir()
        .expect("create a temp dir for the server");
    let data_dir = dir.path().join("data");
    write_config_file(dir.path(), config, &data_dir);
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("create the server log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("prodgate.toml"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "prodgate=debug,info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prodgate serve");
    let deadline = std::time::Instant::now() + limit;
    let code = loop {
        match child.try_wait().expect("wait for prodgate") {
            Some(status) => break status.code(),
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let log_bytes = std::fs::metadata(&log_path).map_or(0, |m| m.len());
    let mut text = Vec::new();
    std::fs::File::open(&log_path)
        .expect("open the server log")
        .take(1 << 20)
        .read_to_end(&mut text)
        .expect("read the server log");
    Exited {
        code,
        log: String::from_utf8_lossy(&text).into_owned(),
        log_bytes,
    }
}

/// Writes `dir/prodgate.toml`: `config`, on PostgreSQL with the `[storage]`
/// of `data_dir`'s database.
fn write_config_file(dir: &Path, config: &str, data_dir: &Path) {
    std::fs::write(dir.join("prodgate.toml"), with_backend(config, data_dir))
        .expect("write the config");
}

/// A server's own directory, holding its config for `data_dir` (by
/// default `data/` inside it).
fn prepare(config: &str, data_dir: Option<&Path>) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("prodgate-test-")
        .tempdir()
        .expect("create a temp dir for the server");
    let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_owned);
    write_config_file(dir.path(), config, &data_dir);
    (dir, data_dir)
}

/// A started `prodgate serve`: the process, its gRPC address, its metrics
/// address (if it serves them), and the thread copying its log.
type Spawned = (Child, String, Option<String>, JoinHandle<()>);

/// Runs `prodgate serve` in `dir` on `listen` and returns once it is
/// listening: its addresses, and the thread that copies the rest of its log
/// to `server.log`.
fn spawn_child(
    dir: &Path,
    data_dir: &Path,
    env: &[(String, std::ffi::OsString)],
    listen: &str,
) -> Spawned {
    try_spawn_child(dir, data_dir, env, listen).unwrap_or_else(|log| did_not_start(&log))
}

fn did_not_start(log: &str) -> ! {
    panic!("prodgate did not start; log:\n{log}")
}

/// [`spawn_child`], or the log of a process that ended before it listened.
fn try_spawn_child(
    dir: &Path,
    data_dir: &Path,
    env: &[(String, std::ffi::OsString)],
    listen: &str,
) -> Result<Spawned, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join("prodgate.toml"))
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "prodgate=debug,info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prodgate serve");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("open the server log");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    // The server logs its address once its store is open and the socket
    // bound, so connecting right after this line cannot race its start-up.
    let mut addr = None;
    // Logged before "listening".
    let mut metrics = None;
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        match stderr.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                log.write_all(line.as_bytes())
                    .expect("write the server log");
                addr = logged_addr(&line, "listening");
                metrics = metrics.or_else(|| logged_addr(&line, "serving metrics at /metrics"));
            }
        }
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::fs::read_to_string(dir.join("server.log")).unwrap_or_default());
    };
    let copier = std::thread::spawn(move || copy_log(stderr, log));
    Ok((child, addr, metrics, copier))
}

fn copy_log(mut from: BufReader<ChildStderr>, mut to: std::fs::File) {
    let _ = std::io::copy(&mut from, &mut to);
}

/// The `addr` of the server's `listening` log line, in text
/// (`INFO prodgate::server: listening addr=127.0.0.1:4711 …`) or JSON.
/// The `addr` of a log line whose message is `message`, in either log
/// format.
fn logged_addr(line: &str, message: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return (v["message"] == message)
            .then(|| v["addr"].as_str().map(str::to_owned))
            .flatten();
    }
    let (_, fields) = line.split_once(&format!(": {message} "))?;
    fields
        .split_whitespace()
        .find_map(|f| f.strip_prefix("addr="))
        .map(str::to_owned)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.reap();
    }
}

pub type Client = PromotionServiceClient<InterceptedService<Channel, Bearer>>;

/// A client authenticated as `name` (see [`token`]) on an existing connection, so that several
/// clients can share one HTTP/2 connection (the benchmarks' load generators do).
pub fn client_on(channel: &Channel, name: &str) -> Client {
    PromotionServiceClient::with_interceptor(channel.clone(), Bearer::token(&token(name)))
}

/// Adds `authorization` metadata to every call.
#[derive(Clone)]
pub struct Bearer(Option<String>);

impl Bearer {
    pub fn token(token: &str) -> Bearer {
        Bearer(Some(format!("Bearer {token}")))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut()
                .insert("authorization", v.parse().expect("ascii token"));
        }
        Ok(req)
    }
}
