//! System-call filter rows (issue 16): the default allow-list against the
//! older deny-list (`Sandbox::compat()`), measured in the same run and
//! interleaved, so drift on a busy machine hits both alike: the small call
//! (the filter runs on every system call the worker makes while it answers)
//! and spawn → ready (the filter is built and attached by every worker).

use std::time::{Duration, Instant};

use bulkhead_host::{Plugin, PluginSpec, Sandbox, Supervisor};
use bulkhead_tests::{basic, Fixtures};

use crate::{summarize, us, Report, Summary};

fn add(p: &Plugin) -> Duration {
    let t = Instant::now();
    let v: i64 = p.call(basic::ADD, &(3i64, 4i64)).unwrap();
    let d = t.elapsed();
    assert_eq!(v, 7);
    d
}

pub fn rows(fx: &Fixtures, report: &mut Report, quick: bool) {
    let lib = fx.lib("fx-basic");
    let sup = Supervisor::builder().worker_path(&fx.worker).build().expect("worker");
    let sandboxes = [("allow_list", Sandbox::strict()), ("deny_list", Sandbox::compat())];
    let plugins: Vec<Plugin> = sandboxes
        .iter()
        .map(|(_, s)| sup.load(PluginSpec::new(&lib).sandbox(s.clone())).expect("load"))
        .collect();
    let (rounds, per_round) = if quick { (4, 500) } else { (20, 1_000) };
    let mut calls = [Vec::new(), Vec::new()];
    for p in &plugins {
        for _ in 0..2_000 {
            add(p);
        }
    }
    for _ in 0..rounds {
        for (i, p) in plugins.iter().enumerate() {
            calls[i].extend((0..per_round).map(|_| add(p)));
        }
    }
    drop(plugins);
    let loads = if quick { 6 } else { 40 };
    let mut spawns = [Vec::new(), Vec::new()];
    for round in 0..loads + 2 {
        for (i, (_, s)) in sandboxes.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(20));
            let t = Instant::now();
            let p = sup.load(PluginSpec::new(&lib).sandbox(s.clone())).expect("load");
            let d = t.elapsed();
            drop(p);
            if round >= 2 {
                spawns[i].push(d);
            }
        }
    }
    let [call_allow, call_deny] = calls.map(summarize);
    let [spawn_allow, spawn_deny] = spawns.map(summarize);
    for (i, (subject, _)) in sandboxes.iter().enumerate() {
        let (c, s) = if i == 0 {
            (&call_allow, &spawn_allow)
        } else {
            (&call_deny, &spawn_deny)
        };
        report.json("filter_small_call", subject, c, "");
        report.json("filter_spawn", subject, s, "");
    }
    let ratio = |a: &Summary, b: &Summary| a.median.as_secs_f64() / b.median.as_secs_f64();
    let call_ratio = ratio(&call_allow, &call_deny);
    let spawn_ratio = ratio(&spawn_allow, &spawn_deny);
    println!("{{\"bench\":\"filter\",\"small_call_allow_vs_deny\":{call_ratio:.3},\"spawn_allow_vs_deny\":{spawn_ratio:.3}}}");
    report.row(
        "add(i64,i64), seccomp allow-list (default)".into(),
        format!("{} / {}", us(call_allow.median), us(call_allow.p99)),
        format!(
            "median / p99; **{call_ratio:.3}× the deny-list** (`Sandbox::compat()`, {} / {}), interleaved in the same run",
            us(call_deny.median),
            us(call_deny.p99)
        ),
    );
    report.row(
        "spawn → ready, seccomp allow-list (default)".into(),
        format!("{} / {}", us(spawn_allow.median), us(spawn_allow.p99)),
        format!(
            "median / p99, loads 20 ms apart; **{spawn_ratio:.3}× the deny-list** ({} / {})",
            us(spawn_deny.median),
            us(spawn_deny.p99)
        ),
    );
}
