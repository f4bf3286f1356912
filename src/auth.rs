//! Who is calling. The principal comes only from the call's credentials,
//! never from a request field: a bearer token matched against configured
//! SHA-256 hashes in constant time, or, with mTLS, the common name of the
//! verified client certificate. A token, when sent, takes precedence, so a
//! job holding a machine certificate can still act as a token principal.

use crate::config::Live;
use crate::domain::policy::Principal;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status, metadata::MetadataMap};

/// Matches credentials against the running config's principals (a reload
/// changes who they are without a restart).
pub struct Authenticator {
    config: Live,
}

impl Authenticator {
    pub fn new(config: Live) -> Self {
        Self { config }
    }

    /// The principal whose verified client certificate (DER) has this CN.
    pub fn authenticate_certificate(&self, der: &[u8]) -> Result<Principal, Status> {
        let cn = common_name(der)
            .ok_or_else(|| Status::unauthenticated("the client certificate has no common name"))?;
        self.config
            .get()
            .principals
            .iter()
            .find(|p| p.certificate_cn.as_deref() == Some(cn.as_str()))
            .map(|p| Principal {
                name: p.name.clone(),
                groups: p.groups.clone(),
            })
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "no principal is bound to client certificate CN {cn:?}"
                ))
            })
    }

    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
            })?
            .to_str()
            .map_err(|_| {
                Status::unauthenticated("the authorization metadata is not valid ASCII")
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
            })?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Look at every principal so the time taken does not depend on which matched.
        let config = self.config.get();
        let mut found = None;
        for p in &config.principals {
            if p.token_sha256
                .is_some_and(|h| bool::from(h.ct_eq(&presented)))
            {
                found = Some(p);
            }
        }
        found
            .map(|p| Principal {
                name: p.name.clone(),
                groups: p.groups.clone(),
            })
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

/// Attaches the caller's [`Principal`] to every request, or refuses it.
#[derive(Clone)]
pub struct AuthInterceptor(pub Arc<Authenticator>);

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let certificate = req
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        let principal = match (req.metadata().contains_key("authorization"), certificate) {
            (false, Some(der)) => self.0.authenticate_certificate(&der)?,
            _ => self.0.authenticate(req.metadata())?,
        };
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The principal the interceptor attached; also named on the call's span.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    let p = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials"))?;
    tracing::Span::current().record("principal", p.name.as_str());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let config = crate::config::Config::parse(&format!(
            "[[principal]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\ngroups = [\"rm\"]\n",
            hex::encode(Sha256::digest(b"s3cret"))
        ))
        .unwrap();
        Authenticator::new(Live::new(config))
    }

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", v.parse().unwrap());
        m
    }

    #[test]
    fn tokens() {
        let a = auth();
        let p = a.authenticate(&md("Bearer s3cret")).unwrap();
        assert_eq!(p.name, "alice");
        assert_eq!(p.groups, vec!["rm".to_string()]);
        for bad in ["Bearer wrong", "s3cret", "Basic s3cret", "Bearer "] {
            let e = a.authenticate(&md(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        let e = a.authenticate(&MetadataMap::new()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
}
