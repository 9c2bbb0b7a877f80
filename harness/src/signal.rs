//! Test signals and the harness's own reference features. Written independently of the reference
//! services' DSP on purpose: an oracle that shares code with the system under test shares its
//! bugs. Only the definitions in `fixtures/contracts/README.md` are common ground.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use contract::{AudioChunk, FeatureA, FeatureB, SignalFeatures};
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

/// Shapes of non-stationary chunks (issue #12): a DSP that looks at part of a chunk, or assumes
/// whole periods, no DC or a steady level, gives other numbers for these than the contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkKind {
    /// Silence, then a tone from a random point in the middle third on.
    SilenceThenTone,
    /// A tone that stops at a random point in the middle third.
    ToneThenSilence,
    /// Faint noise with a loud burst (tone or noise) in the last 5–15 % of the chunk.
    BurstAtEnd,
    /// A tone of no whole number of periods (and a random phase) in a chunk of odd length.
    PartialPeriods,
    /// A tone riding on a DC offset.
    DcOffset,
    /// Two or three tones inside a band (for "centroid within band").
    TonesInBand,
}

impl ChunkKind {
    pub const ALL: [ChunkKind; 6] = [
        ChunkKind::SilenceThenTone,
        ChunkKind::ToneThenSilence,
        ChunkKind::BurstAtEnd,
        ChunkKind::PartialPeriods,
        ChunkKind::DcOffset,
        ChunkKind::TonesInBand,
    ];

    /// How a scenario names it.
    pub fn phrase(self) -> &'static str {
        match self {
            ChunkKind::SilenceThenTone => "silence then a tone",
            ChunkKind::ToneThenSilence => "a tone that stops mid-chunk",
            ChunkKind::BurstAtEnd => "a burst at the end",
            ChunkKind::PartialPeriods => "a tone of no whole number of periods",
            ChunkKind::DcOffset => "a tone over a DC offset",
            ChunkKind::TonesInBand => "tones within a band",
        }
    }
}

impl std::str::FromStr for ChunkKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ChunkKind::ALL.into_iter().find(|k| k.phrase() == s).ok_or_else(|| {
            let known: Vec<&str> = ChunkKind::ALL.iter().map(|k| k.phrase()).collect();
            format!("unknown chunk kind {s:?}; known: {known:?}")
        })
    }
}

/// One generated chunk and what it was made of (for failure messages and band checks).
#[derive(Debug, Clone)]
pub struct GeneratedChunk {
    /// Interleaved samples in [-1, 1].
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub channels: u16,
    pub encoding: contract::Encoding,
    /// What was generated, e.g. `silence for 812 frames, then 1234.5 Hz at 0.62 (1700 frames, 22050 Hz, stereo, s16)`.
    pub description: String,
    /// For tonal kinds: the lowest and highest tone frequency (the dominant frequency lies in it).
    pub band: Option<(f64, f64)>,
    /// Whether the spectral centroid lies in `band` too: not where an abrupt start or stop
    /// spreads energy over the whole spectrum.
    pub centroid_in_band: bool,
}

/// A random chunk of `kind` drawn from `rng` (reproducible from its seed): random sample rate,
/// length (700–2400 frames: rarely a whole number of anything), channels (stereo: the second
/// channel a scaled copy) and encoding (f32 or s16).
pub fn random_chunk(kind: ChunkKind, rng: &mut rand::rngs::StdRng) -> GeneratedChunk {
    use std::f64::consts::TAU;
    let rates = [8000u32, 11025, 16000, 22050, 32000, 44100, 48000];
    let sample_rate = rates[rng.random_range(0..rates.len())];
    let sr = sample_rate as f64;
    let frames: usize = rng.random_range(700..=2400);
    let channels: u16 = if rng.random_bool(0.3) { 2 } else { 1 };
    let encoding = if rng.random_bool(0.3) { contract::Encoding::PcmS16le } else { contract::Encoding::PcmF32le };
    let bin = sr / frames as f64;
    // Tones between 8 bins (clear of DC's leakage) and 40 % of Nyquist… of the rate.
    let tone = |rng: &mut rand::rngs::StdRng| rng.random_range((8.0 * bin).max(100.0)..(0.4 * sr).min(6000.0));
    let phase = rng.random_range(0.0..TAU);
    let sine = |f: f64, a: f64, i: usize| a * (TAU * f * i as f64 / sr + phase).sin();
    let mut mono = vec![0.0f64; frames];
    let (what, band, centroid_in_band) = match kind {
        ChunkKind::SilenceThenTone | ChunkKind::ToneThenSilence => {
            let split = rng.random_range(frames / 3..=2 * frames / 3);
            let (f, a) = (tone(rng), rng.random_range(0.2..0.9));
            let tone_first = kind == ChunkKind::ToneThenSilence;
            for (i, x) in mono.iter_mut().enumerate() {
                if (i < split) == tone_first {
                    *x = sine(f, a, i);
                }
            }
            let what = if tone_first {
                format!("{f:.1} Hz at {a:.2} for {split} frames, then silence")
            } else {
                format!("silence for {split} frames, then {f:.1} Hz at {a:.2}")
            };
            (what, Some((f, f)), false)
        }
        ChunkKind::BurstAtEnd => {
            let floor = rng.random_range(0.002..0.02);
            let len = (frames as f64 * rng.random_range(0.05..0.15)) as usize;
            let start = frames - len.max(1);
            let loud = rng.random_range(0.5..0.95);
            let tonal = rng.random_bool(0.5);
            let f = tone(rng);
            for (i, x) in mono.iter_mut().enumerate() {
                *x = if i >= start {
                    if tonal { sine(f, loud, i) } else { loud * rng.random_range(-1.0..=1.0) }
                } else {
                    floor * rng.random_range(-1.0..=1.0)
                };
            }
            let burst = if tonal { format!("{f:.1} Hz at {loud:.2}") } else { format!("noise at {loud:.2}") };
            (format!("noise at {floor:.3}, then {burst} for the last {} frames", frames - start), None, false)
        }
        ChunkKind::PartialPeriods => {
            // A frequency with a fractional number of periods in the chunk.
            let periods = (tone(rng) * frames as f64 / sr).floor() + rng.random_range(0.2..0.8);
            let f = periods * sr / frames as f64;
            let a = rng.random_range(0.1..0.9);
            for (i, x) in mono.iter_mut().enumerate() {
                *x = sine(f, a, i);
            }
            (format!("{f:.2} Hz at {a:.2} ({periods:.2} periods, phase {phase:.2})"), Some((f, f)), true)
        }
        ChunkKind::DcOffset => {
            let d: f64 = rng.random_range(0.05..0.3) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let a = rng.random_range((1.5 * d.abs()).max(0.2)..(0.95 - d.abs()));
            let f = tone(rng);
            for (i, x) in mono.iter_mut().enumerate() {
                *x = d + sine(f, a, i);
            }
            (format!("{f:.1} Hz at {a:.2} over DC {d:+.3}"), Some((f, f)), false)
        }
        ChunkKind::TonesInBand => {
            let lo = tone(rng).min(0.3 * sr);
            let hi = (lo + rng.random_range(100.0..1500.0)).min(0.45 * sr);
            let n = rng.random_range(2..=3);
            let tones: Vec<(f64, f64)> =
                (0..n).map(|_| (rng.random_range(lo..=hi), rng.random_range(0.1..0.3))).collect();
            for (i, x) in mono.iter_mut().enumerate() {
                *x = tones.iter().map(|&(f, a)| a * (TAU * f * i as f64 / sr).sin()).sum();
            }
            let lo_t = tones.iter().map(|t| t.0).fold(f64::MAX, f64::min);
            let hi_t = tones.iter().map(|t| t.0).fold(f64::MIN, f64::max);
            let list: Vec<String> = tones.iter().map(|(f, a)| format!("{f:.1} Hz at {a:.2}")).collect();
            (list.join(" + "), Some((lo_t, hi_t)), true)
        }
    };
    let gain2 = rng.random_range(0.3..1.0);
    let samples: Vec<f32> = mono
        .iter()
        .flat_map(|&x| {
            let x = x.clamp(-1.0, 1.0) as f32;
            if channels == 2 { vec![x, (x as f64 * gain2) as f32] } else { vec![x] }
        })
        .collect();
    let layout = if channels == 2 { format!("stereo, right ×{gain2:.2}") } else { "mono".into() };
    let enc = match encoding {
        contract::Encoding::PcmF32le => "f32",
        contract::Encoding::PcmS16le => "s16",
    };
    GeneratedChunk {
        samples,
        sample_rate,
        channels,
        encoding,
        description: format!("{what} ({frames} frames at {sample_rate} Hz, {layout}, {enc})"),
        band,
        centroid_in_band,
    }
}

/// One field's tolerance from the contract's Defined-fields table (the tightest it names).
#[derive(Debug, Clone, Copy)]
pub struct FieldTolerance {
    pub field: &'static str,
    /// Absolute tolerance; 0 means exact (up to a few ULPs).
    pub abs: f64,
}

/// Per field, the tightest tolerance `fixtures/contracts/README.md` (Defined fields) gives it.
pub const CONTRACT_TOLERANCES: [FieldTolerance; 10] = [
    FieldTolerance { field: "rms", abs: 0.001 },
    FieldTolerance { field: "peak", abs: 0.0001 },
    FieldTolerance { field: "rms_dbfs", abs: 0.05 },
    FieldTolerance { field: "zero_crossing_rate", abs: 0.002 },
    FieldTolerance { field: "spectral_centroid_hz", abs: 60.0 },
    FieldTolerance { field: "dominant_frequency_hz", abs: 2.0 },
    FieldTolerance { field: "spectral_flatness", abs: 0.15 },
    FieldTolerance { field: "clipping_ratio", abs: 0.03 },
    FieldTolerance { field: "duration_ms", abs: 0.1 },
    FieldTolerance { field: "sample_count", abs: 0.0 },
];

/// Differences between a Feature A's `features` object and the harness's reference values, one
/// line per field outside [`CONTRACT_TOLERANCES`].
pub fn compare_with_reference(actual: &serde_json::Value, expected: &SignalFeatures) -> Vec<String> {
    let want = serde_json::to_value(expected).expect("features serialise");
    let mut out = Vec::new();
    for t in CONTRACT_TOLERANCES {
        let w = want[t.field].as_f64().unwrap_or(f64::NAN);
        match actual.get(t.field).and_then(serde_json::Value::as_f64) {
            None => out.push(format!("{}: missing or not a number", t.field)),
            Some(a) => {
                let ok = if t.abs == 0.0 { (a - w).abs() <= 1e-9 * w.abs().max(1.0) } else { (a - w).abs() <= t.abs };
                if !ok {
                    out.push(format!("{}: expected {w} ± {}, got {a} (off by {:.6})", t.field, t.abs, a - w));
                }
            }
        }
    }
    out
}

/// Relations between a Feature A's own fields that hold for every input (contract, Defined
/// fields), plus the band of a band-limited input: `rms_dbfs` = max(20·log10(rms), −120),
/// `peak` ≥ `rms`, levels in [0, 1], rates in [0, 1], frequencies in [0, sr/2], silence has no
/// spectrum, no clipping below 0.999, `duration_ms` = `sample_count`·1000/sr, `sample_count` = the
/// chunk's frames; with a band: the dominant frequency inside it (± 1 bin), and with
/// `centroid_in_band` the centroid too (± [`band_margin_hz`]).
pub fn consistency_problems(
    f: &serde_json::Value,
    sample_rate: u32,
    frames: u64,
    band: Option<(f64, f64)>,
    centroid_in_band: bool,
) -> Vec<String> {
    let g = |k: &str| f.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    let (rms, peak, dbfs) = (g("rms"), g("peak"), g("rms_dbfs"));
    let nyquist = sample_rate as f64 / 2.0;
    let mut out = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            out.push(what);
        }
    };
    let want_dbfs = if rms > 0.0 { (20.0 * rms.log10()).max(-120.0) } else { -120.0 };
    check(
        (dbfs - want_dbfs).abs() <= 0.05,
        format!("rms_dbfs {dbfs} ≠ max(20·log10(rms {rms}), −120) = {want_dbfs:.4}"),
    );
    check(peak + 1e-12 >= rms, format!("peak {peak} < rms {rms}"));
    check(
        (0.0..=1.0).contains(&rms) && (0.0..=1.0).contains(&peak),
        format!("levels out of [0, 1]: rms {rms}, peak {peak}"),
    );
    for k in ["zero_crossing_rate", "spectral_flatness", "clipping_ratio"] {
        check((0.0..=1.0).contains(&g(k)), format!("{k} {} outside [0, 1]", g(k)));
    }
    for k in ["spectral_centroid_hz", "dominant_frequency_hz"] {
        check(
            (0.0..=nyquist).contains(&g(k)),
            format!("{k} {} outside [0, {nyquist}] (sample rate {sample_rate})", g(k)),
        );
    }
    if rms == 0.0 {
        for k in ["spectral_centroid_hz", "dominant_frequency_hz", "spectral_flatness", "zero_crossing_rate"] {
            check(g(k) == 0.0, format!("silence (rms 0) but {k} {}", g(k)));
        }
    }
    if peak < 0.999 {
        check(g("clipping_ratio") == 0.0, format!("peak {peak} < 0.999 but clipping_ratio {}", g("clipping_ratio")));
    }
    let count = g("sample_count");
    check(count == frames as f64, format!("sample_count {count} ≠ the chunk's {frames} frames"));
    let want_ms = count * 1000.0 / sample_rate as f64;
    check(
        (g("duration_ms") - want_ms).abs() <= 0.1,
        format!("duration_ms {} ≠ sample_count·1000/sr = {want_ms:.3}", g("duration_ms")),
    );
    if let Some((lo, hi)) = band {
        let bin = sample_rate as f64 / frames as f64;
        let m = band_margin_hz(sample_rate, frames);
        let c = g("spectral_centroid_hz");
        check(
            !centroid_in_band || (c >= lo - m && c <= hi + m),
            format!("spectral_centroid_hz {c} outside the band [{lo:.1}, {hi:.1}] ± {m:.1} Hz"),
        );
        let d = g("dominant_frequency_hz");
        check(
            d >= lo - bin && d <= hi + bin,
            format!("dominant_frequency_hz {d} outside the band [{lo:.1}, {hi:.1}] ± 1 bin ({bin:.1} Hz)"),
        );
    }
    out
}

/// How far a magnitude-weighted centroid may leave the band of its tones: the contract's ± 60 Hz
/// plus the Hann window's leakage, which grows with the bin width (3 bins).
pub fn band_margin_hz(sample_rate: u32, frames: u64) -> f64 {
    60.0 + 3.0 * sample_rate as f64 / frames as f64
}

/// Feature B's class and confidence for a Feature A's `features`, by the contract's rules
/// (Algorithm B table), written here from the table alone.
pub fn reference_classification(f: &serde_json::Value) -> Option<(&'static str, f64)> {
    let g = |k: &str| f.get(k).and_then(serde_json::Value::as_f64);
    let (dbfs, clip, flat) = (g("rms_dbfs")?, g("clipping_ratio")?, g("spectral_flatness")?);
    let (class, confidence) = if dbfs < -60.0 {
        ("silence", 0.5 + (-60.0 - dbfs) / 40.0)
    } else if clip >= 0.05 {
        ("clipping", 0.5 + (clip - 0.05) / (2.0 * 0.95) + 0.25)
    } else if flat < 0.2 {
        ("tone", 1.0 - 0.5 * flat / 0.2)
    } else {
        ("noise", 0.5 + (flat - 0.2) / (2.0 * (0.6 - 0.2)))
    };
    Some((class, confidence.clamp(0.5, 1.0)))
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

/// Writes interleaved samples in [-1, 1] as a 16-bit PCM WAV file (`round(x · 32767)`).
pub fn write_wav_s16(path: &std::path::Path, samples: &[f32], sample_rate: u32, channels: u16) -> anyhow::Result<()> {
    let spec = hound::WavSpec { channels, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).with_context(|| format!("creating WAV {}", path.display()))?;
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)?;
    }
    w.finalize().with_context(|| format!("writing WAV {}", path.display()))
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
    // A plain O(n²) DFT over a table of the n twiddle factors (index k·i mod n), so property
    // scenarios can afford many chunks; still no FFT and nothing shared with the services.
    let (cos, sin): (Vec<f64>, Vec<f64>) =
        (0..n).map(|j| std::f64::consts::TAU * j as f64 / n as f64).map(|a| (a.cos(), a.sin())).unzip();
    let mags: Vec<f64> = (0..=n / 2)
        .map(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            let mut idx = 0usize;
            for v in &w {
                re += v * cos[idx];
                im -= v * sin[idx];
                idx += k;
                if idx >= n {
                    idx -= n;
                }
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

/// A contract-valid Feature B for Feature A `a`, as Algorithm B would publish it: class and
/// confidence by the contract's table ([`reference_classification`]), its id derived from `a`'s.
pub fn feature_b_for(a: &FeatureA, processed_by: &str, processed_at: DateTime<Utc>) -> anyhow::Result<FeatureB> {
    let f = serde_json::to_value(&a.features)?;
    let (class, confidence) = reference_classification(&f).context("the Feature A lacks the classified fields")?;
    let features = serde_json::json!({
        "event_class": class, "confidence": confidence,
        "loudness_dbfs": a.features.rms_dbfs, "dominant_frequency_hz": a.features.dominant_frequency_hz,
    });
    Ok(FeatureB {
        schema_version: 1,
        feature_type: "B".into(),
        message_id: contract::derived_message_id(a.message_id, contract::FeatureType::B),
        feature_a_message_id: a.message_id,
        source_message_id: a.source_message_id,
        sensor_id: a.sensor_id.clone(),
        sequence: a.sequence,
        captured_at: a.captured_at,
        processed_at,
        processed_by: processed_by.to_string(),
        features: serde_json::from_value(features).context("building Feature B's features")?,
    })
}

/// `message` (a Feature message as JSON) with the fields of `spec` replaced: `path = value; …`,
/// each path dotted from the message's root (`features.rms_dbfs`), each value JSON (`-60.001`,
/// `null`) or a string in single quotes (`'loud'`: Gherkin's `{string}` holds no double quotes).
/// A path the message does not have is an error (a typo would test nothing).
pub fn with_overrides(mut message: serde_json::Value, spec: &str) -> anyhow::Result<serde_json::Value> {
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (path, value) = part.split_once('=').with_context(|| format!("{part:?} is not `path = json value`"))?;
        let value = value.trim();
        let value: serde_json::Value = match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            Some(text) => text.into(),
            None => serde_json::from_str(value).with_context(|| format!("the value of {part:?} is not JSON"))?,
        };
        let pointer = format!("/{}", path.trim().replace('.', "/"));
        let slot = message.pointer_mut(&pointer).with_context(|| format!("the message has no field {pointer}"))?;
        *slot = value;
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_existing_fields_and_refuse_unknown_ones() {
        let m = serde_json::json!({"schema_version": 1, "features": {"rms_dbfs": -9.0, "peak": 0.5}});
        let got =
            with_overrides(m.clone(), "features.rms_dbfs = -60.001; schema_version = 2; features.peak = 'x'").unwrap();
        assert_eq!(got, serde_json::json!({"schema_version": 2, "features": {"rms_dbfs": -60.001, "peak": "x"}}));
        assert!(with_overrides(m.clone(), "features.rms = 1").unwrap_err().to_string().contains("/features/rms"));
        assert!(with_overrides(m, "features.peak = loud").is_err(), "a value must be JSON");
    }

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

    /// The generator and the oracle agree with the relations the scenarios require of the SUT:
    /// were this to fail, a correct implementation would fail the property scenarios.
    #[test]
    fn generated_chunks_satisfy_the_consistency_relations() {
        use rand::SeedableRng;
        for kind in ChunkKind::ALL {
            let mut rng = rand::rngs::StdRng::seed_from_u64(12);
            let mut worst = 0.0f64;
            for i in 0..25 {
                let g = random_chunk(kind, &mut rng);
                let chunk =
                    AudioChunk::from_samples("s", i, Utc::now(), g.sample_rate, g.channels, g.encoding, &g.samples);
                let decoded = chunk.decode_samples().unwrap();
                let f = reference_features(&decoded, g.channels, g.sample_rate);
                let frames = f.sample_count;
                let v = serde_json::to_value(&f).unwrap();
                let problems = consistency_problems(&v, g.sample_rate, frames, g.band, g.centroid_in_band);
                assert!(problems.is_empty(), "{kind:?} #{i} {}: {problems:?}", g.description);
                assert!(compare_with_reference(&v, &f).is_empty());
                if let (Some((lo, hi)), true) = (g.band, g.centroid_in_band) {
                    let c = f.spectral_centroid_hz;
                    worst = worst.max((lo - c).max(c - hi) / band_margin_hz(g.sample_rate, frames));
                }
                contract::check_outgoing(contract::MessageKind::AudioChunk, &chunk).unwrap();
            }
            eprintln!("{kind:?}: worst centroid excursion {:.2} of the margin", worst);
        }
    }

    #[test]
    fn kinds_are_named_as_scenarios_write_them() {
        for k in ChunkKind::ALL {
            assert_eq!(k.phrase().parse::<ChunkKind>(), Ok(k));
        }
        assert!("a sine".parse::<ChunkKind>().is_err());
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
