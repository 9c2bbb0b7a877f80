//! The versioned message contract. Types mirror the JSON Schemas in `fixtures/contracts/`, which are
//! embedded here so that every producer validates what it publishes and every consumer validates
//! what it receives against the very same documents the harness checks.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::OnceLock;
use uuid::Uuid;

pub const AUDIO_CHUNK_SCHEMA: &str = include_str!("../../fixtures/contracts/audio_chunk.v1.schema.json");
pub const FEATURE_A_SCHEMA: &str = include_str!("../../fixtures/contracts/feature_a.v1.schema.json");
pub const FEATURE_B_SCHEMA: &str = include_str!("../../fixtures/contracts/feature_b.v1.schema.json");

/// AMQP header naming the schema of a body, e.g. `audio_chunk/v1`.
pub const HEADER_SCHEMA: &str = "x-schema";
/// AMQP header carrying the sensor id, so a body that cannot be parsed can still be attributed.
pub const HEADER_SENSOR_ID: &str = "x-sensor-id";
/// Dead-letter headers: machine-readable reason code, human detail, and where it was rejected.
pub const HEADER_DLQ_REASON: &str = "x-dlq-reason";
pub const HEADER_DLQ_DETAIL: &str = "x-dlq-detail";
pub const HEADER_DLQ_QUEUE: &str = "x-dlq-source-queue";
pub const HEADER_DLQ_CONSUMER: &str = "x-dlq-consumer";
/// Timing headers (1.4, optional): microseconds since the Unix epoch as a decimal string, set by
/// the component that produced the message. `x-apq-received-us`: when it received the input the
/// message was derived from; `x-apq-sent-us`: when it handed the message to the broker. They let
/// an observer split end-to-end latency into hops; consumers ignore them.
pub const HEADER_RECEIVED_US: &str = "x-apq-received-us";
pub const HEADER_SENT_US: &str = "x-apq-sent-us";

/// Now as the timing headers write it (microseconds since the Unix epoch).
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// The three message kinds on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    AudioChunk,
    FeatureA,
    FeatureB,
}

impl MessageKind {
    pub fn schema_header(self) -> &'static str {
        match self {
            MessageKind::AudioChunk => "audio_chunk/v1",
            MessageKind::FeatureA => "feature_a/v1",
            MessageKind::FeatureB => "feature_b/v1",
        }
    }

    fn schema_text(self) -> &'static str {
        match self {
            MessageKind::AudioChunk => AUDIO_CHUNK_SCHEMA,
            MessageKind::FeatureA => FEATURE_A_SCHEMA,
            MessageKind::FeatureB => FEATURE_B_SCHEMA,
        }
    }

    /// The compiled schema (built once per process).
    pub fn validator(self) -> &'static jsonschema::Validator {
        static CELLS: [OnceLock<jsonschema::Validator>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let idx = self as usize;
        CELLS[idx].get_or_init(|| {
            let schema: Value = serde_json::from_str(self.schema_text()).expect("embedded schema is JSON");
            jsonschema::options().should_validate_formats(true).build(&schema).expect("embedded schema compiles")
        })
    }
}

/// Why a message was refused. The `code` goes into the `x-dlq-reason` header verbatim, so these
/// strings are part of the contract.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    Oversized { size: usize, limit: usize },
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("unsupported schema_version {0:?}; this consumer understands 1")]
    UnsupportedVersion(Value),
    #[error("schema violation at {path}: {detail}")]
    SchemaViolation { path: String, detail: String },
    #[error("sample rate {0} Hz is not supported")]
    UnsupportedSampleRate(Value),
    #[error("samples are not valid base64: {0}")]
    InvalidBase64(String),
    #[error("sample payload of {bytes} bytes is not a whole number of {frame_bytes}-byte frames")]
    PartialFrame { bytes: usize, frame_bytes: usize },
    #[error("sample {index} is not finite ({value})")]
    NonFiniteSample { index: usize, value: f32 },
    #[error("sample {index} is {value}, outside full scale [-1, 1]")]
    SampleOutOfRange { index: usize, value: f32 },
    #[error("chunk of {frames} frames at {sample_rate} Hz is longer than {max_ms} ms")]
    ChunkTooLong { frames: usize, sample_rate: u32, max_ms: u64 },
    #[error("content_type {0:?} is not application/json")]
    UnsupportedContentType(String),
    #[error("content_encoding {0:?} is not supported (bodies are plain JSON)")]
    UnsupportedContentEncoding(String),
    #[error("x-schema header {header:?} does not name this queue's message kind {expected:?}")]
    SchemaHeaderMismatch { header: String, expected: &'static str },
    #[error("AMQP message_id {property:?} differs from the body's message_id {body:?}")]
    MessageIdMismatch { property: String, body: String },
    #[error("{field} {value} is outside [{min}, {max}] (receipt time + {future_slack_secs} s)")]
    TimestampOutOfRange { field: &'static str, value: String, min: String, max: String, future_slack_secs: i64 },
    #[error("the database refused the row: {0}")]
    RejectedByDatabase(String),
    #[error("processing failed: {0}")]
    ProcessingFailed(String),
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Oversized { .. } => "oversized_payload",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::UnsupportedVersion(_) => "unsupported_schema_version",
            Rejection::SchemaViolation { .. } => "schema_violation",
            Rejection::UnsupportedSampleRate(_) => "unsupported_sample_rate",
            Rejection::InvalidBase64(_) => "invalid_base64",
            Rejection::PartialFrame { .. } => "partial_frame",
            Rejection::NonFiniteSample { .. } => "non_finite_sample",
            Rejection::SampleOutOfRange { .. } => "sample_out_of_range",
            Rejection::ChunkTooLong { .. } => "chunk_too_long",
            Rejection::UnsupportedContentType(_) => "unsupported_content_type",
            Rejection::UnsupportedContentEncoding(_) => "unsupported_content_encoding",
            Rejection::SchemaHeaderMismatch { .. } => "schema_header_mismatch",
            Rejection::MessageIdMismatch { .. } => "message_id_mismatch",
            Rejection::TimestampOutOfRange { .. } => "timestamp_out_of_range",
            Rejection::RejectedByDatabase(_) => "rejected_by_database",
            Rejection::ProcessingFailed(_) => "processing_failed",
        }
    }

    /// Every reason code, in precedence order (the first check that fails names the reason).
    pub const CODES: [&'static str; 17] = [
        "oversized_payload",
        "unsupported_content_type",
        "unsupported_content_encoding",
        "schema_header_mismatch",
        "invalid_json",
        "unsupported_schema_version",
        "unsupported_sample_rate",
        "schema_violation",
        "message_id_mismatch",
        "timestamp_out_of_range",
        "invalid_base64",
        "partial_frame",
        "non_finite_sample",
        "sample_out_of_range",
        "chunk_too_long",
        "rejected_by_database",
        "processing_failed",
    ];

    /// The detail for the `x-dlq-detail` header: at most [`MAX_DETAIL_BYTES`] bytes, cut at a
    /// character boundary (a detail quotes hostile input, which may be multi-byte anywhere).
    pub fn detail(&self) -> String {
        let mut detail = self.to_string();
        detail.truncate(floor_char_boundary(&detail, MAX_DETAIL_BYTES));
        detail
    }
}

/// Longest `x-dlq-detail` value, in bytes.
pub const MAX_DETAIL_BYTES: usize = 1000;

/// The largest index ≤ `max` that is a character boundary of `s`.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// Timestamps must not precede this (RFC 3339); nothing was captured before it.
pub const EARLIEST_TIMESTAMP: &str = "2000-01-01T00:00:00Z";
/// How far a timestamp may lie after its receipt (clock skew between hosts).
pub const FUTURE_SLACK_SECS: i64 = 300;
/// Longest chunk a consumer processes.
pub const MAX_CHUNK_MS: u64 = 10_000;

/// What a consumer knows of a delivery besides its body: the AMQP properties the contract
/// constrains. Absent properties are not checked (producers should set them all).
#[derive(Debug, Clone, Copy, Default)]
pub struct Envelope<'a> {
    /// `content_type`: when present, must be `application/json` (parameters allowed).
    pub content_type: Option<&'a str>,
    /// `content_encoding`: when present, must be empty or `identity`.
    pub content_encoding: Option<&'a str>,
    /// `message_id`: when present, must equal the body's `message_id`.
    pub message_id: Option<&'a str>,
    /// `x-schema` header: when present, must name the queue's message kind.
    pub schema_header: Option<&'a str>,
}

/// A message type with the fields the contract checks beyond its schema.
pub trait Message: for<'de> Deserialize<'de> {
    const KIND: MessageKind;
    fn id(&self) -> Uuid;
    /// (field, value) of every timestamp, checked against [`EARLIEST_TIMESTAMP`] and receipt time.
    fn timestamps(&self) -> Vec<(&'static str, DateTime<Utc>)>;
}

impl Message for AudioChunk {
    const KIND: MessageKind = MessageKind::AudioChunk;
    fn id(&self) -> Uuid {
        self.message_id
    }
    fn timestamps(&self) -> Vec<(&'static str, DateTime<Utc>)> {
        vec![("captured_at", self.captured_at)]
    }
}

impl Message for FeatureA {
    const KIND: MessageKind = MessageKind::FeatureA;
    fn id(&self) -> Uuid {
        self.message_id
    }
    fn timestamps(&self) -> Vec<(&'static str, DateTime<Utc>)> {
        vec![("captured_at", self.captured_at), ("processed_at", self.processed_at)]
    }
}

impl Message for FeatureB {
    const KIND: MessageKind = MessageKind::FeatureB;
    fn id(&self) -> Uuid {
        self.message_id
    }
    fn timestamps(&self) -> Vec<(&'static str, DateTime<Utc>)> {
        vec![("captured_at", self.captured_at), ("processed_at", self.processed_at)]
    }
}

/// Validates one delivery as `T`, every check in the contract's precedence order ([`Rejection::CODES`]):
/// size, properties, `x-schema`, JSON, version, sample rate, schema, `message_id` property,
/// timestamps. `now` is the receipt time. (Audio decoding checks come after, in
/// [`AudioChunk::decode_samples`].)
pub fn decode_delivery<T: Message>(
    body: &[u8],
    envelope: &Envelope<'_>,
    max_bytes: usize,
    now: DateTime<Utc>,
) -> Result<T, Rejection> {
    if body.len() > max_bytes {
        return Err(Rejection::Oversized { size: body.len(), limit: max_bytes });
    }
    if let Some(ct) = envelope.content_type
        && !ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case(crate::amqp::CONTENT_TYPE))
    {
        return Err(Rejection::UnsupportedContentType(ct.chars().take(100).collect()));
    }
    if let Some(ce) = envelope.content_encoding
        && !(ce.is_empty() || ce.eq_ignore_ascii_case("identity"))
    {
        return Err(Rejection::UnsupportedContentEncoding(ce.chars().take(100).collect()));
    }
    if let Some(h) = envelope.schema_header
        && h != T::KIND.schema_header()
    {
        return Err(Rejection::SchemaHeaderMismatch {
            header: h.chars().take(100).collect(),
            expected: T::KIND.schema_header(),
        });
    }
    let msg: T = decode(T::KIND, body, max_bytes)?;
    if let Some(p) = envelope.message_id
        && Uuid::parse_str(p).ok() != Some(msg.id())
    {
        return Err(Rejection::MessageIdMismatch {
            property: p.chars().take(100).collect(),
            body: msg.id().to_string(),
        });
    }
    let earliest: DateTime<Utc> = EARLIEST_TIMESTAMP.parse().expect("a valid constant");
    let latest = now + chrono::Duration::seconds(FUTURE_SLACK_SECS);
    for (field, value) in msg.timestamps() {
        if value < earliest || value > latest {
            return Err(Rejection::TimestampOutOfRange {
                field,
                value: value.to_rfc3339(),
                min: earliest.to_rfc3339(),
                max: latest.to_rfc3339(),
                future_slack_secs: FUTURE_SLACK_SECS,
            });
        }
    }
    Ok(msg)
}

/// Parses and validates a body as `kind`: size, JSON, version, schema, then typed decode.
pub fn decode<T: for<'de> Deserialize<'de>>(kind: MessageKind, body: &[u8], max_bytes: usize) -> Result<T, Rejection> {
    if body.len() > max_bytes {
        return Err(Rejection::Oversized { size: body.len(), limit: max_bytes });
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    check(kind, &value)?;
    serde_json::from_value(value).map_err(|e| Rejection::SchemaViolation { path: String::new(), detail: e.to_string() })
}

/// Validates an already parsed value; the specific reasons come before the generic schema check
/// so that a wrong version or sample rate is reported as such.
pub fn check(kind: MessageKind, value: &Value) -> Result<(), Rejection> {
    match value.get("schema_version") {
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(other) => return Err(Rejection::UnsupportedVersion(other.clone())),
        None => {
            return Err(Rejection::SchemaViolation {
                path: "/schema_version".into(),
                detail: "required property is missing".into(),
            });
        }
    }
    if kind == MessageKind::AudioChunk
        && let Some(rate) = value.get("sample_rate")
        && !rate.as_u64().and_then(|r| u32::try_from(r).ok()).is_some_and(|r| SUPPORTED_SAMPLE_RATES.contains(&r))
    {
        return Err(Rejection::UnsupportedSampleRate(rate.clone()));
    }
    if let Some(err) = kind.validator().iter_errors(value).next() {
        return Err(Rejection::SchemaViolation { path: err.instance_path().to_string(), detail: err.to_string() });
    }
    Ok(())
}

/// Validates a message we are about to publish; a failure here is a bug in the producer.
pub fn check_outgoing<T: Serialize>(kind: MessageKind, msg: &T) -> Result<Vec<u8>, Rejection> {
    let value = serde_json::to_value(msg).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    check(kind, &value)?;
    Ok(serde_json::to_vec(&value).expect("a Value always serialises"))
}

pub const SUPPORTED_SAMPLE_RATES: [u32; 7] = [8000, 11025, 16000, 22050, 32000, 44100, 48000];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    PcmF32le,
    PcmS16le,
}

impl Encoding {
    pub fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::PcmF32le => 4,
            Encoding::PcmS16le => 2,
        }
    }
}

/// Audio chunk v1 (see `audio_chunk.v1.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioChunk {
    pub schema_version: u32,
    pub message_id: Uuid,
    pub sensor_id: String,
    pub sequence: u64,
    pub captured_at: DateTime<Utc>,
    pub sample_rate: u32,
    pub channels: u16,
    pub encoding: Encoding,
    /// Base64 of interleaved little-endian frames.
    pub samples: String,
}

impl AudioChunk {
    /// Builds a chunk from float samples (interleaved when `channels` > 1).
    pub fn from_samples(
        sensor_id: &str,
        sequence: u64,
        captured_at: DateTime<Utc>,
        sample_rate: u32,
        channels: u16,
        encoding: Encoding,
        samples: &[f32],
    ) -> Self {
        let mut bytes = Vec::with_capacity(samples.len() * encoding.bytes_per_sample());
        for &s in samples {
            match encoding {
                Encoding::PcmF32le => bytes.extend_from_slice(&s.to_le_bytes()),
                Encoding::PcmS16le => {
                    let v = (s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16;
                    bytes.extend_from_slice(&v.to_le_bytes())
                }
            }
        }
        AudioChunk {
            schema_version: 1,
            message_id: Uuid::new_v4(),
            sensor_id: sensor_id.to_string(),
            sequence,
            captured_at,
            sample_rate,
            channels,
            encoding,
            samples: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// Decodes the interleaved samples to floats in [-1, 1] (s16) or as sent (f32), rejecting
    /// partial frames and non-finite values.
    pub fn decode_samples(&self) -> Result<Vec<f32>, Rejection> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.samples.as_bytes())
            .map_err(|e| Rejection::InvalidBase64(e.to_string()))?;
        let frame_bytes = self.encoding.bytes_per_sample() * self.channels.max(1) as usize;
        if bytes.is_empty() || bytes.len() % frame_bytes != 0 {
            return Err(Rejection::PartialFrame { bytes: bytes.len(), frame_bytes });
        }
        let samples: Vec<f32> = match self.encoding {
            Encoding::PcmF32le => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            // i16::MIN would decode to -1.00003: full scale is [-1, 1].
            Encoding::PcmS16le => bytes
                .chunks_exact(2)
                .map(|b| (i16::from_le_bytes([b[0], b[1]]) as f32 / i16::MAX as f32).max(-1.0))
                .collect(),
        };
        if let Some((index, &value)) = samples.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Rejection::NonFiniteSample { index, value });
        }
        if let Some((index, &value)) = samples.iter().enumerate().find(|(_, v)| v.abs() > 1.0) {
            return Err(Rejection::SampleOutOfRange { index, value });
        }
        let frames = bytes.len() / frame_bytes;
        if frames as u64 * 1000 > MAX_CHUNK_MS * self.sample_rate as u64 {
            return Err(Rejection::ChunkTooLong { frames, sample_rate: self.sample_rate, max_ms: MAX_CHUNK_MS });
        }
        Ok(samples)
    }
}

/// The numbers Algorithm A computes for one chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalFeatures {
    pub rms: f64,
    pub peak: f64,
    pub rms_dbfs: f64,
    pub zero_crossing_rate: f64,
    pub spectral_centroid_hz: f64,
    pub dominant_frequency_hz: f64,
    pub spectral_flatness: f64,
    pub clipping_ratio: f64,
    pub duration_ms: f64,
    pub sample_count: u64,
}

/// Feature A v1 (see `feature_a.v1.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureA {
    pub schema_version: u32,
    pub feature_type: String,
    pub message_id: Uuid,
    pub source_message_id: Uuid,
    pub sensor_id: String,
    pub sequence: u64,
    pub captured_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub processed_by: String,
    pub sample_rate: u32,
    pub channels: u16,
    pub features: SignalFeatures,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventClass {
    Silence,
    Tone,
    Noise,
    Clipping,
}

/// The numbers Algorithm B derives from one Feature A.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFeatures {
    pub event_class: EventClass,
    pub confidence: f64,
    pub loudness_dbfs: f64,
    pub dominant_frequency_hz: f64,
}

/// Feature B v1 (see `feature_b.v1.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureB {
    pub schema_version: u32,
    pub feature_type: String,
    pub message_id: Uuid,
    pub feature_a_message_id: Uuid,
    pub source_message_id: Uuid,
    pub sensor_id: String,
    pub sequence: u64,
    pub captured_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub processed_by: String,
    pub features: EventFeatures,
}

/// Either feature message, as the data writer and the API cache handle them.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyFeature {
    A(FeatureA),
    B(FeatureB),
}

impl AnyFeature {
    pub fn message_id(&self) -> Uuid {
        match self {
            AnyFeature::A(m) => m.message_id,
            AnyFeature::B(m) => m.message_id,
        }
    }
    pub fn sensor_id(&self) -> &str {
        match self {
            AnyFeature::A(m) => &m.sensor_id,
            AnyFeature::B(m) => &m.sensor_id,
        }
    }
    pub fn feature_type(&self) -> FeatureType {
        match self {
            AnyFeature::A(_) => FeatureType::A,
            AnyFeature::B(_) => FeatureType::B,
        }
    }
    pub fn captured_at(&self) -> DateTime<Utc> {
        match self {
            AnyFeature::A(m) => m.captured_at,
            AnyFeature::B(m) => m.captured_at,
        }
    }
    pub fn sequence(&self) -> u64 {
        match self {
            AnyFeature::A(m) => m.sequence,
            AnyFeature::B(m) => m.sequence,
        }
    }
    pub fn source_message_id(&self) -> Uuid {
        match self {
            AnyFeature::A(m) => m.source_message_id,
            AnyFeature::B(m) => m.source_message_id,
        }
    }
    pub fn processed_by(&self) -> &str {
        match self {
            AnyFeature::A(m) => &m.processed_by,
            AnyFeature::B(m) => &m.processed_by,
        }
    }
    /// The `features` object as stored in the database and served by the API.
    pub fn features_json(&self) -> Value {
        match self {
            AnyFeature::A(m) => serde_json::to_value(&m.features),
            AnyFeature::B(m) => serde_json::to_value(&m.features),
        }
        .expect("features serialise")
    }
    pub fn to_json(&self) -> Value {
        match self {
            AnyFeature::A(m) => serde_json::to_value(m),
            AnyFeature::B(m) => serde_json::to_value(m),
        }
        .expect("messages serialise")
    }
}

/// The UUIDv5 namespace of derived message ids (contract 1.3). A fixed value: changing it would
/// give every redelivered input a new output id.
pub const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x481e4632_8767_4f66_827d_cb4b11cd2a64);

/// The `message_id` of the Feature `output` computed from the input message `input` (contract
/// 1.3): UUIDv5 over the input id's 16 bytes followed by the type letter. Every processing attempt
/// of the same input (a redelivery after a crash, a publisher's retry) yields the same id, so the
/// copies are one row under `UNIQUE(message_id)`.
pub fn derived_message_id(input: Uuid, output: FeatureType) -> Uuid {
    let mut name = [0u8; 17];
    name[..16].copy_from_slice(input.as_bytes());
    name[16] = output.as_str().as_bytes()[0];
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, &name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FeatureType {
    A,
    B,
}

impl FeatureType {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureType::A => "A",
            FeatureType::B => "B",
        }
    }
    pub fn kind(self) -> MessageKind {
        match self {
            FeatureType::A => MessageKind::FeatureA,
            FeatureType::B => MessageKind::FeatureB,
        }
    }
}

impl std::str::FromStr for FeatureType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(FeatureType::A),
            "B" | "b" => Ok(FeatureType::B),
            other => Err(format!("unknown feature type {other:?}; expected A or B")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn derived_ids_are_stable_per_input_and_type() {
        let input = Uuid::from_u128(0x1234);
        let a = derived_message_id(input, FeatureType::A);
        assert_eq!(a, derived_message_id(input, FeatureType::A), "the same input gives the same id");
        assert_ne!(a, derived_message_id(input, FeatureType::B), "A and B of one input differ");
        assert_ne!(a, derived_message_id(Uuid::from_u128(0x1235), FeatureType::A));
        assert_eq!(a.get_version_num(), 5);
        // Pinned (computed with Python's hashlib: SHA-1 of namespace ‖ input ‖ "A", version 5),
        // so an implementation in another language can check itself against it.
        assert_eq!(a.to_string(), "cf1a96b0-7fc2-5818-95cb-345b4c7d7e7a");
    }

    fn chunk() -> AudioChunk {
        AudioChunk::from_samples("s-1", 7, Utc::now(), 16_000, 1, Encoding::PcmF32le, &[0.0, 0.5, -0.5, 0.25])
    }

    #[test]
    fn a_valid_chunk_round_trips() {
        let c = chunk();
        let body = check_outgoing(MessageKind::AudioChunk, &c).unwrap();
        let back: AudioChunk = decode(MessageKind::AudioChunk, &body, 1 << 20).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.decode_samples().unwrap(), vec![0.0, 0.5, -0.5, 0.25]);
    }

    #[test]
    fn s16_encoding_round_trips_within_quantisation() {
        let c = AudioChunk::from_samples("s", 0, Utc::now(), 8000, 1, Encoding::PcmS16le, &[0.5, -1.0, 1.0]);
        let s = c.decode_samples().unwrap();
        assert!((s[0] - 0.5).abs() < 1e-4 && s[1] == -1.0 && s[2] == 1.0, "{s:?}");
    }

    #[rstest]
    #[case::not_json(b"{nope".to_vec(), "invalid_json")]
    #[case::wrong_version(br#"{"schema_version":2}"#.to_vec(), "unsupported_schema_version")]
    #[case::missing_version(br#"{"sensor_id":"x"}"#.to_vec(), "schema_violation")]
    fn malformed_bodies_get_a_reason(#[case] body: Vec<u8>, #[case] code: &str) {
        let err = decode::<AudioChunk>(MessageKind::AudioChunk, &body, 1 << 20).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }

    #[rstest]
    #[case::sample_rate("sample_rate", serde_json::json!(12345), "unsupported_sample_rate")]
    #[case::bad_uuid("message_id", serde_json::json!("not-a-uuid"), "schema_violation")]
    #[case::bad_time("captured_at", serde_json::json!("yesterday"), "schema_violation")]
    #[case::bad_channels("channels", serde_json::json!(3), "schema_violation")]
    #[case::bad_encoding("encoding", serde_json::json!("mp3"), "schema_violation")]
    fn field_violations_are_named(#[case] field: &str, #[case] value: Value, #[case] code: &str) {
        let mut v = serde_json::to_value(chunk()).unwrap();
        v[field] = value;
        let err = decode::<AudioChunk>(MessageKind::AudioChunk, &serde_json::to_vec(&v).unwrap(), 1 << 20).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }

    #[test]
    fn missing_required_field_is_a_schema_violation() {
        let mut v = serde_json::to_value(chunk()).unwrap();
        v.as_object_mut().unwrap().remove("sensor_id");
        let err = decode::<AudioChunk>(MessageKind::AudioChunk, &serde_json::to_vec(&v).unwrap(), 1 << 20).unwrap_err();
        assert_eq!(err.code(), "schema_violation");
        assert!(err.to_string().contains("sensor_id"), "{err}");
    }

    #[test]
    fn extra_optional_field_is_tolerated() {
        let mut v = serde_json::to_value(chunk()).unwrap();
        v["firmware"] = serde_json::json!("1.2.3");
        decode::<AudioChunk>(MessageKind::AudioChunk, &serde_json::to_vec(&v).unwrap(), 1 << 20).unwrap();
    }

    #[test]
    fn oversized_payload_is_refused_before_parsing() {
        let err = decode::<AudioChunk>(MessageKind::AudioChunk, &[b' '; 100], 10).unwrap_err();
        assert_eq!(err.code(), "oversized_payload");
    }

    #[test]
    fn nan_samples_are_refused() {
        let c = AudioChunk::from_samples("s", 0, Utc::now(), 16_000, 1, Encoding::PcmF32le, &[0.1, f32::NAN]);
        let err = c.decode_samples().unwrap_err();
        assert!(matches!(err, Rejection::NonFiniteSample { index: 1, value } if value.is_nan()), "{err}");
    }

    fn envelope_for(c: &AudioChunk) -> String {
        c.message_id.to_string()
    }

    #[rstest]
    #[case::content_type(Envelope { content_type: Some("text/plain"), ..Default::default() }, "unsupported_content_type")]
    #[case::encoding(Envelope { content_encoding: Some("gzip"), ..Default::default() }, "unsupported_content_encoding")]
    #[case::schema_header(Envelope { schema_header: Some("feature_a/v1"), ..Default::default() }, "schema_header_mismatch")]
    #[case::message_id(Envelope { message_id: Some("not-the-body-id"), ..Default::default() }, "message_id_mismatch")]
    fn contradicting_properties_are_refused(#[case] env: Envelope<'static>, #[case] code: &str) {
        let body = check_outgoing(MessageKind::AudioChunk, &chunk()).unwrap();
        let err = decode_delivery::<AudioChunk>(&body, &env, 1 << 20, Utc::now()).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }

    #[test]
    fn matching_properties_pass_and_charset_parameters_are_fine() {
        let c = chunk();
        let id = envelope_for(&c);
        let env = Envelope {
            content_type: Some("application/json; charset=utf-8"),
            content_encoding: Some(""),
            message_id: Some(&id),
            schema_header: Some("audio_chunk/v1"),
        };
        let body = check_outgoing(MessageKind::AudioChunk, &c).unwrap();
        assert_eq!(decode_delivery::<AudioChunk>(&body, &env, 1 << 20, Utc::now()).unwrap(), c);
    }

    #[rstest]
    #[case::future("2999-01-01T00:00:00Z")]
    #[case::epoch("1970-01-01T00:00:00Z")]
    fn timestamps_outside_the_window_are_refused(#[case] at: &str) {
        let mut c = chunk();
        c.captured_at = at.parse().unwrap();
        let body = check_outgoing(MessageKind::AudioChunk, &c).unwrap();
        let err = decode_delivery::<AudioChunk>(&body, &Envelope::default(), 1 << 20, Utc::now()).unwrap_err();
        assert_eq!(err.code(), "timestamp_out_of_range", "{err}");
    }

    #[test]
    fn samples_beyond_full_scale_and_overlong_chunks_are_refused() {
        let loud = AudioChunk::from_samples("s", 0, Utc::now(), 8000, 1, Encoding::PcmF32le, &[0.5, f32::MAX]);
        assert_eq!(loud.decode_samples().unwrap_err().code(), "sample_out_of_range");
        let long = AudioChunk::from_samples("s", 0, Utc::now(), 8000, 1, Encoding::PcmF32le, &vec![0.1; 80_001]);
        assert_eq!(long.decode_samples().unwrap_err().code(), "chunk_too_long");
        let s16_min =
            AudioChunk { samples: base64::engine::general_purpose::STANDARD.encode(i16::MIN.to_le_bytes()), ..chunk() };
        assert_eq!(s16_min.decode_samples().unwrap_err().code(), "partial_frame", "f32 chunk with 2 bytes");
    }

    #[test]
    fn a_detail_is_cut_at_a_character_boundary() {
        let r = Rejection::InvalidJson("é".repeat(2000));
        let d = r.detail();
        assert!(d.len() <= MAX_DETAIL_BYTES && d.len() >= MAX_DETAIL_BYTES - 3, "{}", d.len());
        for offset in 0..4 {
            let r = Rejection::InvalidJson(format!("{}{}", "a".repeat(offset), "😀".repeat(400)));
            assert!(r.detail().len() <= MAX_DETAIL_BYTES);
        }
    }

    #[test]
    fn every_code_is_listed_once() {
        let mut codes = Rejection::CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Rejection::CODES.len());
    }

    #[test]
    fn partial_frames_are_refused() {
        let mut c = chunk();
        c.channels = 2;
        c.samples = base64::engine::general_purpose::STANDARD.encode([0u8; 12]);
        assert_eq!(c.decode_samples().unwrap_err().code(), "partial_frame");
    }
}
