//! Configuration: a TOML file, validated once at start-up into the typed
//! [`Config`] the rest of the service uses. Unknown keys are errors, and every
//! error names the key it is about.

use crate::domain::names::{Repository, validate_tag};
use crate::domain::policy::{Approver, EnvironmentPolicy};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long Approve waits for the tag move before answering APPROVED.
pub const DEFAULT_APPLY_WAIT: Duration = Duration::from_secs(1);
/// Deadline of one registry request.
pub const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often pending promotions are checked for expiry.
pub const DEFAULT_EXPIRY_SWEEP: Duration = Duration::from_secs(5);
/// Connections served at once; each is a file descriptor, so this must stay
/// below the process's open-file limit (deploy/README.md).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// How long a new connection may take to finish the TLS handshake (with TLS)
/// and send the HTTP/2 preface before it is closed.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    apply_wait: Option<String>,
    registry_timeout: Option<String>,
    expiry_sweep_interval: Option<String>,
    metrics_listen: Option<String>,
    max_connections: Option<u32>,
    handshake_timeout: Option<String>,
    log_format: Option<String>,
    docker_config: Option<PathBuf>,
    tls: Option<RawTls>,
    #[serde(default)]
    notify: Vec<RawNotify>,
    #[serde(default)]
    registry: Vec<RawRegistry>,
    #[serde(default)]
    principal: Vec<RawPrincipal>,
    #[serde(default)]
    environment: Vec<RawEnvironment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: String,
    #[serde(default)]
    insecure: bool,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    url: String,
    events: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    token_sha256: Option<String>,
    certificate_cn: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    name: String,
    tag: String,
    requires: Option<String>,
    #[serde(default)]
    approvers: Vec<String>,
    required_approvals: u32,
    #[serde(default)]
    allow_self_approval: bool,
    approval_ttl: Option<String>,
}

/// How prodgate authenticates to a registry. The secret is read at start-up
/// from the environment or a file, never from the config itself, and is
/// never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub host: String,
    pub insecure: bool,
    /// From `username` + `password_env`/`password_file`, else from the
    /// Docker config's `auths`, else none (anonymous).
    pub credentials: Option<RegistryCredentials>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalConfig {
    pub name: String,
    /// SHA-256 of the principal's bearer token, if it uses one.
    pub token_sha256: Option<[u8; 32]>,
    /// Common name of the principal's client certificate (mTLS), if any.
    pub certificate_cn: Option<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Events a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    Requested,
    Approved,
    Promoted,
    Rejected,
    Failed,
    Cancelled,
    Expired,
    Superseded,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 8] = [
        NotifyEvent::Requested,
        NotifyEvent::Approved,
        NotifyEvent::Promoted,
        NotifyEvent::Rejected,
        NotifyEvent::Failed,
        NotifyEvent::Cancelled,
        NotifyEvent::Expired,
        NotifyEvent::Superseded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::Requested => "requested",
            NotifyEvent::Approved => "approved",
            NotifyEvent::Promoted => "promoted",
            NotifyEvent::Rejected => "rejected",
            NotifyEvent::Failed => "failed",
            NotifyEvent::Cancelled => "cancelled",
            NotifyEvent::Expired => "expired",
            NotifyEvent::Superseded => "superseded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    pub url: String,
    pub events: Vec<NotifyEvent>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub apply_wait: Duration,
    pub registry_timeout: Duration,
    pub expiry_sweep_interval: Duration,
    pub metrics_listen: Option<String>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub log_format: LogFormat,
    pub tls: Option<TlsConfig>,
    pub notify: Vec<NotifyConfig>,
    pub registries: Vec<RegistryConfig>,
    pub principals: Vec<PrincipalConfig>,
    pub environments: Vec<EnvironmentPolicy>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        raw.validate()
    }

    pub fn environment(&self, name: &str) -> Option<&EnvironmentPolicy> {
        self.environments.iter().find(|e| e.name == name)
    }

    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries.iter().find(|r| r.host == host)
    }
}

/// A duration like "24h", or `default` when the key is absent.
fn any_duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v)
            .map_err(|e| invalid(key, format!("{v:?} is not a duration like \"24h\": {e}"))),
    }
}

/// Like [`any_duration`], refusing zero.
fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    let d = any_duration(key, value, default)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

/// A name used in storage keys and approver lists.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(invalid(
            key,
            "must be 1 to 128 characters without control characters",
        ));
    }
    Ok(())
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let listen = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("{listen:?} is not an address like \"127.0.0.1:50051\""),
            ));
        }
        let docker_auths = docker_config_auths(self.docker_config.as_deref())?;
        let mut registries = Vec::new();
        let mut hosts = HashSet::new();
        for (i, r) in self.registry.into_iter().enumerate() {
            let key = format!("registry[{i}].host");
            // A repository on this host must parse, so check the host through it.
            Repository::parse(&format!("{}/x", r.host))
                .map_err(|e| invalid(&key, format!("{:?} is not a registry host: {e}", r.host)))?;
            if !hosts.insert(r.host.clone()) {
                return Err(invalid(key, format!("{:?} is listed twice", r.host)));
            }
            let credentials = registry_credentials(i, &r, docker_auths.as_ref())?;
            registries.push(RegistryConfig {
                host: r.host,
                insecure: r.insecure,
                credentials,
            });
        }
        let mut principals = Vec::new();
        let mut names = HashSet::new();
        for (i, p) in self.principal.into_iter().enumerate() {
            check_name(&format!("principal[{i}].name"), &p.name)?;
            if p.name == crate::domain::model::SERVICE_ACTOR {
                return Err(invalid(
                    format!("principal[{i}].name"),
                    "\"prodgate\" is reserved for the service itself",
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(invalid(
                    format!("principal[{i}].name"),
                    format!("{:?} is listed twice", p.name),
                ));
            }
            let token_sha256 = match &p.token_sha256 {
                Some(hex_hash) => {
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(hex_hash, &mut h).map_err(|_| {
                        invalid(
                            format!("principal[{i}].token_sha256"),
                            "must be 64 hex characters: the SHA-256 of the token (`printf %s TOKEN | sha256sum`)",
                        )
                    })?;
                    Some(h)
                }
                None => None,
            };
            if let Some(cn) = &p.certificate_cn {
                check_name(&format!("principal[{i}].certificate_cn"), cn)?;
            }
            if token_sha256.is_none() && p.certificate_cn.is_none() {
                return Err(invalid(
                    format!("principal[{i}]"),
                    "needs token_sha256 or certificate_cn to authenticate",
                ));
            }
            for (j, g) in p.groups.iter().enumerate() {
                check_name(&format!("principal[{i}].groups[{j}]"), g)?;
            }
            principals.push(PrincipalConfig {
                name: p.name,
                token_sha256,
                certificate_cn: p.certificate_cn,
                groups: p.groups,
            });
        }
        let mut environments: Vec<EnvironmentPolicy> = Vec::new();
        for (i, e) in self.environment.iter().enumerate() {
            let key = |field: &str| format!("environment[{i}].{field}");
            check_name(&key("name"), &e.name)?;
            if environments.iter().any(|x| x.name == e.name) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is listed twice", e.name),
                ));
            }
            validate_tag(&e.tag).map_err(|err| invalid(key("tag"), err.to_string()))?;
            if environments.iter().any(|x| x.tag == e.tag) {
                return Err(invalid(
                    key("tag"),
                    format!("tag {:?} belongs to another environment", e.tag),
                ));
            }
            if let Some(req) = &e.requires
                && !self.environment.iter().any(|x| &x.name == req)
            {
                return Err(invalid(
                    key("requires"),
                    format!("no environment is named {req:?}"),
                ));
            }
            if e.requires.as_deref() == Some(e.name.as_str()) {
                return Err(invalid(
                    key("requires"),
                    "an environment cannot require itself",
                ));
            }
            if e.required_approvals > 0 && e.approvers.is_empty() {
                return Err(invalid(
                    key("approvers"),
                    format!(
                        "required_approvals is {} but no approvers are designated",
                        e.required_approvals
                    ),
                ));
            }
            for (j, a) in e.approvers.iter().enumerate() {
                check_name(&format!("environment[{i}].approvers[{j}]"), a)?;
            }
            environments.push(EnvironmentPolicy {
                name: e.name.clone(),
                tag: e.tag.clone(),
                requires: e.requires.clone(),
                approvers: e.approvers.iter().map(|a| Approver::parse(a)).collect(),
                required_approvals: e.required_approvals,
                allow_self_approval: e.allow_self_approval,
                approval_ttl: duration(
                    &key("approval_ttl"),
                    e.approval_ttl.as_deref(),
                    DEFAULT_APPROVAL_TTL,
                )?,
            });
        }
        let metrics_listen = match self.metrics_listen {
            Some(m) if m.parse::<std::net::SocketAddr>().is_err() => {
                return Err(invalid(
                    "metrics_listen",
                    format!("{m:?} is not an address like \"127.0.0.1:9090\""),
                ));
            }
            m => m,
        };
        let max_connections = match self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS) {
            0 => return Err(invalid("max_connections", "must be at least 1")),
            n => n as usize,
        };
        let log_format = match self.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?} is not one of \"text\", \"json\""),
                ));
            }
        };
        let tls = self.tls.map(|t| TlsConfig {
            cert: t.cert,
            key: t.key,
            client_ca: t.client_ca,
        });
        let cert_principals = principals.iter().any(|p| p.certificate_cn.is_some());
        if cert_principals && tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
            return Err(invalid(
                "tls.client_ca",
                "principals with certificate_cn need [tls] with client_ca",
            ));
        }
        let mut notify = Vec::new();
        for (i, n) in self.notify.into_iter().enumerate() {
            if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                return Err(invalid(
                    format!("notify[{i}].url"),
                    format!("{:?} is not an http(s) URL", n.url),
                ));
            }
            let mut events = Vec::new();
            for (j, e) in n.events.iter().enumerate() {
                let ev = NotifyEvent::ALL
                    .into_iter()
                    .find(|x| x.name() == e)
                    .ok_or_else(|| {
                        invalid(
                            format!("notify[{i}].events[{j}]"),
                            format!(
                                "{e:?} is not one of {}",
                                NotifyEvent::ALL.map(NotifyEvent::name).join(", ")
                            ),
                        )
                    })?;
                events.push(ev);
            }
            notify.push(NotifyConfig { url: n.url, events });
        }
        Ok(Config {
            metrics_listen,
            max_connections,
            handshake_timeout: duration(
                "handshake_timeout",
                self.handshake_timeout.as_deref(),
                DEFAULT_HANDSHAKE_TIMEOUT,
            )?,
            log_format,
            tls,
            notify,
            listen,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            // Zero is meaningful here: answer at once, never wait for the tag move.
            apply_wait: any_duration("apply_wait", self.apply_wait.as_deref(), DEFAULT_APPLY_WAIT)?,
            registry_timeout: duration(
                "registry_timeout",
                self.registry_timeout.as_deref(),
                DEFAULT_REGISTRY_TIMEOUT,
            )?,
            expiry_sweep_interval: duration(
                "expiry_sweep_interval",
                self.expiry_sweep_interval.as_deref(),
                DEFAULT_EXPIRY_SWEEP,
            )?,
            registries,
            principals,
            environments,
        })
    }
}

/// `username` + `password_env`/`password_file` of `registry[i]`, or the
/// Docker config's entry for its host.
fn registry_credentials(
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
fn docker_config_auths(
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

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    fn base() -> String {
        format!(
            r#"
listen = "127.0.0.1:0"
[[registry]]
host = "127.0.0.1:5000"
insecure = true
[[principal]]
name = "alice"
token_sha256 = "{TOKEN_HASH}"
groups = ["rm"]
[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0
[[environment]]
name = "production"
tag = "production"
requires = "staging"
approvers = ["group:rm", "carol"]
required_approvals = 1
approval_ttl = "2h"
"#
        )
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::parse(&base()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        let prod = c.environment("production").unwrap();
        assert_eq!(prod.approval_ttl, Duration::from_secs(7200));
        assert_eq!(prod.requires.as_deref(), Some("staging"));
        assert_eq!(
            c.environment("staging").unwrap().approval_ttl,
            DEFAULT_APPROVAL_TTL
        );
        assert!(c.registry("127.0.0.1:5000").unwrap().insecure);
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn apply_wait_may_be_zero_but_timeouts_may_not() {
        let with = |line: &str| Config::parse(&format!("{line}\n{}", base()));
        assert_eq!(
            with("apply_wait = \"0ms\"").unwrap().apply_wait,
            Duration::ZERO
        );
        assert_eq!(
            with("apply_wait = \"0s\"").unwrap().apply_wait,
            Duration::ZERO
        );
        assert!(
            with("apply_wait = \"soon\"")
                .unwrap_err()
                .to_string()
                .contains("apply_wait")
        );
        assert!(
            with("handshake_timeout = \"0s\"")
                .unwrap_err()
                .to_string()
                .contains("handshake_timeout")
        );
        assert!(
            with("max_connections = 0")
                .unwrap_err()
                .to_string()
                .contains("max_connections")
        );
        assert!(
            with("registry_timeout = \"0s\"")
                .unwrap_err()
                .to_string()
                .contains("registry_timeout")
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(&format!("{}\nbogus = 1", base())).contains("bogus"));
        assert!(
            err(&base().replace("insecure = true", "insecure = true\ncolour = 1"))
                .contains("colour")
        );
        assert!(err(&base().replace("\"2h\"", "\"soon\"")).contains("environment[1].approval_ttl"));
        assert!(err(&base().replace(TOKEN_HASH, "abc")).contains("principal[0].token_sha256"));
        assert!(
            err(&base().replace("requires = \"staging\"", "requires = \"qa\""))
                .contains("environment[1].requires")
        );
        assert!(
            err(&base().replace("tag = \"production\"", "tag = \"bad tag\""))
                .contains("environment[1].tag")
        );
        assert!(
            err(&base().replace("\"127.0.0.1:5000\"", "\"not a host\""))
                .contains("registry[0].host")
        );
        assert!(err(&base().replace("127.0.0.1:0", "nowhere")).contains("listen"));
        assert!(
            err(&base().replace("approvers = [\"group:rm\", \"carol\"]", ""))
                .contains("environment[1].approvers")
        );
    }
}
