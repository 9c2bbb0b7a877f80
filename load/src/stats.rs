//! Latency recording in HdrHistogram: raw values, values corrected for coordinated omission, and
//! a per-second series for the latency-over-time plot. µs inside; summaries in milliseconds.
//!
//! Three ways to correct, by how the sender works:
//! - a paced sender blocked by the measured operation (publish confirms): `record_correct` with
//!   the expected interval between its sends ([`Latency::with_interval`]);
//! - a closed-loop sender whose interval is unknown in advance (goose users without think time):
//!   the same correction after the fact, at the mean latency ([`Latency::new`]);
//! - an open-loop measurement that does not block the sender (publish → DB row): the corrected
//!   value is measured from the *intended* send time ([`Latency::record_pair`]).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Largest recordable latency (1 hour, in µs); larger values saturate.
const MAX_US: u64 = 3_600_000_000;

/// Per-second series keep at most this many seconds (a 10 min run has 600).
const MAX_SERIES_SECS: usize = 7_200;

/// A new histogram for 1 µs … 1 h at 3 significant digits (every recorder's, so histograms of
/// several workers add exactly).
pub fn histogram() -> Histogram<u64> {
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
    /// Expected interval between sends, µs (0 = closed loop: corrected after the fact).
    expected_interval_us: u64,
    /// Whether `corrected` is filled by [`Latency::record_pair`] (intended send times).
    intended_times: bool,
    /// Series origin.
    start: Instant,
    /// Per-second histograms, index = whole seconds since `start`.
    series: Vec<Option<Second>>,
    /// How `corrected` was obtained, when it came from elsewhere ([`Latency::from_histograms`]).
    given_method: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// As measured.
    pub raw: Percentiles,
    /// Corrected for coordinated omission (equal to `raw` without an expected interval).
    pub corrected: Percentiles,
    /// The expected interval used for the correction, in ms.
    pub expected_interval_ms: f64,
    /// How `corrected` was obtained.
    pub co_method: String,
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
    /// A recorder for closed-loop senders: corrected after the fact at the mean latency.
    pub fn new() -> Self {
        Self::with_interval(Duration::ZERO)
    }

    /// A recorder whose corrected values come from intended send times ([`Latency::record_pair`]);
    /// `interval` is only reported.
    pub fn intended(interval: Duration) -> Self {
        Latency { intended_times: true, ..Self::with_interval(interval) }
    }

    /// A recorder correcting for coordinated omission at `expected_interval` between sends.
    pub fn with_interval(expected_interval: Duration) -> Self {
        Latency {
            raw: histogram(),
            corrected: histogram(),
            expected_interval_us: u64::try_from(expected_interval.as_micros()).unwrap_or(MAX_US),
            intended_times: false,
            start: Instant::now(),
            series: Vec::new(),
            given_method: None,
        }
    }

    /// Records one latency observed now.
    pub fn record(&mut self, latency: Duration) {
        self.record_at(latency, Instant::now());
    }

    /// Records one latency observed at `at` (for the per-second series).
    pub fn record_at(&mut self, latency: Duration, at: Instant) {
        let us = to_us(latency);
        self.raw.saturating_record(us);
        if self.expected_interval_us > 0 {
            record_corrected(&mut self.corrected, us, self.expected_interval_us);
        }
        self.series_add(us, at);
    }

    /// Records a latency observed at `at`: as a pair when the intended send time is known and
    /// this recorder measures from intended times, else as one value.
    pub fn record_paced(&mut self, raw: Duration, from_intended: Option<Duration>, at: Instant) {
        match from_intended {
            Some(i) if self.intended_times => self.record_pair(raw, i, at),
            _ => self.record_at(raw, at),
        }
    }

    /// Records a latency measured from the actual send (`raw`) and from the intended send time
    /// (`from_intended`, at least `raw`), observed at `at`.
    pub fn record_pair(&mut self, raw: Duration, from_intended: Duration, at: Instant) {
        let us = to_us(raw);
        self.raw.saturating_record(us);
        self.corrected.saturating_record(to_us(from_intended.max(raw)));
        self.series_add(us, at);
    }

    fn series_add(&mut self, us: u64, at: Instant) {
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

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.raw.len()
    }

    /// A measurement rebuilt from histograms (e.g. the sum of several workers'): `raw` as
    /// measured, `corrected` already corrected for coordinated omission by whoever recorded it.
    /// It has no per-second series.
    pub fn from_histograms(
        raw: Histogram<u64>,
        corrected: Histogram<u64>,
        interval: Duration,
        co_method: &str,
    ) -> Self {
        Latency {
            raw,
            corrected,
            expected_interval_us: u64::try_from(interval.as_micros()).unwrap_or(MAX_US),
            intended_times: true,
            start: Instant::now(),
            series: Vec::new(),
            given_method: Some(co_method.to_string()),
        }
    }

    /// The values as measured.
    pub fn raw_histogram(&self) -> &Histogram<u64> {
        &self.raw
    }

    /// The values corrected for coordinated omission, as [`Latency::summary`] reports them (for a
    /// closed-loop recorder: corrected now, at the mean latency).
    pub fn corrected_histogram(&self) -> Histogram<u64> {
        if self.intended_times || self.expected_interval_us > 0 {
            return self.corrected.clone();
        }
        let mean_us = self.raw.mean().round().max(1.0) as u64;
        if self.raw.is_empty() { self.raw.clone() } else { self.raw.clone_correct(mean_us) }
    }

    /// Raw and corrected percentiles.
    pub fn summary(&self) -> LatencySummary {
        let raw = Percentiles::of(&self.raw);
        if self.intended_times {
            return LatencySummary {
                raw,
                corrected: Percentiles::of(&self.corrected),
                expected_interval_ms: self.expected_interval_us as f64 / 1000.0,
                co_method: self.given_method.clone().unwrap_or_else(|| "measured from the intended send time".into()),
            };
        }
        if self.expected_interval_us > 0 {
            return LatencySummary {
                raw,
                corrected: Percentiles::of(&self.corrected),
                expected_interval_ms: self.expected_interval_us as f64 / 1000.0,
                co_method: "record_correct at the send interval".into(),
            };
        }
        // Closed loop: each answer gates the next send, so the typical latency is the interval.
        let mean_us = self.raw.mean().round().max(1.0) as u64;
        let corrected = if self.raw.is_empty() { self.raw.clone() } else { self.raw.clone_correct(mean_us) };
        LatencySummary {
            raw,
            corrected: Percentiles::of(&corrected),
            expected_interval_ms: mean_us as f64 / 1000.0,
            co_method: "record_correct after the fact at the mean latency (closed loop)".into(),
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

/// Whole microseconds, within the histogram's range: the value a recorder stores.
pub fn to_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(MAX_US).clamp(1, MAX_US)
}

/// Records `us` into `h`, back-filling the values a sender that waited for each answer
/// would have seen had it sent every `interval_us` (HdrHistogram's correction).
pub fn record_corrected(h: &mut Histogram<u64>, us: u64, interval_us: u64) {
    // `record_correct` fails only beyond the histogram's range; saturate instead.
    if interval_us == 0 || h.record_correct(us, interval_us).is_err() {
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
    fn closed_loop_is_corrected_at_the_mean_and_open_loop_from_intended_times() {
        let mut closed = Latency::new();
        for _ in 0..99 {
            closed.record(Duration::from_millis(1));
        }
        closed.record(Duration::from_millis(1000));
        let s = closed.summary();
        assert!(s.corrected.count > s.raw.count && s.corrected.p99_ms > s.raw.p99_ms, "{s:?}");
        let mut open = Latency::intended(Duration::from_millis(10));
        open.record_pair(Duration::from_millis(5), Duration::from_millis(40), Instant::now());
        let s = open.summary();
        assert!((s.raw.max_ms - 5.0).abs() < 0.1 && (s.corrected.max_ms - 40.0).abs() < 0.1, "{s:?}");
        assert!(s.co_method.contains("intended"));
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
        assert_eq!(l.count(), 2);
    }
}
