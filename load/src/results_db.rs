//! Where the workers of a distributed run meet: a PostgreSQL database (given by URL, created if
//! missing) with two tables, created if missing. Every SQL statement of the distributed runs is
//! in this module.
//!
//! ```sql
//! load_runs    (run_id PK, workers, total_users, total_rate, window_secs, mix, start_at, created_at)
//! load_results (run_id, worker_index, status 'running'|'ready'|'ok'|'failed', error, host,
//!               users, rate, registered_at, ready_at, started_at, finished_at, secs,
//!               ok, errors, rate_limited, requests, statuses jsonb,
//!               raw_hdr bytea, corrected_hdr bytea, interval_us, cpu_secs, goose_json jsonb,
//!               PRIMARY KEY (run_id, worker_index))
//! ```
//!
//! `raw_hdr` and `corrected_hdr` are HdrHistogram V2 serializations (uncompressed, µs), so any
//! HdrHistogram implementation can read them; the merge adds them, which keeps percentiles exact.

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};

/// Tables of a results database (idempotent).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS load_runs (
    run_id       text PRIMARY KEY,
    workers      integer NOT NULL CHECK (workers > 0),
    total_users  integer NOT NULL,
    total_rate   bigint NOT NULL,
    window_secs  bigint NOT NULL,
    mix          text NOT NULL,
    start_at     timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS load_results (
    run_id        text NOT NULL REFERENCES load_runs (run_id) ON DELETE CASCADE,
    worker_index  integer NOT NULL,
    status        text NOT NULL CHECK (status IN ('running', 'ready', 'ok', 'failed')),
    error         text,
    host          text NOT NULL,
    users         integer NOT NULL,
    rate          bigint NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ready_at      timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    secs          double precision,
    ok            bigint,
    errors        bigint,
    rate_limited  bigint,
    requests      bigint,
    statuses      jsonb,
    raw_hdr       bytea,
    corrected_hdr bytea,
    interval_us   bigint,
    cpu_secs      double precision,
    goose_json    jsonb,
    PRIMARY KEY (run_id, worker_index)
);";

/// What every worker of a run must agree on (the first worker to arrive writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The run's id.
    pub run_id: String,
    /// Workers expected to report.
    pub workers: usize,
    /// Users of the whole run.
    pub total_users: usize,
    /// Requests/s of the whole run; 0 = closed loop.
    pub total_rate: u64,
    /// The measured window in seconds.
    pub window_secs: u64,
    /// The REST mix (`latest` or `mixed`).
    pub mix: String,
}

/// A worker's measured results, as stored.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// When its goose run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds goose measured.
    pub secs: f64,
    /// Valid 2xx answers.
    pub ok: u64,
    /// Errors (non-2xx but 429, invalid bodies, transport).
    pub errors: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Requests goose counted.
    pub requests: u64,
    /// Answers by status label.
    pub statuses: serde_json::Value,
    /// HdrHistogram V2 of the OK latencies, µs.
    pub raw_hdr: Vec<u8>,
    /// HdrHistogram V2 of the same, corrected for coordinated omission.
    pub corrected_hdr: Vec<u8>,
    /// Expected interval between one user's sends (the correction's), µs; 0 = closed loop.
    pub interval_us: u64,
    /// CPU seconds (user + system) the worker process used for the whole run.
    pub cpu_secs: f64,
    /// Goose's own JSON report of the run.
    pub goose_json: Option<serde_json::Value>,
}

/// One row of `load_results`.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    /// Completion index.
    pub index: usize,
    /// `running`, `ready`, `ok` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Host (pod) name.
    pub host: String,
    /// Its share of users.
    pub users: usize,
    /// Its share of the rate (0 = closed loop).
    pub rate: u64,
    /// What it measured (empty unless `ok`).
    pub measured: Measured,
}

/// One registered worker before the start (the barrier reads these).
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Completion index.
    pub index: usize,
    /// `running`, `ready`, `ok` or `failed`.
    pub status: String,
    /// When it finished discovering the API.
    pub ready_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A connection to a results database.
pub struct ResultsDb {
    /// The session.
    client: Client,
}

/// Database name of a URL, and the same URL pointing at the `postgres` maintenance database.
fn split_url(url: &str) -> anyhow::Result<(String, tokio_postgres::Config)> {
    let config: tokio_postgres::Config = url.parse().context("parsing the results database URL")?;
    let name = config.get_dbname().context("the results database URL names no database")?.to_string();
    let mut admin = config.clone();
    admin.dbname("postgres");
    Ok((name, admin))
}

async fn connect(config: &tokio_postgres::Config) -> anyhow::Result<Client> {
    let (client, conn) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL {:?} on {:?}", config.get_dbname(), config.get_hosts()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl ResultsDb {
    /// Connects, creating the database (when `create`) and the tables if missing.
    pub async fn open(url: &str, create: bool) -> anyhow::Result<Self> {
        let config: tokio_postgres::Config = url.parse().context("parsing the results database URL")?;
        let client = match connect(&config).await {
            Ok(c) => c,
            Err(first) if create => {
                let (name, admin) = split_url(url)?;
                let admin = connect(&admin).await.with_context(|| format!("{first:#}"))?;
                let exists = admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?;
                if exists.is_none() {
                    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
                    // Two workers may race to create it; the loser sees "already exists".
                    if let Err(e) = admin.batch_execute(&format!("CREATE DATABASE {quoted}")).await
                        && !e.to_string().contains("already exists")
                    {
                        return Err(e).with_context(|| format!("creating results database {name}"));
                    }
                }
                connect(&config).await?
            }
            Err(e) => return Err(e),
        };
        // Concurrent CREATE TABLE IF NOT EXISTS can still collide on the catalog; serialize it
        // with a lock held until the schema transaction commits.
        client
            .batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock(731400); {SCHEMA} COMMIT;"))
            .await
            .context("creating the results tables")?;
        Ok(ResultsDb { client })
    }

    /// Records the run (first worker) or checks that it matches what is recorded.
    pub async fn open_run(&self, run: &RunSpec) -> anyhow::Result<()> {
        self.client
            .execute(
                "INSERT INTO load_runs (run_id, workers, total_users, total_rate, window_secs, mix)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id) DO NOTHING",
                &[
                    &run.run_id,
                    &(run.workers as i32),
                    &(run.total_users as i32),
                    &(run.total_rate as i64),
                    &(run.window_secs as i64),
                    &run.mix,
                ],
            )
            .await
            .context("recording the run")?;
        let stored = self.run(&run.run_id).await?.context("the run vanished right after it was recorded")?;
        if &stored != run {
            bail!("run {} is already recorded with other settings: {stored:?}, this worker has {run:?}", run.run_id);
        }
        Ok(())
    }

    /// The recorded run, if any.
    pub async fn run(&self, run_id: &str) -> anyhow::Result<Option<RunSpec>> {
        let row = self
            .client
            .query_opt(
                "SELECT workers, total_users, total_rate, window_secs, mix FROM load_runs WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .context("reading the run")?;
        Ok(row.map(|r| RunSpec {
            run_id: run_id.to_string(),
            workers: r.get::<_, i32>(0) as usize,
            total_users: r.get::<_, i32>(1) as usize,
            total_rate: r.get::<_, i64>(2) as u64,
            window_secs: r.get::<_, i64>(3) as u64,
            mix: r.get(4),
        }))
    }

    /// Registers a worker (status `running`); a second registration of the same index fails.
    pub async fn register(
        &self,
        run_id: &str,
        index: usize,
        host: &str,
        users: usize,
        rate: u64,
    ) -> anyhow::Result<()> {
        let n = self
            .client
            .execute(
                "INSERT INTO load_results (run_id, worker_index, status, host, users, rate)
                 VALUES ($1, $2, 'running', $3, $4, $5) ON CONFLICT (run_id, worker_index) DO NOTHING",
                &[&run_id, &(index as i32), &host, &(users as i32), &(rate as i64)],
            )
            .await
            .context("registering the worker")?;
        if n == 0 {
            bail!("worker {index} of run {run_id} is already registered: every index runs once (use a new run id)");
        }
        Ok(())
    }

    /// Marks a worker ready to start (target discovered).
    pub async fn set_ready(&self, run_id: &str, index: usize) -> anyhow::Result<()> {
        self.client
            .execute(
                "UPDATE load_results SET status = 'ready', ready_at = clock_timestamp()
                 WHERE run_id = $1 AND worker_index = $2 AND status = 'running'",
                &[&run_id, &(index as i32)],
            )
            .await
            .context("marking the worker ready")?;
        Ok(())
    }

    /// Where every registered worker stands before the start.
    pub async fn readiness(&self, run_id: &str) -> anyhow::Result<Vec<Readiness>> {
        let rows = self
            .client
            .query(
                "SELECT worker_index, status, ready_at, error FROM load_results WHERE run_id = $1 ORDER BY worker_index",
                &[&run_id],
            )
            .await
            .context("reading the workers' readiness")?;
        Ok(rows
            .iter()
            .map(|r| Readiness {
                index: r.get::<_, i32>(0) as usize,
                status: r.get(1),
                ready_at: r.get(2),
                error: r.get(3),
            })
            .collect())
    }

    /// Sets the run's start time unless one is set; returns the one in force.
    pub async fn set_start(&self, run_id: &str, at: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
        let row = self
            .client
            .query_one(
                "UPDATE load_runs SET start_at = COALESCE(start_at, $2) WHERE run_id = $1 RETURNING start_at",
                &[&run_id, &at],
            )
            .await
            .context("setting the coordinated start time")?;
        Ok(row.get(0))
    }

    /// Stores a worker's results (status `ok`).
    pub async fn store_ok(&self, run_id: &str, index: usize, m: &Measured) -> anyhow::Result<()> {
        let n = self
            .client
            .execute(
                "UPDATE load_results SET status = 'ok', started_at = $3, finished_at = $4, secs = $5, ok = $6,
                    errors = $7, rate_limited = $8, requests = $9, statuses = $10, raw_hdr = $11,
                    corrected_hdr = $12, interval_us = $13, cpu_secs = $14, goose_json = $15
                 WHERE run_id = $1 AND worker_index = $2 AND status IN ('running', 'ready')",
                &[
                    &run_id,
                    &(index as i32),
                    &m.started_at,
                    &m.finished_at,
                    &m.secs,
                    &(m.ok as i64),
                    &(m.errors as i64),
                    &(m.rate_limited as i64),
                    &(m.requests as i64),
                    &m.statuses,
                    &m.raw_hdr,
                    &m.corrected_hdr,
                    &(m.interval_us as i64),
                    &m.cpu_secs,
                    &m.goose_json,
                ],
            )
            .await
            .context("storing the worker's results")?;
        if n != 1 {
            bail!("worker {index} of run {run_id} was not registered (or already reported): results not stored");
        }
        Ok(())
    }

    /// Marks a worker failed with the reason (kept if it already failed).
    pub async fn store_failed(&self, run_id: &str, index: usize, error: &str) -> anyhow::Result<()> {
        self.client
            .execute(
                "UPDATE load_results SET status = 'failed', error = $3, finished_at = clock_timestamp()
                 WHERE run_id = $1 AND worker_index = $2 AND status <> 'failed'",
                &[&run_id, &(index as i32), &error],
            )
            .await
            .context("recording the worker's failure")?;
        Ok(())
    }

    /// Every worker row of a run, by index.
    pub async fn results(&self, run_id: &str) -> anyhow::Result<Vec<WorkerRow>> {
        let rows = self
            .client
            .query(
                "SELECT worker_index, status, error, host, users, rate, started_at, finished_at, secs, ok, errors,
                        rate_limited, requests, statuses, raw_hdr, corrected_hdr, interval_us, cpu_secs, goose_json
                 FROM load_results WHERE run_id = $1 ORDER BY worker_index",
                &[&run_id],
            )
            .await
            .context("reading the workers' results")?;
        Ok(rows
            .iter()
            .map(|r| WorkerRow {
                index: r.get::<_, i32>(0) as usize,
                status: r.get(1),
                error: r.get(2),
                host: r.get(3),
                users: r.get::<_, i32>(4) as usize,
                rate: r.get::<_, i64>(5) as u64,
                measured: Measured {
                    started_at: r.get(6),
                    finished_at: r.get(7),
                    secs: r.get::<_, Option<f64>>(8).unwrap_or(0.0),
                    ok: r.get::<_, Option<i64>>(9).unwrap_or(0) as u64,
                    errors: r.get::<_, Option<i64>>(10).unwrap_or(0) as u64,
                    rate_limited: r.get::<_, Option<i64>>(11).unwrap_or(0) as u64,
                    requests: r.get::<_, Option<i64>>(12).unwrap_or(0) as u64,
                    statuses: r.get::<_, Option<serde_json::Value>>(13).unwrap_or(serde_json::Value::Null),
                    raw_hdr: r.get::<_, Option<Vec<u8>>>(14).unwrap_or_default(),
                    corrected_hdr: r.get::<_, Option<Vec<u8>>>(15).unwrap_or_default(),
                    interval_us: r.get::<_, Option<i64>>(16).unwrap_or(0) as u64,
                    cpu_secs: r.get::<_, Option<f64>>(17).unwrap_or(0.0),
                    goose_json: r.get(18),
                },
            })
            .collect())
    }
}

/// Creates database `name` on the server of `admin_url` (for a local run's own results).
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    harness::sql::create_database(admin_url, name).await?;
    harness::env::with_database(admin_url, name)
}

/// Drops database `name` on the server of `admin_url`.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    harness::sql::drop_database(admin_url, name).await
}
