//! The worker's serve loop: load the plugin the host asks for, then read a
//! request, run it through the plugin and write exactly one answer with the
//! same request id — through the shared-memory region when the host set one
//! up and the worker mapped it ([`region`]), else framed on the socket
//! ([`socket`]). A conversation on the socket (host callbacks, pulls) is
//! served here, with the [`channel`](crate::channel) open for its duration.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use bulkhead_shared::frame::{self, ENVELOPE_OVERHEAD};
use bulkhead_shared::protocol::{HostMsg, LoadFailure, WorkerMsg, PROTOCOL_VERSION};
use bulkhead_shared::shm::{self, Region};

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg};

use crate::channel::{self, Via};
use crate::load::{self, Outcome, Plugin};
use crate::sandbox;
use crate::setup::{self, Args};

mod region;
mod socket;

use socket::{fail_load, reply, send_load_failure, SMALL_REPLY};

/// Exit code when the host broke the protocol.
const EXIT_PROTOCOL: u8 = 65;

/// Loads the plugin the host asks for, then serves calls until told to stop.
pub fn run(mut sock: UnixStream, args: &Args) -> u8 {
    let mut rx = Vec::with_capacity(4096);
    let mut tx = Vec::with_capacity(SMALL_REPLY + 64);
    // Crash reports, before any plugin code can crash (a library constructor
    // included). Without them a crash is still contained, just unexplained.
    if let Err(e) = crate::crash::install() {
        eprintln!("bulkhead-worker: crash reports unavailable: {e}");
    }

    // The load request is small; cap it accordingly before the plugin sets limits.
    let req = match frame::read_frame(&mut sock, &mut rx, 1 << 20) {
        Ok(true) => match HostMsg::decode(&rx) {
            Ok(HostMsg::Load(req)) => req,
            Ok(other) => return fail_load(&mut sock, &mut tx, format!("expected Load, got {other:?}")),
            Err(e) => return fail_load(&mut sock, &mut tx, e.to_string()),
        },
        Ok(false) => return 0,
        Err(e) => return fail_load(&mut sock, &mut tx, e.to_string()),
    };
    if req.protocol_version != PROTOCOL_VERSION {
        let why = LoadFailure::ProtocolVersion {
            host: req.protocol_version,
            worker: PROTOCOL_VERSION,
        };
        return send_load_failure(&mut sock, &mut tx, why);
    }
    crate::title::set(&req.label);
    // Map the shared region (sent right after the Load frame) before any plugin
    // code runs. If it cannot be mapped, say so in the handshake and use the socket.
    let region = if req.shm_capacity > 0 {
        let opened = shm::recv_fd(&sock).and_then(|fd| Region::open(fd.as_fd()));
        // The region's doorbell follows it, whether or not it could be mapped.
        let doorbell = shm::recv_fd(&sock);
        match opened.and_then(|mut r| {
            r.set_doorbell(doorbell?);
            Ok(r)
        }) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                eprintln!("bulkhead-worker: shared memory unavailable, using the socket: {e}");
                None
            }
        }
    } else {
        None
    };
    // The verified library, when the host sent one, follows as a sealed memfd.
    let library_fd = if req.library_fd {
        match shm::recv_fd(&sock) {
            Ok(fd) => Some(fd),
            Err(e) => return fail_load(&mut sock, &mut tx, format!("library descriptor not received: {e}")),
        }
    } else {
        None
    };
    // A sealed memfd is a verified copy; any other descriptor is the library
    // file the host opened at load, which the sandbox treats like the one it
    // would open itself (it loads through it, and names its inode to Landlock).
    let library_fd = match library_fd {
        Some(fd) if fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).is_err() => {
            sandbox::set_preopened_library(fd);
            None
        }
        other => other,
    };
    let path = match &library_fd {
        Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        None => PathBuf::from(OsStr::from_bytes(&req.path)),
    };
    crate::crash::set_library(&req.path);
    let max_in = req.max_output.saturating_add(ENVELOPE_OVERHEAD);
    // The sandbox and the limits, before the library is opened. With a pid
    // namespace this process becomes the outer waiter inside `enter`, and what
    // follows runs in the sandboxed worker. A verified library arrives as a
    // memfd: nothing on disk to bind into the sandbox's filesystem view.
    let on_disk = library_fd
        .is_none()
        .then(|| PathBuf::from(OsStr::from_bytes(&req.path)));
    let entered = match sandbox::enter(&req.sandbox, on_disk.as_deref()) {
        Ok(e) => e,
        Err(why) => return send_load_failure(&mut sock, &mut tx, why),
    };
    let own_user_ns = entered
        .report
        .state(bulkhead_shared::sandbox::Layer::UserNs)
        .is_enforced();
    if let Err(e) = setup::apply_limits(args, entered.helper_processes, own_user_ns) {
        return fail_load(&mut sock, &mut tx, e);
    }
    let path = entered.library.clone().unwrap_or(path);
    if let Err(e) = channel::install(&sock, max_in, region.clone()) {
        return fail_load(&mut sock, &mut tx, format!("cannot clone the socket: {e}"));
    }
    let calls_back;
    let plugin = match load::load(&req, &path) {
        Ok((plugin, mut info)) => {
            calls_back = !info.bound_imports.is_empty();
            info.shm = region.is_some();
            info.sandbox = entered.report;
            WorkerMsg::Loaded(Box::new(info)).encode(&mut tx);
            if sock.write_all(&tx).is_err() {
                return 0;
            }
            plugin
        }
        Err(why) => return send_load_failure(&mut sock, &mut tx, why),
    };
    drop(req);
    let s = Server {
        sock,
        rx,
        tx,
        plugin,
        max_in,
        calls_back,
    };
    match region {
        Some(region) => s.serve_shm(&region),
        None => s.serve_socket(),
    }
}

/// What the serve loop does after a socket request.
enum Step {
    Continue,
    Exit(u8),
    Shutdown,
}

struct Server {
    sock: UnixStream,
    rx: Vec<u8>,
    tx: Vec<u8>,
    plugin: Plugin,
    max_in: u32,
    /// The plugin has host imports bound: its calls may call back.
    calls_back: bool,
}

impl Server {
    /// Reads the next frame from the host; `None` ends the worker with this code.
    fn next_frame(&mut self) -> Result<(), u8> {
        match frame::read_frame(&mut self.sock, &mut self.rx, self.max_in) {
            Ok(true) => Ok(()),
            // The host closed the socket: nothing left to serve.
            Ok(false) => Err(0),
            Err(e) => {
                eprintln!("bulkhead-worker: bad frame from host: {e}");
                Err(EXIT_PROTOCOL)
            }
        }
    }

    fn serve_socket(mut self) -> u8 {
        loop {
            if let Err(code) = self.next_frame() {
                return code;
            }
            match self.handle_socket_frame(None) {
                Step::Continue => {}
                Step::Exit(code) => return code,
                Step::Shutdown => {
                    self.plugin.destroy();
                    return 0;
                }
            }
        }
    }

    /// Handles the request in `self.rx` and answers on the socket. `expect_id`
    /// is the id the region announced (shared-memory transport). `Some` ends the worker.
    fn handle_socket_frame(&mut self, expect_id: Option<u64>) -> Step {
        let rx = std::mem::take(&mut self.rx);
        let result = self.handle_msg(&rx, expect_id);
        self.rx = rx;
        result
    }

    fn handle_msg(&mut self, rx: &[u8], expect_id: Option<u64>) -> Step {
        let msg = match HostMsg::decode(rx) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("bulkhead-worker: bad message from host: {e}");
                return Step::Exit(EXIT_PROTOCOL);
            }
        };
        let id = match &msg {
            HostMsg::Call { id, .. }
            | HostMsg::StreamOpen { id, .. }
            | HostMsg::StreamNext { id }
            | HostMsg::StreamClose { id }
            | HostMsg::ClientCall { id, .. } => Some(*id),
            _ => None,
        };
        if expect_id.is_some() && id != expect_id {
            eprintln!("bulkhead-worker: expected the announced request, got {msg:?}");
            return Step::Exit(EXIT_PROTOCOL);
        }
        let (sock, tx) = (&mut self.sock, &mut self.tx);
        // The channel closes (waiting out an exchange in flight) before the answer is written.
        let answer = |id: u64| {
            move |outcome: Outcome<'_>| {
                channel::set_open(None);
                reply(sock, tx, id, outcome)
            }
        };
        // The plugin may reach the host (callbacks, pulls) only while the host
        // is listening on the socket for this request's answer.
        channel::set_open(Some(Via::Socket));
        let sent = match msg {
            HostMsg::Call { id, method, payload } => self.plugin.call(method, payload, None, answer(id)),
            HostMsg::StreamOpen {
                id,
                method,
                input,
                payload,
            } => self.plugin.stream_open(method, input, payload, answer(id)),
            HostMsg::StreamNext { id } => self.plugin.stream_next(answer(id)),
            HostMsg::StreamClose { id } => {
                self.plugin.close_stream();
                answer(id)(Outcome::Status { status: 0, output: &[] })
            }
            HostMsg::ClientCall { id, method, payload } => self.plugin.client_call(method, payload, answer(id)),
            HostMsg::Shutdown => {
                channel::set_open(None);
                return Step::Shutdown;
            }
            other => {
                channel::set_open(None);
                eprintln!("bulkhead-worker: unexpected message from host: {other:?}");
                return Step::Exit(EXIT_PROTOCOL);
            }
        };
        channel::set_open(None);
        if let Err(e) = sent {
            eprintln!("bulkhead-worker: cannot answer the host: {e}");
            return Step::Exit(0);
        }
        Step::Continue
    }
}
