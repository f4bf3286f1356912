//! From the file as written to the typed [`Config`]: one function per
//! section, each naming the key of the first thing it refuses, then the
//! checks that span sections.

use super::raw::{RawConfig, RawEnvironment, RawNotify, RawPrincipal, RawRegistry, RawTls};
use super::{
    Config, ConfigError, DEFAULT_APPLY_WAIT, DEFAULT_APPROVAL_TTL, DEFAULT_DATA_DIR,
    DEFAULT_EXPIRY_SWEEP, DEFAULT_LISTEN, DEFAULT_REGISTRY_TIMEOUT, LogFormat, NotifyConfig,
    NotifyEvent, PrincipalConfig, RegistryConfig, TlsConfig, credentials, invalid,
};
use crate::domain::names::{Repository, validate_tag};
use crate::domain::policy::{Approver, EnvironmentPolicy};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

pub(super) fn config(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut c = top_level(&raw)?;
    c.tls = raw.tls.map(tls).transpose()?;
    c.notify = raw
        .notify
        .into_iter()
        .enumerate()
        .map(|(i, n)| notify(i, n))
        .collect::<Result<_, _>>()?;
    let docker_auths = credentials::docker_config_auths(raw.docker_config.as_deref())?;
    c.registries = registries(raw.registry, docker_auths.as_ref())?;
    c.principals = principals(raw.principal)?;
    c.environments = environments(&raw.environment)?;
    across_sections(&c)?;
    Ok(c)
}

/// The keys outside any section; the sections start empty.
fn top_level(raw: &RawConfig) -> Result<Config, ConfigError> {
    let listen = raw
        .listen
        .clone()
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    if listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            "listen",
            format!("{listen:?} is not an address like \"127.0.0.1:50051\""),
        ));
    }
    if let Some(m) = &raw.metrics_listen
        && m.parse::<std::net::SocketAddr>().is_err()
    {
        return Err(invalid(
            "metrics_listen",
            format!("{m:?} is not an address like \"127.0.0.1:9090\""),
        ));
    }
    let log_format = match raw.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(invalid(
                "log_format",
                format!("{other:?} is not one of \"text\", \"json\""),
            ));
        }
    };
    Ok(Config {
        listen,
        data_dir: raw
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        // Zero is meaningful here: answer at once, never wait for the tag move.
        apply_wait: any_duration("apply_wait", raw.apply_wait.as_deref(), DEFAULT_APPLY_WAIT)?,
        registry_timeout: duration(
            "registry_timeout",
            raw.registry_timeout.as_deref(),
            DEFAULT_REGISTRY_TIMEOUT,
        )?,
        expiry_sweep_interval: duration(
            "expiry_sweep_interval",
            raw.expiry_sweep_interval.as_deref(),
            DEFAULT_EXPIRY_SWEEP,
        )?,
        metrics_listen: raw.metrics_listen.clone(),
        log_format,
        tls: None,
        notify: Vec::new(),
        registries: Vec::new(),
        principals: Vec::new(),
        environments: Vec::new(),
    })
}

/// `[tls]`. The files are read when the server starts.
fn tls(t: RawTls) -> Result<TlsConfig, ConfigError> {
    Ok(TlsConfig {
        cert: t.cert,
        key: t.key,
        client_ca: t.client_ca,
    })
}

/// `[[notify]]` number `i`.
fn notify(i: usize, n: RawNotify) -> Result<NotifyConfig, ConfigError> {
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
    Ok(NotifyConfig { url: n.url, events })
}

/// Every `[[registry]]`: hosts are unique and parse as registry hosts.
fn registries(
    raw: Vec<RawRegistry>,
    docker_auths: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Vec<RegistryConfig>, ConfigError> {
    let mut registries = Vec::new();
    let mut hosts = HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("registry[{i}].host");
        // A repository on this host must parse, so check the host through it.
        Repository::parse(&format!("{}/x", r.host))
            .map_err(|e| invalid(&key, format!("{:?} is not a registry host: {e}", r.host)))?;
        if !hosts.insert(r.host.clone()) {
            return Err(invalid(key, format!("{:?} is listed twice", r.host)));
        }
        let credentials = credentials::registry_credentials(i, &r, docker_auths)?;
        registries.push(RegistryConfig {
            host: r.host,
            insecure: r.insecure,
            credentials,
        });
    }
    Ok(registries)
}

/// Every `[[principal]]`: unique names, each with a way to authenticate.
fn principals(raw: Vec<RawPrincipal>) -> Result<Vec<PrincipalConfig>, ConfigError> {
    let mut principals = Vec::new();
    let mut names = HashSet::new();
    for (i, p) in raw.into_iter().enumerate() {
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
    Ok(principals)
}

/// Every `[[environment]]`: unique names and tags, `requires` naming another
/// one.
fn environments(raw: &[RawEnvironment]) -> Result<Vec<EnvironmentPolicy>, ConfigError> {
    let mut environments: Vec<EnvironmentPolicy> = Vec::new();
    for (i, e) in raw.iter().enumerate() {
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
            && !raw.iter().any(|x| &x.name == req)
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
    Ok(environments)
}

/// What one section cannot see alone.
fn across_sections(c: &Config) -> Result<(), ConfigError> {
    let cert_principals = c.principals.iter().any(|p| p.certificate_cn.is_some());
    if cert_principals && c.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
        return Err(invalid(
            "tls.client_ca",
            "principals with certificate_cn need [tls] with client_ca",
        ));
    }
    Ok(())
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
