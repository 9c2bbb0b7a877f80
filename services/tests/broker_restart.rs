//! The pipeline survives a broker restart without losing a chunk.
//!
//! Restarts a RabbitMQ application (`rabbitmqctl -n <node> stop_app` / `start_app`) while a sensor
//! streams. Never the machine's shared broker: it runs only against a private node named by
//! `APQ_PRIVATE_RABBITMQ_NODE` whose AMQP URL is `APQ_PRIVATE_AMQP_URL`, and is skipped (saying
//! so) otherwise. The harness's chaos work (issue #11) starts such a node by itself.

mod common;

use common::Scratch;
use services::runtime::Health;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CHUNKS: u64 = 300;

async fn rabbitmqctl(node: &str, arg: &str) {
    let out =
        tokio::process::Command::new("rabbitmqctl").args(["-n", node, arg]).output().await.expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl {arg} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Sequences with at least one row of `feature_type`.
async fn sequences(db: &tokio_postgres::Client, sensor: &str, feature_type: &str) -> BTreeSet<i64> {
    let rows = db
        .query("SELECT sequence FROM features WHERE sensor_id = $1 AND feature_type = $2", &[&sensor, &feature_type])
        .await
        .unwrap_or_default();
    rows.iter().map(|r| r.get::<_, i64>(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_chunk_is_lost_across_a_broker_restart() {
    let (Ok(node_name), Ok(url)) = (std::env::var("APQ_PRIVATE_RABBITMQ_NODE"), std::env::var("APQ_PRIVATE_AMQP_URL"))
    else {
        eprintln!(
            "skipped: restarting a broker needs a private node (APQ_PRIVATE_RABBITMQ_NODE + APQ_PRIVATE_AMQP_URL); \
             the shared one is never restarted"
        );
        return;
    };
    let mut scratch = Scratch::new().await;
    scratch.amqp_url = url;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut healths = Vec::new();
    for (id, which) in [("writer-1", 0), ("b-1", 1), ("a-1", 2)] {
        let settings = services::config::Settings { instance_id: Some(id.into()), ..scratch.settings() };
        let health = Health::default();
        healths.push(health.clone());
        let token = stop.clone();
        tasks.push(match which {
            0 => tokio::spawn(services::data_writer::run(settings, health, token)),
            1 => tokio::spawn(services::algorithm_b::run(settings, health, token)),
            _ => tokio::spawn(services::algorithm_a::run(settings, health, token)),
        });
    }
    common::eventually(20, "every consumer to be ready", || async {
        healths.iter().all(Health::is_ready).then_some(())
    })
    .await;

    let sensor_id = "restart-sensor";
    let mut sensor = services::config::Settings { instance_id: Some("sensor-1".into()), ..scratch.settings() };
    sensor.sensor.sensor_id = sensor_id.into();
    sensor.sensor.count = CHUNKS;
    sensor.sensor.rate_per_sec = 150.0;
    let sensor_stop = stop.child_token();
    let publishing = tokio::spawn(async move { services::sensor::run(&sensor, sensor_stop).await });

    // Not a synchronisation: the restart must land mid-stream, i.e. after some chunks (150/s).
    tokio::time::sleep(Duration::from_millis(700)).await;
    rabbitmqctl(&node_name, "stop_app").await;
    rabbitmqctl(&node_name, "start_app").await;

    let report = tokio::time::timeout(Duration::from_secs(90), publishing)
        .await
        .expect("the sensor finishes within 90 s of the restart")
        .expect("sensor task")
        .expect("sensor run");
    assert_eq!(report.sent, CHUNKS, "every chunk must be confirmed eventually: {report:?}");
    assert!(
        report.retries > 0,
        "the restart did not interrupt publishing (no retries), so nothing was tested: {report:?}"
    );

    let db = scratch.client().await;
    let want: BTreeSet<i64> = (0..CHUNKS as i64).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
    while Instant::now() < deadline {
        a = sequences(&db, sensor_id, "A").await;
        b = sequences(&db, sensor_id, "B").await;
        if a == want && b == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let missing_a: Vec<_> = want.difference(&a).collect();
    let missing_b: Vec<_> = want.difference(&b).collect();
    scratch.cleanup().await;
    assert!(missing_a.is_empty(), "{} chunks have no Feature A row after the restart: {missing_a:?}", missing_a.len());
    assert!(missing_b.is_empty(), "{} chunks have no Feature B row after the restart: {missing_b:?}", missing_b.len());
}
