//! Fork-servers: one `bulkhead-worker --fork-server` process per supervisor
//! and sandbox profile. The first worker of a profile does not wait for it:
//! that one is started with `exec`, and the server starts on a helper thread
//! once it answered (or at once when a second worker is wanted before); every
//! later worker of the profile is forked (a spawn while the server is starting
//! waits for it). It prepares the sandbox's shared
//! part once (identity, user/network/uts namespaces, the static filesystem
//! view) and then forks each new worker, so a restart skips `exec`, dynamic
//! linking and those namespaces. No plugin code ever runs in it (see the
//! worker's `forkserver` module).
//!
//! Workers it forks are the host's own children (`CLONE_PARENT`): reaped,
//! killed and accounted exactly like workers the host starts itself. The
//! server is treated as untrusted input all the same: every answer is bounded
//! and checked — the pid it reports must be an unreaped child of this host —
//! and a server that dies, hangs past the load deadline or answers nonsense is
//! killed and reaped, the worker at hand is started the ordinary way, and the
//! next spawn starts a fresh server.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use bulkhead_shared::forkserver::{self, FromServer, ToServer};
use bulkhead_shared::sandbox::SandboxPolicy;
use bulkhead_shared::PARENT_PID_ENV;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{setpgid, Pid};

use crate::locate::WorkerExe;
use crate::spawner::spawn_on_spawner;

/// How long a new server may take to prepare its profile.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive servers that failed to start, or broke before serving a
/// spawn, after which a profile stops trying a server.
const MAX_START_FAILURES: u32 = 3;

/// A worker a fork-server made: the host's child, leader of its own group.
pub(crate) struct Forked {
    pub(crate) pid: u32,
    pub(crate) stdout: File,
    pub(crate) stderr: File,
}

/// How to start the servers of one supervisor.
pub(crate) struct ServerCommand {
    pub(crate) worker: WorkerExe,
    pub(crate) worker_args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
}

/// The fork-server of one profile — a sandbox policy and the workers' whole
/// environment, which a forked worker inherits from its server — (re)started
/// on demand.
pub(crate) struct ForkServerSlot {
    command: ServerCommand,
    policy: SandboxPolicy,
    state: Mutex<SlotState>,
}

enum SlotState {
    /// Not running; the next spawn starts one. `failures`: consecutive
    /// servers that did not start or broke before serving a spawn.
    Idle { failures: u32 },
    /// Never started; the profile's first worker is being started with exec
    /// (the server starts when it answered, or when a second worker is needed
    /// first).
    FirstExec,
    /// Being started on a helper thread; `done` disconnects once the start
    /// is settled (the state is then `Running`, `Idle` or `Off`).
    Starting { done: Receiver<()> },
    /// Running; `failures` as above, reset by a spawn it serves.
    Running { server: ForkServer, failures: u32 },
    /// This profile cannot use a server here (said once, at `debug`), or the
    /// supervisor is shutting down.
    Off,
}

impl ForkServerSlot {
    pub(crate) fn new(command: ServerCommand, policy: SandboxPolicy) -> ForkServerSlot {
        ForkServerSlot {
            command,
            policy,
            state: Mutex::new(SlotState::Idle { failures: 0 }),
        }
    }

    /// The sandbox policy this slot serves.
    pub(crate) fn policy(&self) -> &SandboxPolicy {
        &self.policy
    }

    /// Whether this slot serves workers with `policy` and `env`.
    pub(crate) fn serves(&self, policy: &SandboxPolicy, env: &[(String, String)]) -> bool {
        self.policy == *policy && self.command.env == env
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a spawn now goes to a running server; `false`: the caller
    /// starts this worker itself, with exec. The profile's first worker (or
    /// the first after a server went away) is exec'd alone, and the server
    /// starts in the background once it answered
    /// ([`first_worker_ready`](Self::first_worker_ready)); a second worker
    /// wanted before then starts the server at once and waits for it. After
    /// a server failed to start, the next one starts in the background
    /// beside an exec'd worker. A server being started is waited for until
    /// `deadline`.
    pub(crate) fn ready(self: &Arc<Self>, deadline: Instant) -> bool {
        loop {
            let mut state = self.lock();
            match &*state {
                SlotState::Running { .. } => return true,
                SlotState::Off => return false,
                SlotState::Idle { failures } => {
                    let failures = *failures;
                    if failures == 0 {
                        // The profile's first worker: it goes first, alone.
                        *state = SlotState::FirstExec;
                        return false;
                    }
                    if failures < MAX_START_FAILURES {
                        if let Some(done) = self.start_in_background(failures) {
                            *state = SlotState::Starting { done };
                            return false;
                        }
                    }
                    // No helper thread (or no more tries): settle it here.
                    self.ensure_started(&mut state);
                    return matches!(*state, SlotState::Running { .. });
                }
                SlotState::FirstExec => match self.start_in_background(0) {
                    // A second worker while the first one is being exec'd: the
                    // server starts now, and this worker waits for it.
                    Some(done) => *state = SlotState::Starting { done },
                    None => *state = SlotState::Idle { failures: 0 },
                },
                SlotState::Starting { done } => {
                    let done = done.clone();
                    drop(state);
                    if done.recv_deadline(deadline) != Err(RecvTimeoutError::Disconnected) {
                        return false;
                    }
                }
            }
        }
    }

    /// Starts a server on a helper thread, which settles the state when the
    /// start succeeds or fails (and kills the server if the slot was stopped
    /// meanwhile). Returns what disconnects when it is settled; `None` if no
    /// thread could be started.
    fn start_in_background(self: &Arc<Self>, failures: u32) -> Option<Receiver<()>> {
        let (settled, done) = crossbeam_channel::bounded::<()>(0);
        let slot = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("bulkhead-fork-server".into())
            .spawn(move || {
                let started = ForkServer::start(&slot.command, &slot.policy);
                let mut state = slot.lock();
                let unwanted = if matches!(*state, SlotState::Starting { .. }) {
                    *state = settle(started, failures);
                    None
                } else {
                    // Stopped meanwhile: this server is killed and reaped.
                    started.ok()
                };
                drop(state);
                drop(unwanted);
                // The slot (and the worker binary it pins open) is let go
                // before the start counts as settled: a `stop` that waited
                // for it leaves nothing of this start behind.
                drop(slot);
                drop(settled);
            });
        spawned.ok().map(|_| done)
    }

    /// The profile's first worker (exec'd) answered: its server starts now,
    /// in the background, for the workers that follow.
    pub(crate) fn first_worker_ready(self: &Arc<Self>) {
        let mut state = self.lock();
        if let SlotState::FirstExec = &*state {
            *state = match self.start_in_background(0) {
                Some(done) => SlotState::Starting { done },
                None => SlotState::Idle { failures: 0 },
            };
        }
    }

    /// Whether a server is running for this profile now; `false` too if
    /// the slot is busy (a spawn or a server start holds it), without waiting.
    pub(crate) fn is_running(&self) -> bool {
        self.try_lock()
            .is_some_and(|state| matches!(*state, SlotState::Running { .. }))
    }

    /// The state if nobody holds it now.
    fn try_lock(&self) -> Option<MutexGuard<'_, SlotState>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Forks a worker with `args`, handing it `sock` (its end of the
    /// control socket) and its library. `None`: no server for this profile
    /// (or it just failed); the caller starts the worker itself.
    /// `blank_only`: only a blank that is ready now will do — no server is
    /// started, none is asked to fork, nothing is waited for (not even a
    /// slot another spawn holds).
    pub(crate) fn spawn(
        &self,
        args: &[String],
        sock: OwnedFd,
        library: Option<&Path>,
        blank_only: bool,
        deadline: Instant,
    ) -> Option<Forked> {
        let mut state = if blank_only {
            self.try_lock()?
        } else {
            let mut state = self.lock();
            self.ensure_started(&mut state);
            state
        };
        let SlotState::Running { server, failures } = &mut *state else {
            return None;
        };
        let failures = std::mem::take(failures);
        let lib = library.and_then(|p| {
            // Nonblocking, so a path that names a FIFO cannot stall the host;
            // the worker reopens it through /proc/self/fd anyway.
            File::options()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(p)
                .ok()
        });
        match server.spawn(args, sock, lib.as_ref().map(|f| f.as_fd()), blank_only, deadline) {
            Ok(forked) => {
                if server.gone {
                    tracing::warn!(target: "bulkhead::supervision", pid = server.pid, "fork-server is gone; it is replaced on the next spawn");
                    *state = SlotState::Idle { failures: 0 };
                }
                Some(forked)
            }
            Err(SpawnError::NoBlank) => {
                // Nothing was asked of the server: its record stands.
                if let SlotState::Running { failures: f, .. } = &mut *state {
                    *f = failures;
                }
                None
            }
            Err(SpawnError::Refused(why)) => {
                tracing::warn!(target: "bulkhead::supervision", %why, "fork-server could not fork a worker");
                None
            }
            Err(SpawnError::Broken(why)) => {
                tracing::warn!(target: "bulkhead::supervision", pid = server.pid, %why, "fork-server failed; it is replaced on the next spawn");
                // A server that breaks before serving anything counts as one
                // that did not start: enough of them in a row and workers are
                // exec'd from then on.
                *state = SlotState::Idle { failures: failures + 1 };
                None
            }
        }
    }

    /// Asks the running server for the blanks that replace those assigned
    /// since the last call. A load that took a blank calls this once its
    /// worker has answered (or failed), a restart job once the new worker's
    /// first call had the CPUs: the server's wake-up and the new blank's
    /// set-up do not compete with that worker's load for them.
    pub(crate) fn replenish(&self) {
        let mut state = self.lock();
        let SlotState::Running { server, .. } = &mut *state else {
            return;
        };
        server.ask_for_blanks();
        if server.gone {
            tracing::warn!(target: "bulkhead::supervision", pid = server.pid, "fork-server is gone; it is replaced on the next spawn");
            *state = SlotState::Idle { failures: 0 };
        }
    }

    /// Starts the server if none runs (and starting has not failed for good).
    fn ensure_started(&self, state: &mut SlotState) {
        if let SlotState::FirstExec = state {
            *state = SlotState::Idle { failures: 0 };
        }
        if let SlotState::Idle { failures } = *state {
            if failures >= MAX_START_FAILURES {
                tracing::debug!(target: "bulkhead::supervision", "fork-servers keep failing for this sandbox profile; workers are started with exec");
                *state = SlotState::Off;
                return;
            }
            *state = settle(ForkServer::start(&self.command, &self.policy), failures);
        }
    }

    /// Starts the server if needed and waits until every blank it keeps
    /// ahead ([`forkserver::BLANKS_AHEAD`]) has announced itself (for tests, which need
    /// to know which path a spawn takes, and which blanks the host knows).
    pub(crate) fn wait_for_blank(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while let SlotState::Starting { done } = &*state {
            let done = done.clone();
            drop(state);
            if done.recv_deadline(deadline) != Err(RecvTimeoutError::Disconnected) {
                return false;
            }
            state = self.lock();
        }
        self.ensure_started(&mut state);
        let SlotState::Running { server, .. } = &mut *state else {
            return false;
        };
        while server.blanks.len() < forkserver::BLANKS_AHEAD {
            if server.recv_one(Some(deadline)).is_err() {
                return false;
            }
        }
        true
    }

    /// The running server's pid, if any (for tests and diagnostics).
    pub(crate) fn server_pid(&self) -> Option<u32> {
        match &*self.lock() {
            SlotState::Running { server, .. } => Some(server.pid),
            _ => None,
        }
    }

    /// Stops the server for good (supervisor shutdown). A server being
    /// started is waited for (bounded), and killed and reaped by its starter.
    pub(crate) fn stop(&self) {
        let old = std::mem::replace(&mut *self.lock(), SlotState::Off);
        if let SlotState::Starting { done } = &old {
            let _ = done.recv_deadline(Instant::now() + START_TIMEOUT + DRAIN_BOUND);
        }
        drop(old);
    }
}

/// The state after a server's start: running, or idle with one more failure
/// (off after [`MAX_START_FAILURES`]).
fn settle(started: Result<ForkServer, String>, failures: u32) -> SlotState {
    match started {
        Ok(server) => SlotState::Running { server, failures },
        Err(why) if failures + 1 >= MAX_START_FAILURES => {
            tracing::debug!(target: "bulkhead::supervision", %why, "no fork-server for this sandbox profile; workers are started with exec");
            SlotState::Off
        }
        Err(why) => {
            tracing::debug!(target: "bulkhead::supervision", %why, "fork-server did not start");
            SlotState::Idle { failures: failures + 1 }
        }
    }
}

enum SpawnError {
    /// No blank was ready, and none was to be waited for.
    NoBlank,
    /// The server answered that it could not fork; it keeps serving.
    Refused(String),
    /// The server is dead, hung or broke the protocol.
    Broken(String),
}

/// Most blanks a server may have announced and not yet assigned.
const MAX_BLANKS: usize = 8;
/// How long a stopped server's channel is read for the last announcements.
const DRAIN_BOUND: Duration = Duration::from_secs(2);
/// How long the first spawn waits for the server's first blank to announce
/// itself (it does so right after the fork) before it asks for a fork.
const FIRST_BLANK_WAIT: Duration = Duration::from_millis(50);
/// Blanks found dead before the host stops asking for new ones.
const MAX_DEAD_BLANKS: u32 = 3;

/// A blank: a pre-forked worker, isolated already, waiting for its plugin.
struct Blank {
    pid: u32,
    /// The host's end of its own channel.
    chan: OwnedFd,
}

/// One running server.
struct ForkServer {
    pid: u32,
    chan: OwnedFd,
    child: Child,
    /// Blanks announced and not yet assigned (the host's children): killed and
    /// reaped if they turn out dead or the server stops.
    blanks: Vec<Blank>,
    /// Blanks that were dead when their turn came.
    dead_blanks: u32,
    /// The server itself did not take a request (it is replaced after the
    /// spawn at hand, which a blank may still have served).
    gone: bool,
    /// Blanks assigned whose replacements the server has not been asked for
    /// yet ([`ForkServerSlot::replenish`]).
    owed: u32,
    /// The blank the server forks as soon as it is ready has not announced
    /// itself yet: the first spawn waits for it (briefly) rather than have a
    /// second worker isolate itself beside it.
    first_blank: bool,
}

impl ForkServer {
    /// A server process just started, talking on `chan`.
    fn new(child: Child, chan: OwnedFd) -> ForkServer {
        ForkServer {
            pid: child.id(),
            chan,
            child,
            blanks: Vec::new(),
            dead_blanks: 0,
            gone: false,
            owed: 0,
            first_blank: true,
        }
    }

    fn start(command: &ServerCommand, policy: &SandboxPolicy) -> Result<ForkServer, String> {
        let (ours, theirs) = forkserver::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut cmd = command.worker.command();
        cmd.args(&command.worker_args)
            .arg("--fork-server")
            .env_clear()
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // From the long-lived spawner thread: the workers this server forks
        // are children of the thread that started it, and their parent-death
        // signal fires when that thread ends.
        let child = spawn_on_spawner(cmd).map_err(|e| format!("starting {}: {e}", command.worker.path().display()))?;
        let mut server = ForkServer::new(child, ours);
        forkserver::send(server.chan.as_fd(), &ToServer::Profile(policy.clone()), &[])
            .map_err(|e| format!("sending the profile: {e}"))?;
        // (Blanks that announce themselves meanwhile are taken in on the way.)
        match server.recv(Some(Instant::now() + START_TIMEOUT)) {
            Ok(FromServer::Ready) => Ok(server),
            Ok(FromServer::Unavailable(why)) => Err(format!("profile unavailable: {why}")),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(SpawnError::Broken(why) | SpawnError::Refused(why)) => Err(why),
            Err(SpawnError::NoBlank) => Err("no blank".into()),
        }
    }

    /// The next message from the server that is not a blank's announcement
    /// (announcements are taken in on the way).
    fn recv(&mut self, deadline: Option<Instant>) -> Result<FromServer, SpawnError> {
        loop {
            if let Some(msg) = self.recv_one(deadline)? {
                return Ok(msg);
            }
        }
    }

    /// One message: `None` if it was a blank's announcement (recorded).
    fn recv_one(&mut self, deadline: Option<Instant>) -> Result<Option<FromServer>, SpawnError> {
        match forkserver::recv::<FromServer>(self.chan.as_fd(), deadline) {
            Ok((FromServer::Blank { pid }, mut fds)) if fds.len() == 1 => {
                let pid = own_child(pid)?;
                let chan = fds.pop().expect("one descriptor");
                self.blanks.push(Blank { pid, chan });
                self.first_blank = false;
                if self.blanks.len() > MAX_BLANKS {
                    // Reaped with the server all the same.
                    return Err(SpawnError::Broken(format!("more than {MAX_BLANKS} blanks announced")));
                }
                Ok(None)
            }
            Ok((msg, fds)) if fds.is_empty() && !matches!(msg, FromServer::Blank { .. }) => Ok(Some(msg)),
            Ok((msg, fds)) => Err(SpawnError::Broken(format!(
                "unexpected answer {msg:?} with {} descriptors",
                fds.len()
            ))),
            Err(e) => Err(SpawnError::Broken(e.to_string())),
        }
    }

    /// Hands the worker's descriptors to a blank, if one is waiting; its
    /// replacement is owed ([`ForkServerSlot::replenish`] asks for it).
    /// `None`: no live blank.
    fn assign_blank(
        &mut self,
        args: &[String],
        fds: &[BorrowedFd<'_>],
        library: bool,
        blank_only: bool,
        deadline: Instant,
    ) -> Option<u32> {
        // Announcements that arrived since the last spawn, without waiting.
        while let Ok(None) = self.recv_one(Some(Instant::now())) {}
        if self.blanks.is_empty() && self.first_blank && !blank_only {
            // The server's first blank is being forked: it isolates itself
            // no slower than a worker forked now would, and a worker forked
            // now would compete with it for the CPUs.
            self.first_blank = false;
            let until = deadline.min(Instant::now() + FIRST_BLANK_WAIT);
            while self.blanks.is_empty() {
                if !matches!(self.recv_one(Some(until)), Ok(None)) {
                    break;
                }
            }
        }
        while !self.blanks.is_empty() {
            // The oldest first: it has had the longest to isolate itself.
            let blank = self.blanks.remove(0);
            // Its plugin process (which holds the channel) may outlive a blank
            // that is already dead for a moment: ask the kernel first.
            if has_exited(blank.pid) {
                kill_and_reap(blank.pid);
                self.dead_blanks += 1;
                continue;
            }
            let msg = forkserver::Assign {
                args: args.to_vec(),
                library,
            };
            if forkserver::send(blank.chan.as_fd(), &msg, fds).is_ok() {
                // Its replacement is asked for once this worker has loaded;
                // a server that died meanwhile is noticed now (one `waitid`),
                // so this spawn replaces it and reaps it.
                self.owed += 1;
                self.gone |= has_exited(self.pid);
                return Some(blank.pid);
            }
            // It died waiting (its set-up failed, most likely).
            kill_and_reap(blank.pid);
            self.dead_blanks += 1;
            if self.dead_blanks < MAX_DEAD_BLANKS {
                self.gone |= forkserver::send(self.chan.as_fd(), &ToServer::Blank, &[]).is_err();
            }
        }
        None
    }

    /// Asks the server for the blanks owed (one request each).
    fn ask_for_blanks(&mut self) {
        while self.owed > 0 && !self.gone {
            self.owed -= 1;
            self.gone |= forkserver::send(self.chan.as_fd(), &ToServer::Blank, &[]).is_err();
        }
        self.owed = 0;
    }

    fn spawn(
        &mut self,
        args: &[String],
        sock: OwnedFd,
        library: Option<BorrowedFd<'_>>,
        blank_only: bool,
        deadline: Instant,
    ) -> Result<Forked, SpawnError> {
        let broken = |what: String| SpawnError::Broken(what);
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Refused(format!("pipe: {e}")))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Refused(format!("pipe: {e}")))?;
        let mut fds = vec![sock.as_fd(), out_w.as_fd(), err_w.as_fd()];
        fds.extend(library);
        let pid = match self.assign_blank(args, &fds, library.is_some(), blank_only, deadline) {
            Some(pid) => pid as i32,
            None if blank_only => return Err(SpawnError::NoBlank),
            None => {
                let msg = ToServer::Spawn {
                    args: args.to_vec(),
                    library: library.is_some(),
                };
                forkserver::send(self.chan.as_fd(), &msg, &fds)
                    .map_err(|e| broken(format!("sending a spawn request: {e}")))?;
                match self.recv(Some(deadline))? {
                    FromServer::Spawned { pid } => pid,
                    FromServer::SpawnFailed(why) => return Err(SpawnError::Refused(why)),
                    other => return Err(broken(format!("unexpected answer {other:?}"))),
                }
            }
        };
        // The worker holds its own copies now: only the read ends stay here,
        // so they reach end-of-file when the worker's last holder is gone.
        drop(fds);
        drop((sock, out_w, err_w));
        let pid = own_child(pid)?;
        // The worker makes itself a group leader first thing; doing it here
        // too means the group exists before anyone may kill it.
        let p = Pid::from_raw(pid as i32);
        if nix::unistd::getpgid(Some(p)) != Ok(p) {
            let _ = setpgid(p, p);
        }
        Ok(Forked {
            pid,
            stdout: File::from(out_r),
            stderr: File::from(err_r),
        })
    }
}

/// `pid` if it is an unreaped child of this host — the only kind of process
/// the host may later signal and reap; anything else is a broken server.
fn own_child(pid: i32) -> Result<u32, SpawnError> {
    if pid <= 0 {
        return Err(SpawnError::Broken(format!("reported pid {pid}")));
    }
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
        Ok(_) => Ok(pid as u32),
        Err(e) => Err(SpawnError::Broken(format!(
            "reported pid {pid}, which is not a child of this host: {e}"
        ))),
    }
}

/// Whether child `pid` has exited (it is a zombie, not yet reaped).
fn has_exited(pid: u32) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(
        waitid(Id::Pid(Pid::from_raw(pid as i32)), flags),
        Ok(nix::sys::wait::WaitStatus::StillAlive)
    )
}

/// SIGKILLs an unassigned blank's group and reaps it.
fn kill_and_reap(pid: u32) {
    let p = Pid::from_raw(pid as i32);
    // Unreaped, so neither the pid nor the group id can have been recycled.
    let _ = nix::sys::signal::killpg(p, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    crate::strays::adopt_group(pid);
    while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(p, None) {}
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        // It holds no state worth a polite exit: kill and reap at once.
        let _ = self.child.kill();
        crate::strays::adopt_group(self.child.id());
        let _ = self.child.wait();
        // Every blank announces itself on this channel and then closes its
        // copy, so reading to end-of-file learns of all of them.
        let until = Instant::now() + DRAIN_BOUND;
        while let Ok((msg, fds)) = forkserver::recv::<FromServer>(self.chan.as_fd(), Some(until)) {
            if let (FromServer::Blank { pid }, 1) = (msg, fds.len()) {
                if let Ok(pid) = own_child(pid) {
                    kill_and_reap(pid);
                }
            }
        }
        for blank in std::mem::take(&mut self.blanks) {
            kill_and_reap(blank.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The host's side of the protocol against a fake server answering what a
    //! broken or hostile one might.
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::process::Command;

    /// A "server": a real child process (so `Drop` has something to kill and
    /// reap) and, in a thread, a fake peer on the channel that answers `reply`.
    fn fake(reply: impl FnOnce(&OwnedFd) + Send + 'static) -> (ForkServer, std::thread::JoinHandle<()>) {
        let (ours, theirs) = forkserver::pair().unwrap();
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let peer = std::thread::spawn(move || {
            let got = forkserver::recv::<ToServer>(theirs.as_fd(), Some(Instant::now() + Duration::from_secs(10)));
            let (msg, fds) = got.unwrap();
            assert!(matches!(msg, ToServer::Spawn { library: false, .. }), "{msg:?}");
            assert_eq!(fds.len(), 3, "socket, stdout and stderr travel with the request");
            reply(&theirs);
        });
        (ForkServer::new(child, ours), peer)
    }

    fn spawn(server: &mut ForkServer, within: Duration) -> Result<Forked, SpawnError> {
        let (_host, worker) = UnixStream::pair().unwrap();
        server.spawn(
            &["--parent-pid".into(), "1".into()],
            OwnedFd::from(worker),
            None,
            false,
            Instant::now() + within,
        )
    }

    fn broken(r: Result<Forked, SpawnError>) -> String {
        match r {
            Err(SpawnError::Broken(why)) => why,
            Err(SpawnError::Refused(why)) => panic!("refused, not broken: {why}"),
            Err(SpawnError::NoBlank) => panic!("no blank, not broken"),
            Ok(f) => panic!("accepted pid {}", f.pid),
        }
    }

    #[test]
    fn a_stopped_slot_holds_nothing_of_a_background_start() {
        // `/bin/false` is no fork-server: the start fails, and what matters
        // is only that the starter thread has let go of the slot (and the
        // binary it pins open) once `stop` returns.
        for _ in 0..20 {
            let command = ServerCommand {
                worker: WorkerExe::pin("/bin/false".into()),
                worker_args: Vec::new(),
                env: Vec::new(),
            };
            let slot = Arc::new(ForkServerSlot::new(command, SandboxPolicy::none()));
            assert!(
                !slot.ready(Instant::now() + Duration::from_secs(10)),
                "the first worker is exec'd"
            );
            slot.first_worker_ready();
            slot.stop();
            assert_eq!(Arc::strong_count(&slot), 1, "the starter thread still holds the slot");
        }
    }

    #[test]
    fn a_pid_that_is_not_our_child_is_refused() {
        let (mut server, peer) =
            fake(|chan| forkserver::send(chan.as_fd(), &FromServer::Spawned { pid: 1 }, &[]).unwrap());
        let why = broken(spawn(&mut server, Duration::from_secs(10)));
        assert!(why.contains("not a child of this host"), "{why}");
        peer.join().unwrap();
        let (mut server, peer) =
            fake(|chan| forkserver::send(chan.as_fd(), &FromServer::Spawned { pid: -5 }, &[]).unwrap());
        assert!(broken(spawn(&mut server, Duration::from_secs(10))).contains("-5"));
        peer.join().unwrap();
    }

    #[test]
    fn garbage_silence_and_closure_break_the_server() {
        let (mut server, peer) = fake(|chan| {
            nix::sys::socket::send(
                std::os::fd::AsRawFd::as_raw_fd(chan),
                &[0xEE; 40],
                nix::sys::socket::MsgFlags::empty(),
            )
            .unwrap();
        });
        assert!(broken(spawn(&mut server, Duration::from_secs(10))).contains("bad fork-server packet"));
        peer.join().unwrap();

        let (keep_tx, keep_rx) = std::sync::mpsc::channel::<()>();
        let (mut server, peer) = fake(move |_chan| {
            // Hold the channel open, answer nothing.
            let _ = keep_rx.recv();
        });
        let t = Instant::now();
        assert!(broken(spawn(&mut server, Duration::from_millis(200))).contains("in time"));
        assert!(t.elapsed() < Duration::from_secs(10));
        keep_tx.send(()).unwrap();
        peer.join().unwrap();

        // The peer takes the request and hangs up.
        let (mut server, peer) = fake(|_chan| {});
        assert!(broken(spawn(&mut server, Duration::from_secs(10))).contains("closed"));
        peer.join().unwrap();
    }

    #[test]
    fn a_real_child_is_accepted_and_a_refusal_is_not_fatal() {
        // (A real worker never execs, so the host's setpgid applies to it; this
        // stand-in has, so it makes itself the group leader.)
        let worker = Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
        let pid = worker.id() as i32;
        let (mut server, peer) =
            fake(move |chan| forkserver::send(chan.as_fd(), &FromServer::Spawned { pid }, &[]).unwrap());
        let forked = spawn(&mut server, Duration::from_secs(10)).unwrap_or_else(|_| panic!("a real child"));
        assert_eq!(forked.pid, pid as u32);
        // A group leader, as the host requires.
        assert_eq!(
            nix::unistd::getpgid(Some(Pid::from_raw(pid))).unwrap(),
            Pid::from_raw(pid)
        );
        peer.join().unwrap();
        let mut worker = worker;
        worker.kill().unwrap();
        worker.wait().unwrap();

        let (mut server, peer) =
            fake(|chan| forkserver::send(chan.as_fd(), &FromServer::SpawnFailed("clone: EAGAIN".into()), &[]).unwrap());
        assert!(
            matches!(spawn(&mut server, Duration::from_secs(10)), Err(SpawnError::Refused(w)) if w.contains("EAGAIN"))
        );
        peer.join().unwrap();
        let server_pid = server.pid;
        drop(server);
        // Dropping a server kills and reaps it.
        assert!(nix::sys::wait::waitpid(Pid::from_raw(server_pid as i32), Some(WaitPidFlag::WNOHANG)).is_err());
    }
}
