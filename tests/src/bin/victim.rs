//! A minimal host for the host-death test: loads a plugin through bulkhead,
//! prints `worker <pid>`, then waits to be killed.
//!
//! Usage: `victim <worker-binary> <plugin.so>`.

use std::io::{Read, Write};

use bulkhead_host::{PluginSpec, Supervisor};

fn main() {
    let mut args = std::env::args().skip(1);
    let (worker, lib) = (args.next().expect("worker path"), args.next().expect("plugin path"));
    let sup = Supervisor::builder()
        .worker_path(worker)
        .build()
        .expect("worker exists");
    let plugin = sup.load(PluginSpec::new(lib).workers(2)).expect("plugin loads");
    let mut out = std::io::stdout().lock();
    for pid in plugin.worker_pids() {
        writeln!(out, "worker {pid}").unwrap();
    }
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    drop(out);
    // Block until killed (stdin stays open and silent).
    let mut buf = [0u8; 1];
    let _ = std::io::stdin().read(&mut buf);
}
