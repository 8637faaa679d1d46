//! The host ↔ fork-server protocol.
//!
//! A fork-server is a worker process started once per supervisor and sandbox
//! profile. It prepares the part of the sandbox every worker of that profile
//! shares, then forks fresh workers on request; no plugin code ever runs in it.
//!
//! The channel is a `SOCK_SEQPACKET` Unix socket pair, so every message is one
//! packet and the descriptors travel with the packet they belong to:
//!
//! 1. host → server: [`ToServer::Profile`] (the sandbox policy), once;
//! 2. server → host: [`FromServer::Ready`] or [`FromServer::Unavailable`];
//! 3. then, repeatedly: host → server [`ToServer::Spawn`] carrying the new
//!    worker's socket end, stdout and stderr pipes and (optionally) its library;
//!    server → host [`FromServer::Spawned`] with the worker's pid, or
//!    [`FromServer::SpawnFailed`];
//! 4. and, on the side, *blanks*: workers the server pre-forks (one at start,
//!    one more per [`ToServer::Blank`]), which isolate themselves and announce
//!    themselves to the host ([`FromServer::Blank`]) with a channel of their
//!    own; the host then assigns a blank directly ([`Assign`], same
//!    descriptors as a spawn), with no round trip through the server.
//!
//! The worker is created with `CLONE_PARENT`: it is the *host's* child, so the
//! host reaps it, reads its exit status and rusage, and its parent-death signal
//! follows the host, exactly as for a worker the host started itself.
//!
//! Every message is bounded ([`MAX_PACKET`], [`MAX_FDS`]); either side treats
//! anything else as a broken channel.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::sandbox::SandboxPolicy;
use crate::wire;

/// Largest packet either side sends or accepts.
pub const MAX_PACKET: usize = 64 * 1024;
/// Most descriptors one packet carries.
pub const MAX_FDS: usize = 4;
/// Blanks a server forks at its start and keeps ahead (it forks one more
/// each time the host takes one): with one, crashes back to back found none
/// ready.
pub const BLANKS_AHEAD: usize = 2;

/// Host → fork-server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToServer {
    /// The sandbox profile every worker of this server gets. First and once.
    Profile(SandboxPolicy),
    /// Pre-fork one more blank (no answer: the blank announces itself).
    Blank,
    /// Fork a worker. Descriptors, in order: its socket end, stdout, stderr,
    /// and its library when `library` is set.
    Spawn {
        /// The worker's command-line arguments (limits, parent pid, ...). Its
        /// environment is the server's own, set when the host started it.
        args: Vec<String>,
        /// A fourth descriptor is the plugin library, opened by the host.
        library: bool,
    },
}

/// Host → blank (a pre-forked worker waiting for its plugin), on the blank's
/// own channel. Descriptors as for [`ToServer::Spawn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    /// The worker's command-line arguments.
    pub args: Vec<String>,
    /// A fourth descriptor is the plugin library.
    pub library: bool,
}

/// Fork-server (or one of its blanks) → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromServer {
    /// Sent by a blank itself, first thing, on its inherited copy of the
    /// server's channel, with one descriptor: the host's end of the blank's
    /// own channel, over which the host assigns it ([`Assign`]). The blank is
    /// the host's child; until it is assigned, the host kills and reaps it
    /// when it turns out dead or the server goes away. (Sent by the blank, not
    /// the server, so that a blank can never exist without the host hearing
    /// of it: the host reads the channel until every holder has closed it.)
    Blank {
        /// The blank's pid.
        pid: i32,
    },
    /// The profile is prepared; spawn requests may follow.
    Ready,
    /// The profile cannot be prepared here (the host starts workers itself).
    Unavailable(String),
    /// A worker was forked: its pid (in the host's pid namespace), the
    /// leader of its own process group.
    Spawned {
        /// The worker's pid.
        pid: i32,
    },
    /// The fork failed; the server keeps serving.
    SpawnFailed(String),
}

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends `msg` as one packet with `fds` attached.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let bytes = wire::encode(msg).map_err(|e| io::Error::other(e.0))?;
    if bytes.len() > MAX_PACKET || fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "fork-server message too large ({} bytes, {} descriptors)",
            bytes.len(),
            fds.len()
        )));
    }
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [io::IoSlice::new(&bytes)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => return Err(io::Error::other(format!("short packet ({n} of {} bytes)", bytes.len()))),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why a receive failed.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed its end.
    Closed,
    /// Nothing arrived before the deadline.
    Timeout,
    /// The packet was malformed, oversized, truncated or carried too many
    /// descriptors; or the socket failed.
    Bad(String),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Closed => f.write_str("fork-server channel closed"),
            RecvError::Timeout => f.write_str("no answer from the fork-server in time"),
            RecvError::Bad(why) => write!(f, "bad fork-server packet: {why}"),
        }
    }
}

/// Receives one packet (waiting until `deadline`, or forever with `None`; a
/// deadline already passed makes it a non-blocking receive) and the
/// descriptors attached to it. Descriptors arrive close-on-exec.
pub fn recv<T: serde::de::DeserializeOwned>(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> Result<(T, Vec<OwnedFd>), RecvError> {
    loop {
        let (timeout, last) = match deadline {
            None => (PollTimeout::NONE, false),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // A deadline already passed still looks once (a non-blocking receive).
                let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
                (PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX), ms == 0)
            }
        };
        let mut p = [PollFd::new(sock, PollFlags::POLLIN)];
        match poll(&mut p, timeout) {
            Ok(0) if last => return Err(RecvError::Timeout),
            Ok(0) => continue,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(RecvError::Bad(format!("poll: {e}"))),
        }
    }
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS]);
    let (n, flags, fds) = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                let cmsgs = msg.cmsgs().map_err(|e| RecvError::Bad(format!("control data: {e}")))?;
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel just installed this descriptor
                            // in our table for this message; nothing else owns it.
                            #[allow(unsafe_code)]
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                break (msg.bytes, msg.flags, fds);
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(RecvError::Bad(format!("recvmsg: {e}"))),
        }
    };
    if n == 0 && fds.is_empty() {
        return Err(RecvError::Closed);
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(RecvError::Bad("truncated packet".into()));
    }
    let msg = wire::decode(&buf[..n]).map_err(|e| RecvError::Bad(e.0))?;
    Ok((msg, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn packets_carry_their_descriptors() {
        let (a, b) = pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let msg = ToServer::Spawn {
            args: vec!["--parent-pid".into(), "1".into()],
            library: false,
        };
        send(a.as_fd(), &msg, &[r.as_fd(), w.as_fd()]).unwrap();
        let (got, fds): (ToServer, _) = recv(b.as_fd(), None).unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 2);
        // The received write end reaches the original read end.
        nix::unistd::write(&fds[1], b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut byte).unwrap(), 1);
    }

    #[test]
    fn garbage_and_closure_are_typed_errors() {
        let (a, b) = pair().unwrap();
        nix::sys::socket::send(a.as_raw_fd(), &[0xFF; 7], MsgFlags::empty()).unwrap();
        assert!(matches!(recv::<FromServer>(b.as_fd(), None), Err(RecvError::Bad(_))));
        let deadline = Some(Instant::now() + std::time::Duration::from_millis(20));
        assert!(matches!(
            recv::<FromServer>(b.as_fd(), deadline),
            Err(RecvError::Timeout)
        ));
        drop(a);
        assert!(matches!(recv::<FromServer>(b.as_fd(), None), Err(RecvError::Closed)));
    }
}
