//! A host for the containment tests whose attacks aim at what a non-root host
//! shares with its workers (their uid, so the kernel's per-user counts). Run
//! by the test as a child under an unused uid. Loads fx-hog, runs one hog,
//! then checks that the host can still do what the hog would take from it.
//! Prints `result <n>` (the hog's return value), then one `host ...` line.
//!
//! Usage: `hog_host <worker> <fx-hog.so> <fx-basic.so> <fds|inotify> <default|control>`.
//! - `fds`: the host starts with a soft `RLIMIT_NOFILE` of 1024 and a hard one
//!   of [`HOST_NOFILE`] (printed as `host nofile <soft>` after `build()`); the
//!   hog parks descriptors in flight; then the host loads fx-basic (its load
//!   sends descriptors, `SCM_RIGHTS`). The control gives the hog's worker the
//!   host's hard open-files limit.
//! - `inotify`: the hog takes inotify instances; then the host creates one.
//!   The control runs the hog without the sandbox.

use bulkhead_host::{Limits, PluginSpec, Sandbox, Supervisor};
use bulkhead_tests::{basic, hog};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The host's hard open-files limit in the `fds` attack.
const HOST_NOFILE: u64 = 4096;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [worker, hog_lib, basic_lib, attack, mode] = &args[..] else {
        panic!("usage: hog_host <worker> <fx-hog.so> <fx-basic.so> <fds|inotify> <default|control>");
    };
    let control = match mode.as_str() {
        "default" => false,
        "control" => true,
        other => panic!("mode {other}"),
    };
    if attack == "fds" {
        setrlimit(Resource::RLIMIT_NOFILE, 1024, HOST_NOFILE).expect("lower RLIMIT_NOFILE");
    }
    let sup = Supervisor::builder().worker_path(worker).build().expect("worker");
    if attack == "fds" {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        println!("host nofile {soft}");
    }
    let mut spec = PluginSpec::new(hog_lib);
    match (attack.as_str(), control) {
        ("fds", true) => spec = spec.limits(Limits::new().open_files(HOST_NOFILE)),
        ("inotify", true) => spec = spec.sandbox(Sandbox::none()),
        _ => {}
    }
    let plugin = sup.load(spec).expect("fx-hog loads");
    match attack.as_str() {
        "fds" => {
            let parked: i64 = plugin
                .call(hog::FDS_IN_FLIGHT, &(3 * HOST_NOFILE as u32,))
                .expect("hog call");
            println!("result {parked}");
            match sup.load(PluginSpec::new(basic_lib)) {
                Ok(p) => {
                    let sum: i64 = p.call(basic::ADD, &(2i64, 3i64)).expect("call after load");
                    println!("host load ok {sum}");
                }
                Err(e) => println!("host load error {e}"),
            }
        }
        "inotify" => {
            let took: i64 = plugin.call(hog::INOTIFY_INSTANCES, &(1000u32,)).expect("hog call");
            println!("result {took}");
            // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
            if fd >= 0 {
                println!("host inotify ok");
            } else {
                println!(
                    "host inotify error {}",
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
                );
            }
        }
        other => panic!("attack {other}"),
    }
}
