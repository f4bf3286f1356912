//! Registry credentials: `username` with `password_env`/`password_file`, or
//! what the Docker config gives for the registry's host (`auths`, or the
//! credential helper named by `credHelpers`/`credsStore`, through the
//! `docker_credential` crate). Read at start-up, and again by
//! [`read_again`] when a running server sees a secret rotate. Secrets are
//! never logged.

use super::raw::RawRegistry;
use super::validate::Cx;
use super::{ConfigError, CredentialSource, Files, RegistryCredentials, invalid};
use docker_credential::{CredentialRetrievalError, DockerCredential};
use std::path::{Path, PathBuf};

/// What a credential helper answers (on stdout, per the helper protocol) when
/// it holds nothing for the host: no credentials, not a failure.
const HELPER_NOT_FOUND: &str = "credentials not found";

/// `username` + `password_env`/`password_file` of `registry[i]`, or the
/// Docker config's credentials for its host; and where to read them again.
pub(super) fn registry_credentials(
    i: usize,
    r: &RawRegistry,
    docker: Option<&DockerConfig>,
    cx: &mut Cx,
) -> Result<(Option<RegistryCredentials>, CredentialSource), ConfigError> {
    let key = |f: &str| format!("registry[{i}].{f}");
    let password = match (&r.password_env, &r.password_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("password_env"),
                "set password_env or password_file, not both",
            ));
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(p) => Password::Given(p),
            // Like an absent password_file: set only where the server runs.
            Err(_) if cx.files == Files::WarnIfAbsent => {
                cx.warn(
                    key("password_env"),
                    format!(
                        "environment variable {var} is not set here; `prodgate serve` will need it"
                    ),
                );
                Password::NotHere
            }
            Err(_) => {
                return Err(invalid(
                    key("password_env"),
                    format!("environment variable {var} is not set"),
                ));
            }
        },
        (None, Some(path)) => match cx.read(&key("password_file"), path)? {
            Some(bytes) => Password::Given(password_text(&key("password_file"), path, bytes)?),
            None => Password::NotHere,
        },
        (None, None) => Password::None,
    };
    let source = match (&r.username, &r.password_env, &r.password_file) {
        (Some(username), _, Some(path)) => CredentialSource::PasswordFile {
            username: username.clone(),
            path: path.clone(),
        },
        (Some(username), Some(var), None) => CredentialSource::Env {
            username: username.clone(),
            var: var.clone(),
        },
        _ => match docker {
            Some(d) if r.username.is_none() => CredentialSource::DockerConfig {
                path: d.path.clone(),
            },
            _ => CredentialSource::None,
        },
    };
    let credentials = match (&r.username, password) {
        (Some(u), Password::Given(p)) => Some(RegistryCredentials {
            username: u.clone(),
            password: p,
        }),
        (Some(_), Password::NotHere) => None,
        (Some(_), Password::None) => {
            return Err(invalid(
                key("username"),
                "needs password_env or password_file",
            ));
        }
        (None, Password::Given(_) | Password::NotHere) => {
            return Err(invalid(key("username"), "is required with a password"));
        }
        (None, Password::None) => match docker {
            Some(d) => d.credentials(&r.host, cx.files)?,
            None => None,
        },
    };
    Ok((credentials, source))
}

/// The credentials `source` gives for `host` now (see
/// [`CredentialSource::read`]).
pub(super) fn read_again(
    source: &CredentialSource,
    host: &str,
) -> Result<Option<RegistryCredentials>, ConfigError> {
    let read = |key: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
    };
    match source {
        CredentialSource::None => Ok(None),
        CredentialSource::Env { username, var } => match std::env::var(var) {
            Ok(password) => Ok(Some(RegistryCredentials {
                username: username.clone(),
                password,
            })),
            Err(_) => Err(invalid(
                "password_env",
                format!("environment variable {var} is not set"),
            )),
        },
        CredentialSource::PasswordFile { username, path } => {
            let bytes = read("password_file", path)?;
            Ok(Some(RegistryCredentials {
                username: username.clone(),
                password: password_text("password_file", path, bytes)?,
            }))
        }
        CredentialSource::DockerConfig { path } => {
            let bytes = read("docker_config", path)?;
            DockerConfig::parse(path.clone(), bytes)?.credentials(host, Files::Read)
        }
    }
}

/// A password file's text without the line end `echo pw > file` leaves.
fn password_text(key: &str, path: &Path, bytes: Vec<u8>) -> Result<String, ConfigError> {
    Ok(String::from_utf8(bytes)
        .map_err(|_| invalid(key, format!("{} is not UTF-8 text", path.display())))?
        .trim_end_matches(['\r', '\n'])
        .to_owned())
}

enum Password {
    Given(String),
    /// Named, but not available on this machine (a warning was recorded).
    NotHere,
    None,
}

/// A Docker config file, read once for all registries.
pub(super) struct DockerConfig {
    path: PathBuf,
    bytes: Vec<u8>,
    /// `credsStore`: the helper for every host without an entry of its own.
    creds_store: Option<String>,
    /// `credHelpers`: host -> helper.
    cred_helpers: serde_json::Map<String, serde_json::Value>,
}

impl DockerConfig {
    /// `docker_config` if set (it must exist, or with [`Files::WarnIfAbsent`]
    /// not exist only with a warning), else `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`, if that exists.
    pub(super) fn load(explicit: Option<&Path>, cx: &mut Cx) -> Result<Option<Self>, ConfigError> {
        let (path, bytes) = match explicit {
            Some(p) => match cx.read("docker_config", p)? {
                Some(bytes) => (p.to_owned(), bytes),
                None => return Ok(None),
            },
            None => match default_docker_config() {
                Some(p) if p.exists() => {
                    let bytes = std::fs::read(&p).map_err(|e| {
                        invalid("docker_config", format!("cannot read {}: {e}", p.display()))
                    })?;
                    (p, bytes)
                }
                _ => return Ok(None),
            },
        };
        Self::parse(path, bytes).map(Some)
    }

    fn parse(path: PathBuf, bytes: Vec<u8>) -> Result<Self, ConfigError> {
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            invalid(
                "docker_config",
                format!("{} is not JSON: {e}", path.display()),
            )
        })?;
        Ok(DockerConfig {
            creds_store: v
                .get("credsStore")
                .and_then(|s| s.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            cred_helpers: v
                .get("credHelpers")
                .and_then(|h| h.as_object())
                .cloned()
                .unwrap_or_default(),
            path,
            bytes,
        })
    }

    /// The helper `docker-credential-<name>` that would answer for `host`,
    /// if one is configured (an `auths` entry wins over `credsStore`).
    fn helper_for(&self, host: &str) -> Option<String> {
        self.cred_helpers
            .get(host)
            .and_then(|h| h.as_str())
            .filter(|h| !h.is_empty())
            .or(self.creds_store.as_deref())
            .map(|h| format!("docker-credential-{h}"))
    }

    /// The credentials for `host`, or none (anonymous). With
    /// [`Files::WarnIfAbsent`] no helper runs: checking a config must not
    /// start programs that may prompt or reach a keychain, so a host served
    /// by a helper is left unchecked.
    fn credentials(
        &self,
        host: &str,
        files: Files,
    ) -> Result<Option<RegistryCredentials>, ConfigError> {
        if files == Files::WarnIfAbsent && self.helper_for(host).is_some() {
            return Ok(None);
        }
        let path = self.path.display();
        let helper = || {
            self.helper_for(host)
                .unwrap_or_else(|| "the credential helper".to_owned())
        };
        let refuse = |message: String| Err(invalid("docker_config", message));
        match docker_credential::get_credential_from_reader(&self.bytes[..], host) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                Ok(Some(RegistryCredentials { username, password }))
            }
            Ok(DockerCredential::IdentityToken(_)) => refuse(format!(
                "{path} gives an identity token for {host}, which prodgate cannot use; \
                 set username and password_file in its [[registry]] instead"
            )),
            Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
            Err(CredentialRetrievalError::HelperFailure {
                helper,
                stdout,
                stderr,
            }) => {
                if stdout.contains(HELPER_NOT_FOUND) || stderr.contains(HELPER_NOT_FOUND) {
                    return Ok(None);
                }
                refuse(format!(
                    "{helper} (from {path}) failed for {host}: {}",
                    first_line(&stderr, &stdout)
                ))
            }
            Err(CredentialRetrievalError::HelperCommunicationError) => refuse(format!(
                "cannot run {} (from {path}) for {host}: is it installed and on PATH?",
                helper()
            )),
            Err(CredentialRetrievalError::MalformedHelperResponse) => refuse(format!(
                "{} (from {path}) answered for {host} with something other than \
                 {{\"Username\": …, \"Secret\": …}}",
                helper()
            )),
            Err(CredentialRetrievalError::CredentialDecodingError) => refuse(format!(
                "the `auth` of {host} in {path} is not base64 of user:password"
            )),
            Err(CredentialRetrievalError::CredentialMismatchError) => refuse(format!(
                "the `auth` of {host} in {path} disagrees with its username and password"
            )),
            Err(
                CredentialRetrievalError::ConfigNotFound
                | CredentialRetrievalError::ConfigReadError,
            ) => refuse(format!(
                "{path} is not a Docker config: `auths`, `credsStore` or `credHelpers` has the wrong shape"
            )),
        }
    }
}

/// What a failed helper said, on one line and short: its stderr, else its
/// stdout (where the helper protocol puts error messages). It failed, so
/// stdout holds no credentials.
fn first_line(stderr: &str, stdout: &str) -> String {
    let said = [stderr, stdout]
        .into_iter()
        .flat_map(str::lines)
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message, non-zero exit");
    said.chars().take(200).collect()
}

/// Where Docker keeps credentials: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}
