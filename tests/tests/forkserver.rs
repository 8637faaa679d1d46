//! The fork-server: workers are forked (no exec) by one server per sandbox
//! profile, stay the host's own children, keep their isolation, and survive
//! the server's death; a dead server is replaced.

use std::time::{Duration, Instant};

use bulkhead_host::{CallError, Sandbox, Supervisor};
use bulkhead_tests::{basic, fixtures, my_children, spec, supervisor};

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// Whether `pid` was forked from `server` with no exec: its argument area
/// (which a worker's title overwrites, but never resizes) is the server's.
fn forked_by(server: u32, pid: u32) -> bool {
    let area = |p: u32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|a| a.len())
            .unwrap_or(0)
    };
    area(pid) == area(server) && area(pid) > 0
}

/// When `pid` started (field 22 of `/proc/PID/stat`), to tell a process
/// from a later one that got its pid (pids are reused quickly where
/// `pid_max` is small and other tests start processes meanwhile).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // Fields from the state (field 3) on: the start time is field 22.
    rest.split(' ').nth(19)?.parse().ok()
}

fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The field after the parenthesised command name, then the state.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn workers_are_forked_by_the_servers_not_execd() {
    let sup = supervisor();
    // The profile's first worker is exec'd, alone; the server starts once it
    // answered.
    let first = sup.load(spec("fx-basic")).unwrap();
    assert!(sup.wait_for_blank(&spec("fx-basic"), Instant::now() + Duration::from_secs(20)));
    let server = sup.fork_server_pid().expect("a fork-server for the default profile");
    let first_pid = first.info().worker_pid;
    assert!(!forked_by(server, first_pid), "{}", cmdline(first_pid));
    assert!(!cmdline(first_pid).contains("--fork-server"), "{}", cmdline(first_pid));
    let x: i64 = first.call(basic::ADD, &(1i64, 3i64)).unwrap();
    assert_eq!(x, 4);
    // Every worker after it is forked.
    let p = sup.load(spec("fx-basic").workers(2)).unwrap();
    assert_eq!(p.worker_pids().len(), 2);
    assert!(cmdline(server).contains("--fork-server"), "{}", cmdline(server));
    for pid in p.worker_pids() {
        // A forked worker has its server's argument area (no exec
        // happened), with the server's command line or the worker's title.
        let c = cmdline(pid);
        assert!(forked_by(server, pid), "worker {pid}: {c}");
        assert!(
            c.contains("--fork-server") || c.starts_with("bulkhead: "),
            "worker {pid}: {c}"
        );
        // ... and it is the host's child (CLONE_PARENT), not the server's.
        assert_eq!(parent_of(pid), std::process::id(), "worker {pid}'s parent");
    }
    let x: i64 = p.call(basic::ADD, &(2i64, 3i64)).unwrap();
    assert_eq!(x, 5);

    // Off: every worker is exec'd.
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .fork_server(false)
        .build()
        .unwrap();
    let p = sup.load(spec("fx-basic")).unwrap();
    assert_eq!(sup.fork_server_pid(), None);
    let pid = p.info().worker_pid;
    assert!(!cmdline(pid).contains("--fork-server"), "{}", cmdline(pid));
    assert!(!forked_by(server, pid), "{}", cmdline(pid));
    let x: i64 = p.call(basic::ADD, &(2i64, 3i64)).unwrap();
    assert_eq!(x, 5);
}

#[test]
fn one_server_per_profile_and_each_profile_keeps_its_sandbox() {
    let sup = supervisor();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Servers running first, so both loads are forked.
    assert!(sup.wait_for_blank(&spec("fx-basic"), deadline));
    assert!(sup.wait_for_blank(&spec("fx-basic").sandbox(Sandbox::none()), deadline));
    let strict = sup.load(spec("fx-basic")).unwrap();
    let none = sup.load(spec("fx-basic").sandbox(Sandbox::none())).unwrap();
    let a = sup.fork_server_pid_for(&Sandbox::strict()).unwrap();
    let b = sup.fork_server_pid_for(&Sandbox::none()).unwrap();
    assert!(
        forked_by(a, strict.info().worker_pid),
        "{}",
        cmdline(strict.info().worker_pid)
    );
    assert!(
        forked_by(b, none.info().worker_pid),
        "{}",
        cmdline(none.info().worker_pid)
    );
    assert_ne!(a, b, "two profiles, two servers");
    // Forked from the unsandboxed server, the plugin sees its host pid; from
    // the sandboxed one, pid 2 in its own namespace.
    let pid: u32 = none.call(basic::PID, &()).unwrap();
    assert_eq!(pid, none.info().worker_pid);
    let pid: u32 = strict.call(basic::PID, &()).unwrap();
    assert_eq!(pid, 2);
    assert!(
        strict.info().sandbox.degraded().count() == 0,
        "{:?}",
        strict.info().sandbox
    );
    // Same profile, same server.
    let again = sup.load(spec("fx-arena")).unwrap();
    assert!(
        forked_by(a, again.info().worker_pid),
        "{}",
        cmdline(again.info().worker_pid)
    );
    assert_eq!(sup.fork_server_pid_for(&Sandbox::strict()), Some(a));
}

#[test]
fn a_dead_server_is_replaced_and_its_workers_live_on() {
    let sup = supervisor();
    let events = sup.events();
    let p = sup.load(spec("fx-basic")).unwrap();
    let bystander = sup.load(spec("fx-basic")).unwrap();
    let bystander_pid = bystander.info().worker_pid;
    let server = sup.fork_server_pid().unwrap();
    let server_started = start_time(server).expect("the server's start time");
    // The server is this host's child (the supervisor started it).
    assert!(my_children().iter().any(|c| c.0 == server));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Its workers are the host's children, not its own: they keep running.
    let x: i64 = bystander.call(basic::ADD, &(1i64, 1i64)).unwrap();
    assert_eq!(x, 2);
    assert_eq!(bystander.info().worker_pid, bystander_pid);

    // A crash now needs a new worker: the dead server is noticed, the worker
    // is started another way, and the answer is right.
    assert!(p.call::<_, u32>(basic::SEGFAULT, &()).is_err());
    let x: i64 = p.call(basic::ADD, &(2i64, 2i64)).unwrap();
    assert_eq!(x, 4);
    // The spawn that found the server dead reaped it (no zombie) before the
    // replacement worker answered; the next spawn starts a new server.
    assert!(
        !my_children()
            .iter()
            .any(|c| c.0 == server && start_time(server) == Some(server_started)),
        "the dead server was reaped"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh = loop {
        assert!(p.call::<_, u32>(basic::SEGFAULT, &()).is_err());
        let x: i64 = p.call(basic::ADD, &(3i64, 3i64)).unwrap();
        assert_eq!(x, 6);
        if let Some(s) = sup.fork_server_pid().filter(|&s| s != server) {
            break s;
        }
        assert!(Instant::now() < deadline, "no new fork-server");
        let _ = events.try_iter().count();
    };
    assert!(cmdline(fresh).contains("--fork-server"));
    assert!(forked_by(fresh, p.info().worker_pid) || p.worker_pids().len() == 1);
    let x: i64 = bystander.call(basic::ADD, &(1i64, 1i64)).unwrap();
    assert_eq!(x, 2);
}

#[test]
fn a_pre_forked_blank_takes_the_next_load_with_the_whole_sandbox() {
    let sup = supervisor();
    for round in 0..3 {
        assert!(
            sup.wait_for_blank(&spec("fx-basic"), Instant::now() + Duration::from_secs(20)),
            "round {round}: a blank is ready"
        );
        let p = sup.load(spec("fx-basic")).unwrap();
        assert_eq!(p.info().sandbox.degraded().count(), 0, "{:?}", p.info().sandbox);
        let pid: u32 = p.call(basic::PID, &()).unwrap();
        assert_eq!(pid, 2, "its own pid namespace");
        let x: i64 = p.call(basic::ADD, &(round, 1i64)).unwrap();
        assert_eq!(x, round + 1);
        // A crash, and the replacement (a blank or a fresh fork) answers.
        assert!(p.call::<_, u32>(basic::SEGFAULT, &()).is_err());
        let x: i64 = p.call(basic::ADD, &(round, 2i64)).unwrap();
        assert_eq!(x, round + 2);
    }
}

/// A blank installs the worker's crash handlers and reads its argument area
/// before its assignment (off the restart path): the worker it becomes still
/// reports a crash in full and shows its title.
#[test]
fn a_worker_made_from_a_blank_reports_its_crash_and_shows_its_title() {
    let sup = supervisor();
    for sandbox in [Sandbox::default(), Sandbox::none()] {
        let spec = || spec("fx-basic").sandbox(sandbox.clone());
        assert!(sup.wait_for_blank(&spec(), Instant::now() + Duration::from_secs(20)));
        let server = sup.fork_server_pid_for(&sandbox).expect("a server");
        let p = sup.load(spec()).unwrap();
        let pid = p.info().worker_pid;
        assert!(forked_by(server, pid), "{sandbox:?}: the blank took the load");
        // The process that runs the plugin sets its title before it answers
        // the load (its sandbox helpers take it on later, through a pipe).
        let title = cmdline(bulkhead_tests::plugin_process(pid));
        assert!(title.starts_with("bulkhead: "), "{sandbox:?}: {title:?}");
        let err = p.call_raw(basic::CRASH_WRITE, b"boom").unwrap_err();
        let CallError::WorkerDied { crash, .. } = err else {
            panic!("{sandbox:?}: expected WorkerDied, got {err:?}")
        };
        let r = crash.expect("a crash report");
        assert_eq!(
            (r.signal, r.method, r.input.as_slice()),
            (11, Some(basic::CRASH_WRITE), &b"boom"[..])
        );
        assert!(
            r.frames.first().is_some_and(|f| f.contains(" fx_basic_write_at+0x")),
            "{sandbox:?}: {:?}",
            r.frames
        );
    }
}
