//! PostgreSQL: the embedded schema migrations and every statement the data writer and the API
//! share. All values travel as bind parameters; no SQL is ever built from data.

use crate::amqp::Backoff;
use crate::contract::{AnyFeature, FeatureType};
use crate::runtime::ServiceError;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::time::Duration;
use tokio_postgres::{Client, GenericClient, NoTls, Row, Statement};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The migrations, in the order they are applied (the contract's table definition).
pub use contract::sql::{MIGRATIONS, Migration};

/// Key of the transaction-scoped advisory lock that serialises migrations across processes
/// (arbitrary, but fixed: every writer must use the same one). ASCII "apq-mig" as an integer.
const MIGRATION_LOCK_KEY: i64 = 0x0061_7071_2d6d_6967;

/// Name of the idempotency constraint (dropped by the `fault_ignore_unique` test hook).
pub const UNIQUE_CONSTRAINT: &str = "features_message_id_key";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server's own message when there is one (tokio-postgres shows only "db error").
    #[error("database error: {}", .0.as_db_error().map(|d| format!("{}: {} ({})", d.severity(), d.message(), d.code().code())).unwrap_or_else(|| .0.to_string()))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("value out of range for column {column}: {detail}")]
    OutOfRange { column: &'static str, detail: String },
    #[error("{0}")]
    Schema(String),
    /// A deadline of ours expired (the server may never have heard of the request).
    #[error("{0}")]
    Timeout(String),
}

impl DbError {
    /// Whether this is one of our own connect/statement deadlines expiring.
    pub fn is_timeout(&self) -> bool {
        matches!(self, DbError::Timeout(_))
    }

    /// Whether the database refused the data itself (a data exception, an integrity or a size
    /// violation): retrying the same rows can never succeed, unlike a lost connection.
    pub fn is_refusal(&self) -> bool {
        match self {
            DbError::OutOfRange { .. } => true,
            DbError::Postgres(e) => {
                e.code().is_some_and(|c| ["22", "23", "54"].iter().any(|class| c.code().starts_with(class)))
            }
            DbError::Schema(_) | DbError::Timeout(_) => false,
        }
    }
}

impl From<DbError> for ServiceError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Postgres(e) => ServiceError::Db(e),
            other => ServiceError::Other(other.to_string()),
        }
    }
}

/// What keeps a database connection from hanging on a silent network: a connect timeout, TCP
/// keepalive (a dead peer is noticed without traffic) and a server-side statement timeout.
/// `None` everywhere is the `fault_no_deadlines` defect.
#[derive(Debug, Clone, Copy, Default)]
pub struct Liveness {
    /// Bound on TCP connect + startup.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive idle time (probes every second after it, three unanswered = dead).
    pub keepalive_idle: Option<Duration>,
    /// `SET statement_timeout` for the session.
    pub statement_timeout: Option<Duration>,
}

/// Connects, retrying with jittered exponential backoff until it works or `shutdown` fires
/// (None). The connection task is spawned; when it ends (server restart), the client's calls
/// start failing.
pub async fn connect(
    url: &str,
    liveness: Liveness,
    mut backoff: Backoff,
    shutdown: &CancellationToken,
) -> Option<Client> {
    loop {
        match connect_once(url, liveness).await {
            Ok(client) => return Some(client),
            Err(e) => {
                // An attempt that timed out has already waited its whole timeout: the next one
                // goes at once (the link may just have healed), not after a growing delay.
                if e.is_timeout() {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                crate::metrics::reconnect("database", "database_unreachable");
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unreachable");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn connect_once(url: &str, liveness: Liveness) -> Result<Client, DbError> {
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| DbError::Schema(format!("bad database url: {e}")))?;
    if let Some(t) = liveness.connect_timeout {
        cfg.connect_timeout(t);
    }
    if let Some(idle) = liveness.keepalive_idle {
        cfg.keepalives(true).keepalives_idle(idle).keepalives_interval(Duration::from_secs(1)).keepalives_retries(3);
    }
    let connecting = cfg.connect(NoTls);
    // connect_timeout bounds the TCP connect only; the startup exchange needs its own bound.
    let (client, connection) = match liveness.connect_timeout {
        Some(t) => tokio::time::timeout(t, connecting)
            .await
            .map_err(|_| DbError::Timeout(format!("connect timed out after {} ms", t.as_millis())))??,
        None => connecting.await?,
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    if let Some(t) = liveness.statement_timeout {
        let sql = format!("SET statement_timeout = {}", t.as_millis());
        let set = client.batch_execute(&sql);
        match liveness.connect_timeout {
            Some(bound) => tokio::time::timeout(bound, set)
                .await
                .map_err(|_| DbError::Timeout("SET statement_timeout timed out".into()))??,
            None => set.await?,
        }
    }
    Ok(client)
}

/// The API's connection pool. Nothing connects until the first checkout, so this works while the
/// database is down; timeouts keep a dead database from hanging requests.
pub fn pool(url: &str, size: usize) -> Result<deadpool_postgres::Pool, ServiceError> {
    let cfg: tokio_postgres::Config = url.parse().map_err(|e| ServiceError::Pool(format!("bad database url: {e}")))?;
    let mgr = deadpool_postgres::Manager::from_config(
        cfg,
        NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    let t = Some(Duration::from_secs(2));
    deadpool_postgres::Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(t)
        .create_timeout(t)
        .recycle_timeout(t)
        .build()
        .map_err(|e| ServiceError::Pool(e.to_string()))
}

/// Applies every embedded migration not yet recorded, in order, in one transaction that holds an
/// advisory lock, so two writers starting together neither race nor apply anything twice.
/// Returns the versions applied by this call.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    // Checked first, so a least-privilege role whose schema is up to date needs no DDL at all.
    let bookkept: bool = tx.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[]).await?.get(0);
    if !bookkept {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INT         PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
    }
    let done: Vec<i32> =
        tx.query("SELECT version FROM schema_migrations", &[]).await?.iter().map(|r| r.get(0)).collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql).await?;
        tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())", &[&m.version]).await?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        applied.push(m.version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// The least-privilege roles `pipeline migrate` creates and grants.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// (name, password) of the DataWriter's role: INSERT on `features` only.
    pub writer: Option<(String, Option<String>)>,
    /// (name, password) of the REST API's role: SELECT on `features` only.
    pub reader: Option<(String, Option<String>)>,
}

impl Roles {
    /// From `APQ_DB_WRITER_ROLE`/`_PASSWORD` and `APQ_DB_READER_ROLE`/`_PASSWORD`; names must be
    /// plain identifiers (`[a-z_][a-z0-9_]{0,62}`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, DbError> {
        let role = |name: &str, pw: &str| -> Result<Option<(String, Option<String>)>, DbError> {
            let Some(n) = get(name).filter(|n| !n.is_empty()) else { return Ok(None) };
            let ok = n.len() <= 63
                && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(DbError::Schema(format!("{name}={n:?} is not a plain lower-case identifier")));
            }
            Ok(Some((n, get(pw).filter(|p| !p.is_empty()))))
        };
        Ok(Roles {
            writer: role("APQ_DB_WRITER_ROLE", "APQ_DB_WRITER_PASSWORD")?,
            reader: role("APQ_DB_READER_ROLE", "APQ_DB_READER_PASSWORD")?,
        })
    }
}

/// `pipeline migrate`: the schema (as its owner), the idempotency constraint as configured, and
/// the least-privilege roles with their grants. Idempotent.
pub async fn setup(url: &str, idempotency: Idempotency, roles: &Roles) -> Result<(), DbError> {
    let (mut client, conn) = tokio_postgres::connect(url, NoTls).await?;
    let task = tokio::spawn(conn);
    // Several set-ups may run at once (one init container per writer replica): one at a time,
    // for the roles too (CREATE ROLE and GRANT race otherwise). Released when the session ends.
    client.execute("SELECT pg_advisory_lock($1)", &[&(MIGRATION_LOCK_KEY + 1)]).await?;
    migrate(&mut client).await?;
    set_idempotency(&client, idempotency).await?;
    // The writer needs INSERT, the id sequence, the conflict target column, and to read the
    // migration bookkeeping; the reader needs SELECT on the table. Nothing else: no
    // UPDATE, DELETE, TRUNCATE or DDL.
    type Role = Option<(String, Option<String>)>;
    let grants: [(&Role, &[&str]); 2] = [
        (
            &roles.writer,
            &[
                "GRANT INSERT ON features TO {role}",
                // ON CONFLICT (message_id) reads the conflict target: that one column, no more.
                "GRANT SELECT (message_id) ON features TO {role}",
                "GRANT USAGE ON SEQUENCE features_id_seq TO {role}",
                "GRANT SELECT ON schema_migrations TO {role}",
            ],
        ),
        (&roles.reader, &["GRANT SELECT ON features TO {role}"]),
    ];
    for (role, statements) in grants {
        let Some((name, password)) = role else { continue };
        let exists: bool =
            client.query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[name]).await?.get(0);
        // Identifiers and passwords cannot be bind parameters: format() quotes them.
        let ddl: String = match (exists, password) {
            (false, Some(pw)) => client
                .query_one("SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", &[name, pw])
                .await?
                .get(0),
            (false, None) => client.query_one("SELECT format('CREATE ROLE %I LOGIN', $1::text)", &[name]).await?.get(0),
            (true, Some(pw)) => client
                .query_one("SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", &[name, pw])
                .await?
                .get(0),
            (true, None) => client.query_one("SELECT format('ALTER ROLE %I LOGIN', $1::text)", &[name]).await?.get(0),
        };
        if !ddl.is_empty() {
            client.batch_execute(&ddl).await?;
        }
        let quoted: String = client.query_one("SELECT quote_ident($1::text)", &[name]).await?.get(0);
        // Whatever an existing role had on the table before, it gets exactly the grants below.
        client.batch_execute(&format!("REVOKE ALL ON features FROM {quoted}")).await?;
        for statement in statements {
            client.batch_execute(&statement.replace("{role}", &quoted)).await?;
        }
        tracing::info!(role = name, "least-privilege role granted");
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// Which idempotency keys the table must have: both in production; the fault hooks drop them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    /// `UNIQUE(message_id)` (off under `data_writer.fault_ignore_unique`).
    pub message_id: bool,
    /// The per-source backstop `UNIQUE(source_message_id, feature_type)` (off under either
    /// `fault_ignore_unique` or `faults.random_output_ids`).
    pub source_backstop: bool,
}

impl Idempotency {
    pub const FULL: Idempotency = Idempotency { message_id: true, source_backstop: true };
    pub const NONE: Idempotency = Idempotency { message_id: false, source_backstop: false };
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        let unique = !s.data_writer.fault_ignore_unique;
        Idempotency { message_id: unique, source_backstop: unique && !s.faults.random_output_ids }
    }
}

/// Makes the idempotency keys present or absent as `want` says (the fault hooks drop them).
/// Restoring one fails with a clear error if an earlier faulty run left duplicate rows behind.
pub async fn set_idempotency(client: &Client, want: Idempotency) -> Result<(), DbError> {
    let has_constraint = client
        .query_opt(
            "SELECT 1 FROM pg_constraint WHERE conname = $1 AND conrelid = 'features'::regclass",
            &[&UNIQUE_CONSTRAINT],
        )
        .await?
        .is_some();
    let has_index: bool =
        client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&contract::sql::SOURCE_TYPE_INDEX]).await?.get(0);
    match (want.message_id, has_constraint) {
        (false, true) => {
            client.batch_execute("ALTER TABLE features DROP CONSTRAINT IF EXISTS features_message_id_key").await?;
        }
        (true, false) => {
            client
                .batch_execute("ALTER TABLE features ADD CONSTRAINT features_message_id_key UNIQUE (message_id)")
                .await
                .map_err(|e| DbError::Schema(format!("cannot restore the UNIQUE(message_id) constraint: {e}")))?;
        }
        _ => {}
    }
    match (want.source_backstop, has_index) {
        (false, true) => client.batch_execute("DROP INDEX IF EXISTS features_source_type_key").await?,
        (true, false) => client
            .batch_execute("CREATE UNIQUE INDEX features_source_type_key ON features (source_message_id, feature_type)")
            .await
            .map_err(|e| DbError::Schema(format!("cannot restore UNIQUE(source_message_id, feature_type): {e}")))?,
        _ => {}
    }
    Ok(())
}

/// Untargeted `ON CONFLICT DO NOTHING`: a copy of a stored message (same `message_id`) and a
/// second row for a stored source chunk and type (the backstop) are both skipped.
const INSERT_IDEMPOTENT: &str = "INSERT INTO features
    (message_id, feature_type, sensor_id, source_message_id, sequence, captured_at, processed_by, features, message, received_at)
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::int8[], $6::timestamptz[], $7::text[], $8::jsonb[], $9::jsonb[], $10::timestamptz[])
    ON CONFLICT DO NOTHING";

/// The fault hook's variant: no conflict handling, so redeliveries become extra rows.
const INSERT_IGNORING_UNIQUE: &str = "INSERT INTO features
    (message_id, feature_type, sensor_id, source_message_id, sequence, captured_at, processed_by, features, message, received_at)
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::int8[], $6::timestamptz[], $7::text[], $8::jsonb[], $9::jsonb[], $10::timestamptz[])";

/// The INSERT a writer runs, for [`prepare_insert`].
pub fn insert_sql(ignore_unique: bool) -> &'static str {
    if ignore_unique { INSERT_IGNORING_UNIQUE } else { INSERT_IDEMPOTENT }
}

/// Prepares the writer's INSERT once per connection, so each batch costs one round trip
/// (an unprepared statement costs a Parse/Describe round trip first).
pub async fn prepare_insert<C: GenericClient>(client: &C, ignore_unique: bool) -> Result<Statement, DbError> {
    Ok(client.prepare(insert_sql(ignore_unique)).await?)
}

/// Inserts a batch with ONE statement; returns the rows actually inserted (duplicates of an
/// existing `message_id` are skipped unless `ignore_unique`).
pub async fn insert_batch<C: GenericClient>(
    client: &C,
    batch: &[AnyFeature],
    ignore_unique: bool,
) -> Result<u64, DbError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let statement = prepare_insert(client, ignore_unique).await?;
    insert_prepared(client, &statement, batch, &[]).await
}

/// [`insert_batch`] with a statement from [`prepare_insert`]. Outside a transaction the
/// statement is its own transaction: all rows or none, one round trip. `received[i]` is when
/// `batch[i]`'s delivery arrived (the `received_at` column, contract 1.4); empty = not recorded.
pub async fn insert_prepared<C: GenericClient>(
    client: &C,
    statement: &Statement,
    batch: &[AnyFeature],
    received: &[DateTime<Utc>],
) -> Result<u64, DbError> {
    if batch.is_empty() {
        return Ok(0);
    }
    // Sorted by key so that two writers inserting overlapping batches lock in the same order
    // (no deadlock between them).
    let mut rows: Vec<(&AnyFeature, Option<DateTime<Utc>>)> =
        batch.iter().enumerate().map(|(i, f)| (f, received.get(i).copied())).collect();
    rows.sort_by_key(|(f, _)| f.message_id());
    let n = rows.len();
    let (mut ids, mut types, mut sensors, mut sources) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut seqs, mut captured, mut by, mut features) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut messages, mut arrived) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (f, at) in rows {
        arrived.push(at);
        ids.push(f.message_id());
        types.push(f.feature_type().as_str());
        sensors.push(f.sensor_id());
        sources.push(f.source_message_id());
        seqs.push(sequence_to_db(f.sequence())?);
        captured.push(f.captured_at());
        by.push(f.processed_by());
        features.push(f.features_json());
        messages.push(f.to_json());
    }
    Ok(client
        .execute(statement, &[&ids, &types, &sensors, &sources, &seqs, &captured, &by, &features, &messages, &arrived])
        .await?)
}

/// `sequence` is a u64 on the wire and a BIGINT in the table.
pub fn sequence_to_db(sequence: u64) -> Result<i64, DbError> {
    i64::try_from(sequence)
        .map_err(|_| DbError::OutOfRange { column: "sequence", detail: format!("{sequence} exceeds {}", i64::MAX) })
}

/// One stored feature, as the API serves it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureRow {
    /// The feature message's id.
    pub message_id: Uuid,
    /// `A` or `B`.
    pub feature_type: String,
    /// The sensor that captured the audio.
    pub sensor_id: String,
    /// The audio chunk it derives from.
    pub source_message_id: Uuid,
    /// The chunk's per-sensor sequence number.
    pub sequence: i64,
    /// When the audio was captured (UTC, microseconds).
    #[serde(serialize_with = "micros")]
    pub captured_at: DateTime<Utc>,
    /// The algorithm instance that produced it.
    pub processed_by: String,
    /// The `features` object as stored.
    pub features: Value,
    /// When the writer committed it (UTC, microseconds).
    #[serde(serialize_with = "micros")]
    pub written_at: DateTime<Utc>,
}

/// RFC 3339 in UTC with exactly six fractional digits (PostgreSQL's precision).
pub fn format_micros(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn micros<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_micros(t))
}

impl FeatureRow {
    fn from_row(r: &Row) -> Self {
        FeatureRow {
            message_id: r.get("message_id"),
            feature_type: r.get("feature_type"),
            sensor_id: r.get("sensor_id"),
            source_message_id: r.get("source_message_id"),
            sequence: r.get("sequence"),
            captured_at: r.get("captured_at"),
            processed_by: r.get("processed_by"),
            features: r.get("features"),
            written_at: r.get("written_at"),
        }
    }
}

/// The served columns, as a literal so the statements below stay compile-time constants.
macro_rules! columns {
    () => {
        "message_id, feature_type, sensor_id, source_message_id, sequence, captured_at, processed_by, features, written_at"
    };
}

/// The open bounds use ±infinity and the nil UUID instead of `IS NULL OR ...`, so the planner can
/// use `features_history_idx` as a range.
const HISTORY_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM features
     WHERE sensor_id = $1
       AND feature_type = ANY($2::bpchar[])
       AND captured_at >= COALESCE($3::timestamptz, '-infinity')
       AND captured_at <  COALESCE($4::timestamptz, 'infinity')
       AND (captured_at, message_id) > (COALESCE($5::timestamptz, '-infinity'),
                                        COALESCE($6::uuid, '00000000-0000-0000-0000-000000000000'))
     ORDER BY captured_at, message_id
     LIMIT $7"
);

const GET_BY_ID_SQL: &str = concat!("SELECT ", columns!(), " FROM features WHERE message_id = $1 ORDER BY id LIMIT 1");

const LATEST_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM features WHERE sensor_id = $1 AND feature_type = $2::bpchar
     ORDER BY captured_at DESC, sequence DESC, message_id DESC LIMIT 1"
);

/// The historical query's filter; `None` means "no bound".
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    /// Required sensor.
    pub sensor_id: String,
    /// One type, or both when `None`.
    pub feature_type: Option<FeatureType>,
    /// Inclusive lower bound on `captured_at`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `captured_at`.
    pub to: Option<DateTime<Utc>>,
    /// Keyset position: only rows strictly after `(captured_at, message_id)`.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Rows to fetch.
    pub limit: i64,
}

/// Keyset page ordered by `(captured_at, message_id)`.
pub async fn history<C: GenericClient>(client: &C, q: &HistoryQuery) -> Result<Vec<FeatureRow>, DbError> {
    let types: Vec<&str> = match q.feature_type {
        Some(t) => vec![t.as_str()],
        None => vec!["A", "B"],
    };
    let (after_t, after_id) = match q.after {
        Some((t, id)) => (Some(t), Some(id)),
        None => (None, None),
    };
    let rows =
        client.query(HISTORY_SQL, &[&q.sensor_id, &types, &q.from, &q.to, &after_t, &after_id, &q.limit]).await?;
    Ok(rows.iter().map(FeatureRow::from_row).collect())
}

/// One row by its message id (the first, should the fault hook have duplicated it).
pub async fn get_by_id<C: GenericClient>(client: &C, message_id: Uuid) -> Result<Option<FeatureRow>, DbError> {
    Ok(client.query_opt(GET_BY_ID_SQL, &[&message_id]).await?.as_ref().map(FeatureRow::from_row))
}

/// The newest row of a sensor and type by `(captured_at, sequence, message_id)` — the same order
/// the API's cache uses, so tests can compare the two.
pub async fn latest<C: GenericClient>(
    client: &C,
    sensor_id: &str,
    feature_type: FeatureType,
) -> Result<Option<FeatureRow>, DbError> {
    Ok(client.query_opt(LATEST_SQL, &[&sensor_id, &feature_type.as_str()]).await?.as_ref().map(FeatureRow::from_row))
}

/// The newest stored message (as published) per (sensor, type) for "latest" from the database:
/// the same order as the cache. Rows without a stored message (before migration 0002, or
/// written by tools that fill only the columns) are skipped.
const LATEST_MESSAGE_SQL: &str = "SELECT message FROM features
     WHERE sensor_id = $1 AND feature_type = $2::bpchar AND message IS NOT NULL
     ORDER BY captured_at DESC, sequence DESC, message_id DESC LIMIT 1";

const LATEST_MESSAGES_SQL: &str = "SELECT DISTINCT ON (sensor_id, feature_type) message FROM features
     WHERE message IS NOT NULL
     ORDER BY sensor_id, feature_type, captured_at DESC, sequence DESC, message_id DESC";

/// The newest stored message of one sensor and type (the API's fallback on a cache miss).
pub async fn latest_message<C: GenericClient>(
    client: &C,
    sensor_id: &str,
    feature_type: FeatureType,
) -> Result<Option<Value>, DbError> {
    Ok(client.query_opt(LATEST_MESSAGE_SQL, &[&sensor_id, &feature_type.as_str()]).await?.map(|r| r.get(0)))
}

/// The newest stored message of every sensor and type (the API's cache refill).
pub async fn latest_messages<C: GenericClient>(client: &C) -> Result<Vec<Value>, DbError> {
    Ok(client.query(LATEST_MESSAGES_SQL, &[]).await?.iter().map(|r| r.get(0)).collect())
}

/// Rows stored for a message id (more than 1 only under the fault hook).
pub async fn count_by_id<C: GenericClient>(client: &C, message_id: Uuid) -> Result<i64, DbError> {
    Ok(client.query_one("SELECT count(*) FROM features WHERE message_id = $1", &[&message_id]).await?.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_fixture_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/sql");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, embedded, "a file under fixtures/sql is not registered in db::MIGRATIONS");
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
            let on_disk = std::fs::read_to_string(dir.join(m.name)).unwrap();
            assert_eq!(on_disk, m.sql);
        }
    }

    #[test]
    fn sequences_beyond_bigint_are_refused() {
        assert_eq!(sequence_to_db(i64::MAX as u64).unwrap(), i64::MAX);
        assert!(matches!(sequence_to_db(i64::MAX as u64 + 1), Err(DbError::OutOfRange { .. })));
    }

    #[test]
    fn timestamps_render_in_utc_with_microseconds() {
        let t = DateTime::parse_from_rfc3339("2024-03-01T12:00:00.1234567+02:00").unwrap().with_timezone(&Utc);
        assert_eq!(format_micros(&t), "2024-03-01T10:00:00.123456Z");
    }

    #[test]
    fn refusals_are_data_errors_not_connection_or_schema_errors() {
        let out_of_range = sequence_to_db(u64::MAX).unwrap_err();
        assert!(out_of_range.is_refusal(), "a sequence beyond bigint is refused data: {out_of_range:?}");
        assert!(!DbError::Schema("x".into()).is_refusal());
        assert!(!DbError::Timeout("x".into()).is_refusal());
    }

    #[test]
    fn role_names_are_plain_identifiers_of_at_most_63_bytes() {
        let roles = |writer: &str| {
            let writer = writer.to_string();
            Roles::from_env(move |k| (k == "APQ_DB_WRITER_ROLE").then(|| writer.clone()))
        };
        let longest = format!("w{}", "_".repeat(62));
        assert_eq!(roles(&longest).unwrap().writer, Some((longest.clone(), None)), "63 bytes is PostgreSQL's limit");
        assert!(roles(&format!("{longest}x")).is_err(), "64 bytes would be truncated by PostgreSQL");
        for bad in ["Writer", "1writer", "wri-ter", "wri ter", "wrïter"] {
            assert!(roles(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(roles("").unwrap().writer, None, "empty means unset");
        assert_eq!(roles("apq_writer").unwrap().reader, None);
    }
}
