//! Scale rows: host threads, host RSS per idle plugin and load time with 10,
//! 100 and 1,000 plugins loaded in one host (`Supervisor::load_many`), with
//! the default sandbox, and 1,000 without it for comparison.

use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_host::{PluginSpec, Sandbox, Supervisor};
use bulkhead_tests::basic;

use crate::{status_kb, Report};

/// Raises the soft open-files limit to the hard one: each loaded plugin holds
/// five descriptors in the host (socket, its wake-up clone, two pipes, pidfd).
/// Returns the limit in force.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// Names of this process' threads; the main thread (named after the
/// executable, `bulkhead-bench`) is reported as `main`.
fn thread_names() -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| {
                let t = t.ok()?;
                if t.file_name().to_str() == Some(me.as_str()) {
                    return Some("main".to_string());
                }
                std::fs::read_to_string(t.path().join("comm")).ok()
            })
            .map(|c| c.trim_end().to_string())
            .collect()
        })
        .unwrap_or_default()
}

/// Open descriptors of this process.
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Threads of this process, and how many are bulkhead's, once the batch
/// loader's threads have left `/proc` (a joined thread can linger a moment).
fn settled_threads() -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = thread_names();
        if !names.iter().any(|n| n == "bulkhead-load") || Instant::now() > deadline {
            let ours = names.iter().filter(|n| n.starts_with("bulkhead-")).count();
            return (names.len(), ours);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Adds the scale rows.
pub(crate) fn rows(worker: &Path, lib: &Path, report: &mut Report, quick: bool) {
    let nofile = raise_nofile();
    let counts: &[usize] = if quick { &[10, 50] } else { &[10, 100, 1000] };
    let big = *counts.last().expect("counts");
    let sup = Supervisor::builder().worker_path(worker).build().expect("worker");
    let rss = || status_kb("/proc/self/status", "VmRSS:");
    // Warm up: the event loops, the spawner, allocator arenas and the batch
    // loader's thread stacks exist before the first measurement.
    drop(load(&sup, lib, 10, true));
    // Without the sandbox first: tearing down a thousand sandboxed workers'
    // namespaces goes on in the kernel after they are reaped and slows what
    // runs next.
    let mut runs: Vec<(usize, bool)> = vec![(big, false)];
    runs.extend(counts.iter().map(|&n| (n, true)));
    for (n, sandboxed) in runs {
        let (before, fds_before) = (rss(), fds());
        let t = Instant::now();
        let plugins = load(&sup, lib, n, sandboxed);
        let took = t.elapsed();
        let (all, ours) = settled_threads();
        let after = rss();
        let per_plugin = after.saturating_sub(before) as f64 / n as f64;
        let fds_per_plugin = fds().saturating_sub(fds_before) as f64 / n as f64;
        // Every worker answers.
        for (i, p) in plugins.iter().enumerate() {
            let v: i64 = p.call(basic::ADD, &(i as i64, 1i64)).expect("call");
            assert_eq!(v, i as i64 + 1);
        }
        let label = if sandboxed { "sandbox" } else { "no_sandbox" };
        println!(
            "{{\"bench\":\"scale\",\"plugins\":{n},\"sandbox\":{sandboxed},\"load_ms\":{:.1},\"host_threads\":{all},\"bulkhead_threads\":{ours},\"host_rss_kib_per_plugin\":{per_plugin:.1},\"host_fds_per_plugin\":{fds_per_plugin:.1},\"nofile\":{nofile}}}",
            took.as_secs_f64() * 1e3
        );
        report.row(
            format!("{n} plugins ({label}): load time / host threads / host RSS per idle plugin"),
            format!("{:.0} ms / {all} / {per_plugin:.0} KiB", took.as_secs_f64() * 1e3),
            format!(
                "`load_many` ({} threads); {ours} of the host's threads are bulkhead's; RSS delta over the {n} plugins (heap an earlier row freed is reused); {fds_per_plugin:.0} host fds per plugin",
                bulkhead_host::LOAD_MANY_THREADS
            ),
        );
        let t = Instant::now();
        drop(plugins);
        let unload = t.elapsed();
        println!(
            "{{\"bench\":\"scale\",\"plugins\":{n},\"sandbox\":{sandboxed},\"unload_ms\":{:.1},\"label\":\"{label}\"}}",
            unload.as_secs_f64() * 1e3
        );
    }
}

fn load(sup: &Supervisor, lib: &Path, n: usize, sandboxed: bool) -> Vec<bulkhead_host::Plugin> {
    let spec = || {
        let s = PluginSpec::new(lib);
        if sandboxed {
            s
        } else {
            s.sandbox(Sandbox::none())
        }
    };
    sup.load_many((0..n).map(|_| spec()))
        .into_iter()
        .map(|r| r.expect("load"))
        .collect()
}
