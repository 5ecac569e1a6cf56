//! How much CPU *other* work took during a run. On a 2-core machine a
//! compiler running beside the benchmark changes every figure, and the load
//! average cannot tell it apart from the benchmark's own server, database
//! and clients. So: the machine's busy CPU time during the run, minus that
//! of this process, the server child and the database server's processes.

use std::collections::HashMap;

/// Process names of the database servers the benchmark drives.
const DATABASE_PROCESSES: [&str; 3] = ["postgres", "mariadbd", "mysqld"];

/// CPU counters at one moment, in clock ticks.
pub struct CpuSnapshot {
    busy: u64,
    ours: HashMap<u32, u64>,
}

impl CpuSnapshot {
    /// Takes a snapshot; `server` is the server child's pid, if any.
    pub fn take(server: Option<u32>) -> Option<CpuSnapshot> {
        let busy = machine_busy_ticks()?;
        let mut ours = HashMap::new();
        let pids = std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok());
        for pid in pids {
            let is_ours = pid == std::process::id()
                || Some(pid) == server
                || std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| DATABASE_PROCESSES.contains(&comm.trim()));
            if is_ours && let Some(ticks) = process_ticks(pid) {
                ours.insert(pid, ticks);
            }
        }
        Some(CpuSnapshot { busy, ours })
    }

    /// The share of the machine's CPU capacity (0-100%) that other work
    /// used between `self` and `later`, `seconds` apart.
    pub fn foreign_percent(&self, later: &CpuSnapshot, seconds: f64, cpus: usize) -> f64 {
        let busy = later.busy.saturating_sub(self.busy);
        // A process that started during the run counts from zero; one that
        // ended is lost (and its time is counted as foreign: a small error
        // in the cautious direction).
        let ours: u64 = later
            .ours
            .iter()
            .map(|(pid, &t)| t.saturating_sub(self.ours.get(pid).copied().unwrap_or(0)))
            .sum();
        let capacity = seconds * ticks_per_second() * cpus as f64;
        if capacity <= 0.0 {
            return 0.0;
        }
        (busy.saturating_sub(ours) as f64 / capacity * 100.0).clamp(0.0, 100.0)
    }
}

/// user + nice + system + irq + softirq + steal of all CPUs, from /proc/stat.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// utime + stime of one process (all its threads).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name in parentheses may hold spaces: count fields after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ... utime(11) stime(12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system; no memory of
    // ours is involved.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
