//! Requests as conversations on the socket.
//!
//! The host sends the request's frame (announced in the region first, when
//! there is one); until the worker's `Reply` or `Fault` for that request id
//! arrives, the worker may send `Callback`s (answered from the plugin's host
//! imports with a `CallbackReply`; more than the imports' callback limit per
//! request are refused with a plugin error) and `Pull`s (answered from the
//! caller's pull source with an `Item`, or the end of the stream without
//! one). Every answer is capped at the largest payload a frame may carry.

use std::time::Instant;

use bulkhead_shared::abi::{HOST_CALL_NOT_BOUND, STATUS_PLUGIN_ERROR, STATUS_SERIALIZATION_ERROR, STATUS_STREAM_END};
use bulkhead_shared::frame::{ENVELOPE_OVERHEAD, HEADER_LEN};
use bulkhead_shared::protocol::{HostMsg, WorkerMsg, REPLY_PREFIX_LEN};
use bulkhead_shared::shm::RequestKind;
use bulkhead_shared::wire::{self, WirePluginError};

use super::framing::{read_frame, write_all, IoFail};
use super::{msg_name, Answer, Link, PullSource, Request};
use crate::error::ProtocolError;
use crate::hostfn::HostImports;

impl Link {
    /// Runs `req` (request `id`) as a conversation on the socket until its
    /// answer, answering the worker's callbacks and pulls on the way, all
    /// before `deadline`.
    pub(super) fn converse(
        &mut self,
        id: u64,
        req: Request<'_>,
        deadline: Instant,
        pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, IoFail> {
        let host_msg = match req {
            Request::Call { method, payload } => HostMsg::Call { id, method, payload },
            Request::StreamOpen { method, input, payload } => HostMsg::StreamOpen {
                id,
                method,
                input,
                payload,
            },
            Request::StreamNext => HostMsg::StreamNext { id },
            Request::StreamClose => HostMsg::StreamClose { id },
            Request::ClientCall { method, payload } => HostMsg::ClientCall { id, method, payload },
        };
        host_msg.encode(&mut self.tx);
        if let Some(region) = self.region() {
            region.post_request(RequestKind::Conversation, id, 0, &[]);
        }
        write_all(&self.sock, &self.tx, deadline)?;
        let mut turns = Turns::new(pull);
        let (status, len) = loop {
            let len = read_frame(&self.sock, &mut self.rx, self.max_frame, deadline)?;
            let turn = match WorkerMsg::decode(&self.rx[..len]) {
                Ok(WorkerMsg::Reply { id: got, .. }) | Ok(WorkerMsg::Fault { id: got, .. }) if got != id => {
                    return Err(IoFail::Frame(ProtocolError::WrongRequestId { expected: id, got }))
                }
                Ok(WorkerMsg::Reply { status, .. }) => break (status, len),
                Ok(WorkerMsg::Fault { fault, .. }) => return Ok(Answer::Fault(fault)),
                // A worker that keeps taking turns must not hold the request
                // past its deadline (a read checks it only while waiting).
                Ok(WorkerMsg::Callback { .. } | WorkerMsg::Pull) if Instant::now() >= deadline => {
                    return Err(IoFail::Timeout)
                }
                Ok(WorkerMsg::Callback { import, index, payload }) => Turn::Callback { import, index, payload },
                Ok(WorkerMsg::Pull) => Turn::Pull,
                Ok(other) => return Err(IoFail::Frame(ProtocolError::Unexpected { got: msg_name(&other) })),
                Err(e) => return Err(IoFail::Frame(ProtocolError::Malformed(e.to_string()))),
            };
            let item = matches!(turn, Turn::Pull);
            let (status, out) = turns.serve(self.way.imports.as_deref(), turn, self.max_frame);
            let answer = if item {
                HostMsg::Item { status, payload: &out }
            } else {
                HostMsg::CallbackReply { status, payload: &out }
            };
            answer.encode(&mut self.tx);
            write_all(&self.sock, &self.tx, deadline)?;
        };
        let start = REPLY_PREFIX_LEN - HEADER_LEN;
        Ok(Answer::Reply {
            status,
            payload: &self.rx[start..len],
        })
    }
}

/// A callback or pull the worker makes in the middle of a request.
pub(super) enum Turn<'a> {
    /// Call function `index` of host interface `import` with these arguments.
    Callback { import: u32, index: u32, payload: &'a [u8] },
    /// The next input item, please.
    Pull,
}

/// What answers the worker's turns during one request: the plugin's host
/// imports (more than their callback limit are refused with a plugin error)
/// and the caller's pull source (without one, the input has ended).
pub(super) struct Turns<'p> {
    pull: Option<PullSource<'p>>,
    callbacks: u32,
}

impl<'p> Turns<'p> {
    pub(super) fn new(pull: Option<PullSource<'p>>) -> Turns<'p> {
        Turns::resume(pull, 0)
    }

    /// Turns of a request that already had `callbacks` callbacks answered.
    pub(super) fn resume(pull: Option<PullSource<'p>>, callbacks: u32) -> Turns<'p> {
        Turns { pull, callbacks }
    }

    /// Callbacks answered so far.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(super) fn count(&self) -> u32 {
        self.callbacks
    }

    /// The status and bytes that answer `turn`, capped at the largest
    /// payload a frame of `max_frame` bytes carries.
    pub(super) fn serve(&mut self, imports: Option<&HostImports>, turn: Turn<'_>, max_frame: u32) -> (i32, Vec<u8>) {
        let (status, out) = match turn {
            Turn::Callback { import, index, payload } => {
                self.callbacks = self.callbacks.saturating_add(1);
                let max = imports.map_or(crate::hostfn::DEFAULT_MAX_CALLBACKS, |i| i.max_callbacks);
                if self.callbacks > max {
                    let e = WirePluginError {
                        code: "CALLBACK_LIMIT".into(),
                        message: format!("more than {max} host callbacks in one request"),
                        details: None,
                    };
                    (STATUS_PLUGIN_ERROR, wire::encode(&e).unwrap_or_default())
                } else {
                    match imports.and_then(|i| i.interfaces.get(import as usize)) {
                        Some(iface) => iface.dispatch(index, payload),
                        None => (HOST_CALL_NOT_BOUND, Vec::new()),
                    }
                }
            }
            Turn::Pull => match self.pull.as_mut() {
                Some(p) => p(),
                None => (STATUS_STREAM_END, Vec::new()),
            },
        };
        if out.len() > max_frame.saturating_sub(ENVELOPE_OVERHEAD) as usize {
            (STATUS_SERIALIZATION_ERROR, Vec::new())
        } else {
            (status, out)
        }
    }
}
