//! From the file as written to the typed [`Config`]: one function per
//! section, each naming the key of the first thing it refuses, then the
//! checks that span sections.

use super::raw::{RawConfig, RawEnvironment, RawNotify, RawPrincipal, RawRegistry, RawTls};
use super::{
    Config, ConfigError, ConfigWarning, DEFAULT_APPLY_DEADLINE, DEFAULT_APPLY_WAIT,
    DEFAULT_APPROVAL_TTL, DEFAULT_DATA_DIR, DEFAULT_EXPIRY_SWEEP, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_REGISTRY_TIMEOUT, Files, Loaded, LogFormat,
    NotifyConfig, NotifyEvent, PrincipalConfig, RegistryConfig, Secret, TlsConfig, credentials,
    invalid,
};
use crate::domain::names::{Repository, validate_tag};
use crate::domain::policy::{Approver, EnvironmentPolicy, Principal};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) fn config(raw: RawConfig, files: Files) -> Result<Loaded, ConfigError> {
    let mut cx = Cx {
        files,
        warnings: Vec::new(),
    };
    let mut c = top_level(&raw)?;
    c.tls = raw.tls.map(|t| tls(t, &mut cx)).transpose()?;
    c.notify = raw
        .notify
        .into_iter()
        .enumerate()
        .map(|(i, n)| notify(i, n, &mut cx))
        .collect::<Result<_, _>>()?;
    let docker = credentials::DockerConfig::load(raw.docker_config.as_deref(), &mut cx)?;
    c.registries = registries(raw.registry, docker.as_ref(), &mut cx)?;
    c.principals = principals(raw.principal)?;
    c.environments = environments(&raw.environment, &c.principals, &mut cx)?;
    across_sections(&c)?;
    Ok(Loaded {
        config: c,
        warnings: cx.warnings,
    })
}

/// What validation carries from section to section.
pub(super) struct Cx {
    pub files: Files,
    warnings: Vec<ConfigWarning>,
}

impl Cx {
    pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            key: key.into(),
            message: message.into(),
        });
    }

    /// The bytes of a file the server reads at start-up, or `None` when it
    /// does not exist here and [`Files::WarnIfAbsent`] makes that a warning.
    pub fn read(&mut self, key: &str, path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && self.files == Files::WarnIfAbsent =>
            {
                self.warn(
                    key,
                    format!(
                        "{} does not exist on this machine; `prodgate serve` will need it",
                        path.display()
                    ),
                );
                Ok(None)
            }
            Err(e) => Err(invalid(key, format!("cannot read {}: {e}", path.display()))),
        }
    }
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
    let max_connections = match raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS) {
        0 => return Err(invalid("max_connections", "must be at least 1")),
        n => n as usize,
    };
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
        max_connections,
        handshake_timeout: duration(
            "handshake_timeout",
            raw.handshake_timeout.as_deref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?,
        log_format,
        tls: None,
        notify: Vec::new(),
        registries: Vec::new(),
        principals: Vec::new(),
        environments: Vec::new(),
    })
}

/// `[tls]`. The server reads the files again when it starts; here they only
/// have to be readable.
fn tls(t: RawTls, cx: &mut Cx) -> Result<TlsConfig, ConfigError> {
    cx.read("tls.cert", &t.cert)?;
    cx.read("tls.key", &t.key)?;
    if let Some(ca) = &t.client_ca {
        cx.read("tls.client_ca", ca)?;
    }
    Ok(TlsConfig {
        cert: t.cert,
        key: t.key,
        client_ca: t.client_ca,
    })
}

/// `[[notify]]` number `i`.
fn notify(i: usize, n: RawNotify, cx: &mut Cx) -> Result<NotifyConfig, ConfigError> {
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
    let secret = match &n.secret_file {
        None => None,
        Some(path) => {
            let key = format!("notify[{i}].secret_file");
            match cx.read(&key, path)? {
                None => None,
                Some(mut bytes) => {
                    // `echo KEY > file` leaves a newline the sender's key lacks.
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    if bytes.is_empty() {
                        return Err(invalid(key, format!("{} is empty", path.display())));
                    }
                    Some(Secret::new(bytes))
                }
            }
        }
    };
    Ok(NotifyConfig {
        url: n.url,
        events,
        secret,
    })
}

/// Every `[[registry]]`: hosts are unique and parse as registry hosts.
fn registries(
    raw: Vec<RawRegistry>,
    docker: Option<&credentials::DockerConfig>,
    cx: &mut Cx,
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
        let credentials = credentials::registry_credentials(i, &r, docker, cx)?;
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
/// one, and approvals that the configured principals can give.
fn environments(
    raw: &[RawEnvironment],
    principals: &[PrincipalConfig],
    cx: &mut Cx,
) -> Result<Vec<EnvironmentPolicy>, ConfigError> {
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
        let policy = EnvironmentPolicy {
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
            // Zero means no deadline: keep retrying until the tag moves.
            apply_deadline: Some(any_duration(
                &key("apply_deadline"),
                e.apply_deadline.as_deref(),
                DEFAULT_APPLY_DEADLINE,
            )?)
            .filter(|d| !d.is_zero()),
            // The gates of issue 10, off until their keys are parsed.
            required_groups: Vec::new(),
            required_checks: Vec::new(),
            min_soak: None,
            window: None,
            break_glass: Vec::new(),
            rollback_approvals: e.required_approvals,
            freezes: Vec::new(),
        };
        approvals_can_be_given(i, &policy, principals, cx)?;
        environments.push(policy);
    }
    Ok(environments)
}

/// Refuses a policy no promotion can ever pass: an approver that names no
/// principal, a group nobody is in, more approvals than there are distinct
/// approvers. Warns when only some requesters are stuck: with self-approval
/// off and exactly `required_approvals` approvers, a promotion requested by
/// one of them can never collect enough.
fn approvals_can_be_given(
    i: usize,
    policy: &EnvironmentPolicy,
    principals: &[PrincipalConfig],
    cx: &mut Cx,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("environment[{i}].{field}");
    // As authentication will see them, matched as approvals will be.
    let people: Vec<Principal> = principals
        .iter()
        .map(|p| Principal {
            name: p.name.clone(),
            groups: p.groups.clone(),
        })
        .collect();
    // Sorted, so messages list names in a stable order.
    let mut can_approve = BTreeSet::new();
    for a in &policy.approvers {
        let members: Vec<&str> = people
            .iter()
            .filter(|p| a.matches(p))
            .map(|p| p.name.as_str())
            .collect();
        if members.is_empty() {
            return Err(invalid(
                key("approvers"),
                match a {
                    Approver::Principal(name) => {
                        format!("{name:?} is not a configured principal")
                    }
                    Approver::Group(g) => format!(
                        "\"group:{g}\" has no members: no [[principal]] lists {g:?} in groups"
                    ),
                },
            ));
        }
        can_approve.extend(members);
    }
    let required = policy.required_approvals as usize;
    let quoted: Vec<String> = can_approve.iter().map(|n| format!("{n:?}")).collect();
    if required > can_approve.len() {
        return Err(invalid(
            key("required_approvals"),
            format!(
                "{required} approvals can never be given: only {} principal(s) can approve ({})",
                can_approve.len(),
                quoted.join(", ")
            ),
        ));
    }
    if required > 0 && required == can_approve.len() && !policy.allow_self_approval {
        cx.warn(
            key("required_approvals"),
            format!(
                "a promotion requested by {} can never be approved: self-approval is off, \
                 and the other approvers can give only {} of the {required} approval(s) needed",
                quoted.join(" or "),
                required - 1
            ),
        );
    }
    Ok(())
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
