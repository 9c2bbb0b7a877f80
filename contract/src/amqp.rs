//! AMQP conventions every producer follows: persistent JSON messages carrying the schema and
//! sensor headers, `message_id` equal to the body's, published with confirms ("sent" means
//! confirmed). Consumers ack an input only after their output is confirmed or committed.

use crate::messages::{HEADER_RECEIVED_US, HEADER_SCHEMA, HEADER_SENSOR_ID, HEADER_SENT_US};
use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

/// `content_type` of every message body.
pub const CONTENT_TYPE: &str = "application/json";
/// `delivery_mode` of every message: persistent.
pub const PERSISTENT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker nacked the publish to {0:?}")]
    Nacked(String),
    #[error(
        "no queue took the publish to {0:?} (the broker returned it: the queue does not exist or nothing is bound)"
    )]
    Unroutable(String),
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, PublishError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Persistent JSON message properties with the contract's headers.
pub fn json_properties(message_id: &str, schema: &str, sensor_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_SCHEMA.into(), AMQPValue::LongString(schema.into()));
    headers.insert(HEADER_SENSOR_ID.into(), AMQPValue::LongString(sensor_id.into()));
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(message_id.into())
        .with_timestamp(chrono::Utc::now().timestamp() as u64)
        .with_headers(headers)
}

/// Adds the timing headers (contract 1.4) to `props`: `received_us` when the input arrived,
/// and now as the moment the message is handed to the broker.
pub fn with_timing(props: BasicProperties, received_us: i64) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(HEADER_RECEIVED_US.into(), AMQPValue::LongString(received_us.to_string().into()));
    headers.insert(HEADER_SENT_US.into(), AMQPValue::LongString(crate::messages::now_us().to_string().into()));
    props.with_headers(headers)
}

/// Publishes and waits for the broker's confirm; an error means "not sent".
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), PublishError> {
    publish(ch, exchange, routing_key, body, props, false).await
}

/// Like [`publish_confirmed`], but `mandatory`: a message no queue takes is an error, not a
/// silent drop. For a publish to a queue that must exist (the work queue, a DLQ); not for a
/// fanout, which may rightly have nobody bound yet.
pub async fn publish_routed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), PublishError> {
    publish(ch, exchange, routing_key, body, props, true).await
}

async fn publish(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    mandatory: bool,
) -> Result<(), PublishError> {
    let options = BasicPublishOptions { mandatory, ..Default::default() };
    let confirm = ch.basic_publish(exchange.into(), routing_key.into(), options, body, props).await?.await?;
    let target = || format!("{exchange}/{routing_key}");
    match confirm {
        // A returned message comes only with `mandatory`.
        lapin::Confirmation::Ack(None) => Ok(()),
        lapin::Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(target())),
        _ => Err(PublishError::Nacked(target())),
    }
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
