//! Answers framed on the socket: a `Reply` (its fixed prefix and the plugin's
//! output, one write when small, two uncopied when large), a `Fault`, or a
//! `LoadFailed`.

use std::io::{IoSlice, Write};
use std::os::unix::net::UnixStream;

use bulkhead_shared::protocol::{reply_prefix, LoadFailure, WorkerMsg};

use crate::load::Outcome;

/// Payloads up to this size are copied next to their prefix and sent in one write.
pub(super) const SMALL_REPLY: usize = 16 * 1024;

/// Writes the answer to request `id` on the socket.
pub(super) fn reply(sock: &mut UnixStream, tx: &mut Vec<u8>, id: u64, outcome: Outcome<'_>) -> std::io::Result<()> {
    match outcome {
        Outcome::Status { status, output } => {
            let prefix = reply_prefix(id, status, output.len());
            if output.len() <= SMALL_REPLY {
                tx.clear();
                tx.extend_from_slice(&prefix);
                tx.extend_from_slice(output);
                sock.write_all(tx)
            } else {
                write_all_vectored(sock, &prefix, output)
            }
        }
        Outcome::Fault(fault) => {
            WorkerMsg::Fault { id, fault }.encode(tx);
            sock.write_all(tx)
        }
    }
}

/// Writes `a` then `b` with as few syscalls as the kernel allows.
fn write_all_vectored(sock: &mut UnixStream, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = sock.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    sock.write_all(b)
}

pub(super) fn fail_load(sock: &mut UnixStream, tx: &mut Vec<u8>, reason: String) -> u8 {
    send_load_failure(sock, tx, LoadFailure::BadRequest { reason })
}

pub(super) fn send_load_failure(sock: &mut UnixStream, tx: &mut Vec<u8>, why: LoadFailure) -> u8 {
    WorkerMsg::LoadFailed(why).encode(tx);
    let _ = sock.write_all(tx);
    0
}
