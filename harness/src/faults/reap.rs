//! Private servers whose harness died without stopping them (SIGKILL, a cancelled CI job, a
//! mutation-test timeout) are stopped by the next run. Each run's directory names its owner's
//! pid ([`claim`]); a directory whose owner has exited is reaped ([`reap_orphans`]): what was
//! started from it is killed and it is removed. A directory with a live owner (another run on this
//! machine) or without an owner file is never touched, and neither are the shared servers.

use std::path::{Path, PathBuf};

/// The file in a run's directory that names the process owning it.
pub const OWNER_FILE: &str = "owner.pid";

/// Marks `dir` as owned by this process.
pub fn claim(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())
}

/// The prefix of every directory that holds private servers (chaos runs and the tests of the
/// private nodes), so one reap covers them all.
pub const RUN_DIR_PREFIX: &str = "apq-chaos-";

/// A fresh run directory `<temp>/apq-chaos-<name>`, claimed by this process, after the servers
/// of killed runs' directories are stopped (each is named on stderr).
pub fn fresh_run_dir(name: &str) -> std::io::Result<PathBuf> {
    let temp = std::env::temp_dir();
    for orphan in reap_orphans(&temp, RUN_DIR_PREFIX) {
        eprintln!("harness: stopped the private servers of a killed run ({})", orphan.display());
    }
    let dir = temp.join(format!("{RUN_DIR_PREFIX}{name}"));
    std::fs::create_dir_all(&dir)?;
    claim(&dir)?;
    Ok(dir)
}

/// Reaps every directory in `parent` whose name starts with `prefix` and whose owner has exited;
/// returns the directories reaped.
pub fn reap_orphans(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else { return vec![] };
    let mut reaped = vec![];
    for dir in entries.filter_map(Result::ok).map(|e| e.path()) {
        let named = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix));
        if !named || !dir.is_dir() {
            continue;
        }
        // No owner file: a run still creating its directory, or one from before owner files.
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).ok().and_then(|s| s.trim().parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        // A live pid (or a reused one) keeps the directory: only a sure orphan is reaped.
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        kill_started_from(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        reaped.push(dir);
    }
    reaped
}

/// Kills every process whose arguments name a path in `dir` (the postmaster's `-D`, beam's
/// `-home`), and the private epmd a beam among them used (its arguments name only its port).
fn kill_started_from(dir: &Path) {
    let root = dir.to_string_lossy().into_owned();
    let inside = |a: &String| *a == root || a.starts_with(&format!("{root}/"));
    let procs = command_lines();
    let mut epmd_ports = vec![];
    for (pid, args) in &procs {
        if !args.iter().any(inside) {
            continue;
        }
        if let Some(i) = args.iter().position(|a| a == "-epmd_port") {
            epmd_ports.extend(args.get(i + 1).cloned());
        }
        // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster takes its backends with it.
        let postmaster = args.iter().any(|a| a == "-D");
        signal(*pid, if postmaster { libc::SIGQUIT } else { libc::SIGKILL });
    }
    for (pid, args) in &procs {
        let epmd = args.first().is_some_and(|a| a.ends_with("/epmd") || a == "epmd");
        if epmd && args.windows(2).any(|w| w[0] == "-port" && epmd_ports.contains(&w[1])) {
            signal(*pid, libc::SIGKILL);
        }
    }
}

/// Every process's arguments, from /proc.
fn command_lines() -> Vec<(u32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args =
                raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned());
            Some((pid, args.collect()))
        })
        .collect()
}

fn signal(pid: u32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) has no memory effects; pid names one process started from a dead run's directory.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn exited_pid() -> u32 {
        let mut child = Command::new("true").spawn().expect("true runs");
        child.wait().expect("true exits");
        child.id()
    }

    #[test]
    fn an_orphaned_directory_is_reaped_and_others_are_left_alone() {
        let parent = std::env::temp_dir().join(format!("apq-reap-test-{}", std::process::id()));
        let dir = |name: &str| {
            let d = parent.join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let orphan = dir("apq-chaos-orphan");
        std::fs::write(orphan.join(OWNER_FILE), exited_pid().to_string()).unwrap();
        // A "server" started from the orphan's directory: one process (no child of its own to
        // outlive the kill) naming a path inside it, its output away from the test's (a stray
        // holder of cargo's pipe would keep `cargo test` waiting).
        let data = orphan.join("data");
        std::fs::write(&data, "").unwrap();
        let mut server = Command::new("tail")
            .args(["-f", "-s", "1"])
            .arg(&data)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tail runs");
        let mine = dir("apq-chaos-mine");
        claim(&mine).unwrap();
        let unowned = dir("apq-chaos-unowned");
        let other = dir("something-else");
        std::fs::write(other.join(OWNER_FILE), exited_pid().to_string()).unwrap();

        let reaped = reap_orphans(&parent, "apq-chaos-");

        assert_eq!(reaped, vec![orphan.clone()]);
        assert!(!orphan.exists(), "the orphan's directory is removed");
        assert!(mine.exists() && unowned.exists() && other.exists(), "only the orphan is reaped");
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the orphan's server still runs 10 s after the reap");
            std::thread::sleep(Duration::from_millis(20)); // A poll: the kill lands within ms.
        }
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
