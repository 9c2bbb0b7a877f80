//! The sensor: publishes audio chunks to the `audio_stream` work queue from a WAV file or a
//! synthetic generator, at a given rate, for a given count or duration. A chunk counts as sent
//! only once the broker confirmed it; on a broker outage the same chunk is retried after reconnect.

use crate::amqp::{Backoff, confirm_channel, json_properties, publish_confirmed};
use crate::config::{SensorSettings, Settings};
use crate::contract::{self, AudioChunk, Encoding, MessageKind};
use crate::dsp::Signal;
use crate::runtime::ServiceError;
use crate::topology::{self, Names};
use chrono::{Duration as ChronoDuration, Utc};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "sensor";

/// Where the sensor's audio comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Synthetic(Signal),
    /// A WAV file's interleaved samples, looped.
    Wav {
        samples: Vec<f32>,
        sample_rate: u32,
        channels: u16,
    },
}

/// What a sensor run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SensorReport {
    /// Chunks the broker confirmed.
    pub sent: u64,
    /// Publish attempts that failed and were retried.
    pub retries: u64,
    pub elapsed_secs: f64,
}

impl Source {
    pub fn from_settings(s: &SensorSettings) -> Result<Self, ServiceError> {
        let signal = match s.signal.as_str() {
            "sine" => Signal::Sine { frequency_hz: s.frequency_hz, amplitude: s.amplitude },
            "noise" => Signal::WhiteNoise { amplitude: s.amplitude, seed: rand::random() },
            "silence" => Signal::Silence,
            // For a clipped sine the amplitude is the gain before clipping.
            "clipped-sine" => Signal::ClippedSine { frequency_hz: s.frequency_hz, gain: s.amplitude.max(1.0) },
            "wav" => {
                let path =
                    s.wav_path.as_deref().ok_or_else(|| ServiceError::Other("signal = wav needs wav_path".into()))?;
                let (samples, sample_rate, channels) = crate::dsp::read_wav(std::path::Path::new(path))
                    .map_err(|e| ServiceError::Other(format!("cannot read WAV {path}: {e}")))?;
                if samples.is_empty() {
                    return Err(ServiceError::Other(format!("WAV {path} has no samples")));
                }
                return Ok(Source::Wav { samples, sample_rate, channels });
            }
            other => {
                return Err(ServiceError::Other(format!(
                    "unknown signal {other:?}; expected sine, noise, silence, clipped-sine or wav"
                )));
            }
        };
        Ok(Source::Synthetic(signal))
    }

    /// Chunk number `seq` of `chunk_ms` milliseconds, as (samples, sample_rate, channels).
    pub fn chunk(&self, seq: u64, default_rate: u32, chunk_ms: u32) -> (Vec<f32>, u32, u16) {
        match self {
            Source::Synthetic(signal) => {
                let frames = (default_rate as u64 * chunk_ms as u64 / 1000).max(1) as usize;
                (signal.render(default_rate, 1, seq * frames as u64, frames), default_rate, 1)
            }
            Source::Wav { samples, sample_rate, channels } => {
                let ch = *channels as usize;
                let total_frames = samples.len() / ch;
                let frames = ((*sample_rate as u64 * chunk_ms as u64 / 1000) as usize).clamp(1, total_frames);
                let start = (seq as usize * frames) % total_frames;
                let out: Vec<f32> = (0..frames)
                    .flat_map(|i| {
                        let f = (start + i) % total_frames;
                        samples[f * ch..(f + 1) * ch].to_vec()
                    })
                    .collect();
                (out, *sample_rate, *channels)
            }
        }
    }
}

/// Publishes chunks until count/duration is reached or `shutdown` fires.
pub async fn run(settings: &Settings, shutdown: CancellationToken) -> Result<SensorReport, ServiceError> {
    let s = &settings.sensor;
    let source = Source::from_settings(s)?;
    let names = Names::new(&settings.amqp.namespace);
    let started = Instant::now();
    let mut report = SensorReport::default();
    // Microsecond precision: what PostgreSQL stores, so captured_at round-trips exactly.
    let t0 = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is representable");
    let period = (s.rate_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / s.rate_per_sec));
    let mut backoff = Backoff::for_settings(&settings.amqp);
    let mut channel = None;
    let mut announced = false;
    let mut seq = 0u64;
    loop {
        if shutdown.is_cancelled()
            || (s.count > 0 && seq >= s.count)
            || (s.duration_secs > 0.0 && started.elapsed().as_secs_f64() >= s.duration_secs)
        {
            break;
        }
        if let Some(p) = period {
            let due = started + p * seq as u32;
            tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep_until(due.into()) => {} }
        }
        let (samples, rate, channels) = source.chunk(seq, s.sample_rate, s.chunk_ms);
        let captured_at = t0 + ChronoDuration::milliseconds((seq * s.chunk_ms as u64) as i64);
        let chunk =
            AudioChunk::from_samples(&s.sensor_id, seq, captured_at, rate, channels, Encoding::PcmF32le, &samples);
        let body = contract::check_outgoing(MessageKind::AudioChunk, &chunk)
            .map_err(|e| ServiceError::Other(format!("sensor produced an invalid chunk: {e}")))?;
        // Retry this chunk until confirmed (or shutdown).
        loop {
            if channel.is_none() {
                let Some(conn) = crate::amqp::connect(&settings.amqp, COMPONENT, &shutdown).await else {
                    return Ok(finish(report, started));
                };
                let ch = confirm_channel(&conn).await?;
                topology::audio_stream(&ch, &names).await?;
                channel = Some((conn, ch));
                if !announced {
                    crate::runtime::announce_ready(COMPONENT, &settings.instance_id(COMPONENT), None);
                    announced = true;
                }
            }
            let (_, ch) = channel.as_ref().expect("connected above");
            let props = json_properties(
                &chunk.message_id.to_string(),
                MessageKind::AudioChunk.schema_header(),
                &chunk.sensor_id,
            );
            match publish_confirmed(ch, "", &names.audio_stream(), &body, props).await {
                Ok(()) => {
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    report.retries += 1;
                    channel = None;
                    let d = backoff.next_delay();
                    tracing::warn!(error = %e, seq, retry_in_ms = d.as_millis() as u64, "publish failed; retrying");
                    tokio::select! { _ = shutdown.cancelled() => return Ok(finish(report, started)), _ = tokio::time::sleep(d) => {} }
                }
            }
        }
        report.sent += 1;
        seq += 1;
    }
    if let Some((conn, ch)) = channel {
        ch.close(200, "done".into()).await.ok();
        conn.close(200, "done".into()).await.ok();
    }
    Ok(finish(report, started))
}

fn finish(mut report: SensorReport, started: Instant) -> SensorReport {
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_signal_is_a_clear_error() {
        let s = SensorSettings { signal: "square".into(), ..Default::default() };
        let err = Source::from_settings(&s).unwrap_err().to_string();
        assert!(err.contains("square") && err.contains("expected"), "{err}");
    }

    #[test]
    fn synthetic_chunks_have_the_configured_length() {
        let src = Source::from_settings(&SensorSettings::default()).unwrap();
        let (samples, rate, ch) = src.chunk(3, 16_000, 100);
        assert_eq!((samples.len(), rate, ch), (1600, 16_000, 1));
    }

    // Consecutive synthetic chunks are one continuous signal (the DSP of a chunk whose phase
    // jumps at its start sees a click, not the tone); 440 Hz is not whole periods in 10 ms.
    #[test]
    fn synthetic_chunks_continue_one_signal() {
        let signal = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 };
        let src = Source::Synthetic(signal);
        let joined: Vec<f32> = (0..4).flat_map(|seq| src.chunk(seq, 16_000, 10).0).collect();
        assert_eq!(joined, signal.render(16_000, 1, 0, 640));
    }

    #[test]
    fn wav_chunks_loop_over_the_file() {
        let src = Source::Wav { samples: (0..10).map(|i| i as f32 / 10.0).collect(), sample_rate: 8000, channels: 2 };
        // 5 frames; 1 ms at 8 kHz = 8 frames, clamped to the file's 5.
        let (a, _, _) = src.chunk(1, 0, 1);
        assert_eq!(a.len(), 10);
    }

    #[test]
    fn wav_chunks_take_consecutive_frames_and_wrap_mid_chunk() {
        // Five stereo frames whose samples are their own index: frame f = (f, f + 0.5).
        let samples: Vec<f32> = (0..5).flat_map(|f| [f as f32, f as f32 + 0.5]).collect();
        let src = Source::Wav { samples, sample_rate: 1000, channels: 2 };
        let frames = |seq| {
            let (s, _, _) = src.chunk(seq, 0, 3); // 3 ms at 1 kHz: 3 frames
            s.chunks(2).map(|f| f[0] as u32).collect::<Vec<_>>()
        };
        assert_eq!(frames(0), vec![0, 1, 2]);
        assert_eq!(frames(1), vec![3, 4, 0], "chunk 1 continues at frame 3 and wraps to the start");
        assert_eq!(frames(2), vec![1, 2, 3]);
        let (s, _, _) = src.chunk(1, 0, 3);
        assert_eq!(s[1], 3.5, "channels stay interleaved");
    }
}
