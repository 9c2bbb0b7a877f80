//! The record of one behaviour run, independent of the runner that produced it: features →
//! scenarios → steps with status, timings, errors and links to their evidence. The JUnit
//! ([`super::junit`]) and HTML ([`super::html`]) reports are rendered from it, and it is written
//! as `run.json` beside them.

use serde::{Deserialize, Serialize};

/// How a step or scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    /// Not run (an earlier step failed) or skipped.
    #[default]
    Skipped,
}

/// One run of the behaviour suite.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RunReport {
    pub run_id: String,
    /// `local` or `external`.
    pub profile: String,
    /// RFC 3339.
    pub started_at: String,
    pub wall_secs: f64,
    /// Set when the run could not start (the environment failed); then `features` is empty.
    pub error: Option<String>,
    pub features: Vec<FeatureReport>,
    /// Scenarios filtered out, with why (`3 tagged @needs-sut-control: …`).
    pub filtered: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FeatureReport {
    pub name: String,
    /// The feature file, relative to the checkout (`features/rest_api.feature`).
    pub file: String,
    pub tags: Vec<String>,
    pub scenarios: Vec<ScenarioReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ScenarioReport {
    pub name: String,
    pub line: usize,
    /// The feature's tags and the scenario's own, without `@`.
    pub tags: Vec<String>,
    pub status: Status,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub duration_ms: u64,
    pub steps: Vec<StepReport>,
    /// Why it failed (the failed step's error, or the after-hook's).
    pub error: Option<String>,
    /// The scenario's namespace (sensor-id prefix).
    pub namespace: Option<String>,
    /// Failure bundle folder and lineage file, relative to the run's report folder.
    pub bundle: Option<String>,
    pub lineage: Option<String>,
    /// Per-hop times of its chunks: what each measures, chunks, p50 and max in ms.
    pub hops: Vec<Hop>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Hop {
    pub label: String,
    pub chunks: usize,
    pub p50_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StepReport {
    /// `Given`, `When`, `Then`, `And`, `But` (as written).
    pub keyword: String,
    pub text: String,
    pub line: usize,
    pub status: Status,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub error: Option<String>,
    /// For a step no definition matches: the nearest vocabulary steps and parameter values.
    pub suggestions: Vec<String>,
}

impl StepReport {
    pub fn duration_ms(&self) -> u64 {
        self.finished_at_ms.saturating_sub(self.started_at_ms)
    }
}

impl ScenarioReport {
    /// `features/x.feature: name` (the JUnit test name; no absolute path, no line).
    pub fn qualified(&self, feature: &FeatureReport) -> String {
        format!("{}: {}", feature.file, self.name)
    }

    /// The step that was running at `at_ms` (Unix ms), as `Keyword text`.
    pub fn step_at(&self, at_ms: u64) -> Option<String> {
        self.steps
            .iter()
            .find(|s| s.started_at_ms <= at_ms && at_ms <= s.finished_at_ms.max(s.started_at_ms))
            .map(|s| format!("{} {}", s.keyword.trim(), s.text))
    }
}

impl RunReport {
    pub fn scenarios(&self) -> impl Iterator<Item = (&FeatureReport, &ScenarioReport)> {
        self.features.iter().flat_map(|f| f.scenarios.iter().map(move |s| (f, s)))
    }

    pub fn count(&self, status: Status) -> usize {
        self.scenarios().filter(|(_, s)| s.status == status).count()
    }
}
