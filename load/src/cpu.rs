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
