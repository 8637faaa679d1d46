//! Recovery: what happens to a slot off the caller's path.
//!
//! What this part guarantees:
//!
//! - A dying worker (one that failed a request, or was killed for using CPU
//!   with no call in flight) is replaced under the [`RestartPolicy`]: if a warm
//!   standby is ready and the policy allows a restart now, the standby is
//!   promoted on the spot and a new standby started in the background;
//!   otherwise a background job reaps the dead worker first (a slot never
//!   holds two workers), waits out the slot's backoff, and starts a
//!   replacement. A plugin whose restart budget is spent gets no replacement
//!   until [`Pool::reset`] or its cool-down; a call that then finds the slot
//!   empty starts one.
//! - Without a standby, the replacement of a worker a call found gone gets a
//!   *head start* ([`Pool::head_start`]): if the policy will restart it with
//!   no wait, a fork-server blank that is ready is handed the plugin at once,
//!   from the failing call, before its exit and crash report are collected;
//!   the restart job (or a call that finds the slot empty) finishes that
//!   worker's handshake instead of starting one. At most one at a time; one
//!   that ends up unused is killed and reaped by the job.
//! - Every restart is counted against the policy, logged with the cause of
//!   the loss, and announced (`Restarted`); a spent budget is announced once
//!   (`GaveUp`).
//! - With an idle timeout, workers nobody called for that long are stopped
//!   politely; their slots become idle and the next call that takes one starts
//!   a worker (not counted as a restart).
//! - With an idle-CPU budget, a worker that used more CPU than that with no
//!   call in flight is killed with a typed cause and recovered like a crashed
//!   one.
//! - The plugin's [`Health`] is derived from the restart state and what each
//!   slot holds, and every change of it is logged and announced
//!   (`HealthChanged`) once.
//! - Background jobs hold the pool only while they run; the shutdown waits for
//!   them, and each hands its worker over to the shutdown once the pool is closed.
//!
//! The restart state, the slots' records and the last reported health share
//! one lock; the standby and the reports of standbys stopped during shutdown
//! share another.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{Pool, Slot, WorkerReport};
use crate::error::{CallError, LoadError};
use crate::events::EventKind;
use crate::health::Health;
use crate::restart::{Decision, RestartPolicy, RestartState};
use crate::usage;
use crate::worker_process::{Begun, Tick, WorkerProcess};

/// Pause between promoting a standby and reaping/refilling in the background.
const STANDBY_REFILL_DELAY: Duration = Duration::from_millis(5);
/// Pause between putting a restarted slot back and the dead worker's
/// clean-up (its output drained, its region unmapped, the job's thread ended).
const CLEANUP_DELAY: Duration = Duration::from_millis(1);
/// How often the idle-CPU watch reads the CPU time of idle workers.
const IDLE_CPU_CHECK: Duration = Duration::from_millis(250);
/// Shortest idle period over which CPU use outside calls is judged.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(1);

/// The recovery part of a pool.
pub(super) struct Recovery {
    state: Mutex<Supervision>,
    /// Mirrors "the restart state has something to say" so healthy calls skip the lock.
    unhealthy: AtomicBool,
    standby_enabled: bool,
    spare: Mutex<Spare>,
    idle_timeout: Option<Duration>,
    /// CPU a worker may use per second with no call in flight.
    idle_cpu: Option<Duration>,
    jobs: Jobs,
}

/// The restart policy's state and what each slot holds, under one lock.
struct Supervision {
    restart: RestartState,
    slots: Vec<SlotRecord>,
    /// The last health reported (event and log), to report changes only.
    reported: Health,
}

/// What slot `i` holds, and why its worker was last lost.
struct SlotRecord {
    health: SlotHealth,
    lost: Option<Lost>,
}

/// What a slot holds, for [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotHealth {
    Live,
    Down,
    Idle,
}

/// Why a slot's worker was last lost, for the restart's log line.
struct Lost {
    pid: u32,
    method: Option<u32>,
    cause: String,
}

/// The warm standby, and reports of standbys a background job stopped during shutdown.
struct Spare {
    worker: Option<WorkerProcess>,
    /// A replacement started from a fork-server blank the moment its slot's
    /// worker was found gone ([`Pool::head_start`]), for the restart job.
    head_start: Option<(usize, Begun)>,
    stopped: Vec<WorkerReport>,
}

/// Background jobs in flight, and a signal each sends when done.
struct Jobs {
    count: AtomicUsize,
    done_tx: Sender<()>,
    done_rx: Receiver<()>,
}

impl Recovery {
    pub(super) fn new(
        policy: RestartPolicy,
        size: usize,
        standby: bool,
        idle_timeout: Option<Duration>,
        idle_cpu: Option<Duration>,
    ) -> Self {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Recovery {
            state: Mutex::new(Supervision {
                restart: RestartState::new(policy, size),
                slots: (0..size)
                    .map(|_| SlotRecord {
                        health: SlotHealth::Live,
                        lost: None,
                    })
                    .collect(),
                reported: Health::Healthy,
            }),
            unhealthy: AtomicBool::new(false),
            standby_enabled: standby,
            spare: Mutex::new(Spare {
                worker: None,
                head_start: None,
                stopped: Vec::new(),
            }),
            idle_timeout,
            idle_cpu,
            jobs: Jobs {
                count: AtomicUsize::new(0),
                done_tx,
                done_rx,
            },
        }
    }

    /// How often the pool's timer must run its idle checks, if it has any.
    pub(super) fn tick(&self) -> Option<Duration> {
        let idle_tick = self
            .idle_timeout
            .map(|idle| (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        let cpu_tick = self.idle_cpu.map(|_| IDLE_CPU_CHECK);
        idle_tick.into_iter().chain(cpu_tick).min()
    }

    fn state(&self) -> MutexGuard<'_, Supervision> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spare(&self) -> MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no background job is in flight, or `bound` passes.
    pub(super) fn wait_jobs(&self, bound: Instant) {
        while self.jobs.count.load(Ordering::Acquire) > 0 && self.jobs.done_rx.recv_deadline(bound).is_ok() {}
    }

    /// The head start made for slot `i` (any slot's, if `None`).
    pub(super) fn take_head_start(&self, i: Option<usize>) -> Option<Begun> {
        let mut spare = self.spare();
        match &spare.head_start {
            Some((slot, _)) if i.is_none() || i == Some(*slot) => spare.head_start.take().map(|(_, b)| b),
            _ => None,
        }
    }

    /// Takes the standby out, if there is one.
    pub(super) fn take_standby(&self) -> Option<WorkerProcess> {
        self.spare().worker.take()
    }

    /// Takes the reports of standbys stopped by background jobs during shutdown.
    pub(super) fn take_stopped(&self) -> Vec<WorkerReport> {
        std::mem::take(&mut self.spare().stopped)
    }
}

impl Pool {
    /// Starts the warm standby, if the pool has one (at start-up).
    pub(super) fn start_standby(&self) -> Result<(), LoadError> {
        if self.recovery.standby_enabled {
            let (w, _) = WorkerProcess::start(&self.launch, None)?;
            self.register(&w);
            self.recovery.spare().worker = Some(w);
        }
        Ok(())
    }

    /// Whether the restart state has something to say (a failure not yet
    /// outgrown): calls then check it before taking a slot.
    pub(super) fn unhealthy(&self) -> bool {
        self.recovery.unhealthy.load(Ordering::Acquire)
    }

    /// Bookkeeping after a request on slot `index` got an answer: the
    /// slot's backoff starts over.
    pub(crate) fn note_success(&self, index: usize) {
        if self.unhealthy() {
            let mut st = self.recovery.state();
            st.restart.on_success(index);
            if st.restart.is_quiet() {
                self.recovery.unhealthy.store(false, Ordering::Release);
            }
        }
    }

    /// Refuses a call with `Failed` while the restart budget is spent.
    pub(super) fn check_failed(&self, now: Instant) -> Result<(), CallError> {
        let checked = {
            let mut st = self.recovery.state();
            let was_failed = st.restart.failed().is_some();
            let r = st.restart.check(now);
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

    /// The earliest a backing-off replacement will start, if one is waiting.
    pub(super) fn next_attempt(&self) -> Option<Instant> {
        self.recovery.state().restart.next_attempt()
    }

    fn not_before(&self, i: usize) -> Option<Instant> {
        self.recovery.state().restart.not_before(i)
    }

    /// Whether slot `i` may restart right now (not failed, no backoff pending).
    fn may_restart_now(&self, i: usize) -> bool {
        let st = self.recovery.state();
        st.restart.failed().is_none() && st.restart.not_before(i).map_or(true, |at| at <= Instant::now())
    }

    /// Whether the restart budget is spent.
    pub(super) fn is_failed(&self) -> bool {
        self.recovery.state().restart.failed().is_some()
    }

    /// A call found slot `i` empty (a failed plugin that was reset or cooled
    /// down, or a replacement that failed to load): starts one now, within the
    /// call's deadline.
    pub(super) fn replace(&self, i: usize, deadline: Instant) -> Result<WorkerProcess, CallError> {
        if self.closing.is_closed() {
            return Err(CallError::ShutDown);
        }
        let now = Instant::now();
        self.check_failed(now)?;
        if let Some(at) = self.not_before(i).filter(|&at| at > now) {
            if at >= deadline {
                return Err(CallError::Backoff { retry_in: at - now });
            }
            // Wait out the backoff within the call's deadline (or until shutdown).
            if self.closing.wait_until(at) {
                return Err(CallError::ShutDown);
            }
        }
        self.start_replacement(i, Some(deadline), false)
            .map_err(|e| CallError::Restart(Box::new(e)))
    }

    /// A call found slot `i` stopped for idleness: starts its worker again
    /// (the slot stays idle if that fails: the next call tries again).
    pub(super) fn wake_idle(&self, i: usize, deadline: Instant) -> Result<WorkerProcess, CallError> {
        let (mut w, _) =
            WorkerProcess::start(&self.launch, Some(deadline)).map_err(|e| CallError::Restart(Box::new(e)))?;
        w.slot = i;
        self.register(&w);
        self.mark(i, SlotHealth::Live);
        Ok(w)
    }

    /// Counts a restart of slot `i` against the policy, logs it and emits `Restarted`.
    fn note_restart(&self, i: usize, pid: u32) {
        let (restarts, lost) = {
            let mut st = self.recovery.state();
            st.restart.on_restart(i, Instant::now());
            (st.restart.total_restarts(), st.slots[i].lost.take())
        };
        self.counters.restarted();
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

    /// Slot `i`'s worker was just found gone. If no warm standby replaces it
    /// and the restart policy will at once, a fork-server blank that is
    /// ready starts loading the replacement now, while the failed call
    /// collects the worker's exit and crash report (about a millisecond);
    /// the restart (the job's, or a call's that finds the slot empty)
    /// finishes it ([`start_replacement`](Self::start_replacement)).
    /// Only a ready blank is used (nothing here waits or forks), and one
    /// head start at a time; one the job does not use is killed and reaped.
    pub(super) fn head_start(&self, i: usize) {
        if self.recovery.standby_enabled || self.closing.is_closed() {
            return;
        }
        if !self.recovery.state().restart.would_restart_at_once(i, Instant::now()) {
            return;
        }
        if self.recovery.spare().head_start.is_some() {
            return;
        }
        let Some(begun) = WorkerProcess::begin_from_blank(&self.launch) else {
            return;
        };
        let mut spare = self.recovery.spare();
        let unused = match spare.head_start {
            None => {
                spare.head_start = Some((i, begun));
                None
            }
            Some(_) => Some(begun),
        };
        drop(spare);
        drop(unused);
    }

    /// Starts a replacement worker for slot `i` and does the bookkeeping.
    /// `in_background`: a restart job's, which asks for the fork-server blank
    /// it took later ([`Launch::replenish`](crate::worker_process::Launch::replenish)).
    fn start_replacement(
        &self,
        i: usize,
        deadline: Option<Instant>,
        in_background: bool,
    ) -> Result<WorkerProcess, LoadError> {
        let started = match self.recovery.take_head_start(Some(i)) {
            Some(begun) => WorkerProcess::finish(begun, &self.launch, deadline),
            None => WorkerProcess::start_leaving_blanks(&self.launch, deadline),
        };
        if !in_background {
            // (A restart job asks once its replacement's first call had the CPUs.)
            self.launch.replenish();
        }
        match started {
            Ok((mut w, _info)) => {
                w.slot = i;
                self.register(&w);
                self.note_restart(i, w.pid);
                Ok(w)
            }
            Err(e) => {
                let cause = format!("replacement worker failed to load: {e}");
                tracing::warn!(target: "bulkhead::supervision", plugin = &*self.label, slot = i, cause = %cause, "restart failed");
                self.recovery.state().slots[i].lost = Some(Lost {
                    pid: 0,
                    method: None,
                    cause: cause.clone(),
                });
                self.policy_failure(i, &cause);
                Err(e)
            }
        }
    }

    /// Slot `i`'s worker `pid` was lost (in call `method`, if any) for `cause`:
    /// the slot is down, and the loss counts against the restart policy.
    pub(super) fn lost_worker(&self, i: usize, pid: u32, method: Option<u32>, cause: String) {
        let reason = format!("worker {pid}: {cause}");
        let changed = {
            let mut st = self.recovery.state();
            let slot = &mut st.slots[i];
            let changed = slot.health != SlotHealth::Down;
            slot.health = SlotHealth::Down;
            slot.lost = Some(Lost { pid, method, cause });
            changed
        };
        if changed {
            self.update_health();
        }
        self.policy_failure(i, &reason);
    }

    /// Runs `job` on a background thread holding the pool; shutdown waits for it.
    fn background(&self, name: &str, job: impl FnOnce(&Pool) + Send + 'static) -> bool {
        let jobs = &self.recovery.jobs;
        while jobs.done_rx.try_recv().is_ok() {}
        let me = self.me.clone();
        jobs.count.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
            if let Some(pool) = me.upgrade() {
                job(&pool);
                let jobs = &pool.recovery.jobs;
                jobs.count.fetch_sub(1, Ordering::AcqRel);
                let _ = jobs.done_tx.send(());
            }
        });
        if spawned.is_err() {
            jobs.count.fetch_sub(1, Ordering::AcqRel);
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

    /// Reaps a failed worker and waits for its output pipes to drain.
    pub(super) fn bury(&self, dying: WorkerProcess) {
        self.reap(dying).wait_drained();
    }

    /// Recovers a slot whose worker failed: promote the standby now if there is
    /// one and the policy allows, else reap and restart in the background.
    pub(super) fn recover(&self, dying: WorkerProcess) {
        let i = dying.slot;
        let promoted = if self.recovery.standby_enabled && self.may_restart_now(i) {
            self.recovery.take_standby()
        } else {
            None
        };
        if let Some(mut w) = promoted {
            w.slot = i;
            self.note_restart(i, w.pid);
            w.wake();
            self.to_channel(Slot::Live(Box::new(w)));
            if !self.background("bulkhead-standby", move |pool| {
                // Let the promoted worker take its first calls before the
                // reaping and the next spawn compete with it for the CPUs.
                pool.closing.wait_until(Instant::now() + STANDBY_REFILL_DELAY);
                pool.bury(dying);
                pool.refill_standby();
            }) {
                // No thread: the standby is not refilled; the dying worker is
                // killed by its Drop and reaped by its reaper.
            }
            return;
        }
        let started = self.background("bulkhead-restart", move |pool| {
            // Reaped first (the replacement's head start, if any, began once
            // it had exited: a slot never holds two live workers); its pipes drain,
            // and what is left of it is let go, once the replacement is
            // serving and a caller waiting for it had the CPU first.
            let dead = pool.reap(dying);
            let slot = pool.background_replacement(i);
            // A head start this restart did not use (the pool is closing,
            // or the plugin failed meanwhile) is killed and reaped.
            drop(pool.recovery.take_head_start(Some(i)));
            pool.put_back(slot);
            pool.closing.wait_until(Instant::now() + CLEANUP_DELAY);
            pool.launch.replenish();
            dead.wait_drained();
            // A plugin that crashed once may crash again: the next restart
            // finds its worker's region and socket made.
            if !pool.closing.is_closed() {
                pool.launch.prepare_next();
            }
        });
        if !started {
            // No thread: leave the slot empty; the next call that takes it restarts it.
            self.to_channel(Slot::Empty(i));
        }
    }

    /// Starts a replacement for empty slot `i` in the background (or leaves
    /// the slot empty for the next call if no thread can be started).
    pub(super) fn restart_in_background(&self, i: usize) {
        if !self.background("bulkhead-restart", move |pool| {
            let slot = pool.background_replacement(i);
            pool.put_back(slot);
            pool.launch.replenish();
        }) {
            self.to_channel(Slot::Empty(i));
        }
    }

    /// A worker for slot `i`, after its backoff: the standby if there is one,
    /// else a new worker; the slot stays empty if the pool closes, the plugin
    /// is failed, or the worker cannot start.
    fn background_replacement(&self, i: usize) -> Slot {
        if let Some(at) = self.not_before(i) {
            // Wait out the backoff, unless the pool shuts down first.
            if self.closing.wait_until(at) {
                return Slot::Empty(i);
            }
        }
        if self.closing.is_closed() || self.is_failed() {
            return Slot::Empty(i);
        }
        if self.recovery.standby_enabled {
            if let Some(mut w) = self.recovery.take_standby() {
                w.slot = i;
                self.note_restart(i, w.pid);
                self.refill_standby();
                return Slot::Live(Box::new(w));
            }
        }
        match self.start_replacement(i, None, true) {
            Ok(w) => {
                // A call may be waiting for this slot: the new worker spins
                // for it (a fresh spin) instead of sleeping by the time the
                // caller has been woken and posts it.
                w.wake();
                Slot::Live(Box::new(w))
            }
            Err(_) => Slot::Empty(i),
        }
    }

    /// Starts a fresh standby (not a restart: it serves nothing until promoted).
    /// The new worker is stored even if shutdown began meanwhile: shutdown
    /// waits for this job and then stops the standby it finds, so the worker
    /// is stopped exactly once, politely.
    fn refill_standby(&self) {
        if self.closing.is_closed() || self.is_failed() {
            return;
        }
        if let Ok((w, _)) = WorkerProcess::start(&self.launch, None) {
            self.register(&w);
            let mut spare = self.recovery.spare();
            if spare.worker.is_some() {
                drop(spare);
                let report = self.stop(w);
                if self.closing.is_closed() {
                    self.recovery.spare().stopped.push(report);
                }
            } else {
                spare.worker = Some(w);
            }
        }
    }

    /// The pool timer's idle checks (on the timer thread, see [`event_loop`](crate::event_loop)).
    pub(super) fn recovery_tick(&self) {
        if let Some(idle) = self.recovery.idle_timeout {
            self.idle_tick(idle);
        }
        if let Some(budget) = self.recovery.idle_cpu {
            self.idle_cpu_tick(budget);
        }
    }

    /// One check of CPU use outside calls: each idle worker (one not in a call
    /// or stream: those are not in the channel) is taken out for a moment and
    /// its process tree's CPU time read. A worker idle for a whole
    /// [`IDLE_CPU_WINDOW`] or more that used more than `budget` per second of
    /// it is killed with a typed cause and its slot recovered like a crashed
    /// worker's (restart policy included).
    fn idle_cpu_tick(&self, budget: Duration) {
        let now = Tick::now();
        for _ in 0..self.dispatch.free() {
            let Some(slot) = self.dispatch.try_take() else { break };
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
                // Idle since the last reading: no call finished after it (nor
                // in its tick, which cannot be told apart).
                Some((at, seen)) if at > w.last_used => {
                    let window = now.since(at);
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
                Some((used, window)) => self.stop_for_idle_cpu(*w, used, window),
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
        self.lost_worker(i, pid, None, cause);
        self.put_back(Slot::Dying(Box::new(w)));
    }

    /// One idle check: takes the workers idle for `idle` out of the pool and
    /// hands them to a background job that stops them politely. Returns
    /// `false` once the pool is closed.
    fn idle_tick(&self, idle: Duration) -> bool {
        if self.closing.is_closed() {
            return false;
        }
        // A shutdown meanwhile collects the slots taken here: they go back
        // (or to the job) within microseconds, well inside its grace period.
        let now = Tick::now();
        let mut expired = Vec::new();
        for _ in 0..self.dispatch.free() {
            let Some(slot) = self.dispatch.try_take() else { break };
            match slot {
                Slot::Live(w) if now.since(w.last_used) >= idle => expired.push(w),
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
                    pool.stop(*w);
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

    /// Counts a failure of slot `i` against the restart policy; announces a
    /// spent budget once.
    fn policy_failure(&self, i: usize, reason: &str) {
        let gave_up = {
            let mut st = self.recovery.state();
            self.recovery.unhealthy.store(true, Ordering::Release);
            let was_failed = st.restart.failed().is_some();
            st.restart.on_failure(i, Instant::now(), reason) == Decision::GiveUp && !was_failed
        };
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
            let mut st = self.recovery.state();
            let changed = st.slots[i].health != h;
            st.slots[i].health = h;
            changed
        };
        if changed {
            self.update_health();
        }
    }

    /// The plugin's health now.
    pub(crate) fn health(&self) -> Health {
        self.health_of(&self.recovery.state())
    }

    fn health_of(&self, st: &Supervision) -> Health {
        if let Some(f) = st.restart.failed() {
            return Health::Failed {
                reason: f.reason.clone(),
                since: self.system_time(f.since),
            };
        }
        let live = st.slots.iter().filter(|s| s.health == SlotHealth::Live).count();
        let down = st.slots.iter().filter(|s| s.health == SlotHealth::Down).count();
        if down == 0 {
            return Health::Healthy;
        }
        let now = Instant::now();
        Health::Degraded {
            live,
            workers: self.size,
            restarting: down,
            next_attempt: st
                .restart
                .next_attempt()
                .filter(|&at| at > now)
                .map(|at| self.system_time(at)),
        }
    }

    /// Emits `HealthChanged` (and logs) if the health changed since last reported.
    fn update_health(&self) {
        if self.closing.is_closed() {
            return;
        }
        let mut st = self.recovery.state();
        let now = self.health_of(&st);
        if now.same_state(&st.reported) {
            return;
        }
        match &now {
            Health::Healthy => tracing::info!(target: "bulkhead::supervision", plugin = &*self.label, "plugin healthy"),
            other => {
                tracing::warn!(target: "bulkhead::supervision", plugin = &*self.label, health = ?other, "plugin health changed")
            }
        }
        st.reported = now.clone();
        drop(st);
        self.events.emit(&self.label, EventKind::HealthChanged { health: now });
    }

    /// Clears the failed state and the restart window.
    pub(crate) fn reset(&self) {
        self.recovery.state().restart.reset();
        self.update_health();
    }
}
