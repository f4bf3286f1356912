//! `prodgate migrate --from-sled`: copies a stopped server's sled store into
//! an empty PostgreSQL database, in one transaction, and checks the copy
//! before committing it.
//!
//! The audit records are copied as the bytes sled stores (the PostgreSQL
//! backend stores the same postcard record), so every sequence, time,
//! hash, request id and attribute survives by construction; the promotion
//! rows, the check and moved-tag indexes and the Merkle nodes are derived
//! from those records exactly as the PostgreSQL writer derives them, and
//! the promotions are compared with sled's own derived records. Pinned
//! manifests and policy versions are copied as they are.
//!
//! One transaction rather than resumable steps: a failure at any point
//! (including a failed check) leaves the database as empty as it was, so
//! running it again is the whole recovery. The tables are locked for the
//! transaction, and a database that already holds anything is refused: the
//! copy never merges into, or races, a chain that a server writes.

use super::{AuditRows, client_config, entry, int, schema, writer::node_hash};
use crate::config::PostgresConfig;
use crate::domain::audit::{Hash, Verifier};
use crate::domain::model::{Promotion, PromotionId};
use crate::store::StoreError;
use crate::store::chain::Indexed;
use crate::store::codec::encode;
use crate::store::merkle::{self, NodeReader};
use crate::store::sled::dir::DirError;
use crate::store::sled::export::Snapshot;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Rows per INSERT: big enough that round trips do not dominate, small
/// enough that one statement's arrays stay a few MiB.
const CHUNK: usize = 1000;
/// How long the copy waits for a table lock (a server busy on the
/// database) before it gives up instead of hanging.
const LOCK_TIMEOUT: &str = "10s";
/// Every table the copy fills; each must be empty.
const TABLES: [&str; 7] = [
    "audit",
    "promotions",
    "manifests",
    "policies",
    "checks",
    "moved_tags",
    "merkle",
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Source(#[from] DirError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(
        "the PostgreSQL database already holds prodgate data ({0}); migrate copies into an \
         empty database only, so nothing was written"
    )]
    NotEmpty(String),
    #[error(
        "the sled store's audit chain is broken at sequence {sequence}: {message}; nothing \
         was copied (`prodgate verify-log --data-dir` shows the same)"
    )]
    SourceBroken { sequence: u64, message: String },
    #[error(
        "the copy in PostgreSQL does not match the sled store: {0}; it was rolled back and \
         the database is as empty as before"
    )]
    Mismatch(String),
}

/// What was copied, and the head both stores agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub promotions: u64,
    pub manifests: u64,
    pub policies: u64,
    pub checks: u64,
    pub moved_tags: u64,
    pub head_hash: Hash,
    pub root: [u8; 32],
}

fn pg(doing: &str, e: postgres::Error) -> StoreError {
    super::backend(doing, e)
}

/// Copies the sled store under `dir` into the database `target` names and
/// checks the copy; blocking (run it off the async workers).
pub fn from_sled(dir: &Path, target: &PostgresConfig) -> Result<Report, MigrateError> {
    let snapshot = Snapshot::open(dir)?;
    let config = client_config(target)?;
    migrate_schema(&config)?;
    let mut client = postgres::Config::from(config)
        .connect(postgres::NoTls)
        .map_err(|e| pg("connecting to PostgreSQL", e))?;
    let mut txn = client
        .transaction()
        .map_err(|e| pg("starting the transaction", e))?;
    // Acknowledge only a durable copy, as the writer does (a stricter
    // setting is kept).
    let mode: String = txn
        .query_one("SHOW synchronous_commit", &[])
        .map_err(|e| pg("reading synchronous_commit", e))?
        .get(0);
    if mode == "off" {
        txn.batch_execute("SET LOCAL synchronous_commit = on")
            .map_err(|e| pg("setting synchronous_commit", e))?;
    }
    txn.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        TABLES.join(", ")
    ))
    .map_err(|e| pg("locking prodgate's tables", e))?;
    refuse_non_empty(&mut txn)?;
    let report = copy(&snapshot, &mut txn)?;
    check(&snapshot, &mut txn, &report)?;
    txn.commit().map_err(|e| pg("committing the copy", e))?;
    Ok(report)
}

/// The schema a server would find (refusing a foreign one or another
/// encoding, as the server does); applied by the same migrations, on
/// tokio-postgres as the server does, on a runtime of this thread's own.
fn migrate_schema(config: &tokio_postgres::Config) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let (mut client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| pg("connecting to PostgreSQL", e))?;
        let connection = tokio::spawn(connection);
        // The server's own checks of the database, but the clock's: the
        // copy keeps the entries' times.
        let result = async {
            super::preflight::encoding(&client).await?;
            schema::migrate(&mut client).await
        }
        .await;
        drop(client);
        let _ = connection.await;
        result
    })
}

fn refuse_non_empty(txn: &mut postgres::Transaction<'_>) -> Result<(), MigrateError> {
    let mut found = Vec::new();
    for table in TABLES {
        let n: i64 = txn
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map_err(|e| pg(&format!("counting the rows of {table}"), e))?
            .get(0);
        if n > 0 {
            found.push(format!("{table}: {n} rows"));
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(MigrateError::NotEmpty(found.join(", ")))
    }
}

/// Merkle nodes computed during the copy, by stored hash index (they are
/// appended in index order). 64 bytes per entry: 64 MiB at a million.
struct Nodes(Vec<[u8; 32]>);

impl NodeReader for Nodes {
    fn node(&self, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(usize::try_from(index)
            .ok()
            .and_then(|i| self.0.get(i))
            .copied())
    }
}

/// Inserts `rows` and empties it.
fn copy_rows(rows: &mut AuditRows, txn: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    txn.execute(
        "INSERT INTO audit (sequence, time_seconds, time_nanos, action, promotion_id, repository, environment, record)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::smallint[], $5::bigint[], $6::text[], $7::text[], $8::bytea[])",
        &rows.params(),
    )
    .map_err(|e| pg("copying audit entries", e))?;
    *rows = AuditRows::default();
    Ok(())
}

/// Copies everything; returns what it copied (the head and root as sled
/// has them).
fn copy(snapshot: &Snapshot, txn: &mut postgres::Transaction<'_>) -> Result<Report, MigrateError> {
    let mut verifier = Verifier::default();
    let mut nodes = Nodes(Vec::new());
    let mut promotions: BTreeMap<PromotionId, Promotion> = BTreeMap::new();
    let mut checks: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut moved: BTreeSet<(String, String)> = BTreeSet::new();
    let mut rows = AuditRows::default();
    let mut entries = 0;
    for exported in snapshot.audit() {
        let exported = exported?;
        let entry = &exported.record.entry;
        if !verifier.push(entry) {
            let v = verifier.finish();
            return Err(MigrateError::SourceBroken {
                sequence: v.first_bad_sequence.unwrap_or(entry.sequence),
                message: v.message,
            });
        }
        let (first, added) = merkle::nodes_for(entry.sequence, &entry.hash, &nodes)?;
        if first != nodes.0.len() as u64 {
            return Err(StoreError::Corrupt {
                what: "the audit log's Merkle tree".into(),
                reason: format!("entry {} starts at node {first}", entry.sequence),
            }
            .into());
        }
        nodes.0.extend(added);
        // Derived as every writer derives them (`store::chain`): the
        // promotion after its newest entry, the newest report per check,
        // every tag an APPLIED entry moved.
        let promotion = exported.record.promotion.as_ref();
        let indexed = Indexed::of(entry, promotion);
        if let Some((repository, environment)) = indexed.moved_tag {
            moved.insert((repository.to_owned(), environment.to_owned()));
        }
        if let Some(r) = indexed.check {
            checks.insert((r.repository, r.digest, r.check), entry.sequence);
        }
        if let Some(p) = promotion {
            promotions.insert(p.id, p.clone());
        }
        entries = entry.sequence;
        let promotion_id = promotion.map(|p| p.id);
        rows.push(entry, promotion_id, exported.bytes)?;
        if rows.sequence.len() == CHUNK {
            copy_rows(&mut rows, txn)?;
        }
    }
    copy_rows(&mut rows, txn)?;
    let verified = verifier.finish();
    if let Some(sequence) = verified.first_bad_sequence {
        return Err(MigrateError::SourceBroken {
            sequence,
            message: verified.message,
        });
    }

    // sled's promotion records are derived from the same entries; a
    // difference means a crash left them behind, which a start repairs.
    let mut stored = 0u64;
    for p in snapshot.promotions() {
        let (id, p) = p?;
        stored += 1;
        if promotions.get(&id) != Some(&p) {
            return Err(DirError::NeedsStart {
                dir: snapshot.dir().to_owned(),
                why: format!("holds promotion {id} unlike its audit log records it"),
            }
            .into());
        }
    }
    if stored != promotions.len() as u64 {
        return Err(DirError::NeedsStart {
            dir: snapshot.dir().to_owned(),
            why: format!(
                "holds {stored} promotion records where its audit log has {}",
                promotions.len()
            ),
        }
        .into());
    }

    copy_nodes(txn, &nodes)?;
    copy_promotions(txn, &promotions)?;
    for ((repository, digest, name), sequence) in &checks {
        txn.execute(
            "INSERT INTO checks (repository, digest, name, sequence) VALUES ($1, $2, $3, $4)",
            &[repository, digest, name, &int(*sequence)?],
        )
        .map_err(|e| pg("copying check reports", e))?;
    }
    for (repository, environment) in &moved {
        txn.execute(
            "INSERT INTO moved_tags (repository, environment) VALUES ($1, $2)",
            &[repository, environment],
        )
        .map_err(|e| pg("copying moved tags", e))?;
    }
    let mut manifests = 0;
    for m in snapshot.manifests() {
        let (repository, digest, m) = m?;
        txn.execute(
            "INSERT INTO manifests (repository, digest, media_type, bytes) VALUES ($1, $2, $3, $4)",
            &[&repository, &digest, &m.media_type, &m.bytes],
        )
        .map_err(|e| pg("copying pinned manifests", e))?;
        manifests += 1;
    }
    let mut policies = 0;
    for p in snapshot.policies() {
        let (digest, json) = p?;
        txn.execute(
            "INSERT INTO policies (digest, canonical_json) VALUES ($1, $2)",
            &[&digest, &json],
        )
        .map_err(|e| pg("copying policy versions", e))?;
        policies += 1;
    }
    Ok(Report {
        entries,
        promotions: promotions.len() as u64,
        manifests,
        policies,
        checks: checks.len() as u64,
        moved_tags: moved.len() as u64,
        head_hash: verified.head_hash,
        root: merkle::root(entries, &nodes)?,
    })
}

fn copy_nodes(txn: &mut postgres::Transaction<'_>, nodes: &Nodes) -> Result<(), StoreError> {
    for (c, chunk) in nodes.0.chunks(CHUNK).enumerate() {
        let first = c * CHUNK;
        let indexes = (first..first + chunk.len())
            .map(|i| int(i as u64))
            .collect::<Result<Vec<i64>, _>>()?;
        let hashes: Vec<&[u8]> = chunk.iter().map(|h| h.as_slice()).collect();
        txn.execute(
            "INSERT INTO merkle (node, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
            &[&indexes, &hashes],
        )
        .map_err(|e| pg("copying Merkle nodes", e))?;
    }
    Ok(())
}

fn copy_promotions(
    txn: &mut postgres::Transaction<'_>,
    promotions: &BTreeMap<PromotionId, Promotion>,
) -> Result<(), StoreError> {
    let all: Vec<&Promotion> = promotions.values().collect();
    for chunk in all.chunks(CHUNK) {
        let ids = chunk
            .iter()
            .map(|p| int(p.id))
            .collect::<Result<Vec<i64>, _>>()?;
        let states: Vec<&str> = chunk.iter().map(|p| p.state.label()).collect();
        let records: Vec<Vec<u8>> = chunk.iter().map(|p| encode(*p)).collect();
        txn.execute(
            "INSERT INTO promotions (id, repository, environment, state, requested_by, request_id, record)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[])",
            &[
                &ids,
                &texts(chunk, |p| &p.repository),
                &texts(chunk, |p| &p.environment),
                &states,
                &texts(chunk, |p| &p.requested_by),
                &texts(chunk, |p| &p.request_id),
                &records,
            ],
        )
        .map_err(|e| pg("copying promotions", e))?;
    }
    Ok(())
}

/// One text column of a chunk of promotions.
fn texts<'a>(chunk: &[&'a Promotion], f: fn(&'a Promotion) -> &'a str) -> Vec<&'a str> {
    chunk.iter().map(|p| f(p)).collect()
}

/// Merkle nodes read back through the transaction.
struct CopiedNodes<'a, 'c>(RefCell<&'a mut postgres::Transaction<'c>>);

impl NodeReader for CopiedNodes<'_, '_> {
    fn node(&self, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let i = int(index)?;
        let row = self
            .0
            .borrow_mut()
            .query_opt("SELECT hash FROM merkle WHERE node = $1", &[&i])
            .map_err(|e| pg("reading a Merkle node", e))?;
        row.map(|r| node_hash(index, r.get(0))).transpose()
    }
}

/// Reads the copy back inside the transaction, as a server would read it:
/// the whole chain verifies to sled's head, the tree's root is sled's, and
/// every table holds what was copied.
fn check(
    snapshot: &Snapshot,
    txn: &mut postgres::Transaction<'_>,
    copied: &Report,
) -> Result<(), MigrateError> {
    let mismatch = |what: String| Err(MigrateError::Mismatch(what));
    let mut v = Verifier::default();
    loop {
        let from = int(v.next_sequence())?;
        let rows = txn
            .query(
                "SELECT sequence, record FROM audit WHERE sequence >= $1 ORDER BY sequence LIMIT $2",
                &[&from, &(CHUNK as i64)],
            )
            .map_err(|e| pg("reading the copied audit log", e))?;
        for r in &rows {
            v.push(&entry(r)?);
        }
        if v.is_broken() || rows.len() < CHUNK {
            break;
        }
    }
    let v = v.finish();
    if let Some(seq) = v.first_bad_sequence {
        return mismatch(format!("its chain breaks at sequence {seq}: {}", v.message));
    }
    let sled_len = snapshot.audit_len()?;
    let sled_chain = snapshot.verify()?;
    if v.entries_checked != sled_len || v.head_hash != sled_chain.head_hash {
        return mismatch(format!(
            "{} entries with head {} where sled has {sled_len} with head {}",
            v.entries_checked,
            hex::encode(v.head_hash),
            hex::encode(sled_chain.head_hash)
        ));
    }
    let root = merkle::root(copied.entries, &CopiedNodes(RefCell::new(&mut *txn)))?;
    if root != copied.root {
        return mismatch(format!(
            "Merkle root {} where the entries give {}",
            hex::encode(root),
            hex::encode(copied.root)
        ));
    }
    if let Some(sled_root) = snapshot.tree_root(copied.entries)?
        && sled_root != root
    {
        return mismatch(format!(
            "Merkle root {} where sled's is {}",
            hex::encode(root),
            hex::encode(sled_root)
        ));
    }
    for (table, want) in [
        ("promotions", copied.promotions),
        ("manifests", copied.manifests),
        ("policies", copied.policies),
        ("checks", copied.checks),
        ("moved_tags", copied.moved_tags),
    ] {
        let n: i64 = txn
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map_err(|e| pg(&format!("counting the copied {table}"), e))?
            .get(0);
        if u64::try_from(n).ok() != Some(want) {
            return mismatch(format!("{table} holds {n} rows, {want} were copied"));
        }
    }
    Ok(())
}
