//! Broker plumbing shared by all components: connect with backoff, publish with confirms,
//! dead-letter a delivery with a reason. Ack-after-confirm is the rule everywhere.

use crate::contract::{HEADER_DLQ_CONSUMER, HEADER_DLQ_DETAIL, HEADER_DLQ_QUEUE, HEADER_DLQ_REASON, Rejection};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker nacked the publish to {0:?}")]
    Nacked(String),
}

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

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Persistent JSON message properties with our headers.
pub fn json_properties(message_id: &str, schema: &str, sensor_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(crate::contract::HEADER_SCHEMA.into(), AMQPValue::LongString(schema.into()));
    headers.insert(crate::contract::HEADER_SENSOR_ID.into(), AMQPValue::LongString(sensor_id.into()));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_timestamp(chrono::Utc::now().timestamp() as u64)
        .with_headers(headers)
}

/// Publishes and waits for the broker's confirm; an error means "not sent".
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), AmqpError> {
    let confirm = ch
        .basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, props)
        .await?
        .await?;
    if confirm.is_ack() { Ok(()) } else { Err(AmqpError::Nacked(format!("{exchange}/{routing_key}"))) }
}

/// Copies a delivery to `dlq` with the reason headers (publisher-confirmed), then acks the
/// original. The body and the original properties are kept, so nothing is lost.
pub async fn dead_letter(
    ch: &Channel,
    delivery: &Delivery,
    dlq: &str,
    source_queue: &str,
    consumer: &str,
    rejection: &Rejection,
) -> Result<(), AmqpError> {
    copy_to_dead_letter(ch, delivery, dlq, source_queue, consumer, rejection).await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// [`dead_letter`] for a delivery taken without acknowledgement (`no_ack`): the copy only.
pub async fn copy_to_dead_letter(
    ch: &Channel,
    delivery: &Delivery,
    dlq: &str,
    source_queue: &str,
    consumer: &str,
    rejection: &Rejection,
) -> Result<(), AmqpError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(HEADER_DLQ_REASON.into(), AMQPValue::LongString(rejection.code().into()));
    let mut detail = rejection.to_string();
    detail.truncate(1000);
    headers.insert(HEADER_DLQ_DETAIL.into(), AMQPValue::LongString(detail.into()));
    headers.insert(HEADER_DLQ_QUEUE.into(), AMQPValue::LongString(source_queue.into()));
    headers.insert(HEADER_DLQ_CONSUMER.into(), AMQPValue::LongString(consumer.into()));
    let props = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
    publish_confirmed(ch, "", dlq, &delivery.data, props).await?;
    tracing::warn!(reason = rejection.code(), detail = %rejection, dlq, "message dead-lettered");
    Ok(())
}

/// Reads a string header (long or short string) from AMQP properties.
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
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
