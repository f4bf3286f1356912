//! The file as written: serde structs that mirror the TOML one to one.
//! Unknown keys are refused here; everything else is checked in
//! [`super::validate`].

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub apply_wait: Option<String>,
    pub registry_timeout: Option<String>,
    pub expiry_sweep_interval: Option<String>,
    pub metrics_listen: Option<String>,
    pub max_connections: Option<u32>,
    pub handshake_timeout: Option<String>,
    pub log_format: Option<String>,
    pub docker_config: Option<PathBuf>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub notify: Vec<RawNotify>,
    #[serde(default)]
    pub registry: Vec<RawRegistry>,
    #[serde(default)]
    pub principal: Vec<RawPrincipal>,
    #[serde(default)]
    pub environment: Vec<RawEnvironment>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub url: String,
    pub events: Vec<String>,
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrincipal {
    pub name: String,
    pub token_sha256: Option<String>,
    pub certificate_cn: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    pub name: String,
    pub tag: String,
    pub requires: Option<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
    pub required_approvals: u32,
    #[serde(default)]
    pub allow_self_approval: bool,
    pub approval_ttl: Option<String>,
    pub apply_deadline: Option<String>,
}
