//! Registries as they are run (issue 11): a real `prodgate serve` promoting
//! through Debian's `docker-registry` with Distribution's token auth, with
//! TLS from a private CA, with a Docker credential helper, and with a
//! password that rotates while prodgate runs.

mod support;

use prodgate::pb::PromotionState;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::hostile::TestCa;
use support::registry::{Options, TestRegistry};
use support::server::{Client, TestServer, registry_toml, standard_config};
use support::token_server::TokenServer;
use support::{request_to, wait_for_state};
use tempfile::TempDir;
use tonic::Code;

const USER: &str = "ci";
const REPO: &str = "team/app";
const PROMOTED_WITHIN: Duration = Duration::from_secs(15);

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The standard test config with `registry` as its `[[registry]]` section
/// and an empty Docker config, so nothing of this machine's leaks in.
struct Config {
    /// Holds the Docker config.
    _dir: TempDir,
    text: String,
}

impl Config {
    fn new(host: &str, registry: &str) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let docker = dir.path().join("docker.json");
        std::fs::write(&docker, "{}").expect("write an empty Docker config");
        Config::with_docker_config(dir, &docker, host, registry)
    }

    fn with_docker_config(dir: TempDir, docker: &Path, host: &str, registry: &str) -> Config {
        let text = format!(
            "docker_config = {:?}\n{}",
            path_str(docker),
            standard_config(host).replace(&registry_toml(host), registry)
        );
        Config { _dir: dir, text }
    }
}

/// A secret file holding `text` in `dir`.
fn secret(dir: &TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("password");
    std::fs::write(&p, text).expect("write a secret");
    p
}

/// `[[registry]]` for `host` with [`USER`] and a `password_file`.
fn with_password_file(host: &str, insecure: bool, password_file: &Path, extra: &str) -> String {
    format!(
        "[[registry]]\nhost = \"{host}\"\ninsecure = {insecure}\nusername = \"{USER}\"\n\
         password_file = {:?}\n{extra}",
        path_str(password_file)
    )
}

/// Requests `source` of [`REPO`] to `staging` (no approvals) and waits until
/// it is promoted; returns the digest.
async fn promote(alice: &mut Client, registry: &TestRegistry, source: &str) -> String {
    let repo = format!("{}/{REPO}", registry.host);
    let p = alice
        .request_promotion(request_to(&repo, source, "staging"))
        .await
        .unwrap_or_else(|e| panic!("request {source}: {e:?}"))
        .into_inner();
    let done = wait_for_state(alice, &p.id, PromotionState::Promoted, PROMOTED_WITHIN).await;
    assert_eq!(
        registry.tag_digest(REPO, "staging").await.as_deref(),
        Some(done.digest.as_str())
    );
    done.digest
}

/// Token auth end to end: prodgate asks the token service the registry
/// names for a pull-scoped token to resolve and a push-scoped one to move
/// the tag, sends its Basic credentials only there, and reuses each token
/// until shortly before it expires: two promotions, two token requests.
#[tokio::test]
async fn token_auth_uses_scoped_tokens_and_caches_them() {
    let tokens = TokenServer::start(USER, "token-pass", 300).await;
    let registry = TestRegistry::start_with(Options {
        token: Some(&tokens),
        ..Options::default()
    })
    .await;
    registry.push_image(REPO, Some("v1"), 1024, 1).await;
    registry.push_image(REPO, Some("v2"), 1024, 2).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let password = secret(&secrets, "token-pass\n");
    let config = Config::new(
        &registry.host,
        &with_password_file(&registry.host, true, &password, ""),
    );
    let server = TestServer::start(&config.text);
    let mut alice = server.client("alice").await;

    promote(&mut alice, &registry, "v1").await;
    let pull = format!("repository:{REPO}:pull");
    let push = format!("repository:{REPO}:pull,push");
    assert_eq!(tokens.scopes(), [pull.clone(), push.clone()]);
    for r in tokens.requests() {
        assert_eq!(r.account.as_deref(), Some(USER), "{r:?}");
        assert_eq!(
            r.service.as_deref(),
            Some(support::token_server::SERVICE),
            "{r:?}"
        );
    }

    promote(&mut alice, &registry, "v2").await;
    assert_eq!(
        tokens.scopes(),
        [pull, push],
        "the second promotion reuses both tokens"
    );
}

/// A token is renewed shortly before its `expires_in`, before the registry
/// would refuse it: after the lifetime has passed, the next promotion asks
/// for both scopes again, and the registry never sees an expired token.
#[tokio::test]
async fn tokens_are_renewed_before_they_expire() {
    const LIFETIME: u64 = 2;
    let tokens = TokenServer::start(USER, "token-pass", LIFETIME).await;
    let registry = TestRegistry::start_with(Options {
        token: Some(&tokens),
        ..Options::default()
    })
    .await;
    registry.push_image(REPO, Some("v1"), 1024, 1).await;
    registry.push_image(REPO, Some("v2"), 1024, 2).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let password = secret(&secrets, "token-pass\n");
    let config = Config::new(
        &registry.host,
        &with_password_file(&registry.host, true, &password, ""),
    );
    let server = TestServer::start(&config.text);
    let mut alice = server.client("alice").await;

    promote(&mut alice, &registry, "v1").await;
    assert_eq!(tokens.requests().len(), 2, "{:?}", tokens.scopes());
    // The registry logs each request it refused for want of a token: the
    // first promotion's first request of each scope met one.
    let refused_before = registry
        .log()
        .matches("authorization token required")
        .count();
    assert!(refused_before > 0, "registry log:\n{}", registry.log());
    // Time passing is what is under test, not readiness.
    tokio::time::sleep(Duration::from_secs(LIFETIME) + Duration::from_millis(200)).await;
    promote(&mut alice, &registry, "v2").await;
    let pull = format!("repository:{REPO}:pull");
    let push = format!("repository:{REPO}:pull,push");
    assert_eq!(
        tokens.scopes(),
        [pull.clone(), push.clone(), pull, push],
        "both tokens renewed once"
    );
    assert_eq!(
        registry
            .log()
            .matches("authorization token required")
            .count(),
        refused_before,
        "renewed before asking, not after a refusal; registry log:\n{}",
        registry.log()
    );
}

/// Wrong credentials at the token service: the request fails with a
/// message naming the registry, and no token is issued.
#[tokio::test]
async fn a_token_service_that_refuses_the_credentials_is_reported() {
    let tokens = TokenServer::start(USER, "token-pass", 300).await;
    let registry = TestRegistry::start_with(Options {
        token: Some(&tokens),
        ..Options::default()
    })
    .await;
    registry.push_image(REPO, Some("v1"), 1024, 1).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let password = secret(&secrets, "wrong\n");
    let config = Config::new(
        &registry.host,
        &with_password_file(&registry.host, true, &password, ""),
    );
    let server = TestServer::start(&config.text);
    let mut alice = server.client("alice").await;
    let repo = format!("{}/{REPO}", registry.host);
    let e = alice
        .request_promotion(request_to(&repo, "v1", "staging"))
        .await
        .expect_err("refused credentials");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("refused prodgate's credentials"),
        "{}",
        e.message()
    );
    assert!(e.message().contains(&registry.host), "{}", e.message());
    assert!(!e.message().contains("wrong"), "{}", e.message());
    assert!(tokens.requests().iter().all(|r| r.account.is_none()));
}

/// `ca_cert` trusts a private CA for one registry: a registry serving TLS
/// with a certificate from a CA the test made is reached with it, and
/// without it the request fails with an error that says what to do.
#[tokio::test]
async fn ca_cert_trusts_a_private_ca_for_its_registry() {
    let ca = TestCa::new();
    let registry = TestRegistry::start_with(Options {
        tls: Some(&ca),
        ..Options::default()
    })
    .await;
    registry.push_image(REPO, Some("v1"), 1024, 1).await;
    let host = &registry.host;

    let trusting = Config::new(
        host,
        &format!(
            "[[registry]]\nhost = \"{host}\"\nca_cert = {:?}\n",
            path_str(&ca.ca_file)
        ),
    );
    let server = TestServer::start(&trusting.text);
    let mut alice = server.client("alice").await;
    promote(&mut alice, &registry, "v1").await;
    drop(alice);
    drop(server);

    let untrusting = Config::new(host, &format!("[[registry]]\nhost = \"{host}\"\n"));
    let server = TestServer::start(&untrusting.text);
    let mut alice = server.client("alice").await;
    let e = alice
        .request_promotion(request_to(&format!("{host}/{REPO}"), "v1", "staging"))
        .await
        .expect_err("an untrusted certificate");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for part in [host.as_str(), "TLS certificate is not trusted", "ca_cert"] {
        assert!(e.message().contains(part), "{part}: {}", e.message());
    }
}

/// What a registry such as Harbor looks like: HTTPS from an internal CA and
/// a token service on another port, also HTTPS from that CA. `ca_cert`
/// covers both, and the HTTPS realm gets the credentials.
#[tokio::test]
async fn token_auth_over_tls_from_a_private_ca() {
    let ca = TestCa::new();
    let tokens = TokenServer::start_tls(&ca, USER, "token-pass", 300).await;
    let registry = TestRegistry::start_with(Options {
        token: Some(&tokens),
        tls: Some(&ca),
        ..Options::default()
    })
    .await;
    registry.push_image(REPO, Some("v1"), 1024, 1).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let password = secret(&secrets, "token-pass\n");
    let ca_line = format!("ca_cert = {:?}\n", path_str(&ca.ca_file));
    let config = Config::new(
        &registry.host,
        &with_password_file(&registry.host, false, &password, &ca_line),
    );
    let server = TestServer::start(&config.text);
    let mut alice = server.client("alice").await;
    promote(&mut alice, &registry, "v1").await;
    assert_eq!(tokens.requests().len(), 2, "{:?}", tokens.scopes());
    assert!(
        tokens
            .requests()
            .iter()
            .all(|r| r.account.as_deref() == Some(USER))
    );
}

/// Writes `text` to `link`'s target the way Kubernetes updates a mounted
/// secret: a new file, then an atomic rename of a symlink over the old one.
fn swap_secret(dir: &Path, link: &Path, text: &str, version: u32) {
    let target = dir.join(format!("..data-{version}"));
    std::fs::write(&target, text).expect("write the new secret");
    let tmp = dir.join("..tmp-link");
    std::os::unix::fs::symlink(&target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("swap the symlink");
}

/// Kubernetes secret rotation: the registry's password changes and the
/// mounted `password_file` with it; the next promotion works without a
/// restart. Then a rewrite that keeps the file's length and mtime (nothing
/// to notice on disk): the registry's 401 makes prodgate read it again.
#[tokio::test]
async fn a_rotated_password_file_is_read_again_without_a_restart() {
    let mut registry = TestRegistry::start_with_basic_auth(USER, "first-pass").await;
    registry.push_image(REPO, Some("v1"), 1024, 1).await;
    registry.push_image(REPO, Some("v2"), 1024, 2).await;
    registry.push_image(REPO, Some("v3"), 1024, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path();
    let password = secrets.join("password");
    swap_secret(secrets, &password, "first-pass\n", 1);
    let config = Config::new(
        &registry.host,
        &with_password_file(&registry.host, true, &password, ""),
    );
    let server = TestServer::start(&config.text);
    let pid = server.pid();
    let mut alice = server.client("alice").await;
    promote(&mut alice, &registry, "v1").await;

    registry.set_basic_password(USER, "second-pass").await;
    swap_secret(secrets, &password, "second-pass\n", 2);
    promote(&mut alice, &registry, "v2").await;

    // Same length, same mtime, same inode: only the refusal tells.
    registry.set_basic_password(USER, "thirdd-pass").await;
    let file = secrets.join("..data-2");
    let mtime = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::write(&file, "thirdd-pass\n").expect("rewrite in place");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore the mtime");
    promote(&mut alice, &registry, "v3").await;
    assert_eq!(server.pid(), pid, "no restart");
    // The passwords themselves: the log may name a `password_file` (the
    // PostgreSQL backend's, in its storage line).
    let log = server.log();
    for secret in ["first-pass", "second-pass", "thirdd-pass"] {
        assert!(!log.contains(secret), "a password in the log");
    }
}

/// A Docker credential helper (how ECR, GCR and ACR are used): prodgate runs
/// `docker-credential-<name> get` from `credHelpers` at start-up, uses its
/// answer, and runs it again when the registry refuses what it gave (a
/// short-lived password that ran out) rather than only at the next restart.
#[tokio::test]
async fn a_credential_helper_supplies_and_renews_the_password() {
    let mut registry = TestRegistry::start_with_basic_auth(USER, "helper-pass-1").await;
    registry.push_image(REPO, Some("v1"), 1024, 1).await;
    registry.push_image(REPO, Some("v2"), 1024, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "helper-pass-1").expect("write the helper's secret");
    let runs = dir.path().join("runs");
    let helper = bin.join("docker-credential-prodgatetest");
    // The protocol: the server URL on stdin, JSON on stdout.
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nhost=$(cat)\necho \"$host\" >> '{runs}'\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"%s\"}}' \
             \"$host\" \"$(cat '{secret}')\"\n",
            runs = path_str(&runs),
            secret = path_str(&secret),
        ),
    )
    .expect("write the helper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the helper");
    }
    let docker = dir.path().join("config.json");
    std::fs::write(
        &docker,
        format!(
            r#"{{"credHelpers": {{"{}": "prodgatetest"}}}}"#,
            registry.host
        ),
    )
    .expect("write the Docker config");
    let host = registry.host.clone();
    let config = Config::with_docker_config(
        dir,
        &docker,
        &host,
        &format!("[[registry]]\nhost = \"{host}\"\ninsecure = true\n"),
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut with_helper = bin.clone().into_os_string();
    with_helper.push(":");
    with_helper.push(path);
    let server = TestServer::start_with_env(&config.text, &[("PATH", with_helper)]);
    let mut alice = server.client("alice").await;
    let ran = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    promote(&mut alice, &registry, "v1").await;
    assert_eq!(
        ran(),
        vec![host.clone()],
        "run once, at start-up, for the host"
    );

    registry.set_basic_password(USER, "helper-pass-2").await;
    std::fs::write(&secret, "helper-pass-2").expect("rotate the helper's secret");
    promote(&mut alice, &registry, "v2").await;
    assert_eq!(ran(), [host.clone(), host], "run again after the refusal");
}
