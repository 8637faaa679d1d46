//! Cold start: a fresh supervisor is built, loads a plugin and answers its
//! first call — with the sandbox on (the default) and off — against the
//! baseline of procspawn's spawn + join of a closure, all in the same run.
//!
//! Each bulkhead sample builds a new `Supervisor` (so its fork-server and its
//! worker start from nothing) and drops it after the clock stopped: shutdown
//! is not part of the figure. A worker binary that passed the version check
//! is remembered for the life of the process, so these builds do not repeat
//! it; one more subject pays it every time: a fresh copy of the worker binary
//! (a new inode) per sample. The subjects take turns, so the noise of a shared
//! machine falls on all of them alike.

use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_host::{PluginSpec, Sandbox, Supervisor};
use bulkhead_tests::{basic, Fixtures};

use crate::{summarize, us, Report, Summary};

/// One cold start: build, load, first call. Returns the time to the first
/// answer and the supervisor, to be dropped off the clock.
fn bulkhead_once(worker: &Path, lib: &Path, sandbox: &Sandbox) -> (Duration, Supervisor) {
    let t = Instant::now();
    let sup = Supervisor::builder().worker_path(worker).build().expect("worker");
    let plugin = sup.load(PluginSpec::new(lib).sandbox(sandbox.clone())).expect("load");
    let x: i64 = plugin.call(basic::ADD, &(1i64, 1i64)).expect("first call");
    let elapsed = t.elapsed();
    assert_eq!(x, 2);
    drop(plugin);
    (elapsed, sup)
}

/// One procspawn spawn + join of a closure returning a small value.
fn procspawn_once() -> Duration {
    let t = Instant::now();
    let handle = procspawn::spawn(20u32, |x| x + 22);
    let got = handle.join().expect("procspawn join");
    let elapsed = t.elapsed();
    assert_eq!(got, 42);
    elapsed
}

/// The rows; `scale` shrinks counts for `--quick`.
pub fn rows(fx: &Fixtures, report: &mut Report, scale: &impl Fn(usize) -> usize) {
    let lib = fx.lib("fx-basic");
    let n = scale(40);
    let (mut on, mut off, mut baseline, mut fresh) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let copy = std::env::temp_dir().join(format!("bulkhead-bench-worker-{}", std::process::id()));
    // Two rounds of warm-up: page cache, the host's own threads, procspawn's set-up.
    for round in 0..n + 2 {
        let (a, sup) = bulkhead_once(&fx.worker, &lib, &Sandbox::strict());
        drop(sup);
        // A binary this process has not checked yet (copied off the clock).
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(&fx.worker, &copy).expect("copy the worker binary");
        let (d, sup) = bulkhead_once(&copy, &lib, &Sandbox::strict());
        drop(sup);
        let (b, sup) = bulkhead_once(&fx.worker, &lib, &Sandbox::none());
        drop(sup);
        let c = procspawn_once();
        if round >= 2 {
            on.push(a);
            off.push(b);
            baseline.push(c);
            fresh.push(d);
        }
    }
    let _ = std::fs::remove_file(&copy);
    let (on, off, baseline, fresh) = (summarize(on), summarize(off), summarize(baseline), summarize(fresh));
    report.json("coldstart", "build_load_first_call_sandbox", &on, "");
    report.json(
        "coldstart",
        "build_load_first_call_sandbox_unchecked_binary",
        &fresh,
        "",
    );
    report.json("coldstart", "build_load_first_call_no_sandbox", &off, "");
    report.json("coldstart", "procspawn_spawn_join", &baseline, "");
    let ratio = |a: Summary| a.median.as_secs_f64() / baseline.median.as_secs_f64();
    report.row(
        "cold start (build + load + first call), sandbox on".into(),
        format!("{} / {}", us(on.median), us(on.p99)),
        format!(
            "median / p99, a new supervisor per sample; **{:.2}× procspawn** spawn + join ({} / {}); sandbox off {} ({:.2}× procspawn); on a binary not checked yet in the process (version probe included) {}",
            ratio(on),
            us(baseline.median),
            us(baseline.p99),
            us(off.median),
            ratio(off),
            us(fresh.median)
        ),
    );
}
