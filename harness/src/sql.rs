//! PostgreSQL access for assertions on the SUT's `features` table (its schema is part of the
//! contract), plus seeding, clean-up, and per-run database creation.
//!
//! All values travel as parameters; only validated database names are ever spliced into SQL.

use anyhow::{Context as _, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_postgres::{Client, Config, NoTls, Row};
use uuid::Uuid;

/// One row of the contract table, as the API serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    /// The feature message's id (unique: redeliveries must not add rows).
    pub message_id: Uuid,
    /// `A` or `B`.
    pub feature_type: String,
    /// The sensor that captured the audio.
    pub sensor_id: String,
    /// The audio chunk the feature derives from.
    pub source_message_id: Uuid,
    /// The chunk's per-sensor sequence number.
    pub sequence: i64,
    /// When the audio was captured.
    pub captured_at: DateTime<Utc>,
    /// The algorithm instance that produced it.
    pub processed_by: String,
    /// The message's `features` object.
    pub features: Value,
    /// When the row was written.
    pub written_at: DateTime<Utc>,
}

impl FeatureRow {
    /// The row as the API renders it: timestamps in RFC 3339 UTC with six fractional digits
    /// (PostgreSQL's precision).
    pub fn to_json(&self) -> Value {
        json!({
            "message_id": self.message_id,
            "feature_type": self.feature_type,
            "sensor_id": self.sensor_id,
            "source_message_id": self.source_message_id,
            "sequence": self.sequence,
            "captured_at": self.captured_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "processed_by": self.processed_by,
            "features": self.features,
            "written_at": self.written_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        })
    }

    /// The row a writer stores for a feature message (`written_at` = now).
    pub fn from_feature(f: &contract::AnyFeature) -> Self {
        FeatureRow {
            message_id: f.message_id(),
            feature_type: f.feature_type().as_str().to_string(),
            sensor_id: f.sensor_id().to_string(),
            source_message_id: f.source_message_id(),
            sequence: f.sequence() as i64,
            captured_at: f.captured_at(),
            processed_by: f.processed_by().to_string(),
            features: f.features_json(),
            written_at: Utc::now(),
        }
    }

    fn from_row(r: &Row) -> anyhow::Result<Self> {
        Ok(FeatureRow {
            message_id: r.try_get("message_id")?,
            // CHAR(1) comes back padded to its length, which is already 1; trim defensively.
            feature_type: r.try_get::<_, String>("feature_type")?.trim_end().to_owned(),
            sensor_id: r.try_get("sensor_id")?,
            source_message_id: r.try_get("source_message_id")?,
            sequence: r.try_get("sequence")?,
            captured_at: r.try_get("captured_at")?,
            processed_by: r.try_get("processed_by")?,
            features: r.try_get("features")?,
            written_at: r.try_get("written_at")?,
        })
    }
}

/// The selected columns, in `FeatureRow` order.
const COLUMNS: &str =
    "message_id, feature_type, sensor_id, source_message_id, sequence, captured_at, processed_by, features, written_at";

/// Stable order for listings: the API's history order.
const ORDER: &str = "ORDER BY captured_at, message_id";

/// Seeding inserts at most this many rows per statement.
const INSERT_CHUNK: usize = 5_000;

/// A connection to the SUT's database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    /// Shared client; its connection task runs on the tokio runtime.
    client: Arc<Client>,
}

/// What a [`RowInserter`] does with a row whose `message_id` is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflicts {
    /// The statement fails (seeding: a duplicate is a bug worth seeing).
    Fail,
    /// The row is skipped, as the DataWriter does.
    Skip,
}

/// A prepared multi-row INSERT into the contract's table (see [`Db::row_inserter`]).
pub struct RowInserter {
    /// The harness's connection.
    client: Arc<Client>,
    /// The INSERT, prepared once so each call is one round trip.
    statement: tokio_postgres::Statement,
}

impl RowInserter {
    /// Inserts `rows` with one statement (all or none); returns the rows actually inserted.
    pub async fn insert(&self, rows: &[FeatureRow]) -> anyhow::Result<u64> {
        let message_ids: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.feature_type.as_str()).collect();
        let sensors: Vec<&str> = rows.iter().map(|r| r.sensor_id.as_str()).collect();
        let sources: Vec<Uuid> = rows.iter().map(|r| r.source_message_id).collect();
        let sequences: Vec<i64> = rows.iter().map(|r| r.sequence).collect();
        let captured: Vec<DateTime<Utc>> = rows.iter().map(|r| r.captured_at).collect();
        let processed_by: Vec<&str> = rows.iter().map(|r| r.processed_by.as_str()).collect();
        let features: Vec<&Value> = rows.iter().map(|r| &r.features).collect();
        let written: Vec<DateTime<Utc>> = rows.iter().map(|r| r.written_at).collect();
        self.client
            .execute(
                &self.statement,
                &[&message_ids, &types, &sensors, &sources, &sequences, &captured, &processed_by, &features, &written],
            )
            .await
            .with_context(|| format!("inserting {} feature rows", rows.len()))
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("closed", &self.client.is_closed()).finish()
    }
}

impl Db {
    /// Connects (without TLS) and spawns the connection task.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let config: Config = url.parse().context("parsing the PostgreSQL URL")?;
        Self::connect_config(&config).await
    }

    /// Connects with an already built configuration.
    pub async fn connect_config(config: &Config) -> anyhow::Result<Self> {
        let (client, connection) = config.connect(NoTls).await.with_context(|| {
            format!(
                "connecting to PostgreSQL database {} at {}",
                config.get_dbname().unwrap_or("(default)"),
                endpoints(config)
            )
        })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(error = %err, "PostgreSQL connection ended with an error");
            }
        });
        Ok(Db { client: Arc::new(client) })
    }

    /// The raw client, for ad-hoc queries.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> anyhow::Result<Vec<FeatureRow>> {
        let rows = self.client.query(sql, params).await.with_context(|| format!("query: {sql}"))?;
        rows.iter().map(FeatureRow::from_row).collect()
    }

    /// All rows of one sensor, oldest first.
    pub async fn rows_for_sensor(&self, sensor_id: &str) -> anyhow::Result<Vec<FeatureRow>> {
        let sql = format!("SELECT {COLUMNS} FROM features WHERE sensor_id = $1 {ORDER}");
        self.rows(&sql, &[&sensor_id]).await
    }

    /// All rows whose sensor id starts with `prefix` (taken literally: `%` and `_` are escaped).
    pub async fn rows_for_sensor_prefix(&self, prefix: &str) -> anyhow::Result<Vec<FeatureRow>> {
        let sql = format!("SELECT {COLUMNS} FROM features WHERE sensor_id LIKE $1 ESCAPE '\\' {ORDER}");
        self.rows(&sql, &[&like_prefix(prefix)]).await
    }

    /// Rows with this message id; a `Vec` so that a duplicate (a broken unique constraint) shows.
    pub async fn rows_by_message_id(&self, message_id: Uuid) -> anyhow::Result<Vec<FeatureRow>> {
        let sql = format!("SELECT {COLUMNS} FROM features WHERE message_id = $1 ORDER BY id");
        self.rows(&sql, &[&message_id]).await
    }

    /// Rows whose message id is one of `ids`.
    pub async fn rows_by_message_ids(&self, ids: &[Uuid]) -> anyhow::Result<Vec<FeatureRow>> {
        let sql = format!("SELECT {COLUMNS} FROM features WHERE message_id = ANY($1) ORDER BY id");
        self.rows(&sql, &[&ids]).await
    }

    /// Rows derived from any of the audio chunks `ids`.
    pub async fn rows_by_source_ids(&self, ids: &[Uuid]) -> anyhow::Result<Vec<FeatureRow>> {
        let sql = format!("SELECT {COLUMNS} FROM features WHERE source_message_id = ANY($1) ORDER BY id");
        self.rows(&sql, &[&ids]).await
    }

    /// How many A and B rows derive from one audio chunk.
    pub async fn count_by_source(&self, source_message_id: Uuid) -> anyhow::Result<(i64, i64)> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE feature_type = 'A'), count(*) FILTER (WHERE feature_type = 'B') \
                 FROM features WHERE source_message_id = $1",
                &[&source_message_id],
            )
            .await
            .context("counting rows by source_message_id")?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// The row the API's `latest` should serve: newest by captured_at, sequence, message_id.
    pub async fn newest_row(&self, sensor_id: &str, feature_type: &str) -> anyhow::Result<Option<FeatureRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM features WHERE sensor_id = $1 AND feature_type = $2 \
             ORDER BY captured_at DESC, sequence DESC, message_id DESC LIMIT 1"
        );
        Ok(self.rows(&sql, &[&sensor_id, &feature_type]).await?.into_iter().next())
    }

    /// Makes this session read-only (`default_transaction_read_only`): any INSERT, UPDATE or
    /// DELETE through it fails in PostgreSQL, whatever a step tries.
    pub async fn make_read_only(&self) -> anyhow::Result<()> {
        self.client
            .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            .await
            .context("making the harness's database session read-only")
    }

    /// Inserts rows as given (including `written_at`), for seeding history. Each chunk of rows
    /// is one statement, so a chunk lands entirely or not at all. Returns the rows inserted.
    pub async fn insert_rows(&self, rows: &[FeatureRow]) -> anyhow::Result<u64> {
        let inserter = self.row_inserter(Conflicts::Fail).await?;
        let mut inserted = 0;
        for chunk in rows.chunks(INSERT_CHUNK) {
            inserted += inserter.insert(chunk).await?;
        }
        Ok(inserted)
    }

    /// A multi-row INSERT into the contract's table, prepared once: seeding (a duplicate is an
    /// error, so a missing UNIQUE constraint shows), and the load bench's raw-INSERT baseline
    /// (`ON CONFLICT (message_id) DO NOTHING`, like an idempotent writer).
    pub async fn row_inserter(&self, conflicts: Conflicts) -> anyhow::Result<RowInserter> {
        let on_conflict = match conflicts {
            Conflicts::Fail => "",
            Conflicts::Skip => " ON CONFLICT (message_id) DO NOTHING",
        };
        let statement = self
            .client
            .prepare(&format!(
                "INSERT INTO features (message_id, feature_type, sensor_id, source_message_id, sequence, \
                 captured_at, processed_by, features, written_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::int8[], \
                 $6::timestamptz[], $7::text[], $8::jsonb[], $9::timestamptz[]){on_conflict}"
            ))
            .await
            .context("preparing the seeding INSERT")?;
        Ok(RowInserter { client: self.client.clone(), statement })
    }

    /// (source_message_id, feature_type) of every row whose sensor id starts with `prefix`
    /// (taken literally), for reconciling what was published against what was written.
    pub async fn sources_for_sensor_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(Uuid, String)>> {
        let rows = self
            .client
            .query(
                "SELECT source_message_id, feature_type FROM features WHERE sensor_id LIKE $1 ESCAPE '\\'",
                &[&like_prefix(prefix)],
            )
            .await
            .with_context(|| format!("reading (source, type) of sensors {prefix:?}*"))?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<_, String>(1)?.trim_end().to_string()))).collect()
    }

    /// Rows of sensors starting with `prefix` (taken literally).
    pub async fn count_for_sensor_prefix(&self, prefix: &str) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM features WHERE sensor_id LIKE $1 ESCAPE '\\'", &[&like_prefix(prefix)])
            .await
            .with_context(|| format!("counting rows of sensors {prefix:?}*"))?;
        Ok(row.try_get(0)?)
    }

    /// Rows whose sensor id does not start with `prefix` (taken literally): what a run must
    /// leave untouched in a deployment's table.
    pub async fn count_outside_sensor_prefix(&self, prefix: &str) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM features WHERE sensor_id NOT LIKE $1 ESCAPE '\\'", &[&like_prefix(prefix)])
            .await
            .with_context(|| format!("counting rows of sensors other than {prefix:?}*"))?;
        Ok(row.try_get(0)?)
    }

    /// (written_at, rows) per distinct `written_at` of sensors starting with `prefix`, oldest
    /// first. `written_at` defaults to the transaction's start, so each value is one writer batch.
    pub async fn batches_for_sensor_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(DateTime<Utc>, i64)>> {
        let rows = self
            .client
            .query(
                "SELECT written_at, count(*) FROM features WHERE sensor_id LIKE $1 ESCAPE '\\' \
                 GROUP BY written_at ORDER BY written_at",
                &[&like_prefix(prefix)],
            )
            .await
            .with_context(|| format!("reading the writer's batches for sensors {prefix:?}*"))?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Follows rows as they become visible: see [`RowFollower`].
    pub async fn follow_rows(&self) -> anyhow::Result<RowFollower> {
        let after: i64 = self
            .client
            .query_one("SELECT coalesce(max(id), 0) FROM features", &[])
            .await
            .context("reading the newest row id")?
            .try_get(0)?;
        // The timing columns of contract 1.4 are optional: NULL where a deployment lacks them.
        let timing: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM information_schema.columns \
                 WHERE table_name = 'features' AND table_schema = current_schema() \
                 AND column_name IN ('received_at', 'inserted_at')",
                &[],
            )
            .await
            .context("looking for the timing columns")?
            .try_get(0)?;
        let columns = if timing == 2 { "received_at, inserted_at" } else { "NULL::timestamptz, NULL::timestamptz" };
        let statement = self
            .client
            .prepare(&format!(
                "SELECT id, source_message_id, feature_type, written_at, {columns} FROM features \
                 WHERE id > $1 OR id = ANY($2::int8[]) ORDER BY id LIMIT 20000"
            ))
            .await
            .context("preparing the row follower's query")?;
        Ok(RowFollower { db: self.clone(), statement, after, holes: BTreeMap::new() })
    }

    /// Deletes every row whose sensor id starts with `prefix` (taken literally); returns the count.
    pub async fn delete_sensor_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        if prefix.is_empty() {
            // An empty prefix would wipe the table; clean-up is always per namespace.
            bail!("refusing to delete rows for an empty sensor-id prefix");
        }
        self.client
            .execute("DELETE FROM features WHERE sensor_id LIKE $1 ESCAPE '\\'", &[&like_prefix(prefix)])
            .await
            .with_context(|| format!("deleting rows of sensors {prefix:?}*"))
    }
}

/// Reports rows committed after it was created, one cheap prepared query per poll. Writers that
/// commit concurrently (several connections) commit ids out of order: an id skipped below the
/// highest one seen is a hole, asked for again on every poll until it appears or is older than
/// [`HOLE_TTL`] (ids are also skipped for good: a conflicting row consumes one, a rolled-back
/// transaction several).
pub struct RowFollower {
    /// Where to poll.
    db: Db,
    /// The prepared poll: one round trip, no parse or plan per poll.
    statement: tokio_postgres::Statement,
    /// The highest id reported so far.
    after: i64,
    /// Ids below `after` not seen yet, with when they were first missed.
    holes: BTreeMap<i64, std::time::Instant>,
}

/// How long a skipped id is still expected to commit (a writer's transaction is bounded by its
/// write timeout, 5 s by default).
pub const HOLE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Most holes asked for per poll.
const MAX_HOLES: usize = 1_000;

/// A row reported by [`RowFollower::poll`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewRow {
    /// The feature's audio chunk.
    pub source_message_id: Uuid,
    /// `'A'` or `'B'`.
    pub feature_type: char,
    /// The database's clock when the writing transaction started.
    pub written_at: DateTime<Utc>,
    /// When the writer received the message (contract 1.4 `received_at`; None if not recorded).
    pub received_at: Option<DateTime<Utc>>,
    /// When the INSERT produced this row (contract 1.4 `inserted_at`; None if not recorded).
    pub inserted_at: Option<DateTime<Utc>>,
}

impl RowFollower {
    /// Rows committed since the last poll (at most 20 000 per call).
    pub async fn poll(&mut self) -> anyhow::Result<Vec<NewRow>> {
        let now = std::time::Instant::now();
        self.holes.retain(|_, since| now.duration_since(*since) < HOLE_TTL);
        // Bounded, so a run that skips many ids for good (conflicts) keeps its poll cheap; the
        // oldest ids go first.
        while self.holes.len() > MAX_HOLES {
            self.holes.pop_first();
        }
        let holes: Vec<i64> = self.holes.keys().copied().collect();
        let rows =
            self.db.client.query(&self.statement, &[&self.after, &holes]).await.context("polling for new rows")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let (id, source_message_id, ty): (i64, Uuid, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            if self.holes.remove(&id).is_none() {
                // Ids between the previous highest and this one not returned yet: holes.
                for missing in self.after + 1..id {
                    self.holes.insert(missing, now);
                }
                self.after = self.after.max(id);
            }
            let feature_type = ty.chars().next().unwrap_or('?');
            out.push(NewRow {
                source_message_id,
                feature_type,
                written_at: r.try_get(3)?,
                received_at: r.try_get(4)?,
                inserted_at: r.try_get(5)?,
            });
        }
        Ok(out)
    }
}

/// A LIKE pattern matching strings that start with `prefix` literally.
fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Checks a database name against `^[a-z0-9_]{1,63}$` and returns it quoted.
fn quoted_db_name(name: &str) -> anyhow::Result<String> {
    let valid = (1..=63).contains(&name.len()) && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
    if !valid {
        bail!("database name {name:?} must match ^[a-z0-9_]{{1,63}}$");
    }
    Ok(format!("\"{name}\""))
}

/// Connects to the `postgres` database of the server named by `admin_url`.
async fn admin(admin_url: &str) -> anyhow::Result<Db> {
    let mut config: Config = admin_url.parse().context("parsing the PostgreSQL admin URL")?;
    config.dbname("postgres");
    Db::connect_config(&config).await
}

/// Creates database `name` (validated, see [`quoted_db_name`]) for a run.
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let quoted = quoted_db_name(name)?;
    let db = admin(admin_url).await?;
    db.client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
        .with_context(|| format!("creating database {name}"))
}

/// Drops database `name` if it exists, terminating its sessions (`WITH (FORCE)`).
/// Drops login roles (after the databases that granted them anything are gone).
pub async fn drop_roles(admin_url: &str, names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let admin = Db::connect(admin_url).await?;
    for name in names {
        let quoted: String = admin.client.query_one("SELECT quote_ident($1::text)", &[name]).await?.get(0);
        admin
            .client
            .batch_execute(&format!("DROP ROLE IF EXISTS {quoted}"))
            .await
            .with_context(|| format!("dropping role {name}"))?;
    }
    Ok(())
}

pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let quoted = quoted_db_name(name)?;
    let db = admin(admin_url).await?;
    db.client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .await
        .with_context(|| format!("dropping database {name}"))
}

/// `host:port` of every host of a configuration, comma-separated (no Debug text).
fn endpoints(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{} (socket, port {port})", path.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix(r"a_b%c\d"), r"a\_b\%c\\d%");
    }

    #[test]
    fn database_names_are_validated() {
        assert_eq!(quoted_db_name("qa_run_01").unwrap(), "\"qa_run_01\"");
        for bad in ["", "Upper", "a-b", "a\"; DROP", &"x".repeat(64)] {
            assert!(quoted_db_name(bad).is_err(), "{bad}");
        }
    }
}
