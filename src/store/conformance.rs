//! What every backend must do the same, written against the storage port
//! only ([`Store`], [`crate::store::Storage`], [`UnitOfWork`]), as
//! `object_store`'s `integration.rs` is for its stores: each backend's
//! tests run the whole suite on fresh stores of their own with
//! [`conformance_suite!`]. Also the fixtures those tests share.

use crate::clock::ManualClock;
use crate::domain::machine::{self, NewPromotion};
use crate::domain::model::{
    Action, CheckReport, CheckStatus, Promotion, PromotionId, State, Time, drift_detected,
    drift_restored, policy_changed,
};
use crate::domain::policy::{Approver, EnvironmentPolicy, Principal};
use crate::store::{
    HistoryFilter, ListFilter, PageRequest, Store, StoreError, StoredManifest, UnitOfWork,
};
use std::time::Duration;

/// Runs every test of the suite as a `#[tokio::test]` of the calling
/// module, each on a fresh store from `$open`: an `async fn(&ManualClock)
/// -> Option<(Store, Box<dyn std::any::Any>)>` giving the store on that
/// clock and what must live as long as it (a temp dir), or `None` to skip
/// (a backend that is not installed, outside CI).
macro_rules! conformance_suite {
    ($open:path) => {
        $crate::store::conformance::conformance_suite!(
            $open:
            a_commit_reads_back_by_id_state_request_and_history,
            a_release_member_reads_back_with_its_release,
            a_change_without_an_entry_is_refused_and_writes_nothing,
            entry_times_never_go_back_when_the_clock_does,
            check_reports_page_by_name_and_a_job_counts_them,
            manifests_and_policies_are_kept_by_digest,
            applied_and_drift_entries_say_where_a_tag_is,
        );
    };
    ($open:path: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let clock = $crate::clock::ManualClock::at($crate::store::conformance::T0);
                let Some((store, _keep)) = $open(&clock).await else {
                    return;
                };
                $crate::store::conformance::$name(store, clock).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

/// When every suite test starts: far from the machine's clock on purpose
/// (entry times come from the store's clock, not the database's).
pub const T0: Time = Time {
    seconds: 1_800_000_000,
    nanos: 0,
};

fn at(seconds: i64) -> Time {
    Time {
        seconds: T0.seconds + seconds,
        nanos: 0,
    }
}

fn page(limit: usize, newest_first: bool, after: Option<u64>) -> PageRequest {
    PageRequest {
        after,
        limit,
        newest_first,
    }
}

fn ids(promotions: &[Promotion]) -> Vec<PromotionId> {
    promotions.iter().map(|p| p.id).collect()
}

fn failed(e: machine::DomainError) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Requests a promotion of `repository` (key `key`) as alice, at the clock.
async fn request(store: &Store, repository: &str, key: &str) -> Promotion {
    let (repository, key) = (repository.to_owned(), key.to_owned());
    store
        .write(move |uow| {
            let now = uow.now();
            let id = uow.next_id();
            let o = machine::request(
                id,
                new_promotion(&repository, &key),
                &who("alice"),
                &policy(),
                now,
            );
            uow.commit(&o.promotion, o.event)?;
            Ok::<_, StoreError>(o.promotion)
        })
        .await
        .unwrap()
}

/// bob approves `p`, at the clock; `wait` makes it WAITING for a soak
/// instead of APPROVED (the store keeps whatever the domain decides).
async fn approve(store: &Store, p: &Promotion, wait: bool) -> Promotion {
    let p = p.clone();
    store
        .write(move |uow| {
            let now = uow.now();
            let o = decide_approval(&p, &who("bob"), &policy(), now)?;
            let mut after = o.promotion;
            if wait {
                after.state = State::Waiting;
                after.waiting_for = vec!["soak".into(), "window".into()];
                after.not_before = Some(now.plus(Duration::from_secs(3600)));
            }
            uow.commit(&after, o.event)?;
            Ok::<_, StoreError>(after)
        })
        .await
        .unwrap()
}

/// Checks the whole chain and that the tree covers every entry.
pub async fn verified(store: &Store, entries: u64) {
    let v = store.verify().await.unwrap();
    assert_eq!(
        (v.first_bad_sequence, v.entries_checked),
        (None, entries),
        "{}",
        v.message
    );
    assert_eq!(store.audit_len().await.unwrap(), entries);
    assert_eq!(store.tree_head().await.unwrap().size, entries);
}

/// Promotions read back whole (the fields format 4 added included) by id,
/// by state (WAITING too), by filters and pages, by idempotency key; their
/// entries by every History filter and in both directions; each change
/// published once, in order.
pub async fn a_commit_reads_back_by_id_state_request_and_history(store: Store, clock: ManualClock) {
    let mut changes = store.subscribe();
    let first = request(&store, "r.io/a", "").await;
    clock.set(at(10));
    let second = request(&store, "r.io/b", "k1").await;
    clock.set(at(20));
    let approved = approve(&store, &first, false).await;
    clock.set(at(30));
    let third = request(&store, "r.io/a", "").await;
    clock.set(at(40));
    let waiting = approve(&store, &third, true).await;
    let mut published = Vec::new();
    for _ in 0..5 {
        published.push(changes.recv().await.unwrap());
    }
    assert_eq!(
        published
            .iter()
            .map(|c| c.entry.sequence)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(published[4].promotion, waiting);
    assert!(changes.try_recv().is_err(), "published twice");

    assert_eq!(store.get(first.id).await.unwrap(), Some(approved.clone()));
    assert_eq!(store.get(waiting.id).await.unwrap(), Some(waiting.clone()));
    assert_eq!(store.get(99).await.unwrap(), None);
    assert_eq!(store.get(u64::MAX).await.unwrap(), None);
    assert_eq!(
        store.in_state(State::Waiting).await.unwrap(),
        std::slice::from_ref(&waiting)
    );
    assert_eq!(
        ids(&store.in_state(State::Approved).await.unwrap()),
        [first.id]
    );
    assert_eq!(
        ids(&store.in_state(State::PendingApproval).await.unwrap()),
        [second.id]
    );
    assert!(store.in_state(State::Promoted).await.unwrap().is_empty());
    let list = |filter: ListFilter, p: PageRequest| {
        let store = store.clone();
        async move {
            let page = store.list(filter, p).await.unwrap();
            (ids(&page.items), page.more)
        }
    };
    let waiting_only = ListFilter {
        state: Some(State::Waiting),
        ..Default::default()
    };
    assert_eq!(
        list(waiting_only, page(10, false, None)).await,
        (vec![3], false)
    );
    let in_a = ListFilter {
        repository: Some("r.io/a".into()),
        ..Default::default()
    };
    assert_eq!(list(in_a, page(10, true, None)).await, (vec![3, 1], false));
    let production = ListFilter {
        environment: Some("production".into()),
        ..Default::default()
    };
    assert_eq!(
        list(production.clone(), page(2, false, None)).await,
        (vec![1, 2], true)
    );
    assert_eq!(
        list(production.clone(), page(2, false, Some(2))).await,
        (vec![3], false)
    );
    assert_eq!(
        list(production, page(2, true, Some(3))).await,
        (vec![2, 1], false)
    );
    let staging = ListFilter {
        environment: Some("staging".into()),
        ..Default::default()
    };
    assert_eq!(list(staging, page(10, false, None)).await, (vec![], false));
    assert_eq!(
        store.find_request("alice", "k1").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.find_request("bob", "k1").await.unwrap(), None);
    assert_eq!(store.find_request("alice", "").await.unwrap(), None);

    let history = |filter: HistoryFilter, p: PageRequest| {
        let store = store.clone();
        async move {
            let page = store.history(filter, p).await.unwrap();
            let seqs: Vec<u64> = page.items.iter().map(|e| e.sequence).collect();
            (seqs, page.more)
        }
    };
    let all = store
        .history(HistoryFilter::default(), page(10, false, None))
        .await
        .unwrap()
        .items;
    assert_eq!(
        all,
        published
            .iter()
            .map(|c| c.entry.clone())
            .collect::<Vec<_>>()
    );
    let by = |f: fn(&mut HistoryFilter)| {
        let mut filter = HistoryFilter::default();
        f(&mut filter);
        filter
    };
    assert_eq!(
        history(
            by(|f| f.repository = Some("r.io/b".into())),
            page(10, false, None)
        )
        .await,
        (vec![2], false)
    );
    assert_eq!(
        history(by(|f| f.promotion_id = Some(1)), page(10, false, None)).await,
        (vec![1, 3], false)
    );
    assert_eq!(
        history(
            by(|f| f.promotion_id = Some(u64::MAX)),
            page(10, false, None)
        )
        .await,
        (vec![], false)
    );
    assert_eq!(
        history(
            by(|f| f.environment = Some("production".into())),
            page(10, true, None)
        )
        .await,
        (vec![5, 4, 3, 2, 1], false)
    );
    assert_eq!(
        history(
            by(|f| {
                f.since = Some(at(15));
                f.until = Some(at(30));
            }),
            page(10, false, None)
        )
        .await,
        (vec![3, 4], false)
    );
    assert_eq!(
        history(HistoryFilter::default(), page(2, true, None)).await,
        (vec![5, 4], true)
    );
    assert_eq!(
        history(HistoryFilter::default(), page(2, true, Some(4))).await,
        (vec![3, 2], true)
    );
    assert_eq!(
        history(HistoryFilter::default(), page(2, false, Some(4))).await,
        (vec![5], false)
    );
    verified(&store, 5).await;
}

/// A release's member (store format 5) keeps its `release_id` through every
/// read, the change published and a change of state; a promotion of its own
/// has none.
pub async fn a_release_member_reads_back_with_its_release(store: Store, clock: ManualClock) {
    let mut changes = store.subscribe();
    let member = store
        .write(|uow| {
            let now = uow.now();
            let id = uow.next_id();
            let mut o = machine::request(
                id,
                new_promotion("r.io/a", "k7"),
                &who("alice"),
                &policy(),
                now,
            );
            o.promotion.release_id = Some(7);
            uow.commit(&o.promotion, o.event)?;
            Ok::<_, StoreError>(o.promotion)
        })
        .await
        .unwrap();
    assert_eq!(member.release_id, Some(7));
    clock.set(at(10));
    let alone = request(&store, "r.io/b", "").await;
    assert_eq!(alone.release_id, None);
    assert_eq!(changes.recv().await.unwrap().promotion, member);
    assert_eq!(changes.recv().await.unwrap().promotion, alone);

    assert_eq!(store.get(member.id).await.unwrap(), Some(member.clone()));
    assert_eq!(store.get(alone.id).await.unwrap(), Some(alone.clone()));
    assert_eq!(
        store.find_request("alice", "k7").await.unwrap(),
        Some(member.clone())
    );
    assert_eq!(
        store.in_state(State::PendingApproval).await.unwrap(),
        [member.clone(), alone.clone()]
    );
    clock.set(at(20));
    let waiting = approve(&store, &member, true).await;
    assert_eq!(waiting.release_id, Some(7));
    assert_eq!(changes.recv().await.unwrap().promotion, waiting);
    assert_eq!(store.get(member.id).await.unwrap(), Some(waiting.clone()));
    assert_eq!(
        store.in_state(State::Waiting).await.unwrap(),
        std::slice::from_ref(&waiting)
    );
    let listed = store
        .list(ListFilter::default(), page(10, false, None))
        .await
        .unwrap()
        .items;
    assert_eq!(listed, [waiting, alone]);
    verified(&store, 3).await;
}

/// A job that changes a promotion without an audit entry is refused and
/// writes nothing; one that changes nothing is answered.
pub async fn a_change_without_an_entry_is_refused_and_writes_nothing(
    store: Store,
    _clock: ManualClock,
) {
    let p = request(&store, "r.io/a", "").await;
    let mut edited = p.clone();
    edited.reason = "edited".into();
    let e = store
        .write(move |uow| uow.commit(&edited, None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Unaudited(id) if id == p.id),
        "{e:?}"
    );
    let unknown = Promotion { id: 7, ..p.clone() };
    let e = store
        .write(move |uow| uow.commit(&unknown, None))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unaudited(7)), "{e:?}");
    let same = p.clone();
    let nothing = store
        .write(move |uow| {
            let entry = uow.commit(&same, None)?;
            Ok::<_, StoreError>((entry, uow.writes()))
        })
        .await
        .unwrap();
    assert_eq!(nothing, (None, 0));
    assert_eq!(store.get(p.id).await.unwrap(), Some(p));
    assert_eq!(store.get(7).await.unwrap(), None);
    verified(&store, 1).await;
}

/// Entry times follow sequence order: a clock that steps back reads as
/// the last entry's time, and so does an earlier time asked for.
pub async fn entry_times_never_go_back_when_the_clock_does(store: Store, clock: ManualClock) {
    clock.set(at(100));
    let first = store
        .write(|uow| {
            let now = uow.now();
            uow.record(policy_changed("sha256:one"), now)
        })
        .await
        .unwrap();
    assert_eq!(first.time, at(100));
    clock.set(at(50));
    let (now, second) = store
        .write(|uow| {
            let now = uow.now();
            let entry = uow.record(policy_changed("sha256:two"), at(10))?;
            Ok::<_, StoreError>((now, entry))
        })
        .await
        .unwrap();
    assert_eq!((now, second.time), (at(100), at(100)));
    // A promotion stamped by the stepped-back clock is still entered after.
    let p = store
        .write(|uow| {
            let o = machine::request(
                uow.next_id(),
                new_promotion("r.io/a", ""),
                &who("alice"),
                &policy(),
                at(60),
            );
            uow.commit(&o.promotion, o.event)?;
            Ok::<_, StoreError>(o.promotion)
        })
        .await
        .unwrap();
    clock.set(at(200));
    let third = store
        .write(|uow| {
            let now = uow.now();
            uow.record(policy_changed("sha256:three"), now)
        })
        .await
        .unwrap();
    assert_eq!(third.time, at(200));
    let times: Vec<Time> = store
        .history(HistoryFilter::default(), page(10, false, None))
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| e.time)
        .collect();
    assert_eq!(times, [at(100), at(100), at(100), at(200)]);
    assert_eq!(store.get(p.id).await.unwrap(), Some(p));
    verified(&store, 4).await;
}

/// A digest's latest report per check, paged in byte order of the names,
/// never into another digest's or repository's; a job sees what a report
/// would add.
pub async fn check_reports_page_by_name_and_a_job_counts_them(store: Store, _clock: ManualClock) {
    let mut records = store.subscribe_records();
    let other = format!("sha256:{}", "c".repeat(64));
    let mut reports = Vec::new();
    for (repository, digest, check) in [
        ("r.io/a", digest(), "b"),
        ("r.io/a", digest(), "ab"),
        ("r.io/a", digest(), "a-b"),
        ("r.io/a", digest(), "a"),
        ("r.io/a", other.clone(), "a0"),
        ("r.io/ab", digest(), "a0"),
    ] {
        let mut r = report(repository, check, T0);
        r.digest = digest;
        reports.push(r);
    }
    // "b" again, failed: the latest report counts.
    let mut failed_b = report("r.io/a", "b", T0);
    failed_b.status = CheckStatus::Failed;
    failed_b.details_url = "https://ci.example/2".into();
    reports.push(failed_b.clone());
    let recorded = store
        .write(move |uow| {
            let mut out = Vec::new();
            for r in &reports {
                let now = uow.now();
                out.push(uow.record(r.event(), now)?);
            }
            Ok::<_, StoreError>(out)
        })
        .await
        .unwrap();
    for entry in &recorded {
        assert_eq!(&records.recv().await.unwrap(), entry);
    }
    let names = store
        .write(|uow| {
            Ok::<_, StoreError>([
                uow.check_names("r.io/a", &digest(), "ab", 10)?,
                uow.check_names("r.io/a", &digest(), "zz", 3)?,
                uow.check_names("r.io/b", &digest(), "a", 10)?,
            ])
        })
        .await
        .unwrap()
        .map(|n| (n.known, n.distinct));
    assert_eq!(
        names,
        [(true, 4), (false, 3), (false, 0)],
        "counted up to 3"
    );
    let names_page = |after: Option<&'static str>, limit| {
        let store = store.clone();
        async move {
            let p = store
                .checks_page("r.io/a", &digest(), after, limit)
                .await
                .unwrap();
            (
                p.items.into_iter().map(|c| c.check).collect::<Vec<_>>(),
                p.more,
            )
        }
    };
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(names_page(None, 2).await, (owned(&["a", "a-b"]), true));
    assert_eq!(
        names_page(Some("a-b"), 2).await,
        (owned(&["ab", "b"]), false)
    );
    assert_eq!(names_page(Some("b"), 2).await, (owned(&[]), false));
    // A name that was never reported still says where to go on.
    assert_eq!(
        names_page(Some("a0"), 10).await,
        (owned(&["ab", "b"]), false)
    );
    let all = store.checks("r.io/a", &digest()).await.unwrap();
    assert_eq!(all.len(), 4);
    let latest_b = all.iter().find(|c| c.check == "b").unwrap();
    assert_eq!(
        latest_b,
        &CheckReport {
            time: recorded[6].time,
            ..failed_b
        }
    );
    assert!(store.checks("r.io/b", &digest()).await.unwrap().is_empty());
    // Reports are about no promotion: none is published as a change.
    assert!(store.subscribe().try_recv().is_err());
    verified(&store, 7).await;
}

/// Pinned manifests by repository and digest; policy versions by digest,
/// with the time of the entry that first recorded them.
pub async fn manifests_and_policies_are_kept_by_digest(store: Store, clock: ManualClock) {
    let manifest = StoredManifest {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: br#"{"schemaVersion":2}"#.to_vec(),
    };
    let pinned = manifest.clone();
    let (nothing, latest) = store
        .write(move |uow| {
            let latest = uow.latest_policy()?;
            uow.put_manifest("r.io/a", &digest(), &pinned)?;
            // Content-addressed: pinning it again is harmless.
            uow.put_manifest("r.io/a", &digest(), &pinned)?;
            uow.put_policy("sha256:one", r#"{"v":1}"#)?;
            let entry = uow.record(policy_changed("sha256:one"), at(1))?;
            Ok::<_, StoreError>((latest, entry))
        })
        .await
        .unwrap();
    assert_eq!(nothing, None);
    assert_eq!(
        store.manifest("r.io/a", &digest()).await.unwrap(),
        Some(manifest)
    );
    assert_eq!(store.manifest("r.io/b", &digest()).await.unwrap(), None);
    clock.set(at(50));
    let seen = store
        .write(|uow| {
            let before = uow.latest_policy()?;
            uow.put_policy("sha256:two", r#"{"v":2}"#)?;
            uow.record(policy_changed("sha256:two"), at(50))?;
            // Back to the first version: recorded again, first seen before.
            uow.record(policy_changed("sha256:one"), at(60))?;
            // Kept but never recorded (a job cut short before its entry).
            uow.put_policy("sha256:three", r#"{"v":3}"#)?;
            Ok::<_, StoreError>((before, uow.latest_policy()?))
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        (Some("sha256:one".to_owned()), Some("sha256:one".to_owned()))
    );
    let one = store.policy("sha256:one").await.unwrap().unwrap();
    assert_eq!(
        (one.canonical_json.as_str(), one.first_recorded),
        (r#"{"v":1}"#, latest.time)
    );
    let two = store.policy("sha256:two").await.unwrap().unwrap();
    assert_eq!(
        (two.digest.as_str(), two.first_recorded),
        ("sha256:two", at(50))
    );
    assert_eq!(store.policy("sha256:three").await.unwrap(), None);
    assert_eq!(store.policy("sha256:none").await.unwrap(), None);
    verified(&store, 3).await;
}

/// The APPLIED entry that put a tag where it is (or was), the tags
/// prodgate moved, and the drift recorded after.
pub async fn applied_and_drift_entries_say_where_a_tag_is(store: Store, clock: ManualClock) {
    let rogue = format!("sha256:{}", "b".repeat(64));
    let p = request(&store, "r.io/a", "").await;
    let approved = approve(&store, &p, false).await;
    assert!(store.moved_tags().await.unwrap().is_empty());
    assert_eq!(
        store
            .deployed_at("r.io/a", "production", None)
            .await
            .unwrap(),
        None
    );
    clock.set(at(100));
    let applied = store
        .write(move |uow| {
            let now = uow.now();
            let o = machine::applied(&approved, "", now).map_err(failed)?;
            uow.commit(&o.promotion, o.event)
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(applied.event.action, Action::Applied);
    let pair = vec![("r.io/a".to_owned(), "production".to_owned())];
    assert_eq!(store.moved_tags().await.unwrap(), pair);
    let deployed = |at: Option<Time>| {
        let store = store.clone();
        async move { store.deployed_at("r.io/a", "production", at).await.unwrap() }
    };
    assert_eq!(deployed(None).await, Some(applied.clone()));
    assert_eq!(deployed(Some(at(99))).await, None);
    assert_eq!(deployed(Some(at(100))).await, Some(applied.clone()));
    let detected = store
        .write(move |uow| {
            uow.record(
                drift_detected("r.io/a", "production", &rogue, &digest()),
                at(200),
            )
        })
        .await
        .unwrap();
    let record = |at: Option<Time>| {
        let store = store.clone();
        async move { store.tag_record("r.io/a", "production", at).await.unwrap() }
    };
    let now = record(None).await.unwrap();
    assert_eq!(
        (now.applied.clone(), now.expected()),
        (applied.clone(), digest().as_str())
    );
    assert_eq!(now.drift, std::slice::from_ref(&detected));
    assert!(now.drifted());
    let before = record(Some(at(150))).await.unwrap();
    assert!(before.drift.is_empty() && !before.drifted());
    let restored = store
        .write(|uow| {
            uow.record(
                drift_restored("r.io/a", "production", &digest(), "sha256:rogue"),
                at(300),
            )
        })
        .await
        .unwrap();
    let now = record(None).await.unwrap();
    assert_eq!(now.drift, [detected, restored]);
    assert!(!now.drifted());
    assert_eq!(record(Some(at(50))).await, None);
    assert_eq!(
        store.tag_record("r.io/a", "staging", None).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .tag_record("r.io/b", "production", None)
            .await
            .unwrap(),
        None
    );
    verified(&store, 5).await;
}

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
        attest: false,
        signature_keys: Vec::new(),
        wait_ttl: Duration::from_secs(7 * 24 * 3600),
    }
}

/// `who` approves `p` as the service decides it (`domain::decision`) where
/// no gate but the approvals is configured: the last approval makes it
/// APPROVED.
pub fn decide_approval(
    p: &Promotion,
    who: &Principal,
    policy: &EnvironmentPolicy,
    now: Time,
) -> Result<machine::Outcome, StoreError> {
    let facts = crate::domain::decision::bare_facts(policy, now);
    crate::domain::decision::approve(p, who, false, "lgtm", &facts)
        .map_err(|r| StoreError::Backend(format!("{r:?}")))
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
    let mut approved = decide_approval(&first.promotion, &who("bob"), &policy, now)?;
    // Without the `policy` attribute the decision stamps: every kind of
    // record here must also be writable in format 2, which had none.
    if let Some(e) = &mut approved.event {
        e.attributes.clear();
    }
    uow.commit(&approved.promotion, approved.event)?;
    let mut second = machine::request(
        uow.next_id(),
        new_promotion("r.io/b", "k1"),
        &who("alice"),
        &policy,
        now,
    );
    // Without the `request_id` attribute, for the same reason.
    if let Some(e) = &mut second.event {
        e.attributes.clear();
    }
    uow.commit(&second.promotion, second.event)?;
    let rejected = machine::reject(&second.promotion, &who("bob"), &policy, "no", now)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    uow.commit(&rejected.promotion, rejected.event)?;
    if reports {
        uow.record(report("r.io/a", "e2e", now).event(), now)?;
    }
    Ok(())
}
