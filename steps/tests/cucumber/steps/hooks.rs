//! The after-scenario hook: contract check of everything captured, lineage report, failure
//! bundle (JSON, this scenario's own evidence only), clean-up, and the pass/fail tally. What it
//! learns (namespace, bundle, lineage, per-hop times) goes to the run recorder, which prints the
//! bundle's path after the scenario's steps.

use crate::world::World;
use cucumber::event::ScenarioFinished;
use harness::report::{FailureBundle, exchange_json, hop_summary, write_failure_bundle, write_lineage};
use serde_json::{Value, json};

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
    let chunks = serde_json::to_value(world.ledger.lineage(&tap)).unwrap_or_default();
    let lineage = json!({
        "scenario": scenario.name,
        "reconciliation": world.ledger.reconcile(&tap),
        "hops": "each *_ms is the time from publishing the chunk to the harness first seeing it at that hop",
        "chunks": chunks,
    });
    let mut extras = crate::recorder::Extras {
        namespace: world.ns.prefix.clone(),
        hops: hop_summary(&chunks)
            .into_iter()
            .map(|(label, chunks, p50_ms, max_ms)| harness::report::run::Hop { label, chunks, p50_ms, max_ms })
            .collect(),
        ..Default::default()
    };
    if !world.ledger.published().is_empty() {
        extras.lineage = write_lineage(&report_dir, &world.ns.prefix, &lineage).ok();
    }
    if failed {
        let captured = tap.matching(|m| world.in_scope(m));
        let error = match finished {
            ScenarioFinished::StepFailed(_, _, e) => e.to_string(),
            ScenarioFinished::BeforeHookFailed(_) => "before hook failed".into(),
            ScenarioFinished::StepSkipped => "a step was skipped (undefined?)".into(),
            ScenarioFinished::StepPassed => format!("contract violations:\n  {}", violations.join("\n  ")),
        };
        let bundle = FailureBundle {
            feature: feature.name.clone(),
            feature_file: feature
                .path
                .as_ref()
                .map(|p| p.strip_prefix(crate::workspace_root()).unwrap_or(p).display().to_string())
                .unwrap_or_default(),
            scenario: scenario.name.clone(),
            scenario_line: scenario.position.line,
            namespace: world.ns.prefix.clone(),
            failed_step: None,
            error,
            // This scenario's own record: a concurrent scenario's request never shows here.
            http: world.http.last().as_ref().map(exchange_json).unwrap_or(Value::Null),
            captured_messages: serde_json::to_value(&captured).unwrap_or_default(),
            sql_rows: Value::Array(world.last_rows.iter().map(|r| r.to_json()).collect()),
            lineage,
            world: world_summary(world),
        };
        match write_failure_bundle(&report_dir, &bundle) {
            Ok(dir) => extras.bundle = Some(dir),
            Err(e) => eprintln!("  could not write the failure bundle of {:?}: {e:#}", scenario.name),
        }
    } else if world.env.may_write_db()
        && let Err(e) = world.env.db.delete_sensor_prefix(&world.ns.prefix).await
    {
        eprintln!("  clean-up of {} failed: {e:#}", world.ns.prefix);
    }
    crate::recorder::note(feature, scenario, extras);
    if let Some(p) = world.private.take() {
        p.teardown().await;
    }
    crate::count(finished, !violations.is_empty());
    if !violations.is_empty() && matches!(finished, ScenarioFinished::StepPassed) {
        panic!("messages captured in this scenario violate the contract:\n  {}", violations.join("\n  "));
    }
}

/// What the World holds, as JSON (no Debug text).
fn world_summary(w: &World) -> Value {
    json!({
        "scenario": w.scenario,
        "namespace": w.ns.prefix,
        "private_pipeline": w.private.as_ref().map(|p| p.names.namespace.clone()),
        "time_axis_starts_at": w.t0,
        "sequences": w.sequences,
        "published": w.published.iter().map(|c| json!({
            "sensor_id": c.sensor_id, "sequence": c.sequence, "message_id": c.message_id,
        })).collect::<Vec<_>>(),
        "raw_message_ids": w.raw_ids,
        "last_response": w.response.as_ref().map(|r| json!({
            "status": r.status,
            "headers": r.headers,
            "body": serde_json::from_str::<Value>(&r.body).unwrap_or_else(|_| Value::String(r.body.chars().take(2000).collect())),
        })),
        "burst_responses": w.responses.len(),
        "seeded_rows": w.seeded.len(),
        "last_rows_read": w.last_rows.len(),
        // Chaos scenarios: faults applied, the ledger's verdict and every process's metrics.
        "chaos": w.chaos.bundle_json(),
    })
}
