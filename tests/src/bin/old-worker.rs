//! Stands in for a worker from another bulkhead release: it answers the
//! protocol-version query (whose one-line format is frozen across releases)
//! with a version one below this host's, and refuses to do anything else.

use bulkhead_shared::protocol::PROTOCOL_VERSION;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--protocol-version") => println!("bulkhead-protocol {}", PROTOCOL_VERSION - 1),
        _ => {
            eprintln!("old-worker: only answers --protocol-version");
            std::process::exit(64);
        }
    }
}
