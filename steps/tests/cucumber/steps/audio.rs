//! Publishing audio: good chunks from generated signals or WAV fixtures, and broken ones.

use crate::params::{ChunkKindParam, Malformation, SignalParam};
use crate::world::{ChunkShape, World};
use base64::Engine as _;
use contract::{AudioChunk, Encoding};
use cucumber::when;
use harness::amqp::RawMessage;
use harness::signal::Signal;

#[when(expr = "sensor {string} publishes {int} chunk(s) of {signal}")]
async fn publish_n(w: &mut World, sensor: String, n: usize, signal: SignalParam) -> anyhow::Result<()> {
    w.publish_signal(&sensor, signal.0, n, ChunkShape::default()).await.map(|_| ())
}

/// `n` chunks made in sequence (captured_at one chunk apart) but published newest first; the newest
/// is through to Feature B before the others are published, so every consumer gets it first (the
/// arrival order is the experiment, not left to the scheduling of concurrent handlers).
#[when(expr = "sensor {string} publishes {int} chunks of {signal} newest first")]
async fn publish_newest_first(w: &mut World, sensor: String, n: u64, signal: SignalParam) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let shape = ChunkShape::default();
    let frames = (shape.sample_rate * shape.chunk_ms / 1000) as usize;
    for seq in (0..n).rev() {
        let samples = signal.0.render(shape.sample_rate, shape.channels, seq * frames as u64, frames);
        let captured_at = w.t0 + chrono::Duration::milliseconds((seq * shape.chunk_ms as u64) as i64);
        let chunk =
            AudioChunk::from_samples(&sensor_id, seq, captured_at, shape.sample_rate, 1, shape.encoding, &samples);
        w.publish_chunk(chunk).await?;
        if seq + 1 == n {
            w.wait_features(harness::amqp::Source::FeatureB, &sensor, 1).await?;
        }
    }
    Ok(())
}

#[when(expr = "sensor {string} publishes a {int} ms chunk of {signal} sampled at {int} Hz")]
async fn publish_shaped(w: &mut World, sensor: String, ms: u32, signal: SignalParam, rate: u32) -> anyhow::Result<()> {
    let shape = ChunkShape { sample_rate: rate, chunk_ms: ms, ..Default::default() };
    w.publish_signal(&sensor, signal.0, 1, shape).await.map(|_| ())
}

#[when(expr = "sensor {string} publishes a stereo chunk of {signal}")]
async fn publish_stereo(w: &mut World, sensor: String, signal: SignalParam) -> anyhow::Result<()> {
    let shape = ChunkShape { channels: 2, ..Default::default() };
    w.publish_signal(&sensor, signal.0, 1, shape).await.map(|_| ())
}

#[when(expr = "sensor {string} publishes a 16-bit PCM chunk of {signal}")]
async fn publish_s16(w: &mut World, sensor: String, signal: SignalParam) -> anyhow::Result<()> {
    let shape = ChunkShape { encoding: Encoding::PcmS16le, ..Default::default() };
    w.publish_signal(&sensor, signal.0, 1, shape).await.map(|_| ())
}

#[when(expr = "sensor {string} streams the WAV fixture {string}")]
async fn publish_wav(w: &mut World, sensor: String, fixture: String) -> anyhow::Result<()> {
    let path = crate::workspace_root().join("fixtures/audio").join(&fixture);
    let (samples, rate, channels) =
        harness::signal::read_wav(&path).map_err(|e| anyhow::anyhow!("reading WAV fixture {}: {e}", path.display()))?;
    let frames_per_chunk = (rate / 10) as usize * channels as usize;
    let sensor_id = w.sensor(&sensor);
    for part in samples.chunks(frames_per_chunk) {
        let seq = *w.sequences.get(&sensor_id).unwrap_or(&0);
        let at = w.t0 + chrono::Duration::milliseconds(seq as i64 * 100);
        let chunk = AudioChunk::from_samples(&sensor_id, seq, at, rate, channels, Encoding::PcmF32le, part);
        w.publish_chunk(chunk).await?;
    }
    Ok(())
}

/// Property-style input (issue #12): `n` chunks of one non-stationary kind, each with its own
/// random rate, length, channels, encoding and content, reproducible from `seed`.
#[when(expr = "sensor {string} publishes {int} random chunks of {chunk_kind} with seed {int}")]
async fn publish_random(
    w: &mut World,
    sensor: String,
    n: usize,
    kind: ChunkKindParam,
    seed: u64,
) -> anyhow::Result<()> {
    use rand::SeedableRng;
    let sensor_id = w.sensor(&sensor);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for index in 0..n {
        let g = harness::signal::random_chunk(kind.0, &mut rng);
        let seq = *w.sequences.get(&sensor_id).unwrap_or(&0);
        let at = w.t0 + chrono::Duration::milliseconds(seq as i64 * 100);
        let chunk = AudioChunk::from_samples(&sensor_id, seq, at, g.sample_rate, g.channels, g.encoding, &g.samples);
        let id = chunk.message_id;
        w.publish_chunk(chunk).await?;
        w.generated.insert(id, crate::world::Generated { kind: kind.0, seed, index, chunk: g });
    }
    Ok(())
}

#[when(expr = "sensor {string} publishes the same chunk of {signal} twice")]
async fn publish_twice(w: &mut World, sensor: String, signal: SignalParam) -> anyhow::Result<()> {
    let chunk = w.publish_signal(&sensor, signal.0, 1, ChunkShape::default()).await?.remove(0);
    w.pipeline().publisher.chunk(&chunk).await
}

/// A valid 100 ms, 440 Hz chunk at the sensor's next sequence: the base that steps break or extend.
fn reference_chunk(w: &World, sensor_id: &str) -> AudioChunk {
    let seq = *w.sequences.get(sensor_id).unwrap_or(&0);
    let samples = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600);
    AudioChunk::from_samples(sensor_id, seq, w.t0, 16_000, 1, Encoding::PcmF32le, &samples)
}

/// Publishes a chunk broken in one way; the AMQP message_id property still identifies it.
#[when(expr = "sensor {string} publishes a chunk with {malformation}")]
async fn publish_malformed(w: &mut World, sensor: String, how: Malformation) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let good = reference_chunk(w, &sensor_id);
    let mut v = serde_json::to_value(&good)?;
    let f32_b64 = |xs: &[f32]| {
        base64::engine::general_purpose::STANDARD.encode(xs.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    };
    let body: Vec<u8> = match how {
        Malformation::NotJson => b"{this is not json".to_vec(),
        Malformation::SchemaVersion2 => {
            v["schema_version"] = 2.into();
            serde_json::to_vec(&v)?
        }
        Malformation::NoSensorId => {
            v.as_object_mut().expect("object").remove("sensor_id");
            serde_json::to_vec(&v)?
        }
        Malformation::NanSample => {
            v["samples"] = f32_b64(&[0.1, f32::NAN, 0.2, 0.3]).into();
            serde_json::to_vec(&v)?
        }
        Malformation::InfiniteSample => {
            v["samples"] = f32_b64(&[0.1, f32::INFINITY, 0.2, 0.3]).into();
            serde_json::to_vec(&v)?
        }
        Malformation::WrongSampleRate => {
            v["sample_rate"] = 12345.into();
            serde_json::to_vec(&v)?
        }
        Malformation::Oversized => {
            // Larger than the consumers' default 4 MiB limit.
            v["samples"] = "A".repeat(5 * 1024 * 1024).into();
            serde_json::to_vec(&v)?
        }
        Malformation::InvalidBase64 => {
            v["samples"] = "!!!!not-base64!!!!".into();
            serde_json::to_vec(&v)?
        }
        Malformation::PartialFrame => {
            v["samples"] = base64::engine::general_purpose::STANDARD.encode([0u8; 7]).into();
            serde_json::to_vec(&v)?
        }
        Malformation::InvalidMessageId => {
            v["message_id"] = "not-a-uuid".into();
            serde_json::to_vec(&v)?
        }
        Malformation::ThreeChannels => {
            v["channels"] = 3.into();
            serde_json::to_vec(&v)?
        }
        Malformation::SampleBeyondFullScale => {
            v["samples"] = f32_b64(&[0.1, f32::MAX, 0.2, 0.3]).into();
            serde_json::to_vec(&v)?
        }
        Malformation::FutureCaptureTime => {
            v["captured_at"] = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339().into();
            serde_json::to_vec(&v)?
        }
        Malformation::EpochCaptureTime => {
            v["captured_at"] = "1970-01-01T00:00:00Z".into();
            serde_json::to_vec(&v)?
        }
        Malformation::MultibyteSensorId => {
            // 1 200 bytes: the rejection detail quotes it, so a character straddles byte 1 000.
            v["sensor_id"] = format!("a{}", "é".repeat(600)).into();
            serde_json::to_vec(&v)?
        }
        Malformation::TooLong => {
            v["samples"] = f32_b64(&vec![0.25; 16_000 * 11]).into();
            serde_json::to_vec(&v)?
        }
        Malformation::MessageIdPropertyDiffers
        | Malformation::WrongSchemaHeader
        | Malformation::TextPlain
        | Malformation::Gzip => serde_json::to_vec(&v)?,
    };
    // A well-behaved producer's AMQP message_id is the body's; only the property defects differ.
    let message_id = match how {
        Malformation::MessageIdPropertyDiffers => uuid::Uuid::new_v4().to_string(),
        _ => good.message_id.to_string(),
    };
    let mut msg = RawMessage {
        body,
        message_id: Some(message_id.clone()),
        sensor_id: Some(sensor_id.clone()),
        ..Default::default()
    };
    match how {
        Malformation::WrongSchemaHeader => {
            msg.headers.push((contract::HEADER_SCHEMA.into(), contract::MessageKind::FeatureA.schema_header().into()))
        }
        Malformation::TextPlain => msg.content_type = Some("text/plain".into()),
        Malformation::Gzip => msg.content_encoding = Some("gzip".into()),
        _ => {}
    }
    w.pipeline().publisher.raw(&msg).await?;
    w.raw_ids.entry(sensor_id).or_default().push(message_id);
    Ok(())
}

#[when(expr = "sensor {string} publishes a chunk with an extra optional field {string}")]
async fn publish_extra_field(w: &mut World, sensor: String, field: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let chunk = reference_chunk(w, &sensor_id);
    let seq = chunk.sequence;
    let mut v = serde_json::to_value(&chunk)?;
    v[field.as_str()] = serde_json::json!("added by a newer producer");
    let msg = RawMessage {
        body: serde_json::to_vec(&v)?,
        message_id: Some(chunk.message_id.to_string()),
        sensor_id: Some(sensor_id.clone()),
        ..Default::default()
    };
    w.pipeline().publisher.raw(&msg).await?;
    w.sequences.insert(sensor_id, seq + 1);
    w.published.push(chunk);
    Ok(())
}

/// Publishes a Feature message straight to a fanout, as a (possibly broken) producer would.
#[when(expr = "a Feature A message for sensor {string} without its required field {string} is published to features_a")]
async fn publish_feature_missing_field(w: &mut World, sensor: String, field: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let chunk = AudioChunk::from_samples(&sensor_id, 0, w.t0, 16_000, 1, Encoding::PcmF32le, &[0.1, 0.2, 0.3, 0.4]);
    let a = harness::signal::feature_a_for(&chunk, "qa-producer", chrono::Utc::now())?;
    let mut v = serde_json::to_value(&a)?;
    let removed = v.as_object_mut().expect("object").remove(&field);
    anyhow::ensure!(removed.is_some(), "Feature A has no field {field:?} to remove");
    publish_to_features_a(w, sensor_id, a.message_id.to_string(), &v).await
}

/// A Feature A with chosen values (`path = json; …`, e.g. `features.rms_dbfs = -60.001`) published
/// straight to features_a, as Algorithm A would: Algorithm B's table and its input checks at their
/// boundaries, independent of what DSP can produce.
#[when(expr = "a Feature A for sensor {string} with {string} is published to features_a")]
async fn publish_feature_a_with(w: &mut World, sensor: String, spec: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let samples = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600);
    let chunk = AudioChunk::from_samples(&sensor_id, 0, w.t0, 16_000, 1, Encoding::PcmF32le, &samples);
    let a = harness::signal::feature_a_for(&chunk, "qa-producer", chrono::Utc::now())?;
    let v = harness::signal::with_overrides(serde_json::to_value(&a)?, &spec)?;
    publish_to_features_a(w, sensor_id, a.message_id.to_string(), &v).await
}

/// A Feature B (of a Feature A that is never published), with chosen values as above, published
/// straight to features_b: the DataWriter's and the API's own input.
#[when(expr = "a Feature B for sensor {string} with {string} is published to features_b")]
async fn publish_feature_b_with(w: &mut World, sensor: String, spec: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let samples = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600);
    let chunk = AudioChunk::from_samples(&sensor_id, 0, w.t0, 16_000, 1, Encoding::PcmF32le, &samples);
    let a = harness::signal::feature_a_for(&chunk, "qa-producer", chrono::Utc::now())?;
    let b = harness::signal::feature_b_for(&a, "qa-producer", chrono::Utc::now())?;
    let v = harness::signal::with_overrides(serde_json::to_value(&b)?, &spec)?;
    let exchange = w.pipeline().names.features_b();
    publish_raw_feature(w, &exchange, sensor_id, b.message_id.to_string(), &v).await
}

/// Publishes a Feature A body (message id `id`) to features_a and records it as a raw message.
async fn publish_to_features_a(
    w: &mut World,
    sensor_id: String,
    id: String,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let exchange = w.pipeline().names.features_a();
    publish_raw_feature(w, &exchange, sensor_id, id, body).await
}

/// Publishes a Feature body to `exchange` and records its id as a raw message of `sensor_id`.
async fn publish_raw_feature(
    w: &mut World,
    exchange: &str,
    sensor_id: String,
    id: String,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let msg = RawMessage {
        body: serde_json::to_vec(body)?,
        message_id: Some(id.clone()),
        sensor_id: Some(sensor_id.clone()),
        ..Default::default()
    };
    w.pipeline().publisher.raw_to(exchange, "", &msg).await?;
    w.raw_ids.entry(sensor_id).or_default().push(id);
    Ok(())
}

/// Delivers one Feature A message twice, as a broker redelivery would: the DataWriter must keep
/// one row (message_id is UNIQUE).
#[when(expr = "the same Feature A message for sensor {string} is published to features_a twice")]
async fn publish_feature_twice(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let samples = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600);
    let chunk = AudioChunk::from_samples(&sensor_id, 0, w.t0, 16_000, 1, Encoding::PcmF32le, &samples);
    let a = harness::signal::feature_a_for(&chunk, "qa-producer", chrono::Utc::now())?;
    let msg = RawMessage {
        body: serde_json::to_vec(&a)?,
        message_id: Some(a.message_id.to_string()),
        sensor_id: Some(sensor_id),
        ..Default::default()
    };
    let exchange = w.pipeline().names.features_a();
    for _ in 0..2 {
        w.pipeline().publisher.raw_to(&exchange, "", &msg).await?;
    }
    Ok(())
}
