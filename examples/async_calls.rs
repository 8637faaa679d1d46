//! The async API (feature `tokio`): load and call without blocking the
//! runtime, events as a stream, a timeout inside async code.
//!
//! `cargo build -p fx-basic && cargo run -p bulkhead-examples --example async_calls`
//!
//! `worker_main_if_requested()` runs before the runtime starts, so `main` is
//! written by hand instead of with `#[tokio::main]`.

use std::time::Duration;

use bulkhead_examples::{basic, plugin_library};
use bulkhead_host::{CallError, PluginSpec, Supervisor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bulkhead_host::worker_main_if_requested();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let supervisor = Supervisor::builder().self_worker().build()?;
    let mut events = supervisor.event_stream();
    let plugin = supervisor
        .load_async(PluginSpec::new(plugin_library()).workers(2))
        .await?;
    if let Some(event) = events.recv().await {
        println!("event: {:?}", event.kind);
    }

    // Many concurrent calls; each runs on the blocking pool, none blocks the runtime.
    let calls: Vec<_> = (0..32i64)
        .map(|i| tokio::spawn(plugin.call_async::<_, i64>(basic::ADD, &(i, i))))
        .collect();
    let mut total = 0;
    for call in calls {
        total += call.await??;
    }
    println!("sum of 32 async calls: {total}");

    // The call's own timeout kills a stuck worker...
    match plugin
        .call_async_with_timeout::<_, u64>(basic::SPIN, &(), Duration::from_millis(200))
        .await
    {
        Err(CallError::Timeout { limit, .. }) => println!("timed out after {limit:?}; worker replaced"),
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    // ...while an outer tokio timeout only stops waiting: the call finishes in
    // the background and its worker is kept.
    let waited = tokio::time::timeout(
        Duration::from_millis(50),
        plugin.call_async::<_, u64>(basic::SLEEP_MS, &(300u64,)),
    )
    .await;
    println!("outer timeout fired: {}", waited.is_err());

    let reports = supervisor.shutdown_async().await;
    println!("shut down {} workers", reports.len());
    Ok(())
}
