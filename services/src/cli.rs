//! The `pipeline` binary: one subcommand per component, so every instance is its own OS process,
//! plus `live`, which runs the whole pipeline in one process for manual exploration and external
//! load tools (API on a printed port with a printed token; Ctrl-C stops everything cleanly).

use crate::config::Settings;
use crate::runtime::{Health, ServiceError, serve_health, shutdown_on_signals};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "pipeline", about = "Reference audio pipeline components (the system under test)")]
pub struct Cli {
    /// TOML config file (env `APQ_*` variables override it).
    #[arg(long, global = true, env = "APQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// Instance id reported in `processed_by` and logs.
    #[arg(long, global = true)]
    pub instance_id: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish audio chunks to the audio_stream queue.
    Sensor,
    /// Audio chunk → Feature A (competing consumer).
    AlgorithmA,
    /// Feature A → Feature B (competing consumer).
    AlgorithmB,
    /// Persist Feature A and B to PostgreSQL.
    DataWriter,
    /// Serve the REST API.
    RestApi,
    /// Apply the database schema as its owner (APQ_DATABASE_URL), then create (if missing) and
    /// grant the least-privilege roles the components connect as: APQ_DB_WRITER_ROLE (INSERT on
    /// `features`) and APQ_DB_READER_ROLE (SELECT on `features`), with APQ_DB_WRITER_PASSWORD /
    /// APQ_DB_READER_PASSWORD where the server wants passwords. Exits when done.
    Migrate,
    /// Delete every queue and exchange of the configured namespace (and optionally its database):
    /// clean-up after a run that used its own namespace.
    Purge {
        /// Also drop the database named in the database URL.
        #[arg(long)]
        drop_database: bool,
    },
    /// Run every component in this process with a sensor streaming (for exploration).
    Live {
        /// Algorithm A instances.
        #[arg(long, default_value_t = 2)]
        algorithm_a: usize,
        /// Algorithm B instances.
        #[arg(long, default_value_t = 1)]
        algorithm_b: usize,
        /// Number of sensors streaming (each `sensor-N`).
        #[arg(long, default_value_t = 1)]
        sensors: usize,
    },
}

impl Command {
    /// The `component` label of this process's metrics.
    fn component(&self) -> &'static str {
        match self {
            Command::Sensor => crate::sensor::COMPONENT,
            Command::AlgorithmA => crate::algorithm_a::COMPONENT,
            Command::AlgorithmB => crate::algorithm_b::COMPONENT,
            Command::DataWriter => crate::data_writer::COMPONENT,
            Command::RestApi => crate::rest_api::COMPONENT,
            Command::Migrate => "migrate",
            Command::Purge { .. } => "purge",
            Command::Live { .. } => "live",
        }
    }
}

pub fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // Each subcommand's --help lists the APQ_* variables it reads, with their defaults.
    let mut command = Cli::command();
    let names: Vec<String> = command.get_subcommands().map(|c| c.get_name().to_string()).collect();
    for name in names {
        let help = crate::config::env_help(&name);
        command = command.mut_subcommand(&name, |c| c.after_help(help));
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    crate::telemetry::init("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipeline: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<(), ServiceError> {
    let mut settings = Settings::load(cli.config.as_deref()).map_err(|e| ServiceError::Other(e.to_string()))?;
    if let Some(id) = cli.instance_id {
        settings.instance_id = Some(id);
    }
    if settings.amqp.fault_byte_truncate_detail {
        tracing::warn!(
            "FAULT INJECTION ACTIVE: amqp.fault_byte_truncate_detail cuts dead-letter details inside characters"
        );
        crate::amqp::FAULT_BYTE_TRUNCATE_DETAIL.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let shutdown = shutdown_on_signals();
    crate::metrics::install(cli.command.component());
    match cli.command {
        Command::Sensor => {
            let report = crate::sensor::run(&settings, shutdown).await?;
            println!("{}", serde_json::json!({ "event": "sensor_done", "report": report }));
            Ok(())
        }
        Command::AlgorithmA => consumer(settings, shutdown, Component::A).await,
        Command::AlgorithmB => consumer(settings, shutdown, Component::B).await,
        Command::DataWriter => consumer(settings, shutdown, Component::Writer).await,
        Command::RestApi => {
            let app = crate::rest_api::build(settings, shutdown).await?;
            app.run_until_stopped().await
        }
        Command::Purge { drop_database } => purge(&settings, drop_database).await,
        Command::Migrate => {
            let roles = crate::db::Roles::from_env(|k| std::env::var(k).ok())
                .map_err(|e| ServiceError::Other(e.to_string()))?;
            crate::db::setup(&settings.database.url, crate::db::Idempotency::from_settings(&settings), &roles).await?;
            println!("{}", serde_json::json!({ "event": "migrated" }));
            Ok(())
        }
        Command::Live { algorithm_a, algorithm_b, sensors } => {
            live(settings, shutdown, algorithm_a, algorithm_b, sensors).await
        }
    }
}

#[derive(Clone, Copy)]
enum Component {
    A,
    B,
    Writer,
}

async fn consumer(settings: Settings, shutdown: CancellationToken, which: Component) -> Result<(), ServiceError> {
    // The writer's work counts as stalled once a write is overdue; the algorithms' after 10 s.
    let health = match which {
        Component::Writer => Health::with_stall_after(Duration::from_millis(settings.data_writer.write_timeout_ms)),
        _ => Health::default(),
    };
    if let Some(bind) = settings.health.bind.clone() {
        let port = serve_health(&bind, health.clone(), shutdown.clone()).await?;
        tracing::info!(port, "health endpoint up");
    }
    // A graceful shutdown finishes in-flight work, but never waits forever for it (a hung
    // database or broker): after the bound the process exits and the broker redelivers.
    let bound = (!settings.data_writer.fault_no_deadlines)
        .then(|| Duration::from_millis(settings.data_writer.shutdown_timeout_ms));
    let watchdog = shutdown.clone();
    let run = async move {
        match which {
            Component::A => crate::algorithm_a::run(settings, health, shutdown).await,
            Component::B => crate::algorithm_b::run(settings, health, shutdown).await,
            Component::Writer => crate::data_writer::run(settings, health, shutdown).await,
        }
    };
    match bound {
        None => run.await,
        Some(bound) => {
            let stop = watchdog.clone();
            tokio::select! {
                _ = run => {}
                _ = async { stop.cancelled().await; tokio::time::sleep(bound).await } => {
                    tracing::warn!(bound_ms = bound.as_millis() as u64, "shutdown overran its bound; exiting with work unsettled (it will be redelivered)");
                }
            }
        }
    }
    Ok(())
}

async fn purge(settings: &Settings, drop_database: bool) -> Result<(), ServiceError> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    if settings.amqp.namespace.is_empty() {
        return Err(ServiceError::Other("refusing to purge the un-namespaced topology; set APQ_NAMESPACE".into()));
    }
    let names = crate::topology::Names::new(&settings.amqp.namespace);
    let conn = lapin::Connection::connect(&settings.amqp.url, lapin::ConnectionProperties::default()).await?;
    // A failed delete closes its channel, so each gets a fresh one.
    for q in names.all_queues() {
        let ch = conn.create_channel().await?;
        if ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await.is_ok() {
            ch.close(200, "purged".into()).await.ok();
        }
    }
    for x in names.all_exchanges() {
        let ch = conn.create_channel().await?;
        if ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await.is_ok() {
            ch.close(200, "purged".into()).await.ok();
        }
    }
    conn.close(200, "purged".into()).await.ok();
    if drop_database {
        let cfg: tokio_postgres::Config =
            settings.database.url.parse().map_err(|e| ServiceError::Other(format!("bad database url: {e}")))?;
        let db = cfg.get_dbname().unwrap_or("postgres").to_string();
        if db == "postgres" {
            return Err(ServiceError::Other("refusing to drop the postgres database".into()));
        }
        let mut admin = cfg.clone();
        admin.dbname("postgres");
        let (client, c) = admin.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(c);
        // Identifiers cannot be bound as parameters; quote it instead.
        client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", db.replace('"', "\"\""))).await?;
    }
    eprintln!("purged namespace {:?}{}", settings.amqp.namespace, if drop_database { " and its database" } else { "" });
    Ok(())
}

/// Creates the database named in `url` if it does not exist (connecting to `postgres`).
pub async fn ensure_database(url: &str) -> Result<(), ServiceError> {
    let cfg: tokio_postgres::Config = url.parse().map_err(|e| ServiceError::Other(format!("bad database url: {e}")))?;
    let db = cfg.get_dbname().unwrap_or("postgres").to_string();
    let mut admin = cfg.clone();
    admin.dbname("postgres");
    let (client, conn) = admin.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db]).await?.is_some();
    if !exists {
        // Identifiers cannot be bound as parameters; quote it instead.
        client.batch_execute(&format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""))).await?;
    }
    Ok(())
}

async fn live(
    mut settings: Settings,
    shutdown: CancellationToken,
    algorithm_a: usize,
    algorithm_b: usize,
    sensors: usize,
) -> Result<(), ServiceError> {
    // A machine that is still starting its database (a fresh boot, a CI runner) is not an error:
    // wait for it, saying so, up to a bound.
    let waited = std::time::Instant::now();
    loop {
        match ensure_database(&settings.database.url).await {
            Ok(()) => break,
            Err(e) if waited.elapsed() < LIVE_START_WAIT => {
                eprintln!("live: waiting for PostgreSQL ({e}); retrying for up to {} s", LIVE_START_WAIT.as_secs());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(ServiceError::Other(format!(
                    "PostgreSQL did not accept connections within {} s: {e}",
                    LIVE_START_WAIT.as_secs()
                )));
            }
        }
    }
    // The schema before anything reads it (the API's cache refill and history queries).
    crate::db::setup(&settings.database.url, crate::db::Idempotency::from_settings(&settings), &Default::default())
        .await?;
    apply_live_defaults(&mut settings);
    if settings.rest_api.bind == crate::config::RestApiSettings::default().bind {
        settings.rest_api.bind = "127.0.0.1:0".into();
    }
    let mut tasks = tokio::task::JoinSet::new();
    // Each consumer's health, so "up" is printed only once all of them consume (their queues,
    // DLQs included, are declared by then): a script that publishes on "up" loses nothing.
    let mut consumers: Vec<(String, Health)> = Vec::new();
    {
        let (s, h, t) = (with_id(&settings, "data-writer-1"), Health::default(), shutdown.clone());
        consumers.push(("data-writer-1".into(), h.clone()));
        tasks.spawn(async move { crate::data_writer::run(s, h, t).await });
    }
    for i in 1..=algorithm_a {
        let id = format!("algorithm-a-{i}");
        let (s, h, t) = (with_id(&settings, &id), Health::default(), shutdown.clone());
        consumers.push((id, h.clone()));
        tasks.spawn(async move { crate::algorithm_a::run(s, h, t).await });
    }
    for i in 1..=algorithm_b {
        let id = format!("algorithm-b-{i}");
        let (s, h, t) = (with_id(&settings, &id), Health::default(), shutdown.clone());
        consumers.push((id, h.clone()));
        tasks.spawn(async move { crate::algorithm_b::run(s, h, t).await });
    }
    let app = crate::rest_api::build(with_id(&settings, "rest-api-1"), shutdown.clone()).await?;
    let port = app.port();
    tasks.spawn(async move {
        if let Err(e) = app.run_until_stopped().await {
            tracing::error!(error = %e, "rest api stopped");
        }
    });
    for i in 1..=sensors {
        let mut s = with_id(&settings, &format!("sensor-{i}"));
        s.sensor.sensor_id = format!("sensor-{i}");
        s.sensor.frequency_hz = settings.sensor.frequency_hz * i as f64;
        let t = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::sensor::run(&s, t).await {
                tracing::error!(error = %e, "sensor stopped");
            }
        });
    }
    let waited = std::time::Instant::now();
    loop {
        let waiting: Vec<&str> =
            consumers.iter().filter(|(_, h)| !h.is_connected()).map(|(id, _)| id.as_str()).collect();
        if waiting.is_empty() {
            break;
        }
        if waited.elapsed() >= LIVE_START_WAIT || shutdown.is_cancelled() {
            shutdown.cancel();
            return Err(ServiceError::Other(format!(
                "not consuming within {} s: {}",
                LIVE_START_WAIT.as_secs(),
                waiting.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the consumers' health flags
    }
    let token = settings.rest_api.tokens.first().cloned().unwrap_or_default();
    eprintln!(
        "live pipeline up: API http://127.0.0.1:{port}  token: {token}\n  try: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/v1/sensors/sensor-1/features/latest?type=A\n  Ctrl-C stops everything"
    );
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// How long `pipeline live` waits for its database to accept connections at start-up (the
/// components themselves reconnect with backoff forever).
const LIVE_START_WAIT: Duration = Duration::from_secs(60);

/// The token `pipeline live` prints and accepts when none is configured (every other way of
/// starting the API refuses to start without `APQ_API_TOKENS`).
pub const LIVE_DEV_TOKEN: &str = "dev-token";

/// `pipeline live` is for exploration: without configured tokens it accepts [`LIVE_DEV_TOKEN`].
pub fn apply_live_defaults(settings: &mut Settings) {
    if settings.rest_api.tokens.is_empty() {
        settings.rest_api.tokens = vec![LIVE_DEV_TOKEN.to_string()];
    }
}

fn with_id(settings: &Settings, id: &str) -> Settings {
    let mut s = settings.clone();
    s.instance_id = Some(id.to_string());
    s
}
