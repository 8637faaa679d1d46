//! Resource containment rows (issue 17), all in one run: a neighbour
//! plugin's small-call latency while quiet, while another plugin floods its
//! output, and while another plugin spins after its call returned; and the
//! host's CPU per MiB of plugin output under the default output budget and
//! without one.

use std::time::{Duration, Instant};

use bulkhead_host::{EventKind, OutputBudget, Plugin, PluginSpec, Supervisor};
use bulkhead_tests::{basic, hog, Fixtures};

use crate::{summarize, us, Report, Summary};

fn small_calls(p: &Plugin, n: usize) -> Summary {
    let mut v = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let t = Instant::now();
        let r: i64 = p.call(basic::ADD, &(i, 1i64)).unwrap();
        v.push(t.elapsed());
        assert_eq!(r, i + 1);
    }
    summarize(v)
}

/// CPU time of the host's output-loop thread, in clock ticks.
fn output_thread_ticks() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            (comm.trim_end() == "bulkhead-output").then(|| bulkhead_tests::cpu_ticks(tid))
        })
        .sum()
}

pub fn rows(fx: &Fixtures, report: &mut Report, quick: bool) {
    let n = if quick { 2_000 } else { 20_000 };
    let flood = if quick { 1_000u64 } else { 3_000 };
    let sup = Supervisor::builder().worker_path(&fx.worker).build().expect("worker");
    let neighbour = sup.load(PluginSpec::new(fx.lib("fx-basic"))).unwrap();
    small_calls(&neighbour, 1_000);
    let quiet = small_calls(&neighbour, n);

    // While another plugin floods stderr with empty lines.
    let flooder = sup.load(PluginSpec::new(fx.lib("fx-hog"))).unwrap();
    let f = flooder.clone();
    let flooding = std::thread::spawn(move || {
        f.call_with_timeout::<_, i64>(hog::FLOOD, &(flood, 1u32), Duration::from_secs(60))
            .unwrap()
    });
    let during_flood = small_calls(&neighbour, n);
    flooding.join().unwrap();

    // While another plugin spins two threads after returning (until the
    // idle-CPU watch stops it).
    let events = sup.events();
    let spinner = sup.load(PluginSpec::new(fx.lib("fx-hog"))).unwrap();
    let returned = Instant::now();
    let _: i64 = spinner.call(hog::SPIN_AFTER_RETURN, &(2u32, 10_000u64)).unwrap();
    let during_spin = small_calls(&neighbour, n);
    let stopped = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::IdleCpuExceeded { .. }))
        .map(|_| returned.elapsed());
    let after_spin = small_calls(&neighbour, n);
    if let Some(after) = stopped {
        println!(
            "{{\"bench\":\"containment_spinner_stopped\",\"after_ms\":{}}}",
            after.as_millis()
        );
        report.row(
            "spinner stopped after its call returned".into(),
            format!("{} ms", after.as_millis()),
            "two threads spinning; idle-CPU watch, default budget 200 ms/s judged over ≥ 1 s".into(),
        );
    }

    for (what, s) in [
        ("quiet", quiet),
        ("another plugin floods output", during_flood),
        ("another plugin spins after return", during_spin),
        ("after the spinner was stopped", after_spin),
    ] {
        report.json("containment_neighbour", what, &s, "");
        report.row(
            format!("neighbour small call, {what}: p50 / p99"),
            format!("{} / {}", us(s.median), us(s.p99)),
            format!(
                "{:.2}× / {:.2}× quiet; {} calls",
                s.median.as_secs_f64() / quiet.median.as_secs_f64(),
                s.p99.as_secs_f64() / quiet.p99.as_secs_f64(),
                s.n
            ),
        );
    }

    // Host CPU per MiB of plugin output: default budget vs none.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    for (name, budget) in [
        ("default budget", OutputBudget::DEFAULT),
        ("no budget", OutputBudget::unlimited()),
    ] {
        let s = Supervisor::builder().worker_path(&fx.worker).build().expect("worker");
        let p = s.load(PluginSpec::new(fx.lib("fx-hog")).output_budget(budget)).unwrap();
        let before = output_thread_ticks();
        let bytes: i64 = p
            .call_with_timeout(hog::FLOOD, &(flood, 32u32), Duration::from_secs(60))
            .unwrap();
        drop(p);
        s.shutdown();
        let cpu_ms = (output_thread_ticks() - before) * 1000 / hz;
        let mib = bytes as f64 / (1 << 20) as f64;
        println!(
            "{{\"bench\":\"containment_output\",\"subject\":\"{name}\",\"mib\":{mib:.1},\"host_cpu_ms\":{cpu_ms},\"ms_per_mib\":{:.3}}}",
            cpu_ms as f64 / mib
        );
        report.row(
            format!("host CPU per MiB of plugin output, {name}"),
            format!("{:.3} ms", cpu_ms as f64 / mib),
            format!(
                "{mib:.0} MiB of 32-byte lines in {flood} ms cost the output-loop thread {cpu_ms} ms (utime + stime)"
            ),
        );
    }
}
