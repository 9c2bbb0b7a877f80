//! Trend: deltas of each gate's observation against the previous run's `sla-summary.json`,
//! flagging regressions (pure but for finding the previous run's file).

use crate::sla::{GateResult, Verdict};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A change worse than this fraction of the previous value counts as a regression.
pub const REGRESSION_FRACTION: f64 = 0.10;

/// One gate compared with the previous run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The gate.
    pub gate: String,
    /// The previous run's observation.
    pub previous: Option<f64>,
    /// This run's observation.
    pub current: Option<f64>,
    /// `current - previous` when both exist.
    pub change: Option<f64>,
    /// Relative change in percent of `previous` (positive = larger).
    pub change_pct: Option<f64>,
    /// Worse by more than [`REGRESSION_FRACTION`], or passed before and fails now.
    pub regression: bool,
    /// Better by more than [`REGRESSION_FRACTION`].
    pub improvement: bool,
}

/// The gates of a previous summary (only what the trend needs).
#[derive(Debug, Clone, Deserialize)]
pub struct PreviousSummary {
    /// When that run started.
    #[serde(default)]
    pub started_at: String,
    /// Its workload (only runs of the same workload are compared).
    #[serde(default)]
    pub workload: String,
    /// Its SLA profile (only runs of the same profile are compared).
    #[serde(default)]
    pub sla_profile: String,
    /// Its command line (secrets masked), for the load shape.
    #[serde(default)]
    pub command: Vec<String>,
    /// Its gates.
    pub gates: Vec<GateResult>,
}

/// Compares `current` gates with `previous` by gate name.
pub fn deltas(previous: &[GateResult], current: &[GateResult]) -> Vec<Delta> {
    current
        .iter()
        .map(|cur| {
            let prev = previous.iter().find(|p| p.name == cur.name);
            let previous_obs = prev.and_then(|p| p.observed);
            let (change, change_pct) = match (previous_obs, cur.observed) {
                (Some(p), Some(c)) => {
                    let pct = if p.abs() > f64::EPSILON { Some((c - p) / p.abs() * 100.0) } else { None };
                    (Some(c - p), pct)
                }
                _ => (None, None),
            };
            let higher_is_better = cur.threshold.op.higher_is_better();
            // Worse means smaller for throughput-like gates and larger for latency/loss gates.
            let worse_by = |frac: f64| match (previous_obs, cur.observed) {
                (Some(p), Some(c)) if higher_is_better => c < p - frac * p.abs(),
                (Some(p), Some(c)) => c > p + frac * p.abs().max(f64::EPSILON),
                _ => false,
            };
            let better_by = |frac: f64| match (previous_obs, cur.observed) {
                (Some(p), Some(c)) if higher_is_better => c > p + frac * p.abs(),
                (Some(p), Some(c)) => c < p - frac * p.abs(),
                _ => false,
            };
            let newly_failing = prev.is_some_and(|p| p.verdict == Verdict::Pass) && cur.verdict == Verdict::Fail;
            Delta {
                gate: cur.name.clone(),
                previous: previous_obs,
                current: cur.observed,
                change,
                change_pct,
                regression: newly_failing || worse_by(REGRESSION_FRACTION),
                improvement: better_by(REGRESSION_FRACTION),
            }
        })
        .collect()
}

/// The newest readable `sla-summary.json` under `root` of the same `workload` and SLA `profile`,
/// other than the one in `exclude` (run folders are named by UTC timestamp, so lexical order is
/// time order).
pub fn previous_summary(
    root: &Path,
    exclude: &Path,
    workload: &str,
    profile: &str,
) -> Option<(PathBuf, PreviousSummary)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p != exclude)
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find_map(|d| {
        let path = d.join("sla-summary.json");
        let prev: PreviousSummary = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        (prev.workload == workload && (prev.sla_profile.is_empty() || prev.sla_profile == profile))
            .then_some((path, prev))
    })
}

/// The options that shape the load (users, rates, duration, gates, mix, spec filters), with
/// their values, from a command line.
fn shape(command: &[String]) -> Vec<String> {
    const SHAPING: [&str; 16] = [
        "-u",
        "--users",
        "-r",
        "--hatch-rate",
        "--increase-rate",
        "-t",
        "--run-time",
        "--gates",
        "--throttle-requests",
        "--test-plan",
        "--iterations",
        "--mix",
        "--total-users",
        "--total-rate",
        "--window",
        "--tags",
    ];
    let mut out = Vec::new();
    let mut it = command.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let (flag, value) = match a.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        if SHAPING.contains(&flag.as_str()) {
            let value = value.or_else(|| it.next().cloned()).unwrap_or_default();
            out.push(format!("{flag} {value}"));
        } else if !a.starts_with('-') && matches!(a.as_str(), "spec" | "merge" | "worker" | "scale" | "bench") {
            out.push(a.clone());
        }
    }
    out.sort();
    out
}

/// A visible warning when the previous run had another load shape (its deltas then compare
/// different experiments), or `None` when the shapes agree.
pub fn shape_warning(previous: &[String], current: &[String]) -> Option<String> {
    if previous.is_empty() {
        return Some("the previous run recorded no command line; its load shape is unknown".into());
    }
    let (p, c) = (shape(previous), shape(current));
    (p != c).then(|| {
        format!(
            "the previous run had another load shape ({}) than this one ({}); its deltas compare different experiments",
            if p.is_empty() { "defaults".into() } else { p.join(" ") },
            if c.is_empty() { "defaults".into() } else { c.join(" ") }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sla::{GateResult, Threshold};
    use rstest::rstest;

    fn gate(name: &str, th: &str, observed: Option<f64>) -> GateResult {
        GateResult::judge(name, name, th.parse::<Threshold>().unwrap(), observed, "")
    }

    #[rstest]
    // Latency up 20%: regression.
    #[case("<= 500ms", 10.0, 12.0, true, false)]
    // Latency up 5%: noise.
    #[case("<= 500ms", 10.0, 10.5, false, false)]
    // Latency down 50%: improvement.
    #[case("<= 500ms", 10.0, 5.0, false, true)]
    // Throughput down 20%: regression.
    #[case(">= 100/s", 500.0, 400.0, true, false)]
    // Throughput up 20%: improvement.
    #[case(">= 100/s", 500.0, 600.0, false, true)]
    // Loss from 0 to 1: regression (and a newly failing gate).
    #[case("== 0", 0.0, 1.0, true, false)]
    fn flags_regressions_by_direction(
        #[case] th: &str,
        #[case] prev: f64,
        #[case] cur: f64,
        #[case] regression: bool,
        #[case] improvement: bool,
    ) {
        let d = deltas(&[gate("g", th, Some(prev))], &[gate("g", th, Some(cur))]);
        assert_eq!((d[0].regression, d[0].improvement), (regression, improvement), "{d:?}");
        assert_eq!(d[0].change, Some(cur - prev));
    }

    #[test]
    fn another_load_shape_is_a_visible_warning() {
        let cmd = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let a = cmd("load --host http://h:1 --token *** -u 10 -r 10 -t 20s");
        let b = cmd("load --host http://other:2 --token *** -u 10 -r 10 -t 20s");
        let c = cmd("load --host http://h:1 --token *** -u 20 -r 10 --run-time=60s");
        assert_eq!(shape_warning(&a, &b), None, "the host and token do not shape the load");
        let w = shape_warning(&a, &c).unwrap();
        assert!(w.contains("-u 10") && w.contains("-u 20") && w.contains("--run-time 60s"), "{w}");
        assert!(shape_warning(&[], &a).is_some());
    }

    #[test]
    fn new_gates_have_no_delta() {
        let d = deltas(&[], &[gate("new", "<= 1ms", Some(0.5))]);
        assert_eq!((d[0].previous, d[0].change, d[0].regression), (None, None, false));
    }

    #[test]
    fn newly_failing_is_a_regression_even_when_the_value_barely_moved() {
        let d = deltas(&[gate("g", "<= 10ms", Some(9.99))], &[gate("g", "<= 10ms", Some(10.01))]);
        assert!(d[0].regression);
    }

    #[test]
    fn finds_the_newest_previous_run_of_the_same_workload() {
        let root = std::env::temp_dir().join(format!("load-trend-{}", std::process::id()));
        let summary = |w: &str| format!(r#"{{"started_at": "t", "workload": "{w}", "gates": []}}"#);
        for (d, w) in
            [("20240101T000000Z", Some("full")), ("20240102T000000Z", Some("smoke")), ("20240103T000000Z", None)]
        {
            std::fs::create_dir_all(root.join(d)).unwrap();
            if let Some(w) = w {
                std::fs::write(root.join(d).join("sla-summary.json"), summary(w)).unwrap();
            }
        }
        let this = root.join("20240104T000000Z");
        let (path, _) = previous_summary(&root, &this, "full", "floor").unwrap();
        assert!(path.ends_with("20240101T000000Z/sla-summary.json"), "{}", path.display());
        let (path, _) = previous_summary(&root, &this, "smoke", "floor").unwrap();
        assert!(path.ends_with("20240102T000000Z/sla-summary.json"), "{}", path.display());
        assert!(previous_summary(&root, &this, "huge", "floor").is_none());
        std::fs::write(
            root.join("20240101T000000Z/sla-summary.json"),
            r#"{"started_at": "t", "workload": "full", "sla_profile": "target", "gates": []}"#,
        )
        .unwrap();
        assert!(previous_summary(&root, &this, "full", "floor").is_none(), "another SLA profile is not compared");
        std::fs::remove_dir_all(&root).ok();
    }
}
