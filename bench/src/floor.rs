//! The transport floor: a bare blocking socketpair ping-pong with a peer
//! *process* (this binary re-executed with `--echo-peer`), moving the same byte
//! counts as a bulkhead call, with no plugin, no framing checks, no pool.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

/// The host side of the floor measurement.
pub struct Floor {
    sock: UnixStream,
    child: Child,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl Floor {
    /// Starts the peer process.
    pub fn start() -> Floor {
        let (host, peer) = UnixStream::pair().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .arg("--echo-peer")
            .stdin(Stdio::from(OwnedFd::from(peer)))
            .spawn()
            .unwrap();
        Floor {
            sock: host,
            child,
            tx: Vec::new(),
            rx: Vec::new(),
        }
    }

    /// One round trip: sends a `request`-byte frame, receives a `reply`-byte frame.
    pub fn round_trip(&mut self, request: usize, reply: usize) {
        self.tx.resize(request.max(8), 0);
        self.tx[..4].copy_from_slice(&((request.max(8) - 4) as u32).to_le_bytes());
        self.tx[4..8].copy_from_slice(&(reply as u32).to_le_bytes());
        self.sock.write_all(&self.tx).unwrap();
        let mut h = [0u8; 4];
        self.sock.read_exact(&mut h).unwrap();
        let n = u32::from_le_bytes(h) as usize;
        self.rx.resize(n, 0);
        self.sock.read_exact(&mut self.rx).unwrap();
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer: reads `[len][reply_len][...]` frames, answers `[reply_len - 4][...]`.
pub fn echo_peer() {
    use std::os::fd::AsFd;
    // stdin is the socket: read through it, write replies to a duplicate.
    let mut sock = std::io::stdin().lock();
    let mut w = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    let mut buf = Vec::new();
    let mut reply = Vec::new();
    loop {
        let mut h = [0u8; 4];
        if sock.read_exact(&mut h).is_err() {
            return;
        }
        buf.resize(u32::from_le_bytes(h) as usize, 0);
        if sock.read_exact(&mut buf).is_err() {
            return;
        }
        let want = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        reply.resize(want.max(4), 0);
        reply[..4].copy_from_slice(&((want.max(4) - 4) as u32).to_le_bytes());
        if w.write_all(&reply).is_err() {
            return;
        }
    }
}
