//! Supervision: per-call timeouts, crash causes, restart budgets, pools,
//! resource limits, plugin output, events and stats — with real workers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_host::{
    Backoff, CallError, EventKind, Exit, Health, Layer, Limits, OutputBudget, RestartPolicy, Sandbox, Stream,
    Supervisor,
};
use bulkhead_tests::{alive, basic, fixtures, group_members, plugin_process, spec, supervisor, wait_gone};
use crossbeam_channel::Receiver;

const GENEROUS: Duration = Duration::from_secs(20);

fn assert_timeout(err: &CallError, limit: Duration) {
    match err {
        CallError::Timeout { elapsed, limit: l } => {
            assert_eq!(*l, limit);
            assert!(*elapsed >= limit, "error came before the deadline: {elapsed:?}");
            assert!(
                *elapsed < limit + Duration::from_secs(5),
                "error came {elapsed:?} after the start"
            );
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[test]
fn hung_calls_time_out_and_the_next_call_gets_a_fresh_worker() {
    let sup = supervisor();
    let limit = Duration::from_millis(300);
    let plugin = sup.load(spec("fx-basic").call_timeout(limit)).unwrap();
    // loop {} (default timeout from the spec)
    let before = plugin.info().worker_pid;
    assert_timeout(&plugin.call::<_, u64>(basic::SPIN, &()).unwrap_err(), limit);
    wait_gone(before, GENEROUS);
    let s: String = plugin.call(basic::GREET, &("again".to_string(),)).unwrap();
    assert_eq!(s, "Hello, again!");
    // sleep(1h) with a per-call override.
    let limit = Duration::from_millis(400);
    let before = plugin.info().worker_pid;
    let err = plugin
        .call_with_timeout::<_, u64>(basic::SLEEP_MS, &(3_600_000u64,), limit)
        .unwrap_err();
    assert_timeout(&err, limit);
    wait_gone(before, GENEROUS);
    let v: u64 = plugin.call_with_timeout(basic::SLEEP_MS, &(1u64,), GENEROUS).unwrap();
    assert_eq!(v, 1);
    let stats = plugin.stats();
    assert_eq!((stats.timeouts, stats.restarts, stats.ok), (2, 2, 2));
}

/// Starts a sleeping grandchild through the plugin and returns its host pid:
/// the one new member of the worker's process group (the plugin itself only
/// knows its pid inside the worker's pid namespace).
fn fork_sleeper(plugin: &bulkhead_host::Plugin) -> u32 {
    let worker = plugin.info().worker_pid;
    plugin_process(worker);
    let before: HashSet<u32> = group_members(worker).into_iter().collect();
    let _: u32 = plugin.call(basic::FORK_SLEEPER, &()).unwrap();
    let after: HashSet<u32> = group_members(worker).into_iter().collect();
    let new: Vec<u32> = after.difference(&before).copied().collect();
    assert_eq!(
        new.len(),
        1,
        "one new process in the worker's group: {before:?} -> {after:?}"
    );
    assert!(alive(new[0]));
    new[0]
}

#[test]
fn timeout_kills_the_plugins_own_children() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let worker = plugin.info().worker_pid;
    let grandchild = fork_sleeper(&plugin);
    let err = plugin
        .call_with_timeout::<_, u64>(basic::SPIN, &(), Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
    wait_gone(grandchild, GENEROUS);
    wait_gone(worker, GENEROUS);
    // The whole group was SIGKILLed; each member is gone once it has exited.
    for pid in group_members(worker) {
        wait_gone(pid, GENEROUS);
    }
}

#[test]
fn crash_kills_the_plugins_own_children() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let grandchild = fork_sleeper(&plugin);
    let err = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    assert!(
        matches!(
            err,
            CallError::WorkerDied {
                exit: Exit::Signal { signal: 11, .. },
                ..
            }
        ),
        "{err:?}"
    );
    wait_gone(grandchild, GENEROUS);
}

#[test]
fn crash_causes_are_exact_and_the_next_call_succeeds() {
    let sup = supervisor();
    let plugin = sup
        .load(
            spec("fx-basic")
                .limits(Limits::new().address_space(1 << 30))
                .restart(RestartPolicy::on_failure(100, Duration::from_secs(60)).backoff(Backoff::none())),
        )
        .unwrap();
    let check = |what: &str, err: CallError, exit: Exit, stderr_needle: &str| {
        match &err {
            CallError::WorkerDied { exit: e, stderr, .. } => {
                assert_eq!(*e, exit, "{what}");
                assert!(
                    stderr.contains(stderr_needle),
                    "{what}: stderr {stderr:?} lacks {stderr_needle:?}"
                );
            }
            other => panic!("{what}: expected WorkerDied, got {other:?}"),
        }
        let x: i64 = plugin.call(basic::ADD, &(20i64, 22i64)).unwrap();
        assert_eq!(x, 42, "{what}: next call");
    };
    let sigsegv = Exit::Signal {
        signal: 11,
        core_dumped: false,
    };
    let sigabrt = Exit::Signal {
        signal: 6,
        core_dumped: false,
    };
    check(
        "segfault",
        plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err(),
        sigsegv,
        "",
    );
    check(
        "abort",
        plugin.call::<_, u32>(basic::ABORT, &()).unwrap_err(),
        sigabrt,
        "",
    );
    check(
        "exit(0)",
        plugin.call::<_, u32>(basic::EXIT, &(0i32,)).unwrap_err(),
        Exit::Code(0),
        "",
    );
    check(
        "stack overflow",
        plugin.call::<_, u64>(basic::STACK_OVERFLOW, &(0u64,)).unwrap_err(),
        sigabrt,
        "overflowed its stack",
    );
    check(
        "out of memory",
        plugin.call::<_, u64>(basic::ALLOC, &(8u64 << 30,)).unwrap_err(),
        sigabrt,
        "memory allocation of",
    );
    let stats = plugin.stats();
    assert_eq!((stats.crashes, stats.restarts, stats.ok), (5, 5, 5));
}

#[test]
fn cpu_limit_surfaces_as_sigxcpu_and_the_worker_is_replaced() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic").limits(Limits::new().cpu_seconds(1))).unwrap();
    let err = plugin
        .call_with_timeout::<_, u64>(basic::SPIN, &(), GENEROUS)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::WorkerDied {
                exit: Exit::Signal { signal: 24 | 9, .. },
                ..
            }
        ),
        "expected SIGXCPU (or SIGKILL at the hard limit): {err:?}"
    );
    let x: i64 = plugin.call(basic::ADD, &(1i64, 2i64)).unwrap();
    assert_eq!(x, 3);
}

#[test]
fn limits_are_applied_to_the_worker() {
    let sup = supervisor();
    let plugin = sup
        .load(spec("fx-basic").limits(Limits::new().address_space(2 << 30).open_files(64).cpu_seconds(100)))
        .unwrap();
    let inner = plugin_process(plugin.info().worker_pid);
    let limits = std::fs::read_to_string(format!("/proc/{inner}/limits")).unwrap();
    let row = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {limits}"))
            .to_string()
    };
    assert!(
        row("Max address space").contains("2147483648"),
        "{}",
        row("Max address space")
    );
    assert!(row("Max open files").contains(" 64 "), "{}", row("Max open files"));
    assert!(row("Max cpu time").contains(" 100 "), "{}", row("Max cpu time"));
    assert!(
        row("Max core file size").split_whitespace().nth(4) == Some("0"),
        "{}",
        row("Max core file size")
    );
}

#[test]
fn restart_budget_is_spent_then_fails_fast_until_reset() {
    let sup = supervisor();
    let events = sup.events();
    let plugin = sup
        .load(spec("fx-basic").restart(RestartPolicy::on_failure(3, Duration::from_secs(10)).backoff(Backoff::none())))
        .unwrap();
    // Four crashes: the first three are followed by restarts, the fourth spends the budget.
    for i in 0..4 {
        let err = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
        assert!(matches!(err, CallError::WorkerDied { .. }), "crash {i}: {err:?}");
    }
    let err = plugin.call::<_, i64>(basic::ADD, &(1i64, 1i64)).unwrap_err();
    let CallError::Failed {
        reason,
        since,
        restarts,
    } = &err
    else {
        panic!("expected Failed, got {err:?}")
    };
    assert_eq!(*restarts, 3);
    assert!(reason.contains("signal 11"), "{reason}");
    assert!(since.elapsed().unwrap() < Duration::from_secs(60));
    assert!(err.to_string().contains("after 3 restarts"), "{err}");
    // Failing fast: no worker is spawned.
    let stats = plugin.stats();
    assert_eq!((stats.restarts, stats.live_workers, stats.crashes), (3, 0, 4));
    for _ in 0..5 {
        assert!(matches!(
            plugin.call::<_, i64>(basic::ADD, &(1i64, 1i64)),
            Err(CallError::Failed { .. })
        ));
    }
    assert_eq!(plugin.stats().restarts, 3);
    // The last worker is reaped off the caller's path: wait for its exit event.
    let mut kinds: Vec<EventKind> = Vec::new();
    let deadline = Instant::now() + GENEROUS;
    while kinds
        .iter()
        .filter(|k| matches!(k, EventKind::WorkerExited { .. }))
        .count()
        < 4
    {
        kinds.push(events.recv_deadline(deadline).expect("four exits reported").kind);
    }
    kinds.extend(events.try_iter().map(|e| e.kind));
    let started = kinds
        .iter()
        .filter(|k| matches!(k, EventKind::WorkerStarted { .. }))
        .count();
    let restarted = kinds
        .iter()
        .filter(|k| matches!(k, EventKind::Restarted { .. }))
        .count();
    let gave_up = kinds.iter().filter(|k| matches!(k, EventKind::GaveUp { .. })).count();
    let exited = kinds
        .iter()
        .filter(|k| {
            matches!(
                k,
                EventKind::WorkerExited {
                    exit: Exit::Signal { signal: 11, .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!((started, restarted, gave_up, exited), (4, 3, 1, 4), "{kinds:?}");
    // Reset: the plugin recovers.
    plugin.reset();
    let x: i64 = plugin.call(basic::ADD, &(1i64, 1i64)).unwrap();
    assert_eq!(x, 2);
    assert_eq!(plugin.stats().live_workers, 1);
}

#[test]
fn never_policy_fails_after_the_first_crash() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic").restart(RestartPolicy::never())).unwrap();
    assert!(matches!(
        plugin.call::<_, u32>(basic::ABORT, &()),
        Err(CallError::WorkerDied { .. })
    ));
    assert!(matches!(
        plugin.call::<_, i64>(basic::ADD, &(1i64, 1i64)),
        Err(CallError::Failed { restarts: 0, .. })
    ));
    assert_eq!(plugin.stats().restarts, 0);
}

#[test]
fn backoff_delays_consecutive_restarts() {
    let sup = supervisor();
    let backoff = Backoff {
        initial: Duration::from_millis(300),
        factor: 2.0,
        max: Duration::from_secs(1),
    };
    let plugin = sup
        .load(spec("fx-basic").restart(RestartPolicy::on_failure(10, Duration::from_secs(60)).backoff(backoff)))
        .unwrap();
    assert!(plugin.call::<_, u32>(basic::SEGFAULT, &()).is_err()); // restart 1: immediate
    assert!(plugin.call::<_, u32>(basic::SEGFAULT, &()).is_err()); // restart 2: after 300 ms
    let t = Instant::now();
    let x: i64 = plugin.call(basic::ADD, &(2i64, 2i64)).unwrap();
    assert_eq!(x, 4);
    // The replacement starts in the background once the backoff has passed.
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "restart waited out the backoff: {:?}",
        t.elapsed()
    );
    // A call whose deadline passes while the restart backs off gets a clear error.
    assert!(plugin.call::<_, u32>(basic::SEGFAULT, &()).is_err());
    assert!(plugin.call::<_, u32>(basic::SEGFAULT, &()).is_err());
    let err = plugin
        .call_with_timeout::<_, i64>(basic::ADD, &(2i64, 2i64), Duration::from_millis(50))
        .unwrap_err();
    assert!(
        matches!(err, CallError::Backoff { retry_in } if retry_in > Duration::from_millis(50)),
        "{err:?}"
    );
}

#[test]
fn pool_of_four_with_eight_threads_no_cross_talk_no_lost_calls() {
    let sup = supervisor();
    let plugin = sup
        .load(
            spec("fx-basic")
                .workers(4)
                .restart(RestartPolicy::on_failure(1000, Duration::from_secs(60)).backoff(Backoff::none())),
        )
        .unwrap();
    assert_eq!(plugin.worker_pids().len(), 4);
    let hang_limit = Duration::from_millis(250);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let plugin = plugin.clone();
            std::thread::spawn(move || {
                let (mut good, mut hangs) = (0u32, 0u32);
                for i in 0..30u64 {
                    if (t + i) % 10 == 0 {
                        // A hang times out in its worker, or, if every worker
                        // was busy until its deadline, in the queue (Busy).
                        let err = plugin
                            .call_with_timeout::<_, u64>(basic::SPIN, &(), hang_limit)
                            .unwrap_err();
                        match err {
                            CallError::Timeout { limit, .. } => assert_eq!(limit, hang_limit),
                            CallError::Busy { waited } => assert!(waited >= hang_limit),
                            other => panic!("hang ended with {other:?}"),
                        }
                        hangs += 1;
                    } else {
                        let name = format!("t{t}-i{i}");
                        let s: String = plugin
                            .call_with_timeout(basic::GREET, &(name.clone(),), GENEROUS)
                            .unwrap();
                        assert_eq!(s, format!("Hello, {name}!"));
                        let x: i64 = plugin
                            .call_with_timeout(basic::ADD, &(t as i64 * 1000, i as i64), GENEROUS)
                            .unwrap();
                        assert_eq!(x, t as i64 * 1000 + i as i64);
                        good += 2;
                    }
                }
                (good, hangs)
            })
        })
        .collect();
    let (mut good, mut hangs) = (0, 0);
    for t in threads {
        let (g, h) = t.join().expect("no thread panicked");
        good += g;
        hangs += h;
    }
    assert_eq!(hangs, 24);
    assert_eq!(good, 2 * (240 - 24));
    let stats = plugin.stats();
    assert_eq!(stats.calls, u64::from(good + hangs), "every call accounted for");
    assert_eq!(stats.ok, u64::from(good));
    let busy = stats.errors.get("busy").copied().unwrap_or(0);
    assert_eq!(stats.timeouts + busy, u64::from(hangs));
    assert!(stats.timeouts > 0);
    assert!(stats.live_workers <= 4);
}

#[test]
fn a_hang_in_one_worker_does_not_block_others() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic").workers(2)).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let hanger = {
        let plugin = plugin.clone();
        std::thread::spawn(move || {
            let r = plugin.call_with_timeout::<_, u64>(basic::SLEEP_MS, &(3_600_000u64,), Duration::from_secs(30));
            tx.send(()).unwrap();
            r
        })
    };
    // While one worker sleeps, the other serves calls.
    for i in 0..20i64 {
        let x: i64 = plugin.call(basic::ADD, &(i, i)).unwrap();
        assert_eq!(x, 2 * i);
    }
    assert!(rx.try_recv().is_err(), "the sleeping call is still in flight");
    drop(sup); // shut down: the busy worker is killed after the grace period
    let r = hanger.join().unwrap();
    assert!(
        matches!(r, Err(CallError::WorkerDied { .. }) | Err(CallError::ShutDown)),
        "{r:?}"
    );
}

/// Starts `announce_then_sleep(tag, ms)` on its own thread and returns once the
/// plugin has printed `tag` (so the call is known to occupy a worker).
fn occupy(
    plugin: &bulkhead_host::Plugin,
    lines: &Receiver<String>,
    tag: &str,
    ms: u64,
) -> std::thread::JoinHandle<Result<u64, CallError>> {
    let p = plugin.clone();
    let t = tag.to_string();
    let h = std::thread::spawn(move || p.call_with_timeout(basic::ANNOUNCE_THEN_SLEEP, &(t, ms), GENEROUS));
    let deadline = Instant::now() + GENEROUS;
    loop {
        let line = lines.recv_deadline(deadline).expect("the plugin announces the call");
        if line == tag {
            return h;
        }
    }
}

fn supervisor_with_stdout_lines() -> (Supervisor, Receiver<String>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .on_output(move |l| {
            if l.stream == Stream::Stdout {
                let _ = tx.send(l.line.to_string());
            }
        })
        .build()
        .unwrap();
    (sup, rx)
}

#[test]
fn busy_pool_waits_within_the_deadline_then_reports_busy() {
    let (sup, lines) = supervisor_with_stdout_lines();
    let plugin = sup.load(spec("fx-basic").workers(1)).unwrap();
    let busy = occupy(&plugin, &lines, "busy-1", 1000);
    // The caller waits for the only worker, and gives up at its own deadline.
    let err = plugin
        .call_with_timeout::<_, i64>(basic::ADD, &(1i64, 1i64), Duration::from_millis(100))
        .unwrap_err();
    assert!(
        matches!(err, CallError::Busy { waited } if waited >= Duration::from_millis(100)),
        "{err:?}"
    );
    // A caller with a longer deadline is served once the worker is free.
    let x: i64 = plugin.call_with_timeout(basic::ADD, &(2i64, 3i64), GENEROUS).unwrap();
    assert_eq!(x, 5);
    assert_eq!(busy.join().unwrap().unwrap(), 1000);
    assert_eq!(plugin.stats().errors.get("busy"), Some(&1));
}

#[test]
fn full_queue_is_refused_at_once() {
    let (sup, lines) = supervisor_with_stdout_lines();
    let plugin = sup.load(spec("fx-basic").workers(1).queue_limit(0)).unwrap();
    let busy = occupy(&plugin, &lines, "busy-2", 500);
    let t = Instant::now();
    let err = plugin
        .call_with_timeout::<_, i64>(basic::ADD, &(1i64, 1i64), GENEROUS)
        .unwrap_err();
    assert!(matches!(err, CallError::Overloaded { limit: 0 }), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refused without waiting: {:?}",
        t.elapsed()
    );
    assert_eq!(busy.join().unwrap().unwrap(), 500);
}

#[test]
fn plugin_output_is_forwarded_with_name_and_pid_and_never_stalls_calls() {
    let (tx, rx) = crossbeam_channel::unbounded::<(String, u32, Stream, usize)>();
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .on_output(move |l| {
            let _ = tx.send((l.plugin.to_string(), l.pid, l.stream, l.line.len() + 1));
        })
        .build()
        .unwrap();
    // Every line is to be forwarded: no output budget (its own test is
    // output_budget.rs).
    let plugin = sup
        .load(
            spec("fx-basic")
                .plugin("BasicPlugin")
                .output_budget(OutputBudget::unlimited()),
        )
        .unwrap();
    let pid = plugin.info().worker_pid;
    let total = 20u64 << 20; // 20 MiB to stdout, 1 MiB to stderr
    let t = Instant::now();
    let n: u64 = plugin
        .call_with_timeout(basic::PRINT, &(total, false), GENEROUS)
        .unwrap();
    assert_eq!(n, total);
    let n: u64 = plugin
        .call_with_timeout(basic::PRINT, &(1u64 << 20, true), GENEROUS)
        .unwrap();
    assert_eq!(n, 1 << 20);
    // Calls keep flowing while output drains.
    let x: i64 = plugin.call(basic::ADD, &(1i64, 1i64)).unwrap();
    assert_eq!(x, 2);
    assert!(t.elapsed() < GENEROUS);
    // Lines are forwarded as they complete; the text ends mid-line, and that
    // last fragment is only forwarded when the stream closes.
    let (expected_out, expected_err) = (complete_lines_len(total), complete_lines_len(1 << 20));
    let (mut out, mut err) = (0u64, 0u64);
    let deadline = Instant::now() + GENEROUS;
    while out < expected_out || err < expected_err {
        let (name, p, stream, len) = rx.recv_deadline(deadline).expect("all output arrives");
        assert_eq!((name.as_str(), p), ("BasicPlugin", pid));
        match stream {
            Stream::Stdout => out += len as u64,
            Stream::Stderr => err += len as u64,
        }
    }
    assert_eq!((out, err), (expected_out, expected_err));
}

/// Bytes up to and including the last newline of the fixture's `print` text.
fn complete_lines_len(total: u64) -> u64 {
    let (mut len, mut n) = (0u64, 1u64);
    loop {
        let line = format!("line {n} of output\n").len() as u64;
        if len + line > total {
            return len;
        }
        len += line;
        n += 1;
    }
}

#[test]
fn events_describe_the_lifecycle() {
    let sup = supervisor();
    let events = sup.events();
    let plugin = sup.load(spec("fx-basic").plugin("BasicPlugin")).unwrap();
    let first = plugin.info().worker_pid;
    let _ = plugin.call_with_timeout::<_, u64>(basic::SPIN, &(), Duration::from_millis(200));
    let x: i64 = plugin.call(basic::ADD, &(1i64, 1i64)).unwrap();
    assert_eq!(x, 2);
    let second = plugin.info().worker_pid;
    let got: Vec<(Arc<str>, EventKind)> = events.try_iter().map(|e| (e.plugin, e.kind)).collect();
    // The exit carries the worker's rusage: it spun for 200 ms.
    let kinds: Vec<EventKind> = got
        .iter()
        .map(|(_, k)| match k.clone() {
            EventKind::WorkerExited { pid, exit, usage } => {
                let u = usage.expect("rusage from the reap");
                assert!(u.user + u.system > Duration::ZERO && u.max_rss > 0, "{u:?}");
                EventKind::WorkerExited { pid, exit, usage: None }
            }
            other => other,
        })
        .collect();
    assert!(got.iter().all(|(p, _)| &**p == "BasicPlugin"));
    assert_eq!(
        kinds,
        vec![
            EventKind::WorkerStarted { pid: first },
            EventKind::Timeout {
                pid: first,
                limit: Duration::from_millis(200)
            },
            EventKind::HealthChanged {
                health: Health::Degraded {
                    live: 0,
                    workers: 1,
                    restarting: 1,
                    next_attempt: None
                }
            },
            EventKind::WorkerExited {
                pid: first,
                exit: Exit::Signal {
                    signal: 9,
                    core_dumped: false
                },
                usage: None
            },
            EventKind::WorkerStarted { pid: second },
            EventKind::HealthChanged {
                health: Health::Healthy
            },
            EventKind::Restarted {
                pid: second,
                restarts: 1
            },
        ]
    );
}

#[test]
fn distinct_workers_really_run_in_parallel() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic").workers(3)).unwrap();
    let pids: HashSet<u32> = plugin.worker_pids().into_iter().collect();
    assert_eq!(pids.len(), 3);
    let seen: HashSet<u32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| plugin.call::<_, u64>(basic::SLEEP_MS, &(300u64,)).map(|_| ())))
            .collect();
        for h in hs {
            h.join().unwrap().unwrap();
        }
        plugin.worker_pids().into_iter().collect()
    });
    assert_eq!(seen, pids, "no worker was replaced");
}

#[test]
fn warm_standby_is_promoted_and_refilled() {
    let sup = supervisor();
    let events = sup.events();
    // The plugin reports its pid to identify the worker that answered: that
    // takes the host's pid namespace (every other layer stays on).
    let plugin = sup
        .load(
            spec("fx-basic")
                .standby(true)
                .sandbox(Sandbox::strict().without(Layer::PidNs)),
        )
        .unwrap();
    let active: u32 = plugin.call(basic::PID, &()).unwrap();
    let pids = plugin.worker_pids();
    assert_eq!(pids.len(), 2, "one worker and one standby: {pids:?}");
    let standby = *pids.iter().find(|&&p| p != active).unwrap();
    let _ = events.try_iter().count();

    let err = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    assert!(
        matches!(
            err,
            CallError::WorkerDied {
                exit: Exit::Signal { signal: 11, .. },
                ..
            }
        ),
        "{err:?}"
    );
    let now: u32 = plugin.call(basic::PID, &()).unwrap();
    assert_eq!(now, standby, "the standby was promoted");
    // A new standby is started in the background and the dead worker reported.
    let deadline = Instant::now() + GENEROUS;
    let (mut refilled, mut exited) = (None, false);
    while refilled.is_none() || !exited {
        match events.recv_deadline(deadline).expect("refill and exit events").kind {
            EventKind::WorkerStarted { pid } => refilled = Some(pid),
            EventKind::WorkerExited { pid, .. } => exited |= pid == active,
            _ => {}
        }
    }
    let mut pids = plugin.worker_pids();
    pids.sort();
    let mut expected = vec![standby, refilled.unwrap()];
    expected.sort();
    assert_eq!(pids, expected);
    assert_eq!(plugin.stats().restarts, 1);
    // Shutdown stops the standby too.
    let reports = sup.shutdown();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for r in &reports {
        assert_eq!((r.exit, r.forced), (Some(Exit::Code(0)), false), "{r:?}");
    }
}
