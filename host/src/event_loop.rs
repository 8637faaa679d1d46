//! The host's event loops: a fixed number of threads serve every worker.
//!
//! A [`Source`] is one descriptor to wait on and what to do when it is
//! readable. Each kind of source names its own loop (a thread name, a scratch
//! buffer size and the `static` the loop lives in) and hands itself over with
//! [`watch`]; this module knows no kind of source. The kinds are a worker's
//! exit (a pidfd, readable once the worker has exited and is still unreaped),
//! its two output pipes, and the orphaned helpers a reaper host adopts. One
//! process-wide thread per kind blocks in one `epoll` set, so the thread count
//! stays fixed however many workers and supervisors there are.
//!
//! Contract for a loop:
//!
//! * A source is handed over a channel and the loop is woken through an
//!   eventfd; the loop adds the source's descriptor to its epoll set itself.
//! * [`Source::ready`] runs on the loop thread and must not block; what it
//!   returns ([`Readiness`]) says whether to keep watching, to forget the
//!   source (dropping it), or to take it out of the set's interest until an
//!   instant and then call [`Source::resume`].
//! * Whatever a loop cannot take (no descriptor, the loop thread could not
//!   start, the epoll set is full) is served on a thread of its own
//!   ([`Source::fallback`]): slower to scale, same behaviour.
//! * Loops start on first use and live as long as the process.
//!
//! A separate thread, `bulkhead-timer`, started on first use, serves periodic
//! wake-ups ([`every`]): a tick must not block.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustix::event::{epoll, eventfd, EventfdFlags};
use rustix::io::Errno;

/// A process-wide service started on first use. Unlike a bare `OnceLock`,
/// a failed start (no thread, no descriptor: a host at its limits) is not
/// remembered: the next use tries again, and the uses in between fall back.
pub(crate) struct Started<T> {
    cell: OnceLock<T>,
    starting: Mutex<()>,
}

impl<T> Started<T> {
    /// Not started yet.
    pub(crate) const fn new() -> Self {
        Started {
            cell: OnceLock::new(),
            starting: Mutex::new(()),
        }
    }

    /// The service, started now if need be; `None` if it cannot start.
    pub(crate) fn get_or_start(&self, start: impl FnOnce() -> Option<T>) -> Option<&T> {
        if let Some(t) = self.cell.get() {
            return Some(t);
        }
        // One starter at a time, so a service is never started twice.
        let _starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.cell.get() {
            return Some(t);
        }
        let t = start()?;
        Some(self.cell.get_or_init(|| t))
    }
}

/// The epoll key of the loop's own wake-up eventfd.
const WAKE_KEY: u64 = 0;

/// What a source asks of its loop after serving a readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Keep watching.
    Pending,
    /// Finished: the loop forgets and drops the source.
    Finished,
    /// Do not watch it until this instant (an output pipe over its budget:
    /// unread, the pipe fills and its writer blocks); then
    /// [`Source::resume`] and watch again.
    PauseUntil(Instant),
}

/// Something a loop watches: one descriptor, and what to do when it is ready.
/// Every kind of source is served by a loop of its own.
pub(crate) trait Source: Send + Sized + 'static {
    /// The name of the thread of this kind's loop.
    const LOOP: &'static str;
    /// Bytes of the scratch buffer the loop hands to [`ready`](Self::ready).
    const SCRATCH: usize = 0;
    /// Where this kind's loop lives once started: a `static` of the
    /// implementing module, `Started::new()` at first.
    fn home() -> &'static Started<EventLoop<Self>>;
    /// The descriptor to wait on (readable = ready); `None` if there is none
    /// and the source must be served by [`fallback`](Self::fallback).
    fn fd(&self) -> Option<BorrowedFd<'_>>;
    /// Handles readiness.
    fn ready(&mut self, scratch: &mut [u8]) -> Readiness;
    /// A pause asked for by [`ready`](Self::ready) is over.
    fn resume(&mut self) {}
    /// Serves the source to its end on a thread of its own.
    fn fallback(self);
}

/// A running loop: where to send sources, and how to wake it.
pub(crate) struct EventLoop<S: Source> {
    tx: Sender<S>,
    wake: Arc<OwnedFd>,
}

impl<S: Source> EventLoop<S> {
    /// Starts a loop thread named `name`; `None` if it cannot be started.
    fn start(name: &str, scratch: usize) -> Option<EventLoop<S>> {
        let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok()?);
        epoll::add(
            &epoll_fd,
            &*wake,
            epoll::EventData::new_u64(WAKE_KEY),
            epoll::EventFlags::IN,
        )
        .ok()?;
        let loop_wake = wake.clone();
        let (tx, rx) = crossbeam_channel::unbounded::<S>();
        std::thread::Builder::new()
            .name(name.into())
            .stack_size(128 * 1024)
            .spawn(move || run(epoll_fd, loop_wake, rx, scratch))
            .ok()?;
        Some(EventLoop { tx, wake })
    }

    /// Hands `source` to the loop (or to its fallback thread).
    fn submit(&self, source: S) {
        if source.fd().is_none() {
            return source.fallback();
        }
        match self.tx.send(source) {
            Ok(()) => {
                // Cannot fail short of a counter overflow (2^64 - 1 wake-ups
                // never read); the loop reads it on every wake-up.
                let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
            }
            Err(crossbeam_channel::SendError(source)) => source.fallback(),
        }
    }
}

/// Hands `source` to its kind's loop, started now if need be (or, if the
/// loop cannot take it, to [`Source::fallback`]).
pub(crate) fn watch<S: Source>(source: S) {
    match S::home().get_or_start(|| EventLoop::start(S::LOOP, S::SCRATCH)) {
        Some(lp) => lp.submit(source),
        None => source.fallback(),
    }
}

/// The loop thread's body.
fn run<S: Source>(epoll_fd: OwnedFd, wake: Arc<OwnedFd>, rx: Receiver<S>, scratch: usize) {
    let mut sources: HashMap<u64, S> = HashMap::new();
    let mut next_key = WAKE_KEY + 1;
    let blank = epoll::Event {
        flags: epoll::EventFlags::empty(),
        data: epoll::EventData::new_u64(WAKE_KEY),
    };
    let mut events = vec![blank; 128];
    let mut scratch = vec![0u8; scratch];
    // Paused sources (out of the epoll set's interest until then).
    let mut paused: Vec<(Instant, u64)> = Vec::new();
    loop {
        let timeout = paused.iter().map(|p| p.0).min().map(|due| {
            let left = due.saturating_duration_since(Instant::now());
            rustix::event::Timespec {
                tv_sec: left.as_secs() as _,
                // Rounded up to a whole millisecond (epoll_wait's unit), so a
                // wake-up is never early.
                tv_nsec: left
                    .subsec_nanos()
                    .div_ceil(1_000_000)
                    .saturating_mul(1_000_000)
                    .min(999_999_999) as _,
            }
        });
        let n = match epoll::wait(&epoll_fd, &mut events[..], timeout.as_ref()) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => {
                // Cannot happen with a valid epoll fd and buffer; if it does,
                // no source is left unserved.
                tracing::error!(target: "bulkhead", error = %e, "event loop failed; serving workers on threads of their own");
                break;
            }
        };
        for ev in &events[..n] {
            let key = { ev.data }.u64();
            if key == WAKE_KEY {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(&*wake, &mut count);
                for source in rx.try_iter() {
                    let key = next_key;
                    next_key += 1;
                    let added = match source.fd() {
                        Some(fd) => epoll::add(&epoll_fd, fd, epoll::EventData::new_u64(key), epoll::EventFlags::IN),
                        None => Err(Errno::BADF),
                    };
                    match added {
                        Ok(()) => {
                            sources.insert(key, source);
                        }
                        Err(_) => source.fallback(),
                    }
                }
                continue;
            }
            let readiness = match sources.get_mut(&key) {
                Some(source) => source.ready(&mut scratch),
                None => Readiness::Pending,
            };
            match readiness {
                Readiness::Pending => {}
                Readiness::Finished => {
                    if let Some(source) = sources.remove(&key) {
                        if let Some(fd) = source.fd() {
                            let _ = epoll::delete(&epoll_fd, fd);
                        }
                    }
                }
                Readiness::PauseUntil(due) => {
                    if let Some(fd) = sources.get(&key).and_then(|s| s.fd()) {
                        let _ = epoll::modify(
                            &epoll_fd,
                            fd,
                            epoll::EventData::new_u64(key),
                            epoll::EventFlags::empty(),
                        );
                        paused.push((due, key));
                    }
                }
            }
        }
        let now = Instant::now();
        paused.retain(|&(due, key)| {
            if due > now {
                return true;
            }
            if let Some(source) = sources.get_mut(&key) {
                source.resume();
                if let Some(fd) = source.fd() {
                    let _ = epoll::modify(&epoll_fd, fd, epoll::EventData::new_u64(key), epoll::EventFlags::IN);
                }
            }
            false
        });
    }
    // Only after an impossible epoll failure: hand everything over.
    drop(epoll_fd);
    for (_, source) in sources.drain() {
        source.fallback();
    }
    drop(wake);
    let pending: Vec<S> = rx.try_iter().collect();
    drop(rx);
    for source in pending {
        source.fallback();
    }
}

/// Sets `fd` nonblocking (or back to blocking).
pub(crate) fn set_nonblocking(fd: impl AsFd, on: bool) -> std::io::Result<()> {
    rustix::io::ioctl_fionbio(fd, on).map_err(std::io::Error::from)
}

/// Something the timer thread calls periodically.
pub(crate) trait Tick: Send + Sync {
    /// One tick; returns `false` to stop ticking. Must not block.
    fn tick(&self) -> bool;
}

/// A periodic wake-up of a target held weakly (a dropped target ends it).
struct Timer {
    due: Instant,
    period: Duration,
    target: Weak<dyn Tick>,
}

/// Calls `target.tick()` every `period` until it returns `false` or the
/// target is dropped.
pub(crate) fn every(period: Duration, target: Weak<dyn Tick>) {
    static TIMER: Started<Sender<Timer>> = Started::new();
    let timer = Timer {
        due: Instant::now() + period,
        period,
        target,
    };
    let tx = TIMER.get_or_start(|| {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("bulkhead-timer".into())
            .stack_size(128 * 1024)
            .spawn(move || run_timers(Some(rx), Vec::new()))
            .ok()
            .map(|_| tx)
    });
    let timer = match tx {
        Some(tx) => match tx.send(timer) {
            Ok(()) => return,
            Err(crossbeam_channel::SendError(timer)) => timer,
        },
        None => timer,
    };
    // No timer thread: this timer gets a thread of its own (if none can be
    // started, the pool's idle workers are simply never stopped).
    let _ = std::thread::Builder::new()
        .name("bulkhead-timer".into())
        .stack_size(128 * 1024)
        .spawn(move || run_timers(None, vec![timer]));
}

/// The timer thread's body: waits for the next due timer (or a new one).
fn run_timers(rx: Option<Receiver<Timer>>, mut timers: Vec<Timer>) {
    let mut rx = rx;
    loop {
        let next = timers.iter().map(|t| t.due).min();
        match (&rx, next) {
            (Some(r), Some(due)) => match r.recv_deadline(due) {
                Ok(t) => timers.push(t),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => rx = None,
            },
            (Some(r), None) => match r.recv() {
                Ok(t) => timers.push(t),
                Err(_) => rx = None,
            },
            // A timer of its own: the deadline is the only event to wait for.
            (None, Some(due)) => std::thread::sleep(due.saturating_duration_since(Instant::now())),
            (None, None) => return,
        }
        let now = Instant::now();
        timers.retain_mut(|t| {
            if t.due > now {
                return true;
            }
            let Some(target) = t.target.upgrade() else { return false };
            // A panicking tick ends its own timer, not the thread.
            let keep = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.tick())).unwrap_or(false);
            t.due = now + t.period;
            keep
        });
    }
}
