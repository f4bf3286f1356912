//! The PostgreSQL backend (`[storage] backend = "postgres"`): the same port
//! and the same guarantees as [`crate::store::sled`], for any number of
//! replicas on one database. The audit log is the source of truth; the
//! promotion rows, the indexes and the Merkle nodes are written in the same
//! transaction as each entry, so they never lag it.
//!
//! - `writer`: one thread, one connection, one transaction per batch of
//!   queued jobs (group commit), acknowledged after COMMIT; every batch
//!   serializes with the other replicas' on a transaction-level lock and
//!   reads the chain's head inside its transaction;
//! - `listen`: LISTEN/NOTIFY, so changes committed through another replica
//!   reach this one's subscribers at once and in sequence order;
//! - `leader`: which replica runs the once-per-deployment tasks (a
//!   session-level advisory lock on a dedicated connection);
//! - `preflight`: what open checks before the schema: UTF8, and this
//!   machine's clock against the database's (`max_clock_skew`);
//! - `schema`: versioned migrations applied at open under an advisory lock,
//!   refusing a schema that is not prodgate's;
//! - here: opening, and the reads on a few pipelined connections that
//!   reconnect on their own (so reads recover when PostgreSQL comes back).
//!
//! - `migrate`: `prodgate migrate --from-sled`, a stopped server's sled
//!   store copied into an empty database and checked, in one transaction.
//!
//! Not built yet (issue 13): TLS to the database.

mod leader;
mod listen;
pub mod migrate;
mod preflight;
mod schema;
mod writer;

use crate::clock::Clock;
use crate::config::PostgresConfig;
use crate::domain::audit::{AuditEntry, Verification, Verifier};
use crate::domain::drift::TagRecord;
use crate::domain::model::{
    Action, CheckReport, POLICY_ATTRIBUTE, Promotion, PromotionId, State, Time,
};
use crate::store::codec::{decode_entry, decode_promotion};
use crate::store::merkle::NodeReader;
use crate::store::{
    Change, HistoryFilter, Job, Leadership, ListFilter, Page, PageRequest, Storage, Store,
    StoreError, StoredManifest, StoredPolicy, WriterStats,
};
use async_trait::async_trait;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

/// Depth of the writer's queue; callers wait (asynchronously) beyond it.
const QUEUE_DEPTH: usize = 4096;
/// Committed changes kept for slow subscribers before they lag.
const CHANGES_CAPACITY: usize = 1024;
/// Read connections. tokio-postgres pipelines concurrent queries on one
/// connection, so a few serve many callers.
const READ_CONNECTIONS: usize = 4;
/// How long opening a connection may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Audit entries read per query while verifying the chain.
const VERIFY_CHUNK: i64 = 1000;

/// What the writer thread shares with the readers.
#[derive(Clone)]
struct Shared {
    changes: broadcast::Sender<Change>,
    records: broadcast::Sender<AuditEntry>,
    stats: Arc<WriterStats>,
    /// The newest committed sequence: tree heads stop there.
    durable: Arc<AtomicU64>,
    /// The last sequence published to subscribers: the writer and the
    /// listener publish under this lock, each entry once and in order.
    published: Arc<Mutex<u64>>,
    /// Whether the listener follows the log (see [`Follow`]).
    follow: Arc<Follow>,
    /// Asks the listener to publish what the database holds beyond
    /// `published` (the writer found another replica's entries before its own).
    wake: Arc<tokio::sync::Notify>,
}

impl Shared {
    fn lock_published(&self) -> std::sync::MutexGuard<'_, u64> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long the listener may be down before this replica counts as not
/// following the log: a reconnect (every second) usually ends it sooner.
pub const FOLLOW_GRACE: Duration = Duration::from_secs(3);

/// Whether this replica sees what other replicas commit. Its listener is
/// the only way it does; a replica that cannot follow must not lead (its
/// apply worker would never hear of promotions approved elsewhere, while
/// they were answered APPROVED) and must not report SERVING.
pub struct Follow {
    /// Since when the listener has been down (or not yet up); `None` while
    /// it listens.
    down_since: Mutex<Option<std::time::Instant>>,
}

impl Follow {
    fn new() -> Self {
        Follow {
            down_since: Mutex::new(Some(std::time::Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.down_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The listener listens and has caught up.
    fn up(&self) {
        if self.lock().take().is_some() {
            tracing::info!("following other replicas' changes");
        }
    }

    /// The listener lost its connection (or could not make one).
    fn down(&self) {
        self.lock().get_or_insert_with(std::time::Instant::now);
    }

    /// Whether this replica follows the log, or lost it less than
    /// [`FOLLOW_GRACE`] ago.
    pub fn ok(&self) -> bool {
        self.lock()
            .is_none_or(|since| since.elapsed() < FOLLOW_GRACE)
    }
}

/// The PostgreSQL backend. The writer stops when the last handle is dropped.
pub struct PgStore {
    jobs: mpsc::Sender<Job>,
    shared: Shared,
    reads: Reads,
    /// The verifier after the last successful check (as in sled): the next
    /// VerifyAuditLog hashes only newer entries.
    verified: Arc<Mutex<Verifier>>,
    config: tokio_postgres::Config,
    /// Stops the listener when the store is dropped.
    _listener: tokio_util::sync::DropGuard,
}

/// Opens the database `config` names, migrates its schema and starts the
/// writer, as the service's [`Store`].
pub async fn open(config: &PostgresConfig, clock: Arc<dyn Clock>) -> Result<Store, StoreError> {
    Ok(Store::new(Arc::new(PgStore::open(config, clock).await?)))
}

/// The client settings from the validated config: the connection string,
/// the password file's password, and defaults for what it leaves out.
fn client_config(config: &PostgresConfig) -> Result<tokio_postgres::Config, StoreError> {
    let connection = config.connection.as_ref().ok_or_else(|| {
        StoreError::Backend("storage.url_env: the connection string was not set".into())
    })?;
    let text = std::str::from_utf8(connection.expose())
        .map_err(|_| StoreError::Backend("storage: the connection string is not UTF-8".into()))?;
    // Validated with the config; never quote it here (it may hold a password).
    let mut c = tokio_postgres::Config::from_str(text)
        .map_err(|_| StoreError::Backend("storage: the connection string is not valid".into()))?;
    if let Some(p) = &config.password {
        c.password(p.expose());
    }
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(CONNECT_TIMEOUT);
    }
    if c.get_application_name().is_none() {
        c.application_name("prodgate");
    }
    Ok(c)
}

/// What went wrong, for a message: PostgreSQL's own message and SQLSTATE
/// rather than the client's bare "db error", or the client's error with its
/// causes. Neither holds the connection string or the password.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn backend(doing: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("{doing}: {}", describe(&e)))
}

/// A failed read: the caller may retry, nothing was changed.
fn unreadable(doing: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Read(format!("{doing}: {}", describe(&e)))
}

/// A sequence or id as PostgreSQL's BIGINT.
fn int(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Backend(format!("{n} is beyond BIGINT")))
}

fn uint(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The entry of an audit row read as `sequence, record`.
fn entry(row: &tokio_postgres::Row) -> Result<AuditEntry, StoreError> {
    decode_entry(uint(row.get(0)), row.get(1))
}

fn entries(rows: &[tokio_postgres::Row]) -> Result<Vec<AuditEntry>, StoreError> {
    rows.iter().map(entry).collect()
}

fn promotions(rows: &[tokio_postgres::Row]) -> Result<Vec<Promotion>, StoreError> {
    rows.iter()
        .map(|r| decode_promotion(uint(r.get(0)), r.get(1)))
        .collect()
}

/// A few read connections, each opened again when it is found closed.
struct Reads {
    config: tokio_postgres::Config,
    slots: Vec<tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>>,
    next: AtomicUsize,
}

impl Reads {
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| unreadable("connecting to PostgreSQL", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %describe(&e), "a PostgreSQL read connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn query(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.client()
            .await?
            .query(sql, params)
            .await
            .map_err(|e| unreadable(doing, e))
    }

    async fn query_opt(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        self.client()
            .await?
            .query_opt(sql, params)
            .await
            .map_err(|e| unreadable(doing, e))
    }
}

/// Merkle nodes read on a blocking thread (the tree code is synchronous),
/// each through the async client.
struct Nodes {
    client: Arc<tokio_postgres::Client>,
    runtime: tokio::runtime::Handle,
}

impl NodeReader for Nodes {
    fn node(&self, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let i = int(index)?;
        let row = self
            .runtime
            .block_on(
                self.client
                    .query_opt("SELECT hash FROM merkle WHERE node = $1", &[&i]),
            )
            .map_err(|e| unreadable("reading a Merkle node", e))?;
        row.map(|r| writer::node_hash(index, r.get(0))).transpose()
    }
}

/// The inclusive range of ids or sequences a page walks, from its cursor.
fn bounds(page: &PageRequest) -> (i64, i64) {
    let cursor = page.after.map(|a| i64::try_from(a).unwrap_or(i64::MAX));
    match (page.newest_first, cursor) {
        (false, after) => (after.map_or(1, |a| a.saturating_add(1)), i64::MAX),
        (true, None) => (1, i64::MAX),
        (true, Some(a)) => (1, a.saturating_sub(1)),
    }
}

/// A page's rows: `limit + 1` were asked for, so one more means more follow.
fn page<T>(mut items: Vec<T>, limit: usize) -> Page<T> {
    let more = items.len() > limit;
    items.truncate(limit);
    Page { items, more }
}

/// A WHERE clause built from optional filters, with its parameters.
struct Filter {
    clauses: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Filter {
    fn new() -> Self {
        Filter {
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Adds `clause`, where `$` stands for the next parameters in order.
    fn and(&mut self, clause: &str, values: Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut text = String::new();
        for (i, part) in clause.split('$').enumerate() {
            if i > 0 {
                text.push_str(&format!("${}", self.params.len() + i));
            }
            text.push_str(part);
        }
        self.params.extend(values);
        self.clauses.push(text);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            "TRUE".into()
        } else {
            self.clauses.join(" AND ")
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn time_params(t: Time) -> Vec<Box<dyn ToSql + Sync + Send>> {
    vec![
        Box::new(t.seconds),
        Box::new(i32::try_from(t.nanos).unwrap_or(i32::MAX)),
    ]
}

fn action(a: Action) -> i16 {
    i16::try_from(a.number()).unwrap_or(i16::MAX)
}

/// Audit rows as the column arrays of one multi-row INSERT (`unnest`), in
/// the audit table's column order: how the writer sends a batch's entries
/// and how `migrate` copies a sled log.
#[derive(Default)]
struct AuditRows {
    sequence: Vec<i64>,
    seconds: Vec<i64>,
    nanos: Vec<i32>,
    action: Vec<i16>,
    promotion_id: Vec<Option<i64>>,
    repository: Vec<String>,
    environment: Vec<String>,
    record: Vec<Vec<u8>>,
}

impl AuditRows {
    /// Adds `entry`'s row: its stored `record` bytes, and the promotion it
    /// is about, if any.
    fn push(
        &mut self,
        entry: &AuditEntry,
        promotion: Option<PromotionId>,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.sequence.push(int(entry.sequence)?);
        self.seconds.push(entry.time.seconds);
        self.nanos
            .push(i32::try_from(entry.time.nanos).unwrap_or(i32::MAX));
        self.action.push(action(entry.event.action));
        self.promotion_id.push(promotion.map(int).transpose()?);
        self.repository.push(entry.event.repository.clone());
        self.environment.push(entry.event.environment.clone());
        self.record.push(record);
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.sequence.is_empty()
    }

    /// The eight columns, as the first eight parameters of a statement
    /// that `unnest`s them.
    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.sequence,
            &self.seconds,
            &self.nanos,
            &self.action,
            &self.promotion_id,
            &self.repository,
            &self.environment,
            &self.record,
        ]
    }
}

impl PgStore {
    pub async fn open(
        config: &PostgresConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<PgStore, StoreError> {
        let client_config = client_config(config)?;
        {
            let (mut client, connection) = client_config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| backend("connecting to PostgreSQL", e))?;
            let connection = tokio::spawn(connection);
            let checked = async {
                preflight::encoding(&client).await?;
                preflight::clock_skew(&client, clock.as_ref(), config.max_clock_skew).await?;
                schema::migrate(&mut client).await
            }
            .await;
            drop(client);
            let _ = connection.await;
            checked?;
        }
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let (records, _) = broadcast::channel(CHANGES_CAPACITY);
        let shared = Shared {
            changes,
            records,
            stats: Arc::new(WriterStats::default()),
            durable: Arc::new(AtomicU64::new(0)),
            published: Arc::new(Mutex::new(0)),
            follow: Arc::new(Follow::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let (started, ready) = oneshot::channel();
        let for_writer = shared.clone();
        let writer_config = postgres::Config::from(client_config.clone());
        // The blocking client runs its own runtime, so it is connected on
        // the writer thread, never on an async worker.
        std::thread::Builder::new()
            .name("prodgate-store-writer".into())
            .spawn(
                move || match writer::Writer::start(writer_config, clock, for_writer) {
                    Ok(w) => {
                        let _ = started.send(Ok(()));
                        writer::run(w, rx);
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                },
            )
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        ready.await.map_err(|_| StoreError::Closed)??;
        let listening = tokio_util::sync::CancellationToken::new();
        tokio::spawn(listen::run(
            client_config.clone(),
            shared.clone(),
            listening.clone(),
        ));
        Ok(PgStore {
            jobs,
            shared,
            config: client_config.clone(),
            _listener: listening.drop_guard(),
            reads: Reads {
                config: client_config,
                slots: (0..READ_CONNECTIONS)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
            },
            verified: Arc::new(Mutex::new(Verifier::default())),
        })
    }

    /// Runs a computation over the Merkle nodes on the blocking pool.
    async fn with_nodes<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Nodes) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let nodes = Nodes {
            client: self.reads.client().await?,
            runtime: tokio::runtime::Handle::current(),
        };
        tokio::task::spawn_blocking(move || f(&nodes))
            .await
            .map_err(|e| StoreError::Read(format!("read task failed: {e}")))?
    }

    /// POLICY_CHANGED entries, oldest first: one per start or reload that
    /// changed the policy, a few thousand in years.
    async fn policy_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self
            .reads
            .query(
                "reading policy changes",
                "SELECT sequence, record FROM audit WHERE action = $1 ORDER BY sequence",
                &[&action(Action::PolicyChanged)],
            )
            .await?;
        entries(&rows)
    }

    /// The last APPLIED entry of a tag at or before `at`.
    async fn applied(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let mut f = Filter::new();
        f.and("repository = $", vec![Box::new(repository.to_owned())]);
        f.and("environment = $", vec![Box::new(environment.to_owned())]);
        f.and("action = $", vec![Box::new(action(Action::Applied))]);
        if let Some(t) = at {
            f.and("(time_seconds, time_nanos) <= ($, $)", time_params(t));
        }
        let sql = format!(
            "SELECT sequence, record FROM audit WHERE {} ORDER BY sequence DESC LIMIT 1",
            f.sql()
        );
        let row = self
            .reads
            .query_opt("reading the deployed digest", &sql, &f.params())
            .await?;
        row.as_ref().map(entry).transpose()
    }
}

#[async_trait]
impl Storage for PgStore {
    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    fn subscribe_records(&self) -> broadcast::Receiver<AuditEntry> {
        self.shared.records.subscribe()
    }

    fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    async fn lead(&self, stop: &CancellationToken) -> Option<Leadership> {
        leader::lead(&self.config, stop, self.shared.follow.clone()).await
    }

    fn following(&self) -> bool {
        self.shared.follow.ok()
    }

    async fn get(&self, id: PromotionId) -> Result<Option<Promotion>, StoreError> {
        // Beyond BIGINT: no promotion has it (as on sled, where none does).
        let Ok(i) = i64::try_from(id) else {
            return Ok(None);
        };
        let row = self
            .reads
            .query_opt(
                "reading a promotion",
                "SELECT record FROM promotions WHERE id = $1",
                &[&i],
            )
            .await?;
        row.map(|r| decode_promotion(id, r.get(0))).transpose()
    }

    async fn find_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<Promotion>, StoreError> {
        let rows = self
            .reads
            .query(
                "reading a request id",
                "SELECT id, record FROM promotions WHERE requested_by = $1 AND request_id = $2 AND request_id <> '' ORDER BY id DESC LIMIT 1",
                &[&principal, &request_id],
            )
            .await?;
        Ok(promotions(&rows)?.pop())
    }

    async fn manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<StoredManifest>, StoreError> {
        let row = self
            .reads
            .query_opt(
                "reading a pinned manifest",
                "SELECT media_type, bytes FROM manifests WHERE repository = $1 AND digest = $2",
                &[&repository, &digest],
            )
            .await?;
        Ok(row.map(|r| StoredManifest {
            media_type: r.get(0),
            bytes: r.get(1),
        }))
    }

    async fn in_state(&self, state: State) -> Result<Vec<Promotion>, StoreError> {
        let rows = self
            .reads
            .query(
                "reading promotions by state",
                "SELECT id, record FROM promotions WHERE state = $1 ORDER BY id",
                &[&state.label()],
            )
            .await?;
        promotions(&rows)
    }

    async fn list(
        &self,
        filter: ListFilter,
        request: PageRequest,
    ) -> Result<Page<Promotion>, StoreError> {
        let (lo, hi) = bounds(&request);
        let mut f = Filter::new();
        f.and("id BETWEEN $ AND $", vec![Box::new(lo), Box::new(hi)]);
        if let Some(r) = filter.repository {
            f.and("repository = $", vec![Box::new(r)]);
        }
        if let Some(e) = filter.environment {
            f.and("environment = $", vec![Box::new(e)]);
        }
        if let Some(s) = filter.state {
            f.and("state = $", vec![Box::new(s.label())]);
        }
        let sql = format!(
            "SELECT id, record FROM promotions WHERE {} ORDER BY id {} LIMIT {}",
            f.sql(),
            if request.newest_first { "DESC" } else { "ASC" },
            request.limit.saturating_add(1)
        );
        let rows = self
            .reads
            .query("listing promotions", &sql, &f.params())
            .await?;
        Ok(page(promotions(&rows)?, request.limit))
    }

    async fn history(
        &self,
        filter: HistoryFilter,
        request: PageRequest,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let (lo, hi) = bounds(&request);
        let mut f = Filter::new();
        f.and("sequence BETWEEN $ AND $", vec![Box::new(lo), Box::new(hi)]);
        if let Some(r) = filter.repository {
            f.and("repository = $", vec![Box::new(r)]);
        }
        if let Some(e) = filter.environment {
            f.and("environment = $", vec![Box::new(e)]);
        }
        if let Some(id) = filter.promotion_id {
            // Beyond BIGINT: no entry names it.
            let Ok(id) = i64::try_from(id) else {
                return Ok(page(Vec::new(), request.limit));
            };
            f.and("promotion_id = $", vec![Box::new(id)]);
        }
        // Entry times never decrease along the sequence, so these bound the
        // same range sled finds by bisecting.
        if let Some(t) = filter.since {
            f.and("(time_seconds, time_nanos) >= ($, $)", time_params(t));
        }
        if let Some(t) = filter.until {
            f.and("(time_seconds, time_nanos) <= ($, $)", time_params(t));
        }
        let sql = format!(
            "SELECT sequence, record FROM audit WHERE {} ORDER BY sequence {} LIMIT {}",
            f.sql(),
            if request.newest_first { "DESC" } else { "ASC" },
            request.limit.saturating_add(1)
        );
        let rows = self
            .reads
            .query("reading the audit log", &sql, &f.params())
            .await?;
        Ok(page(entries(&rows)?, request.limit))
    }

    async fn deployed_at(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<AuditEntry>, StoreError> {
        self.applied(repository, environment, at).await
    }

    async fn moved_tags(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .reads
            .query(
                "reading moved tags",
                "SELECT repository, environment FROM moved_tags",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn tag_record(
        &self,
        repository: &str,
        environment: &str,
        at: Option<Time>,
    ) -> Result<Option<TagRecord>, StoreError> {
        let Some(applied) = self.applied(repository, environment, at).await? else {
            return Ok(None);
        };
        let mut f = Filter::new();
        f.and("repository = $", vec![Box::new(repository.to_owned())]);
        f.and("environment = $", vec![Box::new(environment.to_owned())]);
        f.and("sequence > $", vec![Box::new(int(applied.sequence)?)]);
        f.and(
            "action IN ($, $)",
            vec![
                Box::new(action(Action::DriftDetected)),
                Box::new(action(Action::DriftRestored)),
            ],
        );
        if let Some(t) = at {
            f.and("(time_seconds, time_nanos) <= ($, $)", time_params(t));
        }
        let sql = format!(
            "SELECT sequence, record FROM audit WHERE {} ORDER BY sequence",
            f.sql()
        );
        let rows = self
            .reads
            .query("reading a tag's drift", &sql, &f.params())
            .await?;
        Ok(Some(TagRecord {
            applied,
            drift: entries(&rows)?,
        }))
    }

    /// Names compare in byte order (`COLLATE "C"`), as sled's keys do,
    /// whatever the database's collation: a page token continues the same
    /// walk on either backend. Every name is longer than "".
    async fn checks_page(
        &self,
        repository: &str,
        digest: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<CheckReport>, StoreError> {
        let after = after.unwrap_or("");
        let take = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self
            .reads
            .query(
                "reading check reports",
                "SELECT a.sequence, a.record FROM checks c JOIN audit a ON a.sequence = c.sequence
                 WHERE c.repository = $1 AND c.digest = $2 AND c.name COLLATE \"C\" > $3
                 ORDER BY c.name COLLATE \"C\" LIMIT $4",
                &[&repository, &digest, &after, &take],
            )
            .await?;
        let reports = entries(&rows)?
            .iter()
            .filter_map(CheckReport::from_entry)
            .collect();
        Ok(page(reports, limit))
    }

    async fn policy(&self, digest: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let Some(row) = self
            .reads
            .query_opt(
                "reading a policy version",
                "SELECT canonical_json FROM policies WHERE digest = $1",
                &[&digest],
            )
            .await?
        else {
            return Ok(None);
        };
        let first =
            self.policy_entries().await?.into_iter().find(|e| {
                e.event.attributes.get(POLICY_ATTRIBUTE).map(String::as_str) == Some(digest)
            });
        // Stored but never recorded: a job cut short before its entry.
        Ok(first.map(|e| StoredPolicy {
            digest: digest.to_owned(),
            canonical_json: row.get(0),
            first_recorded: e.time,
        }))
    }

    fn tree_size(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    async fn tree_root(&self, size: u64) -> Result<[u8; 32], StoreError> {
        self.with_nodes(move |n| crate::store::merkle::root(size, n))
            .await
    }

    async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.with_nodes(move |n| crate::store::merkle::inclusion_proof(index, size, n))
            .await
    }

    async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.with_nodes(move |n| crate::store::merkle::consistency_proof(from, to, n))
            .await
    }

    async fn audit_len(&self) -> Result<u64, StoreError> {
        let row = self
            .reads
            .query_opt(
                "reading the audit log's length",
                "SELECT coalesce(max(sequence), 0) FROM audit",
                &[],
            )
            .await?;
        Ok(row.map_or(0, |r| uint(r.get(0))))
    }

    async fn verify(&self) -> Result<Verification, StoreError> {
        let mut v = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        loop {
            let from = int(v.next_sequence())?;
            let rows = self
                .reads
                .query(
                    "reading the audit log",
                    "SELECT sequence, record FROM audit WHERE sequence >= $1 ORDER BY sequence LIMIT $2",
                    &[&from, &VERIFY_CHUNK],
                )
                .await?;
            let n = rows.len();
            for r in &rows {
                let seq: i64 = r.get(0);
                match decode_entry(uint(seq), r.get(1)) {
                    Ok(e) => {
                        if !v.push(&e) {
                            break;
                        }
                    }
                    Err(e) => v.fail(uint(seq), e.to_string()),
                }
            }
            if v.is_broken() || (n as i64) < VERIFY_CHUNK {
                break;
            }
        }
        if !v.is_broken() {
            *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = v.clone();
        }
        Ok(v.finish())
    }

    /// Every acknowledged write was committed durably already.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The private PostgreSQL cluster of the integration tests, shared with the
/// library's tests (the use cases on every backend, and `tests` here).
#[cfg(test)]
#[path = "../../../tests/support/postgres.rs"]
pub(crate) mod test_cluster;

#[cfg(test)]
mod tests;
