//! Errors say which method and what did not match: argument types the plugin
//! cannot decode, return types the host cannot decode, a plain call of a
//! streaming slot (whose stream the worker drops), an absurd spec, a failed
//! plugin's time.

use std::time::{Duration, SystemTime};

use bulkhead_host::{CallError, LoadError, RestartPolicy};
use bulkhead_tests::{basic, spec, supervisor};
use fx_iface::__fidius_Streams as S;

#[test]
fn wrongly_typed_arguments_name_the_method() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic")).unwrap();
    // `greet(name: String)` called with a u64: the plugin cannot decode it.
    let e = p.call::<_, String>(basic::GREET, &(3u64,)).unwrap_err();
    assert!(matches!(e, CallError::Serialization { index: basic::GREET }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "method 0: the arguments did not decode as the method's parameter types \
         (the plugin answered SERIALIZATION_ERROR; check the argument tuple's types and order)"
    );
    assert_eq!(e.kind(), "serialization");
    // The same through the raw path.
    let e = p.call_raw(basic::GREET, b"abc").unwrap_err();
    assert!(matches!(e, CallError::Serialization { index: basic::GREET }), "{e:?}");
    // The worker is fine.
    assert_eq!(p.call::<_, String>(basic::GREET, &("x",)).unwrap(), "Hello, x!");
}

#[test]
fn a_wrong_return_type_names_the_method_the_type_and_what_went_wrong() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic")).unwrap();
    // `add` returns one i64 (8 bytes); three u64 need 24.
    let e = p.call::<_, (u64, u64, u64)>(basic::ADD, &(1i64, 2i64)).unwrap_err();
    let CallError::ReturnType {
        index,
        expected,
        len,
        reason,
    } = &e
    else {
        panic!("expected ReturnType, got {e:?}")
    };
    assert_eq!((*index, *expected, *len), (basic::ADD, "(u64, u64, u64)", 8));
    assert_eq!(reason, "the output ends before a value of that type is complete");
    assert_eq!(
        e.to_string(),
        "method 1: its 8-byte output does not decode as `(u64, u64, u64)`: \
         the output ends before a value of that type is complete"
    );
    // A value that is there but is not of the type: "Hello, x!" as a bool
    // (the string's length prefix, 9, is no bool).
    let e = p.call::<_, bool>(basic::GREET, &("x",)).unwrap_err();
    assert!(
        matches!(&e, CallError::ReturnType { index: basic::GREET, expected: "bool", len: 17, reason }
            if reason == "invalid u8 while decoding bool, expected 0 or 1, found 9"),
        "{e:?}"
    );
    assert_eq!(e.kind(), "return_type");
    // The async path says the same.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(p.call_async::<_, (u64, u64, u64)>(basic::ADD, &(1i64, 2i64)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            CallError::ReturnType {
                index: basic::ADD,
                len: 8,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_plain_call_of_an_undeclared_streaming_slot_is_refused_and_its_stream_dropped() {
    let sup = supervisor();
    let p = sup.load(spec("fx-stream").plugin("StreamPlugin")).unwrap();
    let pid = p.info().worker_pid;
    let drops_before: u64 = p.call(S::METHOD_DROPS, &()).unwrap();
    let rounds = 200u64;
    for _ in 0..rounds {
        let e = p.call_raw(S::METHOD_COUNT, &count_args(5)).unwrap_err();
        assert!(
            matches!(e, CallError::Unsupported { index, what }
                if index as usize == S::METHOD_COUNT && what == "a streaming method: call it with Plugin::stream (or stream_async)"),
            "{e:?}"
        );
    }
    let e = p.call::<_, u64>(S::METHOD_COUNT, &(5u64,)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "method 0 is unsupported: a streaming method: call it with Plugin::stream (or stream_async)"
    );
    // Every stream the plain calls opened was dropped by the worker (the
    // plugin counts its producers' drops), and the same worker serves on.
    let drops: u64 = p.call(S::METHOD_DROPS, &()).unwrap();
    assert_eq!(drops - drops_before, rounds + 1);
    assert_eq!(p.worker_pids(), [pid]);
    let items: Vec<u64> = p
        .stream::<_, u64>(S::METHOD_COUNT, &(3u64,))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(items, [0, 1, 2]);
}

#[test]
fn an_empty_output_is_not_mistaken_for_a_stream() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic")).unwrap();
    // A `#[wire(raw)]` echo of nothing: a zero-length output buffer.
    for _ in 0..3 {
        assert_eq!(p.call_raw(basic::ECHO_RAW, b"").unwrap(), Vec::<u8>::new());
    }
}

/// `(n,)` as bincode: the argument tuple of `count(n: u64)`.
fn count_args(n: u64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

#[test]
fn zero_workers_is_a_load_error() {
    let sup = supervisor();
    let e = sup.load(spec("fx-basic").workers(0)).unwrap_err();
    assert!(
        matches!(&e, LoadError::InvalidSpec { setting: "workers", reason } if reason == "a plugin needs at least one worker (got 0)"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "invalid plugin spec: workers: a plugin needs at least one worker (got 0)"
    );
}

#[test]
fn a_failed_plugin_says_when_in_utc() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic").restart(RestartPolicy::never())).unwrap();
    let before = SystemTime::now();
    assert!(matches!(
        p.call::<_, u32>(basic::ABORT, &()),
        Err(CallError::WorkerDied { .. })
    ));
    let e = p.call::<_, i64>(basic::ADD, &(1i64, 1i64)).unwrap_err();
    let CallError::Failed { since, .. } = &e else {
        panic!("expected Failed, got {e:?}")
    };
    assert!(*since >= before - Duration::from_secs(1));
    let text = e.to_string();
    // "plugin failed at 2026-12-05T13:57:01.123Z after 0 restarts: ..."
    let at = text
        .strip_prefix("plugin failed at ")
        .and_then(|rest| rest.split_once(' '))
        .map(|(at, _)| at)
        .unwrap_or_else(|| panic!("{text}"));
    let b = at.as_bytes();
    assert_eq!(at.len(), 24, "{text}");
    assert!(
        at.ends_with('Z') && b[4] == b'-' && b[10] == b'T' && b[19] == b'.',
        "{text}"
    );
    assert!(!text.contains("SystemTime"), "{text}");
    assert!(text.contains(" after 0 restarts: "), "{text}");
}
