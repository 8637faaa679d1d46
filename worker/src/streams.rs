//! Streams (fidius 0.5.9 `FidiusStreamHandle`): driving a plugin's server
//! stream one item per host request, and the input handle the worker gives a
//! client-streaming or bidirectional method, whose items are pulled from the
//! host through the [`channel`](crate::channel).
//!
//! A stream slot has the PluginAllocated shape (server) or takes the input
//! handle second (client, bidirectional); on status 0 a stream init returns
//! its handle through the output pointer with length 0.

use std::ffi::c_void;

use bulkhead_shared::abi::{
    AllocMethod500, BufferStrategy, ClientStreamMethod, StreamHandle, ABI_500, STATUS_BUFFER_TOO_SMALL, STATUS_OK,
    STATUS_STREAM_END,
};
use bulkhead_shared::protocol::{CallFault, HostMsg, WorkerMsg};

use crate::channel;
use crate::load::{Outcome, Plugin};

/// First size of the item buffer.
const FIRST_ITEM_BUF: usize = 4096;

impl Plugin {
    /// The non-NULL slot `index` of an ABI 500 PluginAllocated plugin.
    fn stream_slot(&self, index: u32) -> Result<*const c_void, CallFault> {
        if self.abi != ABI_500 || self.strategy != BufferStrategy::PluginAllocated {
            return Err(CallFault::StreamState {
                what: "streams need an ABI 500 PluginAllocated plugin".into(),
            });
        }
        let slot = self.slot(index)?;
        if slot.is_null() {
            return Err(CallFault::EmptySlot { index });
        }
        Ok(slot)
    }

    /// Opens server stream `index` (bidirectional with `input`); the outcome is
    /// status 0 with no output once the handle is held.
    pub fn stream_open<R>(&mut self, index: u32, input: bool, args: &[u8], f: impl FnOnce(Outcome<'_>) -> R) -> R {
        if self.stream.is_some() {
            return f(Outcome::Fault(CallFault::StreamState {
                what: "a stream is already open".into(),
            }));
        }
        let slot = match self.stream_slot(index) {
            Ok(s) => s,
            Err(fault) => return f(Outcome::Fault(fault)),
        };
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut out_len: u32 = 0;
        let in_len = args.len() as u32;
        let in_flight = InFlight::new(index, args);
        let status = if input {
            // SAFETY: a non-NULL bidirectional slot has the client-stream shape.
            let m: ClientStreamMethod = unsafe { std::mem::transmute::<*const c_void, ClientStreamMethod>(slot) };
            // SAFETY: inst from construct; the input handle is fresh and owned by the plugin now.
            unsafe { m(self.inst, input_handle(), args.as_ptr(), in_len, &mut out, &mut out_len) }
        } else {
            // SAFETY: a non-NULL server-stream slot has the PluginAllocated shape.
            let m: AllocMethod500 = unsafe { std::mem::transmute::<*const c_void, AllocMethod500>(slot) };
            // SAFETY: inst from construct; args valid and non-NULL.
            unsafe { m(self.inst, args.as_ptr(), in_len, &mut out, &mut out_len) }
        };
        drop(in_flight);
        if status != STATUS_OK {
            // Stream inits write no output on failure (a panic carries no message).
            return f(Outcome::Status { status, output: &[] });
        }
        if out.is_null() {
            return f(Outcome::Fault(CallFault::NullStreamHandle { index }));
        }
        self.stream = Some(out.cast::<StreamHandle>());
        self.stream_method = index;
        f(Outcome::Status { status, output: &[] })
    }

    /// Pulls the next item of the open stream into the worker's item buffer.
    pub fn stream_next<R>(&mut self, f: impl FnOnce(Outcome<'_>) -> R) -> R {
        let Some(h) = self.stream else {
            return f(Outcome::Fault(CallFault::StreamState {
                what: "next without an open stream".into(),
            }));
        };
        if self.stream_buf.is_empty() {
            self.stream_buf.resize(FIRST_ITEM_BUF, 0);
        }
        // The stream's method is in flight; its arguments went with the open.
        let _in_flight = InFlight::new(self.stream_method, &[]);
        let mut retried = false;
        loop {
            let cap = self.stream_buf.len() as u32;
            let mut len: u32 = 0;
            // SAFETY: `h` is the live handle the plugin returned; `next` is read
            // from it and called with a buffer valid for `cap` bytes.
            let status = unsafe { ((*h).next)(h, self.stream_buf.as_mut_ptr(), cap, &mut len) };
            if status == STATUS_BUFFER_TOO_SMALL && !retried && len > cap {
                if len > self.max_output {
                    return f(Outcome::Fault(CallFault::OutputTooLarge {
                        len: len.into(),
                        max: self.max_output,
                    }));
                }
                self.stream_buf.resize(len as usize, 0);
                retried = true;
                continue;
            }
            if status == STATUS_BUFFER_TOO_SMALL {
                return f(Outcome::Status {
                    status,
                    output: &len.to_le_bytes(),
                });
            }
            if status == STATUS_STREAM_END {
                return f(Outcome::Status { status, output: &[] });
            }
            if len > cap {
                return f(Outcome::Fault(CallFault::OutputTooLarge {
                    len: len.into(),
                    max: cap,
                }));
            }
            return f(Outcome::Status {
                status,
                output: &self.stream_buf[..len as usize],
            });
        }
    }

    /// Drops the open stream, if any (the plugin's `drop_fn`, exactly once).
    pub fn close_stream(&mut self) {
        if let Some(h) = self.stream.take() {
            // SAFETY: the live handle from the plugin; taken out of `self.stream`
            // first, so it is dropped exactly once.
            unsafe { ((*h).drop_fn)(h) };
        }
    }

    /// Calls client-streaming method `index`: the plugin pulls its input
    /// through the handle the worker passes; the result comes back like a call's.
    pub fn client_call<R>(&mut self, index: u32, args: &[u8], f: impl FnOnce(Outcome<'_>) -> R) -> R {
        let slot = match self.stream_slot(index) {
            Ok(s) => s,
            Err(fault) => return f(Outcome::Fault(fault)),
        };
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut out_len: u32 = 0;
        // SAFETY: a non-NULL client-streaming slot has this shape.
        let m: ClientStreamMethod = unsafe { std::mem::transmute::<*const c_void, ClientStreamMethod>(slot) };
        let in_flight = InFlight::new(index, args);
        // SAFETY: inst from construct; the input handle is fresh and now the plugin's.
        let status = unsafe {
            m(
                self.inst,
                input_handle(),
                args.as_ptr(),
                args.len() as u32,
                &mut out,
                &mut out_len,
            )
        };
        drop(in_flight);
        self.finish_alloc_output(status, out, out_len, f)
    }
}

/// The method and input in flight for the seccomp and crash reports, while
/// a stream is opened or a client-streaming call runs (items pulled later
/// are not recorded).
struct InFlight {
    _input: crate::crash::CallGuard,
}

impl InFlight {
    fn new(index: u32, args: &[u8]) -> Self {
        crate::sandbox::METHOD_IN_FLIGHT.store(index, std::sync::atomic::Ordering::Relaxed);
        InFlight {
            _input: crate::crash::CallGuard::new(args),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::sandbox::METHOD_IN_FLIGHT.store(u32::MAX, std::sync::atomic::Ordering::Relaxed);
    }
}

/// State behind an input handle: the item the plugin has not taken yet.
struct Pulling {
    pending: Option<Vec<u8>>,
    ended: bool,
}

/// A fresh input handle; the plugin owns it and calls `drop_fn` once.
fn input_handle() -> *mut StreamHandle {
    let state = Box::into_raw(Box::new(Pulling {
        pending: None,
        ended: false,
    }));
    Box::into_raw(Box::new(StreamHandle {
        next: pull_next,
        drop_fn: pull_drop,
        state: state.cast(),
    }))
}

unsafe extern "C" fn pull_next(h: *mut StreamHandle, buf: *mut u8, cap: u32, out_len: *mut u32) -> i32 {
    if h.is_null() || out_len.is_null() {
        return STATUS_STREAM_END;
    }
    // SAFETY: a handle built by `input_handle`, not yet dropped; the plugin
    // calls `next` from one thread at a time (fidius' contract).
    let st = unsafe { &mut *(*h).state.cast::<Pulling>() };
    if st.pending.is_none() {
        if st.ended {
            return STATUS_STREAM_END;
        }
        let got = channel::exchange(WorkerMsg::Pull, |reply| match reply {
            HostMsg::Item { status, payload } => (status, payload.to_vec()),
            _ => (STATUS_STREAM_END, Vec::new()),
        });
        match got {
            Some((STATUS_OK, item)) => st.pending = Some(item),
            Some((status, _)) => {
                st.ended = true;
                return status;
            }
            None => {
                st.ended = true;
                return STATUS_STREAM_END;
            }
        }
    }
    let item = st.pending.as_ref().expect("set above");
    if item.len() > cap as usize || (buf.is_null() && !item.is_empty()) {
        // SAFETY: out_len checked non-NULL.
        unsafe { *out_len = item.len() as u32 };
        return STATUS_BUFFER_TOO_SMALL;
    }
    // SAFETY: the plugin's buffer holds `cap` >= item.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(item.as_ptr(), buf, item.len());
        *out_len = item.len() as u32;
    }
    st.pending = None;
    STATUS_OK
}

unsafe extern "C" fn pull_drop(h: *mut StreamHandle) {
    if h.is_null() {
        return;
    }
    // SAFETY: both boxes were leaked by `input_handle`; fidius calls drop once.
    unsafe {
        let handle = Box::from_raw(h);
        drop(Box::from_raw(handle.state.cast::<Pulling>()));
    }
}
