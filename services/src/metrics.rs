//! Prometheus metrics of what faults do to a component: messages processed and dead-lettered (by
//! reason), redeliveries seen, reconnects (by cause), batch flush latency and size, and the age of
//! the API's cache. Recorded through the `metrics` facade; [`install`] sets the Prometheus
//! recorder once per process and [`render`] is what `/metrics` serves (the health endpoint of the
//! queue consumers, the API's own router). Without `install` (unit tests) recording is a no-op.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// The installed recorder's handle, for rendering.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (first call only) with `component` as a global label.
pub fn install(component: &str) {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .add_global_label("component", component)
            .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .expect("static buckets are valid");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (a test harness of ours): render from a detached one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    });
}

/// The text exposition format of everything recorded so far (empty before [`install`]).
pub fn render() -> String {
    HANDLE.get().map(PrometheusHandle::render).unwrap_or_default()
}

/// A message fully handled (output confirmed, or row committed) by `stage`.
pub fn processed(stage: &'static str, n: u64) {
    metrics::counter!("apq_messages_processed_total", "stage" => stage).increment(n);
}

/// A message dead-lettered with `reason` (a contract reason code).
pub fn dead_lettered(reason: &'static str) {
    metrics::counter!("apq_messages_dead_lettered_total", "reason" => reason).increment(1);
}

/// A delivery flagged `redelivered` by the broker (it was delivered before and not acked).
pub fn redelivered(stage: &'static str) {
    metrics::counter!("apq_redeliveries_total", "stage" => stage).increment(1);
}

/// A connection given up and re-opened (`cause`: session failure, unreachable broker/database).
pub fn reconnect(target: &str, cause: &'static str) {
    metrics::counter!("apq_reconnects_total", "target" => target.to_string(), "cause" => cause).increment(1);
}

/// One batch write: its latency, its size, and whether it committed.
pub fn flush(rows: usize, took: Duration, ok: bool) {
    metrics::histogram!("apq_writer_flush_seconds", "outcome" => if ok { "committed" } else { "failed" })
        .record(took.as_secs_f64());
    metrics::histogram!("apq_writer_batch_rows").record(rows as f64);
}

/// Seconds since the API's cache last took a message (or was refilled from the database).
pub fn cache_age(seconds: f64) {
    metrics::gauge!("apq_api_cache_age_seconds").set(seconds);
}

/// Rows the API's cache took from the database on a (re)connect.
pub fn cache_refilled(rows: usize) {
    metrics::counter!("apq_api_cache_refills_total").increment(1);
    metrics::counter!("apq_api_cache_refilled_rows_total").increment(rows as u64);
}

/// An output publish the broker refused (nacked); it is published again later.
pub fn publish_nacked(exchange: &str) {
    metrics::counter!("apq_publish_nacks_total", "exchange" => exchange.to_string()).increment(1);
}
