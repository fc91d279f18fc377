//! A server's CPU time and resident memory, read from `/proc`.
//!
//! CPU time is `utime + stime` (fields 14 and 15 of `/proc/PID/stat`, all threads
//! of the process) in clock ticks of `USER_HZ`, which Linux fixes at 100 for
//! `/proc` on every architecture it runs on. Memory is `VmRSS` of
//! `/proc/PID/status`. Several processes (nginx's master and workers) are summed.

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times.
const USER_HZ: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error(
        "cannot read /proc/{pid}/{file} (is the server running, and on this machine?): {source}"
    )]
    Read {
        pid: u32,
        file: &'static str,
        source: std::io::Error,
    },
    #[error("unexpected format of /proc/{pid}/{file}")]
    Format { pid: u32, file: &'static str },
}

/// One reading of the measured processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU time.
    pub cpu: Duration,
    /// The system (kernel) part of `cpu`: on loopback it includes the receiving
    /// side's TCP processing, which runs in the sender's softirq.
    pub sys: Duration,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// Reads and sums `pids`.
pub fn sample(pids: &[u32]) -> Result<Sample, ProcError> {
    let mut total = Sample::default();
    for &pid in pids {
        let (cpu, sys) = cpu(pid)?;
        total.cpu += cpu;
        total.sys += sys;
        total.rss_kib += rss_kib(pid)?;
    }
    Ok(total)
}

fn read(pid: u32, file: &'static str) -> Result<String, ProcError> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError::Read {
        pid,
        file,
        source,
    })
}

/// `utime + stime` and `stime` of one process.
pub fn cpu(pid: u32) -> Result<(Duration, Duration), ProcError> {
    let stat = read(pid, "stat")?;
    let ticks = |t: u64| Duration::from_millis(t * 1000 / USER_HZ);
    parse_cpu_ticks(&stat)
        .map(|(user, sys)| (ticks(user + sys), ticks(sys)))
        .ok_or(ProcError::Format { pid, file: "stat" })
}

/// `VmRSS` of one process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    let status = read(pid, "status")?;
    parse_rss_kib(&status).ok_or(ProcError::Format {
        pid,
        file: "status",
    })
}

/// Ticks of `utime` and `stime` from a `/proc/PID/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted after the
/// last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat =
            "4242 (tokio worker) S 1 4242 4242 0 -1 4194560 1 0 0 0 150 27 0 0 20 0 3 0 9 1 2";
        assert_eq!(parse_cpu_ticks(stat), Some((150, 27)));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tx\nVmPeak:\t  1 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(10240));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = sample(&[me]).expect("own /proc");
        assert!(s.rss_kib > 0);
    }
}
