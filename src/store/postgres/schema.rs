//! The schema, as versioned migrations applied at open under a
//! session-level advisory lock, so processes starting together apply each
//! migration once; `schema_migrations` records what was applied.
//!
//! Records are stored as columns where a query filters or orders by them,
//! and otherwise as the same postcard bytes sled stores (`record`): the
//! domain types change often and a column per field would have to follow
//! each change, while one codec keeps the audit record byte-identical on
//! both backends (a later `migrate --from-sled` copies it as is).

use super::backend as failed;
use crate::store::StoreError;

/// Held while migrating; any constant unlikely to clash with the
/// application's other locks ("prodgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x7072_6f64_6761_7465;

/// Migration `n` is `MIGRATIONS[n - 1]`; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the audit log, the records derived from it, the Merkle nodes.
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
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        let tx = client
            .transaction()
            .await
            .map_err(|e| failed("starting a migration", e))?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| failed(&format!("applying schema migration {version}"), e))?;
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
