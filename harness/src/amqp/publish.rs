//! Publishing what a sensor would (audio chunks) and what a broken producer might (raw bytes with
//! chosen headers), always with publisher confirms: a message is "published" once confirmed.

use anyhow::Context;
use contract::topology::Names;
use contract::{AudioChunk, HEADER_SCHEMA, HEADER_SENSOR_ID, MessageKind};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

/// A confirm-mode channel bound to one pipeline's names.
#[derive(Clone)]
pub struct Publisher {
    /// Confirm-mode channel on the harness's connection.
    channel: Channel,
    /// Where the pipeline's queues and exchanges are.
    names: Names,
}

/// A message exactly as a (possibly broken) producer sends it.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    pub body: Vec<u8>,
    /// AMQP `message_id` property; lets a step find the message in a DLQ when the body is garbage.
    pub message_id: Option<String>,
    /// `x-sensor-id` header (attribution of unparseable bodies).
    pub sensor_id: Option<String>,
    pub content_type: Option<String>,
    /// AMQP `content_encoding` (absent when None).
    pub content_encoding: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Publisher {
    pub async fn new(conn: &lapin::Connection, names: Names, topology: super::Topology) -> anyhow::Result<Self> {
        if topology == super::Topology::Owned {
            let ch = contract::amqp::confirm_channel(conn).await?;
            contract::topology::audio_stream(&ch, &names).await.context("declaring the work queue and its DLQ")?;
            ch.close(200, "declared".into()).await.ok();
        } else {
            super::ensure_queue(conn, &names.audio_stream(), topology).await?.close(200, "checked".into()).await.ok();
        }
        let channel = contract::amqp::confirm_channel(conn).await.context("opening a confirm channel")?;
        Ok(Self { channel, names })
    }

    /// Publishes a valid chunk to the work queue.
    pub async fn chunk(&self, chunk: &AudioChunk) -> anyhow::Result<()> {
        let body = serde_json::to_vec(chunk)?;
        let props = contract::amqp::json_properties(
            &chunk.message_id.to_string(),
            MessageKind::AudioChunk.schema_header(),
            &chunk.sensor_id,
        );
        contract::amqp::publish_routed(&self.channel, "", &self.names.audio_stream(), &body, props)
            .await
            .with_context(|| format!("publishing chunk {} of {}", chunk.sequence, chunk.sensor_id))
    }

    /// Publishes arbitrary bytes to the work queue.
    pub async fn raw(&self, msg: &RawMessage) -> anyhow::Result<()> {
        let queue = self.names.audio_stream();
        self.raw_to("", &queue, msg).await
    }

    /// Publishes arbitrary bytes to an exchange (e.g. a fanout, to test a consumer's DLQ).
    pub async fn raw_to(&self, exchange: &str, routing_key: &str, msg: &RawMessage) -> anyhow::Result<()> {
        let mut headers = FieldTable::default();
        if let Some(s) = &msg.sensor_id {
            headers.insert(HEADER_SENSOR_ID.into(), AMQPValue::LongString(s.as_str().into()));
        }
        // The x-schema a well-behaved producer sends to this destination (a step may override it).
        let kind = if exchange == self.names.features_a() {
            MessageKind::FeatureA
        } else if exchange == self.names.features_b() {
            MessageKind::FeatureB
        } else {
            MessageKind::AudioChunk
        };
        headers.insert(HEADER_SCHEMA.into(), AMQPValue::LongString(kind.schema_header().into()));
        for (k, v) in &msg.headers {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
        let mut props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        if let Some(id) = &msg.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        props = props.with_content_type(msg.content_type.as_deref().unwrap_or("application/json").into());
        if let Some(ce) = &msg.content_encoding {
            props = props.with_content_encoding(ce.as_str().into());
        }
        contract::amqp::publish_confirmed(&self.channel, exchange, routing_key, &msg.body, props)
            .await
            .with_context(|| format!("publishing {} raw bytes to {exchange:?}/{routing_key:?}", msg.body.len()))
    }

    /// Publishes bytes with exactly the given properties (no defaults added): for hostile
    /// inputs whose properties are the point.
    pub async fn exact(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> anyhow::Result<()> {
        contract::amqp::publish_confirmed(&self.channel, exchange, routing_key, body, props)
            .await
            .with_context(|| format!("publishing {} bytes to {exchange:?}/{routing_key:?}", body.len()))
    }

    pub fn names(&self) -> &Names {
        &self.names
    }
}
