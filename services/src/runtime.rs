//! Process plumbing shared by the components: shutdown on SIGTERM/Ctrl-C, the readiness line the
//! harness waits for, the optional health endpoint, and the reconnect supervisor.

use crate::amqp::{AmqpError, Backoff};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
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

/// Liveness/readiness shared between a component and its health endpoint.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// True while the component is connected and consuming (or serving).
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Prints the one JSON line on stdout that process supervisors (the harness) wait for. Logs go to
/// stderr, so stdout carries only these announcements.
pub fn announce_ready(component: &str, instance: &str, http_port: Option<u16>) {
    use std::io::Write;
    let line = serde_json::json!({
        "event": "ready", "component": component, "instance": instance, "http_port": http_port,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Serves `/healthz` (always 200 while the process lives) and `/readyz` (200 only while ready).
pub async fn serve_health(bind: &str, health: Health, shutdown: CancellationToken) -> std::io::Result<u16> {
    use axum::{Router, http::StatusCode, routing::get};
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let port = listener.local_addr()?.port();
    let app = Router::new().route("/healthz", get(|| async { (StatusCode::OK, "ok") })).route(
        "/readyz",
        get(move || {
            let h = health.clone();
            async move {
                if h.is_ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
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
    let min = Duration::from_millis(amqp.reconnect_min_ms);
    let max = Duration::from_millis(amqp.reconnect_max_ms);
    let mut backoff = Backoff::new(min, max);
    loop {
        let Some(conn) = crate::amqp::connect(&amqp.url, component, min, max, shutdown).await else {
            return;
        };
        match session(conn).await {
            Ok(SessionEnd::Shutdown) => return,
            Err(e) => {
                health.set_ready(false);
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
pub async fn consume_until_shutdown<H, Fut>(
    conn: &lapin::Connection,
    ch: &lapin::Channel,
    mut consumer: lapin::Consumer,
    consumer_tag: &str,
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
                done.map_err(|e| ServiceError::Other(e.to_string()))??;
            }
            next = consumer.next() => {
                let delivery = match next {
                    Some(d) => d?,
                    None => return Err(ServiceError::Other("consumer stream ended".into())),
                };
                inflight.spawn(handle(delivery));
            }
        }
    }
    ch.basic_cancel(consumer_tag.into(), lapin::options::BasicCancelOptions::default()).await.ok();
    while let Some(done) = inflight.join_next().await {
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
