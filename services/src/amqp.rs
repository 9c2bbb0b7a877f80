//! Broker plumbing shared by all components: connect with backoff, publish with confirms,
//! dead-letter a delivery with a reason. Ack-after-confirm is the rule everywhere.

use crate::contract::{HEADER_DLQ_CONSUMER, HEADER_DLQ_DETAIL, HEADER_DLQ_QUEUE, HEADER_DLQ_REASON, Rejection};
use lapin::{Channel, Connection, ConnectionProperties, message::Delivery, options::BasicAckOptions, types::AMQPValue};
use std::time::Duration;

pub use contract::amqp::{
    PublishError as AmqpError, confirm_channel, header_str, json_properties, publish_confirmed, with_timing,
};

/// Opens a connection, retrying with jittered exponential backoff until it works or `shutdown`
/// fires (None). The URL gets the configured heartbeat and a connect timeout unless it names its
/// own, so a silent broker link is noticed in seconds and a connect into one cannot hang.
pub async fn connect(
    amqp: &crate::config::AmqpSettings,
    name: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Connection> {
    let heartbeat = (!amqp.fault_no_heartbeat).then_some(amqp.heartbeat_secs);
    let url = url_with_liveness(&amqp.url, heartbeat, CONNECT_TIMEOUT_MS);
    let mut backoff = Backoff::for_settings(amqp);
    loop {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(&url, props).await {
            Ok(conn) => return Some(conn),
            Err(e) => {
                let delay = backoff.next_delay();
                crate::metrics::reconnect(name, "broker_unreachable");
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker unreachable");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// How long opening a broker connection (TCP + AMQP handshake) may take.
const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// `url` with `heartbeat` (seconds; None = leave the server's default) and `connection_timeout`
/// (ms) query parameters added where the URL does not set them itself.
pub fn url_with_liveness(url: &str, heartbeat: Option<u16>, connect_timeout_ms: u64) -> String {
    let mut out = url.to_string();
    let mut add = |key: &str, value: String| {
        let present =
            out.split_once('?').is_some_and(|(_, q)| q.split('&').any(|kv| kv.split('=').next() == Some(key)));
        if !present {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(&format!("{key}={value}"));
        }
    };
    if let Some(h) = heartbeat {
        add("heartbeat", h.to_string());
    }
    add("connection_timeout", connect_timeout_ms.to_string());
    out
}

/// Fault injection (`amqp.fault_byte_truncate_detail`), set once at start-up: see [`copy_to_dead_letter`].
pub static FAULT_BYTE_TRUNCATE_DETAIL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The AMQP properties the contract checks, taken from a delivery (owned, since lapin's
/// headers are not plain strings).
#[derive(Debug, Clone, Default)]
pub struct DeliveryProps {
    /// `content_type` property.
    pub content_type: Option<String>,
    /// `content_encoding` property.
    pub content_encoding: Option<String>,
    /// `message_id` property.
    pub message_id: Option<String>,
    /// `x-schema` header.
    pub schema: Option<String>,
}

impl DeliveryProps {
    pub fn of(delivery: &Delivery) -> Self {
        let p = &delivery.properties;
        Self {
            content_type: p.content_type().as_ref().map(|s| s.as_str().to_string()),
            content_encoding: p.content_encoding().as_ref().map(|s| s.as_str().to_string()),
            message_id: p.message_id().as_ref().map(|s| s.as_str().to_string()),
            schema: header_str(p, contract::HEADER_SCHEMA),
        }
    }
    pub fn envelope(&self) -> contract::Envelope<'_> {
        contract::Envelope {
            content_type: self.content_type.as_deref(),
            content_encoding: self.content_encoding.as_deref(),
            message_id: self.message_id.as_deref(),
            schema_header: self.schema.as_deref(),
        }
    }
}

/// Validates a delivery as `T` (every contract check, in precedence order).
pub fn decode_delivery<T: contract::Message>(delivery: &Delivery, max_bytes: usize) -> Result<T, Rejection> {
    let props = DeliveryProps::of(delivery);
    contract::decode_delivery(&delivery.data, &props.envelope(), max_bytes, chrono::Utc::now())
}

/// Runs `f`, turning a panic into a [`Rejection::ProcessingFailed`], so one message that trips
/// a bug is dead-lettered instead of crashing the consumer into a redelivery loop. The panic is
/// still printed to stderr (the harness counts it as a logged problem).
pub fn guarded<T>(f: impl FnOnce() -> Result<T, Rejection>) -> Result<T, Rejection> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Rejection::ProcessingFailed(format!("panicked: {what}")))
        }
    }
}

/// Where one consumer's dead letters go: the namespace's dead-letter exchange, routed by the
/// DLQ's name (so the DLQ and any observer bound under that key get a copy), plus the headers
/// that say where and by whom a message was rejected.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    /// The namespace's `dead_letters` direct exchange.
    pub exchange: String,
    /// The DLQ's name: the routing key.
    pub dlq: String,
    /// The queue the rejected message was consumed from (`x-dlq-source-queue`).
    pub source_queue: String,
    /// The rejecting instance (`x-dlq-consumer`).
    pub consumer: String,
}

impl DeadLetters {
    pub fn new(names: &crate::topology::Names, dlq: &str, source_queue: &str, consumer: &str) -> Self {
        Self {
            exchange: names.dead_letters(),
            dlq: dlq.to_string(),
            source_queue: source_queue.to_string(),
            consumer: consumer.to_string(),
        }
    }
}

/// Copies a delivery to its DLQ with the reason headers (publisher-confirmed), then acks the
/// original. The body and the original properties are kept, so nothing is lost.
pub async fn dead_letter(
    ch: &Channel,
    delivery: &Delivery,
    route: &DeadLetters,
    rejection: &Rejection,
) -> Result<(), AmqpError> {
    copy_to_dead_letter(ch, delivery, route, rejection).await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// [`dead_letter`] for a delivery taken without acknowledgement (`no_ack`): the copy only.
pub async fn copy_to_dead_letter(
    ch: &Channel,
    delivery: &Delivery,
    route: &DeadLetters,
    rejection: &Rejection,
) -> Result<(), AmqpError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(HEADER_DLQ_REASON.into(), AMQPValue::LongString(rejection.code().into()));
    let detail = if FAULT_BYTE_TRUNCATE_DETAIL.load(std::sync::atomic::Ordering::Relaxed) {
        let mut d = rejection.to_string();
        d.truncate(contract::MAX_DETAIL_BYTES.min(d.len())); // the fault: panics inside a character
        d
    } else {
        rejection.detail()
    };
    headers.insert(HEADER_DLQ_DETAIL.into(), AMQPValue::LongString(detail.into()));
    headers.insert(HEADER_DLQ_QUEUE.into(), AMQPValue::LongString(route.source_queue.as_str().into()));
    headers.insert(HEADER_DLQ_CONSUMER.into(), AMQPValue::LongString(route.consumer.as_str().into()));
    let props = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
    publish_confirmed(ch, &route.exchange, &route.dlq, &delivery.data, props).await?;
    crate::metrics::dead_lettered(rejection.code());
    tracing::warn!(reason = rejection.code(), detail = %rejection, dlq = route.dlq, "message dead-lettered");
    Ok(())
}

/// Exponential backoff with full jitter for reconnect loops: each delay is uniform in
/// [0, bound], the bound doubling per failure up to `max`, so components that lost the same
/// broker do not all come back in the same millisecond.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Current bound; doubles on each failure up to `max`.
    current: Duration,
    /// Where `reset` brings the bound back to.
    min: Duration,
    /// The largest bound.
    max: Duration,
    /// Full jitter (off only under the `fault_backoff_no_reset` fault: fixed, growing delays).
    jitter: bool,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { current: min, min, max, jitter: true }
    }
    /// The reconnect backoff the settings ask for (the fault switch turns jitter off).
    pub fn for_settings(amqp: &crate::config::AmqpSettings) -> Self {
        let mut max = Duration::from_millis(amqp.reconnect_max_ms);
        if amqp.fault_backoff_no_reset {
            // The defect as it was: the old 5 s ceiling too.
            max = max.max(Duration::from_secs(5));
        }
        let mut b = Self::new(Duration::from_millis(amqp.reconnect_min_ms), max);
        b.jitter = !amqp.fault_backoff_no_reset;
        b
    }
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.current;
        self.current = (self.current * 2).min(self.max);
        if !self.jitter {
            return bound;
        }
        let ms = bound.as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=ms))
    }
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_delays_stay_under_a_doubling_bound_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let bounds = [100, 200, 400, 800, 800];
        let mut seen = Vec::new();
        for bound in bounds {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(bound), "{d:?} above its bound {bound} ms");
            seen.push(d);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100), "reset brings the bound back to the minimum");
        // 1000 draws below 800 ms are not all equal (jitter); a fixed schedule would be.
        let mut b = Backoff::new(Duration::from_millis(800), Duration::from_millis(800));
        let draws: std::collections::BTreeSet<_> = (0..1000).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 10, "no jitter: {draws:?}");
    }

    #[test]
    fn liveness_parameters_are_added_once() {
        assert_eq!(
            url_with_liveness("amqp://g:g@h:1/%2f", Some(10), 5000),
            "amqp://g:g@h:1/%2f?heartbeat=10&connection_timeout=5000"
        );
        assert_eq!(
            url_with_liveness("amqp://h/%2f?heartbeat=3", Some(10), 5000),
            "amqp://h/%2f?heartbeat=3&connection_timeout=5000"
        );
        assert_eq!(url_with_liveness("amqp://h/%2f", None, 7), "amqp://h/%2f?connection_timeout=7");
    }
}
