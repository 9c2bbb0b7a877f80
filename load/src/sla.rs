//! SLA thresholds and gate evaluation (pure: no I/O but reading the TOML text).
//!
//! `load/sla.toml` holds two profiles: `floor` (the original suite's values, which no deployment
//! may be worse than) and `target` (ours). `target` inherits every key it does not set from
//! `floor`. A threshold is text such as `<= 500ms`, `>= 100/s`, `== 0` or `<= 1%`.

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Comparison of a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
}

impl Op {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        }
    }

    /// Whether a larger observed value is better (throughput) rather than worse (latency, loss).
    pub fn higher_is_better(self) -> bool {
        matches!(self, Op::Gt | Op::Ge)
    }
}

/// The unit class of a threshold's value; observed values use the same canonical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// A duration, in milliseconds (written `us`, `ms` or `s`).
    Ms,
    /// A rate per second (written `/s`).
    PerSec,
    /// A percentage (written `%`).
    Percent,
    /// A plain count or ratio (no suffix).
    Count,
}

impl Unit {
    /// Suffix used when printing a value of this unit.
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Ms => " ms",
            Unit::PerSec => "/s",
            Unit::Percent => "%",
            Unit::Count => "",
        }
    }
}

/// One parsed threshold, e.g. `<= 500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// The comparison.
    pub op: Op,
    /// The limit, in the canonical unit of `unit`.
    pub value: f64,
    /// What the limit measures.
    pub unit: Unit,
}

impl Threshold {
    /// Whether `observed` (canonical unit) meets the threshold. NaN never does.
    pub fn passes(&self, observed: f64) -> bool {
        if observed.is_nan() {
            return false;
        }
        match self.op {
            Op::Lt => observed < self.value,
            Op::Le => observed <= self.value,
            Op::Gt => observed > self.value,
            Op::Ge => observed >= self.value,
            Op::Eq => (observed - self.value).abs() <= f64::EPSILON * self.value.abs().max(1.0),
        }
    }

    /// How much of the allowance an observation uses, in percent, for `<`/`<=` limits
    /// (e.g. error rate 0.2% against `<= 1%` uses 20% of the budget). `None` otherwise.
    pub fn budget_used_pct(&self, observed: f64) -> Option<f64> {
        match self.op {
            Op::Lt | Op::Le if self.value > 0.0 => Some(observed / self.value * 100.0),
            _ => None,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}{}", self.op.symbol(), fmt_num(self.value), self.unit.suffix())
    }
}

/// A number without a pointless fraction: `500`, `0.5`, `12.35`.
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        return "n/a".into();
    }
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}").trim_end_matches('0').to_string()
    }
}

impl FromStr for Threshold {
    type Err = anyhow::Error;

    /// Parses `<op> <number>[unit]`; spaces are optional.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let t = s.trim();
        // Two-character operators first so `<=` is not read as `<` followed by `=`.
        let (op, rest) = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("<", Op::Lt), (">", Op::Gt)]
            .iter()
            .find_map(|(sym, op)| t.strip_prefix(sym).map(|r| (*op, r.trim())))
            .with_context(|| format!("threshold {s:?} must start with <, <=, >, >= or =="))?;
        let split =
            rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e')).unwrap_or(rest.len());
        let (num, unit) = rest.split_at(split);
        let num: f64 = num.trim().parse().with_context(|| format!("threshold {s:?}: {num:?} is not a number"))?;
        if !num.is_finite() || num < 0.0 {
            bail!("threshold {s:?}: the limit must be a finite, non-negative number");
        }
        let (value, unit) = match unit.trim() {
            "us" | "µs" => (num / 1000.0, Unit::Ms),
            "ms" => (num, Unit::Ms),
            "s" => (num * 1000.0, Unit::Ms),
            "/s" => (num, Unit::PerSec),
            "%" => (num, Unit::Percent),
            "" => (num, Unit::Count),
            other => bail!("threshold {s:?}: unknown unit {other:?} (use us, ms, s, /s, % or none)"),
        };
        let th = Threshold { op, value, unit };
        // A rule that can never pass is a typo, not a gate.
        if (op == Op::Lt && value == 0.0) || (unit == Unit::Percent && op == Op::Gt && value >= 100.0) {
            bail!("threshold {s:?} can never pass");
        }
        Ok(th)
    }
}

/// Which column of `sla.toml` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The original suite's values: the floor no environment may fall below.
    Floor,
    /// Our targets (inherits what it does not set from `floor`).
    Target,
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Floor => "floor",
            Profile::Target => "target",
        })
    }
}

/// Workload sizes for the pipeline gates (counts and rates, not limits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Chunks queued before one Algorithm A instance starts draining them.
    pub drain_chunks: u64,
    /// Chunks published per competing-consumer run (2 and 3 instances).
    pub competing_chunks: u64,
    /// Unique Feature A messages queued for the DataWriter (each published twice).
    pub writer_features: u64,
    /// Chunks of the burst (published as fast as confirms allow).
    pub burst_chunks: u64,
    /// Goose users publishing chunks (one AMQP channel and one sensor each).
    pub publishers: usize,
    /// Seconds of paced publishing for the latency gate.
    pub latency_secs: f64,
    /// Paced rate for the latency gate: chunks/s, or 0 for half the measured burst throughput.
    pub latency_rate: f64,
    /// Requests of the sequential REST probe.
    pub rest_sequential_requests: u64,
    /// Requests of the rate-limiter probe (one token, concurrently).
    pub rest_limiter_requests: u64,
    /// Longest wait for a phase to converge, in seconds.
    pub phase_timeout_secs: f64,
}

/// The whole `sla.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlaFile {
    /// The original suite's thresholds.
    floor: BTreeMap<String, String>,
    /// Our thresholds (override `floor`).
    target: BTreeMap<String, String>,
    /// Named workload sizes (`full`, `smoke`, …).
    workload: BTreeMap<String, Workload>,
}

/// Thresholds of one profile and a chosen workload.
#[derive(Debug, Clone)]
pub struct Sla {
    /// The profile the thresholds come from.
    pub profile: Profile,
    /// Gate key → threshold.
    pub thresholds: BTreeMap<String, Threshold>,
    /// Name of the workload in use.
    pub workload_name: String,
    /// The workload sizes.
    pub workload: Workload,
}

impl Sla {
    /// Parses `text` (the contents of `sla.toml`), picks `profile` and `workload`, then applies
    /// `overrides` (`key=threshold`, e.g. from `--set rest_p99="<=1us"`).
    pub fn parse(text: &str, profile: Profile, workload: &str, overrides: &[String]) -> anyhow::Result<Self> {
        let file: SlaFile = toml::from_str(text).context("parsing sla.toml")?;
        let mut raw = file.floor.clone();
        if profile == Profile::Target {
            for (k, v) in &file.target {
                if !file.floor.contains_key(k) {
                    bail!("sla.toml: [target] key {k:?} has no [floor] value (every gate needs a floor)");
                }
                raw.insert(k.clone(), v.clone());
            }
        }
        for o in overrides {
            let (k, v) = o.split_once('=').with_context(|| format!("--set {o:?} is not KEY=THRESHOLD"))?;
            let k = k.trim();
            if !raw.contains_key(k) {
                bail!(
                    "--set {o:?}: unknown gate key {k:?}; known: {}",
                    raw.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            raw.insert(k.to_string(), v.trim().to_string());
        }
        let mut thresholds = BTreeMap::new();
        for (k, v) in raw {
            let th: Threshold = v.parse().with_context(|| format!("sla.toml key {k:?}"))?;
            thresholds.insert(k, th);
        }
        let wl = file
            .workload
            .get(workload)
            .with_context(|| {
                format!(
                    "sla.toml has no [workload.{workload}]; known: {}",
                    file.workload.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?
            .clone();
        Ok(Sla { profile, thresholds, workload_name: workload.to_string(), workload: wl })
    }

    /// The threshold of a gate key; an unknown key is a programming error caught by tests.
    pub fn get(&self, key: &str) -> anyhow::Result<Threshold> {
        self.thresholds.get(key).copied().with_context(|| format!("sla.toml has no threshold {key:?}"))
    }
}

/// Outcome of one gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The observation meets the threshold.
    Pass,
    /// It does not (or there was nothing to observe).
    Fail,
    /// The gate could not apply here (e.g. the rate limiter never engaged); not a failure.
    Skipped,
}

/// One gate's result, as reports show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// Stable gate name, e.g. `rest_p99_concurrent`.
    pub name: String,
    /// The `sla.toml` key the threshold came from.
    pub key: String,
    /// The threshold applied.
    pub threshold: Threshold,
    /// The observation in the threshold's unit; `None` when nothing was observed.
    pub observed: Option<f64>,
    /// Pass, fail or skipped.
    pub verdict: Verdict,
    /// Percent of the allowance used (for upper limits).
    pub budget_used_pct: Option<f64>,
    /// One line of context: counts, what was measured, why it failed.
    pub detail: String,
    /// Seconds the gate's phase took.
    pub elapsed_secs: f64,
}

impl GateResult {
    /// Judges `observed` against `threshold`; no observation fails.
    pub fn judge(
        name: &str,
        key: &str,
        threshold: Threshold,
        observed: Option<f64>,
        detail: impl Into<String>,
    ) -> Self {
        let verdict = match observed {
            Some(v) if threshold.passes(v) => Verdict::Pass,
            _ => Verdict::Fail,
        };
        GateResult {
            name: name.to_string(),
            key: key.to_string(),
            threshold,
            observed,
            verdict,
            budget_used_pct: observed.and_then(|v| threshold.budget_used_pct(v)),
            detail: detail.into(),
            elapsed_secs: 0.0,
        }
    }

    /// A gate that does not apply, with the reason.
    pub fn skipped(name: &str, key: &str, threshold: Threshold, reason: impl Into<String>) -> Self {
        GateResult {
            name: name.to_string(),
            key: key.to_string(),
            threshold,
            observed: None,
            verdict: Verdict::Skipped,
            budget_used_pct: None,
            detail: reason.into(),
            elapsed_secs: 0.0,
        }
    }

    /// The same result with the phase's duration.
    pub fn took(mut self, secs: f64) -> Self {
        self.elapsed_secs = secs;
        self
    }

    /// `observed 3.2 ms vs <= 500 ms`.
    pub fn observed_text(&self) -> String {
        match self.observed {
            Some(v) => format!("{}{}", fmt_num(v), self.threshold.unit.suffix()),
            None => "no samples".into(),
        }
    }
}

/// Pass/fail counts over gates (skipped gates count as neither).
pub fn tally(gates: &[GateResult]) -> (usize, usize) {
    let passed = gates.iter().filter(|g| g.verdict == Verdict::Pass).count();
    let failed = gates.iter().filter(|g| g.verdict == Verdict::Fail).count();
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("<= 500ms", Op::Le, 500.0, Unit::Ms)]
    #[case("<500 ms", Op::Lt, 500.0, Unit::Ms)]
    #[case("<= 2s", Op::Le, 2000.0, Unit::Ms)]
    #[case("<= 250us", Op::Le, 0.25, Unit::Ms)]
    #[case(">= 100/s", Op::Ge, 100.0, Unit::PerSec)]
    #[case("== 0", Op::Eq, 0.0, Unit::Count)]
    #[case("<= 1%", Op::Le, 1.0, Unit::Percent)]
    #[case(">0.6", Op::Gt, 0.6, Unit::Count)]
    fn parses_thresholds(#[case] text: &str, #[case] op: Op, #[case] value: f64, #[case] unit: Unit) {
        let t: Threshold = text.parse().unwrap();
        assert_eq!((t.op, t.unit), (op, unit));
        assert!((t.value - value).abs() < 1e-12, "{t:?}");
    }

    #[rstest]
    #[case("500ms")]
    #[case("<= fast")]
    #[case("<= 5 parsecs")]
    #[case("< 0")]
    #[case("> 100%")]
    #[case("<= -1ms")]
    fn rejects_bad_thresholds(#[case] text: &str) {
        assert!(text.parse::<Threshold>().is_err(), "{text}");
    }

    #[rstest]
    #[case("<= 500ms", 500.0, true)]
    #[case("<= 500ms", 500.1, false)]
    #[case("< 500ms", 500.0, false)]
    #[case(">= 100/s", 99.9, false)]
    #[case(">= 100/s", 100.0, true)]
    #[case("== 0", 0.0, true)]
    #[case("== 0", 1.0, false)]
    #[case("<= 1%", f64::NAN, false)]
    fn judges_observations(#[case] text: &str, #[case] observed: f64, #[case] pass: bool) {
        let t: Threshold = text.parse().unwrap();
        assert_eq!(t.passes(observed), pass);
        let g = GateResult::judge("g", "k", t, Some(observed), "");
        assert_eq!(g.verdict == Verdict::Pass, pass);
    }

    #[test]
    fn no_observation_fails_and_skips_are_not_counted() {
        let t: Threshold = "<= 1ms".parse().unwrap();
        let gates = vec![
            GateResult::judge("a", "k", t, None, ""),
            GateResult::judge("b", "k", t, Some(0.5), ""),
            GateResult::skipped("c", "k", t, "n/a"),
        ];
        assert_eq!(gates[0].verdict, Verdict::Fail);
        assert_eq!(tally(&gates), (1, 1));
    }

    #[test]
    fn budget_is_relative_to_upper_limits_only() {
        let t: Threshold = "<= 1%".parse().unwrap();
        assert_eq!(t.budget_used_pct(0.25), Some(25.0));
        assert_eq!(">= 1/s".parse::<Threshold>().unwrap().budget_used_pct(5.0), None);
    }

    const TOML: &str = r#"
[floor]
rest_p99 = "<= 500ms"
lost = "== 0"
[target]
rest_p99 = "<= 5ms"
[workload.smoke]
drain_chunks = 10
competing_chunks = 10
writer_features = 10
burst_chunks = 10
publishers = 2
latency_secs = 1
latency_rate = 0
rest_sequential_requests = 10
rest_limiter_requests = 10
phase_timeout_secs = 5
"#;

    #[test]
    fn target_inherits_floor_and_overrides_apply() {
        let floor = Sla::parse(TOML, Profile::Floor, "smoke", &[]).unwrap();
        assert_eq!(floor.get("rest_p99").unwrap().value, 500.0);
        let target = Sla::parse(TOML, Profile::Target, "smoke", &[]).unwrap();
        assert_eq!(target.get("rest_p99").unwrap().value, 5.0);
        assert_eq!(target.get("lost").unwrap().op, Op::Eq);
        let tiny = Sla::parse(TOML, Profile::Floor, "smoke", &["rest_p99=<=1us".into()]).unwrap();
        assert_eq!(tiny.get("rest_p99").unwrap().value, 0.001);
    }

    #[rstest]
    #[case(&["nope=<=1ms"], "unknown gate key")]
    #[case(&["rest_p99"], "KEY=THRESHOLD")]
    fn bad_overrides_are_named(#[case] overrides: &[&str], #[case] msg: &str) {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let err = Sla::parse(TOML, Profile::Floor, "smoke", &o).unwrap_err();
        assert!(format!("{err:#}").contains(msg), "{err:#}");
    }

    #[test]
    fn unknown_workload_is_named() {
        let err = Sla::parse(TOML, Profile::Floor, "huge", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("huge"), "{err:#}");
    }

    #[test]
    fn the_shipped_sla_file_parses_in_both_profiles() {
        let text = include_str!("../sla.toml");
        for p in [Profile::Floor, Profile::Target] {
            for w in ["full", "smoke"] {
                Sla::parse(text, p, w, &[]).unwrap();
            }
        }
    }
}
