//! The "latest feature" cache: this API instance's own exclusive, auto-delete, server-named queues
//! on both feature fanouts feed an in-memory map of the newest message per (sensor, type). The
//! consumer reconnects on its own (supervise); the API keeps serving what it has meanwhile.

use crate::amqp::{DeadLetters, copy_to_dead_letter};
use crate::config::Settings;
use crate::contract::{AnyFeature, FeatureA, FeatureB, FeatureType, Rejection};
use crate::runtime::{Health, ServiceError, SessionEnd, supervise};
use crate::topology::{self, Names};
use axum::body::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Order of "newest": capture time, then sequence, then message id as the final tie-break.
pub type Recency = (DateTime<Utc>, u64, Uuid);

/// The newest message of one (sensor, type).
#[derive(Debug, Clone)]
struct Latest {
    /// Its position in the recency order.
    recency: Recency,
    /// The body exactly as published.
    body: Bytes,
}

/// Newest message per sensor, one slot per feature type (index 0 = A, 1 = B).
#[derive(Debug, Default)]
pub struct LatestCache {
    /// Keyed by sensor id so lookups need no allocation.
    entries: RwLock<HashMap<String, [Option<Latest>; 2]>>,
}

fn slot(t: FeatureType) -> usize {
    match t {
        FeatureType::A => 0,
        FeatureType::B => 1,
    }
}

impl LatestCache {
    /// Keeps `body` if it is newer than what is cached for its (sensor, type); true if kept.
    pub fn offer(&self, feature: &AnyFeature, body: Bytes) -> bool {
        let recency = (feature.captured_at(), feature.sequence(), feature.message_id());
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let slots = entries.entry(feature.sensor_id().to_string()).or_default();
        let current = &mut slots[slot(feature.feature_type())];
        if current.as_ref().is_some_and(|c| c.recency >= recency) {
            return false;
        }
        *current = Some(Latest { recency, body });
        true
    }

    /// The newest body cached for (sensor, type).
    pub fn get(&self, sensor_id: &str, feature_type: FeatureType) -> Option<Bytes> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(sensor_id)?[slot(feature_type)].as_ref().map(|l| l.body.clone())
    }
}

/// Validates one delivery as `feature_type` (every contract check).
pub fn decode(
    feature_type: FeatureType,
    delivery: &lapin::message::Delivery,
    max_bytes: usize,
) -> Result<AnyFeature, Rejection> {
    crate::amqp::guarded(|| {
        Ok(match feature_type {
            FeatureType::A => AnyFeature::A(crate::amqp::decode_delivery::<FeatureA>(delivery, max_bytes)?),
            FeatureType::B => AnyFeature::B(crate::amqp::decode_delivery::<FeatureB>(delivery, max_bytes)?),
        })
    })
}

/// Feeds `cache` until `shutdown`; `health` is ready while both queues are being consumed.
pub async fn run(
    settings: Settings,
    instance: String,
    cache: Arc<LatestCache>,
    health: Health,
    shutdown: CancellationToken,
) {
    let names = Names::new(&settings.amqp.namespace);
    let component = format!("{}-cache", super::COMPONENT);
    supervise(&component, &settings.amqp, &health, &shutdown, |conn| {
        let (settings, names, instance, cache, health, shutdown) =
            (&settings, &names, &instance, &cache, &health, &shutdown);
        async move {
            let ch = crate::amqp::confirm_channel(&conn).await?;
            topology::dead_letter_queue(&ch, names, &names.rest_api_dlq()).await?;
            let mut streams = Vec::new();
            for (feature_type, exchange) in [(FeatureType::A, names.features_a()), (FeatureType::B, names.features_b())]
            {
                let qname = topology::private_fanout_queue(&ch, &exchange).await?;
                let tag = format!("{instance}.cache.{}", feature_type.as_str());
                let consumer = ch
                    .basic_consume(
                        qname.clone(),
                        tag.as_str().into(),
                        // No acks: the queue is exclusive to this connection, so it dies with
                        // it anyway; acking every copy only cost the broker work per message.
                        BasicConsumeOptions { no_ack: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await?;
                let qname = qname.to_string();
                streams.push(consumer.map(move |d| (feature_type, qname.clone(), d)));
            }
            let mut deliveries = futures::stream::select_all(streams);
            health.set_ready(true);
            tracing::info!(instance, "cache consumers running");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = deliveries.next() => {
                        let (feature_type, queue, delivery) = match next {
                            Some((t, q, d)) => (t, q, d?),
                            None => return Err(ServiceError::Other("cache consumer stream ended".into())),
                        };
                        match decode(feature_type, &delivery, settings.amqp.max_message_bytes) {
                            Ok(feature) => {
                                cache.offer(&feature, Bytes::copy_from_slice(&delivery.data));
                            }
                            Err(rejection) => {
                                copy_to_dead_letter(&ch, &delivery, &DeadLetters::new(names, &names.rest_api_dlq(), &queue, instance), &rejection).await?;
                            }
                        }
                    }
                }
            }
            health.set_ready(false);
            ch.close(200, "shutdown".into()).await.ok();
            conn.close(200, "shutdown".into()).await.ok();
            Ok(SessionEnd::Shutdown)
        }
    })
    .await;
    health.set_ready(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{EventClass, EventFeatures, FeatureB};

    fn feature(sensor: &str, captured_at: &str, sequence: u64, id: u128) -> AnyFeature {
        AnyFeature::B(FeatureB {
            schema_version: 1,
            feature_type: "B".into(),
            message_id: Uuid::from_u128(id),
            feature_a_message_id: Uuid::from_u128(1),
            source_message_id: Uuid::from_u128(2),
            sensor_id: sensor.into(),
            sequence,
            captured_at: captured_at.parse().unwrap(),
            processed_at: Utc::now(),
            processed_by: "b-1".into(),
            features: EventFeatures {
                event_class: EventClass::Tone,
                confidence: 1.0,
                loudness_dbfs: -3.0,
                dominant_frequency_hz: 440.0,
            },
        })
    }

    #[test]
    fn keeps_the_greatest_capture_time_sequence_and_id() {
        let cache = LatestCache::default();
        let body = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(cache.offer(&feature("s", "2024-01-01T00:00:01Z", 5, 10), body("t1")));
        // Older capture time loses even with a higher sequence (out-of-order arrival).
        assert!(!cache.offer(&feature("s", "2024-01-01T00:00:00Z", 9, 99), body("old")));
        // Same time: the higher sequence wins.
        assert!(cache.offer(&feature("s", "2024-01-01T00:00:01Z", 6, 1), body("seq6")));
        // Same time and sequence: the higher message id wins; a redelivery changes nothing.
        assert!(cache.offer(&feature("s", "2024-01-01T00:00:01Z", 6, 2), body("id2")));
        assert!(!cache.offer(&feature("s", "2024-01-01T00:00:01Z", 6, 2), body("again")));
        assert_eq!(cache.get("s", FeatureType::B).unwrap(), "id2");
        assert!(cache.get("s", FeatureType::A).is_none());
        assert!(cache.get("other", FeatureType::B).is_none());
    }
}
