//! Requests through the shared-memory region.
//!
//! The request goes into the region (or, if too large, is announced there and
//! sent on the socket); the answer comes back the same way, and so do the
//! callbacks and pulls the plugin makes meanwhile (its *turns*), each
//! answered in the region before the wait goes on. The host spins (yielding)
//! for up to [`HOST_SPIN`], then sleeps on the region's futex, checking the
//! socket every [`SOCKET_CHECK`] for a worker that closed it or wrote on it
//! unasked. A caller that must not block posts with [`Link::post_call`] and
//! moves the call on with [`Link::step`] when the region's doorbell rings.
//! Every field the worker wrote is read once and validated; an answer that
//! came through the region must leave the socket empty (checked when the
//! bell thread flagged it: [`Link::check_strays`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_shared::frame::ENVELOPE_OVERHEAD;
use bulkhead_shared::protocol::{CallFault, HostMsg, WorkerMsg};
use bulkhead_shared::shm::{self, Region, RequestKind, ResponseKind};

use super::framing::{read_frame, socket_idle, write_all, IoFail};
use super::session::{Turn, Turns};
use super::{msg_name, Answer, Link, Placed, PullSource, Unplaced};
use crate::error::ProtocolError;

/// How long the host spins (yielding) for an answer before sleeping on the futex.
const HOST_SPIN: Duration = Duration::from_micros(200);
/// While asleep on the futex, how often the host checks the socket.
const SOCKET_CHECK: Duration = Duration::from_millis(20);

impl Link {
    /// A call (`kind` [`RequestKind::Call`]) or a client call whose payload
    /// fits ([`RequestKind::ClientCall`]) through the region; the plugin's
    /// callbacks and pulls are answered on the way. With a `target`, the
    /// answer is copied once, straight into it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn call_shm(
        &mut self,
        region: &Region,
        kind: RequestKind,
        id: u64,
        method: u32,
        payload: &[u8],
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
        pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, IoFail> {
        let last = region.resp_seq();
        let keep = if payload.len() <= region.capacity() {
            post(region, kind, id, method, payload)
        } else {
            region.post_request(RequestKind::CallViaSocket, id, method, &[]);
            self.send_call(id, method, payload, deadline)?;
            // A socket-borne payload leaves the request area free.
            0
        };
        let r = self.wait_shm(region, last, id, deadline, keep, pull)?;
        self.finish_shm(r, id, deadline, region, target)
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
            let r = answer_to(region, id)?;
            if !self.take_turn(region, r, keep, &mut turns, deadline)? {
                return Ok(r);
            }
            last = seen;
        }
    }

    /// If `r` is a callback or pull of request `id` (not its answer), answers
    /// it from `turns` and returns `true`.
    fn take_turn(
        &mut self,
        region: &Region,
        r: shm::Response,
        keep: usize,
        turns: &mut Turns<'_>,
        deadline: Instant,
    ) -> Result<bool, IoFail> {
        let id = r.id;
        let turn = matches!(
            ResponseKind::from_code(r.kind),
            Some(ResponseKind::Callback | ResponseKind::CallbackViaSocket | ResponseKind::Pull)
        );
        // A worker that keeps taking turns must not hold the call past its
        // deadline (a waiting host checks it only while nothing arrives).
        if turn && Instant::now() >= deadline {
            return Err(IoFail::Timeout);
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
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Posts a call (or, with `client`, a client-streaming call) through the
    /// region for a caller that must not block (an async one), if the region
    /// can carry it (there is one and the payload fits); `None` otherwise,
    /// with nothing sent.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn post_call(&mut self, method: u32, payload: &[u8], client: bool) -> Option<Posted> {
        let region = self.way.region.clone()?;
        if payload.len() > region.capacity() {
            return None;
        }
        let id = self.next_id();
        let last = region.resp_seq();
        let kind = if client {
            RequestKind::ClientCall
        } else {
            RequestKind::Call
        };
        let keep = post(&region, kind, id, method, payload);
        Some(Posted {
            region,
            id,
            last,
            keep,
            callbacks: 0,
        })
    }

    /// Moves a posted call on without blocking: answers the callbacks that
    /// are waiting and says whether its answer is there, not yet, or needs
    /// the socket (a blocking read: finish it with [`wait_posted`](Self::wait_posted)).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn step(
        &mut self,
        p: &mut Posted,
        deadline: Instant,
        pull: Option<PullSource<'_>>,
    ) -> Result<Progress, IoFail> {
        let region = p.region.clone();
        let mut turns = Turns::resume(pull, p.callbacks);
        loop {
            let seen = region.resp_seq();
            if seen == p.last {
                return if region.is_dead() {
                    Err(IoFail::Eof)
                } else {
                    Ok(Progress::Waiting)
                };
            }
            let r = answer_to(&region, p.id)?;
            if let Some(ResponseKind::CallbackViaSocket | ResponseKind::ViaSocket) = ResponseKind::from_code(r.kind) {
                return Ok(Progress::Blocking);
            }
            let turn = self.take_turn(&region, r, p.keep, &mut turns, deadline)?;
            p.callbacks = turns.count();
            if !turn {
                return Ok(Progress::Answered(r));
            }
            p.last = seen;
        }
    }

    /// Waits (blocking) for a posted call's answer and takes it.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn wait_posted(
        &mut self,
        p: Posted,
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
        pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, IoFail> {
        let r = self.wait_shm(&p.region, p.last, p.id, deadline, p.keep, pull)?;
        self.finish_shm(r, p.id, deadline, &p.region, target)
    }

    /// Takes the answer [`step`](Self::step) found (from the region; an
    /// answer announced on the socket is read there).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn take_posted(
        &mut self,
        p: &Posted,
        r: shm::Response,
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
    ) -> Result<Answer<'_>, IoFail> {
        self.finish_shm(r, p.id, deadline, &p.region, target)
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
        self.check_strays()?;
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
        self.check_strays()?;
        Ok(Placed::Region {
            status: r.status,
            off: r.off,
            len: r.len,
        })
    }
}

/// Posts a call or client call whose payload fits the region; returns how
/// many bytes of the request area the plugin may still read while it calls
/// back (a payload small enough for the request line uses none of them).
fn post(region: &Region, kind: RequestKind, id: u64, method: u32, payload: &[u8]) -> usize {
    region.post_request(kind, id, method, payload);
    if kind == RequestKind::Call && payload.len() <= shm::REQ_INLINE {
        0
    } else {
        payload.len()
    }
}

/// The response in the region, checked to belong to request `id` (a worker
/// the reaper marked dead has ended instead).
fn answer_to(region: &Region, id: u64) -> Result<shm::Response, IoFail> {
    let r = region.response();
    if r.id == id {
        return Ok(r);
    }
    Err(if region.is_dead() {
        IoFail::Eof
    } else {
        IoFail::Frame(ProtocolError::WrongRequestId {
            expected: id,
            got: r.id,
        })
    })
}

/// A call posted through the region by a caller that must not block, whose
/// answer has not been taken yet.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
pub(crate) struct Posted {
    region: Arc<Region>,
    id: u64,
    /// The response sequence last seen.
    last: u32,
    /// Bytes of the request area the plugin may still read.
    keep: usize,
    /// Callbacks answered so far.
    callbacks: u32,
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
impl Posted {
    /// The region the call went through (its doorbell wakes the caller).
    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The response sequence the caller waits to see move.
    pub(crate) fn last(&self) -> u32 {
        self.last
    }
}

/// Where a posted call stands.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
pub(crate) enum Progress {
    /// No answer yet.
    Waiting,
    /// The answer is in the region.
    Answered(shm::Response),
    /// The rest needs a blocking read on the socket.
    Blocking,
}
