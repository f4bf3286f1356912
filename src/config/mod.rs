//! Configuration: a TOML file, validated once at start-up into the typed
//! [`Config`] the rest of the service uses. Unknown keys are errors, and every
//! error names the key it is about.
//!
//! - [`raw`]: the file as written (serde);
//! - [`validate`]: one function per section, from raw to typed;
//! - [`credentials`]: registry secrets and the Docker config;
//! - [`identity`]: `[[identity]]` issuers of JWTs, their rules, JWKS keys;
//! - [`keys`]: an environment's gate keys, each declared once: its field in
//!   both sections, its default, its check and its place in the policy
//!   document;
//! - [`policy`]: the gate keys' checks, the window, freezes, and the checks
//!   that refuse a policy nobody could pass;
//! - [`project`]: `[[project]]` policies and which one governs a repository;
//! - [`pattern`]: the repository patterns projects match with;
//! - [`checkpoint`]: `[checkpoint]`, the audit log's signing key and
//!   where its checkpoints are published;
//! - [`storage`]: `[storage]`, sled or PostgreSQL and its connection secrets;
//! - [`live`]: the running config and what a reload may change;
//! - [`version`]: the effective policy's canonical JSON and digest.

mod attest;
mod checkpoint;
mod console;
mod credentials;
mod identity;
mod keys;
mod live;
mod pattern;
mod policy;
mod project;
mod raw;
pub mod reading;
mod storage;
mod validate;
mod version;

pub use crate::domain::policy::describe;
pub use attest::AttestConfig;
pub use checkpoint::{CheckpointConfig, DEFAULT_PUBLISH_INTERVAL, PublishConfig};
pub use console::{ConsoleConfig, ConsoleOidc};
pub use identity::{
    DEFAULT_ALGORITHMS, IdentityConfig, IdentityRule, JwsAlgorithm, Key, KeyKind, KeySet,
    KeySource, MAX_JWKS_BYTES, Template,
};
pub use live::{Live, NotReloadable, reloaded};
pub use pattern::RepositoryPattern;
pub use project::{Governance, ProjectConfig};
pub use storage::{DEFAULT_MAX_CLOCK_SKEW, PostgresConfig, StorageConfig, postgres_from_flags};
pub use version::{LEFT_OUT_AT_DEFAULT, PolicyVersion};

use crate::domain::policy::{Approver, EnvironmentPolicy};
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
/// How often the drift watch reads the tags prodgate moved. On by default:
/// noticing a production tag moved behind prodgate's back is the point, and
/// one manifest HEAD per tag a minute is little load for a registry.
pub const DEFAULT_DRIFT_CHECK: Duration = Duration::from_secs(60);
/// Connections served at once; each is a file descriptor, so this must stay
/// below the process's open-file limit (deploy/README.md).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// How long a new connection may take to finish the TLS handshake (with TLS)
/// and send the HTTP/2 preface before it is closed.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a gRPC connection may stay open with no call in progress
/// before the server closes it (GOAWAY); clients reconnect when they next call.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// As grpc-go's `MaxConnectionAge` is typically set: long enough to cost
/// nothing, short enough that a new replica gets traffic within the hour.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
/// How often the server pings an HTTP/2 peer; one that does not answer
/// within [`KEEPALIVE_TIMEOUT`] is closed.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a keepalive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections the metrics listener serves at once: its own small pool, so
/// scrapers (or anyone who can reach it, without a token) never take the
/// descriptors the gRPC listener needs.
pub const DEFAULT_METRICS_MAX_CONNECTIONS: u32 = 64;
/// WatchPromotion streams one principal may have open at once.
pub const DEFAULT_MAX_WATCHES_PER_PRINCIPAL: u32 = 64;
/// Distinct check names one digest of one repository may have reports
/// for: enough for any pipeline, and it bounds what ListChecks and the
/// checks gate read per digest.
pub const DEFAULT_MAX_CHECKS_PER_DIGEST: u32 = 64;
/// How long an approved promotion may take to reach its tag.
pub const DEFAULT_APPLY_DEADLINE: Duration = Duration::from_secs(3600);
/// `wait_ttl`: how long a promotion that has its approvals may wait for
/// the other gates (WAITING) before it ends EXPIRED.
pub const DEFAULT_WAIT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Slack's Web API (`[[notify]] api_url`).
pub const DEFAULT_SLACK_API_URL: &str = "https://slack.com/api";
/// Where Slack's `response_url`s live (`[[notify]] hooks_url`).
pub const DEFAULT_SLACK_HOOKS_URL: &str = "https://hooks.slack.com/";

/// What to do with the files a config names and the server reads when it
/// starts (registry `password_file` and `ca_cert`, `[tls]` files,
/// `docker_config`, `[[notify]] secret_file`) and with `password_env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// As `serve` does: read them now; one that cannot be read is an error,
    /// and Docker credential helpers run.
    Read,
    /// As `check-config` does by default: one that does not exist on this
    /// machine is a warning (a config is often checked on a laptop or in CI,
    /// where only the server's own files are missing), and no credential
    /// helper runs. What does exist is read and checked.
    WarnIfAbsent,
}

/// Something in a valid config that is probably a mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigWarning {
    pub key: String,
    pub message: String,
    /// An ambiguity that `check-config --strict` refuses (a warning only,
    /// so that a running deployment is not stopped by an upgrade).
    pub strict: bool,
}

/// A valid config and what looked wrong in it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

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
/// (and again when it rotates, see [`CredentialSource`]) from the
/// environment, a file or a credential helper, never from the config itself,
/// and is never logged.
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
    /// Docker config's `auths` or credential helper, else none (anonymous),
    /// as read at start-up; [`RegistryConfig::credential_source`] says where
    /// to read them again.
    pub credentials: Option<RegistryCredentials>,
    pub credential_source: CredentialSource,
    /// `ca_cert`: certificates trusted for this registry (and the token
    /// realm it names) besides the system's roots.
    pub ca_cert: Option<CaCert>,
    /// `alias_of`: the host of the entry this one is another name of; its
    /// repositories are governed as that registry's.
    pub alias_of: Option<String>,
}

/// Where a registry's credentials come from, so that a running server can
/// read them again when a secret rotates (see [`CredentialSource::read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Nothing configured: anonymous.
    None,
    /// `username` + `password_env`: the environment of a running process
    /// does not change, so there is nothing to watch.
    Env { username: String, var: String },
    /// `username` + `password_file`.
    PasswordFile { username: String, path: PathBuf },
    /// The Docker config at `path`: its `auths` entry for the host, or the
    /// credential helper it names (`credHelpers`/`credsStore`).
    DockerConfig { path: PathBuf },
}

impl CredentialSource {
    /// The file whose change means the credentials may have changed.
    pub fn file(&self) -> Option<&Path> {
        match self {
            CredentialSource::PasswordFile { path, .. }
            | CredentialSource::DockerConfig { path } => Some(path),
            CredentialSource::None | CredentialSource::Env { .. } => None,
        }
    }

    /// The credentials for `host` as they are now: reads the file again and
    /// runs the credential helper again. Blocking (a helper is a program).
    pub fn read(&self, host: &str) -> Result<Option<RegistryCredentials>, ConfigError> {
        credentials::read_again(self, host)
    }
}

/// The certificates of a `[[registry]] ca_cert` file, checked at start-up.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert {
    pub path: PathBuf,
    /// DER, one per PEM `CERTIFICATE` block; at least one.
    pub certificates: Vec<Vec<u8>>,
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert")
            .field("path", &self.path)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalConfig {
    pub name: String,
    /// SHA-256 of the principal's bearer token, if it uses one.
    pub token_sha256: Option<[u8; 32]>,
    /// Common name of the principal's client certificate (mTLS), if any.
    pub certificate_cn: Option<String>,
    pub groups: Vec<String>,
    /// The other names this person acts under (an OIDC principal, say):
    /// each acts as this principal for separation of duties and counting.
    pub aliases: Vec<String>,
}

/// `unclaimed_repositories`: what governs a repository no `[[project]]`'s
/// pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclaimed {
    /// The top-level environments (the default).
    Default,
    /// Nothing: requests for it are refused, naming the projects' patterns.
    Refuse,
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
    /// When set, client certificates signed by this CA are verified.
    pub client_ca: Option<ClientCa>,
}

/// `client_ca` and `client_auth` of `[tls]`: `client_auth` means nothing
/// without a CA, so it lives beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCa {
    pub path: PathBuf,
    pub auth: ClientAuth,
}

/// Whether a client must present a certificate (`client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every connection presents a certificate `client_ca` signed (the
    /// default); a token, when sent as well, says who acts.
    Required,
    /// A connection may come without one, and then authenticate with a
    /// token; a certificate presented must be bound to a principal, and
    /// with a token as well both must name the same one.
    Optional,
}

impl ClientAuth {
    /// The value as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
        }
    }
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
    /// The approvals are complete and another gate still blocks.
    Waiting,
    /// A WAITING promotion's gates passed; its tag moves next.
    GatesPassed,
    /// A call used break-glass (its entry says what it overrode).
    BreakGlass,
    /// The drift watch found a tag moved behind prodgate's back, or
    /// restored it (the body's `action` says which).
    Drift,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 12] = [
        NotifyEvent::Requested,
        NotifyEvent::Approved,
        NotifyEvent::Promoted,
        NotifyEvent::Rejected,
        NotifyEvent::Failed,
        NotifyEvent::Cancelled,
        NotifyEvent::Expired,
        NotifyEvent::Superseded,
        NotifyEvent::Waiting,
        NotifyEvent::GatesPassed,
        NotifyEvent::BreakGlass,
        NotifyEvent::Drift,
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
            NotifyEvent::Waiting => "waiting",
            NotifyEvent::GatesPassed => "gates_passed",
            NotifyEvent::BreakGlass => "break_glass",
            NotifyEvent::Drift => "drift",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    pub url: String,
    pub events: Vec<NotifyEvent>,
    /// HMAC key for signing deliveries, from `secret_file`.
    pub secret: Option<Secret>,
}

/// `[[notify]] kind = "slack"`: approval requests posted to a Slack
/// channel, whose buttons come back as interactions (see
/// [`crate::notify::slack`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackConfig {
    /// Where messages go: a channel id (`C0123…`) or name (`#releases`).
    pub channel: String,
    /// From `bot_token_file` (`xoxb-…`); `None` only when `check-config`
    /// did not find the file on this machine.
    pub bot_token: Option<Secret>,
    /// From `signing_secret_file`: verifies the interactions Slack sends;
    /// `None` as for `bot_token`.
    pub signing_secret: Option<Secret>,
    /// The Web API base, without a trailing slash (`https://slack.com/api`).
    pub api_url: String,
    /// The only base prodgate posts an interaction's `response_url` under,
    /// with a trailing slash (`https://hooks.slack.com/`).
    pub hooks_url: String,
}

/// Key material read from a file. Its `Debug` shows only the length, so a
/// config printed with `{:?}` (or a log of one) carries no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(std::sync::Arc<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<std::sync::Arc<[u8]>>) -> Secret {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    /// `[storage]`: sled under `data_dir` (the default) or PostgreSQL.
    pub storage: StorageConfig,
    pub apply_wait: Duration,
    pub registry_timeout: Duration,
    pub expiry_sweep_interval: Duration,
    /// How often the drift watch reads the tags prodgate moved; `None`
    /// (`"0"` in the file): no drift watch.
    pub drift_check_interval: Option<Duration>,
    pub metrics_listen: Option<String>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// A connection with no call in progress for this long is closed.
    pub idle_timeout: Duration,
    /// A connection this old is sent GOAWAY (its calls in progress finish),
    /// so long-lived clients spread over replicas; `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// Connections the metrics listener serves at once.
    pub metrics_max_connections: usize,
    /// WatchPromotion streams one principal may have open at once.
    pub max_watches_per_principal: usize,
    /// What governs a repository no `[[project]]` claims.
    pub unclaimed_repositories: Unclaimed,
    /// Distinct check names a repository's digest may have reports for; a
    /// new name beyond it is refused (a known one may be reported again).
    pub max_checks_per_digest: usize,
    pub log_format: LogFormat,
    pub tls: Option<TlsConfig>,
    /// The approvers' web console; `None`: not served.
    pub console: Option<ConsoleConfig>,
    /// `[[notify]]` webhooks (the default kind).
    pub notify: Vec<NotifyConfig>,
    /// `[[notify]] kind = "slack"` entries, in file order.
    pub slack: Vec<SlackConfig>,
    pub registries: Vec<RegistryConfig>,
    pub principals: Vec<PrincipalConfig>,
    /// Issuers whose JWTs authenticate callers, mapped to principals by
    /// their rules; part of the policy (they decide who is who).
    pub identities: Vec<IdentityConfig>,
    /// The top-level policies: they govern every repository no project
    /// matches (see [`Config::governing`]).
    pub environments: Vec<EnvironmentPolicy>,
    /// Who may report checks of repositories no project (or a project
    /// without its own list) governs; empty: nobody.
    pub check_reporters: Vec<Approver>,
    /// In file order: the first whose pattern matches a repository governs it.
    pub projects: Vec<ProjectConfig>,
    /// The canonical form and digest of everything above that decides who
    /// may do what, computed when the file is validated.
    pub policy: PolicyVersion,
    /// Signed checkpoints of the audit log; `None`: heads are unsigned.
    pub checkpoint: Option<CheckpointConfig>,
    /// The key and verifier id of signed attestations; `None`: none are made.
    pub attest: Option<AttestConfig>,
}

impl Config {
    /// The other names of the person acting as `name`: a principal's
    /// aliases, or for an alias its principal and that one's other aliases.
    /// Empty for a name no `[[principal]]` claims.
    pub fn other_names(&self, name: &str) -> Vec<String> {
        let Some(p) = self
            .principals
            .iter()
            .find(|p| p.name == name || p.aliases.iter().any(|a| a == name))
        else {
            return Vec::new();
        };
        std::iter::once(&p.name)
            .chain(&p.aliases)
            .filter(|n| *n != name)
            .cloned()
            .collect()
    }

    /// The principal that claims `alias` in its `aliases` (as
    /// `slack:U0123ABCD`), acting under that alias: the audit log records
    /// the alias, the principal's groups count, and its other names are the
    /// same person. `None` when no principal claims it.
    pub fn principal_by_alias(&self, alias: &str) -> Option<crate::domain::policy::Principal> {
        let p = self
            .principals
            .iter()
            .find(|p| p.aliases.iter().any(|a| a == alias))?;
        Some(crate::domain::policy::Principal {
            name: alias.to_owned(),
            groups: p.groups.clone(),
            aliases: self.other_names(alias),
        })
    }

    /// The file at `path`, every file it names read ([`Files::Read`]);
    /// warnings are dropped (`serve` uses [`Config::load_with`] to log them).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Ok(Self::load_with(path, Files::Read)?.config)
    }

    /// Like [`Config::load`], on the text of a config.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Ok(Self::parse_with(text, Files::Read)?.config)
    }

    pub fn load_with(path: &Path, files: Files) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_with(&text, files).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse_with(text: &str, files: Files) -> Result<Loaded, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        validate::config(raw, files)
    }

    /// The top-level policy of environment `name`. A repository a project
    /// governs has that project's: use [`Config::governing`] for a
    /// repository's policy.
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
[[principal]]
name = "carol"
token_sha256 = "{TOKEN_HASH}"
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
    fn two_names_of_one_registry_need_alias_of() {
        let with = |extra: &str| Config::parse(&format!("{}{extra}", base()));
        for other in ["localhost:5000", "LOCALHOST:5000", "127.0.0.2:5000"] {
            let e = with(&format!(
                "[[registry]]\nhost = \"{other}\"\ninsecure = true\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("registry[1].host") && e.contains("alias_of"),
                "{other}: {e}"
            );
            let c = with(&format!(
                "[[registry]]\nhost = \"{other}\"\ninsecure = true\nalias_of = \"127.0.0.1:5000\"\n"
            ))
            .unwrap();
            assert_eq!(
                c.canonical_repository(&format!("{other}/a/b")),
                "127.0.0.1:5000/a/b"
            );
        }
        // A default port written out is the same port.
        let two = "[[registry]]\nhost = \"r.test\"\n[[registry]]\nhost = \"r.test:443\"\n";
        assert!(with(two).unwrap_err().to_string().contains("alias_of"));
        // Another port, another registry.
        with("[[registry]]\nhost = \"localhost:5001\"\ninsecure = true\n").unwrap();
        let e = with("[[registry]]\nhost = \"localhost:5001\"\nalias_of = \"nowhere:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry[1].alias_of"), "{e}");
        let e = Config::parse(&format!("unclaimed_repositories = \"deny\"\n{}", base()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unclaimed_repositories"), "{e}");
    }

    #[test]
    fn an_alias_names_one_person() {
        let aliased = |alice: &str, carol: &str| {
            base()
                .replacen(
                    "name = \"alice\"\n",
                    &format!("name = \"alice\"\naliases = [{alice}]\n"),
                    1,
                )
                .replacen(
                    "name = \"carol\"\n",
                    &format!("name = \"carol\"\naliases = [{carol}]\n"),
                    1,
                )
        };
        let c = Config::parse(&aliased("\"sso:alice@acme\", \"alice2\"", "")).unwrap();
        assert_eq!(c.other_names("alice"), ["sso:alice@acme", "alice2"]);
        assert_eq!(c.other_names("sso:alice@acme"), ["alice", "alice2"]);
        assert!(c.other_names("carol").is_empty());
        assert!(c.other_names("nobody").is_empty());
        let e = err(&aliased("\"sso:x\"", "\"sso:x\""));
        assert!(e.contains("principal[1].aliases[0]"), "{e}");
        assert!(
            e.contains("claimed by principals \"alice\" and \"carol\""),
            "{e}"
        );
        let e = err(&aliased("\"carol\"", ""));
        assert!(e.contains("is the name of a principal"), "{e}");
        // Aliases are policy (they decide who is who); none keeps the digest.
        let plain = Config::parse(&base()).unwrap().policy.digest;
        assert_eq!(
            Config::parse(&aliased("", "")).unwrap().policy.digest,
            plain
        );
        assert_ne!(
            Config::parse(&aliased("\"sso:alice@acme\"", ""))
                .unwrap()
                .policy
                .digest,
            plain
        );
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
            with("max_checks_per_digest = 0")
                .unwrap_err()
                .to_string()
                .contains("max_checks_per_digest")
        );
        assert_eq!(
            with("max_checks_per_digest = 5")
                .unwrap()
                .max_checks_per_digest,
            5
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
        assert!(
            err(&base().replace("required_approvals = 0\n", ""))
                .starts_with("environment[0].required_approvals: is missing")
        );
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

    /// `base()` with `extra` appended to the production environment.
    fn production_with(extra: &str) -> String {
        format!("{}{extra}\n", base())
    }

    #[test]
    fn drift_check_interval_defaults_to_a_minute_and_zero_turns_it_off() {
        let interval = |top: &str| {
            Config::parse(&format!("{top}\n{}", base())).map(|c| c.drift_check_interval)
        };
        assert_eq!(interval("").unwrap(), Some(DEFAULT_DRIFT_CHECK));
        assert_eq!(DEFAULT_DRIFT_CHECK, Duration::from_secs(60));
        assert_eq!(
            interval("drift_check_interval = \"5m\"").unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(interval("drift_check_interval = \"0\"").unwrap(), None);
        let e = interval("drift_check_interval = \"often\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("drift_check_interval: "), "{e}");
    }

    #[test]
    fn apply_deadline_defaults_to_an_hour_and_zero_means_forever() {
        let deadline = |extra: &str| {
            Config::parse(&production_with(extra))
                .map(|c| c.environment("production").unwrap().apply_deadline)
        };
        assert_eq!(deadline("").unwrap(), Some(DEFAULT_APPLY_DEADLINE));
        assert_eq!(DEFAULT_APPLY_DEADLINE, Duration::from_secs(3600));
        assert_eq!(
            deadline("apply_deadline = \"30m\"").unwrap(),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(deadline("apply_deadline = \"0\"").unwrap(), None);
        assert_eq!(deadline("apply_deadline = \"0s\"").unwrap(), None);
        let e = deadline("apply_deadline = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("environment[1].apply_deadline: "), "{e}");
    }

    #[test]
    fn a_webhook_secret_is_read_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook.key");
        std::fs::write(&file, "s3cr3t-hmac-key\n").unwrap();
        let hook = |path: &Path| {
            format!(
                "{}[[notify]]\nurl = \"https://hooks.example.com/x\"\nevents = [\"promoted\"]\nsecret_file = {:?}\n",
                base(),
                path.display().to_string()
            )
        };
        let c = Config::parse(&hook(&file)).unwrap();
        let secret = c.notify[0].secret.as_ref().unwrap();
        assert_eq!(secret.expose(), b"s3cr3t-hmac-key");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");

        let without = Config::parse(&base()).unwrap();
        assert!(without.notify.is_empty());

        std::fs::write(&file, "\n").unwrap();
        let e = Config::parse(&hook(&file)).unwrap_err().to_string();
        assert!(e.starts_with("notify[0].secret_file: "), "{e}");

        // Absent: an error for serve, a warning for check-config.
        let absent = dir.path().join("absent.key");
        let e = Config::parse(&hook(&absent)).unwrap_err().to_string();
        assert!(e.starts_with("notify[0].secret_file: cannot read "), "{e}");
        let checked = Config::parse_with(&hook(&absent), Files::WarnIfAbsent).unwrap();
        assert_eq!(checked.config.notify[0].secret, None);
        assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
        assert_eq!(checked.warnings[0].key, "notify[0].secret_file");
    }

    #[test]
    fn a_slack_notifier_reads_its_secrets_and_checks_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("bot.token");
        let signing = dir.path().join("signing.secret");
        std::fs::write(&token, "xoxb-s3cr3t-token\n").unwrap();
        std::fs::write(&signing, "s1gn1ng-s3cr3t\n").unwrap();
        let slack = |extra: &str| {
            format!(
                "{}[[notify]]\nkind = \"slack\"\nchannel = \"C0RELEASE\"\nbot_token_file = {:?}\n\
                 signing_secret_file = {:?}\n{extra}",
                base(),
                token.display().to_string(),
                signing.display().to_string()
            )
        };
        let c = Config::parse(&slack("")).unwrap();
        assert!(c.notify.is_empty());
        let s = &c.slack[0];
        assert_eq!(s.channel, "C0RELEASE");
        assert_eq!(s.bot_token.as_ref().unwrap().expose(), b"xoxb-s3cr3t-token");
        assert_eq!(
            s.signing_secret.as_ref().unwrap().expose(),
            b"s1gn1ng-s3cr3t"
        );
        assert_eq!(s.api_url, DEFAULT_SLACK_API_URL);
        assert_eq!(s.hooks_url, DEFAULT_SLACK_HOOKS_URL);
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");

        let c = Config::parse(&slack(
            "api_url = \"http://127.0.0.1:9/api/\"\nhooks_url = \"http://127.0.0.1:9/hooks\"\n",
        ))
        .unwrap();
        assert_eq!(c.slack[0].api_url, "http://127.0.0.1:9/api");
        assert_eq!(c.slack[0].hooks_url, "http://127.0.0.1:9/hooks/");

        let refused = |extra: &str| Config::parse(&slack(extra)).unwrap_err().to_string();
        let e = refused("url = \"https://x.example/\"\n");
        assert!(
            e.starts_with("notify[0].url: only for kind = \"webhook\""),
            "{e}"
        );
        let e = refused("events = [\"promoted\"]\n");
        assert!(e.starts_with("notify[0].events: "), "{e}");
        let e = refused("hooks_url = \"https://u:p@hooks.example/\"\n");
        assert!(
            e.starts_with("notify[0].hooks_url: ") && !e.contains(":p@"),
            "{e}"
        );
        let e = refused("api_url = \"ftp://slack.example\"\n");
        assert!(e.starts_with("notify[0].api_url: "), "{e}");

        let e = Config::parse(&format!("{}[[notify]]\nkind = \"slack\"\n", base()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("notify[0].channel: required"), "{e}");
        let e = Config::parse(&format!("{}[[notify]]\nkind = \"pager\"\n", base()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("notify[0].kind: "), "{e}");
        let e = Config::parse(&format!(
            "{}[[notify]]\nevents = [\"promoted\"]\nchannel = \"C1\"\n",
            base()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("notify[0].channel: only for kind = \"slack\""),
            "{e}"
        );
        let e = Config::parse(&format!("{}[[notify]]\nevents = [\"promoted\"]\n", base()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("notify[0].url: required"), "{e}");

        // check-config on another machine: absent files are warnings.
        std::fs::remove_file(&token).unwrap();
        let checked = Config::parse_with(&slack(""), Files::WarnIfAbsent).unwrap();
        assert_eq!(checked.config.slack[0].bot_token, None);
        assert_eq!(checked.warnings[0].key, "notify[0].bot_token_file");
    }

    #[test]
    fn a_slack_alias_acts_as_its_principal_under_its_own_name() {
        let c = Config::parse(&format!(
            "{}[[principal]]\nname = \"bob\"\ntoken_sha256 = \"{TOKEN_HASH}\"\ngroups = [\"rm\"]\naliases = [\"slack:U0BOB\", \"sso:bob\"]\n",
            base()
        ))
        .unwrap();
        let who = c.principal_by_alias("slack:U0BOB").unwrap();
        assert_eq!(who.name, "slack:U0BOB");
        assert_eq!(who.groups, ["rm"]);
        assert_eq!(who.aliases, ["bob", "sso:bob"]);
        assert!(c.principal_by_alias("slack:U0NOBODY").is_none());
        assert!(c.principal_by_alias("bob").is_none(), "a name is no alias");
    }

    #[test]
    fn client_auth_is_required_by_default_and_needs_client_ca() {
        let with = |tls: &str| {
            Config::parse_with(
                &format!("{}[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{tls}", base()),
                Files::WarnIfAbsent,
            )
            .map(|c| c.config.tls.and_then(|t| t.client_ca).map(|ca| ca.auth))
            .map_err(|e| e.to_string())
        };
        assert_eq!(with(""), Ok(None));
        assert_eq!(
            with("client_ca = \"ca.pem\"\n"),
            Ok(Some(ClientAuth::Required))
        );
        assert_eq!(
            with("client_ca = \"ca.pem\"\nclient_auth = \"optional\"\n"),
            Ok(Some(ClientAuth::Optional))
        );
        let e = with("client_auth = \"optional\"\n").unwrap_err();
        assert!(e.starts_with("tls.client_auth: needs client_ca"), "{e}");
        let e = with("client_ca = \"ca.pem\"\nclient_auth = \"maybe\"\n").unwrap_err();
        assert!(
            e.starts_with("tls.client_auth: \"maybe\" is not one of"),
            "{e}"
        );
    }

    #[test]
    fn files_absent_here_are_warnings_unless_read() {
        let dir = tempfile::tempdir().unwrap();
        let gone = |name: &str| format!("{:?}", dir.path().join(name).display().to_string());
        let config = format!(
            "docker_config = {}\n{}[tls]\ncert = {}\nkey = {}\nclient_ca = {}\n",
            gone("config.json"),
            base().replace(
                "insecure = true",
                &format!(
                    "insecure = true\nusername = \"ci\"\npassword_file = {}",
                    gone("password")
                )
            ),
            gone("cert.pem"),
            gone("key.pem"),
            gone("ca.pem"),
        );
        let checked = Config::parse_with(&config, Files::WarnIfAbsent).unwrap();
        let keys: Vec<&str> = checked.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls.cert",
                "tls.key",
                "tls.client_ca",
                "docker_config",
                "registry[0].password_file"
            ]
        );
        assert!(
            checked.warnings[0].message.contains("does not exist"),
            "{:?}",
            checked.warnings
        );
        assert!(checked.config.registries[0].credentials.is_none());
        let e = Config::parse(&config).unwrap_err().to_string();
        assert!(e.starts_with("tls.cert: cannot read "), "{e}");

        // What does exist is still checked.
        std::fs::write(dir.path().join("config.json"), "not json").unwrap();
        let e = Config::parse_with(&config, Files::WarnIfAbsent)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("docker_config: "), "{e}");
    }

    #[test]
    fn policies_that_can_never_pass_are_refused() {
        let e = err(&base().replace("\"carol\"]", "\"dave\"]"));
        assert_eq!(
            e,
            "environment[1].approvers: \"dave\" is not a configured principal"
        );
        let e = err(&base().replace("group:rm", "group:qa"));
        assert!(
            e.starts_with("environment[1].approvers: \"group:qa\" has no members"),
            "{e}"
        );
        // alice (through rm) and carol: two distinct approvers, and alice
        // named twice still counts once.
        let three = base().replace("required_approvals = 1", "required_approvals = 3");
        let e = err(&three);
        assert!(
            e.starts_with(
                "environment[1].required_approvals: 3 approvals can never be given: only 2"
            ),
            "{e}"
        );
        let twice = three.replace("\"carol\"]", "\"carol\", \"alice\"]");
        assert!(err(&twice).contains("only 2"), "{}", err(&twice));
        let two = base().replace("required_approvals = 1", "required_approvals = 2");
        let two = two.replace("\"carol\"]", "\"carol\"]\nallow_self_approval = true");
        assert!(Config::parse(&two).is_ok());
    }

    #[test]
    fn a_policy_that_blocks_some_requesters_is_a_warning() {
        let sole = base().replace(
            "approvers = [\"group:rm\", \"carol\"]",
            "approvers = [\"carol\"]",
        );
        let checked = Config::parse_with(&sole, Files::Read).unwrap();
        assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
        let w = checked.warnings[0].to_string();
        assert!(
            w.starts_with("environment[1].required_approvals: a promotion requested by \"carol\" can never be approved"),
            "{w}"
        );
        let allowed = sole.replace(
            "approval_ttl = \"2h\"",
            "approval_ttl = \"2h\"\nallow_self_approval = true",
        );
        assert!(
            Config::parse_with(&allowed, Files::Read)
                .unwrap()
                .warnings
                .is_empty()
        );
        assert!(
            Config::parse_with(&base(), Files::Read)
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn ca_cert_is_checked_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        let with = |path: &Path, insecure: bool| {
            base().replace(
                "insecure = true",
                &format!(
                    "insecure = {insecure}\nca_cert = {:?}",
                    path.display().to_string()
                ),
            )
        };
        let pem = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        std::fs::write(&file, format!("{pem}{pem}")).unwrap();
        let c = Config::parse(&with(&file, false)).unwrap();
        let ca = c.registries[0].ca_cert.as_ref().unwrap();
        assert_eq!(ca.certificates.len(), 2);
        assert_eq!(ca.certificates[0], [0x30, 0x03, 0x02, 0x01, 0x00]);

        std::fs::write(&file, "not a certificate").unwrap();
        let e = err(&with(&file, false));
        assert!(
            e.starts_with("registry[0].ca_cert: ") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(&with(&file, true));
        assert!(
            e.starts_with("registry[0].ca_cert: ") && e.contains("insecure"),
            "{e}"
        );

        let absent = dir.path().join("absent.pem");
        let e = err(&with(&absent, false));
        assert!(e.starts_with("registry[0].ca_cert: cannot read "), "{e}");
        let checked = Config::parse_with(&with(&absent, false), Files::WarnIfAbsent).unwrap();
        assert_eq!(checked.config.registries[0].ca_cert, None);
        assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
        assert_eq!(checked.warnings[0].key, "registry[0].ca_cert");
    }

    #[test]
    fn credentials_say_where_to_read_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "pw\n").unwrap();
        let c = Config::parse(&base().replace(
            "insecure = true",
            &format!(
                "insecure = true\nusername = \"ci\"\npassword_file = {:?}",
                password.display().to_string()
            ),
        ))
        .unwrap();
        let r = &c.registries[0];
        let source = CredentialSource::PasswordFile {
            username: "ci".into(),
            path: password.clone(),
        };
        assert_eq!(r.credential_source, source);
        assert_eq!(source.file(), Some(password.as_path()));
        std::fs::write(&password, "rotated\r\n").unwrap();
        assert_eq!(
            source.read("127.0.0.1:5000").unwrap(),
            Some(RegistryCredentials {
                username: "ci".into(),
                password: "rotated".into(),
            })
        );

        let docker = dir.path().join("config.json");
        std::fs::write(&docker, "{}").unwrap();
        let c = Config::parse(&format!(
            "docker_config = {:?}\n{}",
            docker.display().to_string(),
            base()
        ))
        .unwrap();
        let source = &c.registries[0].credential_source;
        assert_eq!(
            source,
            &CredentialSource::DockerConfig {
                path: docker.clone()
            }
        );
        assert_eq!(source.read("127.0.0.1:5000").unwrap(), None);
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:later");
        std::fs::write(
            &docker,
            format!(r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(
            source.read("127.0.0.1:5000").unwrap().map(|c| c.password),
            Some("later".into())
        );
    }

    #[test]
    fn docker_auths_still_supply_credentials() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        let with = |json: &str| {
            std::fs::write(&docker, json).unwrap();
            Config::parse(&format!(
                "docker_config = {:?}\n{}",
                docker.display().to_string(),
                base()
            ))
            .map(|c| c.registries[0].credentials.clone())
        };
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:pw");
        let want = Some(RegistryCredentials {
            username: "ci".into(),
            password: "pw".into(),
        });
        for key in [
            "127.0.0.1:5000",
            "https://127.0.0.1:5000",
            "http://127.0.0.1:5000/v2/",
        ] {
            let json = format!(r#"{{"auths": {{"{key}": {{"auth": "{auth}"}}}}}}"#);
            assert_eq!(with(&json).unwrap(), want, "{key}");
        }
        let plain = r#"{"auths": {"127.0.0.1:5000": {"username": "ci", "password": "pw"}}}"#;
        assert_eq!(with(plain).unwrap(), want);
        assert_eq!(
            with(r#"{"auths": {"other:5000": {"auth": "eDp5"}}}"#).unwrap(),
            None
        );
        let e = with(r#"{"auths": {"127.0.0.1:5000": {"identitytoken": "t0k3n"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("docker_config: ") && e.contains("identity token"),
            "{e}"
        );
        assert!(!e.contains("t0k3n"), "{e}");
    }
}
