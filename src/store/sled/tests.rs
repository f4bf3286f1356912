//! The crash paths of the store's derived records: finishing a derivation a
//! crash cut short, and rolling back entries a failed flush refused.

use super::derive::{redo_derived, roll_back};
use super::writer::{Tx, WriterState};
use super::*;
use crate::clock::SystemClock;
use crate::domain::machine::{self, NewPromotion};
use crate::domain::policy::{Approver, EnvironmentPolicy, Principal};
use crate::store::UnitOfWork;
use std::time::Duration;

fn trees() -> Trees {
    Trees::open(sled::Config::new().temporary(true).open().unwrap()).unwrap()
}

type Dump = Vec<(sled::IVec, sled::IVec)>;

/// Everything derived from the audit log.
fn derived(t: &Trees) -> (Dump, Dump) {
    let all = |tree: &sled::Tree| tree.iter().map(Result::unwrap).collect();
    (all(&t.promotions), all(&t.index))
}

fn restore(t: &Trees, (promotions, index): &(Dump, Dump)) {
    for (tree, dump) in [(&t.promotions, promotions), (&t.index, index)] {
        tree.clear().unwrap();
        for (k, v) in dump {
            tree.insert(k, v).unwrap();
        }
    }
}

/// One approval from `bob` moves production.
fn policy() -> EnvironmentPolicy {
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
        wait_ttl: Duration::from_secs(7 * 24 * 3600),
    }
}

/// Commits like the writer does: request promotion 1, request promotion 2
/// (with an idempotency key), then reject 1. Returns the derived state
/// after each commit.
fn three_commits(t: &Trees) -> Vec<(Dump, Dump)> {
    let policy = policy();
    let who = |name: &str| Principal::new(name, vec![]);
    let new = |repo: &str, key: &str| NewPromotion {
        repository: repo.into(),
        environment: "production".into(),
        source: "staging".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        reason: "test".into(),
        request_id: key.into(),
        project: String::new(),
        rollback: false,
    };
    let mut state = WriterState::load(t.clone(), Arc::new(SystemClock)).unwrap();
    let (mut changed, mut recorded) = (Vec::new(), Vec::new());
    let mut tx = Tx {
        state: &mut state,
        changed: &mut changed,
        recorded: &mut recorded,
        writes: 0,
    };
    let mut after = Vec::new();
    let now = tx.now();
    let first = machine::request(1, new("r.io/a", ""), &who("alice"), &policy, now);
    tx.commit(&first.promotion, first.event).unwrap();
    after.push(derived(t));
    let second = machine::request(2, new("r.io/b", "k1"), &who("alice"), &policy, now);
    tx.commit(&second.promotion, second.event).unwrap();
    after.push(derived(t));
    let rejected = machine::reject(&first.promotion, &who("bob"), &policy, "no", now).unwrap();
    tx.commit(&rejected.promotion, rejected.event).unwrap();
    after.push(derived(t));
    after
}

#[test]
fn a_derivation_cut_short_is_finished_on_open() {
    let t = trees();
    let after = three_commits(&t);
    // A crash after the reject's audit record, before any derived write.
    restore(&t, &after[1]);
    redo_derived(&t).unwrap();
    assert_eq!(derived(&t), after[2]);
    // Nothing left to do: running it again changes nothing.
    redo_derived(&t).unwrap();
    assert_eq!(derived(&t), after[2]);
}

#[test]
fn refused_entries_are_rolled_back_to_the_horizon() {
    let t = trees();
    let after = three_commits(&t);
    roll_back(&t, 2).unwrap();
    assert_eq!(derived(&t), after[1]);
    assert_eq!(t.audit.len(), 2);
    // A refused entry whose derivation was itself cut short.
    let t = trees();
    let after = three_commits(&t);
    restore(&t, &after[1]);
    roll_back(&t, 1).unwrap();
    assert_eq!(derived(&t), after[0]);
    roll_back(&t, 0).unwrap();
    assert_eq!(derived(&t), (vec![], vec![]));
    assert!(t.audit.is_empty());
}

/// The directory's database without sled's background flusher thread,
/// which can still hold the directory's lock for a moment after the last
/// handle is dropped: these tests reopen the same directory at once (and
/// flush explicitly).
/// Opens the store at `dir` for the server once the handles a test dropped
/// have let go of it: sled's own threads can hold the directory's lock a
/// moment after the last handle drops (seen in CI on a busy machine). The
/// wait is bounded; any other error fails at once.
fn reopen(dir: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir, Arc::new(SystemClock)) {
            Ok(store) => return store,
            Err(e) if e.to_string().contains("in use") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot reopen {}: {e}", dir.display()),
        }
    }
}

fn open_without_flusher(dir: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .unwrap()
}

#[test]
fn a_data_directory_of_the_earlier_format_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Format 1 had no marker and stored JSON audit entries.
        let db = open_without_flusher(dir.path());
        let audit = db.open_tree("audit").unwrap();
        audit.insert(keys::u64_key(1), &b"{}"[..]).unwrap();
        db.flush().unwrap();
    }
    let Err(e) = SledStore::open(dir.path(), Arc::new(SystemClock)) else {
        panic!("a format 1 directory was opened");
    };
    assert!(matches!(e, StoreError::Format { .. }), "{e}");
    assert!(e.to_string().contains("store format 1"), "{e}");
    assert!(e.to_string().contains("format 3"), "{e}");
}

#[tokio::test]
async fn a_format_2_directory_is_migrated_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let (promotions, entries) = {
        let db = open_without_flusher(dir.path());
        let t = Trees::open(db).unwrap();
        three_commits(&t);
        let snapshot = |tree: &sled::Tree| -> Vec<_> { tree.iter().map(Result::unwrap).collect() };
        let promotions: Vec<Promotion> = snapshot(&t.promotions)
            .iter()
            .map(|(k, v)| codec::decode_promotion(k, v).unwrap().promotion)
            .collect();
        let entries: Vec<AuditEntry> = snapshot(&t.audit)
            .iter()
            .map(|(k, v)| codec::decode_entry(k, v).unwrap())
            .collect();
        // Format 2 is format 3 without the promotion's last five fields
        // (`superseded_by`, `break_glass`, `project`, `rollback`,
        // `policy_digest`: 0x00 each for None, false, "", false and ""), without the event's
        // last field (`attributes`, one 0x00 byte for an empty map) and
        // without the index of promotions by environment. postcard writes
        // fields in order without names, so a tuple of the old fields is
        // the old encoding.
        for (k, v) in snapshot(&t.promotions) {
            assert!(v.ends_with(&[0, 0, 0, 0, 0]));
            t.promotions.insert(k, &v[..v.len() - 5]).unwrap();
        }
        for (k, v) in snapshot(&t.audit) {
            let r = codec::decode_record(&k, &v).unwrap();
            let (e, ev) = (&r.entry, &r.entry.event);
            assert!(ev.attributes.is_empty());
            let mut old = postcard::to_stdvec(&(
                e.sequence,
                e.time,
                (
                    ev.action,
                    &ev.actor,
                    ev.promotion_id,
                    &ev.repository,
                    &ev.environment,
                    &ev.digest,
                    &ev.previous_digest,
                    &ev.comment,
                ),
                e.prev_hash,
                e.hash,
            ))
            .unwrap();
            let promotion = codec::encode(r.promotion.as_ref().unwrap());
            assert!(promotion.ends_with(&[0, 0, 0, 0, 0]));
            old.extend_from_slice(&promotion[..promotion.len() - 5]);
            t.audit.insert(k, old).unwrap();
        }
        // verify-log checks a format 2 store as it is.
        t.meta.insert(keys::FORMAT, &keys::u64_key(2)).unwrap();
        t.db.flush().unwrap();
        drop(t);
        horizon::Horizon::open(dir.path()).unwrap();
        let v = verify_offline(dir.path()).unwrap();
        assert_eq!(v.first_bad_sequence, None, "{}", v.message);
        assert_eq!(v.entries_checked, 3);
        let db = open_without_flusher(dir.path());
        let t = Trees::open(db).unwrap();
        for (k, _) in snapshot(&t.index) {
            if k.first() == Some(&b'e') {
                t.index.remove(k).unwrap();
            }
        }
        t.meta.insert(keys::FORMAT, &keys::u64_key(2)).unwrap();
        t.db.flush().unwrap();
        (promotions, entries)
    };
    let store = open(dir.path(), Arc::new(SystemClock)).unwrap();
    for p in &promotions {
        assert_eq!(store.get(p.id).await.unwrap().as_ref(), Some(p));
    }
    let page = |newest_first| PageRequest {
        after: None,
        limit: 10,
        newest_first,
    };
    let history = store
        .history(HistoryFilter::default(), page(false))
        .await
        .unwrap();
    assert_eq!(history.items, entries);
    assert!(store.verify().await.unwrap().first_bad_sequence.is_none());
    let by_env = store
        .list(
            ListFilter {
                environment: Some("production".into()),
                ..Default::default()
            },
            page(true),
        )
        .await
        .unwrap();
    assert_eq!(
        by_env.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![2, 1]
    );
}

/// A store written with one sled key per Merkle node (tree `merkle`, the
/// first layout) has its nodes in chunks after a start, the same root, and
/// the old tree gone.
#[tokio::test]
async fn merkle_nodes_of_the_first_layout_move_to_chunks_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let root = {
        let t = Trees::open(open_without_flusher(dir.path())).unwrap();
        three_commits(&t);
        let root = crate::store::merkle::root(3, &t.merkle).unwrap();
        let old = t.db.open_tree("merkle").unwrap();
        for i in 0..t.merkle.stored().unwrap() {
            let node = crate::store::merkle::NodeReader::node(&t.merkle, i)
                .unwrap()
                .unwrap();
            old.insert(keys::u64_key(i), &node).unwrap();
        }
        t.db.drop_tree("merkle_chunks").unwrap();
        t.meta
            .insert(keys::FORMAT, &keys::u64_key(FORMAT_VERSION))
            .unwrap();
        t.db.flush().unwrap();
        root
    };
    horizon::Horizon::open(dir.path()).unwrap();
    let store = reopen(dir.path());
    assert_eq!(store.tree_root(3).await.unwrap(), root);
    let names = store.trees.db.tree_names();
    assert!(!names.iter().any(|n| n.as_ref() == b"merkle"));
    assert!(store.trees.merkle.stored().unwrap() >= crate::store::merkle::stored_count(3));
}

/// Merkle nodes still in memory when the process died (the writer writes
/// the chunk being filled at the end of each batch) are rebuilt at open,
/// also when the last entry's derivation was cut short: finishing it must
/// not need the lost nodes.
#[tokio::test]
async fn merkle_nodes_lost_in_a_crash_are_rebuilt_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let root = {
        let t = Trees::open(open_without_flusher(dir.path())).unwrap();
        let after = three_commits(&t);
        restore(&t, &after[1]);
        t.meta
            .insert(keys::FORMAT, &keys::u64_key(FORMAT_VERSION))
            .unwrap();
        t.db.flush().unwrap();
        crate::store::merkle::root(3, &t.merkle).unwrap()
    };
    horizon::Horizon::open(dir.path()).unwrap();
    let store = reopen(dir.path());
    assert_eq!(store.tree_root(3).await.unwrap(), root);
}

/// Check reports are entries about no promotion: the latest per check
/// counts, and the crash paths treat them like any other entry.
#[test]
fn check_reports_keep_the_latest_per_check_through_redo_and_roll_back() {
    use crate::domain::model::{CheckReport, CheckStatus};
    let t = trees();
    let digest = format!("sha256:{}", "b".repeat(64));
    let report = |check: &str, status| CheckReport {
        repository: "r.io/a".into(),
        digest: digest.clone(),
        check: check.into(),
        status,
        reported_by: "ci".into(),
        time: Time::ZERO,
        details_url: "https://ci.example/1".into(),
        comment: String::new(),
    };
    let mut state = WriterState::load(t.clone(), Arc::new(SystemClock)).unwrap();
    let (mut changed, mut recorded) = (Vec::new(), Vec::new());
    let mut tx = Tx {
        state: &mut state,
        changed: &mut changed,
        recorded: &mut recorded,
        writes: 0,
    };
    let mut after = Vec::new();
    for r in [
        report("e2e", CheckStatus::Passed),
        report("scan", CheckStatus::Passed),
        report("e2e", CheckStatus::Failed),
    ] {
        let now = tx.now();
        tx.record(r.event(), now).unwrap();
        after.push(derived(&t));
    }
    assert!(
        changed.is_empty(),
        "check reports are not promotion changes"
    );
    let latest = |t: &Trees| {
        let mut v: Vec<(String, CheckStatus)> = t
            .checks_page("r.io/a", &digest, None, usize::MAX)
            .unwrap()
            .items
            .into_iter()
            .map(|c| (c.check, c.status))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(
        latest(&t),
        [
            ("e2e".to_owned(), CheckStatus::Failed),
            ("scan".to_owned(), CheckStatus::Passed)
        ]
    );
    assert!(
        t.checks_page("r.io/a", &format!("sha256:{}", "c".repeat(64)), None, 10)
            .unwrap()
            .items
            .is_empty()
    );
    // A crash after the last record, before its index: finished on open.
    restore(&t, &after[1]);
    redo_derived(&t).unwrap();
    assert_eq!(derived(&t), after[2]);
    // A refused flush of the last report: the one before it is latest again.
    roll_back(&t, 2).unwrap();
    assert_eq!(derived(&t), after[1]);
    assert_eq!(
        latest(&t),
        [
            ("e2e".to_owned(), CheckStatus::Passed),
            ("scan".to_owned(), CheckStatus::Passed)
        ]
    );
    assert!(
        t.verify_from(Verifier::default())
            .unwrap()
            .0
            .first_bad_sequence
            .is_none()
    );
}

#[test]
fn moved_tags_and_tag_records_follow_applied_and_drift_entries() {
    use super::derive::index_moved_tags;
    use crate::domain::model::{Action, drift_detected};
    let t = trees();
    let who = |name: &str| Principal::new(name, vec![]);
    let digest = format!("sha256:{}", "a".repeat(64));
    let rogue = format!("sha256:{}", "b".repeat(64));
    let new = NewPromotion {
        repository: "r.io/a".into(),
        environment: "production".into(),
        source: "staging".into(),
        digest: digest.clone(),
        reason: "test".into(),
        request_id: String::new(),
        project: String::new(),
        rollback: false,
    };
    let mut state = WriterState::load(t.clone(), Arc::new(SystemClock)).unwrap();
    let (mut changed, mut recorded) = (Vec::new(), Vec::new());
    let mut tx = Tx {
        state: &mut state,
        changed: &mut changed,
        recorded: &mut recorded,
        writes: 0,
    };
    let now = tx.now();
    let requested = machine::request(1, new, &who("alice"), &policy(), now);
    tx.commit(&requested.promotion, requested.event).unwrap();
    let mut approved =
        machine::approve(&requested.promotion, &who("bob"), &policy(), "", now).unwrap();
    // What `decision::approve` makes of it where no other gate is configured.
    approved.promotion.state = crate::domain::model::State::Approved;
    tx.commit(&approved.promotion, approved.event).unwrap();
    assert!(t.moved_tags().unwrap().is_empty());
    assert_eq!(t.tag_record("r.io/a", "production", None).unwrap(), None);
    let applied = machine::applied(&approved.promotion, "", now).unwrap();
    tx.commit(&applied.promotion, applied.event).unwrap();
    let event = drift_detected("r.io/a", "production", &rogue, &digest);
    let drift = tx.record(event, now).unwrap();
    assert_eq!(recorded, vec![drift.clone()], "published as a record");
    let pair = vec![("r.io/a".to_owned(), "production".to_owned())];
    assert_eq!(t.moved_tags().unwrap(), pair);
    let record = t.tag_record("r.io/a", "production", None).unwrap().unwrap();
    assert_eq!(record.applied.event.action, Action::Applied);
    assert_eq!(record.expected(), digest);
    assert_eq!(record.drift, vec![drift]);
    assert!(record.drifted());
    assert_eq!(t.tag_record("r.io/a", "staging", None).unwrap(), None);

    // A directory from before the index gets it when opened.
    t.index
        .remove(keys::moved_tag("r.io/a", "production"))
        .unwrap();
    t.meta.remove(keys::MOVED_TAGS).unwrap();
    index_moved_tags(&t).unwrap();
    assert_eq!(t.moved_tags().unwrap(), pair);

    // Refused by a failed flush: the drift entry, then the APPLIED one.
    roll_back(&t, 3).unwrap();
    assert!(
        !t.tag_record("r.io/a", "production", None)
            .unwrap()
            .unwrap()
            .drifted()
    );
    roll_back(&t, 2).unwrap();
    assert!(t.moved_tags().unwrap().is_empty());
    assert_eq!(t.tag_record("r.io/a", "production", None).unwrap(), None);
}

/// A digest's checks page in byte order of their names, never into another
/// digest's or repository's, and a write job sees what a report would add.
#[test]
fn check_pages_follow_names_and_check_names_counts_them() {
    use crate::domain::model::{CheckReport, CheckStatus};
    let t = trees();
    let digest = format!("sha256:{}", "b".repeat(64));
    let other = format!("sha256:{}", "c".repeat(64));
    let report = |repository: &str, digest: &str, check: &str| CheckReport {
        repository: repository.into(),
        digest: digest.into(),
        check: check.into(),
        status: CheckStatus::Passed,
        reported_by: "ci".into(),
        time: Time::ZERO,
        details_url: String::new(),
        comment: String::new(),
    };
    let mut state = WriterState::load(t.clone(), Arc::new(SystemClock)).unwrap();
    let (mut changed, mut recorded) = (Vec::new(), Vec::new());
    let mut tx = Tx {
        state: &mut state,
        changed: &mut changed,
        recorded: &mut recorded,
        writes: 0,
    };
    for r in [
        report("r.io/a", &digest, "b"),
        report("r.io/a", &digest, "ab"),
        report("r.io/a", &digest, "a-b"),
        report("r.io/a", &digest, "a"),
        report("r.io/a", &other, "a0"),
        report("r.io/ab", &digest, "a0"),
    ] {
        let now = tx.now();
        tx.record(r.event(), now).unwrap();
    }
    let names = tx.check_names("r.io/a", &digest, "ab", 10).unwrap();
    assert_eq!((names.known, names.distinct), (true, 4));
    let names = tx.check_names("r.io/a", &digest, "zz", 3).unwrap();
    assert_eq!((names.known, names.distinct), (false, 3), "counted up to 3");
    let names = tx.check_names("r.io/b", &digest, "a", 10).unwrap();
    assert_eq!((names.known, names.distinct), (false, 0));
    let page = |after: Option<&str>, limit| {
        let p = t.checks_page("r.io/a", &digest, after, limit).unwrap();
        let names: Vec<String> = p.items.into_iter().map(|c| c.check).collect();
        (names, p.more)
    };
    assert_eq!(page(None, 2), (vec!["a".into(), "a-b".into()], true));
    assert_eq!(page(Some("a-b"), 2), (vec!["ab".into(), "b".into()], false));
    assert_eq!(page(Some("b"), 2), (vec![], false));
    // A name that was never reported still says where to go on.
    assert_eq!(page(Some("a0"), 10), (vec!["ab".into(), "b".into()], false));
}
