//! What orchestrators and incident reviews rely on: watching a promotion
//! instead of polling, and asking what an environment ran at a moment.

mod support;

use prodgate::pb::{
    GetDeployedRequest, PromotionState, RequestPromotionRequest, WatchPromotionRequest,
};
use support::{World, approve};
use tonic::Code;

fn request(repo: &str) -> RequestPromotionRequest {
    RequestPromotionRequest {
        repository: repo.to_owned(),
        source: "staging".into(),
        environment: "production".into(),
        reason: "operators".into(),
        request_id: String::new(),
        break_glass: false,
    }
}

#[tokio::test]
async fn watch_streams_every_state_until_terminal() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request(&w.repo("app")))
        .await
        .expect("request")
        .into_inner();
    let mut stream = alice
        .watch_promotion(WatchPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("stream")
        .expect("current state");
    assert_eq!(first.state, PromotionState::PendingApproval as i32);
    w.server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve");
    let mut states = vec![first.state];
    while let Some(p) = stream.message().await.expect("stream") {
        states.push(p.state);
    }
    assert_eq!(
        states,
        [
            PromotionState::PendingApproval as i32,
            PromotionState::Approved as i32,
            PromotionState::Promoted as i32
        ]
    );
    // A terminal promotion sends its state and ends.
    let mut again = alice
        .watch_promotion(WatchPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let only = again.message().await.expect("stream").expect("state");
    assert_eq!(only.state, PromotionState::Promoted as i32);
    assert!(again.message().await.expect("stream").is_none());
    let e = alice
        .watch_promotion(WatchPromotionRequest {
            promotion_id: "777".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn get_deployed_answers_for_any_moment() {
    let w = World::start().await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;
    let deployed = |at| GetDeployedRequest {
        repository: repo.clone(),
        environment: "production".into(),
        at,
    };
    let e = alice
        .get_deployed(deployed(None))
        .await
        .expect_err("nothing yet");
    assert_eq!(e.code(), Code::NotFound);

    let mut promoted = Vec::new();
    for seed in [1, 2] {
        let digest = w
            .registry
            .push_image("app", Some("staging"), 1024, seed)
            .await;
        let p = alice
            .request_promotion(request(&repo))
            .await
            .expect("request")
            .into_inner();
        let done = bob
            .approve(approve(&p.id))
            .await
            .expect("approve")
            .into_inner();
        assert_eq!(done.state, PromotionState::Promoted as i32);
        promoted.push((digest, done));
    }
    let (a, pa) = &promoted[0];
    let (b, pb) = &promoted[1];
    let before = pa.created_at;
    let between = pb.created_at;
    let e = alice
        .get_deployed(deployed(before))
        .await
        .expect_err("before the first move");
    assert_eq!(e.code(), Code::NotFound);
    let then = alice
        .get_deployed(deployed(between))
        .await
        .expect("between")
        .into_inner();
    assert_eq!(&then.digest, a);
    assert_eq!(then.promotion_id, pa.id);
    assert_eq!(then.since, pa.promoted_at);
    let now = alice
        .get_deployed(deployed(None))
        .await
        .expect("now")
        .into_inner();
    assert_eq!(&now.digest, b);
    assert_eq!(now.promotion_id, pb.id);

    for bad in [
        GetDeployedRequest {
            environment: "moon".into(),
            ..deployed(None)
        },
        GetDeployedRequest {
            repository: "no-host".into(),
            ..deployed(None)
        },
        GetDeployedRequest {
            environment: String::new(),
            ..deployed(None)
        },
    ] {
        let e = alice.get_deployed(bad).await.expect_err("invalid");
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}

mod operated {
    //! Metrics, registry credentials, TLS and webhooks: each starts its own
    //! server with the extra configuration it needs.

    use super::request;
    use crate::support::approve;
    use crate::support::registry::TestRegistry;
    use crate::support::server::{Bearer, TestServer, standard_config, token};
    use base64::Engine;
    use prodgate::pb::PromotionState;
    use prodgate::pb::promotion_service_client::PromotionServiceClient;
    use std::collections::HashMap;
    use tonic::Code;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    }

    /// `name{labels} value` lines of a Prometheus text exposition.
    #[tokio::test]
    async fn metrics_describe_a_flow() {
        let registry = TestRegistry::start().await;
        registry.push_image("app", Some("staging"), 1024, 1).await;
        let server = TestServer::start(&format!(
            "metrics_listen = \"127.0.0.1:0\"\n{}",
            standard_config(&registry.host)
        ));
        let repo = format!("{}/app", registry.host);
        let mut alice = server.client("alice").await;
        let p = alice
            .request_promotion(request(&repo))
            .await
            .expect("request")
            .into_inner();
        let e = alice
            .approve(approve(&p.id))
            .await
            .expect_err("not an approver");
        assert_eq!(e.code(), Code::PermissionDenied);
        let done = server
            .client("bob")
            .await
            .approve(approve(&p.id))
            .await
            .expect("approve")
            .into_inner();
        assert_eq!(done.state, PromotionState::Promoted as i32);
        // A new image: production already carries the first.
        registry.push_image("app", Some("staging"), 1024, 2).await;
        alice
            .request_promotion(request(&repo))
            .await
            .expect("second, left pending");

        let body = crate::support::scrape(server.metrics_addr()).await;
        let m = crate::support::parse_metrics(&body);
        let get = |k: &str| {
            *m.get(k)
                .unwrap_or_else(|| panic!("{k} missing in:\n{body}"))
        };
        assert_eq!(
            get(r#"prodgate_rpcs_total{code="OK",method="PromotionService/RequestPromotion"}"#),
            2.0
        );
        assert_eq!(
            get(
                r#"prodgate_rpcs_total{code="PERMISSION_DENIED",method="PromotionService/Approve"}"#
            ),
            1.0
        );
        assert_eq!(
            get(r#"prodgate_rpcs_total{code="OK",method="PromotionService/Approve"}"#),
            1.0
        );
        assert_eq!(
            get(r#"prodgate_promotions_total{environment="production",state="PROMOTED"}"#),
            1.0
        );
        assert_eq!(
            get(r#"prodgate_apply_duration_seconds_count{environment="production"}"#),
            1.0
        );
        assert_eq!(
            get(r#"prodgate_registry_requests_total{operation="PUT manifest",outcome="201"}"#),
            1.0
        );
        assert_eq!(
            get(r#"prodgate_pending_approvals{environment="production"}"#),
            1.0
        );
        // The start's POLICY_CHANGED entry and four promotion entries.
        assert_eq!(get("prodgate_audit_entries"), 5.0);
        // Five audited changes, each flushed before it was acknowledged.
        assert_eq!(get("prodgate_store_commits_total"), 5.0);
        let flushes = get("prodgate_store_flushes_total");
        assert!((1.0..=5.0).contains(&flushes), "{flushes}");
        assert_eq!(
            get(r#"prodgate_config_reloads_total{result="success"}"#),
            0.0
        );
    }

    #[tokio::test]
    async fn basic_auth_registries_with_password_file_or_docker_config() {
        let password = "s3cret-registry-pass";
        let registry = TestRegistry::start_with_basic_auth("ci", password).await;
        let digest = registry.push_image("app", Some("staging"), 1024, 1).await;
        let repo = format!("{}/app", registry.host);
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = dir.path().join("registry-password");
        std::fs::write(&password_file, format!("{password}\n")).expect("write password");
        let docker_config = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{password}"));
        std::fs::write(
            &docker_config,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host),
        )
        .expect("write docker config");
        let base = standard_config(&registry.host);
        let with_file = base.replace(
            "insecure = true\n",
            &format!(
                "insecure = true\nusername = \"ci\"\npassword_file = {:?}\n",
                password_file.to_str().expect("utf-8 path")
            ),
        );
        let with_docker = format!(
            "docker_config = {:?}\n{base}",
            docker_config.to_str().expect("utf-8 path")
        );
        for config in [with_file, with_docker] {
            let server = TestServer::start(&config);
            let mut alice = server.client("alice").await;
            let p = alice
                .request_promotion(request(&repo))
                .await
                .expect("request through basic auth")
                .into_inner();
            assert_eq!(p.digest, digest);
            let done = server
                .client("bob")
                .await
                .approve(approve(&p.id))
                .await
                .expect("approve")
                .into_inner();
            assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
            assert!(!server.log().contains(password), "the password was logged");
            assert!(!server.log().contains(&auth), "the credentials were logged");
        }
        // Without credentials the registry refuses prodgate, and the caller is told why.
        let empty = tempfile::tempdir().expect("tempdir");
        std::fs::write(empty.path().join("none.json"), "{}").expect("write empty config");
        let anonymous = TestServer::start(&format!(
            "docker_config = {:?}\n{}",
            empty.path().join("none.json").to_str().expect("utf-8"),
            standard_config(&registry.host)
        ));
        let e = anonymous
            .client("alice")
            .await
            .request_promotion(request(&repo))
            .await
            .expect_err("no credentials");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("credentials"), "{}", e.message());
    }

    // Multi-threaded: terminate() blocks one thread while the clients'
    // connection tasks answer the server's goodbye on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_logs_carry_a_span_per_rpc() {
        let registry = TestRegistry::start().await;
        registry.push_image("app", Some("staging"), 1024, 1).await;
        let mut server = TestServer::start(&format!(
            "log_format = \"json\"\n{}",
            standard_config(&registry.host)
        ));
        let p = server
            .client("alice")
            .await
            .request_promotion(request(&format!("{}/app", registry.host)))
            .await
            .expect("request")
            .into_inner();
        let e = server
            .client("mallory")
            .await
            .approve(approve(&p.id))
            .await
            .expect_err("not an approver");
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(server.terminate(), Some(0));
        let lines: Vec<serde_json::Value> = server
            .log()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let rpc = |method: &str| {
            lines
                .iter()
                .find(|l| l["message"] == "rpc" && l["span"]["method"] == method)
                .unwrap_or_else(|| panic!("no rpc line for {method}"))
                .clone()
        };
        let req = rpc("PromotionService/RequestPromotion");
        assert_eq!(req["span"]["principal"], "alice");
        assert_eq!(req["code"], "OK");
        let denied = rpc("PromotionService/Approve");
        assert_eq!(denied["span"]["principal"], "mallory");
        assert_eq!(
            denied["span"]["promotion"],
            p.id.parse::<u64>().expect("numeric id")
        );
        assert_eq!(denied["code"], "PERMISSION_DENIED");
    }

    struct Pki {
        ca_pem: String,
        server: (String, String),
        client: (String, String),
        stranger: (String, String),
    }

    fn pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "prodgate test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf = |names: Vec<String>, cn: &str, issuer: &Issuer<'_, &KeyPair>| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, issuer).expect("leaf cert");
            (cert.pem(), key.serialize_pem())
        };
        // A certificate from a CA the server does not trust.
        let other_key = KeyPair::generate().expect("other ca key");
        let other_issuer = Issuer::from_params(&ca_params, &other_key);
        Pki {
            ca_pem: ca.pem(),
            server: leaf(
                vec!["localhost".into(), "127.0.0.1".into()],
                "prodgate",
                &issuer,
            ),
            client: leaf(vec![], "deploy-bot", &issuer),
            stranger: leaf(vec![], "deploy-bot", &other_issuer),
        }
    }

    async fn tls_channel(
        addr: &str,
        ca: &str,
        identity: Option<&(String, String)>,
    ) -> Result<Channel, tonic::transport::Error> {
        prodgate::server::install_crypto_provider();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)?
            .connect()
            .await
    }

    #[tokio::test]
    async fn tls_and_client_certificates() {
        let registry = TestRegistry::start().await;
        registry.push_image("app", Some("staging"), 1024, 1).await;
        let repo = format!("{}/app", registry.host);
        let pki = pki();
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write pem");
            p.to_str().expect("utf-8").to_owned()
        };
        let (cert, key, ca) = (
            write("server.pem", &pki.server.0),
            write("server.key", &pki.server.1),
            write("ca.pem", &pki.ca_pem),
        );
        let config = format!(
            "{}\n[[principal]]\nname = \"deploy-bot\"\ncertificate_cn = \"deploy-bot\"\ngroups = []\n\n[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\n",
            standard_config(&registry.host)
        );
        let server = TestServer::start(&config);

        // The certificate alone identifies the caller.
        let channel = tls_channel(&server.addr, &pki.ca_pem, Some(&pki.client))
            .await
            .expect("mTLS connect");
        let mut bot = PromotionServiceClient::new(channel.clone());
        let p = bot
            .request_promotion(request(&repo))
            .await
            .expect("request as the certificate's principal")
            .into_inner();
        assert_eq!(p.requested_by, "deploy-bot");
        // A token sent over the same connection takes precedence.
        let mut bob =
            PromotionServiceClient::with_interceptor(channel, Bearer::token(&token("bob")));
        let done = bob
            .approve(approve(&p.id))
            .await
            .expect("approve as bob")
            .into_inner();
        assert_eq!(done.approvals[0].approver, "bob");

        // No client certificate, or one from another CA: refused.
        for identity in [None, Some(&pki.stranger)] {
            let refused = match tls_channel(&server.addr, &pki.ca_pem, identity).await {
                Err(_) => true,
                Ok(ch) => PromotionServiceClient::new(ch)
                    .request_promotion(request(&repo))
                    .await
                    .is_err(),
            };
            assert!(
                refused,
                "a client without a trusted certificate got through"
            );
        }
        // Plain HTTP to a TLS port does not work either.
        let plain = Channel::from_shared(format!("http://{}", server.addr))
            .expect("uri")
            .connect()
            .await;
        if let Ok(ch) = plain {
            assert!(
                PromotionServiceClient::new(ch)
                    .request_promotion(request(&repo))
                    .await
                    .is_err()
            );
        }
    }

    #[tokio::test]
    async fn webhooks_get_events_and_a_dead_one_changes_nothing() {
        use axum::{Router, routing::post};
        use tokio::sync::mpsc;
        let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
        let app = Router::new().route(
            "/hook",
            post(move |body: String| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(serde_json::from_str(&body).expect("json body"));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let hook = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });

        let registry = TestRegistry::start().await;
        let digest = registry.push_image("app", Some("staging"), 1024, 1).await;
        let dead = format!("http://127.0.0.1:{}/gone", free_port());
        let config = format!(
            "{}\n[[notify]]\nurl = \"http://{hook}/hook\"\nevents = [\"requested\", \"approved\", \"promoted\", \"rejected\", \"failed\"]\n\n[[notify]]\nurl = \"{dead}\"\nevents = [\"requested\", \"approved\", \"promoted\"]\n",
            standard_config(&registry.host)
        );
        let server = TestServer::start(&config);
        let repo = format!("{}/app", registry.host);
        let p = server
            .client("alice")
            .await
            .request_promotion(request(&repo))
            .await
            .expect("request")
            .into_inner();
        let done = server
            .client("bob")
            .await
            .approve(approve(&p.id))
            .await
            .expect("approve")
            .into_inner();
        assert_eq!(done.state, PromotionState::Promoted as i32);
        let mut events = Vec::new();
        for _ in 0..3 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
                .await
                .expect("notification in time")
                .expect("receiver open");
            assert_eq!(n["promotion_id"], p.id.as_str());
            assert_eq!(n["digest"], digest.as_str());
            events.push(n["event"].as_str().expect("event").to_owned());
        }
        assert_eq!(events, ["requested", "approved", "promoted"]);
    }

    fn unix_now() -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970");
        i64::try_from(since.as_secs()).expect("seconds fit")
    }

    /// Each delivery is signed with the webhook's secret (as GitHub does and
    /// as Standard Webhooks does) and names its event, a delivery id and the
    /// audit entry it reports; `superseded` is an event.
    #[tokio::test]
    async fn webhooks_are_signed_and_name_their_audit_entry() {
        use axum::{Router, http::HeaderMap, routing::post};
        use tokio::sync::mpsc;
        let (tx, mut rx) = mpsc::unbounded_channel::<(HeaderMap, String)>();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((headers, body));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let hook = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });

        let registry = TestRegistry::start().await;
        registry.push_image("app", Some("staging"), 1024, 1).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("hook.secret");
        std::fs::write(&secret_file, "s3cret-key\n").expect("write secret");
        let config = format!(
            "{}\n[[notify]]\nurl = \"http://{hook}/hook\"\nevents = [\"promoted\", \"superseded\"]\nsecret_file = {:?}\n",
            standard_config(&registry.host),
            secret_file.to_str().expect("utf-8 path"),
        );
        let server = TestServer::start(&config);
        let repo = format!("{}/app", registry.host);
        let mut alice = server.client("alice").await;
        let older = alice
            .request_promotion(request(&repo))
            .await
            .expect("request")
            .into_inner();
        registry.push_image("app", Some("staging"), 1024, 2).await;
        let newer = alice
            .request_promotion(request(&repo))
            .await
            .expect("request")
            .into_inner();
        server
            .client("bob")
            .await
            .approve(approve(&newer.id))
            .await
            .expect("approve");
        let entries = crate::support::history(&mut alice, Default::default()).await;
        let mut deliveries = Vec::new();
        for _ in 0..2 {
            let (headers, body) =
                tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
                    .await
                    .expect("notification in time")
                    .expect("receiver open");
            // The receiver's check: HMAC-SHA256 of the raw body, the trailing
            // newline of the secret file not part of the key.
            let want = crate::support::webhook::github_signature(b"s3cret-key", &body);
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("no {name} header"))
                    .to_owned()
            };
            assert_eq!(header("x-prodgate-signature-256"), want);
            // Standard Webhooks: the delivery id, the attempt's time in Unix
            // seconds, and a signature over both and the body.
            let id = header("webhook-id");
            assert_eq!(id, header("x-prodgate-delivery"));
            let timestamp = header("webhook-timestamp");
            let sent: i64 = timestamp.parse().expect("integer seconds");
            assert!(
                (unix_now() - sent).abs() <= 5,
                "webhook-timestamp {sent} is not now ({})",
                unix_now()
            );
            assert_eq!(
                header("webhook-signature"),
                crate::support::webhook::standard_signature(b"s3cret-key", &id, &timestamp, &body)
            );
            let n: serde_json::Value = serde_json::from_str(&body).expect("json body");
            assert_eq!(
                header("x-prodgate-event"),
                n["event"].as_str().expect("event")
            );
            let entry = entries
                .iter()
                .find(|e| Some(e.sequence) == n["sequence"].as_u64())
                .unwrap_or_else(|| panic!("no audit entry {}", n["sequence"]));
            assert_eq!(n["entry_hash"], entry.hash.as_str());
            assert_eq!(n["promotion_id"], entry.promotion_id.as_str());
            deliveries.push((header("x-prodgate-delivery"), n));
        }
        let events: Vec<_> = deliveries
            .iter()
            .map(|(_, n)| {
                (
                    n["event"].as_str().unwrap_or_default(),
                    n["promotion_id"].clone(),
                )
            })
            .collect();
        assert_eq!(
            events,
            [
                ("promoted", serde_json::json!(newer.id)),
                ("superseded", serde_json::json!(older.id)),
            ]
        );
        assert_eq!(deliveries[1].1["superseded_by"], newer.id.as_str());
        assert_ne!(deliveries[0].0, deliveries[1].0, "delivery ids are unique");
        assert!(
            !server.log().contains("s3cret-key"),
            "the secret reached the log"
        );
    }

    /// A webhook that answers with a redirect (302 or 307) is not followed:
    /// the address it names gets nothing, and the answer counts as a failed
    /// delivery, retried with the same id and signed anew for each attempt.
    #[tokio::test]
    async fn webhook_redirects_are_not_followed_but_retried() {
        use axum::{
            Router,
            http::{HeaderMap, StatusCode, Uri, header::LOCATION},
            routing::post,
        };
        use tokio::sync::mpsc;
        // The address the redirects point at: it must never hear from prodgate.
        let (landed_tx, mut landed) = mpsc::unbounded_channel::<String>();
        let elsewhere = Router::new().fallback(move |uri: Uri| {
            let tx = landed_tx.clone();
            async move {
                let _ = tx.send(uri.to_string());
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the redirect target");
        let target = format!("http://{}/landed", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, elsewhere).await });

        let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, HeaderMap, String)>();
        let redirect = |path: &'static str, status: StatusCode| {
            let tx = tx.clone();
            let target = target.clone();
            post(move |headers: HeaderMap, body: String| {
                let _ = tx.send((path, headers, body));
                let target = target.clone();
                async move { (status, [(LOCATION, target)]) }
            })
        };
        let app = Router::new()
            .route("/found", redirect("/found", StatusCode::FOUND))
            .route(
                "/temporary",
                redirect("/temporary", StatusCode::TEMPORARY_REDIRECT),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let hook = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });

        let registry = TestRegistry::start().await;
        registry.push_image("app", Some("staging"), 1024, 1).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("hook.secret");
        std::fs::write(&secret_file, "s3cret-key\n").expect("write secret");
        let secret = secret_file.to_str().expect("utf-8 path");
        let config = format!(
            "{}\n[[notify]]\nurl = \"http://{hook}/found\"\nevents = [\"requested\"]\nsecret_file = {secret:?}\n\n\
             [[notify]]\nurl = \"http://{hook}/temporary\"\nevents = [\"requested\"]\nsecret_file = {secret:?}\n",
            standard_config(&registry.host),
        );
        let server = TestServer::start(&config);
        server
            .client("alice")
            .await
            .request_promotion(request(&format!("{}/app", registry.host)))
            .await
            .expect("request");

        // prodgate makes 5 attempts per delivery, about 3 s apart in all.
        let mut attempts: HashMap<&str, Vec<(HeaderMap, String)>> = HashMap::new();
        while attempts.values().map(Vec::len).sum::<usize>() < 10 {
            let (path, headers, body) =
                tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
                    .await
                    .unwrap_or_else(|_| panic!("too few attempts: {attempts:?}"))
                    .expect("receiver open");
            attempts.entry(path).or_default().push((headers, body));
        }
        for path in ["/found", "/temporary"] {
            let seen = &attempts[path];
            assert_eq!(seen.len(), 5, "{path}: every attempt, no more");
            let header = |h: &HeaderMap, name: &str| {
                h.get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("{path}: an attempt without {name}"))
                    .to_owned()
            };
            let id = header(&seen[0].0, "webhook-id");
            for (i, (headers, body)) in seen.iter().enumerate() {
                assert_eq!(
                    header(headers, "webhook-id"),
                    id,
                    "{path}: one id for every retry"
                );
                assert_eq!(header(headers, "x-prodgate-delivery"), id);
                let timestamp = header(headers, "webhook-timestamp");
                assert_eq!(
                    header(headers, "webhook-signature"),
                    crate::support::webhook::standard_signature(
                        b"s3cret-key",
                        &id,
                        &timestamp,
                        body
                    ),
                    "{path}: attempt {i} signed with its own timestamp"
                );
            }
            let first: i64 = header(&seen[0].0, "webhook-timestamp")
                .parse()
                .expect("seconds");
            let last: i64 = header(&seen[4].0, "webhook-timestamp")
                .parse()
                .expect("seconds");
            assert!(last - first >= 2, "{path}: timestamps {first}..{last}");
        }
        // Any followed redirect reaches its target before prodgate sees
        // the answer and retries, so by now it would have arrived.
        assert!(
            landed.try_recv().is_err(),
            "a redirect was followed to {target}"
        );
    }
}
