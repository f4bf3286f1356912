//! The data directory as found on disk, looked at before sled opens it.
//!
//! sled creates a database wherever it is pointed, and holds an exclusive
//! lock on its `db` file for as long as the database is open. So an offline
//! tool pointed at the wrong directory would create an empty store there and
//! find its (empty) audit chain intact, and one pointed at a running
//! server's store would pass sled's debug text on. These checks refuse both
//! with a sentence, creating nothing.

use super::{FORMAT_VERSION, format_error, horizon, keys};
use crate::store::StoreError;
use crate::store::codec::Old;
use std::path::{Path, PathBuf};

/// The files sled 0.34 keeps in every database directory.
const SLED_FILES: [&str; 2] = ["conf", "db"];

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("no prodgate store at {}: {why}", dir.display())]
    NoStore { dir: PathBuf, why: String },
    #[error(
        "the prodgate store at {} is locked by another process, a running prodgate server \
         (or another verify-log --data-dir); stop it to check the files, or meanwhile run \
         `prodgate verify-log` without --data-dir against the server, which runs the same \
         check (VerifyAuditLog)",
        dir.display()
    )]
    InUse { dir: PathBuf },
    #[error(
        "the prodgate store at {} {why}, which only a server's start repairs: start \
         `prodgate serve` on it once, stop it, and run this again",
        dir.display()
    )]
    NeedsStart { dir: PathBuf, why: String },
    #[error("cannot read {}: {source}", dir.display())]
    Unreadable {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<sled::Error> for DirError {
    fn from(e: sled::Error) -> Self {
        DirError::Store(e.into())
    }
}

/// Opens the existing prodgate store at `dir` for an offline check. Refused
/// before sled opens anything: a directory that is missing, empty, holds no
/// sled database or one without prodgate's files, and one another process
/// holds open. Refused after opening, before any tree is created: a sled
/// database without prodgate's audit log, and a store in another format.
pub fn open_existing(dir: &Path) -> Result<sled::Db, DirError> {
    let no_store = |why: &str| DirError::NoStore {
        dir: dir.to_owned(),
        why: why.to_owned(),
    };
    let unreadable = |source| DirError::Unreadable {
        dir: dir.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(no_store("it does not exist"));
        }
        Err(e) => return Err(unreadable(e)),
        Ok(m) if !m.is_dir() => return Err(no_store("it is not a directory")),
        Ok(_) => {}
    }
    if std::fs::read_dir(dir).map_err(unreadable)?.next().is_none() {
        return Err(no_store("it is empty"));
    }
    if SLED_FILES.iter().any(|f| !dir.join(f).is_file()) {
        return Err(no_store(
            "it holds no sled database (sled's `conf` and `db` files)",
        ));
    }
    // Every store this prodgate reads has it (it came with store format 2);
    // checking it first keeps sled from opening, and so from writing its
    // bookkeeping into, another program's database.
    if !dir.join(horizon::FILE_NAME).is_file() {
        return Err(no_store(&format!(
            "it holds a sled database, but not one prodgate wrote (no `{}` file)",
            horizon::FILE_NAME
        )));
    }
    if in_use(dir) {
        return Err(DirError::InUse {
            dir: dir.to_owned(),
        });
    }
    let db = sled::Config::new().path(dir).open().map_err(|e| {
        // Locked between the probe and the open: a server just started.
        if in_use(dir) {
            DirError::InUse {
                dir: dir.to_owned(),
            }
        } else {
            e.into()
        }
    })?;
    // `open_tree` would create what is missing: look at the names first.
    let trees = db.tree_names();
    let has = |name: &str| trees.iter().any(|t| t.as_ref() == name.as_bytes());
    if !has("audit") {
        return Err(no_store(
            "it is a sled database without prodgate's audit log",
        ));
    }
    let marker = if has("meta") {
        db.open_tree("meta")?.get(keys::FORMAT)?
    } else {
        None
    };
    // Formats 2, 3 and 4 are checked as they are (`codec::decode_entry_v2`
    // reads format 2's entries, format 3's and 4's are format 5's); only a
    // server migrates them.
    match marker.as_deref().map(keys::read_u64) {
        Some(Some(FORMAT_VERSION)) => Ok(db),
        Some(Some(n)) if Old::of(n).is_some() => Ok(db),
        Some(Some(n)) => Err(format_error(format!("store format {n}")).into()),
        Some(None) => Err(format_error("an unreadable store format marker".into()).into()),
        None => Err(format_error("store format 1 (written by an earlier prodgate)".into()).into()),
    }
}

/// sled's error on opening the store at `dir` for the server, or, when
/// another process holds the store, a sentence that says so.
pub(super) fn open_failed(dir: &Path, e: sled::Error) -> StoreError {
    if in_use(dir) {
        StoreError::Backend(format!(
            "{} is in use by another running prodgate, which holds its lock; stop that \
             server, or give this one another data_dir",
            dir.display()
        ))
    } else {
        e.into()
    }
}

/// Whether another process holds sled's lock on `dir/db`. sled takes it with
/// fs2, which is `flock` on Unix and `LockFileEx` on Windows, as std's file
/// locks are, so the probe sees sled's lock. It takes a shared lock and drops
/// it at once, so two probes never block each other. Anything but contention
/// (no file, no permission) is left for sled's open to report.
fn in_use(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return false;
    };
    // Dropping `file` releases a lock it got before sled asks for its own.
    matches!(
        file.try_lock_shared(),
        Err(std::fs::TryLockError::WouldBlock)
    )
}
