//! Types shared by the bulkhead host library and its worker binary.
//!
//! * [`abi`] — the fidius C ABI (`#[repr(C)]` registry and descriptor layouts,
//!   function-pointer shapes) as verified against plugins built with fidius 0.5.9
//!   (ABI 500) and 0.4.x (ABI 400).
//! * [`status`] — the `i32` status codes a plugin method returns.
//! * [`wire`] — bincode 1.3 helpers matching fidius' wire format, with decoding
//!   that is bounded by the input so hostile bytes cannot force large allocations.
//! * [`frame`] — length-prefixed frames with a hard size cap checked before any
//!   allocation.
//! * [`protocol`] — the messages host and worker exchange over their socket.
//!
//! * [`shm`] — the shared-memory data path: a memfd region mapped by host and
//!   worker, with a spin-then-futex doorbell. It is the crate's only `unsafe`
//!   code (mapping, futex, descriptor passing).
//!
//! ```
//! use bulkhead_shared::protocol::{HostMsg, WorkerMsg};
//! let mut buf = Vec::new();
//! HostMsg::Call { id: 7, method: 1, payload: b"abc" }.encode(&mut buf);
//! let body = &buf[bulkhead_shared::frame::HEADER_LEN..];
//! assert_eq!(HostMsg::decode(body).unwrap(), HostMsg::Call { id: 7, method: 1, payload: b"abc" });
//! # let _ = WorkerMsg::Reply { id: 7, status: 0, payload: b"" };
//! ```
#![deny(unsafe_code)]
#[cfg(not(target_os = "linux"))]
compile_error!(
    "bulkhead supports Linux only: it relies on memfd shared memory, futexes, prctl and Linux process control"
);

pub mod abi;
pub mod frame;
pub mod protocol;
pub mod shm;
pub mod status;
pub mod wire;
