//! Test signals and the harness's own reference features. Written independently of the reference
//! services' DSP on purpose: an oracle that shares code with the system under test shares its
//! bugs. Only the definitions in `fixtures/contracts/README.md` are common ground.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use contract::{AudioChunk, FeatureA, SignalFeatures};
use rand::{Rng, SeedableRng};

/// A synthetic test signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    Sine {
        frequency_hz: f64,
        amplitude: f64,
    },
    /// Uniform white noise in [-amplitude, amplitude], reproducible from `seed`.
    WhiteNoise {
        amplitude: f64,
        seed: u64,
    },
    Silence,
    /// A sine driven past full scale by `gain` and hard-clipped to ±1.
    ClippedSine {
        frequency_hz: f64,
        gain: f64,
    },
}

impl Signal {
    /// The value of the signal at frame `frame` (noise: from a generator seeded by `seed + start`).
    fn at(&self, frame: u64, sample_rate: f64, rng: &mut Option<rand::rngs::StdRng>) -> f64 {
        let phase = |f: f64| (std::f64::consts::TAU * f * frame as f64 / sample_rate).sin();
        match *self {
            Signal::Sine { frequency_hz, amplitude } => amplitude * phase(frequency_hz),
            Signal::WhiteNoise { amplitude, .. } => {
                amplitude * rng.as_mut().map_or(0.0, |r| r.random_range(-1.0..=1.0))
            }
            Signal::Silence => 0.0,
            Signal::ClippedSine { frequency_hz, gain } => (gain * phase(frequency_hz)).clamp(-1.0, 1.0),
        }
    }

    /// `frames` frames from frame `start` (consecutive chunks stay phase-continuous), the same
    /// value on every channel, interleaved.
    pub fn render(&self, sample_rate: u32, channels: u16, start: u64, frames: usize) -> Vec<f32> {
        let mut rng = match self {
            Signal::WhiteNoise { seed, .. } => Some(rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(start))),
            _ => None,
        };
        (0..frames as u64)
            .flat_map(|i| {
                let v = self.at(start + i, sample_rate as f64, &mut rng) as f32;
                std::iter::repeat_n(v, channels as usize)
            })
            .collect()
    }
}

/// Reads a WAV file as interleaved floats in [-1, 1]: (samples, sample_rate, channels).
pub fn read_wav(path: &std::path::Path) -> anyhow::Result<(Vec<f32>, u32, u16)> {
    let mut reader = hound::WavReader::open(path).with_context(|| format!("opening WAV {}", path.display()))?;
    let spec = reader.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<Vec<_>, _>>(),
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 / scale)).collect()
        }
    }
    .with_context(|| format!("decoding WAV {}", path.display()))?;
    Ok((samples, spec.sample_rate, spec.channels))
}

/// Feature A's numbers for interleaved samples, computed the contract's way by the harness: level
/// features over every sample, spectral ones over the mono mix with a Hann window and a plain DFT
/// (slow, O(n²), and deliberately not the services' FFT).
pub fn reference_features(samples: &[f32], channels: u16, sample_rate: u32) -> SignalFeatures {
    let ch = channels.max(1) as usize;
    let n = samples.len().max(1) as f64;
    let mono: Vec<f64> =
        samples.chunks_exact(ch).map(|f| f.iter().map(|&s| s as f64).sum::<f64>() / ch as f64).collect();
    let rms = (samples.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / n).sqrt();
    let peak = samples.iter().map(|s| s.abs() as f64).fold(0.0, f64::max);
    let crossings = mono.windows(2).filter(|w| (w[0] >= 0.0) != (w[1] >= 0.0)).count();
    let (centroid, dominant, flatness) = spectrum(&mono, sample_rate as f64);
    SignalFeatures {
        rms,
        peak,
        rms_dbfs: if rms > 0.0 { (20.0 * rms.log10()).max(-120.0) } else { -120.0 },
        zero_crossing_rate: if mono.len() < 2 { 0.0 } else { crossings as f64 / (mono.len() - 1) as f64 },
        spectral_centroid_hz: centroid,
        dominant_frequency_hz: dominant,
        spectral_flatness: flatness,
        clipping_ratio: samples.iter().filter(|s| s.abs() >= 0.999).count() as f64 / n,
        duration_ms: mono.len() as f64 * 1000.0 / sample_rate as f64,
        sample_count: mono.len() as u64,
    }
}

/// (centroid, dominant with log-parabolic refinement, flatness of the power spectrum).
fn spectrum(x: &[f64], rate: f64) -> (f64, f64, f64) {
    let n = x.len();
    if n < 4 {
        return (0.0, 0.0, 0.0);
    }
    let w: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v * (0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / (n - 1) as f64).cos()))
        .collect();
    let mags: Vec<f64> = (0..=n / 2)
        .map(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, v) in w.iter().enumerate() {
                let a = std::f64::consts::TAU * (k * i % n) as f64 / n as f64;
                re += v * a.cos();
                im -= v * a.sin();
            }
            re.hypot(im)
        })
        .collect();
    let total: f64 = mags[1..].iter().sum();
    if total <= 1e-12 {
        return (0.0, 0.0, 0.0);
    }
    let bin = rate / n as f64;
    let centroid = mags.iter().enumerate().skip(1).map(|(k, m)| k as f64 * bin * m).sum::<f64>() / total;
    let k = (1..mags.len()).max_by(|&a, &b| mags[a].total_cmp(&mags[b])).unwrap_or(1);
    let delta = if k > 1 && k + 1 < mags.len() {
        let (a, b, c) = (mags[k - 1].max(1e-300).ln(), mags[k].max(1e-300).ln(), mags[k + 1].max(1e-300).ln());
        let d = a - 2.0 * b + c;
        if d.abs() > 1e-12 { (0.5 * (a - c) / d).clamp(-0.5, 0.5) } else { 0.0 }
    } else {
        0.0
    };
    let powers: Vec<f64> = mags[1..].iter().map(|m| m * m + 1e-20).collect();
    let mean = powers.iter().sum::<f64>() / powers.len() as f64;
    let geo = (powers.iter().map(|p| p.ln()).sum::<f64>() / powers.len() as f64).exp();
    (centroid, (k as f64 + delta) * bin, (geo / mean).clamp(0.0, 1.0))
}

/// A contract-valid Feature A for `chunk`, as a producer would publish it, with the harness's
/// reference features (for feeding Algorithm B, the writer or the API directly).
pub fn feature_a_for(chunk: &AudioChunk, processed_by: &str, processed_at: DateTime<Utc>) -> anyhow::Result<FeatureA> {
    let samples = chunk.decode_samples().map_err(|e| anyhow::anyhow!("decoding the chunk's samples: {e}"))?;
    Ok(FeatureA {
        schema_version: 1,
        feature_type: "A".into(),
        message_id: uuid::Uuid::new_v4(),
        source_message_id: chunk.message_id,
        sensor_id: chunk.sensor_id.clone(),
        sequence: chunk.sequence,
        captured_at: chunk.captured_at,
        processed_at,
        processed_by: processed_by.to_string(),
        sample_rate: chunk.sample_rate,
        channels: chunk.channels,
        features: reference_features(&samples, chunk.channels, chunk.sample_rate),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sine_has_its_frequency_level_and_no_clipping() {
        let s = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600);
        let f = reference_features(&s, 1, 16_000);
        assert!((f.dominant_frequency_hz - 440.0).abs() < 2.0, "{f:?}");
        assert!((f.rms - 0.5 / 2f64.sqrt()).abs() < 1e-3 && (f.peak - 0.5).abs() < 1e-3, "{f:?}");
        assert!(f.spectral_flatness < 0.05 && f.clipping_ratio == 0.0 && f.sample_count == 1600, "{f:?}");
    }

    #[test]
    fn silence_is_the_floor_and_noise_is_flat() {
        let f = reference_features(&Signal::Silence.render(8000, 2, 0, 400), 2, 8000);
        assert_eq!((f.rms_dbfs, f.dominant_frequency_hz, f.sample_count), (-120.0, 0.0, 400));
        let noise = Signal::WhiteNoise { amplitude: 0.5, seed: 7 }.render(8000, 1, 0, 800);
        assert!(reference_features(&noise, 1, 8000).spectral_flatness > 0.3);
    }

    #[test]
    fn a_generated_feature_a_is_contract_valid() {
        let s = Signal::ClippedSine { frequency_hz: 300.0, gain: 3.0 }.render(16_000, 1, 0, 800);
        let chunk = AudioChunk::from_samples("s", 1, Utc::now(), 16_000, 1, contract::Encoding::PcmF32le, &s);
        let a = feature_a_for(&chunk, "qa", Utc::now()).unwrap();
        assert!(a.features.clipping_ratio > 0.3, "{:?}", a.features);
        contract::check_outgoing(contract::MessageKind::FeatureA, &a).unwrap();
    }
}
