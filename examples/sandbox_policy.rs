//! Sandbox policy: what the worker may touch, and what it actually got.
//!
//! `cargo build -p fx-basic && cargo run -p bulkhead-examples --example sandbox_policy`
//!
//! The default sandbox (`Sandbox::strict()`) needs no privileges. Every layer is
//! best effort unless required; `PluginInfo::sandbox` reports each one.

use bulkhead_examples::{basic, plugin_library};
use bulkhead_host::{Layer, LayerState, PluginSpec, Sandbox, Supervisor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bulkhead_host::worker_main_if_requested();

    let supervisor = Supervisor::builder().self_worker().build()?;

    // The default, plus what a real plugin might need: a model file to read, a
    // port to connect to, a smaller private /tmp. Seccomp must be in force, or
    // the load fails instead of running the plugin with less protection.
    let model = std::env::temp_dir().join("bulkhead-example-model.bin");
    std::fs::write(&model, b"weights")?;
    let policy = Sandbox::strict()
        .allow_read(&model)
        .allow_connect_tcp(443)
        .tmp_size(16 << 20)
        .require(Layer::Seccomp);
    let plugin = supervisor.load(PluginSpec::new(plugin_library()).sandbox(policy))?;
    let info = plugin.info();
    println!(
        "sandbox of worker {} (uid {} outside):",
        info.worker_pid, info.sandbox.host_uid
    );
    for layer in Layer::ALL {
        let state = match info.sandbox.state(layer) {
            LayerState::Enforced => "enforced".to_string(),
            LayerState::Partial(why) => format!("partial: {why}"),
            LayerState::Unavailable(why) => format!("unavailable: {why}"),
            LayerState::Off => "off".to_string(),
        };
        println!("  {:<9} {state}", layer.name());
    }
    // Inside its pid namespace the plugin's process is pid 2 (init is pid 1).
    let pid: u32 = plugin.call(basic::PID, &())?;
    println!(
        "the plugin sees itself as pid {pid}; the host knows its worker as {}",
        info.worker_pid
    );

    // Sandbox::none() turns the sandbox off: the plugin then sees the host's pids.
    let open = supervisor.load(PluginSpec::new(plugin_library()).sandbox(Sandbox::none()))?;
    let pid: u32 = open.call(basic::PID, &())?;
    println!("without a sandbox the plugin sees its real pid {pid}");
    std::fs::remove_file(&model)?;
    Ok(())
}
