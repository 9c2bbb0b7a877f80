//! The command line: every goose option (flattened from goose's own `GooseConfiguration`, so
//! `--host`, `-u`, `-r`, `-t`, `--test-plan`, `--report-file`, `--baseline-file`, `--threshold`
//! … all work), plus this runner's options, plus the `bench` subcommand.

use crate::sla::Profile;
use clap::{Args, Parser, Subcommand, ValueEnum};
use goose::config::GooseConfiguration;
use std::path::PathBuf;

/// Goose load runner and SLA gates for the audio pipeline.
#[derive(Debug, Parser)]
#[command(
    name = "load",
    args_override_self = true,
    after_help = "Exit codes: 0 every gate passed, 99 an SLA was breached (the gate is named), 1 harness error.\n\
                  Examples:\n  load --host http://127.0.0.1:8000 --token dev-token -u 20 -r 20 -t 1m\n  \
                  load --gates pipeline --sla target\n  \
                  load --host http://127.0.0.1:8000 --gates rest,pipeline --workload smoke -t 5s\n  \
                  load bench --quick"
)]
pub struct Cli {
    /// `bench` measures figures instead of gating.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// This runner's options.
    #[command(flatten)]
    pub opts: LoadOpts,
    /// Goose's options (the REST run uses them as given).
    #[command(flatten)]
    pub goose: GooseConfiguration,
}

/// Gate groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// REST scenarios and probes against `--host` (any deployment).
    Rest,
    /// Pipeline gates; starts the reference services itself (local infrastructure).
    Pipeline,
}

/// Options of this runner (long names only, so they never clash with goose's short flags).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "SLA gates (load)")]
pub struct LoadOpts {
    /// Threshold profile of sla.toml: floor (original suite) or target (ours)
    #[arg(long = "sla", env = "LOAD_SLA_PROFILE", default_value = "floor", value_name = "PROFILE")]
    pub sla: Profile,
    /// The SLA file [default: load/sla.toml of this source tree]
    #[arg(long, env = "LOAD_SLA_FILE", value_name = "FILE")]
    pub sla_file: Option<PathBuf>,
    /// Workload sizes from sla.toml ([workload.NAME]), e.g. full or smoke
    #[arg(long, env = "LOAD_WORKLOAD", default_value = "full", value_name = "NAME")]
    pub workload: String,
    /// Override one threshold, e.g. --set 'rest_p99=<= 1us' (repeatable)
    #[arg(long = "set", value_name = "KEY=THRESHOLD")]
    pub set: Vec<String>,
    /// Gate groups to run: rest, pipeline [default: rest with --host, else pipeline]
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub gates: Vec<Suite>,
    /// Bearer token(s) for the API, comma-separated; users take them in turn
    #[arg(long, env = "QA_API_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Sensors to read (comma-separated) [default: sensor-1 … sensor-8 that have data]
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub sensors: Vec<String>,
    /// Where run folders go: <DIR>/<UTC timestamp>/
    #[arg(long, env = "LOAD_REPORT_DIR", default_value = "reports/load", value_name = "DIR")]
    pub report_dir: PathBuf,
    /// Broker for the pipeline gates
    #[arg(long, env = "QA_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f", value_name = "URL")]
    pub amqp_url: String,
    /// PostgreSQL (admin) for the pipeline gates; a per-run database is created on it
    #[arg(
        long,
        env = "QA_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        value_name = "URL"
    )]
    pub database_url: String,
    /// The `pipeline` binary [default: next to this binary, else target/release, else target/debug]
    #[arg(long, env = "QA_SERVICES_BIN", value_name = "PATH")]
    pub services_bin: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Benchmarks (figures, not gates): goose vs wrk vs Locust, pipeline vs raw broker, DataWriter
    /// vs raw INSERT, REST p99 at half its max rate
    Bench(BenchArgs),
}

/// Options of `load bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Shorter runs (for a quick look; figures are noisier)
    #[arg(long)]
    pub quick: bool,
    /// Connections / users for the HTTP tool comparison
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds per HTTP measurement
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Only these benchmarks (1-4, comma-separated) [default: all]
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<u8>,
    /// wrk binary
    #[arg(long, default_value = "wrk")]
    pub wrk: String,
    /// locust binary (e.g. target/locust-venv/bin/locust)
    #[arg(long, default_value = "target/locust-venv/bin/locust")]
    pub locust: String,
    /// oha binary, the open-loop generator of (4) (`cargo install oha`)
    #[arg(long, default_value = "target/tools/bin/oha")]
    pub oha: String,
}

/// goose 0.19 renamed `--hatch-rate` to `--increase-rate`; older scripts and manifests still pass
/// it, so it is accepted as an alias.
pub fn compat_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| match a.strip_prefix("--hatch-rate") {
            Some("") => "--increase-rate".to_string(),
            Some(rest) if rest.starts_with('=') => format!("--increase-rate{rest}"),
            _ => a,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(&["load", "--hatch-rate", "5"], &["load", "--increase-rate", "5"])]
    #[case(&["load", "--hatch-rate=5"], &["load", "--increase-rate=5"])]
    #[case(&["load", "-r", "5"], &["load", "-r", "5"])]
    fn hatch_rate_is_an_alias(#[case] input: &[&str], #[case] expected: &[&str]) {
        let out = compat_args(input.iter().map(|s| s.to_string()));
        assert_eq!(out, expected);
    }

    #[test]
    fn goose_and_load_options_parse_together() {
        let cli = Cli::try_parse_from([
            "load",
            "--host",
            "http://127.0.0.1:9",
            "-u",
            "5",
            "-r",
            "5",
            "-t",
            "10s",
            "--threshold",
            "p99<500ms",
            "--sla",
            "target",
            "--set",
            "rest_p99=<=1ms",
            "--gates",
            "rest,pipeline",
            "--token",
            "t",
        ])
        .unwrap();
        assert_eq!(cli.goose.host.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!((cli.goose.users, cli.goose.run_time.as_deref()), (Some(5), Some("10s")));
        assert_eq!(cli.goose.threshold, vec!["p99<500ms"]);
        assert_eq!((cli.opts.sla, cli.opts.gates.len()), (Profile::Target, 2));
        let bench = Cli::try_parse_from(["load", "bench", "--quick", "--only", "1,4"]).unwrap();
        assert!(matches!(bench.command, Some(Command::Bench(BenchArgs { quick: true, .. }))));
    }
}
