//! Fault injection below the services (issue #11): links and servers that break on request.
//!
//! Layout:
//! - [`proxy`]: a TCP fault proxy per link (latency, bandwidth, silence, resets, cut-offs,
//!   pauses, slow replies), with a timestamped history for reports.
//! - [`rabbit_node`]: a private RabbitMQ node per run (own ports, epmd, cookie and data dir) to
//!   stop, kill, alarm and restart. The machine's shared broker is never touched.
//! - [`pg_cluster`]: a private PostgreSQL cluster per run (initdb + pg_ctl) to stop, crash and
//!   restart. The shared server is never touched.
//! - [`reap`]: the private servers of a run whose harness was killed are stopped by the next run.
//!
//! Private nodes need the server binaries; [`rabbitmq_available`] and [`postgres_available`] say
//! why not, so scenarios and tests can be skipped with a reason.

pub mod pg_cluster;
pub mod proxy;
pub mod rabbit_node;
pub mod reap;

pub use pg_cluster::PrivatePostgres;
pub use proxy::{FaultChange, FaultEvent, LinkFault, Proxy};
pub use rabbit_node::{PrivateRabbit, QueueDepth};

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Ok when a private RabbitMQ node can be started here, else why not.
pub fn rabbitmq_available() -> Result<(), String> {
    rabbit_node::Binaries::find().map(|_| ())
}

/// Ok when a private PostgreSQL cluster can be started here, else why not.
pub fn postgres_available() -> Result<(), String> {
    pg_cluster::Binaries::find().map(|_| ())
}

/// A port free on 127.0.0.1 right now (bound, read, released). Another process may take it
/// before the server binds it; the server's start then fails and says which port.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// `path` if it is an executable file.
pub(crate) fn executable(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}

/// `name` on `PATH`.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).find_map(|d| executable(&d.join(name)))
}

/// The last `n` lines of a log file, indented, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}\n")).collect()
}

/// Runs a command to completion within `limit`, failing (with its output) on a non-zero exit.
/// The command is killed if the limit passes, so nothing hangs.
pub(crate) async fn run(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> anyhow::Result<String> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{what}: no answer within {limit:?}"))?
        .with_context(|| format!("{what}: could not run it"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        anyhow::bail!("{what} failed ({}):\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout)
}

/// Sends `signal` to a whole process group (the servers are started as group leaders, so their
/// helpers go too). Only ever called with a group this module created.
pub(crate) fn kill_group(pgid: u32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) has no memory effects; a negative pid addresses our own child's group.
        unsafe {
            libc::kill(-(pgid as i32), signal);
        }
    }
}

/// Waits (polling, at most `limit`) for a child to exit; true if it did.
pub(crate) async fn wait_exit(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // A poll: std's Child has no async wait, and exits take tens of milliseconds.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Live (non-zombie) processes in process group `pgid`, from /proc.
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // The fields after the command's closing parenthesis: state ppid pgrp …
            let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
            rest.first() != Some(&"Z") && rest.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        })
        .collect()
}

/// Waits (polling, at most `limit`) until no live process is left in group `pgid`: a killed
/// leader is reaped before its children (beam) have finished dying and closed their sockets.
pub(crate) async fn wait_group_gone(pgid: u32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if processes_in_group(pgid).is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // A poll: the kernel gives no notification for another process's exit.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
