//! The worker's serve loop: read a request frame, run it through the plugin,
//! write exactly one answer with the same request id.

use std::io::{IoSlice, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use bulkhead_shared::frame::{self, ENVELOPE_OVERHEAD};
use bulkhead_shared::protocol::{reply_prefix, HostMsg, LoadFailure, WorkerMsg, PROTOCOL_VERSION};

use crate::load::{self, Outcome};

/// Exit code when the host broke the protocol.
const EXIT_PROTOCOL: u8 = 65;

/// Payloads up to this size are copied next to their prefix and sent in one write.
const SMALL_REPLY: usize = 16 * 1024;

/// Loads the plugin the host asks for, then serves calls until told to stop.
pub fn run(mut sock: UnixStream) -> ExitCode {
    let mut rx = Vec::with_capacity(4096);
    let mut tx = Vec::with_capacity(SMALL_REPLY + 64);

    // The load request is small; cap it accordingly before the plugin sets limits.
    let req = match frame::read_frame(&mut sock, &mut rx, 1 << 20) {
        Ok(true) => match HostMsg::decode(&rx) {
            Ok(HostMsg::Load(req)) => req,
            Ok(other) => return fail_load(&mut sock, &mut tx, format!("expected Load, got {other:?}")),
            Err(e) => return fail_load(&mut sock, &mut tx, e.to_string()),
        },
        Ok(false) => return ExitCode::SUCCESS,
        Err(e) => return fail_load(&mut sock, &mut tx, e.to_string()),
    };
    if req.protocol_version != PROTOCOL_VERSION {
        let why = LoadFailure::ProtocolVersion {
            host: req.protocol_version,
            worker: PROTOCOL_VERSION,
        };
        return send_load_failure(&mut sock, &mut tx, why);
    }
    let max_in = req.max_output.saturating_add(ENVELOPE_OVERHEAD);
    let mut plugin = match load::load(&req) {
        Ok((plugin, info)) => {
            WorkerMsg::Loaded(Box::new(info)).encode(&mut tx);
            if sock.write_all(&tx).is_err() {
                return ExitCode::SUCCESS;
            }
            plugin
        }
        Err(why) => return send_load_failure(&mut sock, &mut tx, why),
    };
    drop(req);

    loop {
        match frame::read_frame(&mut sock, &mut rx, max_in) {
            Ok(true) => {}
            // The host closed the socket: nothing left to serve.
            Ok(false) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulkhead-worker: bad frame from host: {e}");
                return ExitCode::from(EXIT_PROTOCOL);
            }
        }
        match HostMsg::decode(&rx) {
            Ok(HostMsg::Call { id, method, payload }) => {
                let sent = plugin.call(method, payload, |outcome| reply(&mut sock, &mut tx, id, outcome));
                if let Err(e) = sent {
                    eprintln!("bulkhead-worker: cannot answer the host: {e}");
                    return ExitCode::SUCCESS;
                }
            }
            Ok(HostMsg::Shutdown) => {
                plugin.destroy();
                return ExitCode::SUCCESS;
            }
            Ok(HostMsg::Load(_)) => {
                eprintln!("bulkhead-worker: second Load request");
                return ExitCode::from(EXIT_PROTOCOL);
            }
            Err(e) => {
                eprintln!("bulkhead-worker: bad message from host: {e}");
                return ExitCode::from(EXIT_PROTOCOL);
            }
        }
    }
}

fn reply(sock: &mut UnixStream, tx: &mut Vec<u8>, id: u64, outcome: Outcome<'_>) -> std::io::Result<()> {
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

fn fail_load(sock: &mut UnixStream, tx: &mut Vec<u8>, reason: String) -> ExitCode {
    send_load_failure(sock, tx, LoadFailure::BadRequest { reason })
}

fn send_load_failure(sock: &mut UnixStream, tx: &mut Vec<u8>, why: LoadFailure) -> ExitCode {
    WorkerMsg::LoadFailed(why).encode(tx);
    let _ = sock.write_all(tx);
    ExitCode::SUCCESS
}
