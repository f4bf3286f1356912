//! Who is calling. The principal comes only from the call's credentials, a
//! bearer token matched against configured SHA-256 hashes in constant time,
//! never from a request field.

use crate::config::PrincipalConfig;
use crate::domain::policy::Principal;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status, metadata::MetadataMap};

pub struct Authenticator {
    principals: Vec<PrincipalConfig>,
}

impl Authenticator {
    pub fn new(principals: Vec<PrincipalConfig>) -> Self {
        Self { principals }
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
        let mut found = None;
        for p in &self.principals {
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

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.0.authenticate(req.metadata())?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The principal the interceptor attached.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(vec![PrincipalConfig {
            name: "alice".into(),
            token_sha256: Some(Sha256::digest(b"s3cret").into()),
            certificate_cn: None,
            groups: vec!["rm".into()],
        }])
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
