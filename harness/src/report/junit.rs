//! JUnit XML of a run (quick-junit): one `testsuite` per feature file, one `testcase` per
//! scenario named `<feature file relative to the checkout>: <scenario name>` with
//! `classname` = the feature's name, so CI history survives a moved checkout or an added line.
//! Each case's time is its own wall time; a suite's is the span from its first scenario's start
//! to its last one's end (scenarios run concurrently, so their times are never summed).

use super::run::{RunReport, Status};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::collections::HashMap;
use std::time::Duration;

/// The JUnit document of `run`.
pub fn render(run: &RunReport, report_name: &str) -> anyhow::Result<String> {
    let mut report = Report::new(report_name);
    report.set_time(Duration::from_secs_f64(run.wall_secs.max(0.0)));
    if let Some(error) = &run.error {
        let mut suite = TestSuite::new("environment");
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_message(first_line(error)).set_type("environment start failed").set_description(error.clone());
        let mut case = TestCase::new("the test environment starts", status);
        case.set_classname("environment");
        suite.add_test_case(case);
        report.add_test_suite(suite);
    }
    for feature in &run.features {
        let mut suite = TestSuite::new(feature.file.clone());
        let mut seen: HashMap<String, usize> = HashMap::new();
        let (mut first, mut last) = (u64::MAX, 0u64);
        for s in &feature.scenarios {
            let mut name = s.qualified(feature);
            // Scenario outline rows share a name: number the repeats so each case is unique.
            let n = seen.entry(name.clone()).and_modify(|n| *n += 1).or_insert(1);
            if *n > 1 {
                name = format!("{name} (example {n})");
            }
            let status = match s.status {
                Status::Passed => TestCaseStatus::success(),
                Status::Skipped => TestCaseStatus::skipped(),
                Status::Failed => {
                    let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    let error = s.error.clone().unwrap_or_else(|| "failed".into());
                    let failed_step = s.steps.iter().find(|st| st.status == Status::Failed);
                    let mut description = String::new();
                    if let Some(step) = failed_step {
                        description.push_str(&format!("{} {} (line {})\n", step.keyword.trim(), step.text, step.line));
                        for hint in &step.suggestions {
                            description.push_str(&format!("  {hint}\n"));
                        }
                    }
                    description.push_str(&error);
                    st.set_message(first_line(&error)).set_description(description);
                    st
                }
            };
            let mut case = TestCase::new(name, status);
            case.set_classname(feature.name.clone());
            case.set_time(Duration::from_millis(s.duration_ms));
            if let Some(bundle) = &s.bundle {
                case.set_system_out(format!("failure bundle: {bundle}/bundle.json"));
            }
            suite.add_test_case(case);
            first = first.min(s.started_at_ms);
            last = last.max(s.started_at_ms + s.duration_ms);
        }
        if last > 0 {
            suite.set_time(Duration::from_millis(last.saturating_sub(first)));
        }
        report.add_test_suite(suite);
    }
    Ok(report.to_string()?)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::run::{FeatureReport, ScenarioReport, StepReport};

    #[test]
    fn names_are_relative_with_the_feature_as_classname_and_suite_time_is_a_span() {
        let scenario = |name: &str, status, start, dur| ScenarioReport {
            name: name.into(),
            line: 7,
            status,
            started_at_ms: start,
            duration_ms: dur,
            steps: vec![StepReport {
                keyword: "Then ".into(),
                text: "it fails".into(),
                line: 9,
                status,
                ..Default::default()
            }],
            error: (status == Status::Failed).then(|| "boom\nmore".to_string()),
            ..Default::default()
        };
        let run = RunReport {
            features: vec![FeatureReport {
                name: "REST API".into(),
                file: "features/rest_api.feature".into(),
                scenarios: vec![
                    scenario("a", Status::Passed, 1_000, 4_000),
                    scenario("a", Status::Failed, 2_000, 4_000),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let xml = render(&run, "behaviour suite").unwrap();
        assert!(xml.contains(r#"name="features/rest_api.feature: a""#), "{xml}");
        assert!(xml.contains(r#"name="features/rest_api.feature: a (example 2)""#), "{xml}");
        assert!(xml.contains(r#"classname="REST API""#), "{xml}");
        assert!(xml.contains(r#"message="boom""#), "{xml}");
        // Two overlapping 4 s scenarios from t=1 s to t=6 s: the suite took 5 s, not 8 s.
        assert!(xml.contains(r#"time="5.000""#), "{xml}");
        assert!(!xml.contains("/work/"), "no absolute paths: {xml}");
    }

    #[test]
    fn a_failed_start_is_one_errored_case() {
        let run =
            RunReport { error: Some("broker — 127.0.0.1:5672 — refused — try x".into()), ..Default::default() };
        let xml = render(&run, "behaviour suite").unwrap();
        assert!(xml.contains("the test environment starts") && xml.contains("<error"), "{xml}");
    }
}
