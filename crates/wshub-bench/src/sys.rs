//! What the tool reads from and asks of the operating system: a process's RSS (VmRSS in
//! /proc/PID/status) and CPU time (utime + stime in /proc/PID/stat, in clock ticks, turned
//! into seconds with the real tick rate from the auxiliary vector via `rustix`), the
//! ephemeral port range, the wall clock in µs, and raising RLIMIT_NOFILE to its hard limit.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch. Every process of a run stamps and compares times with
/// this one clock (CLOCK_REALTIME is shared by all processes on the machine).
#[inline]
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Resident set size of `pid` in KiB, if the process exists.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The command name of `pid` (/proc/PID/comm), e.g. "redis-server".
pub(crate) fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim_end().to_string())
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux), the unit of
/// /proc/PID/stat's CPU times.
pub(crate) fn ticks_per_second() -> u64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100,
        n => n,
    }
}

/// CPU seconds (user + system) that `pid` (`None`: this process) has used so far.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state), so utime (field 14) is rest[11] and stime (15) rest[12].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second() as f64)
}

/// CPU seconds this process has used so far, all threads, with nanosecond resolution
/// (CLOCK_PROCESS_CPUTIME_ID): cheap enough to read after every message.
pub(crate) fn own_cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// CPU seconds that `pid` (`None`: this process) has used so far, with nanosecond
/// resolution: the sum of the first field of /proc/PID/task/*/schedstat (time on a CPU) over
/// its live threads. For short measurements (a catch-up of a few ms), where the 10 ms ticks of
/// /proc/PID/stat say nothing. Threads that exit between two readings take their time with
/// them, so a difference can come out low (or negative; callers clamp it).
pub(crate) fn cpu_seconds_fine(pid: Option<u32>) -> Option<f64> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/task"),
        None => "/proc/self/task".to_string(),
    };
    let mut total_ns = 0u64;
    let mut any = false;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            total_ns += ns;
            any = true;
        }
    }
    any.then(|| total_ns as f64 / 1e9)
}

/// CPU seconds that all processes on the machine have used so far, across all cores: user,
/// nice, system and steal time of the `cpu` line of /proc/stat. Interrupt and softirq time
/// (much of it loopback packet processing caused by the run itself) is left out.
pub(crate) fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = [0, 1, 2, 7]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    Some(busy as f64 / ticks_per_second() as f64)
}

/// How many CPUs this process may run on (its affinity: `Cpus_allowed_list` in
/// /proc/self/status, e.g. "1" under `taskset -c 1`); 1 if unknown.
pub(crate) fn allowed_cpus() -> usize {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 1;
    };
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return 1;
    };
    list.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(range.parse::<usize>().is_ok()),
        })
        .sum::<usize>()
        .max(1)
}

/// How many local ports the kernel hands out per source address
/// (/proc/sys/net/ipv4/ip_local_port_range; 28,232 by default).
pub(crate) fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            let low = it.next()??;
            let high = it.next()??;
            Some(high.saturating_sub(low) + 1)
        })
        .unwrap_or(28_232)
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit; returns the new soft
/// limit (`u64::MAX` for unlimited).
pub(crate) fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The hard RLIMIT_NOFILE (what any one process of this tool can reach).
pub(crate) fn hard_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(rss_kib(std::process::id()).unwrap_or(0) > 0);
        assert!(cpu_seconds(None).is_some());
        assert!(machine_busy_seconds().unwrap_or(0.0) > 0.0);
        assert!(cpu_seconds(Some(std::process::id())).is_some());
        assert!(
            !process_name(std::process::id())
                .unwrap_or_default()
                .is_empty()
        );
        assert!(cpu_seconds_fine(None).unwrap_or(0.0) > 0.0);
        assert!(own_cpu_seconds() > 0.0);
        assert!(ticks_per_second() >= 100);
        assert!(allowed_cpus() >= 1);
        assert!(ephemeral_ports() > 1000);
        assert!(raise_fd_limit() >= 256);
        assert!(now_us() > 1_600_000_000_000_000);
    }
}
