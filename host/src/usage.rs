//! Resource accounting: what a worker used by the time it exited (from the
//! kernel's `wait4` rusage, taken when the reaper reaps it), and the memory
//! live workers hold right now (from `/proc`).
//!
//! Both count the worker *and its descendants*: `wait4` reports a child's own
//! usage plus that of every descendant it waited for, and the live figure sums
//! the resident set of the worker's whole process tree. A worker that runs the
//! plugin in a child of its own (a sandbox's inner process) is therefore
//! accounted in full through the pid the host spawned.

use std::time::Duration;

/// What a worker process (with the descendants it waited for) used, from the
/// `rusage` the kernel returned when it was reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceUsage {
    /// CPU time in user mode.
    pub user: Duration,
    /// CPU time in the kernel.
    pub system: Duration,
    /// Peak resident set size, in bytes.
    pub max_rss: u64,
}

/// Memory of one live worker right now ([`Plugin::memory`](crate::Plugin::memory)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerMemory {
    /// The worker's pid (as the host sees it).
    pub pid: u32,
    /// Resident set size of the worker and all its descendants, in bytes.
    pub rss: u64,
    /// Peak resident set size of the worker process itself (`VmHWM`), in bytes.
    pub peak_rss: u64,
    /// Processes counted in `rss` (1 + descendants).
    pub processes: usize,
}

/// Most processes walked below one worker; a fork bomb is not followed further.
const MAX_TREE: usize = 4096;

/// Samples the memory of `pid` and its descendants; `None` if it is gone.
pub(crate) fn sample(pid: u32) -> Option<WorkerMemory> {
    let (rss, peak_rss) = status_kib(pid)?;
    let mut total = rss;
    let mut processes = 1;
    let mut stack = children(pid);
    while let Some(child) = stack.pop() {
        if processes >= MAX_TREE {
            break;
        }
        if let Some((rss, _)) = status_kib(child) {
            total += rss;
            processes += 1;
            stack.extend(children(child));
        }
    }
    Some(WorkerMemory {
        pid,
        rss: total * 1024,
        peak_rss: peak_rss * 1024,
        processes,
    })
}

/// CPU time (user + system) `pid` and its live descendants have used, with
/// what each has from children it waited for; `None` if `pid` is gone.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100) as u64;
    let mut ticks = stat_ticks(pid)?;
    let mut seen = 1;
    let mut stack = children(pid);
    while let Some(child) = stack.pop() {
        if seen >= MAX_TREE {
            break;
        }
        if let Some(t) = stat_ticks(child) {
            ticks += t;
            seen += 1;
            stack.extend(children(child));
        }
    }
    Some(Duration::from_micros(ticks.saturating_mul(1_000_000) / hz))
}

/// utime + stime + cutime + cstime of `pid`, in clock ticks.
fn stat_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: fields
    // are counted after its last ')'. There, field 3 (state) comes first;
    // utime, stime, cutime, cstime are fields 14 to 17.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    (14..=17).map(|i| f.get(i - 3)?.parse::<u64>().ok()).sum()
}

/// `VmRSS` and `VmHWM` of `pid` in KiB (0 for a process without memory, e.g. a zombie).
fn status_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((field("VmRSS:"), field("VmHWM:")))
}

/// Children of every thread of `pid` (`/proc/<pid>/task/<tid>/children`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten().take(MAX_TREE) {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process_and_a_child() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let me = sample(std::process::id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(me.rss > 0 && me.peak_rss > 0, "{me:?}");
        assert!(me.processes >= 2, "the child is counted: {me:?}");
        assert_eq!(sample(u32::MAX), None);
    }
}
