//! The schema, as versioned migrations applied at open under a
//! session-level advisory lock, so processes starting together apply each
//! migration once; `schema_migrations` records what was applied.
//!
//! Records are stored as columns where a query filters or orders by them,
//! and otherwise as the same postcard bytes sled stores (`record`): the
//! domain types change often and a column per field would have to follow
//! each change, while one codec keeps the audit record byte-identical on
//! both backends (a later `migrate --from-sled` copies it as is). So a
//! change of the record format is a migration too: the records are decoded
//! in the earlier shape and written anew (`store::codec`).

use super::backend as failed;
use crate::store::StoreError;
use crate::store::codec::{Old, RecordRef, encode, upgrade_promotion, upgrade_record};

/// Held while migrating; any constant unlikely to clash with the
/// application's other locks ("prodgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x7072_6f64_6761_7465;

/// Records re-encoded per statement in a record migration.
const RECORD_CHUNK: i64 = 1000;

/// One step of the schema.
enum Migration {
    /// Statements, run as they are.
    Sql(&'static str),
    /// Every stored record, written in format `Old`, re-encoded in the
    /// current format. Records are re-encoded straight to the current
    /// format, so only the first such migration a start applies decodes
    /// anything; later ones (from formats the database never held since)
    /// are recorded and skip the work.
    Records(Old),
}

/// Migration `n` is `MIGRATIONS[n - 1]`; never edit one that shipped.
const MIGRATIONS: &[Migration] = &[
    // 1: the audit log, the records derived from it, the Merkle nodes.
    Migration::Sql(
        r#"
    CREATE TABLE audit (
        sequence      BIGINT PRIMARY KEY,
        time_seconds  BIGINT NOT NULL,
        time_nanos    INTEGER NOT NULL,
        action        SMALLINT NOT NULL,
        promotion_id  BIGINT,
        repository    TEXT NOT NULL,
        environment   TEXT NOT NULL,
        record        BYTEA NOT NULL
    );
    CREATE INDEX audit_by_repository ON audit (repository, sequence);
    CREATE INDEX audit_by_environment ON audit (environment, sequence);
    CREATE INDEX audit_by_promotion ON audit (promotion_id, sequence)
        WHERE promotion_id IS NOT NULL;
    CREATE INDEX audit_by_time ON audit (time_seconds, time_nanos);
    CREATE INDEX audit_by_action ON audit (action, sequence);
    CREATE TABLE promotions (
        id            BIGINT PRIMARY KEY,
        repository    TEXT NOT NULL,
        environment   TEXT NOT NULL,
        state         TEXT NOT NULL,
        requested_by  TEXT NOT NULL,
        request_id    TEXT NOT NULL,
        record        BYTEA NOT NULL
    );
    CREATE INDEX promotions_by_request ON promotions (requested_by, request_id, id)
        WHERE request_id <> '';
    CREATE INDEX promotions_by_state ON promotions (state, id);
    CREATE INDEX promotions_by_repository ON promotions (repository, id);
    CREATE INDEX promotions_by_environment ON promotions (environment, id);
    CREATE TABLE manifests (
        repository    TEXT NOT NULL,
        digest        TEXT NOT NULL,
        media_type    TEXT NOT NULL,
        bytes         BYTEA NOT NULL,
        PRIMARY KEY (repository, digest)
    );
    CREATE TABLE policies (
        digest          TEXT PRIMARY KEY,
        canonical_json  TEXT NOT NULL
    );
    CREATE TABLE checks (
        repository    TEXT NOT NULL,
        digest        TEXT NOT NULL,
        name          TEXT NOT NULL,
        sequence      BIGINT NOT NULL REFERENCES audit,
        PRIMARY KEY (repository, digest, name)
    );
    CREATE TABLE moved_tags (
        repository    TEXT NOT NULL,
        environment   TEXT NOT NULL,
        PRIMARY KEY (repository, environment)
    );
    CREATE TABLE merkle (
        node          BIGINT PRIMARY KEY,
        hash          BYTEA NOT NULL
    );
    "#,
    ),
    // 2: store format 4 (`Approval::groups`, `Promotion::waiting_for` and
    // `not_before`); the database held format 3 until then.
    Migration::Records(Old::V3),
    // 3: store format 5 (`Promotion::release_id`); format 4 until then.
    Migration::Records(Old::V4),
];

/// Brings the database's schema to this build's version, or refuses one a
/// newer prodgate migrated further.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| failed("taking the migration lock", e))?;
    let result = apply(client).await;
    // The lock is also released when the session ends; an unlock failure
    // after a failed migration must not hide the migration's error.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlocked.map_err(|e| failed("releasing the migration lock", e))?;
    Ok(())
}

/// `schema_migrations` as prodgate creates it: what tells prodgate's schema
/// from another tool's table of the same name (golang-migrate's is
/// `(version bigint, dirty boolean)`, Rails' `(version varchar)`).
const MARKER_COLUMNS: [(&str, &str); 2] = [
    ("version", "integer"),
    ("applied_at", "timestamp with time zone"),
];

/// Refuses, before anything is created, a schema that holds another
/// application's tables: prodgate's own `schema_migrations` in another
/// layout, or any table (or view) where prodgate's marker is absent or
/// records no migration yet. An extension's relations (managed databases
/// often put `pg_stat_statements` in `public`) are the database's, not an
/// application's.
async fn refuse_foreign(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    let reading = |e| failed("reading the database's schema", e);
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(reading)?;
    let Some(schema) = schema else {
        return Err(StoreError::Unusable(
            "no schema of the search_path exists in the database, so prodgate has nowhere to \
             create its tables: create one (or fix search_path)"
                .into(),
        ));
    };
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                   WHERE d.classid = 'pg_catalog.pg_class'::regclass
                     AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY c.relname",
            &[&schema],
        )
        .await
        .map_err(reading)?;
    let tables = rows
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(reading)?;
    let foreign = |table: &str| {
        StoreError::Unusable(format!(
            "the database holds a table `{table}` (schema `{schema}`) that is not prodgate's: \
             give prodgate a database (or schema) of its own; nothing was created"
        ))
    };
    if !tables.iter().any(|t| t == "schema_migrations") {
        return match tables.first() {
            Some(t) => Err(foreign(t)),
            None => Ok(()),
        };
    }
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_catalog.pg_attribute a
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = 'schema_migrations' AND c.relkind = 'r'
               AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&schema],
        )
        .await
        .map_err(reading)?;
    let columns = rows
        .iter()
        .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(reading)?;
    if columns
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .ne(MARKER_COLUMNS)
    {
        return Err(foreign("schema_migrations"));
    }
    // prodgate's marker with no migration recorded: created by a start that
    // stopped before migration 1, so nothing else here is prodgate's.
    let applied: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(reading)?;
    match tables.iter().find(|t| *t != "schema_migrations") {
        Some(t) if applied == 0 => Err(foreign(t)),
        _ => Ok(()),
    }
}

async fn apply(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    refuse_foreign(client).await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version     INTEGER PRIMARY KEY,
                applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|e| failed("creating schema_migrations", e))?;
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(|e| failed("reading schema_migrations", e))?;
    let current: i32 = row
        .try_get(0)
        .map_err(|e| failed("reading schema_migrations", e))?;
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if current > known {
        return Err(StoreError::Format {
            found: format!("schema version {current}"),
            supported: format!("schema versions up to {known}"),
        });
    }
    let mut records_current = false;
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        let tx = client
            .transaction()
            .await
            .map_err(|e| failed("starting a migration", e))?;
        match migration {
            Migration::Sql(sql) => tx
                .batch_execute(sql)
                .await
                .map_err(|e| failed(&format!("applying schema migration {version}"), e))?,
            Migration::Records(_) if records_current => {}
            Migration::Records(from) => {
                let (records, promotions) = reencode(&tx, *from).await?;
                records_current = true;
                tracing::info!(
                    records,
                    promotions,
                    "re-encoded the stored records from store format {} in the current one",
                    from.number()
                );
            }
        }
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| failed("recording a schema migration", e))?;
        tx.commit()
            .await
            .map_err(|e| failed(&format!("committing schema migration {version}"), e))?;
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    Ok(())
}

/// Re-encodes every audit record and promotion row written in format
/// `from`, in the migration's transaction. It first takes the writers' log
/// lock, so no batch of a running replica commits between the reads and
/// the writes; a replica of an earlier build that goes on writing after it
/// would write the old format, which is why every replica of it must be
/// stopped before one of this build starts (it could not read the new
/// format either).
async fn reencode(
    tx: &tokio_postgres::Transaction<'_>,
    from: Old,
) -> Result<(u64, u64), StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&super::writer::LOG_LOCK],
    )
    .await
    .map_err(|e| failed("taking the audit log's lock", e))?;
    let records = reencode_table(
        tx,
        "SELECT sequence, record FROM audit WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        "UPDATE audit AS a SET record = u.record
         FROM unnest($1::bigint[], $2::bytea[]) AS u(sequence, record)
         WHERE a.sequence = u.sequence",
        |sequence, bytes| {
            let r = upgrade_record(from, sequence, bytes)?;
            Ok(encode(&RecordRef {
                entry: &r.entry,
                promotion: r.promotion.as_ref(),
            }))
        },
    )
    .await?;
    let promotions = reencode_table(
        tx,
        "SELECT id, record FROM promotions WHERE id > $1 ORDER BY id LIMIT $2",
        "UPDATE promotions AS p SET record = u.record
         FROM unnest($1::bigint[], $2::bytea[]) AS u(id, record)
         WHERE p.id = u.id",
        |id, bytes| Ok(encode(&upgrade_promotion(from, id, bytes)?)),
    )
    .await?;
    Ok((records, promotions))
}

/// Reads `(key, record)` rows with `select` a chunk at a time (keys
/// ascending, after `$1`, at most `$2`) and writes back with `update` (key
/// and record arrays) those whose bytes `upgrade` changes. Returns how many
/// it changed.
async fn reencode_table(
    tx: &tokio_postgres::Transaction<'_>,
    select: &str,
    update: &str,
    upgrade: impl Fn(u64, &[u8]) -> Result<Vec<u8>, StoreError>,
) -> Result<u64, StoreError> {
    let reading = |e| failed("reading the records to re-encode", e);
    let mut after = 0i64;
    let mut changed = 0;
    loop {
        let rows = tx
            .query(select, &[&after, &RECORD_CHUNK])
            .await
            .map_err(reading)?;
        let (mut keys, mut records) = (Vec::new(), Vec::new());
        for r in &rows {
            let key: i64 = r.try_get(0).map_err(reading)?;
            let bytes: &[u8] = r.try_get(1).map_err(reading)?;
            let upgraded = upgrade(super::uint(key), bytes)?;
            if upgraded != bytes {
                keys.push(key);
                records.push(upgraded);
            }
            after = key;
        }
        if !keys.is_empty() {
            tx.execute(update, &[&keys, &records])
                .await
                .map_err(|e| failed("writing the re-encoded records", e))?;
            changed += keys.len() as u64;
        }
        if (rows.len() as i64) < RECORD_CHUNK {
            return Ok(changed);
        }
    }
}
