//! The hostile-message generator: for each input channel a consumer reads (the audio work queue
//! and both feature fanouts), inputs derived from one valid message by mutation operators, driven
//! by the contract's JSON Schemas (which fields exist, their types and formats) and by
//! `fixtures/fuzz/operators.toml` (which values to try; data a user extends without code).
//!
//! Deterministic: the corpus of a channel is the full list of single mutations in a fixed
//! order, plus seeded random combinations of two or three; a seed picks a sample of it. An input
//! is its list of mutations, so a failing one shrinks by dropping mutations and reproduces from
//! (seed, index). No fuzzing crate fits a broker round trip per case: proptest's runner and
//! shrinker want a synchronous property per value, and cargo-fuzz/libFuzzer want an in-process
//! target; the operators here are plain data with `rand`'s seeded `StdRng` choosing among them.
//!
//! [`oracle`] publishes inputs and checks what the pipeline did with them.

pub mod oracle;

use anyhow::{Context as _, bail};
use contract::{AudioChunk, Encoding, FeatureB, MessageKind};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// An input channel of the pipeline: where hostile messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Channel {
    /// The `audio_stream` work queue (Algorithm A reads it).
    AudioStream,
    /// The `features_a` fanout (Algorithm B, the DataWriter and the REST API read it).
    FeaturesA,
    /// The `features_b` fanout (the DataWriter and the REST API read it).
    FeaturesB,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::AudioStream, Channel::FeaturesA, Channel::FeaturesB];

    pub fn kind(self) -> MessageKind {
        match self {
            Channel::AudioStream => MessageKind::AudioChunk,
            Channel::FeaturesA => MessageKind::FeatureA,
            Channel::FeaturesB => MessageKind::FeatureB,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Channel::AudioStream => "audio_stream",
            Channel::FeaturesA => "features_a",
            Channel::FeaturesB => "features_b",
        }
    }
    fn schema(self) -> Value {
        let text = match self {
            Channel::AudioStream => contract::AUDIO_CHUNK_SCHEMA,
            Channel::FeaturesA => contract::FEATURE_A_SCHEMA,
            Channel::FeaturesB => contract::FEATURE_B_SCHEMA,
        };
        serde_json::from_str(text).expect("embedded schema is JSON")
    }
}

impl std::str::FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace(['_', '-'], " ").as_str() {
            "audio stream" => Ok(Channel::AudioStream),
            "features a" | "feature a fanout" => Ok(Channel::FeaturesA),
            "features b" | "feature b fanout" => Ok(Channel::FeaturesB),
            other => Err(format!("unknown channel {other:?}; expected audio stream, features_a or features_b")),
        }
    }
}

/// `fixtures/fuzz/operators.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operators {
    pub strings: Strings,
    pub sensor_id: Values,
    pub numbers: Values,
    pub timestamps: Values,
    pub uuids: Values,
    pub samples: Samples,
    pub properties: Properties,
    pub messages: Messages,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strings {
    /// Tried as they are, in every string field.
    pub values: Vec<String>,
    /// Raw JSON string literals (e.g. lone surrogates), spliced as written.
    pub raw: Vec<String>,
    /// ASCII lengths to try (characters).
    pub lengths: Vec<usize>,
    /// Multi-byte characters to place across each byte limit.
    pub multibyte: Vec<String>,
    /// The byte limits to straddle.
    pub byte_limits: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Values {
    /// The values (raw JSON text for numbers; strings otherwise).
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Samples {
    /// f32 sample values to put into a chunk.
    pub values: Vec<String>,
    /// Whole-chunk frame counts (`max-prime`: the largest prime ≤ 10 s at 48 kHz).
    pub frames: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Properties {
    pub content_types: Vec<String>,
    pub content_encodings: Vec<String>,
    pub schema_headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Messages {
    /// Whole-message operator names (see [`MessageOp`]).
    pub operators: Vec<String>,
}

impl Operators {
    /// `QA_FUZZ_OPERATORS`, else `<root>/fixtures/fuzz/operators.toml`.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let path = std::env::var_os("QA_FUZZ_OPERATORS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("fixtures/fuzz/operators.toml"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let ops: Operators = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for name in &ops.messages.operators {
            MessageOp::parse(name).with_context(|| format!("in {}", path.display()))?;
        }
        Ok(ops)
    }
}

/// One change to the valid base message.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Mutation {
    /// Remove the field at this JSON pointer.
    Remove { path: String },
    /// Set the field to this raw JSON text (spliced as written).
    Set { path: String, raw: String },
    /// Put these f32 values at the start of the chunk's PCM (audio only).
    Samples { values: Vec<String> },
    /// Replace the chunk's PCM by this many frames of a sine (audio only).
    Frames { count: String },
    /// AMQP `content_type` (empty: absent).
    ContentType(String),
    /// AMQP `content_encoding`.
    ContentEncoding(String),
    /// `x-schema` header (empty: absent).
    SchemaHeader(String),
    /// A whole-message operator.
    Message(MessageOp),
}

impl Mutation {
    /// One line for reports.
    pub fn describe(&self) -> String {
        let short = |s: &str| {
            let cut: String = s.chars().take(60).collect();
            if cut.len() < s.len() { format!("{cut}… ({} bytes)", s.len()) } else { cut }
        };
        match self {
            Mutation::Remove { path } => format!("remove {path}"),
            Mutation::Set { path, raw } => format!("set {path} = {}", short(raw)),
            Mutation::Samples { values } => format!("samples start with {values:?}"),
            Mutation::Frames { count } => format!("{count} frames"),
            Mutation::ContentType(v) => format!("content_type {v:?}"),
            Mutation::ContentEncoding(v) => format!("content_encoding {v:?}"),
            Mutation::SchemaHeader(v) => format!("x-schema {v:?}"),
            Mutation::Message(op) => format!("message: {op:?}"),
        }
    }
}

/// Whole-message operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MessageOp {
    NotJson,
    Empty,
    Truncated,
    DeeplyNested,
    DuplicateKeys,
    JustOverSizeLimit,
    ArrayInsteadOfObject,
    Utf16Body,
    InvalidUtf8,
    MessageIdPropertyMissing,
    MessageIdPropertyDiffers,
    SameIdDifferentBody,
    RedeliveredDuplicate,
}

impl MessageOp {
    fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "not-json" => MessageOp::NotJson,
            "empty" => MessageOp::Empty,
            "truncated" => MessageOp::Truncated,
            "deeply-nested" => MessageOp::DeeplyNested,
            "duplicate-keys" => MessageOp::DuplicateKeys,
            "just-over-size-limit" => MessageOp::JustOverSizeLimit,
            "array-instead-of-object" => MessageOp::ArrayInsteadOfObject,
            "utf16-body" => MessageOp::Utf16Body,
            "invalid-utf8" => MessageOp::InvalidUtf8,
            "message-id-property-missing" => MessageOp::MessageIdPropertyMissing,
            "message-id-property-differs" => MessageOp::MessageIdPropertyDiffers,
            "same-id-different-body" => MessageOp::SameIdDifferentBody,
            "redelivered-duplicate" => MessageOp::RedeliveredDuplicate,
            other => bail!("unknown message operator {other:?}"),
        })
    }
}

/// One hostile input: a channel, its place in the corpus, and its mutations of the base message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostileInput {
    pub channel: Channel,
    /// Position in the channel's corpus (with the seed, it reproduces the input).
    pub index: usize,
    pub mutations: Vec<Mutation>,
}

impl HostileInput {
    pub fn describe(&self) -> String {
        self.mutations.iter().map(Mutation::describe).collect::<Vec<_>>().join("; ")
    }
}

/// The largest contract limit on a message body (`oversized_payload` beyond it).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The full, ordered list of single mutations for `channel`: every field × every operator that
/// fits its schema, then the property and whole-message operators.
pub fn single_mutations(channel: Channel, ops: &Operators) -> Vec<Mutation> {
    let mut out = Vec::new();
    let mut fields = Vec::new();
    schema_fields(&channel.schema(), "", &mut fields);
    for (path, schema) in &fields {
        out.push(Mutation::Remove { path: path.clone() });
        out.push(Mutation::Set { path: path.clone(), raw: "null".into() });
        let set = |raw: String| Mutation::Set { path: path.clone(), raw };
        let ty = schema.get("type").and_then(Value::as_str);
        let format = schema.get("format").and_then(Value::as_str);
        let is_string = ty == Some("string")
            || schema.get("enum").is_some_and(|e| e.as_array().is_some_and(|a| a.iter().all(Value::is_string)));
        // A value of another type.
        out.push(set(if is_string { "12345".into() } else { "\"12345\"".into() }));
        out.push(set("[]".into()));
        out.push(set("{}".into()));
        if path.ends_with("/sensor_id") {
            out.extend(ops.sensor_id.values.iter().map(|v| set(json_str(v))));
        }
        if format == Some("uuid") {
            out.extend(ops.uuids.values.iter().map(|v| set(json_str(v))));
        } else if format == Some("date-time") {
            out.extend(ops.timestamps.values.iter().map(|v| set(json_str(v))));
        } else if is_string {
            out.extend(ops.strings.values.iter().map(|v| set(json_str(v))));
            out.extend(ops.strings.raw.iter().map(|v| set(v.clone())));
            for &len in &ops.strings.lengths {
                out.push(set(json_str(&format!("{{prefix}}.{}", "x".repeat(len)))));
            }
            for ch in &ops.strings.multibyte {
                for &limit in &ops.strings.byte_limits {
                    for lead in 0..4 {
                        // `lead` ASCII bytes, then the character repeated past `limit` bytes: one
                        // occurrence straddles the limit for some `lead`.
                        let reps = limit / ch.len().max(1) + 2;
                        out.push(set(json_str(&format!("{}{}", "a".repeat(lead), ch.repeat(reps)))));
                    }
                }
            }
        } else if matches!(ty, Some("number" | "integer")) {
            out.extend(ops.numbers.values.iter().map(|v| set(v.clone())));
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            out.push(set("\"not-a-member\"".into()));
            out.extend(values.iter().map(|v| set(v.to_string())));
        }
    }
    if channel == Channel::AudioStream {
        for v in &ops.samples.values {
            out.push(Mutation::Samples { values: vec![v.clone()] });
        }
        out.push(Mutation::Samples { values: ops.samples.values.clone() });
        out.extend(ops.samples.frames.iter().map(|f| Mutation::Frames { count: f.clone() }));
    }
    out.extend(ops.properties.content_types.iter().map(|v| Mutation::ContentType(v.clone())));
    out.extend(ops.properties.content_encodings.iter().map(|v| Mutation::ContentEncoding(v.clone())));
    out.extend(ops.properties.schema_headers.iter().map(|v| Mutation::SchemaHeader(v.clone())));
    out.extend(ops.messages.operators.iter().filter_map(|n| MessageOp::parse(n).ok()).map(Mutation::Message));
    out
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// (JSON pointer, schema) of every property, nested objects included.
fn schema_fields(schema: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
    for (name, sub) in props {
        let path = format!("{prefix}/{name}");
        out.push((path.clone(), sub.clone()));
        schema_fields(sub, &path, out);
    }
}

/// A channel's corpus for `seed`: `count` inputs, first a seeded sample of the single mutations
/// (all of them once `count` reaches their number), then seeded combinations of two or three.
pub fn corpus(channel: Channel, ops: &Operators, seed: u64, count: usize) -> Vec<HostileInput> {
    let singles = single_mutations(channel, ops);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (channel as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut order: Vec<usize> = (0..singles.len()).collect();
    order.shuffle(&mut rng);
    let mut out: Vec<HostileInput> = order
        .into_iter()
        .take(count)
        .map(|i| vec![singles[i].clone()])
        .enumerate()
        .map(|(index, mutations)| HostileInput { channel, index, mutations })
        .collect();
    while out.len() < count {
        let n = rng.random_range(2..=3);
        let mutations = (0..n).map(|_| singles[rng.random_range(0..singles.len())].clone()).collect();
        out.push(HostileInput { channel, index: out.len(), mutations });
    }
    out
}

/// A rendered publication: body and the properties to publish it with.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub body: Vec<u8>,
    /// `content_type` (None: absent).
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// AMQP `message_id` (None: absent).
    pub message_id: Option<String>,
    /// `x-schema` (None: absent).
    pub schema_header: Option<String>,
    /// `x-sensor-id`.
    pub sensor_id: String,
}

/// The valid message every input of a channel starts from, for the scenario's sensor prefix.
/// Each input gets fresh ids, so no two inputs share a `message_id`.
pub fn base_message(channel: Channel, sensor_id: &str, sequence: u64) -> anyhow::Result<Value> {
    let now = chrono::Utc::now();
    let chunk = AudioChunk::from_samples(sensor_id, sequence, now, 16_000, 1, Encoding::PcmF32le, &base_samples());
    Ok(match channel {
        Channel::AudioStream => serde_json::to_value(&chunk)?,
        Channel::FeaturesA => serde_json::to_value(crate::signal::feature_a_for(&chunk, "qa-fuzz", now)?)?,
        Channel::FeaturesB => {
            let a = crate::signal::feature_a_for(&chunk, "qa-fuzz", now)?;
            serde_json::to_value(FeatureB {
                schema_version: 1,
                feature_type: "B".into(),
                message_id: uuid::Uuid::new_v4(),
                feature_a_message_id: a.message_id,
                source_message_id: a.source_message_id,
                sensor_id: a.sensor_id.clone(),
                sequence,
                captured_at: now,
                processed_at: now,
                processed_by: "qa-fuzz".into(),
                features: contract::EventFeatures {
                    event_class: contract::EventClass::Tone,
                    confidence: 0.9,
                    loudness_dbfs: a.features.rms_dbfs,
                    dominant_frequency_hz: a.features.dominant_frequency_hz,
                },
            })?
        }
    })
}

/// Renders `input` on `base` into the publications it makes (one, or two for the
/// duplicate-publication operators). `prefix` replaces `{prefix}` in values.
pub fn render(input: &HostileInput, base: &Value, prefix: &str) -> anyhow::Result<Vec<Rendered>> {
    let mut body = base.clone();
    let mut raws: Vec<(String, String)> = Vec::new();
    let sensor_id = base["sensor_id"].as_str().unwrap_or_default().to_string();
    let base_id = base["message_id"].as_str().unwrap_or_default().to_string();
    let mut r = Rendered {
        body: Vec::new(),
        content_type: Some(contract::amqp::CONTENT_TYPE.into()),
        content_encoding: None,
        message_id: Some(base_id.clone()),
        schema_header: Some(input.channel.kind().schema_header().into()),
        sensor_id: sensor_id.clone(),
    };
    let mut message_ops = Vec::new();
    for m in &input.mutations {
        match m {
            Mutation::Remove { path } => remove(&mut body, path),
            Mutation::Set { path, raw } => {
                let raw = raw
                    .replace("{prefix}", prefix)
                    .replace("{uuid}", &uuid::Uuid::new_v4().to_string())
                    .replace("{UUID}", &base_id.to_uppercase());
                let raw = resolve_now(&raw);
                let token = format!("\u{1}raw{}\u{1}", raws.len());
                set(&mut body, path, Value::String(token.clone()));
                raws.push((serde_json::to_string(&token)?, raw));
            }
            Mutation::Samples { values } => {
                let mut pcm: Vec<f32> = base_samples();
                for (i, v) in values.iter().enumerate() {
                    if i < pcm.len() {
                        pcm[i] = parse_f32(v)?;
                    }
                }
                body["samples"] = Value::String(pcm_base64(&pcm));
            }
            Mutation::Frames { count } => {
                let frames = if count == "max-prime" { largest_prime_at_most(480_000) } else { count.parse()? };
                let rate = if count == "max-prime" { 48_000 } else { 16_000 };
                let pcm =
                    crate::signal::Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(rate, 1, 0, frames);
                body["samples"] = Value::String(pcm_base64(&pcm));
                body["sample_rate"] = rate.into();
            }
            Mutation::ContentType(v) => r.content_type = (!v.is_empty()).then(|| v.clone()),
            Mutation::ContentEncoding(v) => r.content_encoding = Some(v.clone()),
            Mutation::SchemaHeader(v) => r.schema_header = (!v.is_empty()).then(|| v.clone()),
            Mutation::Message(op) => message_ops.push(*op),
        }
    }
    let mut text = serde_json::to_string(&body)?;
    for (token, raw) in &raws {
        text = text.replacen(token.as_str(), raw, 1);
    }
    r.body = text.into_bytes();
    let mut out = vec![r];
    for op in message_ops {
        apply_message_op(op, &mut out)?;
    }
    Ok(out)
}

/// The 100 ms, 16 kHz, 440 Hz sine every audio input (and every canary) starts from.
pub fn base_samples() -> Vec<f32> {
    crate::signal::Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600)
}

fn apply_message_op(op: MessageOp, out: &mut Vec<Rendered>) -> anyhow::Result<()> {
    let first = out[0].clone();
    let body = &mut out[0].body;
    match op {
        MessageOp::NotJson => *body = b"this is not JSON {".to_vec(),
        MessageOp::Empty => body.clear(),
        MessageOp::Truncated => body.truncate(body.len() / 2),
        MessageOp::DeeplyNested => {
            let depth = 100_000;
            let mut nested = String::with_capacity(depth * 2 + 16);
            nested.push_str("{\"deep\":");
            nested.extend(std::iter::repeat_n('[', depth));
            nested.extend(std::iter::repeat_n(']', depth));
            nested.push('}');
            *body = nested.into_bytes();
        }
        MessageOp::DuplicateKeys => {
            let text = String::from_utf8_lossy(body).into_owned();
            *body = text.replacen('{', "{\"sensor_id\":\"duplicate-key\",\"message_id\":\"dup\",", 1).into_bytes();
        }
        MessageOp::JustOverSizeLimit => {
            let text = String::from_utf8_lossy(body).into_owned();
            // `"pad":"…",` adds the padding plus 9 bytes: the body ends one byte over the limit.
            let pad = (MAX_MESSAGE_BYTES + 1).saturating_sub(text.len() + 9);
            let padded = text.replacen('{', &format!("{{\"pad\":\"{}\",", "p".repeat(pad)), 1);
            *body = padded.into_bytes();
        }
        MessageOp::ArrayInsteadOfObject => {
            let mut arr = b"[".to_vec();
            arr.extend_from_slice(body);
            arr.push(b']');
            *body = arr;
        }
        MessageOp::Utf16Body => {
            *body = String::from_utf8_lossy(body).encode_utf16().flat_map(u16::to_le_bytes).collect();
        }
        MessageOp::InvalidUtf8 => {
            // An overlong encoding of '/', which no valid UTF-8 decoder accepts.
            let text = String::from_utf8_lossy(body).into_owned();
            let mut bytes = Vec::with_capacity(body.len() + 2);
            let cut = text.find("sensor_id").map(|i| i + 12).unwrap_or(1).min(text.len());
            bytes.extend_from_slice(&text.as_bytes()[..cut]);
            bytes.extend_from_slice(&[0xC0, 0xAF]);
            bytes.extend_from_slice(&text.as_bytes()[cut..]);
            *body = bytes;
        }
        MessageOp::MessageIdPropertyMissing => out[0].message_id = None,
        MessageOp::MessageIdPropertyDiffers => out[0].message_id = Some(uuid::Uuid::new_v4().to_string()),
        MessageOp::SameIdDifferentBody => {
            let mut other = first;
            let mut v: Value = serde_json::from_slice(&other.body).unwrap_or(Value::Null);
            if v.is_object() {
                v["sequence"] = 999_999.into();
                other.body = serde_json::to_vec(&v)?;
            }
            out.push(other);
        }
        MessageOp::RedeliveredDuplicate => out.push(out[0].clone()),
    }
    Ok(())
}

fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    if let Some(obj) = v.pointer_mut(parent).and_then(Value::as_object_mut) {
        obj.remove(key);
    }
}

fn set(v: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    if let Some(obj) = v.pointer_mut(parent).and_then(Value::as_object_mut) {
        obj.insert(key.to_string(), value);
    }
}

/// `"now±<seconds>"` (a JSON string) → an RFC 3339 time relative to now.
fn resolve_now(raw: &str) -> String {
    let inner = raw.trim_matches('"');
    let Some(rest) = inner.strip_prefix("now") else { return raw.to_string() };
    match rest.parse::<i64>() {
        Ok(secs) => json_str(&(chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339()),
        Err(_) => raw.to_string(),
    }
}

fn parse_f32(v: &str) -> anyhow::Result<f32> {
    Ok(match v {
        "NaN" => f32::NAN,
        "inf" => f32::INFINITY,
        "-inf" => f32::NEG_INFINITY,
        other => other.parse().with_context(|| format!("sample value {other:?}"))?,
    })
}

fn pcm_base64(samples: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn largest_prime_at_most(n: usize) -> usize {
    let is_prime = |k: usize| k >= 2 && (2..).take_while(|d| d * d <= k).all(|d| !k.is_multiple_of(d));
    (2..=n).rev().find(|&k| is_prime(k)).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Operators {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Operators::load(&root).expect("the shipped operators parse")
    }

    #[test]
    fn every_channel_has_hundreds_of_single_mutations_covering_every_field() {
        let ops = ops();
        for channel in Channel::ALL {
            let singles = single_mutations(channel, &ops);
            assert!(singles.len() > 200, "{channel:?}: only {}", singles.len());
            let mut fields = Vec::new();
            schema_fields(&channel.schema(), "", &mut fields);
            for (path, _) in fields {
                assert!(singles.contains(&Mutation::Remove { path: path.clone() }), "{channel:?} never removes {path}");
            }
        }
    }

    #[test]
    fn the_corpus_is_deterministic_per_seed() {
        let ops = ops();
        let singles = single_mutations(Channel::FeaturesA, &ops).len();
        let a = corpus(Channel::FeaturesA, &ops, 42, singles + 50);
        let b = corpus(Channel::FeaturesA, &ops, 42, singles + 50);
        let c = corpus(Channel::FeaturesA, &ops, 43, singles + 50);
        let key = |v: &[HostileInput]| v.iter().map(HostileInput::describe).collect::<Vec<_>>();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert!(a.iter().take(singles).all(|i| i.mutations.len() == 1), "every single mutation comes first");
        assert!(a.iter().skip(singles).all(|i| i.mutations.len() >= 2), "past the singles come combinations");
    }

    #[test]
    fn rendering_splices_raw_values_and_places_multibyte_characters_across_limits() {
        let base = base_message(Channel::AudioStream, "p.s", 0).unwrap();
        let input = HostileInput {
            channel: Channel::AudioStream,
            index: 0,
            mutations: vec![Mutation::Set { path: "/sequence".into(), raw: "1e400".into() }],
        };
        let r = render(&input, &base, "p").unwrap();
        assert!(String::from_utf8_lossy(&r[0].body).contains("\"sequence\":1e400"));
        let singles = single_mutations(Channel::AudioStream, &ops());
        let straddles = singles.iter().any(|m| match m {
            Mutation::Set { raw, .. } => {
                let s: String = serde_json::from_str(raw).unwrap_or_default();
                s.len() > 1000 && !s.is_char_boundary(1000)
            }
            _ => false,
        });
        assert!(straddles, "some string must put a multi-byte character across byte 1000");
    }

    #[test]
    fn duplicate_operators_publish_twice_and_the_size_operator_is_just_over() {
        let base = base_message(Channel::FeaturesB, "p.s", 0).unwrap();
        let dup = HostileInput {
            channel: Channel::FeaturesB,
            index: 0,
            mutations: vec![Mutation::Message(MessageOp::RedeliveredDuplicate)],
        };
        assert_eq!(render(&dup, &base, "p").unwrap().len(), 2);
        let big = HostileInput {
            channel: Channel::FeaturesB,
            index: 1,
            mutations: vec![Mutation::Message(MessageOp::JustOverSizeLimit)],
        };
        let r = render(&big, &base, "p").unwrap();
        assert!(r[0].body.len() > MAX_MESSAGE_BYTES && r[0].body.len() < MAX_MESSAGE_BYTES + 64, "{}", r[0].body.len());
    }
}
