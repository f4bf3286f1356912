//! The write path: one writer thread with one connection runs the queued
//! jobs in arrival order inside one transaction per batch (group commit),
//! commits it (synchronous commit: durable when COMMIT returns), and only
//! then answers the batch's callers and publishes its changes.
//!
//! Several replicas append to one log: each batch's transaction first takes
//! a transaction-level advisory lock on the log ([`LOG_LOCK`]) and only then
//! reads the chain's head (sequence, hash, time, next promotion id), so the
//! head is never trusted from memory across transactions and the batches of
//! all replicas form one gapless chain. The batches take turns, so a batch
//! takes its jobs from the queue only once it holds the lock: what queued
//! during the other replicas' turns joins it (larger batches, not more).
//! An advisory lock rather than `SELECT … FOR UPDATE` on a head row: it
//! needs no row rewritten per batch (no dead tuples on the hottest row),
//! the head is read from the audit table itself (so it cannot disagree
//! with it), and it is released at COMMIT after the commit is visible, so
//! the next holder's statements (READ COMMITTED: a snapshot per statement)
//! see every earlier batch. The unit of work's reads (request ids, open
//! promotions, approvals) run after the lock in the same transaction, so
//! concurrent approvals on different replicas are decided one after the
//! other, as on sled.
//!
//! A database error in a batch rolls the whole transaction back: every job
//! in it that wrote is refused with [`StoreError::Backend`], and the chain's
//! head is read again from the database before the next batch, so nothing
//! in memory runs ahead of what was committed (also after a COMMIT whose
//! outcome the lost connection hid). A lost connection is opened again for
//! the next batch: PostgreSQL restarting costs the writes made meanwhile,
//! not a restart of prodgate.
//!
//! What a write costs here is round trips to the database, one after the
//! other on the writer's connection and, on several replicas, inside the
//! log's lock that every replica's batches wait for (BENCHMARKS.md, issue
//! 23), so a write makes as few as it can: every statement is prepared
//! once per connection ([`Statements`]); the batch's audit rows, their
//! Merkle nodes and promotion rows are sent together in one statement
//! before COMMIT, not one per entry (the batch answers its own reads of
//! what it wrote meanwhile, see [`Batch::send_appends`]); a promotion read
//! or written earlier in the batch is answered from the batch, and an id
//! never handed out is known to be absent without asking. RequestPromotion
//! then costs about two round trips (its request id, the open promotions)
//! and Reject one (the promotion), plus three per batch: BEGIN, the lock
//! and the head as one simple query (its statements run in order, each
//! with a snapshot of its own, so the head's is taken once the lock is
//! held), the appends, and NOTIFY with COMMIT as another simple query.
//! The Merkle nodes a batch's appends join (the tree's frontier) cost
//! nothing when this replica wrote the head the batch found ([`Frontier`]);
//! when another replica did, they are read with the head ([`FRONTIER`]),
//! or, if the listener had not heard of it yet, in one round trip.

use super::{AuditRows, Shared, backend, entry, int, uint};
use crate::clock::Clock;
use crate::domain::audit::AuditEntry;
use crate::domain::model::{Action, Event, POLICY_ATTRIBUTE, Promotion, PromotionId, State, Time};
use crate::store::chain::{Appender, Head, Indexed, Outbox};
use crate::store::codec::{RecordRef, decode_entry, decode_promotion, encode};
use crate::store::merkle::{NodeReader, frontier, nodes_for};
use crate::store::{CheckNames, Completion, Job, StoreError, StoredManifest, UnitOfWork};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

/// How many queued jobs one transaction may hold at most.
pub const MAX_BATCH: usize = 512;
/// Taken by every batch's transaction before it reads the chain's head, on
/// every replica ("prodgate" + 1 in ASCII); released at COMMIT or ROLLBACK.
pub(super) const LOG_LOCK: i64 = 0x7072_6f64_6761_7466;
/// The channel a committing batch notifies with its last sequence, so the
/// other replicas publish its changes at once (see `listen`).
pub const CHANNEL: &str = "prodgate_audit";
/// How long a batch's transaction may sit idle before PostgreSQL ends it.
const STALLED_BATCH: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a connection may take to answer a ping after a failed batch.
const VALID_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Writer {
    config: postgres::Config,
    conn: Option<Conn>,
    clock: Arc<dyn Clock>,
    shared: Shared,
    /// When the connection last answered; see [`Writer::ready`].
    used: std::time::Instant,
    /// The Merkle frontier this replica's last committed batch left, for
    /// the next batch if no other replica wrote in between.
    frontier: Option<Frontier>,
}

/// The Merkle tree's frontier ([`frontier`]) as a committed batch left it:
/// the nodes the next batch's appends read. Nodes are a function of the
/// entries, and a head of the same sequence and hash is the same chain
/// (every entry hashes the one before it), so when the next batch finds
/// the head where this one left it, these are the nodes the database holds
/// and need not be read under the log's lock.
struct Frontier {
    sequence: u64,
    hash: crate::domain::audit::Hash,
    nodes: HashMap<u64, [u8; 32]>,
}

/// A connection idle this long is asked whether it still works before a
/// batch uses it (one empty statement): PostgreSQL may have ended it
/// meanwhile (a restart, an administrator), and the client learns that
/// only from the next statement, which would refuse a batch that a fresh
/// connection would have written. Under load batches follow each other
/// closer than this, so they pay nothing.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Writer {
    /// Connects and reads the head; the caller reports a failure at open.
    pub fn start(
        config: postgres::Config,
        clock: Arc<dyn Clock>,
        shared: Shared,
    ) -> Result<Writer, StoreError> {
        let mut w = Writer {
            config,
            conn: None,
            clock,
            shared,
            used: std::time::Instant::now(),
            frontier: None,
        };
        w.ready()?;
        let Some(Conn { client, .. }) = w.conn.as_mut() else {
            return Err(StoreError::Closed);
        };
        // Everything committed before this start counts as published: a
        // subscriber hears of changes made after it subscribed.
        let answer = client
            .simple_query(&format!("EXECUTE {HEAD}"))
            .map_err(|e| backend("reading the audit log's head", e))?;
        let last = head_of(&answer)?.last_sequence();
        w.shared.durable.fetch_max(last, Ordering::AcqRel);
        *w.shared.lock_published() = last;
        Ok(w)
    }

    /// An open connection.
    fn ready(&mut self) -> Result<(), StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.used.elapsed() >= IDLE_CHECK
            && let Some(c) = self.conn.as_mut()
            && c.client.is_valid(IDLE_CHECK).is_err()
        {
            self.conn = None;
        }
        self.used = std::time::Instant::now();
        if self.conn.is_none() {
            let mut c = self
                .config
                .connect(postgres::NoTls)
                .map_err(|e| backend("connecting to PostgreSQL", e))?;
            // Acknowledge only what is durable: a database or role default
            // of `off` would let a crash lose acknowledged writes. Stricter
            // settings (remote_apply for a standby) are kept.
            let mode: String = c
                .query_one("SHOW synchronous_commit", &[])
                .map_err(|e| backend("reading synchronous_commit", e))?
                .get(0);
            if mode == "off" {
                c.batch_execute("SET synchronous_commit = on")
                    .map_err(|e| backend("setting synchronous_commit", e))?;
            }
            // A batch holds the log's lock for milliseconds; a replica that
            // stalls inside one (frozen, or cut off without a FIN) would
            // stop every replica's writes until TCP gave up. PostgreSQL
            // ends such a transaction after this, releasing the lock.
            c.batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = {}",
                STALLED_BATCH.as_millis()
            ))
            .map_err(|e| backend("setting idle_in_transaction_session_timeout", e))?;
            let statements = Statements::prepare(&mut c)?;
            self.conn = Some(Conn {
                client: c,
                statements,
            });
        }
        Ok(())
    }

    /// Runs `job` and every job queued by the time the log's lock is held
    /// in one transaction, and answers them.
    fn run_batch(&mut self, job: Job, rx: &mut mpsc::Receiver<Job>) {
        let mut failed = self.ready().err();
        let mut head = Head::default();
        let mut outbox = Outbox::default();
        let mut writes = 0;
        let (mut client, statements) = match self.conn.as_mut() {
            Some(Conn { client, statements }) => (Some(client), Some(&*statements)),
            None => (None, None),
        };
        // Another replica committed since this one's last batch, as far as
        // the listener heard: the head moved, and the frontier is read in
        // the round trip that reads the head. A guess either way: a
        // frontier not read here is read when first needed.
        let moved = self
            .frontier
            .as_ref()
            .is_none_or(|f| f.sequence < self.shared.durable.load(Ordering::Acquire));
        let mut read = None;
        let asked = std::time::Instant::now();
        if let (None, Some(c)) = (&failed, client.as_deref_mut()) {
            match begin(c, moved) {
                Ok((h, nodes)) => (head, read) = (h, nodes),
                Err(e) => failed = Some(e),
            }
        }
        // Kept only for the head it was left at: another replica's entries
        // (or a failed batch) since then mean reading the frontier again.
        let carried = self.frontier.take().filter(|f| {
            failed.is_none() && (f.sequence, f.hash) == (head.last_sequence(), head.hash)
        });
        let (nodes, frontier_read) = match (carried, read) {
            (Some(f), _) => (f.nodes, false),
            (None, Some(nodes)) => (nodes, true),
            (None, None) => (HashMap::new(), false),
        };
        let locked = std::time::Instant::now();
        // The batch is taken only now, with the lock held (or its taking
        // failed): the jobs that queued while this replica waited for it,
        // behind the other replicas' batches, join this transaction rather
        // than the next, so contention makes batches larger instead of
        // more numerous. Taken before the lock, they were a third as large
        // on three replicas as on one, each paying a batch's round trips
        // and COMMIT inside the lock. A failed start refuses them all at
        // once, as before, rather than reconnecting once per job.
        let mut jobs = vec![job];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
        let first = head.next_sequence;
        let batch = RefCell::new(Batch {
            client,
            statements,
            failed,
            size: head.last_sequence(),
            frontier_read,
            nodes,
            promotions: HashMap::new(),
            appends: Appends::default(),
        });
        for job in jobs {
            let mut tx = Tx {
                batch: &batch,
                clock: self.clock.as_ref(),
                chain: Appender::new(&mut head, &mut outbox),
            };
            completions.push(job(&mut tx));
            writes += tx.chain.writes();
        }
        // An error here is the batch's: it refuses every job in it.
        let _ = batch.borrow_mut().send_appends();
        let Batch {
            client,
            failed,
            nodes,
            frontier_read,
            ..
        } = batch.into_inner();
        let last = head.last_sequence();
        let mut rolled_back = true;
        let outcome = match (failed, client) {
            (Some(e), Some(c)) => {
                rolled_back = rollback(c);
                Err(e)
            }
            (Some(e), None) => Err(e),
            (None, Some(c)) => commit(c, writes > 0, last).inspect_err(|_| {
                rolled_back = rollback(c);
            }),
            (None, None) => Err(StoreError::Closed),
        };
        tracing::debug!(
            jobs = completions.len(),
            writes,
            lock_wait_us = (locked - asked).as_micros() as u64,
            lock_held_us = locked.elapsed().as_micros() as u64,
            frontier_read,
            ok = outcome.is_ok(),
            "a write batch ended"
        );
        match &outcome {
            Ok(()) => {
                if writes > 0 {
                    let stats = &self.shared.stats;
                    stats.flushes.fetch_add(1, Ordering::Relaxed);
                    stats.commits.fetch_add(writes as u64, Ordering::Relaxed);
                }
                self.shared.durable.fetch_max(last, Ordering::AcqRel);
                // The frontier of the tree this batch committed: nodes it
                // wrote or read (none missing unless the batch needed none).
                self.frontier = Some(Frontier {
                    sequence: last,
                    hash: head.hash,
                    nodes: frontier(last)
                        .into_iter()
                        .filter_map(|i| nodes.get(&i).map(|h| (i, *h)))
                        .collect(),
                });
            }
            Err(e) => {
                if writes > 0 {
                    tracing::error!(error = %e, jobs = completions.len(), "a write batch was rolled back; its writes were refused");
                }
                // A connection that no longer answers is opened anew for
                // the next batch, not reused until TCP gives up on it; one
                // whose transaction may still be open is not reused at all.
                if let Some(c) = self.conn.as_mut()
                    && (!rolled_back || c.client.is_valid(VALID_CHECK).is_err())
                {
                    self.conn = None;
                }
            }
        }
        for c in completions {
            c(outcome.clone());
        }
        if outcome.is_ok() && writes > 0 {
            self.publish(first, last, outbox);
        }
    }

    /// Publishes a committed batch's changes if they follow the last
    /// published entry; otherwise another replica committed in between,
    /// and the listener publishes everything from the database in order
    /// (this batch included).
    fn publish(&self, first: u64, last: u64, outbox: Outbox) {
        let mut published = self.shared.lock_published();
        if *published + 1 == first {
            for change in outbox.changed {
                // No subscriber is fine.
                let _ = self.shared.changes.send(change);
            }
            for entry in outbox.recorded {
                let _ = self.shared.records.send(entry);
            }
            *published = last;
        } else if *published < last {
            self.shared.wake.notify_one();
        }
    }
}

/// The prepared statement (SQL `PREPARE`, once per connection) that reads
/// the chain's head: one row even when the log is empty (NULL sequence and
/// record), the record as hex, as a simple query answers in text.
const HEAD: &str = "prodgate_head";

/// Starts a batch's transaction in one round trip: BEGIN, the log's lock,
/// then the head as the replicas committed it. Separate statements of one
/// simple query: under READ COMMITTED each takes its own snapshot, so the
/// head's is taken after the lock is held and sees the batch the previous
/// holder committed. With `frontier`, then the Merkle frontier of that
/// head ([`FRONTIER`]), in the same round trip. An error may leave the
/// transaction open: the caller rolls it back.
fn begin(
    c: &mut postgres::Client,
    frontier: bool,
) -> Result<(Head, Option<MerkleNodes>), StoreError> {
    let mut sql = format!("BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK}); EXECUTE {HEAD}");
    if frontier {
        sql.push_str(&format!("; EXECUTE {FRONTIER}"));
    }
    let answer = c
        .simple_query(&sql)
        .map_err(|e| backend("taking the audit log's lock and reading its head", e))?;
    // The head's statement is the third (BEGIN, the lock, the head); the
    // frontier's rows follow it.
    let head_end = answer
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m, postgres::SimpleQueryMessage::CommandComplete(_)))
        .nth(2)
        .map_or(answer.len(), |(i, _)| i + 1);
    let head = head_of(&answer[..head_end])?;
    if !frontier {
        return Ok((head, None));
    }
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "the audit log's Merkle frontier".into(),
        reason,
    };
    let mut nodes = HashMap::new();
    for m in &answer[head_end..] {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            let (Some(node), Some(hash)) = (r.get(0), r.get(1)) else {
                return Err(corrupt("a NULL column".into()));
            };
            let node: u64 = node
                .parse()
                .map_err(|e| corrupt(format!("a node index: {e}")))?;
            let hash = hex::decode(hash).map_err(|e| corrupt(format!("node {node}: {e}")))?;
            nodes.insert(node, node_hash(node, &hash)?);
        }
    }
    Ok((head, Some(nodes)))
}

/// Merkle nodes by stored hash index.
type MerkleNodes = HashMap<u64, [u8; 32]>;

/// The prepared statement that reads the Merkle frontier
/// ([`crate::store::merkle::frontier`]) of the log as this transaction
/// sees it, hashes as hex: stored hash index `stored_hash_index(level, k)`
/// of `tlog` computed in SQL for each level whose bit is set in the
/// log's size, with `k` the subtree's first leaf over its width.
const FRONTIER: &str = "prodgate_frontier";

/// [`FRONTIER`]'s query. For each level `l` of the frontier, tlog's index:
/// `n = ((k + 1) << l) - 1` with `k` the subtree's first leaf `>> l`, then
/// the sum of `n >> j` over every `j`, plus `l`; cast back to bigint, so
/// that the index on `node` answers.
pub(super) const FRONTIER_SQL: &str = "WITH size AS (SELECT coalesce(max(sequence), 0) AS s FROM audit),
     levels AS (
         SELECT l, ((((s >> (l + 1)) << 1) + 1) << l) - 1 AS n
         FROM size, generate_series(0, 62) AS l
         WHERE (s >> l) & 1 = 1
     )
SELECT node, encode(hash, 'hex') FROM merkle
WHERE node IN (SELECT (l + (SELECT sum(n >> j) FROM generate_series(0, 62) AS j))::bigint FROM levels)";

/// The chain's head from the answer to [`HEAD`]: its last row (the lock's
/// statement answers one too).
fn head_of(answer: &[postgres::SimpleQueryMessage]) -> Result<Head, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "the audit log's head".into(),
        reason,
    };
    let row = answer
        .iter()
        .rev()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .ok_or_else(|| corrupt("no row".into()))?;
    let max_id: i64 = row
        .get(0)
        .unwrap_or("0")
        .parse()
        .map_err(|e| corrupt(format!("the highest promotion id: {e}")))?;
    let last = match (row.get(1), row.get(2)) {
        (Some(sequence), Some(record)) => {
            let sequence: i64 = sequence
                .parse()
                .map_err(|e| corrupt(format!("the last sequence: {e}")))?;
            let record =
                hex::decode(record).map_err(|e| corrupt(format!("the last record: {e}")))?;
            Some(decode_entry(uint(sequence), &record)?)
        }
        _ => None,
    };
    Ok(Head::after(last.as_ref(), u64::try_from(max_id).ok()))
}

/// Commits in one round trip; a batch that wrote tells the other replicas
/// (NOTIFY is delivered at COMMIT, and only if it commits). A simple
/// query stops at its first failed statement, so a failed NOTIFY never
/// reaches COMMIT; the caller rolls back after any error.
fn commit(c: &mut postgres::Client, wrote: bool, last: u64) -> Result<(), StoreError> {
    let sql = if wrote {
        format!("SELECT pg_notify('{CHANNEL}', '{last}'); COMMIT")
    } else {
        "COMMIT".to_owned()
    };
    c.batch_execute(&sql)
        .map_err(|e| backend("committing the batch", e))
}

/// Ends a failed batch's transaction; false if the connection may still be
/// inside it (then it is not used again). Outside a transaction (BEGIN
/// never ran, or a failed COMMIT ended it) ROLLBACK only warns.
fn rollback(c: &mut postgres::Client) -> bool {
    c.batch_execute("ROLLBACK").is_ok()
}

/// One connection and the writer's statements prepared on it.
struct Conn {
    client: postgres::Client,
    statements: Statements,
}

/// Every statement the writer runs, prepared once per connection: a
/// statement sent as text is parsed and described in a round trip of its
/// own each time it runs, and round trips are what a write costs here
/// (see BENCHMARKS.md, "Issue 13"). The batch's first and last round trips
/// are simple queries instead ([`begin`], [`commit`]): several statements
/// in one message, the head's among them prepared by SQL ([`HEAD`]).
struct Statements {
    get_promotion: postgres::Statement,
    find_request: postgres::Statement,
    open_promotions: postgres::Statement,
    put_manifest: postgres::Statement,
    put_policy: postgres::Statement,
    latest_policy: postgres::Statement,
    append: postgres::Statement,
    moved_tag: postgres::Statement,
    check: postgres::Statement,
    check_names: postgres::Statement,
    merkle_node: postgres::Statement,
    merkle_nodes: postgres::Statement,
}

impl Statements {
    fn prepare(c: &mut postgres::Client) -> Result<Statements, StoreError> {
        let mut prepare = |sql: &str| {
            c.prepare(sql)
                .map_err(|e| backend("preparing the writer's statements", e))
        };
        let statements = Statements {
            get_promotion: prepare("SELECT record FROM promotions WHERE id = $1")?,
            find_request: prepare(
                "SELECT id FROM promotions WHERE requested_by = $1 AND request_id = $2 AND request_id <> '' ORDER BY id DESC LIMIT 1",
            )?,
            open_promotions: prepare(
                "SELECT id, record FROM promotions WHERE repository = $1 AND environment = $2 AND state IN ($3, $4, $5) ORDER BY id",
            )?,
            put_manifest: prepare(
                "INSERT INTO manifests (repository, digest, media_type, bytes) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )?,
            put_policy: prepare(
                "INSERT INTO policies (digest, canonical_json) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )?,
            latest_policy: prepare(
                "SELECT sequence, record FROM audit WHERE action = $1 ORDER BY sequence DESC LIMIT 1",
            )?,
            // Data-modifying WITH clauses run exactly once, whether or not
            // the main statement reads them, and all of them or none commit.
            // A promotion appears once ([`Appends`] keeps its last row), as
            // ON CONFLICT cannot update one row twice in a statement.
            append: prepare(
                "WITH audit_rows AS (
                    INSERT INTO audit (sequence, time_seconds, time_nanos, action, promotion_id, repository, environment, record)
                    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $4::smallint[], $5::bigint[], $6::text[], $7::text[], $8::bytea[])
                 ), merkle_rows AS (
                    INSERT INTO merkle (node, hash) SELECT * FROM unnest($9::bigint[], $10::bytea[])
                 )
                 INSERT INTO promotions (id, repository, environment, state, requested_by, request_id, record)
                 SELECT * FROM unnest($11::bigint[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::bytea[])
                 ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, record = EXCLUDED.record",
            )?,
            moved_tag: prepare(
                "INSERT INTO moved_tags (repository, environment) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )?,
            check: prepare(
                "INSERT INTO checks (repository, digest, name, sequence) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repository, digest, name) DO UPDATE SET sequence = EXCLUDED.sequence",
            )?,
            // The count stops at $4 rows: a digest reported before the
            // limit existed may hold many more.
            check_names: prepare(
                "SELECT EXISTS (SELECT 1 FROM checks WHERE repository = $1 AND digest = $2 AND name = $3),
                        (SELECT count(*) FROM (SELECT 1 FROM checks WHERE repository = $1 AND digest = $2 LIMIT $4) AS c)",
            )?,
            merkle_node: prepare("SELECT hash FROM merkle WHERE node = $1")?,
            merkle_nodes: prepare("SELECT node, hash FROM merkle WHERE node = ANY($1)")?,
        };
        c.batch_execute(&format!("PREPARE {FRONTIER} AS {FRONTIER_SQL}"))
            .map_err(|e| backend("preparing the writer's statements", e))?;
        c.batch_execute(&format!(
            "PREPARE {HEAD} AS
             SELECT (SELECT coalesce(max(id), 0) FROM promotions), last.sequence, encode(last.record, 'hex')
             FROM (SELECT 1) AS one
             LEFT JOIN (SELECT sequence, record FROM audit ORDER BY sequence DESC LIMIT 1) AS last ON true"
        ))
        .map_err(|e| backend("preparing the writer's statements", e))?;
        Ok(statements)
    }
}

/// Runs batches until every sender is gone: a job waiting alone starts
/// one, and the batch gathers the rest once it holds the log's lock.
pub fn run(mut w: Writer, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        w.run_batch(first, &mut rx);
    }
}

/// The batch's transaction (begun on `client` by [`begin`]); after the
/// first error every later statement of the batch fails with it
/// (PostgreSQL refuses them anyway).
struct Batch<'c> {
    client: Option<&'c mut postgres::Client>,
    statements: Option<&'c Statements>,
    failed: Option<StoreError>,
    /// How many entries the log held when the batch began.
    size: u64,
    /// Whether the frontier of the tree of `size` was read (see
    /// [`NodeReader`] for the batch).
    frontier_read: bool,
    /// Merkle nodes this batch wrote, read, or was handed from the last
    /// batch ([`Frontier`]), so appending reads each at most once.
    nodes: HashMap<u64, [u8; 32]>,
    /// Promotions read or written in this batch, as this transaction sees
    /// them, the batch's unsent writes included. Nothing else changes them
    /// meanwhile: every writer holds the log's lock for its whole
    /// transaction.
    promotions: HashMap<PromotionId, Option<Promotion>>,
    /// Appends not sent yet (see [`Batch::send_appends`]).
    appends: Appends,
}

/// The audit rows, Merkle nodes and promotion rows the batch appended and
/// has not sent yet, as the columns of the one statement that sends them.
#[derive(Default)]
struct Appends {
    audit: AuditRows,
    node: Vec<i64>,
    hash: Vec<Vec<u8>>,
    /// Each promotion's last row in the batch, by id.
    promotions: std::collections::BTreeMap<i64, PromotionRow>,
}

struct PromotionRow {
    repository: String,
    environment: String,
    state: &'static str,
    requested_by: String,
    request_id: String,
    record: Vec<u8>,
}

impl Batch<'_> {
    /// Sends the batch's appends in one statement. A batch appends without
    /// a round trip each and sends them all before it commits, or before a
    /// statement that could see them: reading the log itself
    /// ([`UnitOfWork::latest_policy`]) or indexing an entry (a check row
    /// refers to its audit row). The other reads cannot: a promotion the
    /// batch wrote is answered from [`Batch::promotions`] (merged into
    /// what the database returns), a Merkle node from [`Batch::nodes`].
    fn send_appends(&mut self) -> Result<(), StoreError> {
        if self.appends.audit.is_empty() {
            return Ok(());
        }
        let a = std::mem::take(&mut self.appends);
        let mut ids = Vec::with_capacity(a.promotions.len());
        let mut p_repository = Vec::with_capacity(a.promotions.len());
        let mut p_environment = Vec::with_capacity(a.promotions.len());
        let mut state = Vec::with_capacity(a.promotions.len());
        let mut requested_by = Vec::with_capacity(a.promotions.len());
        let mut request_id = Vec::with_capacity(a.promotions.len());
        let mut p_record = Vec::with_capacity(a.promotions.len());
        for (id, p) in a.promotions {
            ids.push(id);
            p_repository.push(p.repository);
            p_environment.push(p.environment);
            state.push(p.state);
            requested_by.push(p.requested_by);
            request_id.push(p.request_id);
            p_record.push(p.record);
        }
        self.run("appending audit entries", |c, st| {
            let mut params = a.audit.params().to_vec();
            params.extend([
                &a.node as &(dyn ToSql + Sync),
                &a.hash,
                &ids,
                &p_repository,
                &p_environment,
                &state,
                &requested_by,
                &request_id,
                &p_record,
            ]);
            c.execute(&st.append, &params)
        })?;
        Ok(())
    }

    fn run<T>(
        &mut self,
        doing: &str,
        f: impl FnOnce(&mut postgres::Client, &Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let (Some(client), Some(st)) = (self.client.as_deref_mut(), self.statements) else {
            return Err(StoreError::Closed);
        };
        f(client, st).map_err(|e| {
            let e = backend(doing, e);
            self.failed = Some(e.clone());
            e
        })
    }
}

/// A write job's view: reads and writes go through the batch's transaction.
struct Tx<'a, 'c> {
    batch: &'a RefCell<Batch<'c>>,
    clock: &'a dyn Clock,
    chain: Appender<'a>,
}

/// Appending reads only the nodes of the tree's frontier when the batch
/// began, and nodes the batch wrote itself (see [`frontier`]): the first
/// node not at hand reads every frontier node not at hand, in one round
/// trip rather than one per node, each under the log's lock.
impl NodeReader for RefCell<Batch<'_>> {
    fn node(&self, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let mut b = self.borrow_mut();
        if let Some(h) = b.nodes.get(&index) {
            return Ok(Some(*h));
        }
        if !b.frontier_read {
            b.frontier_read = true;
            let missing = frontier(b.size)
                .into_iter()
                .filter(|i| !b.nodes.contains_key(i))
                .map(int)
                .collect::<Result<Vec<i64>, _>>()?;
            let rows = b.run("reading the Merkle tree's frontier", |t, st| {
                t.query(&st.merkle_nodes, &[&missing])
            })?;
            for r in rows {
                let i = uint(r.get(0));
                let h = node_hash(i, r.get(1))?;
                b.nodes.insert(i, h);
            }
            if let Some(h) = b.nodes.get(&index) {
                return Ok(Some(*h));
            }
        }
        // Not a frontier node: the tree code asked for one it should not
        // need; read it as asked, and let it judge.
        let i = int(index)?;
        let row = b.run("reading a Merkle node", |t, st| {
            t.query_opt(&st.merkle_node, &[&i])
        })?;
        let h = row.map(|r| node_hash(index, r.get(0))).transpose()?;
        if let Some(h) = h {
            b.nodes.insert(index, h);
        }
        Ok(h)
    }
}

pub fn node_hash(index: u64, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: format!("Merkle node {index}"),
        reason: format!("{} bytes, not 32", bytes.len()),
    })
}

/// Adds the audit row, the entry's Merkle nodes and, for a promotion's
/// entry, the promotion's row to the batch's appends (sent by
/// [`Batch::send_appends`]).
fn append(
    batch: &RefCell<Batch<'_>>,
    entry: &AuditEntry,
    promotion: Option<&Promotion>,
) -> Result<(), StoreError> {
    let record = encode(&RecordRef { entry, promotion });
    let id = promotion.map(|p| int(p.id)).transpose()?;
    let (first, nodes) = nodes_for(entry.sequence, &entry.hash, batch)?;
    let indexes = (0..nodes.len() as u64)
        .map(|i| int(first + i))
        .collect::<Result<Vec<i64>, _>>()?;
    let mut b = batch.borrow_mut();
    let a = &mut b.appends;
    a.audit.push(entry, promotion.map(|p| p.id), record)?;
    a.node.extend(indexes);
    a.hash.extend(nodes.iter().map(|h| h.to_vec()));
    if let (Some(p), Some(id)) = (promotion, id) {
        a.promotions.insert(
            id,
            PromotionRow {
                repository: p.repository.clone(),
                environment: p.environment.clone(),
                state: p.state.label(),
                requested_by: p.requested_by.clone(),
                request_id: p.request_id.clone(),
                record: encode(p),
            },
        );
    }
    for (i, h) in nodes.into_iter().enumerate() {
        b.nodes.insert(first + i as u64, h);
    }
    if let Some(p) = promotion {
        b.promotions.insert(p.id, Some(p.clone()));
    }
    Ok(())
}

/// Writes what `entry` indexes beside the log ([`Indexed`]).
fn index(
    batch: &RefCell<Batch<'_>>,
    entry: &AuditEntry,
    promotion: Option<&Promotion>,
) -> Result<(), StoreError> {
    let indexed = Indexed::of(entry, promotion);
    // A check's row refers to its audit row; a moved tag's row refers to
    // nothing, so it needs no appends sent first.
    if indexed.check.is_some() {
        batch.borrow_mut().send_appends()?;
    }
    if let Some((repository, environment)) = indexed.moved_tag {
        batch.borrow_mut().run("indexing a moved tag", |t, st| {
            t.execute(&st.moved_tag, &[&repository, &environment])
        })?;
    }
    if let Some(r) = indexed.check {
        let seq = int(entry.sequence)?;
        batch.borrow_mut().run("indexing a check report", |t, st| {
            t.execute(&st.check, &[&r.repository, &r.digest, &r.check, &seq])
        })?;
    }
    Ok(())
}

impl UnitOfWork for Tx<'_, '_> {
    fn now(&mut self) -> Time {
        self.chain.now(self.clock)
    }

    fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError> {
        let mut b = self.batch.borrow_mut();
        if let Some(p) = b.promotions.get(&id) {
            return Ok(p.clone());
        }
        // Ids are handed out in order and never reused: one at or past the
        // next is nobody's yet.
        if id >= self.chain.head().next_id {
            return Ok(None);
        }
        let i = int(id)?;
        let row = b.run("reading a promotion", |t, st| {
            t.query_opt(&st.get_promotion, &[&i])
        })?;
        let p = row.map(|r| decode_promotion(id, r.get(0))).transpose()?;
        b.promotions.insert(id, p.clone());
        Ok(p)
    }

    fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<PromotionId>, StoreError> {
        let mut b = self.batch.borrow_mut();
        let row = b.run("reading a request id", |t, st| {
            t.query_opt(&st.find_request, &[&principal, &request_id])
        })?;
        let stored = row.and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok());
        // A promotion this batch opened is not in the database yet.
        let batch = b
            .promotions
            .values()
            .flatten()
            .filter(|p| {
                !request_id.is_empty() && p.requested_by == principal && p.request_id == request_id
            })
            .map(|p| p.id)
            .max();
        Ok(stored.max(batch))
    }

    fn next_id(&self) -> PromotionId {
        self.chain.head().next_id
    }

    fn open_promotions(
        &self,
        repository: &str,
        environment: &str,
    ) -> Result<Vec<Promotion>, StoreError> {
        let (pending, waiting, approved) = (
            State::PendingApproval.label(),
            State::Waiting.label(),
            State::Approved.label(),
        );
        let mut b = self.batch.borrow_mut();
        let rows = b.run("reading open promotions", |t, st| {
            t.query(
                &st.open_promotions,
                &[&repository, &environment, &pending, &waiting, &approved],
            )
        })?;
        let mut open = std::collections::BTreeMap::new();
        for r in &rows {
            let p = decode_promotion(uint(r.get(0)), r.get(1))?;
            open.insert(p.id, p);
        }
        // The batch's own writes are not in the database yet: what it holds
        // of a promotion replaces the row, and decides whether it is open.
        for p in b.promotions.values().flatten() {
            if p.repository == repository && p.environment == environment {
                open.insert(p.id, p.clone());
            }
        }
        Ok(open
            .into_values()
            .filter(|p| !p.state.is_terminal())
            .collect())
    }

    fn put_manifest(
        &mut self,
        repository: &str,
        digest: &str,
        m: &StoredManifest,
    ) -> Result<(), StoreError> {
        self.batch.borrow_mut().run("pinning a manifest", |t, st| {
            t.execute(
                &st.put_manifest,
                &[&repository, &digest, &m.media_type, &m.bytes],
            )
        })?;
        Ok(())
    }

    fn put_policy(&mut self, digest: &str, canonical_json: &str) -> Result<(), StoreError> {
        self.batch
            .borrow_mut()
            .run("keeping a policy version", |t, st| {
                t.execute(&st.put_policy, &[&digest, &canonical_json])
            })?;
        Ok(())
    }

    fn latest_policy(&self) -> Result<Option<String>, StoreError> {
        let action = Action::PolicyChanged.number() as i16;
        let mut b = self.batch.borrow_mut();
        b.send_appends()?;
        let row = b.run("reading the latest policy", |t, st| {
            t.query_opt(&st.latest_policy, &[&action])
        })?;
        match row {
            Some(r) => Ok(entry(&r)?.event.attributes.get(POLICY_ATTRIBUTE).cloned()),
            None => Ok(None),
        }
    }

    /// The audit row, the promotion's row and the indexes are written in
    /// the batch's transaction: they commit together or not at all, so
    /// nothing is derived after the fact (unlike sled's redo at start).
    fn commit(
        &mut self,
        after: &Promotion,
        event: Option<Event>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let stored = self.get(after.id)?;
        let batch = self.batch;
        self.chain.commit(
            stored.as_ref(),
            after,
            event,
            |entry| append(batch, entry, Some(after)),
            |entry| index(batch, entry, Some(after)),
        )
    }

    fn record(&mut self, event: Event, at: Time) -> Result<AuditEntry, StoreError> {
        let batch = self.batch;
        self.chain.record(
            event,
            at,
            |entry| append(batch, entry, None),
            |entry| index(batch, entry, None),
        )
    }

    /// Read in the batch's transaction, under the log's lock every writer
    /// holds: no other writer adds a check between this read and the
    /// job's write.
    fn check_names(
        &self,
        repository: &str,
        digest: &str,
        check: &str,
        up_to: usize,
    ) -> Result<CheckNames, StoreError> {
        let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
        let row = self
            .batch
            .borrow_mut()
            .run("reading a digest's checks", |t, st| {
                t.query_one(&st.check_names, &[&repository, &digest, &check, &up_to])
            })?;
        Ok(CheckNames {
            known: row.get(0),
            distinct: usize::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        })
    }

    fn writes(&self) -> usize {
        self.chain.writes()
    }
}
