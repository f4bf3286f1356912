//! The sled backend's own promises, beyond what every backend does alike
//! (the conformance suite, run here on a fresh data directory at the end):
//! the crash paths of the derived records (finishing a derivation a crash
//! cut short, rolling back entries a failed flush refused), and opening
//! directories that earlier builds wrote.

use super::derive::{redo_derived, roll_back};
use super::writer::{Tx, WriterState};
use super::*;
use crate::clock::SystemClock;
use crate::domain::machine;
use crate::store::UnitOfWork;
use crate::store::chain::Outbox;
use crate::store::conformance::{new_promotion, policy, who};

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

/// Commits like the writer does: request promotion 1, request promotion 2
/// (with an idempotency key), then reject 1. Returns the derived state
/// after each commit.
fn three_commits(t: &Trees) -> Vec<(Dump, Dump)> {
    let policy = policy();
    let new = new_promotion;
    let mut state = WriterState::load(t.clone(), Arc::new(SystemClock)).unwrap();
    let mut outbox = Outbox::default();
    let mut tx = Tx::new(&mut state, &mut outbox);
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

/// Opens the store at `dir` for the server once the handles a test dropped
/// have let go of it: sled's own threads can hold the directory's lock a
/// moment after the last handle drops (seen in CI on a busy machine). The
/// wait is bounded; any other error fails at once.
fn reopen(dir: &std::path::Path) -> SledStore {
    when_free(|| SledStore::open(dir, Arc::new(SystemClock)))
}

/// `read`'s answer once the directory is free: a sled closed moments ago
/// may still hold its lock. The wait is bounded; any other error fails at
/// once.
fn when_free<T, E: std::fmt::Display>(read: impl Fn() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match read() {
            Ok(v) => return v,
            // prodgate's "in use" or "locked by another process", or sled's
            // own "could not acquire lock", for the same lock, depending on
            // which saw it first.
            Err(e)
                if ["in use", "locked by", "could not acquire lock"]
                    .iter()
                    .any(|m| e.to_string().contains(m))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot read the directory: {e}"),
        }
    }
}

/// The directory's database without sled's background flusher thread,
/// which can still hold the directory's lock for a moment after the last
/// handle is dropped: these tests reopen the same directory at once (and
/// flush explicitly), once a handle closed moments before has let go.
fn open_without_flusher(dir: &std::path::Path) -> sled::Db {
    when_free(|| sled::Config::new().path(dir).flush_every_ms(None).open())
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
    // Once sled's lock of the directory just closed is free.
    let e = when_free(
        || match SledStore::open(dir.path(), Arc::new(SystemClock)) {
            Ok(_) => panic!("a format 1 directory was opened"),
            Err(e @ StoreError::Format { .. }) => Ok(e),
            Err(e) => Err(e),
        },
    );
    assert!(e.to_string().contains("store format 1"), "{e}");
    assert!(e.to_string().contains("format 5"), "{e}");
}

/// [`crate::store::conformance::every_kind`] as the writer runs it.
fn every_kind(t: &Trees, reports: bool) {
    let mut state = WriterState::load(t.clone(), Arc::new(SystemClock)).unwrap();
    let mut outbox = Outbox::default();
    let mut tx = Tx::new(&mut state, &mut outbox);
    crate::store::conformance::every_kind(&mut tx, reports).unwrap();
}

/// What a store holds, read back through the port.
#[derive(Debug, PartialEq)]
struct Contents {
    promotions: Vec<Promotion>,
    approved: Vec<PromotionId>,
    by_environment: Vec<PromotionId>,
    request: Option<PromotionId>,
    entries: Vec<AuditEntry>,
    checks: usize,
    root: [u8; 32],
}

/// Reads `t` as the port's reads do (they run these on the blocking pool).
fn contents(t: &Trees) -> Contents {
    let page = PageRequest {
        after: None,
        limit: 100,
        newest_first: true,
    };
    let ids = |ps: Vec<Promotion>| ps.into_iter().map(|p| p.id).collect::<Vec<_>>();
    let v = t.verify_from(Verifier::default()).unwrap().0;
    assert_eq!(v.first_bad_sequence, None, "{}", v.message);
    let entries = t.history(&HistoryFilter::default(), page).unwrap().items;
    let production = ListFilter {
        environment: Some("production".into()),
        ..Default::default()
    };
    Contents {
        promotions: t.list(&ListFilter::default(), page).unwrap().items,
        approved: ids(t.in_state(State::Approved).unwrap()),
        by_environment: ids(t.list(&production, page).unwrap().items),
        request: t.find_request("alice", "k1").unwrap().map(|p| p.id),
        checks: t
            .checks_page("r.io/a", &format!("sha256:{}", "a".repeat(64)), None, 100)
            .unwrap()
            .items
            .len(),
        root: crate::store::merkle::root(entries.len() as u64, &t.merkle).unwrap(),
        entries,
    }
}

/// Writes every kind of record in `dir` with this build, reads it back, then
/// rewrites its records byte for byte as store format `format` (2, 3 or 4)
/// wrote them and marks the directory so: a directory as the earlier build
/// left it. `cut_short_to_4` (format 2 or 3): the format 4 build's
/// migration of it was cut short, after it rewrote the first record of each
/// tree in format 4 and kept its progress. Returns what the store held.
fn an_earlier_directory(dir: &std::path::Path, format: u64, cut_short_to_4: bool) -> Contents {
    use crate::store::codec::{decode_record, decode_stored_promotion, written};
    let t = Trees::open(open_without_flusher(dir)).unwrap();
    every_kind(&t, format >= 3);
    t.merkle.sync().unwrap();
    let held = contents(&t);
    assert_eq!(held.promotions[1].approvals.len(), 1, "{held:?}");
    let all = |tree: &sled::Tree| -> Vec<_> { tree.iter().map(Result::unwrap).collect() };
    assert!(!cut_short_to_4 || format < 4);
    for (i, (k, v)) in all(&t.audit).into_iter().enumerate() {
        let r = decode_record(keys::number(&k), &v).unwrap();
        let old = match format {
            _ if cut_short_to_4 && i == 0 => {
                t.meta.insert(keys::MIGRATED_AUDIT_4, &k).unwrap();
                written::record_v4(&r.entry, r.promotion.as_ref())
            }
            4 => written::record_v4(&r.entry, r.promotion.as_ref()),
            3 => written::record_v3(&r.entry, r.promotion.as_ref()),
            _ => written::record_v2(&r.entry, r.promotion.as_ref().unwrap()),
        };
        t.audit.insert(k, old).unwrap();
    }
    for (i, (k, v)) in all(&t.promotions).into_iter().enumerate() {
        let s = decode_stored_promotion(keys::number(&k), &v).unwrap();
        let written_in = if cut_short_to_4 && i == 0 {
            t.meta.insert(keys::MIGRATED_PROMOTIONS_4, &k).unwrap();
            4
        } else {
            format
        };
        let old = written::stored_promotion(&s.audit, &s.promotion, written_in);
        t.promotions.insert(k, old).unwrap();
    }
    if format == 2 {
        // Format 2 had no index of promotions by environment.
        for (k, _) in all(&t.index) {
            if k.first() == Some(&b'e') {
                t.index.remove(k).unwrap();
            }
        }
    }
    t.meta.insert(keys::FORMAT, &keys::u64_key(format)).unwrap();
    t.db.flush().unwrap();
    drop(t);
    horizon::Horizon::open(dir).unwrap();
    held
}

/// An earlier directory is checked offline as it is, refused by the copy to
/// PostgreSQL (which stores the bytes as they are), and migrated by a
/// server's start, also after a start that migrated only part of it: it
/// then holds what it held, in the current format, with its entries'
/// bytes and hashes, and its chain verifies.
async fn an_earlier_directory_is_migrated_when_opened(format: u64, cut_short_to_4: bool) {
    use crate::store::codec::{Old, encode};
    let dir = tempfile::tempdir().unwrap();
    let held = an_earlier_directory(dir.path(), format, cut_short_to_4);
    let entry_bytes = |t: &Trees| -> Vec<Vec<u8>> {
        t.audit
            .iter()
            .map(|kv| encode(&crate::store::codec::decode_entry(0, &kv.unwrap().1).unwrap()))
            .collect()
    };
    let before = {
        let t = Trees::open(open_without_flusher(dir.path())).unwrap();
        // Format 2's entries do not decode as the current shape's.
        let before = if format >= 3 { entry_bytes(&t) } else { vec![] };
        t.db.flush().unwrap();
        before
    };
    let entries = held.entries.len() as u64;
    // Offline: verify-log reads it as it is, migrate refuses it.
    let v = when_free(|| verify_offline(dir.path()));
    assert_eq!(
        (v.first_bad_sequence, v.entries_checked),
        (None, entries),
        "{}",
        v.message
    );
    let Err(e) = export::Snapshot::open(dir.path()) else {
        panic!("migrate copied a store of format {format}");
    };
    assert!(
        e.to_string()
            .contains(&format!("is in store format {format}")),
        "{e}"
    );
    // A migration cut short: the first chunk of each tree rewritten.
    {
        let t = Trees::open(open_without_flusher(dir.path())).unwrap();
        let old = Old::of(format).unwrap();
        assert!(
            t.get(1).is_err(),
            "the current build reads format {format} unmigrated"
        );
        assert_eq!(derive::migrate_some(&t, old, 1).unwrap(), (1, 1));
        t.db.flush().unwrap();
    }
    let v = when_free(|| verify_offline(dir.path()));
    assert_eq!(v.first_bad_sequence, None, "{}", v.message);
    let store = reopen(dir.path());
    assert_eq!(contents(&store.trees), held);
    let meta = |key: &[u8]| store.trees.meta.get(key).unwrap();
    assert_eq!(
        meta(keys::FORMAT).and_then(|v| keys::read_u64(&v)),
        Some(FORMAT_VERSION)
    );
    for key in [
        keys::MIGRATED_AUDIT,
        keys::MIGRATED_PROMOTIONS,
        keys::MIGRATED_AUDIT_4,
        keys::MIGRATED_PROMOTIONS_4,
    ] {
        assert_eq!(meta(key), None);
    }
    if format >= 3 {
        assert_eq!(
            entry_bytes(&store.trees),
            before,
            "an entry's bytes changed"
        );
    }
    for e in contents(&store.trees).entries {
        assert_eq!(e.computed_hash(), e.hash, "entry {}", e.sequence);
    }
    // Old approvals are kept, in no group; nothing waits.
    let approved = store.get(1).await.unwrap().unwrap();
    assert_eq!(approved.approvals[0].approver, "bob");
    assert_eq!(approved.approvals[0].comment, "lgtm");
    assert!(approved.approvals[0].groups.is_empty());
    assert!(approved.waiting_for.is_empty() && approved.not_before.is_none());
    // No promotion was a release's member before format 5.
    assert!(held.promotions.iter().all(|p| p.release_id.is_none()));
    assert_eq!(approved.release_id, None);
    // The chain goes on from the migrated head.
    let at = Time {
        seconds: 1_800_000_000,
        nanos: 0,
    };
    let next = Store::new(Arc::new(store.clone()))
        .write(move |uow| uow.record(crate::domain::model::policy_changed("sha256:p"), at))
        .await
        .unwrap();
    assert_eq!(next.sequence, entries + 1);
    assert_eq!(next.prev_hash, held.entries[0].hash);
    assert!(store.verify().await.unwrap().first_bad_sequence.is_none());
}

#[tokio::test]
async fn a_format_4_directory_is_migrated_when_opened() {
    an_earlier_directory_is_migrated_when_opened(4, false).await;
}

#[tokio::test]
async fn a_format_3_directory_is_migrated_when_opened() {
    an_earlier_directory_is_migrated_when_opened(3, false).await;
}

#[tokio::test]
async fn a_format_2_directory_is_migrated_when_opened() {
    an_earlier_directory_is_migrated_when_opened(2, false).await;
}

/// A format 3 or 2 directory the format 4 build began to migrate: the
/// records its progress keys cover are read as format 4.
#[tokio::test]
async fn a_format_3_directory_a_migration_to_format_4_left_cut_short_is_migrated() {
    an_earlier_directory_is_migrated_when_opened(3, true).await;
}

#[tokio::test]
async fn a_format_2_directory_a_migration_to_format_4_left_cut_short_is_migrated() {
    an_earlier_directory_is_migrated_when_opened(2, true).await;
}

/// A directory of a later format than this build's is refused, and left as
/// it is.
#[test]
fn a_data_directory_of_a_later_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let t = Trees::open(open_without_flusher(dir.path())).unwrap();
        three_commits(&t);
        t.meta
            .insert(keys::FORMAT, &keys::u64_key(FORMAT_VERSION + 1))
            .unwrap();
        t.db.flush().unwrap();
    }
    horizon::Horizon::open(dir.path()).unwrap();
    let e = when_free(
        || match SledStore::open(dir.path(), Arc::new(SystemClock)) {
            Ok(_) => panic!("a directory of a later format was opened"),
            Err(e @ StoreError::Format { .. }) => Ok(e),
            Err(e) => Err(e),
        },
    );
    let later = format!("store format {}", FORMAT_VERSION + 1);
    assert!(e.to_string().contains(&later), "{e}");
    let t = Trees::open(when_free(|| {
        sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
    }))
    .unwrap();
    assert_eq!(
        t.meta
            .get(keys::FORMAT)
            .unwrap()
            .and_then(|v| keys::read_u64(&v)),
        Some(FORMAT_VERSION + 1)
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
    let mut outbox = Outbox::default();
    let mut tx = Tx::new(&mut state, &mut outbox);
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

/// The sled side of moved tags and drift (what they answer is the
/// conformance suite's): a directory from before the `T` keys gets them
/// when opened, and a refused flush takes them back with its entries.
#[test]
fn moved_tags_are_indexed_for_old_directories_and_rolled_back_with_their_entries() {
    use super::derive::index_moved_tags;
    use crate::domain::model::drift_detected;
    use crate::store::conformance::digest;
    let t = trees();
    let rogue = format!("sha256:{}", "b".repeat(64));
    let mut state = WriterState::load(t.clone(), Arc::new(SystemClock)).unwrap();
    let mut outbox = Outbox::default();
    let mut tx = Tx::new(&mut state, &mut outbox);
    let now = tx.now();
    let requested = machine::request(
        1,
        new_promotion("r.io/a", ""),
        &who("alice"),
        &policy(),
        now,
    );
    tx.commit(&requested.promotion, requested.event).unwrap();
    let approved = crate::store::conformance::decide_approval(
        &requested.promotion,
        &who("bob"),
        &policy(),
        now,
    )
    .unwrap();
    tx.commit(&approved.promotion, approved.event).unwrap();
    let applied = machine::applied(&approved.promotion, "", now).unwrap();
    tx.commit(&applied.promotion, applied.event).unwrap();
    let event = drift_detected("r.io/a", "production", &rogue, &digest());
    tx.record(event, now).unwrap();
    let pair = vec![("r.io/a".to_owned(), "production".to_owned())];
    assert_eq!(t.moved_tags().unwrap(), pair);

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

/// A fresh store in a temp dir, for the conformance suite.
async fn fresh(clock: &crate::clock::ManualClock) -> Option<(Store, Box<dyn std::any::Any>)> {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Arc::new(clock.clone())).unwrap();
    Some((store, Box::new(dir)))
}

mod conformance {
    crate::store::conformance::conformance_suite!(super::fresh);
}
