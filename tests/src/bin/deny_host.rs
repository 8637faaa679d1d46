//! A host for the default-deny tests (`tests/default_deny.rs`), run by the
//! test as a child under an unused uid so that the attacks also run from a
//! non-root host. Loads `fx-neighbour` plugins and runs every attack of
//! [`bulkhead_tests::deny`] under one sandbox; prints one line per attack,
//! `attack <name> <outcome>`, then `expected <name> <outcome>` for what this
//! host's kernel and uid make of the control.
//!
//! Usage: `deny_host <worker> <fx-neighbour.so> <none|default>`.

use std::io::Write;

use bulkhead_host::{PluginSpec, Supervisor};
use bulkhead_tests::deny::{Attacker, Mode, ATTACKS};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [worker, lib, mode] = &args[..] else {
        panic!("usage: deny_host <worker> <fx-neighbour.so> <none|default>");
    };
    let mode = Mode::parse(mode).unwrap_or_else(|| panic!("sandbox {mode}: none or default"));
    let sup = Supervisor::builder().worker_path(worker).build().expect("worker");
    let attacker = Attacker {
        sup: &sup,
        spec: PluginSpec::new(lib),
        tag: 0,
    };
    let mut out = std::io::stdout().lock();
    for name in ATTACKS {
        let outcome = attacker.run(name, mode);
        writeln!(out, "attack {name} {outcome}").unwrap();
        writeln!(out, "expected {name} {}", bulkhead_tests::deny::expected(name, mode)).unwrap();
        out.flush().unwrap();
    }
}
