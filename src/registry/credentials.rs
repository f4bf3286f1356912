//! A registry's credentials while the server runs. They are read again when
//! the file they come from changes (Kubernetes rotates a mounted secret by
//! swapping a symlink; a Docker config is rewritten) and after the registry
//! or its token service refuses them (a credential helper's short-lived
//! password ran out; a file was rewritten within the same mtime tick), so a
//! rotated secret needs no restart.

use crate::config::{CredentialSource, RegistryCredentials};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// A version of a file, told apart without reading it: a rewrite changes
/// the mtime or length, a symlink swap (Kubernetes) the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: (u64, u64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let inode = (0, 0);
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The credentials of one registry and where to read them again.
pub struct Credentials {
    host: String,
    source: CredentialSource,
    /// Longest a read may take: a credential helper is a program, and one
    /// that hangs must not hold a tag move forever.
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Clone)]
struct State {
    current: Option<RegistryCredentials>,
    /// Of [`CredentialSource::file`] when `current` was read.
    stamp: Option<Stamp>,
    /// Counts changes of `current`, so that an authorization made with older
    /// credentials is not reused.
    generation: u64,
}

/// The credentials to present now.
#[derive(Clone)]
pub struct Current {
    pub credentials: Option<RegistryCredentials>,
    pub generation: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // RegistryCredentials redacts the password itself; the state adds nothing.
        f.debug_struct("Credentials")
            .field("host", &self.host)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `initial`: what the config read at start-up from `source`.
    pub fn new(
        host: &str,
        source: CredentialSource,
        initial: Option<RegistryCredentials>,
        timeout: Duration,
    ) -> Self {
        // At start-up, so blocking is fine; the file was just read.
        let stamp = source.file().and_then(stamp);
        Self {
            host: host.to_owned(),
            source,
            timeout,
            state: Mutex::new(State {
                current: initial,
                stamp,
                generation: 0,
            }),
        }
    }

    /// No credentials, nothing to read again.
    pub fn anonymous(host: &str) -> Self {
        Self::new(host, CredentialSource::None, None, Duration::ZERO)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The credentials as they are now: read again first if their file
    /// changed since they were read.
    pub async fn current(&self) -> Current {
        if let Some(path) = self.source.file() {
            let path = path.to_owned();
            let now = tokio::task::spawn_blocking(move || stamp(&path))
                .await
                .ok()
                .flatten();
            if now != self.state().stamp {
                self.reload(now, "its file changed").await;
            }
        }
        let s = self.state();
        Current {
            credentials: s.current.clone(),
            generation: s.generation,
        }
    }

    /// After a refusal: reads the credentials again, whether or not their
    /// file looks changed. True if they changed, so that another try may
    /// succeed.
    pub async fn refresh(&self) -> bool {
        match self.source {
            CredentialSource::None | CredentialSource::Env { .. } => false,
            CredentialSource::PasswordFile { .. } | CredentialSource::DockerConfig { .. } => {
                let path = self.source.file().map(Path::to_owned);
                let now = tokio::task::spawn_blocking(move || path.and_then(|p| stamp(&p)))
                    .await
                    .ok()
                    .flatten();
                self.reload(now, "the registry refused them").await
            }
        }
    }

    /// Reads the source; true if the credentials changed. A read that fails
    /// keeps the previous credentials (the failure is logged, never a
    /// secret) and records `stamp`, so a broken file is read again once it
    /// changes, or after the next refusal, not on every request.
    async fn reload(&self, stamp: Option<Stamp>, why: &'static str) -> bool {
        let (source, host) = (self.source.clone(), self.host.clone());
        let read = tokio::time::timeout(
            self.timeout,
            tokio::task::spawn_blocking(move || source.read(&host)),
        )
        .await;
        let fresh = match read {
            Ok(Ok(Ok(c))) => Some(c),
            Ok(Ok(Err(e))) => {
                tracing::warn!(registry = %self.host, error = %e, why,
                    "cannot read the registry credentials again; keeping the ones read before");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(registry = %self.host, error = %e, why,
                    "reading the registry credentials again failed; keeping the ones read before");
                None
            }
            Err(_) => {
                tracing::warn!(registry = %self.host, timeout = ?self.timeout, why,
                    "reading the registry credentials again took too long; keeping the ones read before");
                None
            }
        };
        let mut s = self.state();
        s.stamp = stamp;
        match fresh {
            Some(c) if c != s.current => {
                tracing::info!(registry = %self.host, why, "registry credentials read again: they changed");
                s.current = c;
                s.generation += 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(p: &str) -> Option<RegistryCredentials> {
        Some(RegistryCredentials {
            username: "ci".into(),
            password: p.into(),
        })
    }

    #[tokio::test]
    async fn a_password_file_is_read_again_when_it_changes_or_after_a_refusal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        std::fs::write(&path, "one\n").expect("write");
        let source = CredentialSource::PasswordFile {
            username: "ci".into(),
            path: path.clone(),
        };
        let c = Credentials::new("r.io", source, creds("one"), Duration::from_secs(5));
        let first = c.current().await;
        assert_eq!(first.credentials, creds("one"));

        // A symlink swap, as Kubernetes does it.
        let next = dir.path().join("password.2");
        std::fs::write(&next, "two\n").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        let second = c.current().await;
        assert_eq!(second.credentials, creds("two"));
        assert!(second.generation > first.generation);

        // Rewritten in place with the same length and mtime: only a refusal
        // makes prodgate look again.
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        std::fs::write(&path, "six\n").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
        assert_eq!(c.current().await.credentials, creds("two"));
        assert!(c.refresh().await);
        assert_eq!(c.current().await.credentials, creds("six"));
        assert!(!c.refresh().await, "unchanged: nothing to try again");

        // A file that vanished keeps the last credentials.
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(c.current().await.credentials, creds("six"));
        assert!(!c.refresh().await);
    }
}
