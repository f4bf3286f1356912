//! The tower service in front of the promotion API: authenticates each
//! call (async, see [`crate::auth`]) and hands it on with the caller's
//! [`Principal`](crate::domain::policy::Principal) in its extensions, or
//! answers the failure's status without calling the API.

use super::Authenticator;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Wraps a gRPC service (`S`) with authentication.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> Authenticate<S> {
    pub fn new(inner: S, auth: Arc<Authenticator>) -> Self {
        Self { inner, auth }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The service that was polled ready is the one to call; a clone
        // stays behind for the next call (tower's usual hand-over).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let auth = self.auth.clone();
        Box::pin(async move {
            // Set by the TLS connection (see server/conn.rs), with mTLS only.
            let certificate = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.peer_certs())
                .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
            match auth
                .authenticate(req.headers(), certificate.as_deref())
                .await
            {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(e) => Ok(e.to_status().into_http()),
            }
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Authenticate<S> {
    const NAME: &'static str = S::NAME;
}
