//! Restart and spawn rows: crash → next answer (no standby, warm standby) and
//! spawn → ready, for workers forked by the fork-server (the default) and
//! started with `exec` (`SupervisorBuilder::fork_server(false)`), with the
//! sandbox on and off — all in the same run.

use std::time::{Duration, Instant};

use bulkhead_host::{Backoff, CallError, Plugin, PluginSpec, RestartPolicy, Sandbox, Supervisor};
use bulkhead_tests::{basic, Fixtures};

use crate::{summarize, us, Report, Summary};

/// Crashes `plugin`'s worker `n` times and times the next good answer after
/// each crash; `between` runs after each sample.
pub fn crash_to_next_answer(plugin: &Plugin, n: usize, between: impl FnMut()) -> Summary {
    crash_call_and_next_answer(plugin, n, between).1
}

/// [`crash_to_next_answer`], and the crashing call's own time (the call
/// that gets `WorkerDied`): a restart's work moved into that call would show
/// there.
pub fn crash_call_and_next_answer(plugin: &Plugin, n: usize, mut between: impl FnMut()) -> (Summary, Summary) {
    let mut v = Vec::with_capacity(n);
    let mut crash = Vec::with_capacity(n);
    for _ in 0..n {
        let c = Instant::now();
        let e = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
        crash.push(c.elapsed());
        assert!(matches!(e, CallError::WorkerDied { .. }));
        let t = Instant::now();
        let x: i64 = plugin.call(basic::ADD, &(1i64, 1i64)).unwrap();
        assert_eq!(x, 2);
        v.push(t.elapsed());
        between();
    }
    (summarize(crash), summarize(v))
}

/// The rows; `scale` shrinks counts for `--quick`.
pub fn rows(fx: &Fixtures, report: &mut Report, scale: &impl Fn(usize) -> usize) {
    let lib = fx.lib("fx-basic");
    let policy = RestartPolicy::on_failure(100_000, Duration::from_secs(60)).backoff(Backoff::none());
    let forking = Supervisor::builder().worker_path(&fx.worker).build().expect("worker");
    let exec = Supervisor::builder()
        .worker_path(&fx.worker)
        .fork_server(false)
        .build()
        .expect("worker");
    let n = scale(40);
    for (label, sandbox) in [("sandbox on", Sandbox::strict()), ("sandbox off", Sandbox::none())] {
        let subject = if sandbox.is_enabled() { "sandbox" } else { "no_sandbox" };
        // Each figure twice: crashes 20 ms apart (a fork-server's blank is
        // ready by then: the usual case, crashes being rare) and back to back
        // (the next crash lands while the last restart's clean-up and the next
        // blank's set-up still run).
        let mut got = Vec::new();
        for (how, sup) in [("fork_server", &forking), ("exec", &exec)] {
            let p = sup
                .load(PluginSpec::new(&lib).restart(policy.clone()).sandbox(sandbox.clone()))
                .expect("load");
            let (crash_call, spaced) =
                crash_call_and_next_answer(&p, n, || std::thread::sleep(Duration::from_millis(20)));
            report.json("restart", &format!("crash_call_{how}_{subject}"), &crash_call, "");
            let back_to_back = crash_to_next_answer(&p, n, || {});
            drop(p);
            report.json("restart", &format!("crash_to_next_answer_{how}_{subject}"), &spaced, "");
            report.json(
                "restart",
                &format!("crash_to_next_answer_back_to_back_{how}_{subject}"),
                &back_to_back,
                "",
            );
            let mut loads = Vec::new();
            for _ in 0..scale(40) + 2 {
                std::thread::sleep(Duration::from_millis(20));
                let t = Instant::now();
                let p = sup.load(PluginSpec::new(&lib).sandbox(sandbox.clone())).unwrap();
                loads.push(t.elapsed());
                drop(p);
            }
            let spawn = summarize(loads.split_off(2));
            report.json("spawn", &format!("load_to_ready_{how}_{subject}"), &spawn, "");
            got.push((spaced, back_to_back, spawn, crash_call));
        }
        let [(fs_restart, fs_b2b, fs_spawn, fs_crash), (ex_restart, ex_b2b, ex_spawn, _)] = [got[0], got[1]];
        let ratio = |a: Summary, b: Summary| a.median.as_secs_f64() / b.median.as_secs_f64();
        report.row(
            format!("crash → next answer, no standby, {label}"),
            format!("{} / {}", us(fs_restart.median), us(fs_restart.p99)),
            format!(
                "median / p99, crashes 20 ms apart, forked by the fork-server; **{:.2}× exec** ({} / {}); back to back {} ({:.2}× exec {}); the crashing call itself {} / {}",
                ratio(fs_restart, ex_restart),
                us(ex_restart.median),
                us(ex_restart.p99),
                us(fs_b2b.median),
                ratio(fs_b2b, ex_b2b),
                us(ex_b2b.median),
                us(fs_crash.median),
                us(fs_crash.p99)
            ),
        );
        report.row(
            format!("spawn → ready (load), {label}"),
            format!("{} / {}", us(fs_spawn.median), us(fs_spawn.p99)),
            format!(
                "median / p99, loads 20 ms apart: fork + {}dlopen + construct + handshake; **{:.2}× exec** ({} / {})",
                if sandbox.is_enabled() {
                    "own user/pid/mount/ipc namespaces + mounts + Landlock + seccomp + "
                } else {
                    ""
                },
                ratio(fs_spawn, ex_spawn),
                us(ex_spawn.median),
                us(ex_spawn.p99)
            ),
        );

        let events = forking.events();
        let warm = forking
            .load(
                PluginSpec::new(&lib)
                    .restart(policy.clone())
                    .standby(true)
                    .sandbox(sandbox.clone()),
            )
            .expect("load");
        let warm_restart = crash_to_next_answer(&warm, n, || {
            // Let the next standby come up (the pool holds the worker and the
            // standby again) before crashing again; each event is a chance.
            let deadline = Instant::now() + Duration::from_secs(30);
            while warm.worker_pids().len() < 2 {
                assert!(Instant::now() < deadline, "the standby did not come back");
                let _ = events.recv_timeout(Duration::from_millis(100));
            }
        });
        let _ = events.try_iter().count();
        drop(warm);
        report.json(
            "restart",
            &format!("crash_to_next_answer_standby_{subject}"),
            &warm_restart,
            "",
        );
        report.row(
            format!("crash → next answer, warm standby, {label}"),
            format!("{} / {}", us(warm_restart.median), us(warm_restart.p99)),
            "median / p99; the standby is promoted, the next one starts in the background".into(),
        );
    }
}
