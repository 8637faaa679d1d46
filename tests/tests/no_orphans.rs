//! Dropping the supervisor leaves no child process and no zombie. (Its own test
//! binary, so no other test's workers are children of this process.)

use std::time::Duration;

use bulkhead_host::Exit;
use bulkhead_tests::{basic, my_children, spec, supervisor};

#[test]
fn drop_and_shutdown_leave_no_children() {
    let sup = supervisor();
    let events = sup.events();
    let a = sup.load(spec("fx-basic").workers(3)).unwrap();
    let b = sup.load(spec("fx-arena")).unwrap();
    // Crash one worker and time one out, so reaped-and-replaced workers are in the mix.
    assert!(a.call::<_, u32>(basic::SEGFAULT, &()).is_err());
    assert!(a
        .call_with_timeout::<_, u64>(basic::SPIN, &(), Duration::from_millis(200))
        .is_err());
    let x: i64 = a.call(basic::ADD, &(1i64, 1i64)).unwrap();
    assert_eq!(x, 2);
    // Both dead workers are replaced in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut restarted = 0;
    while restarted < 2 {
        let e = events.recv_deadline(deadline).expect("two restarts");
        restarted += matches!(e.kind, bulkhead_host::EventKind::Restarted { .. }) as u32;
    }
    let live: Vec<u32> = a.worker_pids().into_iter().chain(b.worker_pids()).collect();
    assert_eq!(live.len(), 4);
    let children: Vec<u32> = my_children().into_iter().map(|c| c.0).collect();
    for pid in &live {
        assert!(children.contains(pid), "worker {pid} is our child");
    }
    drop(sup);
    assert_eq!(
        my_children(),
        vec![],
        "no child process and no zombie after dropping the supervisor"
    );
    // Handles outlive the supervisor but are shut down.
    assert!(matches!(
        a.call::<_, i64>(basic::ADD, &(1i64, 1i64)),
        Err(bulkhead_host::CallError::ShutDown)
    ));

    // shutdown() reports how each worker ended: politely, exit code 0.
    let sup = supervisor();
    let p = sup.load(spec("fx-basic").workers(2)).unwrap();
    let pids = p.worker_pids();
    let mut reports = sup.shutdown();
    reports.sort_by_key(|r| r.pid);
    assert_eq!(reports.iter().map(|r| r.pid).collect::<Vec<_>>(), {
        let mut v = pids.clone();
        v.sort();
        v
    });
    for r in &reports {
        assert_eq!((r.exit, r.forced), (Some(Exit::Code(0)), false), "{r:?}");
    }
    assert_eq!(my_children(), vec![]);

    // Dropping the last plugin handle also stops its workers. What is left
    // goes with the supervisor: its fork-server, and the two workers the
    // fork-server keeps pre-forked ("blanks", children of this host, which
    // the host kills and reaps with the server).
    let sup = supervisor();
    let p = sup.load(spec("fx-basic")).unwrap();
    drop(p);
    // The server forks its blanks once it runs, one after the other: wait
    // (under a deadline) until both are this host's children before the
    // count is checked.
    assert!(sup.wait_for_blank(&spec("fx-basic"), std::time::Instant::now() + Duration::from_secs(20)));
    let server = sup.fork_server_pid().expect("a fork-server");
    let roles_now = || -> (Vec<String>, Vec<(u32, char)>) {
        let left = my_children();
        let mut roles: Vec<String> = left
            .iter()
            .map(|c| {
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", c.0)).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
                match () {
                    _ if c.0 == server => "fork-server",
                    _ if cmdline.contains("--fork-server") => "blank",
                    _ => "a worker",
                }
                .to_string()
            })
            .collect();
        roles.sort();
        (roles, left)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (roles, left) = loop {
        let (roles, left) = roles_now();
        if roles.len() >= 3 || std::time::Instant::now() >= deadline {
            break (roles, left);
        }
        std::thread::yield_now();
    };
    assert_eq!(roles, ["blank", "blank", "fork-server"], "{left:?}");
    drop(sup);
    assert_eq!(my_children(), vec![]);

    // A supervisor dropped while its fork-server is still starting (in the
    // background, after the profile's first worker answered) takes it along:
    // the drop waits for the start to settle, then kills and reaps it.
    for round in 0..5 {
        let sup = supervisor();
        let p = sup.load(spec("fx-basic")).unwrap();
        let x: i64 = p.call(basic::ADD, &(round, 1i64)).unwrap();
        assert_eq!(x, round + 1);
        drop(p);
        drop(sup);
        assert_eq!(my_children(), vec![], "round {round}");
    }
}
