//! Process plumbing shared by the components: shutdown on SIGTERM/Ctrl-C, the readiness line the
//! harness waits for, the optional health endpoint, and the reconnect supervisor.

use crate::amqp::{AmqpError, Backoff};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool error: {0}")]
    Pool(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// Cancels the token on SIGTERM or Ctrl-C (first signal: graceful; in-flight work finishes).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested; finishing in-flight work");
        t.cancel();
    });
    token
}

/// Liveness/readiness shared between a component and its health endpoint. Ready means connected
/// and consuming *and* making progress: a component holding work it has not settled for longer
/// than `stall_after` (a hung database write, a stuck handler) reports not ready.
#[derive(Debug, Clone)]
pub struct Health {
    /// True while the component is connected and consuming (or serving).
    ready: Arc<AtomicBool>,
    /// Work taken but not yet settled (deliveries in flight, a batch being written).
    busy: Arc<AtomicUsize>,
    /// When work was last settled (or taken while idle), in ms since `epoch`.
    last_progress_ms: Arc<AtomicU64>,
    /// The clock `last_progress_ms` counts from.
    epoch: Instant,
    /// Unsettled work older than this makes the component not ready.
    stall_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ready: Arc::default(),
            busy: Arc::default(),
            last_progress_ms: Arc::default(),
            epoch: Instant::now(),
            stall_after: Duration::from_secs(10),
        }
    }
}

impl Health {
    /// A health whose work counts as stalled after `stall_after` without progress.
    pub fn with_stall_after(stall_after: Duration) -> Self {
        Self { stall_after, ..Self::default() }
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    /// Connected, consuming and not stalled.
    pub fn is_ready(&self) -> bool {
        self.is_connected() && self.stalled_for().is_none()
    }
    /// Connected and consuming, whether or not work progresses (the supervisor's "healthy session").
    pub fn is_connected(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    /// How long unsettled work has waited beyond `stall_after`, if it has.
    pub fn stalled_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let idle = self.now_ms().saturating_sub(self.last_progress_ms.load(Ordering::SeqCst));
        let idle = Duration::from_millis(idle);
        (idle > self.stall_after).then_some(idle)
    }
    /// Work taken: from idle, the stall clock starts now.
    pub fn work_started(&self) {
        if self.busy.fetch_add(1, Ordering::SeqCst) == 0 {
            self.progress();
        }
    }
    /// Work settled (acked, dead-lettered or given back).
    pub fn work_done(&self) {
        let _ = self.busy.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1));
        self.progress();
    }
    /// All work dropped (a session ended; the broker redelivers what was unsettled).
    pub fn work_reset(&self) {
        self.busy.store(0, Ordering::SeqCst);
        self.progress();
    }
    fn progress(&self) {
        self.last_progress_ms.store(self.now_ms(), Ordering::SeqCst);
    }
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Prints the one JSON line on stdout that process supervisors (the harness) wait for. Logs go to
/// stderr, so stdout carries only these announcements.
pub fn announce_ready(component: &str, instance: &str, http_port: Option<u16>) {
    use std::io::Write;
    let http_port = http_port.or_else(|| HEALTH_PORT.get().copied());
    let line = serde_json::json!({
        "event": "ready", "component": component, "instance": instance, "http_port": http_port,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The health endpoint's port, once it is bound: the ready line carries it as `http_port`, so a
/// supervisor started with `APQ_HEALTH_BIND=127.0.0.1:0` can find `/metrics`.
static HEALTH_PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// Serves `/healthz` (always 200 while the process lives), `/readyz` (200 only while ready) and
/// `/metrics` (Prometheus).
pub async fn serve_health(bind: &str, health: Health, shutdown: CancellationToken) -> std::io::Result<u16> {
    use axum::{Router, http::StatusCode, routing::get};
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let port = listener.local_addr()?.port();
    let _ = HEALTH_PORT.set(port);
    let app = Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route(
            "/metrics",
            get(|| async {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    if h.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
    Ok(port)
}

/// How a broker session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// Shutdown was requested and in-flight work finished.
    Shutdown,
}

/// Runs `session` with a fresh connection until shutdown, reconnecting with backoff whenever it
/// fails (broker restart, channel error, database outage).
pub async fn supervise<F, Fut>(
    component: &str,
    amqp: &crate::config::AmqpSettings,
    health: &Health,
    shutdown: &CancellationToken,
    mut session: F,
) where
    F: FnMut(lapin::Connection) -> Fut,
    Fut: Future<Output = Result<SessionEnd, ServiceError>>,
{
    let mut backoff = Backoff::for_settings(amqp);
    loop {
        let Some(conn) = crate::amqp::connect(amqp, component, shutdown).await else {
            return;
        };
        match session(conn).await {
            Ok(SessionEnd::Shutdown) => return,
            Err(e) => {
                // A session that got as far as consuming was healthy: the next outage starts
                // from the shortest delay again (else every later fault waits longer).
                if health.is_connected() && !amqp.fault_backoff_no_reset {
                    backoff.reset();
                }
                health.set_ready(false);
                health.work_reset();
                crate::metrics::reconnect(component, "session");
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "session failed; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The work loop shared by Algorithm A and B: handles deliveries concurrently (the broker's
/// prefetch bounds how many), fails the session on a handler or channel error (the supervisor
/// reconnects; unacked deliveries are redelivered), and on shutdown stops consuming, finishes
/// what it holds and closes, so nothing half-done is acked.
#[allow(clippy::too_many_arguments)] // the session's parts, each borrowed from the caller's scope
pub async fn consume_until_shutdown<H, Fut>(
    conn: &lapin::Connection,
    ch: &lapin::Channel,
    mut consumer: lapin::Consumer,
    consumer_tag: &str,
    stage: &'static str,
    health: &Health,
    shutdown: &CancellationToken,
    mut handle: H,
) -> Result<SessionEnd, ServiceError>
where
    H: FnMut(lapin::message::Delivery) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
{
    use futures::StreamExt;
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                health.work_done();
                done.map_err(|e| ServiceError::Other(e.to_string()))??;
                crate::metrics::processed(stage, 1);
            }
            next = consumer.next() => {
                let delivery = match next {
                    Some(d) => d?,
                    None => return Err(ServiceError::Other("consumer stream ended".into())),
                };
                if delivery.redelivered {
                    crate::metrics::redelivered(stage);
                }
                health.work_started();
                inflight.spawn(handle(delivery));
            }
        }
    }
    ch.basic_cancel(consumer_tag.into(), lapin::options::BasicCancelOptions::default()).await.ok();
    while let Some(done) = inflight.join_next().await {
        health.work_done();
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "in-flight message failed during shutdown; it will be redelivered");
        }
    }
    ch.close(200, "shutdown".into()).await.ok();
    conn.close(200, "shutdown".into()).await.ok();
    Ok(SessionEnd::Shutdown)
}

/// Starts consuming `queue` with `prefetch` unacked deliveries at most, marks the component ready
/// and, the first time only, announces readiness on stdout.
pub async fn start_consuming(
    ch: &lapin::Channel,
    queue: &str,
    prefetch: u16,
    component: &str,
    instance: &str,
    health: &Health,
    announced: &AtomicBool,
) -> Result<lapin::Consumer, ServiceError> {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            instance.into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    health.set_ready(true);
    if !announced.swap(true, Ordering::SeqCst) {
        announce_ready(component, instance, None);
    }
    tracing::info!(queue, instance, "consuming");
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_drops_while_work_stalls_and_returns_with_progress() {
        let h = Health::with_stall_after(Duration::from_millis(20));
        assert!(!h.is_ready(), "not connected yet");
        h.set_ready(true);
        assert!(h.is_ready());
        h.work_started();
        assert!(h.is_ready(), "fresh work is not a stall");
        // Only a lower bound matters: after 50 ms the 20 ms stall limit has certainly passed.
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.stalled_for().is_some() && !h.is_ready(), "unsettled work beyond the limit: not ready");
        assert!(h.is_connected(), "still connected: the supervisor counts the session as healthy");
        h.work_done();
        assert!(h.is_ready(), "settled: ready again");
        h.work_started();
        h.work_reset();
        assert!(h.stalled_for().is_none(), "a new session starts with nothing in flight");
    }

    #[test]
    fn a_reset_forgets_work_in_flight() {
        let h = Health::with_stall_after(Duration::from_millis(20));
        h.set_ready(true);
        h.work_started();
        h.work_started();
        h.work_reset();
        // A lower bound only: 50 ms is past the 20 ms limit, so work still counted would stall.
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.stalled_for().is_none() && h.is_ready(), "work counted after a reset: {:?}", h.stalled_for());
        h.work_started();
        h.work_done();
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.stalled_for().is_none(), "one start, one done: nothing in flight");
    }

    // The stall clock starts when work is taken, not when the health was created.
    #[test]
    fn work_taken_late_is_not_stalled_at_once() {
        let h = Health::with_stall_after(Duration::from_millis(20));
        h.set_ready(true);
        std::thread::sleep(Duration::from_millis(50));
        h.work_started();
        assert!(h.stalled_for().is_none(), "fresh work counted as stalled: {:?}", h.stalled_for());
    }
}
