//! CPU used by the load generator itself (this process), so reports can show whether the
//! generator, not the system under test, was the bottleneck.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// CPU seconds of this process (all threads) so far: (user, system).
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// A CPU stopwatch.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    /// CPU seconds (user, system) at the start.
    start_cpu: (f64, f64),
    /// Wall clock at the start.
    start_wall: Instant,
}

/// What the generator used between start and now.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CpuUsage {
    /// User CPU seconds.
    pub user_secs: f64,
    /// System CPU seconds.
    pub system_secs: f64,
    /// Wall seconds.
    pub wall_secs: f64,
    /// Average cores busy: (user + system) / wall.
    pub cores: f64,
    /// `cores` as a percentage of the machine's cores.
    pub machine_pct: f64,
}

impl CpuMeter {
    /// CPU seconds (user + system) of this process so far.
    pub fn process_cpu_secs() -> f64 {
        let (u, s) = cpu_seconds();
        u + s
    }

    /// Starts measuring now.
    pub fn start() -> Self {
        CpuMeter { start_cpu: cpu_seconds(), start_wall: Instant::now() }
    }

    /// Usage since [`CpuMeter::start`].
    pub fn usage(&self) -> CpuUsage {
        let (u, s) = cpu_seconds();
        let wall = self.start_wall.elapsed().as_secs_f64().max(1e-9);
        let (user, system) = (u - self.start_cpu.0, s - self.start_cpu.1);
        let cores = (user + system) / wall;
        let machine = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        CpuUsage { user_secs: user, system_secs: system, wall_secs: wall, cores, machine_pct: cores / machine * 100.0 }
    }
}

/// Jiffies (busy, total) of one CPU from `/proc/stat`, for how busy a pinned process kept it.
pub fn core_jiffies(stat: &str, core: usize) -> Option<(u64, u64)> {
    let name = format!("cpu{core}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Share (0–1) of `core` that was busy between two `/proc/stat` readings.
pub fn core_busy(before: &str, after: &str, core: usize) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (core_jiffies(before, core)?, core_jiffies(after, core)?);
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

#[cfg(test)]
mod core_tests {
    use super::*;

    #[test]
    fn a_core_busy_share_comes_from_its_proc_stat_line() {
        let before = "cpu  9 0 9 9 0 0 0 0 0 0\ncpu0 1 0 1 10 0 0 0 0 0 0\ncpu1 10 0 10 100 0 0 0 0 0 0\n";
        let after = "cpu  9 0 9 9 0 0 0 0 0 0\ncpu0 1 0 1 20 0 0 0 0 0 0\ncpu1 55 0 44 121 0 0 0 0 0 0\n";
        assert_eq!(core_busy(before, after, 1), Some(0.79));
        assert_eq!(core_busy(before, after, 0), Some(0.0));
        assert_eq!(core_busy(before, after, 7), None);
    }
}
