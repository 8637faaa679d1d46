//! A typed client: `bulkhead_host::client!` turns a fidius interface into Rust
//! methods (no slot numbers in calling code), and its `load` refuses a plugin
//! built against another version of the interface — the worker checks the
//! interface hash before the plugin is constructed. A reload keeps every
//! setting and can never switch the client to another interface.
//!
//! `cargo build -p fx-basic -p fx-stream && cargo run -p bulkhead-examples --example typed_client`

use std::time::Duration;

use bulkhead_examples::{fixture_library, plugin_library};
use bulkhead_host::{CallError, LoadError, LoadFailure, PluginSpec, Supervisor};

bulkhead_host::client! {
    /// Typed access to plugins of the fixture's `Basic` interface.
    pub struct BasicClient for fx_iface::Basic in fx_iface::__fidius_Basic
        (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
    {
        fn greet(name: String) -> String;
        fn add(a: i64, b: i64) -> i64;
        fn sleep_ms(ms: u64) -> u64;
        fn pid() -> u32;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bulkhead_host::worker_main_if_requested();

    let supervisor = Supervisor::builder().self_worker().build()?;
    let spec = PluginSpec::new(plugin_library()).call_timeout(Duration::from_millis(500));
    let client = BasicClient::load(&supervisor, spec)?;
    println!("interface hash {:#018x} checked at load", BasicClient::INTERFACE_HASH);
    println!("{}", client.greet("typed client".to_string())?);
    println!("2 + 40 = {}", client.add(2, 40)?);
    println!("slept {} ms in worker {}", client.sleep_ms(10)?, client.pid()?);
    // Every typed method keeps the call contract: a call past its deadline is
    // an error value and the worker is replaced.
    match client.sleep_ms(5_000) {
        Err(CallError::Timeout { limit, .. }) => println!("a call over its {limit:?} deadline is an error value"),
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    println!("next call on worker {}", client.pid()?);

    // A reload keeps every setting (here the 500 ms timeout) ...
    client.plugin().reload_library(plugin_library())?;
    println!("reloaded: call timeout still {:?}", client.plugin().call_timeout());
    // ... and never the interface: a library of another one is refused and
    // the current workers keep serving.
    let other = fixture_library("fx-stream");
    match client
        .plugin()
        .reload_with(|spec| spec.library(&other).plugin("StreamPlugin"))
    {
        Err(
            e @ LoadError::Rejected {
                reason: LoadFailure::InterfaceMismatch { .. },
                ..
            },
        ) => println!("refused: {e}"),
        other => return Err(format!("expected InterfaceMismatch, got {other:?}").into()),
    }
    println!("still serving: 2 + 40 = {}", client.add(2, 40)?);
    Ok(())
}
