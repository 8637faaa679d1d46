//! Calls that never block their caller's thread (the async API's calls).
//!
//! A call takes a worker without blocking ([`Pool::poll_take`]: a caller
//! that finds none free waits as a task, woken when a slot is put back),
//! posts its request through the worker's shared region, and waits as a
//! task for the answer: the worker rings the region's doorbell after posting
//! it, and the bell thread ([`crate::bells`]) wakes the task, or wakes it at
//! the call's deadline. Callbacks the plugin makes meanwhile are answered
//! when the task runs. No thread is spent per call.
//!
//! What the region cannot carry without a blocking read — a payload or
//! answer too large for it, a callback announced on the socket, a worker on
//! the socket transport, a slot whose worker must be started first — runs on
//! the caller's blocking hand-off instead ([`Offload`]), as every call did
//! before.
//!
//! A call whose future is dropped before its answer is not interrupted: its
//! remaining wait is handed off and the worker goes back to the pool when
//! the answer is in (see the async API's cancellation notes).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::bells::Ring;
use crate::error::CallError;
use crate::link::{Posted, Progress, PullSource, Request};
use crate::observe;
use crate::plugin::{check_index, check_input, interpret, Generation, Plugin};
use crate::pool::{Found, Lease, Pool, Queued};
use crate::stream::{pull_from, Input};
use crate::worker_process::Failure;

/// The blocking rest of a call, for [`Offload`].
pub(crate) type BlockingRest = Box<dyn FnOnce() -> Result<Vec<u8>, CallError> + Send>;

/// What [`Offload`] returns: the rest's result, once it has run.
pub(crate) type Offloaded = Pin<Box<dyn Future<Output = Result<Vec<u8>, CallError>> + Send>>;

/// Runs blocking work off the caller's thread and awaits it; the async layer
/// supplies it (tokio's blocking pool).
pub(crate) type Offload = fn(BlockingRest) -> Offloaded;

/// Calls method `index` with `input` under `limit`, as a task: see the
/// module docs. A call retired by a reload runs again on the new workers.
pub(crate) async fn call_raw(
    plugin: Plugin,
    index: u32,
    input: Vec<u8>,
    limit: Duration,
    offload: Offload,
) -> Result<Vec<u8>, CallError> {
    let input: Arc<[u8]> = input.into();
    loop {
        let g = plugin.generation();
        match call_on(&g, index, &input, limit, offload, None).await {
            Err(CallError::ShutDown)
                if g.pool.retired.load(Ordering::Acquire) && !Arc::ptr_eq(&g, &plugin.generation()) =>
            {
                continue
            }
            other => return other,
        }
    }
}

/// Calls client-streaming method `index` with the argument tuple `payload`
/// under `limit`, as a task; the plugin's pulls are answered from `items` on
/// the task (or, if the rest of the call is handed off, there). Not run again
/// after a reload: its items may be spent.
pub(crate) async fn call_client(
    plugin: Plugin,
    index: u32,
    payload: Vec<u8>,
    items: Input,
    limit: Duration,
    offload: Offload,
) -> Result<Vec<u8>, CallError> {
    let g = plugin.generation();
    let items = Some(Arc::new(Mutex::new(Some(items))));
    call_on(&g, index, &payload.into(), limit, offload, items).await
}

async fn call_on(
    g: &Arc<Generation>,
    index: u32,
    input: &Arc<[u8]>,
    limit: Duration,
    offload: Offload,
    items: Option<Items>,
) -> Result<Vec<u8>, CallError> {
    if items.is_none() {
        // A plain call must not land on a streaming slot; a client call's
        // slot is one (its range is checked by the caller).
        check_index(g, index)?;
    }
    check_input(g, input)?;
    let pool = g.pool.clone();
    let start = Instant::now();
    pool.note_call_deadline(start + limit);
    let call = Call {
        g: g.clone(),
        index,
        start,
        limit,
        items,
    };
    let tally = Tally::start(&pool, index, start);
    call.run(&pool, input, offload, tally).await
}

/// A call counted as started; it is counted as finished (with its metrics)
/// by [`done`](Self::done) wherever it ends — on another thread, if its
/// future was dropped while the worker worked on it. Dropped without that
/// (the future dropped before the call reached a worker), the call never
/// happened and is not counted.
struct Tally {
    pool: Arc<Pool>,
    span: tracing::Span,
    index: u32,
    start: Instant,
    counted: bool,
}

impl Tally {
    fn start(pool: &Arc<Pool>, index: u32, start: Instant) -> Tally {
        pool.counters.call_started();
        Tally {
            pool: pool.clone(),
            span: observe::call_span(&pool.label, index),
            index,
            start,
            counted: true,
        }
    }

    /// The call ended with `result`: counts it and hands it back.
    fn done<T>(mut self, result: Result<T, CallError>) -> Result<T, CallError> {
        self.counted = false;
        self.pool
            .call_done(&self.span, self.start, self.index, result.as_ref().err());
        result
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if self.counted {
            self.pool.counters.call_retried();
        }
    }
}

/// A client call's input items, shared by the task and a handed-off rest.
type Items = Arc<Mutex<Option<Input>>>;

/// One call's facts, for the steps that may move to another thread.
#[derive(Clone)]
struct Call {
    g: Arc<Generation>,
    index: u32,
    start: Instant,
    limit: Duration,
    /// A client-streaming call's input; `None` for a plain call.
    items: Option<Items>,
}

impl Call {
    fn deadline(&self) -> Instant {
        self.start + self.limit
    }

    async fn run(
        self,
        pool: &Arc<Pool>,
        input: &Arc<[u8]>,
        offload: Offload,
        tally: Tally,
    ) -> Result<Vec<u8>, CallError> {
        let found = match self.take_worker(pool).await {
            Ok(found) => found,
            Err(e) => return tally.done(Err(e)),
        };
        let mut lease = match found {
            Found::Live(lease) => lease,
            Found::Start(slot) => {
                let (pool, call, input) = (pool.clone(), self.clone(), input.clone());
                return offload(Box::new(move || {
                    let result = pool
                        .start_slot(slot, call.deadline())
                        .and_then(|mut lease| call.blocking(&mut lease, Pending::Send(&input)));
                    tally.done(result)
                }))
                .await;
            }
        };
        let Some(worker) = lease.worker() else {
            return tally.done(Err(CallError::ShutDown));
        };
        tally.span.record("worker_pid", worker.pid);
        let Some(posted) = worker.post_call(self.index, input, self.items.is_some()) else {
            // The region cannot carry it (no region, or too large for it).
            let (call, input) = (self.clone(), input.clone());
            return offload(Box::new(move || {
                let result = call.blocking(&mut lease, Pending::Send(&input));
                tally.done(result)
            }))
            .await;
        };
        let mut flight = InFlight {
            call: self,
            lease: Some(lease),
            posted: Some(posted),
            ring: None,
            tally: Some(tally),
        };
        match std::future::poll_fn(|cx| flight.poll_answer(cx)).await {
            Ok(Some(out)) => flight.finish(Ok(out)),
            Ok(None) => {
                // The rest needs a blocking read on the socket.
                let (call, mut lease, posted, tally) = flight.take();
                offload(Box::new(move || {
                    let result = call.blocking(&mut lease, Pending::Posted(posted));
                    tally.done(result)
                }))
                .await
            }
            Err(e) => flight.finish(Err(e)),
        }
    }

    /// A worker from the pool, waiting as a task until the deadline.
    async fn take_worker(&self, pool: &Arc<Pool>) -> Result<Found, CallError> {
        let deadline = self.deadline();
        let mut queued: Option<Queued> = None;
        let mut ring: Option<Ring> = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(found) = pool.poll_take(self.start, deadline, &mut queued, cx) {
                return Poll::Ready(found);
            }
            if Instant::now() >= deadline {
                return Poll::Ready(Err(pool.no_slot(self.start)));
            }
            // Woken when a slot is put back, or at the deadline.
            match &ring {
                Some(r) => r.rearm(cx.waker()),
                None => match Ring::new(None, deadline, cx.waker()) {
                    Some(r) => ring = Some(r),
                    // No bell thread (a host out of threads): nothing would
                    // wake this call at its deadline, so it is refused now.
                    None => return Poll::Ready(Err(pool.no_slot(self.start))),
                },
            }
            Poll::Pending
        })
        .await
    }

    /// The pull source of a client call: its next item, or the end.
    fn pull(&self) -> Option<impl FnMut() -> (i32, Vec<u8>) + '_> {
        let items = self.items.as_ref()?;
        Some(move || pull_from(&mut items.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// The blocking remainder of a call on `lease`: sending it, or waiting
    /// for the answer of one already posted.
    fn blocking(&self, lease: &mut Lease, pending: Pending<'_>) -> Result<Vec<u8>, CallError> {
        let deadline = self.deadline();
        let worker = lease.worker().ok_or(CallError::ShutDown)?;
        let mut pull = self.pull();
        let pull = pull.as_mut().map(|p| p as PullSource<'_>);
        let answer = match (pending, &self.items) {
            (Pending::Send(input), None) => worker.call(self.index, input, deadline, None),
            (Pending::Send(payload), Some(_)) => {
                let msg = Request::ClientCall {
                    method: self.index,
                    payload,
                };
                worker.session(msg, deadline, pull)
            }
            (Pending::Posted(posted), _) => worker.wait_posted(posted, deadline, None, pull),
        };
        let out = match answer {
            Ok(answer) => interpret(&self.g, self.index, &answer).map(<[u8]>::to_vec),
            Err(failure) => return Err(lease.fail(failure, self.index, self.start, self.limit)),
        };
        lease.note_success();
        out
    }
}

/// How long a posted call watches for its answer before it waits as a task
/// (a sync call spins a little longer: 2 µs busy, then yielding).
const ANSWER_SPIN: Duration = Duration::from_micros(5);

/// What is left of a call for [`Call::blocking`].
enum Pending<'a> {
    /// Nothing sent yet: send this payload.
    Send(&'a [u8]),
    /// Posted through the region; its answer is still to come.
    Posted(Posted),
}

/// A call posted through the region, its answer not taken yet. Dropped
/// before that (its future dropped), it lets the call finish off the
/// caller's thread and only then gives the worker back.
struct InFlight {
    call: Call,
    lease: Option<Lease>,
    posted: Option<Posted>,
    ring: Option<Ring>,
    tally: Option<Tally>,
}

impl InFlight {
    /// `Ok(Some(output))` once answered, `Ok(None)` if the rest needs a
    /// blocking read, `Err` if the call failed (the worker is then dying).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Vec<u8>>, CallError>> {
        let deadline = self.call.deadline();
        let (Some(lease), Some(posted)) = (self.lease.as_mut(), self.posted.as_mut()) else {
            return Poll::Ready(Err(CallError::ShutDown));
        };
        let Some(worker) = lease.worker() else {
            return Poll::Ready(Err(CallError::ShutDown));
        };
        let mut spun = self.ring.is_some();
        let step = loop {
            let mut pull = self.call.pull();
            let pull = pull.as_mut().map(|p| p as PullSource<'_>);
            match worker.step(posted, deadline, pull) {
                Ok(Progress::Waiting) if Instant::now() >= deadline => break Err(Failure::Timeout),
                Ok(Progress::Waiting) if !spun => {
                    // A worker already running answers a small call within
                    // a few µs: watch for it before waiting as a task.
                    spun = true;
                    let (region, last) = (posted.region(), posted.last());
                    let until = Instant::now() + ANSWER_SPIN;
                    while region.resp_seq() == last && Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
                Ok(Progress::Waiting) => {
                    let region = posted.region();
                    if !region.async_wait(posted.last()) {
                        continue;
                    }
                    match &self.ring {
                        Some(r) => r.rearm(cx.waker()),
                        None => match Ring::new(Some(region), deadline, cx.waker()) {
                            Some(r) => self.ring = Some(r),
                            // No bell thread: wait on a blocking thread instead.
                            None => break Ok(None),
                        },
                    }
                    return Poll::Pending;
                }
                Ok(Progress::Answered(r)) => break Ok(Some(r)),
                Ok(Progress::Blocking) => break Ok(None),
                Err(failure) => break Err(failure),
            }
        };
        posted.region().async_wait_over();
        self.ring = None;
        let (call, index) = (&self.call, self.call.index);
        Poll::Ready(match step {
            Ok(None) => Ok(None),
            Ok(Some(r)) => {
                let posted = self.posted.take().expect("checked above");
                let lease = self.lease.as_mut().expect("checked above");
                let worker = lease.worker().expect("checked above");
                match worker.take_posted(&posted, r, deadline, None) {
                    Ok(answer) => {
                        let out = interpret(&call.g, index, &answer).map(<[u8]>::to_vec);
                        lease.note_success();
                        out.map(Some)
                    }
                    Err(failure) => Err(lease.fail(failure, index, call.start, call.limit)),
                }
            }
            Err(failure) => {
                self.posted = None;
                let lease = self.lease.as_mut().expect("checked above");
                Err(lease.fail(failure, index, call.start, call.limit))
            }
        })
    }

    /// The call, its lease, its posted request and its tally, for the
    /// blocking rest.
    fn take(&mut self) -> (Call, Lease, Posted, Tally) {
        let lease = self.lease.take().expect("a call in flight holds its lease");
        let posted = self.posted.take().expect("a call in flight is posted");
        let tally = self.tally.take().expect("a call in flight is counted");
        (self.call.clone(), lease, posted, tally)
    }

    /// The call ended here with `result`: counts it; the lease ends with
    /// the flight.
    fn finish(mut self, result: Result<Vec<u8>, CallError>) -> Result<Vec<u8>, CallError> {
        match self.tally.take() {
            Some(tally) => tally.done(result),
            None => result,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let (Some(_), Some(_)) = (&self.lease, &self.posted) else {
            return;
        };
        // Dropped while the worker still works on the call: let it finish
        // (its answer discarded, its outcome counted), then give the worker back.
        let (call, mut lease, posted, tally) = self.take();
        let finish = move || {
            let _ = tally.done(call.blocking(&mut lease, Pending::Posted(posted)));
        };
        crate::blocking::run(finish);
    }
}
