//! The "latest feature" cache: this API instance's own exclusive, auto-delete, server-named queues
//! on both feature fanouts feed an in-memory map of the newest message per (sensor, type). The
//! consumer reconnects on its own (supervise); the API keeps serving what it has meanwhile.
//! Messages published while it had no queues (a broker gap, a restart) never reach it, so every
//! (re)connect refills the map from the database once the queues exist (and once more after the
//! writer's lag), and a miss falls back to the database (see the handler).

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
#[derive(Debug)]
pub struct LatestCache {
    /// Keyed by sensor id so lookups need no allocation.
    entries: RwLock<HashMap<String, [Option<Latest>; 2]>>,
    /// When a message or a refill last updated the map (the `cache_age` metric).
    updated: RwLock<std::time::Instant>,
}

impl Default for LatestCache {
    fn default() -> Self {
        Self { entries: RwLock::default(), updated: RwLock::new(std::time::Instant::now()) }
    }
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
        drop(entries);
        *self.updated.write().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        true
    }

    /// Offers a message stored by the writer (its decoded JSON, `message` column); false if it
    /// is not a valid feature or not newer than the cached one.
    pub fn offer_stored(&self, message: &serde_json::Value) -> bool {
        let feature = match message.get("feature_type").and_then(|t| t.as_str()) {
            Some("A") => serde_json::from_value::<FeatureA>(message.clone()).map(AnyFeature::A),
            Some("B") => serde_json::from_value::<FeatureB>(message.clone()).map(AnyFeature::B),
            _ => return false,
        };
        match feature {
            Ok(f) => self.offer(&f, Bytes::from(serde_json::to_vec(message).expect("a Value serialises"))),
            Err(e) => {
                tracing::warn!(error = %e, "a stored message does not decode; not cached");
                false
            }
        }
    }

    /// Seconds since the map last changed.
    pub fn age_secs(&self) -> f64 {
        self.updated.read().unwrap_or_else(|p| p.into_inner()).elapsed().as_secs_f64()
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
    refill_from: Option<deadpool_postgres::Pool>,
    health: Health,
    shutdown: CancellationToken,
) {
    let names = Names::new(&settings.amqp.namespace);
    let component = format!("{}-cache", super::COMPONENT);
    supervise(&component, &settings.amqp, &health, &shutdown, |conn| {
        let (settings, names, instance, cache, health, shutdown) =
            (&settings, &names, &instance, &cache, &health, &shutdown);
        let refill_from = refill_from.clone();
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
            // The queues exist from here on, so the database plus what arrives from now covers
            // everything: nothing published during the gap is missed.
            if let Some(pool) = refill_from {
                let session_end = shutdown.child_token();
                tokio::spawn(refill(pool, cache.clone(), session_end.clone()));
                // Stops the refill if the session ends first.
                let _guard = session_end.drop_guard();
                return consume(&conn, &ch, &mut deliveries, settings, names, instance, cache, health, shutdown).await;
            }
            consume(&conn, &ch, &mut deliveries, settings, names, instance, cache, health, shutdown).await
        }
    })
    .await;
    health.set_ready(false);
}

/// Rows the writer may still be committing when a refill runs: the refill is repeated once after
/// this long, so a message published during the gap and stored a moment later is not missed.
const REFILL_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Bound on one refill query.
const REFILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Loads the newest stored message of every (sensor, type) into the cache, now and once more
/// after [`REFILL_SETTLE`]. Failures are logged (the fallback on a miss still answers).
async fn refill(pool: deadpool_postgres::Pool, cache: Arc<LatestCache>, stop: CancellationToken) {
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(REFILL_SETTLE) => {} }
        }
        let load = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            crate::db::latest_messages(&**client).await.map_err(|e| e.to_string())
        };
        let rows = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(REFILL_TIMEOUT, load) => r.unwrap_or_else(|_| Err("timed out".into())),
        };
        match rows {
            Ok(rows) => {
                let kept = rows.iter().filter(|m| cache.offer_stored(m)).count();
                crate::metrics::cache_refilled(rows.len());
                tracing::info!(rows = rows.len(), kept, "cache refilled from the database");
            }
            Err(e) => tracing::warn!(error = %e, "cache refill from the database failed"),
        }
    }
}

/// The cache session's receive loop, until shutdown or a broker error.
#[allow(clippy::too_many_arguments)]
async fn consume<S>(
    conn: &lapin::Connection,
    ch: &lapin::Channel,
    deliveries: &mut S,
    settings: &Settings,
    names: &Names,
    instance: &str,
    cache: &LatestCache,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, ServiceError>
where
    S: futures::Stream<Item = (FeatureType, String, Result<lapin::message::Delivery, lapin::Error>)> + Unpin,
{
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
                        let route = DeadLetters::new(names, &names.rest_api_dlq(), &queue, instance);
                        copy_to_dead_letter(ch, &delivery, &route, &rejection).await?;
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

    #[test]
    fn age_counts_up_from_the_last_change() {
        let cache = LatestCache::default();
        let fresh = cache.age_secs();
        assert!((0.0..5.0).contains(&fresh), "age of a new cache: {fresh}");
        // A lower bound only: after 30 ms the age has grown by at least that.
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(cache.age_secs() >= fresh + 0.03, "age {} after 30 ms (was {fresh})", cache.age_secs());
    }
}
