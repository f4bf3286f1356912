//! The evidence an auditor checks without trusting the server: the audit
//! log's Merkle tree head signed as a C2SP checkpoint, inclusion and
//! consistency proofs (RFC 9162), and the publishers that copy each new
//! checkpoint somewhere else (a URL, a file outside the data directory).
//!
//! Heads and proofs cover durable entries only (see `store`), so a signed
//! checkpoint never names an entry a failed flush removes.

pub mod bundle;

use crate::config::{CheckpointConfig, PublishConfig};
use crate::error::Error;
use crate::store::{Store, TreeHead};
use signed_note::{Note, StandardSigner};
use std::sync::Arc;
use std::time::Duration;
use tlog_tiles::checkpoint::Checkpoint;
use tlog_tiles::tlog::Hash;
use tokio_util::sync::CancellationToken;

/// A new signed-note Ed25519 key pair named `name`: the private key
/// (`PRIVATE+KEY+<name>+<id>+<key>`) and the verifier key
/// (`<name>+<id>+<key>`). `None` if the name is not a valid key name (empty,
/// or with spaces or `+`).
pub fn keygen(name: &str) -> Option<(String, String)> {
    if !signed_note::is_key_name_valid(name) {
        return None;
    }
    Some(signed_note::generate_key(&mut rand_core::OsRng, name))
}

/// A tree head and, when a key is configured, its signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    pub size: u64,
    pub root: [u8; 32],
    /// Empty without `[checkpoint]`.
    pub note: String,
}

/// A proof and the sizes it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The leaf index (inclusion) or the smaller size (consistency).
    pub from: u64,
    pub tree_size: u64,
    pub hashes: Vec<[u8; 32]>,
}

/// The log's signer: origin and key.
struct Signing {
    origin: String,
    signer: StandardSigner,
}

#[derive(Clone)]
pub struct Evidence {
    store: Store,
    signing: Option<Arc<Signing>>,
}

impl Evidence {
    pub fn new(store: Store, checkpoint: Option<&CheckpointConfig>) -> Evidence {
        let signing = checkpoint.and_then(|c| {
            Some(Arc::new(Signing {
                origin: c.origin.clone(),
                signer: c.signer()?,
            }))
        });
        Evidence { store, signing }
    }

    /// The origin of the signed checkpoints; `None` without a key.
    pub fn origin(&self) -> Option<&str> {
        self.signing.as_ref().map(|s| s.origin.as_str())
    }

    /// The current head, signed if a key is configured.
    pub async fn checkpoint(&self) -> Result<SignedHead, Error> {
        let head = self.store.tree_head().await?;
        Ok(SignedHead {
            size: head.size,
            root: head.root,
            note: self.sign(head)?,
        })
    }

    fn sign(&self, head: TreeHead) -> Result<String, Error> {
        let Some(s) = &self.signing else {
            return Ok(String::new());
        };
        let internal = |what: &str| Error::Internal(format!("cannot sign the checkpoint: {what}"));
        let body = Checkpoint::new(&s.origin, head.size, Hash(head.root), "")
            .map_err(|e| internal(&e.to_string()))?
            .to_bytes();
        let mut note = Note::new(&body, &[]).map_err(|e| internal(&e.to_string()))?;
        note.add_sigs(&[&s.signer])
            .map_err(|e| internal(&e.to_string()))?;
        String::from_utf8(note.to_bytes()).map_err(|e| internal(&e.to_string()))
    }

    /// The size a request names: 0 is the current one; more is refused.
    fn size(&self, field: &'static str, asked: u64) -> Result<u64, Error> {
        let current = self.store.tree_size();
        match asked {
            0 => Ok(current),
            n if n > current => Err(Error::OutOfRange {
                field,
                message: format!("the log holds {current} durable entries; {n} is beyond it"),
            }),
            n => Ok(n),
        }
    }

    /// The inclusion proof of entry `sequence` in the tree of `tree_size`
    /// entries (0: the current size).
    pub async fn inclusion(&self, sequence: u64, tree_size: u64) -> Result<Proof, Error> {
        if sequence == 0 {
            return Err(Error::InvalidArgument {
                field: "sequence",
                message: "is required; sequences start at 1".into(),
            });
        }
        let size = self.size("tree_size", tree_size)?;
        if sequence > size {
            return Err(Error::OutOfRange {
                field: "sequence",
                message: format!("entry {sequence} is not in the tree of size {size}"),
            });
        }
        let hashes = self.store.inclusion_proof(sequence - 1, size).await?;
        Ok(Proof {
            from: sequence - 1,
            tree_size: size,
            hashes,
        })
    }

    /// The consistency proof from `from_size` to `to_size` (0: current).
    pub async fn consistency(&self, from_size: u64, to_size: u64) -> Result<Proof, Error> {
        if from_size == 0 {
            return Err(Error::InvalidArgument {
                field: "from_size",
                message: "is required: every tree is consistent with the empty one".into(),
            });
        }
        let to = self.size("to_size", to_size)?;
        if from_size > to {
            return Err(Error::OutOfRange {
                field: "from_size",
                message: format!("{from_size} is larger than to_size {to}"),
            });
        }
        let hashes = self.store.consistency_proof(from_size, to).await?;
        Ok(Proof {
            from: from_size,
            tree_size: to,
            hashes,
        })
    }
}

/// Publishes each new checkpoint per `[[checkpoint.publish]]` until `stop`,
/// then once more (the final size) before it returns. It starts from the
/// size the target last took (read back from its file, or the marker of its
/// URL), so a restart or a new leadership term does not publish the same
/// checkpoint again.
pub async fn publish(evidence: Evidence, target: PublishConfig, stop: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the checkpoint publisher's HTTP client");
            return;
        }
    };
    let mut published = {
        let (evidence, target) = (evidence.clone(), target.clone());
        tokio::task::spawn_blocking(move || last_published(&evidence, &target))
            .await
            .unwrap_or(0)
    };
    let mut tick = tokio::time::interval(target.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        match evidence.checkpoint().await {
            Ok(head) if head.size > published && !head.note.is_empty() => {
                if deliver(&client, &target, &head.note).await {
                    published = head.size;
                    if let Some(marker) = target.sent_marker.clone() {
                        let size = head.size;
                        let written =
                            tokio::task::spawn_blocking(move || remember(&marker, size)).await;
                        if !matches!(written, Ok(Ok(()))) {
                            tracing::warn!(
                                "cannot record the published checkpoint size; a restart sends it again"
                            );
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the checkpoint to publish"),
        }
        if last {
            return;
        }
    }
}

/// The size of the last checkpoint `target` took: the smaller of what its
/// file ends with and what its URL's marker says (a place that missed a
/// publication gets the next one), 0 when nothing is known.
fn last_published(evidence: &Evidence, target: &PublishConfig) -> u64 {
    let file = target.file.as_ref().map(|f| {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        evidence
            .origin()
            .map_or(0, |origin| last_size_in(&text, origin))
    });
    let url = target.sent_marker.as_ref().map(|m| {
        std::fs::read_to_string(m)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    });
    match (file, url) {
        (Some(a), Some(b)) => a.min(b),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => 0,
    }
}

/// The size of the last checkpoint of `origin` in published notes (each
/// starts with its origin line, then the size).
fn last_size_in(text: &str, origin: &str) -> u64 {
    let mut lines = text.lines();
    let mut last = 0;
    while let Some(line) = lines.next() {
        if line == origin
            && let Some(size) = lines.next().and_then(|l| l.parse().ok())
        {
            last = size;
        }
    }
    last
}

/// Records `size` in `marker`, replacing it whole (written aside, synced,
/// renamed).
fn remember(marker: &std::path::Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let aside = marker.with_extension("new");
    let mut f = std::fs::File::create(&aside)?;
    f.write_all(format!("{size}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&aside, marker)
}

/// Sends one note to each of the target's places; true if all took it.
async fn deliver(client: &reqwest::Client, target: &PublishConfig, note: &str) -> bool {
    let mut ok = true;
    if let Some(url) = &target.url {
        let sent = client
            .post(url)
            .header("content-type", "text/plain; charset=utf-8")
            .body(note.to_owned())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                ok = false;
                tracing::warn!(%url, status = r.status().as_u16(), "checkpoint publication refused");
            }
            Err(e) => {
                ok = false;
                tracing::warn!(%url, error = %e, "checkpoint publication failed");
            }
        }
    }
    if let Some(path) = &target.file {
        let path = path.clone();
        let note = note.to_owned();
        let written = tokio::task::spawn_blocking(move || append(&path, &note)).await;
        if !matches!(written, Ok(Ok(()))) {
            ok = false;
            let error = match written {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                Ok(Ok(())) => String::new(),
            };
            tracing::warn!(file = %target.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(), %error, "cannot append the checkpoint");
        }
    }
    ok
}

/// Appends `note` (it ends with a newline) and a blank line, then syncs.
fn append(path: &std::path::Path, note: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(note.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_published_size_is_read_back_from_the_notes() {
        let notes =
            "log.example\n3\nAAAA\n\n\u{2014} k abc\n\nlog.example\n7\nBBBB\n\n\u{2014} k def\n\n";
        assert_eq!(last_size_in(notes, "log.example"), 7);
        assert_eq!(last_size_in(notes, "other.example"), 0);
        assert_eq!(last_size_in("", "log.example"), 0);
    }
}
