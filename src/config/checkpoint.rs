//! `[checkpoint]`: who signs the audit log's checkpoints, under which
//! origin, and where copies of them are published (`[[checkpoint.publish]]`)
//! so that they live somewhere the server's operator cannot rewrite.

use super::validate::{Cx, duration};
use super::{ConfigError, Secret, invalid};
use serde::Deserialize;
use signed_note::Signer;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a publisher checks whether the log grew, by default.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheckpoint {
    pub origin: String,
    pub key_file: PathBuf,
    #[serde(default)]
    pub publish: Vec<RawPublish>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublish {
    pub interval: Option<String>,
    pub url: Option<String>,
    pub file: Option<PathBuf>,
}

/// `[checkpoint]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// The log's identity, the first line of every checkpoint.
    pub origin: String,
    /// The signed-note private key (`PRIVATE+KEY+<name>+<id>+<key>`), read
    /// from `key_file`; `None` only when `check-config` could not read it.
    pub key: Option<Secret>,
    /// The key's name, as its signature lines show it.
    pub key_name: String,
    pub publish: Vec<PublishConfig>,
}

/// One `[[checkpoint.publish]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishConfig {
    pub interval: Duration,
    /// POST each new checkpoint here (`text/plain`).
    pub url: Option<String>,
    /// Append each new checkpoint to this file.
    pub file: Option<PathBuf>,
    /// Where the size last POSTed to `url` is remembered (under
    /// `data_dir`), so a restart does not send it again; a `file` target
    /// is read back instead.
    pub sent_marker: Option<PathBuf>,
}

impl CheckpointConfig {
    /// The signer of `key` (checked when the config was validated).
    pub fn signer(&self) -> Option<signed_note::StandardSigner> {
        let key = self.key.as_ref()?;
        signed_note::StandardSigner::new(std::str::from_utf8(key.expose()).ok()?.trim()).ok()
    }
}

pub(super) fn checkpoint(
    raw: RawCheckpoint,
    data_dir: &Path,
    cx: &mut Cx,
) -> Result<CheckpointConfig, ConfigError> {
    let origin = raw.origin;
    if origin.is_empty()
        || origin.len() > 256
        || origin.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(
            "checkpoint.origin",
            "must be one line without spaces, like \"prodgate.example.com/audit\"",
        ));
    }
    let (key, key_name) = match cx.read("checkpoint.key_file", &raw.key_file)? {
        None => (None, String::new()),
        Some(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| {
                invalid(
                    "checkpoint.key_file",
                    format!("{} is not text", raw.key_file.display()),
                )
            })?;
            // The error says what the file should hold, never what it holds.
            let signer = signed_note::StandardSigner::new(text.trim()).map_err(|_| {
                invalid(
                    "checkpoint.key_file",
                    format!(
                        "{} is not a signed-note Ed25519 private key (PRIVATE+KEY+<name>+<id>+<key>); make one with `prodgate keygen`",
                        raw.key_file.display()
                    ),
                )
            })?;
            let name = signer.name().to_owned();
            (Some(Secret::new(text.trim().as_bytes().to_vec())), name)
        }
    };
    let mut publish = Vec::new();
    for (i, p) in raw.publish.into_iter().enumerate() {
        let key = |k: &str| format!("checkpoint.publish[{i}].{k}");
        if p.url.is_none() && p.file.is_none() {
            return Err(invalid(
                format!("checkpoint.publish[{i}]"),
                "names neither url nor file: say where the checkpoints go",
            ));
        }
        if let Some(u) = &p.url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(invalid(key("url"), format!("{u:?} is not an http(s) URL")));
        }
        if let Some(f) = &p.file
            && within(f, data_dir)
        {
            return Err(invalid(
                key("file"),
                format!(
                    "{} is inside data_dir {}: a copy there is rewritten with the log it should witness; put it elsewhere",
                    f.display(),
                    data_dir.display()
                ),
            ));
        }
        publish.push(PublishConfig {
            interval: duration(
                &key("interval"),
                p.interval.as_deref(),
                DEFAULT_PUBLISH_INTERVAL,
            )?,
            sent_marker: p.url.as_deref().map(|u| {
                use sha2::Digest;
                let id = hex::encode(sha2::Sha256::digest(u.as_bytes()));
                data_dir.join(format!("checkpoint-sent-{}", &id[..16]))
            }),
            url: p.url,
            file: p.file,
        });
    }
    Ok(CheckpointConfig {
        origin,
        key,
        key_name,
        publish,
    })
}

/// Whether `path` lies under `dir`, compared as written and, where both
/// exist, as resolved.
fn within(path: &Path, dir: &Path) -> bool {
    if path.starts_with(dir) {
        return true;
    }
    match (
        path.parent().and_then(|p| p.canonicalize().ok()),
        dir.canonicalize().ok(),
    ) {
        (Some(p), Some(d)) => p.starts_with(d),
        _ => false,
    }
}
