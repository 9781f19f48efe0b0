//! Resource usage of server processes, read from /proc/<pid>/status and /proc/<pid>/stat,
//! and the machine's CPU steal, read from /proc/stat.

use std::fs;

use anyhow::{Context, Result};
use serde::Serialize;

/// One reading of a server's resource usage (summed over its processes when it has several).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Snapshot {
    /// Resident set size in MiB.
    pub rss_mb: f64,
    /// Peak resident set size (VmHWM) in MiB (the sum of each process's peak).
    pub peak_rss_mb: f64,
    /// User + system CPU time consumed so far, in seconds.
    pub cpu_s: f64,
    /// CPU time of the database process tree, when one is watched.
    pub db_cpu_s: Option<f64>,
}

/// Watches a server's processes (one, or several on one database) and optionally a database
/// server (e.g. a PostgreSQL postmaster).
#[derive(Debug, Clone)]
pub struct Monitor {
    pids: Vec<u32>,
    db_pid: Option<u32>,
    ticks_per_s: f64,
}

impl Monitor {
    pub fn new(pids: Vec<u32>, db_pid: Option<u32>) -> Result<Self> {
        let monitor = Self { pids, db_pid, ticks_per_s: clock_ticks() };
        monitor.snapshot().context("reading server process stats")?;
        Ok(monitor)
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let (mut rss_kb, mut peak_kb, mut ticks) = (0.0, 0.0, 0.0);
        for pid in &self.pids {
            let status = fs::read_to_string(format!("/proc/{pid}/status"))
                .with_context(|| format!("process {pid} is gone"))?;
            let stat = read_stat(*pid)?;
            rss_kb += status_kb(&status, "VmRSS:");
            peak_kb += status_kb(&status, "VmHWM:");
            ticks += stat.utime + stat.stime;
        }
        let db_cpu_s = match self.db_pid {
            Some(pid) => Some(tree_cpu_ticks(pid)? / self.ticks_per_s),
            None => None,
        };
        Ok(Snapshot {
            rss_mb: rss_kb / 1024.0,
            peak_rss_mb: peak_kb / 1024.0,
            cpu_s: ticks / self.ticks_per_s,
            db_cpu_s,
        })
    }
}

struct Stat {
    ppid: u32,
    utime: f64,
    stime: f64,
    cutime: f64,
    cstime: f64,
}

fn read_stat(pid: u32) -> Result<Stat> {
    let raw = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat(&raw).with_context(|| format!("parsing /proc/{pid}/stat"))
}

fn parse_stat(raw: &str) -> Option<Stat> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &raw[raw.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); utime is field 14.
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: num(11)?,
        stime: num(12)?,
        cutime: num(13)?,
        cstime: num(14)?,
    })
}

/// CPU ticks of a process, its reaped children and its live children (one level deep,
/// as with a PostgreSQL postmaster and its backends).
fn tree_cpu_ticks(pid: u32) -> Result<f64> {
    let root = read_stat(pid)?;
    let mut total = root.utime + root.stime + root.cutime + root.cstime;
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Processes may exit while we scan: skip the ones we cannot read.
        if let Ok(stat) = read_stat(child)
            && stat.ppid == pid
        {
            total += stat.utime + stat.stime;
        }
    }
    Ok(total)
}

fn status_kb(status: &str, key: &str) -> f64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// The kernel's USER_HZ, via `getconf CLK_TCK`; 100 on every mainstream Linux platform.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The machine's CPU time counters (all CPUs together), from the first line of /proc/stat.
#[derive(Debug, Clone, Copy)]
pub struct SystemCpu {
    /// Every tick counted, steal included (guest time is already inside user time).
    total: f64,
    /// Ticks a virtual CPU wanted to run while the hypervisor ran something else.
    steal: f64,
}

impl SystemCpu {
    /// Reads /proc/stat now.
    pub fn read() -> Result<Self> {
        let raw = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_system_cpu(&raw).context("parsing /proc/stat")
    }

    /// Steal as a percentage of all CPU time between `self` and a later reading.
    pub fn steal_pct_until(&self, later: &SystemCpu) -> f64 {
        let total = later.total - self.total;
        if total <= 0.0 { 0.0 } else { 100.0 * (later.steal - self.steal) / total }
    }
}

fn parse_system_cpu(raw: &str) -> Option<SystemCpu> {
    let line = raw.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let fields: Vec<f64> =
        line.split_whitespace().skip(1).map(|f| f.parse::<f64>().ok()).collect::<Option<_>>()?;
    if fields.len() < 8 {
        return None;
    }
    Some(SystemCpu { total: fields[..8].iter().sum(), steal: fields[7] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let raw = "1234 (py (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 4 0";
        let s = parse_stat(raw).unwrap();
        assert_eq!(s.ppid, 1);
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (250.0, 50.0, 7.0, 3.0));
    }

    #[test]
    fn steal_is_a_share_of_all_ticks() {
        let before = parse_system_cpu("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3").unwrap();
        let after = parse_system_cpu("cpu  160 0 70 880 10 0 0 80 5 0\n").unwrap();
        // 200 ticks passed, 40 of them stolen.
        assert_eq!(before.steal_pct_until(&after), 20.0);
        assert_eq!(after.steal_pct_until(&after), 0.0);
        assert!(parse_system_cpu("cpu 1 2 3").is_none());
        assert!(SystemCpu::read().is_ok());
    }

    #[test]
    fn reads_own_process() {
        let m = Monitor::new(vec![std::process::id()], None).unwrap();
        let s = m.snapshot().unwrap();
        assert!(s.rss_mb > 0.0 && s.cpu_s >= 0.0);
    }
}
