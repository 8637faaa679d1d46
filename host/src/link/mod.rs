//! The transport between the host and one worker: one request, one deadline,
//! one answer.
//!
//! A [`Link`] owns the host's end of the worker's socket, its receive and send
//! buffers, the request ids and the [`Way`] requests travel, chosen once when
//! the handshake ends:
//!
//! * with a shared-memory region, calls, client calls and the next items of
//!   streams go through it ([`shm`]), and so do the host callbacks and pulls
//!   the plugin makes while the host waits for them; a payload, answer or
//!   callback too large for it is announced there and carried on the socket;
//! * without one, a plain call is a frame on the socket ([`socket`]).
//!
//! Whatever the way, a request the region cannot carry — opening or closing
//! a stream, or any request on a worker without a region that may call back
//! or pull — is a conversation on the socket ([`session`]), announced in the
//! region when there is one. The entry points are
//! [`Link::exchange`] (any [`Request`]; the answer is borrowed from the receive
//! buffer or handed back in the caller's buffer) and [`Link::exchange_placed`]
//! (a call whose payload the caller writes in place and whose answer stays
//! where it arrived). A failure is an [`IoFail`]; after one the worker is
//! unusable, and turning it into a call failure (killing the worker, reading
//! its exit) is the worker process's job.
//!
//! Trust: every byte and field the worker wrote is read once, validated, and
//! bounded by the negotiated frame cap before anything is allocated for it.

mod framing;
mod session;
mod shm;
mod socket;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_shared::protocol::{CallFault, HostMsg, WorkerMsg};
use bulkhead_shared::shm::{Region, RequestKind};

use crate::bells::SocketWatch;
use crate::hostfn::HostImports;

pub(crate) use framing::{write_all, IoFail};
pub(crate) use shm::{Posted, Progress};

/// How requests travel on a link; chosen once, when the handshake ends.
pub(crate) struct Way {
    /// The region the worker mapped, if any: calls, stream items and client
    /// calls go through it, and so do the callbacks and pulls they make.
    region: Option<Arc<Region>>,
    /// The interfaces the plugin calls back into, if any.
    imports: Option<Arc<HostImports>>,
}

impl Way {
    /// The way for a worker that mapped `region` (or none) and is offered
    /// `imports` (or none).
    pub(crate) fn choose(region: Option<Arc<Region>>, imports: Option<Arc<HostImports>>) -> Way {
        Way { region, imports }
    }
}

/// One request, of any call kind.
pub(crate) enum Request<'a> {
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

/// What the worker answered.
pub(crate) enum Answer<'a> {
    /// The plugin's status code and output.
    Reply {
        /// Raw status.
        status: i32,
        /// Output bytes, borrowed from the link's receive buffer.
        payload: &'a [u8],
    },
    /// The plugin's status code and output, in the buffer the caller handed in.
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
/// (owned data only: no borrow of the link, which the caller keeps).
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
    /// In the link's receive buffer, `rx[start..end]`.
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

/// The host's end of the transport to one worker.
pub(crate) struct Link {
    /// The bell thread's watch on the socket (with a region): tells whether
    /// bytes may have arrived, so answers through the region need not ask.
    strays: Option<SocketWatch>,
    sock: UnixStream,
    /// The receive buffer: answers are read into it (and borrowed from it).
    pub(crate) rx: Vec<u8>,
    tx: Vec<u8>,
    next_id: u64,
    max_frame: u32,
    way: Way,
}

impl Link {
    /// A link on the host's (non-blocking) end of a worker's socket, whose
    /// frames are capped at `max_frame`. Requests travel on the socket until
    /// [`set_way`](Self::set_way).
    pub(crate) fn new(sock: UnixStream, max_frame: u32) -> Link {
        Link {
            strays: None,
            sock,
            rx: Vec::new(),
            tx: Vec::new(),
            next_id: 1,
            max_frame,
            way: Way::choose(None, None),
        }
    }

    /// The socket (for the handshake, before the way is chosen).
    pub(crate) fn sock(&self) -> &UnixStream {
        &self.sock
    }

    /// Waits for the socket to become readable by looking, not sleeping, for
    /// up to `spin` (see [`framing::spin_until_readable`]).
    pub(crate) fn spin_until_readable(&self, spin: Duration) -> bool {
        framing::spin_until_readable(&self.sock, spin)
    }

    /// Reads one frame body (capped at `max`) into the receive buffer before
    /// `deadline`, for the handshake; returns its length.
    pub(crate) fn receive_frame(&mut self, max: u32, deadline: Instant) -> Result<usize, IoFail> {
        framing::read_frame(&self.sock, &mut self.rx, max, deadline)
    }

    /// Sets the way requests travel, once the handshake has ended. With a
    /// region, the bell thread starts watching the socket for bytes nobody
    /// asked for.
    pub(crate) fn set_way(&mut self, way: Way) {
        if way.region.is_some() && self.strays.is_none() {
            self.strays = SocketWatch::new(self.sock.as_fd());
        }
        self.way = way;
    }

    /// After an answer through the region: an error if the worker wrote on
    /// the socket unasked. Asks the kernel only when the bell thread saw
    /// bytes arrive (or watches nothing).
    fn check_strays(&self) -> Result<(), IoFail> {
        match &self.strays {
            Some(watch) if !watch.seen() => Ok(()),
            Some(watch) => {
                framing::nothing_unsolicited(&self.sock)?;
                watch.rearm(self.sock.as_fd());
                Ok(())
            }
            None => framing::nothing_unsolicited(&self.sock),
        }
    }

    /// The shared-memory region the worker mapped, if any.
    pub(crate) fn region(&self) -> Option<&Arc<Region>> {
        self.way.region.as_ref()
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `req` and waits for its answer until `deadline`, answering the
    /// worker's host callbacks and, from `pull`, its pulls on the way. A request
    /// without a pull source that the region can carry goes through it; the
    /// rest are conversations on the socket. With a `target` buffer, a call's
    /// answer is copied once into it and handed back as [`Answer::Owned`].
    pub(crate) fn exchange(
        &mut self,
        req: Request<'_>,
        deadline: Instant,
        pull: Option<PullSource<'_>>,
        mut target: Option<Vec<u8>>,
    ) -> Result<Answer<'_>, IoFail> {
        let id = self.next_id();
        let answer = match (self.way.region.clone(), req) {
            (Some(region), Request::Call { method, payload }) => {
                let kind = RequestKind::Call;
                self.call_shm(&region, kind, id, method, payload, deadline, &mut target, pull)?
            }
            (Some(region), Request::StreamNext) => self.stream_next_shm(&region, id, deadline, pull)?,
            (Some(region), Request::ClientCall { method, payload }) if payload.len() <= region.capacity() => {
                let kind = RequestKind::ClientCall;
                self.call_shm(&region, kind, id, method, payload, deadline, &mut target, pull)?
            }
            (None, Request::Call { method, payload }) if pull.is_none() && self.way.imports.is_none() => {
                self.send_call(id, method, payload, deadline)?;
                self.receive_socket(id, deadline)?
            }
            (_, req) => self.converse(id, req, deadline, pull)?,
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

    /// Sends one call whose `len`-byte payload `fill` writes — straight into
    /// the shared request area when it fits (no copy), else into a host buffer
    /// that goes over the socket — and waits for its answer, which is left
    /// where it arrived (the region's response area or the receive buffer)
    /// for the caller to read in place.
    pub(crate) fn exchange_placed(
        &mut self,
        method: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        deadline: Instant,
    ) -> Result<Placed, IoFail> {
        let id = self.next_id();
        // The closure is the caller's code: a panic in it must leave the worker
        // as it was (nothing posted, nothing sent), so it is caught and handed back.
        let mut fill = Some(fill);
        let mut guarded = |buf: &mut [u8]| {
            let f = fill.take().expect("fill runs once");
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(buf)))
        };
        match self.way.region.clone() {
            Some(region) => {
                let last = region.resp_seq();
                match region.fill_request(len, &mut guarded) {
                    Some(Ok(())) => {
                        region.post_request_in_place(RequestKind::Call, id, method, len);
                        self.await_placed(&region, last, id, len, deadline)
                    }
                    Some(Err(panic)) => Ok(Placed::FillPanicked(panic)),
                    // Too large for the region: a host buffer, sent on the socket.
                    None => self.placed_via_socket(Some(&region), id, method, len, guarded, deadline),
                }
            }
            None if self.way.imports.is_none() => self.placed_via_socket(None, id, method, len, guarded, deadline),
            None => {
                let mut big = vec![0; len];
                if let Err(panic) = guarded(&mut big) {
                    return Ok(Placed::FillPanicked(panic));
                }
                let answer = self.converse(id, Request::Call { method, payload: &big }, deadline, None)?;
                let answer = Unplaced::of(answer);
                Ok(self.place(answer))
            }
        }
    }

    /// Asks the worker to exit: through the region if there is one, else a
    /// `Shutdown` frame (best effort, before `deadline`).
    pub(crate) fn post_shutdown(&mut self, deadline: Instant) {
        match self.region() {
            Some(region) => region.post_request(RequestKind::Shutdown, 0, 0, &[]),
            None => {
                HostMsg::Shutdown.encode(&mut self.tx);
                let _ = write_all(&self.sock, &self.tx, deadline);
            }
        }
    }

    /// Rings the worker's doorbell without work, so it is awake (spinning) for
    /// the call that follows. A no-op without a region.
    pub(crate) fn wake(&self) {
        if let Some(region) = self.region() {
            region.poke();
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
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(watch) = self.strays.take() {
            watch.stop(self.sock.as_fd());
        }
    }
}

/// An answer borrowed from the receive buffer, as plain numbers (so the
/// borrow of the link ends before its place in the buffer is computed).
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

/// The name of a worker message, for protocol errors.
pub(crate) fn msg_name(m: &WorkerMsg<'_>) -> &'static str {
    match m {
        WorkerMsg::Loaded(_) => "Loaded",
        WorkerMsg::LoadFailed(_) => "LoadFailed",
        WorkerMsg::Reply { .. } => "Reply",
        WorkerMsg::Fault { .. } => "Fault",
        WorkerMsg::Callback { .. } => "Callback",
        WorkerMsg::Pull => "Pull",
    }
}
