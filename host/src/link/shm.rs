//! Requests through the shared-memory region.
//!
//! The request goes into the region (or, if too large, is announced there and
//! sent on the socket); the answer comes back the same way. The host spins
//! (yielding) for up to [`HOST_SPIN`], then sleeps on the region's futex,
//! checking the socket every [`SOCKET_CHECK`] for a worker that closed it or
//! wrote on it unasked. Every field the worker wrote is read once and
//! validated; an answer that came through the region must leave the socket
//! empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_shared::frame::ENVELOPE_OVERHEAD;
use bulkhead_shared::protocol::{CallFault, HostMsg, WorkerMsg};
use bulkhead_shared::shm::{self, Region, RequestKind, ResponseKind};

use super::framing::{nothing_unsolicited, read_frame, socket_idle, write_all, IoFail};
use super::session::{Turn, Turns};
use super::{msg_name, Answer, Link, Placed, PullSource, Unplaced};
use crate::error::ProtocolError;

/// How long the host spins (yielding) for an answer before sleeping on the futex.
const HOST_SPIN: Duration = Duration::from_micros(200);
/// While asleep on the futex, how often the host checks the socket.
const SOCKET_CHECK: Duration = Duration::from_millis(20);

impl Link {
    /// A call through the region; with a `target`, the answer is copied once,
    /// straight into it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn call_shm(
        &mut self,
        region: &Region,
        id: u64,
        method: u32,
        payload: &[u8],
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
        pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, IoFail> {
        let last = region.resp_seq();
        // The bytes of the request area the plugin may still read while it
        // calls back (an inline or socket-borne payload uses none of them).
        let keep = if payload.len() <= region.capacity() {
            region.post_request(RequestKind::Call, id, method, payload);
            if payload.len() <= shm::REQ_INLINE {
                0
            } else {
                payload.len()
            }
        } else {
            region.post_request(RequestKind::CallViaSocket, id, method, &[]);
            self.send_call(id, method, payload, deadline)?;
            0
        };
        let r = self.wait_shm(region, last, id, deadline, keep, pull)?;
        self.finish_shm(r, id, deadline, region, target)
    }

    /// A client-streaming call through the region (its payload fits there);
    /// the plugin's pulls are answered from `pull` through the region too.
    pub(super) fn client_call_shm(
        &mut self,
        region: &Region,
        id: u64,
        method: u32,
        payload: &[u8],
        deadline: Instant,
        pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, IoFail> {
        let last = region.resp_seq();
        region.post_request(RequestKind::ClientCall, id, method, payload);
        let r = self.wait_shm(region, last, id, deadline, payload.len(), pull)?;
        self.finish_shm(r, id, deadline, region, &mut None)
    }

    /// The next item of the open stream, through the region.
    pub(super) fn stream_next_shm(
        &mut self,
        region: &Region,
        id: u64,
        deadline: Instant,
        pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, IoFail> {
        let last = region.resp_seq();
        region.post_request(RequestKind::StreamNext, id, 0, &[]);
        let r = self.wait_shm(region, last, id, deadline, 0, pull)?;
        self.finish_shm(r, id, deadline, region, &mut None)
    }

    /// Waits for the region's answer to request `id` (posted after `last`)
    /// and checks that it answers that request. Callbacks and pulls the
    /// worker makes meanwhile are answered on the way (from the plugin's
    /// host imports and `pull`), their bytes clear of the first `keep` bytes
    /// of the request area.
    fn wait_shm(
        &mut self,
        region: &Region,
        mut last: u32,
        id: u64,
        deadline: Instant,
        keep: usize,
        pull: Option<PullSource<'_>>,
    ) -> Result<shm::Response, IoFail> {
        let mut turns = Turns::new(pull);
        loop {
            let seen = self.wait_change(region, last, deadline)?;
            let r = region.response();
            if r.id != id {
                return Err(if region.is_dead() {
                    IoFail::Eof
                } else {
                    IoFail::Frame(ProtocolError::WrongRequestId {
                        expected: id,
                        got: r.id,
                    })
                });
            }
            match ResponseKind::from_code(r.kind) {
                Some(ResponseKind::Callback) => {
                    if region.copy_callback_args(r.len, &mut self.rx).is_none() {
                        let why = format!("callback arguments of {} bytes", r.len);
                        return Err(IoFail::Frame(ProtocolError::Malformed(why)));
                    }
                    let turn = Turn::Callback {
                        import: r.status as u32,
                        index: r.off,
                        payload: &self.rx,
                    };
                    let (status, out) = turns.serve(self.way.imports.as_deref(), turn, self.max_frame);
                    self.answer_turn(region, id, status, &out, keep, false, deadline)?;
                }
                Some(ResponseKind::CallbackViaSocket) => {
                    let len = read_frame(&self.sock, &mut self.rx, self.max_frame, deadline)?;
                    let (status, out) = match WorkerMsg::decode(&self.rx[..len]) {
                        Ok(WorkerMsg::Callback { import, index, payload }) => {
                            let turn = Turn::Callback { import, index, payload };
                            turns.serve(self.way.imports.as_deref(), turn, self.max_frame)
                        }
                        Ok(other) => return Err(IoFail::Frame(ProtocolError::Unexpected { got: msg_name(&other) })),
                        Err(e) => return Err(IoFail::Frame(ProtocolError::Malformed(e.to_string()))),
                    };
                    self.answer_turn(region, id, status, &out, keep, false, deadline)?;
                }
                Some(ResponseKind::Pull) => {
                    let (status, out) = turns.serve(None, Turn::Pull, self.max_frame);
                    self.answer_turn(region, id, status, &out, keep, true, deadline)?;
                }
                _ => return Ok(r),
            }
            last = seen;
        }
    }

    /// Answers a callback (or, with `item`, a pull) of request `id`: through
    /// the region when the bytes fit clear of the first `keep` bytes of the
    /// request area, else announced there and sent on the socket.
    #[allow(clippy::too_many_arguments)]
    fn answer_turn(
        &mut self,
        region: &Region,
        id: u64,
        status: i32,
        out: &[u8],
        keep: usize,
        item: bool,
        deadline: Instant,
    ) -> Result<(), IoFail> {
        if region.post_answer(id, status, out, keep) {
            return Ok(());
        }
        let answer = if item {
            HostMsg::Item { status, payload: out }
        } else {
            HostMsg::CallbackReply { status, payload: out }
        };
        answer.encode(&mut self.tx);
        // Announced first: the worker reads the socket only once it knows.
        region.post_request_in_place(RequestKind::AnswerViaSocket, id, 0, 0);
        write_all(&self.sock, &self.tx, deadline)
    }

    /// Waits until the region's response sequence moves past `last` and
    /// returns where it moved to; while asleep, checks now and then that the
    /// worker has not closed its socket or written on it unasked.
    fn wait_change(&self, region: &Region, last: u32, deadline: Instant) -> Result<u32, IoFail> {
        loop {
            match region.wait_response(last, HOST_SPIN, deadline, SOCKET_CHECK) {
                shm::Wait::Changed(seen) => return Ok(seen),
                shm::Wait::Dead => return Err(IoFail::Eof),
                shm::Wait::TimedOut if Instant::now() >= deadline => return Err(IoFail::Timeout),
                shm::Wait::TimedOut => {
                    if let Err(f) = socket_idle(&self.sock) {
                        if region.resp_seq() == last {
                            return Err(f);
                        }
                    }
                }
            }
        }
    }

    /// Takes the answer `r` out of the region (into `target` or the receive
    /// buffer), or from the socket when the region says it went there.
    fn finish_shm(
        &mut self,
        r: shm::Response,
        id: u64,
        deadline: Instant,
        region: &Region,
        target: &mut Option<Vec<u8>>,
    ) -> Result<Answer<'_>, IoFail> {
        let max_payload = self.max_frame.saturating_sub(ENVELOPE_OVERHEAD);
        let mut owned_buf = None;
        let kind = ResponseKind::from_code(r.kind);
        match kind {
            Some(ResponseKind::ViaSocket) => return self.receive_socket(id, deadline),
            Some(ResponseKind::ReplyInline) => {
                let copied = match target.take() {
                    Some(buf) => region.copy_inline_response(r.len, owned_buf.insert(buf)),
                    None => region.copy_inline_response(r.len, &mut self.rx),
                };
                if copied.is_none() {
                    let why = format!("inline response of {} bytes", r.len);
                    return Err(IoFail::Frame(ProtocolError::Malformed(why)));
                }
            }
            Some(ResponseKind::Reply | ResponseKind::Fault) if r.len > max_payload => {
                return Err(IoFail::Frame(ProtocolError::FrameTooLarge {
                    len: r.len,
                    max: max_payload,
                }))
            }
            Some(ResponseKind::Reply | ResponseKind::Fault) => {
                let copied = if let (Some(buf), Some(ResponseKind::Reply)) = (target.take(), kind) {
                    let out = owned_buf.insert(buf);
                    region.copy_response(r.off, r.len, out)
                } else {
                    region.copy_response(r.off, r.len, &mut self.rx)
                };
                if copied.is_none() {
                    let why = format!("response at {}+{} lies outside the shared region", r.off, r.len);
                    return Err(IoFail::Frame(ProtocolError::Malformed(why)));
                }
            }
            // `wait_shm` answers the turns; any other code is unknown.
            Some(ResponseKind::Callback | ResponseKind::CallbackViaSocket | ResponseKind::Pull) | None => {
                let why = format!("unknown shared-memory response kind {}", r.kind);
                return Err(IoFail::Frame(ProtocolError::Malformed(why)));
            }
        }
        // Nothing may arrive on the socket when the answer came through the region.
        nothing_unsolicited(&self.sock)?;
        if kind == Some(ResponseKind::Fault) {
            return match bulkhead_shared::wire::decode::<CallFault>(&self.rx) {
                Ok(fault) => Ok(Answer::Fault(fault)),
                Err(e) => Err(IoFail::Frame(ProtocolError::Malformed(e.to_string()))),
            };
        }
        if let Some(payload) = owned_buf {
            return Ok(Answer::Owned {
                status: r.status,
                payload,
            });
        }
        Ok(Answer::Reply {
            status: r.status,
            payload: &self.rx[..r.len as usize],
        })
    }

    /// Waits for the region's answer to request `id` and leaves a reply in
    /// the response area, validated, for the caller to read in place.
    pub(super) fn await_placed(
        &mut self,
        region: &Arc<Region>,
        last: u32,
        id: u64,
        keep: usize,
        deadline: Instant,
    ) -> Result<Placed, IoFail> {
        let r = self.wait_shm(region, last, id, deadline, keep, None)?;
        let max_payload = self.max_frame.saturating_sub(ENVELOPE_OVERHEAD);
        if ResponseKind::from_code(r.kind) != Some(ResponseKind::Reply) || r.len > max_payload {
            let answer = self.finish_shm(r, id, deadline, region, &mut None)?;
            let answer = Unplaced::of(answer);
            return Ok(self.place(answer));
        }
        if region.response_bytes(r.off, r.len).is_none() {
            let why = format!("response at {}+{} lies outside the shared region", r.off, r.len);
            return Err(IoFail::Frame(ProtocolError::Malformed(why)));
        }
        nothing_unsolicited(&self.sock)?;
        Ok(Placed::Region {
            status: r.status,
            off: r.off,
            len: r.len,
        })
    }
}
