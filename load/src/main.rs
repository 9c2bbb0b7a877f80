//! `load`: goose load runner and SLA gates for the audio pipeline (issue #4).
//!
//! `main` only parses the command line and maps the outcome to an exit code: 0 when every gate
//! passed, 99 when an SLA was breached (the gates are named), 1 on a harness error.

mod attack;
mod bench;
mod cli;
mod cpu;
mod pipeline;
mod plots;
mod publish;
mod reconcile;
mod report;
mod rest;
mod runner;
mod sla;
mod stats;
mod trend;

use clap::Parser as _;
use std::process::ExitCode;

/// Exit code of a breached SLA (the nightly job tells it apart from a crash).
pub const EXIT_SLA_BREACHED: u8 = 99;

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
