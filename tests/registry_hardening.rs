//! A registry probed as an attacker would use it (issue 9): prodgate, run as a
//! real `prodgate serve`, talks to hostile servers of the tests' own and must
//! keep its credentials to itself, refuse redirects off the registry, and read
//! no more of an answer than it is willing to hold.

mod support;

use base64::Engine;
use std::path::Path;
use support::hostile::{Hostile, Reply, Seen, TestCa, digest_of, manifest_json};
use support::request_to;
use support::server::{Client, TestServer, principals_toml};
use tempfile::TempDir;
use tonic::Code;

const USER: &str = "ci";
const PASSWORD: &str = "hostile-registry-pass";
const MIB: u64 = 1024 * 1024;

/// A prodgate config for one registry at `host`, with Basic credentials
/// [`USER`]/[`PASSWORD`] from a file, no Docker credentials of this machine,
/// and a `production` environment that waits for an approval (so a request
/// only reads the registry; nothing is pushed).
struct Config {
    /// Holds the password and Docker config files.
    _dir: TempDir,
    text: String,
}

impl Config {
    fn new(host: &str, insecure: bool) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = dir.path().join("registry-password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password");
        let docker_config = dir.path().join("docker.json");
        std::fs::write(&docker_config, "{}").expect("write an empty docker config");
        let text = format!(
            "registry_timeout = \"5s\"\ndocker_config = {:?}\n\
             [[registry]]\nhost = \"{host}\"\ninsecure = {insecure}\n\
             username = \"{USER}\"\npassword_file = {:?}\n{}\n\
             [[environment]]\nname = \"production\"\ntag = \"production\"\n\
             approvers = [\"group:release-managers\"]\nrequired_approvals = 1\n",
            path_str(&docker_config),
            path_str(&password_file),
            principals_toml(),
        );
        Config { _dir: dir, text }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn basic() -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    format!("Basic {b}")
}

/// Requests `repo:source` to production as alice.
async fn request(alice: &mut Client, repo: &str, source: &str) -> Result<String, tonic::Status> {
    alice
        .request_promotion(request_to(repo, source, "production"))
        .await
        .map(|r| r.into_inner().digest)
}

fn with_authorization(requests: &[Seen]) -> Vec<&Seen> {
    requests
        .iter()
        .filter(|r| r.authorization().is_some())
        .collect()
}

/// Point 1: a token realm over plain HTTP, for a registry reached over HTTPS,
/// gets no request at all, and the caller learns which realm broke which
/// rule. An HTTPS realm on another host still works (registries such as
/// Docker Hub keep their token service elsewhere), which also proves the TLS
/// set-up of the test is sound.
#[tokio::test]
async fn credentials_go_to_a_token_realm_only_over_https() {
    let ca = TestCa::new();
    let token_answer = Reply::json(r#"{"token":"good-token","expires_in":300}"#);
    let plain_realm = {
        let answer = token_answer.clone();
        Hostile::start(move |_| answer.clone()).await
    };
    let tls_realm = {
        let answer = token_answer.clone();
        Hostile::start_tls(&ca, move |r| {
            if r.authorization() == Some(basic().as_str()) {
                answer.clone()
            } else {
                Reply::status(401)
            }
        })
        .await
    };
    let manifest = manifest_json("realm");
    let (plain, tls) = (plain_realm.url(), tls_realm.url());
    let registry = Hostile::start_tls(&ca, move |r| {
        if r.authorization() == Some("Bearer good-token") {
            return Reply::manifest(&manifest);
        }
        // Each repository names a different realm.
        let realm = if r.path().starts_with("/v2/plain/") {
            format!("{plain}/token")
        } else {
            format!("{tls}/token")
        };
        Reply::status(401).header(
            "www-authenticate",
            &format!(r#"Bearer realm="{realm}",service="hostile""#),
        )
    })
    .await;
    let config = Config::new(&registry.host, false);
    let server = TestServer::start_with_env(
        &config.text,
        &[("SSL_CERT_FILE", ca.ca_file.clone().into_os_string())],
    );
    let mut alice = server.client("alice").await;

    let e = request(&mut alice, &format!("{}/plain", registry.host), "v1")
        .await
        .expect_err("a plain-HTTP realm must be refused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let realm = format!("{}/token", plain_realm.url());
    assert!(e.message().contains(&realm), "{}", e.message());
    assert!(
        e.message().contains("must use https unless"),
        "{}",
        e.message()
    );
    assert!(
        plain_realm.requests().is_empty(),
        "the refused realm was contacted: {:?}",
        plain_realm.requests()
    );

    let digest = request(&mut alice, &format!("{}/tls", registry.host), "v1")
        .await
        .expect("an HTTPS realm on another host is allowed");
    assert_eq!(digest, digest_of(&manifest_json("realm")));
    let asked = tls_realm.requests();
    assert_eq!(with_authorization(&asked).len(), 1, "{asked:?}");
    let target = &asked[0].target;
    assert!(target.contains("service=hostile"), "{target}");
    assert!(target.contains("scope=repository%3Atls%3Apull"), "{target}");
    // prodgate sends the password to the registry only when asked for Basic.
    assert!(
        registry
            .requests()
            .iter()
            .all(|r| r.authorization() != Some(basic().as_str())),
        "{:?}",
        registry.requests()
    );
    assert!(!server.log().contains(PASSWORD), "the password was logged");
}

/// Point 1: a manifest request redirected to another server is refused and
/// that server sees nothing; `localhost` on the registry's own port is
/// another host too (origins compare as written). A redirect within the
/// registry's own origin is still followed.
#[tokio::test]
async fn redirects_off_the_registry_are_refused() {
    let manifest = manifest_json("redirect");
    let elsewhere = {
        let manifest = manifest.clone();
        Hostile::start(move |_| Reply::manifest(&manifest)).await
    };
    let other = elsewhere.url();
    // The registry learns its own port only once bound: it reads it from the
    // Host header of each request.
    let registry = {
        let (manifest, other) = (manifest.clone(), other.clone());
        let near_by_digest = format!("/v2/near/manifests/{}", digest_of(&manifest));
        Hostile::start(move |r| {
            let own = r.host().unwrap_or_default().to_owned();
            let port = own.rsplit(':').next().unwrap_or_default().to_owned();
            match r.path() {
                "/v2/away/manifests/v1" => {
                    Reply::status(307).header("location", &format!("{other}/v2/away/manifests/v1"))
                }
                "/v2/alias/manifests/v1" => Reply::status(302).header(
                    "location",
                    &format!("http://localhost:{port}/v2/alias/manifests/v1"),
                ),
                "/v2/near/manifests/v1" => {
                    Reply::status(307).header("location", "/v2/near/manifests/blob-store")
                }
                "/v2/near/manifests/blob-store" => Reply::manifest(&manifest),
                // The digest the tag's HEAD named, fetched next.
                p if p == near_by_digest => Reply::manifest(&manifest),
                _ => Reply::status(404),
            }
        })
        .await
    };
    let config = Config::new(&registry.host, true);
    let server = TestServer::start(&config.text);
    let mut alice = server.client("alice").await;

    let e = request(&mut alice, &format!("{}/away", registry.host), "v1")
        .await
        .expect_err("a redirect to another server must be refused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("{other}/v2/away/manifests/v1")),
        "{}",
        e.message()
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the other server was contacted: {:?}",
        elsewhere.requests()
    );

    let e = request(&mut alice, &format!("{}/alias", registry.host), "v1")
        .await
        .expect_err("localhost is another host than 127.0.0.1");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("http://localhost:"), "{}", e.message());
    let localhost: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.host().is_some_and(|h| h.starts_with("localhost")))
        .collect();
    assert!(localhost.is_empty(), "{localhost:?}");

    let digest = request(&mut alice, &format!("{}/near", registry.host), "v1")
        .await
        .expect("a redirect within the registry is followed");
    assert_eq!(digest, digest_of(&manifest));
}

/// Point 2: manifests over 4 MiB are refused, whether the registry announces
/// the size or streams the body without one, and prodgate stops reading
/// right after the limit. A manifest of exactly 4 MiB is accepted.
#[tokio::test]
async fn manifests_over_four_mib_are_refused_without_reading_them() {
    let edge = {
        // Valid JSON padded to exactly the limit.
        let mut m = manifest_json("edge");
        let pad = usize::try_from(4 * MIB).expect("fits") - m.len();
        m.extend(std::iter::repeat_n(b' ', pad));
        m
    };
    let registry = {
        let edge = edge.clone();
        let edge_by_digest = format!("/v2/edge/manifests/{}", digest_of(&edge));
        Hostile::start(move |r| {
            let generated = |sized| Reply::Generated {
                status: 200,
                headers: vec![(
                    "content-type".into(),
                    support::hostile::MANIFEST_TYPE.into(),
                )],
                len: if sized { 100 * MIB } else { 256 * MIB },
                sized,
            };
            // The tags answer HEAD without a digest, so prodgate GETs them;
            // `edge` names its digest, which is fetched next.
            match r.path() {
                "/v2/announced/manifests/v1" => generated(true),
                "/v2/streamed/manifests/v1" => generated(false),
                "/v2/edge/manifests/v1" => Reply::manifest(&edge),
                p if p == edge_by_digest => Reply::manifest(&edge),
                _ => Reply::status(404),
            }
        })
        .await
    };
    let config = Config::new(&registry.host, true);
    let server = TestServer::start(&config.text);
    let mut alice = server.client("alice").await;

    let e = request(&mut alice, &format!("{}/announced", registry.host), "v1")
        .await
        .expect_err("a 100 MiB manifest must be refused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains("is 104857600 bytes, over the 4 MiB limit"),
        "{}",
        e.message()
    );
    let announced = registry.generated_bytes();

    let e = request(&mut alice, &format!("{}/streamed", registry.host), "v1")
        .await
        .expect_err("a streamed 100 MiB manifest must be refused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(
            "is more than 4194304 bytes (sent without a Content-Length), over the 4 MiB limit"
        ),
        "{}",
        e.message()
    );
    let streamed = registry.generated_bytes() - announced;
    // prodgate reads 4 MiB and one chunk; the rest of what the server got
    // out before the connection closed sat in socket buffers (about 12 MiB
    // here), far below what it offered.
    assert!(
        announced < 64 * MIB,
        "{announced} bytes taken of a refused body"
    );
    assert!(
        streamed < 64 * MIB,
        "{streamed} bytes taken of a refused body"
    );

    let digest = request(&mut alice, &format!("{}/edge", registry.host), "v1")
        .await
        .expect("exactly 4 MiB is within the limit");
    assert_eq!(digest, digest_of(&edge));
}

/// Points 2 and 4: an error body or a token answer of any size is read only
/// up to a bound, and what reaches the caller's message is short.
#[tokio::test]
async fn error_bodies_and_token_answers_are_bounded() {
    let huge = |status| Reply::Generated {
        status,
        headers: Vec::new(),
        len: 256 * MIB,
        sized: false,
    };
    let realm = Hostile::start(move |_| huge(200)).await;
    let realm_url = format!("{}/token", realm.url());
    let registry = Hostile::start(move |r| match r.path() {
        // A HEAD without a digest: prodgate GETs the tag, and the GET's
        // error body is what must be bounded.
        "/v2/noisy/manifests/v1" if r.method == "HEAD" => Reply::status(200),
        "/v2/noisy/manifests/v1" => huge(400),
        _ => Reply::status(401).header(
            "www-authenticate",
            &format!(r#"Bearer realm="{realm_url}",service="hostile""#),
        ),
    })
    .await;
    let config = Config::new(&registry.host, true);
    let server = TestServer::start(&config.text);
    let mut alice = server.client("alice").await;

    let e = request(&mut alice, &format!("{}/noisy", registry.host), "v1")
        .await
        .expect_err("a 400 is an error");
    assert!(e.message().len() < 2048, "{} bytes", e.message().len());
    assert!(
        e.message().contains("(cut to 512 bytes)"),
        "{}",
        e.message()
    );
    let noisy = registry.generated_bytes();
    assert!(noisy < 64 * MIB, "{noisy} bytes of an error body read");

    let e = request(&mut alice, &format!("{}/tokened", registry.host), "v1")
        .await
        .expect_err("a token answer without end is an error");
    assert!(
        e.message().contains("sent an answer over 65536 bytes"),
        "{}",
        e.message()
    );
    let taken = realm.generated_bytes();
    assert!(taken < 64 * MIB, "{taken} bytes of a token answer read");
}
