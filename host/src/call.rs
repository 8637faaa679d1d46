//! One call under one deadline, and the deadline-bounded socket I/O under it.
//!
//! The host end of the socket is non-blocking; every wait is a `poll` bounded by
//! the time left until the call's single `Instant` deadline. Frames from the
//! worker are capped before allocation and read into a reused buffer that only
//! grows as bytes actually arrive.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bulkhead_shared::abi::{HOST_CALL_NOT_BOUND, STATUS_PLUGIN_ERROR, STATUS_SERIALIZATION_ERROR, STATUS_STREAM_END};
use bulkhead_shared::frame::{self, FrameError, ENVELOPE_OVERHEAD, HEADER_LEN};
use bulkhead_shared::protocol::{call_prefix, CallFault, HostMsg, WorkerMsg};
use bulkhead_shared::shm::{self, Region};
use bulkhead_shared::wire::{self, WirePluginError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};

use crate::error::{Exit, ProtocolError};
use crate::worker_process::{msg_name, WorkerProcess};

/// How long the host spins (yielding) for an answer before sleeping on the futex.
const HOST_SPIN: Duration = Duration::from_micros(200);
/// While asleep on the futex, how often the host checks the socket.
const SOCKET_CHECK: Duration = Duration::from_millis(20);

/// Payloads up to this size are copied behind the call prefix and sent in one syscall.
const SMALL_CALL: usize = 16 * 1024;
/// First read chunk for a frame body; the buffer doubles from here as data arrives.
const FIRST_CHUNK: usize = 64 * 1024;

/// Why deadline-bounded I/O stopped.
#[derive(Debug)]
pub(crate) enum IoFail {
    /// The deadline passed.
    Timeout,
    /// The peer closed the socket (or it was shut down because the worker died).
    Eof,
    /// A frame violated the framing rules.
    Frame(ProtocolError),
    /// Another socket error.
    Io(io::Error),
}

/// What the worker answered.
pub(crate) enum Answer<'a> {
    /// The plugin's status code and output.
    Reply {
        /// Raw status.
        status: i32,
        /// Output bytes, borrowed from the worker's receive buffer.
        payload: &'a [u8],
    },
    /// The plugin's status code and output, already copied into a fresh
    /// buffer the caller keeps (the one-copy path for raw calls over shared memory).
    Owned {
        /// Raw status.
        status: i32,
        /// Output bytes.
        payload: Vec<u8>,
    },
    /// The plugin broke the ABI contract.
    Fault(CallFault),
}

/// Where the output of an answer lies, for callers that read it in place
/// (owned data only: no borrow of the worker, which the caller keeps).
pub(crate) enum Placed {
    /// In the shared region's response area (range validated).
    Region {
        /// Raw status.
        status: i32,
        /// Offset in the response area.
        off: u32,
        /// Length.
        len: u32,
    },
    /// In the worker's receive buffer, `rx[start..end]`.
    Rx {
        /// Raw status.
        status: i32,
        /// Start in `rx`.
        start: usize,
        /// End in `rx`.
        end: usize,
    },
    /// The plugin broke the ABI contract.
    Fault(CallFault),
    /// The caller's closure filling the request panicked; nothing was sent
    /// and the worker is untouched.
    FillPanicked(Box<dyn std::any::Any + Send>),
}

/// An answer borrowed from the receive buffer, as plain numbers (so the
/// borrow of the worker ends before its place in the buffer is computed).
enum Unplaced {
    Reply { status: i32, addr: usize, len: usize },
    Fault(CallFault),
}

impl Unplaced {
    fn of(answer: Answer<'_>) -> Unplaced {
        match answer {
            Answer::Reply { status, payload } => Unplaced::Reply {
                status,
                addr: payload.as_ptr() as usize,
                len: payload.len(),
            },
            Answer::Owned { .. } => unreachable!("no target buffer is passed on this path"),
            Answer::Fault(fault) => Unplaced::Fault(fault),
        }
    }
}

/// Why a call got no answer. After any of these the worker is unusable.
pub(crate) enum Failure {
    /// The deadline passed; the worker has been killed.
    Timeout,
    /// The worker died.
    Died {
        /// How.
        exit: Exit,
        /// Its stderr tail.
        stderr: String,
        /// Its crash report, if it died of the signal the report names.
        crash: Option<Box<crate::crash::CrashReport>>,
    },
    /// The worker broke the protocol; it has been killed.
    Protocol(ProtocolError),
}

/// A request answered through a conversation on the socket, during which the
/// plugin may call back into the host or pull items from it.
pub(crate) enum SessionMsg<'a> {
    /// An ordinary call.
    Call { method: u32, payload: &'a [u8] },
    /// Open a server (or, with `input`, bidirectional) stream.
    StreamOpen {
        method: u32,
        input: bool,
        payload: &'a [u8],
    },
    /// Next item of the open stream.
    StreamNext,
    /// Drop the open stream.
    StreamClose,
    /// A client-streaming call.
    ClientCall { method: u32, payload: &'a [u8] },
}

/// Where a plugin's pulls are answered from: `(0, item)`, `(-5, [])` at the end.
pub(crate) type PullSource<'a> = &'a mut dyn FnMut() -> (i32, Vec<u8>);

impl WorkerProcess {
    /// Runs `msg` as a conversation on the socket until its answer, answering
    /// the worker's callbacks and pulls on the way, all before `deadline`.
    pub(crate) fn session(
        &mut self,
        msg: SessionMsg<'_>,
        deadline: Instant,
        mut pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, Failure> {
        let id = self.next_id;
        self.next_id += 1;
        let host_msg = match msg {
            SessionMsg::Call { method, payload } => HostMsg::Call { id, method, payload },
            SessionMsg::StreamOpen { method, input, payload } => HostMsg::StreamOpen {
                id,
                method,
                input,
                payload,
            },
            SessionMsg::StreamNext => HostMsg::StreamNext { id },
            SessionMsg::StreamClose => HostMsg::StreamClose { id },
            SessionMsg::ClientCall { method, payload } => HostMsg::ClientCall { id, method, payload },
        };
        host_msg.encode(&mut self.tx);
        if let Some(region) = &self.shm {
            region.post_request(shm::REQ_SOCKET, id, 0, &[]);
        }
        if let Err(f) = write_all(&self.sock, &self.tx, deadline) {
            return Err(self.fail(f));
        }
        let imports = self.imports.clone();
        let max_payload = self.max_frame.saturating_sub(ENVELOPE_OVERHEAD) as usize;
        let mut callbacks: u32 = 0;
        let mut reply_buf = Vec::new();
        let (status, len) = loop {
            let len = match read_frame(&self.sock, &mut self.rx, self.max_frame, deadline) {
                Ok(len) => len,
                Err(fail) => return Err(self.fail(fail)),
            };
            let (status, out) = match WorkerMsg::decode(&self.rx[..len]) {
                Ok(WorkerMsg::Reply { id: got, .. }) | Ok(WorkerMsg::Fault { id: got, .. }) if got != id => {
                    return Err(self.fail(IoFail::Frame(ProtocolError::WrongRequestId { expected: id, got })))
                }
                Ok(WorkerMsg::Reply { status, .. }) => break (status, len),
                Ok(WorkerMsg::Fault { fault, .. }) => return Ok(Answer::Fault(fault)),
                Ok(WorkerMsg::Callback { import, index, payload }) => {
                    callbacks = callbacks.saturating_add(1);
                    let max = imports
                        .as_ref()
                        .map_or(crate::hostfn::DEFAULT_MAX_CALLBACKS, |i| i.max_callbacks);
                    if callbacks > max {
                        let e = WirePluginError {
                            code: "CALLBACK_LIMIT".into(),
                            message: format!("more than {max} host callbacks in one request"),
                            details: None,
                        };
                        (STATUS_PLUGIN_ERROR, wire::encode(&e).unwrap_or_default())
                    } else {
                        match imports.as_ref().and_then(|i| i.interfaces.get(import as usize)) {
                            Some(iface) => iface.dispatch(index, payload),
                            None => (HOST_CALL_NOT_BOUND, Vec::new()),
                        }
                    }
                }
                Ok(WorkerMsg::Pull) => match pull.as_mut() {
                    Some(p) => p(),
                    None => (STATUS_STREAM_END, Vec::new()),
                },
                Ok(other) => {
                    let got = msg_name(&other);
                    return Err(self.fail(IoFail::Frame(ProtocolError::Unexpected { got })));
                }
                Err(e) => return Err(self.fail(IoFail::Frame(ProtocolError::Malformed(e.to_string())))),
            };
            let (status, out) = if out.len() > max_payload {
                (STATUS_SERIALIZATION_ERROR, Vec::new())
            } else {
                (status, out)
            };
            let answer = if self.rx[..len].first() == Some(&bulkhead_shared::protocol::TAG_PULL_BYTE) {
                HostMsg::Item { status, payload: &out }
            } else {
                HostMsg::CallbackReply { status, payload: &out }
            };
            answer.encode(&mut reply_buf);
            if let Err(f) = write_all(&self.sock, &reply_buf, deadline) {
                return Err(self.fail(f));
            }
        };
        let start = bulkhead_shared::protocol::REPLY_PREFIX_LEN - HEADER_LEN;
        Ok(Answer::Reply {
            status,
            payload: &self.rx[start..len],
        })
    }

    /// Sends one request and waits for its answer until `deadline`.
    /// With a `target` buffer, a shared-memory answer is copied once, straight
    /// into it, and handed back as [`Answer::Owned`].
    pub(crate) fn call(
        &mut self,
        method: u32,
        payload: &[u8],
        deadline: Instant,
        target: Option<Vec<u8>>,
    ) -> Result<Answer<'_>, Failure> {
        let id = self.next_id;
        self.next_id += 1;
        let mut target = target;
        let answer = if self.sessions {
            self.session(SessionMsg::Call { method, payload }, deadline, None)?
        } else if self.shm.is_some() {
            self.call_shm(id, method, payload, deadline, &mut target)?
        } else {
            self.send_call(id, method, payload, deadline)
                .map_err(|f| self.fail(f))?;
            self.receive_socket(id, deadline)?
        };
        // An answer that came over the socket is copied into the target too.
        Ok(match (answer, target) {
            (Answer::Reply { status, payload }, Some(mut buf)) => {
                buf.clear();
                buf.extend_from_slice(payload);
                Answer::Owned { status, payload: buf }
            }
            (answer, _) => answer,
        })
    }

    /// Sends one request whose `len`-byte payload `fill` writes — straight
    /// into the shared request area when it fits (no copy), else into a host
    /// buffer that goes over the socket — and waits for its answer, which is
    /// left where it arrived (the region's response area or the receive
    /// buffer) for the caller to read in place.
    pub(crate) fn call_placed(
        &mut self,
        method: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        deadline: Instant,
    ) -> Result<Placed, Failure> {
        let id = self.next_id;
        self.next_id += 1;
        // The closure is the caller's code: a panic in it must leave the worker
        // as it was (nothing posted, nothing sent), so it is caught and handed back.
        let mut fill = Some(fill);
        let mut guarded = |buf: &mut [u8]| {
            let f = fill.take().expect("fill runs once");
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(buf)))
        };
        if !self.sessions {
            if let Some(region) = self.shm.clone() {
                let last = region.resp_seq();
                match region.fill_request(len, &mut guarded) {
                    Some(Ok(())) => {
                        region.post_request_in_place(shm::REQ_CALL, id, method, len);
                        return self.await_placed(&region, last, id, deadline);
                    }
                    Some(Err(panic)) => return Ok(Placed::FillPanicked(panic)),
                    // Too large for the region: a host buffer, sent on the socket.
                    None => {}
                }
            }
        }
        let prefix = call_prefix(id, method, len);
        let mut big = Vec::new();
        let small = len <= SMALL_CALL && !self.sessions;
        let buf: &mut [u8] = if small {
            self.tx.clear();
            self.tx.extend_from_slice(&prefix);
            self.tx.resize(prefix.len() + len, 0);
            &mut self.tx[prefix.len()..]
        } else {
            big.resize(len, 0);
            &mut big
        };
        if let Err(panic) = guarded(buf) {
            return Ok(Placed::FillPanicked(panic));
        }
        if self.sessions {
            let answer = self.session(SessionMsg::Call { method, payload: &big }, deadline, None)?;
            let answer = Unplaced::of(answer);
            return Ok(self.place(answer));
        }
        let region = self.shm.clone();
        let last = region.as_ref().map(|r| r.resp_seq());
        if let Some(region) = &region {
            region.post_request_in_place(shm::REQ_CALL_VIA_SOCKET, id, method, len);
        }
        let sent = if small {
            write_all(&self.sock, &self.tx, deadline)
        } else {
            write_all(&self.sock, &prefix, deadline).and_then(|()| write_all(&self.sock, &big, deadline))
        };
        drop(big);
        sent.map_err(|f| self.fail(f))?;
        match (region, last) {
            (Some(region), Some(last)) => self.await_placed(&region, last, id, deadline),
            _ => {
                let answer = self.receive_socket(id, deadline)?;
                let answer = Unplaced::of(answer);
                Ok(self.place(answer))
            }
        }
    }

    /// Turns an answer borrowed from the receive buffer into its place there.
    fn place(&self, answer: Unplaced) -> Placed {
        match answer {
            Unplaced::Reply { status, addr, len } => {
                // Every borrowed answer is a subslice of `rx`.
                let start = addr.saturating_sub(self.rx.as_ptr() as usize);
                debug_assert!(start + len <= self.rx.len());
                Placed::Rx {
                    status,
                    start,
                    end: start + len,
                }
            }
            Unplaced::Fault(fault) => Placed::Fault(fault),
        }
    }

    /// Waits for the region's answer to request `id` and leaves a reply in
    /// the response area, validated, for the caller to read in place.
    fn await_placed(&mut self, region: &Region, last: u32, id: u64, deadline: Instant) -> Result<Placed, Failure> {
        let r = self.wait_shm(region, last, id, deadline)?;
        let max_payload = self.max_frame.saturating_sub(ENVELOPE_OVERHEAD);
        if r.kind != shm::RESP_REPLY || r.len > max_payload {
            let answer = self.finish_shm(region, r, id, deadline, &mut None)?;
            let answer = Unplaced::of(answer);
            return Ok(self.place(answer));
        }
        if region.response_bytes(r.off, r.len).is_none() {
            let why = format!("response at {}+{} lies outside the shared region", r.off, r.len);
            return Err(self.fail(IoFail::Frame(ProtocolError::Malformed(why))));
        }
        if let Err(f) = nothing_unsolicited(&self.sock) {
            return Err(self.fail(f));
        }
        Ok(Placed::Region {
            status: r.status,
            off: r.off,
            len: r.len,
        })
    }

    fn send_call(&mut self, id: u64, method: u32, payload: &[u8], deadline: Instant) -> Result<(), IoFail> {
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
    fn receive_socket(&mut self, id: u64, deadline: Instant) -> Result<Answer<'_>, Failure> {
        let len = match read_frame(&self.sock, &mut self.rx, self.max_frame, deadline) {
            Ok(len) => len,
            Err(fail) => return Err(self.fail(fail)),
        };
        match WorkerMsg::decode(&self.rx[..len]) {
            Ok(WorkerMsg::Reply { id: got, .. }) | Ok(WorkerMsg::Fault { id: got, .. }) if got != id => {
                Err(self.fail(IoFail::Frame(ProtocolError::WrongRequestId { expected: id, got })))
            }
            Ok(WorkerMsg::Reply { status, .. }) => {
                // Re-borrow: the payload is everything after the fixed reply fields.
                let start = bulkhead_shared::protocol::REPLY_PREFIX_LEN - HEADER_LEN;
                Ok(Answer::Reply {
                    status,
                    payload: &self.rx[start..len],
                })
            }
            Ok(WorkerMsg::Fault { fault, .. }) => Ok(Answer::Fault(fault)),
            Ok(other) => {
                let got = msg_name(&other);
                Err(self.fail(IoFail::Frame(ProtocolError::Unexpected { got })))
            }
            Err(e) => Err(self.fail(IoFail::Frame(ProtocolError::Malformed(e.to_string())))),
        }
    }

    /// The shared-memory path: the request goes into the region (or, if too
    /// large, is announced there and sent on the socket); the answer comes back
    /// the same way. Every field the worker wrote is read once and validated.
    fn call_shm(
        &mut self,
        id: u64,
        method: u32,
        payload: &[u8],
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
    ) -> Result<Answer<'_>, Failure> {
        let region = self.shm.clone().expect("shared-memory transport");
        let last = region.resp_seq();
        if payload.len() <= region.capacity() {
            region.post_request(shm::REQ_CALL, id, method, payload);
        } else {
            region.post_request(shm::REQ_CALL_VIA_SOCKET, id, method, &[]);
            self.send_call(id, method, payload, deadline)
                .map_err(|f| self.fail(f))?;
        }
        self.await_shm(&region, last, id, deadline, target)
    }

    /// Whether stream items may travel through the shared-memory region: there
    /// is one, and requests need no conversation (no host callbacks).
    pub(crate) fn region_streams(&self) -> bool {
        self.shm.is_some() && !self.sessions
    }

    /// The next item of the open stream through the shared-memory region
    /// (only when [`region_streams`](Self::region_streams)).
    pub(crate) fn stream_next_shm(&mut self, deadline: Instant) -> Result<Answer<'_>, Failure> {
        let region = self.shm.clone().expect("shared-memory transport");
        let id = self.next_id;
        self.next_id += 1;
        let last = region.resp_seq();
        region.post_request(shm::REQ_STREAM_NEXT, id, 0, &[]);
        self.await_shm(&region, last, id, deadline, &mut None)
    }

    /// Waits for the region's answer to request `id` (posted after `last`).
    fn await_shm(
        &mut self,
        region: &Region,
        last: u32,
        id: u64,
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
    ) -> Result<Answer<'_>, Failure> {
        let r = self.wait_shm(region, last, id, deadline)?;
        self.finish_shm(region, r, id, deadline, target)
    }

    /// Waits for the region's answer to request `id` (posted after `last`)
    /// and checks that it answers that request.
    fn wait_shm(&mut self, region: &Region, last: u32, id: u64, deadline: Instant) -> Result<shm::Response, Failure> {
        loop {
            match region.wait_response(last, HOST_SPIN, deadline, SOCKET_CHECK) {
                shm::Wait::Changed(_) => break,
                shm::Wait::Dead => return Err(self.fail(IoFail::Eof)),
                shm::Wait::TimedOut if Instant::now() >= deadline => return Err(self.fail(IoFail::Timeout)),
                // Asleep for a while: make sure the worker has not closed its
                // socket or started writing on it unasked.
                shm::Wait::TimedOut => {
                    if let Err(f) = socket_idle(&self.sock) {
                        if region.resp_seq() == last {
                            return Err(self.fail(f));
                        }
                    }
                }
            }
        }
        let r = region.response();
        if r.id != id {
            let f = if region.is_dead() {
                IoFail::Eof
            } else {
                IoFail::Frame(ProtocolError::WrongRequestId {
                    expected: id,
                    got: r.id,
                })
            };
            return Err(self.fail(f));
        }
        Ok(r)
    }

    /// Takes the answer `r` out of the region (into `target` or the receive
    /// buffer), or from the socket when the region says it went there.
    fn finish_shm(
        &mut self,
        region: &Region,
        r: shm::Response,
        id: u64,
        deadline: Instant,
        target: &mut Option<Vec<u8>>,
    ) -> Result<Answer<'_>, Failure> {
        let max_payload = self.max_frame.saturating_sub(ENVELOPE_OVERHEAD);
        let mut owned_buf = None;
        match r.kind {
            shm::RESP_VIA_SOCKET => return self.receive_socket(id, deadline),
            shm::RESP_REPLY_INLINE => {
                let copied = match target.take() {
                    Some(buf) => region.copy_inline_response(r.len, owned_buf.insert(buf)),
                    None => region.copy_inline_response(r.len, &mut self.rx),
                };
                if copied.is_none() {
                    let why = format!("inline response of {} bytes", r.len);
                    return Err(self.fail(IoFail::Frame(ProtocolError::Malformed(why))));
                }
            }
            shm::RESP_REPLY | shm::RESP_FAULT if r.len > max_payload => {
                return Err(self.fail(IoFail::Frame(ProtocolError::FrameTooLarge {
                    len: r.len,
                    max: max_payload,
                })))
            }
            shm::RESP_REPLY | shm::RESP_FAULT => {
                let copied = if let (Some(buf), shm::RESP_REPLY) = (target.take(), r.kind) {
                    let out = owned_buf.insert(buf);
                    region.copy_response(r.off, r.len, out)
                } else {
                    region.copy_response(r.off, r.len, &mut self.rx)
                };
                if copied.is_none() {
                    let why = format!("response at {}+{} lies outside the shared region", r.off, r.len);
                    return Err(self.fail(IoFail::Frame(ProtocolError::Malformed(why))));
                }
            }
            other => {
                let why = format!("unknown shared-memory response kind {other}");
                return Err(self.fail(IoFail::Frame(ProtocolError::Malformed(why))));
            }
        }
        // Nothing may arrive on the socket when the answer came through the region.
        if let Err(f) = nothing_unsolicited(&self.sock) {
            return Err(self.fail(f));
        }
        if r.kind == shm::RESP_FAULT {
            return match bulkhead_shared::wire::decode::<CallFault>(&self.rx) {
                Ok(fault) => Ok(Answer::Fault(fault)),
                Err(e) => Err(self.fail(IoFail::Frame(ProtocolError::Malformed(e.to_string())))),
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

    /// Turns an I/O failure into a call failure, killing the worker where needed.
    /// Workers that hang or misbehave are SIGKILLed here; reaping them is the
    /// pool's job, off the caller's path.
    fn fail(&self, fail: IoFail) -> Failure {
        match fail {
            IoFail::Timeout => {
                self.proc.kill();
                Failure::Timeout
            }
            IoFail::Eof | IoFail::Io(_) => match self.exit_after_eof() {
                Some((exit, stderr, crash)) => Failure::Died { exit, stderr, crash },
                None => {
                    self.proc.kill();
                    Failure::Protocol(match fail {
                        IoFail::Io(e) => ProtocolError::Io(e.to_string()),
                        _ => ProtocolError::ChannelClosed,
                    })
                }
            },
            IoFail::Frame(e) => {
                self.proc.kill();
                Failure::Protocol(e)
            }
        }
    }
}

/// `Ok` if nothing is waiting on the socket; `Eof` if the worker closed it;
/// a protocol error if it sent bytes nobody asked for.
fn socket_idle(sock: &UnixStream) -> Result<(), IoFail> {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    match nix::sys::socket::recv(sock.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => Err(IoFail::Eof),
        Ok(_) => Err(IoFail::Frame(ProtocolError::Unexpected {
            got: "unsolicited data on the control socket",
        })),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(()),
        Err(nix::errno::Errno::ECONNRESET) => Err(IoFail::Eof),
        Err(e) => Err(IoFail::Io(e.into())),
    }
}

/// After an answer through the shared region: `Ok` if no byte waits on the
/// socket, a protocol error if the worker wrote any unasked. One `FIONREAD`
/// ioctl — cheaper than [`socket_idle`]'s `recv` (no read path, no
/// credentials handling) — on every such answer, so the error belongs to the
/// call during which the bytes were written. A socket closed by the worker
/// reads as empty here; it is found by the next exchange on the socket or
/// while the host sleeps on the futex ([`socket_idle`]).
fn nothing_unsolicited(sock: &UnixStream) -> Result<(), IoFail> {
    match rustix::io::ioctl_fionread(sock) {
        Ok(0) => Ok(()),
        Ok(_) => Err(IoFail::Frame(ProtocolError::Unexpected {
            got: "unsolicited data on the control socket",
        })),
        Err(e) => Err(IoFail::Io(e.into())),
    }
}

/// Waits until `fd` is ready for `flags` or the deadline passes.
fn wait_ready(sock: &UnixStream, flags: PollFlags, deadline: Instant) -> Result<(), IoFail> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(IoFail::Timeout);
        }
        // Round up so we never wake before the deadline and spin.
        let left = deadline - now;
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(sock.as_fd(), flags)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(IoFail::Io(e.into())),
        }
    }
}

/// Writes all of `buf` before `deadline`. Uses `MSG_NOSIGNAL`: a dead worker is
/// an `Eof`, never a SIGPIPE in the host.
pub(crate) fn write_all(sock: &UnixStream, mut buf: &[u8], deadline: Instant) -> Result<(), IoFail> {
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        match send(sock.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EAGAIN) => wait_ready(sock, PollFlags::POLLOUT, deadline)?,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EPIPE) | Err(nix::errno::Errno::ECONNRESET) => return Err(IoFail::Eof),
            Err(e) => return Err(IoFail::Io(e.into())),
        }
    }
    Ok(())
}

/// Reads into `buf[..]` exactly, before `deadline`.
fn read_exact(mut sock: &UnixStream, buf: &mut [u8], deadline: Instant) -> Result<(), IoFail> {
    let mut got = 0;
    while got < buf.len() {
        match sock.read(&mut buf[got..]) {
            Ok(0) => return Err(IoFail::Eof),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_ready(sock, PollFlags::POLLIN, deadline)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(IoFail::Eof),
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
    Ok(())
}

/// Reads one frame body into `rx` (a reused buffer whose length only grows, as
/// bytes arrive) and returns the body length. The length prefix is checked
/// against `max` before anything is allocated.
pub(crate) fn read_frame(sock: &UnixStream, rx: &mut Vec<u8>, max: u32, deadline: Instant) -> Result<usize, IoFail> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(sock, &mut header, deadline)?;
    let len = frame::parse_header(header, max).map_err(|e| {
        IoFail::Frame(match e {
            FrameError::TooLarge { len, max } => ProtocolError::FrameTooLarge { len, max },
            FrameError::Empty => ProtocolError::EmptyFrame,
            other => ProtocolError::Malformed(other.to_string()),
        })
    })?;
    let mut got = 0;
    while got < len {
        if rx.len() <= got {
            let target = len.min(FIRST_CHUNK.max(rx.len() * 2));
            rx.resize(target, 0);
        }
        let end = rx.len().min(len);
        match read_exact(sock, &mut rx[got..end], deadline) {
            Ok(()) => got = end,
            // A worker that died mid-frame is a death, not a protocol error:
            // the caller tells the two apart by waiting for the exit.
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn pair_with(bytes: &[u8]) -> UnixStream {
        let (host, mut worker) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        worker.write_all(bytes).unwrap();
        drop(worker);
        host
    }

    #[test]
    fn lying_length_allocates_only_what_arrives() {
        let mut bytes = (60u32 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0x83; 10]);
        let sock = pair_with(&bytes);
        let mut rx = Vec::new();
        let r = read_frame(&sock, &mut rx, 64 << 20, Instant::now() + Duration::from_secs(5));
        assert!(matches!(r, Err(IoFail::Eof)), "{r:?}");
        assert!(rx.len() <= FIRST_CHUNK, "grew to {}", rx.len());
    }

    #[test]
    fn over_cap_is_rejected_before_reading_the_body() {
        let sock = pair_with(&1000u32.to_le_bytes());
        let mut rx = Vec::new();
        let r = read_frame(&sock, &mut rx, 999, Instant::now() + Duration::from_secs(5));
        assert!(
            matches!(
                r,
                Err(IoFail::Frame(ProtocolError::FrameTooLarge { len: 1000, max: 999 }))
            ),
            "{r:?}"
        );
        assert_eq!(rx.capacity(), 0);
    }

    #[test]
    fn silence_times_out_at_the_deadline() {
        let (host, _worker) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let mut rx = Vec::new();
        let start = Instant::now();
        let r = read_frame(&host, &mut rx, 100, start + Duration::from_millis(50));
        assert!(matches!(r, Err(IoFail::Timeout)), "{r:?}");
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]
        /// Whatever a worker sends, the host's reader returns a frame or an error,
        /// within the cap, without panicking.
        #[test]
        fn arbitrary_worker_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), max in 1u32..8192) {
            let sock = pair_with(&bytes);
            let mut rx = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok(len) = read_frame(&sock, &mut rx, max, deadline) {
                proptest::prop_assert!(len <= max as usize);
                let _ = WorkerMsg::decode(&rx[..len]);
            }
            proptest::prop_assert!(rx.len() <= FIRST_CHUNK.max(max as usize));
        }
    }
}
