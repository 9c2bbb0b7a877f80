//! Hostile input: a seeded corpus of mutated messages per input channel, published in batches
//! with a canary after each, and the oracle (harness::fuzz::oracle) over what the pipeline did.
//! Local profile: a pipeline of the scenario's own, restarted fresh for bisection. External
//! profile: only with QA_EXTERNAL_FUZZ=1 (it fills the deployment's DLQs), and not bisected.
//!
//! Variables: QA_FUZZ_SEED (a number, or `random`: printed), QA_FUZZ_INPUTS (inputs per
//! channel, overrides the step), QA_FUZZ_ONLY (comma-separated corpus indexes: replay those).

use crate::params::ChannelParam;
use crate::world::World;
use anyhow::{Context as _, bail};
use cucumber::{given, then, when};
use harness::fuzz::oracle::{self, Settings, Trial};
use harness::fuzz::{self, HostileInput};
use harness::sut::Component;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The plan and, once run, the result of this scenario's campaign.
#[derive(Debug, Default)]
pub struct FuzzState {
    /// The corpus to publish.
    pub inputs: Vec<HostileInput>,
    /// Its seed (after QA_FUZZ_SEED).
    pub seed: u64,
    /// The campaign's outcome: the report, or the failure text.
    pub result: Option<Result<oracle::Report, String>>,
}

#[given(expr = "the hostile corpus of {int} inputs for the {channel} with seed {int}")]
async fn corpus(w: &mut World, count: usize, channel: ChannelParam, seed: u64) -> anyhow::Result<()> {
    let seed = match std::env::var("QA_FUZZ_SEED").ok().as_deref() {
        None => seed,
        Some("random") => {
            let s = rand::random::<u32>() as u64;
            eprintln!("  hostile corpus for the {}: random seed {s} (QA_FUZZ_SEED={s} replays it)", channel.0.name());
            s
        }
        Some(v) => v.parse().with_context(|| format!("QA_FUZZ_SEED={v:?} is not a number or `random`"))?,
    };
    let count = match std::env::var("QA_FUZZ_INPUTS") {
        Ok(v) => v.parse().with_context(|| format!("QA_FUZZ_INPUTS={v:?}"))?,
        Err(_) => count,
    };
    let ops = oracle::operators(&crate::workspace_root())?;
    let mut inputs = fuzz::corpus(channel.0, &ops, seed, count);
    if let Ok(only) = std::env::var("QA_FUZZ_ONLY") {
        let keep: Vec<usize> =
            only.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>().context("QA_FUZZ_ONLY")?;
        inputs.retain(|i| keep.contains(&i.index));
    }
    w.fuzz = FuzzState { inputs, seed, result: None };
    Ok(())
}

#[when(expr = "the hostile inputs are published in batches of {int}, each followed by a canary chunk")]
async fn publish(w: &mut World, batch: usize) -> anyhow::Result<()> {
    let env = w.env.clone();
    if !env.is_local() && !harness::config::flag("QA_EXTERNAL_FUZZ") {
        bail!("hostile input fills a deployment's dead-letter queues: set QA_EXTERNAL_FUZZ=1 to run it against one");
    }
    let settings = Settings {
        batch,
        deadline: Duration::from_millis(env.config.deadline_ms * 2),
        max_vm_hwm_kib: 512 * 1024,
        local: env.is_local(),
    };
    let prefix = w.ns.prefix.clone();
    let trial = Trial { seed: w.fuzz.seed, prefix: &prefix, settings: &settings };
    let scenario = w.scenario.clone();
    let reproduce = |inputs: &[HostileInput]| {
        format!(
            "QA_FUZZ_SEED={} QA_FUZZ_INPUTS={} QA_FUZZ_ONLY={} cargo test --test cucumber -- --name {:?}",
            w.fuzz.seed,
            inputs.iter().map(|i| i.index + 1).max().unwrap_or(1),
            inputs.iter().map(|i| i.index.to_string()).collect::<Vec<_>>().join(","),
            scenario
        )
    };
    let (extra, result) = if env.is_local() {
        let p = start_private(&env, &w.ns.prefix, 0).await?;
        let attempts = Arc::new(AtomicUsize::new(0));
        let slug = w.ns.prefix.clone();
        let mut fresh = move || -> oracle::BoxedPipeline {
            let (env, slug, n) = (env.clone(), slug.clone(), attempts.fetch_add(1, Ordering::SeqCst) + 1);
            Box::pin(async move { start_private(&env, &slug, n).await })
        };
        let (extra, result) =
            oracle::campaign(&p, Some(&mut fresh), &w.env.db, &w.fuzz.inputs, &trial, &reproduce).await;
        if extra.is_none() || result.is_ok() {
            w.private = Some(p); // torn down by the after hook
        }
        (extra, result)
    } else {
        oracle::campaign(w.pipeline(), None, &w.env.db, &w.fuzz.inputs, &trial, &reproduce).await
    };
    if let Some(p) = extra {
        p.teardown().await;
    }
    if let Ok(report) = &result {
        oracle::record(&w.scenario, w.fuzz.seed, report);
    }
    w.fuzz.result = Some(result.map_err(|e| format!("{e:#}")));
    Ok(())
}

/// A pipeline of the scenario's own with every component, for hostile input (attempt `n`).
async fn start_private(env: &harness::env::Env, prefix: &str, n: usize) -> anyhow::Result<harness::env::Pipeline> {
    let slug: String = format!("fz{n}-{}", prefix.rsplit('-').next().unwrap_or("x"));
    let mut p = env.private_pipeline(&slug, &[]).await?;
    for c in [Component::DataWriter, Component::AlgorithmA, Component::AlgorithmB, Component::RestApi] {
        if let Err(e) = p.start(c, 1, &[]).await {
            p.teardown().await; // its namespace must not outlive a failed start
            return Err(e.context(format!("starting {} for hostile input", c.subcommand())));
        }
    }
    Ok(p)
}

#[then(
    expr = "every hostile input was processed or dead-lettered once with a reason, the canaries got through, no service failed, and nothing stored or served breaks the contract"
)]
async fn oracle_holds(w: &mut World) -> anyhow::Result<()> {
    match w.fuzz.result.as_ref().context("no hostile inputs were published in this scenario")? {
        Ok(report) => {
            let outcomes: Vec<String> =
                report.outcomes.iter().flat_map(|(c, o)| o.iter().map(move |(k, n)| format!("{c} {k}: {n}"))).collect();
            eprintln!(
                "  hostile input: {} inputs in {} batches, {:.1} s ({:.0}/s), seed {}; {}; peak VmHWM {} KiB",
                report.inputs,
                report.batches,
                report.seconds,
                report.inputs as f64 / report.seconds.max(1e-9),
                w.fuzz.seed,
                outcomes.join(", "),
                report.vm_hwm_kib.values().max().copied().unwrap_or(0)
            );
            anyhow::ensure!(report.inputs > 0, "the corpus was empty (QA_FUZZ_ONLY matched nothing?)");
            Ok(())
        }
        Err(e) => bail!("{e}"),
    }
}
