//! What `/metrics` exposes, series by series: the names, labels and values the k8s scrape
//! annotations, dashboards and the chaos reports (which keep every process's `/metrics`) read. Its
//! own test binary because the Prometheus recorder is installed once per process.

use std::time::Duration;

/// The value of the one series whose line starts with `prefix` (name and labels), else a panic
/// that shows the whole exposition.
fn value(text: &str, prefix: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no series {prefix} in /metrics:\n{text}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no value in {line:?}"))
}

#[test]
fn every_recording_function_shows_up_with_its_labels_and_count() {
    assert_eq!(services::metrics::render(), "", "nothing is rendered before install");
    services::metrics::install("algorithm-b");
    services::metrics::processed("algorithm_b", 3);
    services::metrics::processed("algorithm_b", 2);
    services::metrics::dead_lettered("schema_violation");
    services::metrics::redelivered("algorithm_b");
    services::metrics::redelivered("algorithm_b");
    services::metrics::reconnect("amqp", "session_failure");
    services::metrics::flush(7, Duration::from_millis(3), true);
    services::metrics::flush(2, Duration::from_millis(40), false);
    services::metrics::cache_age(4.5);
    services::metrics::cache_refilled(12);
    services::metrics::publish_nacked("features_a");
    let text = services::metrics::render();

    let c = r#"component="algorithm-b""#;
    let pairs: &[(String, f64)] = &[
        (format!(r#"apq_messages_processed_total{{{c},stage="algorithm_b"}}"#), 5.0),
        (format!(r#"apq_messages_dead_lettered_total{{{c},reason="schema_violation"}}"#), 1.0),
        (format!(r#"apq_redeliveries_total{{{c},stage="algorithm_b"}}"#), 2.0),
        (format!(r#"apq_reconnects_total{{{c},target="amqp",cause="session_failure"}}"#), 1.0),
        (format!(r#"apq_writer_flush_seconds_count{{{c},outcome="committed"}}"#), 1.0),
        (format!(r#"apq_writer_flush_seconds_count{{{c},outcome="failed"}}"#), 1.0),
        (format!(r#"apq_writer_flush_seconds_bucket{{{c},outcome="committed",le="0.005"}}"#), 1.0),
        (format!(r#"apq_writer_flush_seconds_bucket{{{c},outcome="failed",le="0.025"}}"#), 0.0),
        (format!(r#"apq_writer_batch_rows_sum{{{c}}}"#), 9.0),
        (format!(r#"apq_api_cache_age_seconds{{{c}}}"#), 4.5),
        (format!(r#"apq_api_cache_refills_total{{{c}}}"#), 1.0),
        (format!(r#"apq_api_cache_refilled_rows_total{{{c}}}"#), 12.0),
        (format!(r#"apq_publish_nacks_total{{{c},exchange="features_a"}}"#), 1.0),
    ];
    for (series, expected) in pairs {
        assert_eq!(value(&text, &format!("{series} ")), *expected, "{series}\nin:\n{text}");
    }
}
