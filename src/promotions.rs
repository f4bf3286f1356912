//! The use cases behind the RPCs: each takes validated input and the caller,
//! asks the registry what it must, and hands the state change to the store's
//! writer, where the domain state machine decides it.

use crate::config::Config;
use crate::domain::audit::{AuditEntry, Verification};
use crate::domain::machine::{self, NewPromotion, Outcome};
use crate::domain::model::{Promotion, PromotionId, State, Time};
use crate::domain::names::{Repository, Source};
use crate::domain::policy::{EnvironmentPolicy, Principal};
use crate::error::Error;
use crate::registry::{Manifest, Registry};
use crate::shutdown::signalled;
use crate::store::{HistoryFilter, ListFilter, Page, Store, StoredManifest, Tx};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};

/// A validated RequestPromotion.
#[derive(Debug, Clone)]
pub struct RequestInput {
    pub repository: Repository,
    pub source: Source,
    pub environment: String,
    pub reason: String,
    pub request_id: String,
}

/// What an approver-facing call does to a pending promotion.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Approve,
    Reject,
    Cancel,
}

#[derive(Clone)]
pub struct Promotions {
    config: Arc<Config>,
    store: Store,
    registry: Arc<dyn Registry>,
    /// Turns true when the server starts draining: open watches end then.
    draining: watch::Receiver<bool>,
}

impl Promotions {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        registry: Arc<dyn Registry>,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self {
            config,
            store,
            registry,
            draining,
        }
    }

    fn policy(&self, environment: &str) -> Result<&EnvironmentPolicy, Error> {
        self.config
            .environment(environment)
            .ok_or_else(|| Error::InvalidArgument {
                field: "environment",
                message: format!(
                    "no environment named {environment:?} is configured (known: {})",
                    self.config
                        .environments
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    pub async fn request(&self, who: Principal, input: RequestInput) -> Result<Promotion, Error> {
        let policy = self.policy(&input.environment)?.clone();
        if self.config.registry(input.repository.host()).is_none() {
            return Err(Error::InvalidArgument {
                field: "repository",
                message: format!(
                    "registry {} is not configured; prodgate only promotes within its configured registries",
                    input.repository.host()
                ),
            });
        }
        // A retried request answers from the record, whatever the tags do now.
        if !input.request_id.is_empty() {
            let (name, rid) = (who.name.clone(), input.request_id.clone());
            if let Some(existing) = self
                .store
                .read(move |s| s.find_request(&name, &rid))
                .await?
            {
                return same_request(existing, &input);
            }
        }
        let source_ref = input.source.as_reference().to_owned();
        // Pin the manifest itself: the apply pushes these exact bytes. A digest
        // already pinned for this repository is immutable content seen there
        // before, so it needs no registry round trip; a tag always does.
        let known = match &input.source {
            Source::Digest(d) => {
                let (repo, d) = (input.repository.to_string(), d.clone());
                self.store
                    .read(move |s| s.manifest(&repo, &d))
                    .await?
                    .map(|m| Manifest {
                        digest: source_ref.clone(),
                        media_type: m.media_type,
                        bytes: m.bytes,
                    })
            }
            Source::Tag(_) => None,
        };
        let manifest = match known {
            Some(m) => m,
            None => self
                .registry
                .fetch(&input.repository, &source_ref)
                .await?
                .ok_or_else(|| {
                    Error::SourceNotFound(format!("{}:{source_ref}", input.repository))
                })?,
        };
        let digest = manifest.digest.clone();
        if let Some(required) = &policy.requires {
            let prereq = self.policy(required)?;
            // The source tag is the prerequisite's tag: the fetch just read it.
            let carried = if source_ref == prereq.tag {
                Some(digest.clone())
            } else {
                self.registry
                    .resolve(&input.repository, &prereq.tag)
                    .await?
            };
            if carried.as_deref() != Some(digest.as_str()) {
                return Err(Error::PrerequisiteNotMet(format!(
                    "environment {} requires {}: {digest} must first be promoted there, but {}:{} {}",
                    policy.name,
                    prereq.name,
                    input.repository,
                    prereq.tag,
                    carried
                        .map_or_else(|| "does not exist".to_owned(), |d| format!("points to {d}")),
                )));
            }
        }
        let pinned = StoredManifest {
            media_type: manifest.media_type,
            bytes: manifest.bytes,
        };
        let mut changes = self.store.subscribe();
        let new = NewPromotion {
            repository: input.repository.to_string(),
            environment: input.environment.clone(),
            source: source_ref,
            digest,
            reason: input.reason.clone(),
            request_id: input.request_id.clone(),
        };
        let created = self
            .store
            .write(move |tx| {
                if !new.request_id.is_empty()
                    && let Some(id) = tx.find_request(&who.name, &new.request_id)?
                {
                    let existing = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
                    return same_request(existing, &input);
                }
                let now = tx.now();
                let o = machine::request(tx.next_id(), new, &who, &policy, now);
                tx.put_manifest(&o.promotion.repository, &o.promotion.digest, &pinned)?;
                tx.commit(&o.promotion, o.event)?;
                Ok(o.promotion)
            })
            .await?;
        Ok(self.settled(created, &mut changes).await)
    }

    pub async fn approve(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        let mut changes = self.store.subscribe();
        let p = self.decide(Decision::Approve, who, id, comment).await?;
        Ok(self.settled(p, &mut changes).await)
    }

    pub async fn reject(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        self.decide(Decision::Reject, who, id, comment).await
    }

    pub async fn cancel(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        self.decide(Decision::Cancel, who, id, comment).await
    }

    async fn decide(
        &self,
        decision: Decision,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        let config = self.config.clone();
        self.store
            .write(move |tx| {
                let p = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
                let now = tx.now();
                expire_due(tx, &p, now)?;
                let policy = config.environment(&p.environment).ok_or_else(|| {
                    Error::Domain(machine::DomainError::NotApprover {
                        principal: who.name.clone(),
                        environment: format!("{} (no longer configured)", p.environment),
                    })
                })?;
                let o: Outcome = match decision {
                    Decision::Approve => machine::approve(&p, &who, policy, &comment, now)?,
                    Decision::Reject => machine::reject(&p, &who, policy, &comment, now)?,
                    Decision::Cancel => machine::cancel(&p, &who, policy, &comment, now)?,
                };
                // A repeated approval has no event; commit writes nothing then.
                tx.commit(&o.promotion, o.event)?;
                Ok(o.promotion)
            })
            .await
    }

    /// Waits up to `apply_wait` for an APPROVED promotion's tag move, so the
    /// common case answers PROMOTED; a slow registry answers APPROVED.
    async fn settled(
        &self,
        p: Promotion,
        changes: &mut broadcast::Receiver<Promotion>,
    ) -> Promotion {
        if p.state != State::Approved || self.config.apply_wait.is_zero() {
            return p;
        }
        let id = p.id;
        let wait = async {
            loop {
                match changes.recv().await {
                    Ok(c) if c.id == id && c.state.is_terminal() => return Some(c),
                    Ok(_) => {}
                    // Missed messages: the record itself is the truth.
                    Err(broadcast::error::RecvError::Lagged(_)) => return None,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        match tokio::time::timeout(self.config.apply_wait, wait).await {
            Ok(Some(done)) => done,
            _ => self.get(id).await.unwrap_or(p),
        }
    }

    /// The promotion, recording its expiry first if it is overdue.
    pub async fn get(&self, id: PromotionId) -> Result<Promotion, Error> {
        let p = self
            .store
            .read(move |s| s.get(id))
            .await?
            .ok_or(Error::PromotionNotFound(id))?;
        if machine::expire_if_due(&p, Time::now()).is_none() {
            return Ok(p);
        }
        self.expire(id).await
    }

    /// Records the expiry of `id` if it is (still) overdue; returns the record.
    pub async fn expire(&self, id: PromotionId) -> Result<Promotion, Error> {
        self.store
            .write(move |tx| {
                let p = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
                let now = tx.now();
                match machine::expire_if_due(&p, now) {
                    Some(o) => {
                        tx.commit(&o.promotion, o.event)?;
                        Ok(o.promotion)
                    }
                    None => Ok(p),
                }
            })
            .await
    }

    /// Records the expiry of every overdue pending promotion.
    pub async fn sweep_expired(&self) -> Result<usize, Error> {
        let pending = self
            .store
            .read(|s| s.in_state(State::PendingApproval))
            .await?;
        let now = Time::now();
        let mut n = 0;
        for p in pending.into_iter().filter(|p| p.expires_at <= now) {
            if self.expire(p.id).await?.state == State::Expired {
                n += 1;
            }
        }
        Ok(n)
    }

    pub async fn list(
        &self,
        filter: ListFilter,
        after: Option<PromotionId>,
        limit: usize,
    ) -> Result<Page<Promotion>, Error> {
        Ok(self
            .store
            .read(move |s| s.list(&filter, after, limit))
            .await?)
    }

    pub async fn history(
        &self,
        filter: HistoryFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, Error> {
        Ok(self
            .store
            .read(move |s| s.history(&filter, after, limit))
            .await?)
    }

    /// The current state of `id` now, then every change until a terminal
    /// state or until the receiver is dropped. When the server shuts down
    /// first, the last item is [`Error::ShuttingDown`]: watch again elsewhere.
    pub async fn watch(
        &self,
        id: PromotionId,
    ) -> Result<mpsc::Receiver<Result<Promotion, Error>>, Error> {
        // Subscribe before reading, so no change between the two is missed.
        let mut changes = self.store.subscribe();
        let first = self.get(id).await?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        let mut draining = self.draining.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !last.state.is_terminal() {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    _ = signalled(&mut draining) => {
                        let _ = tx.send(Err(Error::ShuttingDown)).await;
                        return;
                    }
                    change = changes.recv() => match change {
                        Ok(p) if p.id == id => p,
                        Ok(_) => continue,
                        // Missed changes: the record is the truth.
                        Err(broadcast::error::RecvError::Lagged(_)) => match this.get(id).await {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if next != last {
                    last = next;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// The APPLIED entry behind what `environment`'s tag carried at `at`.
    pub async fn deployed(
        &self,
        repository: &Repository,
        environment: &str,
        at: Option<Time>,
    ) -> Result<AuditEntry, Error> {
        self.policy(environment)?;
        let (repo, env) = (repository.to_string(), environment.to_owned());
        self.store
            .read(move |s| s.deployed_at(&repo, &env, at))
            .await?
            .ok_or_else(|| Error::NothingDeployed {
                repository: repository.to_string(),
                environment: environment.to_owned(),
                at: at.map_or_else(|| "now".to_owned(), Time::rfc3339),
            })
    }

    pub async fn verify(&self) -> Result<Verification, Error> {
        Ok(self.store.read(|s| s.verify()).await?)
    }
}

/// Writes the EXPIRED entry of an overdue promotion and refuses the call.
fn expire_due(tx: &mut Tx<'_>, p: &Promotion, now: Time) -> Result<(), Error> {
    match machine::expire_if_due(p, now) {
        Some(o) => {
            tx.commit(&o.promotion, o.event)?;
            Err(Error::Expired {
                id: p.id,
                expires_at: p.expires_at.rfc3339(),
            })
        }
        None => Ok(()),
    }
}

/// An idempotent retry returns the original; a reused key with other
/// parameters is refused.
fn same_request(existing: Promotion, input: &RequestInput) -> Result<Promotion, Error> {
    let same = existing.repository == input.repository.to_string()
        && existing.source == input.source.as_reference()
        && existing.environment == input.environment
        && existing.reason == input.reason;
    if same {
        Ok(existing)
    } else {
        Err(Error::RequestIdReused {
            request_id: input.request_id.clone(),
            promotion_id: existing.id,
        })
    }
}
