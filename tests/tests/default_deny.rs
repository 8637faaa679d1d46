//! Issue 16's attacks on the default sandbox (the seccomp allow-list, a
//! network namespace per worker, the file-lock gate), one test each, through
//! `fx-neighbour` plugins of one supervisor — two side by side where the
//! attack is a channel between plugins. Each runs under `Sandbox::none()`,
//! where it works (or, where this kernel lacks the feature, gets the kernel's
//! own answer, which the host checks by making the same call itself), and
//! under the default, where it is refused with an exact errno. The moves and
//! their expected outcomes live in `bulkhead_tests::deny`, shared with the
//! `deny_host` child host, which runs all of them as a non-root host.
//!
//! Never more than a socket's creation for AF_VSOCK: it reaches the
//! hypervisor.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulkhead_host::Supervisor;
use bulkhead_tests::deny::{control_note, expected, Attacker, Mode, ATTACKS};
use bulkhead_tests::{fixtures, spec, wait_gone};

const GENEROUS: Duration = Duration::from_secs(120);

/// Attacks whose two outcomes are equal by design: they show that a grant
/// is real (the control of another attack), not a refusal.
const GRANTS: &[&str] = &["tcp-granted-port", "file-locks-opt-in"];

/// A supervisor with or without fork-servers: a forked worker inherits the
/// filter's base from its server and attaches the rest itself, an exec'd
/// worker attaches all of it; both paths are attacked.
fn supervisor(fork_server: bool) -> Supervisor {
    Supervisor::builder()
        .worker_path(&fixtures().worker)
        .fork_server(fork_server)
        .build()
        .expect("worker binary exists")
}

/// Runs attack `name` under both modes in this (root or not) test process,
/// on both spawn paths, and asserts each outcome.
#[track_caller]
fn attack(name: &str) {
    if let Some(note) = control_note(name) {
        eprintln!("{note}");
    }
    for fork_server in [true, false] {
        let sup = supervisor(fork_server);
        let attacker = Attacker {
            sup: &sup,
            spec: spec("fx-neighbour"),
            tag: fork_server as u32,
        };
        let got = Mode::BOTH.map(|mode| {
            let outcome = attacker.run(name, mode);
            let what = format!("{name} under {}, fork-server {fork_server}", mode.name());
            assert_eq!(outcome, expected(name, mode), "{what}");
            outcome
        });
        eprintln!(
            "{name}, fork-server {fork_server}: none() {:?}, default {:?}",
            got[0], got[1]
        );
        if !GRANTS.contains(&name) {
            assert_ne!(got[0], got[1], "{name}: the control differs from the default");
        }
    }
}

#[test]
fn vsock_sockets_are_refused_at_creation() {
    attack("vsock-socket");
}

#[test]
fn mptcp_is_refused_under_a_tcp_grant_and_plain_tcp_keeps_the_grant() {
    attack("mptcp-other-port");
    attack("tcp-granted-port");
    attack("tcp-other-port");
}

#[test]
fn netlink_usersock_carries_nothing_between_two_plugins() {
    attack("netlink-usersock-channel");
}

#[test]
fn a_udp_port_one_plugin_binds_is_not_seen_by_another() {
    attack("udp-squat-channel");
}

#[test]
fn byte_range_locks_carry_nothing_between_two_profiles() {
    attack("ofd-lock-channel");
    attack("flock");
    // The gate is the cause: the opt-in locks again.
    attack("file-locks-opt-in");
}

#[test]
fn inotify_on_a_shared_file_is_refused() {
    attack("inotify-shared-file");
}

#[test]
fn fanotify_and_memfd_secret_are_refused() {
    attack("fanotify-init");
    attack("memfd-secret");
}

#[test]
fn netlink_families_are_refused() {
    for name in ["netlink-audit", "netlink-uevent", "netlink-route", "netlink-usersock"] {
        attack(name);
    }
}

#[test]
fn udp_is_refused_by_the_default_policy() {
    attack("udp-socket");
}

#[test]
fn x32_system_call_numbers_are_refused_by_the_filter() {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("x32: x86_64 only; skipped");
        return;
    }
    attack("x32-getpid");
}

#[test]
fn a_read_grant_on_a_directory_gives_no_connect_to_a_socket_in_it() {
    attack("unix-connect-read-grant");
}

#[test]
fn a_tcp_grant_gives_no_abstract_name_host_clients_could_reach() {
    attack("abstract-bind-tcp-grant");
}

/// KNOWN GAP, asserted as it stands (not a way through the default): under a
/// TCP grant only seccomp's socket gate keeps host clients from an abstract
/// name the plugin binds. Landlock's abstract-socket scope restricts the
/// sandbox's own `connect` to names outside its domain, not connections
/// *into* a name it bound, so with `socket`, `bind` and `listen` added by
/// name a host client reaches the plugin's listener. If this assertion
/// starts failing, a second layer now covers it: flip it.
#[test]
fn known_gap_landlock_scope_alone_lets_host_clients_reach_an_abstract_name() {
    use std::os::linux::net::SocketAddrExt;
    let sup = supervisor(true);
    let sandbox = bulkhead_host::Sandbox::strict()
        .allow_connect_tcp(9)
        .allow_syscall("socket")
        .allow_syscall("bind")
        .allow_syscall("listen");
    let p = sup.load(spec("fx-neighbour").sandbox(sandbox)).unwrap();
    assert!(p.info().sandbox.state(bulkhead_host::Layer::Landlock).is_enforced());
    let name = format!("bulkhead-deny-gap-{}", std::process::id());
    let bound: i64 = p
        .call(bulkhead_tests::neighbour::BIND_ABSTRACT, &(name.clone(),))
        .unwrap();
    assert_eq!(bound, 0, "with the calls added by name the plugin binds");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let connected = std::os::unix::net::UnixStream::connect_addr(&addr);
    assert!(
        connected.is_ok(),
        "Landlock's scope does not refuse the host: {connected:?}"
    );
}

#[test]
fn every_attack_has_a_test() {
    let source = include_str!("default_deny.rs");
    for name in ATTACKS {
        assert!(source.contains(&format!("\"{name}\"")), "{name} has no test here");
    }
}

/// `(name, outcome)` of every `<kind> <name> <outcome>` line.
fn lines<'a>(out: &'a str, kind: &str) -> Vec<(&'a str, &'a str)> {
    out.lines()
        .filter_map(|l| l.strip_prefix(kind)?.strip_prefix(' ')?.split_once(' '))
        .collect()
}

/// Output of one `deny_host` run, as uid/gid `uid`.
fn deny_host(uid: u32, mode: Mode) -> String {
    let fx = fixtures();
    let mut child = Command::new(env!("CARGO_BIN_EXE_deny_host"))
        .arg(&fx.worker)
        .arg(fx.lib("fx-neighbour"))
        .arg(mode.name())
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start deny_host");
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    wait_gone(child.id(), GENEROUS);
    let status = child.wait().unwrap();
    assert!(status.success(), "deny_host {}: {status:?}\n{out}", mode.name());
    out
}

#[test]
fn every_attack_fails_from_a_non_root_host_too() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("every_attack_fails_from_a_non_root_host_too: needs root to start a child host under an unused uid; skipped");
        return;
    }
    let runs = [(61_030, Mode::None), (61_031, Mode::Default)].map(|(uid, mode)| deny_host(uid, mode));
    let mut outcomes = Vec::new();
    for (run, mode) in runs.iter().zip(Mode::BOTH) {
        let got = lines(run, "attack");
        let want = lines(run, "expected");
        assert_eq!(got.len(), ATTACKS.len(), "{}: {run}", mode.name());
        for ((name, outcome), (wname, wanted)) in got.iter().zip(&want) {
            assert_eq!(name, wname);
            assert_eq!(outcome, wanted, "{name} under {} as a non-root host", mode.name());
        }
        // The refusals do not depend on the host's uid.
        if mode == Mode::Default {
            for (name, wanted) in &want {
                assert_eq!(*wanted, expected(name, mode), "{name}");
            }
        }
        eprintln!("non-root host, {}:\n{run}", mode.name());
        outcomes.push(got);
    }
    for ((name, none), (_, default)) in outcomes[0].iter().zip(&outcomes[1]) {
        if !GRANTS.contains(name) {
            assert_ne!(none, default, "{name}: the non-root control differs from the default");
        }
    }
}
