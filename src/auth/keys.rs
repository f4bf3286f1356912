//! The signing keys of each `[[identity]]`'s JWKS, cached across calls and
//! across reloads (keyed by where they come from, so a reload that keeps
//! an issuer keeps its keys).
//!
//! - A `jwks_url` is fetched on first use and again when older than
//!   [`URL_MAX_AGE`] (so a key the issuer withdrew stops working), and when
//!   a token names a `kid` the cache does not have, at most once per
//!   [`REFETCH_INTERVAL`] (for a `jwks_file` too): the issuer rotated its keys, and the first token
//!   signed with the new one is accepted without a restart, while a stream
//!   of made-up `kid`s costs the issuer one request per interval. A fetch
//!   that fails keeps the keys already held.
//! - A `jwks_file` is re-read when its mtime, length or inode change
//!   (looked at no more than once per [`FILE_CHECK_INTERVAL`]), so a rotated
//!   file is used within a second.
//! - A call whose key is cached never waits for a fetch under way: it
//!   uses the keys held (the fetch holds the source's lock across its I/O).
//!
//! The HTTP client has a timeout, reads at most [`MAX_JWKS_BYTES`], and
//! follows no redirect: keys come from the configured URL or not at all.

use crate::config::{JwsAlgorithm, Key, KeySet, KeySource, MAX_JWKS_BYTES};
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// An unknown `kid` refetches a `jwks_url` at most this often.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Keys from a URL are fetched again on the first use after this.
pub const URL_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// How often a `jwks_file`'s metadata is looked at for a change.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// With no keys held, a failed read or fetch is not tried again sooner:
/// calls fail fast instead of each waiting on a dead endpoint.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Deadline of one JWKS request (connect included).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No keys could be had at all (nothing cached, and the fetch or read failed).
    #[error("{0}")]
    Unavailable(String),
    #[error("no key {} in the issuer's JWKS", super::jwt::shown(kid))]
    UnknownKid { kid: String },
    #[error("the token names no key (kid), and the issuer's JWKS has {count} {kind} keys")]
    NoKid { count: usize, kind: &'static str },
}

/// Every source's keys.
pub struct KeyCache {
    http: reqwest::Client,
    sources: Mutex<HashMap<KeySource, Arc<Source>>>,
}

struct Source {
    source: KeySource,
    keys: ArcSwapOption<KeySet>,
    /// Held while reading or fetching, so concurrent calls wait for one
    /// fetch instead of starting their own.
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the keys were last read or fetched (or tried to be).
    loaded: Option<Instant>,
    /// When an unknown `kid` last caused a fetch.
    refetched: Option<Instant>,
    /// The file's identity when it was last read.
    stamp: Option<Stamp>,
    /// The last failure and when it happened, while no keys are held.
    failed: Option<(Instant, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl KeyCache {
    pub fn new() -> Result<KeyCache, String> {
        // reqwest is built without a default TLS crypto provider; the
        // process uses ring (as server.rs installs it). Err means one is
        // installed already, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(FETCH_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("prodgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        Ok(KeyCache {
            http,
            sources: Mutex::new(HashMap::new()),
        })
    }

    fn source(&self, source: &KeySource) -> Arc<Source> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources
            .entry(source.clone())
            .or_insert_with(|| {
                Arc::new(Source {
                    source: source.clone(),
                    keys: ArcSwapOption::empty(),
                    state: tokio::sync::Mutex::new(State::default()),
                })
            })
            .clone()
    }

    /// The key that verifies a token with this `kid` and `alg`.
    pub async fn key(
        &self,
        source: &KeySource,
        kid: Option<&str>,
        alg: JwsAlgorithm,
    ) -> Result<Key, KeyError> {
        let src = self.source(source);
        let mut keys = src.keys.load_full();
        let mut just_loaded = false;
        // With keys held, a refresh under way (the lock taken) means they
        // are being renewed: use them meanwhile instead of waiting on the
        // I/O, so a slow issuer (or made-up `kid`s) never stalls the calls
        // whose key is cached.
        let due = match (&keys, src.state.try_lock()) {
            (None, _) => true,
            (Some(_), Ok(mut state)) => src.due(&mut state, &keys),
            (Some(_), Err(_)) => false,
        };
        if due {
            let before = keys.clone();
            keys = self.refresh(&src, false).await?;
            just_loaded = !same(&before, &keys);
        }
        let Some(set) = keys else {
            return Err(KeyError::Unavailable(format!("no keys from {source}")));
        };
        match select(&set, kid, alg) {
            // Keys this very call loaded are as new as they get.
            Err(KeyError::UnknownKid { .. }) if !just_loaded => {}
            found => return found,
        }
        // Rotated keys: look again, within the limits above.
        let again = self.refresh(&src, true).await?;
        match again {
            Some(set) => select(&set, kid, alg),
            None => Err(KeyError::Unavailable(format!("no keys from {source}"))),
        }
    }

    /// Reads or fetches the keys again if they are still what the caller
    /// saw (another call may have just done it); `unknown_kid` says why.
    /// Returns the keys to use, old ones when a fetch failed.
    async fn refresh(
        &self,
        src: &Source,
        unknown_kid: bool,
    ) -> Result<Option<Arc<KeySet>>, KeyError> {
        let before = src.keys.load_full();
        let mut state = src.state.lock().await;
        let now_held = src.keys.load_full();
        if !same(&before, &now_held) {
            return Ok(now_held);
        }
        let now = Instant::now();
        if now_held.is_none()
            && let Some((at, message)) = &state.failed
            && now.duration_since(*at) < RETRY_AFTER_FAILURE
        {
            return Err(KeyError::Unavailable(message.clone()));
        }
        if unknown_kid {
            // A file too: a rotated file is noticed by its stamp within
            // FILE_CHECK_INTERVAL, so re-reading it for every made-up `kid`
            // would only let anyone with a token make the server read (and
            // log) as fast as it can send.
            if state
                .refetched
                .is_some_and(|t| now.duration_since(t) < REFETCH_INTERVAL)
            {
                return Ok(now_held);
            }
            state.refetched = Some(now);
        } else if now_held.is_some() && !src.due(&mut state, &now_held) {
            return Ok(now_held);
        }
        state.loaded = Some(now);
        let loaded = match &src.source {
            KeySource::Url(url) => fetch(&self.http, url).await,
            KeySource::File(path) => {
                let path = path.clone();
                match tokio::task::spawn_blocking(move || read_file(&path)).await {
                    Ok(r) => r,
                    Err(e) => Err((format!("reading the JWKS file failed: {e}"), None)),
                }
                .map(|(keys, stamp)| {
                    state.stamp = Some(stamp);
                    keys
                })
            }
        };
        match loaded {
            Ok(keys) => {
                // Loading the same keys again is not news.
                let unchanged = now_held
                    .as_deref()
                    .is_some_and(|held| held.kids() == keys.kids());
                if unchanged {
                    tracing::debug!(source = %src.source, keys = keys.keys.len(), "JWKS read again: unchanged");
                } else {
                    tracing::info!(source = %src.source, keys = keys.keys.len(), "JWKS loaded");
                }
                let keys = Arc::new(keys);
                src.keys.store(Some(keys.clone()));
                state.failed = None;
                Ok(Some(keys))
            }
            Err((message, stamp)) => {
                if stamp.is_some() {
                    state.stamp = stamp;
                }
                tracing::warn!(source = %src.source, error = %message, "cannot load the JWKS; keeping the keys held, if any");
                match now_held {
                    Some(keys) => Ok(Some(keys)),
                    None => {
                        state.failed = Some((now, message.clone()));
                        Err(KeyError::Unavailable(message))
                    }
                }
            }
        }
    }
}

impl Source {
    /// Whether the held keys should be read or fetched again before use.
    fn due(&self, state: &mut State, keys: &Option<Arc<KeySet>>) -> bool {
        if keys.is_none() {
            return true;
        }
        let now = Instant::now();
        match &self.source {
            KeySource::Url(_) => state
                .loaded
                .is_none_or(|t| now.duration_since(t) >= URL_MAX_AGE),
            KeySource::File(path) => {
                if state
                    .loaded
                    .is_some_and(|t| now.duration_since(t) < FILE_CHECK_INTERVAL)
                {
                    return false;
                }
                // One metadata call, at most once per interval: cheap
                // enough to make on the async thread.
                let stamp = stamp(path);
                if stamp.is_some() && stamp == state.stamp {
                    state.loaded = Some(now);
                    return false;
                }
                true
            }
        }
    }
}

fn same(a: &Option<Arc<KeySet>>, b: &Option<Arc<KeySet>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The key for `kid` (or, when the token names none, the only key of the
/// algorithm's type), or why there is none.
fn select(set: &KeySet, kid: Option<&str>, alg: JwsAlgorithm) -> Result<Key, KeyError> {
    match kid {
        Some(kid) => set
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .cloned()
            .ok_or_else(|| KeyError::UnknownKid {
                kid: kid.to_owned(),
            }),
        None => {
            let fitting: Vec<&Key> = set
                .keys
                .iter()
                .filter(|k| k.kind == alg.key_kind())
                .collect();
            match fitting[..] {
                [one] => Ok(one.clone()),
                _ => Err(KeyError::NoKid {
                    count: fitting.len(),
                    kind: alg.key_kind().name(),
                }),
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The file's keys and its stamp; on failure the message, and the stamp if
/// the file exists (so an unchanged bad file is not re-read every second).
fn read_file(path: &Path) -> Result<(KeySet, Stamp), (String, Option<Stamp>)> {
    let st = stamp(path);
    let bytes =
        std::fs::read(path).map_err(|e| (format!("cannot read {}: {e}", path.display()), st))?;
    let keys = KeySet::parse(&bytes).map_err(|m| (format!("{}: {m}", path.display()), st))?;
    match st {
        Some(st) => Ok((keys, st)),
        None => Err((format!("cannot stat {}", path.display()), None)),
    }
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<KeySet, (String, Option<Stamp>)> {
    let fail = |m: String| (m, None);
    let mut resp = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(format!("cannot fetch {url}: {e}")))?;
    if resp.status() != reqwest::StatusCode::OK {
        // A redirect lands here too: keys come only from the configured URL.
        return Err(fail(format!("{url} answered {}", resp.status())));
    }
    let too_big = || {
        fail(format!(
            "{url}: the JWKS is larger than {MAX_JWKS_BYTES} bytes"
        ))
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(too_big());
    }
    let (body, complete) = crate::body::read_capped(&mut resp, MAX_JWKS_BYTES)
        .await
        .map_err(|e| fail(format!("cannot read the JWKS from {url}: {e}")))?;
    if !complete {
        return Err(too_big());
    }
    KeySet::parse(&body).map_err(|m| fail(format!("{url}: {m}")))
}
