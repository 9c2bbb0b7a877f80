//! Where things are, decided at run time: from `QA_*` variables, else from the working directory
//! (the checkout that contains it), never from where a binary was compiled. Two checkouts that
//! share one target directory therefore each run their own features and write their own reports,
//! and a copied binary works anywhere inside a checkout.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// The checkout: `QA_ROOT`, else the nearest directory at or above the working directory that
/// holds `features/` and `fixtures/contracts/`.
pub fn project_root() -> anyhow::Result<PathBuf> {
    project_root_with(|k| std::env::var(k).ok(), &std::env::current_dir().context("reading the working directory")?)
}

pub fn project_root_with(get: impl Fn(&str) -> Option<String>, cwd: &Path) -> anyhow::Result<PathBuf> {
    if let Some(root) = get("QA_ROOT") {
        let root = PathBuf::from(root);
        if !is_root(&root) {
            bail!("QA_ROOT={} holds no features/ and fixtures/contracts/", root.display());
        }
        return Ok(root);
    }
    cwd.ancestors().find(|d| is_root(d)).map(Path::to_path_buf).with_context(|| {
        format!(
            "{} is not inside an audio-pipeline-qa checkout (no features/ and fixtures/contracts/ above it); \
             run from the checkout or set QA_ROOT",
            cwd.display()
        )
    })
}

fn is_root(dir: &Path) -> bool {
    dir.join("features").is_dir() && dir.join("fixtures/contracts").is_dir()
}

/// The feature files to run: `QA_FEATURES` (a file or a directory; relative to the checkout's
/// root), else `<root>/features`.
pub fn features(root: &Path) -> PathBuf {
    match std::env::var_os("QA_FEATURES").map(PathBuf::from) {
        Some(p) if p.is_relative() => root.join(p),
        Some(p) => p,
        None => root.join("features"),
    }
}

/// A fresh run id: 8 hex digits (valid in database, queue and sensor names).
pub fn new_run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// `<report root>/runs/<run id>/`, created, with `<report root>/latest` pointed at it (a
/// symlink, replaced atomically). Each run writes only below its own folder, so concurrent runs
/// never touch each other's files.
pub fn run_report_dir(report_root: &Path, run_id: &str) -> anyhow::Result<PathBuf> {
    let dir = report_root.join("runs").join(run_id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = report_root.join(format!(".latest-{run_id}"));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(Path::new("runs").join(run_id), &tmp)
            .with_context(|| format!("linking {}", tmp.display()))?;
        let latest = report_root.join("latest");
        if latest.is_dir() && !latest.is_symlink() {
            // An old-style copy: leave it, and say where this run's reports are instead.
            let _ = std::fs::remove_file(&tmp);
        } else {
            std::fs::rename(&tmp, &latest).with_context(|| format!("pointing {} at this run", latest.display()))?;
        }
    }
    Ok(dir)
}

/// The reference implementation's launcher, `sut-pipeline`, built beside the running test binary
/// (`target/<profile>/deps/cucumber-…` → `target/<profile>/sut-pipeline`).
pub fn reference_sut_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running binary")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(format!("sut-pipeline{}", std::env::consts::EXE_SUFFIX)))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "no reference SUT binary at {}; build it (`cargo build --workspace`) or set QA_SUT_COMMAND to your adapter",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_found_from_any_folder_below_it_and_qa_root_wins() {
        let base = std::env::temp_dir().join(format!("apq-paths-{}", uuid::Uuid::new_v4()));
        let deep = base.join("steps/tests");
        std::fs::create_dir_all(base.join("features")).unwrap();
        std::fs::create_dir_all(base.join("fixtures/contracts")).unwrap();
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(project_root_with(|_| None, &deep).unwrap(), base);
        let elsewhere = std::env::temp_dir();
        let err = project_root_with(|_| None, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("QA_ROOT"), "{err}");
        let root = base.display().to_string();
        assert_eq!(project_root_with(|k| (k == "QA_ROOT").then(|| root.clone()), &elsewhere).unwrap(), base);
        std::fs::remove_dir_all(&base).ok();
    }

    #[test]
    fn each_run_gets_its_own_folder_and_latest_follows() {
        let base = std::env::temp_dir().join(format!("apq-runs-{}", uuid::Uuid::new_v4()));
        let a = run_report_dir(&base, "aaaa0001").unwrap();
        std::fs::write(a.join("keep"), "a").unwrap();
        let b = run_report_dir(&base, "bbbb0002").unwrap();
        assert!(a.join("keep").is_file(), "a later run must not remove an earlier run's files");
        assert_eq!(std::fs::canonicalize(base.join("latest")).unwrap(), std::fs::canonicalize(&b).unwrap());
        std::fs::remove_dir_all(&base).ok();
    }
}
