//! CPU time and memory of a process, read from `/proc`.

use std::time::Duration;

use anyhow::Context as _;

/// What `/proc/<pid>` says of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

impl ProcStats {
    pub fn read(pid: u32) -> anyhow::Result<ProcStats> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat (has the process exited?)"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        Ok(ProcStats {
            cpu: cpu_time(&stat)?,
            rss_kib: status_kib(&status, "VmRSS:")?,
            peak_rss_kib: status_kib(&status, "VmHWM:")?,
        })
    }
}

/// The unit of the times in `/proc/<pid>/stat` (the kernel's `USER_HZ`, 100 on Linux whatever
/// the kernel's own tick rate).
const USER_HZ: u64 = 100;

/// utime + stime (fields 14 and 15 of `stat`, counted after the command name in parentheses).
fn cpu_time(stat: &str) -> anyhow::Result<Duration> {
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/<pid>/stat has no command name")?;
    // After the name: field 3 (state) is the first; utime is field 14, stime 15.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("/proc/<pid>/stat is too short")?
            .parse()
            .context("/proc/<pid>/stat: a CPU time is not a number")
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_nanos(total * 1_000_000_000 / USER_HZ))
}

fn status_kib(status: &str, key: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("/proc/<pid>/status has no {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = ProcStats::read(std::process::id()).expect("own stats");
        assert!(me.rss_kib > 0 && me.peak_rss_kib >= me.rss_kib);
    }

    #[test]
    fn cpu_time_skips_a_name_with_spaces_and_parentheses() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_time(stat).expect("parsed"), Duration::from_secs(3));
    }
}
