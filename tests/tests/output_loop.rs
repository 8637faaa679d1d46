//! The user's output callback runs on the process-wide output loop; a callback
//! that blocks must not hold up the reaping of other workers (which has a loop
//! of its own), and one that panics must not end the loop. Their own binary:
//! while a callback blocks, no worker's output in this process is drained.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_host::{CallError, Exit, Supervisor};
use bulkhead_tests::{basic, fixtures, spec};

const GENEROUS: Duration = Duration::from_secs(60);

/// The tests of this binary take turns: one of them blocks the output loop
/// they all share.
static TURNS: Mutex<()> = Mutex::new(());

#[test]
fn a_blocked_output_callback_does_not_delay_crash_detection() {
    let _turn = TURNS.lock().unwrap_or_else(|e| e.into_inner());
    let (entered_tx, entered_rx) = crossbeam_channel::bounded::<()>(1);
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded::<String>();
    let blocked = AtomicBool::new(false);
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .on_output(move |line| {
            if line.line == "line 1 of output" && !blocked.swap(true, Ordering::Relaxed) {
                let _ = entered_tx.try_send(());
                // Bounded, so a failing test cannot hang the process.
                let _ = release_rx.recv_timeout(GENEROUS);
            }
            let _ = seen_tx.send(line.line.to_string());
        })
        .build()
        .unwrap();
    let printer = sup.load(spec("fx-basic")).unwrap();
    let victim = sup.load(spec("fx-basic")).unwrap();

    // "line 1 of output\n": the callback now blocks the output loop.
    let printed: u64 = printer.call(basic::PRINT, &(17u64, false)).unwrap();
    assert_eq!(printed, 17);
    entered_rx.recv_timeout(GENEROUS).expect("the callback ran");

    // A crash meanwhile is still reaped and reported with its exit (on shared
    // memory only the reaper's verdict ends the call).
    match victim.call::<_, u32>(basic::ABORT, &()).unwrap_err() {
        CallError::WorkerDied {
            exit: Exit::Signal { signal: 6, .. },
            ..
        } => {}
        other => panic!("expected WorkerDied by SIGABRT, got {other:?}"),
    }
    // And its replacement serves (its pipes wait for the loop; it prints nothing).
    let sum: i64 = victim.call(basic::ADD, &(2i64, 3i64)).unwrap();
    assert_eq!(sum, 5);

    // Released, the loop forwards what waited.
    release_tx.send(()).unwrap();
    let _: u64 = printer.call(basic::PRINT, &(34u64, false)).unwrap();
    let mut lines = Vec::new();
    while lines.len() < 3 {
        lines.push(seen_rx.recv_timeout(GENEROUS).expect("lines forwarded"));
    }
    assert_eq!(lines, ["line 1 of output", "line 1 of output", "line 2 of output"]);
}

#[test]
fn a_panicking_output_callback_costs_only_its_line() {
    let _turn = TURNS.lock().unwrap_or_else(|e| e.into_inner());
    let (seen_tx, seen_rx) = crossbeam_channel::unbounded::<String>();
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .on_output(move |line| {
            if line.line == "line 1 of output" {
                panic!("a bug in the application's callback");
            }
            if line.line.starts_with("line ") {
                let _ = seen_tx.send(line.line.to_string());
            }
        })
        .build()
        .unwrap();
    let printer = sup.load(spec("fx-basic")).unwrap();
    for _ in 0..2 {
        // "line 1 of output\nline 2 of output\n": the first line panics.
        let printed: u64 = printer.call(basic::PRINT, &(34u64, false)).unwrap();
        assert_eq!(printed, 34);
        assert_eq!(seen_rx.recv_timeout(GENEROUS).unwrap(), "line 2 of output");
    }
    // The stderr tail is kept by the same loop: still there at a crash.
    let _: u64 = printer.call(basic::PRINT, &(34u64, true)).unwrap();
    match printer.call::<_, u32>(basic::ABORT, &()).unwrap_err() {
        CallError::WorkerDied { stderr, .. } => {
            assert_eq!(stderr, "line 1 of output\nline 2 of output\n")
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}
