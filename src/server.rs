//! Builds and runs the gRPC server: the promotion service behind
//! authentication, plus unauthenticated health and reflection, optionally
//! over TLS/mTLS; starts the metrics endpoint and webhook delivery, and,
//! while this replica leads (always, on sled), the apply worker, the
//! expiry sweep, the drift watch and checkpoint publication; stops when
//! `shutdown` completes.
//! `conn` accepts the connections (every listener, each with its own cap);
//! `grpc` serves gRPC connections (keepalive, idle timeout); `http1` the
//! metrics endpoint under its own limits; `oversize` gives over-limit
//! requests the conventional status.

mod conn;
mod grpc;
mod http1;
mod oversize;

use crate::api::promotion::PromotionApi;
use crate::apply;
use crate::auth::Authenticator;
use crate::auth::layer::Authenticate;
use crate::backoff::Delays;
use crate::clock::{Clock, SystemClock};
use crate::config::{
    ClientAuth, ClientCa, Config, ConfigError, Live, Loaded, StorageConfig, TlsConfig,
};
use crate::metrics::{Metrics, RpcMetricsLayer};
use crate::pb::promotion_service_server::PromotionServiceServer;
use crate::promotions::Promotions;
use crate::registry::Registry;
use crate::registry::oci::OciRegistry;
use crate::store::StoreError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;

/// How long shutdown waits for clients to finish their calls and hang up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Largest request accepted; the biggest legitimate one is a few KiB of text.
/// Larger ones are answered RESOURCE_EXHAUSTED, by every service.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Streams one connection may have open at once, advertised to clients in
/// HTTP/2 SETTINGS. Each open WatchPromotion is one; 1,024 is far above what
/// one client needs and bounds what one connection can make the server hold.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Every service the server routes to, as reflection describes them; also
/// the methods that get their own metrics label.
const DESCRIPTOR_SETS: &[&[u8]] = &[
    crate::pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the data directory: {0}")]
    Store(#[from] StoreError),
    #[error("cannot set up the registry client: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot read the built-in service descriptors: {0}")]
    Descriptors(#[from] prost::DecodeError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen for the console on {addr}: {source}")]
    ConsoleListen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("console.session_key_file could not be read")]
    ConsoleKey,
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: String,
        source: std::io::Error,
    },
    #[error("tls.{key}: cannot read {path}: {source}")]
    TlsFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("tls.{key}: {path}: {message}")]
    Tls {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("cannot set up authentication: {0}")]
    Auth(String),
    #[error("cannot set up Slack interactions: {0}")]
    Slack(String),
    #[error("cannot record the policy version in the audit log: {0}")]
    Policy(crate::error::Error),
}

/// Installs the process-wide TLS crypto provider (ring). Safe to call twice.
/// The console's idle limit at least: its event streams send a comment
/// every 15 s.
const CONSOLE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub fn install_crypto_provider() {
    // Err means one is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_pem(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::TlsFile {
        key,
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(
    key: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let invalid = |message: String| ServerError::Tls {
        key,
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&read_pem(key, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The server's TLS: HTTP/2 only (ALPN `h2`, as gRPC clients require); with
/// `client_ca`, clients present a certificate it signed (or, with
/// `client_auth = "optional"`, none at all: auth then wants a token).
fn tls_acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let invalid = |key, path: &std::path::Path, message: String| ServerError::Tls {
        key,
        path: path.display().to_string(),
        message,
    };
    let certs = read_certs("cert", &tls.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem("key", &tls.key)?)
        .map_err(|e| invalid("key", &tls.key, format!("no PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("cert", &tls.cert, e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ClientCa { path: ca, auth }) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("client_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| invalid("client_ca", ca, e.to_string()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            // A certificate that is presented is verified all the same.
            let verifier = match auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid("client_ca", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            "key",
            &tls.key,
            format!("does not fit the certificate in tls.cert: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The soft limit on open files, when the system tells.
fn open_file_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _hard)| soft)
}

/// Descriptors prodgate needs besides client connections: the database's
/// files, registry and webhook connections, the metrics listener and its
/// scrapes. A generous guess; the point is to warn before the limit bites.
const OTHER_DESCRIPTORS: u64 = 256;

/// Runs `task` until `stop` is cancelled (tasks that loop forever).
async fn until_stopped<T>(stop: CancellationToken, task: impl Future<Output = T>) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = task => {}
    }
}

/// Where reloads come from: each message on `requests` asks for one, and
/// `load` reads and validates the config file again (it may block: it
/// reads files and may run credential helpers).
pub struct Reloads {
    pub requests: tokio::sync::mpsc::Receiver<()>,
    pub load: Arc<dyn Fn() -> Result<Loaded, ConfigError> + Send + Sync>,
}

/// Reloads the config once: validates the file, refuses what a reload may
/// not change, records the new policy version if it differs, then runs
/// it. Anything wrong keeps the running config and logs why, naming the
/// key. Returns whether the new config runs.
async fn reload(
    load: Arc<dyn Fn() -> Result<Loaded, ConfigError> + Send + Sync>,
    live: &Live,
    promotions: &Promotions,
) -> bool {
    let loaded = match tokio::task::spawn_blocking(move || load()).await {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "config reload failed: the running config is kept");
            return false;
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload failed: the running config is kept");
            return false;
        }
    };
    for w in &loaded.warnings {
        tracing::warn!(key = %w.key, "config: {}", w.message);
    }
    let (next, later) = match crate::config::reloaded(&live.get(), loaded.config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(key = e.key, error = %e, "config reload refused: the running config is kept");
            return false;
        }
    };
    for w in &later {
        tracing::warn!(key = %w.key, "config reload: {}", w.message);
    }
    let digest = next.policy.digest.clone();
    match promotions.adopt(next).await {
        Ok(Some(entry)) => {
            tracing::info!(policy = %digest, sequence = entry.sequence, "config reloaded: new policy version recorded");
            true
        }
        Ok(None) => {
            tracing::info!(policy = %digest, "config reloaded: policy unchanged");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload failed: the new policy could not be recorded; the running config is kept");
            false
        }
    }
}

/// How often health asks a database backend whether it answers.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe that takes longer counts as the database not answering.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps health NOT_SERVING while the database does not answer (a load
/// balancer then sends calls to a replica that can answer them) and
/// SERVING again once it does; the store reconnects on its own.
async fn probe_store(
    store: crate::store::Store,
    health: tonic_health::server::HealthReporter,
    gate: Arc<tokio::sync::Mutex<bool>>,
    stop: CancellationToken,
) {
    type Svc = Authenticate<PromotionServiceServer<PromotionApi>>;
    let mut serving = true;
    let mut tick = tokio::time::interval(STORE_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answer = tokio::time::timeout(STORE_PROBE_TIMEOUT, store.audit_len()).await;
        let following = store.following();
        let ok = matches!(answer, Ok(Ok(_))) && following;
        if ok == serving {
            continue;
        }
        let shutting_down = gate.lock().await;
        if *shutting_down {
            return;
        }
        serving = ok;
        if ok {
            tracing::info!("the database answers again: serving");
            health.set_service_status("", ServingStatus::Serving).await;
            health.set_serving::<Svc>().await;
        } else {
            match answer {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the database does not answer: not serving")
                }
                Err(_) => tracing::error!("the database did not answer in time: not serving"),
                Ok(Ok(_)) => tracing::error!(
                    "this replica cannot follow other replicas' changes (its listening connection is down): not serving"
                ),
            }
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health.set_not_serving::<Svc>().await;
        }
    }
}

/// What runs on one replica at a time (the leader), not on each.
struct Leader {
    store: crate::store::Store,
    registry: Arc<dyn Registry>,
    config: Live,
    clock: Arc<dyn Clock>,
    progress: apply::Progress,
    promotions: Promotions,
    evidence: crate::evidence::Evidence,
    metrics: Arc<Metrics>,
    notify: Vec<crate::config::NotifyConfig>,
    slack: Vec<crate::config::SlackConfig>,
    /// The console's public URL, which Slack messages link to.
    console_url: Option<String>,
}

/// The subscriptions of what reports each committed change once (the
/// counting metrics and the webhooks), unlike the apply and attach workers,
/// which rescan the store at the start of a term.
struct Followers {
    metrics_changes: broadcast::Receiver<crate::store::Change>,
    metrics_records: broadcast::Receiver<crate::domain::audit::AuditEntry>,
    notify_changes: broadcast::Receiver<crate::store::Change>,
    notify_records: broadcast::Receiver<crate::domain::audit::AuditEntry>,
    slack_changes: broadcast::Receiver<crate::store::Change>,
}

impl Followers {
    fn subscribe(store: &crate::store::Store) -> Self {
        Followers {
            metrics_changes: store.subscribe(),
            metrics_records: store.subscribe_records(),
            notify_changes: store.subscribe(),
            notify_records: store.subscribe_records(),
            slack_changes: store.subscribe(),
        }
    }
}

/// Runs the apply worker, the drift watch, the expiry sweep, the
/// checkpoint publishers, webhook delivery and the metrics that count
/// committed changes while this replica leads (from the start, on sled),
/// until `stop`. Every replica sees every change, so these run on the
/// leader alone: a webhook is sent once, and the counters summed over the
/// replicas count each change once. A term that ends early (PostgreSQL lost the
/// leader's session) stops them at their safe points before the turn is
/// given up, and the replica follows until it can lead again; the next
/// term's apply worker picks up every APPROVED promotion, as after a
/// restart.
async fn lead(leader: Leader, stop: CancellationToken, from_start: Followers) {
    let mut from_start = Some(from_start);
    let mut pauses = Delays::new(RELEAD_PAUSE_MIN, RELEAD_PAUSE_MAX);
    while let Some(leadership) = leader.store.lead(&stop).await {
        let began = tokio::time::Instant::now();
        let term = leadership.term.clone();
        // The first term reports from the subscriptions made before the
        // server took its first call, so nothing committed between the start
        // and this task's first step goes unreported. A term that had to wait
        // for another replica, and every later one, reports from now: what
        // came before was the previous leader's to report.
        let followers = match from_start.take() {
            Some(f) if !leadership.waited => f,
            _ => Followers::subscribe(&leader.store),
        };
        let running = TaskTracker::new();
        let tags = apply::TagLocks::default();
        // Bound per term, like the rest of the config a start binds.
        let config = leader.config.get();
        running.spawn(apply::run(
            leader.store.clone(),
            leader.registry.clone(),
            apply::Settings {
                config: leader.config.clone(),
                clock: leader.clock.clone(),
                progress: leader.progress.clone(),
                tags: tags.clone(),
            },
            term.clone(),
        ));
        running.spawn(crate::attach::run(
            leader.store.clone(),
            leader.registry.clone(),
            leader.evidence.clone(),
            crate::attach::Settings {
                kind: crate::attach::Kind::Record,
                config: leader.config.clone(),
                clock: leader.clock.clone(),
                metrics: Some(leader.metrics.clone()),
            },
            term.clone(),
        ));
        // `[attest]` is read at start (`config::live`): no key, no worker.
        if let Some((a, attestor)) = config
            .attest
            .as_ref()
            .and_then(|a| Some((a, a.attestor()?)))
        {
            running.spawn(crate::attach::run(
                leader.store.clone(),
                leader.registry.clone(),
                leader.evidence.clone(),
                crate::attach::Settings {
                    kind: crate::attach::Kind::Attestation {
                        attestor,
                        verifier_id: a.verifier_id.clone(),
                    },
                    config: leader.config.clone(),
                    clock: leader.clock.clone(),
                    metrics: Some(leader.metrics.clone()),
                },
                term.clone(),
            ));
        }
        if let Some(every) = config.drift_check_interval {
            running.spawn(crate::drift::run(
                leader.store.clone(),
                leader.registry.clone(),
                crate::drift::Settings {
                    config: leader.config.clone(),
                    every,
                    tags,
                },
                term.clone(),
            ));
        }
        {
            let promotions = leader.promotions.clone();
            let every = config.expiry_sweep_interval;
            running.spawn(until_stopped(term.clone(), async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match promotions.sweep_expired().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(expired = n, "expired pending promotions"),
                        Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
                    }
                }
            }));
        }
        // WAITING promotions move on by themselves, on the leader only.
        running.spawn(crate::promotions::waiting::run(
            leader.promotions.clone(),
            leader.store.clone(),
            term.clone(),
        ));
        if let Some(c) = &config.checkpoint {
            for target in &c.publish {
                // Not `until_stopped`: a publisher ends on its own after a
                // last publication at the end of the term.
                running.spawn(crate::evidence::publish(
                    leader.evidence.clone(),
                    target.clone(),
                    term.clone(),
                ));
            }
        }
        running.spawn(until_stopped(
            term.clone(),
            crate::metrics::follow_changes(leader.metrics.clone(), followers.metrics_changes),
        ));
        running.spawn(until_stopped(
            term.clone(),
            crate::metrics::follow_records(leader.metrics.clone(), followers.metrics_records),
        ));
        running.spawn(until_stopped(
            term.clone(),
            crate::notify::run(
                leader.notify.clone(),
                leader.store.clone(),
                followers.notify_changes,
                followers.notify_records,
            ),
        ));
        running.spawn(until_stopped(
            term.clone(),
            crate::notify::slack::run(
                leader.slack.clone(),
                leader.console_url.clone(),
                leader.store.clone(),
                followers.slack_changes,
            ),
        ));
        running.close();
        running.wait().await;
        drop(leadership);
        if stop.is_cancelled() {
            return;
        }
        // A term that ends as soon as it starts (the database refuses what
        // leading needs) must not become a loop that logs as fast as it can:
        // the pause before the next attempt doubles while terms stay short.
        if began.elapsed() >= RELEAD_PAUSE_MAX {
            pauses.reset();
        }
        let pause = pauses.next_delay();
        tracing::warn!(
            retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            "the leadership ended; following until this replica can lead again"
        );
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The pause after a term ends before this replica tries to lead again,
/// doubling up to the maximum while terms end within it.
const RELEAD_PAUSE_MIN: Duration = Duration::from_millis(500);
const RELEAD_PAUSE_MAX: Duration = Duration::from_secs(30);

/// Serves on `listener` until `shutdown` completes; reloads the policy on
/// each of `reloads`' requests. Every listener is bound before anything
/// starts, so a listener that cannot bind ends `run` at once with the
/// address and the reason, and nothing is left running behind it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    reloads: Option<Reloads>,
) -> Result<(), ServerError> {
    install_crypto_provider();
    let live = Live::new(config);
    // Bound at start: what a reload may not change, or keeps until a restart.
    let config = live.get();
    let metrics_listener =
        match &config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| {
                ServerError::MetricsListen {
                    addr: addr.clone(),
                    source,
                }
            })?),
            None => None,
        };
    let console_listener = match &config.console {
        Some(c) => Some(TcpListener::bind(&c.listen).await.map_err(|source| {
            ServerError::ConsoleListen {
                addr: c.listen.clone(),
                source,
            }
        })?),
        None => None,
    };
    let metrics = Metrics::new(config.environments.iter().map(|e| e.name.clone()).collect())?;
    let opening = std::time::Instant::now();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = match &config.storage {
        StorageConfig::Sled => crate::store::sled::open(&config.data_dir, clock.clone())?,
        StorageConfig::Postgres(pg) => crate::store::postgres::open(pg, clock.clone()).await?,
    };
    // Opening replays sled's log written since the previous start (or
    // migrates PostgreSQL's schema): this line is where a slow start shows.
    tracing::info!(
        audit_entries = store.audit_len().await.unwrap_or(0),
        took_ms = u64::try_from(opening.elapsed().as_millis()).unwrap_or(u64::MAX),
        "store opened"
    );
    let registry: Arc<dyn Registry> =
        Arc::new(OciRegistry::from_config(&config, Some(metrics.clone()))?);
    // Cancelled when shutdown starts: no new connections, open watches end.
    let draining = CancellationToken::new();
    // Cancelled once in-flight calls are done: background tasks stop.
    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    let progress = apply::Progress::default();
    let promotions = Promotions::new(
        live.clone(),
        store.clone(),
        registry.clone(),
        clock.clone(),
        progress.clone(),
        draining.clone(),
    );
    // Nothing is decided under a policy the log does not hold.
    match promotions.record_policy().await {
        Ok(Some(e)) => tracing::info!(
            policy = %config.policy.digest,
            sequence = e.sequence,
            "policy version recorded"
        ),
        Ok(None) => {
            tracing::info!(policy = %config.policy.digest, "policy unchanged since the last start")
        }
        Err(e) => return Err(ServerError::Policy(e)),
    }
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let connections = config.max_connections as u64
        + metrics_listener
            .as_ref()
            .map_or(0, |_| config.metrics_max_connections as u64);
    if let Some(limit) = open_file_limit()
        && connections + OTHER_DESCRIPTORS > limit
    {
        tracing::warn!(
            max_connections = config.max_connections,
            metrics_max_connections = config.metrics_max_connections,
            open_file_limit = limit,
            "max_connections does not fit the open-file limit: once descriptors run out, \
             new clients wait; raise the limit (LimitNOFILE) or lower max_connections"
        );
    }

    // Everything that can fail is built before anything starts.
    let (health, health_service) = tonic_health::server::health_reporter();
    type Svc = Authenticate<PromotionServiceServer<PromotionApi>>;
    health.set_serving::<Svc>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    // v1alpha too: grpcurl before 1.8.8, Postman and Python's grpcio-reflection speak only it.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let health_service = health_service.max_decoding_message_size(MAX_REQUEST_BYTES);
    let evidence = crate::evidence::Evidence::new(store.clone(), config.checkpoint.as_ref());
    let api = PromotionServiceServer::new(PromotionApi::new(promotions.clone(), evidence.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let authenticator = Arc::new(
        Authenticator::new(live.clone(), clock.clone(), Some(metrics.clone()))
            .map_err(ServerError::Auth)?,
    );
    let authenticated: Svc = Authenticate::new(api, authenticator.clone());
    let console = match (&config.console, console_listener) {
        (Some(c), Some(l)) => {
            let app = crate::console::Console::new(
                promotions.clone(),
                authenticator.clone(),
                live.clone(),
                c.clone(),
                clock.clone(),
            )
            .ok_or(ServerError::ConsoleKey)?;
            let mut router = crate::console::router(Arc::new(app));
            // Slack's buttons post here, signed by Slack (no session, no
            // CSRF token: the signature is the authentication).
            if let Some(slack) = crate::notify::slack::interactions::SlackInteractions::new(
                live.clone(),
                promotions.clone(),
            )
            .map_err(ServerError::Slack)?
            {
                router = router.merge(slack.router());
            }
            Some((l, c.max_connections, router))
        }
        _ => None,
    };
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(authenticated)
        .prepare();
    let service = tower::ServiceBuilder::new()
        // Outermost first: the metrics layer sees the rewritten status.
        .layer(RpcMetricsLayer::new(metrics.clone(), DESCRIPTOR_SETS)?)
        .layer(tower::util::MapResponseLayer::new(oversize::rewrite))
        .service(routes);

    background.spawn(lead(
        Leader {
            store: store.clone(),
            registry,
            config: live.clone(),
            clock: clock.clone(),
            progress,
            promotions: promotions.clone(),
            evidence,
            metrics: metrics.clone(),
            notify: config.notify.clone(),
            slack: config.slack.clone(),
            // `[console] public_url`, once the console exists.
            console_url: config.console.as_ref().map(|c| c.public_url.clone()),
        },
        stop.clone(),
        Followers::subscribe(&store),
    ));
    if let Some(mut r) = reloads {
        let (live, promotions, metrics) = (live.clone(), promotions.clone(), metrics.clone());
        background.spawn(until_stopped(stop.clone(), async move {
            while r.requests.recv().await.is_some() {
                let applied = reload(r.load.clone(), &live, &promotions).await;
                metrics.config_reload(applied);
            }
        }));
    }
    if let Some(l) = metrics_listener {
        // Display, not Debug of an Option: JSON logs get "addr":"127.0.0.1:9090".
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving metrics at /metrics");
        }
        background.spawn(http1::serve(
            l,
            http1::Limits {
                setting: "metrics_max_connections",
                max_connections: config.metrics_max_connections,
                head_timeout: config.handshake_timeout,
                idle_timeout: config.idle_timeout,
            },
            crate::metrics::app(metrics.clone(), store.clone()),
            stop.clone(),
        ));
    }
    if let Some((l, max_connections, app)) = console {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving the console");
        }
        background.spawn(http1::serve(
            l,
            http1::Limits {
                setting: "console.max_connections",
                max_connections,
                head_timeout: config.handshake_timeout,
                // Above the event streams' keep-alive comments (15 s).
                idle_timeout: config.idle_timeout.max(CONSOLE_IDLE_TIMEOUT),
            },
            app,
            stop.clone(),
        ));
    }
    // Whether shutdown began: once it has, the store probe leaves health
    // NOT_SERVING. A lock, not a flag, so a probe's update cannot land
    // between shutdown's check and its own.
    let health_gate = Arc::new(tokio::sync::Mutex::new(false));
    if matches!(config.storage, StorageConfig::Postgres(_)) {
        background.spawn(probe_store(
            store.clone(),
            health.clone(),
            health_gate.clone(),
            stop.clone(),
        ));
    }

    // The announcement scripts and tests wait for: only now, after the store
    // opened, so a server that cannot start never announces an address.
    let addr = listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
    tracing::info!(%addr, tls = tls.is_some(), data_dir = %config.data_dir.display(), storage = %config.storage.describe(), "listening");
    let limits = conn::Limits {
        max_connections: config.max_connections,
        handshake_timeout: config.handshake_timeout,
    };
    let settings = grpc::Settings {
        max_concurrent_streams: MAX_CONCURRENT_STREAMS,
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: crate::config::KEEPALIVE_TIMEOUT,
        idle_timeout: config.idle_timeout,
        max_connection_age: config.max_connection_age,
    };
    // The accept loop stops (and closes the listening socket) when draining starts.
    let closing = draining.clone();
    let shutdown = async {
        shutdown.await;
        let mut shutting_down = health_gate.lock().await;
        *shutting_down = true;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health.set_not_serving::<Svc>().await;
        drop(shutting_down);
        tracing::info!("shutting down: no new connections, finishing in-flight calls");
        // Open WatchPromotion streams end now, so clients reconnect elsewhere.
        draining.cancel();
    };
    // Two instantiations: auth reads the client certificate from the
    // connection's `ConnectInfo`, so TLS and plain connections stay distinct types.
    let serve = async {
        match tls {
            Some(acceptor) => {
                let upgrade = move |tcp| acceptor.accept(tcp);
                let incoming = conn::incoming(listener, limits, upgrade, closing);
                grpc::serve(incoming, service, settings, shutdown).await
            }
            None => {
                let upgrade = |tcp| std::future::ready(Ok(tcp));
                let incoming = conn::incoming(listener, limits, upgrade, closing);
                grpc::serve(incoming, service, settings, shutdown).await
            }
        }
    };
    // Graceful shutdown waits for every client to close its connection; one
    // that never does must not keep the process alive past the grace period.
    tokio::select! {
        () = serve => {}
        _ = async {
            draining.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
        }
    }
    // In-flight RPCs are done; let the worker reach a safe point (it bounds
    // its own wait), then flush.
    stop.cancel();
    background.close();
    background.wait().await;
    if store.flush().await.is_err() {
        tracing::error!("final flush failed");
    }
    tracing::info!("stopped");
    Ok(())
}
