//! The `prodgate` command line as users and CI jobs run it: the real binary
//! as a subprocess against a real server and registry, in both output
//! modes, with the exit codes scripts branch on.
//!
//! Running a subprocess blocks the test thread; that is fine because the
//! server and the registry are processes of their own.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use support::World;
use support::server::{TestServer, standard_config, token};

const BIN: &str = env!("CARGO_BIN_EXE_prodgate");

/// A finished run.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn code(self, want: i32) -> Out {
        assert_eq!(self.code, Some(want), "{self:#?}");
        self
    }

    #[track_caller]
    fn ok(self) -> Out {
        self.code(0)
    }

    /// Every stdout line as JSON.
    #[track_caller]
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {self:#?}")))
            .collect()
    }

    /// The only stdout line, as JSON.
    #[track_caller]
    fn one(&self) -> Value {
        let lines = self.lines();
        assert_eq!(lines.len(), 1, "{self:#?}");
        lines.into_iter().next().unwrap_or_default()
    }
}

/// The binary with none of the caller's PRODGATE_* settings.
fn prodgate() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("PRODGATE_SERVER")
        .env_remove("PRODGATE_TOKEN")
        .env_remove("PRODGATE_CONFIG");
    c
}

fn finish(c: &mut Command) -> Out {
    let o = c.output().expect("run prodgate");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn url(s: &TestServer) -> String {
    format!("http://{}", s.addr)
}

/// `prodgate --server <s> --token <who>-token ARGS` in table mode.
fn as_user(s: &TestServer, who: &str, args: &[&str]) -> Command {
    let mut c = prodgate();
    c.arg("--server")
        .arg(url(s))
        .arg("--token")
        .arg(token(who))
        .args(args);
    c
}

fn table(s: &TestServer, who: &str, args: &[&str]) -> Out {
    finish(&mut as_user(s, who, args))
}

fn json(s: &TestServer, who: &str, args: &[&str]) -> Out {
    finish(as_user(s, who, args).args(["--output", "json"]))
}

/// A run in the background whose stdout is read line by line, for `--wait`.
struct Waiter {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Waiter {
    fn start(mut c: Command) -> Waiter {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prodgate");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Waiter { child, stdout }
    }

    /// Blocks until the next line; `--wait` flushes each one as it happens.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read a line");
        assert!(!line.is_empty(), "prodgate ended early");
        line
    }

    /// Reads up to the promotion's id (`id:` in table output, the first
    /// line with `-o json`): what was read, and the id.
    fn until_id(&mut self) -> (String, String) {
        let mut seen = String::new();
        loop {
            let line = self.line();
            seen.push_str(&line);
            let id = match line.strip_prefix("id:") {
                Some(id) => id.trim().to_owned(),
                None if line.starts_with('{') => {
                    id_of(&serde_json::from_str(&line).expect("a JSON line"))
                }
                None => continue,
            };
            return (seen, id);
        }
    }

    fn finish(mut self, mut seen: String) -> Out {
        self.stdout.read_to_string(&mut seen).expect("read stdout");
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut stderr).expect("read stderr");
        }
        let status = self.child.wait().expect("wait for prodgate");
        Out {
            code: status.code(),
            stdout: seen,
            stderr,
        }
    }
}

fn request_args<'a>(repo: &'a str, env: &'a str) -> Vec<&'a str> {
    vec![
        "request",
        repo,
        "--source",
        "staging",
        "--env",
        env,
        "--reason",
        "release 1.4",
    ]
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

fn states(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["state"].as_str().unwrap_or("?"))
        .collect()
}

#[tokio::test]
async fn json_output_is_one_proto3_object_per_line() {
    let w = World::start().await;
    let digest = w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let s = &w.server;

    let mut args = request_args(&repo, "production");
    args.extend(["--request-id", "ci-1"]);
    let requested = json(s, "alice", &args).ok().one();
    assert_eq!(requested["state"], "PROMOTION_STATE_PENDING_APPROVAL");
    assert_eq!(requested["requestedBy"], "alice");
    assert_eq!(requested["digest"], digest.as_str());
    assert_eq!(requested["targetTag"], "production");
    assert_eq!(requested["requiredApprovals"], 1);
    // proto3 JSON leaves out fields at their default value.
    assert!(requested.get("approvals").is_none(), "{requested}");
    assert!(requested.get("previousDigest").is_none(), "{requested}");
    assert!(
        requested["createdAt"]
            .as_str()
            .is_some_and(|t| t.starts_with("20") && t.ends_with('Z')),
        "{requested}"
    );
    let id = id_of(&requested);
    // The same request ID is the same promotion.
    assert_eq!(json(s, "alice", &args).ok().one(), requested);
    assert_eq!(json(s, "carol", &["get", &id]).ok().one(), requested);
    let pending = json(s, "alice", &["list", "--state", "pending"])
        .ok()
        .lines();
    assert_eq!(pending, std::slice::from_ref(&requested));

    let approved = json(s, "bob", &["approve", &id, "--comment", "lgtm", "--wait"])
        .ok()
        .lines();
    let last = approved.last().expect("a line");
    assert_eq!(last["state"], "PROMOTION_STATE_PROMOTED");
    assert_eq!(last["approvals"][0]["approver"], "bob");
    assert_eq!(last["approvals"][0]["comment"], "lgtm");
    assert!(last["promotedAt"].is_string(), "{last}");
    assert!(
        json(s, "alice", &["list", "--state", "PENDING"])
            .ok()
            .stdout
            .is_empty()
    );
    let promoted = json(
        s,
        "alice",
        &["list", "--state", "Promoted", "--repository", &repo],
    )
    .ok()
    .lines();
    assert_eq!(promoted, std::slice::from_ref(last));

    let history = json(s, "rita", &["history", "--promotion", &id, "--since", "1h"])
        .ok()
        .lines();
    let actions: Vec<&str> = history
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        actions,
        [
            "AUDIT_ACTION_REQUESTED",
            "AUDIT_ACTION_APPROVED",
            "AUDIT_ACTION_APPLIED"
        ]
    );
    // uint64 as strings; the chain links entry to entry, from the start's
    // POLICY_CHANGED entry (sequence 1, its digest an attribute).
    let all = json(s, "rita", &["history"]).ok().lines();
    assert_eq!(all[0]["action"], "AUDIT_ACTION_POLICY_CHANGED");
    assert_eq!(all[0]["sequence"], "1");
    assert_eq!(all[0]["prevHash"], "0".repeat(64));
    assert!(
        all[0]["attributes"]["policy"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{:?}",
        all[0]
    );
    assert_eq!(history[0]["sequence"], "2");
    assert_eq!(history[0]["prevHash"], all[0]["hash"]);
    assert_eq!(history[1]["prevHash"], history[0]["hash"]);
    assert_eq!(history[2]["prevHash"], history[1]["hash"]);
    // --since and --until take the exact RFC 3339 times the JSON shows.
    let approved_at = history[1]["time"].as_str().expect("time");
    let of_repo = |extra: &[&str]| {
        let mut args = vec!["history", "--repository", &repo];
        args.extend_from_slice(extra);
        json(s, "rita", &args).ok().lines()
    };
    let since = json(s, "rita", &["history", "--since", approved_at])
        .ok()
        .lines();
    assert_eq!(since, history[1..]);
    assert_eq!(of_repo(&["--until", approved_at]), history[..2]);
    assert_eq!(of_repo(&["--limit", "1"]), history[..1]);

    let deployed = json(s, "carol", &["deployed", &repo, "--env", "production"])
        .ok()
        .one();
    assert_eq!(deployed["digest"], digest.as_str());
    assert_eq!(deployed["promotionId"], id.as_str());
    assert_eq!(deployed["since"], last["promotedAt"]);
    // An hour ago nothing was deployed there.
    let before = json(
        s,
        "carol",
        &["deployed", &repo, "--env", "production", "--at", "1h"],
    )
    .code(3);
    assert!(before.stdout.is_empty());
    assert!(before.stderr.contains("NOT_FOUND"), "{before:#?}");

    let verified = json(s, "alice", &["verify-log"]).ok().one();
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["entriesChecked"], "4");
    assert_eq!(verified["headHash"], history[2]["hash"]);

    // reject and cancel answer the promotion too.
    let p2 = id_of(&json(s, "alice", &request_args(&repo, "prod2")).ok().one());
    let rejected = json(s, "carol", &["reject", &p2, "--comment", "not now"])
        .ok()
        .one();
    assert_eq!(rejected["state"], "PROMOTION_STATE_REJECTED");
    let p3 = id_of(&json(s, "alice", &request_args(&repo, "prod2")).ok().one());
    let cancelled = json(s, "alice", &["cancel", &p3]).ok().one();
    assert_eq!(cancelled["state"], "PROMOTION_STATE_CANCELLED");
    let prod2 = json(s, "alice", &["list", "--env", "prod2"]).ok().lines();
    assert_eq!(prod2.len(), 2);
    let one = json(s, "alice", &["list", "--env", "prod2", "--limit", "1"])
        .ok()
        .lines();
    assert_eq!(one.len(), 1);
    let rejected_only = json(s, "alice", &["list", "--state", "rejected"])
        .ok()
        .lines();
    assert_eq!(rejected_only, [rejected]);

    let health = json(s, "alice", &["health"]).ok().one();
    assert_eq!(health, serde_json::json!({"status": "SERVING"}));
}

#[tokio::test]
async fn table_output_is_for_people() {
    let w = World::start().await;
    let digest = w.registry.push_image("app", Some("staging"), 1024, 2).await;
    let repo = w.repo("app");
    let s = &w.server;

    let requested = table(s, "alice", &request_args(&repo, "production")).ok();
    assert!(
        requested
            .stdout
            .contains("state:        PENDING_APPROVAL\n"),
        "{requested:#?}"
    );
    // Digests are references a person can paste into `docker pull`.
    assert!(
        requested
            .stdout
            .contains(&format!("digest:       {repo}@{digest}\n")),
        "{requested:#?}"
    );
    assert!(requested.stdout.contains("approvals:    0/1\n"));
    let id = requested
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("an id line")
        .trim()
        .to_owned();

    let list = table(s, "alice", &["list", "--state", "pending"]).ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{list:#?}");
    let header = lines[0];
    for column in [
        "ID",
        "STATE",
        "REPOSITORY",
        "ENV",
        "DIGEST",
        "REQUESTED BY",
        "APPROVALS",
        "AGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    // Columns line up: each value starts where its header does.
    let at = |col: &str| header.find(col).expect("column");
    let row = lines[1];
    assert!(row.starts_with(&id));
    assert_eq!(row.find("PENDING_APPROVAL"), Some(at("STATE")));
    assert_eq!(row.find("production"), Some(at("ENV")));
    assert_eq!(row.find("sha256:"), Some(at("DIGEST")));
    assert_eq!(row.find("0/1"), Some(at("APPROVALS")));
    assert!(row.ends_with("ago") || row.ends_with("just now"), "{row}");
    assert!(!row.contains(&digest), "digests are shortened: {row}");

    let approved = table(
        s,
        "carol",
        &["approve", &id, "--comment", "ship it", "--wait"],
    )
    .ok();
    assert!(approved.stdout.contains("PROMOTED"), "{approved:#?}");
    let got = table(s, "alice", &["get", &id]).ok();
    for want in [
        "state:        PROMOTED\n",
        "approvals:    1/1\n",
        "carol",
        "\"ship it\"",
        "promoted:",
        "requested by: alice\n",
        "reason:       release 1.4\n",
    ] {
        assert!(got.stdout.contains(want), "{want:?} in {got:#?}");
    }

    let history = table(s, "alice", &["history", "--promotion", &id]).ok();
    let actions: Vec<&str> = history
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        actions,
        ["REQUESTED", "APPROVED", "APPLIED"],
        "{history:#?}"
    );
    assert!(history.stdout.starts_with("SEQ  TIME"), "{history:#?}");

    let deployed = table(s, "alice", &["deployed", &repo, "--env", "production"]).ok();
    assert!(
        deployed
            .stdout
            .contains(&format!("digest:    {repo}@{digest}\n")),
        "{deployed:#?}"
    );
    assert!(deployed.stdout.contains(&format!("promotion: {id}\n")));

    let p2 = table(s, "alice", &request_args(&repo, "prod2")).ok();
    let p2 = p2
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("id")
        .trim()
        .to_owned();
    let rejected = table(s, "bob", &["reject", &p2, "--comment", "wrong build"]).ok();
    assert!(
        rejected.stdout.contains("state:        REJECTED\n"),
        "{rejected:#?}"
    );
    let rejected_list = table(s, "alice", &["list", "--state", "REJECTED"]).ok();
    assert_eq!(
        rejected_list.stdout.lines().count(),
        2,
        "{rejected_list:#?}"
    );

    let cancelled = table(s, "alice", &["cancel", &p2]).code(3);
    assert!(
        cancelled.stderr.contains("FAILED_PRECONDITION"),
        "{cancelled:#?}"
    );

    let verified = table(s, "alice", &["verify-log"]).ok();
    assert!(
        verified.stdout.starts_with("ok: 6 entries, head "),
        "{verified:#?}"
    );
    assert_eq!(table(s, "alice", &["health"]).ok().stdout, "SERVING\n");
}

#[tokio::test]
async fn approve_wait_prints_each_change_until_promoted() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 3).await;
    let s = &w.server;
    // prod2 needs two approvals: bob's leaves it pending, carol's promotes.
    let id = id_of(
        &json(s, "alice", &request_args(&w.repo("app"), "prod2"))
            .ok()
            .one(),
    );
    let mut bob = Waiter::start({
        let mut c = as_user(s, "bob", &["approve", &id, "--wait"]);
        c.args(["--output", "json"]);
        c
    });
    let first = bob.line();
    let first_v: Value = serde_json::from_str(&first).expect("json line");
    assert_eq!(first_v["state"], "PROMOTION_STATE_PENDING_APPROVAL");
    assert_eq!(first_v["approvals"].as_array().map(Vec::len), Some(1));
    json(s, "carol", &["approve", &id]).ok();
    let out = bob.finish(first).ok();
    let lines = out.lines();
    assert!(lines.len() >= 2, "{out:#?}");
    assert_eq!(
        states(&lines).last(),
        Some(&"PROMOTION_STATE_PROMOTED"),
        "{out:#?}"
    );
    assert_eq!(
        lines.last().map(|l| &l["id"]),
        Some(&Value::from(id.as_str()))
    );
}

#[tokio::test]
async fn wait_exits_5_when_the_promotion_ends_otherwise() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 4).await;
    let repo = w.repo("app");
    let s = &w.server;

    // A CI job waits for its promotion; an approver rejects it meanwhile.
    let mut job = Waiter::start({
        let mut c = as_user(s, "alice", &request_args(&repo, "production"));
        c.args(["--wait", "--output", "json"]);
        c
    });
    let first = job.line();
    let id = id_of(&serde_json::from_str(&first).expect("json line"));
    table(s, "bob", &["reject", &id, "--comment", "freeze"]).ok();
    let out = job.finish(first).code(5);
    assert_eq!(
        states(&out.lines()),
        [
            "PROMOTION_STATE_PENDING_APPROVAL",
            "PROMOTION_STATE_REJECTED"
        ]
    );
    assert!(out.stderr.contains("REJECTED"), "{out:#?}");
    // Approving what is over is refused before any waiting.
    let refused = table(s, "bob", &["approve", &id, "--wait"]).code(3);
    assert!(
        refused.stderr.contains("FAILED_PRECONDITION"),
        "{refused:#?}"
    );

    // Table mode: the requester cancels from another terminal.
    let mut job = Waiter::start({
        let mut c = as_user(s, "alice", &request_args(&repo, "production"));
        c.arg("--wait");
        c
    });
    let mut seen = String::new();
    let id = loop {
        let line = job.line();
        seen.push_str(&line);
        if let Some(id) = line.strip_prefix("id:") {
            break id.trim().to_owned();
        }
    };
    let cancelled = table(s, "alice", &["cancel", &id, "--comment", "wrong image"]).ok();
    assert!(cancelled.stdout.contains("CANCELLED"), "{cancelled:#?}");
    let out = job.finish(seen).code(5);
    assert!(
        out.stdout
            .contains(&format!("promotion {id}: CANCELLED (approvals 0/1)\n")),
        "{out:#?}"
    );
    assert_eq!(
        out.stderr.trim(),
        format!("prodgate: promotion {id} ended CANCELLED, not PROMOTED")
    );
}

#[tokio::test]
async fn refusals_and_unreachable_servers_have_their_own_exit_codes() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 5).await;
    let s = &w.server;
    let id = id_of(
        &json(s, "alice", &request_args(&w.repo("app"), "production"))
            .ok()
            .one(),
    );

    let unknown = json(s, "nobody", &["list"]).code(3);
    assert!(unknown.stdout.is_empty());
    assert_eq!(
        unknown.stderr,
        "prodgate: refused (UNAUTHENTICATED): unknown token; the token came from --token: check it\n"
    );
    let denied = table(s, "mallory", &["approve", &id]).code(3);
    assert!(
        denied
            .stderr
            .starts_with("prodgate: refused (PERMISSION_DENIED): "),
        "{denied:#?}"
    );
    assert_eq!(denied.stderr.lines().count(), 1);
    let missing = table(s, "alice", &["get", "999"]).code(3);
    assert!(missing.stderr.contains("NOT_FOUND"), "{missing:#?}");
    let anonymous = finish(prodgate().args(["--server", &url(s), "get", &id])).code(3);
    assert!(
        anonymous.stderr.contains("UNAUTHENTICATED"),
        "{anonymous:#?}"
    );

    // The token from a file (trimmed) or the environment.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("  {}\n", token("carol"))).expect("write token");
    let via_file = finish(
        prodgate()
            .args(["--server", &url(s), "--output", "json", "get", &id])
            .arg("--token-file")
            .arg(&file),
    )
    .ok();
    assert_eq!(via_file.one()["id"], id.as_str());
    let via_env = finish(
        prodgate()
            .env("PRODGATE_SERVER", url(s))
            .env("PRODGATE_TOKEN", token("carol"))
            .args(["get", &id]),
    )
    .ok();
    assert!(via_env.stdout.contains("PENDING_APPROVAL"));
    let no_file = finish(prodgate().args([
        "--server",
        &url(s),
        "--token-file",
        "/nonexistent/token",
        "get",
        &id,
    ]))
    .code(1);
    assert!(
        no_file.stderr.contains("/nonexistent/token"),
        "{no_file:#?}"
    );

    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let closed = format!("http://{closed}");
    for args in [vec!["get", "1"], vec!["health"], vec!["verify-log"]] {
        let out = finish(
            prodgate()
                .args(["--server", &closed, "--token", "x"])
                .args(&args),
        )
        .code(4);
        assert!(
            out.stderr
                .starts_with(&format!("prodgate: cannot reach {closed}")),
            "{out:#?}"
        );
    }

    // A server that accepts connections but never answers: --timeout ends
    // the call. (The kernel completes the TCP handshake without accept().)
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent = format!("http://{}", listener.local_addr().expect("addr"));
    let late =
        finish(prodgate().args(["--server", &silent, "--timeout", "300ms", "get", "1"])).code(4);
    assert_eq!(
        late.stderr,
        format!(
            "prodgate: unreachable (DEADLINE_EXCEEDED): no answer within --timeout; {silent} \
             accepted the connection but did not answer within 300ms: is it a prodgate server \
             (from --server)? If it is just slow, raise --timeout\n"
        )
    );

    // Flag values that do not parse are local errors; bad usage is 2.
    for bad in [
        vec!["history", "--since", "last tuesday"],
        vec!["list", "--state", "done"],
        vec!["list", "--limit", "0"],
        vec!["deployed", "r/app", "--env", "production", "--at", "soon"],
    ] {
        finish(prodgate().args(["--server", &url(s)]).args(&bad)).code(1);
    }
    finish(prodgate().args(["frobnicate"])).code(2);
    finish(prodgate().args(["reject", &id])).code(2);
    let plain_tls =
        finish(prodgate().args(["--server", &url(s), "--ca-cert", "ca.pem", "health"])).code(1);
    assert!(plain_tls.stderr.contains("https://"), "{plain_tls:#?}");
}

#[tokio::test]
async fn verify_log_online_and_offline_agree() {
    if support::server::skip_on_postgres("`verify-log --data-dir` reads a sled data directory") {
        return;
    }
    let w = World::start().await;
    let World {
        registry,
        mut server,
    } = w;
    registry.push_image("app", Some("staging"), 1024, 6).await;
    let repo = format!("{}/app", registry.host);
    // Pending requests only: no background apply can add an entry between
    // the online check and the offline one.
    for _ in 0..3 {
        json(&server, "alice", &request_args(&repo, "production")).ok();
    }
    let online = json(&server, "alice", &["verify-log"]).ok().one();
    assert_eq!(online["ok"], true);
    let online_table = table(&server, "alice", &["verify-log"]).ok();

    assert_eq!(server.terminate(), Some(0), "{}", server.log());
    let data = server.data_dir();
    let offline = finish(
        prodgate()
            .args(["--output", "json", "verify-log", "--data-dir"])
            .arg(&data),
    )
    .ok()
    .one();
    assert_eq!(offline, online);
    let offline_table = finish(prodgate().args(["verify-log", "--data-dir"]).arg(&data)).ok();
    assert_eq!(offline_table.stdout, online_table.stdout);
    assert!(
        offline_table.stdout.starts_with("ok: 4 entries, head "),
        "{offline_table:#?}"
    );

    // The stopped server is no longer healthy.
    finish(prodgate().args(["--server", &url(&server), "health"])).code(4);
}

#[test]
fn local_commands_need_no_server() {
    let bash = finish(prodgate().args(["completions", "bash"])).ok();
    assert!(bash.stdout.contains("_prodgate()"), "{bash:#?}");
    for word in ["verify-log", "--token-file", "--output"] {
        assert!(bash.stdout.contains(word), "{word}");
    }
    let help = finish(prodgate().arg("--help")).ok();
    assert!(help.stdout.contains("Exit codes:"), "{help:#?}");
    // Client options are in the help of client subcommands only.
    for local in ["serve", "check-config", "completions"] {
        let h = finish(prodgate().args([local, "--help"])).ok();
        for flag in ["--server", "--token", "--ca-cert", "--output"] {
            assert!(!h.stdout.contains(flag), "{flag} in {local} --help: {h:#?}");
        }
    }
    let list = finish(prodgate().args(["list", "--help"])).ok();
    for flag in ["--server", "--token", "-o, --output", "--timeout", "--mine"] {
        assert!(list.stdout.contains(flag), "{flag}: {list:#?}");
    }
    for line in [
        "  3  refused",
        "  4  server unreachable",
        "  5  --wait ended",
        "  6  --wait gave up after --timeout",
        "  7  gates: at least one gate blocks",
        "  8  --wait failed after the promotion was made: it exists",
    ] {
        assert!(help.stdout.contains(line), "{line:?}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prodgate.toml");
    std::fs::write(&config, standard_config("127.0.0.1:5000")).expect("write config");
    // No Docker credentials from this machine leak into the check.
    let check = |config: &std::path::Path| {
        finish(
            prodgate()
                .env("DOCKER_CONFIG", dir.path())
                .arg("check-config")
                .arg(config),
        )
    };
    let checked = check(&config).ok();
    assert_eq!(
        checked.stdout,
        "ok: 5 environments (staging, production, prod2, shortlived, selfok), 0 projects, \
         0 freezes, 0 identities, 0 check reporters, 1 registry, 7 principals\n"
    );
    std::fs::write(&config, "listen = 5\n").expect("write config");
    let bad = check(&config).code(1);
    assert!(bad.stderr.starts_with("prodgate: "), "{bad:#?}");
    // A TOML syntax error is the toml crate's snippet, line by line, not
    // one line of `\n` escapes.
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\ndata_dir = [\n").expect("write config");
    let bad = check(&config).code(1);
    assert!(bad.stderr.starts_with("prodgate: "), "{bad:#?}");
    assert!(!bad.stderr.contains("\\n"), "{bad:#?}");
    assert!(bad.stderr.lines().count() >= 3, "{bad:#?}");
    assert!(
        bad.stderr.lines().any(|l| l.trim_start().starts_with('|')),
        "{bad:#?}"
    );
    assert!(bad.stderr.contains('^'), "{bad:#?}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate with
/// CN `deploy-bot`, as PEM files in `dir`: (ca, server cert, server key,
/// client cert, client key).
fn pki(dir: &std::path::Path) -> [String; 5] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "prodgate cli test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()], "prodgate");
    let (client_cert, client_key) = leaf(vec![], "deploy-bot");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p.to_str().expect("utf-8 path").to_owned()
    };
    [
        write("ca.pem", &ca.pem()),
        write("server.pem", &server_cert),
        write("server.key", &server_key),
        write("client.pem", &client_cert),
        write("client.key", &client_key),
    ]
}

#[tokio::test]
async fn tls_and_client_certificates() {
    let w = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, cert, key, client_cert, client_key] = pki(dir.path());
    let config = format!(
        "{}\n[[principal]]\nname = \"deploy-bot\"\ncertificate_cn = \"deploy-bot\"\ngroups = []\n\n[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\n",
        standard_config(&w.registry.host)
    );
    let server = TestServer::start(&config);
    let https = format!("https://{}", server.addr);
    let mtls = |args: &[&str]| {
        finish(
            prodgate()
                .args(["--server", &https, "--ca-cert", &ca, "--cert", &client_cert])
                .args(["--key", &client_key])
                .args(args),
        )
    };
    assert_eq!(mtls(&["health"]).ok().stdout, "SERVING\n");
    // The certificate alone identifies the caller.
    assert_eq!(mtls(&["--output", "json", "list"]).ok().stdout, "");
    // With a token as well, the token wins.
    let as_bob = mtls(&["--token", &token("bob"), "approve", "1"]).code(3);
    assert!(as_bob.stderr.contains("NOT_FOUND"), "{as_bob:#?}");

    // Without trusting the CA, or without a client certificate: unreachable.
    let untrusted = finish(prodgate().args(["--server", &https, "health"])).code(4);
    assert!(untrusted.stderr.starts_with("prodgate: "), "{untrusted:#?}");
    let no_cert = finish(prodgate().args(["--server", &https, "--ca-cert", &ca, "health"])).code(4);
    assert!(
        no_cert
            .stderr
            .ends_with("if it requires a client certificate (mTLS), pass --cert and --key\n"),
        "{no_cert:#?}"
    );
    // Plain text to a TLS port: the server hangs up.
    let plain = format!("http://{}", server.addr);
    let hung_up =
        finish(prodgate().args(["--server", &plain, "--token", &token("bob"), "list"])).code(4);
    assert!(
        hung_up
            .stderr
            .contains(&format!("speaks TLS: use https://{}", server.addr)),
        "{hung_up:#?}"
    );
    // A key where a certificate belongs is named before any connection.
    let swapped = finish(
        prodgate()
            .args(["--server", &https, "--ca-cert", &ca, "--cert", &client_key])
            .args(["--key", &client_key, "health"]),
    )
    .code(1);
    assert!(swapped.stderr.contains("client.key"), "{swapped:#?}");
    // Half a client identity is a usage error.
    finish(prodgate().args(["--server", &https, "--cert", &client_cert, "health"])).code(2);
}

/// The value after `key:` in a `get`-style block.
fn field(out: &Out, key: &str) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key:?} line in {out:#?}"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn errors_say_what_to_change() {
    let w = World::start().await;
    let s = &w.server;

    // Which token the server refused, and where it came from.
    let refused = |c: &mut Command| finish(c.args(["--server", &url(s), "list"])).code(3);
    let from_env = refused(prodgate().env("PRODGATE_TOKEN", "stale"));
    assert!(
        from_env.stderr.ends_with(
            "unknown token; the token came from PRODGATE_TOKEN: check it, or give another \
             with --token TOKEN or --token-file PATH\n"
        ),
        "{from_env:#?}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "stale\n").expect("write token");
    let from_file = refused(
        prodgate()
            .env("PRODGATE_TOKEN", "x")
            .arg("--token-file")
            .arg(&file),
    );
    assert!(
        from_file.stderr.ends_with(&format!(
            "the token came from --token-file {}: check that it holds your token\n",
            file.display()
        )),
        "{from_file:#?}"
    );
    let none = refused(&mut prodgate());
    assert!(
        none.stderr.ends_with(
            "no token was given: pass --token TOKEN, set PRODGATE_TOKEN or use --token-file PATH\n"
        ),
        "{none:#?}"
    );

    // Which setting named a server that is not there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let down = finish(
        prodgate()
            .env("PRODGATE_SERVER", &closed)
            .args(["get", "1"]),
    )
    .code(4);
    assert!(
        down.stderr
            .starts_with(&format!("prodgate: cannot reach {closed}: ")),
        "{down:#?}"
    );
    assert!(
        down.stderr.ends_with(&format!(
            "is `prodgate serve` running at {closed} (from PRODGATE_SERVER)? Set --server or \
             PRODGATE_SERVER to its URL\n"
        )),
        "{down:#?}"
    );

    // A tag on the repository: the command that was meant.
    let tagged = table(
        s,
        "alice",
        &[
            "request",
            &format!("{}:staging", w.repo("app")),
            "--env",
            "production",
        ],
    )
    .code(1);
    assert!(
        tagged.stderr.contains(&format!(
            "give the repository alone and the tag as --source (prodgate request {} --source staging",
            w.repo("app")
        )),
        "{tagged:#?}"
    );
}

#[tokio::test]
async fn tls_mismatches_say_which_scheme_to_use() {
    let w = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, cert, key, client_cert, client_key] = pki(dir.path());
    let config = format!(
        "{}\n[tls]\ncert = {cert:?}\nkey = {key:?}\n",
        standard_config(&w.registry.host)
    );
    let tls = TestServer::start(&config);
    let plain = &w.server;

    let to_tls =
        finish(prodgate().args(["get", "1", "--server", &format!("http://{}", tls.addr)])).code(4);
    assert!(
        to_tls.stderr.ends_with(&format!(
            "the server at {0} speaks TLS: use https://{0} (with --ca-cert CA.pem unless its \
             certificate is from a public CA)\n",
            tls.addr
        )),
        "{to_tls:#?}"
    );
    let https = format!("https://{}", plain.addr);
    let to_plain =
        finish(prodgate().args(["health", "--server", &https, "--ca-cert", &ca])).code(4);
    assert!(
        to_plain.stderr.ends_with(&format!(
            "the server at {0} speaks plain HTTP/2, not TLS: use http://{0}\n",
            plain.addr
        )),
        "{to_plain:#?}"
    );
    let untrusted =
        finish(prodgate().args(["health", "--server", &format!("https://{}", tls.addr)])).code(4);
    assert!(
        untrusted.stderr.ends_with(
            "the server's certificate is not from a CA this machine trusts: give the CA that \
             issued it with --ca-cert PATH\n"
        ),
        "{untrusted:#?}"
    );
    // With the right CA and scheme it just works.
    let https_tls = format!("https://{}", tls.addr);
    let ok = finish(prodgate().args(["health", "--server", &https_tls, "--ca-cert", &ca])).ok();
    assert_eq!(ok.stdout, "SERVING\n");
    // A client certificate from another CA.
    let other = tempfile::tempdir().expect("tempdir");
    let [_, _, _, stranger_cert, stranger_key] = pki(other.path());
    let config = format!(
        "{}\n[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\n",
        standard_config(&w.registry.host)
    );
    let mtls = TestServer::start(&config);
    let stranger = finish(
        prodgate()
            .args(["health", "--server", &format!("https://{}", mtls.addr)])
            .args([
                "--ca-cert",
                &ca,
                "--cert",
                &stranger_cert,
                "--key",
                &stranger_key,
            ]),
    )
    .code(4);
    assert!(
        stranger.stderr.ends_with(
            "the server refused the client certificate (--cert): is it issued by the server's \
             client_ca?\n"
        ),
        "{stranger:#?}"
    );
    let trusted = finish(
        prodgate()
            .args(["health", "--server", &format!("https://{}", mtls.addr)])
            .args([
                "--ca-cert",
                &ca,
                "--cert",
                &client_cert,
                "--key",
                &client_key,
            ]),
    )
    .ok();
    assert_eq!(trusted.stdout, "SERVING\n");
}

#[tokio::test]
async fn wait_survives_a_server_restart_and_prints_the_final_state() {
    let w = World::start().await;
    let World {
        registry,
        mut server,
    } = w;
    let digest = registry.push_image("app", Some("staging"), 1024, 7).await;
    let repo = format!("{}/app", registry.host);

    let mut job = Waiter::start(as_user(&server, "alice", &{
        let mut a = request_args(&repo, "production");
        a.push("--wait");
        a
    }));
    let (seen, id) = job.until_id();
    watching(&server, 1).await;
    server.kill_and_restart_in_place();
    table(
        &server,
        "bob",
        &["approve", &id, "--comment", "after the restart"],
    )
    .ok();

    let out = job.finish(seen).ok();
    assert!(
        out.stdout.ends_with(&format!(
            "promotion {id}: PROMOTED (approvals 1/1): {repo}:production is {repo}@{digest}\n"
        )),
        "{out:#?}"
    );
    assert!(
        out.stderr
            .starts_with(&format!("prodgate: lost the watch of promotion {id} (")),
        "{out:#?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
}

/// Returns once `n` WatchPromotion calls have started. The server logs
/// `watch opened` (within the call's span, which names the method) once a
/// stream is open: once a watch is in the log, a restart interrupts it.
async fn watching(server: &TestServer, n: usize) {
    let started = std::time::Instant::now();
    while server
        .log()
        .lines()
        .filter(|l| l.contains("PromotionService/WatchPromotion") && l.contains("watch opened"))
        .count()
        < n
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{n} watches never started: {}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `request --wait --token-file PATH` as a CI job runs it.
fn with_token_file(server: &TestServer, path: &std::path::Path, args: &[&str]) -> Command {
    let mut c = prodgate();
    c.arg("--server")
        .arg(url(server))
        .arg("--token-file")
        .arg(path)
        .args(args);
    c
}

/// A wait that cannot go on once the promotion exists (its token refused
/// when it watches again after a restart, its token file emptied) exits 8,
/// not 3 ("refused, recorded nothing"), and names the promotion and how to
/// look it up; with -o json, stdout keeps the promotion it printed.
#[tokio::test]
async fn a_wait_whose_token_goes_bad_exits_8_naming_the_promotion() {
    let World {
        registry,
        mut server,
    } = World::start().await;
    registry.push_image("app", Some("staging"), 1024, 11).await;
    let repo = format!("{}/app", registry.host);
    let dir = tempfile::tempdir().expect("temp dir");

    let mut jobs = Vec::new();
    for (env, file, output) in [
        ("production", "garbage", "json"),
        ("prod2", "empty", "table"),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, format!("{}\n", token("alice"))).expect("write the token file");
        let mut args = request_args(&repo, env);
        // The limit only keeps a broken build from hanging the test.
        args.extend(["--wait", "--timeout", "60s", "-o", output]);
        let mut job = Waiter::start(with_token_file(&server, &path, &args));
        let (seen, id) = job.until_id();
        jobs.push((job, seen, id, path));
    }
    watching(&server, 2).await;
    std::fs::write(&jobs[0].3, "not-a-token\n").expect("rewrite the token file");
    std::fs::write(&jobs[1].3, "").expect("empty the token file");
    server.kill_and_restart_in_place();

    let mut outs = Vec::new();
    for (job, seen, id, path) in jobs {
        let out = job.finish(seen).code(8);
        assert!(
            out.stderr
                .starts_with(&format!("prodgate: lost the watch of promotion {id} (")),
            "{out:#?}"
        );
        let last = out.stderr.lines().last().unwrap_or_default().to_owned();
        assert!(
            last.starts_with(&format!(
                "prodgate: promotion {id} exists, but following it failed: "
            )) && last.ends_with(&format!(
                "; `prodgate get {id}` shows where it stands (`prodgate get {id} --wait` \
                 follows it again)"
            )),
            "{out:#?}"
        );
        outs.push((out, last, id, path));
    }
    let [(garbage, why, id, path), (empty, why2, id2, path2)] = &outs[..] else {
        unreachable!("two jobs")
    };
    // The server refused the token: its answer, and where the token came from.
    assert!(
        why.contains("refused (UNAUTHENTICATED): ")
            && why.contains(&format!(
                "the token came from --token-file {}: check that it holds your token",
                path.display()
            )),
        "{garbage:#?}"
    );
    let first = garbage.one();
    assert_eq!(id_of(&first), *id);
    assert_eq!(first["state"], "PROMOTION_STATE_PENDING_APPROVAL");
    // The file was empty: nothing was sent.
    assert!(
        why2.contains(&format!(
            "following it failed: the token from --token-file {} is empty; ",
            path2.display()
        )),
        "{empty:#?}"
    );
    assert!(
        empty
            .stdout
            .lines()
            .any(|l| l.strip_prefix("id:").map(str::trim) == Some(id2.as_str())),
        "{empty:#?}"
    );

    // Both go on on the server, as the message says.
    for id in [id, id2] {
        let got = json(&server, "bob", &["get", id]).ok().one();
        assert_eq!(got["state"], "PROMOTION_STATE_PENDING_APPROVAL");
    }
}

/// A token rotated while a wait runs: the server restarts knowing only the
/// new one, the job has written it to its --token-file, and the wait goes
/// on to PROMOTED with it.
#[tokio::test]
async fn a_wait_reads_its_token_file_again_when_it_watches_again() {
    let World {
        registry,
        mut server,
    } = World::start().await;
    let digest = registry.push_image("app", Some("staging"), 1024, 12).await;
    let repo = format!("{}/app", registry.host);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("token");
    std::fs::write(&path, token("alice")).expect("write the token file");

    let mut args = request_args(&repo, "production");
    args.extend(["--wait", "--timeout", "60s"]);
    let mut job = Waiter::start(with_token_file(&server, &path, &args));
    let (seen, id) = job.until_id();
    watching(&server, 1).await;
    let rotated = "alice-rotated-token";
    server.write_config(&standard_config(&registry.host).replace(
        &sha256_hex(token("alice").as_bytes()),
        &sha256_hex(rotated.as_bytes()),
    ));
    std::fs::write(&path, rotated).expect("rewrite the token file");
    server.kill_and_restart_in_place();
    // The token the job started with is no good any more.
    table(&server, "alice", &["get", &id]).code(3);
    table(&server, "bob", &["approve", &id, "--comment", "lgtm"]).ok();

    let out = job.finish(seen).ok();
    assert!(
        out.stdout.ends_with(&format!(
            "promotion {id}: PROMOTED (approvals 1/1): {repo}:production is {repo}@{digest}\n"
        )),
        "{out:#?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
}

#[tokio::test]
async fn wait_timeout_exits_6_with_the_state_it_left_behind() {
    let w = World::start().await;
    let World { registry, server } = w;
    registry.push_image("app", Some("staging"), 1024, 8).await;
    let repo = format!("{}/app", registry.host);

    // Nobody approves within the timeout.
    let mut args = request_args(&repo, "production");
    args.extend(["--wait", "--timeout", "1s", "-o", "json"]);
    let out = finish(&mut as_user(&server, "alice", &args)).code(6);
    let first = out.one();
    let id = id_of(&first);
    assert_eq!(
        out.stderr,
        format!(
            "prodgate: gave up waiting after 1s: promotion {id} is still PENDING_APPROVAL \
             (approvals 0/1); it goes on without this command (`prodgate get {id}` shows where \
             it stands)\n"
        )
    );
    // It does go on.
    let got = json(&server, "bob", &["get", &id]).ok().one();
    assert_eq!(got["state"], "PROMOTION_STATE_PENDING_APPROVAL");

    // A server that goes away and stays away: watched again until
    // --timeout. prod2 needs two approvals, so bob's leaves it pending.
    let p2 = id_of(
        &json(&server, "alice", &request_args(&repo, "prod2"))
            .ok()
            .one(),
    );
    let mut job = Waiter::start(as_user(
        &server,
        "bob",
        &["approve", &p2, "--wait", "--timeout", "3s"],
    ));
    let first = job.line();
    drop(server);
    let out = job.finish(first).code(6);
    assert!(
        out.stdout.contains("state:        PENDING_APPROVAL\n"),
        "{out:#?}"
    );
    assert!(
        out.stderr
            .starts_with(&format!("prodgate: lost the watch of promotion {p2} (")),
        "{out:#?}"
    );
    assert!(
        out.stderr.ends_with(&format!(
            "prodgate: gave up waiting after 3s: promotion {p2} is still PENDING_APPROVAL \
             (approvals 1/2); it goes on without this command (`prodgate get {p2}` shows where \
             it stands)\n"
        )),
        "{out:#?}"
    );
}

/// What a hostile registry puts in its error bodies: a clear-screen escape
/// sequence, a right-to-left override and a line that would pass for a log
/// line of its own.
const HOSTILE: &str = "\u{1b}[2J\u{202e}gnp.exe\nINFO forged: all good";

/// The same, as it must appear in human output: every character visible.
const HOSTILE_SHOWN: &str = r"\u{1b}[2J\u{202e}gnp.exe\nINFO forged: all good";

/// A registry Distribution cannot be made to be: it serves one image under
/// `team/app:dev` (and by digest) and answers every manifest PUT with
/// `put_status` and [`HOSTILE`] as the body. Stops when dropped.
struct HostileRegistry {
    host: String,
    digest: String,
    task: tokio::task::JoinHandle<()>,
}

impl HostileRegistry {
    async fn start(put_status: u16) -> HostileRegistry {
        use http_body_util::Full;
        use hyper::body::Bytes;
        use sha2::{Digest, Sha256};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", "c".repeat(64)),
                "size": 2
            },
            "layers": []
        })
        .to_string();
        let digest = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(manifest.as_bytes()))
        );
        let served = digest.clone();
        let answer = move |req: hyper::Request<hyper::body::Incoming>| {
            let path = req.uri().path().to_owned();
            let mut res = hyper::Response::builder();
            let body = match (req.method().as_str(), path.as_str()) {
                ("GET", "/v2/") => res.status(200).body("{}".to_owned()),
                ("HEAD" | "GET", p)
                    if p == "/v2/team/app/manifests/dev"
                        || p == format!("/v2/team/app/manifests/{served}") =>
                {
                    res = res
                        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                        .header("Docker-Content-Digest", served.as_str());
                    res.status(200).body(manifest.clone())
                }
                ("PUT", _) => res.status(put_status).body(HOSTILE.to_owned()),
                _ => res.status(404).body(String::new()),
            };
            let body = body.unwrap_or_default().map(|b| Full::new(Bytes::from(b)));
            async move { Ok::<_, std::convert::Infallible>(body) }
        };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper::service::service_fn(answer),
                        )
                        .await;
                });
            }
        });
        HostileRegistry { host, digest, task }
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// Multi-threaded: the hostile registry answers on a worker thread while
// this one blocks on the CLI subprocess.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn control_and_bidi_characters_are_shown_escaped_and_json_stays_exact() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 9).await;
    let s = &w.server;

    // A reason is free text a requester types.
    let reason = "release 1.4\u{1b}[2J\u{202e}txt.exe";
    let repo = w.repo("app");
    let mut args = request_args(&repo, "production");
    args[7] = reason;
    let requested = json(s, "alice", &args).ok().one();
    assert_eq!(requested["reason"], reason, "JSON keeps the exact text");
    let id = id_of(&requested);
    let raw = |text: &str| text.contains('\u{1b}') || text.contains('\u{202e}');
    let got = table(s, "bob", &["get", &id]).ok();
    assert!(!raw(&got.stdout), "{got:#?}");
    assert_eq!(
        field(&got, "reason"),
        r"release 1.4\u{1b}[2J\u{202e}txt.exe"
    );
    let history = table(s, "bob", &["history", "--promotion", &id]).ok();
    assert!(!raw(&history.stdout), "{history:#?}");
    assert!(
        history
            .stdout
            .contains(r"release 1.4\u{1b}[2J\u{202e}txt.exe"),
        "{history:#?}"
    );
    let list = table(s, "bob", &["list"]).ok();
    assert!(!raw(&list.stdout), "{list:#?}");

    // A registry's error body ends up in the failure message, the CLI's
    // error line and the server's log.
    let hostile = HostileRegistry::start(400).await;
    let server = TestServer::start(&standard_config(&hostile.host));
    let repo = format!("{}/team/app", hostile.host);
    let mut job = as_user(&server, "alice", &["request", &repo, "--source", "dev"]);
    job.args(["--env", "staging", "--reason", "try", "--wait"]);
    let failed = finish(&mut job).code(5);
    assert!(!raw(&failed.stdout) && !raw(&failed.stderr), "{failed:#?}");
    assert_eq!(failed.stderr.lines().count(), 1, "{failed:#?}");
    assert!(
        failed.stderr.ends_with(&format!(
            "answered unexpectedly: HTTP 400: {HOSTILE_SHOWN}\n"
        )),
        "{failed:#?}"
    );
    let id = failed
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("an id line")
        .trim()
        .to_owned();
    let got = table(&server, "alice", &["get", &id]).ok();
    assert_eq!(field(&got, "state"), "FAILED");
    assert_eq!(field(&got, "digest"), format!("{repo}@{}", hostile.digest));
    assert!(
        field(&got, "failure").ends_with(&format!("HTTP 400: {HOSTILE_SHOWN}")),
        "{got:#?}"
    );
    let exact = json(&server, "alice", &["get", &id]).ok().one();
    assert!(
        exact["failureMessage"]
            .as_str()
            .is_some_and(|m| m.ends_with(HOSTILE)),
        "{exact}"
    );
    // The server's text log: the body is on the line that reports it,
    // escaped; no line of its own, no escape sequence.
    let log = server.log();
    assert!(!raw(&log), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("tag move failed for good"))
        .unwrap_or_else(|| panic!("no apply failure in\n{log}"));
    assert!(line.contains(HOSTILE_SHOWN), "{line}");
    assert!(!log.lines().any(|l| l.starts_with("INFO forged")), "{log}");
}

#[tokio::test]
async fn json_logs_print_addresses_as_addresses() {
    let registry = support::registry::TestRegistry::start().await;
    let config = format!(
        "log_format = \"json\"\nmetrics_listen = \"127.0.0.1:0\"\n{}",
        standard_config(&registry.host)
    );
    let server = TestServer::start(&config);
    // Health answers once the server serves, which it logs before.
    finish(prodgate().args(["health", "--server", &url(&server)])).ok();
    let lines: Vec<Value> = server
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let addr_of = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .map(|l| l["addr"].clone())
            .unwrap_or_else(|| panic!("no {message:?} in {lines:#?}"))
    };
    assert_eq!(addr_of("listening"), Value::from(server.addr.as_str()));
    // The port the system chose, as an address that serves /metrics.
    let metrics = addr_of("serving metrics at /metrics");
    let metrics: std::net::SocketAddr = metrics
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {metrics}"));
    assert!(
        metrics.ip().is_loopback() && metrics.port() != 0,
        "{metrics}"
    );
    let scraped = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("scrape");
    assert!(scraped.status().is_success());
}

#[tokio::test]
async fn list_mine_and_newest_first() {
    let w = World::start().await;
    w.registry
        .push_image("app", Some("staging"), 1024, 10)
        .await;
    let repo = w.repo("app");
    let s = &w.server;
    let p1 = id_of(
        &json(s, "alice", &request_args(&repo, "production"))
            .ok()
            .one(),
    );
    let p2 = id_of(&json(s, "alice", &request_args(&repo, "prod2")).ok().one());
    // prod2 needs two approvals: bob's leaves it pending, and off his list.
    json(s, "bob", &["approve", &p2]).ok();
    let p3 = id_of(&json(s, "rita", &request_args(&repo, "selfok")).ok().one());

    let ids = |who: &str, args: &[&str]| -> Vec<String> {
        json(s, who, args).ok().lines().iter().map(id_of).collect()
    };
    assert_eq!(ids("bob", &["list", "--mine"]), [p1.as_str(), p3.as_str()]);
    // selfok lets rita approve her own request.
    assert_eq!(
        ids("rita", &["list", "--mine"]),
        [p1.as_str(), p2.as_str(), p3.as_str()]
    );
    // carol approves production and prod2 but is no release manager.
    assert_eq!(
        ids("carol", &["list", "--mine"]),
        [p1.as_str(), p2.as_str()]
    );
    assert!(ids("alice", &["list", "--mine"]).is_empty());
    let mine = table(s, "bob", &["list", "--mine"]).ok();
    assert_eq!(mine.stdout.lines().count(), 3, "{mine:#?}");
    // No gate but the approvals holds any of them, so none is WAITING.
    assert!(ids("alice", &["list", "--state", "waiting"]).is_empty());
    assert!(ids("alice", &["list", "--state", "WAITING"]).is_empty());
    // prod2 still lacks an approval: `gates` reports it and exits 7.
    let gates = table(s, "alice", &["gates", &p2]).code(7);
    assert!(gates.stdout.contains("BLOCK approvals"), "{gates:#?}");
    assert_eq!(
        gates.stderr,
        format!("prodgate: promotion {p2} is blocked by approvals\n"),
        "{gates:#?}"
    );
    // The selfok promotion is also pending, so also blocked; the JSON
    // report is still printed.
    let report = json(s, "alice", &["gates", &p3]).code(7).one();
    assert_eq!(report["ready"], true, "{report}");

    assert_eq!(
        ids("alice", &["list", "--newest-first"]),
        [p3.as_str(), p2.as_str(), p1.as_str()]
    );
    assert_eq!(
        ids("alice", &["list", "--newest-first", "--limit", "2"]),
        [p3.as_str(), p2.as_str()]
    );
    assert_eq!(
        ids("alice", &["list", "--limit", "2"]),
        [p1.as_str(), p2.as_str()]
    );

    let sequences = |args: &[&str]| -> Vec<String> {
        json(s, "alice", args)
            .ok()
            .lines()
            .iter()
            .map(|e| e["sequence"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    // 1 is the start's POLICY_CHANGED entry.
    assert_eq!(sequences(&["history"]), ["1", "2", "3", "4", "5"]);
    assert_eq!(
        sequences(&["history", "--newest-first"]),
        ["5", "4", "3", "2", "1"]
    );
    assert_eq!(
        sequences(&["history", "--newest-first", "--limit", "1"]),
        ["5"]
    );
    let newest = table(s, "alice", &["history", "--newest-first"]).ok();
    let first_row = newest.stdout.lines().nth(1).unwrap_or_default();
    assert!(first_row.starts_with("5 "), "{newest:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_approved_promotion_shows_why_its_tag_has_not_moved() {
    let hostile = HostileRegistry::start(503).await;
    let server = TestServer::start(&standard_config(&hostile.host));
    let repo = format!("{}/team/app", hostile.host);
    // staging needs no approval: APPROVED at once, then the registry fails
    // every push with a 503 whose body is hostile.
    let mut args = vec!["request", repo.as_str(), "--source", "dev"];
    args.extend(["--env", "staging", "--reason", "try"]);
    let id = id_of(&json(&server, "alice", &args).ok().one());
    let started = std::time::Instant::now();
    let got = loop {
        let got = table(&server, "alice", &["get", &id]).ok();
        if got.stdout.contains("apply error:") {
            break got;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no apply error shown: {got:#?}\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(field(&got, "state"), "APPROVED");
    let shown = field(&got, "apply error");
    assert!(
        shown.contains(&format!("HTTP 503: {HOSTILE_SHOWN} (attempt ")),
        "{got:#?}"
    );
    assert!(shown.ends_with("; retrying)"), "{got:#?}");
    let exact = json(&server, "alice", &["get", &id]).ok().one();
    assert!(
        exact["lastApplyError"]
            .as_str()
            .is_some_and(|e| e.ends_with(HOSTILE)),
        "{exact}"
    );
    assert!(
        exact["applyAttempts"].as_u64().is_some_and(|n| n >= 1),
        "{exact}"
    );
}

#[tokio::test]
async fn a_superseded_promotion_says_by_which() {
    let w = World::start().await;
    let digest = w
        .registry
        .push_image("app", Some("staging"), 1024, 11)
        .await;
    let repo = w.repo("app");
    let s = &w.server;

    // A CI job waits on the older request; a newer one is approved first.
    let mut job = Waiter::start({
        let mut c = as_user(s, "alice", &request_args(&repo, "production"));
        c.arg("--wait");
        c
    });
    let mut seen = String::new();
    let older = loop {
        let line = job.line();
        seen.push_str(&line);
        if let Some(id) = line.strip_prefix("id:") {
            break id.trim().to_owned();
        }
    };
    let newer = id_of(
        &json(s, "alice", &request_args(&repo, "production"))
            .ok()
            .one(),
    );
    let approved = table(s, "bob", &["approve", &newer]).ok();
    assert_eq!(field(&approved, "state"), "PROMOTED");

    let out = job.finish(seen).code(5);
    assert!(
        out.stdout.contains(&format!(
            "promotion {older}: SUPERSEDED by promotion {newer} (approvals 0/1)\n"
        )),
        "{out:#?}"
    );
    assert_eq!(
        out.stderr,
        format!(
            "prodgate: promotion {older} ended SUPERSEDED by promotion {newer}, not PROMOTED\n"
        )
    );
    let got = table(s, "carol", &["get", &older]).ok();
    assert_eq!(field(&got, "state"), "SUPERSEDED");
    assert_eq!(field(&got, "superseded by"), newer);
    assert_eq!(field(&got, "digest"), format!("{repo}@{digest}"));
    // It can no longer expire, so no expiry is shown.
    assert!(!got.stdout.contains("expires"), "{got:#?}");
    let promoted = table(s, "carol", &["get", &newer]).ok();
    assert!(!promoted.stdout.contains("expires"), "{promoted:#?}");
    let exact = json(s, "carol", &["get", &older]).ok().one();
    assert_eq!(exact["state"], "PROMOTION_STATE_SUPERSEDED");
    assert_eq!(exact["supersededBy"], newer.as_str());
}

#[tokio::test]
async fn checks_and_policy_versions_from_the_command_line() {
    let registry = support::registry::TestRegistry::start().await;
    let digest = registry.push_image("app", Some("staging"), 1024, 1).await;
    let s = &TestServer::start(&format!(
        "check_reporters = [\"alice\"]\n{}",
        standard_config(&registry.host)
    ));
    let repo = format!("{}/app", registry.host);
    let report = |who: &str, status: &str| {
        json(
            s,
            who,
            &[
                "report-check",
                &repo,
                "--digest",
                &digest,
                "--check",
                "e2e",
                "--status",
                status,
                "--url",
                "https://ci.example/e2e/7",
            ],
        )
    };
    // A non-reporter is refused (exit 3, the status named).
    let refused = report("mallory", "passed").code(3);
    assert!(refused.stderr.contains("PERMISSION_DENIED"), "{refused:#?}");
    let reported = report("alice", "failed").ok().one();
    assert_eq!(reported["status"], "CHECK_STATUS_FAILED");
    assert_eq!(reported["reportedBy"], "alice");
    report("alice", "passed").ok();
    // The latest report per check counts.
    let listed = json(s, "bob", &["checks", &repo, "--digest", &digest])
        .ok()
        .lines();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "CHECK_STATUS_PASSED");
    assert_eq!(listed[0]["detailsUrl"], "https://ci.example/e2e/7");
    let text = table(s, "bob", &["checks", &repo, "--digest", &digest]).ok();
    assert!(
        text.stdout.contains("e2e") && text.stdout.contains("PASSED"),
        "{text:#?}"
    );

    // The running policy, and the same version by its digest.
    let running = json(s, "bob", &["policy"]).ok().one();
    let digest_of_policy = running["digest"].as_str().expect("digest").to_owned();
    let canonical = running["canonicalJson"].as_str().expect("canonical JSON");
    assert_eq!(
        digest_of_policy,
        format!("sha256:{}", sha256_hex(canonical.as_bytes()))
    );
    let again = json(s, "bob", &["policy", &digest_of_policy]).ok().one();
    assert_eq!(again, running);
    let shown = table(s, "bob", &["policy"]).ok();
    assert!(
        shown
            .stdout
            .starts_with(&format!("policy {digest_of_policy}\n")),
        "{shown:#?}"
    );
    // Readable per environment, not the JSON document.
    assert!(
        shown.stdout.contains("\nenvironment production\n"),
        "{shown:#?}"
    );
    assert!(
        shown.stdout.contains("  required_approvals: 1\n"),
        "{shown:#?}"
    );
    assert!(!shown.stdout.contains('{'), "{shown:#?}");
    let unknown = format!("sha256:{}", "0".repeat(64));
    let missing = table(s, "bob", &["policy", &unknown]).code(3);
    assert!(missing.stderr.contains("NOT_FOUND"), "{missing:#?}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `list --project NAME`: only the promotions of repositories that project
/// governs, page after page; an unknown name is refused with the known ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn list_filters_by_project() {
    let registry = support::registry::TestRegistry::start().await;
    let host = registry.host.clone();
    let config = format!(
        "{}\n[[project]]\nname = \"payments\"\nrepositories = [\"{host}/payments/*\"]\n\
         [[project]]\nname = \"web\"\nrepositories = [\"{host}/web/*\"]\n",
        standard_config(&host)
    );
    let server = TestServer::start(&config);
    for path in ["payments/api", "web/site", "tools/ci", "payments/ledger"] {
        registry.push_image(path, Some("staging"), 512, 1).await;
        let repo = format!("{host}/{path}");
        json(&server, "alice", &request_args(&repo, "staging")).ok();
    }
    let listed = json(&server, "alice", &["list", "--project", "payments"]).ok();
    let repos: Vec<String> = listed
        .lines()
        .iter()
        .map(|p| p["repository"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        repos,
        [
            format!("{host}/payments/api"),
            format!("{host}/payments/ledger")
        ],
        "{listed:#?}"
    );
    // With --limit 1 each page holds one: the walk goes past the others
    // without ending the listing early.
    let limited = json(
        &server,
        "alice",
        &[
            "list",
            "--project",
            "payments",
            "--limit",
            "1",
            "--newest-first",
        ],
    )
    .ok();
    assert_eq!(
        limited.one()["repository"],
        format!("{host}/payments/ledger")
    );
    let web = table(&server, "alice", &["list", "--project", "web"]).ok();
    assert!(web.stdout.contains("web/site"), "{web:#?}");
    assert!(!web.stdout.contains("payments/"), "{web:#?}");
    let unknown = table(&server, "alice", &["list", "--project", "nope"]).code(3);
    assert!(
        unknown.stderr.contains("INVALID_ARGUMENT") || unknown.stderr.contains("invalid"),
        "{unknown:#?}"
    );
    assert!(unknown.stderr.contains("payments, web"), "{unknown:#?}");
}

/// `policy diff OLD [NEW]` after a SIGHUP changed the policy: the key that
/// changed, in its environment, old → new.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn policy_diff_shows_what_a_reload_changed() {
    let config = standard_config("127.0.0.1:5000");
    let server = TestServer::start(&config);
    let before = json(&server, "bob", &["policy"]).ok().one();
    let old = before["digest"].as_str().expect("digest").to_owned();
    let production = "approvers = [\"group:release-managers\", \"carol\"]\nrequired_approvals = 1";
    assert!(config.contains(production));
    server.write_config(&config.replace(
        production,
        "approvers = [\"group:release-managers\", \"carol\"]\nrequired_approvals = 2",
    ));
    server.hangup();
    // The reload runs in the server process: poll until it took effect.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let new = loop {
        let now = json(&server, "bob", &["policy"]).ok().one();
        let digest = now["digest"].as_str().expect("digest").to_owned();
        if digest != old {
            break digest;
        }
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let diff = table(&server, "bob", &["policy", "diff", &old]).ok();
    assert!(
        diff.stdout.starts_with(&format!("policy {old} -> {new}\n")),
        "{diff:#?}"
    );
    assert!(
        diff.stdout
            .contains("environment production\n  required_approvals: 1 → 2\n"),
        "{diff:#?}"
    );
    assert!(!diff.stdout.contains("environment staging"), "{diff:#?}");
    let as_json = json(&server, "bob", &["policy", "diff", &old, &new])
        .ok()
        .one();
    // rollback_approvals follows required_approvals unless set: it changes
    // too, and nothing else does.
    let changes = as_json["changes"].as_array().expect("changes");
    let keys: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["section"].as_str().unwrap_or(""),
                c["key"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("environment production", "required_approvals"),
            ("environment production", "rollback_approvals")
        ],
        "{as_json}"
    );
    assert_eq!(
        (changes[0]["old"].as_u64(), changes[0]["new"].as_u64()),
        (Some(1), Some(2))
    );
    let same = table(&server, "bob", &["policy", "diff", &new, &new]).ok();
    assert!(same.stdout.ends_with("no change\n"), "{same:#?}");
}

#[tokio::test]
async fn gates_with_source_and_env_is_a_dry_run_that_records_nothing() {
    let w = World::start().await;
    w.registry
        .push_image("app", Some("staging"), 1024, 11)
        .await;
    w.registry.push_image("app", Some("dev"), 1024, 12).await;
    let repo = w.repo("app");
    let s = &w.server;
    let ask = |source| {
        [
            "gates",
            repo.as_str(),
            "--source",
            source,
            "--env",
            "production",
        ]
    };
    // Only the approval is missing: a request would be accepted.
    let allowed = table(s, "alice", &ask("staging")).ok();
    assert!(allowed.stdout.contains("pass  requester"), "{allowed:#?}");
    assert!(allowed.stdout.contains("BLOCK approvals"), "{allowed:#?}");
    let report = json(s, "alice", &ask("staging")).ok().one();
    assert!(
        report["policyDigest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{report}"
    );
    // dev's image never reached staging: exit 7, naming the gate.
    let blocked = table(s, "alice", &ask("dev")).code(7);
    assert_eq!(
        blocked.stderr,
        format!("prodgate: a request of {repo}:dev to production is blocked by prerequisite\n"),
        "{blocked:#?}"
    );
    assert!(
        json(s, "alice", &["list"]).ok().lines().is_empty(),
        "a dry run records nothing"
    );
    // Half a dry run is a usage error.
    table(s, "alice", &["gates", &repo, "--source", "staging"]).code(2);
}
