//! Answers through the shared-memory region.
//!
//! The host posts a request kind in the region ([`RequestKind`]); the worker
//! answers it there ([`ResponseKind`]): output already in the response area
//! (an Arena plugin's) is announced in place, small output rides in the
//! response line, other output is copied in. Only what the region cannot
//! carry — a payload or output larger than it, a conversation the host
//! announced — goes over the socket, through [`super::socket`].

use bulkhead_shared::protocol::HostMsg;
use bulkhead_shared::shm::{self, Region, RequestKind, ResponseKind};

use std::time::Duration;

use super::socket;
use super::{Server, Step, EXIT_PROTOCOL};
use crate::channel::{self, Via};
use crate::load::Outcome;

/// How long the worker spins (yielding) for the next request before sleeping
/// on the futex. Back-to-back calls find it awake; an idle worker sleeps.
const WORKER_SPIN: Duration = Duration::from_micros(100);

impl Server {
    /// Serves requests posted in `region` until told to stop; returns the exit code.
    pub(super) fn serve_shm(mut self, region: &Region) -> u8 {
        loop {
            let req = region.next_request(WORKER_SPIN);
            let sent = match RequestKind::from_code(req.kind) {
                Some(RequestKind::Call) => {
                    let Some(input) = region.request_payload(req.len) else {
                        eprintln!("bulkhead-worker: request of {} bytes exceeds the region", req.len);
                        return EXIT_PROTOCOL;
                    };
                    self.answer_shm(region, req.id, req.method, input)
                }
                Some(RequestKind::CallInline) => {
                    let mut buf = [0u8; shm::REQ_INLINE];
                    let Some(input) = region.inline_request(req.len, &mut buf) else {
                        eprintln!("bulkhead-worker: inline request of {} bytes", req.len);
                        return EXIT_PROTOCOL;
                    };
                    self.answer_shm(region, req.id, req.method, input)
                }
                Some(RequestKind::CallViaSocket) => {
                    if let Err(code) = self.next_frame() {
                        return code;
                    }
                    let rx = std::mem::take(&mut self.rx);
                    let sent = match HostMsg::decode(&rx) {
                        Ok(HostMsg::Call { id, method, payload }) if id == req.id => {
                            self.answer_shm(region, id, method, payload)
                        }
                        other => {
                            eprintln!("bulkhead-worker: expected the announced call, got {other:?}");
                            return EXIT_PROTOCOL;
                        }
                    };
                    self.rx = rx;
                    sent
                }
                Some(RequestKind::ClientCall) => {
                    let Some(input) = region.request_payload(req.len) else {
                        eprintln!("bulkhead-worker: request of {} bytes exceeds the region", req.len);
                        return EXIT_PROTOCOL;
                    };
                    let (sock, tx) = (&mut self.sock, &mut self.tx);
                    channel::set_open(Some(Via::Region(req.id)));
                    self.plugin.client_call(req.method, input, |outcome| {
                        channel::set_open(None);
                        post_outcome(region, sock, tx, req.id, outcome)
                    })
                }
                Some(RequestKind::StreamNext) => self.answer_shm_stream_next(region, req.id),
                Some(RequestKind::Conversation) => {
                    if let Err(code) = self.next_frame() {
                        return code;
                    }
                    match self.handle_socket_frame(Some(req.id)) {
                        Step::Continue => Ok(()),
                        Step::Exit(code) => return code,
                        Step::Shutdown => {
                            self.plugin.destroy();
                            return 0;
                        }
                    }
                }
                Some(RequestKind::Shutdown) => {
                    self.plugin.destroy();
                    return 0;
                }
                Some(RequestKind::Answer | RequestKind::AnswerViaSocket) | None => {
                    eprintln!("bulkhead-worker: unexpected request kind {}", req.kind);
                    return EXIT_PROTOCOL;
                }
            };
            if let Err(e) = sent {
                eprintln!("bulkhead-worker: cannot answer the host: {e}");
                return 0;
            }
        }
    }

    /// Runs a call and answers through the region: output already in the
    /// response area (Arena) is announced in place, other output is copied in,
    /// and output too large for the region goes over the socket. A plugin
    /// with host imports may call back through the region meanwhile.
    fn answer_shm(&mut self, region: &Region, id: u64, method: u32, input: &[u8]) -> std::io::Result<()> {
        // Between a request and its response the worker owns the response area.
        let area = region.response_area_raw();
        let (sock, tx) = (&mut self.sock, &mut self.tx);
        let calls_back = self.calls_back;
        if calls_back {
            channel::set_open(Some(Via::Region(id)));
        }
        self.plugin.call(method, input, Some(area), |outcome| {
            if calls_back {
                channel::set_open(None);
            }
            post_outcome(region, sock, tx, id, outcome)
        })
    }

    /// The next item of the open stream, answered through the region (its
    /// pulls, for a bidirectional stream, and callbacks go there too).
    fn answer_shm_stream_next(&mut self, region: &Region, id: u64) -> std::io::Result<()> {
        let (sock, tx) = (&mut self.sock, &mut self.tx);
        channel::set_open(Some(Via::Region(id)));
        self.plugin.stream_next(|outcome| {
            channel::set_open(None);
            post_outcome(region, sock, tx, id, outcome)
        })
    }
}

/// Answers request `id` through the region: output already in the response
/// area (Arena) is announced in place, other output is copied in, and output
/// too large for the region goes over the socket.
fn post_outcome(
    region: &Region,
    sock: &mut std::os::unix::net::UnixStream,
    tx: &mut Vec<u8>,
    id: u64,
    outcome: Outcome<'_>,
) -> std::io::Result<()> {
    match outcome {
        Outcome::Status { status, output } => {
            // Small outputs ride in the response line (one cache line to the host).
            if region.post_inline_response(id, status, output) {
                Ok(())
            } else if let Some(off) = region.offset_in_response_area(output) {
                region.post_response(ResponseKind::Reply, id, status, off, output.len() as u32);
                Ok(())
            } else if region.write_response(output) {
                region.post_response(ResponseKind::Reply, id, status, 0, output.len() as u32);
                Ok(())
            } else {
                region.post_response(ResponseKind::ViaSocket, id, 0, 0, 0);
                socket::reply(sock, tx, id, Outcome::Status { status, output })
            }
        }
        Outcome::Fault(fault) => {
            tx.clear();
            bulkhead_shared::wire::encode_into(&fault, tx).expect("encoding into a Vec cannot fail");
            if region.write_response(tx) {
                region.post_response(ResponseKind::Fault, id, 0, 0, tx.len() as u32);
                Ok(())
            } else {
                region.post_response(ResponseKind::ViaSocket, id, 0, 0, 0);
                socket::reply(sock, tx, id, Outcome::Fault(fault))
            }
        }
    }
}
