//! Pre-forked workers (*blanks*) that die while they wait are found dead
//! when their turn comes, reaped, and the load is served anyway. (Its own test
//! binary, so that the host's only children are this supervisor's.)

use std::time::{Duration, Instant};

use bulkhead_tests::{basic, my_children, spec, supervisor, wait_gone};

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

#[test]
fn blanks_that_die_waiting_are_reaped_and_the_load_still_works() {
    let sup = supervisor();
    let spec = || spec("fx-basic");
    assert!(sup.wait_for_blank(&spec(), Instant::now() + Duration::from_secs(20)));
    let server = sup.fork_server_pid().unwrap();
    // The blanks: the host's other children running the worker binary as a
    // server copy (forked, never exec'd), besides the server. The server
    // keeps two ahead; the second is forked right after the first.
    let blanks = || -> Vec<u32> {
        my_children()
            .into_iter()
            .map(|c| c.0)
            .filter(|&pid| pid != server && cmdline(pid).contains("--fork-server"))
            .collect()
    };
    // (Both announced to the host: `wait_for_blank` waits for every blank.)
    let waiting = blanks();
    assert_eq!(waiting.len(), 2, "two blanks wait: {waiting:?}");
    // They are this host's children, started through this supervisor: kill
    // both, so whichever is assigned first is found dead.
    for &blank in &waiting {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(blank as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    // Dead (zombies the host has not reaped) before the next load.
    for &blank in &waiting {
        wait_gone(blank, Duration::from_secs(20));
    }
    let p = sup.load(spec()).unwrap();
    assert!(!waiting.contains(&p.info().worker_pid));
    let x: i64 = p.call(basic::ADD, &(20i64, 22i64)).unwrap();
    assert_eq!(x, 42);
    // The dead blanks were found dead when their turn came, and reaped then.
    let children = my_children();
    for blank in waiting {
        assert!(!children.iter().any(|c| c.0 == blank), "dead blank {blank} was reaped");
    }
}
