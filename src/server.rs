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

    let applier = tokio::spawn(apply::run(store.clone(), registry));
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
    let result = tonic::transport::Server::builder()
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
                tracing::info!("shutting down");
            },
        )
        .await;
    applier.abort();
    sweeper.abort();
    result?;
    Ok(())
}
