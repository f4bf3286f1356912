//! The evidence subcommands: `keygen` (local), `checkpoint`, `prove`,
//! `consistency` and `export` (client), `verify-export` (local, no server). Verification is
//! done here, on the auditor's machine, with the log's verifier key: the
//! server is not trusted for it.

use super::client::Client;
use super::output::Printer;
use super::{CliError, ClientArgs, json};
use crate::evidence::bundle::{self, Line};
use crate::pb;
use crate::store::merkle::{self, MemoryNodes};
use signed_note::{Note, StandardVerifier, VerifierList};
use std::io::Write;
use std::path::Path;
use tlog_tiles::checkpoint::Checkpoint;
use tlog_tiles::tlog::{self, Hash};

/// A verifier key given as its text or as a file holding it.
fn verifier_key(key: &str) -> Result<String, CliError> {
    let path = Path::new(key);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| CliError::ReadFile {
                what: "verifier key",
                path: path.to_owned(),
                source,
            });
    }
    Ok(key.trim().to_owned())
}

/// Writes `NAME.key` (private, mode 0600) and `NAME.pub` in `dir`; never
/// overwrites a key.
pub fn keygen(name: &str, dir: &Path, out: &mut Printer) -> Result<(), CliError> {
    let (skey, vkey) = crate::evidence::keygen(name).ok_or_else(|| {
        CliError::Evidence(format!(
            "--name {name:?}: a key name is non-empty, without spaces or '+' (e.g. prodgate.example.com)"
        ))
    })?;
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    write_new(&private, &skey, 0o600)?;
    write_new(&public, &vkey, 0o644)?;
    out.raw(&format!(
        "private key: {}  ([checkpoint] key_file; keep it secret)\nverifier key: {}  (give it to auditors)\n{vkey}\n",
        private.display(),
        public.display()
    ))
}

/// Writes `attest.key` (ECDSA P-256, PKCS#8 PEM, mode 0600) and
/// `attest.pub` in `dir`; never overwrites a key.
pub fn keygen_attest(dir: &Path, out: &mut Printer) -> Result<(), CliError> {
    let (private_pem, public_pem) = crate::attest::keygen();
    let private = dir.join("attest.key");
    let public = dir.join("attest.pub");
    write_new(&private, private_pem.trim_end(), 0o600)?;
    write_new(&public, public_pem.trim_end(), 0o644)?;
    out.raw(&format!(
        "private key: {}  ([attest] key_file; keep it secret)\npublic key: {}  (cosign verify-attestation --key, admission policies)\n",
        private.display(),
        public.display()
    ))
}

/// Creates `path` (never over an existing file) holding `text` and a
/// newline, with `mode` on Unix, synced before it returns; its directory
/// is made when missing (`keygen --out /etc/prodgate/keys`).
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), CliError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CliError::WriteFile {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(path).map_err(|source| CliError::WriteFile {
        path: path.to_owned(),
        source,
    })?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| CliError::WriteFile {
            path: path.to_owned(),
            source,
        })
}

/// Checks a signed checkpoint note against `key`; returns its size and root.
fn verified_note(note: &str, key: &str) -> Result<(String, u64, [u8; 32]), CliError> {
    let verifier = StandardVerifier::new(key).map_err(|_| {
        CliError::Evidence(
            "--verifier-key is not a signed-note verifier key (<name>+<8 hex>+<base64>)".into(),
        )
    })?;
    let note = Note::from_bytes(note.as_bytes())
        .map_err(|e| CliError::NotVerified(format!("the checkpoint is not a signed note: {e}")))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| CliError::NotVerified(format!("the checkpoint's signature: {e}")))?;
    let c = Checkpoint::from_bytes(note.text())
        .map_err(|e| CliError::NotVerified(format!("the note is no checkpoint: {e}")))?;
    Ok((c.origin().to_owned(), c.size(), c.hash().0))
}

fn hex32(s: &str, what: &str) -> Result<[u8; 32], CliError> {
    bundle::hex32(s)
        .ok_or_else(|| CliError::NotVerified(format!("the server sent a malformed {what}")))
}

async fn signed_checkpoint(c: &mut Client) -> Result<pb::Checkpoint, CliError> {
    let cp = c
        .api
        .get_checkpoint(c.unary(pb::GetCheckpointRequest {}))
        .await?
        .into_inner();
    if cp.note.is_empty() {
        return Err(CliError::Evidence(
            "the server signs no checkpoints: configure [checkpoint] (origin, key_file from `prodgate keygen`)".into(),
        ));
    }
    Ok(cp)
}

/// The current checkpoint; with `key`, verified before it is printed.
pub async fn checkpoint(g: &ClientArgs, key: Option<String>) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let cp = c
        .api
        .get_checkpoint(c.unary(pb::GetCheckpointRequest {}))
        .await?
        .into_inner();
    if let Some(key) = key {
        if cp.note.is_empty() {
            return Err(CliError::NotVerified(
                "the server sent no signed note".into(),
            ));
        }
        let (_, size, root) = verified_note(&cp.note, &verifier_key(&key)?)?;
        if size != cp.size || hex::encode(root) != cp.root_hash {
            return Err(CliError::NotVerified(
                "the note's size or root differs from the checkpoint's".into(),
            ));
        }
    }
    Printer::stdout(g.output).checkpoint(&cp)
}

/// Proves entry `sequence` is in the log the signed checkpoint commits to,
/// verifying everything here with `key`.
pub async fn prove(g: &ClientArgs, sequence: u64, key: &str) -> Result<(), CliError> {
    let key = verifier_key(key)?;
    let mut c = Client::connect(g).await?;
    let cp = signed_checkpoint(&mut c).await?;
    let (origin, size, root) = verified_note(&cp.note, &key)?;
    let proof = c
        .api
        .get_inclusion_proof(c.unary(pb::GetInclusionProofRequest {
            sequence,
            tree_size: size,
        }))
        .await?
        .into_inner();
    let e = entry_at(&c, sequence).await?;
    let computed = match bundle::entry_line(&e) {
        Line::Entry(entry) => entry,
        _ => return Err(CliError::Evidence("internal: not an entry".into())),
    };
    let hash = hex32(&computed.hash, "entry hash")?;
    // The entry's fields must hash to its hash, or the proof proves nothing
    // about them.
    if computed.computed_hash() != Some(hash) {
        return Err(CliError::NotVerified(format!(
            "entry {sequence}'s fields do not hash to its hash"
        )));
    }
    let hashes = proof
        .hashes
        .iter()
        .map(|h| hex32(h, "proof hash").map(Hash))
        .collect::<Result<Vec<_>, _>>()?;
    tlog::check_record(
        &hashes,
        size,
        Hash(root),
        sequence - 1,
        tlog::record_hash(&hash),
    )
    .map_err(|_| {
        CliError::NotVerified(format!(
            "the inclusion proof of entry {sequence} does not lead to the signed root"
        ))
    })?;
    let out = &mut Printer::stdout(g.output);
    match g.output {
        super::Format::Json => out.raw(&format!(
            "{}\n",
            json::inclusion(&json::Inclusion {
                sequence,
                entry_hash: &computed.hash,
                proof: &proof,
                root_hash: &hex::encode(root),
                note: &cp.note,
            })
        )),
        super::Format::Table => out.raw(&format!(
            "ok: entry {sequence} (hash {}) is in {origin} at size {size}, root {}\n",
            computed.hash,
            hex::encode(root)
        )),
    }
}

/// What `consistency` is asked to prove.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub from: u64,
    /// `None`: the signed checkpoint's size.
    pub to: Option<u64>,
    /// The root the caller holds for `from` (hex).
    pub from_root: Option<String>,
}

/// Proves that the tree of `asked.to` entries extends the tree of
/// `asked.from`, checking the consistency proof here against roots that do
/// not come from the server unchecked: the signed checkpoint's, the one
/// the caller holds, or ones recomputed from the entries and bound to the
/// signed checkpoint.
pub async fn consistency(g: &ClientArgs, asked: Sizes, key: &str) -> Result<(), CliError> {
    let key = verifier_key(key)?;
    let held = asked
        .from_root
        .as_deref()
        .map(|h| {
            bundle::hex32(h.trim()).ok_or_else(|| {
                CliError::Evidence(format!("--from-root {h:?} is not 32 bytes of hex"))
            })
        })
        .transpose()?;
    let mut c = Client::connect(g).await?;
    let cp = signed_checkpoint(&mut c).await?;
    let (origin, size, root) = verified_note(&cp.note, &key)?;
    let (from, to) = (asked.from, asked.to.unwrap_or(size));
    if to > size {
        return Err(CliError::Evidence(format!(
            "--to {to}: the signed checkpoint covers entries 1 to {size}"
        )));
    }
    if from > to {
        return Err(CliError::Evidence(format!(
            "--from {from} is larger than --to {to}"
        )));
    }
    let (from_root, to_root) = match held {
        Some(f) if to == size => (f, root),
        _ => {
            let roots = roots_from_entries(&c, size, root, &[from, to]).await?;
            (held.unwrap_or(roots[0]), roots[1])
        }
    };
    let proof = c
        .api
        .get_consistency_proof(c.unary(pb::GetConsistencyProofRequest {
            from_size: from,
            to_size: to,
        }))
        .await?
        .into_inner();
    if (proof.from_size, proof.to_size) != (from, to) {
        return Err(CliError::NotVerified(format!(
            "asked for the proof from size {from} to {to}, the server sent one from {} to {}",
            proof.from_size, proof.to_size
        )));
    }
    let hashes = proof
        .hashes
        .iter()
        .map(|h| hex32(h, "proof hash").map(Hash))
        .collect::<Result<Vec<_>, _>>()?;
    tlog::check_tree(&hashes, to, Hash(to_root), from, Hash(from_root)).map_err(|_| {
        CliError::NotVerified(format!(
            "the consistency proof does not lead from root {} at size {from} to root {} at size {to}",
            hex::encode(from_root),
            hex::encode(to_root)
        ))
    })?;
    let out = &mut Printer::stdout(g.output);
    match g.output {
        super::Format::Json => out.raw(&format!(
            "{}\n",
            json::consistency(&json::Consistency {
                proof: &proof,
                from_root: &hex::encode(from_root),
                to_root: &hex::encode(to_root),
                note: &cp.note,
            })
        )),
        super::Format::Table => out.raw(&format!(
            "ok: {origin} at size {to} (root {}) extends size {from} (root {}) unchanged\n",
            hex::encode(to_root),
            hex::encode(from_root)
        )),
    }
}

/// The roots of the trees of each of `sizes` entries, rebuilt from the
/// entries 1 to `size` after checking each one's hash and chain, and the
/// whole against the signed `root` of `size`: what the server says the
/// entries were is then what it signed.
async fn roots_from_entries(
    c: &Client,
    size: u64,
    root: [u8; 32],
    sizes: &[u64],
) -> Result<Vec<[u8; 32]>, CliError> {
    let mut tree = MemoryNodes::default();
    let mut prev = [0u8; 32];
    let mut seen = 0;
    for e in first_entries(c, size).await? {
        let Line::Entry(entry) = bundle::entry_line(&e) else {
            return Err(CliError::Evidence("internal: not an entry".into()));
        };
        let sequence = seen + 1;
        let hash = hex32(&entry.hash, "entry hash")?;
        if entry.sequence != sequence
            || bundle::hex32(&entry.prev_hash) != Some(prev)
            || entry.computed_hash() != Some(hash)
        {
            return Err(CliError::NotVerified(format!(
                "entry {sequence} does not hash to its hash or does not chain to the one before"
            )));
        }
        tree.push(sequence, &hash)
            .map_err(|e| CliError::Evidence(format!("cannot rebuild the tree: {e}")))?;
        prev = hash;
        seen = sequence;
    }
    let root_of = |n: u64| {
        merkle::root(n, &tree).map_err(|_| {
            CliError::NotVerified(format!(
                "the server sent {seen} entries, the signed checkpoint covers {size}"
            ))
        })
    };
    if seen != size || root_of(size)? != root {
        return Err(CliError::NotVerified(
            "the entries do not lead to the signed checkpoint's root".into(),
        ));
    }
    sizes.iter().map(|&n| root_of(n)).collect()
}

/// The first `n` entries of the log, oldest first: History pages by
/// position, and the log is gapless, so they are sequences 1 to `n`.
async fn first_entries(c: &Client, n: u64) -> Result<Vec<pb::AuditEntry>, CliError> {
    let limit = u32::try_from(n).unwrap_or(u32::MAX);
    super::commands::history_pages(c, pb::HistoryRequest::default(), Some(limit)).await
}

/// The entry with `sequence`.
async fn entry_at(c: &Client, sequence: u64) -> Result<pb::AuditEntry, CliError> {
    first_entries(c, sequence)
        .await?
        .into_iter()
        .find(|e| e.sequence == sequence)
        .ok_or_else(|| CliError::Evidence(format!("entry {sequence} is not in the log")))
}

/// Writes the bundle of entries `since`..=checkpoint size to `out_path`.
pub async fn export(g: &ClientArgs, since: u64, out_path: &Path) -> Result<(), CliError> {
    if since == 0 {
        return Err(CliError::Evidence("--since: sequences start at 1".into()));
    }
    let mut c = Client::connect(g).await?;
    let cp = signed_checkpoint(&mut c).await?;
    let size = cp.size;
    if since > size {
        return Err(CliError::Evidence(format!(
            "--since {since}: the signed checkpoint covers entries 1 to {size}; there is nothing \
             from {since} on to export yet"
        )));
    }
    let mut lines = vec![Line::Checkpoint {
        size,
        root_hash: cp.root_hash.clone(),
        note: cp.note.clone(),
    }];
    let proof = c
        .api
        .get_inclusion_proof(c.unary(pb::GetInclusionProofRequest {
            sequence: since,
            tree_size: size,
        }))
        .await?
        .into_inner();
    lines.push(Line::InclusionProof {
        leaf_index: proof.leaf_index,
        tree_size: proof.tree_size,
        hashes: proof.hashes,
    });
    for e in first_entries(&c, size).await? {
        if (since..=size).contains(&e.sequence) {
            lines.push(bundle::entry_line(&e));
        }
    }
    let mut text = Vec::new();
    for line in &lines {
        serde_json::to_writer(&mut text, line)
            .map_err(|e| CliError::Evidence(format!("cannot encode the bundle: {e}")))?;
        text.push(b'\n');
    }
    std::fs::write(out_path, &text).map_err(|source| CliError::WriteFile {
        path: out_path.to_owned(),
        source,
    })?;
    Printer::stdout(g.output).raw(&format!(
        "wrote {}: entries {since}..{size} and the checkpoint at size {size}\n",
        out_path.display()
    ))
}

/// Verifies a bundle offline with the log's verifier key.
pub fn verify_export(file: &Path, key: &str, out: &mut Printer) -> Result<(), CliError> {
    let key = verifier_key(key)?;
    let f = std::fs::File::open(file).map_err(|source| CliError::ReadFile {
        what: "bundle",
        path: file.to_owned(),
        source,
    })?;
    let r = bundle::verify(std::io::BufReader::new(f), &key)
        .map_err(|e| CliError::NotVerified(e.to_string()))?;
    out.raw(&format!(
        "ok: entries {}..{} of {} verified against its checkpoint at size {}, signed by {}\n",
        r.first, r.tree_size, r.origin, r.tree_size, r.key_name
    ))
}
