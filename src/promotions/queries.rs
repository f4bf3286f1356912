//! The reads: a promotion (recording its expiry when overdue), pages of
//! promotions, history and checks, the gates as they stand, the deployed
//! digest, a recorded policy version, the log's verification.

use super::{
    Evaluation, HistoryQuery, ListQuery, Listing, Promotions, RequestInput, policy_of,
    unknown_project,
};
use crate::domain::audit::{AuditEntry, Verification};
use crate::domain::decision;
use crate::domain::drift::TagRecord;
use crate::domain::gates;
use crate::domain::machine::{self, NewPromotion};
use crate::domain::model::{CheckReport, Precision, Promotion, PromotionId, State, Time};
use crate::domain::names::Repository;
use crate::domain::policy::Principal;
use crate::error::Error;
use crate::store::{ListFilter, PageRequest, StoredPolicy};

impl Promotions {
    /// The promotion, recording its expiry first if it is overdue, with the
    /// apply worker's retry state while it is APPROVED.
    pub async fn get(&self, id: PromotionId) -> Result<Promotion, Error> {
        let mut p = self
            .store
            .get(id)
            .await?
            .ok_or(Error::PromotionNotFound(id))?;
        if machine::expire_if_due(&p, self.clock.now()).is_some() {
            return self.expire(id).await;
        }
        self.progress.overlay(&mut p);
        self.refresh_waiting(&mut p).await;
        Ok(p)
    }

    /// A WAITING promotion's `waiting_for` and `not_before` as its gates
    /// stand now. The record keeps what blocked when it began to wait (a
    /// check reported since changes no record, so writes no entry); a
    /// reader wants what it still waits for. The signature is not read
    /// again here (registry round trips): it stays listed while the record
    /// lists it. When everything passes, the record's values stay until the
    /// waiting task moves it (moments later).
    async fn refresh_waiting(&self, p: &mut Promotion) {
        if p.state != State::Waiting {
            return;
        }
        let config = self.config.get();
        let Some(policy) = config.governing(&p.repository).environment(&p.environment) else {
            return;
        };
        let Ok(facts) = self.gather_stored(&p.repository, policy, &p.digest).await else {
            return;
        };
        let f = facts.facts(policy, &config.policy.digest, self.clock.now());
        let mut blocking = decision::evaluate(p, &f).blocking_names();
        let signature_passed_then = !p.waiting_for.iter().any(|g| g == gates::SIGNATURE);
        blocking.retain(|g| g != gates::SIGNATURE || !signature_passed_then);
        if !blocking.is_empty() {
            p.not_before = decision::not_before(p, &f);
            p.waiting_for = blocking;
        }
    }

    /// A page of promotions. With `awaiting`, only pending promotions that
    /// principal may approve now; with `project`, only those of
    /// repositories that project governs. Either way the walk goes on past
    /// those left out, so a page is short only at the end, and the cursor is
    /// the last promotion examined, not the last returned.
    pub async fn list(&self, q: ListQuery) -> Result<Listing<Promotion>, Error> {
        let config = self.config.get();
        if let Some(name) = &q.project
            && !config.projects.iter().any(|p| &p.name == name)
        {
            return Err(Error::InvalidArgument {
                field: "project",
                message: unknown_project(name, &config.projects),
            });
        }
        if let Some((principal, key)) = &q.request {
            return self.list_request(principal, key, &q).await;
        }
        if q.awaiting.is_none() && q.project.is_none() {
            let page = self
                .store
                .list(
                    q.filter,
                    PageRequest {
                        after: q.after,
                        limit: q.limit,
                        newest_first: q.newest_first,
                    },
                )
                .await?;
            let next = page.items.last().map(|p| p.id).filter(|_| page.more);
            let mut items = page.items;
            for p in &mut items {
                self.progress.overlay(p);
                self.refresh_waiting(p).await;
            }
            return Ok(Listing { items, next });
        }
        if q.awaiting.is_some() && q.filter.state.is_some_and(|s| s != State::PendingApproval) {
            return Err(Error::InvalidArgument {
                field: "awaiting_me",
                message: "lists PENDING_APPROVAL promotions only; leave state unset".into(),
            });
        }
        let filter = match q.awaiting {
            Some(_) => ListFilter {
                state: Some(State::PendingApproval),
                ..q.filter
            },
            None => q.filter,
        };
        let now = self.clock.now();
        let mut items = Vec::new();
        let mut after = q.after;
        loop {
            let page = self
                .store
                .list(
                    filter.clone(),
                    PageRequest {
                        after,
                        limit: q.limit.max(1),
                        newest_first: q.newest_first,
                    },
                )
                .await?;
            for mut p in page.items {
                after = Some(p.id);
                let governance = config.governing(&p.repository);
                let in_project = q
                    .project
                    .as_ref()
                    .is_none_or(|name| governance.project_name() == name);
                let may = q.awaiting.as_ref().is_none_or(|who| {
                    governance
                        .environment(&p.environment)
                        .is_some_and(|policy| machine::may_approve(&p, who, policy, now))
                });
                if in_project && may {
                    self.progress.overlay(&mut p);
                    self.refresh_waiting(&mut p).await;
                    items.push(p);
                    if items.len() == q.limit {
                        return Ok(Listing { items, next: after });
                    }
                }
            }
            if !page.more {
                return Ok(Listing { items, next: None });
            }
        }
    }

    /// The page of a listing by idempotency key: the one promotion
    /// `principal` requested with `key` (the store keeps the newest per
    /// principal and key), if it matches the other filters; one page, never
    /// a cursor.
    async fn list_request(
        &self,
        principal: &str,
        key: &str,
        q: &ListQuery,
    ) -> Result<Listing<Promotion>, Error> {
        let Some(mut p) = self.store.find_request(principal, key).await? else {
            return Ok(Listing {
                items: Vec::new(),
                next: None,
            });
        };
        if machine::expire_if_due(&p, self.clock.now()).is_some() {
            p = self.expire(p.id).await?;
        }
        let config = self.config.get();
        let governance = config.governing(&p.repository);
        let f = &q.filter;
        let matches = f.repository.as_ref().is_none_or(|r| *r == p.repository)
            && f.environment.as_ref().is_none_or(|e| *e == p.environment)
            && f.state.is_none_or(|s| s == p.state)
            && q.after.is_none_or(|after| match q.newest_first {
                true => p.id < after,
                false => p.id > after,
            })
            && q.project
                .as_ref()
                .is_none_or(|name| governance.project_name() == name)
            && q.awaiting.as_ref().is_none_or(|who| {
                governance
                    .environment(&p.environment)
                    .is_some_and(|policy| machine::may_approve(&p, who, policy, self.clock.now()))
            });
        if !matches {
            return Ok(Listing {
                items: Vec::new(),
                next: None,
            });
        }
        self.progress.overlay(&mut p);
        self.refresh_waiting(&mut p).await;
        Ok(Listing {
            items: vec![p],
            next: None,
        })
    }

    pub async fn history(&self, q: HistoryQuery) -> Result<Listing<AuditEntry>, Error> {
        let page = self
            .store
            .history(
                q.filter,
                PageRequest {
                    after: q.after,
                    limit: q.limit,
                    newest_first: q.newest_first,
                },
            )
            .await?;
        let next = page.items.last().map(|e| e.sequence).filter(|_| page.more);
        Ok(Listing {
            items: page.items,
            next,
        })
    }

    /// The APPLIED entry behind what `environment`'s tag carried at `at`,
    /// and the drift watch's entries since.
    pub async fn deployed(
        &self,
        repository: &Repository,
        environment: &str,
        at: Option<Time>,
    ) -> Result<TagRecord, Error> {
        policy_of(&self.config.get(), &repository.to_string(), environment)?;
        self.store
            .tag_record(&repository.to_string(), environment, at)
            .await?
            .ok_or_else(|| Error::NothingDeployed {
                repository: repository.to_string(),
                environment: environment.to_owned(),
                at: at.map_or_else(|| "now".to_owned(), |t| t.rfc3339(Precision::Nanos)),
            })
    }

    /// Every gate configured for promotion `id`, evaluated now as it stands
    /// (the approvals gate says how many are missing). Reads only. A
    /// finished promotion has no gates left to pass: refused, naming its
    /// state.
    pub async fn evaluate_gates(&self, id: PromotionId) -> Result<Evaluation, Error> {
        self.gates_of(&self.get(id).await?).await
    }

    /// [`Promotions::evaluate_gates`] of a promotion already read (as
    /// [`Promotions::get`] returns it).
    pub async fn gates_of(&self, p: &Promotion) -> Result<Evaluation, Error> {
        let id = p.id;
        if p.state.is_terminal() {
            return Err(Error::Domain(machine::DomainError::NotPending {
                id,
                state: p.state,
                verb: "evaluated",
                superseded_by: p.superseded_by,
            }));
        }
        let config = self.config.get();
        let governing = config.governing(&p.repository);
        let policy = governing
            .environment(&p.environment)
            .ok_or_else(|| Error::InvalidArgument {
                field: "promotion_id",
                message: format!(
                    "promotion {id}'s environment {} is no longer configured",
                    p.environment
                ),
            })?
            .clone();
        let facts = self.gather_gates(&p.repository, &policy, &p.digest).await?;
        let f = facts.facts(&policy, &config.policy.digest, self.clock.now());
        Ok(Evaluation {
            report: decision::evaluate(p, &f),
            project: governing.project_name().to_owned(),
            policy_digest: config.policy.digest.clone(),
        })
    }

    /// The dry run: the gates a request by `who` for `input` would meet
    /// now, resolving the source as RequestPromotion does, recording
    /// nothing. Refused like a request only where no gate could say why
    /// (unclaimed repository, unknown environment or registry, missing
    /// source); a requester the project does not name is its `requester`
    /// gate.
    pub async fn preview(&self, who: Principal, input: RequestInput) -> Result<Evaluation, Error> {
        let config = self.config.get();
        let repository = input.repository.to_string();
        let governance = config.governing(&repository);
        let (policy, refused) = super::commands::admit(&config, &governance, &who, &input)?;
        let (resolved, facts) = self.request_facts(&config, &input, policy, true).await?;
        let new = NewPromotion {
            project: governance.project_name().to_owned(),
            repository,
            environment: input.environment.clone(),
            source: input.source.as_reference().to_owned(),
            digest: resolved.digest,
            reason: String::new(),
            request_id: String::new(),
            rollback: false,
        };
        let f = facts.facts(policy, &config.policy.digest, self.clock.now());
        // Id 0 is never a promotion's: nothing is opened.
        let report = decision::preview(0, new, &who, refused.map(|e| e.to_string()), &f);
        Ok(Evaluation {
            report,
            project: governance.project_name().to_owned(),
            policy_digest: config.policy.digest.clone(),
        })
    }

    /// A recorded policy version; `None`: the running one.
    pub async fn policy(&self, digest: Option<&str>) -> Result<StoredPolicy, Error> {
        let running = self.config.get();
        let digest = digest.unwrap_or(&running.policy.digest);
        self.store
            .policy(digest)
            .await?
            .ok_or_else(|| Error::PolicyNotFound(digest.to_owned()))
    }

    /// A page of the latest report of each check for a digest, by check
    /// name, after the name `after`.
    pub async fn list_checks(
        &self,
        repository: &Repository,
        digest: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Listing<CheckReport, String>, Error> {
        let page = self
            .store
            .checks_page(&repository.to_string(), digest, after, limit)
            .await?;
        let next = page
            .items
            .last()
            .map(|c| c.check.clone())
            .filter(|_| page.more);
        Ok(Listing {
            items: page.items,
            next,
        })
    }

    /// How many entries the current checkpoint covers: the tree head's
    /// size (every durable entry; `evidence::Evidence::checkpoint` signs
    /// the same head). An entry is included when its sequence is at most
    /// this.
    pub fn checkpoint_size(&self) -> u64 {
        self.store.tree_size()
    }

    /// Every repository and environment whose tag prodgate moved (an
    /// APPLIED entry exists), sorted, at most `limit` of them; `true` when
    /// some were left out.
    pub async fn moved_tags(&self, limit: usize) -> Result<(Vec<(String, String)>, bool), Error> {
        let mut all = self.store.moved_tags().await?;
        all.sort();
        let more = all.len() > limit;
        all.truncate(limit);
        Ok((all, more))
    }

    pub async fn verify(&self) -> Result<Verification, Error> {
        Ok(self.store.verify().await?)
    }
}
