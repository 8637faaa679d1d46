//! Streams (server, client, bidirectional), an optional method, and a host
//! callback, through a typed client.
//!
//! `cargo build -p fx-stream -p fx-host && cargo run -p bulkhead-examples --example streams_and_callbacks`
//!
//! `bulkhead_host::client!` turns the interface crate's trait and descriptor into one
//! Rust method per plugin method (slots by name, types checked by the
//! compiler), checks the interface hash at load, answers optional methods the
//! plugin lacks with `NotImplemented` (no round trip), and knows the streaming
//! slots from the interface crate's descriptor.

use bulkhead_examples::fixture_library;
use bulkhead_host::{CallError, PluginSpec, Supervisor};
use fx_host_iface::__fidius_UsesHost as uses_host;
use fx_host_iface::PluginError;

bulkhead_host::client! {
    /// Typed access to plugins implementing the `Streams` interface.
    pub struct StreamsClient for fx_iface::Streams in fx_iface::__fidius_Streams
        (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
    {
        fn pid() -> u32;
        fn extra(x: u64) -> u64;
        stream fn count(n: u64) -> u64;
        client_stream fn sum(items: u64, bias: u64) -> u64;
        bidi fn double(items: u64) -> u64;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bulkhead_host::worker_main_if_requested();
    let supervisor = Supervisor::builder().self_worker().build()?;
    let lib = fixture_library("fx-stream");

    // The current plugin implements the optional `extra`; the old one does not.
    let client = StreamsClient::load(&supervisor, PluginSpec::new(&lib).plugin("StreamPlugin"))?;
    let old = StreamsClient::load(&supervisor, PluginSpec::new(&lib).plugin("OldStreamPlugin"))?;
    println!("extra(41) = {}", client.extra(41)?);
    match old.extra(41) {
        Err(CallError::NotImplemented { capabilities, .. }) => {
            println!("old plugin: extra not implemented (capabilities {capabilities:#x}), no request sent")
        }
        other => return Err(format!("expected NotImplemented, got {other:?}").into()),
    }

    // A server stream is an iterator; items are produced one per pull.
    let items: Vec<u64> = client.count(5)?.collect::<Result<_, _>>()?;
    println!("count(5) = {items:?}");
    // Dropping a stream early cancels it in the plugin.
    let first_two: Vec<u64> = client.count(1_000_000)?.take(2).collect::<Result<_, _>>()?;
    println!("first two of a million: {first_two:?} (the rest never produced)");
    // Client and bidirectional streams: the plugin pulls the host's items.
    let sum: u64 = client.sum(1..=100u64, 0)?;
    let doubled: Vec<u64> = client.double([1u64, 2, 3])?.collect::<Result<_, _>>()?;
    println!("sum(1..=100) = {sum}, double([1, 2, 3]) = {doubled:?}");

    // A plugin that calls back into the host (`#[fidius::host_interface]`):
    // the host implements the trait fidius generates and binds it, checked by
    // the compiler (see `ExampleHost` below).
    let host_impl = bulkhead_host::host_interface! {
        fx_host_iface::Host in fx_host_iface::__fidius_host_Host
            (hash = Host_HOST_INTERFACE_HASH, version = Host_HOST_INTERFACE_VERSION, count = Host_HOST_FN_COUNT)
        for ExampleHost => {
            fn lookup(key) = HOST_FN_LOOKUP;
            fn check(n) = HOST_FN_CHECK;
            fn boom() = HOST_FN_BOOM;
        }
    };
    let caller = supervisor.load(PluginSpec::new(fixture_library("fx-host")).host_interface(host_impl))?;
    let answer: String = caller.call(uses_host::METHOD_ASK, &("colour".to_string(),))?;
    println!("plugin asked the host: {answer}");
    Ok(())
}

/// The application's implementation of the `Host` interface plugins call.
struct ExampleHost;

impl fx_host_iface::Host for ExampleHost {
    fn lookup(&self, key: String) -> String {
        format!("<{key} from the host>")
    }

    fn check(&self, n: u64) -> Result<u64, PluginError> {
        n.checked_mul(2)
            .ok_or_else(|| PluginError::new("OVERFLOW", format!("{n} * 2 overflows")))
    }

    fn boom(&self) -> u64 {
        0
    }
}
