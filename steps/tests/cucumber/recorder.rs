//! The run recorder: a cucumber writer that keeps features → scenarios → steps with status,
//! timestamps and errors (the `harness::report::run` model), prints a failed scenario's bundle
//! path and "did you mean" hints right after the scenario's own steps, and fills in the failed
//! step of the bundle. The runner renders JUnit, the HTML report and `run.json` from what it
//! kept, and attributes the convergence log's waits to scenarios and steps with it.
//!
//! The after-scenario hook tells it what only the World knows (namespace, bundle, lineage and
//! per-hop times) through [`note`], keyed by the scenario's place in its feature file.

use ::steps::suggest::Vocabulary;
use cucumber::event::{self, Cucumber, Feature, HookType, Rule, Scenario, Step};
use cucumber::{Event, cli, parser};
use harness::report::run::{FeatureReport, Hop, ScenarioReport, Status, StepReport};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// What the after hook knows about a scenario.
#[derive(Debug, Default, Clone)]
pub struct Extras {
    pub namespace: String,
    pub bundle: Option<PathBuf>,
    pub lineage: Option<PathBuf>,
    pub hops: Vec<Hop>,
}

type Key = (Option<PathBuf>, usize, usize);

static EXTRAS: Mutex<Option<HashMap<Key, Extras>>> = Mutex::new(None);

fn key(feature: &cucumber::gherkin::Feature, scenario: &cucumber::gherkin::Scenario) -> Key {
    (feature.path.clone(), scenario.position.line, scenario.position.col)
}

/// Called by the after hook.
pub fn note(feature: &cucumber::gherkin::Feature, scenario: &cucumber::gherkin::Scenario, extras: Extras) {
    EXTRAS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(key(feature, scenario), extras);
}

fn take(feature: &cucumber::gherkin::Feature, scenario: &cucumber::gherkin::Scenario) -> Option<Extras> {
    EXTRAS.lock().unwrap_or_else(PoisonError::into_inner).as_mut()?.remove(&key(feature, scenario))
}

/// The recorded features, shared with the runner.
pub type Recorded = Arc<Mutex<Vec<FeatureReport>>>;

pub struct Recorder {
    root: PathBuf,
    report_dir: PathBuf,
    vocabulary: Vocabulary,
    features: Recorded,
    /// Index of each running scenario in `features`.
    index: HashMap<Key, (usize, usize)>,
}

impl Recorder {
    pub fn new(root: &Path, report_dir: &Path) -> (Self, Recorded) {
        let features: Recorded = Arc::default();
        let r = Recorder {
            root: root.to_path_buf(),
            report_dir: report_dir.to_path_buf(),
            vocabulary: Vocabulary::load(root),
            features: features.clone(),
            index: HashMap::new(),
        };
        (r, features)
    }

    fn relative(&self, path: Option<&PathBuf>) -> String {
        match path {
            Some(p) => p.strip_prefix(&self.root).unwrap_or(p).display().to_string(),
            None => "(no file)".into(),
        }
    }

    fn feature_index(&self, features: &mut Vec<FeatureReport>, f: &cucumber::gherkin::Feature) -> usize {
        let file = self.relative(f.path.as_ref());
        if let Some(i) = features.iter().position(|x| x.file == file && x.name == f.name) {
            return i;
        }
        features.push(FeatureReport { name: f.name.clone(), file, tags: f.tags.clone(), scenarios: Vec::new() });
        features.len() - 1
    }

    fn on_scenario(
        &mut self,
        f: &cucumber::gherkin::Feature,
        rule_tags: &[String],
        sc: &cucumber::gherkin::Scenario,
        ev: Scenario<crate::world::World>,
        at: u64,
    ) {
        let mut features = self.features.lock().unwrap_or_else(PoisonError::into_inner);
        let k = key(f, sc);
        if let Scenario::Started = ev {
            let fi = self.feature_index(&mut features, f);
            let tags = f.tags.iter().chain(rule_tags).chain(&sc.tags).cloned().collect();
            features[fi].scenarios.push(ScenarioReport {
                name: sc.name.clone(),
                line: sc.position.line,
                tags,
                started_at_ms: at,
                ..Default::default()
            });
            self.index.insert(k, (fi, features[fi].scenarios.len() - 1));
            return;
        }
        let Some(&(fi, si)) = self.index.get(&k) else { return };
        let s = &mut features[fi].scenarios[si];
        match ev {
            Scenario::Started | Scenario::Log(_) => {}
            Scenario::Step(st, e) | Scenario::Background(st, e) => match e {
                Step::Started => s.steps.push(StepReport {
                    keyword: st.keyword.clone(),
                    text: st.value.clone(),
                    line: st.position.line,
                    status: Status::Skipped,
                    started_at_ms: at,
                    finished_at_ms: at,
                    ..Default::default()
                }),
                other => {
                    let Some(r) = s.steps.iter_mut().rev().find(|r| r.line == st.position.line) else { return };
                    r.finished_at_ms = at;
                    match other {
                        Step::Passed(..) => r.status = Status::Passed,
                        Step::Skipped => r.status = Status::Skipped,
                        Step::Failed(_, _, _, err) => {
                            r.status = Status::Failed;
                            r.error = Some(step_error(&err));
                            if matches!(err, event::StepError::NotFound) {
                                r.suggestions = self.vocabulary.hints(&st.value, 3);
                            }
                        }
                        Step::Started => {}
                    }
                }
            },
            Scenario::Hook(kind, event::Hook::Failed(_, info)) => {
                let hook = match kind {
                    HookType::Before => "before hook",
                    HookType::After => "after-scenario check",
                };
                s.error = Some(format!("{hook}: {}", panic_text(&info)));
                s.status = Status::Failed;
            }
            Scenario::Hook(..) => {}
            Scenario::Finished => {
                // Steps never started (after a failure) are listed as skipped.
                for st in &sc.steps {
                    if !s.steps.iter().any(|r| r.line == st.position.line) {
                        s.steps.push(StepReport {
                            keyword: st.keyword.clone(),
                            text: st.value.clone(),
                            line: st.position.line,
                            status: Status::Skipped,
                            started_at_ms: at,
                            finished_at_ms: at,
                            ..Default::default()
                        });
                    }
                }
                let failed_step = s.steps.iter().find(|r| r.status == Status::Failed).cloned();
                if s.status != Status::Failed {
                    s.status = if failed_step.is_some() {
                        Status::Failed
                    } else if !s.steps.is_empty() && s.steps.iter().all(|r| r.status == Status::Passed) {
                        Status::Passed
                    } else {
                        Status::Skipped
                    };
                }
                if s.error.is_none() {
                    s.error = failed_step.as_ref().and_then(|r| r.error.clone());
                }
                s.duration_ms = at.saturating_sub(s.started_at_ms);
                if let Some(x) = take(f, sc) {
                    s.namespace = Some(x.namespace);
                    s.hops = x.hops;
                    s.lineage = x.lineage.map(|p| p.strip_prefix(&self.report_dir).unwrap_or(&p).display().to_string());
                    if let Some(dir) = &x.bundle {
                        if let Some(step) = &failed_step {
                            let _ = harness::report::set_failed_step(
                                dir,
                                &format!("{} {}", step.keyword.trim(), step.text),
                            );
                        }
                        s.bundle = Some(dir.strip_prefix(&self.report_dir).unwrap_or(dir).display().to_string());
                    }
                }
                // Printed after cucumber's own lines for this scenario (this writer runs after
                // the console writer, both behind the normalizer).
                if let Some(step) = failed_step.as_ref().filter(|r| !r.suggestions.is_empty()) {
                    println!(
                        "      no step definition matches `{} {}` ({}:{}); did you mean:",
                        step.keyword.trim(),
                        step.text,
                        features[fi].file,
                        step.line
                    );
                    for hint in &step.suggestions {
                        println!("        {hint}");
                    }
                    println!("        (every step: features/README.md)");
                }
                let s = &features[fi].scenarios[si];
                if let Some(bundle) = &s.bundle {
                    println!(
                        "      failure bundle of {:?}: {}",
                        s.name,
                        self.report_dir.join(bundle).join("bundle.json").display()
                    );
                }
                self.index.remove(&k);
            }
        }
    }
}

fn step_error(err: &event::StepError) -> String {
    match err {
        event::StepError::Panic(info) => panic_text(info),
        other => other.to_string(),
    }
}

fn panic_text(info: &event::Info) -> String {
    if let Some(s) = info.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = info.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "(a panic without a message)".into()
    }
}

fn ms(t: SystemTime) -> u64 {
    harness::eventually::unix_ms(t)
}

impl cucumber::Writer<crate::world::World> for Recorder {
    type Cli = cli::Empty;

    async fn handle_event(&mut self, event: parser::Result<Event<Cucumber<crate::world::World>>>, _: &Self::Cli) {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                // A feature file that does not parse: a failed "scenario" of its own.
                let mut features = self.features.lock().unwrap_or_else(PoisonError::into_inner);
                features.push(FeatureReport {
                    name: "(unparsable feature file)".into(),
                    file: e.to_string().lines().next().unwrap_or_default().chars().take(200).collect(),
                    tags: vec![],
                    scenarios: vec![ScenarioReport {
                        name: "the feature file parses".into(),
                        status: Status::Failed,
                        error: Some(e.to_string()),
                        started_at_ms: ms(SystemTime::now()),
                        ..Default::default()
                    }],
                });
                return;
            }
        };
        let at = ms(event.at);
        match event.value {
            Cucumber::Feature(f, Feature::Scenario(sc, ev)) => self.on_scenario(&f, &[], &sc, ev.event, at),
            Cucumber::Feature(f, Feature::Rule(r, Rule::Scenario(sc, ev))) => {
                let tags = r.tags.clone();
                self.on_scenario(&f, &tags, &sc, ev.event, at)
            }
            _ => {}
        }
    }
}

impl cucumber::writer::NonTransforming for Recorder {}
