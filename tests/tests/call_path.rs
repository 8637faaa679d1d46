//! The isolated call path: real fidius plugins loaded and called in worker
//! processes, every status code, both buffer strategies, typed and raw calls,
//! config, multi-plugin libraries, and crashes contained.

use std::time::Duration;

use bulkhead_host::{BufferStrategy, CallError, CallFault, Exit, Layer, LayerState, PluginError, PluginSpec};
use bulkhead_tests::{alive, basic, blob, spec, supervisor};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct ScaleConfig {
    prefix: String,
    factor: i64,
    crash: bool,
}

#[test]
fn typed_calls_and_info() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let s: String = plugin.call(basic::GREET, &("world".to_string(),)).unwrap();
    assert_eq!(s, "Hello, world!");
    let sum: i64 = plugin.call(basic::ADD, &(40i64, 2i64)).unwrap();
    assert_eq!(sum, 42);
    let sum: i64 = plugin.call(basic::ADD, &(i64::MAX, 1i64)).unwrap();
    assert_eq!(sum, i64::MIN);

    let info = plugin.info();
    assert_eq!(info.plugin_name, "BasicPlugin");
    assert_eq!(info.interface_name, "Basic");
    assert_eq!(info.interface_version, 1);
    assert_eq!(info.buffer_strategy, BufferStrategy::PluginAllocated);
    assert_eq!(info.method_count, basic::COUNT);
    assert_eq!(info.abi_version, 500);
    assert_eq!(info.plugins_in_library, vec!["BasicPlugin".to_string()]);
    assert_ne!(info.interface_hash, 0);
    assert_ne!(info.worker_pid, std::process::id());
    assert!(alive(info.worker_pid));
    assert_eq!(info.transport, bulkhead_tests::transport());
    // The default sandbox is fully in force on this machine.
    for layer in Layer::ALL {
        assert_eq!(info.sandbox.state(layer), &LayerState::Enforced, "{layer}");
    }
    // The method really ran in the worker, not in this process: in its own pid
    // namespace, where it is pid 2 (init is pid 1; the host knows the outer pid).
    let pid: u32 = plugin.call(basic::PID, &()).unwrap();
    assert_eq!(pid, 2);
}

#[test]
fn raw_and_typed_echo_preserve_bytes() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    for len in [0usize, 1, 4096, 100_000, 3 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(plugin.call_raw(basic::ECHO_RAW, &data).unwrap(), data, "raw {len}");
        let back: Vec<u8> = plugin.call(basic::ECHO, &(data.clone(),)).unwrap();
        assert_eq!(back, data, "typed {len}");
    }
}

#[test]
fn plugin_error_is_returned_exactly() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let err = plugin
        .call::<_, String>(basic::FAIL, &("E42".to_string(),))
        .unwrap_err();
    let CallError::Plugin(e) = err else {
        panic!("expected Plugin, got {err:?}")
    };
    assert_eq!(
        e,
        PluginError {
            code: "E42".into(),
            message: "requested failure".into(),
            details: Some("{\"attempt\":1}".into())
        }
    );
}

#[test]
fn panic_is_caught_and_worker_survives() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let pid = plugin.info().worker_pid;
    let err = plugin
        .call::<_, String>(basic::PANIC, &("kaboom at 12".to_string(),))
        .unwrap_err();
    assert!(matches!(&err, CallError::Panic(m) if m == "kaboom at 12"), "{err:?}");
    let sum: i64 = plugin.call(basic::ADD, &(1i64, 2i64)).unwrap();
    assert_eq!(sum, 3);
    assert_eq!(plugin.info().worker_pid, pid, "a caught panic does not cost the worker");
}

#[test]
fn crashes_are_contained_with_exact_causes() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let cases: [(u32, Exit); 3] = [
        (
            basic::SEGFAULT,
            Exit::Signal {
                signal: 11,
                core_dumped: false,
            },
        ),
        (
            basic::ABORT,
            Exit::Signal {
                signal: 6,
                core_dumped: false,
            },
        ),
        (basic::EXIT, Exit::Code(3)),
    ];
    for (method, expected) in cases {
        let before = plugin.info().worker_pid;
        let err = if method == basic::EXIT {
            plugin.call::<_, u32>(method, &(3i32,)).unwrap_err()
        } else {
            plugin.call::<_, u32>(method, &()).unwrap_err()
        };
        match &err {
            CallError::WorkerDied { exit, .. } => assert_eq!(*exit, expected, "method {method}"),
            other => panic!("method {method}: expected WorkerDied, got {other:?}"),
        }
        bulkhead_tests::wait_gone(before, Duration::from_secs(20));
        // The next call runs on a fresh worker.
        let s: String = plugin.call(basic::GREET, &("again".to_string(),)).unwrap();
        assert_eq!(s, "Hello, again!");
        assert_ne!(plugin.info().worker_pid, before);
    }
    let stats = plugin.stats();
    assert_eq!((stats.crashes, stats.restarts, stats.live_workers), (3, 3, 1));
}

#[test]
fn invalid_method_index_makes_no_round_trip() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let err = plugin.call::<_, ()>(basic::COUNT, &()).unwrap_err();
    assert!(
        matches!(err, CallError::InvalidMethodIndex { index, count } if index == basic::COUNT && count == basic::COUNT)
    );
    let err = plugin.call_raw(u32::MAX, b"").unwrap_err();
    assert!(matches!(err, CallError::InvalidMethodIndex { index: u32::MAX, .. }));
    assert_eq!(plugin.stats().calls, 0, "rejected before reaching the worker");
}

#[test]
fn deserialization_and_serialization_errors() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    // The plugin cannot decode a String argument from 3 bytes: status -2.
    let err = plugin.call_raw(basic::GREET, b"abc").unwrap_err();
    assert!(
        matches!(err, CallError::Serialization { index: basic::GREET }),
        "{err:?}"
    );
    // A u64 result cannot be decoded from a String return value's 8-byte prefix + text?
    // Ask for a type whose encoding is longer than what comes back.
    let err = plugin
        .call::<_, (u64, u64, u64)>(basic::ADD, &(1i64, 2i64))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::ReturnType {
                index: basic::ADD,
                len: 8,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn arena_strategy_grows_once_and_reports_everything() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-arena").arena_capacity(4096)).unwrap();
    assert_eq!(plugin.info().buffer_strategy, BufferStrategy::Arena);
    // Output outgrows the 4 KiB arena: the worker grows it and retries once.
    let v: Vec<u8> = plugin.call(blob::REPEAT, &(7u8, 100_000u64)).unwrap();
    assert_eq!(v, vec![7u8; 100_000]);
    let v: Vec<u8> = plugin.call(blob::REPEAT, &(9u8, 10u64)).unwrap();
    assert_eq!(v, vec![9u8; 10]);
    let sum: i64 = plugin.call(blob::ADD, &(-5i64, 3i64)).unwrap();
    assert_eq!(sum, -2);
    let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
    assert_eq!(plugin.call_raw(blob::ECHO_RAW, &data).unwrap(), data);
    let err = plugin
        .call::<_, String>(blob::FAIL, &("ARENA".to_string(),))
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Plugin(e) if e.code == "ARENA" && e.message == "requested failure"),
        "{err:?}"
    );
    let err = plugin
        .call::<_, String>(blob::PANIC, &("lost".to_string(),))
        .unwrap_err();
    assert!(matches!(&err, CallError::Panic(m) if m.contains("Arena")), "{err:?}");
}

#[test]
fn configured_plugin_receives_its_config() {
    let sup = supervisor();
    let cfg = ScaleConfig {
        prefix: "px".into(),
        factor: 3,
        crash: false,
    };
    let plugin = sup.load(spec("fx-configured").config(&cfg)).unwrap();
    let d: String = plugin.call(0, &()).unwrap();
    assert_eq!(d, "pxx3");
    let x: i64 = plugin.call(1, &(14i64,)).unwrap();
    assert_eq!(x, 42);
    assert_eq!(plugin.info().interface_version, 2);
}

#[test]
fn two_plugins_in_one_library() {
    let sup = supervisor();
    let shout = sup.load(spec("fx-greeter").plugin("ShoutGreeter")).unwrap();
    let hello = sup.load(spec("fx-greeter").plugin("HelloGreeter")).unwrap();
    let s: String = shout.call(0, &("bob".to_string(),)).unwrap();
    assert_eq!(s, "HELLO, BOB!");
    let s: String = hello.call(0, &("bob".to_string(),)).unwrap();
    assert_eq!(s, "Hello, bob!");
    // Registry order is the linker's: unspecified, and it does change between builds.
    let mut names = shout.info().plugins_in_library;
    names.sort();
    assert_eq!(names, vec!["HelloGreeter".to_string(), "ShoutGreeter".to_string()]);
    assert_ne!(shout.info().worker_pid, hello.info().worker_pid);
}

#[test]
fn streaming_slots_are_unsupported_not_crashes() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic").streaming_methods([basic::ECHO])).unwrap();
    let err = plugin.call::<_, Vec<u8>>(basic::ECHO, &(vec![1u8],)).unwrap_err();
    assert!(
        matches!(err, CallError::Unsupported { index: basic::ECHO, .. }),
        "{err:?}"
    );
}

#[test]
fn lying_plugin_outputs_are_typed_errors() {
    let sup = supervisor();
    let alloc = sup.load(spec("fx-liar").plugin("LiarAlloc")).unwrap();
    let err = alloc.call_raw(0, b"").unwrap_err();
    assert!(matches!(err, CallError::UnknownStatus { code: 7 }), "{err:?}");
    let s: String = alloc.call(1, &()).unwrap();
    assert_eq!(s, "liar");
    let err = alloc.call_raw(2, b"").unwrap_err();
    assert!(
        matches!(err, CallError::Contract(CallFault::NullOutput { len: 0x7fff_ffff })),
        "{err:?}"
    );

    let arena = sup
        .load(spec("fx-liar").plugin("LiarArena").arena_capacity(1024))
        .unwrap();
    let err = arena.call_raw(0, b"").unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Contract(CallFault::ArenaOutOfBounds {
                offset: 1022,
                len: 16,
                capacity: 1024
            })
        ),
        "{err:?}"
    );
    // Asks for 2048, gets it, then asks for 4096: BufferTooSmall after the one retry.
    let err = arena.call_raw(1, b"").unwrap_err();
    assert!(
        matches!(err, CallError::BufferTooSmall { needed: Some(4096) }),
        "{err:?}"
    );
    // None of this cost a worker.
    assert_eq!(alloc.stats().restarts + arena.stats().restarts, 0);
}

#[test]
fn real_fidius_0_4_plugin_speaks_abi_400() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-old")).unwrap();
    let info = plugin.info();
    assert_eq!(
        (
            info.abi_version,
            info.plugin_name.as_str(),
            info.interface_name.as_str()
        ),
        (400, "OldPlugin", "Legacy")
    );
    assert_eq!(info.method_count, 3);
    let s: String = plugin.call(0, &("bob".to_string(),)).unwrap();
    assert_eq!(s, "Old hello, bob!");
    let x: i64 = plugin.call(1, &(40i64, 2i64)).unwrap();
    assert_eq!(x, 42);
    let err = plugin.call::<_, String>(2, &("OLD".to_string(),)).unwrap_err();
    assert!(
        matches!(&err, CallError::Plugin(e) if e.code == "OLD" && e.message == "old failure"),
        "{err:?}"
    );
}

#[test]
fn abi_400_plugins_are_supported() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-liar").env("BULKHEAD_LIAR", "abi400")).unwrap();
    let info = plugin.info();
    assert_eq!(
        (info.abi_version, info.plugin_name.as_str(), info.method_count),
        (400, "Old400", 1)
    );
    assert_eq!(plugin.call_raw(0, b"old but fine").unwrap(), b"old but fine");
}

#[test]
fn host_never_loads_plugin_code() {
    // A library whose load-time constructor segfaults: only the worker dies.
    let sup = supervisor();
    let err = sup.load(spec("fx-dlopen-crash")).unwrap_err();
    assert!(
        matches!(
            err,
            bulkhead_host::LoadError::WorkerDied {
                exit: Exit::Signal { signal: 11, .. },
                ..
            }
        ),
        "{err:?}"
    );
    // A configure() that panics aborts its worker (no unwind guard across construct).
    let cfg = ScaleConfig {
        prefix: String::new(),
        factor: 1,
        crash: true,
    };
    let err = sup.load(spec("fx-configured").config(&cfg)).unwrap_err();
    let bulkhead_host::LoadError::WorkerDied { exit, stderr, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        *exit,
        Exit::Signal {
            signal: 6,
            core_dumped: false
        }
    );
    assert!(
        stderr.contains("configure refused"),
        "stderr tail carries the panic: {stderr:?}"
    );
    // Still here, still working.
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let s: String = plugin.call(basic::GREET, &("host".to_string(),)).unwrap();
    assert_eq!(s, "Hello, host!");
}

#[test]
fn worker_binary_not_found_names_every_place() {
    let err = bulkhead_host::Supervisor::builder()
        .worker_path("/nonexistent/bulkhead-worker")
        .build()
        .unwrap_err();
    let bulkhead_host::BuildError::WorkerNotFound { searched } = &err else {
        panic!("expected WorkerNotFound, got {err:?}")
    };
    assert_eq!(searched.len(), 1);
    assert!(err.to_string().contains("/nonexistent/bulkhead-worker"));
}

#[test]
fn per_call_timeout_default_comes_from_spec() {
    let sup = supervisor();
    let plugin = sup
        .load(spec("fx-basic").call_timeout(Duration::from_millis(300)))
        .unwrap();
    let err = plugin.call::<_, u64>(basic::SLEEP_MS, &(60_000u64,)).unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { limit, .. } if limit == Duration::from_millis(300)),
        "{err:?}"
    );
    let _ = PluginSpec::new("unused");
}

#[test]
fn raw_calls_into_a_reused_buffer() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let mut out = vec![9u8; 3];
    for len in [10usize, 100_000, 5] {
        let data: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
        plugin.call_raw_into(basic::ECHO_RAW, &data, &mut out).unwrap();
        assert_eq!(out, data);
    }
    assert!(out.capacity() >= 100_000, "the buffer is reused, not replaced");
    let err = plugin.call_raw_into(basic::GREET, b"x", &mut out).unwrap_err();
    assert!(
        matches!(err, CallError::Serialization { index: basic::GREET }),
        "{err:?}"
    );
}

#[test]
fn payloads_larger_than_the_shared_region_travel_over_the_socket() {
    // With a 4 KiB region, big requests and answers are announced in the region
    // and carried as socket frames (under the socket transport, everything is).
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic").shm_capacity(4096)).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(plugin.call_raw(basic::ECHO_RAW, &big).unwrap(), big);
    let back: Vec<u8> = plugin.call(basic::ECHO, &(big.clone(),)).unwrap();
    assert_eq!(back, big);
    assert_eq!(plugin.call_raw(basic::ECHO_RAW, b"small").unwrap(), b"small");
    let err = plugin
        .call::<_, String>(basic::FAIL, &("X".repeat(10_000),))
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Plugin(e) if e.code.len() == 10_000),
        "{err:?}"
    );

    let arena = sup
        .load(spec("fx-arena").shm_capacity(4096).arena_capacity(1024))
        .unwrap();
    let v: Vec<u8> = arena.call(blob::REPEAT, &(3u8, 50_000u64)).unwrap();
    assert_eq!(v, vec![3u8; 50_000]);
    let v: Vec<u8> = arena.call(blob::REPEAT, &(4u8, 100u64)).unwrap();
    assert_eq!(v, vec![4u8; 100]);
}
