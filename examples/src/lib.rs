//! Helpers shared by the bulkhead examples: where the example plugin library is.
//!
//! The examples load the workspace's `fx-basic` fixture plugin. Build it first
//! with `cargo build -p fx-basic` (the test suite builds it too), or pass
//! another library's path as the first argument.

use std::path::PathBuf;

/// The plugin library to load: the first command-line argument, or the
/// workspace's debug build of `fx-basic`.
pub fn plugin_library() -> PathBuf {
    if let Some(p) = std::env::args_os().nth(1) {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("examples/ lives in the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let lib = target.join("debug").join("libfx_basic.so");
    if !lib.exists() {
        eprintln!("{} not found: run `cargo build -p fx-basic` first", lib.display());
        std::process::exit(2);
    }
    lib
}

/// The workspace's debug build of fixture package `name` (e.g. `"fx-stream"`);
/// exits with a hint if it has not been built.
pub fn fixture_library(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("examples/ lives in the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let lib = target.join("debug").join(format!("lib{}.so", name.replace('-', "_")));
    if !lib.exists() {
        eprintln!("{} not found: run `cargo build -p {name}` first", lib.display());
        std::process::exit(2);
    }
    lib
}

/// Vtable slots of the `Basic` fixture interface used by the examples.
pub mod basic {
    /// `greet(name: String) -> String`
    pub const GREET: u32 = 0;
    /// `add(a: i64, b: i64) -> i64`
    pub const ADD: u32 = 1;
    /// `segfault() -> u32`: dereferences null.
    pub const SEGFAULT: u32 = 7;
    /// `sleep_ms(ms: u64) -> u64`
    pub const SLEEP_MS: u32 = 9;
    /// `spin() -> u64`: loops forever.
    pub const SPIN: u32 = 10;
    /// `pid() -> u32`: the worker's process id.
    pub const PID: u32 = 15;
}
