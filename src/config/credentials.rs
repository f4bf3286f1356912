//! Registry credentials: `username` with `password_env`/`password_file`, or
//! the Docker config's entry for the registry's host. Secrets are read at
//! start-up and never logged.

use super::raw::RawRegistry;
use super::{ConfigError, RegistryCredentials, invalid};
use std::path::{Path, PathBuf};

/// `username` + `password_env`/`password_file` of `registry[i]`, or the
/// Docker config's entry for its host.
pub(super) fn registry_credentials(
    i: usize,
    r: &RawRegistry,
    docker_auths: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Option<RegistryCredentials>, ConfigError> {
    let key = |f: &str| format!("registry[{i}].{f}");
    let password = match (&r.password_env, &r.password_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("password_env"),
                "set password_env or password_file, not both",
            ));
        }
        (Some(var), None) => Some(std::env::var(var).map_err(|_| {
            invalid(
                key("password_env"),
                format!("environment variable {var} is not set"),
            )
        })?),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    invalid(
                        key("password_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    match (&r.username, password) {
        (Some(u), Some(p)) => Ok(Some(RegistryCredentials {
            username: u.clone(),
            password: p,
        })),
        (Some(_), None) => Err(invalid(
            key("username"),
            "needs password_env or password_file",
        )),
        (None, Some(_)) => Err(invalid(key("username"), "is required with a password")),
        (None, None) => Ok(docker_auths.and_then(|a| docker_auth_for(a, &r.host))),
    }
}

/// Where Docker keeps credentials: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// The `auths` map of a Docker config. An explicitly named file must exist;
/// the default location is optional.
pub(super) fn docker_config_auths(
    explicit: Option<&Path>,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, ConfigError> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => match default_docker_config() {
            Some(p) if p.exists() => p,
            _ => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        invalid(
            "docker_config",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        invalid(
            "docker_config",
            format!("{} is not JSON: {e}", path.display()),
        )
    })?;
    Ok(v.get("auths").and_then(|a| a.as_object()).cloned())
}

/// A `user:password` entry of `auths` for `host` (keys may carry a scheme).
fn docker_auth_for(
    auths: &serde_json::Map<String, serde_json::Value>,
    host: &str,
) -> Option<RegistryCredentials> {
    use base64::Engine;
    let entry = auths.iter().find_map(|(k, v)| {
        let bare = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        (bare == host || bare.split('/').next() == Some(host)).then_some(v)
    })?;
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(|v| v.as_str()),
        entry.get("password").and_then(|v| v.as_str()),
    ) {
        return Some(RegistryCredentials {
            username: u.to_owned(),
            password: p.to_owned(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.get("auth")?.as_str()?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(RegistryCredentials {
        username: u.to_owned(),
        password: p.to_owned(),
    })
}
