//! The transport against a real `prodgate serve`: idle and half-open
//! connections are closed and capped, accept errors do not spin, made-up
//! paths get no metrics labels of their own, reflection speaks v1alpha,
//! over-limit requests are RESOURCE_EXHAUSTED, /metrics has build and
//! process metrics and a pending-approvals sample for every environment,
//! cancelled and timed-out calls are counted (streams when they end), and
//! `client_auth = "optional"` lets token callers share the mTLS listener.

mod support;

use http::uri::PathAndQuery;
use prost::Message;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::server::{TestServer, standard_config, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// Nothing listens here: these tests never need the registry to answer.
const NO_REGISTRY: &str = "127.0.0.1:9";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// CPU time (user + system) process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Reads until the server closes the connection; fails after `limit`.
async fn closed_by_server(mut s: impl tokio::io::AsyncRead + Unpin, limit: Duration) -> Instant {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("the server kept an idle connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
            // The server's SETTINGS, if it sent any: keep waiting.
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP/2 frame: type, flags, payload.
async fn read_frame(s: &mut TcpStream) -> (u8, u8, Vec<u8>) {
    let mut header = [0u8; 9];
    s.read_exact(&mut header).await.expect("frame header");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.expect("frame payload");
    (header[3], header[4], payload)
}

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

async fn health_check(server: &TestServer) -> Result<i32, tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn idle_connections_are_closed_and_capped() {
    let max_connections = 4;
    let server = TestServer::start(&format!(
        "max_connections = {max_connections}\nhandshake_timeout = \"1s\"\n{}",
        standard_config(NO_REGISTRY)
    ));
    let before = open_fds(server.pid());

    // A well-behaved client that opens a connection and makes no call yet:
    // it sent the preface, so it must outlive the handshake timeout.
    let mut good = TcpStream::connect(&server.addr).await.expect("connect");
    good.write_all(PREFACE).await.expect("preface");
    good.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .await
        .expect("empty SETTINGS");
    // Silent connections, and one that stops halfway through the preface.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    let mut half = TcpStream::connect(&server.addr).await.expect("connect");
    half.write_all(&PREFACE[..16])
        .await
        .expect("half a preface");
    idle.push(half);
    let limit = Duration::from_secs(30);
    let watchers: Vec<_> = idle
        .into_iter()
        .map(|s| tokio::spawn(closed_by_server(s, limit)))
        .collect();
    // The cap holds however many clients connect: the rest wait in the
    // listen backlog, where they cost the server no descriptor.
    let during = open_fds(server.pid());
    assert!(
        during <= before + max_connections + 2,
        "{before} descriptors before, {during} with 12 idle connections"
    );

    // A real client behind them is served once idle ones have been closed.
    let status = health_check(&server).await.expect("health check");
    let served = Instant::now();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut closed = Vec::new();
    for w in watchers {
        closed.push(w.await.expect("watcher"));
    }
    let first_closed = closed.iter().min().expect("some");
    assert!(
        served > *first_closed,
        "the client was served before any idle connection was closed: no cap"
    );

    // The good connection is still open, past its handshake deadline, and
    // the server advertised its stream limit.
    let advertised = loop {
        let (kind, flags, payload) = read_frame(&mut good).await;
        if kind == SETTINGS && flags & ACK == 0 {
            break payload
                .chunks(6)
                .find(|p| u16::from_be_bytes([p[0], p[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
                .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
        }
    };
    assert_eq!(advertised, Some(prodgate::server::MAX_CONCURRENT_STREAMS));
    good.write_all(&[0, 0, 8, PING, 0, 0, 0, 0, 0])
        .await
        .expect("PING");
    good.write_all(b"prodgate").await.expect("PING payload");
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (kind, flags, payload) = read_frame(&mut good).await;
            if kind == PING && flags & ACK != 0 {
                return payload;
            }
        }
    })
    .await
    .expect("the connection that sent the preface was kept");
    assert_eq!(pong, b"prodgate");
}

/// PEM of a CA, and of a server certificate it issued for localhost and
/// 127.0.0.1 with its key.
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn with_tls_the_deadline_covers_the_handshake_and_the_preface() {
    use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::pem::PemObject};
    prodgate::server::install_crypto_provider();
    let (ca, cert, key) = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write pem");
        p.to_str().expect("utf-8").to_owned()
    };
    let (cert, key) = (write("server.pem", &cert), write("server.key", &key));
    let server = TestServer::start(&format!(
        "handshake_timeout = \"1s\"\n{}\n[tls]\ncert = {cert:?}\nkey = {key:?}\n",
        standard_config(NO_REGISTRY)
    ));

    // One client never starts the TLS handshake; another finishes it and
    // then sends nothing.
    let silent = TcpStream::connect(&server.addr).await.expect("connect");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("ca pem"))
        .expect("ca");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            TcpStream::connect(&server.addr).await.expect("connect"),
        )
        .await
        .expect("TLS handshake");
    let limit = Duration::from_secs(30);
    closed_by_server(silent, limit).await;
    closed_by_server(tls, limit).await;

    // A real client is served.
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                .domain_name("localhost"),
        )
        .expect("tls config")
        .connect()
        .await
        .expect("connect over TLS");
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health check over TLS")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn accept_errors_back_off_instead_of_spinning() {
    let server = TestServer::start(&format!(
        "handshake_timeout = \"3s\"\n{}",
        standard_config(NO_REGISTRY)
    ));
    let pid = server.pid();
    // Start-up (opening the store) is over once it answers: the CPU measured
    // below is the accept loop's.
    health_check(&server).await.expect("health check");
    // Leave the server a few descriptors: more clients than that make
    // accept fail with EMFILE until connections close.
    let allowed = open_fds(pid) + 4;
    let limited = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={allowed}:{allowed}"),
        ])
        .status()
        .expect("run prlimit");
    assert!(limited.success());
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    // Wait until the server holds every descriptor it may: from here on
    // accept fails until connections close (at the handshake timeout).
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) < allowed {
        assert!(
            Instant::now() < deadline,
            "the server never ran out of descriptors"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A loop retrying at once would burn a whole CPU second per second here.
    let (t0, cpu0) = (Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ticks = cpu_ticks(pid) - cpu0;
    let window = t0.elapsed();
    // Clock ticks are 1/100 s on Linux. Measured on a busy 2-core machine:
    // tonic's own accept loop 39 ticks in this second, the backoff 0 or 1.
    assert!(
        ticks < 15,
        "{ticks} ticks of CPU in {window:?} while out of descriptors"
    );
    let lines = server.log().matches("cannot accept connections").count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} accept-error lines in about a second:\n{}",
        server.log()
    );

    // Once the clients leave, the server serves again.
    drop(idle);
    let status = health_check(&server).await.expect("health check");
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

use support::{parse_metrics, scrape};

/// A call of `path` with `message` (as a protobuf `BytesValue`: any bytes
/// the server is asked to decode), optionally as `principal`; the status it
/// ends with.
async fn call_path(
    channel: &tonic::transport::Channel,
    path: &str,
    principal: Option<&str>,
    message: Vec<u8>,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut req = tonic::Request::new(tokio_stream::once(message));
    if let Some(p) = principal {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token(p)).parse().expect("ascii"),
        );
    }
    let path = PathAndQuery::try_from(path.to_owned()).expect("valid path");
    // Any method's request fits a stream of one message on the wire.
    let codec = tonic_prost::ProstCodec::<Vec<u8>, ()>::default();
    match grpc.streaming(req, path, codec).await {
        Err(status) => status.code(),
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status.code(),
            Ok(_) => Code::Ok,
        },
    }
}

#[tokio::test]
async fn made_up_paths_get_no_labels_of_their_own() {
    let server = TestServer::start(&format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}",
        standard_config(NO_REGISTRY)
    ));
    let metrics_addr = server.metrics_addr().to_owned();
    let channel = server.channel().await;
    let started = Instant::now();
    let n = 150;
    for i in 0..n {
        let made_up = format!("/made.up.Service{i}/Method{i}");
        let code = call_path(&channel, &made_up, None, Default::default()).await;
        assert_eq!(code, Code::Unimplemented, "{made_up}");
        // A real service, a made-up method, valid credentials.
        let nope = format!("/prodgate.v1.PromotionService/Nope{i}");
        let code = call_path(&channel, &nope, Some("alice"), Default::default()).await;
        assert_eq!(code, Code::Unimplemented, "{nope}");
        // A real method without credentials.
        let code = call_path(
            &channel,
            "/prodgate.v1.PromotionService/GetPromotion",
            None,
            Default::default(),
        )
        .await;
        assert_eq!(code, Code::Unauthenticated);
    }
    let elapsed = started.elapsed();

    let body = scrape(&metrics_addr).await;
    for fragment in ["made.up", "Service1", "Method1", "Nope"] {
        assert!(!body.contains(fragment), "{fragment} in:\n{body}");
    }
    let m = parse_metrics(&body);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing in:\n{body}"))
    };
    assert_eq!(
        get(r#"prodgate_rpcs_total{code="UNIMPLEMENTED",method="unknown"}"#),
        f64::from(2 * n)
    );
    assert_eq!(
        get(
            r#"prodgate_rpcs_total{code="UNAUTHENTICATED",method="PromotionService/GetPromotion"}"#
        ),
        f64::from(n)
    );

    // 450 refused calls; their log lines come at most one a second per
    // reason (unknown method, unauthenticated), counting those left out.
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("rpc refused")).collect();
    let bound = 2 * (elapsed.as_secs() as usize + 2);
    assert!(
        !lines.is_empty() && lines.len() <= bound,
        "{} refused-call lines in {elapsed:?}",
        lines.len()
    );
    assert!(lines.iter().any(|l| l.contains("suppressed")), "{lines:#?}");
}

#[tokio::test]
async fn reflection_lists_services_over_v1alpha_and_v1() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = TestServer::start(&standard_config(NO_REGISTRY));
    let want = ["prodgate.v1.PromotionService", "grpc.health.v1.Health"];

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a response")
        .expect("not empty");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a service list: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for w in want {
        assert!(names.iter().any(|n| n == w), "{w} not in {names:?}");
    }

    let mut v1 = v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let response = v1
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("v1 reflection is served")
        .into_inner()
        .message()
        .await
        .expect("a response")
        .expect("not empty");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a service list: {response:?}");
    };
    assert!(list.service.iter().any(|s| s.name == want[0]));
}

/// "/package.Service/Method" of every method in an encoded descriptor set,
/// with whether the client streams.
fn methods(encoded: &[u8]) -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(encoded).expect("descriptor set");
    let mut out = Vec::new();
    for file in set.file {
        for service in &file.service {
            for m in &service.method {
                out.push((
                    format!("/{}.{}/{}", file.package(), service.name(), m.name()),
                    m.client_streaming(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn oversized_requests_are_resource_exhausted_for_every_method() {
    let server = TestServer::start(&standard_config(NO_REGISTRY));
    let channel = server.channel().await;
    let huge = vec![b'x'; 3 * 1024 * 1024];
    let mut unary_request = Vec::new();
    for set in [
        prodgate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        unary_request.extend(methods(set));
    }
    assert!(unary_request.len() > 10, "{unary_request:?}");
    for (path, client_streaming) in unary_request {
        assert!(!client_streaming, "{path}: a new kind of method to cover");
        let code = call_path(&channel, &path, Some("alice"), huge.clone()).await;
        assert_eq!(code, Code::ResourceExhausted, "{path}");
    }
    // Normal-sized requests on the same channel still work.
    assert_eq!(
        call_path(
            &channel,
            "/prodgate.v1.PromotionService/GetPromotion",
            Some("alice"),
            Default::default()
        )
        .await,
        Code::InvalidArgument,
        "an empty id is decoded and refused by the handler"
    );
    let mut alice = server.client("alice").await;
    let e = alice
        .get_promotion(prodgate::pb::GetPromotionRequest {
            promotion_id: "12345".into(),
        })
        .await
        .expect_err("no such promotion");
    assert_eq!(e.code(), Code::NotFound);
    let status = health_check(&server).await.expect("health check");
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn metrics_have_build_process_and_every_environment() {
    let mut server = TestServer::start(&format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}",
        standard_config(NO_REGISTRY)
    ));
    for round in ["first start", "after a restart"] {
        if round == "after a restart" {
            server.kill_and_restart();
        }
        // Answered only once the server (and its metrics listener) is up.
        health_check(&server).await.expect("health check");
        let body = scrape(server.metrics_addr()).await;
        let m = parse_metrics(&body);
        let get = |k: &str| {
            *m.get(k)
                .unwrap_or_else(|| panic!("{round}: {k} missing in:\n{body}"))
        };
        assert_eq!(
            get(&format!(
                r#"prodgate_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )),
            1.0
        );
        for env in ["staging", "production", "prod2", "shortlived", "selfok"] {
            for gauge in [
                "prodgate_pending_approvals",
                "prodgate_promotions_waiting",
                "prodgate_apply_waiting",
            ] {
                assert_eq!(
                    get(&format!(r#"{gauge}{{environment="{env}"}}"#)),
                    0.0,
                    "{round}"
                );
            }
        }
        // Whole clock ticks: a process this young may not have used one yet.
        assert!(get("process_cpu_seconds_total") >= 0.0);
        assert!(get("process_resident_memory_bytes") > 1e6);
        assert!(get("process_open_fds") >= 3.0);
        assert!(get("process_max_fds") >= get("process_open_fds"));
    }
}

/// Caps `pid`'s open files at `n`, as a default shell or unit does (1,024).
fn limit_open_files(pid: u32, n: usize) {
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={n}:{n}")])
        .status()
        .expect("run prlimit");
    assert!(limited.success());
}

/// The test itself holds more than a thousand sockets.
fn raise_own_open_file_limit() {
    rlimit::increase_nofile_limit(8192).expect("raise the test's open-file limit");
}

/// `n` connections to `addr`, each having sent `first` (nothing if empty).
async fn flood(addr: &str, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        if !first.is_empty() {
            s.write_all(first).await.expect("write");
        }
        socks.push(s);
    }
    socks
}

/// A health check that must answer within `limit`.
async fn health_within(server: &TestServer, limit: Duration) {
    let status = tokio::time::timeout(limit, health_check(server))
        .await
        .unwrap_or_else(|_| panic!("no health answer within {limit:?}"))
        .expect("health check");
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn preface_then_silence_is_closed_at_the_idle_timeout() {
    raise_own_open_file_limit();
    let server = TestServer::start(&format!(
        "idle_timeout = \"3s\"\n{}",
        standard_config(NO_REGISTRY)
    ));
    limit_open_files(server.pid(), 1024);
    // More connections than the server has descriptors: once it holds what
    // it can, the rest wait in the listen backlog with their preface sent.
    let flooded = Instant::now();
    let socks = flood(&server.addr, 1100, PREFACE).await;
    let limit = Duration::from_secs(40);
    let watchers: Vec<_> = socks
        .into_iter()
        .map(|s| tokio::spawn(closed_by_server(s, limit)))
        .collect();
    let mut last = flooded;
    for w in watchers {
        last = last.max(w.await.expect("watcher"));
    }
    // Two rounds at most (those held, then those from the backlog), each
    // the idle timeout and the close grace.
    let took = last - flooded;
    assert!(took < Duration::from_secs(20), "closed after {took:?}");
    // A normal call is served again, and the server has descriptors for it.
    let seen = server.log().len();
    health_within(&server, Duration::from_secs(10)).await;
    let after = &server.log()[seen..];
    assert!(
        !after.contains("Too many open files"),
        "out of descriptors after the flood was closed:\n{after}"
    );
}

#[tokio::test]
async fn a_peer_that_does_not_answer_keepalive_pings_is_closed() {
    let server = TestServer::start(&format!(
        "keepalive_interval = \"1s\"\nidle_timeout = \"1h\"\n{}",
        standard_config(NO_REGISTRY)
    ));
    let mut s = TcpStream::connect(&server.addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .await
        .expect("empty SETTINGS");
    let opened = Instant::now();
    // The server pings; this peer never answers.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (kind, flags, _) = read_frame(&mut s).await;
            if kind == PING && flags & ACK == 0 {
                return;
            }
        }
    })
    .await
    .expect("a keepalive PING within 10 s");
    let closed = closed_by_server(s, Duration::from_secs(40)).await;
    let took = closed - opened;
    // The interval, then the 20 s the ping may go unanswered.
    assert!(
        took >= Duration::from_secs(20),
        "closed after {took:?}, before the keepalive timeout"
    );
}

#[tokio::test]
async fn silent_metrics_clients_cannot_take_the_grpc_listeners_descriptors() {
    raise_own_open_file_limit();
    let server = TestServer::start(&format!(
        "metrics_listen = \"127.0.0.1:0\"\nhandshake_timeout = \"2s\"\n{}",
        standard_config(NO_REGISTRY)
    ));
    let metrics_addr = server.metrics_addr().to_owned();
    let pid = server.pid();
    health_within(&server, Duration::from_secs(10)).await;
    limit_open_files(pid, 1024);
    let before = open_fds(pid);
    let socks = flood(&metrics_addr, 1100, b"").await;
    // The metrics listener holds at most its 64 connections, however many
    // clients come; gRPC is served meanwhile.
    health_within(&server, Duration::from_secs(10)).await;
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(open_fds(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        most <= before + 64 + 4,
        "{before} descriptors before, up to {most} with 1,100 silent metrics clients"
    );
    drop(socks);

    // A request head that never ends is closed at the handshake timeout.
    let mut slow = TcpStream::connect(&metrics_addr).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");
    let sent = Instant::now();
    let closed = closed_by_server(slow, Duration::from_secs(30)).await;
    assert!(closed - sent < Duration::from_secs(15));
    // And scrapes still work.
    assert!(scrape(&metrics_addr).await.contains("prodgate_"));
}

#[tokio::test]
async fn a_listener_that_cannot_bind_ends_serve_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let exited = support::server::serve_until_exit(
        &format!(
            "metrics_listen = \"{addr}\"\n{}",
            standard_config(NO_REGISTRY)
        ),
        Duration::from_secs(30),
    );
    assert_eq!(
        exited.code,
        Some(1),
        "serve did not exit 1 with metrics_listen taken:\n{}",
        exited.log
    );
    assert!(
        exited
            .log
            .contains(&format!("cannot listen for metrics on {addr}")),
        "{}",
        exited.log
    );
    assert!(
        exited.log_bytes < 64 * 1024,
        "{} bytes of log for a failed start:\n{}",
        exited.log_bytes,
        exited.log
    );
    assert!(!exited.log.contains("leadership ended"), "{}", exited.log);
}

#[tokio::test]
async fn a_connection_past_max_connection_age_is_sent_goaway() {
    const GOAWAY: u8 = 0x7;
    let server = TestServer::start(&format!(
        "max_connection_age = \"2s\"\nidle_timeout = \"1h\"\n{}",
        standard_config(NO_REGISTRY)
    ));
    // Before the connect: the server counts the age from its accept, which
    // comes after this.
    let opened = Instant::now();
    let mut s = TcpStream::connect(&server.addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .await
        .expect("empty SETTINGS");
    // Answer the server's pings like a live client; wait for its GOAWAY.
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (kind, flags, payload) = read_frame(&mut s).await;
            match kind {
                GOAWAY => return,
                PING if flags & ACK == 0 => {
                    let mut ack = vec![0, 0, 8, PING, ACK, 0, 0, 0, 0];
                    ack.extend_from_slice(&payload);
                    s.write_all(&ack).await.expect("PING ack");
                }
                _ => {}
            }
        }
    })
    .await
    .expect("a GOAWAY once the connection is 2 s old, though idle_timeout is an hour");
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "GOAWAY after {took:?}, before the age"
    );
    // New calls are served (on a new connection).
    health_within(&server, Duration::from_secs(10)).await;
}

/// `prodgate_rpcs_total` of `method` with `code` (0 before its first call).
fn rpcs(m: &HashMap<String, f64>, method: &str, code: &str) -> f64 {
    let key = format!(r#"prodgate_rpcs_total{{code="{code}",method="PromotionService/{method}"}}"#);
    m.get(&key).copied().unwrap_or(0.0)
}

/// Scrapes until `rpcs` of `method` with `code` reaches `want` (the
/// server counts a reset stream once it reads the reset, after the client
/// has moved on); fails if it does not within ten seconds or goes past it.
async fn rpcs_reach(metrics_addr: &str, method: &str, code: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = parse_metrics(&scrape(metrics_addr).await);
        let n = rpcs(&m, method, code);
        assert!(n <= want, "{method} {code}: {n} counted, {want} calls made");
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{method} {code}: {n} counted after 10 s, {want} calls made"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancelled_and_timed_out_calls_are_counted() {
    use prodgate::pb::WatchPromotionRequest;
    use support::registry::TestRegistry;
    use support::server::registry_toml;
    let registry = TestRegistry::start().await;
    // A registry that accepts connections and never answers: a request by
    // tag waits on it, and each accept says a call reached the server.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stalled_host = stalled.local_addr().expect("addr").to_string();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stalled.accept().await {
            held.push(s);
            let _ = accepted_tx.send(());
        }
    });
    let server = TestServer::start(&format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}\n{}",
        standard_config(&registry.host)
            .replace("registry_timeout = \"3s\"", "registry_timeout = \"60s\""),
        registry_toml(&stalled_host)
    ));
    let metrics_addr = server.metrics_addr().to_owned();
    let repo = format!("{}/acme/app", registry.host);
    registry
        .push_image("acme/app", Some("staging"), 512, 1)
        .await;
    let mut alice = server.client("alice").await;
    let pending = alice
        .request_promotion(support::request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner()
        .id;
    let before = parse_metrics(&scrape(&metrics_addr).await);
    let request = "RequestPromotion";
    let watch = "WatchPromotion";
    let stalled_request =
        || support::request_to(&format!("{stalled_host}/acme/app"), "staging", "production");

    // A unary call the client gives up on while the server waits on the
    // registry: its response future is dropped.
    {
        let call = alice.request_promotion(stalled_request());
        tokio::pin!(call);
        tokio::select! {
            r = &mut call => panic!("the stalled registry answered: {r:?}"),
            _ = accepted.recv() => {}
        }
    }
    rpcs_reach(
        &metrics_addr,
        request,
        "CANCELLED",
        rpcs(&before, request, "CANCELLED") + 1.0,
    )
    .await;

    // The same with a deadline, which the client keeps by resetting the
    // stream when it passes (as grpc-go and grpc core do).
    let deadline = Duration::from_secs(1);
    let mut req = tonic::Request::new(stalled_request());
    req.set_timeout(deadline);
    let r = tokio::time::timeout(deadline, alice.request_promotion(req)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "the stalled registry answered: {r:?}"
    );
    rpcs_reach(
        &metrics_addr,
        request,
        "DEADLINE_EXCEEDED",
        rpcs(&before, request, "DEADLINE_EXCEEDED") + 1.0,
    )
    .await;

    // A stream is counted when it ends, not when it starts: an open watch
    // is not counted; dropped, it is CANCELLED.
    let watch_request = || WatchPromotionRequest {
        promotion_id: pending.clone(),
    };
    let mut stream = alice
        .watch_promotion(watch_request())
        .await
        .expect("watch")
        .into_inner();
    stream.message().await.expect("first item").expect("state");
    let open = parse_metrics(&scrape(&metrics_addr).await);
    for code in ["OK", "CANCELLED", "DEADLINE_EXCEEDED"] {
        assert_eq!(
            rpcs(&open, watch, code),
            rpcs(&before, watch, code),
            "an open watch was counted as {code}"
        );
    }
    drop(stream);
    rpcs_reach(
        &metrics_addr,
        watch,
        "CANCELLED",
        rpcs(&before, watch, "CANCELLED") + 1.0,
    )
    .await;

    // A watch with a deadline that passes while it is open.
    let mut req = tonic::Request::new(watch_request());
    req.set_timeout(deadline);
    let started = Instant::now();
    let mut stream = alice
        .watch_promotion(req)
        .await
        .expect("watch")
        .into_inner();
    stream.message().await.expect("first item").expect("state");
    let left = deadline.saturating_sub(started.elapsed());
    let r = tokio::time::timeout(left, stream.message()).await;
    assert!(
        !matches!(r, Ok(Ok(Some(_)))),
        "the pending promotion changed: {r:?}"
    );
    drop(stream);
    rpcs_reach(
        &metrics_addr,
        watch,
        "DEADLINE_EXCEEDED",
        rpcs(&before, watch, "DEADLINE_EXCEEDED") + 1.0,
    )
    .await;

    // Exactly the calls made: nothing else was counted as either.
    let after = parse_metrics(&scrape(&metrics_addr).await);
    for (method, code) in [
        (request, "CANCELLED"),
        (request, "DEADLINE_EXCEEDED"),
        (watch, "CANCELLED"),
        (watch, "DEADLINE_EXCEEDED"),
    ] {
        assert_eq!(
            rpcs(&after, method, code),
            rpcs(&before, method, code) + 1.0,
            "{method} {code}"
        );
    }
}

/// PEM files in `dir` of a CA, a server certificate it issued for
/// localhost, and client certificates (certificate, key) it issued for
/// each of `clients` (the CN); plus a client certificate from another CA.
struct Pki {
    ca: String,
    cert: String,
    key: String,
    ca_pem: String,
    clients: HashMap<String, (String, String)>,
    stranger: (String, String),
}

fn mtls_pki(dir: &std::path::Path, clients: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let authority = || {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca cert");
        (cert.pem(), Issuer::new(params, key))
    };
    let leaf = |issuer: &Issuer<'_, KeyPair>, names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    };
    let (ca_pem, issuer) = authority();
    let (_, other) = authority();
    let (server_cert, server_key) = leaf(&issuer, vec!["localhost".into()], "prodgate");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p.to_str().expect("utf-8").to_owned()
    };
    Pki {
        ca: write("ca.pem", &ca_pem),
        cert: write("server.pem", &server_cert),
        key: write("server.key", &server_key),
        clients: clients
            .iter()
            .map(|cn| (cn.to_string(), leaf(&issuer, vec![], cn)))
            .collect(),
        stranger: leaf(&other, vec![], "deploy-bot"),
        ca_pem,
    }
}

/// A TLS channel to `server` trusting `ca_pem`, with a client certificate
/// when `identity` is given.
async fn tls_channel(
    server: &TestServer,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    prodgate::server::install_crypto_provider();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tonic::transport::Channel::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn optional_client_auth_lets_token_callers_share_the_mtls_listener() {
    use prodgate::pb::promotion_service_client::PromotionServiceClient;
    use sha2::{Digest, Sha256};
    use support::registry::TestRegistry;
    use support::server::Bearer;
    use tonic_types::StatusExt;
    let registry = TestRegistry::start().await;
    let repo = format!("{}/acme/app", registry.host);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = mtls_pki(dir.path(), &["deploy-bot", "nobody"]);
    // deploy-bot holds a certificate and a token; "nobody" is a CN the CA
    // signed that no principal is bound to.
    let bot = format!(
        "[[principal]]\nname = \"deploy-bot\"\ncertificate_cn = \"deploy-bot\"\n\
         token_sha256 = \"{}\"\ngroups = []\n",
        hex::encode(Sha256::digest(token("deploy-bot").as_bytes()))
    );
    let config = |client_auth: &str| {
        format!(
            "{}\n{bot}\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n{client_auth}",
            standard_config(&registry.host),
            pki.cert,
            pki.key,
            pki.ca
        )
    };
    let server = TestServer::start(&config("client_auth = \"optional\"\n"));
    let certificate = |cn: &str| pki.clients.get(cn).expect("client certificate");
    let (bare, bot_cert, nobody_cert) = (
        tls_channel(&server, &pki.ca_pem, None)
            .await
            .expect("a connection without a client certificate"),
        tls_channel(&server, &pki.ca_pem, Some(certificate("deploy-bot")))
            .await
            .expect("mTLS connect"),
        tls_channel(&server, &pki.ca_pem, Some(certificate("nobody")))
            .await
            .expect("mTLS connect"),
    );
    // Who made the call: the requester of a fresh promotion.
    let mut seed = 0;
    let mut request_as = async |channel: &tonic::transport::Channel, token: Option<&str>| {
        seed += 1;
        registry
            .push_image("acme/app", Some("staging"), 256, seed)
            .await;
        let req = support::request_to(&repo, "staging", "production");
        let r = match token {
            Some(t) => {
                PromotionServiceClient::with_interceptor(channel.clone(), Bearer::token(t))
                    .request_promotion(req)
                    .await
            }
            None => {
                PromotionServiceClient::new(channel.clone())
                    .request_promotion(req)
                    .await
            }
        };
        r.map(|p| p.into_inner().requested_by)
    };

    let by = |r: Result<String, tonic::Status>| r.unwrap_or_else(|e| panic!("refused: {e:?}"));
    assert_eq!(by(request_as(&bare, Some(&token("bob"))).await), "bob");
    assert_eq!(by(request_as(&bot_cert, None).await), "deploy-bot");
    assert_eq!(
        by(request_as(&bot_cert, Some(&token("deploy-bot"))).await),
        "deploy-bot"
    );
    let unauthenticated = |r: Result<String, tonic::Status>, check: &str| {
        let e = r.expect_err("two identities got through");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let info = e.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "TOKEN_INVALID", "{e:?}");
        assert_eq!(info.metadata.get("check").map(String::as_str), Some(check));
        e
    };
    let e = unauthenticated(
        request_as(&bot_cert, Some(&token("bob"))).await,
        "principal_mismatch",
    );
    assert!(
        e.message().contains("\"deploy-bot\"")
            && e.message().contains("\"bob\"")
            && e.message().contains("different principals"),
        "{e:?}"
    );
    // A certificate presented must be known, token or not.
    let e = unauthenticated(
        request_as(&nobody_cert, Some(&token("bob"))).await,
        "certificate",
    );
    assert!(e.message().contains("\"nobody\""), "{e:?}");
    unauthenticated(request_as(&nobody_cert, None).await, "certificate");
    unauthenticated(request_as(&bare, None).await, "missing_credentials");
    // A certificate is still verified when one is presented.
    let stranger = match tls_channel(&server, &pki.ca_pem, Some(&pki.stranger)).await {
        Err(_) => true,
        Ok(ch) => request_as(&ch, Some(&token("bob"))).await.is_err(),
    };
    assert!(stranger, "a certificate from another CA got through");

    // "required" (the default): no certificate, no call, token or not; with
    // one, a token says who acts, as before.
    drop(server);
    let server = TestServer::start(&config(""));
    let refused = match tls_channel(&server, &pki.ca_pem, None).await {
        Err(_) => true,
        Ok(ch) => request_as(&ch, Some(&token("bob"))).await.is_err(),
    };
    assert!(refused, "a token caller without a certificate got through");
    let bot_cert = tls_channel(&server, &pki.ca_pem, Some(certificate("deploy-bot")))
        .await
        .expect("mTLS connect");
    assert_eq!(by(request_as(&bot_cert, Some(&token("bob"))).await), "bob");
}
