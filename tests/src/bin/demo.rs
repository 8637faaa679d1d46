//! The bulkhead demo: load bundled fixture plugins into worker processes and
//! show a normal call, a plugin error, a panic, a segfault and a hang contained,
//! with this host process alive throughout.
//!
//! Run with `cargo run -q -p bulkhead-tests --bin demo`.

use std::time::{Duration, Instant};

use bulkhead_host::{CallError, PluginSpec};
use bulkhead_tests::{basic, fixtures, supervisor};

fn main() {
    let fx = fixtures();
    let sup = supervisor();
    println!("bulkhead demo (host pid {})", std::process::id());
    println!("worker binary: {}", sup.worker_path().display());

    let plugin = sup
        .load(
            PluginSpec::new(fx.lib("fx-basic"))
                .plugin("BasicPlugin")
                .call_timeout(Duration::from_millis(500)),
        )
        .expect("load fx-basic");
    let info = plugin.info();
    println!(
        "loaded {} (interface {} v{}, {:?}, {} methods) in worker pid {}\n",
        info.plugin_name,
        info.interface_name,
        info.interface_version,
        info.buffer_strategy,
        info.method_count,
        info.worker_pid
    );

    step("1. normal call      greet(\"world\")", || {
        plugin
            .call::<_, String>(basic::GREET, &("world".to_string(),))
            .map(|s| format!("{s:?}"))
    });
    step("2. plugin error     fail(\"E_DEMO\")", || {
        plugin
            .call::<_, String>(basic::FAIL, &("E_DEMO".to_string(),))
            .map(|s| format!("{s:?}"))
    });
    step("3. panic            panic(\"demo panic\")", || {
        plugin
            .call::<_, String>(basic::PANIC, &("demo panic".to_string(),))
            .map(|s| format!("{s:?}"))
    });
    let before = plugin.info().worker_pid;
    step("4. segfault         segfault()", || {
        plugin.call::<_, u32>(basic::SEGFAULT, &()).map(|v| v.to_string())
    });
    step("5. infinite loop    spin() with a 500 ms timeout", || {
        plugin.call::<_, u64>(basic::SPIN, &()).map(|v| v.to_string())
    });
    step("6. next call        add(40, 2)", || {
        plugin.call::<_, i64>(basic::ADD, &(40i64, 2i64)).map(|v| v.to_string())
    });
    let stats = plugin.stats();
    println!(
        "\nworker pid {before} crashed and was replaced (now pid {}); calls {}, ok {}, crashes {}, timeouts {}, restarts {}",
        plugin.info().worker_pid,
        stats.calls,
        stats.ok,
        stats.crashes,
        stats.timeouts,
        stats.restarts
    );
    let reports = sup.shutdown();
    for r in reports {
        println!(
            "shutdown: worker {} of {} ended with {:?} (forced: {})",
            r.pid, r.plugin, r.exit, r.forced
        );
    }
    println!("host process {} is still alive. done.", std::process::id());
}

fn step(what: &str, f: impl FnOnce() -> Result<String, CallError>) {
    let t = Instant::now();
    let out = match f() {
        Ok(v) => format!("Ok({v})"),
        // A crash report carries the worker's stderr tail; show the cause.
        Err(CallError::WorkerDied { exit, .. }) => format!("Err(worker_died): worker died: {exit}"),
        Err(e) => format!("Err({}): {e}", e.kind()),
    };
    println!("{what:<48} -> {out}  [{:.1?}]", t.elapsed());
}
