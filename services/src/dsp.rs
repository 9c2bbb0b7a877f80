//! Signal processing: feature extraction for Algorithm A (rustfft) and the test-signal generators
//! the sensor and the harness share. All functions are pure; tolerances are stated in the tests.

use crate::contract::SignalFeatures;
use rand::{Rng, SeedableRng};
use rustfft::{FftPlanner, num_complex::Complex};

/// |x| at or above this counts as clipped (s16 full scale decodes to exactly 1.0).
pub const CLIP_THRESHOLD: f32 = 0.999;
/// dBFS reported for digital silence (log of zero has no value).
pub const SILENCE_FLOOR_DBFS: f64 = -120.0;

/// Computes Feature A's numbers for interleaved `samples`.
/// Level features (rms, peak, clipping) use every sample; spectral ones use the mono mix.
pub fn extract(samples: &[f32], channels: u16, sample_rate: u32) -> SignalFeatures {
    let channels = channels.max(1) as usize;
    let frames = samples.len() / channels;
    let mono: Vec<f64> =
        samples.chunks_exact(channels).map(|f| f.iter().map(|&s| s as f64).sum::<f64>() / channels as f64).collect();
    let n = samples.len().max(1) as f64;
    let rms = (samples.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / n).sqrt();
    let peak = samples.iter().fold(0.0f64, |m, &s| m.max((s as f64).abs()));
    let clipped = samples.iter().filter(|s| s.abs() >= CLIP_THRESHOLD).count();
    let rms_dbfs = if rms > 0.0 { (20.0 * rms.log10()).max(SILENCE_FLOOR_DBFS) } else { SILENCE_FLOOR_DBFS };
    let (centroid, dominant, flatness) = spectral(&mono, sample_rate as f64);
    SignalFeatures {
        rms,
        peak,
        rms_dbfs,
        zero_crossing_rate: zero_crossing_rate(&mono),
        spectral_centroid_hz: centroid,
        dominant_frequency_hz: dominant,
        spectral_flatness: flatness,
        clipping_ratio: clipped as f64 / n,
        duration_ms: frames as f64 * 1000.0 / sample_rate as f64,
        sample_count: frames as u64,
    }
}

/// Sign changes per adjacent sample pair; exact zeros count as positive so silence gives 0.
pub fn zero_crossing_rate(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let crossings = x.windows(2).filter(|w| (w[0] >= 0.0) != (w[1] >= 0.0)).count();
    crossings as f64 / (x.len() - 1) as f64
}

/// (centroid Hz, dominant Hz, flatness) of a Hann-windowed magnitude spectrum.
/// A chunk without energy reports 0 for all three.
fn spectral(mono: &[f64], sample_rate: f64) -> (f64, f64, f64) {
    let n = mono.len();
    if n < 4 {
        return (0.0, 0.0, 0.0);
    }
    let mut buf: Vec<Complex<f64>> = mono
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos();
            Complex::new(x * w, 0.0)
        })
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let half = n / 2;
    let mags: Vec<f64> = buf[..=half].iter().map(|c| c.norm()).collect();
    let bin_hz = sample_rate / n as f64;
    let total: f64 = mags[1..].iter().sum();
    if total <= 1e-12 {
        return (0.0, 0.0, 0.0);
    }
    let centroid = mags.iter().enumerate().skip(1).map(|(k, m)| k as f64 * bin_hz * m).sum::<f64>() / total;
    // Dominant bin (DC excluded), refined by Gaussian (log-parabolic) interpolation, which is
    // accurate to a small fraction of a bin for a Hann-windowed sinusoid.
    let (k, _) = mags.iter().enumerate().skip(1).fold((1, 0.0), |best, (k, &m)| if m > best.1 { (k, m) } else { best });
    let delta = if k > 1 && k < half {
        let (a, b, c) = (mags[k - 1].max(1e-300).ln(), mags[k].max(1e-300).ln(), mags[k + 1].max(1e-300).ln());
        let denom = a - 2.0 * b + c;
        if denom.abs() > 1e-12 { (0.5 * (a - c) / denom).clamp(-0.5, 0.5) } else { 0.0 }
    } else {
        0.0
    };
    let dominant = (k as f64 + delta) * bin_hz;
    let powers: Vec<f64> = mags[1..].iter().map(|m| m * m + 1e-20).collect();
    let mean = powers.iter().sum::<f64>() / powers.len() as f64;
    let geo = (powers.iter().map(|p| p.ln()).sum::<f64>() / powers.len() as f64).exp();
    (centroid, dominant, (geo / mean).clamp(0.0, 1.0))
}

/// The synthetic signals a sensor (or a test) can produce.
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
    /// `frames` frames starting at frame `start` (so consecutive chunks are phase-continuous),
    /// the same signal on every channel, interleaved.
    pub fn render(&self, sample_rate: u32, channels: u16, start: u64, frames: usize) -> Vec<f32> {
        let sr = sample_rate as f64;
        let mut rng = match self {
            Signal::WhiteNoise { seed, .. } => Some(rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(start))),
            _ => None,
        };
        let mut out = Vec::with_capacity(frames * channels as usize);
        for i in 0..frames {
            let t = (start + i as u64) as f64 / sr;
            let v = match *self {
                Signal::Sine { frequency_hz, amplitude } => {
                    amplitude * (2.0 * std::f64::consts::PI * frequency_hz * t).sin()
                }
                Signal::WhiteNoise { amplitude, .. } => {
                    amplitude * rng.as_mut().expect("noise has an rng").random_range(-1.0..=1.0)
                }
                Signal::Silence => 0.0,
                Signal::ClippedSine { frequency_hz, gain } => {
                    (gain * (2.0 * std::f64::consts::PI * frequency_hz * t).sin()).clamp(-1.0, 1.0)
                }
            };
            for _ in 0..channels {
                out.push(v as f32);
            }
        }
        out
    }
}

/// Reads a WAV file as interleaved floats in [-1, 1]: (samples, sample_rate, channels).
pub fn read_wav(path: &std::path::Path) -> Result<(Vec<f32>, u32, u16), hound::Error> {
    let mut reader = hound::WavReader::open(path)?;
    let spec = reader.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<Vec<_>, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 / scale)).collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok((samples, spec.sample_rate, spec.channels))
}

/// Writes interleaved floats as a 16-bit PCM WAV (used to make fixtures).
pub fn write_wav(path: &std::path::Path, samples: &[f32], sample_rate: u32, channels: u16) -> Result<(), hound::Error> {
    let spec = hound::WavSpec { channels, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec)?;
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16)?;
    }
    w.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn sine(f: f64, a: f64, sr: u32, frames: usize) -> SignalFeatures {
        extract(&Signal::Sine { frequency_hz: f, amplitude: a }.render(sr, 1, 0, frames), 1, sr)
    }

    // Dominant frequency within 0.5 % (Gaussian interpolation on a Hann window).
    #[rstest]
    #[case(440.0, 16_000, 1600)]
    #[case(1000.0, 44_100, 4410)]
    #[case(97.0, 8000, 800)]
    #[case(3150.5, 48_000, 4800)]
    fn sine_dominant_frequency(#[case] f: f64, #[case] sr: u32, #[case] frames: usize) {
        let feat = sine(f, 0.5, sr, frames);
        assert!(
            (feat.dominant_frequency_hz - f).abs() <= f * 0.005,
            "expected ~{f} Hz, got {}",
            feat.dominant_frequency_hz
        );
        // A pure tone's centroid sits near the tone (leakage pulls it a little).
        assert!((feat.spectral_centroid_hz - f).abs() < f * 0.1 + 20.0, "centroid {}", feat.spectral_centroid_hz);
        // Two crossings per period.
        assert!((feat.zero_crossing_rate - 2.0 * f / sr as f64).abs() < 0.002, "zcr {}", feat.zero_crossing_rate);
        assert!(feat.spectral_flatness < 0.05, "flatness {}", feat.spectral_flatness);
    }

    // RMS of a sine is A/√2; dBFS follows.
    #[rstest]
    #[case(1.0)]
    #[case(0.5)]
    #[case(0.1)]
    fn sine_levels(#[case] a: f64) {
        let feat = sine(440.0, a, 16_000, 1600);
        assert!((feat.rms - a / 2f64.sqrt()).abs() < 1e-3, "rms {}", feat.rms);
        assert!((feat.peak - a).abs() < 1e-3, "peak {}", feat.peak);
        assert!((feat.rms_dbfs - 20.0 * (a / 2f64.sqrt()).log10()).abs() < 0.05, "dbfs {}", feat.rms_dbfs);
    }

    #[test]
    fn silence_is_quiet_and_spectrally_empty() {
        let feat = extract(&Signal::Silence.render(16_000, 1, 0, 1600), 1, 16_000);
        assert_eq!(feat.rms, 0.0);
        assert_eq!(feat.rms_dbfs, SILENCE_FLOOR_DBFS);
        assert_eq!(feat.zero_crossing_rate, 0.0);
        assert_eq!(feat.dominant_frequency_hz, 0.0);
        assert_eq!(feat.clipping_ratio, 0.0);
        assert_eq!(feat.duration_ms, 100.0);
    }

    #[test]
    fn white_noise_is_flat_and_busy() {
        let feat = extract(&Signal::WhiteNoise { amplitude: 0.5, seed: 7 }.render(16_000, 1, 0, 4096), 1, 16_000);
        // Uniform noise: rms = A/√3; flatness ≈ e^-γ ≈ 0.56; zcr ≈ 0.5; centroid ≈ sr/4.
        assert!((feat.rms - 0.5 / 3f64.sqrt()).abs() < 0.01, "rms {}", feat.rms);
        assert!(feat.spectral_flatness > 0.4, "flatness {}", feat.spectral_flatness);
        assert!((feat.zero_crossing_rate - 0.5).abs() < 0.05, "zcr {}", feat.zero_crossing_rate);
        assert!((feat.spectral_centroid_hz - 4000.0).abs() < 400.0, "centroid {}", feat.spectral_centroid_hz);
    }

    #[test]
    fn clipped_sine_reports_its_clipping() {
        let feat =
            extract(&Signal::ClippedSine { frequency_hz: 440.0, gain: 4.0 }.render(16_000, 1, 0, 1600), 1, 16_000);
        // |4 sin| >= 1 for 1 - (2/π)·asin(1/4) ≈ 84 % of the time.
        assert!((feat.clipping_ratio - 0.84).abs() < 0.03, "clipping {}", feat.clipping_ratio);
        assert!((feat.dominant_frequency_hz - 440.0).abs() < 3.0);
    }

    #[test]
    fn stereo_mixes_down_for_spectrum_and_counts_frames() {
        let samples = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 2, 0, 1600);
        let feat = extract(&samples, 2, 16_000);
        assert_eq!(feat.sample_count, 1600);
        assert!((feat.dominant_frequency_hz - 440.0).abs() < 2.0);
    }

    #[test]
    fn chunks_are_phase_continuous() {
        let s = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 };
        let whole = s.render(16_000, 1, 0, 200);
        let second = s.render(16_000, 1, 100, 100);
        assert_eq!(&whole[100..], &second[..]);
    }

    #[test]
    fn tiny_chunks_do_not_panic() {
        let feat = extract(&[0.5, -0.5], 1, 8000);
        assert_eq!(feat.sample_count, 2);
        assert_eq!(feat.zero_crossing_rate, 1.0);
    }

    #[test]
    fn wav_round_trip() {
        let path = std::env::temp_dir().join(format!("apq-wav-{}.wav", std::process::id()));
        let s = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600);
        write_wav(&path, &s, 16_000, 1).unwrap();
        let (back, sr, ch) = read_wav(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!((sr, ch, back.len()), (16_000, 1, 1600));
        assert!(back.iter().zip(&s).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    // Flatness is a ratio of means of the power spectrum, so it cannot depend on the level; for
    // white noise it is e^-γ ≈ 0.56 (exponentially distributed bin powers), whatever the seed.
    #[rstest]
    #[case(0.5, 7)]
    #[case(0.05, 7)]
    #[case(0.005, 11)]
    #[case(0.9, 23)]
    fn white_noise_flatness_is_e_to_minus_gamma_at_any_level(#[case] amplitude: f64, #[case] seed: u64) {
        let feat = extract(&Signal::WhiteNoise { amplitude, seed }.render(16_000, 1, 0, 4096), 1, 16_000);
        let expected = (-0.577_215_664_9f64).exp();
        assert!(
            (feat.spectral_flatness - expected).abs() < 0.06,
            "flatness at amplitude {amplitude}: expected {expected:.3} ± 0.06, got {}",
            feat.spectral_flatness
        );
    }

    // A tone at exactly half the sample rate peaks in the last bin, which has no right
    // neighbour to interpolate with.
    #[test]
    fn a_nyquist_tone_peaks_at_half_the_rate() {
        let samples: Vec<f32> = (0..1600).map(|i| if i % 2 == 0 { 0.5 } else { -0.5 }).collect();
        let feat = extract(&samples, 1, 16_000);
        assert_eq!(feat.dominant_frequency_hz, 8000.0, "{feat:?}");
        assert!((feat.zero_crossing_rate - 1.0).abs() < 0.01, "zcr {}", feat.zero_crossing_rate);
    }
}
