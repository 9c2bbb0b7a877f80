//! The living HTML report of a behaviour run (`report.html` in the run's folder): features →
//! scenarios → steps with status, failure messages, "did you mean" hints, per-hop lineage times
//! labelled with what they measure, links to the failure bundle and lineage files, tags and
//! durations, filterable by status, tag and text. One self-contained file (inline CSS and a few
//! lines of script, no network), rendered with minijinja from `report.html.j2`.

use super::run::{RunReport, Status};
use std::collections::BTreeSet;

const TEMPLATE: &str = include_str!("report.html.j2");

/// The report page of `run`.
pub fn render(run: &RunReport) -> anyhow::Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.add_template("report.html", TEMPLATE)?;
    let tags: BTreeSet<&str> = run.scenarios().flat_map(|(_, s)| s.tags.iter().map(String::as_str)).collect();
    let ctx = minijinja::context! {
        run => minijinja::Value::from(minijinja::value::Serde(run)),
        tags => minijinja::Value::from(minijinja::value::Serde(&tags)),
        passed => run.count(Status::Passed),
        failed => run.count(Status::Failed),
        skipped => run.count(Status::Skipped),
        total => run.scenarios().count(),
    };
    Ok(env.get_template("report.html")?.render(ctx)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::run::{FeatureReport, Hop, ScenarioReport, StepReport};

    pub(crate) fn sample() -> RunReport {
        let step = |kw: &str, text: &str, status| StepReport {
            keyword: kw.into(),
            text: text.into(),
            line: 3,
            status,
            started_at_ms: 1_000,
            finished_at_ms: 1_250,
            ..Default::default()
        };
        RunReport {
            run_id: "abcd1234".into(),
            profile: "local".into(),
            started_at: "2026-12-04T12:00:00Z".into(),
            wall_secs: 12.5,
            features: vec![FeatureReport {
                name: "REST API".into(),
                file: "features/rest_api.feature".into(),
                tags: vec!["api".into()],
                scenarios: vec![
                    ScenarioReport {
                        name: "Latest <features> & more".into(),
                        line: 10,
                        tags: vec!["api".into(), "smoke".into()],
                        status: Status::Passed,
                        duration_ms: 1_500,
                        steps: vec![step("Given ", "a pipeline", Status::Passed)],
                        hops: vec![Hop {
                            label: "published → Feature A seen by the tap".into(),
                            chunks: 5,
                            p50_ms: 3.0,
                            max_ms: 9.5,
                        }],
                        lineage: Some("lineage/ns-1.json".into()),
                        ..Default::default()
                    },
                    ScenarioReport {
                        name: "A broken one".into(),
                        line: 20,
                        tags: vec!["api".into()],
                        status: Status::Failed,
                        duration_ms: 2_000,
                        steps: vec![StepReport {
                            error: Some("expected status 200, got 404".into()),
                            suggestions: vec!["the response status is {int}".into()],
                            ..step("Then ", "the respons status is 200", Status::Failed)
                        }],
                        error: Some("expected status 200, got 404".into()),
                        bundle: Some("failures/ns-2".into()),
                        ..Default::default()
                    },
                ],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn renders_every_scenario_escaped_with_links_and_no_network() {
        // minijinja escapes `/` in text as `&#x2f;`; a browser reads it as `/`.
        let html = render(&sample()).unwrap().replace("&#x2f;", "/");
        assert!(html.contains("Latest &lt;features&gt; &amp; more"), "escaped");
        assert!(html.contains(r#"href="failures/ns-2/bundle.json""#));
        assert!(html.contains(r#"href="lineage/ns-1.json""#));
        assert!(html.contains("published → Feature A seen by the tap"));
        assert!(html.contains("1 passed") && html.contains("1 failed"));
        assert!(html.contains(r#"<option value="smoke">@smoke</option>"#));
        assert!(!html.contains("http://") && !html.contains("https://"), "nothing loaded from the network");
    }
}
