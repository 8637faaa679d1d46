//! A pre-forked worker (a *blank*) that dies while it waits is found dead
//! when its turn comes, reaped, and the load is served anyway. (Its own test
//! binary, so that the host's only children are this supervisor's.)

use std::time::{Duration, Instant};

use bulkhead_tests::{basic, my_children, spec, supervisor, wait_gone};

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

#[test]
fn a_blank_that_dies_waiting_is_reaped_and_the_load_still_works() {
    let sup = supervisor();
    let spec = || spec("fx-basic");
    assert!(sup.wait_for_blank(&spec(), Instant::now() + Duration::from_secs(20)));
    let server = sup.fork_server_pid().unwrap();
    // The blank: the host's other child running the worker binary as a server
    // copy (forked, never exec'd), besides the server.
    let blanks: Vec<u32> = my_children()
        .into_iter()
        .map(|c| c.0)
        .filter(|&pid| pid != server && cmdline(pid).contains("--fork-server"))
        .collect();
    assert_eq!(blanks.len(), 1, "one blank waits: {blanks:?}");
    let blank = blanks[0];
    // It is this host's child, started through this supervisor: kill it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(blank as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Dead (a zombie the host has not reaped) before the next load.
    wait_gone(blank, Duration::from_secs(20));
    let p = sup.load(spec()).unwrap();
    assert_ne!(p.info().worker_pid, blank);
    let x: i64 = p.call(basic::ADD, &(20i64, 22i64)).unwrap();
    assert_eq!(x, 42);
    // The dead blank was found dead when its turn came, and reaped then.
    assert!(!my_children().iter().any(|c| c.0 == blank), "the dead blank was reaped");
}
