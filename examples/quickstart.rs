//! Quickstart: load a plugin in a worker process, call it, survive its crash.
//!
//! `cargo build -p fx-basic && cargo run -p bulkhead-examples --example quickstart`
//!
//! Self-worker mode: this executable is its own worker, so nothing needs
//! installing — `worker_main_if_requested()` must be the first line of `main`.

use std::time::Duration;

use bulkhead_examples::{basic, plugin_library};
use bulkhead_host::{CallError, PluginSpec, Supervisor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bulkhead_host::worker_main_if_requested();

    let supervisor = Supervisor::builder().self_worker().build()?;
    let plugin = supervisor.load(PluginSpec::new(plugin_library()).call_timeout(Duration::from_secs(5)))?;
    let info = plugin.info();
    println!(
        "loaded {} ({} v{}, {} methods) in worker {}",
        info.plugin_name, info.interface_name, info.interface_version, info.method_count, info.worker_pid
    );

    // Typed call: the arguments are a bincode tuple, the result is decoded.
    let greeting: String = plugin.call(basic::GREET, &("world".to_string(),))?;
    println!("greet: {greeting}");

    // A segfault in the plugin is an error value, not the end of this process.
    match plugin.call::<_, u32>(basic::SEGFAULT, &()) {
        Err(CallError::WorkerDied { exit, .. }) => println!("segfault contained: worker ended with {exit}"),
        other => return Err(format!("expected a contained crash, got {other:?}").into()),
    }

    // The next call runs on a fresh worker.
    let sum: i64 = plugin.call(basic::ADD, &(40i64, 2i64))?;
    println!("add: {sum} (worker {})", plugin.info().worker_pid);
    Ok(())
}
