//! Use-case tests on every backend of the storage port (sled in a temp
//! dir, PostgreSQL in a fresh database of a private cluster), a registry
//! double behind the `Registry` trait, and the settable clock: time moves
//! because a test says so, never by sleeping. Each test is written once, as
//! `async fn name(b: Backend)`, and [`on_every_backend!`] runs it on each.

use super::*;
use crate::apply;
use crate::clock::ManualClock;
use crate::domain::audit::AuditEntry;
use crate::domain::gates;
use crate::domain::machine::DomainError;
use crate::domain::model::{Promotion, SIGNATURE_ATTRIBUTE, State, Time};
use crate::domain::signature;
use crate::registry::Manifest;
use crate::registry::{Moved, RegistryError};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const REPO: &str = "reg.test/team/app";

/// How `move_tag` behaves.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Moves {
    #[default]
    Work,
    /// A transient error; the tag stays.
    Fail,
    /// The tag moves, but the answer is a transient error (lost on the way).
    LoseAnswer,
}

/// Tags and manifests in memory; `move_tag` points the tag at the digest.
#[derive(Default)]
struct FakeRegistry {
    manifests: Mutex<HashMap<String, Manifest>>,
    tags: Mutex<HashMap<String, String>>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    moves: Mutex<Moves>,
    /// Reads of signature tags fail as if the registry were down.
    signatures_down: Mutex<bool>,
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl FakeRegistry {
    fn push(&self, tag: &str, content: &str) -> String {
        let bytes = format!(r#"{{"schemaVersion":2,"note":"{content}"}}"#).into_bytes();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let m = Manifest {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes,
        };
        self.manifests.lock().unwrap().insert(digest.clone(), m);
        self.tags.lock().unwrap().insert(tag.into(), digest.clone());
        digest
    }

    fn tag(&self, tag: &str) -> Option<String> {
        self.tags.lock().unwrap().get(tag).cloned()
    }

    fn blob(&self, bytes: &[u8]) -> String {
        let digest = sha256_of(bytes);
        self.blobs
            .lock()
            .unwrap()
            .insert(digest.clone(), bytes.to_vec());
        digest
    }

    /// Stores cosign's legacy signature of `digest` by `key`: a payload
    /// naming `names` (the digest itself, unless a test lies).
    fn sign(&self, digest: &str, names: &str, key: &p256::ecdsa::SigningKey) {
        use base64::Engine;
        use p256::ecdsa::signature::Signer;
        let payload = serde_json::to_vec(&serde_json::json!({
            "critical": {
                "identity": {"docker-reference": REPO},
                "image": {"docker-manifest-digest": names},
                "type": "cosign container image signature",
            },
            "optional": null,
        }))
        .unwrap();
        let sig: p256::ecdsa::DerSignature = key.sign(&payload);
        let layer = self.blob(&payload);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.blob(b"{}"), "size": 2},
            "layers": [{
                "mediaType": signature::SIMPLE_SIGNING_MEDIA_TYPE,
                "digest": layer,
                "size": payload.len(),
                "annotations": {
                    signature::SIGNATURE_ANNOTATION:
                        base64::engine::general_purpose::STANDARD.encode(sig.as_bytes()),
                },
            }],
        }))
        .unwrap();
        let m = Manifest {
            digest: sha256_of(&manifest),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: manifest,
        };
        let tag = signature::legacy_tag(digest).unwrap();
        self.tags.lock().unwrap().insert(tag, m.digest.clone());
        self.manifests.lock().unwrap().insert(m.digest.clone(), m);
    }
}

#[async_trait]
impl Registry for FakeRegistry {
    async fn resolve(
        &self,
        _: &Repository,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        Ok(match reference.starts_with("sha256:") {
            true => Some(reference.to_owned()),
            false => self.tag(reference),
        })
    }

    async fn fetch(
        &self,
        _: &Repository,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        if reference.starts_with("sha256-") && *self.signatures_down.lock().unwrap() {
            return Err(RegistryError::Unavailable {
                registry: "reg.test".into(),
                reason: "HTTP 503".into(),
                retry_after: None,
            });
        }
        let digest = match reference.starts_with("sha256:") {
            true => Some(reference.to_owned()),
            false => self.tag(reference),
        };
        Ok(digest.and_then(|d| self.manifests.lock().unwrap().get(&d).cloned()))
    }

    async fn fetch_blob(
        &self,
        repo: &Repository,
        digest: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let blob = self.blobs.lock().unwrap().get(digest).cloned();
        match blob {
            Some(b) if b.len() > limit => Err(RegistryError::BlobTooLarge {
                reference: format!("{repo}@{digest}"),
                limit,
                size: Some(b.len() as u64),
            }),
            other => Ok(other),
        }
    }

    async fn move_tag(
        &self,
        _: &Repository,
        m: &Manifest,
        tag: &str,
    ) -> Result<Moved, RegistryError> {
        let moves = *self.moves.lock().unwrap();
        let unavailable = || RegistryError::Unavailable {
            registry: "reg.test".into(),
            reason: "HTTP 503".into(),
            retry_after: None,
        };
        if moves == Moves::Fail {
            return Err(unavailable());
        }
        let previous = self
            .tags
            .lock()
            .unwrap()
            .insert(tag.into(), m.digest.clone());
        match moves {
            Moves::LoseAnswer => Err(unavailable()),
            _ => Ok(Moved {
                previous_digest: previous.unwrap_or_default(),
            }),
        }
    }

    async fn push_blob(&self, repo: &Repository, bytes: &[u8]) -> Result<String, RegistryError> {
        if bytes.len() > crate::registry::PUSH_BLOB_LIMIT {
            return Err(RegistryError::BlobTooLarge {
                reference: format!("{repo}@{}", sha256_of(bytes)),
                limit: crate::registry::PUSH_BLOB_LIMIT,
                size: Some(bytes.len() as u64),
            });
        }
        Ok(self.blob(bytes))
    }

    async fn push_manifest(
        &self,
        _: &Repository,
        m: &Manifest,
        reference: &str,
    ) -> Result<(), RegistryError> {
        if sha256_of(&m.bytes) != m.digest {
            return Err(RegistryError::DigestMismatch {
                reference: reference.into(),
                expected: m.digest.clone(),
                actual: sha256_of(&m.bytes),
            });
        }
        self.manifests
            .lock()
            .unwrap()
            .insert(m.digest.clone(), m.clone());
        if !reference.starts_with("sha256:") {
            self.tags
                .lock()
                .unwrap()
                .insert(reference.into(), m.digest.clone());
        }
        Ok(())
    }

    async fn fetch_index(
        &self,
        repo: &Repository,
        tag: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        match self.fetch(repo, tag).await? {
            Some(m) if m.media_type != crate::registry::INDEX_MEDIA_TYPE => {
                Err(RegistryError::Protocol {
                    registry: "reg.test".into(),
                    message: format!("{tag} is not an index"),
                })
            }
            other => Ok(other),
        }
    }
}

use crate::store::postgres::test_cluster as pg_support;

/// Which storage backend a test's world runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sled,
    Postgres,
}

impl Backend {
    /// A fresh store of this kind, and the temp dir it lives in (sled).
    async fn open(self, clock: &ManualClock) -> (Store, Option<tempfile::TempDir>) {
        let clock = Arc::new(clock.clone());
        match self {
            Backend::Sled => {
                let dir = tempfile::tempdir().unwrap();
                (
                    crate::store::sled::open(dir.path(), clock).unwrap(),
                    Some(dir),
                )
            }
            Backend::Postgres => {
                let cluster = pg_support::Cluster::shared().expect("PostgreSQL is installed");
                let db = cluster.database();
                let config = crate::config::PostgresConfig {
                    connection: Some(crate::config::Secret::new(db.url.as_bytes())),
                    password: Some(crate::config::Secret::new(db.password.as_bytes())),
                    origin: db.url.clone(),
                    // The use cases run on a manual clock, days from the
                    // database's: the start-up check is tested on its own.
                    max_clock_skew: std::time::Duration::MAX,
                };
                (
                    crate::store::postgres::open(&config, clock).await.unwrap(),
                    None,
                )
            }
        }
    }
}

/// Runs each named `async fn name(b: Backend)` as a test on sled and on
/// PostgreSQL. The PostgreSQL tests skip (saying so) only where PostgreSQL
/// is not installed and CI is not set.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Sled).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if super::pg_support::Cluster::shared().is_some() {
                        super::$name(super::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}

struct World {
    promotions: Promotions,
    registry: Arc<FakeRegistry>,
    clock: ManualClock,
    store: Store,
    _dir: Option<tempfile::TempDir>,
    _stop: tokio_util::sync::DropGuard,
}

fn config() -> Config {
    Config::parse(&format!("apply_wait = \"5s\"\n{POLICY}")).expect("test config")
}

const POLICY: &str = r#"
[[registry]]
host = "reg.test"
insecure = true
[[principal]]
name = "alice"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
[[principal]]
name = "bob"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000002"
groups = ["rm"]
[[principal]]
name = "carol"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000003"
[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0
[[environment]]
name = "production"
tag = "production"
approvers = ["group:rm", "carol"]
required_approvals = 1
approval_ttl = "60s"
apply_deadline = "10m"
"#;

fn who(name: &str) -> Principal {
    let groups = if name == "bob" {
        vec!["rm".into()]
    } else {
        vec![]
    };
    Principal::new(name, groups)
}

/// A service over a fresh store with the apply worker running.
async fn world(b: Backend) -> World {
    world_with(b, config()).await
}

async fn world_with(b: Backend, config: Config) -> World {
    let config = crate::config::Live::new(config);
    let clock = ManualClock::at(Time {
        seconds: 1_800_000_000,
        nanos: 0,
    });
    let (store, dir) = b.open(&clock).await;
    let registry = Arc::new(FakeRegistry::default());
    let progress = apply::Progress::default();
    let stopped = tokio_util::sync::CancellationToken::new();
    tokio::spawn(apply::run(
        store.clone(),
        registry.clone(),
        apply::Settings {
            config: config.clone(),
            clock: Arc::new(clock.clone()),
            progress: progress.clone(),
            tags: apply::TagLocks::default(),
        },
        stopped.clone(),
    ));
    let promotions = Promotions::new(
        config,
        store.clone(),
        registry.clone(),
        Arc::new(clock.clone()),
        progress,
        stopped.clone(),
    );
    World {
        promotions,
        registry,
        clock,
        store,
        _dir: dir,
        _stop: stopped.drop_guard(),
    }
}

fn input(source: &str, environment: &str, reason: &str) -> RequestInput {
    RequestInput {
        repository: Repository::parse(REPO).unwrap(),
        source: Source::parse(source).unwrap(),
        environment: environment.into(),
        reason: reason.into(),
        request_id: String::new(),
        break_glass: false,
        rollback: false,
    }
}

impl World {
    async fn request(&self, source: &str) -> Promotion {
        self.promotions
            .request(who("alice"), input(source, "production", "ship it"))
            .await
            .unwrap()
    }

    async fn actions(&self, id: PromotionId) -> Vec<crate::domain::model::Action> {
        let q = HistoryQuery {
            filter: HistoryFilter {
                promotion_id: Some(id),
                ..Default::default()
            },
            after: None,
            limit: 100,
            newest_first: false,
        };
        let listing = self.promotions.history(q).await.unwrap();
        listing.items.iter().map(|e| e.event.action).collect()
    }
}

async fn pending_promotions_expire_when_the_clock_passes_the_ttl(b: Backend) {
    let w = world(b).await;
    let d = w.registry.push("v1", "one");
    let p = w.request(&d).await;
    assert_eq!(p.state, State::PendingApproval);
    w.clock.advance(Duration::from_secs(59));
    assert_eq!(
        w.promotions.get(p.id).await.unwrap().state,
        State::PendingApproval
    );
    w.clock.advance(Duration::from_secs(1));
    assert_eq!(w.promotions.get(p.id).await.unwrap().state, State::Expired);
    let refused = w
        .promotions
        .approve(who("bob"), p.id, String::new(), false)
        .await;
    assert!(
        matches!(refused, Err(Error::Domain(DomainError::NotPending { .. }))),
        "{refused:?}"
    );
}

async fn the_sweep_records_every_overdue_promotion_once(b: Backend) {
    let w = world(b).await;
    let d = w.registry.push("v1", "one");
    let first = w.request(&d).await;
    w.clock.advance(Duration::from_secs(30));
    let second = w.request(&d).await;
    assert_eq!(w.promotions.sweep_expired().await.unwrap(), 0);
    w.clock.advance(Duration::from_secs(30));
    assert_eq!(w.promotions.sweep_expired().await.unwrap(), 1);
    assert_eq!(
        w.store.get(first.id).await.unwrap().unwrap().state,
        State::Expired
    );
    assert_eq!(
        w.store.get(second.id).await.unwrap().unwrap().state,
        State::PendingApproval
    );
    assert_eq!(w.promotions.sweep_expired().await.unwrap(), 0);
    w.clock.advance(Duration::from_secs(30));
    assert_eq!(w.promotions.sweep_expired().await.unwrap(), 1);
    assert_eq!(
        w.actions(second.id).await,
        vec![
            crate::domain::model::Action::Requested,
            crate::domain::model::Action::Expired
        ]
    );
}

async fn a_stale_approval_cannot_move_the_tag_back(b: Backend) {
    let w = world(b).await;
    let old = w.registry.push("v1", "old");
    let new = w.registry.push("v2", "new");
    let first = w.request(&old).await;
    let second = w.request(&new).await;
    let applied = w
        .promotions
        .approve(who("bob"), second.id, String::new(), false)
        .await
        .unwrap();
    assert_eq!(applied.state, State::Promoted, "{applied:?}");
    assert_eq!(w.registry.tag("production").as_deref(), Some(new.as_str()));

    let stale = w.promotions.get(first.id).await.unwrap();
    assert_eq!(stale.state, State::Superseded);
    assert_eq!(stale.superseded_by, Some(second.id));
    assert_eq!(
        w.actions(first.id).await,
        vec![
            crate::domain::model::Action::Requested,
            crate::domain::model::Action::Superseded
        ]
    );
    let refused = w
        .promotions
        .approve(who("carol"), first.id, String::new(), false)
        .await;
    let Err(Error::Domain(e @ DomainError::NotPending { .. })) = refused else {
        panic!("approving a superseded promotion: {refused:?}");
    };
    assert!(
        e.to_string().contains(&format!("promotion {}", second.id)),
        "{e}"
    );
    assert_eq!(w.registry.tag("production").as_deref(), Some(new.as_str()));
    assert!(
        w.promotions
            .verify()
            .await
            .unwrap()
            .first_bad_sequence
            .is_none()
    );
}

async fn a_newer_promotion_does_not_supersede_the_older_one_applied_after_it(b: Backend) {
    // Requested later but applied first is the newer one; one requested
    // after an applied promotion is not touched.
    let w = world(b).await;
    let a = w.registry.push("v1", "a");
    let b = w.registry.push("v2", "b");
    let first = w.request(&a).await;
    let p = w
        .promotions
        .approve(who("bob"), first.id, String::new(), false)
        .await
        .unwrap();
    assert_eq!(p.state, State::Promoted);
    let second = w.request(&b).await;
    assert_eq!(
        w.promotions.get(second.id).await.unwrap().state,
        State::PendingApproval
    );
}

async fn a_reason_is_required_where_approvals_are(b: Backend) {
    let w = world(b).await;
    let d = w.registry.push("v1", "one");
    let refused = w
        .promotions
        .request(who("alice"), input(&d, "production", "  "))
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::InvalidArgument {
                field: "reason",
                ..
            })
        ),
        "{refused:?}"
    );
    // Nothing was written.
    assert_eq!(w.store.audit_len().await.unwrap(), 0);
    // Staging needs no approval and no reason.
    let p = w
        .promotions
        .request(who("alice"), input(&d, "staging", ""))
        .await
        .unwrap();
    assert_eq!(p.state, State::Promoted);
}

async fn awaiting_me_lists_what_the_caller_may_approve_now_newest_first(b: Backend) {
    let w = world(b).await;
    let d = w.registry.push("v1", "one");
    let by_alice_1 = w.request(&d).await;
    let by_bob = w
        .promotions
        .request(who("bob"), input(&d, "production", "bob's"))
        .await
        .unwrap();
    let by_alice_2 = w.request(&d).await;
    let mine = |name: &str, newest_first: bool, limit: usize| ListQuery {
        filter: ListFilter::default(),
        after: None,
        limit,
        newest_first,
        awaiting: Some(who(name)),
        project: None,
        request: None,
    };
    let ids = |l: Listing<Promotion>| l.items.iter().map(|p| p.id).collect::<Vec<_>>();
    // bob may approve alice's two, not his own; carol all three; alice none.
    let bob = w.promotions.list(mine("bob", false, 10)).await.unwrap();
    assert_eq!(ids(bob), vec![by_alice_1.id, by_alice_2.id]);
    let carol = w.promotions.list(mine("carol", true, 10)).await.unwrap();
    assert_eq!(ids(carol), vec![by_alice_2.id, by_bob.id, by_alice_1.id]);
    assert!(ids(w.promotions.list(mine("alice", false, 10)).await.unwrap()).is_empty());
    // Pages continue after the last one examined.
    let first = w.promotions.list(mine("bob", true, 1)).await.unwrap();
    assert_eq!(ids(first.clone()), vec![by_alice_2.id]);
    let rest = w
        .promotions
        .list(ListQuery {
            after: first.next,
            ..mine("bob", true, 1)
        })
        .await
        .unwrap();
    assert_eq!(ids(rest.clone()), vec![by_alice_1.id]);
    // Once carol approved, it is no longer awaiting anyone.
    w.promotions
        .approve(who("carol"), by_alice_1.id, String::new(), false)
        .await
        .unwrap();
    let bob = w.promotions.list(mine("bob", false, 10)).await.unwrap();
    assert_eq!(ids(bob), vec![by_alice_2.id]);
}

/// Polls (the worker runs on its own) until `done` holds for `id`.
async fn until_state(w: &World, id: PromotionId, done: impl Fn(&Promotion) -> bool) -> Promotion {
    for _ in 0..500 {
        let p = w.promotions.get(id).await.unwrap();
        if done(&p) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "promotion {id} never got there: {:?}",
        w.promotions.get(id).await
    );
}

/// Approve answers at once (apply_wait 0), so the worker's retries show.
async fn impatient(b: Backend) -> World {
    world_with(
        b,
        Config::parse(&format!("apply_wait = \"0s\"\n{POLICY}")).unwrap(),
    )
    .await
}

async fn an_approved_move_not_done_by_the_apply_deadline_fails_with_the_last_error(b: Backend) {
    let w = impatient(b).await;
    *w.registry.moves.lock().unwrap() = Moves::Fail;
    let d = w.registry.push("v1", "one");
    let p = w.request(&d).await;
    w.promotions
        .approve(who("bob"), p.id, String::new(), false)
        .await
        .unwrap();
    let waiting = until_state(&w, p.id, |p| p.apply_attempts >= 1).await;
    assert_eq!(waiting.state, State::Approved);
    assert!(waiting.last_apply_error.contains("HTTP 503"), "{waiting:?}");
    // Not yet: retries go on until the deadline.
    w.clock.advance(Duration::from_secs(9 * 60));
    let still = until_state(&w, p.id, |p| p.apply_attempts >= 2).await;
    assert_eq!(still.state, State::Approved);
    w.clock.advance(Duration::from_secs(61));
    let failed = until_state(&w, p.id, |p| p.state.is_terminal()).await;
    assert_eq!(failed.state, State::Failed);
    assert!(
        failed.failure_message.contains("apply_deadline (10m)"),
        "{failed:?}"
    );
    assert!(failed.failure_message.contains("HTTP 503"), "{failed:?}");
    assert_eq!(
        failed.apply_attempts, 0,
        "progress is shown only while APPROVED"
    );
    assert_eq!(w.registry.tag("production"), None);
}

async fn a_final_read_at_the_deadline_records_a_move_whose_answer_was_lost(b: Backend) {
    let w = impatient(b).await;
    *w.registry.moves.lock().unwrap() = Moves::LoseAnswer;
    let d = w.registry.push("v1", "one");
    let p = w.request(&d).await;
    w.promotions
        .approve(who("bob"), p.id, String::new(), false)
        .await
        .unwrap();
    until_state(&w, p.id, |p| p.apply_attempts >= 1).await;
    w.clock.advance(Duration::from_secs(11 * 60));
    let done = until_state(&w, p.id, |p| p.state.is_terminal()).await;
    assert_eq!(done.state, State::Promoted, "{done:?}");
    assert_eq!(w.registry.tag("production").as_deref(), Some(d.as_str()));
}

async fn each_policy_version_is_recorded_once_and_named_by_what_it_approved(b: Backend) {
    use crate::domain::model::{Action, POLICY_ATTRIBUTE};
    let w = world(b).await;
    let first = config().policy;
    // At start: recorded once, and not again while it stays the same.
    let entry = w.promotions.record_policy().await.unwrap().unwrap();
    assert_eq!(entry.event.action, Action::PolicyChanged);
    assert_eq!(entry.event.actor, "prodgate");
    assert_eq!(entry.event.attributes[POLICY_ATTRIBUTE], first.digest);
    assert!(w.promotions.record_policy().await.unwrap().is_none());

    // An approval under the first version names it.
    let d = w.registry.push("v1", "one");
    let p = w.request(&d).await;
    let p = w
        .promotions
        .approve(who("bob"), p.id, "ok".into(), false)
        .await
        .unwrap();
    assert_eq!(p.policy_digest, first.digest);
    let history = w
        .promotions
        .history(HistoryQuery {
            filter: HistoryFilter {
                promotion_id: Some(p.id),
                ..Default::default()
            },
            after: None,
            limit: 10,
            newest_first: false,
        })
        .await
        .unwrap();
    let approving = history
        .items
        .iter()
        .find(|e| e.event.action == Action::Approved)
        .unwrap();
    assert_eq!(approving.event.attributes[POLICY_ATTRIBUTE], first.digest);
    // The request before it (not approving) names no policy.
    assert!(history.items[0].event.attributes.is_empty());

    // A new version: recorded, runs, and the old one stays retrievable.
    w.clock.advance(Duration::from_secs(5));
    let second = Config::parse(&format!(
        "apply_wait = \"5s\"\n{}",
        POLICY.replace("required_approvals = 1", "required_approvals = 2")
    ))
    .unwrap();
    let second_digest = second.policy.digest.clone();
    assert_ne!(second_digest, first.digest);
    let changed = w.promotions.adopt(second.clone()).await.unwrap().unwrap();
    assert_eq!(changed.event.attributes[POLICY_ATTRIBUTE], second_digest);
    assert!(w.promotions.adopt(second).await.unwrap().is_none());
    let running = w.promotions.policy(None).await.unwrap();
    assert_eq!(running.digest, second_digest);
    assert_eq!(running.first_recorded, changed.time);
    let old = w.promotions.policy(Some(&first.digest)).await.unwrap();
    assert_eq!(old.canonical_json, first.canonical_json);
    assert_eq!(old.first_recorded, entry.time);
    w.registry.push("v2", "two");
    let p = w
        .promotions
        .request(who("alice"), input("v2", "production", "again"))
        .await
        .unwrap();
    assert_eq!(p.required_approvals, 2, "the new version decides");
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(
        w.promotions.policy(Some(&unknown)).await,
        Err(Error::PolicyNotFound(_))
    ));
}

/// A world whose `production` demands a signature by the returned key.
async fn signed_world() -> (World, p256::ecdsa::SigningKey, tempfile::TempDir) {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let key = p256::ecdsa::SigningKey::from_slice(&[3; 32]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cosign.pub");
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&path, pem).unwrap();
    let text = format!(
        "apply_wait = \"5s\"\n{POLICY}signature_keys = [{:?}]\n",
        path.display()
    );
    (
        world_with(Backend::Sled, Config::parse(&text).unwrap()).await,
        key,
        dir,
    )
}

async fn approving_entry(w: &World, id: PromotionId) -> AuditEntry {
    let listing = w
        .promotions
        .history(HistoryQuery {
            filter: HistoryFilter {
                promotion_id: Some(id),
                ..Default::default()
            },
            after: None,
            limit: 10,
            newest_first: false,
        })
        .await
        .unwrap();
    listing
        .items
        .into_iter()
        .find(|e| e.event.action == crate::domain::model::Action::Approved)
        .expect("an APPROVED entry")
}

#[tokio::test]
async fn a_signed_digest_passes_and_its_approval_names_the_key() {
    let (w, key, _keys) = signed_world().await;
    let d = w.registry.push("v1", "one");
    w.registry.sign(&d, &d, &key);
    let p = w.request(&d).await;
    let gates = w.promotions.evaluate_gates(p.id).await.unwrap().report;
    let fingerprint = config_key_fingerprint(&w);
    let g = gates.gate(gates::SIGNATURE).expect("the signature gate");
    assert!(g.passed, "{g:?}");
    let p = w
        .promotions
        .approve(who("bob"), p.id, String::new(), false)
        .await
        .unwrap();
    assert_eq!(p.state, State::Promoted, "{p:?}");
    let e = approving_entry(&w, p.id).await;
    assert_eq!(e.event.attributes[SIGNATURE_ATTRIBUTE], fingerprint);
}

fn config_key_fingerprint(w: &World) -> String {
    let config = w.promotions.config.get();
    config.environments[1].signature_keys[0].fingerprint.clone()
}

#[tokio::test]
async fn an_unsigned_digest_waits_for_its_signature_and_ships_once_signed() {
    let (w, key, _keys) = signed_world().await;
    let d = w.registry.push("v1", "one");
    let other = w.registry.push("v2", "two");
    let p = w.request(&d).await;
    // The approval is recorded, and the promotion waits for the signature.
    let waiting = w
        .promotions
        .approve(who("bob"), p.id, String::new(), false)
        .await
        .expect("an approval is recorded whatever the signature says");
    assert_eq!(waiting.state, State::Waiting);
    assert_eq!(waiting.waiting_for, ["signature"]);
    assert_eq!(waiting.not_before, None, "no time gate blocks");
    assert_eq!(waiting.approvals.len(), 1);
    let tag = signature::legacy_tag(&d).unwrap();
    let g = w.promotions.evaluate_gates(p.id).await.unwrap().report;
    let m = &g.gate(gates::SIGNATURE).unwrap().message;
    assert!(m.starts_with("no signature of"), "{m}");
    assert!(m.contains(&format!("{REPO}:{tag}")), "{m}");
    // A signature whose payload names another digest, stored under this one's tag.
    w.registry.sign(&d, &other, &key);
    let again = w.promotions.reevaluate(p.id).await.unwrap();
    assert_eq!(again.promotion.state, State::Waiting);
    let g = w.promotions.evaluate_gates(p.id).await.unwrap().report;
    let m = &g.gate(gates::SIGNATURE).unwrap().message;
    assert!(m.contains(&format!("it signs \"{other}\"")), "{m}");
    // Signed for real: it moves on by itself, recorded as GATES_PASSED.
    w.registry.sign(&d, &d, &key);
    let done = w.promotions.reevaluate(p.id).await.unwrap();
    assert_eq!(done.promotion.state, State::Approved);
    assert!(done.promotion.waiting_for.is_empty());
    let actions = w.actions(p.id).await;
    assert_eq!(
        actions.last(),
        Some(&crate::domain::model::Action::GatesPassed),
        "{actions:?}"
    );
}

#[tokio::test]
async fn a_waiting_promotion_whose_environment_is_gone_expires_at_its_deadline() {
    let (w, _key, _keys) = signed_world().await;
    let d = w.registry.push("v1", "one");
    let p = w.request(&d).await;
    let waiting = w
        .promotions
        .approve(who("bob"), p.id, String::new(), false)
        .await
        .unwrap();
    assert_eq!(waiting.state, State::Waiting);
    // The reload drops production: nothing can pass any more.
    let without = POLICY[..POLICY
        .find("[[environment]]\nname = \"production\"")
        .unwrap()]
        .to_owned();
    w.promotions
        .adopt(Config::parse(&without).unwrap())
        .await
        .unwrap();
    let early = w.promotions.reevaluate(p.id).await.unwrap();
    assert_eq!(early.promotion.state, State::Waiting);
    assert_eq!(early.not_before, None, "it waits for its deadline only");
    // Past its deadline, a look records the expiry (the waiting task would
    // otherwise find it due again at once, for ever).
    w.clock
        .advance(w.clock.now().until(waiting.expires_at) + Duration::from_secs(1));
    let late = w.promotions.reevaluate(p.id).await.unwrap();
    assert_eq!(late.promotion.state, State::Expired);
}

#[tokio::test]
async fn a_registry_failure_while_reading_signatures_is_unavailable_not_a_block() {
    let (w, key, _keys) = signed_world().await;
    let d = w.registry.push("v1", "one");
    w.registry.sign(&d, &d, &key);
    let p = w.request(&d).await;
    *w.registry.signatures_down.lock().unwrap() = true;
    let refused = w
        .promotions
        .approve(who("bob"), p.id, String::new(), false)
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Registry(RegistryError::Unavailable { .. }))
        ),
        "{refused:?}"
    );
    let p = w.store.get(p.id).await.unwrap().unwrap();
    assert!(p.approvals.is_empty(), "nothing was recorded: {p:?}");
}

#[tokio::test]
async fn an_oversized_payload_is_not_read_and_blocks() {
    let (w, key, _keys) = signed_world().await;
    let d = w.registry.push("v1", "one");
    w.registry.sign(&d, &d, &key);
    // Swap the payload for one over the cap (its digest no longer matters:
    // the size is refused first).
    for b in w.registry.blobs.lock().unwrap().values_mut() {
        if b.len() > 2 {
            b.resize(signature::PAYLOAD_LIMIT + 1, b' ');
        }
    }
    let p = w.request(&d).await;
    let report = w.promotions.evaluate_gates(p.id).await.unwrap().report;
    let g = report.gate(gates::SIGNATURE).unwrap();
    assert!(!g.passed, "{g:?}");
    assert!(g.message.contains("over the 65536-byte limit"), "{g:?}");
}

on_every_backend!(
    pending_promotions_expire_when_the_clock_passes_the_ttl,
    the_sweep_records_every_overdue_promotion_once,
    a_stale_approval_cannot_move_the_tag_back,
    a_newer_promotion_does_not_supersede_the_older_one_applied_after_it,
    a_reason_is_required_where_approvals_are,
    awaiting_me_lists_what_the_caller_may_approve_now_newest_first,
    an_approved_move_not_done_by_the_apply_deadline_fails_with_the_last_error,
    a_final_read_at_the_deadline_records_a_move_whose_answer_was_lost,
    each_policy_version_is_recorded_once_and_named_by_what_it_approved,
);
