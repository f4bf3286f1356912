//! Builds and runs the gRPC server: the promotion service behind
//! authentication, plus unauthenticated health and reflection; starts the
//! apply worker and the expiry sweep; stops when `shutdown` completes.

use crate::api::promotion::PromotionApi;
use crate::apply;
use crate::auth::{AuthInterceptor, Authenticator};
use crate::config::Config;
use crate::pb::promotion_service_server::PromotionServiceServer;
use crate::promotions::Promotions;
use crate::registry::Registry;
use crate::registry::oci::{OciRegistry, RegistryHost};
use crate::store::{Store, StoreError};
use oci_client::secrets::RegistryAuth;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

/// How long shutdown waits for clients to finish their calls and hang up.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

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
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Installs the process-wide TLS crypto provider (ring). Safe to call twice.
pub fn install_crypto_provider() {
    // Err means one is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Serves on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    install_crypto_provider();
    let config = Arc::new(config);
    let store = Store::open(&config.data_dir)?;
    let registry: Arc<dyn Registry> = Arc::new(OciRegistry::new(
        config
            .registries
            .iter()
            .map(|r| RegistryHost {
                host: r.host.clone(),
                insecure: r.insecure,
                auth: RegistryAuth::Anonymous,
            })
            .collect(),
        config.registry_timeout,
    )?);
    let promotions = Promotions::new(config.clone(), store.clone(), registry.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let applier = tokio::spawn(apply::run(store.clone(), registry, stop_rx));
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
    tracing::info!(?addr, data_dir = %config.data_dir.display(), "serving");
    let (draining_tx, draining) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(authenticated)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                shutdown.await;
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                health.set_not_serving::<Svc>().await;
                tracing::info!("shutting down: no new connections, finishing in-flight calls");
                let _ = draining_tx.send(());
            },
        );
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
    let _ = stop_tx.send(true);
    if let Err(e) = applier.await {
        tracing::error!(error = %e, "apply worker failed");
    }
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::error!("final flush failed");
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}
