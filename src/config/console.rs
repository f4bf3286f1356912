//! `[console]`: the approvers' web console, on a listener of its own (see
//! `crate::console`). Its session cookie is sealed with a key derived from
//! `session_key_file`, so replicas that share that file share sessions and
//! nothing else.

use super::validate::{Cx, duration};
use super::{ConfigError, Secret, invalid};
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
    Ok(ConsoleConfig {
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

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
