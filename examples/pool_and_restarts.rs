//! A pool of workers, a restart policy, lifecycle events and statistics.
//!
//! `cargo build -p fx-basic && cargo run -p bulkhead-examples --example pool_and_restarts`

use std::time::{Duration, Instant};

use bulkhead_examples::{basic, plugin_library};
use bulkhead_host::{Backoff, CallError, EventKind, PluginSpec, RestartPolicy, Supervisor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bulkhead_host::worker_main_if_requested();

    let supervisor = Supervisor::builder().self_worker().build()?;
    let events = supervisor.events();
    // Four workers. The default policy restarts forever (0, then 100 ms
    // doubling to 30 s per slot); this one opts into a budget of 3 restarts
    // per worker per 10 s (12 for the pool) before the plugin is failed.
    let policy = RestartPolicy::on_failure(3, Duration::from_secs(10)).backoff(Backoff::default());
    let plugin = supervisor.load(
        PluginSpec::new(plugin_library())
            .workers(4)
            .restart(policy)
            .call_timeout(Duration::from_secs(5)),
    )?;
    println!("workers: {:?}", plugin.worker_pids());

    // Calls from several threads share the pool.
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let plugin = &plugin;
            s.spawn(move || {
                for i in 0..100i64 {
                    let sum: i64 = plugin.call(basic::ADD, &(t, i)).expect("add");
                    assert_eq!(sum, t + i);
                }
            });
        }
    });

    // One crash and one timeout: each costs a worker, which is replaced.
    let crash = plugin.call::<_, u32>(basic::SEGFAULT, &());
    println!("crash: {}", crash.map_or_else(|e| e.to_string(), |v| v.to_string()));
    let timeout = plugin.call_with_timeout::<_, u64>(basic::SPIN, &(), Duration::from_millis(200));
    assert!(matches!(timeout, Err(CallError::Timeout { .. })));
    println!("timeout: {}", timeout.unwrap_err());

    // Wait (bounded) for both replacements to be reported.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut restarts = 0;
    while restarts < 2 {
        let event = events.recv_deadline(deadline)?;
        println!("event: {:?}", event.kind);
        if let EventKind::Restarted { .. } = event.kind {
            restarts += 1;
        }
    }

    let stats = plugin.stats();
    println!(
        "stats: {} calls, {} ok, {} restarts, errors {:?}",
        stats.calls, stats.ok, stats.restarts, stats.errors
    );
    // An orderly shutdown reports how every worker ended.
    for report in supervisor.shutdown() {
        println!("worker {} ended: {:?}", report.pid, report.exit);
    }
    Ok(())
}
