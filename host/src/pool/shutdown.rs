//! Shutdown: the pool's orderly end (also the end of a reload's drain).
//!
//! What this part guarantees:
//!
//! - Shutdown happens once; afterwards calls are refused with `ShutDown`, and
//!   callers waiting for a slot, or background jobs waiting out a backoff, are
//!   woken at once.
//! - Every worker the pool started is accounted for in the returned reports,
//!   stopped in this order: idle workers and the standby politely; calls still
//!   running may finish until a deadline (the grace period, or for a drain the
//!   latest deadline of any call plus the grace period), after which their
//!   workers are SIGKILLed; background jobs finish and hand their workers over
//!   to be stopped politely; only a registered worker still alive after all
//!   that is SIGKILLed and reported `forced`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::{Pool, Slot, WorkerReport};
use crate::worker_process::{ProcState, KILL_REAP_BOUND};

/// Whether the pool is closed, and the signal that wakes its waits.
pub(super) struct Closing {
    closed: AtomicBool,
    /// Dropped at shutdown to cut short a caller's or a background job's wait.
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
}

impl Closing {
    pub(super) fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Closing {
            closed: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            rx,
        }
    }

    /// Whether the shutdown has begun.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ready (disconnected) once the shutdown has begun: for `select!`.
    pub(super) fn signal(&self) -> &Receiver<()> {
        &self.rx
    }

    /// Waits until `at`, or less if the pool closes; returns whether it closed.
    pub(super) fn wait_until(&self, at: Instant) -> bool {
        self.rx.recv_deadline(at).is_ok() || self.is_closed()
    }

    /// Closes the pool and wakes its waits; `false` if it was closed already.
    fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        true
    }
}

impl Pool {
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
        let latest = self.dispatch.latest_deadline(self.started_at);
        let by = latest.max(Instant::now()) + self.grace;
        self.shutdown_by(by)
    }

    /// The shutdown: calls still running may finish until `busy_until`.
    fn shutdown_by(&self, busy_until: Instant) -> Vec<WorkerReport> {
        if !self.closing.close() {
            return Vec::new();
        }
        // Async callers queued for a slot see the pool closed at once (a
        // reload's callers move on to the new pool), as blocked ones do.
        self.dispatch.wake_all_async();
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
        self.recovery.wait_jobs(bound);
        // 4. Every slot comes back, and a standby a job stored meanwhile.
        self.collect(bound, &mut collected, &mut reports);
        self.stop_standby(&mut reports);
        reports.append(&mut self.recovery.take_stopped());
        // 5. Only what escaped all of that is SIGKILLed.
        self.kill_registered(&mut reports);
        // 6. Wake callers still waiting for a slot.
        self.wake_waiters();
        reports
    }

    /// Takes slots back until all are in or `deadline` passes, stopping live workers.
    fn collect(&self, deadline: Instant, collected: &mut usize, reports: &mut Vec<WorkerReport>) {
        let slots = self.dispatch.slots();
        while *collected < slots {
            match self.dispatch.take_by(deadline) {
                // Killed (and reported) as busy after the grace period.
                Some(Slot::Live(w)) if w.proc.exit().is_some() => {
                    *collected += 1;
                    self.bury(*w);
                }
                Some(Slot::Live(w)) => {
                    *collected += 1;
                    reports.push(self.stop(*w));
                }
                Some(Slot::Dying(w)) => {
                    *collected += 1;
                    self.bury(*w);
                }
                Some(Slot::Empty(_) | Slot::Idle(_)) => *collected += 1,
                Some(Slot::Closed) => {}
                None => break,
            }
        }
    }

    fn stop_standby(&self, reports: &mut Vec<WorkerReport>) {
        if let Some(w) = self.recovery.take_standby() {
            reports.push(self.stop(w));
        }
        // A head start no restart took (the pool closed first): it never
        // served, so it is killed and reaped, not reported.
        drop(self.recovery.take_head_start(None));
    }

    /// SIGKILLs the workers running a call right now.
    fn kill_busy(&self, reports: &mut Vec<WorkerReport>) {
        for p in self.registered().iter().filter(|p| p.busy.load(Ordering::Acquire)) {
            self.force(p, reports);
        }
    }

    /// SIGKILLs every registered worker that is still alive.
    fn kill_registered(&self, reports: &mut Vec<WorkerReport>) {
        for p in self.registered().iter() {
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
}
