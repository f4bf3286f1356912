//! The file as written: serde structs that mirror the TOML one to one.
//! Unknown keys are refused here; everything else is checked in
//! [`super::validate`].

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
    pub keepalive_interval: Option<String>,
    pub metrics_max_connections: Option<u32>,
    pub max_watches_per_principal: Option<u32>,
    pub unclaimed_repositories: Option<String>,
    pub max_checks_per_digest: Option<u32>,
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
    pub required_groups: Option<Vec<String>>,
    pub required_checks: Option<Vec<String>>,
    pub min_soak: Option<String>,
    pub allowed_days: Option<Vec<String>>,
    pub allowed_hours: Option<String>,
    pub time_zone: Option<String>,
    pub break_glass: Option<Vec<String>>,
    pub rollback_approvals: Option<u32>,
    pub restore_on_drift: Option<bool>,
    pub signature_keys: Option<Vec<PathBuf>>,
    pub attach_record: Option<bool>,
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

/// `[[project.environment]]`: a top-level environment's overridable keys,
/// each absent one inherited. `tag`, `requires` and `apply_deadline` are
/// not among them (a tag belongs to the environment, whoever's repository it
/// is in), so serde refuses them as unknown.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProjectEnvironment {
    pub name: String,
    pub approvers: Option<Vec<String>>,
    pub required_approvals: Option<u32>,
    pub allow_self_approval: Option<bool>,
    pub approval_ttl: Option<String>,
    pub required_groups: Option<Vec<String>>,
    pub required_checks: Option<Vec<String>>,
    pub min_soak: Option<String>,
    pub allowed_days: Option<Vec<String>>,
    pub allowed_hours: Option<String>,
    pub time_zone: Option<String>,
    pub break_glass: Option<Vec<String>>,
    pub rollback_approvals: Option<u32>,
    pub restore_on_drift: Option<bool>,
    pub signature_keys: Option<Vec<PathBuf>>,
    pub attach_record: Option<bool>,
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

/// The keys an environment's policy is made of that a project may override,
/// as one view of either section, so both are read by the same code.
pub(super) struct PolicyKeys<'a> {
    pub approvers: Option<&'a [String]>,
    pub required_approvals: Option<u32>,
    pub allow_self_approval: Option<bool>,
    pub approval_ttl: Option<&'a str>,
    pub required_groups: Option<&'a [String]>,
    pub required_checks: Option<&'a [String]>,
    pub min_soak: Option<&'a str>,
    pub allowed_days: Option<&'a [String]>,
    pub allowed_hours: Option<&'a str>,
    pub time_zone: Option<&'a str>,
    pub break_glass: Option<&'a [String]>,
    pub rollback_approvals: Option<u32>,
    pub restore_on_drift: Option<bool>,
    pub signature_keys: Option<&'a [PathBuf]>,
    pub attach_record: Option<bool>,
}

impl RawEnvironment {
    pub fn policy_keys(&self) -> PolicyKeys<'_> {
        PolicyKeys {
            approvers: Some(&self.approvers),
            required_approvals: Some(self.required_approvals),
            allow_self_approval: Some(self.allow_self_approval),
            approval_ttl: self.approval_ttl.as_deref(),
            required_groups: self.required_groups.as_deref(),
            required_checks: self.required_checks.as_deref(),
            min_soak: self.min_soak.as_deref(),
            allowed_days: self.allowed_days.as_deref(),
            allowed_hours: self.allowed_hours.as_deref(),
            time_zone: self.time_zone.as_deref(),
            break_glass: self.break_glass.as_deref(),
            rollback_approvals: self.rollback_approvals,
            restore_on_drift: self.restore_on_drift,
            signature_keys: self.signature_keys.as_deref(),
            attach_record: self.attach_record,
        }
    }
}

impl RawProjectEnvironment {
    pub fn policy_keys(&self) -> PolicyKeys<'_> {
        PolicyKeys {
            approvers: self.approvers.as_deref(),
            required_approvals: self.required_approvals,
            allow_self_approval: self.allow_self_approval,
            approval_ttl: self.approval_ttl.as_deref(),
            required_groups: self.required_groups.as_deref(),
            required_checks: self.required_checks.as_deref(),
            min_soak: self.min_soak.as_deref(),
            allowed_days: self.allowed_days.as_deref(),
            allowed_hours: self.allowed_hours.as_deref(),
            time_zone: self.time_zone.as_deref(),
            break_glass: self.break_glass.as_deref(),
            rollback_approvals: self.rollback_approvals,
            restore_on_drift: self.restore_on_drift,
            signature_keys: self.signature_keys.as_deref(),
            attach_record: self.attach_record,
        }
    }
}
