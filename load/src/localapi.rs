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

/// Starts `pipeline live` and returns it with its API address. A `live` that exits during
/// start-up (typically: the broker or the database is not accepting connections yet on a busy
/// machine) is started again until [`START_DEADLINE`]; between attempts this waits until both
/// accept TCP connections and says what it waited for. Everything `live` printed goes to `log`.
pub async fn spawn_live(
    bin: &Path,
    sensors: usize,
    env: &[(String, String)],
    log: Option<&Path>,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let started = Instant::now();
    let setting = |key: &str, default: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(key).ok())
            .unwrap_or_else(|| default.to_owned())
    };
    let deps = [
        ("RabbitMQ", harness::report::startup::host_port(&setting("APQ_AMQP_URL", "amqp://127.0.0.1:5672"), 5672)),
        (
            "PostgreSQL",
            harness::report::startup::host_port(&setting("APQ_DATABASE_URL", "postgres://127.0.0.1:5432"), 5432),
        ),
    ];
    let mut attempt = 1;
    loop {
        match spawn_live_once(bin, sensors, env, log).await {
            Ok(up) => {
                if attempt > 1 {
                    eprintln!(
                        "[load] pipeline live up on attempt {attempt} after {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(up);
            }
            Err(e) if started.elapsed() < START_DEADLINE => {
                eprintln!("[load] pipeline live did not start (attempt {attempt}): {e:#}");
                let waited = wait_for_tcp(&deps, START_DEADLINE.saturating_sub(started.elapsed())).await;
                eprintln!(
                    "[load] waited {:.1} s for {waited}; starting pipeline live again",
                    started.elapsed().as_secs_f64()
                );
                attempt += 1;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "pipeline live did not start in {attempt} attempts within {} s ({} {} and {} {} checked between attempts)",
                    START_DEADLINE.as_secs(),
                    deps[0].0,
                    deps[0].1,
                    deps[1].0,
                    deps[1].1
                )));
            }
        }
    }
}

/// How long [`spawn_live`] keeps trying.
pub const START_DEADLINE: Duration = Duration::from_secs(90);

/// Waits (at most `max`) until every `(name, host:port)` accepts a TCP connection; returns what
/// it waited for, e.g. `RabbitMQ 127.0.0.1:5672 (up after 2.1 s) and PostgreSQL … (up)`.
async fn wait_for_tcp(deps: &[(&str, String)], max: Duration) -> String {
    let t0 = Instant::now();
    let mut said = Vec::new();
    for (name, addr) in deps {
        let mut up = false;
        while t0.elapsed() < max {
            let connect = tokio::net::TcpStream::connect(addr.as_str());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        said.push(format!(
            "{name} {addr} ({} after {:.1} s)",
            if up { "accepting connections" } else { "still not accepting connections" },
            t0.elapsed().as_secs_f64()
        ));
    }
    // A short pause even when both are up: `live` may have failed on something slower (a
    // database still recovering accepts TCP before it accepts sessions).
    tokio::time::sleep(Duration::from_millis(500)).await;
    said.join(" and ")
}

/// One start of `pipeline live`; every line it prints goes to `log` (from the first, so a `live`
/// that exits at start-up leaves its reason), and the last lines are in the error.
async fn spawn_live_once(
    bin: &Path,
    sensors: usize,
    env: &[(String, String)],
    log: Option<&Path>,
) -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::AsyncWriteExt as _;
    let mut file = match log {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            Some(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            )
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
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(format!("{line}\n").as_bytes()).await;
            }
            if let Some(rest) = line.split("live pipeline up: API ").nth(1) {
                return Ok::<_, std::io::Error>(rest.split_whitespace().next().map(str::to_string));
            }
            if tail.len() == 8 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Ok(None)
    })
    .await;
    let url = match url {
        Ok(Ok(Some(url))) => url,
        Ok(Ok(None)) | Ok(Err(_)) => {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            bail!(
                "pipeline live exited ({status}) before printing its address{}; its last lines:\n  {}",
                log.map(|l| format!(" (log: {})", l.display())).unwrap_or_default(),
                tail.iter().cloned().collect::<Vec<_>>().join("\n  ")
            );
        }
        Err(_) => bail!("pipeline live did not print its address within 60 s"),
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(format!("{line}\n").as_bytes()).await;
            }
        }
    });
    Ok((child, url))
}
