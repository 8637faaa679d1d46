//! Streams relayed through the worker: server, client and bidirectional
//! streams of real fidius 0.5.9 plugins, cancellation, crashes and hangs mid-stream.

use std::time::Duration;

use bulkhead_host::{CallError, Exit, Plugin, PluginStream};
use bulkhead_tests::{spec, supervisor};
use fx_iface::__fidius_Streams as S;

fn load(sup: &bulkhead_host::Supervisor, timeout: Duration) -> Plugin {
    sup.load(
        spec("fx-stream")
            .plugin("StreamPlugin")
            .call_timeout(timeout)
            .streaming_methods([0, 1, 2, 5, 6]),
    )
    .unwrap()
}

#[test]
fn ten_thousand_items_arrive_in_order() {
    let sup = supervisor();
    let p = load(&sup, Duration::from_secs(30));
    let s: PluginStream<u64> = p.stream(S::METHOD_COUNT, &(10_000u64,)).unwrap();
    let got: Vec<u64> = s.map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), 10_000);
    assert!(
        got.iter().enumerate().all(|(i, &v)| v == i as u64),
        "items out of order"
    );
    // The worker went back to the pool: calls work, and the producer was dropped once.
    assert_eq!(p.call::<_, u64>(S::METHOD_DROPS, &()).unwrap(), 1);
}

#[test]
fn items_larger_than_the_buffer_grow_it() {
    let sup = supervisor();
    let p = load(&sup, Duration::from_secs(30));
    let s: PluginStream<Vec<u8>> = p.stream(S::METHOD_BLOBS, &(3u64, 100_000u64)).unwrap();
    let got: Vec<Vec<u8>> = s.map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), 3);
    for (i, item) in got.iter().enumerate() {
        assert_eq!(item.len(), 100_000);
        assert!(item.iter().all(|&b| b == i as u8));
    }
}

#[test]
fn dropping_the_stream_cancels_it_exactly_once() {
    let sup = supervisor();
    let p = load(&sup, Duration::from_secs(30));
    let pid: u32 = p.call(S::METHOD_PID, &()).unwrap();
    let mut s: PluginStream<u64> = p.stream(S::METHOD_COUNT, &(1_000_000u64,)).unwrap();
    let first: Vec<u64> = (&mut s).take(3).map(|r| r.unwrap()).collect();
    assert_eq!(first, [0, 1, 2]);
    assert_eq!(s.items(), 3);
    drop(s);
    // Same worker, producer dropped once: by the drop, not by the end of the items.
    assert_eq!(p.call::<_, u32>(S::METHOD_PID, &()).unwrap(), pid);
    assert_eq!(p.call::<_, u64>(S::METHOD_DROPS, &()).unwrap(), 1);
    // A stream drained to its end is dropped once too.
    let s: PluginStream<u64> = p.stream(S::METHOD_COUNT, &(2u64,)).unwrap();
    assert_eq!(s.count(), 2);
    assert_eq!(p.call::<_, u64>(S::METHOD_DROPS, &()).unwrap(), 2);
}

#[test]
fn a_crash_mid_stream_ends_it_with_worker_died_and_the_worker_is_replaced() {
    let sup = supervisor();
    let p = load(&sup, Duration::from_secs(30));
    let _: u32 = p.call(S::METHOD_PID, &()).unwrap();
    let pid = p.worker_pids()[0];
    let s: PluginStream<u64> = p.stream(S::METHOD_CRASH_AT, &(5u64,)).unwrap();
    let all: Vec<Result<u64, CallError>> = s.collect();
    assert_eq!(all.len(), 6, "{all:?}");
    let items: Vec<u64> = all[..5].iter().map(|r| *r.as_ref().unwrap()).collect();
    assert_eq!(items, [0, 1, 2, 3, 4]);
    assert!(
        matches!(
            &all[5],
            Err(CallError::WorkerDied {
                exit: Exit::Signal { signal: 6, .. },
                ..
            })
        ),
        "{:?}",
        all[5]
    );
    // The crash report names the stream's method (its arguments went with
    // the open, so no input is recorded for an item).
    let Err(CallError::WorkerDied { crash: Some(r), .. }) = &all[5] else {
        panic!("no crash report: {:?}", all[5])
    };
    assert_eq!(
        (r.signal, r.method, r.input_len),
        (6, Some(S::METHOD_CRASH_AT as u32), 0)
    );
    let _: u32 = p.call(S::METHOD_PID, &()).unwrap();
    assert_ne!(p.worker_pids(), vec![pid], "the worker was replaced");
    assert_eq!(p.stats().crashes, 1);
}

#[test]
fn a_hang_mid_stream_hits_the_item_deadline() {
    let sup = supervisor();
    let limit = Duration::from_millis(500);
    let p = load(&sup, limit);
    let _: u32 = p.call(S::METHOD_PID, &()).unwrap();
    let pid = p.worker_pids()[0];
    let mut s: PluginStream<u64> = p.stream(S::METHOD_HANG_AT, &(2u64,)).unwrap();
    assert_eq!(s.next().unwrap().unwrap(), 0);
    assert_eq!(s.next().unwrap().unwrap(), 1);
    match s.next() {
        Some(Err(CallError::Timeout { elapsed, limit: l })) => {
            assert_eq!(l, limit);
            assert!(elapsed >= limit, "{elapsed:?}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(s.next().is_none(), "the stream ended");
    drop(s);
    let _: u32 = p.call(S::METHOD_PID, &()).unwrap();
    assert_ne!(p.worker_pids(), vec![pid], "the worker was replaced");
}

#[test]
fn the_whole_stream_deadline_applies_too() {
    let sup = supervisor();
    let total = Duration::from_millis(300);
    let p = sup
        .load(
            spec("fx-stream")
                .plugin("StreamPlugin")
                .call_timeout(Duration::from_secs(30))
                .stream_timeout(total),
        )
        .unwrap();
    let s: PluginStream<u64> = p.stream(S::METHOD_HANG_AT, &(1u64,)).unwrap();
    let all: Vec<_> = s.collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(matches!(all[0], Ok(0)));
    assert!(
        matches!(all[1], Err(CallError::Timeout { limit, .. }) if limit == total),
        "{:?}",
        all[1]
    );
}

#[test]
fn client_streams_round_trip() {
    let sup = supervisor();
    let p = load(&sup, Duration::from_secs(30));
    let total: u64 = p.call_client_stream(S::METHOD_SUM, 1..=1000u64, &(7u64,)).unwrap();
    assert_eq!(total, 7 + 500_500);
    let empty: u64 = p
        .call_client_stream(S::METHOD_SUM, Vec::<u64>::new(), &(3u64,))
        .unwrap();
    assert_eq!(empty, 3);
}

#[test]
fn bidirectional_streams_round_trip() {
    let sup = supervisor();
    let p = load(&sup, Duration::from_secs(30));
    let s: PluginStream<u64> = p.bidi_stream(S::METHOD_DOUBLE, 0..500u64, &()).unwrap();
    let got: Vec<u64> = s.map(|r| r.unwrap()).collect();
    assert_eq!(got, (0..500u64).map(|i| i * 2).collect::<Vec<_>>());
    // Dropping a bidirectional stream early (its input is endless) gives the worker back.
    let mut s: PluginStream<u64> = p.bidi_stream(S::METHOD_DOUBLE, 0..u64::MAX, &()).unwrap();
    assert_eq!(s.next().unwrap().unwrap(), 0);
    drop(s);
    let r = p.call::<_, u32>(S::METHOD_PID, &());
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn streams_hold_one_worker_each_and_others_keep_serving() {
    let sup = supervisor();
    let p = sup.load(spec("fx-stream").plugin("StreamPlugin").workers(2)).unwrap();
    let mut a: PluginStream<u64> = p.stream(S::METHOD_COUNT, &(10u64,)).unwrap();
    let mut b: PluginStream<u64> = p.stream(S::METHOD_COUNT, &(10u64,)).unwrap();
    assert_eq!(a.next().unwrap().unwrap(), 0);
    assert_eq!(b.next().unwrap().unwrap(), 0);
    // Both workers are leased: a call waits for one and gives up at its deadline.
    let e = p
        .call_with_timeout::<_, u32>(S::METHOD_PID, &(), Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(e, CallError::Busy { .. }), "{e:?}");
    drop(a);
    assert!(p.call::<_, u32>(S::METHOD_PID, &()).is_ok());
    assert_eq!(b.next().unwrap().unwrap(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn async_streams_pull_on_the_blocking_pool_and_cancel_on_drop() {
    use futures_core::Stream as _;
    use std::future::poll_fn;
    use std::pin::Pin;

    let sup = supervisor();
    let p = sup.load_async(spec("fx-stream").plugin("StreamPlugin")).await.unwrap();
    let mut s = p.stream_async::<_, u64>(S::METHOD_COUNT, &(1000u64,)).await.unwrap();
    let mut got = Vec::new();
    while let Some(item) = poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await {
        got.push(item.unwrap());
    }
    assert_eq!(got, (0..1000).collect::<Vec<u64>>());
    assert_eq!(p.call_async::<_, u64>(S::METHOD_DROPS, &()).await.unwrap(), 1);

    // Dropped after two items (read with the inherent `next`): the plugin's
    // producer is dropped (on the blocking pool).
    let mut s = p.stream_async::<_, u64>(S::METHOD_COUNT, &(u64::MAX,)).await.unwrap();
    for want in 0..2u64 {
        let item = s.next().await.unwrap().unwrap();
        assert_eq!(item, want);
    }
    drop(s);
    // The worker is back in the pool once the close finished; the call waits for it.
    assert_eq!(p.call_async::<_, u64>(S::METHOD_DROPS, &()).await.unwrap(), 2);
}

/// The async forms of client and bidirectional streams: the same answers
/// as their blocking forms, and the worker serves plain calls afterwards.
#[tokio::test(flavor = "current_thread")]
async fn async_client_and_bidirectional_streams_round_trip() {
    let sup = supervisor();
    let p = sup.load_async(spec("fx-stream").plugin("StreamPlugin")).await.unwrap();
    let total: u64 = p
        .call_client_stream_async(S::METHOD_SUM, 1..=1000u64, &(7u64,))
        .await
        .unwrap();
    assert_eq!(total, 500_500 + 7);
    let mut s = p
        .bidi_stream_async::<_, _, u64>(S::METHOD_DOUBLE, 0..300u64, &())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(item) = s.next().await {
        got.push(item.unwrap());
    }
    assert_eq!(got, (0..300u64).map(|i| i * 2).collect::<Vec<_>>());
    assert_eq!(p.call_async::<_, u64>(S::METHOD_EXTRA, &(41u64,)).await.unwrap(), 42);
}

#[test]
fn streams_on_plugins_that_cannot_stream_are_contract_errors() {
    let sup = supervisor();
    // An Arena plugin has no stream slots (fidius requires PluginAllocated).
    let p = sup.load(spec("fx-arena")).unwrap();
    let e = p.stream::<_, u64>(0u32, &(1u8, 1u64)).unwrap_err();
    assert!(
        matches!(&e, CallError::Contract(bulkhead_host::CallFault::StreamState { what }) if what.contains("PluginAllocated")),
        "{e:?}"
    );
    let e = p.stream::<_, u64>(99u32, &()).unwrap_err();
    assert!(matches!(e, CallError::InvalidMethodIndex { index: 99, .. }), "{e:?}");
    // The worker is fine.
    let sum: i64 = p.call(1u32, &(40i64, 2i64)).unwrap();
    assert_eq!(sum, 42);
}
