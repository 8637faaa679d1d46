//! Checked, typed calls: fidius' `METHOD_*` constants as they are, the
//! interface-hash check at load, the typed client, optional methods.

use bulkhead_host::{CallError, LoadError, LoadFailure, PluginStream};
use bulkhead_tests::{spec, supervisor};
use fx_iface::{__fidius_Greeter, __fidius_Streams, PluginError};
use std::time::Duration;

bulkhead_host::client! {
    /// Typed access to `Streams` plugins: every method form.
    pub struct StreamsClient for fx_iface::Streams in fx_iface::__fidius_Streams
        (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS, async = StreamsAsync)
    {
        /// Producers dropped so far.
        fn drops() -> u64;
        fn pid() -> u32;
        fn extra(x: u64) -> u64;
        stream fn count(n: u64) -> u64;
        client_stream fn sum(items: u64, bias: u64) -> u64;
        bidi fn double(items: u64) -> u64;
    }
}

bulkhead_host::client! {
    /// Lists no stream method: the descriptor still marks every streaming slot.
    pub struct StreamsByDescriptor for fx_iface::Streams in fx_iface::__fidius_Streams
        (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
    {
        fn pid() -> u32;
    }
}

bulkhead_host::client! {
    /// The greeter, whose hash differs from `Streams`'.
    pub struct GreeterClient for fx_iface::Greeter in fx_iface::__fidius_Greeter
        (descriptor = Greeter_WASM_DESCRIPTOR, optional = Greeter_OPTIONAL_METHODS)
    {
        fn greet(name: String) -> String;
        fn name() -> String;
    }
}

bulkhead_host::client! {
    /// Part of `Basic`, declared out of order (slots come from the names),
    /// with a method returning `Result<_, PluginError>`.
    pub struct BasicClient for fx_iface::Basic in fx_iface::__fidius_Basic
        (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS, async = BasicAsync)
    {
        fn add(a: i64, b: i64) -> i64;
        fn greet(name: String) -> String;
        fn fail(code: String) -> Result<String, PluginError>;
        fn sleep_ms(ms: u64) -> u64;
        fn pid() -> u32;
        raw fn echo_raw(data: Vec<u8>) -> Vec<u8>;
        fn echo(data: Vec<u8>) -> Vec<u8>;
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

#[test]
fn client_slots_come_from_names_and_results_decode_as_fidius_sends_them() {
    let sup = supervisor();
    let c = BasicClient::load(&sup, spec("fx-basic")).unwrap();
    // Declared out of order: each call reaches its own slot.
    assert_eq!(c.greet("typed".into()).unwrap(), "Hello, typed!");
    assert_eq!(c.add(40, 2).unwrap(), 42);
    assert_eq!(c.add(i64::MAX, 1).unwrap(), i64::MIN, "i64 arguments, not i32");
    // The trait's `Result<String, PluginError>`: the error arrives typed.
    match c.fail("E42".into()).unwrap_err() {
        CallError::Plugin(e) => {
            assert_eq!(
                (e.code.as_str(), e.message.as_str(), e.details.as_deref()),
                ("E42", "requested failure", Some("{\"attempt\":1}"))
            );
        }
        other => panic!("expected CallError::Plugin, got {other:?}"),
    }
    assert_eq!(
        BasicClient::INTERFACE_HASH,
        fx_iface::__fidius_Basic::Basic_INTERFACE_HASH
    );
    assert_eq!(c.plugin().pinned_interface(), Some(BasicClient::INTERFACE_HASH));
}

#[test]
fn client_per_call_timeout_overrides_the_plugin_default_for_that_client_only() {
    let sup = supervisor();
    let c = BasicClient::load(&sup, spec("fx-basic")).unwrap();
    assert_eq!(c.plugin().call_timeout(), bulkhead_host::DEFAULT_CALL_TIMEOUT);
    let short = c.with_timeout(Duration::from_millis(300));
    match short.sleep_ms(60_000).unwrap_err() {
        CallError::Timeout { limit, elapsed } => {
            assert_eq!(limit, Duration::from_millis(300));
            assert!(elapsed >= limit && elapsed < Duration::from_secs(20), "{elapsed:?}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    // The original client (and the plugin) keep the default; a call under
    // the short timeout that fits succeeds.
    assert_eq!(c.plugin().call_timeout(), bulkhead_host::DEFAULT_CALL_TIMEOUT);
    assert_eq!(short.sleep_ms(1).unwrap(), 1);
    assert_eq!(c.add(1, 2).unwrap(), 3);
}

#[test]
fn client_and_bidirectional_streams_on_the_client() {
    let sup = supervisor();
    let s = StreamsClient::load(&sup, spec("fx-stream").plugin("StreamPlugin")).unwrap();
    assert_eq!(s.sum([1u64, 2, 3, 4], 100).unwrap(), 110);
    assert_eq!(s.sum(Vec::<u64>::new(), 7).unwrap(), 7);
    let doubled: Vec<u64> = s.double([1u64, 2, 3]).unwrap().map(Result::unwrap).collect();
    assert_eq!(doubled, [2, 4, 6]);
    // The client declared `sum` client-streaming (fidius records that
    // nowhere): the plain call path refuses it instead of passing it a tuple.
    let e = s
        .plugin()
        .call::<_, u64>(__fidius_Streams::METHOD_SUM, &(1u64,))
        .unwrap_err();
    assert!(matches!(e, CallError::Unsupported { index: 4, .. }), "{e:?}");
}

#[test]
fn async_client_answers_like_the_blocking_one() {
    let sup = supervisor();
    let c = BasicClient::load(&sup, spec("fx-basic")).unwrap();
    let old = StreamsClient::load(&sup, spec("fx-stream").plugin("OldStreamPlugin")).unwrap();
    let new = StreamsClient::load(&sup, spec("fx-stream").plugin("StreamPlugin")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a: BasicAsync = c.asynchronous();
        assert_eq!(a.add(2, 3).await.unwrap(), 5);
        assert_eq!(a.greet("async".into()).await.unwrap(), "Hello, async!");
        assert_eq!(a.echo_raw(b"raw".to_vec()).await.unwrap(), b"raw");
        assert!(matches!(a.fail("X".into()).await, Err(CallError::Plugin(e)) if e.code == "X"));
        let e = a
            .with_timeout(Duration::from_millis(300))
            .sleep_ms(60_000)
            .await
            .unwrap_err();
        assert!(
            matches!(e, CallError::Timeout { limit, .. } if limit == Duration::from_millis(300)),
            "{e:?}"
        );
        let loaded = BasicClient::load_async(&sup, spec("fx-basic")).await.unwrap();
        assert_eq!(loaded.plugin().pinned_interface(), Some(BasicClient::INTERFACE_HASH));
        assert_eq!(loaded.asynchronous().add(20, 22).await.unwrap(), 42);
        let n: StreamsAsync = new.asynchronous();
        assert_eq!(n.extra(41).await.unwrap(), 42);
        let mut items = n.count(3).await.unwrap();
        let mut got = Vec::new();
        while let Some(item) =
            std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut items), cx)).await
        {
            got.push(item.unwrap());
        }
        assert_eq!(got, [0, 1, 2]);
        let calls_before = old.plugin().stats().calls;
        let e = old.asynchronous().extra(1).await.unwrap_err();
        assert!(
            matches!(
                e,
                CallError::NotImplemented {
                    index: 8,
                    capabilities: 0,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(old.plugin().stats().calls, calls_before, "no request was made");
    });
}
