//! `load`: goose load runner and SLA gates for the audio pipeline (issues #4 and #14).
//!
//! `main` only parses the command line and maps the outcome to an exit code: 0 when every gate
//! passed, 99 when an SLA was breached (the gates are named), 1 on a harness error (including a
//! worker that failed or never reported in a distributed run).

mod spec;

use clap::Parser as _;
use load::{EXIT_SLA_BREACHED, bench, cli, dist, runner, scale};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::compat_args(std::env::args());
    let cli = cli::Cli::parse_from(args);
    // lapin logs every closed channel at ERROR, including the expected 404s of passive checks
    // and clean-up of queues that never existed; those errors reach us as `Result`s anyway.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin::channel=off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = match cli.command.clone() {
        Some(cli::Command::Bench(b)) => runtime.block_on(bench::run(&cli.opts, &b)).map(|()| true),
        Some(cli::Command::Spec(s)) => runtime.block_on(spec::run(&cli.opts, &s)),
        Some(cli::Command::Worker(mut w)) => {
            w.api_url = w.api_url.or_else(|| cli.goose.host.clone());
            runtime.block_on(dist::worker_main(&cli.opts, &w))
        }
        Some(cli::Command::Merge(m)) => runtime.block_on(dist::merge_main(&cli.opts, &m)),
        Some(cli::Command::Scale(s)) => runtime.block_on(scale::run(&cli.opts, &s)).map(|()| true),
        None => runtime.block_on(runner::run(cli)).map(|r| r.failed == 0),
    };
    // Service processes and goose users may still be winding down; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_SLA_BREACHED),
        Err(e) => {
            eprintln!("load: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
