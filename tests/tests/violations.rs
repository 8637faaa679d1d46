//! Refused system calls are reported, not only refused: each becomes an
//! [`EventKind::SandboxViolation`] naming the call with its gating arguments
//! and the method in flight, and is counted in `Stats`; learn mode lets them
//! through and lists them; the deny-list (`Sandbox::compat`) is the documented
//! opt-out.

use std::time::{Duration, Instant};

use bulkhead_host::{EventKind, EventReceiver, Plugin, Sandbox, Supervisor};
use bulkhead_tests::{neighbour, spec, supervisor};

const WAIT: Duration = Duration::from_secs(30);

fn neighbour_plugin(sup: &Supervisor, sandbox: Sandbox) -> Plugin {
    sup.load(spec("fx-neighbour").sandbox(sandbox)).unwrap()
}

fn bind_abstract(p: &Plugin, name: &str) -> i64 {
    p.call(neighbour::BIND_ABSTRACT, &(name.to_string(),)).unwrap()
}

/// The next `SandboxViolation` of the supervisor's plugins (each test loads
/// one at a time), as (syscall, call, method, allowed), waiting at most
/// [`WAIT`].
fn next_violation(events: &EventReceiver) -> (String, String, Option<u32>, bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let e = events
            .recv_deadline(deadline)
            .expect("a SandboxViolation event before the deadline");
        if let EventKind::SandboxViolation {
            syscall,
            call,
            method,
            allowed,
            ..
        } = e.kind
        {
            return (syscall, call, method, allowed);
        }
    }
}

#[test]
fn a_refused_call_becomes_an_event_naming_the_call_and_the_method_and_is_counted() {
    let sup = supervisor();
    let events = sup.events();
    let p = neighbour_plugin(&sup, Sandbox::strict());
    assert_eq!(p.stats().sandbox_violations, 0);
    // A Unix socket of its own is not on the default allow-list.
    assert_eq!(bind_abstract(&p, "bulkhead-violation"), -(libc::EPERM as i64));
    let (syscall, call, method, allowed) = next_violation(&events);
    assert_eq!(syscall, "socket");
    assert_eq!(call, "socket(AF_UNIX, SOCK_STREAM, 0)");
    assert_eq!(method, Some(neighbour::BIND_ABSTRACT));
    assert!(!allowed);
    assert_eq!(p.stats().sandbox_violations, 1);
    assert!(p.learned_syscalls().is_empty());
    // The worker carries on: the refusal cost the plugin its socket, not its
    // worker.
    let pid = p.worker_pids();
    assert_eq!(bind_abstract(&p, "bulkhead-violation-2"), -(libc::EPERM as i64));
    next_violation(&events);
    assert_eq!(p.stats().sandbox_violations, 2);
    assert_eq!(p.worker_pids(), pid);
    assert_eq!(p.stats().crashes, 0);
}

#[test]
fn learn_mode_lets_the_calls_through_and_lists_them() {
    let sup = supervisor();
    let events = sup.events();
    let p = neighbour_plugin(&sup, Sandbox::strict().learn());
    // The same call now succeeds...
    assert_eq!(bind_abstract(&p, "bulkhead-learn"), 0);
    // ...and is reported as allowed: socket, then bind.
    let (syscall, call, method, allowed) = next_violation(&events);
    assert_eq!(
        (syscall.as_str(), call.as_str()),
        ("socket", "socket(AF_UNIX, SOCK_STREAM, 0)")
    );
    assert_eq!(method, Some(neighbour::BIND_ABSTRACT));
    assert!(allowed);
    let (syscall, _, _, allowed) = next_violation(&events);
    assert_eq!(syscall, "bind");
    assert!(allowed);
    // listen too: std's UnixListener binds and listens.
    let (syscall, _, _, allowed) = next_violation(&events);
    assert_eq!(syscall, "listen");
    assert!(allowed);
    let learned = p.learned_syscalls();
    assert_eq!(learned, ["bind", "listen", "socket"]);
    // What it learned is a ready addition: with those calls allowed by name,
    // the strict sandbox runs the method without a violation.
    let mut sandbox = Sandbox::strict();
    for name in &learned {
        sandbox = sandbox.allow_syscall(*name);
    }
    let fixed = neighbour_plugin(&sup, sandbox);
    assert_eq!(bind_abstract(&fixed, "bulkhead-learned"), 0);
    assert_eq!(fixed.stats().sandbox_violations, 0);
}

#[test]
fn the_deny_list_is_an_explicit_opt_out_that_lets_unlisted_calls_through() {
    let sup = supervisor();
    let p = neighbour_plugin(&sup, Sandbox::compat());
    assert_eq!(bind_abstract(&p, "bulkhead-compat"), 0);
    assert_eq!(p.stats().sandbox_violations, 0);
}

#[test]
fn a_call_the_sandbox_forbids_in_every_mode_cannot_be_allowed_by_name() {
    let sup = supervisor();
    for (name, why) in [("ptrace", "forbids"), ("no_such_call", "not a system call")] {
        let err = sup
            .load(spec("fx-neighbour").sandbox(Sandbox::strict().allow_syscall(name)))
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        let text = err.to_string();
        assert!(text.contains(name) && text.contains(why), "{text}");
    }
}

#[test]
fn a_non_root_host_sees_the_same_reports() {
    if !bulkhead_tests::is_root() {
        eprintln!("skipped: needs root to start a child host under an unused uid");
        return;
    }
    bulkhead_tests::rerun_as_non_root(
        61_043,
        &[
            "a_refused_call_becomes_an_event_naming_the_call_and_the_method_and_is_counted",
            "learn_mode_lets_the_calls_through_and_lists_them",
            "the_deny_list_is_an_explicit_opt_out_that_lets_unlisted_calls_through",
        ],
    );
}
