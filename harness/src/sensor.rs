//! The sensor as a component under test (issue #12): run the SUT's `sensor` through the adapter
//! protocol (`<adapter> sensor` with `APQ_SENSOR_*`, `fixtures/contracts/adapter.md`), read its
//! ready and `sensor_done` lines, and take what it publishes off a private pipeline's work queue
//! with nothing else consuming it ([`WorkQueueTap`]), keeping every AMQP property.
//! Plus URL helpers to route a component through a fault proxy.

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// One message taken off the work queue, with everything a consumer could see of it.
#[derive(Debug, Clone)]
pub struct Taken {
    pub body: Vec<u8>,
    /// The body as JSON, when it is.
    pub json: Option<Value>,
    /// AMQP `delivery_mode` (2 = persistent).
    pub delivery_mode: Option<u8>,
    pub content_type: Option<String>,
    pub message_id: Option<String>,
    /// String-valued headers.
    pub headers: BTreeMap<String, String>,
    /// When the harness received it.
    pub arrived: Instant,
}

impl Taken {
    pub fn sequence(&self) -> Option<u64> {
        self.json.as_ref()?.get("sequence")?.as_u64()
    }
    pub fn body_message_id(&self) -> Option<&str> {
        self.json.as_ref()?.get("message_id")?.as_str()
    }
}

struct TapInner {
    taken: Mutex<Vec<Taken>>,
    notify: Notify,
}

/// Consumes one queue (a private pipeline's `audio_stream`, which no Algorithm A consumes) and
/// keeps every message with its properties. Acks each one on receipt: the harness is the
/// queue's only consumer, so nothing else is starved.
#[derive(Clone)]
pub struct WorkQueueTap {
    inner: Arc<TapInner>,
    _conn: Arc<lapin::Connection>,
    queue: String,
    /// Whose waits these are (a scenario's namespace), for the convergence log.
    scope: String,
}

impl WorkQueueTap {
    /// Starts consuming `queue` (which must exist) and returns once the consumer is live; its
    /// waits are attributed to `scope` (a scenario's namespace).
    pub async fn start(amqp_url: &str, queue: &str, scope: &str) -> anyhow::Result<WorkQueueTap> {
        let conn = crate::amqp::connect(amqp_url, "qa-work-queue-tap").await?;
        let ch = conn.create_channel().await?;
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "qa-work-queue-tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming the work queue {queue:?}"))?;
        let inner = Arc::new(TapInner { taken: Mutex::new(Vec::new()), notify: Notify::new() });
        let sink = inner.clone();
        tokio::spawn(async move {
            let _ch = ch;
            while let Some(Ok(d)) = consumer.next().await {
                let mut headers = BTreeMap::new();
                if let Some(h) = d.properties.headers() {
                    for (k, v) in h.inner() {
                        let s = match v {
                            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                            AMQPValue::ShortString(s) => s.as_str().to_string(),
                            other => format!("{other:?}"),
                        };
                        headers.insert(k.as_str().to_string(), s);
                    }
                }
                let taken = Taken {
                    json: serde_json::from_slice(&d.data).ok(),
                    delivery_mode: *d.properties.delivery_mode(),
                    content_type: d.properties.content_type().as_ref().map(|s| s.as_str().to_string()),
                    message_id: d.properties.message_id().as_ref().map(|s| s.as_str().to_string()),
                    headers,
                    arrived: Instant::now(),
                    body: d.data.clone(),
                };
                let _ = d.ack(BasicAckOptions::default()).await;
                sink.taken.lock().expect("tap lock").push(taken);
                sink.notify.notify_waiters();
            }
        });
        Ok(WorkQueueTap { inner, _conn: Arc::new(conn), queue: queue.to_string(), scope: scope.to_string() })
    }

    /// Everything taken so far, in arrival order.
    pub fn taken(&self) -> Vec<Taken> {
        self.inner.taken.lock().expect("tap lock").clone()
    }

    pub fn len(&self) -> usize {
        self.inner.taken.lock().expect("tap lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `n` messages were taken; on timeout says how many arrived.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> anyhow::Result<Vec<Taken>> {
        let started = Instant::now();
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.taken();
            if got.len() >= n {
                crate::eventually::record_wait(
                    &format!("{n} chunks on {}", self.queue),
                    Some(&self.scope),
                    started.elapsed(),
                    1,
                    true,
                );
                return Ok(got);
            }
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                let got = self.taken();
                if got.len() >= n {
                    return Ok(got);
                }
                crate::eventually::record_wait(
                    &format!("{n} chunks on {}", self.queue),
                    Some(&self.scope),
                    started.elapsed(),
                    1,
                    false,
                );
                bail!(
                    "timed out after {:.1}s waiting for {n} chunk(s) on the work queue {}: {} arrived (sequences {:?})",
                    started.elapsed().as_secs_f64(),
                    self.queue,
                    got.len(),
                    got.iter().map(Taken::sequence).collect::<Vec<_>>()
                );
            }
        }
    }
}

/// What a sensor run printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct SensorOutcome {
    /// When the ready line came (None: never).
    pub ready_at: Option<Instant>,
    /// When the `sensor_done` line came, and its `report` object.
    pub done_at: Option<Instant>,
    pub report: Option<Value>,
    /// Exit status as text (`exit status: 0`), None if it had to be killed.
    pub status: Option<String>,
    pub success: bool,
    /// The log file (stderr).
    pub log: String,
}

/// A running sensor process, started through the adapter.
pub struct SensorProcess {
    child: Child,
    lines: tokio::task::JoinHandle<(Option<Instant>, Option<Instant>, Option<Value>)>,
    ready: Arc<Notify>,
    ready_seen: Arc<Mutex<bool>>,
    log: std::path::PathBuf,
}

impl SensorProcess {
    /// Spawns `<adapter…> sensor` with `env` (which must hold `APQ_AMQP_URL`, `APQ_NAMESPACE`,
    /// `APQ_INSTANCE_ID` and the `APQ_SENSOR_*` settings), stderr to `log`.
    pub fn spawn(command: &[String], env: &[(String, String)], log: &Path) -> anyhow::Result<SensorProcess> {
        let program = command.first().context("the SUT adapter command is empty")?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(program)
            .args(&command[1..])
            .arg("sensor")
            .envs(env.iter().cloned())
            .env("APQ_LOG_FORMAT", "text")
            .env("RUST_LOG", std::env::var("QA_SUT_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {} sensor", command.join(" ")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let ready = Arc::new(Notify::new());
        let ready_seen = Arc::new(Mutex::new(false));
        let (r, seen) = (ready.clone(), ready_seen.clone());
        let lines = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let (mut ready_at, mut done_at, mut report) = (None, None, None);
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                match v["event"].as_str() {
                    Some("ready") if ready_at.is_none() => {
                        ready_at = Some(Instant::now());
                        *seen.lock().expect("ready lock") = true;
                        r.notify_waiters();
                    }
                    Some("sensor_done") => {
                        done_at = Some(Instant::now());
                        report = Some(v["report"].clone());
                    }
                    _ => {}
                }
            }
            (ready_at, done_at, report)
        });
        Ok(SensorProcess { child, lines, ready, ready_seen, log: log.to_path_buf() })
    }

    /// Waits for the ready line (the protocol's 30 s), failing with the log's tail.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if *self.ready_seen.lock().expect("ready lock") {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "the sensor exited ({status}) before its ready line\n  log {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                );
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                bail!(
                    "the sensor printed no ready line within {timeout:?}\n  log {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                );
            }
            // Woken by the ready line; the short bound also notices an early exit.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Waits for the process to exit (killing it after `timeout`) and returns what it printed.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<SensorOutcome> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => Some(s.context("waiting for the sensor")?),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        };
        let (ready_at, done_at, report) = self.lines.await.unwrap_or_default();
        Ok(SensorOutcome {
            ready_at,
            done_at,
            report,
            success: status.is_some_and(|s| s.success()),
            status: status.map(|s| s.to_string()),
            log: tail(&self.log),
        })
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// The socket address a URL's authority names (`amqp://u:p@host:5672/%2f`, `postgres://u@host/db`;
/// default ports 5672 and 5432).
pub fn socket_addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let (scheme, rest) = url.split_once("://").context("URL without a scheme")?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default = if scheme.starts_with("amqp") { 5672 } else { 5432 };
    let with_port = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:{default}") };
    with_port.to_socket_addrs()?.next().with_context(|| format!("{with_port} resolves to nothing"))
}

/// The same URL with its host and port replaced by `addr` (user, path and query kept).
pub fn with_addr(url: &str, addr: SocketAddr) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").context("URL without a scheme")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    Ok(format!("{scheme}://{user}{addr}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rerouted_with_user_path_and_query_kept() {
        let to: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            with_addr("amqp://guest:guest@127.0.0.1:5672/%2f", to).unwrap(),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(with_addr("postgres://r@localhost/db?x=1", to).unwrap(), "postgres://r@127.0.0.1:4000/db?x=1");
        assert_eq!(socket_addr_of("postgres://r@127.0.0.1/db").unwrap().port(), 5432);
        assert_eq!(socket_addr_of("amqp://g:g@127.0.0.1/%2f").unwrap().port(), 5672);
        assert_eq!(socket_addr_of("amqp://127.0.0.1:1234").unwrap().port(), 1234);
    }
}
