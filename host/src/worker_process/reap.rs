//! A worker's exit: watching, killing, reaping, and what a failure means.
//!
//! Reaping is owned by the reaper loop (a [`Reaping`] is its
//! [`Source`](crate::event_loop::Source)): it waits on a pidfd per worker,
//! which becomes readable when the worker has exited but is not yet reaped —
//! like `waitid(WEXITED | WNOWAIT)`, which serves where there is no pidfd, it
//! observes the exit *without* reaping, so the pid (and the process group
//! named after it) cannot be recycled yet. Then, under the same lock every
//! killer takes, it SIGKILLs the whole process group (the plugin's own
//! children die too), reaps the worker (`wait4`, with its rusage), records its
//! [`Exit`], shuts the host's socket end so a reader blocked on it wakes at
//! once, marks the shared region dead and wakes every waiter. A signal is
//! therefore never sent to a pid that has been reaped.
//!
//! Any direct child of the host can be handed over this way ([`adopt`]): a
//! worker spawned by `std::process::Command` (reaped through its `Child`, which
//! gives the rusage) or one created otherwise, known only by pid.
//!
//! A transport failure becomes a call [`Failure`] here ([`failure`]): a
//! timeout or a protocol violation kills the worker; an end of the socket is
//! [`Failure::Ended`] until it is settled ([`settle`]: the pool does that
//! once it has given the replacement its head start) — a death if the worker
//! exits within [`EOF_GRACE`] (with its stderr tail and crash report), else a
//! protocol error that kills it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_shared::shm::Region;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::crash::CrashReport;
use crate::error::{Exit, ProtocolError};
use crate::event_loop::{self, EventLoop, Started};
use crate::link::IoFail;
use crate::output::{self, OutputCallback, StderrTail};
use crate::usage::ResourceUsage;
use crate::violations::ViolationSink;

/// How long to wait for a worker that closed its socket to actually exit
/// before concluding it closed the socket and kept running.
pub(crate) const EOF_GRACE: Duration = Duration::from_millis(1000);
/// How long to wait for the stderr pipe to drain after the worker died.
pub(crate) const STDERR_GRACE: Duration = Duration::from_millis(500);
/// Upper bound on waiting for the kernel to deliver a SIGKILL'd worker's exit.
pub(crate) const KILL_REAP_BOUND: Duration = Duration::from_secs(10);

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

/// Why a call got no answer. After any of these the worker is unusable.
pub(crate) enum Failure {
    /// The deadline passed; the worker has been killed.
    Timeout,
    /// The worker died.
    Died {
        /// How.
        exit: Exit,
        /// Its stderr tail.
        stderr: String,
        /// Its crash report, if it died of the signal the report names.
        crash: Option<Box<CrashReport>>,
    },
    /// The worker broke the protocol; it has been killed.
    Protocol(ProtocolError),
    /// The worker's end of the socket closed (it died, most likely): not
    /// yet told apart from a protocol failure, its exit and crash report not
    /// yet collected ([`WorkerProcess::settle`](super::WorkerProcess::settle),
    /// which the pool calls once it has started the replacement).
    Ended(IoFail),
}

/// Turns a transport failure into a call failure, killing the worker where
/// needed. Workers that hang or misbehave are SIGKILLed here; reaping them is
/// the reaper loop's job, off the caller's path.
pub(super) fn failure(proc: &ProcState, fail: IoFail) -> Failure {
    match fail {
        IoFail::Timeout => {
            proc.kill();
            Failure::Timeout
        }
        IoFail::Eof | IoFail::Io(_) => Failure::Ended(fail),
        IoFail::Frame(e) => {
            proc.kill();
            Failure::Protocol(e)
        }
    }
}

/// What an [`Failure::Ended`] was: the worker's death, with its exit,
/// stderr tail and crash report, or (still running after [`EOF_GRACE`]) a
/// protocol failure, and the worker is killed. Other failures are returned
/// as they are.
pub(super) fn settle(proc: &ProcState, stderr: &StderrTail, failure: Failure) -> Failure {
    let Failure::Ended(fail) = failure else {
        return failure;
    };
    match exit_after_eof(proc, stderr) {
        Some((exit, stderr, crash)) => Failure::Died { exit, stderr, crash },
        None => {
            proc.kill();
            Failure::Protocol(match fail {
                IoFail::Io(e) => ProtocolError::Io(e.to_string()),
                _ => ProtocolError::ChannelClosed,
            })
        }
    }
}

/// The exit, stderr tail and crash report of a worker whose socket reached
/// EOF, or `None` if it is still running after [`EOF_GRACE`]. The report's
/// lines precede the worker's death on its stderr, so waiting (boundedly) for
/// stderr's end, as for the tail, collects them.
fn exit_after_eof(proc: &ProcState, stderr: &StderrTail) -> Option<(Exit, String, Option<Box<CrashReport>>)> {
    let exit = proc.wait(Instant::now() + EOF_GRACE)?;
    let tail = stderr.snapshot_after_eof(Instant::now() + STDERR_GRACE);
    let crash = stderr.crash_for(&exit);
    Some((exit, tail, crash))
}

/// SIGKILLs the process group and waits for the reaper. Returns the exit.
pub(super) fn kill_and_reap(proc: &ProcState) -> Option<Exit> {
    proc.kill();
    proc.wait(Instant::now() + KILL_REAP_BOUND)
}

/// After the worker has been reaped: waits briefly for its output readers to
/// finish, so no descriptor of a dead worker outlives it in the host.
pub(super) fn wait_drained(stderr: &StderrTail) {
    stderr.wait_drained(Instant::now() + STDERR_GRACE);
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
    pub(crate) fn abandon(self) {
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
    event_loop::watch(Reaping {
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
struct Reaping {
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
    const LOOP: &'static str = "bulkhead-reaper";

    fn home() -> &'static Started<EventLoop<Self>> {
        static REAPER: Started<EventLoop<Reaping>> = Started::new();
        &REAPER
    }

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
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

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
        adopt_plain(spawned)
    }

    /// Adopts `spawned` with no label, region or budget of note; returns the
    /// host's end of the channel the reaper shuts down.
    fn adopt_plain(spawned: Spawned) -> (Arc<ProcState>, StderrTail, UnixStream) {
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
        let (proc, _tail, _host) = adopt_plain(Spawned::from_child(sh("exit 3")));
        assert_eq!(proc.wait(Instant::now() + Duration::from_secs(30)), Some(Exit::Code(3)));
        assert!(proc.usage().is_some_and(|u| u.max_rss > 0), "{:?}", proc.usage());
    }
}
