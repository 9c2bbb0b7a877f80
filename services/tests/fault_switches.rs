//! The fault switches do exactly what they say: the behaviour suite proves it catches a bug by
//! switching one on, so a switch that drops other messages than documented would make those
//! proofs count the wrong thing. `APQ_ALGORITHM_A_FAULT_DROP_EVERY=N` acks every Nth chunk
//! (1-based, in delivery order) without publishing its Feature A.

mod common;

use common::{Scratch, channel, eventually};
use lapin::options::BasicGetOptions;
use services::config::SensorSettings;
use services::contract::FeatureA;
use services::runtime::Health;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_every_3_drops_the_3rd_6th_and_9th_chunk_of_10() {
    let scratch = Scratch::new().await;
    let (_conn, ch) = channel().await;
    // Our own queue on the fanout before anything flows, so every Feature A is seen.
    services::topology::fanout(&ch, &scratch.names().features_a()).await.unwrap();
    let seen = services::topology::private_fanout_queue(&ch, &scratch.names().features_a()).await.unwrap();

    let mut settings = scratch.settings();
    settings.algorithm_a.fault_drop_every = 3;
    let stop = CancellationToken::new();
    let algorithm_a = tokio::spawn(services::algorithm_a::run(settings.clone(), Health::default(), stop.clone()));

    settings.sensor = SensorSettings {
        sensor_id: "drop-every".into(),
        signal: "sine".into(),
        count: 10,
        ..SensorSettings::default()
    };
    let report = tokio::time::timeout(Duration::from_secs(20), services::sensor::run(&settings, stop.child_token()))
        .await
        .expect("the sensor finishes 10 chunks within 20 s")
        .expect("the sensor runs without error");
    assert_eq!(report.sent, 10, "{report:?}");

    // Up to 10 s for the 7 expected; fewer (or other ones) show in the assertion below.
    let mut sequences = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sequences.len() < 7 && tokio::time::Instant::now() < deadline {
        match ch.basic_get(seen.clone(), BasicGetOptions { no_ack: true }).await.unwrap() {
            Some(m) => sequences.push(serde_json::from_slice::<FeatureA>(&m.delivery.data).expect("decodes").sequence),
            // Polling our own queue: basic_get has no wait.
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // The work queue is empty once all 10 are settled; then nothing more can come.
    let queue = scratch.names().audio_stream();
    eventually(10, "the work queue settled", || {
        let (ch, q) = (ch.clone(), queue.clone());
        async move {
            let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
            let q = ch.queue_declare(q.as_str().into(), passive, Default::default()).await.ok()?;
            (q.message_count() == 0).then_some(())
        }
    })
    .await;
    // Settled includes "acked after its publish was confirmed": a last look for stragglers.
    while let Some(m) = ch.basic_get(seen.clone(), BasicGetOptions { no_ack: true }).await.unwrap() {
        sequences.push(serde_json::from_slice::<FeatureA>(&m.delivery.data).expect("decodes").sequence);
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), algorithm_a).await;
    scratch.cleanup().await;
    sequences.sort_unstable();
    assert_eq!(sequences, vec![0, 1, 3, 4, 6, 7, 9], "Feature A published for these chunk sequences");
}
