//! Configuration: a TOML file, validated once at start-up into the typed
//! [`Config`] the rest of the service uses. Unknown keys are errors, and every
//! error names the key it is about.
//!
//! - [`raw`]: the file as written (serde);
//! - [`validate`]: one function per section, from raw to typed;
//! - [`credentials`]: registry secrets and the Docker config.

mod credentials;
mod raw;
mod validate;

use crate::domain::policy::EnvironmentPolicy;
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
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        validate::config(raw)
    }

    pub fn environment(&self, name: &str) -> Option<&EnvironmentPolicy> {
        self.environments.iter().find(|e| e.name == name)
    }

    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries.iter().find(|r| r.host == host)
    }
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
