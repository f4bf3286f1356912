//! The calls that write. Each gathers its facts ([`super::facts`]), then in
//! one write job reads the record, lets `domain::decision` decide, and
//! commits what it returns; a refusal commits nothing.

use super::facts::Gathered;
use super::{CheckInput, Promotions, RequestInput, RollbackInput, policy_of};
use crate::config::Config;
use crate::domain::decision::{self, Call};
use crate::domain::machine::{self, NewPromotion, Outcome};
use crate::domain::model::{
    Action, CheckReport, Precision, Promotion, PromotionId, State, Time, may_record_check,
};
use crate::domain::names::Source;
use crate::domain::policy::{EnvironmentPolicy, Principal};
use crate::error::Error;
use crate::store::{HistoryFilter, PageRequest, UnitOfWork};
use std::sync::Arc;

/// A re-evaluated WAITING promotion, and when its time gates may open.
#[derive(Debug, Clone)]
pub struct Reevaluated {
    pub promotion: Promotion,
    /// Still WAITING for a time gate: when they can all be open (its
    /// deadline, `expires_at`, comes on top: see `waiting::due`).
    pub not_before: Option<Time>,
}

impl Promotions {
    pub async fn request(&self, who: Principal, input: RequestInput) -> Result<Promotion, Error> {
        let config = self.config.get();
        self.request_under(config, who, input).await
    }

    async fn request_under(
        &self,
        config: Arc<Config>,
        who: Principal,
        input: RequestInput,
    ) -> Result<Promotion, Error> {
        let repository = input.repository.to_string();
        let governance = config.governing(&repository);
        let (policy, refused) = admit(&config, &governance, &who, &input)?;
        if let Some(refused) = refused {
            return Err(refused);
        }
        let mut policy = policy.clone();
        if input.rollback {
            policy.required_approvals = policy.rollback_approvals;
        }
        if policy.required_approvals > 0 && input.reason.trim().is_empty() {
            return Err(Error::InvalidArgument {
                field: "reason",
                message: format!(
                    "is required for environment {}, which needs approval: say what this promotion ships and why, for the approvers and the audit log",
                    policy.name
                ),
            });
        }
        // A retried request answers from the record, whatever the tags do now.
        if !input.request_id.is_empty()
            && let Some(existing) = self
                .store
                .find_request(&who.name, &input.request_id)
                .await?
        {
            return same_request(existing, &input);
        }
        // Decided at once when nobody approves: the gates' facts now.
        let all_gates = policy.required_approvals == 0;
        let (resolved, facts) = self
            .request_facts(&config, &input, &policy, all_gates)
            .await?;
        let source_ref = input.source.as_reference().to_owned();
        let digest = resolved.digest.clone();
        let job_config = config.clone();
        let new = NewPromotion {
            project: governance.project_name().to_owned(),
            repository,
            environment: input.environment.clone(),
            source: source_ref,
            digest,
            reason: input.reason.clone(),
            request_id: input.request_id.clone(),
            rollback: input.rollback,
        };
        let created = self
            .store
            .write(move |tx: &mut dyn UnitOfWork| {
                // After the retry lookup: a retry of a request that was
                // applied since returns it rather than a no-op refusal.
                if !new.request_id.is_empty()
                    && let Some(id) = tx.find_request(&who.name, &new.request_id)?
                {
                    let existing = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
                    return same_request(existing, &input);
                }
                let now = tx.now();
                let f = facts.facts(&policy, &job_config.policy.digest, now);
                let o = decision::request(tx.next_id(), new, &who, input.break_glass, &f)?;
                resolved.pin(tx, &o.promotion.repository)?;
                tx.commit(&o.promotion, o.event)?;
                Ok(o.promotion)
            })
            .await?;
        Ok(self.settled(&config, created).await)
    }

    /// Opens a promotion back to a digest prodgate applied to the
    /// environment before, with the environment's `rollback_approvals`.
    /// By default the newest digest the tag carried before that no
    /// rollback moved it away from: rolling back twice never brings back
    /// what the first rollback removed.
    pub async fn rollback(&self, who: Principal, input: RollbackInput) -> Result<Promotion, Error> {
        let repository = input.repository.to_string();
        if input.reason.trim().is_empty() {
            return Err(Error::InvalidArgument {
                field: "reason",
                message: "is required for a rollback: say why the tag goes back".into(),
            });
        }
        let config = self.config.get();
        policy_of(&config, &repository, &input.environment)?;
        // A retried rollback answers from the record: the default target
        // is worked out anew below, and once the first call's rollback has
        // moved the tag it is another digest.
        if !input.request_id.is_empty()
            && let Some(existing) = self
                .store
                .find_request(&who.name, &input.request_id)
                .await?
        {
            let same = existing.rollback
                && existing.repository == repository
                && existing.environment == input.environment
                && existing.reason == input.reason
                && input.digest.as_ref().is_none_or(|d| *d == existing.digest);
            return if same {
                Ok(existing)
            } else {
                Err(Error::RequestIdReused {
                    request_id: input.request_id,
                    promotion_id: existing.id,
                })
            };
        }
        let refused = |why: String| {
            Err(Error::RollbackRefused {
                repository: repository.clone(),
                environment: input.environment.clone(),
                why,
            })
        };
        let Some(current) = self
            .store
            .deployed_at(&repository, &input.environment, None)
            .await?
        else {
            return refused("prodgate has not moved its tag yet".into());
        };
        let target = match &input.digest {
            None => match self
                .rollback_target(&repository, &input.environment, &current.event.digest)
                .await?
            {
                Some(d) => d,
                None => {
                    return refused(format!(
                        "no digest is left to go back to: before {} its tag carried nothing prodgate applied, or only digests a rollback already moved it away from; name a digest",
                        current.event.digest
                    ));
                }
            },
            Some(d) if *d == current.event.digest => {
                return refused(format!("its tag already carries {d}"));
            }
            Some(d) => {
                if !self
                    .applied_history(&repository, &input.environment)
                    .await?
                    .iter()
                    .any(|(digest, _, _)| digest == d)
                {
                    return refused(format!(
                        "prodgate never moved its tag to {d}; a rollback goes back to a digest it carried"
                    ));
                }
                d.clone()
            }
        };
        let request = RequestInput {
            repository: input.repository,
            source: Source::Digest(target),
            environment: input.environment,
            reason: input.reason,
            request_id: input.request_id,
            break_glass: input.break_glass,
            rollback: true,
        };
        self.request_under(config, who, request).await
    }

    /// The default rollback target ([`decision::rollback_target`]) of
    /// `environment`'s tag, which now carries `current`.
    async fn rollback_target(
        &self,
        repository: &str,
        environment: &str,
        current: &str,
    ) -> Result<Option<String>, Error> {
        let mut moves = Vec::new();
        for (_, previous, promotion) in self.applied_history(repository, environment).await? {
            let by_rollback = self.store.get(promotion).await?.is_some_and(|p| p.rollback);
            moves.push(decision::TagMove {
                previous,
                by_rollback,
            });
        }
        Ok(decision::rollback_target(&moves, current).map(str::to_owned))
    }

    /// Every APPLIED move of `environment`'s tag of `repository`, newest
    /// first: the digest, the digest it replaced, the promotion.
    async fn applied_history(
        &self,
        repository: &str,
        environment: &str,
    ) -> Result<Vec<(String, String, PromotionId)>, Error> {
        let filter = HistoryFilter {
            repository: Some(repository.to_owned()),
            environment: Some(environment.to_owned()),
            ..Default::default()
        };
        let mut moves = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .history(
                    filter.clone(),
                    PageRequest {
                        after,
                        limit: 1000,
                        newest_first: true,
                    },
                )
                .await?;
            moves.extend(
                page.items
                    .iter()
                    .filter(|e| e.event.action == Action::Applied)
                    .map(|e| {
                        (
                            e.event.digest.clone(),
                            e.event.previous_digest.clone(),
                            e.event.promotion_id,
                        )
                    }),
            );
            match (page.more, page.items.last()) {
                (true, Some(last)) => after = Some(last.sequence),
                _ => return Ok(moves),
            }
        }
    }

    pub async fn approve(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
        break_glass: bool,
    ) -> Result<Promotion, Error> {
        let config = self.config.get();
        let p = self
            .decide(
                config.clone(),
                Call::Approve { break_glass },
                who,
                id,
                comment,
            )
            .await?;
        Ok(self.settled(&config, p).await)
    }

    pub async fn reject(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        self.decide(self.config.get(), Call::Reject, who, id, comment)
            .await
    }

    pub async fn cancel(
        &self,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        self.decide(self.config.get(), Call::Cancel, who, id, comment)
            .await
    }

    /// Approve, Reject or Cancel of promotion `id`, and of every other
    /// member of its release, if it is one's (a member is never decided
    /// apart from its release): each member decided on the writer, then all
    /// committed in the same job; a refusal of any member commits nothing
    /// (but an expiry found on the way, as for a single promotion). Answers
    /// the promotion `id` as it stands after.
    async fn decide(
        &self,
        config: Arc<Config>,
        call: Call,
        who: Principal,
        id: PromotionId,
        comment: String,
    ) -> Result<Promotion, Error> {
        let Some(first) = self.store.get(id).await? else {
            return Err(Error::PromotionNotFound(id));
        };
        let ids = self.members_of(&first).await?;
        // Twice at most: a promotion that ended between the read of who
        // ended it and the write job is read again, and an ended promotion
        // never changes, so the second read finds its ending entry.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut members = Vec::with_capacity(ids.len());
            for &mid in &ids {
                // Promotion `id` as just read, on the first attempt; the
                // second reads it again.
                let read = if mid == id && attempts == 1 {
                    Some(first.clone())
                } else {
                    self.store.get(mid).await?
                };
                let ended_by = self.ended_by(read.as_ref(), call).await?;
                // The gates' facts for an approval that may complete the
                // quorum; read for any undecided promotion, since which
                // approval completes it is decided on the writer.
                let facts = match call {
                    Call::Approve { .. } => self.gather_for(&config, read.as_ref()).await?,
                    Call::Reject | Call::Cancel => Gathered::default(),
                };
                members.push((mid, ended_by, facts));
            }
            let (config, who, comment) = (config.clone(), who.clone(), comment.clone());
            let decided = self
                .store
                .write(move |tx: &mut dyn UnitOfWork| {
                    let mut outcomes = Vec::with_capacity(members.len());
                    for (mid, ended_by, facts) in &members {
                        let p = tx.get(*mid)?.ok_or(Error::PromotionNotFound(*mid))?;
                        // A retry is answered from the record first, before
                        // an expiry or a refusal could make it look like a
                        // new call.
                        if decision::already_done(&p, &who, call, ended_by.as_deref()) {
                            outcomes.push(Err(p));
                            continue;
                        }
                        let ended_meanwhile = match call {
                            Call::Reject => p.state == State::Rejected,
                            Call::Cancel => p.state == State::Cancelled,
                            Call::Approve { .. } => false,
                        };
                        if ended_meanwhile && ended_by.is_none() && attempts < 2 {
                            return Ok(None);
                        }
                        let now = tx.now();
                        expire_due(tx, &p, now)?;
                        let policy = policy_for(&config, &p, &who)?;
                        let o: Outcome = match call {
                            Call::Approve { break_glass } => {
                                let f = facts.facts(policy, &config.policy.digest, now);
                                decision::approve(&p, &who, break_glass, &comment, &f)?
                            }
                            Call::Reject => machine::reject(&p, &who, policy, &comment, now)?,
                            Call::Cancel => machine::cancel(&p, &who, policy, &comment, now)?,
                        };
                        outcomes.push(Ok(o));
                    }
                    let mut answer = None;
                    for o in outcomes {
                        let p = match o {
                            Err(done) => done,
                            Ok(mut o) => {
                                crate::domain::release::mark(&mut o);
                                // A repeated approval has no event; commit
                                // writes nothing then.
                                tx.commit(&o.promotion, o.event)?;
                                o.promotion
                            }
                        };
                        if p.id == id {
                            answer = Some(p);
                        }
                    }
                    answer.map(Some).ok_or(Error::PromotionNotFound(id))
                })
                .await?;
            if let Some(p) = decided {
                return Ok(p);
            }
        }
    }

    /// Who ended promotion `id` the way `call` would (the actor of its
    /// REJECTED or CANCELLED entry), if it has ended that way. The record
    /// keeps no such field, and none is added for this: the ending entry is
    /// the promotion's newest (nothing is recorded about it after its end),
    /// so one short read of its history, made only for a Reject or Cancel
    /// of a promotion already ended that way, answers it; and since an
    /// ended promotion never changes, what is read here still holds in the
    /// write job.
    async fn ended_by(&self, p: Option<&Promotion>, call: Call) -> Result<Option<String>, Error> {
        let ending = match call {
            Call::Reject => (State::Rejected, Action::Rejected),
            Call::Cancel => (State::Cancelled, Action::Cancelled),
            Call::Approve { .. } => return Ok(None),
        };
        let Some(id) = p.filter(|p| p.state == ending.0).map(|p| p.id) else {
            return Ok(None);
        };
        let page = self
            .store
            .history(
                HistoryFilter {
                    promotion_id: Some(id),
                    ..Default::default()
                },
                PageRequest {
                    after: None,
                    limit: 8,
                    newest_first: true,
                },
            )
            .await?;
        Ok(page
            .items
            .into_iter()
            .find(|e| e.event.action == ending.1)
            .map(|e| e.event.actor))
    }

    /// The gates' facts for promotion `p` when it is undecided (nothing
    /// otherwise: no gate is evaluated for it).
    async fn gather_for(&self, config: &Config, p: Option<&Promotion>) -> Result<Gathered, Error> {
        match p {
            Some(p) if p.state.is_undecided() => {
                match config.governing(&p.repository).environment(&p.environment) {
                    Some(policy) => self.gather_gates(&p.repository, policy, &p.digest).await,
                    None => Ok(Gathered::default()),
                }
            }
            _ => Ok(Gathered::default()),
        }
    }

    /// Looks at a WAITING promotion again: APPROVED (GATES_PASSED) once its
    /// gates pass, EXPIRED past its `wait_ttl`, else unchanged with when to
    /// look again.
    pub async fn reevaluate(&self, id: PromotionId) -> Result<Reevaluated, Error> {
        let config = self.config.get();
        let read = self.store.get(id).await?;
        let facts = self.gather_for(&config, read.as_ref()).await?;
        self.store
            .write(move |tx: &mut dyn UnitOfWork| {
                let p = tx.get(id)?.ok_or(Error::PromotionNotFound(id))?;
                if p.state != State::Waiting {
                    return Ok(Reevaluated {
                        promotion: p,
                        not_before: None,
                    });
                }
                let now = tx.now();
                let decided = match config.governing(&p.repository).environment(&p.environment) {
                    Some(policy) => {
                        let f = facts.facts(policy, &config.policy.digest, now);
                        decision::reevaluate(&p, &f).ok_or_else(|| decision::not_before(&p, &f))
                    }
                    // No longer configured: nothing can pass; it waits for
                    // its deadline, and ends EXPIRED there.
                    None => machine::expire_if_due(&p, now).ok_or(None),
                };
                match decided {
                    Ok(o) => {
                        tx.commit(&o.promotion, o.event)?;
                        Ok(Reevaluated {
                            promotion: o.promotion,
                            not_before: None,
                        })
                    }
                    Err(not_before) => Ok(Reevaluated {
                        promotion: p,
                        not_before,
                    }),
                }
            })
            .await
    }

    /// Records the expiry of `id` if it is (still) overdue; returns the record.
    pub async fn expire(&self, id: PromotionId) -> Result<Promotion, Error> {
        self.store
            .write(move |tx: &mut dyn UnitOfWork| {
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

    /// Records the expiry of every overdue undecided promotion (pending
    /// past `approval_ttl`, waiting past `wait_ttl`).
    pub async fn sweep_expired(&self) -> Result<usize, Error> {
        let mut open = self.store.in_state(State::PendingApproval).await?;
        open.extend(self.store.in_state(State::Waiting).await?);
        let now = self.clock.now();
        let mut n = 0;
        for p in open.into_iter().filter(|p| p.expires_at <= now) {
            if self.expire(p.id).await?.state == State::Expired {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Records a check result for a digest (its latest report per check
    /// counts for the checks gate). Only check reporters may.
    pub async fn report_check(
        &self,
        who: Principal,
        input: CheckInput,
    ) -> Result<CheckReport, Error> {
        let repository = input.repository.to_string();
        if !self.config.get().governing(&repository).may_report(&who) {
            return Err(Error::NotCheckReporter {
                principal: who.name,
                repository,
            });
        }
        let mut report = CheckReport {
            repository,
            digest: input.digest,
            check: input.check,
            status: input.status,
            reported_by: who.name,
            time: Time::ZERO,
            details_url: input.details_url,
            comment: input.comment,
        };
        let event = report.event();
        let limit = self.config.get().max_checks_per_digest;
        let (repository, digest, check) = (
            report.repository.clone(),
            report.digest.clone(),
            report.check.clone(),
        );
        let entry = self
            .store
            .write(move |tx: &mut dyn UnitOfWork| {
                // Counted in the write job, which runs alone: two new names
                // reported at once cannot both take the last place.
                let names = tx.check_names(&repository, &digest, &check, limit)?;
                if !may_record_check(names.known, names.distinct, limit) {
                    return Err(Error::TooManyChecks {
                        repository,
                        digest,
                        limit,
                    });
                }
                let now = tx.now();
                Ok::<_, Error>(tx.record(event, now)?)
            })
            .await?;
        report.time = entry.time;
        Ok(report)
    }
}

/// The policy `who` acts under on `p`, refusing when its environment is
/// no longer configured.
fn policy_for<'c>(
    config: &'c Config,
    p: &Promotion,
    who: &Principal,
) -> Result<&'c EnvironmentPolicy, Error> {
    config
        .governing(&p.repository)
        .environment(&p.environment)
        .ok_or_else(|| {
            Error::Domain(machine::DomainError::NotApprover {
                principal: who.name.clone(),
                environment: p.environment.clone(),
                governed: " (it is no longer configured)".into(),
            })
        })
}

/// Writes the EXPIRED entry of an overdue promotion and refuses the call.
fn expire_due(tx: &mut dyn UnitOfWork, p: &Promotion, now: Time) -> Result<(), Error> {
    match machine::expire_if_due(p, now) {
        Some(o) => {
            tx.commit(&o.promotion, o.event)?;
            let why = match p.state {
                State::Waiting => {
                    format!("after waiting wait_ttl for {}", p.waiting_for.join(", "))
                }
                _ => "without enough approvals".to_owned(),
            };
            Err(Error::Expired {
                id: p.id,
                expires_at: p.expires_at.rfc3339(Precision::Nanos),
                why,
            })
        }
        None => Ok(()),
    }
}

/// An idempotent retry returns the original; a reused key with other
/// parameters is refused.
pub(super) fn same_request(existing: Promotion, input: &RequestInput) -> Result<Promotion, Error> {
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

/// Whether `who` may request `input` at all under `config`: an error for a
/// request nothing could allow (an unclaimed repository refused, an unknown
/// environment or registry); otherwise the environment's policy, and a
/// refusal when the governing project's `requesters` do not name `who` (a
/// dry run reports that one as its `requester` gate instead).
pub(super) fn admit<'c>(
    config: &'c Config,
    governance: &crate::config::Governance<'_>,
    who: &Principal,
    input: &RequestInput,
) -> Result<(&'c EnvironmentPolicy, Option<Error>), Error> {
    let repository = input.repository.to_string();
    if governance.project().is_none()
        && config.unclaimed_repositories == crate::config::Unclaimed::Refuse
    {
        return Err(Error::Unclaimed {
            repository,
            patterns: config.project_patterns(),
        });
    }
    let refused = (!governance.may_request(who)).then(|| Error::NotRequester {
        principal: who.name.clone(),
        repository: repository.clone(),
        project: governance.project_name().to_owned(),
        requesters: crate::config::describe(governance.requesters().unwrap_or_default()),
    });
    let policy = policy_of(config, &repository, &input.environment)?;
    if config.registry(input.repository.host()).is_none() {
        return Err(Error::UnknownRegistry {
            host: input.repository.host().to_owned(),
        });
    }
    Ok((policy, refused))
}
