//! Starting a worker: its shared region, its arguments, the load request,
//! fork-server or exec, the hand-over for reaping, and the handshake.
//!
//! Contract of [`WorkerProcess::start`]: it returns a worker that answered
//! `Loaded` with valid plugin information before the load timeout (and the
//! caller's deadline, if any), or an error; a worker that fails its
//! handshake is killed and reaped, and one that cannot be handed over for
//! reaping is killed and reaped here.
//!
//! Order: the region is created (none, or none creatable, means the socket
//! transport) and the socket pair, and a small load request goes into the
//! socket before the worker exists, so a worker that wakes up (a pre-forked
//! one, assigned at once) finds it waiting — all of it made ahead, off the
//! restart's path, once a plugin's worker has been restarted
//! ([`Launch::prepare_next`]); the worker is forked by its profile's
//! fork-server if one is running (its arguments travel over the server's
//! channel, never on a command line; a profile's first worker does not wait
//! for its server, which starts in the background) or else started with exec
//! on a spawner thread ([`spawner`](crate::spawner)); it is handed to the
//! event loops; a large load request is written once the worker runs; the
//! handshake's answer (looked for without sleeping at first, from a forked
//! worker) chooses the link's [`Way`]. A start from a ready blank can also be
//! begun on its own ([`WorkerProcess::begin_from_blank`]: a restart's head
//! start, handed out by a failing call) and finished later
//! ([`WorkerProcess::finish`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_shared::abi::MAX_METHOD_COUNT;
use bulkhead_shared::protocol::{HostMsg, LoadRequest, PluginInfoWire, WorkerMsg, PROTOCOL_VERSION};
use bulkhead_shared::shm::{self, Region};
use bulkhead_shared::PARENT_PID_ENV;

use super::reap::{adopt, Reapee, Spawned, EOF_GRACE, STDERR_GRACE};
use super::WorkerProcess;
use crate::error::{LoadError, ProtocolError};
use crate::forkserver::ForkServerSlot;
use crate::hostfn::HostImports;
use crate::link::{msg_name, write_all, IoFail, Link, Way};
use crate::locate::WorkerExe;
use crate::output::{self, OutputCallback};
use crate::spawner::spawn_on_spawner;
use crate::violations::ViolationSink;

/// How long a forked worker's handshake answer is looked for before the
/// host sleeps until it comes: a pre-forked worker answers within about this
/// long once assigned, and a wake-up from sleep costs tens of µs on a VM (an
/// exec'd worker takes milliseconds: the host sleeps at once).
const HANDSHAKE_SPIN: Duration = Duration::from_micros(600);
/// Largest handshake answer accepted.
const MAX_HANDSHAKE_FRAME: u32 = 1 << 20;

/// Everything needed to start a worker for one plugin.
pub(crate) struct Launch {
    pub worker: WorkerExe,
    /// Arguments before the worker's own (the self-worker marker, if any).
    pub worker_args: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub path: PathBuf,
    pub label: Arc<str>,
    /// The load request; its `shm_capacity` is set per worker.
    pub load: LoadRequest,
    /// Bytes per direction of the shared-memory region; 0 = socket transport.
    pub shm_capacity: u32,
    pub load_timeout: Duration,
    pub max_frame: u32,
    pub output: Option<OutputCallback>,
    /// The plugin's output budget, shared by its workers.
    pub output_budget: Arc<output::Meter>,
    /// Where the workers' seccomp violation reports go.
    pub violations: Option<ViolationSink>,
    /// The library, pinned at load: the verified sealed memfd of a signed
    /// plugin, or the file opened once; sent to every worker.
    pub library: Option<Arc<OwnedFd>>,
    /// Host interfaces offered to the plugin; with any, every call is a socket conversation.
    pub imports: Option<Arc<HostImports>>,
    /// The fork-server of this plugin's sandbox profile, if fork-servers are on.
    pub fork_server: Option<Arc<ForkServerSlot>>,
    /// The next worker's parts, when made ahead ([`Launch::prepare_next`]).
    pub next_parts: Mutex<Option<Parts>>,
}

/// A region and the descriptor that travels to the worker.
type NewRegion = Option<(Arc<Region>, OwnedFd)>;

/// The host's and the worker's ends of a new worker's socket, and whether
/// (and how) the load request was written into it ahead.
type Ends = (UnixStream, UnixStream, Option<Result<(), IoFail>>);

/// What a worker needs from the host before it exists: its region, its
/// encoded load request, and its socket with a small request already in it.
/// Made when the worker starts, or ahead of time ([`Launch::prepare_next`]).
pub(crate) struct Parts {
    region: NewRegion,
    load: Vec<u8>,
    host_end: UnixStream,
    worker_end: UnixStream,
    sent: Option<Result<(), IoFail>>,
}

impl Parts {
    /// The region, the encoded load request, and the socket's ends.
    fn split(self) -> (NewRegion, Vec<u8>, Ends) {
        (self.region, self.load, (self.host_end, self.worker_end, self.sent))
    }

    fn make(launch: &Launch, deadline: Instant) -> io::Result<Parts> {
        let region = create_region(launch.shm_capacity);
        let load = encode_load(launch, &region);
        let (host_end, worker_end) = UnixStream::pair()?;
        let sent = presend(&load).then(|| send_load(&host_end, &load, launch, &region, deadline));
        Ok(Parts {
            region,
            load,
            host_end,
            worker_end,
            sent,
        })
    }
}

impl Launch {
    /// Makes the next worker's [`Parts`] now, off the path of the start that
    /// will use them: after a restart (a plugin that crashed once may crash
    /// again), so the next restart skips the region's and the socket's
    /// set-up. Holds one region and two descriptors until then.
    pub(crate) fn prepare_next(&self) {
        let mut next = self.next_parts.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_none() {
            *next = Parts::make(self, Instant::now() + self.load_timeout).ok();
        }
    }

    /// Asks this plugin's fork-server for the blanks its starts took (see
    /// [`WorkerProcess::start_leaving_blanks`]).
    pub(crate) fn replenish(&self) {
        if let Some(server) = &self.fork_server {
            server.replenish();
        }
    }

    /// The parts made ahead, if any, else new ones.
    fn take_parts(&self, deadline: Instant) -> io::Result<Parts> {
        let ready = self.next_parts.lock().unwrap_or_else(|e| e.into_inner()).take();
        match ready {
            Some(parts) => Ok(parts),
            None => Parts::make(self, deadline),
        }
    }
}

/// A worker started and not yet watched, with what its handshake needs
/// ([`WorkerProcess::finish`]). Dropped unfinished, the worker is killed and
/// reaped.
pub(crate) struct Begun {
    started: Option<Started>,
    region: NewRegion,
    load: Vec<u8>,
    forked: bool,
    /// When its start began, and how long its handshake may take from then.
    at: Instant,
    limit: Duration,
}

impl Drop for Begun {
    fn drop(&mut self) {
        if let Some(started) = self.started.take() {
            started.spawned.abandon();
        }
    }
}

/// A started worker, before it is watched: its process and the host's end of
/// its socket; `sent` says whether (and how) the load request was written.
struct Started {
    spawned: Spawned,
    host_end: UnixStream,
    sent: Option<Result<(), IoFail>>,
}

impl WorkerProcess {
    /// Starts a worker and completes the handshake before `launch.load_timeout`.
    /// The handshake must finish within the load timeout and, if given, before
    /// `deadline` (a call's own deadline when a call starts a replacement).
    pub(crate) fn start(
        launch: &Launch,
        deadline: Option<Instant>,
    ) -> Result<(WorkerProcess, PluginInfoWire), LoadError> {
        let started = Self::start_leaving_blanks(launch, deadline);
        // A blank taken is replaced once this start is over, whatever its end.
        launch.replenish();
        started
    }

    /// [`start`](Self::start), except that a fork-server blank it took is
    /// not replaced yet: the caller calls [`Launch::replenish`] once the new
    /// worker's first call had the CPUs (a restart, whose caller waits).
    pub(crate) fn start_leaving_blanks(
        launch: &Launch,
        deadline: Option<Instant>,
    ) -> Result<(WorkerProcess, PluginInfoWire), LoadError> {
        let started = Instant::now();
        let limit = within(launch.load_timeout, started, deadline);
        let deadline = started + limit;
        let (region, load, ends) = launch.take_parts(deadline).map_err(|e| spawn_err(launch, e))?.split();
        let server = launch.fork_server.as_ref().filter(|server| server.ready(deadline));
        let (started_worker, forked) = match server {
            Some(server) => match fork(server, launch, ends, false, deadline) {
                Some(forked) => (forked, true),
                // (The socket went with the failed request: a new one.)
                None => (exec(launch, &region, &load, None, deadline)?, false),
            },
            None => (exec(launch, &region, &load, Some(ends), deadline)?, false),
        };
        let begun = Begun {
            started: Some(started_worker),
            region,
            load,
            forked,
            at: started,
            limit,
        };
        Self::finish(begun, launch, None)
    }

    /// A worker started ahead by a fork-server blank that is ready now, with
    /// no waiting: `None` if the profile's server is not running or has no
    /// blank (or it failed). The worker loads while the caller goes on;
    /// [`finish`](Self::finish) completes its handshake. The blank is not
    /// replaced yet ([`Launch::replenish`]).
    pub(crate) fn begin_from_blank(launch: &Launch) -> Option<Begun> {
        let server = launch.fork_server.as_ref().filter(|server| server.is_running())?;
        let started = Instant::now();
        let deadline = started + launch.load_timeout;
        let (region, load, ends) = launch.take_parts(deadline).ok()?.split();
        let started_worker = fork(server, launch, ends, true, deadline)?;
        Some(Begun {
            started: Some(started_worker),
            region,
            load,
            forked: true,
            at: started,
            limit: launch.load_timeout,
        })
    }

    /// Watches a begun worker and completes its handshake within its limit
    /// (and before `deadline`, if given: a call's, when a call finishes it).
    pub(crate) fn finish(
        mut begun: Begun,
        launch: &Launch,
        deadline: Option<Instant>,
    ) -> Result<(WorkerProcess, PluginInfoWire), LoadError> {
        let (started, forked) = (begun.at, begun.forked);
        let limit = within(begun.limit, started, deadline);
        let deadline = started + limit;
        let Some(Started {
            spawned,
            host_end,
            sent,
        }) = begun.started.take()
        else {
            unreachable!("a begun worker is finished once")
        };
        let region = begun.region.take();
        let mut w = watch(launch, spawned, host_end, &region)?;
        // (A large request is written now that the worker is running.)
        let sent = sent.unwrap_or_else(|| send_load(w.link.sock(), &begun.load, launch, &region, deadline));
        match w.handshake(launch, region, sent, forked, deadline) {
            Ok(info) => {
                if let Some(server) = launch.fork_server.as_ref().filter(|_| !forked) {
                    server.first_worker_ready();
                }
                Ok((w, info))
            }
            Err(e) => {
                w.kill_and_reap();
                Err(match e {
                    HandshakeFail::Load(e) => e,
                    HandshakeFail::Timeout => LoadError::Timeout {
                        path: launch.path.clone(),
                        elapsed: started.elapsed(),
                        limit,
                    },
                })
            }
        }
    }

    fn handshake(
        &mut self,
        launch: &Launch,
        region: NewRegion,
        sent: Result<(), IoFail>,
        forked: bool,
        deadline: Instant,
    ) -> Result<PluginInfoWire, HandshakeFail> {
        let path = || launch.path.clone();
        let protocol = |error| HandshakeFail::Load(LoadError::Protocol { path: path(), error });
        if forked && sent.is_ok() {
            self.link.spin_until_readable(HANDSHAKE_SPIN);
        }
        let got = sent.and_then(|()| self.link.receive_frame(MAX_HANDSHAKE_FRAME, deadline));
        let len = match got {
            Ok(len) => len,
            Err(IoFail::Timeout) => return Err(HandshakeFail::Timeout),
            Err(IoFail::Eof) | Err(IoFail::Io(_)) => return Err(self.died_while_loading(launch, deadline)),
            Err(IoFail::Frame(e)) => return Err(protocol(e)),
        };
        match WorkerMsg::decode(&self.link.rx[..len]) {
            Ok(WorkerMsg::Loaded(info)) => {
                if info.protocol_version != PROTOCOL_VERSION {
                    return Err(protocol(ProtocolError::Version {
                        host: PROTOCOL_VERSION,
                        worker: info.protocol_version,
                    }));
                }
                validate_info(&info).map_err(|m| protocol(ProtocolError::BadInfo(m)))?;
                let offered = launch.load.host_imports.len();
                if let Some(bad) = info.bound_imports.iter().find(|&&i| i as usize >= offered) {
                    return Err(protocol(ProtocolError::BadInfo(format!(
                        "bound import {bad} of {offered} offered"
                    ))));
                }
                if !info.unbound_imports.is_empty() && !launch.load.allow_unbound_imports {
                    return Err(protocol(ProtocolError::BadInfo(
                        "unbound imports reported, but none were allowed".into(),
                    )));
                }
                if info.unbound_imports.len() > bulkhead_shared::abi::MAX_HOST_IMPORTS as usize {
                    return Err(protocol(ProtocolError::BadInfo(format!(
                        "{} unbound imports reported",
                        info.unbound_imports.len()
                    ))));
                }
                // The worker says whether it mapped the region; if not, socket only.
                let region = region.filter(|_| info.shm).map(|(r, _)| r);
                self.link.set_way(Way::choose(region, launch.imports.clone()));
                Ok(*info)
            }
            Ok(WorkerMsg::LoadFailed(reason)) => {
                // The worker exits after saying why; reap it.
                Err(HandshakeFail::Load(LoadError::Rejected { path: path(), reason }))
            }
            Ok(other) => Err(protocol(ProtocolError::Unexpected { got: msg_name(&other) })),
            Err(e) => Err(protocol(ProtocolError::Malformed(e.to_string()))),
        }
    }

    fn died_while_loading(&self, launch: &Launch, deadline: Instant) -> HandshakeFail {
        let wait_until = deadline.min(Instant::now() + EOF_GRACE);
        match self.proc.wait(wait_until) {
            Some(exit) => {
                let stderr = self.stderr.snapshot_after_eof(Instant::now() + STDERR_GRACE);
                HandshakeFail::Load(LoadError::WorkerDied {
                    path: launch.path.clone(),
                    crash: self.stderr.crash_for(&exit),
                    exit,
                    stderr,
                })
            }
            None if Instant::now() >= deadline => HandshakeFail::Timeout,
            None => HandshakeFail::Load(LoadError::Protocol {
                path: launch.path.clone(),
                error: ProtocolError::ChannelClosed,
            }),
        }
    }
}

/// A start's time limit: `limit` from `started`, cut short by `deadline` (a
/// call's, when a call starts the worker).
fn within(limit: Duration, started: Instant, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => limit.min(d.saturating_duration_since(started)),
        None => limit,
    }
}

/// The shared region of `capacity` bytes per direction, if any: 0, or a
/// region that cannot be created (no memfd), means the socket transport.
fn create_region(capacity: u32) -> NewRegion {
    if capacity == 0 {
        return None;
    }
    Region::create(capacity).ok().map(|(r, fd)| (Arc::new(r), fd))
}

/// The encoded load request, with the region's capacity.
fn encode_load(launch: &Launch, region: &NewRegion) -> Vec<u8> {
    let mut load = Vec::new();
    HostMsg::Load(LoadRequest {
        shm_capacity: region.as_ref().map_or(0, |(r, _)| r.capacity() as u32),
        ..launch.load.clone()
    })
    .encode(&mut load);
    load
}

/// Whether the load request goes into the socket before the worker exists.
fn presend(load: &[u8]) -> bool {
    load.len() <= PRESEND_MAX
}

/// A worker forked by the profile's fork-server `server`, which is ready
/// ([`ForkServerSlot::ready`]: the profile's first worker is exec'd, and its
/// server starts once that worker answered), given its end of the socket (a
/// verified library travels as a memfd after the load request, so the
/// on-disk file is not handed over then). `None` if the server could not
/// fork it.
fn fork(
    server: &ForkServerSlot,
    launch: &Launch,
    (host_end, worker_end, sent): Ends,
    blank_only: bool,
    deadline: Instant,
) -> Option<Started> {
    if let Some(Err(_)) = sent {
        return None;
    }
    let library = launch.library.is_none().then_some(launch.path.as_path());
    let mut args = vec!["--parent-pid".to_string(), std::process::id().to_string()];
    args.extend(launch.args.iter().cloned());
    let f = server.spawn(&args, OwnedFd::from(worker_end), library, blank_only, deadline)?;
    Some(Started {
        spawned: Spawned {
            pid: f.pid,
            reap: Reapee::Pid,
            stdout: OwnedFd::from(f.stdout),
            stderr: OwnedFd::from(f.stderr),
        },
        host_end,
        sent,
    })
}

/// A worker started with exec (on a spawner thread), its socket end on stdin:
/// `ends` if given (made ahead, the load request possibly in it), else a new pair.
fn exec(
    launch: &Launch,
    region: &NewRegion,
    load: &[u8],
    ends: Option<Ends>,
    deadline: Instant,
) -> Result<Started, LoadError> {
    let (host_end, worker_end, sent) = match ends {
        Some(ends) => ends,
        None => {
            let (host_end, worker_end) = UnixStream::pair().map_err(|e| spawn_err(launch, e))?;
            let sent = presend(load).then(|| send_load(&host_end, load, launch, region, deadline));
            (host_end, worker_end, sent)
        }
    };
    let mut cmd = launch.worker.command();
    // The host's pid goes into the environment, not the command line (see
    // `PARENT_PID_ENV`).
    cmd.args(&launch.worker_args)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .stdin(Stdio::from(OwnedFd::from(worker_end)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = spawn_on_spawner(cmd).map_err(|e| spawn_err(launch, e))?;
    Ok(Started {
        spawned: Spawned::from_child(child),
        host_end,
        sent,
    })
}

/// Hands the started worker to the event loops (its exit, its output) and
/// wraps it, its link still on the socket. A worker that cannot be watched
/// is killed and reaped here.
fn watch(
    launch: &Launch,
    spawned: Spawned,
    host_end: UnixStream,
    region: &NewRegion,
) -> Result<WorkerProcess, LoadError> {
    let pid = spawned.pid;
    let wake = match host_end.try_clone() {
        Ok(wake) => wake,
        Err(e) => {
            // Nothing watches this worker yet: kill it and reap it here.
            spawned.abandon();
            return Err(spawn_err(launch, e));
        }
    };
    let (proc, stderr) = adopt(
        spawned,
        launch.label.clone(),
        launch.output.clone(),
        launch.output_budget.clone(),
        launch.violations.clone(),
        wake,
        region.as_ref().map(|(r, _)| r.clone()),
    );
    host_end.set_nonblocking(true).map_err(|e| spawn_err(launch, e))?;
    Ok(WorkerProcess {
        pid,
        link: Link::new(host_end, launch.max_frame),
        proc,
        stderr,
        slot: 0,
        last_used: super::Tick::now(),
        cpu_seen: None,
    })
}

/// A failure to start the worker.
fn spawn_err(launch: &Launch, e: io::Error) -> LoadError {
    LoadError::Spawn {
        worker: launch.worker.path().to_path_buf(),
        message: e.to_string(),
    }
}

/// Load requests up to this size are written before the worker exists (the
/// socket buffers them); larger ones (a big config) after it is running.
const PRESEND_MAX: usize = 32 * 1024;

/// Writes the load request, then the region's and the verified library's
/// descriptors, into the host's end of a worker's socket.
fn send_load(
    sock: &UnixStream,
    load: &[u8],
    launch: &Launch,
    region: &NewRegion,
    deadline: Instant,
) -> Result<(), IoFail> {
    write_all(sock, load, deadline)?;
    if let Some((region, fd)) = region {
        shm::send_fd(sock, fd.as_fd()).map_err(IoFail::Io)?;
        // Every region has its doorbell; it follows the region's descriptor.
        if let Some(doorbell) = region.doorbell() {
            shm::send_fd(sock, doorbell).map_err(IoFail::Io)?;
        }
    }
    if let Some(fd) = &launch.library {
        shm::send_fd(sock, fd.as_fd()).map_err(IoFail::Io)?;
    }
    Ok(())
}

enum HandshakeFail {
    Load(LoadError),
    Timeout,
}

fn validate_info(info: &PluginInfoWire) -> Result<(), String> {
    if info.method_count > MAX_METHOD_COUNT {
        return Err(format!("method_count {} exceeds {MAX_METHOD_COUNT}", info.method_count));
    }
    if !info.method_metadata.is_empty() && info.method_metadata.len() != info.method_count as usize {
        return Err(format!(
            "{} method metadata entries for {} methods",
            info.method_metadata.len(),
            info.method_count
        ));
    }
    Ok(())
}
