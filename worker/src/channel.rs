//! The path by which plugin code reaches the host in the middle of a request:
//! host callbacks (`Callback` → `CallbackReply`) and a client stream's pulls
//! (`Pull` → `Item`). Any plugin thread may use it; exchanges are serialised
//! by one lock. It is open only while the main thread runs a request the host
//! is listening for on the socket; outside that window every exchange is
//! refused, so a plugin thread can never write to the socket unasked.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

use bulkhead_shared::frame;
use bulkhead_shared::protocol::{HostMsg, WorkerMsg};

/// Exit code when the host broke the protocol during an exchange.
const EXIT_PROTOCOL: i32 = 65;

struct Inner {
    sock: UnixStream,
    open: bool,
    rx: Vec<u8>,
    tx: Vec<u8>,
    max_in: u32,
}

static CHANNEL: OnceLock<Mutex<Inner>> = OnceLock::new();

/// Installs the channel on a clone of the protocol socket.
pub fn install(sock: &UnixStream, max_in: u32) -> std::io::Result<()> {
    let sock = sock.try_clone()?;
    let _ = CHANNEL.set(Mutex::new(Inner {
        sock,
        open: false,
        rx: Vec::new(),
        tx: Vec::new(),
        max_in,
    }));
    Ok(())
}

/// Opens (`true`) or closes the channel. Closing waits for an exchange in
/// flight to finish, so the main thread's answer never interleaves with one.
pub fn set_open(open: bool) {
    if let Some(c) = CHANNEL.get() {
        c.lock().unwrap_or_else(|e| e.into_inner()).open = open;
    }
}

/// Sends `msg` and hands the host's answer to `f`. `None` if the channel is
/// closed or the socket failed (the host will see the worker's end).
pub fn exchange<R>(msg: WorkerMsg<'_>, f: impl FnOnce(HostMsg<'_>) -> R) -> Option<R> {
    let mut inner = CHANNEL.get()?.lock().unwrap_or_else(|e| e.into_inner());
    if !inner.open {
        return None;
    }
    let Inner {
        sock, rx, tx, max_in, ..
    } = &mut *inner;
    msg.encode(tx);
    sock.write_all(tx).ok()?;
    match frame::read_frame(sock, rx, *max_in) {
        Ok(true) => {}
        _ => return None,
    }
    match HostMsg::decode(rx) {
        Ok(m @ (HostMsg::CallbackReply { .. } | HostMsg::Item { .. })) => Some(f(m)),
        other => {
            eprintln!("bulkhead-worker: expected a callback answer, got {other:?}");
            std::process::exit(EXIT_PROTOCOL);
        }
    }
}
