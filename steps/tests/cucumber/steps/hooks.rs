//! The after-scenario hook: contract check of everything captured, lineage report, failure
//! bundle, clean-up, and the pass/fail tally.

use crate::world::World;
use cucumber::event::ScenarioFinished;
use harness::report::{FailureBundle, write_failure_bundle, write_lineage};

pub async fn after_scenario(
    feature: &cucumber::gherkin::Feature,
    scenario: &cucumber::gherkin::Scenario,
    finished: &ScenarioFinished,
    world: Option<&mut World>,
) {
    let Some(world) = world else {
        crate::count(finished, false);
        return;
    };
    let violations = world.contract_violations();
    let failed = !matches!(finished, ScenarioFinished::StepPassed) || !violations.is_empty();
    let report_dir = world.env.report_dir();
    let tap = world.pipeline().tap.clone();
    let lineage = serde_json::json!({
        "scenario": scenario.name,
        "reconciliation": world.ledger.reconcile(&tap),
        "chunks": world.ledger.lineage(&tap),
    });
    if !world.ledger.published().is_empty() {
        let _ = write_lineage(&report_dir, &world.ns.prefix, &lineage);
    }
    if failed {
        let captured = tap.matching(|m| world.in_scope(m));
        let error = match finished {
            ScenarioFinished::StepFailed(_, _, e) => e.to_string(),
            ScenarioFinished::BeforeHookFailed(_) => "before hook failed".into(),
            ScenarioFinished::StepSkipped => "a step was skipped (undefined?)".into(),
            ScenarioFinished::StepPassed => format!("contract violations: {violations:?}"),
        };
        let last_http = world.pipeline().api.as_ref().and_then(|a| a.last_exchange());
        let bundle = FailureBundle {
            scenario: &scenario.name,
            feature: &feature.name,
            namespace: &world.ns.prefix,
            error: &error,
            captured_messages: serde_json::to_value(&captured).unwrap_or_default(),
            last_sql_rows: serde_json::Value::Array(world.last_rows.iter().map(|r| r.to_json()).collect()),
            last_http_exchange: serde_json::Value::String(format!("{last_http:#?}")),
            lineage,
            world: format!("{world:#?}"),
        };
        match write_failure_bundle(&report_dir, &bundle) {
            Ok(dir) => {
                eprintln!("  failure bundle for {:?} (namespace {}): {}", scenario.name, world.ns.prefix, dir.display())
            }
            Err(e) => eprintln!("  could not write the failure bundle: {e:#}"),
        }
    } else if world.env.may_write_db()
        && let Err(e) = world.env.db.delete_sensor_prefix(&world.ns.prefix).await
    {
        eprintln!("  clean-up of {} failed: {e:#}", world.ns.prefix);
    }
    if let Some(p) = world.private.take() {
        p.teardown().await;
    }
    crate::count(finished, !violations.is_empty());
    if !violations.is_empty() && matches!(finished, ScenarioFinished::StepPassed) {
        panic!("messages captured in this scenario violate the contract:\n  {}", violations.join("\n  "));
    }
}
