//! The console's session: who signed in, their groups, the CSRF token of
//! their forms and when it ends, in one cookie sealed with AES-256-GCM
//! (the cookie crate's private jar) under a key derived from
//! `[console] session_key_file`. Sealed, not merely signed: the groups and
//! the CSRF token are nobody's business but the browser's. Nothing is kept
//! on the server, so replicas sharing the key file share sessions; signing
//! out clears the cookie (a copy taken before stays valid until it
//! expires, at most `session_ttl`).
//!
//! An OpenID Connect sign-in under way keeps its `state`, `nonce` and PKCE
//! verifier in a second cookie, [`FLOW_COOKIE`], sealed under the same key
//! and living [`FLOW_TTL`]: the callback finds them there, so a replica
//! other than the one that started the sign-in can finish it.

use crate::domain::model::Time;
use cookie::{Cookie, CookieJar, Key, SameSite};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The cookie's name.
pub const COOKIE: &str = "prodgate_session";
/// The cookie of a sign-in under way at the identity provider.
pub const FLOW_COOKIE: &str = "prodgate_oidc";
/// How long a sign-in may take at the identity provider.
pub const FLOW_TTL: Duration = Duration::from_secs(10 * 60);

/// How the session was opened, which says where its groups come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A `[[principal]]` token (`token_login`): the principal's groups are
    /// read from the running config on every request.
    Token,
    /// An ID token: its groups as its identity's rules mapped them.
    Oidc,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub principal: String,
    pub groups: Vec<String>,
    pub via: Via,
    /// Every form's hidden `csrf` field must carry this (hex, 32 bytes).
    pub csrf: String,
    /// Unix seconds after which the session is over.
    pub expires: i64,
}

impl Session {
    pub fn new(principal: String, groups: Vec<String>, via: Via, now: Time, ttl: Duration) -> Self {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        Session {
            principal,
            groups,
            via,
            csrf: hex::encode(rand::random::<[u8; 32]>()),
            expires: now.seconds.saturating_add(ttl),
        }
    }

    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.csrf.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

/// Seals sessions into `Set-Cookie` values and opens them from `Cookie`
/// headers.
#[derive(Clone)]
pub struct Sealer {
    key: Key,
    secure: bool,
    ttl: Duration,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// `secret`: at least 32 bytes (the config refuses less), stretched
    /// with HKDF into the cookie crate's signing and encryption keys.
    pub fn new(secret: &[u8], secure: bool, ttl: Duration) -> Sealer {
        Sealer {
            key: Key::derive_from(secret),
            secure,
            ttl,
        }
    }

    fn build(&self, name: &'static str, value: String, max_age: Duration) -> Cookie<'static> {
        Cookie::build((name, value))
            .http_only(true)
            .secure(self.secure)
            // Lax, not Strict: the identity provider's redirect back to
            // the callback is a cross-site top-level GET that must carry
            // the sign-in cookie.
            .same_site(SameSite::Lax)
            .path("/")
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            ))
            .build()
    }

    /// The `Set-Cookie` value that stores `s`.
    pub fn seal(&self, s: &Session) -> String {
        self.seal_as(COOKIE, s, self.ttl)
    }

    /// The `Set-Cookie` value that stores `value` sealed in cookie `name`.
    pub fn seal_as<T: Serialize>(
        &self,
        name: &'static str,
        value: &T,
        max_age: Duration,
    ) -> String {
        let json = serde_json::to_string(value).expect("a cookie's value serializes");
        let mut jar = CookieJar::new();
        jar.private_mut(&self.key)
            .add(self.build(name, json, max_age));
        jar.delta()
            .next()
            .map(|c| c.to_string())
            .expect("the cookie just added")
    }

    /// The `Set-Cookie` value that removes the session.
    pub fn clear(&self) -> String {
        self.clear_as(COOKIE)
    }

    /// The `Set-Cookie` value that removes cookie `name`.
    pub fn clear_as(&self, name: &'static str) -> String {
        self.build(name, String::new(), Duration::ZERO).to_string()
    }

    /// The unexpired session a `Cookie` header carries, if any: a cookie
    /// that does not open under the key (forged, or sealed under another)
    /// is no session.
    pub fn open(&self, headers: &http::HeaderMap, now: Time) -> Option<Session> {
        self.open_as::<Session>(headers, COOKIE)
            .filter(|s| s.expires > now.seconds)
    }

    /// The value sealed in cookie `name`, if one opens under the key.
    pub fn open_as<T: DeserializeOwned>(&self, headers: &http::HeaderMap, name: &str) -> Option<T> {
        for header in headers.get_all(http::header::COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for c in Cookie::split_parse(text).flatten() {
                if c.name() != name {
                    continue;
                }
                let mut jar = CookieJar::new();
                jar.add_original(c.into_owned());
                let Some(opened) = jar.private(&self.key).get(name) else {
                    continue;
                };
                if let Ok(v) = serde_json::from_str::<T>(opened.value()) {
                    return Some(v);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time { seconds, nanos: 0 }
    }

    fn headers(set_cookie: &str) -> http::HeaderMap {
        let pair = set_cookie.split(';').next().unwrap().to_owned();
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, pair.parse().unwrap());
        h
    }

    #[test]
    fn a_sealed_session_opens_under_its_key_until_it_expires() {
        let sealer = Sealer::new(&[7; 32], true, Duration::from_secs(60));
        let s = Session::new(
            "bob".into(),
            vec!["rm".into()],
            Via::Token,
            at(1000),
            Duration::from_secs(60),
        );
        let set = sealer.seal(&s);
        assert!(
            set.contains("HttpOnly") && set.contains("Secure") && set.contains("SameSite=Lax"),
            "{set}"
        );
        assert!(!set.contains("bob"), "sealed, not readable: {set}");
        assert_eq!(sealer.open(&headers(&set), at(1059)), Some(s.clone()));
        assert_eq!(sealer.open(&headers(&set), at(1060)), None, "expired");
        let other = Sealer::new(&[8; 32], true, Duration::from_secs(60));
        assert_eq!(other.open(&headers(&set), at(1000)), None, "another key");
        // One flipped character: no session.
        let mut forged = set.clone().into_bytes();
        let i = forged.iter().position(|b| *b == b'=').unwrap() + 5;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(sealer.open(&headers(&forged), at(1000)), None);
        assert!(s.csrf_matches(&s.csrf.clone()) && !s.csrf_matches("00"));
        let cleared = sealer.clear();
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
    }
}
