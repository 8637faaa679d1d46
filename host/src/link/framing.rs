//! Deadline-bounded framing on the host's end of a worker's socket.
//!
//! The host end is non-blocking; every wait is a `poll` bounded by the time
//! left until one `Instant` deadline. Frames from the worker are capped before
//! allocation and read into a reused buffer that only grows as bytes actually
//! arrive. Writes use `MSG_NOSIGNAL`: a dead worker is an [`IoFail::Eof`],
//! never a SIGPIPE in the host.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bulkhead_shared::frame::{self, FrameError, HEADER_LEN};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};

use crate::error::ProtocolError;

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

/// `Ok` if nothing is waiting on the socket; `Eof` if the worker closed it;
/// a protocol error if it sent bytes nobody asked for.
pub(super) fn socket_idle(sock: &UnixStream) -> Result<(), IoFail> {
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

/// `Ok` if no byte waits on the socket, a protocol error if the worker wrote
/// any unasked: one `FIONREAD` ioctl. Run after an answer through the shared
/// region when the bell thread flagged the socket (or watches nothing). A
/// socket closed by the worker reads as empty here; it is found by the next
/// exchange on the socket or while the host sleeps on the futex
/// ([`socket_idle`]).
pub(super) fn nothing_unsolicited(sock: &UnixStream) -> Result<(), IoFail> {
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

/// Looks at `sock` without sleeping until it is readable (true) or `spin`
/// has passed (false), giving up the CPU between looks: for an answer due
/// within moments, whose wake-up from a blocking wait would cost more than
/// the wait.
pub(crate) fn spin_until_readable(sock: &UnixStream, spin: Duration) -> bool {
    let until = Instant::now() + spin;
    loop {
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
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
    use bulkhead_shared::protocol::WorkerMsg;
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
