//! Builds and runs the gRPC server: the promotion service behind
//! authentication, plus unauthenticated health and reflection, optionally
//! over TLS/mTLS; starts the apply worker, the expiry sweep, the metrics
//! endpoint and webhook delivery; stops when `shutdown` completes.

use crate::api::promotion::PromotionApi;
use crate::apply;
use crate::auth::{AuthInterceptor, Authenticator};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, TlsConfig};
use crate::metrics::{Metrics, RpcMetricsLayer};
use crate::pb::promotion_service_server::PromotionServiceServer;
use crate::promotions::Promotions;
use crate::registry::Registry;
use crate::registry::oci::{OciRegistry, RegistryHost};
use crate::store::StoreError;
use oci_client::secrets::RegistryAuth;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

/// How long shutdown waits for clients to finish their calls and hang up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Largest request accepted; the biggest legitimate one is a few KiB of text.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the data directory: {0}")]
    Store(#[from] StoreError),
    #[error("cannot set up the registry client: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
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
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Installs the process-wide TLS crypto provider (ring). Safe to call twice.
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

/// With `client_ca`, clients must present a certificate it signed.
fn tls_config(tls: &TlsConfig) -> Result<ServerTlsConfig, ServerError> {
    let identity = Identity::from_pem(read_pem("cert", &tls.cert)?, read_pem("key", &tls.key)?);
    let mut c = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        c = c.client_ca_root(Certificate::from_pem(read_pem("client_ca", ca)?));
    }
    Ok(c)
}

fn registry_hosts(config: &Config) -> Vec<RegistryHost> {
    config
        .registries
        .iter()
        .map(|r| RegistryHost {
            host: r.host.clone(),
            insecure: r.insecure,
            auth: r.credentials.as_ref().map_or(RegistryAuth::Anonymous, |c| {
                RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }),
        })
        .collect()
}

/// Accepted connections with Nagle's algorithm off. Without it, a response
/// written in two pieces waits for the client's delayed ACK: ~40 ms per call.
fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            let conn = conn?;
            conn.set_nodelay(true)?;
            Ok(conn)
        },
    )
}

/// Serves on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    install_crypto_provider();
    let config = Arc::new(config);
    let metrics = Metrics::new()?;
    let opening = std::time::Instant::now();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = crate::store::sled::open(&config.data_dir, clock.clone())?;
    // Opening replays sled's log written since the previous start: this line
    // is where a slow start shows.
    tracing::info!(
        audit_entries = store.audit_len().await.unwrap_or(0),
        took_ms = u64::try_from(opening.elapsed().as_millis()).unwrap_or(u64::MAX),
        "store opened"
    );
    let registry: Arc<dyn Registry> = Arc::new(OciRegistry::new(
        registry_hosts(&config),
        config.registry_timeout,
        Some(metrics.clone()),
    )?);
    let (draining_watch_tx, draining_watch) = tokio::sync::watch::channel(false);
    let progress = apply::Progress::default();
    let promotions = Promotions::new(
        config.clone(),
        store.clone(),
        registry.clone(),
        clock,
        progress.clone(),
        draining_watch,
    );
    let tls = config.tls.as_ref().map(tls_config).transpose()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let applier = tokio::spawn(apply::run(
        store.clone(),
        registry,
        progress,
        stop_rx.clone(),
    ));
    let sweeper = {
        let promotions = promotions.clone();
        let every = config.expiry_sweep_interval;
        tokio::spawn(async move {
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
        })
    };
    let counting = tokio::spawn(crate::metrics::follow_changes(
        metrics.clone(),
        store.subscribe(),
    ));
    let notifier = tokio::spawn(crate::notify::run(config.notify.clone(), store.subscribe()));
    let metrics_server = match &config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::MetricsListen {
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!(addr = ?l.local_addr().ok(), "serving metrics at /metrics");
            Some(tokio::spawn(crate::metrics::serve(
                l,
                metrics.clone(),
                store.clone(),
                {
                    let mut stop = stop_rx.clone();
                    async move { crate::shutdown::signalled(&mut stop).await }
                },
            )))
        }
        None => None,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    type Svc = InterceptedService<PromotionServiceServer<PromotionApi>, AuthInterceptor>;
    health.set_serving::<Svc>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let api = PromotionServiceServer::new(PromotionApi::new(promotions))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let authenticated: Svc = InterceptedService::new(
        api,
        AuthInterceptor(Arc::new(Authenticator::new(config.principals.clone()))),
    );

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, tls = tls.is_some(), data_dir = %config.data_dir.display(), "serving");
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let (draining_tx, draining) = tokio::sync::oneshot::channel::<()>();
    let serve = builder
        .layer(RpcMetricsLayer(metrics))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(authenticated)
        .serve_with_incoming_shutdown(nodelay(listener), async {
            shutdown.await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health.set_not_serving::<Svc>().await;
            tracing::info!("shutting down: no new connections, finishing in-flight calls");
            // Open WatchPromotion streams end now, so clients reconnect elsewhere.
            let _ = draining_watch_tx.send(true);
            let _ = draining_tx.send(());
        });
    // Graceful shutdown waits for every client to close its connection; one
    // that never does must not keep the process alive past the grace period.
    let result = tokio::select! {
        r = serve => r,
        _ = async {
            if draining.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
            Ok(())
        }
    };
    // In-flight RPCs are done; let the worker reach a safe point, then flush.
    sweeper.abort();
    counting.abort();
    notifier.abort();
    let _ = stop_tx.send(true);
    if let Err(e) = applier.await {
        tracing::error!(error = %e, "apply worker failed");
    }
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    if store.flush().await.is_err() {
        tracing::error!("final flush failed");
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}
