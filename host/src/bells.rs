//! The host's bell thread: it wakes callers that must not block (async ones)
//! when a worker answers or a deadline passes, whatever runs them, and it
//! flags worker sockets on which bytes arrived ([`SocketWatch`]), so the call
//! path never asks the kernel whether any did.
//!
//! One process-wide thread, `bulkhead-bells`, started on first use, blocks
//! in one `epoll` set. A waiting caller registers a [`Ring`]: its task's
//! waker, a deadline, and optionally a worker's doorbell (the eventfd the
//! worker writes after posting an answer an async caller waits for; see
//! [`Region::async_wait`](bulkhead_shared::shm::Region::async_wait)). The
//! caller adds the doorbell to the set itself (one `epoll_ctl`, one-shot), so
//! nothing travels through the thread on the way in; the thread wakes the
//! task when the doorbell rings or the deadline passes, and the task looks
//! for itself. Dropping the ring takes everything out again.
//!
//! A woken task costs one thread hop more than a doorbell registered with the
//! caller's own runtime would; in exchange nothing here needs the runtime's
//! I/O or time drivers (a tokio runtime built without them works the same)
//! and no thread is spent per call: the number of threads is fixed.
//!
//! A worker can ring its doorbell at will: each ring wakes the task once,
//! which finds nothing new and waits again. It costs the worker its own CPU.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Instant;

use bulkhead_shared::shm::Region;
use rustix::event::{epoll, eventfd, EventfdFlags};

use crate::event_loop::Started;

/// The epoll key of the thread's own wake-up eventfd; rings count up from 1.
const POKE_KEY: u64 = 0;

static BELLS: Started<Arc<Bells>> = Started::new();

/// The bell thread's shared state.
struct Bells {
    epoll: OwnedFd,
    /// Written to make the thread look at an earlier deadline.
    poke: OwnedFd,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Registered rings: their wakers.
    wakers: HashMap<u64, Waker>,
    /// Watched sockets: their flags.
    watches: HashMap<u64, Arc<AtomicBool>>,
    /// Their deadlines, soonest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// The deadline the thread sleeps until now (`None`: none).
    sleeping_until: Option<Instant>,
}

/// A waiting caller's registration: woken once the doorbell (if any) rings or
/// the deadline passes. Dropping it ends the registration.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
pub(crate) struct Ring {
    bells: Arc<Bells>,
    key: u64,
    deadline: Instant,
    /// The region whose doorbell is watched (kept alive while registered).
    bell: Option<Arc<Region>>,
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
impl Ring {
    /// Registers `waker` to be woken when `region`'s doorbell (if given)
    /// rings or at `deadline`. `None` if the bell thread cannot run (a host
    /// at its limits) or the region has no doorbell: the caller waits some
    /// other way. One ring at a time may watch a region (its caller holds
    /// the worker's lease).
    pub(crate) fn new(region: Option<&Arc<Region>>, deadline: Instant, waker: &Waker) -> Option<Ring> {
        let bells = BELLS.get_or_start(Bells::start)?.clone();
        if region.is_some_and(|r| r.doorbell().is_none()) {
            return None;
        }
        let key = {
            let mut st = bells.state.lock().unwrap_or_else(|e| e.into_inner());
            st.next += 1;
            let key = st.next;
            st.wakers.insert(key, waker.clone());
            st.deadlines.insert((deadline, key));
            key
        };
        let mut ring = Ring {
            bells,
            key,
            deadline,
            bell: None,
        };
        if let Some(bell) = region.and_then(|r| r.doorbell()) {
            let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
            epoll::add(&ring.bells.epoll, bell, epoll::EventData::new_u64(key), flags).ok()?;
            ring.bell = region.cloned();
        }
        ring.bells.poke_if_sooner(deadline);
        Some(ring)
    }

    /// Waits again (after a wake-up that brought nothing): renews the waker
    /// and re-arms the doorbell.
    pub(crate) fn rearm(&self, waker: &Waker) {
        {
            let mut st = self.bells.state.lock().unwrap_or_else(|e| e.into_inner());
            match st.wakers.get_mut(&self.key) {
                Some(w) => w.clone_from(waker),
                None => {
                    st.wakers.insert(self.key, waker.clone());
                }
            }
        }
        if let Some(bell) = self.bell.as_ref().and_then(|r| r.doorbell()) {
            let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
            let _ = epoll::modify(&self.bells.epoll, bell, epoll::EventData::new_u64(self.key), flags);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if let Some(bell) = self.bell.as_ref().and_then(|r| r.doorbell()) {
            let _ = epoll::delete(&self.bells.epoll, bell);
        }
        let mut st = self.bells.state.lock().unwrap_or_else(|e| e.into_inner());
        st.wakers.remove(&self.key);
        st.deadlines.remove(&(self.deadline, self.key));
    }
}

impl Bells {
    fn start() -> Option<Arc<Bells>> {
        let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
        let poke = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok()?;
        epoll::add(
            &epoll_fd,
            &poke,
            epoll::EventData::new_u64(POKE_KEY),
            epoll::EventFlags::IN,
        )
        .ok()?;
        let bells = Arc::new(Bells {
            epoll: epoll_fd,
            poke,
            state: Mutex::new(State::default()),
        });
        let thread_bells = bells.clone();
        std::thread::Builder::new()
            .name("bulkhead-bells".into())
            .stack_size(128 * 1024)
            .spawn(move || thread_bells.run())
            .ok()?;
        Some(bells)
    }

    /// Makes the thread look again if `deadline` is sooner than its sleep.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // used by the async layer
    fn poke_if_sooner(&self, deadline: Instant) {
        let sooner = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.sleeping_until.map_or(true, |until| deadline < until)
        };
        if sooner {
            let _ = rustix::io::write(&self.poke, &1u64.to_ne_bytes());
        }
    }

    fn run(&self) {
        let mut events = Vec::with_capacity(64);
        loop {
            let timeout = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let next = st.deadlines.first().map(|&(d, _)| d);
                st.sleeping_until = next;
                next.map(|d| {
                    let left = d.saturating_duration_since(Instant::now());
                    rustix::time::Timespec {
                        tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                        tv_nsec: i64::from(left.subsec_nanos()),
                    }
                })
            };
            events.clear();
            if let Err(e) = epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                if e != rustix::io::Errno::INTR {
                    // Nothing sane to do but try again; the deadlines still pass.
                    std::thread::yield_now();
                }
                continue;
            }
            let mut wake = Vec::new();
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                for ev in &events {
                    let key = ev.data.u64();
                    if key == POKE_KEY {
                        let mut buf = [0u8; 8];
                        let _ = rustix::io::read(&self.poke, &mut buf);
                    } else if let Some(w) = st.wakers.remove(&key) {
                        wake.push(w);
                    } else if let Some(flag) = st.watches.get(&key) {
                        flag.store(true, Ordering::SeqCst);
                    }
                }
                let now = Instant::now();
                while let Some(&(d, key)) = st.deadlines.first() {
                    if d > now {
                        break;
                    }
                    st.deadlines.pop_first();
                    if let Some(w) = st.wakers.remove(&key) {
                        wake.push(w);
                    }
                }
            }
            for w in wake {
                w.wake();
            }
        }
    }
}

/// A worker socket the bell thread watches: once bytes arrive on it (or it
/// is closed), [`seen`](Self::seen) says so, and stays set until
/// [`rearm`](Self::rearm). One-shot: the thread sees a socket once per arming,
/// so a socket with bytes waiting costs it nothing more.
pub(crate) struct SocketWatch {
    bells: Arc<Bells>,
    key: u64,
    flag: Arc<AtomicBool>,
}

impl SocketWatch {
    /// Starts watching `sock`; `None` if the bell thread cannot run or the
    /// socket cannot be watched (the caller then checks it itself). The
    /// caller keeps `sock` open until [`stop`](Self::stop).
    pub(crate) fn new(sock: BorrowedFd<'_>) -> Option<SocketWatch> {
        let bells = BELLS.get_or_start(Bells::start)?.clone();
        let flag = Arc::new(AtomicBool::new(false));
        let key = {
            let mut st = bells.state.lock().unwrap_or_else(|e| e.into_inner());
            st.next += 1;
            let key = st.next;
            st.watches.insert(key, flag.clone());
            key
        };
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        if epoll::add(&bells.epoll, sock, epoll::EventData::new_u64(key), flags).is_err() {
            let mut st = bells.state.lock().unwrap_or_else(|e| e.into_inner());
            st.watches.remove(&key);
            return None;
        }
        Some(SocketWatch { bells, key, flag })
    }

    /// Whether bytes (or the end) may have arrived since the last arming.
    pub(crate) fn seen(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The socket was found empty: clears the flag and watches again.
    pub(crate) fn rearm(&self, sock: BorrowedFd<'_>) {
        self.flag.store(false, Ordering::SeqCst);
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        if epoll::modify(&self.bells.epoll, sock, epoll::EventData::new_u64(self.key), flags).is_err() {
            // Not watched any more: keep the flag up, so every answer checks.
            self.flag.store(true, Ordering::SeqCst);
        }
    }

    /// Stops watching `sock` (before it is closed).
    pub(crate) fn stop(self, sock: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.bells.epoll, sock);
        let mut st = self.bells.state.lock().unwrap_or_else(|e| e.into_inner());
        st.watches.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::task::Wake;
    use std::time::Duration;

    /// A waker that reports each wake-up on a channel.
    struct Report(Mutex<mpsc::Sender<Instant>>);

    impl Wake for Report {
        fn wake(self: Arc<Self>) {
            let _ = self.0.lock().unwrap().send(Instant::now());
        }
    }

    fn waker() -> (Waker, mpsc::Receiver<Instant>) {
        let (tx, rx) = mpsc::channel();
        (Waker::from(Arc::new(Report(Mutex::new(tx)))), rx)
    }

    const GENEROUS: Duration = Duration::from_secs(20);

    #[test]
    fn a_ring_wakes_at_its_deadline_and_not_before() {
        let (w, woken) = waker();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(50);
        let _ring = Ring::new(None, deadline, &w).expect("bell thread");
        let at = woken.recv_timeout(GENEROUS).expect("woken");
        assert!(at >= deadline, "woken {:?} early", deadline - at);
    }

    #[test]
    fn a_ring_wakes_when_the_doorbell_rings_and_a_dropped_one_never() {
        let (region, _fd) = Region::create(4096).unwrap();
        let region = Arc::new(region);
        let (w, woken) = waker();
        assert!(region.async_wait(region.resp_seq()));
        let far = Instant::now() + Duration::from_secs(3600);
        let ring = Ring::new(Some(&region), far, &w).expect("bell thread");
        // The reaper's mark rings the doorbell.
        region.mark_dead();
        woken.recv_timeout(GENEROUS).expect("woken by the doorbell");
        drop(ring);
        region.async_wait_over();
        // Unregistered: another ring wakes nobody (its deadline is far away).
        let (w2, woken2) = waker();
        let ring2 = Ring::new(None, far, &w2).expect("bell thread");
        region.mark_dead();
        drop(ring2);
        assert!(woken2.try_recv().is_err());
    }

    #[test]
    fn a_watched_socket_is_flagged_when_bytes_arrive() {
        let (mut host, mut worker) = UnixStream::pair().unwrap();
        let watch = SocketWatch::new(host.as_fd()).expect("bell thread");
        assert!(!watch.seen());
        worker.write_all(b"x").unwrap();
        let deadline = Instant::now() + GENEROUS;
        while !watch.seen() {
            assert!(Instant::now() < deadline, "never flagged");
            std::thread::yield_now();
        }
        // Read and re-armed: clear until the next bytes.
        let mut b = [0u8; 1];
        host.read_exact(&mut b).unwrap();
        watch.rearm(host.as_fd());
        assert!(!watch.seen());
        worker.write_all(b"y").unwrap();
        while !watch.seen() {
            assert!(Instant::now() < deadline, "never flagged again");
            std::thread::yield_now();
        }
        watch.stop(host.as_fd());
    }
}
