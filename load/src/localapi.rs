//! A private reference API for runs that are given no `--api-url`: `pipeline live` in a broker
//! namespace and a database of its own (`loadapi-<id>`, `apq_loadapi_<id>`, both removed by
//! [`LocalApi::stop`]), whose sensors each publish a fixed number of chunks and then stop, so the
//! pipeline is idle while the API is measured. Ready once every sensor has a latest Feature A
//! and stored history.

use anyhow::{Context as _, bail};
use contract::topology::Names;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Chunks each sensor publishes (at 10/s) before it stops.
pub const CHUNKS_PER_SENSOR: u64 = 20;

/// How the private API is set up.
#[derive(Debug, Clone)]
pub struct LocalApiSpec {
    /// The `pipeline` binary.
    pub services_bin: PathBuf,
    /// Broker URL.
    pub amqp_url: String,
    /// PostgreSQL admin URL (the API's database is created on its server).
    pub admin_db_url: String,
    /// Sensors `sensor-1 … sensor-N`.
    pub sensors: usize,
    /// Tokens it accepts (users take them in turn).
    pub tokens: usize,
    /// Lift the per-token rate limit (benchmarks); otherwise the service default applies.
    pub unlimited: bool,
    /// Where its log goes.
    pub log: PathBuf,
}

/// A running private API.
#[derive(Debug)]
pub struct LocalApi {
    /// The `pipeline live` process.
    child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The tokens it accepts, comma-separated.
    pub tokens: String,
    /// Its broker names (deleted on stop).
    names: Names,
    /// Its database (dropped on stop).
    db_name: String,
    /// What it was started with.
    spec: LocalApiSpec,
}

impl LocalApi {
    /// Starts it and waits (up to `CHUNKS_PER_SENSOR` at 10/s plus 60 s) until every sensor has data.
    pub async fn start(spec: &LocalApiSpec) -> anyhow::Result<LocalApi> {
        let id = format!("{:08x}", rand::random::<u32>());
        let (namespace, db_name) = (format!("loadapi-{id}"), format!("apq_loadapi_{id}"));
        let db_url = harness::env::with_database(&spec.admin_db_url, &db_name)?;
        let tokens: Vec<String> = (1..=spec.tokens.max(1)).map(|i| format!("load-{id}-{i}")).collect();
        let mut env: Vec<(&str, String)> = vec![
            ("APQ_AMQP_URL", spec.amqp_url.clone()),
            ("APQ_DATABASE_URL", db_url),
            ("APQ_NAMESPACE", namespace.clone()),
            ("APQ_API_TOKENS", tokens.join(",")),
            ("APQ_SENSOR_COUNT", CHUNKS_PER_SENSOR.to_string()),
            ("RUST_LOG", "error".into()),
        ];
        if spec.unlimited {
            env.push(("APQ_API_RATE_LIMIT_PER_SEC", "1000000000".into()));
            env.push(("APQ_API_RATE_LIMIT_BURST", "1000000000".into()));
        }
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let (child, url) = spawn_live(&spec.services_bin, spec.sensors.max(1), &env, Some(&spec.log)).await?;
        let api = LocalApi {
            child,
            url,
            tokens: tokens.join(","),
            names: Names::new(&namespace),
            db_name,
            spec: spec.clone(),
        };
        match api.wait_for_data().await {
            Ok(()) => Ok(api),
            Err(e) => {
                api.stop().await;
                Err(e)
            }
        }
    }

    async fn wait_for_data(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60 + CHUNKS_PER_SENSOR / 10);
        let tokens: Vec<String> = self.tokens.split(',').map(String::from).collect();
        let wanted: Vec<String> = (1..=self.spec.sensors.max(1)).map(|i| format!("sensor-{i}")).collect();
        loop {
            let last = match crate::rest::discover(&self.url, &tokens, Some(&wanted)).await {
                Ok(t) if t.sensors.len() == wanted.len() => return Ok(()),
                Ok(t) => format!("{} of {} sensors have data", t.sensors.len(), wanted.len()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("the private API at {} is not ready: {last} (log: {})", self.url, self.spec.log.display());
            }
            // Discovery reads every sensor with one token: poll gently, within its rate limit.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.spec.log
    }

    /// Stops it and removes its namespace and database.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        if let Ok(conn) = harness::amqp::connect(&self.spec.amqp_url, "load-localapi-cleanup").await {
            harness::amqp::delete_namespace(&conn, &self.names).await;
        }
        if let Err(e) = harness::sql::drop_database(&self.spec.admin_db_url, &self.db_name).await {
            eprintln!("load: warning: could not drop {}: {e:#}", self.db_name);
        }
    }
}

/// Spawns `<bin> live` with `env` and waits (≤ 60 s) for the line that announces its API's
/// address; the rest of its stderr goes to `log` (or is read and dropped, so it never blocks).
pub async fn spawn_live(
    bin: &Path,
    sensors: usize,
    env: &[(String, String)],
    log: Option<&Path>,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut file = match log {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            Some(tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?)
        }
        None => None,
    };
    let mut child = tokio::process::Command::new(bin)
        .args(["live", "--algorithm-a", "1", "--algorithm-b", "1", "--sensors", &sensors.to_string()])
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} live", bin.display()))?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr is piped")?).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("live pipeline up: API ").nth(1) {
                return Ok::<_, std::io::Error>(rest.split_whitespace().next().map(str::to_string));
            }
        }
        Ok(None)
    })
    .await
    .context("pipeline live did not come up within 60 s")??
    .with_context(|| {
        format!(
            "pipeline live exited before printing its address{}",
            log.map(|l| format!(" (log: {})", l.display())).unwrap_or_default()
        )
    })?;
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(format!("{line}\n").as_bytes()).await;
            }
        }
    });
    Ok((child, url))
}
