//! The paced run's latency waterfall (issue #15): where each chunk's sensor→DB time went, hop by
//! hop, from timestamps the harness takes itself and the ones components report (contract 1.4
//! timing headers, the writer's `received_at` / `inserted_at` columns).
//!
//! Per chunk the later of its two rows is the critical path (A: sensor → Algorithm A → writer;
//! B: … → Algorithm B → writer). Its points are differenced in order, so the segments of one chunk
//! add up to its end-to-end time exactly; a missing point merges its gap into `unattributed`.
//! Percentiles of segments do not add up (no percentile does), so the table also gives each
//! segment's mean over all chunks and over the slowest 1 % (the tail): those sum to the
//! end-to-end mean and tail mean, and the residual row shows what they miss. Pure: no I/O.

use serde::{Deserialize, Serialize};

/// One hop of the critical path, in path order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// The load generator sent later than its schedule (coordinated-omission correction).
    Schedule,
    /// Publish, broker routing, work-queue wait and delivery to Algorithm A.
    ToA,
    /// Algorithm A: decode, DSP, encode, until its publish starts.
    A,
    /// A's publish, the features_a fanout and delivery to Algorithm B.
    ToB,
    /// Algorithm B, until its publish starts.
    B,
    /// The last producer's publish, the fanout and delivery to the DataWriter.
    ToWriter,
    /// In the writer until its INSERT statement started (batching, the previous flush).
    BatchWait,
    /// The INSERT itself (statement start → the row produced).
    Insert,
    /// Commit (WAL flush) until the harness's row poll (every 2 ms) sees it.
    CommitVisible,
    /// Gaps whose start or end the SUT did not report (no timing headers or columns).
    Unattributed,
}

impl Segment {
    /// Every segment, in path order.
    pub const ALL: [Segment; 10] = [
        Segment::Schedule,
        Segment::ToA,
        Segment::A,
        Segment::ToB,
        Segment::B,
        Segment::ToWriter,
        Segment::BatchWait,
        Segment::Insert,
        Segment::CommitVisible,
        Segment::Unattributed,
    ];

    /// Stable key (sla.toml gate `waterfall_<key>_p99`, report JSON).
    pub fn key(self) -> &'static str {
        match self {
            Segment::Schedule => "schedule",
            Segment::ToA => "to_a",
            Segment::A => "algorithm_a",
            Segment::ToB => "to_b",
            Segment::B => "algorithm_b",
            Segment::ToWriter => "to_writer",
            Segment::BatchWait => "batch_wait",
            Segment::Insert => "insert",
            Segment::CommitVisible => "commit_visible",
            Segment::Unattributed => "unattributed",
        }
    }

    /// What it covers, for people.
    pub fn label(self) -> &'static str {
        match self {
            Segment::Schedule => "load generator behind schedule (intended → sent)",
            Segment::ToA => "publish + work queue → Algorithm A received",
            Segment::A => "Algorithm A: decode, DSP, encode",
            Segment::ToB => "A's publish + features_a fanout → Algorithm B received",
            Segment::B => "Algorithm B: classify, encode",
            Segment::ToWriter => "publish + fanout → DataWriter received",
            Segment::BatchWait => "DataWriter: batch wait until its INSERT starts",
            Segment::Insert => "INSERT (statement start → row produced)",
            Segment::CommitVisible => "commit + visible to the observer (2 ms poll)",
            Segment::Unattributed => "unattributed (SUT reported no timestamp)",
        }
    }
}

/// One row's times (ms on the common clock).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowTimes {
    /// The writer received the message (`received_at`).
    pub received: Option<f64>,
    /// Its INSERT statement started (`written_at`: the transaction's `now()`).
    pub written: Option<f64>,
    /// The INSERT produced the row (`inserted_at`, `clock_timestamp()`).
    pub inserted: Option<f64>,
    /// The harness's poll first saw it committed.
    pub seen: Option<f64>,
}

/// One paced chunk's times, in milliseconds on one clock (the harness maps its monotonic clock
/// onto the wall clock once; components and the database report wall-clock times on this host).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChunkTimes {
    /// When the schedule meant to send it.
    pub intended: f64,
    /// When the publisher sent it.
    pub sent: f64,
    /// Algorithm A received the chunk (`x-apq-received-us` of its Feature A).
    pub a_received: Option<f64>,
    /// Algorithm A started publishing the Feature A (`x-apq-sent-us`).
    pub a_sent: Option<f64>,
    /// Algorithm B received the Feature A (`x-apq-received-us` of its Feature B).
    pub b_received: Option<f64>,
    /// Algorithm B started publishing the Feature B.
    pub b_sent: Option<f64>,
    /// The Feature A row.
    pub row_a: RowTimes,
    /// The Feature B row.
    pub row_b: RowTimes,
}

impl ChunkTimes {
    /// (end-to-end ms, ms per segment in [`Segment::ALL`] order), or None until both rows were
    /// seen. The segments add up to the end-to-end time exactly.
    pub fn segments(&self) -> Option<(f64, [f64; 10])> {
        let (seen_a, seen_b) = (self.row_a.seen?, self.row_b.seen?);
        let mut chain: Vec<(Segment, Option<f64>)> =
            vec![(Segment::Schedule, Some(self.sent)), (Segment::ToA, self.a_received), (Segment::A, self.a_sent)];
        let row = if seen_b >= seen_a {
            chain.extend([(Segment::ToB, self.b_received), (Segment::B, self.b_sent)]);
            self.row_b
        } else {
            self.row_a
        };
        chain.extend([
            (Segment::ToWriter, row.received),
            (Segment::BatchWait, row.written),
            (Segment::Insert, row.inserted),
            (Segment::CommitVisible, row.seen),
        ]);
        let mut out = [0.0; 10];
        let (mut prev, mut gap) = (self.intended, false);
        for (segment, point) in chain {
            match point {
                None => gap = true,
                Some(t) => {
                    let slot = if gap { Segment::Unattributed } else { segment };
                    out[slot as usize] += t - prev;
                    (prev, gap) = (t, false);
                }
            }
        }
        Some((prev - self.intended, out))
    }
}

/// Distribution of one segment (ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    /// [`Segment::key`], or `end_to_end`.
    pub key: String,
    /// [`Segment::label`].
    pub label: String,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Mean over all chunks: the means of the segments sum to the end-to-end mean.
    pub mean_ms: f64,
    /// Mean over the tail chunks (the slowest 1 %): sums to the tail's end-to-end mean.
    pub tail_mean_ms: f64,
}

/// The waterfall of one paced run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waterfall {
    /// Chunks paced.
    pub chunks: usize,
    /// Chunks with both rows seen (the ones analysed).
    pub complete: usize,
    /// Chunks whose critical path was the Feature B row.
    pub critical_b: usize,
    /// Chunks in the tail (the slowest 1 %, at least one).
    pub tail_chunks: usize,
    /// Per segment, in path order.
    pub segments: Vec<SegmentStats>,
    /// End to end (intended send → the later row seen).
    pub end_to_end: SegmentStats,
    /// End-to-end mean minus the sum of the segments' means (0 up to rounding).
    pub residual_mean_ms: f64,
    /// The same for the tail.
    pub residual_tail_ms: f64,
    /// Off the sensor→DB path, for reference (e.g. the API's cache update), same statistics.
    pub off_path: Vec<SegmentStats>,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for x in v {
        sum += x;
        n += 1;
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Statistics of `values`; `tail` selects the tail chunks (same indexes).
pub fn stats(key: &str, label: &str, values: &[f64], tail: &[bool]) -> SegmentStats {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    SegmentStats {
        key: key.into(),
        label: label.into(),
        p50_ms: pct(&sorted, 0.50),
        p90_ms: pct(&sorted, 0.90),
        p99_ms: pct(&sorted, 0.99),
        p999_ms: pct(&sorted, 0.999),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        mean_ms: mean(values.iter().copied()),
        tail_mean_ms: mean(values.iter().zip(tail).filter(|(_, t)| **t).map(|(v, _)| *v)),
    }
}

/// Builds the waterfall; `off_path` are (key, label, values) measured beside the path.
pub fn build(chunks: &[ChunkTimes], off_path: &[(&str, &str, Vec<f64>)]) -> Waterfall {
    let rows: Vec<(f64, [f64; 10])> = chunks.iter().filter_map(ChunkTimes::segments).collect();
    let critical_b =
        chunks.iter().filter(|c| matches!((c.row_a.seen, c.row_b.seen), (Some(a), Some(b)) if b >= a)).count();
    let e2e: Vec<f64> = rows.iter().map(|r| r.0).collect();
    // The tail: the slowest 1 % of chunks (at least one), by rank, so ties cannot widen it.
    let mut order: Vec<usize> = (0..e2e.len()).collect();
    order.sort_by(|&x, &y| e2e[y].total_cmp(&e2e[x]));
    let mut tail = vec![false; e2e.len()];
    for &i in order.iter().take(e2e.len().div_ceil(100)) {
        tail[i] = true;
    }
    let segments: Vec<SegmentStats> = Segment::ALL
        .iter()
        .map(|s| {
            let v: Vec<f64> = rows.iter().map(|r| r.1[*s as usize]).collect();
            stats(s.key(), s.label(), &v, &tail)
        })
        .collect();
    let end_to_end = stats("end_to_end", "end to end: intended send → the later row seen", &e2e, &tail);
    let residual_mean_ms = end_to_end.mean_ms - segments.iter().map(|s| s.mean_ms).sum::<f64>();
    let residual_tail_ms = end_to_end.tail_mean_ms - segments.iter().map(|s| s.tail_mean_ms).sum::<f64>();
    let off_path = off_path.iter().map(|(k, l, v)| stats(k, l, v, &vec![false; v.len()])).collect();
    Waterfall {
        chunks: chunks.len(),
        complete: rows.len(),
        critical_b,
        tail_chunks: tail.iter().filter(|t| **t).count(),
        segments,
        end_to_end,
        residual_mean_ms,
        residual_tail_ms,
        off_path,
    }
}

impl Waterfall {
    /// The segment's statistics by key.
    pub fn segment(&self, key: &str) -> Option<&SegmentStats> {
        self.segments.iter().find(|s| s.key == key)
    }

    /// A console table: one line per segment, the end-to-end line and the residual.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "latency waterfall, {} of {} paced chunks complete ({} via Feature B), tail = the {} slowest (1 %):",
            self.complete, self.chunks, self.critical_b, self.tail_chunks
        );
        let _ = writeln!(
            s,
            "  {:<58} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "segment (ms)", "p50", "p90", "p99", "p99.9", "mean", "tail mean"
        );
        let line = |s: &mut String, x: &SegmentStats| {
            let _ = writeln!(
                s,
                "  {:<58} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2}",
                x.label, x.p50_ms, x.p90_ms, x.p99_ms, x.p999_ms, x.mean_ms, x.tail_mean_ms
            );
        };
        for x in &self.segments {
            line(&mut s, x);
        }
        line(&mut s, &self.end_to_end);
        let _ = writeln!(
            s,
            "  {:<58} {:>8} {:>8} {:>8} {:>8} {:>8.3} {:>9.3}",
            "residual (end to end − Σ segments)", "", "", "", "", self.residual_mean_ms, self.residual_tail_ms
        );
        for x in &self.off_path {
            let _ = write!(s, "  off path: ");
            line(&mut s, x);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(received: f64, written: f64, inserted: f64, seen: f64) -> RowTimes {
        RowTimes { received: Some(received), written: Some(written), inserted: Some(inserted), seen: Some(seen) }
    }

    fn chunk(shift: f64) -> ChunkTimes {
        ChunkTimes {
            intended: shift,
            sent: shift + 0.1,
            a_received: Some(shift + 1.0),
            a_sent: Some(shift + 1.5),
            b_received: Some(shift + 2.0),
            b_sent: Some(shift + 2.2),
            row_a: row(shift + 2.0, shift + 2.5, shift + 2.6, shift + 4.0),
            row_b: row(shift + 3.0, shift + 3.5, shift + 3.7, shift + 5.0),
        }
    }

    #[test]
    fn segments_follow_the_later_row_and_add_up() {
        let (e2e, seg) = chunk(10.0).segments().unwrap();
        assert!((e2e - 5.0).abs() < 1e-9);
        assert!((seg.iter().sum::<f64>() - e2e).abs() < 1e-9);
        assert!((seg[Segment::ToB as usize] - 0.5).abs() < 1e-9, "{seg:?}");
        assert!((seg[Segment::BatchWait as usize] - 0.5).abs() < 1e-9);
        assert_eq!(seg[Segment::Unattributed as usize], 0.0);
        // The A row later: B's hops are not on the path.
        let mut c = chunk(0.0);
        c.row_a.seen = Some(9.0);
        c.row_a.inserted = Some(8.0);
        let (e2e, seg) = c.segments().unwrap();
        assert!((e2e - 9.0).abs() < 1e-9);
        assert_eq!(seg[Segment::ToB as usize], 0.0);
        assert!((seg[Segment::ToWriter as usize] - 0.5).abs() < 1e-9, "{seg:?}");
        assert!((seg.iter().sum::<f64>() - e2e).abs() < 1e-9);
    }

    #[test]
    fn a_missing_point_goes_to_unattributed_and_unseen_rows_are_not_analysed() {
        let mut c = chunk(0.0);
        c.b_received = None;
        c.b_sent = None;
        let (e2e, seg) = c.segments().unwrap();
        assert!((seg[Segment::Unattributed as usize] - 1.5).abs() < 1e-9, "{seg:?}");
        assert!((seg.iter().sum::<f64>() - e2e).abs() < 1e-9);
        c.row_b.seen = None;
        assert!(c.segments().is_none());
    }

    #[test]
    fn means_add_up_and_the_tail_is_the_slowest_percent() {
        let mut chunks: Vec<ChunkTimes> = (0..200).map(|i| chunk(i as f64 * 10.0)).collect();
        // Two slow chunks, slow in the writer's batch wait.
        for c in chunks.iter_mut().take(2) {
            c.row_b.written = c.row_b.written.map(|t| t + 20.0);
            c.row_b.inserted = c.row_b.inserted.map(|t| t + 20.0);
            c.row_b.seen = c.row_b.seen.map(|t| t + 20.0);
        }
        let w = build(&chunks, &[("api", "api", vec![1.0, 2.0])]);
        assert_eq!((w.complete, w.tail_chunks, w.critical_b), (200, 2, 200));
        assert!(w.residual_mean_ms.abs() < 1e-9 && w.residual_tail_ms.abs() < 1e-9);
        let wait = w.segment("batch_wait").unwrap();
        assert!((wait.tail_mean_ms - 20.5).abs() < 1e-9, "{wait:?}");
        assert!((w.end_to_end.tail_mean_ms - 25.0).abs() < 1e-9);
        assert_eq!(w.end_to_end.p50_ms, 5.0);
        assert_eq!(w.off_path[0].p99_ms, 2.0);
        assert!(w.table().contains("batch wait"));
    }
}
