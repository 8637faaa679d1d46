//! Operations: the default restart policy under bursts, health and its
//! events, hot reload, idle workers, resource accounting, and shutdown racing
//! background restarts. Real workers, real plugins; every wait is on an event
//! under a generous deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_host::{Backoff, CallError, EventKind, EventReceiver, Exit, Health, LoadError, RestartPolicy, Supervisor};
use bulkhead_tests::{basic, spec, supervisor};
use serde::Serialize;

const GENEROUS: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct ScaleConfig {
    prefix: String,
    factor: i64,
    crash: bool,
}

fn version(factor: i64) -> bulkhead_host::PluginSpec {
    spec("fx-configured").config(&ScaleConfig {
        prefix: format!("v{factor}"),
        factor,
        crash: false,
    })
}

/// Waits for the first event matching `want`, failing the test at the deadline.
#[track_caller]
fn wait_for(events: &EventReceiver, what: &str, mut want: impl FnMut(&EventKind) -> bool) -> EventKind {
    let deadline = Instant::now() + GENEROUS;
    loop {
        match events.recv_deadline(deadline) {
            Ok(e) if want(&e.kind) => return e.kind,
            Ok(_) => {}
            Err(_) => panic!("no {what} event within {GENEROUS:?}"),
        }
    }
}

/// Pool of 4, 8 threads, 300 ms timeout, 1 call in 50 hangs, default policy:
/// the plugin never gives up and keeps answering good calls; a good call may
/// only see `Busy` (or `Backoff`) while every worker is hung (or, on a loaded
/// machine, run out of its 300 ms after waiting for a worker).
#[test]
fn pool_of_four_keeps_answering_through_bursts_of_hangs_under_the_default_policy() {
    let sup = supervisor();
    let plugin = sup
        .load(spec("fx-basic").workers(4).call_timeout(Duration::from_millis(300)))
        .unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let plugin = plugin.clone();
            std::thread::spawn(move || {
                let mut tally: BTreeMap<&'static str, u64> = BTreeMap::new();
                for i in 0..150u64 {
                    if i % 50 == 7 {
                        let r = plugin.call::<_, u64>(basic::SPIN, &());
                        assert!(
                            matches!(r, Err(CallError::Timeout { .. } | CallError::Busy { .. })),
                            "hang: {r:?}"
                        );
                        *tally.entry("hang").or_default() += 1;
                        continue;
                    }
                    let x = (t * 1000 + i) as i64;
                    match plugin.call::<_, i64>(basic::ADD, &(x, 1i64)) {
                        Ok(v) => {
                            assert_eq!(v, x + 1, "right answer");
                            *tally.entry("ok").or_default() += 1;
                        }
                        Err(CallError::Busy { .. } | CallError::Backoff { .. }) => {
                            *tally.entry("busy").or_default() += 1;
                        }
                        // On a loaded machine a good call that got a worker just
                        // before its 300 ms deadline can run out of time.
                        Err(CallError::Timeout { .. }) => {
                            *tally.entry("late").or_default() += 1;
                        }
                        Err(e) => panic!("good call failed with {e:?}"),
                    }
                }
                tally
            })
        })
        .collect();
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in threads {
        for (k, v) in t.join().expect("no thread panicked") {
            *total.entry(k).or_default() += v;
        }
    }
    let good: u64 = ["ok", "busy", "late"]
        .iter()
        .map(|k| total.get(k).copied().unwrap_or(0))
        .sum();
    let ok = total.get("ok").copied().unwrap_or(0);
    println!("burst: {total:?}, stats {:?}", plugin.stats());
    assert_eq!(good, 8 * 147);
    assert!(ok * 10 >= good * 9, "at least 90 % of good calls answered: {total:?}");
    assert!(!matches!(plugin.health(), Health::Failed { .. }));
    // Afterwards every call succeeds.
    for i in 0..8i64 {
        assert_eq!(plugin.call::<_, i64>(basic::ADD, &(i, 1i64)).unwrap(), i + 1);
    }
}

#[test]
fn health_goes_degraded_then_healthy_and_failed_only_under_a_budget() {
    let sup = supervisor();
    let events = sup.events();
    // A long backoff keeps the second consecutive failure visible.
    let slow = Backoff {
        initial: Duration::from_secs(2),
        factor: 2.0,
        max: Duration::from_secs(30),
    };
    let plugin = sup
        .load(spec("fx-basic").restart(RestartPolicy::default().backoff(slow)))
        .unwrap();
    assert_eq!(plugin.health(), Health::Healthy);
    // The first crash is replaced at once.
    let _ = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    let kind = wait_for(&events, "degraded", |k| {
        matches!(
            k,
            EventKind::HealthChanged {
                health: Health::Degraded { .. }
            }
        )
    });
    assert_eq!(
        kind,
        EventKind::HealthChanged {
            health: Health::Degraded {
                live: 0,
                workers: 1,
                restarting: 1,
                next_attempt: None
            }
        }
    );
    wait_for(&events, "healthy", |k| {
        matches!(
            k,
            EventKind::HealthChanged {
                health: Health::Healthy
            }
        )
    });
    // A second crash before the replacement served a call backs off.
    let _ = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    let health = plugin.health();
    assert!(
        matches!(
            health,
            Health::Degraded {
                live: 0,
                workers: 1,
                restarting: 1,
                next_attempt: Some(_)
            }
        ),
        "{health:?}"
    );
    wait_for(&events, "healthy again", |k| {
        matches!(
            k,
            EventKind::HealthChanged {
                health: Health::Healthy
            }
        )
    });
    assert_eq!(plugin.health(), Health::Healthy);
    assert_eq!(plugin.call::<_, i64>(basic::ADD, &(2i64, 3i64)).unwrap(), 5);

    // Under an explicit budget of one restart per worker, the third crash gives up.
    let budget = sup
        .load(spec("fx-basic").restart(RestartPolicy::on_failure(1, Duration::from_secs(60)).backoff(Backoff::none())))
        .unwrap();
    let _ = budget.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    wait_for(&events, "restart", |k| matches!(k, EventKind::Restarted { .. }));
    let _ = budget.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    match budget.health() {
        Health::Failed { reason, .. } => assert!(reason.contains("worker died"), "{reason}"),
        other => panic!("expected failed, got {other:?}"),
    }
    wait_for(&events, "failed", |k| {
        matches!(
            k,
            EventKind::HealthChanged {
                health: Health::Failed { .. }
            }
        )
    });
    assert!(matches!(
        budget.call::<_, i64>(basic::ADD, &(1i64, 1i64)),
        Err(CallError::Failed { .. })
    ));
    budget.reset();
    assert_eq!(budget.call::<_, i64>(basic::ADD, &(1i64, 1i64)).unwrap(), 2);
    assert_eq!(budget.health(), Health::Healthy);
}

#[test]
fn reload_drains_in_flight_calls_then_serves_the_new_version() {
    let (lines_tx, lines) = crossbeam_channel::unbounded::<(u32, String)>();
    let sup = Supervisor::builder()
        .worker_path(&bulkhead_tests::fixtures().worker)
        .on_output(move |l| {
            let _ = lines_tx.send((l.pid, l.line.to_string()));
        })
        .build()
        .unwrap();
    let events = sup.events();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let _: u32 = plugin.call(basic::PID, &()).unwrap();
    let old_pid = plugin.worker_pids()[0];
    let slow = {
        let plugin = plugin.clone();
        std::thread::spawn(move || plugin.call::<_, u64>(basic::ANNOUNCE_THEN_SLEEP, &("slow".to_string(), 1500u64)))
    };
    // The slow call is running on the old worker once it printed its line.
    let (pid, line) = lines.recv_timeout(GENEROUS).expect("the slow call announces itself");
    assert_eq!((pid, line.as_str()), (old_pid, "slow"));
    let reports = plugin.reload(spec("fx-basic")).unwrap();
    // The reload returned after the old worker finished the slow call and stopped.
    assert_eq!(
        slow.join().unwrap().unwrap(),
        1500,
        "the in-flight call completed on the old version"
    );
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        (reports[0].pid, reports[0].exit, reports[0].forced),
        (old_pid, Some(Exit::Code(0)), false)
    );
    let _: u32 = plugin.call(basic::PID, &()).unwrap();
    let new_pid = plugin.worker_pids()[0];
    assert_ne!(new_pid, old_pid);
    assert_eq!(plugin.worker_pids(), vec![new_pid]);
    wait_for(&events, "reloaded", |k| matches!(k, EventKind::Reloaded { .. }));
}

#[test]
fn every_call_is_answered_by_exactly_one_version_across_reloads() {
    let sup = supervisor();
    let plugin = sup.load(version(1).workers(2)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4i64)
        .map(|t| {
            let (plugin, stop) = (plugin.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeMap::<i64, u64>::new();
                let mut i = 1i64;
                while !stop.load(Ordering::Relaxed) {
                    let x = t * 1_000_000 + i;
                    let y: i64 = plugin.call(1, &(x,)).expect("no call is lost");
                    assert_eq!(y % x, 0, "{y} is not a multiple of {x}");
                    let factor = y / x;
                    assert!((1..=3).contains(&factor), "answer {y} from no version");
                    *seen.entry(factor).or_default() += 1;
                    i += 1;
                }
                seen
            })
        })
        .collect();
    for factor in [2, 3] {
        plugin.reload(version(factor).workers(2)).unwrap();
        // Once the reload returned, only the new version answers.
        for x in 1..20i64 {
            assert_eq!(plugin.call::<_, i64>(1, &(x,)).unwrap(), x * factor);
        }
        assert_eq!(plugin.call::<_, String>(0, &()).unwrap(), format!("v{factor}x{factor}"));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = BTreeMap::<i64, u64>::new();
    for t in threads {
        for (k, v) in t.join().expect("no caller panicked") {
            *seen.entry(k).or_default() += v;
        }
    }
    println!("answers by version: {seen:?}");
    assert!(seen.contains_key(&3), "calls reached the last version: {seen:?}");
    assert_eq!(plugin.stats().errors, BTreeMap::new());
}

#[test]
fn reload_to_a_broken_library_keeps_the_old_version_serving() {
    let sup = supervisor();
    let plugin = sup.load(version(5)).unwrap();
    let pid = plugin.info().worker_pid;
    let err = plugin.reload(spec("fx-dlopen-crash")).unwrap_err();
    assert!(matches!(err, LoadError::WorkerDied { .. }), "{err:?}");
    let err = plugin.reload(spec("does-not-exist")).unwrap_err();
    assert!(matches!(err, LoadError::Rejected { .. }), "{err:?}");
    assert_eq!(plugin.call::<_, i64>(1, &(3i64,)).unwrap(), 15);
    assert_eq!(plugin.worker_pids(), vec![pid]);
    assert_eq!(plugin.health(), Health::Healthy);
}

#[test]
fn idle_workers_stop_and_restart_on_the_next_call() {
    let sup = supervisor();
    let events = sup.events();
    let plugin = sup
        // The plugin reports its pid to name the worker that answered: that
        // takes the host's pid namespace (every other sandbox layer stays on).
        .load(
            spec("fx-basic")
                .workers(2)
                .idle_timeout(Duration::from_millis(300))
                .sandbox(bulkhead_host::Sandbox::strict().without(bulkhead_host::Layer::PidNs)),
        )
        .unwrap();
    let first: u32 = plugin.call(basic::PID, &()).unwrap();
    let mut stopped = Vec::new();
    while stopped.len() < 2 {
        if let EventKind::IdleStopped { pid } =
            wait_for(&events, "idle stop", |k| matches!(k, EventKind::IdleStopped { .. }))
        {
            stopped.push(pid);
        }
    }
    assert!(stopped.contains(&first), "{stopped:?}");
    assert_eq!(plugin.worker_pids(), Vec::<u32>::new());
    assert_eq!(plugin.health(), Health::Healthy);
    let again: u32 = plugin.call(basic::PID, &()).unwrap();
    assert!(!stopped.contains(&again));
    assert_eq!(plugin.worker_pids(), vec![again]);
    let stats = plugin.stats();
    assert_eq!((stats.restarts, stats.errors.len()), (0, 0), "{stats:?}");
}

#[test]
fn resource_usage_of_a_cpu_burning_worker() {
    let sup = supervisor();
    let events = sup.events();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let mem = plugin.memory();
    assert_eq!(mem.len(), 1);
    // The sandboxed worker is three processes: outer, init and the plugin's.
    assert!(mem[0].rss > 0 && mem[0].processes == 3, "{mem:?}");
    let pid = plugin.info().worker_pid;
    let _: u64 = plugin.call(basic::WORK, &(30_000_000u64,)).unwrap();
    let _ = plugin.call::<_, u32>(basic::EXIT, &(0i32,)).unwrap_err();
    let kind = wait_for(
        &events,
        "exit",
        |k| matches!(k, EventKind::WorkerExited { pid: p, .. } if *p == pid),
    );
    let EventKind::WorkerExited { usage, .. } = kind else {
        unreachable!()
    };
    let usage = usage.expect("rusage from the reap");
    assert!(usage.user >= Duration::from_millis(5), "{usage:?}");
    assert!(usage.max_rss >= 1 << 20, "{usage:?}");
    let stats = plugin.stats();
    assert_eq!(stats.exited_workers, 1);
    assert_eq!((stats.cpu_user, stats.max_rss), (usage.user, usage.max_rss));
}

/// Shutdown right after a standby promotion races the background refill and
/// reap; every worker must be stopped once, politely, and reported.
#[test]
fn shutdown_racing_a_standby_refill_forces_nothing() {
    for _ in 0..8 {
        let sup = supervisor();
        let events = sup.events();
        let plugin = sup.load(spec("fx-basic").standby(true)).unwrap();
        let _ = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
        let _: u32 = plugin.call(basic::PID, &()).unwrap();
        let reports = sup.shutdown();
        drop(plugin);
        for r in &reports {
            assert_eq!((r.exit, r.forced), (Some(Exit::Code(0)), false), "{reports:?}");
        }
        let mut pids: Vec<u32> = reports.iter().map(|r| r.pid).collect();
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), reports.len(), "each worker reported once: {reports:?}");
        // Every started worker ended (reported, or the crashed one reaped).
        let kinds: Vec<EventKind> = events.try_iter().map(|e| e.kind).collect();
        let started = kinds
            .iter()
            .filter(|k| matches!(k, EventKind::WorkerStarted { .. }))
            .count();
        let exited = kinds
            .iter()
            .filter(|k| matches!(k, EventKind::WorkerExited { .. }))
            .count();
        assert_eq!(started, exited, "{kinds:?}");
    }
}

/// A tight address-space limit no longer drops the plugin to the socket
/// transport: the shared region is sized to fit the limit.
#[test]
fn address_space_limit_keeps_the_shared_memory_transport() {
    if bulkhead_tests::transport() != bulkhead_host::Transport::SharedMemory {
        return; // the socket transport is what this run asked for
    }
    let sup = supervisor();
    let plugin = sup
        .load(spec("fx-basic").limits(bulkhead_host::Limits::new().address_space(128 << 20)))
        .unwrap();
    assert_eq!(plugin.info().transport, bulkhead_host::Transport::SharedMemory);
    assert_eq!(plugin.call::<_, i64>(basic::ADD, &(40i64, 2i64)).unwrap(), 42);
    // A payload larger than the shrunken region still travels (over the socket).
    let big = vec![7u8; 20 << 20];
    assert_eq!(plugin.call_raw(basic::ECHO_RAW, &big).unwrap(), big);
}

#[test]
fn a_label_names_the_plugin_in_events_and_in_the_workers_process_title() {
    let sup = supervisor();
    let events = sup.events();
    let billing = sup.load(spec("fx-basic").label("billing")).unwrap();
    let search = sup.load(spec("fx-basic").label("search")).unwrap();
    for (p, label) in [(&billing, "billing"), (&search, "search")] {
        // The process that runs the plugin (under the sandbox's init).
        let pid = bulkhead_tests::plugin_process(p.info().worker_pid);
        // `ps` shows the command line, `top` the thread name.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let shown = String::from_utf8_lossy(&cmdline);
        assert_eq!(shown.trim_end_matches('\0'), format!("bulkhead: {label}"), "{shown:?}");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim_end(), format!("bh:{label}"));
        // So do the sandbox's helper processes above it (outer and init).
        // They take it from the worker through a pipe: wait for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        for helper in bulkhead_tests::process_tree(p.info().worker_pid) {
            let title = || {
                let cmdline = std::fs::read(format!("/proc/{helper}/cmdline")).unwrap();
                String::from_utf8_lossy(&cmdline).into_owned()
            };
            while !title().starts_with(&format!("bulkhead: {label}\0")) {
                assert!(Instant::now() < deadline, "process {helper}: {:?}", title());
                std::thread::yield_now();
            }
        }
    }
    // Events carry the label: two instances of one library stay apart.
    let pid = billing.info().worker_pid;
    drop(billing);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = events.recv_deadline(deadline).expect("billing's worker exit");
        if let EventKind::WorkerExited { pid: p, .. } = e.kind {
            if p == pid {
                assert_eq!(&*e.plugin, "billing");
                break;
            }
        }
    }
    assert_eq!(search.call::<_, i64>(basic::ADD, &(1i64, 2i64)).unwrap(), 3);
}
