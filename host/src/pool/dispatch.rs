//! Dispatch: choosing a slot, leasing its worker, running a call on it.
//!
//! What this part guarantees:
//!
//! - A call or a stream reaches a worker only through a [`Lease`], and every
//!   lease comes from one setup ([`Pool::take`]): it is refused at once if the
//!   pool is closed or the plugin has failed (restart budget spent); otherwise
//!   it gets a free slot within the call's deadline (with at most
//!   `queue_limit` callers waiting), and a slot that is empty or stopped for
//!   idleness gets a worker started on the spot.
//! - A slot obtained at or after the deadline is given back untouched and the
//!   call gets `Busy` (or `Backoff`): only a worker's own overrun may cost it
//!   its life, never the host's delay in handing it work.
//! - While a lease holds a live worker, that worker is *busy* (a shutdown past
//!   its deadline SIGKILLs busy workers). This module is the only writer of
//!   the flag: a lease sets it when it is made, and clears it when the worker
//!   answers a plain call, when a request fails, and when the lease ends.
//! - A lease ends by being dropped, whatever happened: its slot goes back into
//!   circulation ([`Pool::put_back`]) — a live worker to the free slots, a
//!   dying one to recovery, anything to the shutdown once the pool is closed.
//! - A failed request (timeout, death, protocol breach) goes through one path,
//!   [`Pool::failed`]: the failure is logged and counted against the restart
//!   policy, the worker is left *dying* in the slot (recovery takes it from
//!   there when the lease ends), and the caller's error is returned at once.
//!
//! The small call's path takes no lock and allocates nothing here: a channel
//! receive and send, a few atomics, and the restart state's lock only while
//! the plugin is unhealthy.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{Pool, Slot};
use crate::error::CallError;
use crate::events::EventKind;
use crate::link::{Answer, IoFail, Placed};
use crate::observe;
use crate::worker_process::Failure;
use crate::worker_process::{ProcState, Tick, WorkerProcess};

/// The free slots and the callers waiting for one.
pub(super) struct Dispatch {
    idle_tx: Sender<Slot>,
    idle_rx: Receiver<Slot>,
    /// Slots put into circulation (less than the pool's size only if start-up failed).
    slots: AtomicUsize,
    waiting: AtomicUsize,
    queue_limit: usize,
    /// Latest deadline of any call so far, in µs after the pool started,
    /// rounded up to a whole ms (for a drain).
    latest_deadline_us: AtomicU64,
    /// Callers that must not block (async ones) waiting for a slot: each
    /// slot put back wakes one.
    async_waiters: Mutex<VecDeque<(u64, Waker)>>,
    /// The key of the next async waiter.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    next_waiter: AtomicU64,
    /// How many wakers `async_waiters` holds (read without its lock).
    async_waiting: AtomicUsize,
}

impl Dispatch {
    /// Room for `size` slots, none in circulation yet.
    pub(super) fn new(size: usize, queue_limit: usize) -> Self {
        let (idle_tx, idle_rx) = crossbeam_channel::bounded(size);
        Dispatch {
            idle_tx,
            idle_rx,
            slots: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            queue_limit,
            latest_deadline_us: AtomicU64::new(0),
            async_waiters: Mutex::new(VecDeque::new()),
            next_waiter: AtomicU64::new(0),
            async_waiting: AtomicUsize::new(0),
        }
    }

    /// Puts a new slot into circulation (at start-up).
    pub(super) fn circulate(&self, slot: Slot) {
        if self.idle_tx.try_send(slot).is_err() {
            unreachable!("the pool channel has room for every slot");
        }
        self.slots.fetch_add(1, Ordering::AcqRel);
        self.wake_one();
    }

    /// How many slots are in circulation.
    pub(super) fn slots(&self) -> usize {
        self.slots.load(Ordering::Acquire)
    }

    /// How many slots are free right now.
    pub(super) fn free(&self) -> usize {
        self.idle_rx.len()
    }

    /// A free slot, if one is there now.
    pub(super) fn try_take(&self) -> Option<Slot> {
        self.idle_rx.try_recv().ok()
    }

    /// A free slot, waiting until `deadline` at most.
    pub(super) fn take_by(&self, deadline: Instant) -> Option<Slot> {
        self.idle_rx.recv_deadline(deadline).ok()
    }

    /// Offers `slot` to the channel; a slot that does not fit is dropped (a
    /// worker inside is killed by its `Drop` rather than leaked).
    pub(super) fn offer(&self, slot: Slot) {
        let _ = self.idle_tx.try_send(slot);
        self.wake_one();
    }

    /// Registers (or renews) async waiter `key`'s waker, woken when a slot
    /// is put back; it keeps its place in the queue.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    fn wait_async(&self, key: u64, waker: &Waker) {
        let mut waiters = self.async_waiters.lock().unwrap_or_else(|e| e.into_inner());
        match waiters.iter_mut().find(|(k, _)| *k == key) {
            Some((_, w)) => w.clone_from(waker),
            None => {
                waiters.push_back((key, waker.clone()));
                self.async_waiting.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Removes async waiter `key`, if it is still queued.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    fn forget_async(&self, key: u64) {
        if self.async_waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut waiters = self.async_waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = waiters.iter().position(|(k, _)| *k == key) {
            waiters.remove(at);
            self.async_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Wakes every async caller waiting for a slot (the pool closed).
    pub(super) fn wake_all_async(&self) {
        let waiters: Vec<(u64, Waker)> = {
            let mut waiters = self.async_waiters.lock().unwrap_or_else(|e| e.into_inner());
            self.async_waiting.store(0, Ordering::SeqCst);
            waiters.drain(..).collect()
        };
        for (_, w) in waiters {
            w.wake();
        }
    }

    /// Wakes the async caller that has waited longest, if any.
    fn wake_one(&self) {
        if self.async_waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let waker = {
            let mut waiters = self.async_waiters.lock().unwrap_or_else(|e| e.into_inner());
            let w = waiters.pop_front();
            if w.is_some() {
                self.async_waiting.fetch_sub(1, Ordering::SeqCst);
            }
            w.map(|(_, w)| w)
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The latest deadline of any call, `started_at` being the pool's start.
    pub(super) fn latest_deadline(&self, started_at: Instant) -> Instant {
        started_at + Duration::from_micros(self.latest_deadline_us.load(Ordering::Relaxed))
    }

    fn note_deadline(&self, deadline: Instant, started_at: Instant) {
        // Rounded up to the ms, so calls in a row mostly find it recorded
        // already and skip the read-modify-write (a drain waits ≤ 1 ms more).
        let us = (deadline.saturating_duration_since(started_at).as_micros() as u64).div_ceil(1000) * 1000;
        if us > self.latest_deadline_us.load(Ordering::Relaxed) {
            self.latest_deadline_us.fetch_max(us, Ordering::Relaxed);
        }
    }
}

/// Sets a worker's busy flag: the only write of it (see the module docs).
fn set_busy(proc: &ProcState, busy: bool) {
    proc.busy.store(busy, Ordering::Release);
}

impl Pool {
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
    pub(crate) fn call_done(&self, span: &tracing::Span, start: Instant, method: u32, error: Option<&CallError>) {
        if matches!(error, Some(CallError::ShutDown)) && self.retired.load(Ordering::Acquire) {
            self.counters.call_retried();
        } else {
            self.counters.call_finished(error);
            self.observer.call_done(span, start, method, error);
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
        self.dispatch.note_deadline(deadline, self.started_at);
        let mut lease = self.take(start, deadline)?;
        let worker = lease.live();
        span.record("worker_pid", worker.pid);
        let (index, proc) = (worker.slot, worker.proc.clone());
        match worker.call(method, payload, deadline, target) {
            Ok(answer) => {
                // The worker is done with the call; the answer is read in its buffer.
                set_busy(&proc, false);
                let result = f(answer);
                self.note_success(index);
                result
            }
            Err(failure) => Err(lease.fail(failure, method, start, limit)),
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
        self.dispatch.note_deadline(deadline, self.started_at);
        let result = self.lease(start, deadline).and_then(|mut lease| {
            let worker = lease.live();
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
                Err(failure) => Err(lease.fail(failure, method, start, limit)),
            }
        });
        self.call_done(&span, start, method, result.as_ref().err());
        result
    }

    /// Takes a live worker for exclusive use until the [`Lease`] is dropped
    /// (streams, replies read in place): the same checks and waits as a call,
    /// bounded by `deadline`.
    pub(crate) fn lease(self: &Arc<Self>, start: Instant, deadline: Instant) -> Result<Lease, CallError> {
        Ok(self.take(start, deadline)?.hand_to(self.clone()))
    }

    /// The setup shared by every call and lease: refuses a closed pool or a
    /// failed plugin, takes a free slot within `deadline`, gives an empty or
    /// idle slot a worker, and leases the live worker.
    fn take(&self, start: Instant, deadline: Instant) -> Result<Lease<&Pool>, CallError> {
        if self.closing.is_closed() {
            return Err(CallError::ShutDown);
        }
        if self.unhealthy() {
            self.check_failed(start)?;
        }
        let slot = self.acquire(start, deadline)?;
        self.lease_slot(slot, deadline)
    }

    /// Leases the worker of a free `slot`, starting one in an empty or idle
    /// slot first (which blocks for the start, bounded by `deadline`).
    fn lease_slot(&self, slot: Slot, deadline: Instant) -> Result<Lease<&Pool>, CallError> {
        let worker = match slot {
            Slot::Live(w) => w,
            Slot::Empty(i) => Box::new(
                self.replace(i, deadline)
                    .inspect_err(|_| self.put_back(Slot::Empty(i)))?,
            ),
            Slot::Idle(i) => Box::new(
                self.wake_idle(i, deadline)
                    .inspect_err(|_| self.put_back(Slot::Idle(i)))?,
            ),
            other => {
                self.put_back(other);
                return Err(CallError::ShutDown);
            }
        };
        set_busy(&worker.proc, true);
        Ok(Lease {
            pool: self,
            slot: Slot::Live(worker),
        })
    }

    /// A free slot for a caller that must not block (an async one), started
    /// at `start` with `deadline`: `Pending` (with `cx`'s waker registered,
    /// woken when a slot is put back) while none is free. A live worker is
    /// leased at once; an empty or idle slot comes back as [`Found::Start`]
    /// for [`start_slot`](Self::start_slot), which blocks. `queued` says
    /// whether this caller already counts against the queue limit (a
    /// [`Queued`] guard ends that when dropped).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn poll_take(
        self: &Arc<Self>,
        start: Instant,
        deadline: Instant,
        queued: &mut Option<Queued>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Found, CallError>> {
        if self.closing.is_closed() {
            return Poll::Ready(Err(CallError::ShutDown));
        }
        if self.unhealthy() {
            if let Err(e) = self.check_failed(start) {
                return Poll::Ready(Err(e));
            }
        }
        let d = &self.dispatch;
        let mut slot = d.try_take();
        if slot.is_none() {
            if queued.is_none() {
                let waiting = d.waiting.fetch_add(1, Ordering::AcqRel) + 1;
                let key = d.next_waiter.fetch_add(1, Ordering::Relaxed);
                *queued = Some(Queued {
                    pool: self.clone(),
                    key,
                });
                if waiting > d.queue_limit {
                    return Poll::Ready(Err(CallError::Overloaded { limit: d.queue_limit }));
                }
            }
            if let Some(q) = queued.as_ref() {
                d.wait_async(q.key, cx.waker());
            }
            // A slot put back between the look and the registration.
            slot = d.try_take();
        }
        let Some(slot) = slot else { return Poll::Pending };
        *queued = None;
        if matches!(slot, Slot::Closed) || self.closing.is_closed() {
            d.offer(slot);
            return Poll::Ready(Err(CallError::ShutDown));
        }
        if Instant::now() >= deadline {
            self.put_back(slot);
            return Poll::Ready(Err(self.busy_or_backoff(start)));
        }
        Poll::Ready(Ok(match slot {
            Slot::Live(w) => {
                set_busy(&w.proc, true);
                Found::Live(Lease {
                    pool: self.clone(),
                    slot: Slot::Live(w),
                })
            }
            other => Found::Start(other),
        }))
    }

    /// Leases the worker of a slot [`poll_take`](Self::poll_take) found
    /// empty or idle, starting it (blocking, bounded by `deadline`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn start_slot(self: &Arc<Self>, slot: Slot, deadline: Instant) -> Result<Lease, CallError> {
        Ok(self.lease_slot(slot, deadline)?.hand_to(self.clone()))
    }

    /// Records a call's deadline (a drain waits for the latest).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn note_call_deadline(&self, deadline: Instant) {
        self.dispatch.note_deadline(deadline, self.started_at);
    }

    /// Why a caller that waited for a slot until its deadline got none.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    pub(crate) fn no_slot(&self, start: Instant) -> CallError {
        self.busy_or_backoff(start)
    }

    /// Takes a free slot for a call started at `start`, waiting until
    /// `deadline` at most. A slot obtained at or after the deadline is given
    /// back and the call gets `Busy` (or `Backoff`).
    fn acquire(&self, start: Instant, deadline: Instant) -> Result<Slot, CallError> {
        let d = &self.dispatch;
        // A slot free at once is taken as of `start` (no clock read); one
        // waited for is checked against the deadline after the wait.
        let mut waited = false;
        let slot = match d.idle_rx.try_recv() {
            Ok(slot) => slot,
            Err(_) => {
                waited = true;
                let waiting = d.waiting.fetch_add(1, Ordering::AcqRel) + 1;
                let got = if waiting > d.queue_limit {
                    Err(CallError::Overloaded { limit: d.queue_limit })
                } else {
                    // Shutdown (or a reload's drain) wakes waiters at once: the
                    // plugin re-runs their calls on its new pool.
                    let left = deadline.saturating_duration_since(Instant::now());
                    crossbeam_channel::select! {
                        recv(d.idle_rx) -> got => got.map_err(|_| CallError::ShutDown),
                        recv(self.closing.signal()) -> _ => Err(CallError::ShutDown),
                        default(left) => Err(self.busy_or_backoff(start)),
                    }
                };
                d.waiting.fetch_sub(1, Ordering::AcqRel);
                got?
            }
        };
        if matches!(slot, Slot::Closed) || self.closing.is_closed() {
            // Hand the slot (or the wake-up) on: to the shutdown collecting
            // slots, or to the next waiter.
            d.offer(slot);
            return Err(CallError::ShutDown);
        }
        let now = if waited { Instant::now() } else { start };
        if now >= deadline {
            // The deadline passed before the call reached a worker (the host
            // was slow, or the timeout was zero): the call never started, so
            // no worker is charged with it and the slot goes back untouched.
            self.put_back(slot);
            return Err(self.busy_or_backoff(start));
        }
        Ok(slot)
    }

    /// No slot came free in time: say so, or say that a restart is backing off.
    fn busy_or_backoff(&self, start: Instant) -> CallError {
        let now = Instant::now();
        match self.next_attempt() {
            Some(at) if at > now => CallError::Backoff { retry_in: at - now },
            _ => CallError::Busy {
                waited: start.elapsed(),
            },
        }
    }

    /// The one path of a failed request. The live worker in `slot` failed a
    /// request started at `start` under `limit`: records it, leaves the worker
    /// dying in the slot (the lease holding the slot hands it on to recovery),
    /// and returns the caller's error.
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
        set_busy(&worker.proc, false);
        let pid = worker.pid;
        let failure = match failure {
            Failure::Ended(_) => {
                // Its replacement gets a head start once the worker is known
                // to have exited (a slot never holds two live workers): here,
                // if it was reaped already (the usual case: the reaper's
                // notice ended the wait), while the rest of its crash report
                // is collected; else once `settle` has seen it exit.
                let exited = worker.proc.exit().is_some();
                if exited {
                    self.head_start(worker.slot);
                }
                let settled = worker.settle(failure);
                if !exited && matches!(settled, Failure::Died { .. }) {
                    self.head_start(worker.slot);
                }
                settled
            }
            other => other,
        };
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
            Failure::Ended(_) => unreachable!("settled above"),
        };
        let cause = format!("{err}{}", source_suffix(&err));
        self.lost_worker(worker.slot, pid, Some(method), cause);
        // The slot's lease hands the dying worker on (standby promotion or a
        // background reap-and-restart); the caller gets its answer now.
        *slot = Slot::Dying(worker);
        err
    }

    /// Returns a slot to circulation: idle workers to the channel, failed ones
    /// to recovery, empty slots to a background restart (unless the plugin is
    /// failed), everything to the shutdown if the pool is closed.
    pub(super) fn put_back(&self, slot: Slot) {
        if self.closing.is_closed() {
            // The shutdown collects it. If the channel is full, a worker inside
            // is killed by its Drop instead.
            self.dispatch.offer(slot);
            return;
        }
        match slot {
            Slot::Dying(w) => self.recover(*w),
            Slot::Empty(i) if !self.is_failed() => self.restart_in_background(i),
            other => self.to_channel(other),
        }
    }

    /// Puts `slot` among the free ones.
    pub(super) fn to_channel(&self, slot: Slot) {
        // The channel has room for every slot; if it had none, a worker inside
        // would be killed by its Drop rather than leaked.
        self.dispatch.offer(slot);
    }

    /// Wakes callers still waiting for a slot (at shutdown).
    pub(super) fn wake_waiters(&self) {
        for _ in 0..self.size {
            self.dispatch.offer(Slot::Closed);
        }
    }
}

fn source_suffix(e: &CallError) -> String {
    std::error::Error::source(e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

/// A worker taken out of the pool for exclusive use: a call in progress, a
/// stream, or a reply read in place. Its worker is busy while the lease holds
/// it live; the slot goes back into circulation when the lease is dropped.
///
/// `P` is how the lease reaches its pool: borrowed for a call that ends
/// before `Pool::call` returns, shared (the default) for a lease that outlives it.
pub(crate) struct Lease<P: Deref<Target = Pool> = Arc<Pool>> {
    pub(crate) pool: P,
    pub(crate) slot: Slot,
}

impl<P: Deref<Target = Pool>> Lease<P> {
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

    /// The leased worker, while it is alive, for reading.
    pub(crate) fn held(&self) -> Option<&WorkerProcess> {
        match &self.slot {
            Slot::Live(w) => Some(w),
            _ => None,
        }
    }

    /// The leased worker of a lease just made (always live).
    fn live(&mut self) -> &mut WorkerProcess {
        self.worker().expect("a lease holds a live worker")
    }

    /// A request on the leased worker failed: the pool's one failure path
    /// ([`Pool::failed`]). The worker is left dying; the lease's end hands it
    /// to recovery.
    pub(crate) fn fail(&mut self, failure: Failure, method: u32, start: Instant, limit: Duration) -> CallError {
        self.pool.failed(&mut self.slot, failure, method, start, limit)
    }

    /// If the leased worker died while leased (its process exited, or its
    /// shared region says so), accounts for it as a failure of call `method`
    /// started at `start` under `limit` ([`fail`](Self::fail)), so recovery
    /// replaces it when the lease ends rather than the next caller finding it dead.
    pub(crate) fn fail_if_died(&mut self, method: u32, start: Instant, limit: Duration) {
        let Slot::Live(w) = &self.slot else { return };
        let died = w.proc.exit().is_some() || w.region().is_some_and(|r| r.is_dead());
        if !died {
            return;
        }
        // Settled like a socket that ended under a call: a death, or (still
        // running after the grace) a protocol failure; and a head start.
        let _ = self.fail(Failure::Ended(IoFail::Eof), method, start, limit);
    }

    /// The same lease, reaching its pool through `pool`.
    fn hand_to<Q: Deref<Target = Pool>>(mut self, pool: Q) -> Lease<Q> {
        let slot = std::mem::replace(&mut self.slot, Slot::Closed);
        // Holds nothing now: the new lease gives the slot back instead.
        std::mem::forget(self);
        Lease { pool, slot }
    }
}

impl<P: Deref<Target = Pool>> Drop for Lease<P> {
    fn drop(&mut self) {
        let mut slot = std::mem::replace(&mut self.slot, Slot::Closed);
        if let Slot::Live(w) = &mut slot {
            set_busy(&w.proc, false);
            w.last_used = Tick::now();
        }
        self.pool.put_back(slot);
    }
}

/// What [`Pool::poll_take`] found for an async caller.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
pub(crate) enum Found {
    /// A live worker, leased.
    Live(Lease),
    /// An empty or idle slot: [`Pool::start_slot`] gives it a worker.
    Start(Slot),
}

/// An async caller counted against the pool's queue limit while it waits for
/// a slot. Dropping it ends the wait; a caller that stops waiting (its future
/// dropped, its deadline passed) hands its wake-up on to the next waiter, so
/// a slot put back is never left unclaimed.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
pub(crate) struct Queued {
    pool: Arc<Pool>,
    key: u64,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let d = &self.pool.dispatch;
        d.forget_async(self.key);
        d.waiting.fetch_sub(1, Ordering::AcqRel);
        if d.free() > 0 {
            d.wake_one();
        }
    }
}
