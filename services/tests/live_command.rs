//! What scripts and scrapers rely on from the `pipeline` binary against the real broker (the
//! thin-main checks without one are in `cli_binary.rs`):
//! - `pipeline live`'s "up" line is a promise scripts act on (`scripts/external-check.sh`
//!   publishes into the deployment's DLQ on it): every consumer consumes, so every queue and DLQ
//!   of the namespace exists. A message published to a queue that does not exist yet is dropped
//!   by the broker without a word, so an early "up" loses data.
//! - a component's `/metrics` names it in its `component` label.

mod common;

use common::Scratch;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// Starts `pipeline live` (no sensors) on `scratch`'s database and namespace, with `amqp_url`;
/// returns the child and its stderr lines.
fn live(scratch: &Scratch, amqp_url: &str) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["live", "--algorithm-a", "2", "--algorithm-b", "2", "--sensors", "0"])
        .env_remove("APQ_CONFIG")
        .env("APQ_NAMESPACE", &scratch.namespace)
        .env("APQ_AMQP_URL", amqp_url)
        .env("APQ_DATABASE_URL", scratch.db_url())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the pipeline binary starts");
    let rx = common::lines_of(child.stderr.take().expect("stderr is piped"));
    (child, rx)
}

/// Waits up to `within` for the "up" line; returns it found, and every line seen.
fn wait_for_up(rx: &Receiver<String>, within: Duration) -> (bool, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("live pipeline up") => return (true, seen),
            Ok(line) => seen.push(line),
            Err(_) => return (false, seen),
        }
    }
}

#[tokio::test]
async fn on_up_every_queue_and_dlq_of_the_namespace_exists() {
    let scratch = Scratch::new().await;
    let (mut child, rx) = live(&scratch, common::AMQP_URL);
    let (up, seen) = wait_for_up(&rx, Duration::from_secs(60));
    // At once: the promise is about the moment of the line, not a while after it.
    let (conn, _) = common::channel().await;
    let mut missing = Vec::new();
    for q in scratch.names().all_queues() {
        let ch = conn.create_channel().await.unwrap();
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        if ch.queue_declare(q.as_str().into(), passive, FieldTable::default()).await.is_err() {
            missing.push(q);
        }
    }
    child.kill().ok();
    child.wait().ok();
    scratch.cleanup().await;
    assert!(up, "no 'live pipeline up' line within 60 s; stderr: {seen:#?}");
    assert!(missing.is_empty(), "'up' was printed while these queues did not exist yet: {missing:?}");
}

#[tokio::test]
async fn no_up_while_the_consumers_cannot_reach_the_broker() {
    let scratch = Scratch::new().await;
    // Port 9 (discard) on loopback: nothing listens. The database is real, so the API starts;
    // only the consumers are missing, and "up" must wait for them.
    let (mut child, rx) = live(&scratch, "amqp://guest:guest@127.0.0.1:9/%2f");
    // 3 s: the API alone is up well within that (it was, when "up" did not wait for consumers).
    let (up, seen) = wait_for_up(&rx, Duration::from_secs(3));
    let exited = child.try_wait().expect("poll the child");
    child.kill().ok();
    child.wait().ok();
    scratch.cleanup().await;
    assert!(!up, "'live pipeline up' printed while no consumer could reach the broker; stderr: {seen:#?}");
    assert!(exited.is_none(), "live exited ({exited:?}) instead of waiting for the broker; stderr: {seen:#?}");
}

/// A component binary's `/metrics` carries its own `component` label: dashboards and the chaos
/// reports tell the processes apart by it (every series of every process would otherwise share
/// one empty label).
#[tokio::test]
async fn a_component_binary_labels_its_metrics_with_its_name() {
    let scratch = Scratch::new().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("algorithm-b")
        .env_remove("APQ_CONFIG")
        .env("APQ_NAMESPACE", &scratch.namespace)
        .env("APQ_AMQP_URL", common::AMQP_URL)
        .env("APQ_DATABASE_URL", scratch.db_url())
        .env("APQ_HEALTH_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the pipeline binary starts");
    // The one JSON "ready" line on stdout names the health port.
    let stdout = child.stdout.take().expect("stdout is piped");
    let ready = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().map_while(Result::ok).next());
    let port = tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .ok()
        .and_then(|r| r.ok().flatten())
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .and_then(|v| v["http_port"].as_u64());
    let Some(port) = port else {
        child.kill().ok();
        child.wait().ok();
        scratch.cleanup().await;
        panic!("no ready line with an http_port within 30 s");
    };
    // Series appear once recorded: one malformed Feature A gives a dead-letter count.
    let (_conn, ch) = common::channel().await;
    common::publish(&ch, &scratch.names().features_a(), b"not json").await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = common::eventually(10, "a series in /metrics", || {
        let url = url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.contains("dead_letter").then_some(text)
        }
    })
    .await;
    child.kill().ok();
    child.wait().ok();
    scratch.cleanup().await;
    assert!(text.contains("component=\"algorithm-b\""), "no component=\"algorithm-b\" label in /metrics:\n{text}");
}
