//! Releases: several images shipped to one environment as one
//! ([`crate::domain::release`]). A release is requested in one write (one
//! promotion per component, each admitted and pinned exactly as
//! RequestPromotion would, each carrying the release's id); it is read back
//! from its members, whose ids follow one another from the release's.

use super::commands::{admit, same_request};
use super::watch::Followed;
use super::{Promotions, RequestInput};
use crate::domain::decision;
use crate::domain::machine::NewPromotion;
use crate::domain::model::State;
use crate::domain::model::{Promotion, PromotionId};
use crate::domain::names::{Repository, Source};
use crate::domain::policy::Principal;
use crate::domain::release::{self, MAX_COMPONENTS, MIN_COMPONENTS, Release};
use crate::error::Error;
use crate::store::Change;
use crate::store::{ListFilter, PageRequest, UnitOfWork};
use tokio::sync::mpsc;

/// A validated RequestRelease.
#[derive(Debug, Clone)]
pub struct ReleaseInput {
    pub environment: String,
    pub reason: String,
    pub request_id: String,
    /// In the order their tags are to move; distinct repositories.
    pub components: Vec<(Repository, Source)>,
    pub break_glass: bool,
}

impl ReleaseInput {
    /// The RequestPromotion each component would be (the request id is the
    /// release's, kept by its first member only).
    fn member(&self, i: usize) -> RequestInput {
        let (repository, source) = &self.components[i];
        RequestInput {
            repository: repository.clone(),
            source: source.clone(),
            environment: self.environment.clone(),
            reason: self.reason.clone(),
            request_id: if i == 0 {
                self.request_id.clone()
            } else {
                String::new()
            },
            break_glass: self.break_glass,
            rollback: false,
        }
    }
}

/// Checks the count and the distinctness of the components.
pub fn check_components(components: &[(Repository, Source)]) -> Result<(), Error> {
    if !(MIN_COMPONENTS..=MAX_COMPONENTS).contains(&components.len()) {
        return Err(Error::InvalidArgument {
            field: "components",
            message: format!(
                "has {} components; a release has {MIN_COMPONENTS} to {MAX_COMPONENTS} (one image is a RequestPromotion)",
                components.len()
            ),
        });
    }
    for (i, (repo, _)) in components.iter().enumerate() {
        if let Some(j) = components[..i].iter().position(|(r, _)| r == repo) {
            return Err(Error::InvalidArgument {
                field: "components",
                message: format!(
                    "components[{i}] repeats the repository of components[{j}] ({repo}): each image of a release is a different repository"
                ),
            });
        }
    }
    Ok(())
}

impl Promotions {
    /// Opens a release: every component admitted, its source resolved and
    /// its gates' facts read first; then one write creates every member.
    /// A refused component refuses the whole and records nothing.
    pub async fn request_release(
        &self,
        who: Principal,
        input: ReleaseInput,
    ) -> Result<Release, Error> {
        check_components(&input.components)?;
        let config = self.config.get();
        let mut members = Vec::with_capacity(input.components.len());
        for i in 0..input.components.len() {
            let member = input.member(i);
            let repository = member.repository.to_string();
            let governance = config.governing(&repository);
            let (policy, refused) = admit(&config, &governance, &who, &member)?;
            if let Some(refused) = refused {
                return Err(refused);
            }
            if policy.required_approvals > 0 && input.reason.trim().is_empty() {
                return Err(Error::InvalidArgument {
                    field: "reason",
                    message: format!(
                        "is required: {repository} needs approval in {}; say what this release ships and why",
                        policy.name
                    ),
                });
            }
            members.push((member, governance.project_name().to_owned(), policy.clone()));
        }
        // A retried request answers from the record, whatever the tags do now.
        if !input.request_id.is_empty()
            && let Some(first) = self
                .store
                .find_request(&who.name, &input.request_id)
                .await?
        {
            return self.same_release(first.id, &input).await;
        }
        let mut pinned = Vec::with_capacity(members.len());
        // Every component's blockers, not only the first one's.
        let mut blocked = Blocked::default();
        for (member, project, policy) in members {
            let all_gates = policy.required_approvals == 0;
            let facts = self
                .request_facts(&config, &member, &policy, all_gates)
                .await;
            let Some((resolved, facts)) = blocked.take(facts, &member.repository.to_string())?
            else {
                continue;
            };
            let new = NewPromotion {
                project,
                repository: member.repository.to_string(),
                environment: member.environment.clone(),
                source: member.source.as_reference().to_owned(),
                digest: resolved.digest.clone(),
                reason: member.reason.clone(),
                request_id: member.request_id.clone(),
                rollback: false,
            };
            pinned.push((new, resolved, facts, policy));
        }
        blocked.refuse()?;
        let job_config = config.clone();
        let (break_glass, request_id, retry) =
            (input.break_glass, input.request_id.clone(), input.clone());
        let created = self
            .store
            .write(move |tx: &mut dyn UnitOfWork| {
                if !request_id.is_empty()
                    && let Some(first) = tx.find_request(&who.name, &request_id)?
                {
                    return Ok(Err(first));
                }
                let now = tx.now();
                let release_id = tx.next_id();
                // Decided before anything is committed: one refusal records
                // nothing.
                let mut decided = Vec::with_capacity(pinned.len());
                let mut blocked = Blocked::default();
                for (i, (new, _, facts, policy)) in pinned.iter().enumerate() {
                    let f = facts.facts(policy, &job_config.policy.digest, now);
                    let id = release_id + i as PromotionId;
                    let o = decision::request(id, new.clone(), &who, break_glass, &f)
                        .map_err(Error::from);
                    if let Some(mut o) = blocked.take(o, &new.repository)? {
                        o.promotion.release_id = Some(release_id);
                        release::mark(&mut o);
                        decided.push(o);
                    }
                }
                blocked.refuse()?;
                let mut members = Vec::with_capacity(decided.len());
                for ((_, resolved, _, _), o) in pinned.iter().zip(decided) {
                    if tx.next_id() != o.promotion.id {
                        return Err(Error::Internal(format!(
                            "release {release_id}: member ids are not consecutive"
                        )));
                    }
                    resolved.pin(tx, &o.promotion.repository)?;
                    tx.commit(&o.promotion, o.event)?;
                    members.push(o.promotion);
                }
                Ok(Ok(members))
            })
            .await?;
        match created {
            Ok(members) => {
                let rid = members.first().map(|m| m.id);
                let first = members.first().cloned();
                let release = Release::of(members).ok_or_else(|| {
                    Error::Internal("a release was created without members".into())
                })?;
                // Decided at once (no approvals needed): as a request does,
                // wait up to apply_wait for the tags, which are recorded
                // together, so the first member's end is the release's.
                match (first, rid) {
                    (Some(first), Some(rid))
                        if first.state == crate::domain::model::State::Approved =>
                    {
                        self.settled(&config, first).await;
                        self.release(rid).await
                    }
                    _ => Ok(release),
                }
            }
            Err(first) => self.same_release(first, &retry).await,
        }
    }

    /// The release `id` names: `id` is its first member's id.
    pub async fn release(&self, id: PromotionId) -> Result<Release, Error> {
        let mut members = self.store.release_members(id).await?;
        for m in &mut members {
            self.progress.overlay(m);
        }
        Release::of(members).ok_or(Error::PromotionNotFound(id))
    }

    /// The ids of the members of `p`'s release, `p`'s own id alone if it
    /// is none's member.
    pub(super) async fn members_of(&self, p: &Promotion) -> Result<Vec<PromotionId>, Error> {
        match p.release_id {
            None => Ok(vec![p.id]),
            Some(rid) => Ok(self
                .release(rid)
                .await?
                .members
                .iter()
                .map(|m| m.id)
                .collect()),
        }
    }

    /// A retried RequestRelease: the release whose first member is `first`,
    /// if the request was the same; a reused key otherwise.
    async fn same_release(
        &self,
        first: PromotionId,
        input: &ReleaseInput,
    ) -> Result<Release, Error> {
        let existing = self.get(first).await?;
        let Some(rid) = existing.release_id.filter(|r| *r == first) else {
            // The key opened a single promotion.
            return Err(Error::RequestIdReused {
                request_id: input.request_id.clone(),
                promotion_id: first,
            });
        };
        let release = self.release(rid).await?;
        let same = release.members.len() == input.components.len()
            && release
                .members
                .iter()
                .zip(0..)
                .all(|(m, i)| same_request(m.clone(), &input.member(i)).is_ok());
        if same {
            Ok(release)
        } else {
            Err(Error::RequestIdReused {
                request_id: input.request_id.clone(),
                promotion_id: rid,
            })
        }
    }

    /// Releases in id order after `after`, matching `environment` and
    /// `state` (the release's): at most `limit`, from at most
    /// [`LIST_SCAN`] promotions looked at per call; the cursor to continue
    /// after (`None` at the end).
    pub async fn list_releases(
        &self,
        environment: Option<String>,
        state: Option<State>,
        after: Option<PromotionId>,
        limit: usize,
    ) -> Result<(Vec<Release>, Option<PromotionId>), Error> {
        let mut out = Vec::new();
        let mut cursor = after;
        let mut scanned = 0;
        loop {
            let page = self
                .store
                .list(
                    ListFilter {
                        environment: environment.clone(),
                        ..ListFilter::default()
                    },
                    PageRequest {
                        after: cursor,
                        limit: LIST_PAGE,
                        newest_first: false,
                    },
                )
                .await?;
            for p in &page.items {
                scanned += 1;
                cursor = Some(p.id);
                if p.release_id != Some(p.id) {
                    continue;
                }
                let r = self.release(p.id).await?;
                if state.is_none_or(|s| r.state() == s) {
                    out.push(r);
                    if out.len() == limit {
                        return Ok((out, cursor));
                    }
                }
            }
            if !page.more {
                return Ok((out, None));
            }
            if scanned >= LIST_SCAN {
                return Ok((out, cursor));
            }
        }
    }

    /// The release now, then again whenever one of its members changes,
    /// until every member has ended; counted as a watch of `who`.
    pub async fn watch_release(
        &self,
        who: &Principal,
        id: PromotionId,
    ) -> Result<mpsc::Receiver<Result<Release, Error>>, Error> {
        self.follow(
            who,
            Followed {
                read: move |this: Promotions| async move { this.release(id).await },
                ended: |r: &Release| r.members.iter().all(|m| m.state.is_terminal()),
                concerns: move |c: &Change| (c.promotion.release_id == Some(id)).then_some(None),
                retried: |r: &Release, n: PromotionId| r.members.iter().any(|m| m.id == n),
            },
        )
        .await
    }
}

/// Promotions read per store page by `list_releases`.
const LIST_PAGE: usize = 200;
/// Promotions looked at per `list_releases` call before it answers a page
/// that may be short, with a cursor: a listing of a store with few
/// releases among many promotions stays bounded per call.
pub const LIST_SCAN: usize = 5000;

/// The blockers of a release's components, gathered so that one refusal
/// names them all, each under its component's repository (the subject a
/// blocker of a single request has before its promotion exists).
#[derive(Default)]
struct Blocked(Vec<crate::error::Blocker>);

impl Blocked {
    /// `result`'s value; its blockers kept under `repository` (then
    /// `None`); any other error returned at once.
    fn take<T>(&mut self, result: Result<T, Error>, repository: &str) -> Result<Option<T>, Error> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(Error::Blocked(blockers)) => {
                self.0.extend(blockers.into_iter().map(|mut b| {
                    if b.subject.is_empty() {
                        b.subject = repository.to_owned();
                    }
                    b
                }));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The refusal naming every blocker kept, if any.
    fn refuse(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Blocked(self.0))
        }
    }
}
