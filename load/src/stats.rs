//! Latency recording in HdrHistogram: raw values, values corrected for coordinated omission
//! (`record_correct` with the expected interval between sends), and a per-second series for the
//! latency-over-time plot. All values are microseconds; summaries are in milliseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Largest recordable latency (1 hour, in µs); larger values saturate.
const MAX_US: u64 = 3_600_000_000;

/// Per-second series keep at most this many seconds (a 10 min run has 600).
const MAX_SERIES_SECS: usize = 7_200;

/// A new histogram for 1 µs … 1 h at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid")
}

/// One second of the latency-over-time series.
#[derive(Debug, Clone)]
struct Second {
    /// Values recorded in this second (2 significant digits: enough for a plot).
    hist: Histogram<u64>,
}

/// Latencies of one measurement (e.g. `latest` requests, or publish → DB row).
#[derive(Debug, Clone)]
pub struct Latency {
    /// Values as measured.
    raw: Histogram<u64>,
    /// Values plus the synthetic ones coordinated omission hid.
    corrected: Histogram<u64>,
    /// Expected interval between sends, µs (0 = no correction: corrected == raw).
    expected_interval_us: u64,
    /// Series origin.
    start: Instant,
    /// Per-second histograms, index = whole seconds since `start`.
    series: Vec<Option<Second>>,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Raw and CO-corrected percentiles of a [`Latency`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// As measured.
    pub raw: Percentiles,
    /// Corrected for coordinated omission (equal to `raw` without an expected interval).
    pub corrected: Percentiles,
    /// The expected interval used for the correction, in ms (0 = none).
    pub expected_interval_ms: f64,
}

/// One point of the latency-over-time plot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Seconds since the measurement started.
    pub t: u32,
    /// Values recorded in that second.
    pub count: u64,
    /// Median of that second, ms.
    pub p50_ms: f64,
    /// 99th percentile of that second, ms.
    pub p99_ms: f64,
    /// Largest value of that second, ms.
    pub max_ms: f64,
}

impl Latency {
    /// A recorder without CO correction (closed-loop clients: the interval is unknown).
    pub fn new() -> Self {
        Self::with_interval(Duration::ZERO)
    }

    /// A recorder correcting for coordinated omission at `expected_interval` between sends.
    pub fn with_interval(expected_interval: Duration) -> Self {
        Latency {
            raw: histogram(),
            corrected: histogram(),
            expected_interval_us: u64::try_from(expected_interval.as_micros()).unwrap_or(MAX_US),
            start: Instant::now(),
            series: Vec::new(),
        }
    }

    /// Records one latency observed now.
    pub fn record(&mut self, latency: Duration) {
        self.record_at(latency, Instant::now());
    }

    /// Records one latency observed at `at` (for the per-second series).
    pub fn record_at(&mut self, latency: Duration, at: Instant) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_US).clamp(1, MAX_US);
        self.raw.saturating_record(us);
        record_corrected(&mut self.corrected, us, self.expected_interval_us);
        let sec = at.saturating_duration_since(self.start).as_secs() as usize;
        if sec < MAX_SERIES_SECS {
            if self.series.len() <= sec {
                self.series.resize(sec + 1, None);
            }
            let slot = self.series[sec].get_or_insert_with(|| Second {
                hist: Histogram::new_with_bounds(1, MAX_US, 2).expect("static histogram bounds are valid"),
            });
            slot.hist.saturating_record(us);
        }
    }

    /// Adds another recorder's values (same interval assumed), e.g. per-user recorders.
    pub fn merge(&mut self, other: &Latency) {
        // Both histograms share bounds, so `add` cannot fail.
        let _ = self.raw.add(&other.raw);
        let _ = self.corrected.add(&other.corrected);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.raw.len()
    }

    /// Raw and corrected percentiles.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            raw: Percentiles::of(&self.raw),
            corrected: Percentiles::of(&self.corrected),
            expected_interval_ms: self.expected_interval_us as f64 / 1000.0,
        }
    }

    /// The per-second series (seconds without values are left out).
    pub fn series(&self) -> Vec<SeriesPoint> {
        self.series
            .iter()
            .enumerate()
            .filter_map(|(t, s)| {
                let h = &s.as_ref()?.hist;
                Some(SeriesPoint {
                    t: t as u32,
                    count: h.len(),
                    p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                    p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                    max_ms: h.max() as f64 / 1000.0,
                })
            })
            .collect()
    }

    /// Histogram bars for a plot: (upper edge ms, count) over log-spaced buckets.
    pub fn distribution(&self) -> Vec<(f64, u64)> {
        if self.raw.is_empty() {
            return Vec::new();
        }
        // 4 buckets per power of two: fine enough to see modes, few enough to draw.
        self.raw
            .iter_log(self.raw.min().max(1), 2f64.powf(0.25))
            .map(|v| (v.value_iterated_to() as f64 / 1000.0, v.count_since_last_iteration()))
            .collect()
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Records `us` into `h`, back-filling the values a sender that waited for each answer
/// would have seen had it sent every `interval_us` (HdrHistogram's correction).
pub fn record_corrected(h: &mut Histogram<u64>, us: u64, interval_us: u64) {
    if interval_us == 0 {
        h.saturating_record(us);
    } else if h.record_correct(us, interval_us).is_err() {
        h.saturating_record(us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    // A 1 s stall at a 100 ms cadence hides 9 sends: 900, 800, …, 100 ms are back-filled.
    #[case(1_000_000, 100_000, 10)]
    // Faster than the interval: nothing to correct.
    #[case(50_000, 100_000, 1)]
    // No interval: no correction.
    #[case(1_000_000, 0, 1)]
    fn co_correction_back_fills_hidden_sends(#[case] us: u64, #[case] interval: u64, #[case] count: u64) {
        let mut h = histogram();
        record_corrected(&mut h, us, interval);
        assert_eq!(h.len(), count);
        assert_eq!(h.max(), h.highest_equivalent(us));
    }

    #[test]
    fn corrected_percentiles_exceed_raw_under_a_stall() {
        let mut l = Latency::with_interval(Duration::from_millis(10));
        for _ in 0..990 {
            l.record(Duration::from_millis(1));
        }
        for _ in 0..10 {
            l.record(Duration::from_millis(500));
        }
        let s = l.summary();
        assert_eq!(s.raw.count, 1000);
        assert!(s.raw.p90_ms < 1.1, "{s:?}");
        // 10 stalls × 49 hidden sends: the corrected p90 is well inside the stall.
        assert!(s.corrected.count > 1400 && s.corrected.p90_ms > 100.0, "{s:?}");
        assert!((s.raw.max_ms - 500.0).abs() < 1.0);
    }

    #[test]
    fn series_and_distribution_cover_the_values() {
        let mut l = Latency::new();
        let t0 = l.start;
        l.record_at(Duration::from_millis(2), t0);
        l.record_at(Duration::from_millis(4), t0 + Duration::from_millis(2500));
        let s = l.series();
        assert_eq!(s.iter().map(|p| p.t).collect::<Vec<_>>(), vec![0, 2]);
        let total: u64 = l.distribution().iter().map(|(_, c)| c).sum();
        assert_eq!(total, 2);
        let mut m = Latency::new();
        m.merge(&l);
        assert_eq!(m.count(), 2);
    }
}
