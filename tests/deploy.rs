//! The deploy kit under `deploy/` is checked against the binary it deploys:
//! every YAML document parses and has the expected shape, every config
//! passes `prodgate check-config`, every command line names a real
//! subcommand and real flags, and ports, paths and user ids agree across
//! the Dockerfile, the Kubernetes manifests, the systemd unit, the CI
//! workflow and the configs. No network, no Docker, no cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use yaml_rust2::{Yaml, YamlLoader};

/// Every file under `deploy/`, each checked by a test below. A new file
/// fails `every_deploy_file_is_checked_and_documented` until it is added
/// here with a check.
const DEPLOY_FILES: &[&str] = &[
    "Dockerfile",
    "Dockerfile.dockerignore",
    "README.md",
    "ci/promote-to-production.gitlab-ci.yml",
    "ci/promote-to-production.yml",
    "dev-attest.key",
    "dev-attest.pub",
    "dev-console.key",
    "kubernetes/admission/kyverno-clusterpolicy.yaml",
    "kubernetes/admission/policy-controller-clusterimagepolicy.yaml",
    "kubernetes/gateway.yaml",
    "kubernetes/headless-service.yaml",
    "kubernetes/kustomization.yaml",
    "kubernetes/postgres/cluster.yaml",
    "kubernetes/postgres/deployment.yaml",
    "kubernetes/postgres/headless-service.yaml",
    "kubernetes/postgres/kustomization.yaml",
    "kubernetes/postgres/pdb.yaml",
    "kubernetes/postgres/prodgate.toml",
    "kubernetes/postgres/service.yaml",
    "kubernetes/prodgate.toml",
    "kubernetes/secret.example.yaml",
    "kubernetes/service.yaml",
    "kubernetes/statefulset.yaml",
    "prodgate.example.toml",
    "prodgate.oidc.example.toml",
    "prodgate.projects.example.toml",
    "registry-dev.yml",
    "release.example.toml",
    "systemd/prodgate.service",
];

/// Where every deployment keeps the config and the data.
const CONFIG_PATH: &str = "/etc/prodgate/prodgate.toml";
const DATA_DIR: &str = "/var/lib/prodgate";
const GRPC_PORT: i64 = 50051;
const METRICS_PORT: i64 = 9090;
const UID: i64 = 10001;
/// Where the Dockerfile and the systemd unit install the binary, and where
/// the CI workflow copies it from the image.
const BIN_PATH: &str = "/usr/local/bin/prodgate";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------- running prodgate

/// Runs the binary with a Docker config dir that has no credentials, so
/// nothing from the developer's machine leaks into a config check.
fn prodgate(args: &[&str]) -> Output {
    let empty = tempfile::tempdir().expect("temp dir");
    Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(args)
        .env("DOCKER_CONFIG", empty.path())
        .env_remove("PRODGATE_CONFIG")
        .env_remove("PRODGATE_SERVER")
        .env_remove("PRODGATE_TOKEN")
        .output()
        .expect("run prodgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// True when `flag` appears in `help` as a whole flag: `--config` matches
/// `--config <CONFIG>` but not `--config-dir`, and `--conf` matches neither.
fn help_has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

/// Checks that `argv` (without the program name) starts with a real
/// subcommand, that every flag it uses is in that subcommand's help, and
/// that clap accepts the whole command line up to an appended `--help`
/// (which catches a flag given the wrong number of values).
fn assert_cli(origin: &str, argv: &[String]) {
    let (sub, rest) = argv
        .split_first()
        .unwrap_or_else(|| panic!("{origin}: empty command line"));
    assert!(
        !sub.starts_with('-'),
        "{origin}: expected a subcommand first, got {sub:?}"
    );
    let out = prodgate(&[sub, "--help"]);
    assert!(
        out.status.success(),
        "{origin}: `prodgate {sub}` is not a subcommand of this prodgate:\n{}",
        text(&out.stderr)
    );
    let help = text(&out.stdout);
    for arg in rest.iter().filter(|a| a.starts_with('-') && a.len() > 1) {
        let flag = arg.split('=').next().unwrap_or(arg);
        assert!(
            help_has_flag(&help, flag),
            "{origin}: `prodgate {sub}` has no flag {flag}; its help:\n{help}"
        );
    }
    let mut with_help: Vec<&str> = argv.iter().map(String::as_str).collect();
    with_help.push("--help");
    let out = prodgate(&with_help);
    assert!(
        out.status.success(),
        "{origin}: prodgate does not accept `prodgate {}`:\n{}",
        argv.join(" "),
        text(&out.stderr)
    );
}

/// The value after `flag` in `argv`.
fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

/// Runs `prodgate check-config` on `config`, written to a temp dir. Each
/// `registry[].password_file` is rewritten to a temp file that exists (the
/// deployed paths only exist in a pod or on a server).
fn check_config(origin: &str, config: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let table: toml::Table =
        toml::from_str(config).unwrap_or_else(|e| panic!("{origin}: not TOML: {e}"));
    let mut config = config.to_owned();
    let registries = table.get("registry").and_then(|r| r.as_array());
    for (i, registry) in registries.into_iter().flatten().enumerate() {
        if let Some(original) = registry.get("password_file").and_then(|p| p.as_str()) {
            let local = dir.path().join(format!("registry-{i}-password"));
            std::fs::write(&local, "test-password\n").expect("write the password file");
            let quoted = format!("\"{original}\"");
            assert_eq!(
                config.matches(&quoted).count(),
                1,
                "{origin}: registry[{i}].password_file {quoted} should appear once"
            );
            config = config.replace(&quoted, &format!("{:?}", local.display().to_string()));
        }
    }
    let file = dir.path().join("prodgate.toml");
    std::fs::write(&file, &config).expect("write the config");
    prodgate(&["check-config", file.to_str().expect("utf-8 temp path")])
}

fn assert_config_ok(origin: &str, config: &str) {
    let out = check_config(origin, config);
    assert!(
        out.status.success() && text(&out.stdout).starts_with("ok:"),
        "{origin}: prodgate check-config failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn toml_table(origin: &str, config: &str) -> toml::Table {
    toml::from_str(config).unwrap_or_else(|e| panic!("{origin}: not TOML: {e}"))
}

fn toml_str<'a>(table: &'a toml::Table, key: &str, origin: &str) -> &'a str {
    table
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{origin}: no string `{key}`"))
}

fn port_of(addr: &str) -> i64 {
    addr.parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr:?} is not an address: {e}"))
        .port()
        .into()
}

// ---------------------------------------------------------------- YAML

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("deploy/{rel}: not YAML: {e}"));
    assert!(!docs.is_empty(), "deploy/{rel}: no YAML document");
    for (i, d) in docs.iter().enumerate() {
        assert!(d.is_hash(), "deploy/{rel}: document {i} is not a mapping");
    }
    docs
}

fn yaml_doc(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "deploy/{rel}: expected one YAML document");
    docs.remove(0)
}

/// `y` at a dotted path (`spec.template.spec.containers.0`); panics naming
/// the path when a step is missing.
fn at<'a>(y: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = y;
    for step in path.split('.') {
        cur = match step.parse::<usize>() {
            Ok(i) if cur.is_array() => &cur[i],
            _ => &cur[step],
        };
        assert!(!cur.is_badvalue(), "no `{path}` (missing at `{step}`)");
    }
    cur
}

fn str_at<'a>(y: &'a Yaml, path: &str) -> &'a str {
    at(y, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string: {:?}", at(y, path)))
}

fn int_at(y: &Yaml, path: &str) -> i64 {
    at(y, path)
        .as_i64()
        .unwrap_or_else(|| panic!("`{path}` is not an integer: {:?}", at(y, path)))
}

fn bool_at(y: &Yaml, path: &str) -> bool {
    at(y, path)
        .as_bool()
        .unwrap_or_else(|| panic!("`{path}` is not a boolean: {:?}", at(y, path)))
}

fn vec_at<'a>(y: &'a Yaml, path: &str) -> &'a [Yaml] {
    at(y, path)
        .as_vec()
        .unwrap_or_else(|| panic!("`{path}` is not a list: {:?}", at(y, path)))
}

fn strings(list: &[Yaml]) -> Vec<String> {
    list.iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{s:?} is not a string"))
                .to_owned()
        })
        .collect()
}

/// The entry of a list of mappings whose `name` is `name`.
fn named<'a>(list: &'a [Yaml], name: &str) -> &'a Yaml {
    list.iter()
        .find(|x| x["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no entry named {name:?} in {list:?}"))
}

/// Every `key: value` of `subset` is in `of` (label selectors).
fn labels_subset(subset: &Yaml, of: &Yaml) -> bool {
    let (Some(subset), Some(of)) = (subset.as_hash(), of.as_hash()) else {
        return false;
    };
    !subset.is_empty() && subset.iter().all(|(k, v)| of.get(k) == Some(v))
}

// ---------------------------------------------------------------- the whole kit

#[test]
fn every_deploy_file_is_checked_and_documented() {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read deploy/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).expect("under deploy/");
                out.insert(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(&deploy_dir(), &deploy_dir(), &mut found);
    let listed: BTreeSet<String> = DEPLOY_FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        found, listed,
        "files under deploy/ and DEPLOY_FILES in tests/deploy.rs differ"
    );
    let readme = read("README.md");
    for f in DEPLOY_FILES.iter().filter(|f| **f != "README.md") {
        assert!(
            readme.contains(&format!("`{f}`")),
            "deploy/README.md does not mention `{f}`"
        );
    }
}

#[test]
fn every_yaml_file_parses_into_mappings() {
    let yaml: Vec<&str> = DEPLOY_FILES
        .iter()
        .copied()
        .filter(|f| f.ends_with(".yml") || f.ends_with(".yaml"))
        .collect();
    assert!(yaml.len() >= 6, "expected the YAML files, found {yaml:?}");
    for f in yaml {
        yaml_docs(f);
    }
}

// ---------------------------------------------------------------- configs

#[test]
fn example_config_passes_check_config_and_matches_the_dev_registry() {
    let config = read("prodgate.example.toml");
    assert_config_ok("deploy/prodgate.example.toml", &config);
    // README: `cargo run --release -- serve --config deploy/prodgate.example.toml`
    assert_cli(
        "README.md",
        &["serve", "--config", "deploy/prodgate.example.toml"].map(String::from),
    );

    let registry = yaml_doc("registry-dev.yml");
    let addr = str_at(&registry, "http.addr");
    let table = toml_table("deploy/prodgate.example.toml", &config);
    let first = &table["registry"].as_array().expect("[[registry]]")[0];
    assert_eq!(
        first["host"].as_str(),
        Some(addr),
        "the example config's registry is registry-dev.yml's http.addr"
    );
    assert_eq!(first["insecure"].as_bool(), Some(true));
    assert!(
        at(&registry, "storage.filesystem.rootdirectory")
            .as_str()
            .is_some()
    );
}

#[test]
fn projects_example_passes_check_config_without_warnings_on_the_dev_registry() {
    let config = read("prodgate.projects.example.toml");
    let out = check_config("deploy/prodgate.projects.example.toml", &config);
    assert!(
        out.status.success() && text(&out.stdout).starts_with("ok:"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "", "warnings");
    let registry = yaml_doc("registry-dev.yml");
    let table = toml_table("deploy/prodgate.projects.example.toml", &config);
    let first = &table["registry"].as_array().expect("[[registry]]")[0];
    assert_eq!(first["host"].as_str(), Some(str_at(&registry, "http.addr")));
    let projects = table["project"].as_array().expect("[[project]]");
    assert_eq!(projects.len(), 2, "the example shows two teams");
}

/// `deploy/prodgate.oidc.example.toml` as the README's "Try it locally"
/// uses it, from `dir`: check-config's stdout and stderr.
fn check_oidc_example_in(dir: &Path) -> (bool, String, String) {
    let empty = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(["check-config"])
        .arg(deploy_dir().join("prodgate.oidc.example.toml"))
        .current_dir(dir)
        .env("DOCKER_CONFIG", empty.path())
        .output()
        .expect("run prodgate check-config");
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn oidc_example_trusts_the_demo_issuer_and_passes_check_config() {
    let origin = "deploy/prodgate.oidc.example.toml";
    let config = read("prodgate.oidc.example.toml");
    let table = toml_table(origin, &config);
    assert_cli(
        "README.md",
        &["serve", "--config", "deploy/prodgate.oidc.example.toml"].map(String::from),
    );

    // Where the README starts it, before `scripts/demo-oidc init demo-oidc`:
    // only the JWKS file is missing, which check-config names.
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, stdout, stderr) = check_oidc_example_in(dir.path());
    assert!(
        ok && stdout.starts_with("ok:"),
        "{origin}: {stdout}{stderr}"
    );
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "prodgate: warning: identity[0].jwks_file: demo-oidc/jwks.json does not exist on this machine; `prodgate serve` will need it"
        ],
        "{origin}"
    );
    // After it: no warning, so the script's JWKS holds a key prodgate can use.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo-oidc");
    let init = Command::new(&script)
        .args(["init", "demo-oidc"])
        .current_dir(dir.path())
        .output()
        .expect("run scripts/demo-oidc");
    assert!(init.status.success(), "{}", text(&init.stderr));
    let (ok, stdout, stderr) = check_oidc_example_in(dir.path());
    assert!(
        ok && stdout.starts_with("ok:"),
        "{origin}: {stdout}{stderr}"
    );
    assert_eq!(stderr, "", "{origin}: warnings after init");

    // The issuer is the script's, and the rest is the laptop setup of
    // prodgate.example.toml.
    let identity = &table["identity"].as_array().expect("[[identity]]")[0];
    let script_text = std::fs::read_to_string(&script).expect("read scripts/demo-oidc");
    let issuer = identity["issuer"].as_str().expect("issuer");
    assert!(
        script_text.contains(&format!("ISSUER=\"{issuer}\"")),
        "scripts/demo-oidc does not mint tokens from {issuer}"
    );
    assert_eq!(identity["audience"].as_str(), Some("prodgate"));
    let registry = yaml_doc("registry-dev.yml");
    let first = &table["registry"].as_array().expect("[[registry]]")[0];
    assert_eq!(first["host"].as_str(), Some(str_at(&registry, "http.addr")));
    let base = toml_table(
        "deploy/prodgate.example.toml",
        &read("prodgate.example.toml"),
    );
    let essentials = |t: &toml::Table| -> Vec<Vec<Option<toml::Value>>> {
        t["environment"]
            .as_array()
            .expect("[[environment]]")
            .iter()
            .map(|e| {
                ["name", "tag", "requires", "approvers", "required_approvals"]
                    .iter()
                    .map(|k| e.get(*k).cloned())
                    .collect()
            })
            .collect()
    };
    assert_eq!(
        essentials(&table),
        essentials(&base),
        "{origin}: environments"
    );
    assert_ne!(
        toml_str(&table, "data_dir", origin),
        toml_str(&base, "data_dir", "deploy/prodgate.example.toml"),
        "its own data, so the README's promotion IDs start from 1"
    );
}

#[test]
fn the_checks_can_fail() {
    // The deployed password file does not exist here: prodgate must say so
    // (a warning, an error with --strict), which is why check_config
    // rewrites it.
    let k8s = read("kubernetes/prodgate.toml");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("prodgate.toml");
    std::fs::write(&file, &k8s).expect("write");
    let out = prodgate(&["check-config", "--strict", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("registry[0].password_file"),
        "{}",
        text(&out.stderr)
    );

    let out = check_config("bogus", &format!("bogus_key = 1\n{k8s}"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("bogus_key"));

    let help = text(&prodgate(&["serve", "--help"]).stdout);
    assert!(help_has_flag(&help, "--config"));
    assert!(!help_has_flag(&help, "--conf"));
    assert!(!help_has_flag(&help, "--no-such-flag"));
    assert!(!prodgate(&["no-such-subcommand", "--help"]).status.success());
}

// ---------------------------------------------------------------- Kubernetes

struct Kubernetes {
    config_text: String,
    config: toml::Table,
    statefulset: Yaml,
    service: Yaml,
    /// The Service without a virtual IP, for client-side balancing.
    headless: Yaml,
    secret: Yaml,
}

/// Files a kit's resources list: a headless Service (`clusterIP: None`)
/// goes to `headless`, any other Service to `service`; each at most once.
fn take_service(doc: Yaml, service: &mut Option<Yaml>, headless: &mut Option<Yaml>) {
    let slot = match &doc["spec"]["clusterIP"] {
        Yaml::String(ip) if ip == "None" => headless,
        _ => service,
    };
    let name = str_at(&doc, "metadata.name").to_owned();
    assert!(
        slot.replace(doc).is_none(),
        "two Services of the kind of {name}"
    );
}

/// A headless Service for gRPC clients that balance over the pods
/// themselves: no virtual IP, it selects exactly the pods `pod_labels`
/// labels, and it has the gRPC port, at the container's own port (clients
/// reach the pods directly; a headless Service maps no port).
fn assert_headless_grpc_service(headless: &Yaml, pod_labels: &Yaml, container_ports: &[Yaml]) {
    assert_eq!(str_at(headless, "metadata.name"), "prodgate-headless");
    assert_eq!(str_at(headless, "spec.clusterIP"), "None");
    assert!(
        labels_subset(at(headless, "spec.selector"), pod_labels),
        "the headless Service selects other pods"
    );
    assert!(
        !bool_or_false(headless, "spec.publishNotReadyAddresses"),
        "only ready pods belong in the DNS answer"
    );
    let ports = vec_at(headless, "spec.ports");
    assert_eq!(ports.len(), 1, "the gRPC port only");
    let grpc = named(ports, "grpc");
    assert_eq!(int_at(grpc, "port"), GRPC_PORT);
    assert_eq!(
        int_at(
            named(container_ports, str_at(grpc, "targetPort")),
            "containerPort"
        ),
        GRPC_PORT
    );
    assert_eq!(str_at(grpc, "appProtocol"), "kubernetes.io/h2c");
}

fn bool_or_false(y: &Yaml, path: &str) -> bool {
    let mut node = y;
    for key in path.split('.') {
        node = &node[key];
    }
    node.as_bool().unwrap_or(false)
}

fn kubernetes() -> Kubernetes {
    let k = yaml_doc("kubernetes/kustomization.yaml");
    assert_eq!(str_at(&k, "kind"), "Kustomization");
    let resources = strings(vec_at(&k, "resources"));
    assert!(
        !resources.iter().any(|r| r.contains("secret")),
        "the Secret template must not be applied by the kustomization: {resources:?}"
    );
    let mut statefulset = None;
    let mut service = None;
    let mut headless = None;
    for r in &resources {
        for doc in yaml_docs(&format!("kubernetes/{r}")) {
            match str_at(&doc, "kind") {
                "StatefulSet" => assert!(statefulset.replace(doc).is_none(), "two StatefulSets"),
                "Service" => take_service(doc, &mut service, &mut headless),
                // gateway.yaml, when an overlay or an edit enables it.
                "Gateway" | "GRPCRoute" => {}
                other => panic!("deploy/kubernetes/{r}: unexpected kind {other}"),
            }
        }
    }
    let generator = &vec_at(&k, "configMapGenerator")[0];
    assert_eq!(str_at(generator, "name"), "prodgate-config");
    assert_eq!(strings(vec_at(generator, "files")), ["prodgate.toml"]);

    let secret = yaml_doc("kubernetes/secret.example.yaml");
    assert_eq!(str_at(&secret, "kind"), "Secret");
    let config_text = read("kubernetes/prodgate.toml");
    Kubernetes {
        config: toml_table("deploy/kubernetes/prodgate.toml", &config_text),
        config_text,
        statefulset: statefulset.expect("a StatefulSet"),
        service: service.expect("a Service"),
        headless: headless.expect("a headless Service"),
        secret,
    }
}

#[test]
fn kubernetes_config_passes_check_config_with_production_settings() {
    let k = kubernetes();
    let origin = "deploy/kubernetes/prodgate.toml";
    assert_config_ok(origin, &k.config_text);
    let c = &k.config;
    assert_eq!(toml_str(c, "data_dir", origin), DATA_DIR);
    assert_eq!(toml_str(c, "log_format", origin), "json");
    let listen: std::net::SocketAddr = toml_str(c, "listen", origin).parse().expect("listen");
    assert!(listen.ip().is_unspecified(), "listen must reach the pod IP");
    assert_eq!(i64::from(listen.port()), GRPC_PORT);
    assert_eq!(port_of(toml_str(c, "metrics_listen", origin)), METRICS_PORT);
    for r in c["registry"].as_array().expect("[[registry]]") {
        assert!(
            r.get("username").is_some(),
            "registry without username: {r:?}"
        );
        assert!(
            r.get("password_file").is_some(),
            "registry without password_file: {r:?}"
        );
        assert!(
            r.get("insecure").is_none(),
            "production registries use TLS: {r:?}"
        );
    }
}

#[test]
fn kubernetes_statefulset_is_one_replica_with_a_volume_and_grpc_probes() {
    let k = kubernetes();
    let s = &k.statefulset;
    assert_eq!(
        int_at(s, "spec.replicas"),
        1,
        "prodgate is single-writer: sled under one data dir"
    );
    assert_eq!(
        str_at(s, "spec.serviceName"),
        str_at(&k.service, "metadata.name")
    );
    assert!(labels_subset(
        at(s, "spec.selector.matchLabels"),
        at(s, "spec.template.metadata.labels")
    ));
    let pod = at(s, "spec.template.spec");
    let containers = vec_at(pod, "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // What the container runs, and that it is the image's default too.
    let args = strings(vec_at(c, "args"));
    assert_cli("deploy/kubernetes/statefulset.yaml args", &args);
    assert_eq!(args[0], "serve");
    assert_eq!(flag_value(&args, "--config"), Some(CONFIG_PATH));

    // Ports, probes.
    let ports = vec_at(c, "ports");
    assert_eq!(int_at(named(ports, "grpc"), "containerPort"), GRPC_PORT);
    assert_eq!(
        int_at(named(ports, "metrics"), "containerPort"),
        METRICS_PORT
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let p = at(c, probe);
        assert_eq!(int_at(p, "grpc.port"), GRPC_PORT, "{probe}");
        for other in ["httpGet", "tcpSocket", "exec"] {
            assert!(p[other].is_badvalue(), "{probe} also has {other}");
        }
    }

    // Volumes: data from the claim template, config from the ConfigMap,
    // the registry password from the Secret.
    let mounts = vec_at(c, "volumeMounts");
    let volumes = vec_at(pod, "volumes");
    let claims = vec_at(s, "spec.volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    let claim = str_at(&claims[0], "metadata.name");
    assert_eq!(
        str_at(named(mounts, claim), "mountPath"),
        DATA_DIR,
        "the claim template is mounted at the config's data_dir"
    );
    assert!(
        strings(vec_at(&claims[0], "spec.accessModes"))
            .iter()
            .all(|m| m.starts_with("ReadWriteOnce")),
        "the data volume must be single-node"
    );
    assert!(
        at(&claims[0], "spec.resources.requests.storage")
            .as_str()
            .is_some()
    );

    let config_volume = volumes
        .iter()
        .find(|v| !v["configMap"].is_badvalue())
        .expect("a ConfigMap volume");
    assert_eq!(str_at(config_volume, "configMap.name"), "prodgate-config");
    let item = &vec_at(config_volume, "configMap.items")[0];
    assert_eq!(str_at(item, "key"), "prodgate.toml");
    let config_mount = named(mounts, str_at(config_volume, "name"));
    assert!(bool_at(config_mount, "readOnly"));
    assert_eq!(
        format!(
            "{}/{}",
            str_at(config_mount, "mountPath"),
            str_at(item, "path")
        ),
        CONFIG_PATH
    );

    let secret_volume = volumes
        .iter()
        .find(|v| !v["secret"].is_badvalue())
        .expect("a Secret volume");
    assert_eq!(
        str_at(secret_volume, "secret.secretName"),
        str_at(&k.secret, "metadata.name"),
        "the Secret volume mounts the Secret of secret.example.yaml"
    );
    let item = &vec_at(secret_volume, "secret.items")[0];
    let key = str_at(item, "key");
    assert!(
        at(&k.secret, "stringData")[key].as_str().is_some(),
        "the Secret template has no key {key}"
    );
    let secret_mount = named(mounts, str_at(secret_volume, "name"));
    assert!(bool_at(secret_mount, "readOnly"));
    let registry = &k.config["registry"].as_array().expect("[[registry]]")[0];
    assert_eq!(
        registry["password_file"].as_str(),
        Some(
            format!(
                "{}/{}",
                str_at(secret_mount, "mountPath"),
                str_at(item, "path")
            )
            .as_str()
        ),
        "password_file must be the mounted Secret key"
    );
    for m in mounts {
        let name = str_at(m, "name");
        if name != claim {
            named(volumes, name);
        }
    }

    // Security and shutdown.
    assert!(bool_at(pod, "securityContext.runAsNonRoot"));
    assert_eq!(int_at(pod, "securityContext.runAsUser"), UID);
    assert_eq!(int_at(pod, "securityContext.fsGroup"), UID);
    assert!(bool_at(c, "securityContext.readOnlyRootFilesystem"));
    assert!(!bool_at(c, "securityContext.allowPrivilegeEscalation"));
    assert!(!bool_at(pod, "automountServiceAccountToken"));
    assert!(
        !bool_at(pod, "enableServiceLinks"),
        "a Service named prodgate injects PRODGATE_* variables"
    );
    let grace = int_at(pod, "terminationGracePeriodSeconds");
    let drain = prodgate::server::SHUTDOWN_GRACE + prodgate::apply::SHUTDOWN_GRACE;
    assert!(
        grace >= 30 && grace as u64 >= drain.as_secs() + 5,
        "terminationGracePeriodSeconds {grace} leaves no room for the {drain:?} drain"
    );
}

#[test]
fn kubernetes_service_exposes_grpc_and_metrics() {
    let k = kubernetes();
    let svc = &k.service;
    assert!(labels_subset(
        at(svc, "spec.selector"),
        at(&k.statefulset, "spec.template.metadata.labels")
    ));
    let container_ports = vec_at(&k.statefulset, "spec.template.spec.containers.0.ports");
    let ports = vec_at(svc, "spec.ports");
    for (name, port) in [("grpc", GRPC_PORT), ("metrics", METRICS_PORT)] {
        let p = named(ports, name);
        assert_eq!(int_at(p, "port"), port, "{name}");
        let target = match &p["targetPort"] {
            Yaml::String(n) => int_at(named(container_ports, n), "containerPort"),
            Yaml::Integer(n) => *n,
            other => panic!("{name}: targetPort {other:?}"),
        };
        assert_eq!(target, port, "{name} targetPort");
    }
}

#[test]
fn kubernetes_headless_service_lets_clients_balance_over_the_pods() {
    let k = kubernetes();
    assert_headless_grpc_service(
        &k.headless,
        at(&k.statefulset, "spec.template.metadata.labels"),
        vec_at(&k.statefulset, "spec.template.spec.containers.0.ports"),
    );
    // The ClusterIP Service keeps its virtual IP for everyone else.
    assert!(k.service["spec"]["clusterIP"].is_badvalue());
    assert_eq!(str_at(&k.service, "spec.type"), "ClusterIP");
    // The README and the manifest give clients the same target and policy.
    let target = "dns:///prodgate-headless.<namespace>.svc.cluster.local:50051";
    for doc in ["kubernetes/headless-service.yaml", "README.md"] {
        let text = read(doc).replace("\n# ", " ").replace('\n', " ");
        assert!(text.contains(target), "deploy/{doc} does not name {target}");
        assert!(
            text.contains("round_robin"),
            "deploy/{doc} does not name round_robin"
        );
    }
}

// ---------------------------------------------------------------- Kubernetes on PostgreSQL

/// The PostgreSQL kit (`kubernetes/postgres/`): what its kustomization
/// applies, its config, and the CloudNativePG cluster it points at.
struct PostgresKit {
    config_text: String,
    config: toml::Table,
    deployment: Yaml,
    pdb: Yaml,
    service: Yaml,
    headless: Yaml,
    cluster: Yaml,
}

fn postgres_kit() -> PostgresKit {
    let k = yaml_doc("kubernetes/postgres/kustomization.yaml");
    assert_eq!(str_at(&k, "kind"), "Kustomization");
    let mut deployment = None;
    let mut pdb = None;
    let mut service = None;
    let mut headless = None;
    for r in strings(vec_at(&k, "resources")) {
        assert!(
            !r.contains('/'),
            "kustomize loads no file from outside the kit: {r}"
        );
        for doc in yaml_docs(&format!("kubernetes/postgres/{r}")) {
            match str_at(&doc, "kind") {
                "Deployment" => assert!(deployment.replace(doc).is_none(), "two Deployments"),
                "PodDisruptionBudget" => assert!(pdb.replace(doc).is_none(), "two PDBs"),
                "Service" => take_service(doc, &mut service, &mut headless),
                other => panic!("deploy/kubernetes/postgres/{r}: unexpected kind {other}"),
            }
        }
    }
    let generator = &vec_at(&k, "configMapGenerator")[0];
    assert_eq!(str_at(generator, "name"), "prodgate-config");
    assert_eq!(strings(vec_at(generator, "files")), ["prodgate.toml"]);
    let cluster = yaml_doc("kubernetes/postgres/cluster.yaml");
    let config_text = read("kubernetes/postgres/prodgate.toml");
    PostgresKit {
        config: toml_table("deploy/kubernetes/postgres/prodgate.toml", &config_text),
        config_text,
        deployment: deployment.expect("a Deployment"),
        pdb: pdb.expect("a PodDisruptionBudget"),
        service: service.expect("a Service"),
        headless: headless.expect("a headless Service"),
        cluster,
    }
}

/// `postgres://USER@HOST:PORT/DB` as (user, host, port, database).
fn postgres_url(url: &str) -> (&str, &str, &str, &str) {
    let rest = url
        .strip_prefix("postgres://")
        .unwrap_or_else(|| panic!("{url}: not a postgres:// URL"));
    let (user, rest) = rest.split_once('@').expect("a user");
    let (host_port, db) = rest.split_once('/').expect("a database");
    let (host, port) = host_port.split_once(':').expect("a port");
    (user, host, port, db)
}

#[test]
fn kubernetes_postgres_deployment_is_three_ready_replicas_kept_two_by_the_pdb() {
    let k = postgres_kit();
    let d = &k.deployment;
    assert_eq!(int_at(d, "spec.replicas"), 3);
    assert_eq!(
        int_at(d, "spec.strategy.rollingUpdate.maxUnavailable"),
        0,
        "a rollout never goes below the replica count"
    );
    let pod_labels = at(d, "spec.template.metadata.labels");
    assert!(labels_subset(
        at(d, "spec.selector.matchLabels"),
        pod_labels
    ));
    // The PDB selects exactly the Deployment's pods and keeps two of three.
    assert_eq!(str_at(&k.pdb, "apiVersion"), "policy/v1");
    assert_eq!(int_at(&k.pdb, "spec.minAvailable"), 2);
    assert_eq!(
        at(&k.pdb, "spec.selector.matchLabels"),
        at(d, "spec.selector.matchLabels")
    );
    assert!(labels_subset(
        at(&k.pdb, "spec.selector.matchLabels"),
        pod_labels
    ));
    // The Service is the sled kit's, and selects these pods.
    assert_eq!(
        read("kubernetes/postgres/service.yaml"),
        read("kubernetes/service.yaml"),
        "the two kits' Services differ"
    );
    assert!(labels_subset(at(&k.service, "spec.selector"), pod_labels));
    // So is the headless one, for clients that balance over the replicas.
    assert_eq!(
        read("kubernetes/postgres/headless-service.yaml"),
        read("kubernetes/headless-service.yaml"),
        "the two kits' headless Services differ"
    );
    assert_headless_grpc_service(
        &k.headless,
        pod_labels,
        vec_at(d, "spec.template.spec.containers.0.ports"),
    );

    let pod = at(d, "spec.template.spec");
    assert!(
        pod["volumeClaimTemplates"].is_badvalue() && !vec_at(pod, "volumes").is_empty(),
        "stateless pods"
    );
    let c = &vec_at(pod, "containers")[0];
    let args = strings(vec_at(c, "args"));
    assert_cli("deploy/kubernetes/postgres/deployment.yaml args", &args);
    assert_eq!(args[0], "serve");
    assert_eq!(flag_value(&args, "--config"), Some(CONFIG_PATH));
    assert_eq!(
        int_at(named(vec_at(c, "ports"), "grpc"), "containerPort"),
        GRPC_PORT
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(int_at(at(c, probe), "grpc.port"), GRPC_PORT, "{probe}");
    }
    assert!(bool_at(pod, "securityContext.runAsNonRoot"));
    assert_eq!(int_at(pod, "securityContext.runAsUser"), UID);
    assert!(bool_at(c, "securityContext.readOnlyRootFilesystem"));
    assert!(!bool_at(pod, "enableServiceLinks"));
    let grace = int_at(pod, "terminationGracePeriodSeconds");
    let drain = prodgate::server::SHUTDOWN_GRACE + prodgate::apply::SHUTDOWN_GRACE;
    assert!(grace as u64 >= drain.as_secs() + 5, "grace {grace}");
    let mounts = vec_at(c, "volumeMounts");
    for m in mounts {
        named(vec_at(pod, "volumes"), str_at(m, "name"));
    }
    assert!(
        mounts.iter().all(|m| str_at(m, "mountPath") != DATA_DIR),
        "no data volume: the state is in PostgreSQL"
    );
}

#[test]
fn kubernetes_postgres_config_names_the_cnpg_cluster_and_its_secret() {
    let k = postgres_kit();
    let origin = "deploy/kubernetes/postgres/prodgate.toml";
    assert_config_ok(origin, &k.config_text);
    let storage = k.config["storage"].as_table().expect("[storage]");
    assert_eq!(storage["backend"].as_str(), Some("postgres"));
    assert!(
        k.config.get("data_dir").is_none(),
        "{origin}: data_dir unused"
    );

    // The same service as the sled kit: only where the state lives differs.
    let mut sled = toml_table(
        "deploy/kubernetes/prodgate.toml",
        &read("kubernetes/prodgate.toml"),
    );
    sled.remove("data_dir");
    let mut pg = k.config.clone();
    pg.remove("storage");
    assert_eq!(pg, sled, "the two kits' configs differ beyond storage");

    // The URL names the cluster's primary Service, its owner and database.
    let cluster = &k.cluster;
    assert_eq!(str_at(cluster, "apiVersion"), "postgresql.cnpg.io/v1");
    assert_eq!(str_at(cluster, "kind"), "Cluster");
    let name = str_at(cluster, "metadata.name");
    let url = storage["url"].as_str().expect("storage.url");
    let (user, host, port, db) = postgres_url(url);
    assert_eq!(host, format!("{name}-rw"), "the primary's Service");
    assert_eq!(port, "5432");
    assert_eq!(user, str_at(cluster, "spec.bootstrap.initdb.owner"));
    assert_eq!(db, str_at(cluster, "spec.bootstrap.initdb.database"));

    // password_file is the `password` key of the Secret CloudNativePG
    // creates for the owner (`<cluster>-app`), as the Deployment mounts it.
    let pod = at(&k.deployment, "spec.template.spec");
    let volume = vec_at(pod, "volumes")
        .iter()
        .find(|v| v["secret"]["secretName"].as_str() == Some(&format!("{name}-app")))
        .unwrap_or_else(|| panic!("no volume of the Secret {name}-app"));
    let item = &vec_at(volume, "secret.items")[0];
    assert_eq!(str_at(item, "key"), "password");
    let mount = named(
        vec_at(pod, "containers.0.volumeMounts"),
        str_at(volume, "name"),
    );
    assert!(bool_at(mount, "readOnly"));
    assert_eq!(
        storage["password_file"].as_str(),
        Some(format!("{}/{}", str_at(mount, "mountPath"), str_at(item, "path")).as_str())
    );
    // The registry password as in the sled kit.
    let registry = named(vec_at(pod, "volumes"), "registry-credentials");
    assert_eq!(str_at(registry, "secret.secretName"), "prodgate-registry");
}

#[test]
fn cnpg_cluster_acknowledges_only_what_a_standby_also_flushed() {
    let k = postgres_kit();
    let c = &k.cluster;
    assert_eq!(int_at(c, "spec.instances"), 3);
    let sync = at(c, "spec.postgresql.synchronous");
    assert!(
        int_at(sync, "number") >= 1,
        "at least one synchronous standby"
    );
    assert!(
        int_at(sync, "number") < int_at(c, "spec.instances") - 1,
        "one standby may be down while writes go on"
    );
    assert_eq!(
        str_at(sync, "dataDurability"),
        "required",
        "never fall back to asynchronous replication"
    );
    let commit = str_at(c, "spec.postgresql.parameters.synchronous_commit");
    assert!(
        ["on", "remote_apply"].contains(&commit),
        "synchronous_commit {commit} does not wait for the standby's flush"
    );
}

#[test]
fn kubernetes_gateway_exposes_only_grpc_over_tls_from_cert_manager() {
    let origin = "deploy/kubernetes/gateway.yaml";
    // Optional: listed, commented out, where uncommenting it applies it.
    let kustomization = read("kubernetes/kustomization.yaml");
    let k = yaml_doc("kubernetes/kustomization.yaml");
    assert!(!strings(vec_at(&k, "resources")).contains(&"gateway.yaml".to_owned()));
    assert!(
        kustomization.lines().any(|l| l == "  # - gateway.yaml"),
        "kustomization.yaml should offer `# - gateway.yaml` among its resources"
    );

    let docs = yaml_docs("kubernetes/gateway.yaml");
    let of_kind = |kind: &str| -> &Yaml {
        let mut found = docs.iter().filter(|d| str_at(d, "kind") == kind);
        let doc = found
            .next()
            .unwrap_or_else(|| panic!("{origin}: no {kind}"));
        assert!(found.next().is_none(), "{origin}: two of {kind}");
        assert_eq!(
            str_at(doc, "apiVersion"),
            "gateway.networking.k8s.io/v1",
            "{origin}: {kind}"
        );
        doc
    };
    assert_eq!(docs.len(), 2, "{origin}: a Gateway and a GRPCRoute");
    let gateway = of_kind("Gateway");
    let route = of_kind("GRPCRoute");

    // TLS ends at the Gateway with a certificate cert-manager keeps in a Secret.
    let issuer = &at(gateway, "metadata.annotations")["cert-manager.io/cluster-issuer"];
    assert!(
        issuer.as_str().is_some_and(|i| !i.is_empty()),
        "{origin}: the Gateway needs the cert-manager.io/cluster-issuer annotation"
    );
    let listeners = vec_at(gateway, "spec.listeners");
    assert_eq!(listeners.len(), 1, "{origin}: one listener");
    let listener = &listeners[0];
    assert_eq!(str_at(listener, "protocol"), "HTTPS");
    assert_eq!(int_at(listener, "port"), 443);
    assert_eq!(str_at(listener, "tls.mode"), "Terminate");
    let certs = vec_at(listener, "tls.certificateRefs");
    assert_eq!(certs.len(), 1);
    assert_eq!(str_at(&certs[0], "kind"), "Secret");
    assert!(!str_at(&certs[0], "name").is_empty());
    let hostname = str_at(listener, "hostname");
    let kinds = vec_at(listener, "allowedRoutes.kinds");
    assert_eq!(kinds.len(), 1, "{origin}: only gRPC routes on the listener");
    assert_eq!(str_at(&kinds[0], "kind"), "GRPCRoute");

    // The route: that listener, that hostname, the Service's gRPC port only.
    let parents = vec_at(route, "spec.parentRefs");
    assert_eq!(parents.len(), 1);
    assert_eq!(
        str_at(&parents[0], "name"),
        str_at(gateway, "metadata.name")
    );
    assert_eq!(str_at(&parents[0], "sectionName"), str_at(listener, "name"));
    assert_eq!(strings(vec_at(route, "spec.hostnames")), [hostname]);
    let service = yaml_doc("kubernetes/service.yaml");
    let grpc = named(vec_at(&service, "spec.ports"), "grpc");
    // What tells the gateway to speak cleartext HTTP/2 to the pod.
    assert_eq!(str_at(grpc, "appProtocol"), "kubernetes.io/h2c");
    let rules = vec_at(route, "spec.rules");
    assert!(!rules.is_empty());
    for rule in rules {
        assert!(
            rule["matches"].is_badvalue(),
            "{origin}: every RPC goes through, health and reflection too"
        );
        for backend in vec_at(rule, "backendRefs") {
            assert_eq!(str_at(backend, "name"), str_at(&service, "metadata.name"));
            assert_eq!(int_at(backend, "port"), int_at(grpc, "port"));
            assert_eq!(int_at(backend, "port"), GRPC_PORT);
        }
    }

    // The CI workflow's example server is this hostname.
    assert!(
        read("ci/promote-to-production.yml").contains(&format!("https://{hostname},")),
        "deploy/ci/promote-to-production.yml should name https://{hostname} as PRODGATE_SERVER"
    );
}

// ---------------------------------------------------------------- admission policies

const KYVERNO_POLICY: &str = "kubernetes/admission/kyverno-clusterpolicy.yaml";
const POLICY_CONTROLLER_POLICY: &str =
    "kubernetes/admission/policy-controller-clusterimagepolicy.yaml";

/// A PEM block's lines, trimmed, without blank ones: what a YAML block
/// scalar and the key file must agree on whatever their indentation and
/// trailing newline.
fn pem_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The dev attestation public key, which both policies carry (to be
/// replaced by the user's `attest.pub`).
fn dev_attest_pub() -> String {
    let public = read("dev-attest.pub");
    let lines = pem_lines(&public);
    assert_eq!(lines.first(), Some(&"-----BEGIN PUBLIC KEY-----"));
    assert_eq!(lines.last(), Some(&"-----END PUBLIC KEY-----"));
    public
}

/// The predicate of the VSA prodgate signs for `environment`, as
/// `prodgate::attest` builds it.
fn vsa_predicate(environment: &str) -> serde_json::Value {
    let summary = prodgate::attest::Summary {
        verifier_id: "https://prodgate.example.com",
        repository: "registry.example.com/team/app",
        digest: "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        environment,
        project: "",
        policy_digest: "sha256:2222222222222222222222222222222222222222222222222222222222222222",
        time_verified: "2026-12-07T16:00:00Z",
        extra: serde_json::Map::new(),
    };
    let statement = prodgate::attest::statement(&summary);
    assert_eq!(statement["predicateType"], prodgate::attest::VSA_TYPE);
    statement["predicate"].clone()
}

/// Whether a Kyverno `Equals` condition on `{{ field }}` holds for
/// `predicate` (the only form the policy uses: a top-level field).
fn kyverno_equals_holds(condition: &Yaml, predicate: &serde_json::Value) -> bool {
    let key = str_at(condition, "key");
    let field = key
        .strip_prefix("{{")
        .and_then(|k| k.strip_suffix("}}"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("condition key {key:?} is not `{{{{ field }}}}`"));
    assert!(
        field.chars().all(|c| c.is_ascii_alphanumeric()),
        "condition key {key:?} is not a plain predicate field"
    );
    assert_eq!(str_at(condition, "operator"), "Equals");
    predicate[field].as_str() == Some(str_at(condition, "value"))
}

#[test]
fn admission_policies_stay_out_of_the_kustomizations() {
    // Each needs its engine's CRDs, and they are alternatives: applied one
    // at a time with `kubectl apply -f`, never by a kit.
    for kit in [
        "kubernetes/kustomization.yaml",
        "kubernetes/postgres/kustomization.yaml",
    ] {
        let resources = strings(vec_at(&yaml_doc(kit), "resources"));
        assert!(
            !resources.iter().any(|r| r.contains("admission")),
            "deploy/{kit} applies an admission policy: {resources:?}"
        );
    }
    assert!(
        !DEPLOY_FILES
            .iter()
            .any(|f| f.starts_with("kubernetes/admission/kustomization")),
        "the admission policies are applied one at a time"
    );
    let readme = read("README.md");
    for f in [KYVERNO_POLICY, POLICY_CONTROLLER_POLICY] {
        assert!(
            readme.contains(&format!("kubectl apply -f deploy/{f}")),
            "deploy/README.md does not say how to apply {f}"
        );
        assert!(
            read(f).contains(&format!("kubectl apply -f deploy/{f}")),
            "deploy/{f} does not say how to apply it"
        );
    }
}

#[test]
fn kyverno_policy_admits_only_prodgate_s_production_vsa() {
    let origin = format!("deploy/{KYVERNO_POLICY}");
    let p = yaml_doc(KYVERNO_POLICY);
    assert_eq!(str_at(&p, "apiVersion"), "kyverno.io/v1", "{origin}");
    assert_eq!(str_at(&p, "kind"), "ClusterPolicy", "{origin}");
    let text = read(KYVERNO_POLICY);
    assert!(
        text.contains("Kyverno 1.19"),
        "{origin}: say which Kyverno schema it follows"
    );

    let rules = vec_at(&p, "spec.rules");
    let verify: Vec<&Yaml> = rules
        .iter()
        .flat_map(|r| r["verifyImages"].as_vec().into_iter().flatten())
        .collect();
    let [verify] = verify[..] else {
        panic!("{origin}: expected one verifyImages entry, found {verify:?}");
    };
    for rule in rules {
        let kinds = strings(vec_at(&rule["match"]["any"][0], "resources.kinds"));
        assert_eq!(kinds, ["Pod"], "{origin}: the rule matches Pods");
    }
    assert!(!vec_at(verify, "imageReferences").is_empty());
    // Enforced, with tags resolved to the digest that is checked.
    assert_eq!(str_at(verify, "failureAction"), "Enforce", "{origin}");
    assert!(bool_at(verify, "mutateDigest"), "{origin}: mutateDigest");
    assert!(bool_at(verify, "verifyDigest"), "{origin}: verifyDigest");
    assert!(bool_at(verify, "required"), "{origin}: required");

    let attestations = vec_at(verify, "attestations");
    let [attestation] = attestations else {
        panic!("{origin}: expected one attestation check, found {attestations:?}");
    };
    assert_eq!(
        str_at(attestation, "type"),
        prodgate::attest::VSA_TYPE,
        "{origin}: the predicate type prodgate signs"
    );

    // The dev key, with the Rekor and certificate-timestamp checks off (a
    // plain key, nothing uploaded to Rekor).
    let entries: Vec<&Yaml> = vec_at(attestation, "attestors")
        .iter()
        .flat_map(|a| vec_at(a, "entries"))
        .collect();
    let [entry] = entries[..] else {
        panic!("{origin}: expected one attestor entry, found {entries:?}");
    };
    let public = dev_attest_pub();
    assert_eq!(
        pem_lines(str_at(entry, "keys.publicKeys")),
        pem_lines(&public),
        "{origin}: the key is deploy/dev-attest.pub"
    );
    assert!(bool_at(entry, "keys.rekor.ignoreTlog"), "{origin}");
    assert!(bool_at(entry, "keys.ctlog.ignoreSCT"), "{origin}");

    // Every condition is required (`all`), and together they hold for the
    // production VSA prodgate signs and for no other environment's.
    let blocks = vec_at(attestation, "conditions");
    assert!(
        blocks.iter().all(|b| b["any"].is_badvalue()),
        "{origin}: an `any` block would let a VSA through on one condition"
    );
    let conditions: Vec<&Yaml> = blocks.iter().flat_map(|b| vec_at(b, "all")).collect();
    let fields: BTreeSet<&str> = conditions.iter().map(|c| str_at(c, "key")).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["{{ environment }}", "{{ verificationResult }}"]),
        "{origin}"
    );
    let holds = |environment: &str| {
        let predicate = vsa_predicate(environment);
        conditions
            .iter()
            .all(|c| kyverno_equals_holds(c, &predicate))
    };
    assert!(holds("production"), "{origin}: rejects a production VSA");
    for other in ["staging", "dev", "production-eu"] {
        assert!(!holds(other), "{origin}: admits a {other} VSA");
    }
}

#[test]
fn policy_controller_policy_admits_only_prodgate_s_production_vsa() {
    let origin = format!("deploy/{POLICY_CONTROLLER_POLICY}");
    let p = yaml_doc(POLICY_CONTROLLER_POLICY);
    assert_eq!(
        str_at(&p, "apiVersion"),
        "policy.sigstore.dev/v1beta1",
        "{origin}"
    );
    assert_eq!(str_at(&p, "kind"), "ClusterImagePolicy", "{origin}");
    let text = read(POLICY_CONTROLLER_POLICY);
    assert!(
        text.contains("policy-controller v0.15"),
        "{origin}: say which policy-controller it follows"
    );
    assert!(
        text.contains("policy.sigstore.dev/include=true"),
        "{origin}: say how a namespace opts in"
    );
    assert_eq!(str_at(&p, "spec.mode"), "enforce", "{origin}");
    let images = vec_at(&p, "spec.images");
    assert!(
        !images.is_empty() && images.iter().all(|i| !str_at(i, "glob").is_empty()),
        "{origin}: images"
    );

    let authorities = vec_at(&p, "spec.authorities");
    let [authority] = authorities else {
        panic!("{origin}: expected one authority, found {authorities:?}");
    };
    let public = dev_attest_pub();
    assert_eq!(
        pem_lines(str_at(authority, "key.data")),
        pem_lines(&public),
        "{origin}: the key is deploy/dev-attest.pub"
    );
    // For a key authority, no `ctlog` is what turns the Rekor check off.
    for absent in ["ctlog", "keyless", "static", "rfc3161timestamp"] {
        assert!(
            authority[absent].is_badvalue(),
            "{origin}: the authority must have no `{absent}`"
        );
    }

    let attestations = vec_at(authority, "attestations");
    let [attestation] = attestations else {
        panic!("{origin}: expected one attestation, found {attestations:?}");
    };
    assert_eq!(
        str_at(attestation, "predicateType"),
        prodgate::attest::VSA_TYPE,
        "{origin}"
    );
    assert_eq!(str_at(attestation, "policy.type"), "cue", "{origin}");
    // The CUE is unified with the Statement: the predicate type, and the
    // two fields inside `predicate: { … }`, with the values prodgate writes
    // for production.
    let cue = str_at(attestation, "policy.data");
    let cue = cue.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        cue.contains(&format!(
            "predicateType: \"{}\"",
            prodgate::attest::VSA_TYPE
        )),
        "{origin}: {cue}"
    );
    let inside = cue
        .split_once("predicate: {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(inside, _)| inside)
        .unwrap_or_else(|| panic!("{origin}: no `predicate: {{ … }}` in {cue}"));
    // `field: "value"` pairs and nothing else.
    let tokens: Vec<&str> = inside.split_whitespace().collect();
    assert!(tokens.len().is_multiple_of(2), "{origin}: {cue}");
    let mut fields: Vec<(&str, &str)> = tokens
        .chunks(2)
        .map(|pair| {
            let field = pair[0]
                .strip_suffix(':')
                .unwrap_or_else(|| panic!("{origin}: {:?} is not `field:`", pair[0]));
            let value = pair[1]
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{origin}: {:?} is not a string", pair[1]));
            (field, value)
        })
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("environment", "production"),
            ("verificationResult", "PASSED")
        ],
        "{origin}: {cue}"
    );
    let holds = |environment: &str| {
        let predicate = vsa_predicate(environment);
        fields
            .iter()
            .all(|(field, value)| predicate[*field].as_str() == Some(*value))
    };
    assert!(holds("production"), "{origin}: rejects a production VSA");
    for other in ["staging", "dev", "production-eu"] {
        assert!(!holds(other), "{origin}: admits a {other} VSA");
    }
}

// ---------------------------------------------------------------- Dockerfile

/// Instructions (keyword, arguments) with continuations joined and comments
/// dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let (keyword, args) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((keyword.to_uppercase(), args.trim().to_owned()));
                pending.clear();
            }
        }
    }
    assert!(pending.is_empty(), "Dockerfile ends inside a continuation");
    out
}

fn json_argv(origin: &str, s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{origin}: not exec (JSON) form {s:?}: {e}"))
}

#[test]
fn dockerfile_builds_the_binary_and_runs_real_subcommands() {
    let instructions = dockerfile();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = instructions.split_at(stages[1]);

    // Build stage: a Rust toolchain the crate accepts, the locked release build.
    let cargo: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("read Cargo.toml"),
    )
    .expect("Cargo.toml");
    let from = &build[0].1;
    let image = from.split_whitespace().next().expect("FROM image");
    let version = image
        .strip_prefix("rust:")
        .and_then(|t| t.strip_suffix("-bookworm"))
        .unwrap_or_else(|| panic!("build stage FROM {image}: expected rust:<version>-bookworm"));
    let msrv = cargo["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    let parse =
        |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().expect("number")).collect() };
    assert!(
        parse(version) >= parse(msrv),
        "rust:{version} is older than rust-version {msrv}"
    );
    let stage_name = from
        .split_whitespace()
        .skip_while(|w| !w.eq_ignore_ascii_case("as"))
        .nth(1)
        .expect("FROM … AS <name>");
    assert!(
        build.iter().any(|(k, a)| k == "RUN"
            && a.contains("cargo build --release --locked --bin prodgate")),
        "the build stage runs `cargo build --release --locked --bin prodgate`"
    );
    let bins = cargo["bin"].as_array().expect("[[bin]]");
    assert!(bins.iter().any(|b| b["name"].as_str() == Some("prodgate")));

    // Runtime stage.
    let get = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let one = |keyword: &str| -> &str {
        match get(keyword)[..] {
            [a] => a,
            ref all => panic!("runtime stage: expected one {keyword}, found {all:?}"),
        }
    };
    assert_eq!(one("FROM"), "debian:bookworm-slim");
    assert!(
        get("RUN")
            .iter()
            .any(|a| a.contains("apt-get install") && a.contains("ca-certificates"))
    );
    assert!(
        get("COPY")
            .iter()
            .any(|a| a.starts_with(&format!("--from={stage_name} "))
                && a.ends_with(&format!(" {BIN_PATH}"))),
        "the binary goes to /usr/local/bin (on PATH for the exec-form commands)"
    );
    let user = one("USER");
    assert_eq!(
        user.split(':').next(),
        Some(UID.to_string().as_str()),
        "USER is the numeric uid the StatefulSet's runAsUser names"
    );
    let volume = one("VOLUME");
    let volumes = if volume.starts_with('[') {
        json_argv("VOLUME", volume)
    } else {
        volume.split_whitespace().map(String::from).collect()
    };
    assert_eq!(volumes, [DATA_DIR], "VOLUME is the config's data_dir");
    let exposed: BTreeSet<i64> = one("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([GRPC_PORT, METRICS_PORT]),
        "EXPOSE the gRPC and metrics ports"
    );

    let entrypoint = json_argv("ENTRYPOINT", one("ENTRYPOINT"));
    assert_eq!(entrypoint, ["prodgate"]);
    let cmd = json_argv("CMD", one("CMD"));
    assert_cli("deploy/Dockerfile CMD", &cmd);
    assert_eq!(cmd[0], "serve");
    assert_eq!(flag_value(&cmd, "--config"), Some(CONFIG_PATH));

    let healthcheck = one("HEALTHCHECK");
    let (_, check) = healthcheck
        .split_once("CMD ")
        .expect("HEALTHCHECK [options] CMD [...]");
    let check = json_argv("HEALTHCHECK", check.trim());
    assert_eq!(check[0], "prodgate");
    // `health` does a gRPC health Check and exits 0 when SERVING.
    assert_cli("deploy/Dockerfile HEALTHCHECK", &check[1..]);
    assert_eq!(check[1], "health");
    let server = flag_value(&check, "--server").expect("HEALTHCHECK --server");
    let addr = server.strip_prefix("http://").expect("http:// server");
    assert_eq!(port_of(addr), GRPC_PORT);

    let ignore = read("Dockerfile.dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in ["target", ".git"] {
        assert!(
            ignored.contains(must),
            "Dockerfile.dockerignore lacks {must}"
        );
    }
}

// ---------------------------------------------------------------- systemd

#[test]
fn systemd_unit_runs_a_real_subcommand_hardened() {
    let unit = read("systemd/prodgate.service");
    let mut section = String::new();
    let mut entries: Vec<(String, String, String)> = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("prodgate.service: not key=value: {line}"));
        entries.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    let values = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        match values(key)[..] {
            [v] => v,
            ref all => panic!("[Service] expected one {key}=, found {all:?}"),
        }
    };

    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(exec[0], BIN_PATH);
    assert_cli("deploy/systemd/prodgate.service ExecStart", &exec[1..]);
    assert_eq!(exec[1], "serve");
    assert_eq!(flag_value(&exec, "--config"), Some(CONFIG_PATH));

    let user = one("User");
    assert!(!user.is_empty() && user != "root" && user != "0");
    assert_eq!(one("StateDirectory"), "prodgate");
    assert!(
        values("ReadWritePaths")
            .iter()
            .any(|v| v.split_whitespace().any(|p| p == DATA_DIR))
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(key), value, "{key}=");
    }
    let stop: u64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let drain = prodgate::server::SHUTDOWN_GRACE + prodgate::apply::SHUTDOWN_GRACE;
    assert!(
        stop >= 30 && stop >= drain.as_secs() + 5,
        "TimeoutStopSec={stop}"
    );
    assert!(
        entries
            .iter()
            .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target")
    );
}

// ---------------------------------------------------------------- releases

/// The `prodgate …` command lines of the ```sh blocks in the top-level
/// README's section that starts with `heading`.
fn readme_commands(heading: &str) -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).expect("read README.md");
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README.md has no {heading:?}"));
    let section = &readme[start..];
    let section = section[heading.len()..]
        .find("\n##")
        .map_or(section, |end| &section[..heading.len() + end]);
    let blocks: String = section
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(code, _)| code))
        .collect();
    prodgate_commands(&blocks)
}

#[test]
fn release_example_is_the_readme_s_release_and_its_commands_are_real() {
    let origin = "deploy/release.example.toml";
    let file = prodgate::cli::release::parse(&read("release.example.toml"), Default::default())
        .unwrap_or_else(|e| panic!("{origin}: {e}"));
    let commands = readme_commands("### Releases");
    for argv in &commands {
        assert_cli("README.md \"Releases\"", argv);
    }
    let from_file = ["release", "--from-file", "deploy/release.example.toml"].map(String::from);
    assert!(
        commands.iter().any(|argv| argv[..] == from_file[..]),
        "README.md \"Releases\" runs no `prodgate {}`: {commands:?}",
        from_file.join(" ")
    );
    // The file is the README's production release: the same request id
    // returns the release that command opened.
    let [argv] = &commands
        .iter()
        .filter(|a| {
            a.first().is_some_and(|s| s == "release")
                && flag_value(a, "--env") == Some("production")
        })
        .collect::<Vec<_>>()[..]
    else {
        panic!("README.md \"Releases\": expected one release to production: {commands:?}");
    };
    let components: Vec<(String, String)> = argv[1..]
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .map(|a| prodgate::cli::release::component(a).unwrap_or_else(|e| panic!("{a}: {e}")))
        .map(|c| (c.repository, c.source))
        .collect();
    let in_file: Vec<(String, String)> = file
        .components
        .iter()
        .map(|c| (c.repository.clone(), c.source.clone()))
        .collect();
    assert_eq!(in_file, components, "{origin}: the components");
    assert_eq!(Some(file.environment.as_str()), flag_value(argv, "--env"));
    assert_eq!(Some(file.reason.as_str()), flag_value(argv, "--reason"));
    assert_eq!(
        Some(file.request_id.as_str()),
        flag_value(argv, "--request-id")
    );
    assert!(!file.break_glass, "{origin}: break_glass");
    // The repositories are the dev registry's, as in the example config.
    let config = toml_table(
        "deploy/prodgate.example.toml",
        &read("prodgate.example.toml"),
    );
    let host = config["registry"].as_array().expect("[[registry]]")[0]["host"]
        .as_str()
        .expect("host");
    for (repository, _) in &in_file {
        assert!(
            repository.starts_with(&format!("{host}/")),
            "{origin}: {repository} is not on {host}"
        );
    }
}

// ---------------------------------------------------------------- CI workflow

/// Splits a shell command line into words: quotes removed, `$VARS` kept
/// literally, operators (`>`, `||`, `;` …) as their own words.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        _ => word.push(q),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '>' | '<' | '|' | '&' | ';' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                let mut op = c.to_string();
                while let Some(&n) = chars.peek() {
                    if n == c {
                        op.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                words.push(op);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The arguments of each `prodgate …` command in a shell script (up to the
/// first operator), continuations joined.
fn prodgate_commands(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    joined
        .lines()
        .map(shell_words)
        .filter_map(|words| {
            let start = words.iter().position(|w| w == "prodgate")?;
            Some(
                words[start + 1..]
                    .iter()
                    .take_while(|w| !w.starts_with(['>', '<', '|', '&', ';']))
                    .cloned()
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn shell_words_split_like_a_shell() {
    assert_eq!(
        shell_words(r#"prodgate request "$R" --reason "a \"b\" c" 'x y' > out.json || rc=$?"#),
        [
            "prodgate",
            "request",
            "$R",
            "--reason",
            "a \"b\" c",
            "x y",
            ">",
            "out.json",
            "||",
            "rc=$?"
        ]
    );
    assert_eq!(
        prodgate_commands("x=1\n  prodgate a --b \\\n  --c d >f\n"),
        [["a", "--b", "--c", "d"]]
    );
}

#[test]
fn ci_workflow_requests_the_promotion_through_prodgate() {
    let file = read("ci/promote-to-production.yml");
    let wf = yaml_doc("ci/promote-to-production.yml");
    assert!(!wf["on"].is_badvalue(), "the workflow has no `on:`");
    let jobs = at(&wf, "jobs").as_hash().expect("jobs");
    assert!(!jobs.is_empty());

    let mut requests = Vec::new();
    for (name, job) in jobs {
        for step in vec_at(job, "steps") {
            let Some(script) = step["run"].as_str() else {
                continue;
            };
            assert!(
                !script.contains("${{"),
                "job {name:?}: pass expressions through env:, not into the script"
            );
            for forbidden in ["docker push", "docker tag", "docker pull"] {
                assert!(
                    !script.contains(forbidden),
                    "job {name:?} still runs {forbidden}"
                );
            }
            for argv in prodgate_commands(script) {
                if argv.first().map(String::as_str) == Some("request") {
                    requests.push((step.clone(), script.to_owned(), argv));
                }
            }
        }
    }
    let [(step, script, argv)] = &requests[..] else {
        panic!("expected one `prodgate request`, found {}", requests.len());
    };
    assert_cli("deploy/ci/promote-to-production.yml", argv);
    let env = at(&wf, "env");
    let repository = argv[1]
        .strip_prefix('$')
        .expect("repository from the workflow env");
    assert!(
        env[repository].as_str().is_some_and(|r| r.contains('/')),
        "{repository} is not set in the workflow env"
    );
    assert_eq!(flag_value(argv, "--output"), Some("json"));
    assert!(argv.iter().any(|a| a == "--wait"));
    assert!(flag_value(argv, "--reason").is_some());
    // The run's ID, which every attempt of the run shares: a re-run follows
    // the promotion the first attempt opened.
    let request_id = flag_value(argv, "--request-id").expect("--request-id");
    assert!(
        request_id.contains("$GITHUB_RUN_ID") && !request_id.contains("ATTEMPT"),
        "the request ID {request_id:?} must be the same for every attempt of a run"
    );
    let server = step["env"]["PRODGATE_SERVER"].as_str().unwrap_or_default();
    assert!(
        server.contains("secrets.PRODGATE_SERVER"),
        "PRODGATE_SERVER must come from secrets, is {server:?}"
    );

    // No shared token: the job's own OIDC token, fresh for each call, for
    // the audience prodgate's GitHub identity expects.
    assert!(
        !file.contains("PRODGATE_TOKEN"),
        "the workflow still uses a static PRODGATE_TOKEN"
    );
    assert_eq!(
        str_at(&wf, "permissions.id-token"),
        "write",
        "the job needs id-token: write to get an OIDC token"
    );
    let token_file = flag_value(argv, "--token-file").expect("--token-file");
    let fetch = script
        .lines()
        .position(|l| l.contains("$ACTIONS_ID_TOKEN_REQUEST_URL&audience="))
        .expect("the script asks for the job's OIDC token with an audience");
    assert!(script.contains("Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN"));
    assert!(
        script
            .lines()
            .skip(fetch)
            .any(|l| l.contains("> \"$token_file\"")),
        "the OIDC token is written to the --token-file"
    );
    assert_eq!(token_file, "$token_file");
    let timeout = flag_value(argv, "--timeout").expect("--timeout: a round of waiting");
    let round = humantime::parse_duration(timeout).expect("a duration");
    assert!(
        round < std::time::Duration::from_secs(5 * 60),
        "a round of waiting ({timeout}) must end well before GitHub's short-lived token does"
    );
    // The loop starts each round with a fresh token.
    assert!(
        case_arm(script, "6").contains("continue"),
        "a round that runs out starts another"
    );

    assert!(
        file.contains(&format!(":{BIN_PATH}\"")),
        "the workflow copies the CLI from {BIN_PATH} in the image"
    );

    // The environments named exist in the production config.
    let config = toml_table(
        "deploy/kubernetes/prodgate.toml",
        &read("kubernetes/prodgate.toml"),
    );
    let environments = config["environment"].as_array().expect("[[environment]]");
    let target = flag_value(argv, "--env").expect("--env");
    let target = environments
        .iter()
        .find(|e| e["name"].as_str() == Some(target))
        .unwrap_or_else(|| panic!("no environment {target:?} in the Kubernetes config"));
    let required = target["requires"].as_str().expect("production requires");
    let required_tag = environments
        .iter()
        .find(|e| e["name"].as_str() == Some(required))
        .and_then(|e| e["tag"].as_str());
    assert_eq!(flag_value(argv, "--source"), required_tag);

    // prodgate trusts GitHub's issuer with the workflow's audience.
    let audience = str_at(&wf, "env.PRODGATE_AUDIENCE");
    let identities = config["identity"].as_array().expect("[[identity]]");
    let github = identities
        .iter()
        .find(|i| i["issuer"].as_str() == Some("https://token.actions.githubusercontent.com"))
        .expect("an [[identity]] for GitHub Actions in the Kubernetes config");
    assert_eq!(github["audience"].as_str(), Some(audience));
    let rule = &github["rule"].as_array().expect("[[identity.rule]]")[0];
    assert_eq!(
        rule["claims"]["ref"].as_str(),
        Some("refs/heads/main"),
        "only the main branch may promote"
    );

    assert!(
        case_arm(script, "8").contains("continue"),
        "a promotion whose watch failed is followed again, with a fresh token"
    );
    assert_exit_codes_handled("deploy/ci/promote-to-production.yml", &file, script);
}

/// The first `case` arm of `script` for `code`: from `code)` to `;;`.
fn case_arm<'a>(script: &'a str, code: &str) -> &'a str {
    let start = script
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(&format!("{code})")))
        .and_then(|l| script.find(l))
        .unwrap_or_else(|| panic!("no `{code})` arm in the script"));
    let arm = &script[start..];
    arm.find(";;").map_or(arm, |end| &arm[..end])
}

/// The codes of `prodgate --help`'s "Exit codes:" list.
fn exit_codes() -> Vec<String> {
    let help = text(&prodgate(&["--help"]).stdout);
    let list = help
        .split_once("Exit codes:")
        .map(|(_, list)| list)
        .expect("`prodgate --help` lists the exit codes");
    let codes: Vec<String> = list
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_once("  "))
        .map(|(code, _)| code.to_owned())
        .filter(|code| code.parse::<u8>().is_ok())
        .collect();
    assert!(codes.len() >= 9, "exit codes in --help: {codes:?}\n{help}");
    codes
}

/// A CI file explains every exit code `prodgate --help` lists, in a
/// comment `#   N  …`, and no other; its script branches on the outcomes
/// of `request --wait`.
fn assert_exit_codes_handled(origin: &str, file: &str, script: &str) {
    let codes = exit_codes();
    let explained: Vec<String> = file
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("#   ")?.split_once("  "))
        .map(|(code, _)| code.to_owned())
        .filter(|code| code.parse::<u8>().is_ok())
        .collect();
    assert_eq!(
        explained, codes,
        "{origin}: the exit codes explained differ from `prodgate --help`'s"
    );
    for code in ["0", "3", "4", "5", "6", "8"] {
        assert!(
            script.contains(&format!("{code})")),
            "{origin}: exit code {code} not handled"
        );
    }
}

/// The GitLab [[identity]] kept commented out in the Kubernetes config,
/// uncommented: the lines from `# [[identity]]` for GitLab's issuer to the
/// end of that comment block.
fn gitlab_identity() -> String {
    let config = read("kubernetes/prodgate.toml");
    let lines: Vec<&str> = config.lines().collect();
    let start = lines
        .windows(2)
        .position(|w| w[0] == "# [[identity]]" && w[1].contains("gitlab.com"))
        .expect("a commented-out GitLab [[identity]] in deploy/kubernetes/prodgate.toml");
    lines[start..]
        .iter()
        .map_while(|l| l.strip_prefix("# "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn gitlab_job_requests_the_promotion_with_its_id_token() {
    let origin = "deploy/ci/promote-to-production.gitlab-ci.yml";
    let file = read("ci/promote-to-production.gitlab-ci.yml");
    let ci = yaml_doc("ci/promote-to-production.gitlab-ci.yml");
    let job = at(&ci, "promote-to-production");
    let script: String = strings(vec_at(job, "script")).join("\n");
    for forbidden in ["docker push", "docker tag", "docker pull"] {
        assert!(
            !script.contains(forbidden),
            "{origin} still runs {forbidden}"
        );
    }
    let requests: Vec<Vec<String>> = prodgate_commands(&script)
        .into_iter()
        .filter(|argv| argv.first().map(String::as_str) == Some("request"))
        .collect();
    let [argv] = &requests[..] else {
        panic!("{origin}: expected one `prodgate request`, found {requests:?}");
    };
    assert_cli(origin, argv);
    let repository = argv[1]
        .strip_prefix('$')
        .expect("repository from the variables");
    assert!(
        str_at(&ci, &format!("variables.{repository}")).contains('/'),
        "{origin}: {repository} is not set in the variables"
    );
    assert_eq!(flag_value(argv, "--output"), Some("json"));
    assert!(argv.iter().any(|a| a == "--wait"));
    assert_eq!(flag_value(argv, "--reason"), Some("$PROMOTION_REASON"));
    str_at(&ci, "variables.PROMOTION_REASON.description");
    // The same for every retry of the job: a retry follows the promotion.
    assert_eq!(flag_value(argv, "--request-id"), Some("$CI_PIPELINE_ID"));

    // The job's own ID token for prodgate's audience, through a file.
    assert!(
        !file.contains("PRODGATE_TOKEN"),
        "{origin} uses a static PRODGATE_TOKEN"
    );
    let audience = str_at(job, "id_tokens.PRODGATE_ID_TOKEN.aud");
    assert_eq!(flag_value(argv, "--token-file"), Some("$token_file"));
    assert!(
        script.contains("\"$PRODGATE_ID_TOKEN\" > \"$token_file\""),
        "{origin}: the ID token is written to the --token-file"
    );
    let rules = vec_at(job, "rules");
    assert!(
        !rules.is_empty()
            && rules.iter().all(|r| r["if"]
                .as_str()
                .is_some_and(|c| c.contains("$CI_COMMIT_REF_PROTECTED == \"true\""))),
        "{origin}: the job runs on protected refs only"
    );
    assert_eq!(strings(vec_at(job, "image.entrypoint")), [""]);
    let github = yaml_doc("ci/promote-to-production.yml");
    assert_eq!(
        str_at(job, "image.name")
            .strip_prefix('$')
            .map(|v| str_at(&ci, &format!("variables.{v}"))),
        Some(str_at(&github, "env.PRODGATE_IMAGE")),
        "{origin}: the CLI from the same image as the GitHub workflow"
    );

    // The job outlives the approval TTL (so it sees EXPIRED), its wait
    // ends before the job is killed, and its token lives as long as the job.
    let job_timeout = humantime::parse_duration(str_at(job, "timeout")).expect("timeout");
    let wait = flag_value(argv, "--timeout").expect("--timeout");
    let wait = humantime::parse_duration(wait).expect("a duration");
    assert!(
        wait < job_timeout,
        "{origin}: --timeout must end before the job's"
    );
    let config = toml_table(
        "deploy/kubernetes/prodgate.toml",
        &read("kubernetes/prodgate.toml"),
    );
    let production = config["environment"]
        .as_array()
        .expect("[[environment]]")
        .iter()
        .find(|e| e["name"].as_str() == flag_value(argv, "--env"))
        .expect("the target environment in the Kubernetes config");
    let ttl = production["approval_ttl"].as_str().expect("approval_ttl");
    assert!(
        humantime::parse_duration(ttl).expect("a duration") < wait,
        "{origin}: the wait outlasts approval_ttl {ttl}"
    );

    // The commented-out identity, once uncommented, is a valid config that
    // maps this job's token on protected refs.
    let identity = gitlab_identity();
    let with_gitlab = format!("{}\n{identity}", read("kubernetes/prodgate.toml"));
    assert_config_ok("deploy/kubernetes/prodgate.toml with GitLab", &with_gitlab);
    let gitlab: toml::Table = toml_table("the GitLab [[identity]]", &identity);
    let gitlab = &gitlab["identity"].as_array().expect("[[identity]]")[0];
    assert_eq!(gitlab["issuer"].as_str(), Some("https://gitlab.com"));
    assert_eq!(gitlab["audience"].as_str(), Some(audience));
    let max = gitlab["max_lifetime"].as_str().expect("max_lifetime");
    assert!(
        humantime::parse_duration(max).expect("a duration") >= job_timeout,
        "GitLab's ID token lives as long as the job: max_lifetime {max} is too short"
    );
    let rule = &gitlab["rule"].as_array().expect("[[identity.rule]]")[0];
    assert_eq!(
        rule["claims"]["ref_protected"].as_str(),
        Some("true"),
        "only protected refs may promote"
    );
    assert!(
        rule["principal"]
            .as_str()
            .is_some_and(|p| p.contains("{project_path}"))
    );

    assert_exit_codes_handled(origin, &file, &script);
}
