//! The README's Python orchestrator, run as it is written there against a
//! real `prodgate serve` and a real registry: the client generated from the
//! proto with grpcio-tools, the error details read with grpcio-status (the
//! Python environment `scripts/python-env` makes; `scripts/test` passes it
//! as PRODGATE_TEST_PYTHON).

mod support;

use prodgate::pb::{self, HistoryRequest, ListPromotionsRequest};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, standard_config, token};
use support::{approve, history};

/// The program in the README's ```python block after the marker comment.
fn readme_program() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let marker = "<!-- tests/orchestrator.rs runs the program below as it is written here. -->";
    let after = &readme[readme.find(marker).expect("the marker in README.md") + marker.len()..];
    let body = after
        .trim_start()
        .strip_prefix("```python\n")
        .expect("a ```python block right after the marker");
    body[..body.find("\n```").expect("the block's end") + 1].to_owned()
}

/// The program and its generated client in a fresh directory.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("promote.py"), readme_program()).expect("write promote.py");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let out = std::process::Command::new(support::python())
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", dir.path().display()))
        .arg(format!("--grpc_python_out={}", dir.path().display()))
        .arg(proto.join("prodgate/v1/promotion.proto"))
        .output()
        .expect("run grpc_tools.protoc");
    assert!(out.status.success(), "protoc: {out:?}");
    dir
}

/// Starts `promote.py` as `who` with `args`.
fn promote(dir: &Path, server: &TestServer, who: &str, args: &[&str]) -> Child {
    Command::new(support::python())
        .arg("promote.py")
        .args(args)
        .current_dir(dir)
        .env("PRODGATE_SERVER", &server.addr)
        .env("PRODGATE_TOKEN", token(who))
        .env("PYTHONPATH", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promote.py")
}

/// Its exit code, stdout and stderr, once it ends (killed after 60 s).
async fn finished(mut child: Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for promote.py") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("promote.py did not end within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = |r: Option<&mut dyn Read>| {
        let mut s = String::new();
        r.expect("piped")
            .read_to_string(&mut s)
            .expect("read output");
        s
    };
    let out = text(child.stdout.as_mut().map(|r| r as &mut dyn Read));
    let err = text(child.stderr.as_mut().map(|r| r as &mut dyn Read));
    (status.code().expect("an exit code"), out, err)
}

async fn promotions(c: &mut Client) -> Vec<pb::Promotion> {
    c.list_promotions(ListPromotionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .promotions
}

#[tokio::test]
async fn the_readme_orchestrator_requests_waits_and_retries_safely() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&standard_config(&registry.host));
    let dir = workspace();
    let repo = format!("{}/team/app", registry.host);
    let staged = registry
        .push_image("team/app", Some("staging"), 1024, 1)
        .await;
    let mut bob = server.client("bob").await;

    // It requests and waits; bob approves the promotion once it appears.
    let child = promote(
        dir.path(),
        &server,
        "alice",
        &[&repo, "staging", "production", "run-7", "release 1.4"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let opened = loop {
        if let Some(p) = promotions(&mut bob).await.pop() {
            break p;
        }
        assert!(Instant::now() < deadline, "promote.py opened no promotion");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(opened.request_id, "run-7");
    bob.approve(approve(&opened.id))
        .await
        .expect("bob approves");
    let (code, out, err) = finished(child).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("still to pass: approvals"), "{out}");
    assert!(
        out.contains(&format!(
            "promotion {}: PROMOTION_STATE_PROMOTED",
            opened.id
        )),
        "{out}"
    );

    // The pipeline re-runs: nothing new, and it says where the digest came from.
    let recorded = history(&mut bob, HistoryRequest::default()).await.len();
    let (code, out, err) = finished(promote(
        dir.path(),
        &server,
        "alice",
        &[&repo, "staging", "production", "run-7", "release 1.4"],
    ))
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("already carries it") && out.contains(&format!("promotion {}", opened.id)),
        "{out}"
    );
    assert_eq!(
        history(&mut bob, HistoryRequest::default()).await.len(),
        recorded
    );

    // Refusals, told apart by reason: a digest staging never carried (the
    // dry run's prerequisite gate), a source that does not exist
    // (SOURCE_NOT_FOUND), a token nobody issued (TOKEN_INVALID).
    let unstaged = registry.push_image("team/app", Some("dev"), 1024, 2).await;
    assert_ne!(unstaged, staged);
    let (code, _, err) = finished(promote(
        dir.path(),
        &server,
        "alice",
        &[&repo, "dev", "production", "run-8", "x"],
    ))
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("'prerequisite'"), "{err}");
    let (code, _, err) = finished(promote(
        dir.path(),
        &server,
        "alice",
        &[&repo, "nosuch", "production", "run-9", "x"],
    ))
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("refused: SOURCE_NOT_FOUND"), "{err}");
    let (code, _, err) = finished(promote(
        dir.path(),
        &server,
        "nobody",
        &[&repo, "dev", "production", "run-9", "x"],
    ))
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("refused: TOKEN_INVALID"), "{err}");
    assert_eq!(
        promotions(&mut bob).await.len(),
        1,
        "refusals record nothing"
    );
    assert_eq!(
        history(&mut bob, HistoryRequest::default()).await.len(),
        recorded
    );
}
