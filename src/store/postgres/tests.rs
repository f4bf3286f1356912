//! The PostgreSQL backend's own promises, beyond what every backend does
//! alike (the conformance suite, run here on a fresh database at the end,
//! and the use cases in src/promotions/tests.rs): a batch that loses its
//! connection half way is rolled back whole and refused, the head in memory
//! does not run ahead, and the next write reconnects and continues the
//! chain; the checks at open; a database an earlier build wrote.

use super::PgStore;
use super::test_cluster as pg_support;
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::{PostgresConfig, Secret};
use crate::domain::model::{Time, policy_changed};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

fn config(db: &pg_support::TestDatabase, max_clock_skew: Duration) -> PostgresConfig {
    PostgresConfig {
        connection: Some(Secret::new(db.url.as_bytes())),
        password: Some(Secret::new(db.password.as_bytes())),
        origin: db.url.clone(),
        max_clock_skew,
    }
}

async fn open(db: &pg_support::TestDatabase) -> Store {
    // A manual clock, days from the database's: the skew check is off here
    // and tested on its own below.
    let clock = ManualClock::at(Time {
        seconds: 1_800_000_000,
        nanos: 0,
    });
    Store::new(Arc::new(
        PgStore::open(&config(db, Duration::MAX), Arc::new(clock))
            .await
            .unwrap(),
    ))
}

/// The message of a store that refused to open.
async fn refused(db: &pg_support::TestDatabase, clock: impl Clock) -> String {
    match PgStore::open(&config(db, Duration::from_secs(2)), Arc::new(clock)).await {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    }
}

fn now_plus(d: Duration, ahead: bool) -> ManualClock {
    let now = SystemClock.now();
    let s = i64::try_from(d.as_secs()).unwrap();
    ManualClock::at(Time {
        seconds: if ahead {
            now.seconds + s
        } else {
            now.seconds - s
        },
        nanos: now.nanos,
    })
}

#[tokio::test]
async fn a_clock_beyond_max_clock_skew_of_the_databases_is_refused_at_open_saying_by_how_much() {
    let Some(cluster) = pg_support::Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let two_days = Duration::from_secs(2 * 86_400);
    let e = refused(&db, now_plus(two_days, true)).await;
    assert!(
        e.contains("clock is 2days ahead of the database's")
            && e.contains("max_clock_skew = 2s")
            && e.contains("NTP"),
        "{e}"
    );
    let e = refused(&db, now_plus(Duration::from_secs(600), false)).await;
    assert!(e.contains("clock is 10m behind the database's"), "{e}");
    // Nothing was created by the refused starts.
    assert_eq!(tables(&db), "", "something was created");
    // Within the bound: opens, on the real clock and on one a second off.
    for clock in [
        ManualClock::at(SystemClock.now()),
        now_plus(Duration::from_secs(1), true),
    ] {
        PgStore::open(&config(&db, Duration::from_secs(2)), Arc::new(clock))
            .await
            .unwrap();
    }
}

/// Runs `sql` in the test's own database (psql runs on `postgres`).
fn psql_in(db: &pg_support::TestDatabase, sql: &str) {
    let out = std::process::Command::new(pg_support_bin("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.url,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", &db.password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_support_bin(name: &str) -> std::path::PathBuf {
    pg_support::Cluster::shared().unwrap().bin().join(name)
}

/// The relations in the database's `public` schema, sorted.
fn tables(db: &pg_support::TestDatabase) -> String {
    let out = std::process::Command::new(pg_support_bin("psql"))
        .args(["-X", "-q", "-t", "-A", "-d", &db.url, "-c"])
        .arg("SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND relkind IN ('r', 'v')")
        .env("PGPASSWORD", &db.password)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn a_schema_that_is_not_prodgates_is_refused_naming_the_table_and_nothing_is_created() {
    let Some(cluster) = pg_support::Cluster::shared() else {
        return;
    };
    let now = || ManualClock::at(SystemClock.now());
    for (setup, table, after) in [
        // golang-migrate's layout: serve panicked (exit 101) on it.
        (
            "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL); INSERT INTO schema_migrations VALUES (20240101, false)",
            "schema_migrations",
            "schema_migrations",
        ),
        // Rails' layout, with a version above prodgate's: not "a newer prodgate".
        (
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY); INSERT INTO schema_migrations VALUES (20240101)",
            "schema_migrations",
            "schema_migrations",
        ),
        // Another application's tables, one named like prodgate's.
        (
            "CREATE TABLE audit (id serial, what text); CREATE TABLE users (id serial)",
            "audit",
            "audit,users",
        ),
        (
            "CREATE VIEW accounts AS SELECT 1 AS id",
            "accounts",
            "accounts",
        ),
    ] {
        let db = cluster.database();
        psql_in(&db, setup);
        let e = refused(&db, now()).await;
        assert!(
            e.contains(&format!(
                "the database holds a table `{table}` (schema `public`) that is not prodgate's"
            )) && e.contains("a database (or schema) of its own"),
            "{setup}: {e}"
        );
        assert!(!e.contains("newer"), "{e}");
        assert_eq!(tables(&db), after, "{setup}: something was created");
    }

    // A search_path naming no schema that exists: said so, not "db error".
    let db = cluster.database();
    let nowhere = pg_support::TestDatabase {
        url: format!("{}?options=-csearch_path%3Dnowhere", db.url),
        name: db.name.clone(),
        password_file: db.password_file.clone(),
        password: db.password.clone(),
    };
    let e = refused(&nowhere, now()).await;
    assert!(e.contains("no schema of the search_path exists"), "{e}");
    assert_eq!(tables(&db), "", "something was created");

    // prodgate's own schema opens again, and a newer prodgate's is named so;
    // an extension's views beside it are no application's.
    let db = cluster.database();
    psql_in(&db, "CREATE EXTENSION pg_stat_statements");
    drop(open(&db).await);
    drop(open(&db).await);
    psql_in(&db, "INSERT INTO schema_migrations (version) VALUES (99)");
    let e = refused(&db, now()).await;
    assert!(e.contains("schema version 99"), "{e}");
}

#[tokio::test]
async fn a_database_not_in_utf8_is_refused_at_open() {
    let Some(cluster) = pg_support::Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let latin1 = format!("{}_latin1", db.name);
    cluster.psql(&format!(
        "CREATE DATABASE {latin1} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    ));
    let db = pg_support::TestDatabase {
        url: db.url.replace(&db.name, &latin1),
        name: latin1,
        password_file: db.password_file.clone(),
        password: db.password.clone(),
    };
    let e = refused(&db, ManualClock::at(SystemClock.now())).await;
    assert!(
        e.contains("server_encoding is LATIN1, not UTF8") && e.contains("ENCODING 'UTF8'"),
        "{e}"
    );
    assert_eq!(tables(&db), "", "something was created");
}

#[tokio::test]
async fn a_failed_write_or_read_says_postgresqls_own_message() {
    let Some(cluster) = pg_support::Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let store = open(&db).await;
    let at = Time {
        seconds: 1_800_000_000,
        nanos: 0,
    };
    // Something PostgreSQL itself refuses: the audit table gone.
    psql_in(&db, "ALTER TABLE audit RENAME TO audit_gone");
    let e = store
        .write(move |uow| uow.record(policy_changed("sha256:one"), at).map(drop))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("relation \"audit\" does not exist") && text.contains("42P01"),
        "{text}"
    );
    assert!(!text.contains("db error"), "{text}");
    let e = store.audit_len().await.unwrap_err();
    assert!(matches!(e, StoreError::Read(_)), "{e:?}");
    assert!(
        e.to_string().starts_with("could not read the store: ")
            && e.to_string().contains("relation \"audit\" does not exist"),
        "{e}"
    );
    assert!(!e.to_string().contains(&db.password), "{e}");
}

#[tokio::test]
async fn a_batch_that_loses_its_connection_is_refused_whole_and_the_chain_goes_on() {
    let Some(cluster) = pg_support::Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let store = open(&db).await;
    let at = Time {
        seconds: 1_800_000_000,
        nanos: 0,
    };
    let mut changes = store.subscribe_records();
    store
        .write(move |uow| uow.record(policy_changed("sha256:one"), at).map(drop))
        .await
        .unwrap();
    // Callers are answered before the batch is published: wait for it.
    assert_eq!(changes.recv().await.unwrap().sequence, 1);

    // One job appends, then its connection dies (as when PostgreSQL
    // restarts), then it appends again.
    let name = db.name.clone();
    let result = store
        .write(move |uow| -> Result<(), StoreError> {
            uow.record(policy_changed("sha256:two"), at)?;
            cluster.psql(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND state LIKE 'idle in transaction%'"
            ));
            uow.record(policy_changed("sha256:three"), at)?;
            Ok(())
        })
        .await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert_eq!(store.audit_len().await.unwrap(), 1, "nothing half-written");
    assert!(changes.try_recv().is_err(), "a refused entry was published");

    // The next write reconnects and takes the next sequence: no gap.
    let entry = store
        .write(move |uow| uow.record(policy_changed("sha256:four"), at))
        .await
        .unwrap();
    assert_eq!(entry.sequence, 2);
    assert_eq!(changes.recv().await.unwrap(), entry);
    crate::store::conformance::verified(&store, 2).await;
}

/// A batch sends its audit rows and promotions in one statement before it
/// commits (or before a statement that could see them), so what a job
/// reads of its own earlier writes comes from the batch: a new promotion by
/// id, by request id and among the open ones, a change made to it since,
/// and a policy it recorded.
#[tokio::test]
async fn a_job_reads_its_own_writes_before_the_batch_sends_them() {
    use crate::domain::machine;
    use crate::store::conformance::{T0, decide_approval, new_promotion, policy, who};
    let clock = ManualClock::at(T0);
    let Some((store, _keep)) = fresh(&clock).await else {
        return;
    };
    let (first, approved, second, read) = store
        .write(|uow| -> Result<_, StoreError> {
            let now = uow.now();
            let new = |uow: &mut dyn crate::store::UnitOfWork, key: &str| {
                let o = machine::request(
                    uow.next_id(),
                    new_promotion("r.io/a", key),
                    &who("alice"),
                    &policy(),
                    now,
                );
                uow.commit(&o.promotion, o.event).map(|_| o.promotion)
            };
            let first = new(uow, "k1")?;
            let env = first.environment.clone();
            let by_id = uow.get(first.id)?;
            let by_request = uow.find_request(&first.requested_by, "k1")?;
            let open_before = uow.open_promotions("r.io/a", &env)?;
            let a = decide_approval(&first, &who("bob"), &policy(), now)?;
            uow.commit(&a.promotion, a.event)?;
            let second = new(uow, "k2")?;
            let open_after = uow.open_promotions("r.io/a", &env)?;
            uow.record(policy_changed("sha256:p"), now)?;
            let policy = uow.latest_policy()?;
            Ok((
                first,
                a.promotion,
                second,
                (by_id, by_request, open_before, open_after, policy),
            ))
        })
        .await
        .unwrap();
    let (by_id, by_request, open_before, open_after, policy) = read;
    assert_eq!(by_id.as_ref(), Some(&first));
    assert_eq!(by_request, Some(first.id));
    assert_eq!(open_before, std::slice::from_ref(&first));
    assert_eq!(open_after, [approved.clone(), second.clone()]);
    assert_eq!(policy.as_deref(), Some("sha256:p"));
    // And the database holds what the batch read: one gapless chain.
    assert_eq!(store.get(first.id).await.unwrap(), Some(approved));
    assert_eq!(store.get(second.id).await.unwrap(), Some(second));
    crate::store::conformance::verified(&store, 4).await;
}

/// Each writer keeps the Merkle frontier its last batch left and uses it
/// only while the head is where it left it: batches on two replicas of one
/// database, interleaved unevenly (so that either finds the head moved or
/// not, across subtrees of every size up to 64), store exactly the nodes a
/// tree rebuilt from the entries has, and both serve its roots and proofs.
#[tokio::test]
async fn replicas_keep_the_merkle_frontier_only_while_the_head_is_theirs() {
    use crate::store::codec::decode_record;
    use crate::store::merkle::{MemoryNodes, consistency_proof, inclusion_proof, root};
    let Some(cluster) = pg_support::Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let (a, b) = (open(&db).await, open(&db).await);
    let at = Time {
        seconds: 1_800_000_000,
        nanos: 0,
    };
    // (replica, entries in one job): each job one batch, as each is awaited.
    let pattern = [
        (0, 1),
        (0, 1),
        (0, 3),
        (1, 1),
        (0, 2),
        (0, 1),
        (1, 5),
        (1, 1),
        (0, 7),
        (0, 1),
        (0, 1),
        (1, 2),
        (0, 16),
        (0, 1),
        (1, 1),
        (1, 3),
        (0, 1),
        (0, 20),
        (1, 1),
        (0, 2),
    ];
    let (client, connection) = super::client_config(&config(&db, Duration::MAX))
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut n = 0;
    for (replica, entries) in pattern {
        let store = if replica == 0 { &a } else { &b };
        let first = n;
        store
            .write(move |uow| -> Result<(), StoreError> {
                for i in 0..entries {
                    uow.record(policy_changed(&format!("sha256:{}", first + i)), at)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        n += entries;
        // What a batch reads with the head when it moved: the frontier.
        let mut read: Vec<u64> = client
            .query(super::writer::FRONTIER_SQL, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect();
        read.sort_unstable();
        let mut want = crate::store::merkle::frontier(n as u64);
        want.sort_unstable();
        assert_eq!(read, want, "the frontier of {n} entries");
    }
    let size = n as u64;
    assert_eq!(size, 71);
    let mut rebuilt = MemoryNodes::default();
    for r in client
        .query("SELECT sequence, record FROM audit ORDER BY sequence", &[])
        .await
        .unwrap()
    {
        let sequence = r.get::<_, i64>(0) as u64;
        let entry = decode_record(sequence, r.get(1)).unwrap().entry;
        rebuilt.push(sequence, &entry.hash).unwrap();
    }
    let stored: std::collections::HashMap<u64, [u8; 32]> = client
        .query("SELECT node, hash FROM merkle", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let h: &[u8] = r.get(1);
            (r.get::<_, i64>(0) as u64, h.try_into().unwrap())
        })
        .collect();
    assert_eq!(stored, rebuilt.0, "the stored Merkle nodes");
    drop(client);
    connection.await.unwrap().unwrap();

    for store in [&a, &b] {
        crate::store::conformance::verified(store, size).await;
        for s in 1..=size {
            assert_eq!(
                store.tree_root(s).await.unwrap(),
                root(s, &rebuilt).unwrap()
            );
        }
        for (index, s) in [(0, 1), (6, 7), (40, 71), (70, 71)] {
            assert_eq!(
                store.inclusion_proof(index, s).await.unwrap(),
                inclusion_proof(index, s, &rebuilt).unwrap()
            );
        }
        for (from, to) in [(1, 71), (7, 32), (33, 71), (64, 71)] {
            assert_eq!(
                store.consistency_proof(from, to).await.unwrap(),
                consistency_proof(from, to, &rebuilt).unwrap()
            );
        }
    }
}

/// A database of format 3 records (schema version 1, as the build before
/// format 4 left it) has its records re-encoded when opened, and reads back
/// as it was written, with approvals in no group, nothing waiting and no
/// promotion a release's member.
#[tokio::test]
async fn a_database_of_format_3_records_is_re_encoded_when_opened() {
    a_database_of_earlier_records_is_re_encoded_when_opened(3).await;
}

/// A database of format 4 records (schema version 2, as the build before
/// format 5 left it) has its records re-encoded when opened (schema
/// migration 3), and reads back as it was written, with no promotion a
/// release's member; its entries keep their bytes and hashes.
#[tokio::test]
async fn a_database_of_format_4_records_is_re_encoded_when_opened() {
    a_database_of_earlier_records_is_re_encoded_when_opened(4).await;
}

/// Writes every kind of record with this build, rewrites the records as
/// store format `format` (3 or 4) wrote them and forgets the schema
/// migrations that came after that format, then opens the database.
async fn a_database_of_earlier_records_is_re_encoded_when_opened(format: u64) {
    use crate::domain::model::State;
    use crate::store::codec::{decode_record, encode, written};
    use crate::store::{HistoryFilter, PageRequest};
    let Some(cluster) = pg_support::Cluster::shared() else {
        return;
    };
    let db = cluster.database();
    let page = PageRequest {
        after: None,
        limit: 100,
        newest_first: false,
    };
    let read = |store: Store| async move {
        let v = store.verify().await.unwrap();
        assert_eq!(v.first_bad_sequence, None, "{}", v.message);
        (
            [store.get(1).await.unwrap(), store.get(2).await.unwrap()],
            store.in_state(State::Approved).await.unwrap(),
            store.find_request("alice", "k1").await.unwrap(),
            store
                .history(HistoryFilter::default(), page)
                .await
                .unwrap()
                .items,
            store.tree_head().await.unwrap(),
        )
    };
    let store = open(&db).await;
    store
        .write(|uow| crate::store::conformance::every_kind(uow, true))
        .await
        .unwrap();
    let held = read(store).await;
    assert_eq!(held.0[0].as_ref().unwrap().approvals.len(), 1);

    // As the earlier build left it: every record in format `format`, and
    // the schema migrations after it not applied (format 3 had schema
    // version 1, format 4 version 2).
    let (client, connection) = super::client_config(&config(&db, Duration::MAX))
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    type RecordWriter =
        fn(&crate::domain::audit::AuditEntry, Option<&crate::domain::model::Promotion>) -> Vec<u8>;
    type PromotionWriter = fn(&crate::domain::model::Promotion) -> Vec<u8>;
    let (record_old, promotion_old): (RecordWriter, PromotionWriter) = match format {
        3 => (written::record_v3, written::promotion_v3),
        4 => (written::record_v4, written::promotion_v4),
        _ => panic!("no format {format} records are written here"),
    };
    let mut entries = Vec::new();
    for r in client
        .query("SELECT sequence, record FROM audit ORDER BY sequence", &[])
        .await
        .unwrap()
    {
        let sequence: i64 = r.get(0);
        let record = decode_record(sequence as u64, r.get(1)).unwrap();
        let old = record_old(&record.entry, record.promotion.as_ref());
        entries.push((sequence, encode(&record.entry)));
        client
            .execute(
                "UPDATE audit SET record = $2 WHERE sequence = $1",
                &[&sequence, &old],
            )
            .await
            .unwrap();
    }
    for id in [1i64, 2] {
        let p = held.0[id as usize - 1].as_ref().unwrap();
        client
            .execute(
                "UPDATE promotions SET record = $2 WHERE id = $1",
                &[&id, &promotion_old(p)],
            )
            .await
            .unwrap();
    }
    client
        .execute(
            "DELETE FROM schema_migrations WHERE version > $1",
            &[&(format as i32 - 2)],
        )
        .await
        .unwrap();

    let store = open(&db).await;
    assert_eq!(read(store.clone()).await, held);
    let approved = store.get(1).await.unwrap().unwrap();
    assert_eq!(approved.approvals[0].approver, "bob");
    assert!(approved.approvals[0].groups.is_empty());
    assert!(approved.waiting_for.is_empty() && approved.not_before.is_none());
    assert_eq!(approved.release_id, None);
    // Every schema migration recorded; each entry the same bytes as before,
    // followed by its promotion in the current format.
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    for (sequence, entry) in &entries {
        let r = client
            .query_one("SELECT record FROM audit WHERE sequence = $1", &[sequence])
            .await
            .unwrap();
        let bytes: &[u8] = r.get(0);
        assert!(bytes.starts_with(entry), "entry {sequence} changed");
        let record = decode_record(*sequence as u64, bytes).unwrap();
        assert_eq!(record.entry.computed_hash(), record.entry.hash);
        assert!(record.promotion.is_none_or(|p| p.release_id.is_none()));
    }
    drop(client);
    connection.await.unwrap().unwrap();
    // Opening again applies nothing more.
    drop(store);
    let store = open(&db).await;
    assert_eq!(read(store).await, held);
}

/// A fresh database of the shared cluster, for the conformance suite (none
/// where PostgreSQL is not installed, outside CI).
async fn fresh(clock: &ManualClock) -> Option<(Store, Box<dyn std::any::Any>)> {
    let db = pg_support::Cluster::shared()?.database();
    // The suite's clock is days from the database's: the skew check is
    // tested on its own above.
    let store = PgStore::open(&config(&db, Duration::MAX), Arc::new(clock.clone()))
        .await
        .unwrap();
    Some((Store::new(Arc::new(store)), Box::new(db)))
}

mod conformance {
    crate::store::conformance::conformance_suite!(super::fresh);
}
