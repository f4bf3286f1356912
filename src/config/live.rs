//! The running configuration, replaced whole on a reload (SIGHUP) while
//! every call reads it lock-free: a call takes one snapshot and decides
//! with it from start to end, so no call sees half of an old policy and
//! half of a new one.
//!
//! A reload changes the policy only: principals, identities (issuers and
//! their rules), environments, projects, freezes and check reporters. `listen`, `data_dir`, `[storage]` and `[tls]` are bound
//! when the server starts, so a file that changes them is refused whole
//! (the old config keeps running); every other key (registries, webhooks,
//! timeouts, metrics) keeps its running value until the next restart, and
//! the reload says so by key.

use super::{Config, ConfigWarning};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// A shared handle on the running config.
#[derive(Clone)]
pub struct Live(Arc<ArcSwap<Config>>);

impl Live {
    pub fn new(config: Config) -> Live {
        Live(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// The config as it stands now; hold it for the whole of a call.
    pub fn get(&self) -> Arc<Config> {
        self.0.load_full()
    }

    pub fn replace(&self, config: Arc<Config>) {
        self.0.store(config);
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Live")
            .field(&self.get().policy.digest)
            .finish()
    }
}

/// Why a reloaded file cannot replace the running config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{key}: changed from {running} to {file}; it is bound when prodgate starts, so restart it to apply this change (the running config is kept)"
)]
pub struct NotReloadable {
    pub key: &'static str,
    pub running: String,
    pub file: String,
}

/// The config to run after a reload: `file`'s policy on `running`'s other
/// settings, and a warning for each other key that changed and waits for a
/// restart. Refuses a file that changes `listen`, `data_dir` or `[tls]`.
pub fn reloaded(
    running: &Config,
    file: Config,
) -> Result<(Config, Vec<ConfigWarning>), NotReloadable> {
    let refuse = |key, running: String, file: String| NotReloadable { key, running, file };
    if file.listen != running.listen {
        return Err(refuse("listen", running.listen.clone(), file.listen));
    }
    if file.data_dir != running.data_dir {
        return Err(refuse(
            "data_dir",
            running.data_dir.display().to_string(),
            file.data_dir.display().to_string(),
        ));
    }
    // The store is opened once, at start: another database would need a
    // restart (and a migration), never a silent switch.
    if file.storage.describe() != running.storage.describe() {
        return Err(refuse(
            "storage",
            running.storage.describe(),
            file.storage.describe(),
        ));
    }
    if file.tls != running.tls {
        let show = |t: &Option<super::TlsConfig>| match t {
            None => "none".to_owned(),
            Some(t) => format!(
                "cert {} key {}{}",
                t.cert.display(),
                t.key.display(),
                t.client_ca
                    .as_ref()
                    .map(|c| format!(
                        " client_ca {} client_auth {}",
                        c.path.display(),
                        c.auth.name()
                    ))
                    .unwrap_or_default()
            ),
        };
        return Err(refuse("tls", show(&running.tls), show(&file.tls)));
    }
    let mut warnings = Vec::new();
    let mut later = |key: &str, changed: bool| {
        if changed {
            warnings.push(ConfigWarning {
                strict: false,
                key: key.to_owned(),
                message: "changed; this takes effect at the next restart (a reload changes the policy only)".into(),
            });
        }
    };
    later("registry", file.registries != running.registries);
    later(
        "notify",
        file.notify != running.notify || file.slack != running.slack,
    );
    later(
        "metrics_listen",
        file.metrics_listen != running.metrics_listen,
    );
    later(
        "max_connections",
        file.max_connections != running.max_connections,
    );
    later(
        "handshake_timeout",
        file.handshake_timeout != running.handshake_timeout,
    );
    later("idle_timeout", file.idle_timeout != running.idle_timeout);
    later(
        "max_connection_age",
        file.max_connection_age != running.max_connection_age,
    );
    later(
        "keepalive_interval",
        file.keepalive_interval != running.keepalive_interval,
    );
    later(
        "max_watches_per_principal",
        file.max_watches_per_principal != running.max_watches_per_principal,
    );
    later(
        "metrics_max_connections",
        file.metrics_max_connections != running.metrics_max_connections,
    );
    later(
        "max_checks_per_digest",
        file.max_checks_per_digest != running.max_checks_per_digest,
    );
    later(
        "registry_timeout",
        file.registry_timeout != running.registry_timeout,
    );
    later("apply_wait", file.apply_wait != running.apply_wait);
    later(
        "expiry_sweep_interval",
        file.expiry_sweep_interval != running.expiry_sweep_interval,
    );
    later(
        "drift_check_interval",
        file.drift_check_interval != running.drift_check_interval,
    );
    later("log_format", file.log_format != running.log_format);
    later("checkpoint", file.checkpoint != running.checkpoint);
    later("attest", file.attest != running.attest);
    later("console", file.console != running.console);
    let next = Config {
        principals: file.principals,
        identities: file.identities,
        environments: file.environments,
        check_reporters: file.check_reporters,
        projects: file.projects,
        policy: file.policy,
        ..running.clone()
    };
    Ok((next, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            r#"
listen = "127.0.0.1:50051"
{extra}
[[principal]]
name = "bob"
token_sha256 = "{HASH}"
[[environment]]
name = "production"
tag = "production"
approvers = ["bob"]
required_approvals = 1
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_new_policy_replaces_the_old_and_other_keys_wait_for_a_restart() {
        let running = config("");
        let file = Config::parse(&format!(
            r#"
listen = "127.0.0.1:50051"
registry_timeout = "3s"
max_checks_per_digest = 8
[[principal]]
name = "bob"
token_sha256 = "{HASH}"
[[principal]]
name = "erin"
token_sha256 = "{HASH}"
[[environment]]
name = "production"
tag = "production"
approvers = ["bob", "erin"]
required_approvals = 2
"#
        ))
        .unwrap();
        let (next, warnings) = reloaded(&running, file.clone()).unwrap();
        assert_eq!(next.principals.len(), 2);
        assert_eq!(next.environments[0].required_approvals, 2);
        assert_eq!(next.policy, file.policy);
        assert_eq!(next.registry_timeout, running.registry_timeout);
        assert_eq!(next.max_checks_per_digest, running.max_checks_per_digest);
        assert_eq!(
            warnings.iter().map(|w| w.key.as_str()).collect::<Vec<_>>(),
            ["max_checks_per_digest", "registry_timeout"]
        );
    }

    #[test]
    fn client_auth_changes_are_refused_like_client_ca() {
        use crate::config::{ClientAuth, ClientCa, TlsConfig};
        let mut running = config("");
        running.tls = Some(TlsConfig {
            cert: "server.pem".into(),
            key: "server.key".into(),
            client_ca: Some(ClientCa {
                path: "ca.pem".into(),
                auth: ClientAuth::Required,
            }),
        });
        let mut file = running.clone();
        if let Some(ca) = file.tls.as_mut().and_then(|t| t.client_ca.as_mut()) {
            ca.auth = ClientAuth::Optional;
        }
        let e = reloaded(&running, file).unwrap_err();
        assert_eq!(e.key, "tls");
        assert!(e.running.ends_with("client_auth required"), "{e}");
        assert!(e.file.ends_with("client_auth optional"), "{e}");
    }

    #[test]
    fn listen_and_data_dir_changes_are_refused() {
        let running = config("");
        let mut moved = config("");
        moved.listen = "127.0.0.1:1".into();
        let e = reloaded(&running, moved).unwrap_err();
        assert_eq!(e.key, "listen");
        assert!(e.to_string().contains("restart"), "{e}");
        let e = reloaded(&running, config("data_dir = \"/elsewhere\"")).unwrap_err();
        assert_eq!(e.key, "data_dir");
        let pg = config(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://prodgate@127.0.0.1/prodgate\"",
        );
        let e = reloaded(&running, pg).unwrap_err();
        assert_eq!(e.key, "storage");
        assert!(e.to_string().contains("postgres (url = "), "{e}");
    }
}
