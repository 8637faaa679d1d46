//! Checked, typed calls: fidius' `METHOD_*` constants as they are, the
//! interface-hash check at load, the typed client, optional methods.

use bulkhead::{CallError, LoadError, LoadFailure, PluginStream};
use bulkhead_tests::{spec, supervisor};
use fx_iface::{__fidius_Greeter, __fidius_Streams};

bulkhead::client! {
    /// Typed access to `Streams` plugins.
    pub struct StreamsClient for fx_iface::__fidius_Streams (hash = Streams_INTERFACE_HASH) {
        /// Producers dropped so far.
        fn drops() -> u64 = METHOD_DROPS;
        fn pid() -> u32 = METHOD_PID;
        optional(Streams_CAP_EXTRA) fn extra(x: u64) -> u64 = METHOD_EXTRA;
        stream fn count(n: u64) -> u64 = METHOD_COUNT;
    }
}

bulkhead::client! {
    /// Lists no stream method, but names the interface's descriptor.
    pub struct StreamsByDescriptor for fx_iface::__fidius_Streams (hash = Streams_INTERFACE_HASH, descriptor = Streams_WASM_DESCRIPTOR) {
        fn pid() -> u32 = METHOD_PID;
    }
}

bulkhead::client! {
    /// The greeter, whose hash differs from `Streams`'.
    pub struct GreeterClient for fx_iface::__fidius_Greeter (hash = Greeter_INTERFACE_HASH) {
        fn greet(name: String) -> String = METHOD_GREET;
        fn name() -> String = METHOD_NAME;
    }
}

#[test]
fn generated_usize_constants_need_no_cast() {
    let sup = supervisor();
    let p = sup.load(spec("fx-greeter").plugin("HelloGreeter")).unwrap();
    let s: String = p.call(__fidius_Greeter::METHOD_GREET, &("typed".to_string(),)).unwrap();
    assert_eq!(s, "Hello, typed!");
    let n: String = p.call(__fidius_Greeter::METHOD_NAME, &()).unwrap();
    assert_eq!(n, "hello");
    // A literal and a u32 still work; an absurd usize is an invalid index.
    let n: String = p.call(1, &()).unwrap();
    assert_eq!(n, "hello");
    let e = p.call::<_, String>(usize::MAX, &()).unwrap_err();
    assert!(
        matches!(
            e,
            CallError::InvalidMethodIndex {
                index: u32::MAX,
                count: 2
            }
        ),
        "{e:?}"
    );
}

#[test]
fn interface_hash_mismatch_is_a_load_error_naming_both() {
    let sup = supervisor();
    let want = __fidius_Streams::Streams_INTERFACE_HASH;
    let have = __fidius_Greeter::Greeter_INTERFACE_HASH;
    assert_ne!(want, have);
    let e = sup
        .load(spec("fx-greeter").plugin("HelloGreeter").interface(want))
        .unwrap_err();
    match &e {
        LoadError::Rejected {
            reason:
                LoadFailure::InterfaceMismatch {
                    expected,
                    found,
                    plugin,
                },
            ..
        } => {
            assert_eq!((*expected, *found, plugin.as_str()), (want, have, "HelloGreeter"));
        }
        other => panic!("expected InterfaceMismatch, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains(&format!("{want:#018x}")) && text.contains(&format!("{have:#018x}")),
        "{text}"
    );
    // The right hash loads.
    let ok = sup
        .load(spec("fx-greeter").plugin("HelloGreeter").interface(have))
        .unwrap();
    assert_eq!(ok.info().interface_hash, have);
}

#[test]
fn typed_client_calls_by_name_and_checks_the_interface() {
    let sup = supervisor();
    let g = GreeterClient::load(&sup, spec("fx-greeter").plugin("ShoutGreeter")).unwrap();
    assert_eq!(g.greet("bob".into()).unwrap(), "HELLO, BOB!");
    assert_eq!(g.name().unwrap(), "shout");

    // A Streams client refuses the greeter, at load and when wrapping a handle.
    let e = StreamsClient::load(&sup, spec("fx-greeter").plugin("HelloGreeter")).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Rejected {
                reason: LoadFailure::InterfaceMismatch { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = StreamsClient::new(g.plugin().clone()).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Rejected {
                reason: LoadFailure::InterfaceMismatch { .. },
                ..
            }
        ),
        "{e:?}"
    );

    let s = StreamsClient::load(&sup, spec("fx-stream").plugin("StreamPlugin")).unwrap();
    let items: PluginStream<u64> = s.count(4).unwrap();
    let got: Vec<u64> = items.map(Result::unwrap).collect();
    assert_eq!(got, [0, 1, 2, 3]);
    assert!(s.pid().unwrap() > 0);
    // The client declared `count` a stream: the plain call path refuses it.
    let e = s
        .plugin()
        .call::<_, u64>(__fidius_Streams::METHOD_COUNT, &(1u64,))
        .unwrap_err();
    assert!(matches!(e, CallError::Unsupported { index: 0, .. }), "{e:?}");
}

#[test]
fn streaming_slots_come_from_the_interface_descriptor() {
    let sup = supervisor();
    let c = StreamsByDescriptor::load(&sup, spec("fx-stream").plugin("StreamPlugin")).unwrap();
    assert!(c.pid().unwrap() > 0);
    for slot in [
        __fidius_Streams::METHOD_COUNT,
        __fidius_Streams::METHOD_CRASH_AT,
        __fidius_Streams::METHOD_HANG_AT,
        __fidius_Streams::METHOD_DOUBLE,
        __fidius_Streams::METHOD_BLOBS,
    ] {
        let e = c.plugin().call::<_, u64>(slot, &(1u64,)).unwrap_err();
        assert!(matches!(e, CallError::Unsupported { .. }), "slot {slot}: {e:?}");
    }
    // Not streaming: a plain call goes through.
    assert!(c.plugin().call::<_, u64>(__fidius_Streams::METHOD_DROPS, &()).is_ok());
}

#[test]
fn optional_methods_expose_capabilities_and_fail_typed_without_a_round_trip() {
    let sup = supervisor();
    let cap = __fidius_Streams::Streams_CAP_EXTRA;
    let new = StreamsClient::load(&sup, spec("fx-stream").plugin("StreamPlugin")).unwrap();
    assert!(new.plugin().info().has_capabilities(cap));
    // fidius' `has_capability(bit)`: `extra` is the first optional method, bit 0.
    assert_eq!(cap, 1 << 0);
    assert!(new.plugin().info().has_capability(0));
    assert!(!new.plugin().info().has_capability(1));
    assert!(!new.plugin().info().has_capability(64));
    assert!(!new.plugin().info().has_capabilities(0));
    assert_eq!(new.extra(41).unwrap(), 42);

    // Built against version 1: same interface hash, no `extra`.
    let old = StreamsClient::load(&sup, spec("fx-stream").plugin("OldStreamPlugin")).unwrap();
    let info = old.plugin().info();
    assert!(!info.has_capabilities(cap));
    assert!(!info.has_capability(0));
    assert_eq!(info.capabilities, 0);
    assert_eq!(info.method_count, 8);
    let calls_before = old.plugin().stats().calls;
    let e = old.extra(1).unwrap_err();
    assert!(
        matches!(e, CallError::NotImplemented { index: 8, capability, capabilities: 0 } if capability == cap),
        "{e:?}"
    );
    assert_eq!(old.plugin().stats().calls, calls_before, "no request was made");
    // The rest of the old plugin works.
    assert_eq!(old.drops().unwrap(), old.drops().unwrap());
}
