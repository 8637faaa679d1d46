//! A host meant to run as PID 1 of its own pid namespace (a container without
//! an init): it starts a child of its own (the application's, which bulkhead
//! must leave alone), makes many loads fail and many calls time out, and
//! reports how many of its children are left unreaped.
//!
//! Usage: `pid1_host <worker> <fx-dlopen-crash.so> <fx-basic.so> <failed-loads> <timeouts> [subreaper]`
//! (`subreaper`: instead of being PID 1, the host makes itself a child
//! subreaper first, `PR_SET_CHILD_SUBREAPER`).
//! Prints `pid <n>`, `bulkhead zombies <n>` (children that are zombies and
//! not the application's, once the count stops falling or after a deadline)
//! and `app child reaped by the app: <exit code>`.

use std::time::{Duration, Instant};

use bulkhead_host::{Backoff, CallError, PluginSpec, RestartPolicy, Supervisor};
use bulkhead_tests::{basic, my_children};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [worker, crash, basic_lib, loads, timeouts, rest @ ..] = &args[..] else {
        panic!("usage: pid1_host <worker> <crash.so> <basic.so> <loads> <timeouts> [subreaper]");
    };
    if rest.first().map(String::as_str) == Some("subreaper") {
        nix::sys::prctl::set_child_subreaper(true).unwrap();
    }
    println!("pid {}", std::process::id());
    // The application's own child: exits at once and stays a zombie until the
    // application (not bulkhead) waits for it.
    let mut app_child = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .unwrap();
    let app_pid = app_child.id();

    let sup = Supervisor::builder().worker_path(worker).build().expect("worker");
    for _ in 0..loads.parse::<u32>().unwrap() {
        assert!(sup.load(PluginSpec::new(crash)).is_err(), "a crashing load fails");
    }
    let plugin = sup
        .load(
            PluginSpec::new(basic_lib)
                .call_timeout(Duration::from_millis(50))
                .restart(RestartPolicy::always().backoff(Backoff::none())),
        )
        .expect("fx-basic loads");
    for _ in 0..timeouts.parse::<u32>().unwrap() {
        let r = plugin.call::<_, ()>(basic::SLEEP_MS, &(10_000u64,));
        assert!(matches!(r, Err(CallError::Timeout { .. })), "{r:?}");
    }
    drop(plugin);
    drop(sup);

    // Wait for bulkhead's own zombies to go (its reaping is asynchronous), under a deadline.
    let zombies = || {
        my_children()
            .into_iter()
            .filter(|&(p, s)| s == 'Z' && p != app_pid)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left = zombies();
    while left > 0 && Instant::now() < deadline {
        // Polls the condition itself (the reaping happens on bulkhead's threads).
        std::thread::sleep(Duration::from_millis(20));
        left = zombies();
    }
    println!("bulkhead zombies {left}");
    for (p, st) in my_children() {
        if st == 'Z' && p != app_pid {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            eprintln!("zombie {p}: {stat}");
        }
    }
    let app_state = my_children().into_iter().find(|&(p, _)| p == app_pid).map(|(_, s)| s);
    println!("app child state {app_state:?}");
    let status = app_child.wait().unwrap();
    println!("app child reaped by the app: {:?}", status.code());
}
