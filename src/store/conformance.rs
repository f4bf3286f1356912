//! What every backend must do the same, written against the storage port
//! only ([`Store`], [`crate::store::Storage`], [`UnitOfWork`]), as
//! `object_store`'s `integration.rs` is for its stores: each backend's
//! tests call these with a fresh store of their own. Also the fixtures
//! those tests share.

use crate::domain::machine::{self, NewPromotion};
use crate::domain::model::{CheckReport, CheckStatus, Time};
use crate::domain::policy::{Approver, EnvironmentPolicy, Principal};
use crate::store::{StoreError, UnitOfWork};
use std::time::Duration;

/// The digest every fixture promotes.
pub fn digest() -> String {
    format!("sha256:{}", "a".repeat(64))
}

/// One approval from `bob` moves production.
pub fn policy() -> EnvironmentPolicy {
    EnvironmentPolicy {
        name: "production".into(),
        tag: "production".into(),
        requires: None,
        approvers: vec![Approver::parse("bob")],
        required_approvals: 1,
        allow_self_approval: false,
        approval_ttl: Duration::from_secs(60),
        apply_deadline: None,
        required_groups: Vec::new(),
        required_checks: Vec::new(),
        min_soak: None,
        window: None,
        break_glass: Vec::new(),
        rollback_approvals: 1,
        freezes: Vec::new(),
        restore_on_drift: false,
        attach_record: false,
        signature_keys: Vec::new(),
    }
}

pub fn who(name: &str) -> Principal {
    Principal::new(name, vec![])
}

/// A request to promote [`digest`] in `repository` to production, with the
/// idempotency key `key` ("" for none).
pub fn new_promotion(repository: &str, key: &str) -> NewPromotion {
    NewPromotion {
        repository: repository.into(),
        environment: "production".into(),
        source: "staging".into(),
        digest: digest(),
        reason: "test".into(),
        request_id: key.into(),
        project: String::new(),
        rollback: false,
    }
}

/// A passed report of `check` for [`digest`] in `repository`.
pub fn report(repository: &str, check: &str, at: Time) -> CheckReport {
    CheckReport {
        repository: repository.into(),
        digest: digest(),
        check: check.into(),
        status: CheckStatus::Passed,
        reported_by: "ci".into(),
        time: at,
        details_url: String::new(),
        comment: String::new(),
    }
}

/// A write job that commits every kind of record: promotion 1 of `r.io/a`
/// requested by alice and approved by bob, promotion 2 of `r.io/b`
/// requested with the key `k1` and rejected, and (`reports`; store format 2
/// had none) a check report, an entry about no promotion.
pub fn every_kind(uow: &mut dyn UnitOfWork, reports: bool) -> Result<(), StoreError> {
    let policy = policy();
    let now = uow.now();
    let first = machine::request(
        uow.next_id(),
        new_promotion("r.io/a", ""),
        &who("alice"),
        &policy,
        now,
    );
    uow.commit(&first.promotion, first.event)?;
    let approved = machine::approve(&first.promotion, &who("bob"), &policy, "lgtm", now)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    uow.commit(&approved.promotion, approved.event)?;
    let second = machine::request(
        uow.next_id(),
        new_promotion("r.io/b", "k1"),
        &who("alice"),
        &policy,
        now,
    );
    uow.commit(&second.promotion, second.event)?;
    let rejected = machine::reject(&second.promotion, &who("bob"), &policy, "no", now)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    uow.commit(&rejected.promotion, rejected.event)?;
    if reports {
        uow.record(report("r.io/a", "e2e", now).event(), now)?;
    }
    Ok(())
}
