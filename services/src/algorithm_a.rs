//! Algorithm A: competing consumer on `audio_stream`. Decodes each chunk, extracts signal features
//! and publishes Feature A to the `features_a` fanout; the input is acked only after the broker
//! confirmed the output (a nacked output is published again later: `output`). Bad chunks go to
//! `audio_stream.dlq` with a reason.

use crate::amqp::{DeadLetters, dead_letter, json_properties};
use crate::config::Settings;
use crate::contract::{self, AudioChunk, FeatureA, FeatureType, MessageKind, Rejection};
use crate::runtime::{Health, ServiceError, consume_until_shutdown, start_consuming, supervise};
use crate::topology::{self, Names};
use chrono::Utc;
use lapin::options::BasicAckOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const COMPONENT: &str = "algorithm-a";

/// Pure step: chunk → Feature A (or the reason it cannot be processed). The output's id is
/// derived from the chunk's (contract 1.3), so reprocessing a redelivered chunk yields the same
/// message, which the writer stores once.
pub fn process(chunk: &AudioChunk, instance: &str) -> Result<FeatureA, Rejection> {
    let samples = chunk.decode_samples()?;
    let features = crate::dsp::extract(&samples, chunk.channels, chunk.sample_rate);
    Ok(FeatureA {
        schema_version: 1,
        feature_type: "A".into(),
        message_id: contract::derived_message_id(chunk.message_id, FeatureType::A),
        source_message_id: chunk.message_id,
        sensor_id: chunk.sensor_id.clone(),
        sequence: chunk.sequence,
        captured_at: chunk.captured_at,
        processed_at: Utc::now(),
        processed_by: instance.to_string(),
        sample_rate: chunk.sample_rate,
        channels: chunk.channels,
        features,
    })
}

/// Runs one Algorithm A instance until `shutdown`.
pub async fn run(settings: Settings, health: Health, shutdown: CancellationToken) {
    let instance = settings.instance_id(COMPONENT);
    let names = Names::new(&settings.amqp.namespace);
    let counter = Arc::new(AtomicU64::new(0));
    let announced = std::sync::atomic::AtomicBool::new(false);
    supervise(COMPONENT, &settings.amqp, &health, &shutdown, |conn| {
        let (settings, names, instance, counter) = (&settings, &names, &instance, counter.clone());
        let (health, shutdown, announced) = (&health, &shutdown, &announced);
        async move {
            let ch = crate::amqp::confirm_channel(&conn).await?;
            topology::audio_stream(&ch, names).await?;
            topology::fanout(&ch, &names.features_a()).await?;
            let consumer = start_consuming(
                &ch,
                &names.audio_stream(),
                settings.algorithm_a.prefetch,
                COMPONENT,
                instance,
                health,
                announced,
            )
            .await?;
            let faults = Faults {
                max_bytes: settings.amqp.max_message_bytes,
                drop_every: settings.algorithm_a.fault_drop_every,
                random_ids: settings.faults.random_output_ids,
            };
            let retry = crate::output::RetryPolicy::for_settings(settings);
            consume_until_shutdown(&conn, &ch, consumer, instance, COMPONENT, health, shutdown, |delivery| {
                let (ch, names, instance) = (ch.clone(), names.clone(), instance.clone());
                let (retry, shutdown) = (retry.clone(), shutdown.clone());
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { handle(&ch, &names, &instance, delivery, faults, n, (&retry, &shutdown)).await }
            })
            .await
        }
    })
    .await;
}

/// A handler's limits and fault switches.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Largest accepted body.
    max_bytes: usize,
    /// `fault_drop_every`: ack every Nth chunk without publishing (0 = off).
    drop_every: u64,
    /// `faults.random_output_ids`: a new random id per attempt instead of the derived one.
    random_ids: bool,
}

async fn handle(
    ch: &lapin::Channel,
    names: &Names,
    instance: &str,
    delivery: lapin::message::Delivery,
    faults: Faults,
    n: u64,
    (retry, shutdown): (&crate::output::RetryPolicy, &CancellationToken),
) -> Result<(), ServiceError> {
    let Faults { max_bytes, drop_every, random_ids } = faults;
    let received_us = contract::now_us();
    let queue = names.audio_stream();
    // Decoding and DSP are CPU work: off the async workers (a maximal chunk must not stall the
    // other deliveries or the health endpoint), and a panic is a dead letter, not a crash loop.
    let props = crate::amqp::DeliveryProps::of(&delivery);
    let (data, id) = (delivery.data.clone(), instance.to_string());
    let result = tokio::task::spawn_blocking(move || {
        crate::amqp::guarded(|| {
            let chunk: AudioChunk = contract::decode_delivery(&data, &props.envelope(), max_bytes, Utc::now())?;
            let mut feature = process(&chunk, &id)?;
            if random_ids {
                feature.message_id = Uuid::new_v4(); // the fault: every attempt a new message
            }
            // Our own output must keep the contract too (e.g. a feature out of range): if it
            // does not, the input is dead-lettered with that reason.
            let body = contract::check_outgoing(MessageKind::FeatureA, &feature)?;
            Ok((feature, body))
        })
    })
    .await
    .unwrap_or_else(|e| Err(Rejection::ProcessingFailed(format!("the processing task failed: {e}"))));
    let (feature, body) = match result {
        Ok(done) => done,
        Err(rejection) => {
            let route = DeadLetters::new(names, &names.audio_stream_dlq(), &queue, instance);
            dead_letter(ch, &delivery, &route, &rejection).await?;
            return Ok(());
        }
    };
    if drop_every > 0 && n.is_multiple_of(drop_every) {
        tracing::warn!(sequence = feature.sequence, "fault injection: dropping this chunk");
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let props =
        json_properties(&feature.message_id.to_string(), MessageKind::FeatureA.schema_header(), &feature.sensor_id);
    let props = crate::amqp::with_timing(props, received_us);
    let output = crate::output::Output { exchange: &names.features_a(), body: &body, props };
    crate::output::publish_and_settle(ch, &delivery, output, retry, shutdown).await?;
    Ok(())
}
