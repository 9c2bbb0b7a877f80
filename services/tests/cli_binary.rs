//! The `pipeline` binary as the adapter and the load runner start it: its exit codes, its help
//! (which lists each component's `APQ_*` variables) and its error line. The library is tested
//! elsewhere; this is the thin main and `cli::main` around it (a main that returned success
//! without running anything passed every other test).

mod common;

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

// `live` on a machine whose database is still starting waits for it (saying so) instead of
// failing: the first line is about the wait, and the process is still running after it.
#[test]
fn live_waits_for_a_database_that_is_not_up_yet() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    // Port 9 (discard) on loopback: nothing listens, so every connect is refused at once.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("live")
        .env_remove("APQ_CONFIG")
        .env("APQ_DATABASE_URL", "postgres://postgres@127.0.0.1:9/apq_not_there")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the pipeline binary starts");
    let rx = common::lines_of(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let waiting = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("waiting for PostgreSQL") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let exited = child.try_wait().expect("poll the child");
    child.kill().ok();
    child.wait().ok();
    assert!(waiting, "no 'waiting for PostgreSQL' line within 20 s; stderr so far: {seen:#?}");
    assert!(exited.is_none(), "live exited ({exited:?}) instead of waiting; stderr: {seen:#?}");
}
