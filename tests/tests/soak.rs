//! Chaos soak: several threads, for a bounded time, issue a random mix of good
//! calls and every failure mode against pools of workers. At the end: the host
//! is alive, every call got exactly one answer (correct for good calls), no
//! zombies, no leaked descriptors, live workers never exceeded the pools, and
//! host memory stayed bounded. The pools run the default restart policy (never
//! give up, back off): at least 90 % of the good calls must be answered, and
//! every answer must be right.
//!
//! The CI-sized run lasts `BULKHEAD_SOAK_SECS` (default 12 s); the `#[ignore]`d
//! long run lasts `BULKHEAD_SOAK_LONG_SECS` (default 300 s):
//! `cargo test -p bulkhead-tests --test soak -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_host::{CallError, Exit, Limits, Plugin, ProtocolError, RestartPolicy};
use bulkhead_shared::protocol::WorkerMsg;
use bulkhead_tests::{basic, blob, my_children, spec, supervisor};

const GENEROUS: Duration = Duration::from_secs(30);
const HANG: Duration = Duration::from_millis(250);
/// Deadline of good calls: long enough to wait out hung workers and a backoff.
const GOOD: Duration = Duration::from_secs(5);
const POOLS: usize = 3 + 2 + 1;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Tally {
    calls: u64,
    /// Second calls of `good_a` operations (made when the first succeeded).
    second_calls: u64,
    good: u64,
    good_ok: u64,
    answers: u64,
    injected: BTreeMap<&'static str, u64>,
    outcomes: BTreeMap<String, u64>,
}

/// One random operation; returns (name, whether it was a good call). Panics on
/// any wrong answer.
fn op(a: &Plugin, b: &Plugin, c: &Plugin, r: &mut Rng, tag: u64, tally: &mut Tally) {
    let pick = r.next() % 100;
    let (name, outcome): (&'static str, Result<(), CallError>) = match pick {
        // Good calls: a wrong answer fails the test; an error is counted.
        0..=39 => {
            let n = format!("n{tag}");
            let r = a
                .call_with_timeout::<_, String>(basic::GREET, &(n.clone(),), GOOD)
                .map(|s| assert_eq!(s, format!("Hello, {n}!")))
                .and_then(|()| {
                    // The second call is made only if the first succeeded.
                    tally.second_calls += 1;
                    a.call_with_timeout::<_, i64>(basic::ADD, &(tag as i64, 7i64), GOOD)
                })
                .map(|x| assert_eq!(x, tag as i64 + 7));
            ("good_a", r)
        }
        40..=54 => {
            let len = r.next() % 5000;
            let r = b
                .call_with_timeout::<_, Vec<u8>>(blob::REPEAT, &((tag % 251) as u8, len), GOOD)
                .map(|v| assert_eq!(v, vec![(tag % 251) as u8; len as usize]));
            ("good_b", r)
        }
        55..=62 => {
            let r = c
                .call_with_timeout::<_, String>(0, &(format!("c{tag}"),), GOOD)
                .map(|s| assert_eq!(s, format!("Hello, c{tag}!")));
            ("good_c", r)
        }
        63..=66 => (
            "segfault",
            a.call_with_timeout::<_, u32>(basic::SEGFAULT, &(), GENEROUS).map(drop),
        ),
        67..=69 => (
            "abort",
            a.call_with_timeout::<_, u32>(basic::ABORT, &(), GENEROUS).map(drop),
        ),
        70..=71 => (
            "exit0",
            a.call_with_timeout::<_, u32>(basic::EXIT, &(0i32,), GENEROUS).map(drop),
        ),
        72..=75 => ("spin", a.call_with_timeout::<_, u64>(basic::SPIN, &(), HANG).map(drop)),
        76..=77 => (
            "sigstop",
            a.call_with_timeout::<_, u32>(basic::SIGSTOP, &(), HANG).map(drop),
        ),
        78..=80 => (
            "panic",
            a.call_with_timeout::<_, String>(basic::PANIC, &("p".to_string(),), GENEROUS)
                .map(drop),
        ),
        81..=83 => (
            "plugin_error",
            a.call_with_timeout::<_, String>(basic::FAIL, &("E".to_string(),), GENEROUS)
                .map(drop),
        ),
        84..=85 => (
            "garbage_fds",
            a.call_with_timeout::<_, u32>(basic::GARBAGE_FDS, &(), GENEROUS)
                .map(drop),
        ),
        86..=87 => {
            let mut forged = Vec::new();
            WorkerMsg::Reply {
                id: u64::MAX,
                status: 0,
                payload: b"",
            }
            .encode(&mut forged);
            (
                "wrong_id",
                a.call_with_timeout::<_, u32>(basic::INJECT, &(forged, 0u64), GENEROUS)
                    .map(drop),
            )
        }
        88..=89 => (
            "stack_overflow",
            a.call_with_timeout::<_, u64>(basic::STACK_OVERFLOW, &(0u64,), GENEROUS)
                .map(drop),
        ),
        90..=91 => (
            "oom",
            a.call_with_timeout::<_, u64>(basic::ALLOC, &(16u64 << 30,), GENEROUS)
                .map(drop),
        ),
        92..=93 => (
            "fork_holder",
            a.call_with_timeout::<_, u32>(basic::FORK_HOLDER, &(), GENEROUS)
                .map(drop),
        ),
        94..=95 => (
            "print_1mb",
            a.call_with_timeout::<_, u64>(basic::PRINT, &(1u64 << 20, false), GENEROUS)
                .map(drop),
        ),
        96..=97 => (
            "arena_panic",
            b.call_with_timeout::<_, String>(blob::PANIC, &("q".to_string(),), GENEROUS)
                .map(drop),
        ),
        _ => ("invalid_index", a.call_raw(basic::COUNT + 5, b"").map(drop)),
    };
    tally.calls += 1;
    tally.answers += 1;
    *tally.injected.entry(name).or_default() += 1;
    // Each failure mode must end in exactly its typed error. Hangs may instead
    // spend their whole deadline queued behind other hangs or a backoff (Busy, Backoff).
    let good = name.starts_with("good_");
    if good {
        tally.good += 1;
        tally.good_ok += outcome.is_ok() as u64;
    }
    let shm = bulkhead_tests::transport() == bulkhead_host::Transport::SharedMemory;
    let ok = match (name, &outcome) {
        ("good_a" | "good_b" | "good_c" | "print_1mb", Ok(())) => true,
        // A good call may wait out a busy pool or a backoff; it is counted, not wrong.
        (_, Err(CallError::Busy { .. } | CallError::Backoff { .. })) if good => true,
        (
            "segfault",
            Err(CallError::WorkerDied {
                exit: Exit::Signal { signal: 11, .. },
                ..
            }),
        ) => true,
        (
            "abort" | "stack_overflow" | "oom",
            Err(CallError::WorkerDied {
                exit: Exit::Signal { signal: 6, .. },
                ..
            }),
        ) => true,
        (
            "exit0",
            Err(CallError::WorkerDied {
                exit: Exit::Code(0), ..
            }),
        ) => true,
        (
            "fork_holder",
            Err(CallError::WorkerDied {
                exit: Exit::Code(7), ..
            }),
        ) => true,
        ("spin" | "sigstop", Err(CallError::Timeout { .. } | CallError::Busy { .. } | CallError::Backoff { .. })) => {
            true
        }
        ("panic" | "arena_panic", Err(CallError::Panic(_))) => true,
        ("plugin_error", Err(CallError::Plugin(_))) => true,
        // Over shared memory, bytes forged onto the socket are unsolicited
        // data, found once the host's bell thread has flagged the socket: by
        // the call that wrote them, or by the next answer of that worker —
        // which may be another thread's call (a good one, or any other kind).
        ("garbage_fds" | "wrong_id", Ok(())) if shm => true,
        (_, Err(CallError::Protocol(ProtocolError::Unexpected { got })))
            if shm && *got == "unsolicited data on the control socket" =>
        {
            true
        }
        ("garbage_fds", Err(CallError::Protocol(ProtocolError::FrameTooLarge { .. }))) => true,
        ("wrong_id", Err(CallError::Protocol(ProtocolError::WrongRequestId { got: u64::MAX, .. }))) => true,
        ("invalid_index", Err(CallError::InvalidMethodIndex { .. })) => true,
        _ => false,
    };
    assert!(ok, "{name}: wrong outcome {outcome:?}");
    let key = match &outcome {
        Ok(()) => "ok".to_string(),
        Err(e) => e.kind().to_string(),
    };
    *tally.outcomes.entry(key).or_default() += 1;
}

fn soak(duration: Duration) {
    let sup_probe = supervisor(); // builds fixtures before the baseline is taken
                                  // One load starts the process-wide event loops, whose epoll and eventfd
                                  // descriptors live as long as the process, before the baseline.
    drop(sup_probe.load(spec("fx-basic")).unwrap());
    drop(sup_probe);
    let fds_before = fd_count();
    let fd_list_before = bulkhead_tests::open_fds(std::process::id());
    let sup = supervisor();
    // The default restart policy: never give up, back off per slot.
    let policy = RestartPolicy::default();
    let a = sup
        .load(
            spec("fx-basic")
                .workers(3)
                .restart(policy.clone())
                .limits(Limits::new().address_space(4 << 30)),
        )
        .unwrap();
    let b = sup
        .load(spec("fx-arena").workers(2).restart(policy.clone()).arena_capacity(1024))
        .unwrap();
    let c = sup
        .load(spec("fx-greeter").plugin("HelloGreeter").restart(policy))
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let max_live = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let monitor = {
        let max_live = max_live.clone();
        std::thread::spawn(move || loop {
            let live = my_children().iter().filter(|c| c.1 != 'Z').count();
            max_live.fetch_max(live, Ordering::Relaxed);
            // Sampling period; ends as soon as the soak is over.
            if stop_rx
                .recv_timeout(Duration::from_millis(10))
                .is_err_and(|e| e.is_disconnected())
            {
                return;
            }
        })
    };

    let total = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (a, b, c, stop, total) = (a.clone(), b.clone(), c.clone(), stop.clone(), total.clone());
            std::thread::spawn(move || {
                let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t + 1) * 0x1000_0001));
                let mut tally = Tally::default();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(&a, &b, &c, &mut r, t * 1_000_000 + i, &mut tally);
                    i += 1;
                }
                let mut tot = total.lock().unwrap();
                tot.calls += tally.calls;
                tot.second_calls += tally.second_calls;
                tot.good += tally.good;
                tot.good_ok += tally.good_ok;
                tot.answers += tally.answers;
                for (k, v) in tally.injected {
                    *tot.injected.entry(k).or_default() += v;
                }
                for (k, v) in tally.outcomes {
                    *tot.outcomes.entry(k).or_default() += v;
                }
            })
        })
        .collect();
    // The soak's own clock: the threads run until the duration has passed.
    let _ = crossbeam_channel::after(duration).recv();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("no soak thread panicked");
    }
    let elapsed = start.elapsed();
    let stats: Vec<_> = [&a, &b, &c].iter().map(|p| p.stats()).collect();
    drop(stop_tx);
    monitor.join().unwrap();
    drop((a, b, c));
    drop(sup);

    let children = my_children();
    let zombies = children.iter().filter(|c| c.1 == 'Z').count();
    let fds_after = fd_count();
    let peak_rss_kb = status_kb("VmHWM:");
    let tally = total.lock().unwrap();
    let calls_counted: u64 = stats.iter().map(|s| s.calls).sum();
    println!(
        "soak: {:.1?}, calls {} (plugin-side count {}), answers {}, good calls {} answered correctly {} ({:.2} %), injected {:?}, outcomes {:?}, restarts {}, \
         max live workers {} (pools {}), zombies {}, children left {}, fds before {} after {}, peak host RSS {} KiB",
        elapsed,
        tally.calls,
        calls_counted,
        tally.answers,
        tally.good,
        tally.good_ok,
        100.0 * tally.good_ok as f64 / tally.good.max(1) as f64,
        tally.injected,
        tally.outcomes,
        stats.iter().map(|s| s.restarts).sum::<u64>(),
        max_live.load(Ordering::Relaxed),
        POOLS,
        zombies,
        children.len(),
        fds_before,
        fds_after,
        peak_rss_kb
    );
    assert_eq!(tally.calls, tally.answers, "every call got exactly one answer");
    assert!(
        tally.good_ok * 10 >= tally.good * 9,
        "at least 90 % of good calls answered correctly: {} of {}",
        tally.good_ok,
        tally.good
    );
    // A good_a operation is two calls when its first succeeds; invalid_index
    // calls never reach a pool.
    let n = |k: &str| tally.injected.get(k).copied().unwrap_or(0);
    assert_eq!(
        calls_counted,
        tally.calls + tally.second_calls - n("invalid_index"),
        "the pools saw every call"
    );
    assert!(
        tally.injected.len() >= 17,
        "every failure mode was exercised: {:?}",
        tally.injected
    );
    let describe: Vec<String> = children
        .iter()
        .map(|c| {
            let cmd = std::fs::read(format!("/proc/{}/cmdline", c.0)).unwrap_or_default();
            let fds = bulkhead_tests::open_fds(c.0);
            format!("{c:?} {} fds {fds:?}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect();
    assert_eq!(children, vec![], "no child processes and no zombies: {describe:?}");
    let fd_list_after = bulkhead_tests::open_fds(std::process::id());
    assert_eq!(
        fds_after, fds_before,
        "no leaked descriptors: before {fd_list_before:?} after {fd_list_after:?}"
    );
    // Plus three: the supervisor's fork-server and the two blanks it keeps
    // pre-forked.
    assert!(
        max_live.load(Ordering::Relaxed) <= POOLS + 3,
        "live workers within the pools"
    );
    assert!(peak_rss_kb < 512 * 1024, "host memory bounded: peak {peak_rss_kb} KiB");
}

fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

#[test]
fn chaos_soak_short() {
    soak(secs("BULKHEAD_SOAK_SECS", 12));
}

#[test]
#[ignore = "long soak; run explicitly"]
fn chaos_soak_long() {
    soak(secs("BULKHEAD_SOAK_LONG_SECS", 300));
}
