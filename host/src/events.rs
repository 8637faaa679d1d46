//! Lifecycle events ([`Event`], [`EventKind`]), the blocking receiver
//! ([`EventReceiver`]) and the fan-out that offers each event to every
//! subscriber without blocking the emitter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};

use crate::exit::Exit;
use crate::health::Health;
use crate::usage::ResourceUsage;

/// Capacity of each subscriber's channel; events beyond it are dropped (and
/// counted) rather than buffered without bound.
pub const EVENT_BUFFER: usize = 4096;

/// Something that happened to a plugin's workers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The plugin's name (as loaded).
    pub plugin: Arc<str>,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A worker finished its handshake and is serving.
    WorkerStarted {
        /// Its pid.
        pid: u32,
    },
    /// A worker process ended and was reaped.
    WorkerExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// What it used (CPU time, peak RSS), from the reap; `None` if the
        /// kernel's figures could not be read.
        usage: Option<ResourceUsage>,
    },
    /// A call hit its deadline and the worker was killed.
    Timeout {
        /// The killed worker's pid.
        pid: u32,
        /// The timeout in force.
        limit: Duration,
    },
    /// A replacement worker was started after a failure.
    Restarted {
        /// The new worker's pid.
        pid: u32,
        /// Restarts within the policy window so far.
        restarts: u64,
    },
    /// The restart budget is spent; the plugin is failed.
    GaveUp {
        /// The failure that spent it.
        reason: String,
    },
    /// The plugin's [`Health`] changed (healthy, degraded with a different
    /// number of live workers, failed).
    HealthChanged {
        /// The new reading.
        health: Health,
    },
    /// A worker nobody called for the idle timeout was stopped; the next call starts one.
    IdleStopped {
        /// Its pid.
        pid: u32,
    },
    /// A worker used more CPU than its budget while no call or stream of it
    /// was in flight ([`PluginSpec::idle_cpu`](crate::PluginSpec::idle_cpu));
    /// it is killed (its `WorkerExited` follows) and replaced.
    IdleCpuExceeded {
        /// Its pid.
        pid: u32,
        /// CPU time it used over `window`.
        used: Duration,
        /// How long it had been idle when measured.
        window: Duration,
    },
    /// The seccomp layer refused a system call (or, in
    /// [learn mode](crate::Sandbox::learn), let it through). Reported by the
    /// worker itself, so a hostile plugin can forge or suppress these; the
    /// refusal does not depend on the report.
    SandboxViolation {
        /// The worker's pid.
        pid: u32,
        /// The call's name (`"nr 1234"` if this architecture has no such call).
        syscall: String,
        /// The call with its gating arguments, e.g. `socket(AF_VSOCK, SOCK_STREAM, 0)`.
        call: String,
        /// The vtable slot of the call in flight when it happened, if any.
        method: Option<u32>,
        /// `true` in learn mode: the call went through.
        allowed: bool,
    },
    /// [`Plugin::reload`](crate::Plugin::reload) switched the plugin to a new library.
    Reloaded {
        /// The new library.
        path: std::path::PathBuf,
    },
}

/// The receiving end of [`Supervisor::events`](crate::Supervisor::events): a
/// bounded queue of lifecycle events. Clones share the queue (each event goes
/// to one of them). Disconnected once the supervisor is gone and the queue is
/// drained.
#[derive(Debug, Clone)]
pub struct EventReceiver {
    rx: Receiver<Event>,
}

/// [`EventReceiver::recv`] failed: the supervisor is gone and no event is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the supervisor is gone and no events are left")]
pub struct RecvError;

/// Why [`EventReceiver::try_recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No event is queued now.
    #[error("no event queued")]
    Empty,
    /// The supervisor is gone and no event is left.
    #[error("the supervisor is gone and no events are left")]
    Disconnected,
}

/// Why [`EventReceiver::recv_timeout`] or [`recv_deadline`](EventReceiver::recv_deadline)
/// returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No event arrived in time.
    #[error("no event arrived in time")]
    Timeout,
    /// The supervisor is gone and no event is left.
    #[error("the supervisor is gone and no events are left")]
    Disconnected,
}

impl EventReceiver {
    /// Blocks until the next event.
    pub fn recv(&self) -> Result<Event, RecvError> {
        self.rx.recv().map_err(|_| RecvError)
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.rx.try_recv().map_err(|e| match e {
            crossbeam_channel::TryRecvError::Empty => TryRecvError::Empty,
            crossbeam_channel::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }

    /// Blocks up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map_err(timeout_error)
    }

    /// Blocks until `deadline` for the next event.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_deadline(deadline).map_err(timeout_error)
    }

    /// The events queued now, without blocking.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.rx.try_iter()
    }

    /// Every event, blocking for each, until the supervisor is gone.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.rx.iter()
    }

    /// Number of events queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

fn timeout_error(e: crossbeam_channel::RecvTimeoutError) -> RecvTimeoutError {
    match e {
        crossbeam_channel::RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
        crossbeam_channel::RecvTimeoutError::Disconnected => RecvTimeoutError::Disconnected,
    }
}

/// Why an event did not reach a subscriber.
pub(crate) enum Missed {
    /// Its buffer is full: the event is dropped (and counted).
    Full,
    /// It is gone: it is unsubscribed.
    Gone,
}

/// A subscriber's sending end: offered each event, it never blocks (an
/// [`EventReceiver`]'s channel, or an async layer's).
pub(crate) type Sink = Box<dyn Fn(Event) -> Result<(), Missed> + Send>;

/// Fan-out to subscribers; never blocks the caller. Every event is first
/// handed to the hub's observer (logging, and whatever layer observes).
pub(crate) struct EventHub {
    observe: fn(&str, &EventKind),
    subscribers: Mutex<Vec<Sink>>,
    dropped: AtomicU64,
}

impl EventHub {
    /// A hub without subscribers that hands every event to `observe` first.
    pub(crate) fn new(observe: fn(&str, &EventKind)) -> Self {
        EventHub {
            observe,
            subscribers: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self) -> EventReceiver {
        let (tx, rx) = crossbeam_channel::bounded(EVENT_BUFFER);
        self.subscribe_sink(Box::new(move |event| {
            tx.try_send(event).map_err(|e| match e {
                TrySendError::Full(_) => Missed::Full,
                TrySendError::Disconnected(_) => Missed::Gone,
            })
        }));
        EventReceiver { rx }
    }

    /// Adds a subscriber that is offered every later event.
    pub(crate) fn subscribe_sink(&self, sink: Sink) {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(sink);
    }

    pub(crate) fn emit(&self, plugin: &Arc<str>, kind: EventKind) {
        (self.observe)(plugin, &kind);
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if subs.is_empty() {
            return;
        }
        let event = Event {
            plugin: plugin.clone(),
            kind,
        };
        subs.retain(|sink| match sink(event.clone()) {
            Ok(()) => true,
            Err(Missed::Full) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(Missed::Gone) => false,
        });
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
