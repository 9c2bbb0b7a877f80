//! Broker plumbing shared by all components: connect with backoff, publish with confirms,
//! dead-letter a delivery with a reason. Ack-after-confirm is the rule everywhere.

use crate::contract::{HEADER_DLQ_CONSUMER, HEADER_DLQ_DETAIL, HEADER_DLQ_QUEUE, HEADER_DLQ_REASON, Rejection};
use lapin::{Channel, Connection, ConnectionProperties, message::Delivery, options::BasicAckOptions, types::AMQPValue};
use std::time::Duration;

pub use contract::amqp::{PublishError as AmqpError, confirm_channel, header_str, json_properties, publish_confirmed};

/// Opens a connection, retrying with exponential backoff until `deadline` (None = forever) or
/// until `shutdown` fires.
pub async fn connect(
    url: &str,
    name: &str,
    min_backoff: Duration,
    max_backoff: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Connection> {
    let mut backoff = min_backoff;
    loop {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(url, props).await {
            Ok(conn) => return Some(conn),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker unreachable");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max_backoff);
    }
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
    tracing::warn!(reason = rejection.code(), detail = %rejection, dlq = route.dlq, "message dead-lettered");
    Ok(())
}

/// Exponential backoff helper for reconnect loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Current delay; doubles on each failure up to `max`.
    current: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { current: min, min, max }
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}
