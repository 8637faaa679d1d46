//! Hostile workers: a plugin runs inside the worker, so it can write anything to
//! the protocol socket, close it, stop itself, fork, or flood its output. Each
//! case asserts the exact typed error, that the worker was replaced, that the
//! host is healthy, and that another plugin was not affected.

use std::time::{Duration, Instant};

use bulkhead_host::{Backoff, CallError, CallFault, Exit, Plugin, ProtocolError, RestartPolicy, Supervisor, Transport};
use bulkhead_shared::protocol::{PluginInfoWire, WorkerMsg, PROTOCOL_VERSION};
use bulkhead_tests::{alive, basic, spec, supervisor, wait_gone};

const GENEROUS: Duration = Duration::from_secs(20);

struct Case {
    sup: Supervisor,
    plugin: Plugin,
    bystander: Plugin,
    bystander_pid: u32,
}

fn case(max_message: Option<u32>) -> Case {
    let sup = supervisor();
    let mut s =
        spec("fx-basic").restart(RestartPolicy::on_failure(100, Duration::from_secs(60)).backoff(Backoff::none()));
    if let Some(m) = max_message {
        s = s.max_message_size(m);
    }
    let plugin = sup.load(s).unwrap();
    let bystander = sup.load(spec("fx-greeter").plugin("HelloGreeter")).unwrap();
    let bystander_pid = bystander.info().worker_pid;
    Case {
        sup,
        plugin,
        bystander,
        bystander_pid,
    }
}

impl Case {
    /// [`attack`](Self::attack) for forgeries written to the socket.
    #[track_caller]
    fn attack_socket(
        &self,
        what: &str,
        run: impl FnOnce(&Plugin) -> CallError,
        check: impl FnOnce(&CallError) -> bool,
    ) {
        self.attack(what, run, |e| socket_forgery(e, check))
    }

    /// Runs the attack, checks the error, then that the worker was replaced,
    /// the plugin works again and the bystander never noticed.
    #[track_caller]
    fn attack(&self, what: &str, run: impl FnOnce(&Plugin) -> CallError, check: impl FnOnce(&CallError) -> bool) {
        let before = self.plugin.info().worker_pid;
        let err = run(&self.plugin);
        assert!(check(&err), "{what}: unexpected {err:?}");
        wait_gone(before, GENEROUS);
        let x: i64 = self
            .plugin
            .call_with_timeout(basic::ADD, &(40i64, 2i64), GENEROUS)
            .unwrap();
        assert_eq!(x, 42, "{what}: plugin works after the attack");
        assert_ne!(self.plugin.info().worker_pid, before, "{what}: worker replaced");
        let s: String = self.bystander.call(0, &("bystander".to_string(),)).unwrap();
        assert_eq!(s, "Hello, bystander!", "{what}");
        assert_eq!(
            self.bystander.info().worker_pid,
            self.bystander_pid,
            "{what}: bystander untouched"
        );
    }
}

fn inject(p: &Plugin, bytes: Vec<u8>, sleep_ms: u64, timeout: Duration) -> CallError {
    found(
        p,
        p.call_with_timeout::<_, u32>(basic::INJECT, &(bytes, sleep_ms), timeout),
    )
}

/// The error the forgery caused. Over the socket it is the answer of the
/// call that wrote it. Over shared memory the host's bell thread sees the
/// bytes arrive and the next answer that finds them flagged fails: the call
/// that wrote them, or one soon after on the same worker. Calls are made
/// until one fails, under a deadline.
fn found(p: &Plugin, first: Result<u32, CallError>) -> CallError {
    let deadline = Instant::now() + GENEROUS;
    let mut result = first.map(|_| ());
    loop {
        if let Err(e) = result {
            return e;
        }
        assert_eq!(
            bulkhead_tests::transport(),
            Transport::SharedMemory,
            "over the socket the forged bytes are the answer"
        );
        assert!(Instant::now() < deadline, "the forged bytes were never found");
        result = p.call::<_, i64>(basic::ADD, &(1i64, 1i64)).map(|_| ());
    }
}

/// Under the shared-memory transport the socket carries no answers, so any
/// forged bytes on it are unsolicited data: a protocol error of its own.
fn socket_forgery(e: &CallError, socket_case: impl FnOnce(&CallError) -> bool) -> bool {
    match bulkhead_tests::transport() {
        Transport::Socket => socket_case(e),
        Transport::SharedMemory => {
            matches!(e, CallError::Protocol(ProtocolError::Unexpected { got })
                if *got == "unsolicited data on the control socket")
        }
    }
}

fn frame(msg: WorkerMsg<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    msg.encode(&mut v);
    v
}

#[test]
fn forged_frames_are_protocol_errors() {
    let c = case(None);
    c.attack_socket(
        "reply with another request's id",
        |p| {
            inject(
                p,
                frame(WorkerMsg::Reply {
                    id: 424_242,
                    status: 0,
                    payload: b"x",
                }),
                0,
                GENEROUS,
            )
        },
        |e| {
            matches!(
                e,
                CallError::Protocol(ProtocolError::WrongRequestId { got: 424_242, .. })
            )
        },
    );
    c.attack_socket(
        "length prefix of 4 GiB",
        |p| inject(p, u32::MAX.to_le_bytes().to_vec(), 0, GENEROUS),
        |e| matches!(e, CallError::Protocol(ProtocolError::FrameTooLarge { len: u32::MAX, max }) if *max == (64 << 20) + 64),
    );
    c.attack_socket(
        "empty frame",
        |p| inject(p, 0u32.to_le_bytes().to_vec(), 0, GENEROUS),
        |e| matches!(e, CallError::Protocol(ProtocolError::EmptyFrame)),
    );
    c.attack_socket(
        "unknown tag",
        |p| inject(p, vec![3, 0, 0, 0, 0x42, 0, 0], 0, GENEROUS),
        |e| matches!(e, CallError::Protocol(ProtocolError::Malformed(m)) if m.contains("0x42")),
    );
    c.attack_socket(
        "truncated reply header",
        |p| inject(p, vec![5, 0, 0, 0, 0x83, 1, 2, 3, 4], 0, GENEROUS),
        |e| matches!(e, CallError::Protocol(ProtocolError::Malformed(m)) if m.contains("truncated")),
    );
    let info = PluginInfoWire {
        protocol_version: PROTOCOL_VERSION,
        abi_version: 500,
        plugin_name: "Forged".into(),
        interface_name: "Forged".into(),
        interface_hash: 0,
        interface_version: 0,
        capabilities: 0,
        buffer_strategy: bulkhead_host::BufferStrategy::Arena,
        method_count: 0,
        trait_metadata: vec![],
        method_metadata: vec![],
        plugins_in_library: vec![],
        shm: false,
        sandbox: bulkhead_host::SandboxReport::off(0),
        bound_imports: vec![],
        unbound_imports: vec![],
    };
    c.attack_socket(
        "a second handshake mid-call",
        |p| inject(p, frame(WorkerMsg::Loaded(Box::new(info))), 0, GENEROUS),
        |e| matches!(e, CallError::Protocol(ProtocolError::Unexpected { got: "Loaded" })),
    );
    c.attack_socket(
        "a forged host callback from a plugin that imports nothing",
        |p| {
            let cb = WorkerMsg::Callback {
                import: 0,
                index: 0,
                payload: b"x",
            };
            inject(p, frame(cb), 0, GENEROUS)
        },
        |e| matches!(e, CallError::Protocol(ProtocolError::Unexpected { got: "Callback" })),
    );
    c.attack_socket(
        "a forged pull outside a client stream",
        |p| inject(p, frame(WorkerMsg::Pull), 0, GENEROUS),
        |e| matches!(e, CallError::Protocol(ProtocolError::Unexpected { got: "Pull" })),
    );
    c.attack_socket(
        "malformed bincode in a fault",
        |p| {
            inject(
                p,
                vec![13, 0, 0, 0, 0x84, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
                0,
                GENEROUS,
            )
        },
        |e| matches!(e, CallError::Protocol(ProtocolError::Malformed(_))),
    );
}

#[test]
fn lying_length_within_the_cap_never_blocks_past_the_deadline() {
    let c = case(None);
    let limit = Duration::from_millis(500);
    c.attack_socket(
        "32 MiB promised, 10 bytes sent, then silence",
        |p| {
            let mut bytes = (32u32 << 20).to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0x83; 10]);
            let t = Instant::now();
            let e = inject(p, bytes, 3_600_000, limit);
            assert!(t.elapsed() < limit + Duration::from_secs(5), "{:?}", t.elapsed());
            e
        },
        |e| matches!(e, CallError::Timeout { limit: l, .. } if *l == limit),
    );
}

#[test]
fn message_size_limit_applies_both_ways() {
    let c = case(Some(4100));
    // Input over the limit is refused before sending; the worker is untouched.
    let pid = c.plugin.info().worker_pid;
    let err = c.plugin.call_raw(basic::ECHO_RAW, &[0u8; 4101]).unwrap_err();
    assert!(
        matches!(err, CallError::InputTooLarge { len: 4101, max: 4100 }),
        "{err:?}"
    );
    assert_eq!(
        c.plugin.call_raw(basic::ECHO_RAW, &[7u8; 4100]).unwrap(),
        vec![7u8; 4100]
    );
    // Output over the limit is caught in the worker; the worker survives.
    let err = c
        .plugin
        .call::<_, String>(basic::GREET, &("n".repeat(4090),))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Contract(CallFault::OutputTooLarge { len: 4106, max: 4100 })
        ),
        "{err:?}"
    );
    assert_eq!(c.plugin.info().worker_pid, pid);
    // A forged frame over the limit is a protocol error.
    c.attack_socket(
        "frame over the configured limit",
        |p| inject(p, 5000u32.to_le_bytes().to_vec(), 0, GENEROUS),
        |e| {
            matches!(
                e,
                CallError::Protocol(ProtocolError::FrameTooLarge { len: 5000, max: 4164 })
            )
        },
    );
}

#[test]
fn garbage_on_every_descriptor() {
    let c = case(None);
    c.attack_socket(
        "0xff written to every fd",
        |p| found(p, p.call_with_timeout::<_, u32>(basic::GARBAGE_FDS, &(), GENEROUS)),
        |e| {
            matches!(
                e,
                CallError::Protocol(ProtocolError::FrameTooLarge { len: u32::MAX, .. })
            )
        },
    );
}

#[test]
fn closed_socket_while_running() {
    let c = case(None);
    c.attack(
        "socket closed, worker sleeps on",
        |p| {
            p.call_with_timeout::<_, u32>(basic::CLOSE_SOCKET_AND_SLEEP, &(3_600_000u64,), GENEROUS)
                .unwrap_err()
        },
        |e| matches!(e, CallError::Protocol(ProtocolError::ChannelClosed)),
    );
}

#[test]
fn stopped_and_term_ignoring_workers_time_out() {
    let c = case(None);
    let limit = Duration::from_millis(300);
    c.attack(
        "SIGSTOP itself",
        |p| p.call_with_timeout::<_, u32>(basic::SIGSTOP, &(), limit).unwrap_err(),
        |e| matches!(e, CallError::Timeout { .. }),
    );
    c.attack(
        "ignore SIGTERM and spin",
        |p| {
            p.call_with_timeout::<_, u32>(basic::IGNORE_TERM_SPIN, &(), limit)
                .unwrap_err()
        },
        |e| matches!(e, CallError::Timeout { .. }),
    );
}

#[test]
fn grandchild_holding_the_socket_does_not_hide_the_death() {
    let c = case(None);
    c.attack(
        "fork a socket-holding grandchild, then _exit(7)",
        |p| {
            let t = Instant::now();
            let e = p
                .call_with_timeout::<_, u32>(basic::FORK_HOLDER, &(), GENEROUS)
                .unwrap_err();
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "death seen without waiting for the deadline"
            );
            e
        },
        |e| {
            matches!(
                e,
                CallError::WorkerDied {
                    exit: Exit::Code(7),
                    ..
                }
            )
        },
    );
}

#[test]
fn lingering_thread_and_floods_of_output() {
    let c = case(None);
    let one: u32 = c.plugin.call(basic::SPAWN_THREAD, &()).unwrap();
    assert_eq!(one, 1);
    let x: i64 = c.plugin.call(basic::ADD, &(1i64, 2i64)).unwrap();
    assert_eq!(x, 3, "calls continue while the plugin's thread runs");
    let t = Instant::now();
    let n: u64 = c
        .plugin
        .call_with_timeout(basic::PRINT, &(100u64 << 20, false), GENEROUS)
        .unwrap();
    assert_eq!(n, 100 << 20);
    assert!(t.elapsed() < GENEROUS);
    let x: i64 = c.plugin.call(basic::ADD, &(2i64, 2i64)).unwrap();
    assert_eq!(x, 4);
    let pid = c.plugin.info().worker_pid;
    drop(c.sup);
    drop(c.plugin);
    drop(c.bystander);
    assert!(!alive(pid), "shutdown stops a worker with a lingering thread");
}

#[test]
fn forged_shared_memory_responses_are_protocol_errors() {
    if bulkhead_tests::transport() != Transport::SharedMemory {
        // No region to forge into: the fixture says so and returns at once.
        let c = case(None);
        let r: u32 = c.plugin.call(basic::SHM_FORGE, &(1u32, 0i64, 0u32, 0u32)).unwrap();
        assert_eq!(r, 0);
        return;
    }
    let c = case(Some(1 << 20));
    let forge = |kind: u32, id_delta: i64, off: u32, len: u32| {
        move |p: &Plugin| {
            p.call_with_timeout::<_, u32>(basic::SHM_FORGE, &(kind, id_delta, off, len), GENEROUS)
                .unwrap_err()
        }
    };
    c.attack("answer for another request", forge(1, 5, 0, 0), |e| {
        matches!(e, CallError::Protocol(ProtocolError::WrongRequestId { .. }))
    });
    c.attack("length over the message limit", forge(1, 0, 0, u32::MAX), |e| {
        matches!(
            e,
            CallError::Protocol(ProtocolError::FrameTooLarge {
                len: u32::MAX,
                max: 1_048_576
            })
        )
    });
    c.attack(
        "range outside the region",
        forge(1, 0, (4 << 20) - 8, 64),
        |e| matches!(e, CallError::Protocol(ProtocolError::Malformed(m)) if m.contains("outside the shared region")),
    );
    c.attack(
        "unknown response kind",
        forge(77, 0, 0, 0),
        |e| matches!(e, CallError::Protocol(ProtocolError::Malformed(m)) if m.contains("kind 77")),
    );
    c.attack(
        "inline output longer than the response line",
        forge(4, 0, 0, 33),
        |e| matches!(e, CallError::Protocol(ProtocolError::Malformed(m)) if m == "inline response of 33 bytes"),
    );
    c.attack("fault with a body that does not decode", forge(3, 0, 0, 3), |e| {
        matches!(e, CallError::Protocol(ProtocolError::Malformed(_)))
    });
    // Forged turns (a callback or pull inside the request).
    c.attack("callback arguments longer than the region", forge(5, 0, 0, u32::MAX), |e| {
        matches!(e, CallError::Protocol(ProtocolError::Malformed(m)) if m == "callback arguments of 4294967295 bytes")
    });
    c.attack("callback for another request", forge(5, 5, 0, 8), |e| {
        matches!(e, CallError::Protocol(ProtocolError::WrongRequestId { .. }))
    });
    // Answered (not bound, end of input, nothing to read), the turns change
    // nothing: the call still ends at its own deadline.
    let limit = Duration::from_millis(500);
    for (what, kind) in [
        ("a callback from a plugin that imports nothing", 5u32),
        ("a pull outside a client stream", 7),
        ("a callback announced on the socket that never comes", 6),
    ] {
        c.attack(
            what,
            |p| {
                p.call_with_timeout::<_, u32>(basic::SHM_FORGE, &(kind, 0i64, 0u32, 8u32), limit)
                    .unwrap_err()
            },
            |e| matches!(e, CallError::Timeout { limit: l, .. } if *l == limit),
        );
    }
}
