//! A typed client: a small wrapper that gives a plugin interface real Rust
//! method signatures over `Plugin::call`, and checks at load time that the
//! library implements the interface it expects.
//!
//! `cargo build -p fx-basic && cargo run -p bulkhead-examples --example typed_client`
//!
//! Written by hand here; a generated client (a macro from the interface trait)
//! removes the slot numbers and signatures below from your hands.

use std::time::Duration;

use bulkhead::{CallError, Plugin, PluginSpec, Supervisor};
use bulkhead_examples::{basic, plugin_library};

/// Client of the fixture's `Basic` interface.
struct BasicClient {
    plugin: Plugin,
}

/// Why a client could not be made.
#[derive(Debug)]
enum ClientError {
    WrongInterface { found: String, methods: u32 },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::WrongInterface { found, methods } => {
                write!(
                    f,
                    "expected the Basic interface (>= 16 methods), found {found} with {methods}"
                )
            }
        }
    }
}

impl std::error::Error for ClientError {}

impl BasicClient {
    /// Wraps a loaded plugin after checking what it implements.
    fn new(plugin: Plugin) -> Result<Self, ClientError> {
        let info = plugin.info();
        if info.interface_name != "Basic" || info.method_count <= basic::PID {
            return Err(ClientError::WrongInterface {
                found: info.interface_name,
                methods: info.method_count,
            });
        }
        Ok(Self { plugin })
    }

    fn greet(&self, name: &str) -> Result<String, CallError> {
        // A &str serializes exactly like the plugin's `String` parameter.
        self.plugin.call(basic::GREET, &(name,))
    }

    fn add(&self, a: i64, b: i64) -> Result<i64, CallError> {
        self.plugin.call(basic::ADD, &(a, b))
    }

    fn sleep(&self, ms: u64, timeout: Duration) -> Result<u64, CallError> {
        self.plugin.call_with_timeout(basic::SLEEP_MS, &(ms,), timeout)
    }

    fn worker_pid(&self) -> Result<u32, CallError> {
        self.plugin.call(basic::PID, &())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bulkhead::worker_main_if_requested();

    let supervisor = Supervisor::builder().self_worker().build()?;
    let client = BasicClient::new(supervisor.load(PluginSpec::new(plugin_library()))?)?;
    println!("{}", client.greet("typed client")?);
    println!("2 + 40 = {}", client.add(2, 40)?);
    println!(
        "slept {} ms in worker {}",
        client.sleep(10, Duration::from_secs(5))?,
        client.worker_pid()?
    );
    match client.sleep(2_000, Duration::from_millis(100)) {
        Err(CallError::Timeout { limit, .. }) => println!("a call over its {limit:?} deadline is an error value"),
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    Ok(())
}
