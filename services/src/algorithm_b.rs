//! Algorithm B: consumes `features_a` through one shared durable queue (so M instances compete),
//! classifies each Feature A into an acoustic event and publishes Feature B to `features_b`.
//! Same rules as Algorithm A: ack after confirm, bad input to the queue's DLQ with a reason.

use crate::amqp::{DeadLetters, dead_letter, json_properties};
use crate::config::Settings;
use crate::contract::{self, EventClass, EventFeatures, FeatureA, FeatureB, FeatureType, MessageKind, SignalFeatures};
use crate::runtime::{Health, ServiceError, consume_until_shutdown, start_consuming, supervise};
use crate::topology::{self, Names};
use chrono::Utc;
use lapin::options::BasicAckOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const COMPONENT: &str = "algorithm-b";

/// Below this level a chunk is silence.
pub const SILENCE_BELOW_DBFS: f64 = -60.0;
/// At or above this share of clipped samples a chunk is clipping.
pub const CLIPPING_AT_RATIO: f64 = 0.05;
/// Spectral flatness splitting tones (peaky spectrum) from noise (flat spectrum).
pub const NOISE_AT_FLATNESS: f64 = 0.2;

/// Pure classification with a confidence in [0.5, 1]: the further from the decision boundary,
/// the more confident.
pub fn classify(f: &SignalFeatures) -> EventFeatures {
    let (event_class, confidence) = if f.rms_dbfs < SILENCE_BELOW_DBFS {
        (EventClass::Silence, 0.5 + (SILENCE_BELOW_DBFS - f.rms_dbfs) / 40.0)
    } else if f.clipping_ratio >= CLIPPING_AT_RATIO {
        (EventClass::Clipping, 0.5 + (f.clipping_ratio - CLIPPING_AT_RATIO) / (2.0 * (1.0 - CLIPPING_AT_RATIO)) + 0.25)
    } else if f.spectral_flatness < NOISE_AT_FLATNESS {
        (EventClass::Tone, 1.0 - 0.5 * f.spectral_flatness / NOISE_AT_FLATNESS)
    } else {
        (EventClass::Noise, 0.5 + (f.spectral_flatness - NOISE_AT_FLATNESS) / (2.0 * (0.6 - NOISE_AT_FLATNESS)))
    };
    EventFeatures {
        event_class,
        confidence: confidence.clamp(0.5, 1.0),
        loudness_dbfs: f.rms_dbfs,
        dominant_frequency_hz: f.dominant_frequency_hz,
    }
}

/// Pure step: Feature A → Feature B, its id derived from Feature A's (contract 1.3).
pub fn process(a: &FeatureA, instance: &str) -> FeatureB {
    FeatureB {
        schema_version: 1,
        feature_type: "B".into(),
        message_id: contract::derived_message_id(a.message_id, FeatureType::B),
        feature_a_message_id: a.message_id,
        source_message_id: a.source_message_id,
        sensor_id: a.sensor_id.clone(),
        sequence: a.sequence,
        captured_at: a.captured_at,
        processed_at: Utc::now(),
        processed_by: instance.to_string(),
        features: classify(&a.features),
    }
}

/// Runs one Algorithm B instance until `shutdown`.
pub async fn run(settings: Settings, health: Health, shutdown: CancellationToken) {
    let instance = settings.instance_id(COMPONENT);
    let names = Names::new(&settings.amqp.namespace);
    let counter = Arc::new(AtomicU64::new(0));
    let announced = AtomicBool::new(false);
    supervise(COMPONENT, &settings.amqp, &health, &shutdown, |conn| {
        let (settings, names, instance, counter) = (&settings, &names, &instance, counter.clone());
        let (health, shutdown, announced) = (&health, &shutdown, &announced);
        async move {
            let ch = crate::amqp::confirm_channel(&conn).await?;
            let queue = names.algorithm_b_queue();
            topology::bound_queue(&ch, names, &names.features_a(), &queue).await?;
            topology::fanout(&ch, &names.features_b()).await?;
            let consumer =
                start_consuming(&ch, &queue, settings.algorithm_b.prefetch, COMPONENT, instance, health, announced)
                    .await?;
            let max = settings.amqp.max_message_bytes;
            let drop_every = settings.algorithm_b.fault_drop_every;
            let delay = std::time::Duration::from_millis(settings.algorithm_b.fault_delay_ms);
            if !delay.is_zero() {
                tracing::warn!(?delay, "FAULT INJECTION ACTIVE: every Feature B is held before it is published");
            }
            let random_ids = settings.faults.random_output_ids;
            let retry = crate::output::RetryPolicy::for_settings(settings);
            consume_until_shutdown(&conn, &ch, consumer, instance, COMPONENT, health, shutdown, |delivery| {
                let (ch, names, instance) = (ch.clone(), names.clone(), instance.clone());
                let (retry, shutdown) = (retry.clone(), shutdown.clone());
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let settle = (&retry, &shutdown);
                    handle(&ch, &names, &instance, delivery, max, (drop_every, random_ids, delay), n, settle).await
                }
            })
            .await
        }
    })
    .await;
}

#[allow(clippy::too_many_arguments)] // one delivery's context, each borrowed from the session
async fn handle(
    ch: &lapin::Channel,
    names: &Names,
    instance: &str,
    delivery: lapin::message::Delivery,
    max_bytes: usize,
    (drop_every, random_ids, delay): (u64, bool, std::time::Duration),
    n: u64,
    (retry, shutdown): (&crate::output::RetryPolicy, &CancellationToken),
) -> Result<(), ServiceError> {
    let received_us = contract::now_us();
    let queue = names.algorithm_b_queue();
    let dlq = DeadLetters::new(names, &Names::dlq_of(&queue), &queue, instance);
    let a = match crate::amqp::guarded(|| crate::amqp::decode_delivery::<FeatureA>(&delivery, max_bytes)) {
        Ok(a) => a,
        Err(rejection) => {
            dead_letter(ch, &delivery, &dlq, &rejection).await?;
            return Ok(());
        }
    };
    if drop_every > 0 && n.is_multiple_of(drop_every) {
        tracing::warn!(sequence = a.sequence, "fault injection: dropping this feature");
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let processed = crate::amqp::guarded(|| {
        let mut b = process(&a, instance);
        if random_ids {
            b.message_id = Uuid::new_v4(); // the fault: every attempt a new message
        }
        contract::check_outgoing(MessageKind::FeatureB, &b).map(|body| (b, body))
    });
    let (b, body) = match processed {
        Ok(done) => done,
        Err(rejection) => {
            dead_letter(ch, &delivery, &dlq, &rejection).await?;
            return Ok(());
        }
    };
    if !delay.is_zero() {
        // The fault: a slow stage (the waterfall must attribute it to Algorithm B).
        tokio::time::sleep(delay).await;
    }
    let props = json_properties(&b.message_id.to_string(), MessageKind::FeatureB.schema_header(), &b.sensor_id);
    let props = crate::amqp::with_timing(props, received_us);
    let output = crate::output::Output { exchange: &names.features_b(), body: &body, props };
    crate::output::publish_and_settle(ch, &delivery, output, retry, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::{Signal, extract};
    use rstest::rstest;

    fn features_of(signal: Signal) -> SignalFeatures {
        extract(&signal.render(16_000, 1, 0, 1600), 1, 16_000)
    }

    #[rstest]
    #[case::silence(Signal::Silence, EventClass::Silence, 1.0)]
    #[case::tone(Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }, EventClass::Tone, 0.9)]
    #[case::quiet_tone(Signal::Sine { frequency_hz: 1000.0, amplitude: 0.01 }, EventClass::Tone, 0.9)]
    #[case::noise(Signal::WhiteNoise { amplitude: 0.5, seed: 3 }, EventClass::Noise, 0.8)]
    #[case::clipping(Signal::ClippedSine { frequency_hz: 440.0, gain: 4.0 }, EventClass::Clipping, 0.9)]
    fn classifies_known_signals(#[case] signal: Signal, #[case] class: EventClass, #[case] min_confidence: f64) {
        let ev = classify(&features_of(signal));
        assert_eq!(ev.event_class, class, "{ev:?}");
        assert!(ev.confidence >= min_confidence && ev.confidence <= 1.0, "confidence {}", ev.confidence);
    }

    #[test]
    fn very_quiet_noise_is_silence() {
        let ev = classify(&features_of(Signal::WhiteNoise { amplitude: 0.0005, seed: 1 }));
        assert_eq!(ev.event_class, EventClass::Silence);
    }

    #[test]
    fn feature_b_carries_lineage() {
        let chunk = crate::contract::AudioChunk::from_samples(
            "s",
            9,
            Utc::now(),
            16_000,
            1,
            crate::contract::Encoding::PcmF32le,
            &Signal::Silence.render(16_000, 1, 0, 160),
        );
        let a = crate::algorithm_a::process(&chunk, "a-1").unwrap();
        let b = process(&a, "b-1");
        assert_eq!((b.feature_a_message_id, b.source_message_id, b.sequence), (a.message_id, chunk.message_id, 9));
        contract::check_outgoing(MessageKind::FeatureA, &a).unwrap();
        contract::check_outgoing(MessageKind::FeatureB, &b).unwrap();
    }

    /// Features with everything neutral except what a case sets.
    fn at(rms_dbfs: f64, clipping_ratio: f64, spectral_flatness: f64) -> SignalFeatures {
        SignalFeatures { rms_dbfs, clipping_ratio, spectral_flatness, ..features_of(Signal::Silence) }
    }

    // The confidence formula at interior points, computed by hand from the documented thresholds
    // (silence −60 dBFS over 40 dB, clipping 0.05, flatness 0.2): a boundary test alone cannot
    // tell `/` from `%` or `+` from `-` in it.
    #[rstest]
    #[case::silence_10_db_below(at(-70.0, 0.0, 0.5), EventClass::Silence, 0.75)]
    #[case::silence_at_the_floor(at(-100.0, 0.0, 0.5), EventClass::Silence, 1.0)]
    #[case::clipping_at_the_threshold(at(-3.0, 0.05, 0.5), EventClass::Clipping, 0.75)]
    #[case::clipping_a_fifth(at(-3.0, 0.24, 0.5), EventClass::Clipping, 0.85)]
    #[case::tone_half_way(at(-20.0, 0.0, 0.1), EventClass::Tone, 0.75)]
    #[case::pure_tone(at(-20.0, 0.0, 0.0), EventClass::Tone, 1.0)]
    #[case::noise_at_the_threshold(at(-20.0, 0.0, 0.2), EventClass::Noise, 0.5)]
    #[case::noise_half_way(at(-20.0, 0.0, 0.4), EventClass::Noise, 0.75)]
    fn confidence_follows_the_distance_from_the_boundary(
        #[case] f: SignalFeatures,
        #[case] class: EventClass,
        #[case] confidence: f64,
    ) {
        let ev = classify(&f);
        assert_eq!(ev.event_class, class, "{f:?}");
        assert!((ev.confidence - confidence).abs() < 1e-9, "confidence: expected {confidence}, got {}", ev.confidence);
        assert_eq!((ev.loudness_dbfs, ev.dominant_frequency_hz), (f.rms_dbfs, f.dominant_frequency_hz));
    }
}
