//! Raw calls without copies: the caller writes the input straight into the
//! worker's shared request area ([`Plugin::call_raw_filled`]) and reads the
//! reply where the worker left it, through a guard that holds the worker
//! ([`RawReply`]).
//!
//! Copies of a raw payload on the shared-memory transport (input, output),
//! counting every pass over the bytes made outside the caller's own code:
//!
//! | path | PluginAllocated | Arena |
//! |---|---|---|
//! | `call_raw` / `call_raw_into` | host in 1, worker out 1, host out 1 | host in 1, host out 1 |
//! | `call_raw_filled` → [`RawReply`] | worker out 1 | none |
//!
//! The worker hands the plugin its input in place (a slice of the request
//! area) and lends an Arena plugin the response area itself as its arena, so
//! an Arena plugin writes its output where the host reads it. A
//! PluginAllocated plugin returns a buffer from its own heap, which the worker
//! copies into the response area (the one copy left; from 12 MiB on with
//! stores that bypass the cache, so the copy neither reads the destination
//! first nor evicts the plugin's working set). What the plugin does
//! inside (fidius' `#[wire(raw)]` glue takes its input as a `Vec<u8>`, one
//! copy, and an Arena plugin copies its result into the arena) is the
//! plugin's business and is not counted.
//!
//! On the socket transport, or when a payload does not fit the region, the
//! same calls work through host buffers: the input is written after the frame
//! prefix (no copy before the send) and the reply is read in the receive
//! buffer (no copy after the receive).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_shared::shm::Region;

use crate::error::CallError;
use crate::link::{Answer, Placed};
use crate::plugin::{check_index, check_input_len, interpret, MethodIndex, Plugin};
use crate::pool::Lease;

/// A plugin's raw reply, read in place: in the worker's shared-memory
/// response area (or, on the socket transport, in the host's receive buffer
/// for that worker). Dereferences to the reply bytes.
///
/// The guard holds the worker that answered: no other call can use it — and
/// overwrite the reply — until the guard is dropped. Hold it briefly: while
/// it lives that worker serves nobody else (calls wait for another worker of
/// the pool, within their deadlines), and a shutdown waits for it (up to its
/// grace period, then kills the worker; the bytes stay readable).
///
/// **The bytes may change while you read them.** The response area is memory
/// the worker process can write at any time, and the worker is hostile by
/// assumption: the *length* was validated once, when the reply arrived; the
/// *content* is whatever the memory holds when you read it. A caller that
/// parses or validates the reply should copy it first (`reply.to_vec()`, or
/// `copy_from_slice` into a buffer of its own) and work on the copy.
///
/// If the worker dies while the guard is alive, the bytes stay readable (the
/// mapping belongs to the host; a dead worker can no longer change them).
/// When the guard is dropped the death is handled like a crash in a call: the
/// worker is reaped and replaced under the restart policy, and the next call
/// goes to a live worker.
pub struct RawReply {
    lease: Lease,
    region: Option<Arc<Region>>,
    at: At,
    method: u32,
    start: Instant,
    limit: Duration,
}

/// Where the reply bytes are.
#[derive(Clone, Copy)]
enum At {
    Region { off: u32, len: u32 },
    Rx { start: usize, end: usize },
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<RawReply>();
};

impl RawReply {
    /// Whether the bytes are read straight from the shared-memory region
    /// (`false`: from the host's receive buffer — the socket transport, a
    /// reply larger than the region, a plugin with host imports, or a reply
    /// of at most 32 bytes, which travels inline in the region's header and
    /// is copied).
    pub fn in_shared_memory(&self) -> bool {
        matches!(self.at, At::Region { .. })
    }
}

impl std::ops::Deref for RawReply {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self.at {
            // The range was validated when the reply arrived; the region is
            // the worker's and lives as long as this guard.
            At::Region { off, len } => self
                .region
                .as_deref()
                .and_then(|r| r.response_bytes(off, len))
                .unwrap_or(&[]),
            At::Rx { start, end } => self
                .lease
                .held()
                .and_then(|w| w.received().get(start..end))
                .unwrap_or(&[]),
        }
    }
}

impl AsRef<[u8]> for RawReply {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for RawReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawReply")
            .field("len", &self.len())
            .field("in_shared_memory", &self.in_shared_memory())
            .finish()
    }
}

impl Drop for RawReply {
    fn drop(&mut self) {
        // A worker that died while the guard held it is accounted for like a
        // crash in a call, so the pool replaces it now instead of the next
        // caller finding it dead. The lease, dropped next, hands the dying
        // worker to recovery.
        self.lease.fail_if_died(self.method, self.start, self.limit);
    }
}

impl Plugin {
    /// Calls a `#[wire(raw)]` method with a `len`-byte input that `fill`
    /// writes in place — straight into the worker's shared request area on the
    /// shared-memory transport (no copy of the input by bulkhead), else into
    /// the host's send buffer — and returns the reply in place, as a
    /// [`RawReply`] guard (no copy of the output by the host).
    ///
    /// `fill` gets exactly `len` bytes, of unspecified content: write all of
    /// them. If `fill` panics, no request is sent, the worker is given back
    /// untouched, the call is not counted, and the panic continues in the
    /// caller. Errors are those of [`call_raw`](Self::call_raw).
    pub fn call_raw_filled(
        &self,
        index: impl Into<MethodIndex>,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<RawReply, CallError> {
        self.call_raw_filled_with_timeout(index, len, fill, self.generation().call_timeout)
    }

    /// [`call_raw_filled`](Self::call_raw_filled) with this call's own timeout.
    pub fn call_raw_filled_with_timeout(
        &self,
        index: impl Into<MethodIndex>,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        timeout: Duration,
    ) -> Result<RawReply, CallError> {
        let index = index.into().0;
        let mut fill = Some(fill);
        self.on_current(|g| {
            check_index(g, index)?;
            check_input_len(g, len)?;
            // A call refused by a retired generation never reached `fill`.
            let Some(fill) = fill.take() else {
                return Err(CallError::ShutDown);
            };
            g.pool.call_placed(index, len, fill, timeout, |lease, placed, start| {
                let region = lease.held().and_then(|w| w.region().cloned());
                let (status, at) = match placed {
                    Placed::Region { status, off, len } => (status, At::Region { off, len }),
                    Placed::Rx { status, start, end } => (status, At::Rx { start, end }),
                    Placed::Fault(fault) => {
                        interpret(g, index, &Answer::Fault(fault))?;
                        unreachable!("faults are errors")
                    }
                    Placed::FillPanicked(_) => unreachable!("handled by the pool"),
                };
                let reply = RawReply {
                    lease,
                    region,
                    at,
                    method: index,
                    start,
                    limit: timeout,
                };
                if status != 0 {
                    // An error status: its payload (a message) is copied and decoded.
                    let payload = reply.to_vec();
                    interpret(
                        g,
                        index,
                        &Answer::Reply {
                            status,
                            payload: &payload,
                        },
                    )?;
                }
                Ok(reply)
            })
        })
    }

    /// [`call_raw`](Self::call_raw) with the reply read in place (a
    /// [`RawReply`]); `input` is copied once, into the request area.
    pub fn call_raw_in_place(&self, index: impl Into<MethodIndex>, input: &[u8]) -> Result<RawReply, CallError> {
        self.call_raw_filled(index, input.len(), |buf| buf.copy_from_slice(input))
    }
}
