//! `[console]`: the approvers' web console, on a listener of its own (see
//! `crate::console`). Its session cookie is sealed with a key derived from
//! `session_key_file`, so replicas that share that file share sessions and
//! nothing else. With `identity`, people sign in through that
//! `[[identity]]`'s OpenID Connect provider (`client_id`,
//! `client_secret_file`, redirect `{public_url}/auth/callback`).

use super::validate::{Cx, duration};
use super::{ConfigError, IdentityConfig, Secret, invalid};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// How long a console session lasts from sign-in, by default.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Connections the console listener serves at once, by default.
pub const DEFAULT_CONSOLE_MAX_CONNECTIONS: u32 = 256;
/// The least key material `session_key_file` must hold.
pub const MIN_SESSION_KEY: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    pub listen: String,
    pub public_url: String,
    pub session_key_file: PathBuf,
    #[serde(default)]
    pub token_login: bool,
    pub session_ttl: Option<String>,
    pub max_connections: Option<u32>,
    pub identity: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Option<Vec<String>>,
}

/// Sign-in through an `[[identity]]`'s OpenID Connect provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleOidc {
    /// The `name` of the `[[identity]]` whose issuer, keys and rules apply.
    pub identity: String,
    pub client_id: String,
    /// `None`: a public client (PKCE only), or `check-config` could not
    /// read the file.
    pub client_secret: Option<Secret>,
    /// Asked for besides `openid`, which is always asked for.
    pub scopes: Vec<String>,
    /// `{public_url}/auth/callback`.
    pub redirect_uri: String,
}

/// `[console]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    pub listen: String,
    /// Where browsers reach the console (scheme, host, port and an optional
    /// path prefix), without a trailing `/`: links, the `Origin` every POST
    /// must carry, and whether cookies need `Secure` derive from it.
    pub public_url: String,
    /// The origin of `public_url` (`scheme://host[:port]`), as browsers
    /// send it in `Origin`.
    pub origin: String,
    /// `None` only when `check-config` could not read the file.
    pub session_key: Option<Secret>,
    /// The sign-in form that takes a `[[principal]]` token (development
    /// and the README's walk-through).
    pub token_login: bool,
    pub session_ttl: Duration,
    pub max_connections: usize,
    pub oidc: Option<ConsoleOidc>,
}

impl ConsoleConfig {
    /// Cookies without `Secure` only where browsers would drop them
    /// otherwise: plain `http://` on a loopback address.
    pub fn secure_cookies(&self) -> bool {
        !self.origin.starts_with("http://")
    }
}

pub(super) fn console(raw: RawConsole, cx: &mut Cx) -> Result<ConsoleConfig, ConfigError> {
    if raw.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            "console.listen",
            format!("{:?} is not an address like \"127.0.0.1:8080\"", raw.listen),
        ));
    }
    let public_url = raw.public_url.trim_end_matches('/').to_owned();
    let url = reqwest::Url::parse(&public_url).map_err(|e| {
        invalid(
            "console.public_url",
            format!("{public_url:?} is not a URL: {e}"),
        )
    })?;
    let host = url.host_str().unwrap_or_default();
    let origin = url.origin().ascii_serialization();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(invalid(
                "console.public_url",
                format!(
                    "{public_url:?} is plain http on a host that is not loopback: session cookies would cross the network in clear; use https://"
                ),
            ));
        }
        _ => {
            return Err(invalid(
                "console.public_url",
                format!("{public_url:?} is not an http(s) URL"),
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(
            "console.public_url",
            "must be scheme, host, port and path only (no user, query or fragment)",
        ));
    }
    let session_key = match cx.read("console.session_key_file", &raw.session_key_file)? {
        None => None,
        Some(mut bytes) => {
            // `openssl rand -hex 32 > file` leaves a newline.
            while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                bytes.pop();
            }
            if bytes.len() < MIN_SESSION_KEY {
                return Err(invalid(
                    "console.session_key_file",
                    format!(
                        "{} holds {} bytes; it needs at least {MIN_SESSION_KEY} bytes of secret (e.g. `openssl rand -hex 32`)",
                        raw.session_key_file.display(),
                        bytes.len()
                    ),
                ));
            }
            Some(Secret::new(bytes))
        }
    };
    let max_connections = match raw
        .max_connections
        .unwrap_or(DEFAULT_CONSOLE_MAX_CONNECTIONS)
    {
        0 => return Err(invalid("console.max_connections", "must be at least 1")),
        n => n as usize,
    };
    let oidc = match (raw.identity, raw.client_id) {
        (None, None) => {
            if raw.client_secret_file.is_some() || raw.scopes.is_some() {
                return Err(invalid(
                    "console.identity",
                    "client_secret_file and scopes are for OpenID Connect sign-in: name the [[identity]] to sign in with",
                ));
            }
            None
        }
        (None, Some(_)) => {
            return Err(invalid(
                "console.identity",
                "client_id is set without identity: name the [[identity]] (its `name` key) to sign in with",
            ));
        }
        (Some(_), None) => {
            return Err(invalid(
                "console.client_id",
                "required with identity: the client id the identity provider registered for the console",
            ));
        }
        (Some(identity), Some(client_id)) => {
            if client_id.trim().is_empty() || client_id.chars().any(char::is_control) {
                return Err(invalid("console.client_id", "must not be empty"));
            }
            let client_secret = match &raw.client_secret_file {
                None => None,
                Some(path) => super::validate::secret_file("console.client_secret_file", path, cx)?,
            };
            let mut scopes = Vec::new();
            for (i, s) in raw.scopes.unwrap_or_default().into_iter().enumerate() {
                if s.is_empty()
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
                {
                    return Err(invalid(
                        format!("console.scopes[{i}]"),
                        format!("{s:?} is not a scope (printable ASCII, no spaces)"),
                    ));
                }
                if s != "openid" && !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
            Some(ConsoleOidc {
                identity,
                client_id,
                client_secret,
                scopes,
                redirect_uri: format!("{public_url}/auth/callback"),
            })
        }
    };
    Ok(ConsoleConfig {
        oidc,
        listen: raw.listen,
        public_url,
        origin,
        session_key,
        token_login: raw.token_login,
        session_ttl: duration(
            "console.session_ttl",
            raw.session_ttl.as_deref(),
            DEFAULT_SESSION_TTL,
        )?,
        max_connections,
    })
}

/// `console.identity` must name an `[[identity]]` whose issuer serves
/// discovery over HTTPS (plain HTTP only on loopback, for tests).
pub(super) fn check_identity(
    console: &ConsoleConfig,
    identities: &[IdentityConfig],
) -> Result<(), ConfigError> {
    let Some(oidc) = &console.oidc else {
        return Ok(());
    };
    let Some(identity) = identities
        .iter()
        .find(|i| i.name.as_deref() == Some(oidc.identity.as_str()))
    else {
        let named: Vec<String> = identities
            .iter()
            .filter_map(|i| i.name.as_ref().map(|n| format!("{n:?}")))
            .collect();
        let why = if identities.is_empty() {
            "there is no [[identity]]".to_owned()
        } else if named.is_empty() {
            "no [[identity]] has a `name`: give the one to sign in with `name = ...`".to_owned()
        } else {
            format!("the named identities are {}", named.join(", "))
        };
        return Err(invalid(
            "console.identity",
            format!("{:?} names no [[identity]]: {why}", oidc.identity),
        ));
    };
    let url = reqwest::Url::parse(&identity.issuer).ok();
    let https = url.as_ref().is_some_and(|u| {
        u.scheme() == "https"
            || (u.scheme() == "http" && is_loopback(u.host_str().unwrap_or_default()))
    });
    if !https {
        return Err(invalid(
            "console.identity",
            format!(
                "the issuer {:?} is not an https:// URL: sign-in reads its discovery document at {{issuer}}/.well-known/openid-configuration",
                identity.issuer
            ),
        ));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    /// A config with `[console]` plus `console` and `identity` lines, and
    /// the files they read; the error's key and message, or the config.
    fn parse(console: &str, identity: &str) -> Result<Config, (String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("session.key");
        std::fs::write(&key, "k".repeat(40)).unwrap();
        let secret = dir.path().join("client.secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(
            &jwks,
            r#"{"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}"#,
        )
        .unwrap();
        let text = format!(
            "{identity}\n[console]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"https://console.acme.test\"\n\
             session_key_file = {key:?}\n{console}\n"
        )
        .replace("JWKS", &format!("{jwks:?}"))
        .replace("SECRET", &format!("{secret:?}"));
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Invalid { key, message } => (key, message),
            e => (String::new(), e.to_string()),
        })
    }

    const SSO: &str = "[[identity]]\nname = \"sso\"\nissuer = \"https://sso.acme.test\"\n\
         audience = \"prodgate\"\njwks_file = JWKS\n[[identity.rule]]\nprincipal = \"sso:{sub}\"\n";

    #[test]
    fn oidc_sign_in_names_a_named_identity_and_a_client() {
        let c = parse(
            "identity = \"sso\"\nclient_id = \"console\"\nclient_secret_file = SECRET\n\
             scopes = [\"email\", \"openid\", \"groups\", \"email\"]",
            SSO,
        )
        .unwrap();
        let oidc = c.console.unwrap().oidc.unwrap();
        assert_eq!(oidc.identity, "sso");
        assert_eq!(oidc.client_id, "console");
        assert_eq!(
            oidc.client_secret.as_ref().map(|s| s.expose().to_vec()),
            Some(b"s3cret".to_vec())
        );
        assert_eq!(oidc.scopes, ["email", "groups"]);
        assert_eq!(oidc.redirect_uri, "https://console.acme.test/auth/callback");
        assert!(!format!("{oidc:?}").contains("s3cret"), "never logged");
        // A public client: no secret.
        let c = parse("identity = \"sso\"\nclient_id = \"console\"", SSO).unwrap();
        assert!(c.console.unwrap().oidc.unwrap().client_secret.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let key = |console: &str, identity: &str| parse(console, identity).unwrap_err();
        let (k, m) = key("identity = \"corp\"\nclient_id = \"c\"", SSO);
        assert_eq!(k, "console.identity");
        assert!(m.contains("\"corp\"") && m.contains("\"sso\""), "{m}");
        let unnamed = SSO.replace("name = \"sso\"\n", "");
        let (k, m) = key("identity = \"sso\"\nclient_id = \"c\"", &unnamed);
        assert_eq!(k, "console.identity");
        assert!(m.contains("no [[identity]] has a `name`"), "{m}");
        let (k, m) = key("identity = \"sso\"\nclient_id = \"c\"", "");
        assert_eq!(k, "console.identity");
        assert!(m.contains("there is no [[identity]]"), "{m}");
        assert_eq!(key("identity = \"sso\"", SSO).0, "console.client_id");
        assert_eq!(key("client_id = \"c\"", SSO).0, "console.identity");
        assert_eq!(
            key("client_secret_file = SECRET", SSO).0,
            "console.identity"
        );
        assert_eq!(
            key(
                "identity = \"sso\"\nclient_id = \"c\"\nscopes = [\"a b\"]",
                SSO
            )
            .0,
            "console.scopes[0]"
        );
        let plain = SSO.replace("https://sso.acme.test", "http://sso.acme.test");
        let (k, m) = key("identity = \"sso\"\nclient_id = \"c\"", &plain);
        assert_eq!(k, "console.identity");
        assert!(m.contains("https://"), "{m}");
        let twice = format!("{SSO}{}", SSO.replace("sso.acme", "other.acme"));
        assert_eq!(key("", &twice).0, "identity[1].name");
    }
}
