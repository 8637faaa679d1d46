//! One worker process: spawn, handshake, kill, reap.
//!
//! Reaping is owned by the reaper loop ([`event_loop`](crate::event_loop)): it
//! waits on a pidfd per worker, which becomes readable when the worker has
//! exited but is not yet reaped — like `waitid(WEXITED | WNOWAIT)` (used by the
//! fallback thread where there is no pidfd), it observes the exit *without*
//! reaping, so the pid (and the process group named after it) cannot be
//! recycled yet. Then, under the same lock every killer takes, it SIGKILLs the
//! whole process group (the plugin's own children die too), reaps the worker
//! (`wait4`, with its rusage), records its [`Exit`], shuts the host's socket end
//! so a reader blocked on it wakes at once, marks the shared region dead and
//! wakes every waiter. A signal is therefore never sent to a pid that has been
//! reaped.
//!
//! Any direct child of the host can be handed over this way ([`adopt`]): a
//! worker spawned by `std::process::Command` (reaped through its `Child`, which
//! gives the rusage) or one created otherwise, known only by pid.
//!
//! Workers are spawned from long-lived threads (one per core, at most four):
//! Linux delivers the parent-death signal when the *thread* that forked the
//! child exits, so spawning from a caller's short-lived thread would kill the
//! worker with it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_shared::abi::MAX_METHOD_COUNT;
use bulkhead_shared::protocol::{HostMsg, LoadRequest, PluginInfoWire, WorkerMsg, PROTOCOL_VERSION};
use bulkhead_shared::shm::{self, Region};
use bulkhead_shared::PARENT_PID_ENV;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::call::{self, IoFail};
use crate::crash::CrashReport;
use crate::error::{Exit, LoadError, ProtocolError};
use crate::event_loop::{self, Started};
use crate::forkserver::ForkServerSlot;
use crate::hostfn::HostImports;
use crate::locate::WorkerExe;
use crate::output::{self, OutputCallback, StderrTail};
use crate::usage::ResourceUsage;
use crate::violations::ViolationSink;

/// How long to wait for a worker that closed its socket to actually exit
/// before concluding it closed the socket and kept running.
pub(crate) const EOF_GRACE: Duration = Duration::from_millis(1000);
/// How long to wait for the stderr pipe to drain after the worker died.
const STDERR_GRACE: Duration = Duration::from_millis(500);
/// Upper bound on waiting for the kernel to deliver a SIGKILL'd worker's exit.
pub(crate) const KILL_REAP_BOUND: Duration = Duration::from_secs(10);
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
}

/// Exit bookkeeping shared between the watcher (which reaps) and killers.
pub(crate) struct ProcState {
    pid: u32,
    exit: Mutex<Option<Exit>>,
    /// What the worker used, recorded by the reaper before it wakes waiters.
    usage: Mutex<Option<ResourceUsage>>,
    /// Set while a call runs on the worker (shutdown kills only these early).
    pub(crate) busy: AtomicBool,
    // Never sent on: the reaper drops its sender after recording the exit, which
    // wakes every waiter at once.
    exited: Receiver<()>,
}

impl ProcState {
    /// SIGKILLs the worker's process group unless the worker has been reaped.
    pub(crate) fn kill(&self) {
        let exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_none() {
            // The leader is alive or an unreaped zombie: its pid, and so the
            // group id, cannot have been recycled.
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// Waits until `deadline` for the worker to be reaped.
    pub(crate) fn wait(&self, deadline: Instant) -> Option<Exit> {
        match self.exited.recv_deadline(deadline) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => self.exit(),
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    /// The exit, if reaped.
    pub(crate) fn exit(&self) -> Option<Exit> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the worker used, once reaped.
    pub(crate) fn usage(&self) -> Option<ResourceUsage> {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

/// A running worker that finished its handshake.
pub(crate) struct WorkerProcess {
    pub(crate) pid: u32,
    pub(crate) sock: UnixStream,
    pub(crate) proc: Arc<ProcState>,
    pub(crate) stderr: StderrTail,
    pub(crate) rx: Vec<u8>,
    pub(crate) tx: Vec<u8>,
    pub(crate) next_id: u64,
    pub(crate) max_frame: u32,
    /// The shared-memory data path, if the worker mapped it.
    pub(crate) shm: Option<Arc<Region>>,
    /// Host interfaces the plugin may call back into.
    pub(crate) imports: Option<Arc<HostImports>>,
    /// Every call is a socket conversation (the plugin imports host interfaces).
    pub(crate) sessions: bool,
    /// The pool slot this worker serves (set by the pool).
    pub(crate) slot: usize,
    /// When it last finished a call (or started).
    pub(crate) last_used: Instant,
    /// The idle-CPU watch's last reading: when, and the CPU time used by then.
    pub(crate) cpu_seen: Option<(Instant, Duration)>,
}

type SpawnJob = (Command, Sender<io::Result<Child>>);

/// Most spawner threads.
const MAX_SPAWNERS: usize = 4;

/// The spawner threads: one per core, at most [`MAX_SPAWNERS`], started on
/// first use and never ending (see the module docs). More than one so a batch
/// of loads is not serialised on a single fork/exec at a time.
fn spawner() -> Option<&'static Sender<SpawnJob>> {
    static SPAWNER: Started<Sender<SpawnJob>> = Started::new();
    SPAWNER.get_or_start(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<SpawnJob>();
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_SPAWNERS);
        let mut started = 0;
        for _ in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name("bulkhead-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let child = cmd.spawn();
                        // Close our copy of the worker's socket end before anyone
                        // waits on the host end, so a dead worker reads as EOF.
                        drop(cmd);
                        let _ = reply.send(child);
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        // None started: spawning fails now and is tried again next time.
        (started > 0).then_some(tx)
    })
}

pub(crate) fn spawn_on_spawner(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    spawner()
        .ok_or_else(|| io::Error::other("cannot start a spawner thread"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv().map_err(|_| io::Error::other("spawner thread is gone"))?
}

impl WorkerProcess {
    /// Starts a worker and completes the handshake before `launch.load_timeout`.
    /// The handshake must finish within the load timeout and, if given, before
    /// `deadline` (a call's own deadline when a call starts a replacement).
    pub(crate) fn start(
        launch: &Launch,
        deadline: Option<Instant>,
    ) -> Result<(WorkerProcess, PluginInfoWire), LoadError> {
        let started = Instant::now();
        let limit = match deadline {
            Some(d) => launch.load_timeout.min(d.saturating_duration_since(started)),
            None => launch.load_timeout,
        };
        let deadline = started + limit;
        let spawn_err = |e: io::Error| LoadError::Spawn {
            worker: launch.worker.path().to_path_buf(),
            message: e.to_string(),
        };
        // A region that cannot be created (no memfd) means the socket transport.
        let region = if launch.shm_capacity > 0 {
            Region::create(launch.shm_capacity)
                .ok()
                .map(|(r, fd)| (Arc::new(r), fd))
        } else {
            None
        };
        // For a forked worker: its arguments travel over the fork-server's
        // channel, never on a command line.
        let mut args = vec!["--parent-pid".to_string(), std::process::id().to_string()];
        args.extend(launch.args.iter().cloned());
        // Forked by the profile's fork-server if there is one (a verified
        // library travels as a memfd after the load request, so the on-disk
        // file is not handed over then); else started with exec.
        // A small load request goes into the socket before the worker exists,
        // so a worker that wakes up (a pre-forked one, assigned at once) finds
        // it waiting instead of blocking for it.
        let mut load = Vec::new();
        HostMsg::Load(LoadRequest {
            shm_capacity: region.as_ref().map_or(0, |(r, _)| r.capacity() as u32),
            ..launch.load.clone()
        })
        .encode(&mut load);
        let presend = load.len() <= PRESEND_MAX;
        let mut sent = None;
        let forked = launch.fork_server.as_ref().and_then(|server| {
            let (host_end, worker_end) = UnixStream::pair().ok()?;
            if presend {
                send_load(&host_end, &load, launch, &region, deadline).ok()?;
            }
            let library = launch.library.is_none().then_some(launch.path.as_path());
            let forked = server.spawn(&args, OwnedFd::from(worker_end), library, deadline)?;
            Some((host_end, forked))
        });
        let (host_end, spawned) = match forked {
            Some((host_end, f)) => {
                if presend {
                    sent = Some(Ok(()));
                }
                (
                    host_end,
                    Spawned {
                        pid: f.pid,
                        reap: Reapee::Pid,
                        stdout: OwnedFd::from(f.stdout),
                        stderr: OwnedFd::from(f.stderr),
                    },
                )
            }
            None => {
                let (host_end, worker_end) = UnixStream::pair().map_err(spawn_err)?;
                if presend {
                    sent = Some(send_load(&host_end, &load, launch, &region, deadline));
                }
                let mut cmd = launch.worker.command();
                // The host's pid goes into the environment, not the command
                // line (see `PARENT_PID_ENV`).
                cmd.args(&launch.worker_args)
                    .args(&launch.args)
                    .env_clear()
                    .envs(launch.env.iter().map(|(k, v)| (k, v)))
                    .env(PARENT_PID_ENV, std::process::id().to_string())
                    .stdin(Stdio::from(OwnedFd::from(worker_end)))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                let child = spawn_on_spawner(cmd).map_err(spawn_err)?;
                (host_end, Spawned::from_child(child))
            }
        };
        let pid = spawned.pid;
        let wake = host_end.try_clone();
        let region_for_reaper = region.as_ref().map(|(r, _)| r.clone());
        let (proc, stderr) = match wake {
            Ok(wake) => adopt(
                spawned,
                launch.label.clone(),
                launch.output.clone(),
                launch.output_budget.clone(),
                launch.violations.clone(),
                wake,
                region_for_reaper,
            ),
            Err(e) => {
                // Nothing watches this worker yet: kill it and reap it here.
                spawned.abandon();
                return Err(spawn_err(e));
            }
        };
        host_end.set_nonblocking(true).map_err(spawn_err)?;
        let mut w = WorkerProcess {
            pid,
            sock: host_end,
            proc,
            stderr,
            rx: Vec::new(),
            tx: Vec::new(),
            next_id: 1,
            max_frame: launch.max_frame,
            shm: None,
            imports: launch.imports.clone(),
            sessions: launch.imports.is_some(),
            slot: 0,
            last_used: Instant::now(),
            cpu_seen: None,
        };
        // (A large request is written now that the worker is running.)
        let sent = sent.unwrap_or_else(|| send_load(&w.sock, &load, launch, &region, deadline));
        match w.handshake(launch, region, sent, deadline) {
            Ok(info) => Ok((w, info)),
            Err(e) => {
                w.kill_and_reap();
                let e = match e {
                    HandshakeFail::Load(e) => e,
                    HandshakeFail::Timeout => LoadError::Timeout {
                        path: launch.path.clone(),
                        elapsed: started.elapsed(),
                        limit,
                    },
                };
                Err(e)
            }
        }
    }

    fn handshake(
        &mut self,
        launch: &Launch,
        region: Option<(Arc<Region>, OwnedFd)>,
        sent: Result<(), IoFail>,
        deadline: Instant,
    ) -> Result<PluginInfoWire, HandshakeFail> {
        let path = || launch.path.clone();
        let protocol = |error| HandshakeFail::Load(LoadError::Protocol { path: path(), error });
        let got = sent.and_then(|()| call::read_frame(&self.sock, &mut self.rx, MAX_HANDSHAKE_FRAME, deadline));
        let len = match got {
            Ok(len) => len,
            Err(IoFail::Timeout) => return Err(HandshakeFail::Timeout),
            Err(IoFail::Eof) | Err(IoFail::Io(_)) => return Err(self.died_while_loading(launch, deadline)),
            Err(IoFail::Frame(e)) => return Err(protocol(e)),
        };
        match WorkerMsg::decode(&self.rx[..len]) {
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
                self.shm = region.filter(|_| info.shm).map(|(r, _)| r);
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

    /// The exit, stderr tail and crash report of a worker whose socket
    /// reached EOF, or `None` if it is still running after [`EOF_GRACE`].
    /// The report's lines precede the worker's death on its stderr, so
    /// waiting (boundedly) for stderr's end, as for the tail, collects them.
    pub(crate) fn exit_after_eof(&self) -> Option<(Exit, String, Option<Box<CrashReport>>)> {
        let exit = self.proc.wait(Instant::now() + EOF_GRACE)?;
        let stderr = self.stderr.snapshot_after_eof(Instant::now() + STDERR_GRACE);
        let crash = self.stderr.crash_for(&exit);
        Some((exit, stderr, crash))
    }

    /// Rings the worker's doorbell without work, so it is awake (spinning) for
    /// the call that follows. A no-op on the socket transport.
    pub(crate) fn wake(&self) {
        if let Some(region) = &self.shm {
            region.poke();
        }
    }

    /// SIGKILLs the process group and waits for the reaper. Returns the exit.
    pub(crate) fn kill_and_reap(&self) -> Option<Exit> {
        self.proc.kill();
        self.proc.wait(Instant::now() + KILL_REAP_BOUND)
    }

    /// After the worker has been reaped: waits briefly for its output readers
    /// to finish, so no descriptor of a dead worker outlives it in the host.
    pub(crate) fn wait_drained(&self) {
        self.stderr.wait_drained(Instant::now() + STDERR_GRACE);
    }

    /// Polite shutdown: a `Shutdown` frame, up to `grace` for the worker to exit,
    /// then SIGKILL to the group. Returns the exit and whether it was forced.
    pub(crate) fn shutdown(mut self, grace: Duration) -> (u32, Option<Exit>, bool) {
        let deadline = Instant::now() + grace;
        match &self.shm {
            Some(region) => region.post_request(shm::REQ_SHUTDOWN, 0, 0, &[]),
            None => {
                HostMsg::Shutdown.encode(&mut self.tx);
                let _ = call::write_all(&self.sock, &self.tx, deadline);
            }
        }
        if let Some(exit) = self.proc.wait(deadline) {
            self.wait_drained();
            return (self.pid, Some(exit), false);
        }
        let exit = self.kill_and_reap();
        self.wait_drained();
        (self.pid, exit, true)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Never leave a worker behind: the reaper thread collects it.
        self.proc.kill();
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
    region: &Option<(Arc<Region>, OwnedFd)>,
    deadline: Instant,
) -> Result<(), IoFail> {
    call::write_all(sock, load, deadline)?;
    if let Some((_, fd)) = region {
        shm::send_fd(sock, fd.as_fd()).map_err(IoFail::Io)?;
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

pub(crate) fn msg_name(m: &WorkerMsg<'_>) -> &'static str {
    match m {
        WorkerMsg::Loaded(_) => "Loaded",
        WorkerMsg::LoadFailed(_) => "LoadFailed",
        WorkerMsg::Reply { .. } => "Reply",
        WorkerMsg::Fault { .. } => "Fault",
        WorkerMsg::Callback { .. } => "Callback",
        WorkerMsg::Pull => "Pull",
    }
}

/// A freshly created worker process, not yet watched: a direct child of the
/// host, unreaped, leading its own process group, with its stdout and stderr
/// pipes.
pub(crate) struct Spawned {
    /// The worker's pid (= its process group id).
    pub(crate) pid: u32,
    /// How to reap it.
    pub(crate) reap: Reapee,
    /// Read end of its stdout pipe.
    pub(crate) stdout: OwnedFd,
    /// Read end of its stderr pipe.
    pub(crate) stderr: OwnedFd,
}

/// How a worker is reaped.
pub(crate) enum Reapee {
    /// Spawned by `std::process::Command`: reaped through the `Child` with
    /// `wait4`, which also gives its rusage.
    Child(Child),
    /// Any other direct child (a fork-server's worker, made with
    /// `CLONE_PARENT`), reaped by pid with `wait4` (`bulkhead_shared::reap`),
    /// which gives its rusage too.
    Pid,
}

impl Spawned {
    /// Takes a `Child` spawned with piped stdout and stderr.
    pub(crate) fn from_child(mut child: Child) -> Spawned {
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Spawned {
            pid: child.id(),
            stdout: OwnedFd::from(stdout),
            stderr: OwnedFd::from(stderr),
            reap: Reapee::Child(child),
        }
    }

    /// Kills and reaps a worker nobody watches yet (a failed start).
    fn abandon(self) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        crate::strays::adopt_group(self.pid);
        let mut reap = self.reap;
        let _ = reap.reap(self.pid);
    }
}

impl Reapee {
    /// Reaps the (exited) worker: its exit and, if known, its usage.
    fn reap(&mut self, pid: u32) -> (Exit, Option<ResourceUsage>) {
        let killed = Exit::Signal {
            signal: Signal::SIGKILL as i32,
            core_dumped: false,
        };
        match self {
            // wait4 reaps and returns the kernel's rusage of the worker and of
            // the descendants it waited for.
            Reapee::Child(child) => loop {
                match wait4::Wait4::wait4(child) {
                    Ok(r) => {
                        let usage = ResourceUsage {
                            user: r.rusage.utime,
                            system: r.rusage.stime,
                            max_rss: r.rusage.maxrss,
                        };
                        break (Exit::from_status(r.status), Some(usage));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Only possible if someone else reaped it; report it as killed.
                    Err(_) => break (killed, None),
                }
            },
            Reapee::Pid => match bulkhead_shared::reap::wait4(pid) {
                Ok(r) => {
                    let usage = ResourceUsage {
                        user: r.user,
                        system: r.system,
                        max_rss: r.max_rss,
                    };
                    (Exit::from_status(r.status), Some(usage))
                }
                // Only possible if someone else reaped it; report it as killed.
                Err(_) => (killed, None),
            },
        }
    }
}

/// Hands a freshly created worker to the event loops: its exit to the reaper
/// loop, its output pipes to the output loop. `wake` is a clone of the host's
/// socket end (shut down once the worker is reaped); `region` is marked dead
/// then. Returns the exit bookkeeping and the stderr tail.
pub(crate) fn adopt(
    spawned: Spawned,
    label: Arc<str>,
    output: Option<OutputCallback>,
    meter: Arc<output::Meter>,
    violations: Option<ViolationSink>,
    wake: UnixStream,
    region: Option<Arc<Region>>,
) -> (Arc<ProcState>, StderrTail) {
    let Spawned {
        pid,
        reap,
        stdout,
        stderr,
    } = spawned;
    let tail = output::forward(label, pid, stdout, stderr, output, meter, violations);
    let (exited_tx, exited) = crossbeam_channel::bounded::<()>(0);
    let proc = Arc::new(ProcState {
        pid,
        exit: Mutex::new(None),
        usage: Mutex::new(None),
        busy: AtomicBool::new(false),
        exited,
    });
    // The worker is our unreaped child, so its pid names it.
    let pidfd = rustix::process::Pid::from_raw(pid as i32)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    event_loop::watch_exit(Reaping {
        pidfd,
        reap,
        state: proc.clone(),
        _exited: exited_tx,
        wake: Some(wake),
        region,
    });
    (proc, tail)
}

/// One worker's reaping, as the reaper loop serves it.
pub(crate) struct Reaping {
    /// Readable once the worker has exited (still unreaped).
    pidfd: Option<OwnedFd>,
    reap: Reapee,
    state: Arc<ProcState>,
    /// Held for its drop (never sent on), after the exit is recorded: wakes
    /// every waiter.
    _exited: Sender<()>,
    wake: Option<UnixStream>,
    region: Option<Arc<Region>>,
}

impl Reaping {
    /// The worker has exited (and is unreaped): see the module docs.
    fn reap_exited(&mut self) {
        let pid = self.state.pid;
        let mut exit = self.state.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_some() {
            return;
        }
        // The leader is a zombie: the group id is still ours. Take the plugin's
        // children down with it.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        // A reaper host (PID 1, subreaper) inherits the group's orphans.
        crate::strays::adopt_group(pid);
        let (status, usage) = self.reap.reap(pid);
        *self.state.usage.lock().unwrap_or_else(|e| e.into_inner()) = usage;
        *exit = Some(status);
        drop(exit);
        if let Some(wake) = self.wake.take() {
            let _ = wake.shutdown(std::net::Shutdown::Both);
        }
        if let Some(region) = self.region.take() {
            region.mark_dead();
        }
        // Dropping `_exited` (with the rest of this `Reaping`, right after the
        // loop has taken its pidfd out of the epoll set) wakes every waiter.
    }
}

impl event_loop::Source for Reaping {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    fn ready(&mut self, _scratch: &mut [u8]) -> event_loop::Readiness {
        self.reap_exited();
        event_loop::Readiness::Finished
    }

    fn fallback(self) {
        let pid = Pid::from_raw(self.state.pid as i32);
        // Shared with the thread so a failed spawn can take it back.
        let slot = Arc::new(Mutex::new(Some(self)));
        let theirs = slot.clone();
        let body = move || {
            while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
            {
            }
            if let Some(mut this) = theirs.lock().unwrap_or_else(|e| e.into_inner()).take() {
                this.reap_exited();
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("bulkhead-reaper".into())
            .stack_size(64 * 1024)
            .spawn(body)
        {
            // No thread: nothing would ever reap this worker. Kill it (its
            // unreaped pid still pins the group) and reap it here.
            tracing::error!(target: "bulkhead", pid = pid.as_raw(), error = %e, "cannot watch a worker; killing it");
            let _ = killpg(pid, Signal::SIGKILL);
            if let Some(mut this) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                this.reap_exited();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `sh -c script` in a process group of its own, with piped output.
    fn sh(script: &str) -> Child {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("/bin/sh runs")
    }

    /// Adopts a child known only by its pid (as a fork server's would be):
    /// the std `Child` is dropped, which neither waits for nor kills it.
    fn adopt_by_pid(child: Child) -> (Arc<ProcState>, StderrTail, UnixStream) {
        let mut spawned = Spawned::from_child(child);
        spawned.reap = Reapee::Pid;
        let (host, wake) = UnixStream::pair().unwrap();
        let (proc, tail) = adopt(
            spawned,
            "test".into(),
            None,
            Arc::new(output::Meter::new(output::OutputBudget::DEFAULT)),
            None,
            wake,
            None,
        );
        (proc, tail, host)
    }

    #[test]
    fn a_child_known_only_by_pid_is_reaped_with_its_exit_and_stderr() {
        let (proc, tail, host) = adopt_by_pid(sh("echo out; echo err >&2; exit 7"));
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(proc.wait(deadline), Some(Exit::Code(7)));
        assert!(proc.usage().is_some(), "wait4 by pid gives the rusage too");
        assert_eq!(tail.snapshot_after_eof(deadline), "err\n");
        // The host end was shut down by the reaper: reads see EOF at once.
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &host, &mut buf).unwrap(), 0);
        // Reaped: the pid no longer names our child.
        assert_eq!(
            waitid(
                Id::Pid(Pid::from_raw(proc.pid() as i32)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG
            ),
            Err(nix::errno::Errno::ECHILD)
        );
    }

    #[test]
    fn a_child_known_only_by_pid_reports_its_signal() {
        let (proc, _tail, _host) = adopt_by_pid(sh("kill -SEGV $$"));
        let exit = proc.wait(Instant::now() + Duration::from_secs(30));
        assert!(matches!(exit, Some(Exit::Signal { signal: 11, .. })), "{exit:?}");
    }

    #[test]
    fn a_std_child_is_reaped_with_its_rusage() {
        let spawned = Spawned::from_child(sh("exit 3"));
        let (_host, wake) = UnixStream::pair().unwrap();
        let (proc, _tail) = adopt(
            spawned,
            "test".into(),
            None,
            Arc::new(output::Meter::new(output::OutputBudget::DEFAULT)),
            None,
            wake,
            None,
        );
        assert_eq!(proc.wait(Instant::now() + Duration::from_secs(30)), Some(Exit::Code(3)));
        assert!(proc.usage().is_some_and(|u| u.max_rss > 0), "{:?}", proc.usage());
    }
}
