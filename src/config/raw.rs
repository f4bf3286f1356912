//! The file as written: serde structs that mirror the TOML one to one.
//! Unknown keys are refused here; everything else is checked in
//! [`super::validate`]. `[[environment]]` and `[[project.environment]]`
//! are made, with their gate keys, by [`super::keys`].

pub(super) use super::keys::{RawEnvironment, RawProjectEnvironment};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub apply_wait: Option<String>,
    pub registry_timeout: Option<String>,
    pub expiry_sweep_interval: Option<String>,
    pub drift_check_interval: Option<String>,
    pub metrics_listen: Option<String>,
    pub max_connections: Option<u32>,
    pub handshake_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connection_age: Option<String>,
    pub keepalive_interval: Option<String>,
    pub metrics_max_connections: Option<u32>,
    pub max_watches_per_principal: Option<u32>,
    pub unclaimed_repositories: Option<String>,
    pub max_checks_per_digest: Option<u32>,
    pub log_format: Option<String>,
    pub docker_config: Option<PathBuf>,
    pub tls: Option<RawTls>,
    pub console: Option<super::console::RawConsole>,
    #[serde(default)]
    pub notify: Vec<RawNotify>,
    #[serde(default)]
    pub registry: Vec<RawRegistry>,
    #[serde(default)]
    pub principal: Vec<RawPrincipal>,
    #[serde(default)]
    pub identity: Vec<RawIdentity>,
    #[serde(default)]
    pub environment: Vec<RawEnvironment>,
    /// Who may ReportCheck outside any project; absent: nobody.
    #[serde(default)]
    pub check_reporters: Vec<String>,
    #[serde(default)]
    pub project: Vec<RawProject>,
    #[serde(default)]
    pub freeze: Vec<RawFreeze>,
    pub checkpoint: Option<super::checkpoint::RawCheckpoint>,
    pub attest: Option<super::attest::RawAttest>,
    pub storage: Option<super::storage::RawStorage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub host: String,
    #[serde(default)]
    pub insecure: bool,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    /// The `host` of another `[[registry]]` entry that is the same registry
    /// under another name; this one is governed by that one's projects.
    pub alias_of: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    /// `"webhook"` (the default) or `"slack"`.
    pub kind: Option<String>,
    // A webhook's keys.
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub secret_file: Option<PathBuf>,
    // A Slack notifier's keys.
    pub channel: Option<String>,
    pub bot_token_file: Option<PathBuf>,
    pub signing_secret_file: Option<PathBuf>,
    pub api_url: Option<String>,
    pub hooks_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrincipal {
    pub name: String,
    /// Other names the same person acts under (e.g. an OIDC principal).
    #[serde(default)]
    pub aliases: Vec<String>,
    pub token_sha256: Option<String>,
    pub certificate_cn: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[[identity]]`: an issuer whose JWTs callers may present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    /// How `[console] identity` refers to it.
    pub name: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub algorithms: Option<Vec<String>>,
    pub max_lifetime: Option<String>,
    #[serde(default)]
    pub rule: Vec<RawIdentityRule>,
}

/// `[[identity.rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentityRule {
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    pub principal: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub groups_claim: Option<String>,
}

/// `[[project]]`: the policy of the repositories its patterns match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    pub name: String,
    pub repositories: Vec<String>,
    /// Absent: anyone may request; present: only these.
    pub requesters: Option<Vec<String>>,
    /// Absent: the top-level list.
    pub check_reporters: Option<Vec<String>>,
    #[serde(default)]
    pub environment: Vec<RawProjectEnvironment>,
    #[serde(default)]
    pub freeze: Vec<RawFreeze>,
}

/// `[[freeze]]` or `[[project.freeze]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFreeze {
    pub environments: Vec<String>,
    pub start: String,
    pub end: String,
    pub reason: String,
}
