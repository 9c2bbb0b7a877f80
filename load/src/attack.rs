//! Running a goose attack inside this process: configuration defaults that make several attacks
//! per process safe, and threshold failures turned into data rather than errors.

use anyhow::Context as _;
use goose::config::GooseConfiguration;
use goose::metrics::GooseMetrics;
use goose::prelude::*;

/// Settings every in-process attack needs: no telnet controller (its fixed port clashes when
/// attacks run in parallel, e.g. in tests; goose 0.19's WebSocket controller is already off
/// unless asked for), everything else as given.
pub fn harden(config: &mut GooseConfiguration) {
    config.no_telnet = true;
}

/// A configuration from command-line style arguments (validated by goose's own parser).
pub fn config_from(args: &[String]) -> anyhow::Result<GooseConfiguration> {
    let mut c = GooseConfiguration::parse_args_default(args)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("goose options {args:?}"))?;
    harden(&mut c);
    Ok(c)
}

/// Runs the scenarios and returns goose's metrics. A failed `--threshold` is not an error here:
/// its result is in `metrics.thresholds` and becomes a gate.
pub async fn run(config: GooseConfiguration, scenarios: Vec<Scenario>) -> anyhow::Result<GooseMetrics> {
    let mut attack = GooseAttack::initialize_with_config(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    for s in scenarios {
        attack = attack.register_scenario(s);
    }
    match attack.execute().await {
        Ok(metrics) => Ok(metrics),
        Err(GooseError::ThresholdsFailed { metrics, .. }) => Ok(*metrics.0),
        Err(GooseError::InvalidOption { option, value, detail }) => {
            anyhow::bail!("goose refused option {option} {value:?}: {detail}")
        }
        Err(e) => Err(anyhow::anyhow!("{e}")).context("goose load test failed"),
    }
}

/// Requests goose counted (all names), and the seconds it measured.
pub fn totals(m: &GooseMetrics) -> (u64, f64) {
    let n: usize = m.requests.values().map(|r| r.success_count + r.fail_count).sum();
    (n as u64, m.duration as f64)
}
