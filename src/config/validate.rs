//! From the file as written to the typed [`Config`]: one function per
//! section, each naming the key of the first thing it refuses, then the
//! checks that span sections.

use super::keys::with_defaults;
use super::policy::{People, add_freezes, apply_policy_keys, members, policy_can_pass};
use super::raw::{
    RawConfig, RawEnvironment, RawNotify, RawPrincipal, RawProject, RawRegistry, RawTls,
};
use super::{
    CaCert, ClientAuth, ClientCa, Config, ConfigError, ConfigWarning, DEFAULT_APPLY_DEADLINE,
    DEFAULT_APPLY_WAIT, DEFAULT_DATA_DIR, DEFAULT_DRIFT_CHECK, DEFAULT_EXPIRY_SWEEP,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_LISTEN,
    DEFAULT_MAX_CHECKS_PER_DIGEST, DEFAULT_MAX_CONNECTION_AGE, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_WATCHES_PER_PRINCIPAL, DEFAULT_METRICS_MAX_CONNECTIONS, DEFAULT_REGISTRY_TIMEOUT,
    DEFAULT_SLACK_API_URL, DEFAULT_SLACK_HOOKS_URL, Files, Loaded, LogFormat, NotifyConfig,
    NotifyEvent, PolicyVersion, PrincipalConfig, ProjectConfig, RegistryConfig, RepositoryPattern,
    Secret, SlackConfig, TlsConfig, credentials, invalid,
};
use crate::domain::names::{Repository, validate_tag};
use crate::domain::policy::{Approver, EnvironmentPolicy};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) fn config(raw: RawConfig, files: Files) -> Result<Loaded, ConfigError> {
    let mut cx = Cx {
        files,
        warnings: Vec::new(),
    };
    let mut c = top_level(&raw)?;
    c.tls = raw.tls.map(|t| tls(t, &mut cx)).transpose()?;
    c.console = raw
        .console
        .map(|r| super::console::console(r, &mut cx))
        .transpose()?;
    for (i, n) in raw.notify.into_iter().enumerate() {
        match notify(i, n, &mut cx)? {
            Notifier::Webhook(w) => c.notify.push(w),
            Notifier::Slack(s) => c.slack.push(s),
        }
    }
    if !c.slack.is_empty() && c.console.is_none() {
        cx.warn(
            "notify",
            "a Slack notifier without [console]: its messages have no link, and the Approve and \
             Reject buttons have nowhere to post ({console public_url}/slack/interactions)",
        );
    }
    let docker = credentials::DockerConfig::load(raw.docker_config.as_deref(), &mut cx)?;
    c.registries = registries(raw.registry, docker.as_ref(), &mut cx)?;
    c.principals = principals(raw.principal)?;
    c.identities = super::identity::identities(raw.identity, &c.principals, &mut cx)?;
    if let Some(console) = &c.console {
        super::console::check_identity(console, &c.identities)?;
    }
    let people = People::new(&c.principals, &c.identities);
    c.check_reporters = members("check_reporters", &raw.check_reporters, &people, &mut cx)?;
    c.environments = environments(&raw.environment, &people, &c.check_reporters, &mut cx)?;
    // Before projects copy the environments: a top-level freeze holds for
    // every repository.
    add_freezes("freeze", &raw.freeze, &mut c.environments)?;
    c.projects = projects(&raw.project, &raw.environment, &c, &people, &mut cx)?;
    across_sections(&c)?;
    c.policy = PolicyVersion::of(&c);
    c.storage = super::storage::storage(raw.storage, &mut cx)?;
    c.checkpoint = raw
        .checkpoint
        .map(|r| super::checkpoint::checkpoint(r, &c.data_dir, &mut cx))
        .transpose()?;
    c.attest = raw
        .attest
        .map(|r| super::attest::attest(r, &mut cx))
        .transpose()?;
    if c.attest.is_none() {
        let top = raw
            .environment
            .iter()
            .enumerate()
            .filter(|(_, e)| e.attest == Some(true))
            .map(|(i, _)| format!("environment[{i}].attest"));
        let projects = raw.project.iter().enumerate().flat_map(|(j, p)| {
            p.environment
                .iter()
                .enumerate()
                .filter(|(_, e)| e.attest == Some(true))
                .map(move |(i, _)| format!("project[{j}].environment[{i}].attest"))
        });
        if let Some(key) = top.chain(projects).next() {
            return Err(invalid(
                key,
                "attest = true needs an [attest] section with key_file (make one with \
                 `prodgate keygen --attest --out DIR`) and verifier_id",
            ));
        }
    }
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
    pub fn new(files: Files) -> Cx {
        Cx {
            files,
            warnings: Vec::new(),
        }
    }

    pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            key: key.into(),
            message: message.into(),
            strict: false,
        });
    }

    /// A warning that `check-config --strict` makes an error.
    pub fn warn_strict(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            key: key.into(),
            message: message.into(),
            strict: true,
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
    let metrics_max_connections = match raw
        .metrics_max_connections
        .unwrap_or(DEFAULT_METRICS_MAX_CONNECTIONS)
    {
        0 => return Err(invalid("metrics_max_connections", "must be at least 1")),
        n => n as usize,
    };
    let max_watches_per_principal = match raw
        .max_watches_per_principal
        .unwrap_or(DEFAULT_MAX_WATCHES_PER_PRINCIPAL)
    {
        0 => return Err(invalid("max_watches_per_principal", "must be at least 1")),
        n => n as usize,
    };
    let unclaimed_repositories = match raw.unclaimed_repositories.as_deref() {
        None | Some("default") => super::Unclaimed::Default,
        Some("refuse") => super::Unclaimed::Refuse,
        Some(other) => {
            return Err(invalid(
                "unclaimed_repositories",
                format!("{other:?} is not one of \"default\", \"refuse\""),
            ));
        }
    };
    let max_checks_per_digest = match raw
        .max_checks_per_digest
        .unwrap_or(DEFAULT_MAX_CHECKS_PER_DIGEST)
    {
        0 => return Err(invalid("max_checks_per_digest", "must be at least 1")),
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
        storage: super::StorageConfig::Sled,
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
        // Zero turns the watch off.
        drift_check_interval: Some(any_duration(
            "drift_check_interval",
            raw.drift_check_interval.as_deref(),
            DEFAULT_DRIFT_CHECK,
        )?)
        .filter(|d| !d.is_zero()),
        metrics_listen: raw.metrics_listen.clone(),
        max_connections,
        handshake_timeout: duration(
            "handshake_timeout",
            raw.handshake_timeout.as_deref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?,
        idle_timeout: duration(
            "idle_timeout",
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        )?,
        // Zero: no limit.
        max_connection_age: Some(any_duration(
            "max_connection_age",
            raw.max_connection_age.as_deref(),
            DEFAULT_MAX_CONNECTION_AGE,
        )?)
        .filter(|d| !d.is_zero()),
        keepalive_interval: duration(
            "keepalive_interval",
            raw.keepalive_interval.as_deref(),
            DEFAULT_KEEPALIVE_INTERVAL,
        )?,
        metrics_max_connections,
        max_watches_per_principal,
        unclaimed_repositories,
        max_checks_per_digest,
        log_format,
        tls: None,
        console: None,
        notify: Vec::new(),
        slack: Vec::new(),
        registries: Vec::new(),
        principals: Vec::new(),
        identities: Vec::new(),
        environments: Vec::new(),
        check_reporters: Vec::new(),
        projects: Vec::new(),
        policy: PolicyVersion {
            digest: String::new(),
            canonical_json: String::new(),
        },
        checkpoint: None,
        attest: None,
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
    let auth = match t.client_auth.as_deref() {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(other) => {
            return Err(invalid(
                "tls.client_auth",
                format!("{other:?} is not one of \"required\", \"optional\""),
            ));
        }
    };
    let client_ca = match t.client_ca {
        Some(path) => Some(ClientCa { path, auth }),
        None if t.client_auth.is_some() => {
            return Err(invalid(
                "tls.client_auth",
                "needs client_ca: it says whether clients must present a certificate that CA signed",
            ));
        }
        None => None,
    };
    Ok(TlsConfig {
        cert: t.cert,
        key: t.key,
        client_ca,
    })
}

/// One `[[notify]]` entry, by its `kind`.
enum Notifier {
    Webhook(NotifyConfig),
    Slack(SlackConfig),
}

/// `[[notify]]` number `i`: a webhook (the default `kind`) or Slack. A key
/// of the other kind is refused rather than ignored.
fn notify(i: usize, n: RawNotify, cx: &mut Cx) -> Result<Notifier, ConfigError> {
    let key = |k: &str| format!("notify[{i}].{k}");
    let kind = n.kind.as_deref().unwrap_or("webhook");
    let only = |k: &str, present: bool, of: &str| match present {
        true => Err(invalid(key(k), format!("only for kind = \"{of}\""))),
        false => Ok(()),
    };
    match kind {
        "webhook" => {
            only("channel", n.channel.is_some(), "slack")?;
            only("bot_token_file", n.bot_token_file.is_some(), "slack")?;
            only(
                "signing_secret_file",
                n.signing_secret_file.is_some(),
                "slack",
            )?;
            only("api_url", n.api_url.is_some(), "slack")?;
            only("hooks_url", n.hooks_url.is_some(), "slack")?;
            webhook(i, n, cx).map(Notifier::Webhook)
        }
        "slack" => {
            only("url", n.url.is_some(), "webhook")?;
            only("secret_file", n.secret_file.is_some(), "webhook")?;
            if n.events.is_some() {
                return Err(invalid(
                    key("events"),
                    "a Slack notifier posts each approval request and updates that message as \
                     the promotion moves on; it takes no events list",
                ));
            }
            slack(i, n, cx).map(Notifier::Slack)
        }
        other => Err(invalid(
            key("kind"),
            format!("{other:?} is not one of webhook, slack"),
        )),
    }
}

fn webhook(i: usize, n: RawNotify, cx: &mut Cx) -> Result<NotifyConfig, ConfigError> {
    let url = n
        .url
        .ok_or_else(|| invalid(format!("notify[{i}].url"), "required for a webhook"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            format!("notify[{i}].url"),
            format!("{url:?} is not an http(s) URL"),
        ));
    }
    let names = n
        .events
        .ok_or_else(|| invalid(format!("notify[{i}].events"), "required for a webhook"))?;
    let mut events = Vec::new();
    for (j, e) in names.iter().enumerate() {
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
        Some(path) => secret_file(&format!("notify[{i}].secret_file"), path, cx)?,
    };
    Ok(NotifyConfig {
        url,
        events,
        secret,
    })
}

fn slack(i: usize, n: RawNotify, cx: &mut Cx) -> Result<SlackConfig, ConfigError> {
    let key = |k: &str| format!("notify[{i}].{k}");
    let channel = n
        .channel
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| invalid(key("channel"), "required for kind = \"slack\""))?;
    let file = |k: &str, path: Option<PathBuf>, cx: &mut Cx| match path {
        None => Err(invalid(key(k), "required for kind = \"slack\"")),
        Some(path) => secret_file(&key(k), &path, cx),
    };
    let bot_token = file("bot_token_file", n.bot_token_file, cx)?;
    let signing_secret = file("signing_secret_file", n.signing_secret_file, cx)?;
    let api_url = base_url(
        &key("api_url"),
        n.api_url.as_deref().unwrap_or(DEFAULT_SLACK_API_URL),
    )?;
    let mut hooks_url = base_url(
        &key("hooks_url"),
        n.hooks_url.as_deref().unwrap_or(DEFAULT_SLACK_HOOKS_URL),
    )?;
    // A prefix of whole path segments: `/hooks` must not admit `/hooksevil`.
    if !hooks_url.ends_with('/') {
        hooks_url.push('/');
    }
    Ok(SlackConfig {
        channel,
        bot_token,
        signing_secret,
        api_url: api_url.trim_end_matches('/').to_owned(),
        hooks_url,
    })
}

/// An http(s) URL with a host and nothing a base cannot have (user,
/// query, fragment), as written.
fn base_url(key: &str, url: &str) -> Result<String, ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| invalid(key, format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(key, format!("{url:?} is not an http(s) URL")));
    }
    if !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(invalid(
            key,
            format!(
                "{}://{}{} must be a plain base URL, without a user, query or fragment",
                parsed.scheme(),
                parsed.host_str().unwrap_or(""),
                parsed.path()
            ),
        ));
    }
    Ok(url.to_owned())
}

/// A key file (`echo KEY > file` leaves a newline the sender's key lacks,
/// so trailing line breaks go); `None` when `check-config` did not find it.
pub(super) fn secret_file(
    key: &str,
    path: &Path,
    cx: &mut Cx,
) -> Result<Option<Secret>, ConfigError> {
    let Some(mut bytes) = cx.read(key, path)? else {
        return Ok(None);
    };
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(Some(Secret::new(bytes)))
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
        let (credentials, credential_source) =
            credentials::registry_credentials(i, &r, docker, cx)?;
        let ca_cert = match &r.ca_cert {
            Some(path) => ca_cert(i, path, r.insecure, cx)?,
            None => None,
        };
        registries.push(RegistryConfig {
            host: r.host,
            insecure: r.insecure,
            credentials,
            credential_source,
            ca_cert,
            alias_of: r.alias_of,
        });
    }
    registry_aliases(&registries)?;
    Ok(registries)
}

/// Two entries for one registry (`localhost:5000` and `127.0.0.1:5000`)
/// would let a repository named through the second escape the projects
/// that name the first: refused unless one says it is `alias_of` the other.
/// An alias names a real entry that is no alias itself.
fn registry_aliases(registries: &[RegistryConfig]) -> Result<(), ConfigError> {
    for (i, r) in registries.iter().enumerate() {
        let Some(target) = &r.alias_of else { continue };
        let key = format!("registry[{i}].alias_of");
        match registries.iter().find(|o| &o.host == target) {
            None => {
                return Err(invalid(
                    key,
                    format!("{target:?} is not the host of another [[registry]]"),
                ));
            }
            Some(o) if o.host == r.host => {
                return Err(invalid(key, "names this entry itself"));
            }
            Some(o) if o.alias_of.is_some() => {
                return Err(invalid(
                    key,
                    format!("{target:?} is itself an alias; name the registry it aliases"),
                ));
            }
            Some(_) => {}
        }
    }
    for (i, a) in registries.iter().enumerate() {
        for (j, b) in registries.iter().enumerate().skip(i + 1) {
            let declared = a.alias_of.as_deref() == Some(b.host.as_str())
                || b.alias_of.as_deref() == Some(a.host.as_str())
                || (a.alias_of.is_some() && a.alias_of == b.alias_of);
            if !declared && same_endpoint(a, b) {
                return Err(invalid(
                    format!("registry[{j}].host"),
                    format!(
                        "{:?} and registry[{i}] {:?} are the same registry (address and port); \
                         say alias_of = {:?} on one of them so both are governed by the same projects",
                        b.host, a.host, a.host
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether two entries reach the same address and port, as far as the
/// names themselves tell: case, a default port written out or not, and
/// every loopback spelling (`localhost`, `127.0.0.1`, `127.0.0.2`). No DNS is
/// asked (a config check must not hang on it): two names that only DNS
/// makes equal need `alias_of`, which the README says.
fn same_endpoint(a: &RegistryConfig, b: &RegistryConfig) -> bool {
    fn endpoint(r: &RegistryConfig) -> (String, u16) {
        // Hosts are `name[:port]` (Repository::parse refuses IPv6
        // literals), so the last colon, if any, starts the port.
        let host = r.host.to_ascii_lowercase();
        let default = if r.insecure { 80 } else { 443 };
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n.to_owned(), p.parse().unwrap_or(default)),
            None => (host, default),
        };
        let loopback = name == "localhost"
            || name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        (
            if loopback {
                "loopback".to_owned()
            } else {
                name
            },
            port,
        )
    }
    endpoint(a) == endpoint(b)
}

/// `registry[i].ca_cert`: a PEM file of one or more certificates, or `None`
/// when it does not exist here and [`Files::WarnIfAbsent`] allows that.
fn ca_cert(
    i: usize,
    path: &Path,
    insecure: bool,
    cx: &mut Cx,
) -> Result<Option<CaCert>, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let key = format!("registry[{i}].ca_cert");
    if insecure {
        return Err(invalid(
            key,
            "is set, but the registry is insecure = true: plain HTTP has no certificate to check",
        ));
    }
    let Some(bytes) = cx.read(&key, path)? else {
        return Ok(None);
    };
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                &key,
                format!("{} is not PEM certificates: {e}", path.display()),
            )
        })?;
    if certificates.is_empty() {
        return Err(invalid(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(Some(CaCert {
        path: path.to_owned(),
        certificates,
    }))
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
        for (j, a) in p.aliases.iter().enumerate() {
            check_name(&format!("principal[{i}].aliases[{j}]"), a)?;
        }
        principals.push(PrincipalConfig {
            name: p.name,
            token_sha256,
            certificate_cn: p.certificate_cn,
            groups: p.groups,
            aliases: p.aliases,
        });
    }
    // An alias names one person: never a principal, never two principals'.
    let mut claimed: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (i, p) in principals.iter().enumerate() {
        for (j, a) in p.aliases.iter().enumerate() {
            let key = format!("principal[{i}].aliases[{j}]");
            if names.contains(a) {
                return Err(invalid(
                    key,
                    format!(
                        "{a:?} is the name of a principal, not another name of {:?}",
                        p.name
                    ),
                ));
            }
            if let Some(other) = claimed.insert(a, &p.name)
                && other != p.name
            {
                return Err(invalid(
                    key,
                    format!(
                        "{a:?} is claimed by principals {other:?} and {:?}; an alias names one person",
                        p.name
                    ),
                ));
            }
        }
    }
    Ok(principals)
}

/// Every `[[environment]]`: unique names and tags, `requires` naming another
/// one, and approvals that the configured principals can give.
fn environments(
    raw: &[RawEnvironment],
    people: &People,
    reporters: &[Approver],
    cx: &mut Cx,
) -> Result<Vec<EnvironmentPolicy>, ConfigError> {
    let mut environments: Vec<EnvironmentPolicy> = Vec::new();
    for (i, e) in raw.iter().enumerate() {
        let prefix = format!("environment[{i}]");
        let key = |field: &str| format!("{prefix}.{field}");
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
        if e.required_approvals.is_none() {
            return Err(invalid(
                key("required_approvals"),
                "is missing: say how many approvals a promotion needs (0: none)",
            ));
        }
        // Zero means no deadline: keep retrying until the tag moves.
        let apply_deadline = Some(any_duration(
            &key("apply_deadline"),
            e.apply_deadline.as_deref(),
            DEFAULT_APPLY_DEADLINE,
        )?)
        .filter(|d| !d.is_zero());
        let mut policy = with_defaults(
            e.name.clone(),
            e.tag.clone(),
            e.requires.clone(),
            apply_deadline,
        );
        apply_policy_keys(&prefix, &e.gate_keys(), None, people, &mut policy, cx)?;
        policy_can_pass(&prefix, &policy, people, reporters, cx)?;
        environments.push(policy);
    }
    Ok(environments)
}

/// Every `[[project]]`: a unique name, patterns that can match repositories
/// of configured registries, requesters and reporters who exist, and
/// effective environment policies that can pass.
fn projects(
    raw: &[RawProject],
    raw_environments: &[RawEnvironment],
    c: &Config,
    people: &People,
    cx: &mut Cx,
) -> Result<Vec<ProjectConfig>, ConfigError> {
    let mut projects: Vec<ProjectConfig> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let key = |field: &str| format!("project[{i}].{field}");
        check_name(&key("name"), &p.name)?;
        if projects.iter().any(|x| x.name == p.name) {
            return Err(invalid(
                key("name"),
                format!("{:?} is listed twice", p.name),
            ));
        }
        if p.repositories.is_empty() {
            return Err(invalid(
                key("repositories"),
                "is empty: a project governs the repositories its patterns match, e.g. [\"registry:5000/team/*\"]",
            ));
        }
        let mut repositories = Vec::new();
        for (j, text) in p.repositories.iter().enumerate() {
            let k = format!("project[{i}].repositories[{j}]");
            repositories.push(repository_pattern(&k, text, c, &projects, cx)?);
        }
        let requesters = p
            .requesters
            .as_deref()
            .map(|r| members(&key("requesters"), r, people, cx))
            .transpose()?;
        if requesters.as_ref().is_some_and(Vec::is_empty) {
            cx.warn(
                key("requesters"),
                "is empty: nobody may request promotions of this project's repositories; \
                 remove the key to let anyone request",
            );
        }
        let check_reporters = p
            .check_reporters
            .as_deref()
            .map(|r| members(&key("check_reporters"), r, people, cx))
            .transpose()?;
        let mut environments = c.environments.clone();
        let mut overridden: Vec<&str> = Vec::new();
        for (j, e) in p.environment.iter().enumerate() {
            let prefix = format!("project[{i}].environment[{j}]");
            if overridden.contains(&e.name.as_str()) {
                return Err(invalid(
                    format!("{prefix}.name"),
                    format!("{:?} is listed twice in this project", e.name),
                ));
            }
            let known = environment_names(&c.environments);
            let Some(policy) = environments.iter_mut().find(|x| x.name == e.name) else {
                return Err(invalid(
                    format!("{prefix}.name"),
                    format!(
                        "no [[environment]] is named {:?} (configured: {known}); a project \
                         overrides the keys of a top-level environment",
                        e.name
                    ),
                ));
            };
            let inherited = raw_environments
                .iter()
                .find(|x| x.name == e.name)
                .map(RawEnvironment::gate_keys);
            apply_policy_keys(
                &prefix,
                &e.gate_keys(),
                inherited.as_ref(),
                people,
                policy,
                cx,
            )?;
            let reporters = check_reporters.as_deref().unwrap_or(&c.check_reporters);
            policy_can_pass(&prefix, policy, people, reporters, cx)?;
            overridden.push(&e.name);
        }
        // An environment the project does not override keeps its checks,
        // which this project's own reporters must be able to report.
        if let Some(reporters) = &check_reporters
            && reporters.is_empty()
            && let Some(e) = environments.iter().find(|e| !e.required_checks.is_empty())
        {
            return Err(invalid(
                key("check_reporters"),
                format!(
                    "is empty, but environment {} requires checks ({}): nobody could report them",
                    e.name,
                    e.required_checks.join(", ")
                ),
            ));
        }
        add_freezes(
            &format!("project[{i}].freeze"),
            &p.freeze,
            &mut environments,
        )?;
        projects.push(ProjectConfig {
            name: p.name.clone(),
            repositories,
            requesters,
            check_reporters,
            environments,
        });
    }
    Ok(projects)
}

/// `[[project]] repositories` entry `key`: a pattern that can match a
/// repository prodgate may promote, and one an earlier project does not
/// already claim in full (a warning: the first match governs).
fn repository_pattern(
    key: &str,
    text: &str,
    c: &Config,
    earlier: &[ProjectConfig],
    cx: &mut Cx,
) -> Result<RepositoryPattern, ConfigError> {
    let pattern = RepositoryPattern::parse(text).map_err(|m| invalid(key, m))?;
    if pattern.is_literal() {
        Repository::parse(text)
            .map_err(|e| invalid(key, format!("{text:?} is not a repository name: {e}")))?;
    }
    // A mistyped host would leave the project governing nothing, and its
    // repositories under the (often laxer) top-level policy.
    if let Some(host) = pattern.literal_host()
        && c.registry(host).is_none()
    {
        let hosts: Vec<&str> = c.registries.iter().map(|r| r.host.as_str()).collect();
        return Err(invalid(
            key,
            format!(
                "{text:?}: registry {host:?} is not a configured [[registry]] (configured: {}), \
                 so no repository this pattern matches can be promoted",
                if hosts.is_empty() {
                    "none".to_owned()
                } else {
                    hosts.join(", ")
                }
            ),
        ));
    }
    for (a, project) in earlier.iter().enumerate() {
        let claimed = project
            .repositories
            .iter()
            .position(|q| q.as_str() == text || (pattern.is_literal() && q.matches(text)));
        if let Some(b) = claimed {
            cx.warn(
                key,
                format!(
                    "{text:?} never governs anything here: project {:?} (project[{a}].repositories[{b}] = {:?}) comes first and matches it",
                    project.name,
                    project.repositories[b].as_str()
                ),
            );
        }
    }
    Ok(pattern)
}

fn environment_names(environments: &[EnvironmentPolicy]) -> String {
    let names: Vec<&str> = environments.iter().map(|e| e.name.as_str()).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
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
pub(super) fn duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = any_duration(key, value, default)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

/// A name used in storage keys and approver lists.
pub(super) fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(invalid(
            key,
            "must be 1 to 128 characters without control characters",
        ));
    }
    Ok(())
}
