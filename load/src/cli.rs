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
    /// Runs the Gherkin SLA specs (features/sla/*.feature, tag @load): same reports and exit codes
    Spec(SpecArgs),
    /// One worker of a distributed REST run: its share of users and rate, results to PostgreSQL
    Worker(WorkerArgs),
    /// Merges every worker's results of a run (exact percentiles) and applies the gates
    Merge(MergeArgs),
    /// Scaling figure: 1, 2, 4 local workers against one API (achieved rate, merged p99)
    Scale(ScaleArgs),
}

/// Options of `load spec`.
#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// A .feature file or a folder of them [default: features/sla of the checkout]
    pub path: Option<PathBuf>,
    /// Tag expression selecting scenarios, e.g. '@load and @smoke'
    #[arg(long, default_value = "@load")]
    pub tags: String,
    /// The API the REST specs load [default: a private `pipeline live` the run starts]
    #[arg(long, env = "QA_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// Sensors the private API streams (each 20 chunks, then idle); specs may read up to this many
    #[arg(long, default_value_t = 50)]
    pub local_sensors: usize,
}

/// Options of `load worker` (one pod of the Indexed Job, or one local process).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Run id shared by every worker of the run (the Job's uid in Kubernetes)
    #[arg(long = "run", env = "LOAD_RUN_ID", value_name = "ID")]
    pub run: String,
    /// This worker's index, 0 … workers-1 (Kubernetes sets JOB_COMPLETION_INDEX)
    #[arg(long, env = "JOB_COMPLETION_INDEX", value_name = "I")]
    pub index: usize,
    /// Workers in the run (the Job's parallelism = completions)
    #[arg(long, env = "LOAD_WORKERS", value_name = "N")]
    pub workers: usize,
    /// The API to load [default: goose's --host]
    #[arg(long, env = "QA_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// Users of the whole run; worker i gets floor or ceil of users/workers
    #[arg(long = "total-users", value_name = "N")]
    pub users: usize,
    /// Requests/s of the whole run, split like the users; 0 = closed loop (as fast as answered)
    #[arg(long = "total-rate", default_value_t = 0, value_name = "PER_SEC")]
    pub rate: u64,
    /// Users started per second over the whole run (split like the users) [default: all in 1 s]
    #[arg(long = "total-increase-rate", value_name = "PER_SEC")]
    pub increase_rate: Option<f64>,
    /// Length of the measured window, e.g. 30s, 10m (every worker runs the same window)
    #[arg(long = "window", default_value = "30s", value_name = "TIME")]
    pub window: String,
    /// Which REST scenarios run
    #[arg(long, value_enum, default_value = "mixed")]
    pub mix: crate::rest::Mix,
    /// Read sensor-1 … sensor-N and require each to have data [default: sensor-1 … 8 that have data]
    #[arg(long = "read-sensors", value_name = "N")]
    pub sensors: Option<usize>,
    /// PostgreSQL database for the results (created if missing, tables too)
    #[arg(long, env = "LOAD_RESULTS_URL", hide_env_values = true, value_name = "URL")]
    pub results_url: String,
    /// Coordinated start time (RFC 3339) [default: when every worker is ready, plus --start-lead]
    #[arg(long, value_name = "RFC3339")]
    pub start_at: Option<String>,
    /// Seconds between the last worker getting ready and the common start
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub start_lead: f64,
    /// Longest wait for every worker to get ready, in seconds
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub barrier_timeout: f64,
    /// Also write every OK latency (µs, one a line) here: lets a test rebuild one histogram of all samples
    #[arg(long, value_name = "FILE")]
    pub dump_samples: Option<PathBuf>,
    /// The worker of index 0 merges the run after storing its own share (the Job's last word)
    #[arg(long)]
    pub merge: bool,
    /// How long the merging worker waits for the others' results, in seconds
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub merge_wait: f64,
}

/// Options of `load merge`.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// The run to merge
    #[arg(long = "run", env = "LOAD_RUN_ID", value_name = "ID")]
    pub run: String,
    /// PostgreSQL database holding the results
    #[arg(long, env = "LOAD_RESULTS_URL", hide_env_values = true, value_name = "URL")]
    pub results_url: String,
    /// Wait up to this many seconds for workers still running
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub wait: f64,
}

/// Options of `load scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Worker counts to measure
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<usize>,
    /// Users of each run (split over the workers)
    #[arg(long, default_value_t = 32)]
    pub users: usize,
    /// Requests/s of the paced runs (split over the workers); 0 skips them
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seconds per run
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// The API to load [default: a private `pipeline live`, rate limit lifted]
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
}

/// Seconds of a goose-style time: `30`, `30s`, `10m`, `1h`.
pub fn parse_secs(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| anyhow::anyhow!("{text:?} is not a time like 30s, 10m or 1h"))?;
    Ok(n * mult)
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
    /// Only these benchmarks (1-5, comma-separated; 5 = tap latency) [default: all]
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

    #[test]
    fn worker_and_merge_options_parse() {
        let cli = Cli::try_parse_from([
            "load",
            "worker",
            "--run",
            "r1",
            "--index",
            "2",
            "--workers",
            "4",
            "--api-url",
            "http://127.0.0.1:9",
            "--total-users",
            "20",
            "--total-rate",
            "500",
            "--window",
            "30s",
            "--mix",
            "latest",
            "--results-url",
            "postgres://x@127.0.0.1/db",
            "--merge",
        ])
        .unwrap();
        let Some(Command::Worker(w)) = cli.command else { panic!("not a worker") };
        assert_eq!((w.index, w.workers, w.users, w.rate, w.merge), (2, 4, 20, 500, true));
        assert_eq!(w.mix, crate::rest::Mix::Latest);
        let cli = Cli::try_parse_from(["load", "merge", "--run", "r1", "--results-url", "postgres://x@h/db"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Merge(MergeArgs { wait: 0.0, .. }))));
    }

    #[rstest]
    #[case("30", 30)]
    #[case("30s", 30)]
    #[case("10m", 600)]
    #[case("1h", 3600)]
    fn goose_style_times(#[case] text: &str, #[case] secs: u64) {
        assert_eq!(parse_secs(text).unwrap(), secs);
        assert!(parse_secs("soon").is_err());
    }
}
