//! Raw calls without copies: the input written into the request area by a
//! closure, the reply read in place through a guard — exact bytes on both
//! buffer strategies and both transports, at the edge of the region, with a
//! worker that dies under a guard and a closure that panics.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use bulkhead_host::{CallError, Exit, Plugin, Transport};
use bulkhead_tests::{basic, blob, spec, supervisor, transport, wait_gone};

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

/// Echoes `data` through `call_raw_filled` and checks every byte of the guard.
/// `in_region`: whether the transport and the region could carry it (replies
/// of at most 32 bytes travel inline in the region's header and are copied).
#[track_caller]
fn echo_filled(p: &Plugin, slot: u32, data: &[u8], in_region: bool) {
    let in_region = in_region && data.len() > 32;
    let reply = p
        .call_raw_filled(slot, data.len(), |buf| {
            assert_eq!(buf.len(), data.len());
            buf.copy_from_slice(data);
        })
        .unwrap_or_else(|e| panic!("echo of {} bytes: {e}", data.len()));
    assert_eq!(reply.len(), data.len());
    assert!(*reply == *data, "bytes of a {}-byte echo differ", data.len());
    assert_eq!(reply.in_shared_memory(), in_region, "{} bytes: {reply:?}", data.len());
}

#[test]
fn exact_bytes_round_trip_on_both_strategies() {
    let sup = supervisor();
    let shm = transport() == Transport::SharedMemory;
    let alloc = sup.load(spec("fx-basic")).unwrap();
    let arena = sup.load(spec("fx-arena")).unwrap();
    for (p, slot) in [(&alloc, basic::ECHO_RAW), (&arena, blob::ECHO_RAW)] {
        for (seed, len) in [0usize, 1, 7, 4096, 65_537, 1 << 20, 3 << 20].into_iter().enumerate() {
            echo_filled(p, slot, &pattern(len, seed), shm);
            // The copying form reads in place too.
            let data = pattern(len, seed + 100);
            let reply = p.call_raw_in_place(slot, &data).unwrap();
            assert!(*reply == *data);
            drop(reply);
            // And the plain API still agrees after the in-place calls.
            assert_eq!(p.call_raw(slot, &data).unwrap(), data);
        }
    }
}

#[test]
fn lengths_at_the_edge_of_the_region() {
    let sup = supervisor();
    let shm = transport() == Transport::SharedMemory;
    const CAP: usize = 4096;
    let alloc = sup.load(spec("fx-basic").shm_capacity(CAP as u32)).unwrap();
    let arena = sup
        .load(spec("fx-arena").shm_capacity(CAP as u32).arena_capacity(1024))
        .unwrap();
    for (p, slot) in [(&alloc, basic::ECHO_RAW), (&arena, blob::ECHO_RAW)] {
        for len in [CAP - 1, CAP, CAP + 1, 2 * CAP, CAP - 1] {
            // Input and output both cross the edge here: what does not fit the
            // region travels on the socket and is read in the receive buffer.
            echo_filled(p, slot, &pattern(len, len), shm && len <= CAP);
        }
    }
}

#[test]
fn errors_come_back_as_call_errors() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic")).unwrap();
    let args = bulkhead_shared::wire::encode(&("E42".to_string(),)).unwrap();
    let err = p.call_raw_in_place(basic::FAIL, &args).unwrap_err();
    assert!(
        matches!(&err, CallError::Plugin(e) if e.code == "E42" && e.message == "requested failure"),
        "{err:?}"
    );
    let err = p.call_raw_filled(999u32, 3, |b| b.fill(0)).unwrap_err();
    assert!(
        matches!(
            err,
            CallError::InvalidMethodIndex {
                index: 999,
                count: basic::COUNT
            }
        ),
        "{err:?}"
    );
    let small = sup.load(spec("fx-basic").max_message_size(1000)).unwrap();
    let mut ran = false;
    let err = small
        .call_raw_filled(basic::ECHO_RAW, 1001, |_| ran = true)
        .unwrap_err();
    assert!(
        matches!(err, CallError::InputTooLarge { len: 1001, max: 1000 }),
        "{err:?}"
    );
    assert!(!ran, "the closure of a refused call does not run");
    echo_filled(
        &p,
        basic::ECHO_RAW,
        b"still fine",
        transport() == Transport::SharedMemory,
    );
}

#[test]
fn a_guard_holds_its_worker() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic")).unwrap();
    let data = pattern(10_000, 3);
    let reply = p.call_raw_in_place(basic::ECHO_RAW, &data).unwrap();
    // The only worker is held by the guard: another call cannot overwrite the reply.
    let err = p
        .call_raw_with_timeout(basic::ECHO_RAW, b"other", Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err, CallError::Busy { .. }), "{err:?}");
    assert!(*reply == *data);
    drop(reply);
    assert_eq!(p.call_raw(basic::ECHO_RAW, b"other").unwrap(), b"other");
}

#[test]
fn worker_dying_under_a_guard() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic")).unwrap();
    let pid = p.worker_pids()[0];
    let data = pattern(100_000, 9);
    let reply = p.call_raw_in_place(basic::ECHO_RAW, &data).unwrap();
    // Our own worker, idle while the guard holds it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(pid, Duration::from_secs(20));
    // And until the host has reaped it (its reaper runs on its own thread).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while p.worker_pids().contains(&pid) {
        assert!(std::time::Instant::now() < deadline, "worker {pid} not reaped");
        std::thread::yield_now();
    }
    // The bytes stay readable, and nobody is left to change them.
    assert!(*reply == *data);
    let events = sup.events();
    drop(reply);
    // Dropping the guard reports the death and starts a replacement; the next
    // call is answered by a fresh worker.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ev = events
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("a WorkerExited event for the killed worker");
        if let bulkhead_host::EventKind::WorkerExited { pid: got, exit, .. } = ev.kind {
            if got == pid {
                assert_eq!(
                    exit,
                    Exit::Signal {
                        signal: 9,
                        core_dumped: false
                    }
                );
                break;
            }
        }
    }
    echo_filled(&p, basic::ECHO_RAW, &data, transport() == Transport::SharedMemory);
    let now = p.worker_pids();
    assert!(!now.contains(&pid), "{now:?}");
    let stats = p.stats();
    assert_eq!((stats.restarts, stats.exited_workers), (1, 1), "{stats:?}");
    assert_eq!(stats.errors.values().sum::<u64>(), 0, "no call failed: {stats:?}");
}

#[test]
fn a_panicking_closure_leaves_no_state_behind() {
    let sup = supervisor();
    let shm = transport() == Transport::SharedMemory;
    // 4 KiB region: the second size goes through a host buffer instead.
    let p = sup.load(spec("fx-basic").shm_capacity(4096)).unwrap();
    for len in [100usize, 10_000] {
        let before = p.stats();
        let pids = p.worker_pids();
        assert_eq!(pids.len(), 1);
        let got = catch_unwind(AssertUnwindSafe(|| {
            p.call_raw_filled(basic::ECHO_RAW, len, |buf| {
                buf[..len / 2].fill(0xEE);
                panic!("fill failed at {}", len / 2);
            })
        }));
        let payload = got.expect_err("the panic reaches the caller");
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some(&*format!("fill failed at {}", len / 2))
        );
        // Nothing was sent, nothing counted, the same worker answers the next
        // call with exactly its bytes.
        let after = p.stats();
        assert_eq!((after.calls, after.ok), (before.calls, before.ok));
        assert_eq!(after.crashes, 0);
        assert_eq!(p.worker_pids(), pids);
        echo_filled(&p, basic::ECHO_RAW, &pattern(len, 1), shm && len <= 4096);
        assert_eq!(p.call_raw(basic::ECHO_RAW, b"next").unwrap(), b"next");
    }
}

#[test]
fn plugins_with_host_imports_answer_through_the_socket_conversation() {
    use fx_host_iface::__fidius_UsesHost as U;
    use fx_host_iface::__fidius_host_Host as H;
    let sup = supervisor();
    let iface = bulkhead_host::HostInterface::new(
        "Host",
        H::Host_HOST_INTERFACE_HASH,
        H::Host_HOST_INTERFACE_VERSION,
        H::Host_HOST_FN_COUNT,
    )
    .function(H::HOST_FN_LOOKUP, |(key,): (String,)| format!("value-of-{key}"))
    .function(H::HOST_FN_CHECK, |(n,): (u64,)| n)
    .function(H::HOST_FN_BOOM, |(): ()| 0u64);
    let p = sup.load(spec("fx-host").host_interface(iface)).unwrap();
    let args = bulkhead_shared::wire::encode(&("k1".to_string(),)).unwrap();
    let reply = p
        .call_raw_filled(U::METHOD_ASK, args.len(), |buf| buf.copy_from_slice(&args))
        .unwrap();
    // A conversation (the plugin called back into the host) answers on the socket.
    assert!(!reply.in_shared_memory());
    let s: String = bulkhead_shared::wire::decode(&reply).unwrap();
    assert_eq!(s, "got value-of-k1");
}

#[test]
fn guards_on_a_pool_never_see_each_others_bytes() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic").workers(3)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4usize {
            let p = &p;
            s.spawn(move || {
                for i in 0..150usize {
                    let data = pattern(1000 + (t * 7 + i) % 3000, t * 1000 + i);
                    let reply = p
                        .call_raw_filled(basic::ECHO_RAW, data.len(), |b| b.copy_from_slice(&data))
                        .unwrap();
                    // Other threads' calls run meanwhile on the other workers;
                    // none of them may write into the area this guard reads.
                    for _ in 0..3 {
                        std::thread::yield_now();
                        assert!(*reply == *data, "thread {t}, call {i}");
                    }
                }
            });
        }
    });
    assert_eq!(p.stats().ok, 600);
}
