//! Lifecycle events and the subscriber fan-out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::Exit;

/// Capacity of each subscriber's channel; events beyond it are dropped (and
/// counted) rather than buffered without bound.
pub const EVENT_BUFFER: usize = 4096;

/// Something that happened to a plugin's workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The plugin's name (as loaded).
    pub plugin: Arc<str>,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// One subscriber's sending end.
enum Subscriber {
    Sync(Sender<Event>),
    #[cfg(feature = "tokio")]
    Async(tokio::sync::mpsc::Sender<Event>),
}

/// Why an event did not reach a subscriber.
enum Missed {
    Full,
    Gone,
}

impl Subscriber {
    fn try_send(&self, event: Event) -> Result<(), Missed> {
        match self {
            Subscriber::Sync(tx) => tx.try_send(event).map_err(|e| match e {
                TrySendError::Full(_) => Missed::Full,
                TrySendError::Disconnected(_) => Missed::Gone,
            }),
            #[cfg(feature = "tokio")]
            Subscriber::Async(tx) => tx.try_send(event).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => Missed::Full,
                tokio::sync::mpsc::error::TrySendError::Closed(_) => Missed::Gone,
            }),
        }
    }
}

/// Fan-out to subscribers; never blocks the caller.
#[derive(Default)]
pub(crate) struct EventHub {
    subscribers: Mutex<Vec<Subscriber>>,
    dropped: AtomicU64,
}

impl EventHub {
    pub(crate) fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = crossbeam_channel::bounded(EVENT_BUFFER);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber::Sync(tx));
        rx
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn subscribe_async(&self) -> tokio::sync::mpsc::Receiver<Event> {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber::Async(tx));
        rx
    }

    pub(crate) fn emit(&self, plugin: &Arc<str>, kind: EventKind) {
        crate::observe::event(plugin, &kind);
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if subs.is_empty() {
            return;
        }
        let event = Event {
            plugin: plugin.clone(),
            kind,
        };
        subs.retain(|s| match s.try_send(event.clone()) {
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
