//! CPU each process of a pipeline run used over a phase, per chunk, from `/proc`: the map of
//! where a saturated box's cores go (#15). The run's own service processes are counted by pid;
//! the shared broker and database by name (every `beam.smp`, and every `postgres` process of a
//! cluster whose data directory is not a private one under `$TMPDIR`), so their figures include
//! whatever else uses those servers meanwhile; the load runner counts itself. Figures are CPU
//! time (user + system), which a busy box inflates far less than it inflates latencies.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// CPU seconds per process group at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken (for cores busy).
    at: Instant,
    /// CPU seconds by group ("algorithm-a", "RabbitMQ (shared)", …).
    secs: BTreeMap<String, f64>,
    /// Busy and total jiffies of the whole machine (`/proc/stat`'s `cpu` line).
    machine: Option<(u64, u64)>,
}

/// One group's share of a phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupCpu {
    /// The group ("algorithm-a" sums its instances).
    pub group: String,
    /// CPU seconds over the phase.
    pub cpu_secs: f64,
    /// CPU microseconds per chunk of the phase.
    pub us_per_chunk: f64,
    /// Average cores it kept busy.
    pub cores: f64,
    /// µs per chunk above what the group uses idle (its idle cores over the same wall time taken
    /// off), once an idle baseline is known: the cost of the chunks themselves.
    pub net_us_per_chunk: Option<f64>,
}

/// Where a phase's CPU went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Chunks the phase processed.
    pub chunks: u64,
    /// Wall seconds of the phase.
    pub wall_secs: f64,
    /// Per group, largest first.
    pub groups: Vec<GroupCpu>,
    /// Σ of the groups' µs per chunk.
    pub total_us_per_chunk: f64,
    /// Σ of the groups' net µs per chunk, once an idle baseline is known.
    pub total_net_us_per_chunk: Option<f64>,
    /// Share (0–1) of the machine's cores busy over the phase (everything on the box).
    pub machine_busy: Option<f64>,
}

/// Jiffies per second (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (comm, ppid, utime + stime in jiffies) from a `/proc/<pid>/stat` line. The comm is in
/// parentheses and may hold spaces or parentheses itself, so the fields start after the last ')'.
pub fn parse_stat(line: &str) -> Option<(String, u32, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, ppid, utime + stime))
}

fn stat_of(pid: u32) -> Option<(String, u32, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn cmdline_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// "load-1a2b3c4d-algorithm-a-3" → "algorithm-a".
pub fn component_of(instance: &str, prefix: &str) -> String {
    let rest = instance.strip_prefix(prefix).map(|r| r.trim_start_matches('-')).unwrap_or(instance);
    match rest.rsplit_once('-') {
        Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
        _ => rest.to_string(),
    }
}

/// The machine's busy and total jiffies.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    Some((total - (v.get(3)? + v.get(4).copied().unwrap_or(0)), total))
}

/// Takes a snapshot: the run's instances (`pids`, ids prefixed by `prefix`), the shared broker and
/// database, and this process.
pub fn snapshot(pids: &[(String, u32)], prefix: &str) -> Snapshot {
    let tick = ticks_per_sec();
    let mut secs: BTreeMap<String, f64> = BTreeMap::new();
    for (id, pid) in pids {
        if let Some((_, _, j)) = stat_of(*pid) {
            *secs.entry(component_of(id, prefix)).or_default() += j as f64 / tick;
        }
    }
    let private = std::env::temp_dir().display().to_string();
    let mut procs: BTreeMap<u32, (String, u32, u64)> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if let Some(s) = stat_of(pid).filter(|s| s.0 == "beam.smp" || s.0 == "postgres") {
                procs.insert(pid, s);
            }
        }
    }
    for (pid, (comm, ppid, j)) in &procs {
        // A postgres backend's parent is its postmaster, whose command line names the data dir.
        let root = if comm == "postgres" && procs.get(ppid).is_some_and(|p| p.0 == "postgres") { *ppid } else { *pid };
        if cmdline_of(root).contains(&private) {
            continue; // a private node or cluster (chaos runs, node tests): not the shared servers
        }
        let group = if comm == "beam.smp" { "RabbitMQ (shared)" } else { "PostgreSQL (shared)" };
        *secs.entry(group.into()).or_default() += *j as f64 / tick;
    }
    let me = crate::cpu::CpuMeter::process_cpu_secs();
    secs.insert("load runner (this process)".into(), me);
    Snapshot { at: Instant::now(), secs, machine: machine_jiffies() }
}

impl Snapshot {
    /// What each group used between `self` and `later`, per chunk of `chunks`. A group missing
    /// from `self` (an instance started during the phase) counts from zero.
    pub fn until(&self, later: &Snapshot, chunks: u64) -> Breakdown {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let per = chunks.max(1) as f64;
        let mut groups: Vec<GroupCpu> = later
            .secs
            .iter()
            .map(|(g, s1)| {
                let used = (s1 - self.secs.get(g).copied().unwrap_or(0.0)).max(0.0);
                GroupCpu {
                    group: g.clone(),
                    cpu_secs: used,
                    us_per_chunk: used * 1e6 / per,
                    cores: used / wall,
                    net_us_per_chunk: None,
                }
            })
            .collect();
        groups.sort_by(|a, b| b.cpu_secs.total_cmp(&a.cpu_secs));
        let machine_busy = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
            _ => None,
        };
        let total_us_per_chunk = groups.iter().map(|g| g.us_per_chunk).sum();
        Breakdown { chunks, wall_secs: wall, groups, total_us_per_chunk, machine_busy, total_net_us_per_chunk: None }
    }
}

impl Breakdown {
    /// Takes off each group's idle use (`idle`: the same processes with nothing flowing).
    pub fn net_of(mut self, idle: &Breakdown) -> Breakdown {
        let per = self.chunks.max(1) as f64;
        for g in &mut self.groups {
            let idle_cores = idle.groups.iter().find(|i| i.group == g.group).map_or(0.0, |i| i.cores);
            g.net_us_per_chunk = Some((g.cpu_secs - idle_cores * self.wall_secs).max(0.0) * 1e6 / per);
        }
        self.total_net_us_per_chunk = Some(self.groups.iter().filter_map(|g| g.net_us_per_chunk).sum());
        self
    }

    /// A console table.
    pub fn render(&self, title: &str) -> String {
        // No chunks (the idle baseline): only seconds and cores mean anything.
        let per = |v: f64| if self.chunks == 0 { "-".to_string() } else { format!("{v:.0}") };
        let net =
            |v: Option<f64>| v.filter(|_| self.chunks > 0).map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "CPU per chunk, {title}: {} chunks in {:.1} s; machine {} busy\n{:<28} {:>8} {:>7} {:>11} {:>16}\n",
            self.chunks,
            self.wall_secs,
            self.machine_busy.map(|b| format!("{:.0}%", b * 100.0)).unwrap_or_else(|| "?".into()),
            "process",
            "cpu s",
            "cores",
            "µs / chunk",
            "µs / chunk net",
        );
        for g in &self.groups {
            s += &format!(
                "{:<28} {:>8.2} {:>7.2} {:>11} {:>16}\n",
                g.group,
                g.cpu_secs,
                g.cores,
                per(g.us_per_chunk),
                net(g.net_us_per_chunk)
            );
        }
        s += &format!(
            "{:<28} {:>8} {:>7} {:>11} {:>16}\n",
            "all of the above",
            "",
            "",
            per(self.total_us_per_chunk),
            net(self.total_net_us_per_chunk)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_its_comm_parses() {
        let line = "1234 (tokio (rt) w) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 5 0 0";
        assert_eq!(parse_stat(line), Some(("tokio (rt) w".into(), 77, 281)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn instances_group_by_component() {
        assert_eq!(component_of("load-1a2b-algorithm-a-3", "load-1a2b"), "algorithm-a");
        assert_eq!(component_of("load-1a2b-data-writer-12", "load-1a2b"), "data-writer");
        assert_eq!(component_of("elsewhere-rest-api", "load-1a2b"), "elsewhere-rest-api");
    }

    #[test]
    fn a_breakdown_divides_by_chunks_and_sorts_largest_first() {
        let t = Instant::now();
        let s = |a: f64, b: f64| Snapshot {
            at: t,
            secs: [("a".to_string(), a), ("b".to_string(), b)].into_iter().collect(),
            machine: None,
        };
        let mut later = s(1.5, 3.0);
        later.at = t + std::time::Duration::from_secs(2);
        later.secs.insert("new".into(), 0.5);
        let b = s(1.0, 1.0).until(&later, 1000);
        let got: Vec<(&str, f64)> = b.groups.iter().map(|g| (g.group.as_str(), g.us_per_chunk.round())).collect();
        assert_eq!(got, vec![("b", 2000.0), ("a", 500.0), ("new", 500.0)]);
        assert_eq!(b.total_us_per_chunk.round(), 3000.0);
        assert!((b.groups[0].cores - 1.0).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn the_idle_use_comes_off_per_group() {
        let t = Instant::now();
        let snap = |a: f64, secs: u64| Snapshot {
            at: t + std::time::Duration::from_secs(secs),
            secs: [("broker".to_string(), a)].into_iter().collect(),
            machine: None,
        };
        // Idle: 0.25 cores. Loaded: 1.5 s of CPU in 2 s for 1000 chunks; 0.5 s of it is idle use.
        let idle = snap(0.0, 0).until(&snap(0.5, 2), 0);
        let b = snap(10.0, 10).until(&snap(11.5, 12), 1000).net_of(&idle);
        assert_eq!(b.groups[0].us_per_chunk.round(), 1500.0);
        assert_eq!(b.groups[0].net_us_per_chunk.map(f64::round), Some(1000.0));
        assert_eq!(b.total_net_us_per_chunk.map(f64::round), Some(1000.0));
    }

    #[test]
    fn this_process_is_in_a_snapshot_and_its_cpu_only_grows() {
        let a = snapshot(&[], "none");
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = snapshot(&[], "none");
        let me = "load runner (this process)";
        assert!(b.secs[me] >= a.secs[me], "{:?} then {:?}", a.secs, b.secs);
    }
}
