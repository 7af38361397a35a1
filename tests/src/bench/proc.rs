//! What the benchmarks read of a process (ours or a peer's) from `/proc`.

/// User + system CPU time of process `pid` so far, in seconds (0 once it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// A numeric line of `/proc/<pid>/status`: `VmRSS`, `RssAnon` (kB) or `Threads` (a count);
/// 0 when the process or the field is missing.
pub fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// This process's `status_field`.
pub fn own_status_field(field: &str) -> u64 {
    status_field(std::process::id(), field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(own_status_field("VmRSS") > 0);
        assert!(own_status_field("Threads") >= 1);
        assert_eq!(own_status_field("NoSuchField"), 0);
        // Spins until a clock tick of CPU is counted (a tick is 10 ms; 10 s is a bound, not
        // a figure): a misread field stays at 0.
        let start = std::time::Instant::now();
        while cpu_seconds(std::process::id()) == 0.0 && start.elapsed().as_secs() < 10 {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(std::process::id()) > 0.0);
        assert_eq!(cpu_seconds(u32::MAX), 0.0, "no such process");
    }
}
