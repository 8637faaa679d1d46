//! One worker process: a running worker that finished its handshake, the
//! [`Link`] requests travel on, and the bookkeeping of its exit.
//!
//! * [`spawn`] starts a worker (fork-server or exec), hands it over for
//!   reaping and runs the handshake: [`WorkerProcess::start`].
//! * [`reap`] owns its exit: the reaper loop's [`Source`](crate::event_loop::Source)
//!   that kills the process group and reaps the worker, and the
//!   classification of a transport failure into a call [`Failure`] (timeout,
//!   death with its exit and stderr, protocol violation).
//!
//! Contract: a `WorkerProcess` is never dropped with its worker alive (the
//! drop SIGKILLs the process group; the reaper loop collects it), a signal is
//! never sent to a reaped pid, and after any [`Failure`] the worker is
//! unusable.

mod reap;
mod spawn;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_shared::shm::{Region, Response};

use crate::error::Exit;
use crate::link::{Answer, Link, Placed, Posted, Progress, PullSource, Request};
use crate::output::StderrTail;

pub(crate) use reap::{Failure, ProcState, KILL_REAP_BOUND};
pub(crate) use spawn::{Begun, Launch};

/// A running worker that finished its handshake.
pub(crate) struct WorkerProcess {
    pub(crate) pid: u32,
    /// The transport to the worker.
    link: Link,
    pub(crate) proc: Arc<ProcState>,
    pub(crate) stderr: StderrTail,
    /// The pool slot this worker serves (set by the pool).
    pub(crate) slot: usize,
    /// When it last finished a call (or started).
    pub(crate) last_used: Tick,
    /// The idle-CPU watch's last reading: when, and the CPU time used by then.
    pub(crate) cpu_seen: Option<(Tick, Duration)>,
}

/// A reading of the coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`): a few
/// ns to read where `Instant::now` costs tens on some machines, at the
/// resolution of the kernel's tick (1–10 ms). For what every call records and
/// only the idle checks read, at whole-tick precision: when a worker was last
/// used and when its idle CPU was last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(Duration);

impl Tick {
    /// Now, to the tick.
    pub(crate) fn now() -> Tick {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        Tick(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }

    /// Time from `earlier` to this reading (zero if `earlier` is later).
    pub(crate) fn since(self, earlier: Tick) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl WorkerProcess {
    /// Sends one call and waits for its answer until `deadline`.
    /// With a `target` buffer, the answer is copied once, straight into it,
    /// and handed back as [`Answer::Owned`].
    pub(crate) fn call(
        &mut self,
        method: u32,
        payload: &[u8],
        deadline: Instant,
        target: Option<Vec<u8>>,
    ) -> Result<Answer<'_>, Failure> {
        let proc = &self.proc;
        self.link
            .exchange(Request::Call { method, payload }, deadline, None, target)
            .map_err(|f| reap::failure(proc, f))
    }

    /// Posts one call (with `client`, a client-streaming one) through the
    /// shared region without waiting, for a caller that must not block;
    /// `None` (nothing sent) if the region cannot carry it.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn post_call(&mut self, method: u32, payload: &[u8], client: bool) -> Option<Posted> {
        self.link.post_call(method, payload, client)
    }

    /// Moves a posted call on without blocking (see [`Link::step`]).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn step(
        &mut self,
        posted: &mut Posted,
        deadline: Instant,
        pull: Option<PullSource<'_>>,
    ) -> Result<Progress, Failure> {
        let proc = &self.proc;
        self.link
            .step(posted, deadline, pull)
            .map_err(|f| reap::failure(proc, f))
    }

    /// Takes the answer [`step`](Self::step) found.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn take_posted(
        &mut self,
        posted: &Posted,
        r: Response,
        deadline: Instant,
        target: Option<Vec<u8>>,
    ) -> Result<Answer<'_>, Failure> {
        let proc = &self.proc;
        let mut target = target;
        self.link
            .take_posted(posted, r, deadline, &mut target)
            .map_err(|f| reap::failure(proc, f))
    }

    /// Waits (blocking) for a posted call's answer and takes it.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn wait_posted(
        &mut self,
        posted: Posted,
        deadline: Instant,
        target: Option<Vec<u8>>,
        pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, Failure> {
        let proc = &self.proc;
        let mut target = target;
        self.link
            .wait_posted(posted, deadline, &mut target, pull)
            .map_err(|f| reap::failure(proc, f))
    }

    /// Sends one call whose `len`-byte payload `fill` writes in place and
    /// waits for its answer, left where it arrived (see [`Link::exchange_placed`]).
    pub(crate) fn call_placed(
        &mut self,
        method: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        deadline: Instant,
    ) -> Result<Placed, Failure> {
        let proc = &self.proc;
        self.link
            .exchange_placed(method, len, fill, deadline)
            .map_err(|f| reap::failure(proc, f))
    }

    /// Sends `msg` and waits for its answer, answering the worker's callbacks
    /// and pulls (from `pull`) on the way, all before `deadline`; the link
    /// carries it through the shared region when it can.
    pub(crate) fn session(
        &mut self,
        msg: Request<'_>,
        deadline: Instant,
        pull: Option<PullSource<'_>>,
    ) -> Result<Answer<'_>, Failure> {
        // Without a pull source, the input has ended.
        let mut no_pull = || (bulkhead_shared::abi::STATUS_STREAM_END, Vec::new());
        let pull: PullSource<'_> = match pull {
            Some(pull) => pull,
            None => &mut no_pull,
        };
        let proc = &self.proc;
        self.link
            .exchange(msg, deadline, Some(pull), None)
            .map_err(|f| reap::failure(proc, f))
    }

    /// The shared-memory region the worker mapped, if any.
    pub(crate) fn region(&self) -> Option<&Arc<Region>> {
        self.link.region()
    }

    /// The link's receive buffer (where [`Placed::Rx`] answers lie).
    pub(crate) fn received(&self) -> &[u8] {
        &self.link.rx
    }

    /// Rings the worker's doorbell without work, so it is awake (spinning) for
    /// the call that follows. A no-op on the socket transport.
    pub(crate) fn wake(&self) {
        self.link.wake();
    }

    /// Completes a failure of this worker: a [`Failure::Ended`] becomes its
    /// death (waiting, boundedly, for its exit and crash report) or a
    /// protocol failure; any other failure is returned as it is.
    pub(crate) fn settle(&self, failure: Failure) -> Failure {
        reap::settle(&self.proc, &self.stderr, failure)
    }

    /// SIGKILLs the process group and waits for the reaper. Returns the exit.
    pub(crate) fn kill_and_reap(&self) -> Option<Exit> {
        reap::kill_and_reap(&self.proc)
    }

    /// After the worker has been reaped: waits briefly for its output readers
    /// to finish, so no descriptor of a dead worker outlives it in the host.
    pub(crate) fn wait_drained(&self) {
        reap::wait_drained(&self.stderr);
    }

    /// Polite shutdown: a shutdown request, up to `grace` for the worker to
    /// exit, then SIGKILL to the group. Returns the pid, the exit and whether
    /// it was forced.
    pub(crate) fn shutdown(mut self, grace: Duration) -> (u32, Option<Exit>, bool) {
        let deadline = Instant::now() + grace;
        self.link.post_shutdown(deadline);
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
