//! `prodgate check-config` and `serve` on configs as operators write them:
//! every shipped config checks as shipped, policies no promotion can pass
//! are refused by both, and Docker credential helpers (`credsStore`,
//! `credHelpers`) are run, with a failing one named. Fake helpers are tiny
//! shell scripts put first on the child's PATH.

mod support;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::registry::TestRegistry;
use support::request_to;
use support::server::{TestServer, principals_toml};

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// The binary with a Docker config dir of `docker_dir` (so nothing from this
/// machine leaks in) and extra environment.
fn prodgate(args: &[&str], docker_dir: &Path, env: &[(&str, OsString)]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .env_remove("PRODGATE_SERVER")
        .env_remove("PRODGATE_TOKEN")
        .env_remove("PRODGATE_CONFIG")
        .env("DOCKER_CONFIG", docker_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .expect("run prodgate");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn deploy_configs(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            deploy_configs(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml")
            // A release for `prodgate release --from-file`, not a config
            // (tests/deploy.rs checks it).
            && path.file_name().is_some_and(|n| n != "release.example.toml")
        {
            found.push(path);
        }
    }
}

#[test]
fn every_shipped_config_passes_check_config_as_shipped() {
    let empty = tempfile::tempdir().expect("tempdir");
    let mut configs = Vec::new();
    deploy_configs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
        &mut configs,
    );
    configs.sort();
    assert!(configs.len() >= 2, "{configs:?}");
    for config in &configs {
        let out = prodgate(&["check-config", path_str(config)], empty.path(), &[]);
        assert_eq!(out.code, Some(0), "{}: {out:#?}", config.display());
        assert!(out.stdout.starts_with("ok: "), "{out:#?}");
    }

    // The Kubernetes config names a password file that only exists in the
    // pod: a warning here, an error with --strict (as for serve).
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/prodgate.toml");
    let out = prodgate(&["check-config", path_str(&k8s)], empty.path(), &[]);
    assert_eq!(
        out.stderr,
        "prodgate: warning: registry[0].password_file: /run/secrets/prodgate/registry-password \
         does not exist on this machine; `prodgate serve` will need it\n",
        "{out:#?}"
    );
    let strict = prodgate(
        &["check-config", "--strict", path_str(&k8s)],
        empty.path(),
        &[],
    );
    assert_eq!(strict.code, Some(1), "{strict:#?}");
    assert!(
        strict
            .stderr
            .starts_with("prodgate: registry[0].password_file: cannot read /run/secrets/"),
        "{strict:#?}"
    );
}

/// The test principals (see `support::server::PRINCIPALS`) and one
/// environment with `policy` lines.
fn config_with_policy(policy: &str) -> String {
    format!(
        "[[registry]]\nhost = \"127.0.0.1:9\"\ninsecure = true\n{}\n\
         [[environment]]\nname = \"production\"\ntag = \"production\"\n{policy}\n",
        principals_toml()
    )
}

#[test]
fn policies_that_can_never_pass_are_refused_by_check_config_and_serve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("prodgate.toml");
    let data = tmp.path().join("data");
    for (policy, error) in [
        (
            "approvers = [\"bob\", \"zoe\"]\nrequired_approvals = 1",
            "environment[0].approvers: \"zoe\" is not a configured principal",
        ),
        (
            "approvers = [\"group:qa\"]\nrequired_approvals = 1",
            "environment[0].approvers: \"group:qa\" has no members: no [[principal]] lists \"qa\" in groups",
        ),
        (
            // carol, and bob in release-managers: two people, named three ways.
            "approvers = [\"carol\", \"bob\", \"group:developers\"]\nrequired_approvals = 5",
            "environment[0].required_approvals: 5 approvals can never be given: only 4 \
             principal(s) can approve (\"alice\", \"bob\", \"carol\", \"rita\")",
        ),
    ] {
        std::fs::write(&file, config_with_policy(policy)).expect("write config");
        let check = prodgate(&["check-config", path_str(&file)], tmp.path(), &[]);
        assert_eq!(check.code, Some(1), "{check:#?}");
        assert_eq!(check.stderr, format!("prodgate: {error}\n"), "{check:#?}");
        let serve = prodgate(
            &[
                "serve",
                "--config",
                path_str(&file),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                path_str(&data),
            ],
            tmp.path(),
            &[],
        );
        assert_eq!(serve.code, Some(1), "{serve:#?}");
        assert!(serve.stderr.contains(error), "{serve:#?}");
        assert!(!data.exists(), "serve created its store before refusing");
    }

    // Blocking only some requesters is a warning: carol alone cannot get
    // her own request approved.
    std::fs::write(
        &file,
        config_with_policy("approvers = [\"carol\"]\nrequired_approvals = 1"),
    )
    .expect("write config");
    let check = prodgate(&["check-config", path_str(&file)], tmp.path(), &[]);
    assert_eq!(check.code, Some(0), "{check:#?}");
    assert_eq!(
        check.stderr,
        "prodgate: warning: environment[0].required_approvals: a promotion requested by \
         \"carol\" can never be approved: self-approval is off, and the other approvers can \
         give only 0 of the 1 approval(s) needed\n"
    );
}

#[test]
fn every_projects_effective_policy_is_checked_by_check_config_and_serve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("prodgate.toml");
    let data = tmp.path().join("data");
    let project = |lines: &str| {
        format!(
            "{}required_approvals = 1\napprovers = [\"carol\", \"bob\"]\n\
             [[project]]\nname = \"payments\"\nrepositories = [\"127.0.0.1:9/payments/*\"]\n{lines}",
            config_with_policy("")
        )
    };
    for (lines, error) in [
        (
            // Inherits carol and bob as approvers, but wants three.
            "[[project.environment]]\nname = \"production\"\nrequired_approvals = 3\n",
            "project[0].environment[0].required_approvals: 3 approvals can never be given: \
             only 2 principal(s) can approve (\"bob\", \"carol\")",
        ),
        (
            "requesters = [\"group:payments-dev\"]\n",
            "project[0].requesters: \"group:payments-dev\" has no members: no [[principal]] \
             lists \"payments-dev\" in groups",
        ),
    ] {
        std::fs::write(&file, project(lines)).expect("write config");
        let check = prodgate(&["check-config", path_str(&file)], tmp.path(), &[]);
        assert_eq!(check.code, Some(1), "{check:#?}");
        assert_eq!(check.stderr, format!("prodgate: {error}\n"), "{check:#?}");
        let serve = prodgate(
            &[
                "serve",
                "--config",
                path_str(&file),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                path_str(&data),
            ],
            tmp.path(),
            &[],
        );
        assert_eq!(serve.code, Some(1), "{serve:#?}");
        assert!(serve.stderr.contains(error), "{serve:#?}");
        assert!(!data.exists(), "serve created its store before refusing");
    }
    std::fs::write(
        &file,
        project(
            "[[project.environment]]\nname = \"production\"\napprovers = [\"group:developers\"]\n",
        ),
    )
    .expect("write config");
    let check = prodgate(&["check-config", path_str(&file)], tmp.path(), &[]);
    assert_eq!(check.code, Some(0), "{check:#?}");
    assert_eq!(check.stderr, "", "{check:#?}");
}

#[test]
fn signature_keys_are_read_at_load_an_absent_one_warned_about_by_check_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("prodgate.toml");
    let data = tmp.path().join("data");
    let absent = tmp.path().join("absent.pub");
    let not_a_key = tmp.path().join("notes.txt");
    std::fs::write(&not_a_key, "hello").expect("write");
    let serve = |file: &Path| {
        prodgate(
            &[
                "serve",
                "--config",
                path_str(file),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                path_str(&data),
            ],
            tmp.path(),
            &[],
        )
    };
    let policy = |key: &Path| {
        config_with_policy(&format!(
            "approvers = [\"bob\", \"carol\"]\nrequired_approvals = 1\nsignature_keys = [{:?}]",
            path_str(key)
        ))
    };

    std::fs::write(&file, policy(&absent)).expect("write config");
    let check = prodgate(&["check-config", path_str(&file)], tmp.path(), &[]);
    assert_eq!(check.code, Some(0), "{check:#?}");
    assert_eq!(
        check.stderr,
        format!(
            "prodgate: warning: environment[0].signature_keys[0]: {} does not exist on this \
             machine; `prodgate serve` will need it\n",
            absent.display()
        ),
        "{check:#?}"
    );
    let refused = serve(&file);
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(
        refused.stderr.contains(&format!(
            "environment[0].signature_keys[0]: cannot read {}",
            absent.display()
        )),
        "{refused:#?}"
    );

    std::fs::write(&file, policy(&not_a_key)).expect("write config");
    let check = prodgate(&["check-config", path_str(&file)], tmp.path(), &[]);
    assert_eq!(check.code, Some(1), "{check:#?}");
    assert!(
        check.stderr.starts_with(&format!(
            "prodgate: environment[0].signature_keys[0]: {} is not a PEM public key",
            not_a_key.display()
        )),
        "{check:#?}"
    );
    assert!(!data.exists(), "serve created its store before refusing");
}

/// A fake `docker-credential-<name>` in `bin` that appends what it was asked
/// (its stdin, the registry host) to `asked` and then runs `body`.
fn fake_helper(bin: &Path, name: &str, asked: &Path, body: &str) {
    let path = bin.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nhost=$(cat)\nprintf '%s %s\\n' \"$1\" \"$host\" >> '{}'\n{body}\n",
            asked.display()
        ),
    )
    .expect("write the helper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `PATH` with `bin` first.
fn path_with(bin: &Path) -> OsString {
    let mut dirs = vec![bin.to_owned()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("join PATH")
}

#[test]
fn credential_helpers_run_for_strict_checks_and_a_failing_one_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let asked = tmp.path().join("asked");
    fake_helper(
        &bin,
        "good",
        &asked,
        r#"printf '{"Username":"ci","Secret":"from-the-helper"}'"#,
    );
    fake_helper(
        &bin,
        "locked",
        &asked,
        "echo 'keychain is locked' >&2\nexit 1",
    );
    fake_helper(
        &bin,
        "empty",
        &asked,
        "echo 'credentials not found in native keychain'\nexit 1",
    );
    let env = [("PATH", path_with(&bin))];
    let docker = tmp.path().join("docker.json");
    let config = tmp.path().join("prodgate.toml");
    std::fs::write(
        &config,
        format!(
            "docker_config = {:?}\n{}",
            path_str(&docker),
            config_with_policy("required_approvals = 0")
        ),
    )
    .expect("write config");
    let check = |args: &[&str]| {
        let mut all = vec!["check-config"];
        all.extend_from_slice(args);
        all.push(path_str(&config));
        prodgate(&all, tmp.path(), &env)
    };
    let asked_hosts = || std::fs::read_to_string(&asked).unwrap_or_default();

    // credHelpers for the host wins over credsStore.
    std::fs::write(
        &docker,
        r#"{"credsStore": "locked", "credHelpers": {"127.0.0.1:9": "good"}}"#,
    )
    .expect("write docker config");
    // Without --strict no helper runs: a check must not reach a keychain.
    let out = check(&[]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(asked_hosts(), "");
    let out = check(&["--strict"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(asked_hosts(), "get 127.0.0.1:9\n");
    assert!(!out.stderr.contains("from-the-helper"), "{out:#?}");

    // credsStore for every other host; a failure names the helper.
    std::fs::write(&docker, r#"{"credsStore": "locked"}"#).expect("write docker config");
    let out = check(&["--strict"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(
        out.stderr,
        format!(
            "prodgate: docker_config: docker-credential-locked (from {}) failed for \
             127.0.0.1:9: keychain is locked\n",
            docker.display()
        )
    );

    // A helper that holds nothing for the host: anonymous, as for docker.
    std::fs::write(&docker, r#"{"credsStore": "empty"}"#).expect("write docker config");
    let out = check(&["--strict"]);
    assert_eq!(out.code, Some(0), "{out:#?}");

    // A helper that is not installed.
    std::fs::write(&docker, r#"{"credsStore": "absent"}"#).expect("write docker config");
    let out = check(&["--strict"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(
        out.stderr,
        format!(
            "prodgate: docker_config: cannot run docker-credential-absent (from {}) for \
             127.0.0.1:9: is it installed and on PATH?\n",
            docker.display()
        )
    );
}

#[tokio::test]
async fn serve_authenticates_to_the_registry_with_a_credential_helpers_answer() {
    let password = "helper-registry-pass";
    let registry = TestRegistry::start_with_basic_auth("ci", password).await;
    let digest = registry.push_image("app", Some("staging"), 1024, 1).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let asked = tmp.path().join("asked");
    fake_helper(
        &bin,
        "test",
        &asked,
        &format!(r#"printf '{{"Username":"ci","Secret":"{password}"}}'"#),
    );
    let docker = tmp.path().join("docker.json");
    std::fs::write(
        &docker,
        format!(
            r#"{{"auths": {{}}, "credHelpers": {{"{}": "test"}}}}"#,
            registry.host
        ),
    )
    .expect("write docker config");
    let server = TestServer::start_with_env(
        &format!(
            "docker_config = {:?}\n{}",
            path_str(&docker),
            support::server::standard_config(&registry.host)
        ),
        &[("PATH", path_with(&bin))],
    );
    let p = server
        .client("alice")
        .await
        .request_promotion(request_to(
            &format!("{}/app", registry.host),
            "staging",
            "production",
        ))
        .await
        .expect("request through the helper's credentials")
        .into_inner();
    assert_eq!(p.digest, digest);
    assert_eq!(
        std::fs::read_to_string(&asked).unwrap_or_default(),
        format!("get {}\n", registry.host)
    );
    assert!(!server.log().contains(password), "the password was logged");
}

/// `prodgate check-config [--strict] FILE` on `config` written to `file`.
fn check_config(file: &Path, config: &str, strict: bool) -> Out {
    std::fs::write(file, config).expect("write config");
    let mut args = vec!["check-config"];
    if strict {
        args.push("--strict");
    }
    args.push(path_str(file));
    let dir = file.parent().expect("the config's directory");
    prodgate(&args, dir, &[])
}

/// The test principals, one environment with `policy` lines, and
/// `identity` (an `[[identity]]` section with its rules).
fn config_with_identity(identity: &str, policy: &str) -> String {
    format!("{}\n{identity}\n", config_with_policy(policy))
}

const IDENTITY: &str = r#"
[[identity]]
issuer = "https://idp.test"
audience = "prodgate"
jwks_url = "https://idp.test/keys"
"#;

#[test]
fn identities_are_checked_and_counted_by_check_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("prodgate.toml");
    let check = |config: &str, strict: bool| check_config(&file, config, strict);
    let rule = "[[identity.rule]]\nprincipal = \"sso:{email}\"\n";
    let policy = "approvers = [\"bob\"]\nrequired_approvals = 1\nallow_self_approval = true";
    for (identity, error) in [
        (
            IDENTITY.replace("https://idp.test/keys", "http://idp.test/keys") + rule,
            "identity[0].jwks_url: \"http://idp.test/keys\": keys that decide who is who come \
             over HTTPS; plain HTTP only to a loopback address like 127.0.0.1",
        ),
        (
            format!("{IDENTITY}algorithms = [\"RS256\", \"HS256\"]\n{rule}"),
            "identity[0].algorithms[1]: \"HS256\": HMAC needs a shared secret; with a public \
             JWKS anyone could sign",
        ),
        (
            format!("{IDENTITY}algorithms = [\"none\"]\n{rule}"),
            "identity[0].algorithms[0]: \"none\": an unsigned token proves nothing",
        ),
        (
            IDENTITY.to_owned(),
            "identity[0].rule: no [[identity.rule]]: a token maps to a principal only through a rule",
        ),
        (
            format!("{IDENTITY}[[identity.rule]]\nprincipal = \"ci:{{repository\"\n"),
            "identity[0].rule[0].principal: \"ci:{repository\": `{` without a matching `}`",
        ),
        (
            format!("{IDENTITY}[[identity.rule]]\nprincipal = \"prodgate\"\n"),
            "identity[0].rule[0].principal: \"prodgate\" is reserved for the service itself",
        ),
        (
            format!("{IDENTITY}{rule}{IDENTITY}{rule}"),
            "identity[1].issuer: \"https://idp.test\" is listed twice: one [[identity]] per \
             issuer, with several rules",
        ),
        (
            format!("{IDENTITY}max_lifetime = \"0s\"\n{rule}"),
            "identity[0].max_lifetime: must be greater than zero",
        ),
    ] {
        let out = check(&config_with_identity(&identity, policy), false);
        assert_eq!(out.code, Some(1), "{out:#?}");
        assert_eq!(out.stderr, format!("prodgate: {error}\n"), "{out:#?}");
    }
    // Unknown keys are refused by name.
    let out = check(
        &config_with_identity(
            &format!("{IDENTITY}{rule}claim = {{ a = \"b\" }}\n"),
            policy,
        ),
        false,
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("unknown field `claim`"), "{out:#?}");

    // Groups a rule gives count: a fixed group is certain, and a templated
    // principal stands for any number of people.
    let fixed = format!(
        "{IDENTITY}[[identity.rule]]\nclaims = {{ team = \"rm\" }}\nprincipal = \"sso:{{email}}\"\ngroups = [\"sso-rm\"]\n"
    );
    let out = check(
        &config_with_identity(
            &fixed,
            "approvers = [\"group:sso-rm\"]\nrequired_approvals = 3",
        ),
        false,
    );
    assert_eq!((out.code, out.stderr.as_str()), (Some(0), ""), "{out:#?}");
    // A literal principal is one person.
    let one = fixed.replace("sso:{email}", "deployer");
    let out = check(
        &config_with_identity(
            &one,
            "approvers = [\"group:sso-rm\"]\nrequired_approvals = 2",
        ),
        false,
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(
        out.stderr,
        "prodgate: environment[0].required_approvals: 2 approvals can never be given: only 1 \
         principal(s) can approve (\"deployer\")\n"
    );
    // Groups only a token's groups_claim could bring: a warning.
    let claimed = format!(
        "{IDENTITY}[[identity.rule]]\nprincipal = \"sso:{{email}}\"\ngroups_claim = \"groups\"\n"
    );
    let out = check(
        &config_with_identity(
            &claimed,
            "approvers = [\"group:sso-rm\"]\nrequired_approvals = 2",
        ),
        false,
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.starts_with(
            "prodgate: warning: environment[0].approvers: \"group:sso-rm\" has no [[principal]] member; \
             only a token whose templated groups or groups_claim say \"sso-rm\" would be in it \
             (identity[0].rule[0])"
        ),
        "{out:#?}"
    );
    // A template that could name a [[principal]] is a warning.
    let bare = format!("{IDENTITY}[[identity.rule]]\nprincipal = \"{{sub}}\"\n");
    let out = check(&config_with_identity(&bare, policy), false);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr
            .contains("identity[0].rule[0].principal: \"{sub}\" could render as \"alice\""),
        "{out:#?}"
    );

    // A jwks_file absent here is a warning, an error with --strict; one
    // that exists must hold a usable key.
    let keys = tmp.path().join("jwks.json");
    let with_file = IDENTITY.replace(
        "jwks_url = \"https://idp.test/keys\"",
        &format!("jwks_file = {:?}", path_str(&keys)),
    ) + rule;
    let out = check(&config_with_identity(&with_file, policy), false);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("identity[0].jwks_file: "), "{out:#?}");
    let out = check(&config_with_identity(&with_file, policy), true);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .starts_with("prodgate: identity[0].jwks_file: cannot read "),
        "{out:#?}"
    );
    std::fs::write(&keys, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).expect("write keys");
    let out = check(&config_with_identity(&with_file, policy), true);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("holds no usable signing key"),
        "{out:#?}"
    );
}

#[test]
fn rules_of_two_issuers_that_render_one_principal_are_warned_about_and_refused_when_strict() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("prodgate.toml");
    let check = |config: &str, strict: bool| check_config(&file, config, strict);
    let second = |principal: &str| {
        format!(
            "{IDENTITY}[[identity.rule]]\nprincipal = \"sso:{{email}}\"\n\
             [[identity]]\nissuer = \"https://ci.test\"\naudience = \"prodgate\"\n\
             jwks_url = \"https://ci.test/keys\"\n[[identity.rule]]\nprincipal = \"{principal}\"\n"
        )
    };
    let policy = "approvers = [\"bob\"]\nrequired_approvals = 1";
    let clash = config_with_identity(&second("sso:{sub}"), policy);
    let out = check(&clash, false);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr
            .contains("warning: identity[1].rule[0].principal")
            && out.stderr.contains("identity[0].rule[0]")
            && out.stderr.contains("https://ci.test"),
        "{out:#?}"
    );
    let strict = check(&clash, true);
    assert_eq!(strict.code, Some(1), "{strict:#?}");
    assert!(strict.stderr.contains("refused by --strict"), "{strict:#?}");
    // A prefix of its own keeps them apart.
    let apart = check(&config_with_identity(&second("ci:{sub}"), policy), true);
    assert_eq!(apart.code, Some(0), "{apart:#?}");
    assert!(
        !apart.stderr.contains("render the same principal"),
        "{apart:#?}"
    );
}
