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
use bulkhead_shared::protocol::CallFault;
use bulkhead_shared::shm::{self, Region, RequestKind, ResponseKind};

use super::framing::{nothing_unsolicited, socket_idle, IoFail};
use super::{Answer, Link, Placed, Unplaced};
use crate::error::ProtocolError;

/// How long the host spins (yielding) for an answer before sleeping on the futex.
const HOST_SPIN: Duration = Duration::from_micros(200);
/// While asleep on the futex, how often the host checks the socket.
const SOCKET_CHECK: Duration = Duration::from_millis(20);

impl Link {
    /// A call through the region; with a `target`, the answer is copied once,
    /// straight into it.
    pub(super) fn call_shm(
        &mut self,
        region: &Region,
        id: u64,
        method: u32,
        payload: &[u8],
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
    ) -> Result<Answer<'_>, IoFail> {
        let last = region.resp_seq();
        if payload.len() <= region.capacity() {
            region.post_request(RequestKind::Call, id, method, payload);
        } else {
            region.post_request(RequestKind::CallViaSocket, id, method, &[]);
            self.send_call(id, method, payload, deadline)?;
        }
        self.await_shm(region, last, id, deadline, target)
    }

    /// The next item of the open stream, through the region.
    pub(super) fn stream_next_shm(
        &mut self,
        region: &Region,
        id: u64,
        deadline: Instant,
    ) -> Result<Answer<'_>, IoFail> {
        let last = region.resp_seq();
        region.post_request(RequestKind::StreamNext, id, 0, &[]);
        self.await_shm(region, last, id, deadline, &mut None)
    }

    /// Waits for the region's answer to request `id` (posted after `last`).
    fn await_shm(
        &mut self,
        region: &Region,
        last: u32,
        id: u64,
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
    ) -> Result<Answer<'_>, IoFail> {
        let r = self.wait_shm(region, last, id, deadline)?;
        self.finish_shm(r, id, deadline, region, target)
    }

    /// Waits for the region's answer to request `id` (posted after `last`)
    /// and checks that it answers that request.
    fn wait_shm(&mut self, region: &Region, last: u32, id: u64, deadline: Instant) -> Result<shm::Response, IoFail> {
        loop {
            match region.wait_response(last, HOST_SPIN, deadline, SOCKET_CHECK) {
                shm::Wait::Changed(_) => break,
                shm::Wait::Dead => return Err(IoFail::Eof),
                shm::Wait::TimedOut if Instant::now() >= deadline => return Err(IoFail::Timeout),
                // Asleep for a while: make sure the worker has not closed its
                // socket or started writing on it unasked.
                shm::Wait::TimedOut => {
                    if let Err(f) = socket_idle(&self.sock) {
                        if region.resp_seq() == last {
                            return Err(f);
                        }
                    }
                }
            }
        }
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
        Ok(r)
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
            None => {
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
        deadline: Instant,
    ) -> Result<Placed, IoFail> {
        let r = self.wait_shm(region, last, id, deadline)?;
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
