//! A plugin's worker processes and the dispatch of calls to them.
//!
//! Each of the plugin's `n` workers lives in a *slot* (numbered `0..n`); idle
//! slots wait in a bounded `crossbeam-channel`. A call takes a slot (waiting at
//! most until its deadline, with a cap on how many calls may wait), uses the
//! worker, and puts the slot back. Only the worker that ran a failing call is
//! affected.
//!
//! A [`Pool`] is composed of three parts, each in its own module and each the
//! sole owner of its state:
//!
//! - [`dispatch`] (`Dispatch`): the channel of free slots and the calls
//!   waiting for one. A worker is out of the channel only inside a [`Lease`];
//!   a lease marks its worker *busy* and gives its slot back when it ends,
//!   whatever happened. A failed request goes through one path
//!   ([`Pool::failed`]), which leaves the worker *dying* in the slot and
//!   returns the caller's error at once.
//! - [`recovery`] (`Recovery`): what happens to a slot off the caller's path —
//!   a dying worker is replaced under the restart policy (a warm standby
//!   promoted on the spot, or a reap, the slot's backoff and a fresh worker in
//!   the background, the replacement often given a head start by the failing
//!   call; a slot never holds two live workers), idle workers are stopped
//!   (and started again on demand, not counted as restarts), workers burning
//!   CPU with no call in flight are killed, and the plugin's [`Health`](crate::Health) is
//!   derived and reported on change.
//! - [`shutdown`] (`Closing`): the pool's orderly end (also the end of a
//!   [`reload`](crate::Plugin::reload)'s drain) — every slot is taken back:
//!   idle workers are stopped politely, busy ones get until a deadline,
//!   background jobs finish and hand their workers over, and only what is left
//!   after all that is SIGKILLed (and reported `forced`).
//!
//! `mod.rs` holds what the parts share: the pool's identity and launch
//! settings, the registry of every worker process it started, and the
//! accounting of a worker's exit.
//!
//! Locks are never nested: each part's mutex is taken, used and released
//! before another is taken.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Exit, LoadError};
use crate::event_loop::{self, Tick};
use crate::events::{EventHub, EventKind};
use crate::observe::PluginObserver;
use crate::restart::RestartPolicy;
use crate::stats::{Counters, Stats};
use crate::usage::{self, ResourceUsage, WorkerMemory};
use crate::worker_process::{Launch, ProcState, WorkerProcess};

mod dispatch;
mod recovery;
mod shutdown;

use dispatch::Dispatch;
pub(crate) use dispatch::Lease;
#[cfg(feature = "tokio")]
pub(crate) use dispatch::{Found, Queued};
use recovery::Recovery;
use shutdown::Closing;

/// What a slot holds while it circulates.
pub(crate) enum Slot {
    /// A live worker (boxed: a slot moves through the free-slot channel and
    /// the lease on every call, and a pointer moves cheaper than a worker).
    Live(Box<WorkerProcess>),
    /// Its worker failed and has been signalled; reap it before reuse.
    Dying(Box<WorkerProcess>),
    /// Slot `n` needs a replacement worker (its worker failed).
    Empty(usize),
    /// Slot `n`'s worker was stopped for idleness; start one on demand.
    Idle(usize),
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
    pub idle_timeout: Option<Duration>,
    /// CPU a worker may use per second with no call in flight.
    pub idle_cpu: Option<Duration>,
    /// Shared by every generation of a plugin (reloads keep counting).
    pub counters: Arc<Counters>,
}

/// Every worker process the pool started (slots and standby), so that a
/// shutdown can find the ones nothing else handed back.
struct Registry {
    procs: Mutex<Vec<Arc<ProcState>>>,
    latest_pid: AtomicU64,
}

pub(crate) struct Pool {
    pub(crate) label: Arc<str>,
    launch: Launch,
    size: usize,
    grace: Duration,
    pub(crate) counters: Arc<Counters>,
    observer: PluginObserver,
    events: Arc<EventHub>,
    registry: Registry,
    dispatch: Dispatch,
    recovery: Recovery,
    closing: Closing,
    /// Set when a reload replaced this pool: callers retry on the new one.
    pub(crate) retired: AtomicBool,
    me: Weak<Pool>,
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
        let pool = Arc::new_cyclic(|me| Pool {
            observer: PluginObserver::new(&label),
            label,
            launch,
            size,
            grace: config.grace,
            counters: config.counters,
            events,
            registry: Registry {
                procs: Mutex::new(Vec::new()),
                latest_pid: AtomicU64::new(0),
            },
            dispatch: Dispatch::new(size, config.queue_limit),
            recovery: Recovery::new(
                config.policy,
                size,
                config.standby,
                config.idle_timeout,
                config.idle_cpu,
            ),
            closing: Closing::new(),
            retired: AtomicBool::new(false),
            me: me.clone(),
            started: SystemTime::now(),
            started_at: Instant::now(),
        });
        let mut info = None;
        for i in 0..size {
            let (mut w, info_i) = WorkerProcess::start(&pool.launch, None)?;
            w.slot = i;
            pool.register(&w);
            info.get_or_insert(info_i);
            pool.dispatch.circulate(Slot::Live(Box::new(w)));
        }
        pool.start_standby()?;
        if let Some(tick) = pool.recovery.tick() {
            let me: Weak<dyn Tick> = pool.me.clone();
            event_loop::every(tick, me);
        }
        Ok((pool, info.expect("size >= 1")))
    }

    /// Records a worker the pool started and emits `WorkerStarted`.
    fn register(&self, w: &WorkerProcess) {
        let mut procs = self.registry.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.retain(|p| p.exit().is_none());
        procs.push(w.proc.clone());
        drop(procs);
        self.registry.latest_pid.store(w.pid.into(), Ordering::Relaxed);
        self.events.emit(&self.label, EventKind::WorkerStarted { pid: w.pid });
    }

    /// The registered worker processes, alive or not yet pruned.
    fn registered(&self) -> Vec<Arc<ProcState>> {
        self.registry.procs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Pid of the most recently started worker.
    pub(crate) fn latest_pid(&self) -> u32 {
        self.registry.latest_pid.load(Ordering::Relaxed) as u32
    }

    /// Pids of the workers currently alive (standby included).
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        let procs = self.registry.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.iter().filter(|p| p.exit().is_none()).map(|p| p.pid()).collect()
    }

    /// Current memory of every live worker (standby included).
    pub(crate) fn memory(&self) -> Vec<WorkerMemory> {
        self.live_pids().into_iter().filter_map(usage::sample).collect()
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.live_pids().len(), self.events.dropped())
    }

    /// The wall-clock time of `at`.
    fn system_time(&self, at: Instant) -> SystemTime {
        if at >= self.started_at {
            self.started + (at - self.started_at)
        } else {
            self.started - (self.started_at - at)
        }
    }

    /// Accounts for a reaped worker and emits `WorkerExited`.
    fn exited(&self, pid: u32, exit: Exit, usage: Option<ResourceUsage>) {
        if let Some(u) = usage {
            self.counters.worker_exited(&u);
        }
        self.events
            .emit(&self.label, EventKind::WorkerExited { pid, exit, usage });
    }

    /// Stops worker `w` politely (SIGKILL after the grace period) and reports how it ended.
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
}

impl Tick for Pool {
    fn tick(&self) -> bool {
        if self.closing.is_closed() {
            return false;
        }
        self.recovery_tick();
        true
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}
