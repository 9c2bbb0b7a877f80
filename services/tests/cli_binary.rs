//! The `pipeline` binary as the adapter and the load runner start it: its exit codes, its help
//! (which lists each component's `APQ_*` variables) and its error line. The library is tested
//! elsewhere; this is the thin main and `cli::main` around it (a main that returned success
//! without running anything passed every other test).

use std::process::{Command, Output};

fn pipeline(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    cmd.args(args).env_remove("APQ_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the pipeline binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_component_and_exits_0() {
    let out = pipeline(&["--help"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", text(&out.stderr));
    for component in ["sensor", "algorithm-a", "algorithm-b", "data-writer", "rest-api", "migrate", "purge", "live"] {
        assert!(stdout.contains(component), "--help does not list {component}:\n{stdout}");
    }
}

#[test]
fn a_component_help_lists_its_variables_with_defaults() {
    let out = pipeline(&["data-writer", "--help"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains("APQ_WRITER_BATCH_SIZE"), "{stdout}");
    assert!(!stdout.contains("APQ_API_TOKENS"), "the writer's help lists the API's variables:\n{stdout}");
}

#[test]
fn an_unknown_component_is_a_usage_error() {
    let out = pipeline(&["algorithm-z"], &[]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("algorithm-z"), "stderr: {}", text(&out.stderr));
}

#[test]
fn an_invalid_setting_exits_1_naming_it() {
    let out = pipeline(&["data-writer"], &[("APQ_WRITER_BATCH_SIZE", "0")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("pipeline: ") && stderr.contains("batch_size"), "stderr: {stderr}");
}
