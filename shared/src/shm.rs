//! The shared-memory data path between host and worker.
//!
//! A memfd region, created by the host and passed to the worker over the
//! socket (`SCM_RIGHTS`), holds a 4 KiB header and two data areas of
//! `capacity` bytes: requests (host writes, worker reads) and responses (worker
//! writes, host reads; an Arena plugin's arena *is* this area). Each direction
//! has a sequence word that doubles as a futex: the writer fills the data and
//! metadata, bumps the sequence with `Release`, and wakes the reader only if the
//! reader said it was going to sleep. The reader busy-spins for up to 2 µs
//! while that has been paying off (the other side runs on another CPU), then
//! spins yielding the CPU on every turn, so host and worker sharing one CPU
//! still make progress, then sleeps on the futex. Nothing busy-waits while
//! idle. Payloads of up to 24 bytes (requests) and 32 bytes (outputs) travel
//! in the cache line of their sequence word, so a small call moves one line
//! each way instead of two.
//!
//! A request's *turns* — the plugin's host callbacks and pulls, and the
//! host's answers — go through the region too: the worker posts them as
//! responses ([`ResponseKind::Callback`], [`ResponseKind::Pull`]) and takes
//! the host's answer as the next request ([`RequestKind::Answer`]). Their
//! bytes ride the lines when small and lie at the *end* of an area when not,
//! clear of the request's own payload, which the plugin may still be reading.
//!
//! Each region has a doorbell, an eventfd the host creates and sends with it:
//! while an async host caller waits ([`Region::async_wait`]), the worker
//! writes it after posting a response, so the caller's wake-up can come from
//! an event loop instead of a thread asleep on the futex.
//!
//! The socket stays the control channel: handshake, descriptor passing, payloads
//! larger than `capacity` (announced through the region, carried as ordinary
//! frames), and death detection.
//!
//! Trust: the worker can write anything into the region at any time. The host
//! reads each metadata field once, validates it, and copies response bytes out
//! of the region before decoding them.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::MemFdCreateFlag;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use rustix::event::EventfdFlags;

/// Seals every region carries before its fd leaves the host: its size can never
/// change again, and no seal can be removed or added.
pub const REGION_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Version of the region layout.
pub const SHM_VERSION: u32 = 3;
const MAGIC: u64 = u64::from_le_bytes(*b"BLKHDSHM");
/// Bytes before the first data area.
pub const HEADER_SIZE: usize = 4096;
/// Default capacity of each data area (requests, responses): the default
/// maximum message size, so every message fits.
pub const DEFAULT_CAPACITY: u32 = crate::frame::DEFAULT_MAX_MESSAGE;

/// Defines a region kind enum whose codes are stated once: the enum (each
/// variant's code its discriminant), [`ALL`](RequestKind::ALL) and `from_code`.
macro_rules! region_kinds {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal,)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $code,)*
        }

        impl $name {
            /// Every kind, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The kind a code names, if any (codes are read from the other
            /// process: any value).
            pub fn from_code(code: u32) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

region_kinds! {
/// What the host asks through the region. Each kind stands for one
/// [`HostMsg`](crate::protocol::HostMsg) (named on each variant) or announces
/// one on the socket; the region carries its code (`kind as u32`).
pub enum RequestKind {
    /// A `Call` with the payload in the request area.
    Call = 1,
    /// A `Call` whose frame (with the payload) follows on the socket.
    CallViaSocket = 2,
    /// `Shutdown`: destroy the instance and exit.
    Shutdown = 3,
    /// A conversation on the socket follows (`StreamOpen`, `StreamNext` with
    /// pulls, `StreamClose`, `ClientCall`, or a `Call` with host callbacks);
    /// the answer also comes on the socket.
    Conversation = 4,
    /// `StreamNext` of the open stream, answered like a call.
    StreamNext = 5,
    /// A `Call` whose payload (at most [`REQ_INLINE`] bytes) travels in the
    /// header's request line instead of the request area.
    CallInline = 6,
    /// A `ClientCall` with the payload in the request area; the worker's pulls
    /// and the host's items travel through the region too.
    ClientCall = 7,
    /// The host's answer to the worker's `Callback` (a `CallbackReply`) or
    /// `Pull` (an `Item`) in the request in flight: the status in the method
    /// field, the bytes in the request line (at most [`REQ_INLINE`]) or else
    /// at the end of the request area ([`Region::post_answer`], [`Region::copy_answer`]).
    Answer = 8,
    /// The host's answer to the worker's `Callback` or `Pull` follows on the
    /// socket as a `CallbackReply` or `Item` frame.
    AnswerViaSocket = 9,
}

}

region_kinds! {
/// How the worker answers through the region. Each kind stands for one
/// [`WorkerMsg`](crate::protocol::WorkerMsg) (named on each variant) or
/// announces one on the socket; the region carries its code (`kind as u32`).
pub enum ResponseKind {
    /// A `Reply`: the plugin's status and output (at `off`, `len` in the
    /// response area).
    Reply = 1,
    /// The answer follows on the socket as a `Reply` or `Fault` frame.
    ViaSocket = 2,
    /// A `Fault`: a bincode `CallFault` at offset 0 of the response area.
    Fault = 3,
    /// A `Reply` whose output (at most [`RESP_INLINE`] bytes, `len` of them)
    /// is in the header's response line.
    ReplyInline = 4,
    /// A `Callback` in the request in flight: the import in the status field,
    /// the method index in the offset field, the argument bytes in the
    /// response line (at most [`RESP_INLINE`]) or else at the end of the
    /// response area ([`Region::post_callback`]).
    Callback = 5,
    /// A `Callback` whose frame follows on the socket.
    CallbackViaSocket = 6,
    /// A `Pull`: the plugin wants the next input item of the request in flight.
    Pull = 7,
}

}

/// Largest payload carried inline in the request line.
pub const REQ_INLINE: usize = 24;
/// Largest output carried inline in the response line.
pub const RESP_INLINE: usize = 32;

/// The region's header. Every field is atomic: the other process may write it
/// at any time.
#[repr(C, align(64))]
pub struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    capacity: AtomicU32,
    _pad0: [u8; 48],
    req_seq: AtomicU32,
    worker_sleeping: AtomicU32,
    req_kind: AtomicU32,
    req_method: AtomicU32,
    req_id: AtomicU64,
    req_len: AtomicU64,
    /// Set by the host to make a sleeping worker spin again (no request).
    poke: AtomicU32,
    _pad1: [u8; 4],
    /// A small request payload, in the same cache line as its sequence word:
    /// one line moves from host to worker instead of two.
    req_inline: [AtomicU64; REQ_INLINE / 8],
    resp_seq: AtomicU32,
    host_sleeping: AtomicU32,
    resp_kind: AtomicU32,
    resp_status: AtomicI32,
    resp_id: AtomicU64,
    resp_off: AtomicU32,
    resp_len: AtomicU32,
    /// A small output, in the same cache line as the response sequence word.
    resp_inline: [AtomicU64; RESP_INLINE / 8],
    dead: AtomicU32,
    /// Set by the host while an async caller waits for the response: the
    /// worker rings the doorbell (an eventfd) after posting it.
    host_async: AtomicU32,
}

/// A request as the worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// A [`RequestKind`] code (see [`RequestKind::from_code`]).
    pub kind: u32,
    /// Request id.
    pub id: u64,
    /// Vtable slot.
    pub method: u32,
    /// Payload length in the request area.
    pub len: u64,
}

/// A response as the host sees it (unvalidated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// A [`ResponseKind`] code, as the worker wrote it (see
    /// [`ResponseKind::from_code`]).
    pub kind: u32,
    /// Request id it answers.
    pub id: u64,
    /// Plugin status code.
    pub status: i32,
    /// Offset of the output in the response area.
    pub off: u32,
    /// Length of the output.
    pub len: u32,
}

/// Outcome of waiting for the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The sequence moved to this value.
    Changed(u32),
    /// The deadline passed.
    TimedOut,
    /// The worker was marked dead.
    Dead,
}

/// A mapped region. Accessed only through atomics and through the data area
/// owned by whichever side has the turn.
pub struct Region {
    base: NonNull<u8>,
    map_len: usize,
    capacity: usize,
    /// Created here (the host's side) rather than opened (the worker's side).
    /// Only the host side lends its areas to callers; only the worker side
    /// writes the response area.
    host: bool,
    /// Host: the request area is lent to a caller's closure right now.
    request_lent: AtomicBool,
    /// This side's current busy-spin budget in nanoseconds (process-local:
    /// each side adapts its own, see [`wait_change`]).
    busy_spin_ns: AtomicU64,
    /// Host: the last request had to wake the worker from its futex.
    woke_worker: AtomicBool,
    /// Worker: the last request sequence it took (by the serve loop or by a
    /// callback or pull waiting for its answer).
    seen_req: AtomicU32,
    /// The doorbell: an eventfd the worker writes after posting a response
    /// an async caller waits for (and the reaper after marking it dead). The
    /// host registers it with its runtime; it carries no data, only a wake-up.
    doorbell: Option<OwnedFd>,
}

// SAFETY: the mapping is process-wide memory; all shared fields are atomics and
// the data areas are handed back and forth by the sequence protocol.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Host side: creates a memfd region with `capacity` bytes per direction,
    /// and its doorbell (an eventfd; see [`doorbell`](Self::doorbell)).
    pub fn create(capacity: u32) -> io::Result<(Region, OwnedFd)> {
        let name: &CStr = c"bulkhead-shm";
        let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
        let fd = nix::sys::memfd::memfd_create(name, flags)?;
        let map_len = HEADER_SIZE + 2 * capacity as usize;
        nix::unistd::ftruncate(&fd, map_len as i64)?;
        // The worker is hostile: if it could shrink the file, the host's next access
        // to the mapping would die of SIGBUS. Seal the size for good before the fd
        // is ever passed on (a worker can reopen it through /proc/self/map_files).
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(REGION_SEALS))?;
        let mut region = Region::map(fd.as_fd(), map_len, capacity as usize)?;
        region.host = true;
        // Every host region has a doorbell (the worker expects its descriptor
        // right after the region's).
        let doorbell = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        region.doorbell = Some(doorbell);
        // No prefault here: the worker's (in `open`) allocates the pages, and
        // the host maps them on first touch. Prefaulting in the host too would
        // charge every idle worker's 128 KiB to the host's resident set.
        let h = region.header();
        h.version.store(SHM_VERSION, Ordering::Relaxed);
        h.capacity.store(capacity, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok((region, fd))
    }

    /// Worker side: maps a region received from the host and checks its header
    /// against its actual size.
    pub fn open(fd: BorrowedFd<'_>) -> io::Result<Region> {
        let seals = SealFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)?);
        if !seals.contains(REGION_SEALS) {
            return Err(io::Error::other("shared region is not sealed against resizing"));
        }
        let size = nix::sys::stat::fstat(fd.as_raw_fd())?.st_size as usize;
        if size < HEADER_SIZE {
            return Err(io::Error::other(format!("shared region of {size} bytes is too small")));
        }
        let capacity = (size - HEADER_SIZE) / 2;
        let region = Region::map(fd, size, capacity)?;
        let h = region.header();
        if h.magic.load(Ordering::Acquire) != MAGIC || h.version.load(Ordering::Relaxed) != SHM_VERSION {
            return Err(io::Error::other("shared region has a bad magic or version"));
        }
        if h.capacity.load(Ordering::Relaxed) as usize != capacity {
            return Err(io::Error::other("shared region capacity does not match its size"));
        }
        region.prefault();
        Ok(region)
    }

    fn map(fd: BorrowedFd<'_>, map_len: usize, capacity: usize) -> io::Result<Region> {
        let len = NonZeroUsize::new(map_len).ok_or_else(|| io::Error::other("empty region"))?;
        // SAFETY: a fresh shared mapping of a memfd we hold; no existing memory is affected.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }?;
        Ok(Region {
            base: ptr.cast(),
            map_len,
            capacity,
            host: false,
            request_lent: AtomicBool::new(false),
            busy_spin_ns: AtomicU64::new(BUSY_SPIN.as_nanos() as u64),
            woke_worker: AtomicBool::new(false),
            seen_req: AtomicU32::new(0),
            doorbell: None,
        })
    }

    /// Touches the first page of both data areas so the first small calls do
    /// not pay for allocating them (done by the worker before it answers the
    /// handshake; the host's first touch of a page only maps it). Only one
    /// page: it is paid for on every spawn and restart.
    fn prefault(&self) {
        const WARM: usize = 4096;
        let n = WARM.min(self.capacity);
        // SAFETY: both ranges lie inside the mapping, and no request is in
        // flight yet (the worker calls it before its handshake answer).
        unsafe {
            std::ptr::write_bytes(self.req_area(), 0, n);
            std::ptr::write_bytes(self.resp_area(), 0, n);
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a page-aligned, HEADER_SIZE-byte header
        // made only of atomics, which are valid for any bit pattern.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// Bytes available per direction.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn req_area(&self) -> *mut u8 {
        // SAFETY: HEADER_SIZE < map_len; the request area follows the header.
        unsafe { self.base.as_ptr().add(HEADER_SIZE) }
    }

    fn resp_area(&self) -> *mut u8 {
        // SAFETY: the response area follows the request area, inside the mapping.
        unsafe { self.base.as_ptr().add(HEADER_SIZE + self.capacity) }
    }

    // ----- host side -------------------------------------------------------------

    /// Host: publishes a request (payload copied into the request area when it
    /// fits; otherwise the caller sends it on the socket under
    /// [`RequestKind::CallViaSocket`]).
    pub fn post_request(&self, kind: RequestKind, id: u64, method: u32, payload: &[u8]) {
        if kind == RequestKind::Call && payload.len() <= REQ_INLINE {
            store_inline(&self.header().req_inline, payload);
            return self.post_request_in_place(RequestKind::CallInline, id, method, payload.len());
        }
        if matches!(kind, RequestKind::Call | RequestKind::ClientCall) {
            assert!(payload.len() <= self.capacity, "caller checks the capacity");
            // SAFETY: the host owns the request area until it bumps req_seq; the
            // payload fits (checked above) and does not overlap the mapping.
            unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), self.req_area(), payload.len()) };
        }
        self.post_request_in_place(kind, id, method, payload.len());
    }

    /// Host: lends the first `len` bytes of the request area to `fill`, which
    /// writes a request payload straight into shared memory (then publish it
    /// with [`post_request_in_place`](Self::post_request_in_place)). `None`
    /// (and `fill` not run) if `len` exceeds the capacity, on the worker's
    /// side of a region, or while the area is already lent.
    ///
    /// The bytes lie in memory the worker process can also write: the host
    /// must treat them as written by `fill` only until it posts the request.
    pub fn fill_request<R>(&self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.host || len > self.capacity || self.request_lent.swap(true, Ordering::Acquire) {
            return None;
        }
        struct Unlend<'a>(&'a AtomicBool);
        impl Drop for Unlend<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _unlend = Unlend(&self.request_lent);
        // SAFETY: `len` bytes from the start of the request area lie inside the
        // mapping (checked above). Within this process the `request_lent` flag
        // makes this the only reference into the area (the host writes it
        // nowhere else while a request is being prepared, and never reads it).
        // The worker process may scribble on it; any byte value is a valid u8.
        let area = unsafe { std::slice::from_raw_parts_mut(self.req_area(), len) };
        Some(fill(area))
    }

    /// Host: publishes a request whose `len`-byte payload is already in the
    /// request area (or, under [`RequestKind::CallViaSocket`], follows on the socket).
    pub fn post_request_in_place(&self, kind: RequestKind, id: u64, method: u32, len: usize) {
        let h = self.header();
        h.req_kind.store(kind as u32, Ordering::Relaxed);
        h.req_id.store(id, Ordering::Relaxed);
        h.req_method.store(method, Ordering::Relaxed);
        h.req_len.store(len as u64, Ordering::Relaxed);
        h.req_seq.fetch_add(1, Ordering::SeqCst);
        let asleep = h.worker_sleeping.load(Ordering::SeqCst) != 0;
        if asleep {
            futex_wake(&h.req_seq);
        }
        self.woke_worker.store(asleep, Ordering::Relaxed);
    }

    /// Host: the current response sequence (read before posting a request).
    pub fn resp_seq(&self) -> u32 {
        self.header().resp_seq.load(Ordering::Acquire)
    }

    /// The doorbell eventfd (host: to register with a runtime and to send to
    /// the worker; worker: once received), if there is one.
    pub fn doorbell(&self) -> Option<BorrowedFd<'_>> {
        self.doorbell.as_ref().map(|fd| fd.as_fd())
    }

    /// Worker: keeps the doorbell the host sent (before the first request).
    pub fn set_doorbell(&mut self, fd: OwnedFd) {
        if !self.host {
            self.doorbell = Some(fd);
        }
    }

    /// Host: an async caller is about to wait for the response after `last`:
    /// empties the doorbell, asks the worker to ring it after posting, and
    /// says whether to wait (`true`: nothing posted yet; `false`: look
    /// again). End the wait with [`async_wait_over`](Self::async_wait_over).
    pub fn async_wait(&self, last: u32) -> bool {
        self.drain_doorbell();
        let h = self.header();
        h.host_async.store(1, Ordering::SeqCst);
        h.resp_seq.load(Ordering::SeqCst) == last && h.dead.load(Ordering::SeqCst) == 0
    }

    /// Host: the async caller no longer waits.
    pub fn async_wait_over(&self) {
        self.header().host_async.store(0, Ordering::SeqCst);
        self.drain_doorbell();
    }

    fn drain_doorbell(&self) {
        if let Some(fd) = &self.doorbell {
            let mut buf = [0u8; 8];
            // Non-blocking: an empty doorbell reads EAGAIN, which is fine.
            let _ = rustix::io::read(fd, &mut buf);
        }
    }

    fn ring(&self) {
        if let Some(fd) = &self.doorbell {
            // A full counter (after 2^64-2 rings) would only mean no new wake-up.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// Host: waits for the response sequence to move past `last`: spinning
    /// for up to `spin`, then asleep on the futex until `deadline` or for at
    /// most `slice` (whichever ends first; [`Wait::TimedOut`] either way), so a
    /// caller can look at other things between slices.
    ///
    /// If posting the request had to wake the worker from its futex, the host
    /// does not spin: no answer can come before the worker has been woken and
    /// scheduled (tens of µs), and a waiter that yields while other processes
    /// want the CPU can lose it for a whole time slice; asleep on the futex
    /// it is woken by the answer, with a sleeper's priority.
    pub fn wait_response(&self, last: u32, spin: Duration, deadline: Instant, slice: Duration) -> Wait {
        let spin = if self.woke_worker.swap(false, Ordering::Relaxed) {
            Duration::ZERO
        } else {
            spin
        };
        let h = self.header();
        let words = Words {
            word: &h.resp_seq,
            sleeping: &h.host_sleeping,
            stop: &h.dead,
            budget: &self.busy_spin_ns,
        };
        wait_change(words, last, spin, Some(deadline), Some(slice))
    }

    /// Host: reads the response metadata, each field once.
    pub fn response(&self) -> Response {
        let h = self.header();
        Response {
            kind: h.resp_kind.load(Ordering::Relaxed),
            id: h.resp_id.load(Ordering::Relaxed),
            status: h.resp_status.load(Ordering::Relaxed),
            off: h.resp_off.load(Ordering::Relaxed),
            len: h.resp_len.load(Ordering::Relaxed),
        }
    }

    /// Host: the `len` bytes at `off` of the response area, read in place;
    /// `None` if the range lies outside the area (or on the worker's side).
    ///
    /// The slice is memory the worker process can still write while it is
    /// borrowed: its *length* is validated here once, its *content* may
    /// change under the reader. Copy it before validating what it says.
    pub fn response_bytes(&self, off: u32, len: u32) -> Option<&[u8]> {
        let end = (off as usize).checked_add(len as usize)?;
        if !self.host || end > self.capacity {
            return None;
        }
        // SAFETY: the range lies inside the response area (checked). The host
        // side never writes that area after creating the region (only the
        // worker side's `write_response` does, and a host region refuses to),
        // so no `&mut` aliases it in this process. Another process may write
        // it; every byte value is a valid u8.
        Some(unsafe { std::slice::from_raw_parts(self.resp_area().add(off as usize), len as usize) })
    }

    /// Host: copies `len` bytes at `off` of the response area into `out`
    /// (replacing its contents). `None` if the range lies outside the area.
    pub fn copy_response(&self, off: u32, len: u32, out: &mut Vec<u8>) -> Option<()> {
        let end = (off as usize).checked_add(len as usize)?;
        if end > self.capacity {
            return None;
        }
        out.clear();
        out.reserve(len as usize);
        // SAFETY: the range is inside the response area (checked). The worker
        // could be scribbling on it right now; we only copy bytes, which any
        // value makes valid, and validate them after the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.resp_area().add(off as usize), out.as_mut_ptr(), len as usize);
            out.set_len(len as usize);
        }
        Some(())
    }

    /// Host: copies an inline output of `len` bytes into `out` (replacing its
    /// contents). `None` if `len` exceeds [`RESP_INLINE`].
    pub fn copy_inline_response(&self, len: u32, out: &mut Vec<u8>) -> Option<()> {
        let len = len as usize;
        if len > RESP_INLINE {
            return None;
        }
        let mut bytes = [0u8; RESP_INLINE];
        load_inline(&self.header().resp_inline, &mut bytes);
        out.clear();
        out.extend_from_slice(&bytes[..len]);
        Some(())
    }

    /// Host: copies the arguments of a [`ResponseKind::Callback`] of `len`
    /// bytes into `out` (replacing its contents): from the response line if
    /// `len` is at most [`RESP_INLINE`], else from the end of the response
    /// area. `None` if `len` exceeds the area.
    pub fn copy_callback_args(&self, len: u32, out: &mut Vec<u8>) -> Option<()> {
        if len as usize <= RESP_INLINE {
            return self.copy_inline_response(len, out);
        }
        let off = self.capacity.checked_sub(len as usize)?;
        self.copy_response(off as u32, len, out)
    }

    /// Host: answers the worker's callback or pull in the request in flight
    /// (a [`RequestKind::Answer`]): `bytes` go in the request line if they
    /// fit, else at the end of the request area, clear of the first `keep`
    /// bytes (the request's own payload, which the plugin may still read).
    /// `false` (nothing posted) if they fit neither: send them on the socket
    /// under [`RequestKind::AnswerViaSocket`].
    pub fn post_answer(&self, id: u64, status: i32, bytes: &[u8], keep: usize) -> bool {
        if bytes.len() <= REQ_INLINE {
            store_inline(&self.header().req_inline, bytes);
        } else if keep.saturating_add(bytes.len()) <= self.capacity && self.host {
            // SAFETY: the range [capacity - len, capacity) lies inside the
            // request area and clear of the first `keep` bytes; the worker
            // waits for this answer and reads the area only after the post.
            unsafe {
                let dst = self.req_area().add(self.capacity - bytes.len());
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
            }
        } else {
            return false;
        }
        self.post_request_in_place(RequestKind::Answer, id, status as u32, bytes.len());
        true
    }

    /// Host (reaper): marks the worker dead and wakes a host waiting on it.
    /// The sequence moves too, so a waiter about to sleep cannot miss the wake.
    pub fn mark_dead(&self) {
        let h = self.header();
        h.dead.store(1, Ordering::SeqCst);
        h.resp_seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&h.resp_seq);
        self.ring();
    }

    /// Host: whether the reaper has marked the worker dead.
    pub fn is_dead(&self) -> bool {
        self.header().dead.load(Ordering::SeqCst) != 0
    }

    // ----- worker side -----------------------------------------------------------

    /// Host: wakes a sleeping worker without giving it work, so it spins,
    /// ready for a call about to come (used when a standby is promoted).
    pub fn poke(&self) {
        let h = self.header();
        h.poke.store(1, Ordering::SeqCst);
        if h.worker_sleeping.load(Ordering::SeqCst) != 0 {
            futex_wake(&h.req_seq);
        }
    }

    /// Worker: waits (spinning, then on the futex, indefinitely) for a request
    /// after `last`. A [`poke`](Self::poke) starts a new spin.
    pub fn wait_request(&self, last: u32, spin: Duration) -> u32 {
        let h = self.header();
        loop {
            let words = Words {
                word: &h.req_seq,
                sleeping: &h.worker_sleeping,
                stop: &h.poke,
                budget: &self.busy_spin_ns,
            };
            if let Wait::Changed(v) = wait_change(words, last, spin, None, None) {
                return v;
            }
            // Poked: spin again.
            h.poke.store(0, Ordering::SeqCst);
        }
    }

    /// Worker: waits (spinning for up to `spin`, then on the futex) for the
    /// next request after the last one taken, takes it and reads its metadata.
    /// The serve loop and a callback waiting for its answer both take requests
    /// through here, so each is taken once.
    pub fn next_request(&self, spin: Duration) -> Request {
        let seen = self.wait_request(self.seen_req.load(Ordering::Relaxed), spin);
        self.seen_req.store(seen, Ordering::Relaxed);
        self.request()
    }

    /// Worker: posts a [`ResponseKind::Callback`] for request `id`: the
    /// arguments go in the response line if they fit, else at the end of the
    /// response area. `false` (nothing posted) if they exceed the area: send
    /// them on the socket under [`ResponseKind::CallbackViaSocket`].
    pub fn post_callback(&self, id: u64, import: u32, index: u32, args: &[u8]) -> bool {
        if args.len() <= RESP_INLINE {
            store_inline(&self.header().resp_inline, args);
        } else if args.len() <= self.capacity && !self.host {
            // SAFETY: the range [capacity - len, capacity) lies inside the
            // response area, which the worker owns until it posts; the
            // arguments are the plugin's own bytes, outside the region.
            unsafe {
                let dst = self.resp_area().add(self.capacity - args.len());
                std::ptr::copy(args.as_ptr(), dst, args.len());
            }
        } else {
            return false;
        }
        self.post_response(ResponseKind::Callback, id, import as i32, index, args.len() as u32);
        true
    }

    /// Worker: copies the bytes of a [`RequestKind::Answer`] of `len` bytes
    /// into `out` (replacing its contents): from the request line if they fit
    /// there, else from the end of the request area. `None` if `len` exceeds
    /// the area.
    pub fn copy_answer(&self, len: u64, out: &mut Vec<u8>) -> Option<()> {
        let len = usize::try_from(len).ok().filter(|&l| l <= self.capacity)?;
        out.clear();
        if len <= REQ_INLINE {
            let mut buf = [0u8; REQ_INLINE];
            out.extend_from_slice(self.inline_request(len as u64, &mut buf)?);
        } else {
            // SAFETY: the range lies inside the request area (checked); the
            // host wrote it before posting and waits for the worker now.
            let src = unsafe { std::slice::from_raw_parts(self.req_area().add(self.capacity - len), len) };
            out.extend_from_slice(src);
        }
        Some(())
    }

    /// Worker: reads the request metadata.
    pub fn request(&self) -> Request {
        let h = self.header();
        Request {
            kind: h.req_kind.load(Ordering::Relaxed),
            id: h.req_id.load(Ordering::Relaxed),
            method: h.req_method.load(Ordering::Relaxed),
            len: h.req_len.load(Ordering::Relaxed),
        }
    }

    /// Worker: the request payload, if `len` fits the area.
    pub fn request_payload(&self, len: u64) -> Option<&[u8]> {
        if len > self.capacity as u64 {
            return None;
        }
        // SAFETY: inside the request area; the host does not touch it until we answer.
        Some(unsafe { std::slice::from_raw_parts(self.req_area(), len as usize) })
    }

    /// Worker: an inline request payload of `len` bytes, copied into `buf`;
    /// `None` if `len` exceeds [`REQ_INLINE`].
    pub fn inline_request<'b>(&self, len: u64, buf: &'b mut [u8; REQ_INLINE]) -> Option<&'b [u8]> {
        let len = usize::try_from(len).ok().filter(|&l| l <= REQ_INLINE)?;
        load_inline(&self.header().req_inline, buf);
        Some(&buf[..len])
    }

    /// Worker: publishes a reply whose output (at most [`RESP_INLINE`] bytes)
    /// travels in the response line; `false` (nothing posted) if it is longer.
    pub fn post_inline_response(&self, id: u64, status: i32, output: &[u8]) -> bool {
        if output.len() > RESP_INLINE {
            return false;
        }
        store_inline(&self.header().resp_inline, output);
        self.post_response(ResponseKind::ReplyInline, id, status, 0, output.len() as u32);
        true
    }

    /// Worker: the response area as (pointer, length), to lend as an Arena.
    /// The worker may write it between a request and its response.
    pub fn response_area_raw(&self) -> (*mut u8, usize) {
        (self.resp_area(), self.capacity)
    }

    /// Worker: copies `bytes` (which must not lie wholly in the response
    /// area; they may overlap it) to the start of the response area; `false`
    /// if they do not fit.
    pub fn write_response(&self, bytes: &[u8]) -> bool {
        if self.host || bytes.len() > self.capacity || self.offset_in_response_area(bytes).is_some() {
            return false;
        }
        // SAFETY: the destination range is inside the response area, which the
        // worker owns until it posts the response. The source may still
        // overlap it (a plugin's buffer can straddle the area's start), so
        // the copy is an overlapping-safe `memmove`.
        unsafe { std::ptr::copy(bytes.as_ptr(), self.resp_area(), bytes.len()) };
        true
    }

    /// Worker: the offset of `bytes` if they lie inside the response area.
    pub fn offset_in_response_area(&self, bytes: &[u8]) -> Option<u32> {
        let start = self.resp_area() as usize;
        let p = bytes.as_ptr() as usize;
        (p >= start && p + bytes.len() <= start + self.capacity).then(|| (p - start) as u32)
    }

    /// Worker: publishes a response.
    pub fn post_response(&self, kind: ResponseKind, id: u64, status: i32, off: u32, len: u32) {
        let h = self.header();
        h.resp_kind.store(kind as u32, Ordering::Relaxed);
        h.resp_id.store(id, Ordering::Relaxed);
        h.resp_status.store(status, Ordering::Relaxed);
        h.resp_off.store(off, Ordering::Relaxed);
        h.resp_len.store(len, Ordering::Relaxed);
        h.resp_seq.fetch_add(1, Ordering::SeqCst);
        if h.host_sleeping.load(Ordering::SeqCst) != 0 {
            futex_wake(&h.resp_seq);
        }
        if h.host_async.load(Ordering::SeqCst) != 0 {
            self.ring();
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once; no references into it outlive self.
        let _ = unsafe { munmap(self.base.cast(), self.map_len) };
    }
}

/// Stores `bytes` (at most 8 × `words.len()`) into inline words, little-endian.
fn store_inline(words: &[AtomicU64], bytes: &[u8]) {
    for (word, chunk) in words.iter().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        word.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// Loads inline words into `out` (8 × `words.len()` bytes), little-endian.
fn load_inline(words: &[AtomicU64], out: &mut [u8]) {
    for (word, chunk) in words.iter().zip(out.chunks_mut(8)) {
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes()[..chunk.len()]);
    }
}

/// Longest busy spin (no syscall, a `pause` per turn) before a waiter starts
/// yielding the CPU (the budget adapts; see the module documentation).
pub const BUSY_SPIN: Duration = Duration::from_micros(2);

/// An answer seen within this long of starting to wait means the other side
/// is running on another CPU right now: busy spinning pays off.
const QUICK_ANSWER: Duration = Duration::from_micros(2);

/// The shared words one wait watches, and this side's spin budget.
struct Words<'a> {
    /// The sequence word (also the futex).
    word: &'a AtomicU32,
    /// Set while this side sleeps on the futex.
    sleeping: &'a AtomicU32,
    /// Ends the wait as [`Wait::Dead`] when non-zero: for the host the
    /// worker's death, for the worker a poke.
    stop: &'a AtomicU32,
    /// This side's busy-spin budget (ns), adapted after each wait.
    budget: &'a AtomicU64,
}

/// Waits until the sequence word differs from `last`, the deadline passes,
/// or the stop flag is set, in three phases:
///
/// 1. a busy spin (a `pause` instruction per turn, no syscall) for up to the
///    side's *budget* (at most [`BUSY_SPIN`]): the fast path when the other
///    side runs on another CPU;
/// 2. a spin that yields the CPU on every turn, up to `spin` in all, so host
///    and worker sharing one CPU still make progress;
/// 3. sleep on the futex (nothing busy-waits while idle).
///
/// The budget adapts, like an adaptive mutex: an answer within
/// [`QUICK_ANSWER`] (the other side is on a CPU) restores the full budget; an
/// answer that came only in the yielding phase (the sides share a CPU, or the
/// other side was preempted) sets it to zero, because busy spinning would
/// only delay the other side. Answers after a sleep say nothing about either
/// and leave it alone.
///
/// The clock is first read at the first look at it (the 16th turn, or the
/// first with no budget), not on entry: a quick answer costs no clock read at
/// all, and the phases run that much longer (16 `pause`s, well under a µs).
fn wait_change(w: Words<'_>, last: u32, spin: Duration, deadline: Option<Instant>, slice: Option<Duration>) -> Wait {
    let is_dead = || w.stop.load(Ordering::Acquire) != 0;
    let budget = Duration::from_nanos(w.budget.load(Ordering::Relaxed)).min(spin);
    let mut start: Option<Instant> = None;
    let mut turns = 0u32;
    // Time spent so far, as of the last look at the clock (an answer seen
    // while busy spinning took at most 16 more turns: no clock read for it;
    // after a yield the clock is read again, the yield may have been long).
    let mut el = Duration::ZERO;
    let mut yielded = false;
    loop {
        let v = w.word.load(Ordering::Acquire);
        if v != last {
            let took = match start {
                Some(start) if yielded => start.elapsed(),
                _ => el,
            };
            let next = if took <= QUICK_ANSWER.max(budget) {
                BUSY_SPIN
            } else {
                Duration::ZERO
            };
            w.budget.store(next.as_nanos() as u64, Ordering::Relaxed);
            return Wait::Changed(v);
        }
        if is_dead() {
            return Wait::Dead;
        }
        // Reading the clock costs more than a pause: look every 16 turns.
        turns = turns.wrapping_add(1);
        if budget.is_zero() || turns % 16 == 0 || turns > 256 {
            el = start.get_or_insert_with(Instant::now).elapsed();
            if el >= spin {
                break;
            }
            if el >= budget {
                std::thread::yield_now();
                yielded = true;
                continue;
            }
        }
        std::hint::spin_loop();
    }
    let deadline = match (deadline, slice) {
        (Some(d), Some(s)) => Some(Instant::now().checked_add(s).map_or(d, |e| d.min(e))),
        (None, Some(s)) => Instant::now().checked_add(s),
        (d, None) => d,
    };
    loop {
        let timeout = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Wait::TimedOut;
                }
                Some(d - now)
            }
            None => None,
        };
        w.sleeping.store(1, Ordering::SeqCst);
        let v = w.word.load(Ordering::SeqCst);
        if v != last {
            w.sleeping.store(0, Ordering::SeqCst);
            return Wait::Changed(v);
        }
        if is_dead() {
            w.sleeping.store(0, Ordering::SeqCst);
            return Wait::Dead;
        }
        futex_wait(w.word, last, timeout);
        w.sleeping.store(0, Ordering::SeqCst);
        let v = w.word.load(Ordering::Acquire);
        if v != last {
            return Wait::Changed(v);
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    use rustix::thread::futex;
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // FUTEX_WAIT on a word inside a live shared mapping (not FUTEX_PRIVATE: the
    // word is shared between processes). The kernel returns at once if the
    // word no longer equals `expected`; EINTR and timeouts just return.
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

fn futex_wake(word: &AtomicU32) {
    use rustix::thread::futex;
    // Wakes all waiters on the shared word.
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// Sends `fd` over `sock` with one marker byte (`SCM_RIGHTS`).
pub fn send_fd(sock: &UnixStream, fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [io::IoSlice::new(&[0xFD])];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(io::Error::other("short sendmsg")),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                let mut p = [nix::poll::PollFd::new(sock.as_fd(), nix::poll::PollFlags::POLLOUT)];
                nix::poll::poll(&mut p, nix::poll::PollTimeout::from(1000u16))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives a descriptor sent with [`send_fd`] (blocking).
pub fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us; we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    received.ok_or_else(|| io::Error::other("no descriptor received"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The attack a hostile worker makes on its region: reopen the memfd by
    /// path (as `/proc/self/map_files/...` allows) and resize it, so the host
    /// dies of SIGBUS on its next access. It works on an unsealed memfd and is
    /// refused on every region bulkhead creates.
    #[test]
    fn regions_cannot_be_resized_through_a_reopened_path() {
        let reopen = |fd: &OwnedFd| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
        };
        let unsealed = nix::sys::memfd::memfd_create(c"plain", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&unsealed, 8192).unwrap();
        reopen(&unsealed)
            .set_len(0)
            .expect("an unsealed memfd can be shrunk by anyone holding it");

        let (_region, fd) = Region::create(4096).unwrap();
        for len in [0, 1 << 30] {
            let e = reopen(&fd).set_len(len).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "resize to {len}");
        }
        // Nor can the seals be lifted or changed.
        let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE));
        assert_eq!(seals, Err(nix::errno::Errno::EPERM));
        // A region that arrives unsealed is refused by the worker side.
        assert!(Region::open(unsealed.as_fd()).is_err());
    }

    #[test]
    fn header_layout_fits_and_separates_directions() {
        assert!(size_of::<Header>() <= HEADER_SIZE);
        assert_eq!(offset_of!(Header, req_seq), 64);
        assert_eq!(offset_of!(Header, resp_seq), 128);
        assert_eq!(offset_of!(Header, dead), 192);
        // Small payloads share the cache line of their sequence word.
        assert_eq!(offset_of!(Header, req_inline), 104);
        assert_eq!(offset_of!(Header, resp_inline), 160);
    }

    #[test]
    fn request_response_round_trip_across_threads() {
        let (host, fd) = Region::create(4096).unwrap();
        let worker = Region::open(fd.as_fd()).unwrap();
        assert_eq!(worker.capacity(), 4096);
        // A 3-byte payload travels inline both ways; a 100-byte one through the areas.
        let big: Vec<u8> = (0..100u8).collect();
        let payloads = [b"abc".to_vec(), big.clone()];
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut seq = 0;
            for _ in 0..2 {
                seq = worker.wait_request(seq, Duration::from_micros(10));
                let r = worker.request();
                let mut inline = [0u8; REQ_INLINE];
                let input = match RequestKind::from_code(r.kind) {
                    Some(RequestKind::CallInline) => worker.inline_request(r.len, &mut inline).unwrap().to_vec(),
                    Some(RequestKind::Call) => worker.request_payload(r.len).unwrap().to_vec(),
                    other => panic!("kind {other:?}"),
                };
                let mut reversed = input.clone();
                reversed.reverse();
                if !worker.post_inline_response(r.id, 0, &reversed) {
                    assert!(worker.write_response(&reversed));
                    worker.post_response(ResponseKind::Reply, r.id, 0, 0, input.len() as u32);
                }
                seen.push((seq, r));
            }
            seen
        });
        let mut out = Vec::new();
        for (id, payload) in (9u64..).zip(&payloads) {
            let last = host.resp_seq();
            host.poke();
            host.post_request(RequestKind::Call, id, 3, payload);
            assert_eq!(
                host.wait_response(
                    last,
                    Duration::ZERO,
                    Instant::now() + Duration::from_secs(10),
                    Duration::MAX
                ),
                Wait::Changed(last + 1)
            );
            let resp = host.response();
            assert_eq!((resp.id, resp.len as usize), (id, payload.len()));
            if payload.len() <= RESP_INLINE {
                assert_eq!(resp.kind, ResponseKind::ReplyInline as u32);
                host.copy_inline_response(resp.len, &mut out).unwrap();
            } else {
                assert_eq!(resp.kind, ResponseKind::Reply as u32);
                host.copy_response(resp.off, resp.len, &mut out).unwrap();
            }
            let mut expect = payload.clone();
            expect.reverse();
            assert_eq!(out, expect);
        }
        let seen = t.join().unwrap();
        assert_eq!(
            seen,
            vec![
                (
                    1,
                    Request {
                        kind: RequestKind::CallInline as u32,
                        id: 9,
                        method: 3,
                        len: 3
                    }
                ),
                (
                    2,
                    Request {
                        kind: RequestKind::Call as u32,
                        id: 10,
                        method: 3,
                        len: 100
                    }
                )
            ]
        );
        assert!(
            host.copy_response(4000, 200, &mut out).is_none(),
            "out-of-area ranges are refused"
        );
        assert!(
            host.copy_inline_response(33, &mut out).is_none(),
            "inline lengths are capped"
        );
        assert!(!host.post_inline_response(1, 0, &[0; 33]), "too long for the line");
    }

    #[test]
    fn kind_codes_name_their_kinds() {
        use RequestKind as Q;
        use ResponseKind as P;
        for k in [
            Q::Call,
            Q::CallViaSocket,
            Q::Shutdown,
            Q::Conversation,
            Q::StreamNext,
            Q::CallInline,
            Q::ClientCall,
            Q::Answer,
            Q::AnswerViaSocket,
        ] {
            assert_eq!(Q::from_code(k as u32), Some(k));
        }
        for k in [
            P::Reply,
            P::ViaSocket,
            P::Fault,
            P::ReplyInline,
            P::Callback,
            P::CallbackViaSocket,
            P::Pull,
        ] {
            assert_eq!(P::from_code(k as u32), Some(k));
        }
        assert_eq!(Q::from_code(0), None);
        assert_eq!(P::from_code(u32::MAX), None);
        // `ALL` lists every kind once, codes 1, 2, .. in order.
        let codes = |all: Vec<u32>| all.iter().copied().eq(1..=all.len() as u32);
        assert!(codes(Q::ALL.iter().map(|&k| k as u32).collect()));
        assert!(codes(P::ALL.iter().map(|&k| k as u32).collect()));
        assert_eq!((Q::ALL.len(), P::ALL.len()), (9, 7));
    }

    #[test]
    fn request_filled_and_response_read_in_place() {
        let (host, fd) = Region::create(4096).unwrap();
        let worker = Region::open(fd.as_fd()).unwrap();
        // Too large, or a nested lend, or the worker's side: refused, closure not run.
        assert!(host.fill_request(4097, |_| unreachable!()).is_none());
        assert!(worker.fill_request(1, |_| unreachable!()).is_none());
        let nested = host.fill_request(3, |buf| {
            buf.copy_from_slice(b"xyz");
            host.fill_request(1, |_| unreachable!()).is_none()
        });
        assert_eq!(nested, Some(true));
        // The lend ends even if the closure panics.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host.fill_request(2, |_| panic!("no"))));
        assert!(r.is_err());
        assert_eq!(host.fill_request(4096, |buf| buf.len()), Some(4096));
        host.fill_request(3, |buf| buf.copy_from_slice(b"abc")).unwrap();
        host.post_request_in_place(RequestKind::Call, 1, 0, 3);
        assert_eq!(worker.request_payload(worker.request().len), Some(&b"abc"[..]));
        assert!(worker.write_response(b"hello"));
        assert!(!host.write_response(b"x"), "the host never writes the response area");
        assert_eq!(host.response_bytes(1, 3), Some(&b"ell"[..]));
        assert_eq!(host.response_bytes(4096, 0), Some(&b""[..]));
        assert!(host.response_bytes(4000, 97).is_none());
        assert!(host.response_bytes(u32::MAX, u32::MAX).is_none());
        assert!(worker.response_bytes(0, 1).is_none());
    }

    /// A hostile plugin may return a buffer that straddles the start of the
    /// response area: the copy to the area's start overlaps its source.
    #[test]
    fn a_buffer_straddling_the_response_area_is_copied_whole() {
        const CAP: usize = 64 << 10;
        let (_host, fd) = Region::create(CAP as u32).unwrap();
        let worker = Region::open(fd.as_fd()).unwrap();
        let (resp, _) = worker.response_area_raw();
        let want: Vec<u8> = (0..CAP).map(|i| (i * 7 + i / 251) as u8).collect();
        // SAFETY: half the request area's end and half the response area's
        // start: all inside this test's mapping.
        let straddling = unsafe {
            std::ptr::copy_nonoverlapping(want.as_ptr(), resp.sub(CAP / 2), CAP);
            std::slice::from_raw_parts(resp.sub(CAP / 2), CAP)
        };
        assert_eq!(worker.offset_in_response_area(straddling), None);
        assert!(worker.write_response(straddling));
        // SAFETY: the response area, just written.
        let got = unsafe { std::slice::from_raw_parts(resp, CAP) };
        assert!(got == &want[..], "the copy mixed up its overlapping source");
    }

    #[test]
    fn waits_time_out_and_see_death() {
        let (host, _fd) = Region::create(64).unwrap();
        let start = Instant::now();
        let w = host.wait_response(
            host.resp_seq(),
            Duration::from_micros(50),
            start + Duration::from_millis(30),
            Duration::MAX,
        );
        assert_eq!(w, Wait::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(30));
        // A slice ends the sleep before the deadline.
        let start = Instant::now();
        let w = host.wait_response(
            host.resp_seq(),
            Duration::ZERO,
            start + Duration::from_secs(60),
            Duration::from_millis(20),
        );
        assert_eq!(w, Wait::TimedOut);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(20) && took < Duration::from_secs(30),
            "{took:?}"
        );
        let last = host.resp_seq();
        host.mark_dead();
        assert!(host.is_dead());
        // The sequence moved (no missed wake-up) and the flag says why.
        let w = host.wait_response(
            last,
            Duration::ZERO,
            Instant::now() + Duration::from_secs(5),
            Duration::MAX,
        );
        assert_eq!(w, Wait::Changed(last + 1));
        let w = host.wait_response(
            last + 1,
            Duration::ZERO,
            Instant::now() + Duration::from_secs(5),
            Duration::MAX,
        );
        assert_eq!(w, Wait::Dead);
    }

    #[test]
    fn descriptor_passing() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_region, fd) = Region::create(128).unwrap();
        send_fd(&a, fd.as_fd()).unwrap();
        let got = recv_fd(&b).unwrap();
        assert_eq!(Region::open(got.as_fd()).unwrap().capacity(), 128);
    }
}
