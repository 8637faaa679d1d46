//! A plugin's worker processes and the dispatch of calls to them.
//!
//! Each of the plugin's `n` workers lives in a *slot*; idle slots wait in a
//! bounded `crossbeam-channel`. A call takes a slot (waiting at most until its
//! deadline, with a cap on how many calls may wait), uses the worker, and puts
//! the slot back. Only the worker that ran a failing call is affected.
//!
//! A worker that crashed, hung or broke the protocol is signalled at once and
//! the call returns; its slot becomes *dying*. A dying slot is recovered off
//! the caller's path: if a warm standby is ready (and the policy allows a
//! restart now) the standby is promoted on the spot; otherwise a background job
//! reaps the dead worker first (a slot never holds two workers), waits out the
//! policy's backoff, and starts a replacement. A standby is refilled in the
//! background after each promotion.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::call::{Answer, Failure};
use crate::error::{CallError, Exit, LoadError};
use crate::events::{EventHub, EventKind};
use crate::observe::{self, CallMetrics};
use crate::restart::{Decision, RestartPolicy, RestartState};
use crate::stats::{Counters, Stats};
use crate::worker_process::{Launch, ProcState, WorkerProcess, KILL_REAP_BOUND};

/// Pause between promoting a standby and reaping/refilling in the background.
const STANDBY_REFILL_DELAY: Duration = Duration::from_millis(5);

pub(crate) enum Slot {
    Live(WorkerProcess),
    /// Its worker failed and has been signalled; reap it before reuse.
    Dying(WorkerProcess),
    /// Needs a replacement worker.
    Empty,
    /// The pool is shut down (wakes waiting callers).
    Closed,
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
    standby_enabled: bool,
    standby: Mutex<Option<WorkerProcess>>,
    procs: Mutex<Vec<Arc<ProcState>>>,
    latest_pid: AtomicU64,
    pub(crate) counters: Counters,
    metrics: CallMetrics,
    events: Arc<EventHub>,
    closed: AtomicBool,
    /// Dropped at shutdown to cut short a background job's backoff wait.
    closing: Mutex<Option<Sender<()>>>,
    closing_rx: Receiver<()>,
    /// Background jobs in flight, and a signal each sends when done.
    jobs: AtomicUsize,
    jobs_done_tx: Sender<()>,
    jobs_done_rx: Receiver<()>,
    me: std::sync::Weak<Pool>,
    grace: Duration,
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
            restart: Mutex::new(RestartState::new(config.policy)),
            unhealthy: AtomicBool::new(false),
            standby_enabled: config.standby,
            standby: Mutex::new(None),
            procs: Mutex::new(Vec::new()),
            latest_pid: AtomicU64::new(0),
            counters: Counters::default(),
            events,
            closed: AtomicBool::new(false),
            closing: Mutex::new(Some(closing_tx)),
            closing_rx,
            jobs: AtomicUsize::new(0),
            jobs_done_tx,
            jobs_done_rx,
            me: me.clone(),
            grace: config.grace,
            started: SystemTime::now(),
            started_at: Instant::now(),
        });
        let mut info = None;
        for _ in 0..size {
            let (w, i) = WorkerProcess::start(&pool.launch, None)?;
            pool.register(&w);
            info.get_or_insert(i);
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
        Ok((pool, info.expect("size >= 1")))
    }

    fn register(&self, w: &WorkerProcess) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.retain(|p| p.exit().is_none());
        procs.push(w.proc.clone());
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
        self.counters.call_finished(result.as_ref().err());
        self.metrics.call_done(&span, start, result.as_ref().err());
        result
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
        if self.unhealthy.load(Ordering::Acquire) {
            self.check_failed(start)?;
        }
        let mut slot = self.acquire(start, deadline)?;
        if matches!(slot.slot, Slot::Empty) {
            self.replace(&mut slot, deadline)?;
        }
        let Slot::Live(worker) = &mut slot.slot else {
            return Err(CallError::ShutDown);
        };
        span.record("worker_pid", worker.pid);
        match worker.call(method, payload, deadline, target) {
            Ok(answer) => {
                let result = f(answer);
                self.note_success();
                result
            }
            Err(failure) => Err(self.failed(&mut slot.slot, failure, method, start, limit)),
        }
    }

    /// Bookkeeping after a request that got an answer.
    pub(crate) fn note_success(&self) {
        if self.unhealthy.load(Ordering::Acquire) {
            self.restart.lock().unwrap_or_else(|e| e.into_inner()).on_success();
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
        let Slot::Live(worker) = std::mem::replace(slot, Slot::Empty) else {
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
            Failure::Died { exit, stderr } => {
                observe::crashed(&self.label, pid, method, &exit);
                CallError::WorkerDied { exit, stderr }
            }
            Failure::Protocol(e) => {
                observe::protocol_failure(&self.label, pid, method, &e);
                CallError::Protocol(e)
            }
        };
        self.policy_failure(&format!("worker {pid}: {err}{}", source_suffix(&err)));
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
        if matches!(guard.slot, Slot::Empty) {
            self.replace(&mut guard, deadline)?;
        }
        if !matches!(guard.slot, Slot::Live(_)) {
            return Err(CallError::ShutDown);
        }
        let slot = std::mem::replace(&mut guard.slot, Slot::Empty);
        // The guard now holds nothing; the lease gives the slot back instead.
        std::mem::forget(guard);
        Ok(Lease {
            pool: self.clone(),
            slot,
        })
    }

    fn check_failed(&self, now: Instant) -> Result<(), CallError> {
        let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
        st.check(now).map_err(|f| CallError::Failed {
            reason: f.reason,
            since: self.started + f.since.saturating_duration_since(self.started_at),
            restarts: f.restarts,
        })
    }

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
                    self.idle_rx.recv_deadline(deadline).map_err(|e| match e {
                        RecvTimeoutError::Timeout => self.busy_or_backoff(start),
                        RecvTimeoutError::Disconnected => CallError::ShutDown,
                    })
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
        Ok(SlotGuard { pool: self, slot })
    }

    /// No slot came free in time: say so, or say that a restart is backing off.
    fn busy_or_backoff(&self, start: Instant) -> CallError {
        let now = Instant::now();
        match self.restart.lock().unwrap_or_else(|e| e.into_inner()).not_before() {
            Some(at) if at > now => CallError::Backoff { retry_in: at - now },
            _ => CallError::Busy {
                waited: start.elapsed(),
            },
        }
    }

    /// A call found an empty slot (a failed plugin that was reset or cooled
    /// down, or a replacement that failed to load): start one now, within the
    /// call's deadline.
    fn replace(&self, slot: &mut SlotGuard<'_>, deadline: Instant) -> Result<(), CallError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::ShutDown);
        }
        let now = Instant::now();
        self.check_failed(now)?;
        let not_before = self.restart.lock().unwrap_or_else(|e| e.into_inner()).not_before();
        if let Some(at) = not_before.filter(|&at| at > now) {
            if at >= deadline {
                return Err(CallError::Backoff { retry_in: at - now });
            }
            std::thread::sleep(at - now);
        }
        let w = self
            .start_replacement(Some(deadline))
            .map_err(|e| CallError::Restart(Box::new(e)))?;
        slot.slot = Slot::Live(w);
        Ok(())
    }

    /// Counts a restart against the policy and emits `Restarted`.
    fn note_restart(&self, pid: u32) {
        let restarts = {
            let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
            st.on_restart(Instant::now());
            st.total_restarts()
        };
        self.counters.restarted();
        self.events.emit(&self.label, EventKind::Restarted { pid, restarts });
    }

    /// Starts a replacement worker and does the bookkeeping.
    fn start_replacement(&self, deadline: Option<Instant>) -> Result<WorkerProcess, LoadError> {
        match WorkerProcess::start(&self.launch, deadline) {
            Ok((w, _info)) => {
                self.register(&w);
                self.note_restart(w.pid);
                Ok(w)
            }
            Err(e) => {
                self.policy_failure(&format!("replacement worker failed to load: {e}"));
                Err(e)
            }
        }
    }

    /// Whether a restart may happen right now (not failed, no backoff pending).
    fn may_restart_now(&self) -> bool {
        let st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
        st.failed().is_none() && st.not_before().map_or(true, |at| at <= Instant::now())
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
            self.events
                .emit(&self.label, EventKind::WorkerExited { pid: dying.pid, exit });
        }
        dying
    }

    /// Reaps a failed worker and waits for its output pipes to drain.
    fn bury(&self, dying: WorkerProcess) {
        self.reap(dying).wait_drained();
    }

    /// Recovers a slot whose worker failed: promote the standby now if there is
    /// one and the policy allows, else reap and restart in the background.
    fn recover(&self, dying: WorkerProcess) {
        let promoted = if self.standby_enabled && self.may_restart_now() {
            self.standby.lock().unwrap_or_else(|e| e.into_inner()).take()
        } else {
            None
        };
        if let Some(w) = promoted {
            self.note_restart(w.pid);
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
            let slot = pool.background_replacement();
            pool.put_back(slot);
            dead.wait_drained();
        });
        if !started {
            // No thread: leave the slot empty; the next call that takes it restarts it.
            self.to_channel(Slot::Empty);
        }
    }

    fn background_replacement(&self) -> Slot {
        let not_before = self.restart.lock().unwrap_or_else(|e| e.into_inner()).not_before();
        if let Some(at) = not_before {
            // Wait out the backoff, unless the pool shuts down first.
            if self.closing_rx.recv_deadline(at).is_ok() || self.closed.load(Ordering::Acquire) {
                return Slot::Empty;
            }
        }
        if self.closed.load(Ordering::Acquire) || self.is_failed() {
            return Slot::Empty;
        }
        if self.standby_enabled {
            if let Some(w) = self.standby.lock().unwrap_or_else(|e| e.into_inner()).take() {
                self.note_restart(w.pid);
                self.refill_standby();
                return Slot::Live(w);
            }
        }
        match self.start_replacement(None) {
            Ok(w) => Slot::Live(w),
            Err(_) => Slot::Empty,
        }
    }

    /// Starts a fresh standby (not a restart: it serves nothing until promoted).
    fn refill_standby(&self) {
        if self.closed.load(Ordering::Acquire) || self.is_failed() {
            return;
        }
        if let Ok((w, _)) = WorkerProcess::start(&self.launch, None) {
            self.register(&w);
            let mut standby = self.standby.lock().unwrap_or_else(|e| e.into_inner());
            if self.closed.load(Ordering::Acquire) || standby.is_some() {
                drop(standby);
                self.stop(w);
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
            Slot::Empty if !self.is_failed() => {
                if !self.background("bulkhead-restart", |pool| {
                    let slot = pool.background_replacement();
                    pool.put_back(slot);
                }) {
                    self.to_channel(Slot::Empty);
                }
            }
            other => self.to_channel(other),
        }
    }

    fn policy_failure(&self, reason: &str) {
        let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
        self.unhealthy.store(true, Ordering::Release);
        let was_failed = st.failed().is_some();
        if st.on_failure(Instant::now(), reason) == Decision::GiveUp && !was_failed {
            drop(st);
            self.events.emit(
                &self.label,
                EventKind::GaveUp {
                    reason: reason.to_string(),
                },
            );
        }
    }

    /// Clears the failed state and the restart window.
    pub(crate) fn reset(&self) {
        self.restart.lock().unwrap_or_else(|e| e.into_inner()).reset();
    }

    /// Stops every worker: a polite request, the grace period, then SIGKILL.
    /// Workers busy in a call past the grace period are killed.
    pub(crate) fn shutdown(&self) -> Vec<WorkerReport> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Vec::new();
        }
        drop(self.closing.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut reports = Vec::new();
        let mut collected = 0;
        // 1. Idle workers, and calls that finish within the grace period.
        self.collect(Instant::now() + self.grace, &mut collected, &mut reports);
        self.stop_standby(&mut reports);
        // 2. Workers still busy in a call are killed; their calls end at once.
        self.kill_registered(&mut reports);
        // 3. Background jobs (reaping, restarts, standby) finish; they see the
        //    pool closed and hand their slots back.
        let bound = Instant::now() + self.launch.load_timeout + KILL_REAP_BOUND;
        while self.jobs.load(Ordering::Acquire) > 0 && self.jobs_done_rx.recv_deadline(bound).is_ok() {}
        // 4. Every slot comes back.
        self.collect(bound, &mut collected, &mut reports);
        self.stop_standby(&mut reports);
        self.kill_registered(&mut reports);
        // 5. Wake callers still waiting for a slot.
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
                Ok(Slot::Live(w)) => {
                    *collected += 1;
                    reports.push(self.stop(w));
                }
                Ok(Slot::Dying(w)) => {
                    *collected += 1;
                    self.bury(w);
                }
                Ok(Slot::Empty) => *collected += 1,
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

    /// SIGKILLs every registered worker that is still alive.
    fn kill_registered(&self, reports: &mut Vec<WorkerReport>) {
        let procs: Vec<_> = self.procs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in procs.iter().filter(|p| p.exit().is_none()) {
            p.kill();
            let exit = p.wait(Instant::now() + KILL_REAP_BOUND);
            reports.push(WorkerReport {
                plugin: self.label.clone(),
                pid: p.pid(),
                exit,
                forced: true,
            });
        }
    }

    fn stop(&self, w: WorkerProcess) -> WorkerReport {
        let (pid, exit, forced) = w.shutdown(self.grace);
        if let Some(exit) = exit {
            self.events.emit(&self.label, EventKind::WorkerExited { pid, exit });
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
        let slot = std::mem::replace(&mut self.slot, Slot::Empty);
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
        let slot = std::mem::replace(&mut self.slot, Slot::Empty);
        self.pool.put_back(slot);
    }
}
