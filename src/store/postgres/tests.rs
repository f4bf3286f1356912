//! The PostgreSQL backend's own promises, beyond the use cases both
//! backends run (src/promotions/tests.rs): a batch that loses its
//! connection half way is rolled back whole and refused, the head in memory
//! does not run ahead, and the next write reconnects and continues the chain.

use super::PgStore;
use super::test_cluster as pg_support;
use crate::clock::ManualClock;
use crate::config::{PostgresConfig, Secret};
use crate::domain::model::{Time, policy_changed};
use crate::store::{Store, StoreError};
use std::sync::Arc;

async fn open(db: &pg_support::TestDatabase) -> Store {
    let config = PostgresConfig {
        connection: Some(Secret::new(db.url.as_bytes())),
        password: Some(Secret::new(db.password.as_bytes())),
        origin: db.url.clone(),
    };
    let clock = ManualClock::at(Time {
        seconds: 1_800_000_000,
        nanos: 0,
    });
    Store::new(Arc::new(
        PgStore::open(&config, Arc::new(clock)).await.unwrap(),
    ))
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
    let v = store.verify().await.unwrap();
    assert_eq!(
        (v.entries_checked, v.first_bad_sequence),
        (2, None),
        "{v:?}"
    );
    assert_eq!(store.tree_head().await.unwrap().size, 2);
}
