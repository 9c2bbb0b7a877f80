//! The pipeline survives a broker restart without losing a chunk.
//!
//! Restarts the RabbitMQ application (`rabbitmqctl -n <node> stop_app` / `start_app`) while a
//! sensor streams. Never the machine's shared broker: the test starts its own private node
//! (`harness::faults::PrivateRabbit`: own ports, epmd, cookie and data dir, removed at the end),
//! and is skipped, saying why, where the RabbitMQ server binaries are missing. The database is a
//! scratch database on the shared PostgreSQL, as in the other tests.

mod common;

use common::Scratch;
use harness::faults::{self, PrivateRabbit};
use services::runtime::Health;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// 6 s of chunks at 150/s: `rabbitmqctl stop_app` itself takes 1–2 s to start (an Erlang VM),
/// so the restart must land well inside the stream even on a loaded machine.
const CHUNKS: u64 = 900;

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
    if let Err(why) = faults::rabbitmq_available() {
        eprintln!("skipped: restarting a broker needs a private node, and {why}; the shared one is never restarted");
        return;
    }
    let run_id = format!("restart-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // A claimed run dir: if this test is killed, the next run's reap stops the node it left.
    let run_dir = harness::faults::reap::fresh_run_dir(&run_id).expect("a run directory");
    let mut node = PrivateRabbit::start(&run_dir, &run_id).await.expect("a private RabbitMQ node starts");
    eprintln!("private node {} ready in {:?}", node.node(), node.last_start());
    let mut scratch = Scratch::new().await;
    scratch.amqp_url = node.amqp_url();
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
    let began = Instant::now();
    node.stop_app().await.expect("stop_app on the private node");
    node.start_app().await.expect("start_app on the private node");
    eprintln!("broker application restarted in {:?}", began.elapsed());

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
    let left = node.list_queues().await.unwrap_or_default();
    scratch.cleanup().await;
    node.stop().await.expect("the private node stops");
    std::fs::remove_dir_all(&run_dir).ok();
    assert!(missing_a.is_empty(), "{} chunks have no Feature A row after the restart: {missing_a:?}", missing_a.len());
    assert!(missing_b.is_empty(), "{} chunks have no Feature B row after the restart: {missing_b:?}", missing_b.len());
    // Drained: nothing stuck ready or unacked in the pipeline's queues once every row is in.
    let stuck: Vec<_> = left.iter().filter(|q| q.ready + q.unacked > 0).collect();
    assert!(stuck.is_empty(), "messages left in queues after the run: {stuck:?}");
}
