//! A plugin's worker processes and the dispatch of calls to them.
//!
//! Each of the plugin's `n` workers lives in a *slot* (numbered `0..n`); idle
//! slots wait in a bounded `crossbeam-channel`. A call takes a slot (waiting at
//! most until its deadline, with a cap on how many calls may wait), uses the
//! worker, and puts the slot back. Only the worker that ran a failing call is
//! affected.
//!
//! A worker that crashed, hung or broke the protocol is signalled at once and
//! the call returns; its slot becomes *dying*. A dying slot is recovered off
//! the caller's path: if a warm standby is ready (and the policy allows a
//! restart now) the standby is promoted on the spot; otherwise a background job
//! reaps the dead worker first (a slot never holds two workers), waits out the
//! slot's backoff, and starts a replacement. A standby is refilled in the
//! background after each promotion.
//!
//! With an idle timeout, a background job stops workers nobody called for that
//! long; their slots become *idle* and the next call that takes one starts a
//! worker (not counted as a restart).
//!
//! Shutdown (also the end of a [`reload`](crate::Plugin::reload)'s drain)
//! takes every slot back: idle workers are stopped politely, busy ones get
//! until a deadline, background jobs finish and hand their workers over, and
//! only what is left after all that is SIGKILLed (and reported `forced`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::call::{Answer, Failure, Placed};
use crate::error::{CallError, Exit, LoadError};
use crate::event_loop::{self, Tick};
use crate::events::{EventHub, EventKind};
use crate::health::Health;
use crate::observe::{self, CallMetrics};
use crate::restart::{Decision, RestartPolicy, RestartState};
use crate::stats::{Counters, Stats};
use crate::usage::{self, ResourceUsage, WorkerMemory};
use crate::worker_process::{Launch, ProcState, WorkerProcess, KILL_REAP_BOUND};

/// Pause between promoting a standby and reaping/refilling in the background.
const STANDBY_REFILL_DELAY: Duration = Duration::from_millis(5);

pub(crate) enum Slot {
    Live(WorkerProcess),
    /// Its worker failed and has been signalled; reap it before reuse.
    Dying(WorkerProcess),
    /// Slot `n` needs a replacement worker (its worker failed).
    Empty(usize),
    /// Slot `n`'s worker was stopped for idleness; start one on demand.
    Idle(usize),
    /// The pool is shut down (wakes waiting callers).
    Closed,
}

/// What a slot holds, for [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotHealth {
    Live,
    Down,
    Idle,
}

/// How one worker ended at shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// The worker's pid.
    pub pid: u32,
    /// Its exit, if it was reaped within the bound.
    pub exit: Option<Exit>,
    /// Whether it had to be SIGKILLed (it did not exit on the shutdown request in time).
    pub forced: bool,
}

/// Settings of a pool, from the [`PluginSpec`](crate::PluginSpec).
pub(crate) struct PoolConfig {
    pub size: usize,
    pub queue_limit: usize,
    pub policy: RestartPolicy,
    pub standby: bool,
    pub grace: Duration,
    pub idle_timeout: Option<Duration>,
    /// CPU a worker may use per second with no call in flight.
    pub idle_cpu: Option<Duration>,
    /// Shared by every generation of a plugin (reloads keep counting).
    pub counters: Arc<Counters>,
}

/// How often the idle-CPU watch reads the CPU time of idle workers.
const IDLE_CPU_CHECK: Duration = Duration::from_millis(250);
/// Shortest idle period over which CPU use outside calls is judged.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(1);

/// Why a slot's worker was last lost, for the restart's log line.
struct Lost {
    pid: u32,
    method: Option<u32>,
    cause: String,
}

pub(crate) struct Pool {
    pub(crate) label: Arc<str>,
    launch: Launch,
    size: usize,
    /// Slots put into circulation (less than `size` only if start-up failed).
    slots: AtomicUsize,
    idle_tx: Sender<Slot>,
    idle_rx: Receiver<Slot>,
    waiting: AtomicUsize,
    queue_limit: usize,
    restart: Mutex<RestartState>,
    /// Mirrors "the restart state has something to say" so healthy calls skip the lock.
    unhealthy: AtomicBool,
    slot_health: Mutex<Vec<SlotHealth>>,
    lost: Mutex<Vec<Option<Lost>>>,
    /// The last health reported (event and log), to report changes only.
    last_health: Mutex<Health>,
    standby_enabled: bool,
    standby: Mutex<Option<WorkerProcess>>,
    procs: Mutex<Vec<Arc<ProcState>>>,
    latest_pid: AtomicU64,
    pub(crate) counters: Arc<Counters>,
    metrics: CallMetrics,
    events: Arc<EventHub>,
    closed: AtomicBool,
    /// Set when a reload replaced this pool: callers retry on the new one.
    pub(crate) retired: AtomicBool,
    /// Dropped at shutdown to cut short a background job's wait.
    closing: Mutex<Option<Sender<()>>>,
    closing_rx: Receiver<()>,
    /// Background jobs in flight, and a signal each sends when done.
    jobs: AtomicUsize,
    jobs_done_tx: Sender<()>,
    jobs_done_rx: Receiver<()>,
    /// Reports of workers stopped by background jobs during shutdown.
    late_reports: Mutex<Vec<WorkerReport>>,
    /// Latest deadline of any call so far, in µs after `started_at` (for a drain).
    latest_deadline_us: AtomicU64,
    me: std::sync::Weak<Pool>,
    grace: Duration,
    idle_timeout: Option<Duration>,
    idle_cpu: Option<Duration>,
    started: SystemTime,
    started_at: Instant,
}

impl Pool {
    /// Starts `size` workers (and a standby, if asked); fails (stopping any
    /// started) if one cannot load.
    pub(crate) fn start(
        label: Arc<str>,
        launch: Launch,
        config: PoolConfig,
        events: Arc<EventHub>,
    ) -> Result<(Arc<Pool>, bulkhead_shared::protocol::PluginInfoWire), LoadError> {
        let size = config.size.max(1);
        let (idle_tx, idle_rx) = crossbeam_channel::bounded(size);
        let (closing_tx, closing_rx) = crossbeam_channel::bounded(0);
        let (jobs_done_tx, jobs_done_rx) = crossbeam_channel::unbounded();
        let pool = Arc::new_cyclic(|me| Pool {
            metrics: CallMetrics::new(&label),
            label,
            launch,
            size,
            slots: AtomicUsize::new(0),
            idle_tx,
            idle_rx,
            waiting: AtomicUsize::new(0),
            queue_limit: config.queue_limit,
            restart: Mutex::new(RestartState::new(config.policy, size)),
            unhealthy: AtomicBool::new(false),
            slot_health: Mutex::new(vec![SlotHealth::Live; size]),
            lost: Mutex::new((0..size).map(|_| None).collect()),
            last_health: Mutex::new(Health::Healthy),
            standby_enabled: config.standby,
            standby: Mutex::new(None),
            procs: Mutex::new(Vec::new()),
            latest_pid: AtomicU64::new(0),
            counters: config.counters,
            events,
            closed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            closing: Mutex::new(Some(closing_tx)),
            closing_rx,
            jobs: AtomicUsize::new(0),
            jobs_done_tx,
            jobs_done_rx,
            late_reports: Mutex::new(Vec::new()),
            latest_deadline_us: AtomicU64::new(0),
            me: me.clone(),
            grace: config.grace,
            idle_timeout: config.idle_timeout,
            idle_cpu: config.idle_cpu,
            started: SystemTime::now(),
            started_at: Instant::now(),
        });
        let mut info = None;
        for i in 0..size {
            let (mut w, info_i) = WorkerProcess::start(&pool.launch, None)?;
            w.slot = i;
            pool.register(&w);
            info.get_or_insert(info_i);
            if pool.idle_tx.try_send(Slot::Live(w)).is_err() {
                unreachable!("the pool channel has room for every slot");
            }
            pool.slots.fetch_add(1, Ordering::AcqRel);
        }
        if pool.standby_enabled {
            let (w, _) = WorkerProcess::start(&pool.launch, None)?;
            pool.register(&w);
            *pool.standby.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
        }
        let idle_tick = pool
            .idle_timeout
            .map(|idle| (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        let cpu_tick = pool.idle_cpu.map(|_| IDLE_CPU_CHECK);
        if let Some(tick) = idle_tick.into_iter().chain(cpu_tick).min() {
            let me: Weak<dyn Tick> = pool.me.clone();
            event_loop::every(tick, me);
        }
        Ok((pool, info.expect("size >= 1")))
    }

    fn register(&self, w: &WorkerProcess) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.retain(|p| p.exit().is_none());
        procs.push(w.proc.clone());
        drop(procs);
        self.latest_pid.store(w.pid.into(), Ordering::Relaxed);
        self.events.emit(&self.label, EventKind::WorkerStarted { pid: w.pid });
    }

    /// Pid of the most recently started worker.
    pub(crate) fn latest_pid(&self) -> u32 {
        self.latest_pid.load(Ordering::Relaxed) as u32
    }

    /// Pids of the workers currently alive (standby included).
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.iter().filter(|p| p.exit().is_none()).map(|p| p.pid()).collect()
    }

    /// Current memory of every live worker (standby included).
    pub(crate) fn memory(&self) -> Vec<WorkerMemory> {
        self.live_pids().into_iter().filter_map(usage::sample).collect()
    }

    /// Runs one call: `f` interprets the worker's answer while its buffer is borrowed.
    /// With a `target` buffer, the answer is preferably delivered in it, as
    /// [`Answer::Owned`].
    pub(crate) fn call<R>(
        &self,
        method: u32,
        payload: &[u8],
        limit: Duration,
        target: Option<Vec<u8>>,
        f: impl FnOnce(Answer<'_>) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let start = Instant::now();
        let span = observe::call_span(&self.label, method);
        let _entered = span.enter();
        self.counters.call_started();
        let result = self.call_inner(method, payload, start, limit, target, &span, f);
        self.call_done(&span, start, method, result.as_ref().err());
        result
    }

    /// Counts a finished call (and records its metrics), or a call this pool
    /// gave up because a reload retired it: the plugin runs that one again on
    /// its new pool.
    fn call_done(&self, span: &tracing::Span, start: Instant, method: u32, error: Option<&CallError>) {
        if matches!(error, Some(CallError::ShutDown)) && self.retired.load(Ordering::Acquire) {
            self.counters.call_retried();
        } else {
            self.counters.call_finished(error);
            self.metrics.call_done(span, start, method, error);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call_inner<R>(
        &self,
        method: u32,
        payload: &[u8],
        start: Instant,
        limit: Duration,
        target: Option<Vec<u8>>,
        span: &tracing::Span,
        f: impl FnOnce(Answer<'_>) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let deadline = start + limit;
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::ShutDown);
        }
        let us = deadline.saturating_duration_since(self.started_at).as_micros() as u64;
        self.latest_deadline_us.fetch_max(us, Ordering::Relaxed);
        if self.unhealthy.load(Ordering::Acquire) {
            self.check_failed(start)?;
        }
        let mut slot = self.acquire(start, deadline)?;
        match slot.slot {
            Slot::Empty(i) => self.replace(&mut slot, i, deadline)?,
            Slot::Idle(i) => self.wake_idle(&mut slot, i, deadline)?,
            _ => {}
        }
        let Slot::Live(worker) = &mut slot.slot else {
            return Err(CallError::ShutDown);
        };
        span.record("worker_pid", worker.pid);
        let (index, proc) = (worker.slot, worker.proc.clone());
        proc.busy.store(true, Ordering::Release);
        let answer = worker.call(method, payload, deadline, target);
        proc.busy.store(false, Ordering::Release);
        match answer {
            Ok(answer) => {
                let result = f(answer);
                self.note_success(index);
                result
            }
            Err(failure) => Err(self.failed(&mut slot.slot, failure, method, start, limit)),
        }
    }

    /// Runs one call whose input `fill` writes in place and whose answer
    /// stays where it arrived; `f` gets the worker (as a [`Lease`], so the
    /// answer can outlive this call) and the answer's place. A panic in `fill`
    /// gives the worker back untouched, is not counted as a call, and resumes
    /// unwinding here.
    pub(crate) fn call_placed<R>(
        self: &Arc<Self>,
        method: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        limit: Duration,
        f: impl FnOnce(Lease, Placed, Instant) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let start = Instant::now();
        let span = observe::call_span(&self.label, method);
        let _entered = span.enter();
        self.counters.call_started();
        let deadline = start + limit;
        let us = deadline.saturating_duration_since(self.started_at).as_micros() as u64;
        self.latest_deadline_us.fetch_max(us, Ordering::Relaxed);
        let result = self.lease(start, deadline).and_then(|mut lease| {
            let worker = lease.worker().expect("a lease holds a live worker");
            span.record("worker_pid", worker.pid);
            let index = worker.slot;
            match worker.call_placed(method, len, fill, deadline) {
                Ok(Placed::FillPanicked(panic)) => {
                    self.counters.call_retried();
                    drop(lease);
                    std::panic::resume_unwind(panic)
                }
                Ok(placed) => {
                    self.note_success(index);
                    f(lease, placed, start)
                }
                Err(failure) => {
                    worker.proc.busy.store(false, Ordering::Release);
                    Err(self.failed(&mut lease.slot, failure, method, start, limit))
                }
            }
        });
        self.call_done(&span, start, method, result.as_ref().err());
        result
    }

    /// Bookkeeping after a request on slot `index` got an answer: the
    /// slot's backoff starts over.
    pub(crate) fn note_success(&self, index: usize) {
        if self.unhealthy.load(Ordering::Acquire) {
            let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
            st.on_success(index);
            if st.is_quiet() {
                self.unhealthy.store(false, Ordering::Release);
            }
        }
    }

    /// The live worker in `slot` failed a request started at `start` under
    /// `limit`: records it, leaves the worker dying in the slot (its guard
    /// hands it on to recovery), and returns the caller's error.
    pub(crate) fn failed(
        &self,
        slot: &mut Slot,
        failure: Failure,
        method: u32,
        start: Instant,
        limit: Duration,
    ) -> CallError {
        let Slot::Live(worker) = std::mem::replace(slot, Slot::Closed) else {
            unreachable!("slot was live")
        };
        let pid = worker.pid;
        let err = match failure {
            Failure::Timeout => {
                self.events.emit(&self.label, EventKind::Timeout { pid, limit });
                CallError::Timeout {
                    elapsed: start.elapsed(),
                    limit,
                }
            }
            Failure::Died { exit, stderr, crash } => {
                observe::crashed(&self.label, pid, method, &exit, crash.as_deref());
                CallError::WorkerDied { exit, stderr, crash }
            }
            Failure::Protocol(e) => {
                observe::protocol_failure(&self.label, pid, method, &e);
                CallError::Protocol(e)
            }
        };
        let cause = format!("{err}{}", source_suffix(&err));
        self.mark(worker.slot, SlotHealth::Down);
        self.lost.lock().unwrap_or_else(|e| e.into_inner())[worker.slot] = Some(Lost {
            pid,
            method: Some(method),
            cause: cause.clone(),
        });
        self.policy_failure(worker.slot, &format!("worker {pid}: {cause}"));
        // The slot's guard hands the dying worker on (standby promotion or a
        // background reap-and-restart); the caller gets its answer now.
        *slot = Slot::Dying(worker);
        err
    }

    /// Takes a live worker for exclusive use until the [`Lease`] is dropped
    /// (streams): the same checks and waits as a call, bounded by `deadline`.
    pub(crate) fn lease(self: &Arc<Self>, start: Instant, deadline: Instant) -> Result<Lease, CallError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::ShutDown);
        }
        if self.unhealthy.load(Ordering::Acquire) {
            self.check_failed(start)?;
        }
        let mut guard = self.acquire(start, deadline)?;
        match guard.slot {
            Slot::Empty(i) => self.replace(&mut guard, i, deadline)?,
            Slot::Idle(i) => self.wake_idle(&mut guard, i, deadline)?,
            _ => {}
        }
        if !matches!(guard.slot, Slot::Live(_)) {
            return Err(CallError::ShutDown);
        }
        let slot = std::mem::replace(&mut guard.slot, Slot::Closed);
        if let Slot::Live(w) = &slot {
            // A stream is a call in progress: shutdown kills it after the grace period.
            w.proc.busy.store(true, Ordering::Release);
        }
        // The guard now holds nothing; the lease gives the slot back instead.
        std::mem::forget(guard);
        Ok(Lease {
            pool: self.clone(),
            slot,
        })
    }

    fn check_failed(&self, now: Instant) -> Result<(), CallError> {
        let checked = {
            let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
            let was_failed = st.failed().is_some();
            let r = st.check(now);
            (r, was_failed)
        };
        match checked {
            (Ok(()), true) => {
                // The cool-down passed.
                self.update_health();
                Ok(())
            }
            (Ok(()), false) => Ok(()),
            (Err(f), _) => Err(CallError::Failed {
                reason: f.reason,
                since: self.system_time(f.since),
                restarts: f.restarts,
            }),
        }
    }

    fn system_time(&self, at: Instant) -> SystemTime {
        if at >= self.started_at {
            self.started + (at - self.started_at)
        } else {
            self.started - (self.started_at - at)
        }
    }

    /// Takes a free slot for a call started at `start`, waiting until
    /// `deadline` at most. A slot obtained at or after the deadline is given
    /// back and the call gets `Busy` (or `Backoff`): only a worker's own
    /// overrun may cost it its life, never the host's delay in handing it work.
    fn acquire(&self, start: Instant, deadline: Instant) -> Result<SlotGuard<'_>, CallError> {
        let slot = match self.idle_rx.try_recv() {
            Ok(slot) => slot,
            Err(_) => {
                let waiting = self.waiting.fetch_add(1, Ordering::AcqRel) + 1;
                let got = if waiting > self.queue_limit {
                    Err(CallError::Overloaded {
                        limit: self.queue_limit,
                    })
                } else {
                    // Shutdown (or a reload's drain) wakes waiters at once: the
                    // plugin re-runs their calls on its new pool.
                    let left = deadline.saturating_duration_since(Instant::now());
                    crossbeam_channel::select! {
                        recv(self.idle_rx) -> got => got.map_err(|_| CallError::ShutDown),
                        recv(self.closing_rx) -> _ => Err(CallError::ShutDown),
                        default(left) => Err(self.busy_or_backoff(start)),
                    }
                };
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                got?
            }
        };
        if matches!(slot, Slot::Closed) || self.closed.load(Ordering::Acquire) {
            // Hand the slot (or the wake-up) on: to the shutdown collecting
            // slots, or to the next waiter.
            let _ = self.idle_tx.try_send(slot);
            return Err(CallError::ShutDown);
        }
        if Instant::now() >= deadline {
            // The deadline passed before the call reached a worker (the host
            // was slow, or the timeout was zero): the call never started, so
            // no worker is charged with it and the slot goes back untouched.
            self.put_back(slot);
            return Err(self.busy_or_backoff(start));
        }
        Ok(SlotGuard { pool: self, slot })
    }

    /// No slot came free in time: say so, or say that a restart is backing off.
    fn busy_or_backoff(&self, start: Instant) -> CallError {
        let now = Instant::now();
        match self.restart.lock().unwrap_or_else(|e| e.into_inner()).next_attempt() {
            Some(at) if at > now => CallError::Backoff { retry_in: at - now },
            _ => CallError::Busy {
                waited: start.elapsed(),
            },
        }
    }

    /// A call found slot `i` empty (a failed plugin that was reset or cooled
    /// down, or a replacement that failed to load): start one now, within the
    /// call's deadline.
    fn replace(&self, slot: &mut SlotGuard<'_>, i: usize, deadline: Instant) -> Result<(), CallError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::ShutDown);
        }
        let now = Instant::now();
        self.check_failed(now)?;
        let not_before = self.restart.lock().unwrap_or_else(|e| e.into_inner()).not_before(i);
        if let Some(at) = not_before.filter(|&at| at > now) {
            if at >= deadline {
                return Err(CallError::Backoff { retry_in: at - now });
            }
            // Wait out the backoff within the call's deadline (or until shutdown).
            if self.closing_rx.recv_deadline(at).is_ok() || self.closed.load(Ordering::Acquire) {
                return Err(CallError::ShutDown);
            }
        }
        let w = self
            .start_replacement(i, Some(deadline))
            .map_err(|e| CallError::Restart(Box::new(e)))?;
        slot.slot = Slot::Live(w);
        Ok(())
    }

    /// A call found slot `i` stopped for idleness: start its worker again.
    fn wake_idle(&self, slot: &mut SlotGuard<'_>, i: usize, deadline: Instant) -> Result<(), CallError> {
        match WorkerProcess::start(&self.launch, Some(deadline)) {
            Ok((mut w, _)) => {
                w.slot = i;
                self.register(&w);
                self.mark(i, SlotHealth::Live);
                slot.slot = Slot::Live(w);
                Ok(())
            }
            // The slot stays idle: the next call tries again.
            Err(e) => Err(CallError::Restart(Box::new(e))),
        }
    }

    /// Counts a restart of slot `i` against the policy, logs it and emits `Restarted`.
    fn note_restart(&self, i: usize, pid: u32) {
        let restarts = {
            let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
            st.on_restart(i, Instant::now());
            st.total_restarts()
        };
        self.counters.restarted();
        let lost = self.lost.lock().unwrap_or_else(|e| e.into_inner())[i].take();
        let (old, method, cause) = match &lost {
            Some(l) => (Some(l.pid), l.method, l.cause.as_str()),
            None => (None, None, "unknown"),
        };
        tracing::warn!(
            target: "bulkhead::supervision",
            plugin = &*self.label,
            pid,
            replaced = ?old,
            method = ?method,
            cause,
            restarts,
            "worker restarted"
        );
        self.mark(i, SlotHealth::Live);
        self.events.emit(&self.label, EventKind::Restarted { pid, restarts });
    }

    /// Starts a replacement worker for slot `i` and does the bookkeeping.
    fn start_replacement(&self, i: usize, deadline: Option<Instant>) -> Result<WorkerProcess, LoadError> {
        match WorkerProcess::start(&self.launch, deadline) {
            Ok((mut w, _info)) => {
                w.slot = i;
                self.register(&w);
                self.note_restart(i, w.pid);
                Ok(w)
            }
            Err(e) => {
                let cause = format!("replacement worker failed to load: {e}");
                tracing::warn!(target: "bulkhead::supervision", plugin = &*self.label, slot = i, cause = %cause, "restart failed");
                self.lost.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Lost {
                    pid: 0,
                    method: None,
                    cause: cause.clone(),
                });
                self.policy_failure(i, &cause);
                Err(e)
            }
        }
    }

    /// Whether slot `i` may restart right now (not failed, no backoff pending).
    fn may_restart_now(&self, i: usize) -> bool {
        let st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
        st.failed().is_none() && st.not_before(i).map_or(true, |at| at <= Instant::now())
    }

    fn is_failed(&self) -> bool {
        self.restart
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed()
            .is_some()
    }

    /// Runs `job` on a background thread holding the pool; shutdown waits for it.
    fn background(&self, name: &str, job: impl FnOnce(&Pool) + Send + 'static) -> bool {
        while self.jobs_done_rx.try_recv().is_ok() {}
        let me = self.me.clone();
        self.jobs.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
            if let Some(pool) = me.upgrade() {
                job(&pool);
                pool.jobs.fetch_sub(1, Ordering::AcqRel);
                let _ = pool.jobs_done_tx.send(());
            }
        });
        if spawned.is_err() {
            self.jobs.fetch_sub(1, Ordering::AcqRel);
        }
        spawned.is_ok()
    }

    /// Reaps a failed worker (bounded) and reports how it ended; returns it
    /// so its output pipes can drain off the critical path.
    fn reap(&self, dying: WorkerProcess) -> WorkerProcess {
        if let Some(exit) = dying.kill_and_reap() {
            self.exited(dying.pid, exit, dying.proc.usage());
        }
        dying
    }

    /// Accounts for a reaped worker and emits `WorkerExited`.
    fn exited(&self, pid: u32, exit: Exit, usage: Option<ResourceUsage>) {
        if let Some(u) = usage {
            self.counters.worker_exited(&u);
        }
        self.events
            .emit(&self.label, EventKind::WorkerExited { pid, exit, usage });
    }

    /// Reaps a failed worker and waits for its output pipes to drain.
    fn bury(&self, dying: WorkerProcess) {
        self.reap(dying).wait_drained();
    }

    /// Recovers a slot whose worker failed: promote the standby now if there is
    /// one and the policy allows, else reap and restart in the background.
    fn recover(&self, dying: WorkerProcess) {
        let i = dying.slot;
        let promoted = if self.standby_enabled && self.may_restart_now(i) {
            self.standby.lock().unwrap_or_else(|e| e.into_inner()).take()
        } else {
            None
        };
        if let Some(mut w) = promoted {
            w.slot = i;
            self.note_restart(i, w.pid);
            w.wake();
            self.to_channel(Slot::Live(w));
            if !self.background("bulkhead-standby", move |pool| {
                // Let the promoted worker take its first calls before the
                // reaping and the next spawn compete with it for the CPUs.
                let _ = pool.closing_rx.recv_timeout(STANDBY_REFILL_DELAY);
                pool.bury(dying);
                pool.refill_standby();
            }) {
                // No thread: the standby is not refilled; the dying worker is
                // killed by its Drop and reaped by its reaper.
            }
            return;
        }
        let started = self.background("bulkhead-restart", move |pool| {
            // Reaped first (a slot never holds two workers); its pipes drain
            // once the replacement is serving.
            let dead = pool.reap(dying);
            let slot = pool.background_replacement(i);
            pool.put_back(slot);
            dead.wait_drained();
        });
        if !started {
            // No thread: leave the slot empty; the next call that takes it restarts it.
            self.to_channel(Slot::Empty(i));
        }
    }

    fn background_replacement(&self, i: usize) -> Slot {
        let not_before = self.restart.lock().unwrap_or_else(|e| e.into_inner()).not_before(i);
        if let Some(at) = not_before {
            // Wait out the backoff, unless the pool shuts down first.
            if self.closing_rx.recv_deadline(at).is_ok() || self.closed.load(Ordering::Acquire) {
                return Slot::Empty(i);
            }
        }
        if self.closed.load(Ordering::Acquire) || self.is_failed() {
            return Slot::Empty(i);
        }
        if self.standby_enabled {
            if let Some(mut w) = self.standby.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.slot = i;
                self.note_restart(i, w.pid);
                self.refill_standby();
                return Slot::Live(w);
            }
        }
        match self.start_replacement(i, None) {
            Ok(w) => Slot::Live(w),
            Err(_) => Slot::Empty(i),
        }
    }

    /// Starts a fresh standby (not a restart: it serves nothing until promoted).
    /// The new worker is stored even if shutdown began meanwhile: shutdown
    /// waits for this job and then stops the standby it finds, so the worker
    /// is stopped exactly once, politely.
    fn refill_standby(&self) {
        if self.closed.load(Ordering::Acquire) || self.is_failed() {
            return;
        }
        if let Ok((w, _)) = WorkerProcess::start(&self.launch, None) {
            self.register(&w);
            let mut standby = self.standby.lock().unwrap_or_else(|e| e.into_inner());
            if standby.is_some() {
                drop(standby);
                let report = self.stop(w);
                if self.closed.load(Ordering::Acquire) {
                    self.late_reports.lock().unwrap_or_else(|e| e.into_inner()).push(report);
                }
            } else {
                *standby = Some(w);
            }
        }
    }

    fn to_channel(&self, slot: Slot) {
        if let Err(e) = self.idle_tx.try_send(slot) {
            // Cannot happen (one token per slot); if it did, a worker inside is
            // killed by its Drop rather than leaked.
            drop(e.into_inner());
        }
    }

    /// Returns a slot to circulation: idle workers to the channel, failed ones
    /// to recovery, empty slots to a background restart (unless the plugin is
    /// failed), everything to the shutdown if the pool is closed.
    fn put_back(&self, slot: Slot) {
        if self.closed.load(Ordering::Acquire) {
            // The shutdown collects it. If the channel is full, a worker inside
            // is killed by its Drop instead.
            let _ = self.idle_tx.try_send(slot);
            return;
        }
        match slot {
            Slot::Dying(w) => self.recover(w),
            Slot::Empty(i) if !self.is_failed() => {
                if !self.background("bulkhead-restart", move |pool| {
                    let slot = pool.background_replacement(i);
                    pool.put_back(slot);
                }) {
                    self.to_channel(Slot::Empty(i));
                }
            }
            other => self.to_channel(other),
        }
    }

    /// One check of CPU use outside calls (on the timer thread): each idle
    /// worker (one not in a call or stream: those are not in the channel) is
    /// taken out for a moment and its process tree's CPU time read. A worker
    /// idle for a whole [`IDLE_CPU_WINDOW`] or more that used more than
    /// `budget` per second of it is killed with a typed cause and its slot
    /// recovered like a crashed worker's (restart policy included).
    fn idle_cpu_tick(&self, budget: Duration) {
        let now = Instant::now();
        for _ in 0..self.idle_rx.len() {
            let Ok(slot) = self.idle_rx.try_recv() else { break };
            let Slot::Live(mut w) = slot else {
                self.put_back(slot);
                continue;
            };
            let Some(cpu) = usage::cpu_time(w.pid) else {
                // Gone: the next call finds out, as for any dead idle worker.
                self.put_back(Slot::Live(w));
                continue;
            };
            let over = match w.cpu_seen {
                // Idle since the last reading (no call finished after it).
                Some((at, seen)) if at >= w.last_used => {
                    let window = now.saturating_duration_since(at);
                    if window < IDLE_CPU_WINDOW {
                        self.put_back(Slot::Live(w));
                        continue;
                    }
                    let used = cpu.saturating_sub(seen);
                    (used > budget.mul_f64(window.as_secs_f64())).then_some((used, window))
                }
                _ => None,
            };
            match over {
                Some((used, window)) => self.stop_for_idle_cpu(w, used, window),
                None => {
                    w.cpu_seen = Some((now, cpu));
                    self.put_back(Slot::Live(w));
                }
            }
        }
    }

    /// Kills worker `w`, which used `used` of CPU over `window` with no call
    /// in flight, and recovers its slot.
    fn stop_for_idle_cpu(&self, w: WorkerProcess, used: Duration, window: Duration) {
        let (pid, i) = (w.pid, w.slot);
        self.counters.idle_cpu_kill();
        self.events
            .emit(&self.label, EventKind::IdleCpuExceeded { pid, used, window });
        let cause = format!("used {used:?} of CPU in {window:?} with no call in flight");
        w.proc.kill();
        self.mark(i, SlotHealth::Down);
        self.lost.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Lost {
            pid,
            method: None,
            cause: cause.clone(),
        });
        self.policy_failure(i, &format!("worker {pid}: {cause}"));
        self.put_back(Slot::Dying(w));
    }

    /// Stops workers nobody called for `idle`, until the pool closes.
    /// One idle check (on the timer thread, see [`event_loop`]): takes the
    /// workers idle for `idle` out of the pool and hands them to a background
    /// job that stops them politely. Returns `false` once the pool is closed.
    fn idle_tick(&self, idle: Duration) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        // A shutdown meanwhile collects the slots taken here: they go back
        // (or to the job) within microseconds, well inside its grace period.
        let now = Instant::now();
        let mut expired = Vec::new();
        for _ in 0..self.idle_rx.len() {
            let Ok(slot) = self.idle_rx.try_recv() else { break };
            match slot {
                Slot::Live(w) if now.saturating_duration_since(w.last_used) >= idle => expired.push(w),
                other => self.put_back(other),
            }
        }
        if !expired.is_empty() {
            // Shared with the job so a failed thread start can take them back.
            let held = Arc::new(Mutex::new(expired));
            let theirs = held.clone();
            let stop_all = move |pool: &Pool| {
                let workers = std::mem::take(&mut *theirs.lock().unwrap_or_else(|e| e.into_inner()));
                for w in workers {
                    let (i, pid) = (w.slot, w.pid);
                    pool.stop(w);
                    pool.mark(i, SlotHealth::Idle);
                    pool.events.emit(&pool.label, EventKind::IdleStopped { pid });
                    pool.put_back(Slot::Idle(i));
                }
            };
            if !self.background("bulkhead-idle", stop_all) {
                // No thread: put them back as they are; the next tick retries.
                let workers = std::mem::take(&mut *held.lock().unwrap_or_else(|e| e.into_inner()));
                for w in workers {
                    self.put_back(Slot::Live(w));
                }
            }
        }
        true
    }

    fn policy_failure(&self, i: usize, reason: &str) {
        let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
        self.unhealthy.store(true, Ordering::Release);
        let was_failed = st.failed().is_some();
        let gave_up = st.on_failure(i, Instant::now(), reason) == Decision::GiveUp && !was_failed;
        drop(st);
        if gave_up {
            self.events.emit(
                &self.label,
                EventKind::GaveUp {
                    reason: reason.to_string(),
                },
            );
        }
        self.update_health();
    }

    /// Records what slot `i` holds and reports a health change.
    fn mark(&self, i: usize, h: SlotHealth) {
        let changed = {
            let mut slots = self.slot_health.lock().unwrap_or_else(|e| e.into_inner());
            let changed = slots[i] != h;
            slots[i] = h;
            changed
        };
        if changed {
            self.update_health();
        }
    }

    /// The plugin's health now.
    pub(crate) fn health(&self) -> Health {
        let (failed, next) = {
            let st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
            (st.failed().cloned(), st.next_attempt())
        };
        if let Some(f) = failed {
            return Health::Failed {
                reason: f.reason,
                since: self.system_time(f.since),
            };
        }
        let slots = self.slot_health.lock().unwrap_or_else(|e| e.into_inner());
        let live = slots.iter().filter(|h| **h == SlotHealth::Live).count();
        let down = slots.iter().filter(|h| **h == SlotHealth::Down).count();
        if down == 0 {
            return Health::Healthy;
        }
        let now = Instant::now();
        Health::Degraded {
            live,
            workers: self.size,
            restarting: down,
            next_attempt: next.filter(|&at| at > now).map(|at| self.system_time(at)),
        }
    }

    /// Emits `HealthChanged` (and logs) if the health changed since last reported.
    fn update_health(&self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut last = self.last_health.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.health();
        if now.same_state(&last) {
            return;
        }
        match &now {
            Health::Healthy => tracing::info!(target: "bulkhead::supervision", plugin = &*self.label, "plugin healthy"),
            other => {
                tracing::warn!(target: "bulkhead::supervision", plugin = &*self.label, health = ?other, "plugin health changed")
            }
        }
        *last = now.clone();
        drop(last);
        self.events.emit(&self.label, EventKind::HealthChanged { health: now });
    }

    /// Clears the failed state and the restart window.
    pub(crate) fn reset(&self) {
        self.restart.lock().unwrap_or_else(|e| e.into_inner()).reset();
        self.update_health();
    }

    /// Stops every worker: a polite request, the grace period, then SIGKILL.
    /// Workers busy in a call past the grace period are killed.
    pub(crate) fn shutdown(&self) -> Vec<WorkerReport> {
        self.shutdown_by(Instant::now() + self.grace)
    }

    /// A reload's drain: calls already running finish within their own
    /// deadlines (and new calls are refused, so callers move to the new pool);
    /// then every worker is stopped.
    pub(crate) fn drain(&self) -> Vec<WorkerReport> {
        self.retired.store(true, Ordering::Release);
        let latest = self.started_at + Duration::from_micros(self.latest_deadline_us.load(Ordering::Relaxed));
        let by = latest.max(Instant::now()) + self.grace;
        self.shutdown_by(by)
    }

    /// The shutdown: calls still running may finish until `busy_until`.
    fn shutdown_by(&self, busy_until: Instant) -> Vec<WorkerReport> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Vec::new();
        }
        drop(self.closing.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut reports = Vec::new();
        let mut collected = 0;
        // 1. Idle workers, the standby, and calls that finish in time.
        self.stop_standby(&mut reports);
        self.collect(busy_until, &mut collected, &mut reports);
        // 2. Workers still busy in a call are killed; their calls end at once
        //    and their slots come back. Workers held by background jobs are left
        //    to those jobs, which see the pool closed and hand them over.
        self.kill_busy(&mut reports);
        // 3. Background jobs (reaping, restarts, standby refill, idle stops) finish.
        let bound = Instant::now() + self.launch.load_timeout + KILL_REAP_BOUND;
        while self.jobs.load(Ordering::Acquire) > 0 && self.jobs_done_rx.recv_deadline(bound).is_ok() {}
        // 4. Every slot comes back, and a standby a job stored meanwhile.
        self.collect(bound, &mut collected, &mut reports);
        self.stop_standby(&mut reports);
        reports.append(&mut self.late_reports.lock().unwrap_or_else(|e| e.into_inner()));
        // 5. Only what escaped all of that is SIGKILLed.
        self.kill_registered(&mut reports);
        // 6. Wake callers still waiting for a slot.
        for _ in 0..self.size {
            let _ = self.idle_tx.try_send(Slot::Closed);
        }
        reports
    }

    /// Takes slots back until all are in or `deadline` passes, stopping live workers.
    fn collect(&self, deadline: Instant, collected: &mut usize, reports: &mut Vec<WorkerReport>) {
        let slots = self.slots.load(Ordering::Acquire);
        while *collected < slots {
            match self.idle_rx.recv_deadline(deadline) {
                // Killed (and reported) as busy after the grace period.
                Ok(Slot::Live(w)) if w.proc.exit().is_some() => {
                    *collected += 1;
                    self.bury(w);
                }
                Ok(Slot::Live(w)) => {
                    *collected += 1;
                    reports.push(self.stop(w));
                }
                Ok(Slot::Dying(w)) => {
                    *collected += 1;
                    self.bury(w);
                }
                Ok(Slot::Empty(_) | Slot::Idle(_)) => *collected += 1,
                Ok(Slot::Closed) => {}
                Err(_) => break,
            }
        }
    }

    fn stop_standby(&self, reports: &mut Vec<WorkerReport>) {
        let standby = self.standby.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = standby {
            reports.push(self.stop(w));
        }
    }

    /// SIGKILLs the workers running a call right now.
    fn kill_busy(&self, reports: &mut Vec<WorkerReport>) {
        let procs: Vec<_> = self.procs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in procs.iter().filter(|p| p.busy.load(Ordering::Acquire)) {
            self.force(p, reports);
        }
    }

    /// SIGKILLs every registered worker that is still alive.
    fn kill_registered(&self, reports: &mut Vec<WorkerReport>) {
        let procs: Vec<_> = self.procs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in procs.iter() {
            self.force(p, reports);
        }
    }

    /// SIGKILLs one worker unless it has already exited, and reports it.
    fn force(&self, p: &ProcState, reports: &mut Vec<WorkerReport>) {
        if p.exit().is_some() {
            return;
        }
        p.kill();
        let exit = p.wait(Instant::now() + KILL_REAP_BOUND);
        if let Some(exit) = exit {
            self.exited(p.pid(), exit, p.usage());
        }
        reports.push(WorkerReport {
            plugin: self.label.clone(),
            pid: p.pid(),
            exit,
            forced: true,
        });
    }

    fn stop(&self, w: WorkerProcess) -> WorkerReport {
        let usage_of = w.proc.clone();
        let (pid, exit, forced) = w.shutdown(self.grace);
        if let Some(exit) = exit {
            self.exited(pid, exit, usage_of.usage());
        }
        WorkerReport {
            plugin: self.label.clone(),
            pid,
            exit,
            forced,
        }
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.live_pids().len(), self.events.dropped())
    }
}

fn source_suffix(e: &CallError) -> String {
    std::error::Error::source(e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

impl Tick for Pool {
    fn tick(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        if let Some(idle) = self.idle_timeout {
            self.idle_tick(idle);
        }
        if let Some(budget) = self.idle_cpu {
            self.idle_cpu_tick(budget);
        }
        true
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A worker held for a stream; its slot goes back to the pool on drop.
pub(crate) struct Lease {
    pub(crate) pool: Arc<Pool>,
    pub(crate) slot: Slot,
}

impl Lease {
    /// Bookkeeping after a request on the leased worker got an answer.
    pub(crate) fn note_success(&self) {
        if let Slot::Live(w) = &self.slot {
            self.pool.note_success(w.slot);
        }
    }

    /// The leased worker, while it is alive.
    pub(crate) fn worker(&mut self) -> Option<&mut WorkerProcess> {
        match &mut self.slot {
            Slot::Live(w) => Some(w),
            _ => None,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut slot = std::mem::replace(&mut self.slot, Slot::Closed);
        if let Slot::Live(w) = &mut slot {
            w.proc.busy.store(false, Ordering::Release);
            w.last_used = Instant::now();
        }
        self.pool.put_back(slot);
    }
}

/// A slot taken from the pool; given back on drop, whatever happened.
struct SlotGuard<'a> {
    pool: &'a Pool,
    slot: Slot,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut slot = std::mem::replace(&mut self.slot, Slot::Closed);
        if let Slot::Live(w) = &mut slot {
            w.last_used = Instant::now();
        }
        self.pool.put_back(slot);
    }
}
