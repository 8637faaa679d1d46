//! A plugin's worker processes and the dispatch of calls to them.
//!
//! Each of the plugin's `n` workers lives in a *slot*; idle slots wait in a
//! bounded `crossbeam-channel`. A call takes a slot (waiting at most until its
//! deadline, with a cap on how many calls may wait), uses the worker, and puts
//! the slot back. A worker that crashed, hung or broke the protocol leaves its
//! slot empty; the next call that takes the slot starts a replacement, as the
//! restart policy allows. Only the worker that ran a failing call is affected.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::call::{Answer, Failure};
use crate::error::{CallError, Exit, LoadError};
use crate::events::{EventHub, EventKind};
use crate::restart::{Decision, RestartPolicy, RestartState};
use crate::stats::{Counters, Stats};
use crate::worker_process::{Launch, ProcState, WorkerProcess, KILL_REAP_BOUND};

enum Slot {
    Live(WorkerProcess),
    /// Needs a replacement worker.
    Empty,
    /// The pool is shut down (wakes waiting callers).
    Closed,
}

/// How one worker ended at shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    procs: Mutex<Vec<Arc<ProcState>>>,
    latest_pid: AtomicU64,
    pub(crate) counters: Counters,
    events: Arc<EventHub>,
    closed: AtomicBool,
    /// Dropped at shutdown to cut short a background restart's backoff wait.
    closing: Mutex<Option<Sender<()>>>,
    closing_rx: Receiver<()>,
    me: std::sync::Weak<Pool>,
    grace: Duration,
    started: SystemTime,
    started_at: Instant,
}

impl Pool {
    /// Starts `size` workers; fails (and stops any started) if one cannot load.
    pub(crate) fn start(
        label: Arc<str>,
        launch: Launch,
        size: usize,
        queue_limit: usize,
        policy: RestartPolicy,
        events: Arc<EventHub>,
        grace: Duration,
    ) -> Result<(Arc<Pool>, bulkhead_shared::protocol::PluginInfoWire), LoadError> {
        let size = size.max(1);
        let (idle_tx, idle_rx) = crossbeam_channel::bounded(size);
        let (closing_tx, closing_rx) = crossbeam_channel::bounded(0);
        let pool = Arc::new_cyclic(|me| Pool {
            label,
            launch,
            size,
            slots: AtomicUsize::new(0),
            idle_tx,
            idle_rx,
            waiting: AtomicUsize::new(0),
            queue_limit,
            restart: Mutex::new(RestartState::new(policy)),
            unhealthy: AtomicBool::new(false),
            procs: Mutex::new(Vec::new()),
            latest_pid: AtomicU64::new(0),
            counters: Counters::default(),
            events,
            closed: AtomicBool::new(false),
            closing: Mutex::new(Some(closing_tx)),
            closing_rx,
            me: me.clone(),
            grace,
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

    /// Pids of the workers currently alive.
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.iter().filter(|p| p.exit().is_none()).map(|p| p.pid()).collect()
    }

    /// Runs one call: `f` interprets the worker's answer while its buffer is borrowed.
    /// With `owned`, the answer is preferably delivered as [`Answer::Owned`].
    pub(crate) fn call<R>(
        &self,
        method: u32,
        payload: &[u8],
        limit: Duration,
        owned: bool,
        f: impl FnOnce(Answer<'_>) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let start = Instant::now();
        let deadline = start + limit;
        self.counters.call_started();
        let result = self.call_inner(method, payload, start, deadline, limit, owned, f);
        self.counters.call_finished(result.as_ref().err());
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn call_inner<R>(
        &self,
        method: u32,
        payload: &[u8],
        start: Instant,
        deadline: Instant,
        limit: Duration,
        owned: bool,
        f: impl FnOnce(Answer<'_>) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
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
        match worker.call(method, payload, deadline, owned) {
            Ok(answer) => {
                let result = f(answer);
                if self.unhealthy.load(Ordering::Acquire) {
                    let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
                    st.on_success();
                }
                result
            }
            Err(failure) => {
                let Slot::Live(worker) = std::mem::replace(&mut slot.slot, Slot::Empty) else {
                    unreachable!("slot was live")
                };
                Err(self.worker_failed(worker, failure, start, limit))
            }
        }
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

    /// Starts a replacement worker and does the bookkeeping.
    fn start_replacement(&self, deadline: Option<Instant>) -> Result<WorkerProcess, LoadError> {
        let restarts = {
            let mut st = self.restart.lock().unwrap_or_else(|e| e.into_inner());
            st.on_restart(Instant::now());
            st.total_restarts()
        };
        self.counters.restarted();
        match WorkerProcess::start(&self.launch, deadline) {
            Ok((w, _info)) => {
                self.register(&w);
                self.events
                    .emit(&self.label, EventKind::Restarted { pid: w.pid, restarts });
                Ok(w)
            }
            Err(e) => {
                self.policy_failure(&format!("replacement worker failed to load: {e}"));
                Err(e)
            }
        }
    }

    /// Replaces a dead worker in the background (after the policy's backoff),
    /// so the pool is back to strength without waiting for the next call.
    fn restart_in_background(&self) {
        let me = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("bulkhead-restart".into())
            .spawn(move || {
                let Some(pool) = me.upgrade() else { return };
                let slot = pool.background_replacement();
                pool.put_back(slot);
            });
        if spawned.is_err() {
            // No thread: leave the slot empty; the next call that takes it restarts it.
            let _ = self.idle_tx.try_send(Slot::Empty);
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
        match self.start_replacement(None) {
            Ok(w) => Slot::Live(w),
            Err(_) => Slot::Empty,
        }
    }

    fn is_failed(&self) -> bool {
        self.restart
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed()
            .is_some()
    }

    /// Returns a slot to circulation: idle workers to the channel, empty slots
    /// to a background restart (unless the plugin is failed), everything to
    /// shutdown if the pool is closed.
    fn put_back(&self, slot: Slot) {
        if self.closed.load(Ordering::Acquire) {
            // The shutdown collects it (and stops a live worker). If the
            // channel is full the worker is killed by its Drop instead.
            let _ = self.idle_tx.try_send(slot);
            return;
        }
        if matches!(slot, Slot::Empty) && !self.is_failed() {
            return self.restart_in_background();
        }
        if let Err(e) = self.idle_tx.try_send(slot) {
            // Cannot happen (one token per slot); if it did, the worker is
            // killed by its Drop rather than leaked.
            drop(e.into_inner());
        }
    }

    fn worker_failed(&self, worker: WorkerProcess, failure: Failure, start: Instant, limit: Duration) -> CallError {
        let pid = worker.pid;
        let exit = worker.proc.wait(Instant::now() + KILL_REAP_BOUND);
        let err = match failure {
            Failure::Timeout => {
                self.events.emit(&self.label, EventKind::Timeout { pid, limit });
                CallError::Timeout {
                    elapsed: start.elapsed(),
                    limit,
                }
            }
            Failure::Died { exit, stderr } => CallError::WorkerDied { exit, stderr },
            Failure::Protocol(e) => CallError::Protocol(e),
        };
        if let Some(exit) = exit {
            self.events.emit(&self.label, EventKind::WorkerExited { pid, exit });
        }
        worker.wait_drained();
        drop(worker);
        self.policy_failure(&format!("worker {pid}: {err}{}", source_suffix(&err)));
        err
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
        // 2. Workers still busy in a call are killed; their calls end at once.
        self.kill_registered(&mut reports);
        // 3. Every slot comes back: the killed calls', and any replacement that
        //    was starting in the background (bounded by the load timeout).
        self.collect(
            Instant::now() + self.launch.load_timeout + KILL_REAP_BOUND,
            &mut collected,
            &mut reports,
        );
        self.kill_registered(&mut reports);
        // 4. Wake callers still waiting for a slot.
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
                Ok(Slot::Empty) => *collected += 1,
                Ok(Slot::Closed) => {}
                Err(_) => break,
            }
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
