//! The path by which plugin code reaches the host in the middle of a request:
//! host callbacks (`Callback` → `CallbackReply`) and a client stream's pulls
//! (`Pull` → `Item`). Any plugin thread may use it; exchanges are serialised
//! by one lock. It is open only while the main thread runs a request the host
//! is listening for, and it travels the way that request came: through the
//! shared-memory region (the host waits there) or on the socket. Outside that
//! window every exchange is refused, so a plugin thread can never reach the
//! host unasked.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bulkhead_shared::frame;
use bulkhead_shared::protocol::{HostMsg, WorkerMsg};
use bulkhead_shared::shm::{Region, RequestKind, ResponseKind};

/// Exit code when the host broke the protocol during an exchange.
const EXIT_PROTOCOL: i32 = 65;

/// How long a callback spins (yielding) for the host's answer before it
/// sleeps on the futex: the host answers at once unless the callback runs long.
const ANSWER_SPIN: Duration = Duration::from_micros(100);

/// The way the request in flight came, and so the way its exchanges go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// On the socket.
    Socket,
    /// Through the shared-memory region, for the request with this id.
    Region(u64),
}

struct Inner {
    sock: UnixStream,
    region: Option<Arc<Region>>,
    open: Option<Via>,
    rx: Vec<u8>,
    tx: Vec<u8>,
    max_in: u32,
}

static CHANNEL: OnceLock<Mutex<Inner>> = OnceLock::new();

/// Installs the channel on a clone of the protocol socket (and the region,
/// when the worker mapped one).
pub fn install(sock: &UnixStream, max_in: u32, region: Option<Arc<Region>>) -> std::io::Result<()> {
    let sock = sock.try_clone()?;
    let _ = CHANNEL.set(Mutex::new(Inner {
        sock,
        region,
        open: None,
        rx: Vec::new(),
        tx: Vec::new(),
        max_in,
    }));
    Ok(())
}

/// Opens the channel for a request that came `via` (or closes it with
/// `None`). Closing waits for an exchange in flight to finish, so the main
/// thread's answer never interleaves with one.
pub fn set_open(via: Option<Via>) {
    if let Some(c) = CHANNEL.get() {
        c.lock().unwrap_or_else(|e| e.into_inner()).open = via;
    }
}

/// Sends `msg` and hands the host's answer to `f`. `None` if the channel is
/// closed or the host is gone (the host will see the worker's end).
pub fn exchange<R>(msg: WorkerMsg<'_>, f: impl FnOnce(HostMsg<'_>) -> R) -> Option<R> {
    let mut inner = CHANNEL.get()?.lock().unwrap_or_else(|e| e.into_inner());
    let Inner {
        sock,
        region,
        open,
        rx,
        tx,
        max_in,
    } = &mut *inner;
    match (*open, region.as_deref()) {
        (None, _) => None,
        (Some(Via::Region(id)), Some(region)) => through_region(region, id, sock, rx, tx, *max_in, msg, f),
        (Some(_), _) => {
            msg.encode(tx);
            sock.write_all(tx).ok()?;
            read_answer(sock, rx, *max_in, f)
        }
    }
}

/// One exchange for request `id` through the region: the callback or pull is
/// posted as a response, the host's answer arrives as the next request.
#[allow(clippy::too_many_arguments)]
fn through_region<R>(
    region: &Region,
    id: u64,
    sock: &mut UnixStream,
    rx: &mut Vec<u8>,
    tx: &mut Vec<u8>,
    max_in: u32,
    msg: WorkerMsg<'_>,
    f: impl FnOnce(HostMsg<'_>) -> R,
) -> Option<R> {
    let pull = matches!(msg, WorkerMsg::Pull);
    match msg {
        WorkerMsg::Callback { import, index, payload } => {
            if !region.post_callback(id, import, index, payload) {
                region.post_response(ResponseKind::CallbackViaSocket, id, 0, 0, 0);
                msg.encode(tx);
                sock.write_all(tx).ok()?;
            }
        }
        WorkerMsg::Pull => region.post_response(ResponseKind::Pull, id, 0, 0, 0),
        _ => return None,
    }
    let req = region.next_request(ANSWER_SPIN);
    match RequestKind::from_code(req.kind) {
        Some(RequestKind::Answer) if req.id == id => {
            if region.copy_answer(req.len, rx).is_none() {
                protocol_exit(format_args!("an answer of {} bytes", req.len));
            }
            let status = req.method as i32;
            let payload = &rx[..];
            Some(f(if pull {
                HostMsg::Item { status, payload }
            } else {
                HostMsg::CallbackReply { status, payload }
            }))
        }
        Some(RequestKind::AnswerViaSocket) if req.id == id => read_answer(sock, rx, max_in, f),
        _ => protocol_exit(format_args!("request {req:?} in place of the answer to {id}")),
    }
}

/// Reads the host's answer frame from the socket and hands it to `f`.
fn read_answer<R>(sock: &mut UnixStream, rx: &mut Vec<u8>, max_in: u32, f: impl FnOnce(HostMsg<'_>) -> R) -> Option<R> {
    match frame::read_frame(sock, rx, max_in) {
        Ok(true) => {}
        _ => return None,
    }
    match HostMsg::decode(rx) {
        Ok(m @ (HostMsg::CallbackReply { .. } | HostMsg::Item { .. })) => Some(f(m)),
        other => protocol_exit(format_args!("{other:?}")),
    }
}

fn protocol_exit(got: std::fmt::Arguments<'_>) -> ! {
    eprintln!("bulkhead-worker: expected a callback answer, got {got}");
    std::process::exit(EXIT_PROTOCOL);
}
