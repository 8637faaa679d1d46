//! Types shared by the bulkhead host library and its worker. **An
//! implementation detail of `bulkhead`**: depend on `bulkhead` instead. The
//! host/worker protocol, the framing and the shared-memory region are hidden
//! from the docs and carry no stability promise — they change whenever the
//! protocol version does.
//!
//! * [`abi`] — the fidius C ABI (`#[repr(C)]` registry and descriptor layouts,
//!   function-pointer shapes) as verified against plugins built with fidius 0.5.9
//!   (ABI 500) and 0.4.x (ABI 400).
//! * [`crash`] — the lines a worker dying of a signal writes to stderr (signal,
//!   fault address, method, input copy, backtrace), and their bounded parser.
//! * [`status`] — the `i32` status codes a plugin method returns.
//! * [`wire`] — bincode 1.3 helpers matching fidius' wire format, with decoding
//!   that is bounded by the input so hostile bytes cannot force large allocations.
//! * `frame` (hidden) — length-prefixed frames with a hard size cap checked
//!   before any allocation.
//! * `names` (hidden) — the command-line words host and worker agree on.
//! * `protocol` (hidden) — the messages host and worker exchange over their socket.
//! * `shm` (hidden) — the shared-memory data path: a memfd region mapped by host
//!   and worker, with a spin-then-futex doorbell.
//! * `forkserver` (hidden) — the host ↔ fork-server channel: bounded
//!   `SOCK_SEQPACKET` messages with the descriptors they carry.
//! * `reap` (hidden) — `wait4(2)` by pid, with the child's rusage.
//!
//! The crate's only `unsafe` code is in those last three (mapping, descriptor
//! passing, `wait4`), each block with its reason.
#![deny(unsafe_code)]
#[cfg(not(target_os = "linux"))]
compile_error!(
    "bulkhead supports Linux only: it relies on memfd shared memory, futexes, prctl and Linux process control"
);

pub mod abi;
pub mod crash;
#[doc(hidden)]
pub mod forkserver;
#[doc(hidden)]
pub mod frame;
#[doc(hidden)]
pub mod names;
#[doc(hidden)]
pub mod protocol;
#[doc(hidden)]
pub mod reap;
pub mod sandbox;
#[doc(hidden)]
pub mod shm;
pub mod status;
pub mod syscalls;
pub mod violation;
pub mod wire;

/// The environment variable a worker process (or fork-server) started with
/// `exec` finds the host's pid in. Not a command-line flag, because a plugin
/// can read its process's `/proc/self/cmdline`; the worker erases the variable
/// — its bytes too, so `/proc/self/environ` no longer shows it — before
/// anything else.
#[doc(hidden)]
pub const PARENT_PID_ENV: &str = "BULKHEAD_PARENT_PID";
