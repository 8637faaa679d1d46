//! A host that is PID 1 of its own pid namespace (a container without an
//! init, simulated with `unshare -pf --mount-proc`; needs root, as CI runs):
//! after many failed loads and timeouts, no process bulkhead caused is left a
//! zombie, and the application's own child is left for the application to
//! reap. The same for a host that is a child subreaper (no root needed).
//! (Before bulkhead adopted orphaned helpers, the same run left one
//! zombie per dead worker: 31 for 50 failed loads and 30 timeouts.)

use std::process::Command;

use bulkhead_tests::fixtures;

#[test]
fn a_pid1_host_is_left_no_zombies_and_keeps_its_own_children() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: creating a pid namespace needs root (CI runs as root)");
        return;
    }
    let fx = fixtures();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_pid1_host"))
        .arg(&fx.worker)
        .arg(fx.lib("fx-dlopen-crash"))
        .arg(fx.lib("fx-basic"))
        .args(["50", "30"])
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "pid 1\n\
         bulkhead zombies 0\n\
         app child state Some('Z')\n\
         app child reaped by the app: Some(7)\n"
    );
}

#[test]
fn a_subreaper_host_is_left_no_zombies_and_keeps_its_own_children() {
    let fx = fixtures();
    let out = Command::new(env!("CARGO_BIN_EXE_pid1_host"))
        .arg(&fx.worker)
        .arg(fx.lib("fx-dlopen-crash"))
        .arg(fx.lib("fx-basic"))
        .args(["50", "30", "subreaper"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "bulkhead zombies 0",
            "app child state Some('Z')",
            "app child reaped by the app: Some(7)"
        ]
    );
}
