//! The sensor against the real broker, read back from its work queue: what a consumer of
//! `audio_stream` depends on — persistent messages, sequences 0..n without gaps, `captured_at`
//! advancing by exactly one chunk duration, and samples that decode to the configured length.
//! (The behaviour suite checks the same through the running binary; this is the library.)

mod common;

use common::{Scratch, channel, eventually};
use lapin::options::BasicGetOptions;
use services::config::SensorSettings;
use services::contract::AudioChunk;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn chunks_are_persistent_gapless_and_spaced_by_their_duration() {
    let scratch = Scratch::new().await;
    let mut settings = scratch.settings();
    settings.sensor = SensorSettings {
        sensor_id: "sensor-lib-1".into(),
        signal: "sine".into(),
        chunk_ms: 40,
        sample_rate: 8000,
        count: 6,
        rate_per_sec: 0.0,
        ..SensorSettings::default()
    };
    let report =
        tokio::time::timeout(Duration::from_secs(10), services::sensor::run(&settings, CancellationToken::new()))
            .await
            .expect("the sensor finishes 6 chunks within 10 s")
            .expect("the sensor runs without error");
    assert_eq!((report.sent, report.retries), (6, 0), "{report:?}");

    let (_conn, ch) = channel().await;
    let queue = scratch.names().audio_stream();
    let mut chunks = Vec::new();
    for _ in 0..6 {
        let got = eventually(5, "a chunk on audio_stream", || {
            let (ch, queue) = (ch.clone(), queue.clone());
            async move { ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap() }
        })
        .await;
        assert_eq!(got.delivery.properties.delivery_mode(), &Some(2), "chunks must be persistent");
        let chunk: AudioChunk = serde_json::from_slice(&got.delivery.data).expect("a chunk decodes");
        chunks.push(chunk);
    }
    let extra = ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap();
    assert!(extra.is_none(), "more than 6 chunks published");

    let sequences: Vec<u64> = chunks.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, (0..6).collect::<Vec<_>>(), "sequences in publish order");
    for pair in chunks.windows(2) {
        let step = pair[1].captured_at - pair[0].captured_at;
        assert_eq!(
            step,
            chrono::Duration::milliseconds(40),
            "captured_at step {} → {}",
            pair[0].sequence,
            pair[1].sequence
        );
    }
    for c in &chunks {
        assert_eq!((c.sensor_id.as_str(), c.sample_rate, c.channels), ("sensor-lib-1", 8000, 1));
        let samples = c.decode_samples().expect("samples decode");
        assert_eq!(samples.len(), 320, "40 ms at 8 kHz, chunk {}", c.sequence);
    }
    assert_eq!(
        chunks.iter().map(|c| c.message_id).collect::<std::collections::HashSet<_>>().len(),
        6,
        "message ids are distinct"
    );
    scratch.cleanup().await;
}

// Supervisors (the adapter, `pipeline live`, the harness) learn that a component is up from its
// one `ready` line on stdout: the sensor binary prints it once, after its first connection.
#[tokio::test]
async fn the_sensor_binary_announces_ready_once() {
    let scratch = Scratch::new().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("sensor")
        .env_remove("APQ_CONFIG")
        .env("APQ_AMQP_URL", &scratch.amqp_url)
        .env("APQ_NAMESPACE", &scratch.namespace)
        .env("APQ_SENSOR_COUNT", "3")
        .env("APQ_SENSOR_RATE_PER_SEC", "0")
        .env("APQ_SENSOR_CHUNK_MS", "10")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("the sensor publishes 3 chunks within 20 s")
        .expect("the pipeline binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let ready: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "ready")
        .collect();
    assert_eq!(ready.len(), 1, "ready lines on stdout:\n{stdout}");
    assert_eq!(ready[0]["component"], "sensor", "{stdout}");
    scratch.cleanup().await;
}
