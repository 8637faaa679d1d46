//! The `tokio` feature: async load and call on both runtime flavours, events as
//! a stream, cancellation (dropping a call future), timeouts inside async code,
//! and shutdown that does not block a runtime thread.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use bulkhead_host::{CallError, EventKind, Stream, Supervisor};
use bulkhead_tests::{alive, basic, fixtures, spec, supervisor, wait_gone};
use futures_core::Stream as _;

const GENEROUS: Duration = Duration::from_secs(60);

async fn many_tasks() {
    let sup = supervisor();
    let mut stream = sup.event_stream();
    let plugin = sup.load_async(spec("fx-basic").workers(2)).await.unwrap();
    // Both workers' start events arrive on the stream (polled as a Stream).
    let mut started = Vec::new();
    while started.len() < 2 {
        let ev = tokio::time::timeout(GENEROUS, poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)))
            .await
            .expect("event in time")
            .expect("stream open");
        if let EventKind::WorkerStarted { pid } = ev.kind {
            started.push(pid);
        }
    }
    started.sort();
    let mut pids = plugin.worker_pids();
    pids.sort();
    assert_eq!(started, pids);

    let mut tasks = Vec::new();
    for i in 0..64i64 {
        let p = plugin.clone();
        tasks.push(tokio::spawn(async move {
            let sum: i64 = p.call_async(basic::ADD, &(i, 1000i64)).await.unwrap();
            let raw = p.call_raw_async(basic::ECHO_RAW, vec![i as u8; 3]).await.unwrap();
            (i, sum, raw)
        }));
    }
    for t in tasks {
        let (i, sum, raw) = t.await.unwrap();
        assert_eq!(sum, i + 1000);
        assert_eq!(raw, vec![i as u8; 3]);
    }
    assert_eq!(plugin.stats().calls, 128);
    assert_eq!(plugin.stats().ok, 128);
    let reports = sup.shutdown_async().await;
    assert_eq!(reports.len(), 2, "{reports:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn many_tasks_on_a_current_thread_runtime() {
    many_tasks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_on_a_multi_thread_runtime() {
    many_tasks().await;
}

/// Dropping a call future mid-call: the call runs to its end in the
/// background, the worker is kept (not killed, not restarted) and serves the
/// next call.
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_call_future_keeps_the_worker() {
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .on_output(move |l| {
            if l.stream == Stream::Stdout {
                let _ = tx.send(l.line.to_string());
            }
        })
        .build()
        .unwrap();
    let plugin = sup.load_async(spec("fx-basic")).await.unwrap();
    let pid = plugin.info().worker_pid;
    let call = plugin.call_async::<_, u64>(basic::ANNOUNCE_THEN_SLEEP, &("in-call".to_string(), 700u64));
    let task = tokio::spawn(call);
    // The plugin is running the call.
    let line = tokio::time::timeout(GENEROUS, lines.recv()).await.unwrap().unwrap();
    assert_eq!(line, "in-call");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(alive(pid));
    // The next call waits for the abandoned one to finish, then runs on the same
    // worker (the plugin sees its pid inside the worker's pid namespace: 2).
    let got: u32 = plugin.call_async(basic::PID, &()).await.unwrap();
    assert_eq!(got, 2);
    let stats = plugin.stats();
    assert_eq!((stats.calls, stats.ok, stats.restarts), (2, 2, 0), "{stats:?}");
    assert_eq!(plugin.worker_pids(), vec![pid]);
}

/// Timeouts inside async code: an outer `tokio::time::timeout` bounds the
/// wait only; the call's own timeout kills the stuck worker.
#[tokio::test(flavor = "current_thread")]
async fn timeouts_inside_async_code() {
    let sup = supervisor();
    let plugin = sup.load_async(spec("fx-basic")).await.unwrap();
    let pid = plugin.info().worker_pid;

    let waited = tokio::time::timeout(
        Duration::from_millis(100),
        plugin.call_async::<_, u64>(basic::SLEEP_MS, &(600u64,)),
    )
    .await;
    assert!(waited.is_err(), "the outer timeout fires first");

    // The abandoned call still occupies the worker until it ends; this call's
    // deadline covers that wait too, so give it room for both.
    let limit = Duration::from_secs(2);
    let err = plugin
        .call_async_with_timeout::<_, u64>(basic::SPIN, &(), limit)
        .await
        .unwrap_err();
    match err {
        CallError::Timeout { limit: got, elapsed } => {
            assert_eq!(got, limit);
            assert!(elapsed >= limit);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    wait_gone(pid, GENEROUS);
    let sum: i64 = plugin.call_async(basic::ADD, &(2i64, 3i64)).await.unwrap();
    assert_eq!(sum, 5);
    assert_ne!(plugin.info().worker_pid, pid);
}

/// Dropping the supervisor inside a runtime hands the shutdown (which waits up
/// to the grace period for a busy worker) to the blocking pool: the drop
/// returns while the worker is still busy, and the worker is stopped later.
#[tokio::test(flavor = "current_thread")]
async fn dropping_the_supervisor_does_not_block_the_runtime() {
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .shutdown_grace(Duration::from_secs(20))
        .on_output(move |l| {
            if l.stream == Stream::Stdout {
                let _ = tx.send(l.line.to_string());
            }
        })
        .build()
        .unwrap();
    let plugin = sup.load_async(spec("fx-basic")).await.unwrap();
    let pid = plugin.info().worker_pid;
    let busy = tokio::spawn(plugin.call_async::<_, u64>(basic::ANNOUNCE_THEN_SLEEP, &("in-call".to_string(), 3000u64)));
    // The plugin is running the call (counting it is not enough: a call
    // counted but not yet at its worker is refused by the shutdown).
    let line = tokio::time::timeout(GENEROUS, lines.recv()).await.unwrap().unwrap();
    assert_eq!(line, "in-call");
    drop(plugin);
    drop(sup);
    // A synchronous shutdown would have waited for the busy worker to finish.
    assert!(alive(pid), "drop returned only after the worker was stopped");
    assert!(!busy.is_finished());
    // The abandoned call still completes, then the worker is stopped.
    assert_eq!(busy.await.unwrap().unwrap(), 3000);
    tokio::task::spawn_blocking(move || wait_gone(pid, GENEROUS))
        .await
        .unwrap();
}

/// An async call waits as a task, not on a thread: 300 concurrent calls on
/// one worker, a crash, a call that calls back into the host and a client
/// stream, on a current-thread runtime, start no thread (tokio's blocking
/// pool stays empty). The counter does see the blocking pool: an async load uses it.
#[test]
fn async_calls_wait_as_tasks_without_threads() {
    use std::sync::atomic::Ordering;
    let (rt, started) = counting_runtime();
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    use fx_host_iface::__fidius_UsesHost as U;
    use fx_host_iface::__fidius_host_Host as H;
    let lookup = bulkhead_host::HostInterface::new(
        "Host",
        H::Host_HOST_INTERFACE_HASH,
        H::Host_HOST_INTERFACE_VERSION,
        H::Host_HOST_FN_COUNT,
    )
    .function(H::HOST_FN_LOOKUP, |(key,): (String,)| format!("value-of-{key}"));
    let host_user = sup.load(spec("fx-host").host_interface(lookup)).unwrap();
    let streams = sup.load(spec("fx-stream").plugin("StreamPlugin")).unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..300i64)
            .map(|i| tokio::spawn(plugin.call_async::<_, i64>(basic::ADD, &(i, 1i64))))
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i as i64 + 1);
        }
        let s: String = host_user.call_async(U::METHOD_ASK, &("k".to_string(),)).await.unwrap();
        assert_eq!(s, "got value-of-k");
        // A client stream's pulls are answered on the task too.
        let total: u64 = streams
            .call_client_stream_async(fx_iface::__fidius_Streams::METHOD_SUM, 1..=100u64, &(0u64,))
            .await
            .unwrap();
        assert_eq!(total, 5050);
        let e = plugin.call_async::<_, u32>(basic::SEGFAULT, &()).await.unwrap_err();
        assert!(matches!(e, CallError::WorkerDied { .. }), "{e:?}");
    });
    let stats = plugin.stats();
    assert_eq!((stats.calls, stats.ok, stats.crashes), (301, 300, 1), "{stats:?}");
    match bulkhead_tests::transport() {
        bulkhead_host::Transport::SharedMemory => assert_eq!(started.load(Ordering::SeqCst), 0),
        // Over the socket a call's wait is a blocking read: the blocking pool.
        _ => assert!(started.load(Ordering::SeqCst) > 0),
    }
    // The same count on a fresh runtime sees its blocking pool start.
    let (rt, control) = counting_runtime();
    let again = rt.block_on(sup.load_async(spec("fx-basic"))).unwrap();
    assert!(control.load(Ordering::SeqCst) > 0, "the count sees the blocking pool");
    drop(again);
}

/// A current-thread runtime and the number of threads it has started (its
/// blocking pool's).
fn counting_runtime() -> (tokio::runtime::Runtime, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = started.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .on_thread_start(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .build()
        .unwrap();
    (rt, started)
}
