//! The data directory from the outside: `verify-log --data-dir` never passes
//! on a directory that holds no prodgate store and creates nothing in it, and
//! a store a running server holds is named as such, for `verify-log` and for
//! a second `serve`. Real binary, real server, real sled files.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::server::{TestServer, standard_config, token};

/// A finished run of the binary.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn prodgate(args: &[&str], dir: Option<&Path>) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prodgate"));
    c.env_remove("PRODGATE_SERVER")
        .env_remove("PRODGATE_TOKEN")
        .env_remove("PRODGATE_CONFIG")
        .args(args);
    if let Some(d) = dir {
        c.arg(d);
    }
    let o = c.output().expect("run prodgate");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn verify_offline(dir: &Path) -> Out {
    prodgate(&["verify-log", "--data-dir"], Some(dir))
}

/// Every file under `dir` with its bytes (directories as `/`-suffixed names).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let rel = path.strip_prefix(dir).expect("under dir").to_owned();
            if path.is_dir() {
                files.insert(rel.join(""), Vec::new());
                todo.push(path);
            } else {
                files.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    files
}

#[track_caller]
fn assert_no_store(out: &Out, dir: &Path, why: &str) {
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(
        out.stderr.trim_end(),
        format!("prodgate: no prodgate store at {}: {why}", dir.display()),
        "{out:#?}"
    );
    assert_eq!(out.stdout, "", "{out:#?}");
}

#[test]
fn verify_log_refuses_a_directory_without_a_store_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");

    let missing = tmp.path().join("missing");
    assert_no_store(&verify_offline(&missing), &missing, "it does not exist");
    assert!(
        !missing.exists(),
        "verify-log created {}",
        missing.display()
    );

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert_no_store(&verify_offline(&empty), &empty, "it is empty");
    assert!(
        snapshot(&empty).is_empty(),
        "verify-log wrote into {empty:?}"
    );

    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("write");
    assert_no_store(&verify_offline(&file), &file, "it is not a directory");

    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("sub")).expect("mkdir");
    std::fs::write(other.join("notes.txt"), "hello").expect("write");
    std::fs::write(other.join("sub/db"), "not sled").expect("write");
    let before = snapshot(&other);
    assert_no_store(
        &verify_offline(&other),
        &other,
        "it holds no sled database (sled's `conf` and `db` files)",
    );
    assert_eq!(snapshot(&other), before, "verify-log changed {other:?}");
}

#[test]
fn verify_log_refuses_another_programs_sled_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("users-db");
    {
        let db = sled::open(&dir).expect("create a sled db");
        db.open_tree("users")
            .expect("tree")
            .insert("alice", "admin")
            .expect("insert");
        db.flush().expect("flush");
    }
    let before = snapshot(&dir);
    assert_no_store(
        &verify_offline(&dir),
        &dir,
        "it holds a sled database, but not one prodgate wrote (no `refusal-horizon` file)",
    );
    assert_eq!(snapshot(&dir), before, "verify-log changed {dir:?}");

    // With that file faked, sled opens it (and may rewrite its own
    // bookkeeping), but no tree appears and the other data is intact.
    std::fs::write(dir.join("refusal-horizon"), [0u8; 8]).expect("write");
    assert_no_store(
        &verify_offline(&dir),
        &dir,
        "it is a sled database without prodgate's audit log",
    );
    let db = sled::open(&dir).expect("reopen");
    let trees: Vec<String> = db
        .tree_names()
        .iter()
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    assert_eq!(trees, ["__sled__default", "users"], "{trees:?}");
    assert_eq!(
        db.open_tree("users")
            .expect("tree")
            .get("alice")
            .expect("get")
            .as_deref(),
        Some(&b"admin"[..])
    );
}

#[tokio::test]
async fn a_running_servers_store_is_named_as_locked() {
    if support::server::skip_on_postgres("the lock on a sled data directory") {
        return;
    }
    // No registry is needed: nothing here reaches one.
    let mut server = TestServer::start(&standard_config("127.0.0.1:9"));
    let data = server.data_dir();

    let offline = verify_offline(&data);
    assert_eq!(offline.code, Some(1), "{offline:#?}");
    assert_eq!(
        offline.stderr.trim_end(),
        format!(
            "prodgate: the prodgate store at {} is locked by another process, a running \
             prodgate server (or another verify-log --data-dir); stop it to check the files, \
             or meanwhile run `prodgate verify-log` without --data-dir against the server, \
             which runs the same check (VerifyAuditLog)",
            data.display()
        ),
        "{offline:#?}"
    );

    // What the sentence suggests works meanwhile.
    let url = format!("http://{}", server.addr);
    let online = prodgate(
        &["--server", &url, "--token", &token("alice"), "verify-log"],
        None,
    );
    assert_eq!(online.code, Some(0), "{online:#?}");
    assert!(online.stdout.starts_with("ok: "), "{online:#?}");

    // A second server on the same store: a sentence, a failure, and no
    // address announced before it.
    let second = prodgate(
        &[
            "serve",
            "--config",
            server
                .dir()
                .join("prodgate.toml")
                .to_str()
                .expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ],
        Some(&data),
    );
    assert_eq!(second.code, Some(1), "{second:#?}");
    assert_eq!(second.stdout, "", "{second:#?}");
    assert!(!second.stderr.contains("listening"), "{second:#?}");
    assert!(
        second.stderr.contains(&format!(
            "{} is in use by another running prodgate, which holds its lock; stop that server, \
             or give this one another data_dir",
            data.display()
        )),
        "{second:#?}"
    );
    assert!(!second.stderr.contains("Os {"), "{second:#?}");

    assert_eq!(server.terminate(), Some(0), "{}", server.log());
    let after = verify_offline(&data);
    assert_eq!(after.code, Some(0), "{after:#?}");
}

#[test]
fn keygen_attest_writes_a_key_pair_that_check_config_takes_and_never_overwrites() {
    let top = tempfile::tempdir().expect("temp dir");
    // A directory that does not exist yet is made.
    let dir = top.path().join("keys");
    let keys = dir.to_str().expect("utf-8 path");
    let made = prodgate(&["keygen", "--attest", "--out", keys], None);
    assert_eq!(made.code, Some(0), "{made:?}");
    let private = dir.join("attest.key");
    let public = std::fs::read_to_string(dir.join("attest.pub")).expect("attest.pub");
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    let pem = std::fs::read_to_string(&private).expect("attest.key");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(
        !made.stdout.contains("BEGIN PRIVATE KEY"),
        "the key is not printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never over a key that exists.
    let again = prodgate(&["keygen", "--attest", "--out", keys], None);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert_eq!(std::fs::read_to_string(&private).unwrap(), pem);
    // Neither a name nor --attest: a usage error.
    assert_eq!(prodgate(&["keygen", "--out", keys], None).code, Some(2));

    // check-config takes the key.
    let config = dir.join("prodgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[registry]]\nhost = \"reg.test\"\n[[environment]]\nname = \"staging\"\ntag = \"staging\"\n\
             required_approvals = 0\n[attest]\nkey_file = {:?}\nverifier_id = \"https://prodgate.acme.test\"\n",
            private.display().to_string()
        ),
    )
    .unwrap();
    let checked = prodgate(&["check-config", config.to_str().unwrap()], None);
    assert_eq!(checked.code, Some(0), "{checked:?}");
}
