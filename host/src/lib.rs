//! **bulkhead** runs untrusted native plugins — `cdylib`s speaking the
//! [fidius](https://crates.io/crates/fidius) C ABI — in supervised worker
//! processes. A plugin that segfaults, aborts, loops forever or lies on the wire
//! costs one worker process, never the host: every call has a deadline, every
//! crash becomes a typed [`CallError`], and dead workers are replaced under a
//! [`RestartPolicy`].
//!
//! ```no_run
//! use std::time::Duration;
//! use bulkhead_host::{CallError, Exit, PluginSpec, Supervisor};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Self-worker mode: this executable is also the worker (no install step).
//! bulkhead_host::worker_main_if_requested();
//! let supervisor = Supervisor::builder().self_worker().build()?;
//! let plugin = supervisor.load(
//!     PluginSpec::new("target/debug/libfx_basic.so")
//!         .call_timeout(Duration::from_secs(2)),
//! )?;
//!
//! // Typed call: arguments are a bincode-1 tuple, the result is decoded.
//! let greeting: String = plugin.call(0, &("world".to_string(),))?;
//! assert_eq!(greeting, "Hello, world!");
//!
//! // A crash in the plugin is an error value; the host carries on.
//! match plugin.call::<_, u32>(7, &()) {
//!     Err(CallError::WorkerDied { exit: Exit::Signal { signal: 11, .. }, .. }) => {}
//!     other => panic!("expected a contained segfault, got {other:?}"),
//! }
//! // ... and the next call runs on a fresh worker.
//! let sum: i64 = plugin.call(1, &(2i64, 40i64))?;
//! assert_eq!(sum, 42);
//! Ok(())
//! }
//! ```
//!
//! Runnable versions (run in CI): the `examples/` directory of the repository.
//! See the README for installing the worker, the async API (feature `tokio`),
//! observability (`tracing`, feature `metrics`) and the `bulkhead` CLI.
//!
//! # Shape
//! * [`Supervisor`] owns all worker processes; dropping it shuts them down.
//! * [`PluginSpec`] says what to load and how: plugin name, config, timeouts,
//!   pool size, restart policy, resource [`Limits`], and the [`Sandbox`] the
//!   worker applies to itself (default: [`Sandbox::strict`]).
//! * [`Plugin`] is the cheap, `Clone + Send + Sync` handle you call: plain and
//!   raw calls, optional methods ([`Plugin::call_optional`]), server streams
//!   ([`Plugin::stream`] → [`PluginStream`]), client and bidirectional streams.
//! * [`client!`] declares a typed client for a fidius interface (one method per
//!   plugin method, slot and types checked against the interface crate at
//!   compile time, the interface hash at load; the plugin then stays pinned
//!   to that interface across reloads).
//! * [`Plugin::reload_library`] and [`Plugin::reload_with`] switch versions
//!   keeping every setting not changed on purpose.
//! * [`HostInterface`] implements a `#[fidius::host_interface]` the plugin calls back.
//! * [`PluginSpec::require_signature`] loads only libraries signed like fidius
//!   signs them, from a sealed in-memory copy of the verified bytes.
//!
//! # Operations
//! * Restarts never stop by default: [`RestartPolicy::default`] replaces every
//!   dead worker with capped exponential backoff per pool slot (0, then 100 ms
//!   doubling to 30 s, reset by a successful call or 10 s of uptime). Giving up
//!   is opt-in with a [`Budget`] ([`RestartPolicy::on_failure`]), counted per
//!   worker so a pool of `n` gets `n` times the room.
//! * [`Plugin::health`] and [`EventKind::HealthChanged`] say whether a plugin is
//!   healthy, degraded (and when the next restart is due) or failed; crashes,
//!   timeouts and restarts are logged with `tracing` at `warn`.
//! * [`Plugin::reload`] switches to a new library without losing a call
//!   ([`Plugin::reload_library`] keeps the current settings).
//! * [`PluginSpec::idle_timeout`] stops workers nobody calls.
//! * [`EventKind::WorkerExited`] carries the worker's [`ResourceUsage`] (CPU
//!   time, peak RSS); [`Plugin::memory`] samples the live workers.
//! * A worker that dies of `SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE` or
//!   `SIGABRT` leaves a [`CrashReport`] in [`CallError::WorkerDied`] (and
//!   [`LoadError::WorkerDied`]): the method in flight, the faulting address, a
//!   copy of up to 4 KiB of the input and the faulting thread's frames;
//!   [`CrashReport::replay`] gives the `bulkhead-cli call` command line that
//!   replays the call.
//!
//! # Guarantees
//! * The host never loads plugin code; a worker process does.
//! * Every call ends with exactly one result before its deadline (plus the time
//!   to kill and reap a hung worker).
//! * Bytes from a worker are untrusted: frames are capped before allocation, and
//!   anything malformed is a [`ProtocolError`] that gets the worker replaced.
//! * No orphans, no zombies: workers die with the host (parent-death signal),
//!   their process groups are SIGKILLed on timeout, and every child is reaped;
//!   under the sandbox each worker has its own pid namespace, so nothing a
//!   plugin starts outlives it.
//! * Plugins are treated as hostile: by default each worker enters user, pid,
//!   net, mount, ipc and uts namespaces, drops every capability, and applies
//!   Landlock and a seccomp filter before the plugin is opened;
//!   [`PluginInfo::sandbox`] reports each layer.

#![forbid(unsafe_code)]
#[cfg(not(target_os = "linux"))]
compile_error!(
    "bulkhead supports Linux only: it relies on memfd shared memory, futexes, prctl and Linux process control"
);

#[cfg(feature = "tokio")]
mod async_call;
mod bells;
mod blocking;
mod client;
mod crash;
mod discover;
mod error;
mod event_loop;
mod events;
mod exit;
mod forkserver;
mod health;
mod hostfn;
mod layers;
mod limits;
mod link;
mod locate;
#[cfg(feature = "metrics")]
mod metrics;
mod observe;
mod output;
mod plugin;
mod pool;
mod probe;
mod restart;
mod sandbox;
mod signing;
mod spawner;
mod stats;
mod strays;
mod stream;
mod supervisor;
#[cfg(feature = "tokio")]
mod tokio_api;
mod usage;
mod violations;
mod worker_process;
mod zero_copy;

pub use bulkhead_shared::abi::BufferStrategy;
#[doc(hidden)]
pub use client::__private;
pub use crash::CrashReport;
pub use discover::Discovered;
/// Re-exported: the ed25519 crate of [`VerifyingKey`] (and of fidius' signing).
pub use ed25519_dalek;
pub use error::{BuildError, CallError, CallFault, LoadError, LoadFailure, PluginError, ProtocolError};
pub use events::{Event, EventKind, EventReceiver, RecvError, RecvTimeoutError, TryRecvError, EVENT_BUFFER};
pub use exit::Exit;
pub use health::Health;
#[doc(hidden)]
pub use hostfn::__private_host;
pub use hostfn::{HostInterface, DEFAULT_MAX_CALLBACKS};
pub use limits::{Limits, DEFAULT_ADDRESS_SPACE, DEFAULT_NICE, DEFAULT_OPEN_FILES};
pub use locate::{WORKER_BIN, WORKER_ENV};
pub use output::{OutputBudget, OutputLine, Stream, STDERR_TAIL};
pub use plugin::{
    MethodIndex, Plugin, PluginInfo, PluginSpec, Transport, DEFAULT_ARENA, DEFAULT_CALL_TIMEOUT, DEFAULT_IDLE_CPU,
    DEFAULT_LOAD_TIMEOUT, DEFAULT_QUEUE_LIMIT,
};
pub use pool::WorkerReport;
pub use restart::{Backoff, Budget, Failed, RestartMode, RestartPolicy, DEFAULT_HEALTHY_AFTER};
pub use sandbox::{Layer, LayerState, Sandbox, SandboxReport, SyscallFilter, DEFAULT_TMP_SIZE};
pub use signing::{signature_path, VerifyingKey};
pub use stats::Stats;
pub use stream::{PluginStream, RawItems};
pub use supervisor::{
    Supervisor, SupervisorBuilder, DEFAULT_ENV_ALLOWLIST, DEFAULT_SHUTDOWN_GRACE, LOAD_MANY_THREADS, SELF_WORKER_ARG,
    SELF_WORKER_ENV, WORKER_PATH,
};
#[cfg(feature = "tokio")]
pub use tokio_api::{AsyncPluginStream, EventStream};
pub use usage::{ResourceUsage, WorkerMemory};
pub use zero_copy::RawReply;

/// Self-worker mode's entry point: call it first thing in `main`. When this
/// process was started by a bulkhead host as a worker (its first argument is
/// [`SELF_WORKER_ARG`]), it runs the worker and exits the process with the
/// worker's exit code; otherwise it returns at once and does nothing.
///
/// ```no_run
/// // The first statement of the application's `main`:
/// bulkhead_host::worker_main_if_requested();
/// // ... then the application, which may use `Supervisor::builder().self_worker()`.
/// let supervisor = bulkhead_host::Supervisor::builder().self_worker().build()?;
/// # Ok::<(), bulkhead_host::BuildError>(())
/// ```
///
/// Call it first: the worker takes over the process (it closes inherited
/// descriptors and loads untrusted code). A process that is already
/// multi-threaded when it gets here (e.g. a `#[tokio::main]` `main`, whose
/// runtime threads start before its first statement) re-executes itself and
/// runs the worker from a constructor, before `main` and before any thread, so
/// every sandbox layer still applies; where that cannot happen, a strict
/// sandbox refuses the load and says why.
#[cfg(feature = "self-worker")]
pub fn worker_main_if_requested() {
    let mut all = std::env::args_os();
    let argv0 = all.next().unwrap_or_default();
    if all.next().as_deref() != Some(std::ffi::OsStr::new(SELF_WORKER_ARG)) {
        return;
    }
    let args = all.map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>();
    let code = bulkhead_worker::self_worker_main(argv0, args);
    std::process::exit(i32::from(code));
}
