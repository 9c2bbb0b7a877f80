//! The sensor as a tested component (issue #12): the SUT's `sensor` runs through the adapter
//! against a private pipeline whose work queue only the harness consumes, so every chunk it
//! published can be read back with its AMQP properties; its broker link can go through a fault
//! proxy. Also holds the scenario's fault proxies for the readiness steps (steps/api.rs).

use crate::world::World;
use anyhow::{Context, bail, ensure};
use contract::AudioChunk;
use cucumber::{given, then, when};
use harness::faults::{LinkFault, Proxy};
use harness::sensor::{SensorOutcome, SensorProcess, Taken, WorkQueueTap};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a bounded sensor run may take before it is killed and the step fails.
const SENSOR_RUN_LIMIT: Duration = Duration::from_secs(60);

/// This scenario's sensor runs, work-queue tap and fault proxies.
#[derive(Default)]
pub struct SensorState {
    /// Takes the private pipeline's `audio_stream` (nothing else consumes it).
    pub tap: Option<WorkQueueTap>,
    /// The full sensor id of the last run, and what it printed.
    pub sensor_id: String,
    pub outcome: Option<SensorOutcome>,
    /// The WAV file the last run streamed: (path, interleaved samples, rate, channels).
    pub wav: Option<(PathBuf, Vec<f32>, u32, u16)>,
    /// The chunk length the last run was configured with.
    pub chunk_ms: u32,
    /// Confirms held back: (chunks taken when the hold began, chunks taken just before it ended).
    pub held: Option<(usize, usize)>,
    /// Fault proxies of this scenario's own links, by name (`sensor-broker`, `api-db`, `api-broker`).
    pub proxies: BTreeMap<String, Proxy>,
}

impl std::fmt::Debug for SensorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorState")
            .field("taken", &self.tap.as_ref().map(WorkQueueTap::len))
            .field("sensor_id", &self.sensor_id)
            .field("outcome", &self.outcome)
            .field("proxies", &self.proxies.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[given("the harness takes the chunks off the private pipeline's work queue")]
async fn take_work_queue(w: &mut World) -> anyhow::Result<()> {
    ensure!(w.private.is_some(), "this step needs `Given a private pipeline` (no Algorithm A may consume the queue)");
    let queue = w.pipeline().names.audio_stream();
    w.sensor.tap = Some(WorkQueueTap::start(&w.env.config.amqp_url, &queue, &w.ns.prefix).await?);
    Ok(())
}

/// The sensor's settings for a bounded run as fast as confirms allow (rate 0) unless `rate` is set.
fn sensor_env(w: &World, sensor_id: &str, count: usize, chunk_ms: u32, rate: u32) -> Vec<(String, String)> {
    let mut env = w.pipeline().service_env.clone();
    env.retain(|(k, _)| !k.starts_with("APQ_SENSOR_"));
    env.extend([
        ("APQ_INSTANCE_ID".into(), format!("{}-sensor-{}", w.pipeline().names.namespace, rand::random::<u16>())),
        ("APQ_SENSOR_ID".into(), sensor_id.to_string()),
        ("APQ_SENSOR_COUNT".into(), count.to_string()),
        ("APQ_SENSOR_CHUNK_MS".into(), chunk_ms.to_string()),
        ("APQ_SENSOR_RATE_PER_SEC".into(), rate.to_string()),
    ]);
    env
}

/// Starts the sensor (waiting for its ready line) with `env` on top of the pipeline's settings.
async fn spawn_sensor(w: &World, env: &[(String, String)]) -> anyhow::Result<SensorProcess> {
    ensure!(w.sensor.tap.is_some(), "take the work queue first (`Given the harness takes the chunks off …`)");
    let command = harness::env::sut_command(&w.env.config)?;
    let instance = env.iter().find(|(k, _)| k == "APQ_INSTANCE_ID").map(|(_, v)| v.clone()).unwrap_or_default();
    let log = w.env.report_dir().join("sut-logs").join(&w.pipeline().names.namespace).join(format!("{instance}.log"));
    let mut p = SensorProcess::spawn(&command, env, &log)?;
    p.wait_ready(Duration::from_secs(30)).await?;
    Ok(p)
}

fn set_var(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value));
}

#[when(
    expr = "the sensor publishes {int} chunk(s) of {int} ms of a {float} Hz sine at amplitude {float} as sensor {string}"
)]
async fn sensor_sine(w: &mut World, n: usize, ms: u32, f: f64, a: f64, sensor: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let mut env = sensor_env(w, &sensor_id, n, ms, 0);
    set_var(&mut env, "APQ_SENSOR_SIGNAL", "sine".into());
    set_var(&mut env, "APQ_SENSOR_FREQUENCY_HZ", f.to_string());
    set_var(&mut env, "APQ_SENSOR_AMPLITUDE", a.to_string());
    set_var(&mut env, "APQ_SENSOR_SAMPLE_RATE", "16000".into());
    let p = spawn_sensor(w, &env).await?;
    w.sensor.sensor_id = sensor_id;
    w.sensor.chunk_ms = ms;
    w.sensor.outcome = Some(p.finish(SENSOR_RUN_LIMIT).await?);
    Ok(())
}

/// Streams a WAV file with the sensor's `wav` source: the fixture, or one the harness writes.
async fn stream_wav(w: &mut World, path: PathBuf, n: usize, ms: u32, sensor: String) -> anyhow::Result<()> {
    let (samples, rate, channels) = harness::signal::read_wav(&path)?;
    let sensor_id = w.sensor(&sensor);
    let mut env = sensor_env(w, &sensor_id, n, ms, 0);
    set_var(&mut env, "APQ_SENSOR_SIGNAL", "wav".into());
    set_var(&mut env, "APQ_SENSOR_WAV_PATH", path.display().to_string());
    let p = spawn_sensor(w, &env).await?;
    w.sensor.sensor_id = sensor_id;
    w.sensor.chunk_ms = ms;
    w.sensor.wav = Some((path, samples, rate, channels));
    w.sensor.outcome = Some(p.finish(SENSOR_RUN_LIMIT).await?);
    Ok(())
}

#[when(expr = "the sensor streams the WAV fixture {string} as {int} chunks of {int} ms as sensor {string}")]
async fn sensor_wav_fixture(w: &mut World, fixture: String, n: usize, ms: u32, sensor: String) -> anyhow::Result<()> {
    let path = crate::workspace_root().join("fixtures/audio").join(&fixture);
    ensure!(path.is_file(), "no WAV fixture {}", path.display());
    stream_wav(w, path, n, ms, sensor).await
}

/// A stereo 16-bit WAV the harness writes: 440 Hz at 0.5 on the left, 1000 Hz at 0.3 on the
/// right, `len_ms` long, so chunks wrap around its end mid-chunk.
#[when(
    expr = "the sensor streams a generated stereo WAV file of {int} ms at {int} Hz as {int} chunks of {int} ms as sensor {string}"
)]
async fn sensor_wav_generated(
    w: &mut World,
    len_ms: u32,
    rate: u32,
    n: usize,
    ms: u32,
    sensor: String,
) -> anyhow::Result<()> {
    let frames = (rate as u64 * len_ms as u64 / 1000) as usize;
    let left = harness::signal::Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(rate, 1, 0, frames);
    let right = harness::signal::Signal::Sine { frequency_hz: 1000.0, amplitude: 0.3 }.render(rate, 1, 0, frames);
    let samples: Vec<f32> = left.iter().zip(&right).flat_map(|(l, r)| [*l, *r]).collect();
    let dir = w.env.report_dir().join("generated").join(&w.ns.prefix);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("stereo-{rate}-{len_ms}ms.wav"));
    harness::signal::write_wav_s16(&path, &samples, rate, 2)?;
    stream_wav(w, path, n, ms, sensor).await
}

/// The sensor streams through a proxy on its broker link; after `after` chunks reached the queue
/// the link is reset (every open connection gets RST, new ones too) for `outage`, then healed.
#[when(
    expr = "the sensor publishes {int} chunks at {int} per second as sensor {string} while its broker link is cut for {duration} after chunk {int}"
)]
async fn sensor_blip(
    w: &mut World,
    n: usize,
    rate: u32,
    sensor: String,
    outage: crate::params::DurationParam,
    after: usize,
) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let proxy = sensor_proxy(w).await?;
    let mut env = sensor_env(w, &sensor_id, n, 100, rate);
    set_var(&mut env, "APQ_AMQP_URL", harness::sensor::with_addr(&w.env.config.amqp_url, proxy.addr())?);
    set_var(&mut env, "APQ_RECONNECT_MAX_MS", "500".into());
    let p = spawn_sensor(w, &env).await?;
    let tap = w.sensor.tap.clone().context("no work-queue tap")?;
    tap.wait_for(after, w.deadline()).await?;
    ensure!(
        proxy.connections() > 0,
        "the sensor has no connection through its proxy to cut ({} chunks on the queue when the harness saw chunk {after}; \
         of {n}: a sensor already done means the harness was too slow, not a sensor bug)",
        tap.len()
    );
    proxy.set(LinkFault::Reset);
    proxy.reset_connections();
    // The outage is the point of the scenario: the link stays cut for exactly this long.
    tokio::time::sleep(outage.0).await;
    proxy.clear();
    w.sensor.sensor_id = sensor_id;
    w.sensor.chunk_ms = 100;
    w.sensor.outcome = Some(p.finish(SENSOR_RUN_LIMIT).await?);
    w.sensor.proxies.insert("sensor-broker".into(), proxy);
    Ok(())
}

/// The sensor streams through a proxy; once `from` chunks reached the queue, everything the
/// broker sends the sensor (publish confirms included) is held back `hold_ms`.
#[when(
    expr = "the sensor publishes {int} chunks at {int} per second as sensor {string} while the broker's confirms are held back {int} ms from chunk {int} on"
)]
async fn sensor_confirms_held(
    w: &mut World,
    n: usize,
    rate: u32,
    sensor: String,
    hold_ms: u64,
    from: usize,
) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let proxy = sensor_proxy(w).await?;
    let mut env = sensor_env(w, &sensor_id, n, 100, rate);
    set_var(&mut env, "APQ_AMQP_URL", harness::sensor::with_addr(&w.env.config.amqp_url, proxy.addr())?);
    let p = spawn_sensor(w, &env).await?;
    let tap = w.sensor.tap.clone().context("no work-queue tap")?;
    tap.wait_for(from, w.deadline()).await?;
    proxy.set(LinkFault::DelayServerToClient { ms: hold_ms });
    let at_start = tap.len();
    let started = Instant::now();
    // Watch the queue for the hold (minus a margin for the last delayed confirm in flight):
    // what arrives then was published without a confirm for the chunk before it.
    tokio::time::sleep(Duration::from_millis(hold_ms.saturating_sub(150))).await;
    let before_end = tap.len();
    proxy.clear();
    ensure!(started.elapsed() < Duration::from_millis(hold_ms), "the harness itself was too slow to watch the hold");
    w.sensor.held = Some((at_start, before_end));
    w.sensor.sensor_id = sensor_id;
    w.sensor.chunk_ms = 100;
    w.sensor.outcome = Some(p.finish(SENSOR_RUN_LIMIT).await?);
    w.sensor.proxies.insert("sensor-broker".into(), proxy);
    Ok(())
}

async fn sensor_proxy(w: &World) -> anyhow::Result<Proxy> {
    let broker = harness::sensor::socket_addr_of(&w.env.config.amqp_url)?;
    Proxy::start(&format!("{}-sensor-broker", w.ns.prefix), broker).await
}

fn outcome(w: &World) -> anyhow::Result<&SensorOutcome> {
    w.sensor.outcome.as_ref().context("the sensor has not run in this scenario")
}

#[then(expr = "the sensor exits 0 reporting {int} chunks sent")]
async fn sensor_exit(w: &mut World, n: u64) -> anyhow::Result<()> {
    let o = outcome(w)?;
    ensure!(
        o.success,
        "stage: sensor — exit {:?} (expected 0 after a bounded run)\n  log:\n{}",
        o.status.as_deref().unwrap_or("none: killed after 60 s"),
        o.log
    );
    let report =
        o.report.as_ref().with_context(|| format!("stage: sensor — no sensor_done line\n  log:\n{}", o.log))?;
    ensure!(report["sent"] == n, "stage: sensor — reported {} chunks sent, expected {n}: {report}", report["sent"]);
    Ok(())
}

#[then(expr = "the sensor reports at least {int} retried publish(es)")]
async fn sensor_retries(w: &mut World, min: u64) -> anyhow::Result<()> {
    let o = outcome(w)?;
    let retries = o.report.as_ref().and_then(|r| r["retries"].as_u64()).unwrap_or(0);
    ensure!(
        retries >= min,
        "stage: sensor — {retries} retries reported (at least {min} expected: its link was cut mid-stream): {:?}",
        o.report
    );
    Ok(())
}

/// The sensor's chunks, parsed, after waiting for at least `n` of them.
async fn sensor_chunks(w: &World, n: usize) -> anyhow::Result<Vec<(Taken, AudioChunk)>> {
    let tap = w.sensor.tap.as_ref().context("no work-queue tap in this scenario")?;
    let taken = tap.wait_for(n, w.deadline()).await.map_err(|e| e.context("stage: sensor → audio_stream"))?;
    taken
        .into_iter()
        .map(|t| {
            let chunk: AudioChunk = serde_json::from_slice(&t.body).with_context(|| {
                format!(
                    "stage: sensor — a message on the work queue is not an audio chunk: {}",
                    String::from_utf8_lossy(&t.body)
                )
            })?;
            ensure!(
                chunk.sensor_id == w.sensor.sensor_id,
                "a chunk of another sensor {:?} on the private queue",
                chunk.sensor_id
            );
            Ok((t, chunk))
        })
        .collect()
}

#[then(
    expr = "the work queue holds exactly {int} chunks from the sensor, sequences 0 to {int} without gaps or repeats"
)]
async fn exactly_sequences(w: &mut World, n: usize, last: u64) -> anyhow::Result<()> {
    let chunks = sensor_chunks(w, n).await?;
    let tap = w.sensor.tap.clone().context("tap")?;
    // One more would be a duplicate: give it the settle window to show up.
    tokio::time::sleep(w.settle()).await;
    ensure!(tap.len() == n, "stage: sensor — {} chunks on the work queue, expected exactly {n}", tap.len());
    let seqs: Vec<u64> = chunks.iter().map(|(_, c)| c.sequence).collect();
    let want: Vec<u64> = (0..=last).collect();
    ensure!(seqs == want, "stage: sensor — sequences {seqs:?}, expected 0..={last} in order, each once");
    Ok(())
}

#[then(
    expr = "the work queue holds every sequence from 0 to {int} from the sensor without gaps, any re-send identical"
)]
async fn every_sequence(w: &mut World, last: u64) -> anyhow::Result<()> {
    let chunks = sensor_chunks(w, last as usize + 1).await?;
    let mut by_seq: BTreeMap<u64, Vec<&(Taken, AudioChunk)>> = BTreeMap::new();
    for c in &chunks {
        by_seq.entry(c.1.sequence).or_default().push(c);
    }
    let missing: Vec<u64> = (0..=last).filter(|s| !by_seq.contains_key(s)).collect();
    ensure!(
        missing.is_empty(),
        "stage: sensor — sequences missing from the work queue: {missing:?} (got {:?})",
        by_seq.keys().collect::<Vec<_>>()
    );
    let extra: Vec<u64> = by_seq.keys().copied().filter(|s| *s > last).collect();
    ensure!(extra.is_empty(), "stage: sensor — sequences beyond {last}: {extra:?}");
    for (seq, copies) in &by_seq {
        let first = &copies[0];
        for c in &copies[1..] {
            ensure!(
                c.0.body == first.0.body,
                "stage: sensor — sequence {seq} was sent twice with different bodies (message ids {} and {}): a retry must re-send the same chunk",
                first.1.message_id,
                c.1.message_id
            );
        }
    }
    // Order: the first copy of each sequence arrives in sequence order (a retry never overtakes).
    let firsts: Vec<u64> = {
        let mut seen = std::collections::BTreeSet::new();
        chunks.iter().map(|c| c.1.sequence).filter(|s| seen.insert(*s)).collect()
    };
    ensure!(firsts.windows(2).all(|p| p[0] < p[1]), "stage: sensor — chunks arrived out of order: {firsts:?}");
    Ok(())
}

#[then("the sensor's chunks on the work queue are persistent and carry the contract's properties")]
async fn persistent(w: &mut World) -> anyhow::Result<()> {
    let chunks = sensor_chunks(w, 1).await?;
    let mut bad = Vec::new();
    for (t, c) in &chunks {
        let mut p = Vec::new();
        if t.delivery_mode != Some(2) {
            p.push(format!("delivery_mode {:?} (must be 2: persistent)", t.delivery_mode));
        }
        if !t.content_type.as_deref().is_some_and(|ct| ct.starts_with("application/json")) {
            p.push(format!("content_type {:?}", t.content_type));
        }
        if t.message_id.as_deref() != Some(c.message_id.to_string().as_str()) {
            p.push(format!("message_id property {:?} ≠ body {}", t.message_id, c.message_id));
        }
        if t.headers.get(contract::HEADER_SENSOR_ID) != Some(&c.sensor_id) {
            p.push(format!("x-sensor-id {:?}", t.headers.get(contract::HEADER_SENSOR_ID)));
        }
        if let Some(s) = t.headers.get(contract::HEADER_SCHEMA)
            && s != contract::MessageKind::AudioChunk.schema_header()
        {
            p.push(format!("x-schema {s:?}"));
        }
        let json = t.json.clone().unwrap_or_default();
        if let Err(errors) = harness::json_match::validate_contract(contract::MessageKind::AudioChunk, &json) {
            p.push(format!("breaks audio_chunk.v1: {errors:?}"));
        }
        if !p.is_empty() {
            bad.push(format!("seq {}: {}", c.sequence, p.join("; ")));
        }
    }
    ensure!(bad.is_empty(), "stage: sensor — {} of {} chunks:\n    {}", bad.len(), chunks.len(), bad.join("\n    "));
    Ok(())
}

/// Frames of a chunk: decoded samples / channels.
fn frames_of(c: &AudioChunk) -> anyhow::Result<usize> {
    let s = c
        .decode_samples()
        .map_err(|e| anyhow::anyhow!("stage: sensor — chunk seq {} does not decode: {e}", c.sequence))?;
    Ok(s.len() / c.channels.max(1) as usize)
}

#[then("the sensor's captured_at values advance by exactly one chunk duration")]
async fn spacing(w: &mut World) -> anyhow::Result<()> {
    let mut chunks: Vec<AudioChunk> = sensor_chunks(w, 2).await?.into_iter().map(|c| c.1).collect();
    chunks.sort_by_key(|c| c.sequence);
    chunks.dedup_by_key(|c| c.sequence);
    for pair in chunks.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let frames = frames_of(a)?;
        let duration_us = frames as f64 * 1e6 / a.sample_rate as f64;
        let gap_us = (b.captured_at - a.captured_at).num_microseconds().unwrap_or(i64::MAX) as f64;
        let per_seq = gap_us / (b.sequence - a.sequence) as f64;
        ensure!(
            (per_seq - duration_us).abs() <= 1.0,
            "stage: sensor — captured_at of seq {} is {} and of seq {} is {}: {per_seq} µs per chunk, but a chunk holds {frames} frames at {} Hz = {duration_us} µs (configured {} ms)",
            a.sequence,
            a.captured_at,
            b.sequence,
            b.captured_at,
            a.sample_rate,
            w.sensor.chunk_ms
        );
    }
    Ok(())
}

#[then(
    expr = "every chunk from the sensor is a {float} Hz sine at amplitude {float} by the harness's reference features"
)]
async fn sine_content(w: &mut World, f: f64, a: f64) -> anyhow::Result<()> {
    let chunks = sensor_chunks(w, 1).await?;
    for (_, c) in &chunks {
        let s = c.decode_samples().map_err(|e| anyhow::anyhow!("stage: sensor — chunk does not decode: {e}"))?;
        let r = harness::signal::reference_features(&s, c.channels, c.sample_rate);
        let rms = a / 2f64.sqrt();
        ensure!(
            (r.dominant_frequency_hz - f).abs() <= 2.0 && (r.rms - rms).abs() <= 0.001 && (r.peak - a).abs() <= 0.001,
            "stage: sensor — chunk seq {} is not a {f} Hz sine at {a}: dominant {} Hz, rms {} (want {rms:.4}), peak {}",
            c.sequence,
            r.dominant_frequency_hz,
            r.rms,
            r.peak
        );
        ensure!(
            r.duration_ms > 0.0 && (r.duration_ms - w.sensor.chunk_ms as f64).abs() <= 0.1,
            "stage: sensor — chunk seq {} lasts {} ms, configured {} ms",
            c.sequence,
            r.duration_ms,
            w.sensor.chunk_ms
        );
    }
    Ok(())
}

#[then("every chunk from the sensor holds the WAV file's frames in order, looping at its end")]
async fn wav_content(w: &mut World) -> anyhow::Result<()> {
    let (path, samples, rate, channels) = w.sensor.wav.clone().context("no WAV file was streamed")?;
    let ch = channels as usize;
    let total = samples.len() / ch;
    let mut chunks: Vec<AudioChunk> = sensor_chunks(w, 1).await?.into_iter().map(|c| c.1).collect();
    chunks.sort_by_key(|c| c.sequence);
    let mut next_frame = 0usize;
    for c in &chunks {
        ensure!(
            c.sample_rate == rate && c.channels == channels,
            "stage: sensor — chunk seq {} is {} Hz × {} channel(s); the WAV {} is {rate} Hz × {channels}",
            c.sequence,
            c.sample_rate,
            c.channels,
            path.display()
        );
        let got = c.decode_samples().map_err(|e| anyhow::anyhow!("chunk does not decode: {e}"))?;
        let frames = got.len() / ch;
        for i in 0..frames {
            let f = (next_frame + i) % total;
            for k in 0..ch {
                let (x, want) = (got[i * ch + k], samples[f * ch + k]);
                // One 16-bit step: the file is integer PCM, however the sensor scales it.
                if (x - want).abs() > 1.0 / 32767.0 {
                    bail!(
                        "stage: sensor — chunk seq {} frame {i} channel {k} is {x}, but WAV frame {f} holds {want} (expected the file's frames in order from frame {next_frame}, looping after {total})",
                        c.sequence
                    );
                }
            }
        }
        next_frame = (next_frame + frames) % total;
    }
    Ok(())
}

#[then(expr = "while the confirms were held back the sensor published at most {int} more chunk(s)")]
async fn waited_for_confirms(w: &mut World, max: usize) -> anyhow::Result<()> {
    let (start, end) = w.sensor.held.context("no confirms were held back in this scenario")?;
    ensure!(
        end - start <= max,
        "stage: sensor — {} chunks reached the queue while the broker's confirms were held back (at most {max} expected): the sensor publishes without waiting for the confirm of the chunk before",
        end - start
    );
    Ok(())
}
