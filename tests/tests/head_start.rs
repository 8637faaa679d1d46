//! Head starts: when a call finds its worker gone, a fork-server blank that
//! is ready starts loading the replacement at once — but only if the restart
//! policy will restart now. (Its own test binary, so that the host's only
//! children are this supervisor's.)

use std::time::{Duration, Instant};

use bulkhead_host::{Backoff, CallError, RestartPolicy};
use bulkhead_tests::{basic, my_children, spec, supervisor};

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// The tests count this host's children: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The blanks waiting: the host's children running as server copies, besides the server.
fn blanks(server: u32) -> Vec<u32> {
    let mut v: Vec<u32> = my_children()
        .into_iter()
        .map(|c| c.0)
        .filter(|&pid| pid != server && cmdline(pid).contains("--fork-server"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_crash_the_policy_does_not_restart_takes_no_blank() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sup = supervisor();
    let p = sup.load(spec("fx-basic").restart(RestartPolicy::never())).unwrap();
    assert!(sup.wait_for_blank(&spec("fx-basic"), Instant::now() + Duration::from_secs(20)));
    let server = sup.fork_server_pid().unwrap();
    let before = blanks(server);
    assert_eq!(before.len(), 2, "two blanks wait: {before:?}");
    let e = p.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    assert!(matches!(e, CallError::WorkerDied { .. }), "{e:?}");
    // Not restarted: the plugin is failed, and both blanks still wait,
    // unassigned (a head start would have taken one at the crash).
    let e = p.call::<_, i64>(basic::ADD, &(1i64, 2i64)).unwrap_err();
    assert!(matches!(e, CallError::Failed { .. }), "{e:?}");
    assert_eq!(blanks(server), before);
    assert!(p.worker_pids().is_empty(), "{:?}", p.worker_pids());
}

#[test]
fn a_crash_restarted_at_once_is_served_by_a_waiting_blank() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sup = supervisor();
    let policy = RestartPolicy::on_failure(10, Duration::from_secs(60)).backoff(Backoff::none());
    let p = sup.load(spec("fx-basic").restart(policy)).unwrap();
    assert!(sup.wait_for_blank(&spec("fx-basic"), Instant::now() + Duration::from_secs(20)));
    let server = sup.fork_server_pid().unwrap();
    let before = blanks(server);
    let old = p.worker_pids();
    let e = p.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    assert!(matches!(e, CallError::WorkerDied { .. }), "{e:?}");
    let x: i64 = p.call(basic::ADD, &(20i64, 22i64)).unwrap();
    assert_eq!(x, 42);
    let now = p.worker_pids();
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(!old.contains(&now[0]));
    assert!(
        before.contains(&now[0]),
        "worker {} was one of the blanks {before:?}",
        now[0]
    );
}
