//! Requests as frames on the socket: a call's frame out, its `Reply` or
//! `Fault` frame back, nothing else in between.
//!
//! A call whose payload is small goes out in one write (the payload copied
//! behind the call prefix); a larger one in two (prefix, then the caller's
//! bytes, uncopied).

use std::sync::Arc;
use std::time::Instant;

use bulkhead_shared::frame::HEADER_LEN;
use bulkhead_shared::protocol::{call_prefix, WorkerMsg, REPLY_PREFIX_LEN};
use bulkhead_shared::shm::{Region, RequestKind};

use super::framing::{read_frame, write_all, IoFail};
use super::{msg_name, Answer, Link, Placed, Unplaced};
use crate::error::ProtocolError;

/// Payloads up to this size are copied behind the call prefix and sent in one syscall.
const SMALL_CALL: usize = 16 * 1024;

impl Link {
    /// Writes a `Call` frame for request `id`.
    pub(super) fn send_call(&mut self, id: u64, method: u32, payload: &[u8], deadline: Instant) -> Result<(), IoFail> {
        let prefix = call_prefix(id, method, payload.len());
        if payload.len() <= SMALL_CALL {
            self.tx.clear();
            self.tx.extend_from_slice(&prefix);
            self.tx.extend_from_slice(payload);
            write_all(&self.sock, &self.tx, deadline)
        } else {
            write_all(&self.sock, &prefix, deadline).and_then(|()| write_all(&self.sock, payload, deadline))
        }
    }

    /// Reads the answer to request `id` from the socket.
    pub(super) fn receive_socket(&mut self, id: u64, deadline: Instant) -> Result<Answer<'_>, IoFail> {
        let len = read_frame(&self.sock, &mut self.rx, self.max_frame, deadline)?;
        match WorkerMsg::decode(&self.rx[..len]) {
            Ok(WorkerMsg::Reply { id: got, .. }) | Ok(WorkerMsg::Fault { id: got, .. }) if got != id => {
                Err(IoFail::Frame(ProtocolError::WrongRequestId { expected: id, got }))
            }
            Ok(WorkerMsg::Reply { status, .. }) => {
                // Re-borrow: the payload is everything after the fixed reply fields.
                let start = REPLY_PREFIX_LEN - HEADER_LEN;
                Ok(Answer::Reply {
                    status,
                    payload: &self.rx[start..len],
                })
            }
            Ok(WorkerMsg::Fault { fault, .. }) => Ok(Answer::Fault(fault)),
            Ok(other) => Err(IoFail::Frame(ProtocolError::Unexpected { got: msg_name(&other) })),
            Err(e) => Err(IoFail::Frame(ProtocolError::Malformed(e.to_string()))),
        }
    }

    /// A call whose `len`-byte payload `fill` writes into a host buffer that
    /// goes on the socket; announced in `region` if there is one, which then
    /// carries the answer (left where it arrived, see [`Placed`]).
    pub(super) fn placed_via_socket(
        &mut self,
        region: Option<&Arc<Region>>,
        id: u64,
        method: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::thread::Result<()>,
        deadline: Instant,
    ) -> Result<Placed, IoFail> {
        let prefix = call_prefix(id, method, len);
        let mut big = Vec::new();
        let small = len <= SMALL_CALL;
        let buf: &mut [u8] = if small {
            self.tx.clear();
            self.tx.extend_from_slice(&prefix);
            self.tx.resize(prefix.len() + len, 0);
            &mut self.tx[prefix.len()..]
        } else {
            big.resize(len, 0);
            &mut big
        };
        if let Err(panic) = fill(buf) {
            return Ok(Placed::FillPanicked(panic));
        }
        let last = region.map(|r| r.resp_seq());
        if let Some(region) = region {
            region.post_request_in_place(RequestKind::CallViaSocket, id, method, len);
        }
        let sent = if small {
            write_all(&self.sock, &self.tx, deadline)
        } else {
            write_all(&self.sock, &prefix, deadline).and_then(|()| write_all(&self.sock, &big, deadline))
        };
        drop(big);
        sent?;
        match (region, last) {
            (Some(region), Some(last)) => self.await_placed(region, last, id, 0, deadline),
            _ => {
                let answer = self.receive_socket(id, deadline)?;
                let answer = Unplaced::of(answer);
                Ok(self.place(answer))
            }
        }
    }
}
