//! A throwaway OCI registry for integration tests.
//!
//! [`TestRegistry`] owns one `docker-registry serve` process (Debian's CNCF Distribution 2.8.2)
//! on a free loopback port, together with its temporary directory (config, storage and log) and
//! an HTTP client. Its helpers push blobs, images, indexes and raw manifests, read manifests
//! back, retag and delete. Dropping it kills the process and removes the directory.
//!
//! It runs open, or as registries are run ([`Options`]): HTTP basic auth, Distribution's token
//! auth trusting a [`TokenServer`], HTTPS with a certificate from a [`TestCa`]. The harness's own
//! requests authenticate however the registry asks: Basic credentials, or tokens it mints with
//! the token server's key (so they never show in the token server's log).

use std::fmt::Display;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hostile::TestCa;
use super::token_server::{self, Signer, TokenServer};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode, Url};
use serde_json::json;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Without the index media types the registry answers 404 for an index.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
const DIGEST_HEADER: &str = "Docker-Content-Digest";

const REGISTRY_BIN: &str = "docker-registry";
const LOG_FILE: &str = "registry.log";
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 3;
/// Set by the registry (its `http.headers` config) on every response, so that readiness is never
/// confirmed by some other server that grabbed the port between our probe and its bind.
const TOKEN_HEADER: &str = "X-Prodgate-Test-Registry";

pub struct TestRegistry {
    /// `127.0.0.1:PORT`
    pub host: String,
    scheme: &'static str,
    child: Child,
    http: Client,
    auth: HarnessAuth,
    token: String,
    dir: TempDir,
}

/// How a [`TestRegistry`] is run; the default is open, over plain HTTP.
#[derive(Default, Clone, Copy)]
pub struct Options<'a> {
    /// HTTP basic auth (htpasswd, bcrypt) for this user and password.
    pub basic: Option<(&'a str, &'a str)>,
    /// Distribution's `auth: token`, trusting this token service.
    pub token: Option<&'a TokenServer>,
    /// HTTPS with the server certificate of this CA.
    pub tls: Option<&'a TestCa>,
}

/// How the harness's own requests authenticate.
#[derive(Clone)]
enum HarnessAuth {
    None,
    /// The value of the `Authorization` header.
    Basic(String),
    /// A token minted per request for the repository it is about.
    Token(Arc<Signer>),
}

enum Startup {
    Ready,
    PortTaken,
}

impl TestRegistry {
    /// Starts a fresh, empty registry and waits until `GET /v2/` answers 200.
    pub async fn start() -> TestRegistry {
        Self::start_with(Options::default()).await
    }

    /// A registry that demands HTTP basic auth (htpasswd, bcrypt) for every
    /// request; this harness's own requests send `user`/`password`.
    pub async fn start_with_basic_auth(user: &str, password: &str) -> TestRegistry {
        Self::start_with(Options {
            basic: Some((user, password)),
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(options: Options<'_>) -> TestRegistry {
        // The crate builds reqwest with `rustls-no-provider`, so even a plain-HTTP client needs a
        // process-wide rustls provider; Err only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = http_client(options.tls);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        for _ in 0..PORT_ATTEMPTS {
            let mut registry = Self::spawn(http.clone(), free_port(), options);
            match registry.wait_until_ready(deadline).await {
                Startup::Ready => return registry,
                // Dropping it reaps the exited process and removes its directory.
                Startup::PortTaken => drop(registry),
            }
        }
        panic!("{REGISTRY_BIN}: the chosen port was taken in each of {PORT_ATTEMPTS} attempts");
    }

    fn spawn(http: Client, port: u16, options: Options<'_>) -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("prodgate-registry-")
            .tempdir()
            .expect("create a temporary directory for the registry");
        let host = format!("127.0.0.1:{port}");
        let token = format!("{:016x}", rand::random::<u64>());
        let config = dir.path().join("config.yml");
        let mut yaml = config_yaml(&dir.path().join("storage"), &host, &token);
        let path = |p: &Path| json!(p.to_str().expect("temporary path is UTF-8"));
        if let Some(ca) = options.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                path(&ca.cert_file),
                path(&ca.key_file)
            ));
        }
        let mut auth = HarnessAuth::None;
        if let Some((user, password)) = options.basic {
            write_htpasswd(dir.path(), user, password);
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                path(&dir.path().join("htpasswd"))
            ));
            auth = HarnessAuth::Basic(basic_header(user, password));
        }
        if let Some(server) = options.token {
            let signer = server.signer();
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                json!(server.realm()),
                token_server::SERVICE,
                token_server::ISSUER,
                path(&signer.cert_file),
            ));
            auth = HarnessAuth::Token(signer);
        }
        fs::write(&config, yaml).expect("write the registry config");
        let child = start_process(dir.path());
        TestRegistry {
            host,
            scheme: if options.tls.is_some() {
                "https"
            } else {
                "http"
            },
            child,
            http,
            auth,
            token,
            dir,
        }
    }

    /// Makes `password` the only one the registry accepts for `user` (a
    /// rotated secret), then restarts the registry in place (same port,
    /// same storage), so the change holds whether or not the registry
    /// re-reads its htpasswd file on its own.
    pub async fn set_basic_password(&mut self, user: &str, password: &str) {
        assert!(
            matches!(self.auth, HarnessAuth::Basic(_)),
            "set_basic_password: the registry does not use basic auth"
        );
        write_htpasswd(self.dir.path(), user, password);
        self.auth = HarnessAuth::Basic(basic_header(user, password));
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = start_process(self.dir.path());
        match self
            .wait_until_ready(Instant::now() + STARTUP_DEADLINE)
            .await
        {
            Startup::Ready => {}
            Startup::PortTaken => panic!("{REGISTRY_BIN}: port {} taken on restart", self.host),
        }
    }

    /// `builder` with the harness's credentials for `repo` (`None`: the
    /// `/v2/` probe, for which a token needs no access).
    fn authorized(&self, builder: RequestBuilder, repo: Option<&str>) -> RequestBuilder {
        match &self.auth {
            HarnessAuth::None => builder,
            HarnessAuth::Basic(header) => builder.header(reqwest::header::AUTHORIZATION, header),
            HarnessAuth::Token(signer) => {
                let access: Vec<(String, Vec<String>)> = repo
                    .map(|r| {
                        let actions = ["pull", "push", "delete"].map(str::to_owned).to_vec();
                        vec![(r.to_owned(), actions)]
                    })
                    .unwrap_or_default();
                let token = signer.mint("test-harness", &access, 300);
                builder.bearer_auth(token)
            }
        }
    }

    fn request(&self, method: Method, url: impl reqwest::IntoUrl, repo: &str) -> RequestBuilder {
        self.authorized(self.http.request(method, url), Some(repo))
    }

    async fn wait_until_ready(&mut self, deadline: Instant) -> Startup {
        let probe = self.url("/v2/");
        loop {
            let exited = self
                .child
                .try_wait()
                .expect("check whether the registry is running");
            if let Some(status) = exited {
                let log = self.log();
                if log.contains("address already in use") {
                    return Startup::PortTaken;
                }
                panic!(
                    "{REGISTRY_BIN} on {} exited early ({status}); log:\n{log}",
                    self.host
                );
            }
            if self.is_ready(&probe).await {
                return Startup::Ready;
            }
            assert!(
                Instant::now() < deadline,
                "{REGISTRY_BIN} on {} not ready within {STARTUP_DEADLINE:?}; log:\n{}",
                self.host,
                self.log()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn is_ready(&self, probe: &str) -> bool {
        let probe = self.authorized(self.http.get(probe), None);
        match probe.timeout(PROBE_TIMEOUT).send().await {
            Ok(resp) => {
                resp.status() == StatusCode::OK
                    && resp
                        .headers()
                        .get(TOKEN_HEADER)
                        .is_some_and(|v| v.as_bytes() == self.token.as_bytes())
            }
            Err(_) => false,
        }
    }

    /// Process id of the registry (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://{host}{path}`, or `https://` when it serves TLS.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.host, path)
    }

    /// The registry's output so far: warnings, errors and its access log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join(LOG_FILE))
            .unwrap_or_else(|e| format!("<cannot read the registry log: {e}>"))
    }

    /// The blob `digest` of `repo`, read anonymously (an open registry);
    /// fails the test unless the registry serves it.
    pub async fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let r = reqwest::get(self.url(&format!("/v2/{repo}/blobs/{digest}")))
            .await
            .expect("GET a blob");
        assert!(r.status().is_success(), "{}", r.status());
        r.bytes().await.expect("blob body").to_vec()
    }

    /// Monolithic blob upload; returns `sha256:<hex>`.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.upload_blob(repo, data.to_vec()).await
    }

    /// [`TestRegistry::push_blob`] of a buffer it may keep: the benchmarks push layers of up to
    /// 1 GiB, which should not be copied, and whose PUT may take much longer than
    /// [`REQUEST_TIMEOUT`] on a busy machine (it gets a second more per MiB).
    async fn upload_blob(&self, repo: &str, data: Vec<u8>) -> String {
        let digest = sha256_digest(&data);
        let timeout = REQUEST_TIMEOUT + Duration::from_secs((data.len() >> 20) as u64);
        let start = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self
            .request(Method::POST, &start, repo)
            .send()
            .await
            .expect("POST a blob upload");
        let resp = expect_status(resp, StatusCode::ACCEPTED, format!("POST {start}")).await;
        // Location may be absolute or relative and usually already carries a `_state` query.
        let mut put = Url::parse(&self.url("/"))
            .and_then(|base| base.join(&header(&resp, LOCATION.as_str())))
            .expect("upload Location is a URL reference");
        put.query_pairs_mut().append_pair("digest", &digest);
        let resp = self
            .request(Method::PUT, put.clone(), repo)
            .timeout(timeout)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data)
            .send()
            .await
            .expect("PUT a blob");
        let resp = expect_status(resp, StatusCode::CREATED, format!("PUT {put}")).await;
        assert_eq!(
            header(&resp, DIGEST_HEADER),
            digest,
            "registry's digest of the blob"
        );
        digest
    }

    /// Pushes a single-layer linux/amd64 OCI image whose layer is `layer_bytes` pseudo-random
    /// bytes derived from `seed` (its config also records `seed`, so images differ even when
    /// empty). Pushed by digest, and under `tag` if given; returns the manifest digest.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        layer_bytes: usize,
        seed: u64,
    ) -> String {
        self.push_labeled_image(repo, tag, layer_bytes, seed, &[])
            .await
    }

    /// [`TestRegistry::push_image`] whose config also carries `labels` (`config.Labels`, e.g.
    /// `org.opencontainers.image.revision`) and a `created` time.
    pub async fn push_labeled_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        layer_bytes: usize,
        seed: u64,
        labels: &[(&str, &str)],
    ) -> String {
        let mut all = serde_json::Map::new();
        all.insert("prodgate.test.seed".into(), json!(seed.to_string()));
        for (k, v) in labels {
            all.insert((*k).into(), json!(v));
        }
        let mut layer = vec![0; layer_bytes];
        StdRng::seed_from_u64(seed).fill_bytes(&mut layer);
        let layer_len = layer.len();
        let layer_digest = self.upload_blob(repo, layer).await;
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": all },
            // The layer is an uncompressed tar type, so its diff_id is its digest.
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        });
        if !labels.is_empty() {
            config["created"] = json!("2026-12-01T10:00:00Z");
        }
        let config = serde_json::to_vec(&config).expect("serialize the image config");
        let config_digest = self.push_blob(repo, &config).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_len }],
        }))
        .expect("serialize the image manifest");
        self.push_manifest(repo, tag, OCI_MANIFEST, &manifest).await
    }

    /// Pushes an OCI image index over `manifests` (`(digest, architecture)`, all linux), which
    /// must already be in `repo`. Pushed by digest, and under `tag` if given; returns its digest.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: Option<&str>,
        manifests: &[(String, &str)],
    ) -> String {
        let mut descriptors = Vec::with_capacity(manifests.len());
        for (digest, arch) in manifests {
            let (media_type, bytes) = self
                .manifest(repo, digest)
                .await
                .unwrap_or_else(|| panic!("manifest {digest} is not in {repo}"));
            descriptors.push(json!({
                "mediaType": media_type,
                "digest": digest,
                "size": bytes.len(),
                "platform": { "architecture": arch, "os": "linux" },
            }));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": descriptors,
        }))
        .expect("serialize the image index");
        self.push_manifest(repo, tag, OCI_INDEX, &index).await
    }

    /// PUTs `bytes` by digest, then under `tag` if given; returns the digest.
    async fn push_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        content_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = sha256_digest(bytes);
        let pushed = self
            .put_manifest_bytes(repo, &digest, content_type, bytes)
            .await;
        assert_eq!(pushed, digest, "registry's digest of the manifest");
        if let Some(tag) = tag {
            let tagged = self
                .put_manifest_bytes(repo, tag, content_type, bytes)
                .await;
            assert_eq!(
                tagged, digest,
                "registry's digest of the manifest tagged {tag}"
            );
        }
        digest
    }

    /// Raw manifest PUT; asserts 201 and returns the registry's `Docker-Content-Digest`.
    pub async fn put_manifest_bytes(
        &self,
        repo: &str,
        reference: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> String {
        let url = self.manifest_url(repo, reference);
        let resp = self
            .request(Method::PUT, &url, repo)
            .header(CONTENT_TYPE, content_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT a manifest");
        let resp = expect_status(resp, StatusCode::CREATED, format!("PUT {url}")).await;
        header(&resp, DIGEST_HEADER)
    }

    /// The manifest's content type and exact bytes; `None` if the registry answers 404.
    pub async fn manifest(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        self.get_manifest(repo, reference, false).await
    }

    /// As [`TestRegistry::manifest`], for polling a tag another process is
    /// writing: Distribution's filesystem driver answers a read that meets
    /// the write with a 500 ("unknown error"), which is `None` here too (the
    /// caller polls again, within its deadline).
    pub async fn manifest_polled(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        self.get_manifest(repo, reference, true).await
    }

    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        polled: bool,
    ) -> Option<(String, Vec<u8>)> {
        let url = self.manifest_url(repo, reference);
        let resp = self
            .request(Method::GET, &url, repo)
            .header(ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .expect("GET a manifest");
        if resp.status() == StatusCode::NOT_FOUND || (polled && resp.status().is_server_error()) {
            return None;
        }
        let resp = expect_status(resp, StatusCode::OK, format!("GET {url}")).await;
        let content_type = header(&resp, CONTENT_TYPE.as_str());
        let bytes = resp.bytes().await.expect("read a manifest body");
        Some((content_type, bytes.to_vec()))
    }

    /// The digest `tag` (or any reference) resolves to; `None` if the registry answers 404.
    pub async fn tag_digest(&self, repo: &str, tag: &str) -> Option<String> {
        let url = self.manifest_url(repo, tag);
        let resp = self
            .request(Method::HEAD, &url, repo)
            .header(ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .expect("HEAD a manifest");
        if resp.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let resp = expect_status(resp, StatusCode::OK, format!("HEAD {url}")).await;
        Some(header(&resp, DIGEST_HEADER))
    }

    /// Copies the manifest at `from_reference` to `to_tag` within `repo`; returns its digest.
    pub async fn retag(&self, repo: &str, from_reference: &str, to_tag: &str) -> String {
        let (content_type, bytes) = self
            .manifest(repo, from_reference)
            .await
            .unwrap_or_else(|| panic!("retag: {repo}:{from_reference} not found"));
        self.put_manifest_bytes(repo, to_tag, &content_type, &bytes)
            .await
    }

    /// Deletes a manifest by digest (removing every tag that points at it); asserts 202.
    pub async fn delete_manifest(&self, repo: &str, digest: &str) {
        let url = self.manifest_url(repo, digest);
        let resp = self
            .request(Method::DELETE, &url, repo)
            .send()
            .await
            .expect("DELETE a manifest");
        expect_status(resp, StatusCode::ACCEPTED, format!("DELETE {url}")).await;
    }

    fn manifest_url(&self, repo: &str, reference: &str) -> String {
        self.url(&format!("/v2/{repo}/manifests/{reference}"))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        // SIGKILL also ends a process that a test left stopped with SIGSTOP.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_client(tls: Option<&TestCa>) -> Client {
    let mut builder = Client::builder().no_proxy().timeout(REQUEST_TIMEOUT);
    if let Some(ca) = tls {
        let pem = fs::read(&ca.ca_file).expect("read the test CA");
        let ca = reqwest::Certificate::from_pem(&pem).expect("the test CA is PEM");
        builder = builder.tls_certs_only([ca]);
    }
    builder.build().expect("build the HTTP client")
}

fn basic_header(user: &str, password: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}")
}

/// `dir/htpasswd` with one bcrypt entry.
fn write_htpasswd(dir: &Path, user: &str, password: &str) {
    let hash = bcrypt::hash(password, 4).expect("bcrypt the test password");
    fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).expect("write htpasswd");
}

/// `docker-registry serve dir/config.yml`, its output appended to the log.
fn start_process(dir: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))
        .expect("open the registry log");
    Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the registry log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {REGISTRY_BIN} (apt-get install docker-registry): {e}"))
}

/// A port that was free a moment ago; the registry may still lose it to someone else.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

fn config_yaml(storage: &Path, addr: &str, token: &str) -> String {
    // A JSON string is a valid YAML scalar, which quotes any path safely.
    let root = json!(storage.to_str().expect("temporary path is UTF-8"));
    format!(
        "version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {addr}
  headers:
    {TOKEN_HEADER}: [\"{token}\"]
"
    )
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{} response has no {name} header", resp.url()))
        .to_str()
        .unwrap_or_else(|e| panic!("{name} header is not visible ASCII: {e}"))
        .to_owned()
}

async fn expect_status(resp: Response, expected: StatusCode, what: impl Display) -> Response {
    let status = resp.status();
    if status != expected {
        let body = resp.text().await.unwrap_or_default();
        panic!("{what}: expected {expected}, got {status}: {body}");
    }
    resp
}
