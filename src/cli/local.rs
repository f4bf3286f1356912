//! The subcommands that need no server: `check-config`, `verify-log
//! --data-dir` (a stopped server's data directory), `migrate` (such a
//! directory into PostgreSQL) and `completions`.

use super::CliError;
use super::output::Printer;
use crate::config::{Config, Files, PostgresConfig};
use crate::pb;
use crate::store::StoreError;
use crate::store::postgres::migrate::{self, MigrateError};
use std::path::Path;

/// Validates `file`. Warnings go to stderr and do not fail the check; files
/// the config names that do not exist here are warnings too, unless
/// `strict`, which reads everything as `serve` would.
pub fn check_config(file: &Path, strict: bool, out: &mut Printer) -> Result<(), CliError> {
    let files = if strict {
        Files::Read
    } else {
        Files::WarnIfAbsent
    };
    let loaded = Config::load_with(file, files)?;
    for w in &loaded.warnings {
        eprintln!("prodgate: warning: {w}");
    }
    // `--strict` refuses the ambiguities `serve` only warns about.
    if strict && let Some(w) = loaded.warnings.iter().find(|w| w.strict) {
        return Err(crate::config::ConfigError::Invalid {
            key: w.key.clone(),
            message: format!("{} (refused by --strict)", w.message),
        }
        .into());
    }
    let c = loaded.config;
    out.raw(&format!("ok: {}\n", checked(&c)))
}

/// What `check-config` checked, counted: `3 environments (staging, …), 2
/// projects, …`, so a config whose section went unread (a typo in a table
/// name is refused, a missing one is not) shows as a 0.
fn checked(c: &Config) -> String {
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let environments: Vec<&str> = c.environments.iter().map(|e| e.name.as_str()).collect();
    // A freeze applies to several environments (and to every project's
    // copy of them); count each once.
    let mut freezes: Vec<&crate::domain::policy::Freeze> = Vec::new();
    let every = c
        .environments
        .iter()
        .chain(c.projects.iter().flat_map(|p| p.environments.iter()));
    for f in every.flat_map(|e| e.freezes.iter()) {
        if !freezes.contains(&f) {
            freezes.push(f);
        }
    }
    [
        format!(
            "{} ({})",
            count(environments.len(), "environment", "environments"),
            environments.join(", ")
        ),
        count(c.projects.len(), "project", "projects"),
        count(freezes.len(), "freeze", "freezes"),
        count(c.identities.len(), "identity", "identities"),
        count(c.check_reporters.len(), "check reporter", "check reporters"),
        count(c.registries.len(), "registry", "registries"),
        count(c.principals.len(), "principal", "principals"),
    ]
    .join(", ")
}

/// Same verdict and output as the online `verify-log`, from the files.
pub fn verify_offline(dir: &Path, out: &mut Printer) -> Result<(), CliError> {
    let v = crate::store::sled::verify_offline(dir)?;
    let ok = v.first_bad_sequence.is_none();
    out.verification(&pb::VerifyAuditLogResponse {
        ok,
        entries_checked: v.entries_checked,
        first_bad_sequence: v.first_bad_sequence.unwrap_or(0),
        head_hash: hex::encode(v.head_hash),
        message: v.message,
    })?;
    if ok {
        Ok(())
    } else {
        Err(CliError::ChainBroken)
    }
}

/// Copies the sled store under `dir` into `target` and prints what was
/// copied and the head and root both stores now share.
pub async fn migrate(
    dir: &Path,
    target: PostgresConfig,
    out: &mut Printer,
) -> Result<(), CliError> {
    let dir = dir.to_owned();
    // sled and the blocking PostgreSQL client, off the async workers.
    let report = tokio::task::spawn_blocking(move || migrate::from_sled(&dir, &target))
        .await
        .map_err(|e| {
            MigrateError::Store(StoreError::Backend(format!("the copy stopped: {e}")))
        })??;
    out.raw(&format!(
        "ok: copied and checked {} audit entries, {} promotions, {} pinned manifests, \
         {} policy versions, {} check reports, {} moved tags\nhead_hash: {}\nroot_hash: {}\n",
        report.entries,
        report.promotions,
        report.manifests,
        report.policies,
        report.checks,
        report.moved_tags,
        hex::encode(report.head_hash),
        hex::encode(report.root),
    ))
}

pub fn completions(
    shell: clap_complete::Shell,
    command: &mut clap::Command,
    out: &mut Printer,
) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, command, "prodgate", &mut script);
    out.raw(&String::from_utf8_lossy(&script))
}
