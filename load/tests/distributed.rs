//! Distributed load on loopback (issue #14): K `load worker` processes against one private
//! reference API, their results stored in a results database of the test's own and merged.
//!
//! Proves: the merged histogram equals one histogram fed every worker's raw samples (bucket
//! for bucket, so every count and percentile is exact); the workers' shares add up to the
//! target users and rate and their achieved rates add up to the target; a worker that fails
//! makes the merge fail, naming it, and exits non-zero.
//!
//! Needs the local RabbitMQ and PostgreSQL (`QA_AMQP_URL`, `QA_DATABASE_URL`, defaults on
//! 127.0.0.1) and the `pipeline` binary next to `load` (`cargo build -p services`).

use load::dist::{LocalRun, run_local};
use load::localapi::{LocalApi, LocalApiSpec};
use load::rest::Mix;
use load::stats::histogram;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

/// The `load` binary under test and the `pipeline` binary built beside it.
fn binaries() -> (PathBuf, PathBuf) {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_load"));
    let pipeline = load.with_file_name("pipeline");
    assert!(
        pipeline.is_file(),
        "{} is missing: build the reference services first (cargo build -p services)",
        pipeline.display()
    );
    (load, pipeline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_merge_exactly_and_a_failed_worker_fails_the_merge() {
    let (exe, pipeline) = binaries();
    let dir = std::env::temp_dir().join(format!("load-distributed-{:08x}", rand::random::<u32>()));
    let admin = env_or("QA_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres");
    let spec = LocalApiSpec {
        services_bin: pipeline,
        amqp_url: env_or("QA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        admin_db_url: admin.clone(),
        sensors: 4,
        tokens: 8,
        unlimited: false,
        log: dir.join("pipeline-live.log"),
    };
    let api = LocalApi::start(&spec).await.expect("private reference API");
    let outcome = std::panic::AssertUnwindSafe(check(&exe, &admin, &api, &dir));
    let result = futures::FutureExt::catch_unwind(outcome).await;
    api.stop().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn check(exe: &std::path::Path, admin: &str, api: &LocalApi, dir: &std::path::Path) {
    let (workers, users, rate) = (3usize, 7usize, 151u64);
    let run = LocalRun {
        exe: exe.to_path_buf(),
        admin_db_url: admin.to_string(),
        api_url: api.url.clone(),
        tokens: api.tokens.clone(),
        workers,
        users,
        rate,
        window_secs: 4,
        mix: Mix::Latest,
        sensors: Some(4),
        dir: dir.join("exact"),
        keep_samples: true,
        extra_args: BTreeMap::new(),
    };
    let out = run_local(&run).await.expect("local run");
    let logs = || {
        (0..workers)
            .map(|i| std::fs::read_to_string(run.dir.join(format!("worker-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert!(out.exit_codes.values().all(|c| *c == Some(0)), "worker exit codes {:?}\n{}", out.exit_codes, logs());
    let m = out.merged.unwrap_or_else(|e| panic!("merge failed: {e:#}\n{}", logs()));

    // Exactness: one histogram fed every raw sample of every worker equals the merged one.
    assert_eq!(out.samples.len(), workers, "every worker dumped its samples");
    let mut one = histogram();
    for (i, samples) in &out.samples {
        let w = m.workers.iter().find(|w| w.index == *i).expect("worker in the merge");
        assert_eq!(samples.len() as u64, w.ok, "worker {i}: one sample per valid answer");
        for v in samples {
            one.record(*v).expect("sample within the histogram's range");
        }
    }
    assert!(one.len() > 100, "too few answers to mean anything: {}", one.len());
    assert_eq!(m.raw.len(), one.len(), "merged count");
    assert_eq!(m.ok, one.len(), "merged valid answers = samples");
    for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
        assert_eq!(m.raw.value_at_quantile(q), one.value_at_quantile(q), "quantile {q}");
    }
    assert_eq!((m.raw.min(), m.raw.max()), (one.min(), one.max()), "min and max");
    assert!(m.raw == one, "merged histogram differs from the one fed every sample (bucket counts)");

    // Shares add up to the target exactly; achieved rates add up to (about) the target.
    assert_eq!(m.workers.iter().map(|w| w.users).sum::<usize>(), users, "users shares");
    assert_eq!(m.workers.iter().map(|w| w.rate_share).sum::<u64>(), rate, "rate shares");
    let mut shares: Vec<u64> = m.workers.iter().map(|w| w.rate_share).collect();
    shares.sort_unstable();
    assert_eq!(shares, vec![50, 50, 51], "floor/ceil split of 151/s over 3 workers");
    let achieved: f64 = m.workers.iter().map(|w| w.achieved_per_sec).sum();
    assert!((achieved - m.achieved_per_sec).abs() < 1e-6, "merged rate is the sum of the workers'");
    assert!(
        achieved > rate as f64 * 0.8 && achieved < rate as f64 * 1.1,
        "achieved {achieved:.1}/s of {rate}/s: {:?}",
        m.workers.iter().map(|w| (w.index, w.achieved_per_sec)).collect::<Vec<_>>()
    );
    // Each worker ran its own share, at about its own rate.
    for w in &m.workers {
        assert!(
            (w.achieved_per_sec - w.rate_share as f64).abs() < w.rate_share as f64 * 0.2,
            "worker {} achieved {:.1}/s of its {}/s",
            w.index,
            w.achieved_per_sec,
            w.rate_share
        );
    }

    // A failed worker: worker 1 points at a port nothing listens on.
    let mut extra = BTreeMap::new();
    extra.insert(1, vec!["--api-url".to_string(), "http://127.0.0.1:9".to_string()]);
    let failing = LocalRun { dir: dir.join("failing"), keep_samples: false, extra_args: extra, ..run.clone() };
    let out = run_local(&failing).await.expect("local run");
    assert_eq!(out.exit_codes.get(&1), Some(&Some(1)), "the failing worker exits 1: {:?}", out.exit_codes);
    let err = format!("{:#}", out.merged.expect_err("a merge with a failed worker must fail"));
    assert!(err.contains("worker 1") && err.contains("failed") && err.contains("127.0.0.1:9"), "{err}");
    // Its peers did not start a run that could not be merged.
    assert!(out.exit_codes.values().all(|c| *c == Some(1)), "exit codes {:?}", out.exit_codes);
}
