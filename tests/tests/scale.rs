//! Scale: the host's threads do not grow with the number of plugins (reaping
//! and output draining are served by fixed event loops), batch loads keep
//! their order and isolate failures, and crashes, timeouts and output still
//! work with many plugins loaded.
//!
//! One test function: cargo runs the tests of a binary in parallel threads of
//! one process, and the thread counts below must not see another test's
//! transient threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_host::{CallError, Exit, LoadError, LoadFailure, OutputBudget, Plugin, PluginSpec, Supervisor};
use bulkhead_tests::{basic, fixtures, spec};

const GENEROUS: Duration = Duration::from_secs(60);
/// Names of threads that exist only while a job runs (a batch load, a
/// background restart).
const TRANSIENT: [&str; 4] = [
    "bulkhead-load",
    "bulkhead-restart",
    "bulkhead-standby",
    "bulkhead-probe",
];

/// Names of this process' threads that bulkhead started.
fn bulkhead_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim_end().to_string())
        .filter(|c| c.starts_with("bulkhead-"))
        .collect();
    names.sort();
    names
}

/// The long-lived bulkhead threads, once no transient job thread is left
/// (a finished job's thread can linger in `/proc` for a moment after its join).
#[track_caller]
fn settled_threads() -> Vec<String> {
    let deadline = Instant::now() + GENEROUS;
    loop {
        let names = bulkhead_threads();
        // `comm` keeps the first 15 bytes of a thread's name.
        if !names
            .iter()
            .any(|n| TRANSIENT.iter().any(|t| t.starts_with(n.as_str())))
        {
            return names;
        }
        assert!(Instant::now() < deadline, "transient threads never ended: {names:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[track_caller]
fn check_answers(plugins: &[Plugin]) {
    for (i, p) in plugins.iter().enumerate() {
        let sum: i64 = p.call(basic::ADD, &(i as i64, 1000i64)).unwrap();
        assert_eq!(sum, i as i64 + 1000);
    }
}

#[test]
fn host_threads_do_not_grow_with_plugins() {
    let lines = Arc::new(AtomicUsize::new(0));
    let counted = lines.clone();
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .on_output(move |line| {
            if line.line.starts_with("line ") {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .unwrap();

    // Half the plugins stop idle workers: one timer thread serves them all.
    // No output budget: every line of the crash below is to be forwarded
    // (the budget has its own test, output_budget.rs).
    let basic = |i: usize| match i % 2 {
        0 => spec("fx-basic").output_budget(OutputBudget::unlimited()),
        _ => spec("fx-basic")
            .idle_timeout(Duration::from_secs(3600))
            .output_budget(OutputBudget::unlimited()),
    };
    // 10 plugins in one batch.
    let mut plugins: Vec<Plugin> = sup
        .load_many((0..10).map(basic))
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    check_answers(&plugins);
    let at_10 = settled_threads();

    // 30 more: a batch and single loads.
    plugins.extend(
        sup.load_many((0..20).map(|_| spec("fx-basic")))
            .into_iter()
            .map(|r| r.unwrap()),
    );
    for _ in 0..10 {
        plugins.push(sup.load(spec("fx-basic")).unwrap());
    }
    check_answers(&plugins);
    let at_40 = settled_threads();
    assert_eq!(at_10, at_40, "bulkhead threads grew with the plugin count");
    assert!(at_40.len() <= 16, "{} bulkhead threads: {at_40:?}", at_40.len());
    for name in ["bulkhead-reaper", "bulkhead-output", "bulkhead-timer"] {
        assert_eq!(at_40.iter().filter(|n| *n == name).count(), 1, "{name} in {at_40:?}");
    }
    // One spawner per core, at most 4.
    let spawners = at_40.iter().filter(|n| *n == "bulkhead-spawne").count();
    assert!((1..=4).contains(&spawners), "{at_40:?}");
    let workers: Vec<u32> = plugins.iter().map(|p| p.info().worker_pid).collect();
    let mut unique = workers.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 40);

    // A crash with 40 plugins loaded: reaped, with its exit and its stderr tail.
    let victim = &plugins[7];
    let old_pid = victim.info().worker_pid;
    let printed: u64 = victim
        .call_with_timeout(basic::PRINT, &(100_000u64, true), GENEROUS)
        .unwrap();
    assert_eq!(printed, 100_000);
    match victim.call::<_, u32>(basic::ABORT, &()).unwrap_err() {
        CallError::WorkerDied {
            exit: Exit::Signal { signal: 6, .. },
            stderr,
            ..
        } => {
            assert!(stderr.len() <= bulkhead_host::STDERR_TAIL, "{}", stderr.len());
            // The tail ends with the last full lines of what was printed
            // (100,000 bytes of "line N of output\n" end with "line 50", a
            // piece of line 5,056, forwarded as a line of its own at EOF).
            assert!(stderr.ends_with("line 5055 of output\nline 50\n"), "tail: {stderr:?}");
            assert!(!stderr.contains("line 1 of output\n"), "the tail kept the head");
        }
        other => panic!("expected WorkerDied by SIGABRT, got {other:?}"),
    }
    // Every line reached the callback (the last one, cut short, too).
    // (Output lines of other workers do not start with "line ".)
    let deadline = Instant::now() + GENEROUS;
    while lines.load(Ordering::Relaxed) < 5056 {
        assert!(
            Instant::now() < deadline,
            "{} lines forwarded",
            lines.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let sum: i64 = victim.call(basic::ADD, &(1i64, 2i64)).unwrap();
    assert_eq!(sum, 3);
    assert_ne!(victim.info().worker_pid, old_pid);

    // A timeout with 40 plugins loaded: the worker is killed and replaced.
    let slow = &plugins[23];
    match slow
        .call_with_timeout::<_, u64>(basic::SLEEP_MS, &(60_000u64,), Duration::from_millis(200))
        .unwrap_err()
    {
        CallError::Timeout { limit, .. } => assert_eq!(limit, Duration::from_millis(200)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    check_answers(&plugins);
    let after = settled_threads();
    assert_eq!(after, at_10, "bulkhead threads after a crash and a timeout");

    // Unloading gives every worker back (reaped: no zombie left behind).
    let reports = sup.shutdown();
    assert_eq!(reports.len(), 40);
    // None of the workers is still a child of ours, not even a zombie.
    let left: Vec<(u32, char)> = bulkhead_tests::my_children()
        .into_iter()
        .filter(|(pid, _)| workers.contains(pid) || *pid == old_pid)
        .collect();
    assert_eq!(left, vec![], "workers left after shutdown");
}

#[test]
fn load_many_keeps_order_and_isolates_failures() {
    let sup = bulkhead_tests::supervisor();
    let specs = vec![
        spec("fx-basic"),
        spec("fx-greeter").plugin("HelloGreeter"),
        PluginSpec::new("/nonexistent/libnothing.so"),
        spec("fx-basic"),
        spec("fx-greeter").plugin("NoSuchPlugin"),
        spec("fx-greeter").plugin("ShoutGreeter"),
    ];
    let results = sup.load_many(specs);
    assert_eq!(results.len(), 6);
    let ok = |i: usize| results[i].as_ref().unwrap_or_else(|e| panic!("spec {i}: {e}"));
    assert_eq!(ok(0).info().plugin_name, "BasicPlugin");
    assert_eq!(ok(3).info().plugin_name, "BasicPlugin");
    assert_eq!(ok(1).info().plugin_name, "HelloGreeter");
    assert_eq!(ok(5).info().plugin_name, "ShoutGreeter");
    let s: String = ok(1).call(0, &("bob".to_string(),)).unwrap();
    assert_eq!(s, "Hello, bob!");
    let s: String = ok(5).call(0, &("bob".to_string(),)).unwrap();
    assert_eq!(s, "HELLO, BOB!");
    match &results[2] {
        Err(LoadError::Rejected {
            reason: LoadFailure::FileUnreadable { .. },
            ..
        }) => {}
        other => panic!("expected FileUnreadable, got {other:?}"),
    }
    match &results[4] {
        Err(LoadError::Rejected {
            reason: LoadFailure::PluginNotFound { requested, .. },
            ..
        }) => assert_eq!(requested, "NoSuchPlugin"),
        other => panic!("expected PluginNotFound, got {other:?}"),
    }
    // An empty batch is an empty answer.
    assert!(sup.load_many(Vec::new()).is_empty());
}
