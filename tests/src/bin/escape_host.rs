//! A host for the escape tests whose attacks aim at the host itself (killing
//! it, its process group, writing its memory, tracing it, reading its
//! environment, writing its working directory, leaving a process behind it).
//! Run as a child of the test, so a successful attack costs this process, not
//! the test. Prints `result <n>` (the attack's return value), then `alive` if
//! it survived, plus attack-specific lines.
//!
//! Usage: `escape_host <worker> <fx-hostile.so> <strict|none> <attack> [arg]`.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use bulkhead_host::{CallError, PluginSpec, Sandbox, Supervisor};
use bulkhead_tests::hostile;

/// What the write-mem attack tries to overwrite.
static SECRET: AtomicU64 = AtomicU64::new(0x1111_1111);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [worker, lib, sandbox, attack, rest @ ..] = &args[..] else {
        panic!("usage: escape_host <worker> <lib> <strict|none> <attack> [arg]");
    };
    let sandbox = match sandbox.as_str() {
        "strict" => Sandbox::strict(),
        "none" => Sandbox::none(),
        other => panic!("sandbox {other}"),
    };
    let sup = Supervisor::builder()
        .worker_path(worker)
        .allow_env("BH_SECRET")
        .build()
        .expect("worker");
    let plugin = sup.load(PluginSpec::new(lib).sandbox(sandbox)).expect("plugin loads");
    let me = std::process::id() as i32;
    let out = |line: String| {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    let result: Result<i64, CallError> = match attack.as_str() {
        "kill-host" => plugin.call(hostile::KILL_PID, &(me, libc::SIGKILL)),
        "kill-group" => plugin.call(hostile::KILL_PID, &(-(nix::unistd::getpgrp().as_raw()), libc::SIGKILL)),
        "kill-parent" => plugin.call(hostile::KILL_PARENT, &(libc::SIGKILL,)),
        "write-mem" => {
            let addr = SECRET.as_ptr() as u64;
            plugin.call(hostile::WRITE_MEM, &(me, addr, 0x1337u64.to_ne_bytes().to_vec()))
        }
        "read-mem" => plugin.call(hostile::VM_READ, &(me, SECRET.as_ptr() as u64, 8u64)),
        "ptrace" => plugin.call(hostile::PTRACE_SEIZE, &(me,)),
        "environ" => match plugin.call::<_, Vec<u8>>(hostile::READ_FILE, &(format!("/proc/{me}/environ"),)) {
            Ok(bytes) => {
                let secret = std::env::var("BH_SECRET").unwrap_or_default();
                let leaked = !secret.is_empty() && String::from_utf8_lossy(&bytes).contains(&secret);
                Ok(if leaked { 1 } else { 0 })
            }
            Err(CallError::Plugin(_)) => Ok(-1),
            Err(e) => Err(e),
        },
        "cwd" => plugin.call(hostile::WRITE_FILE, &(rest[0].clone(), b"pwned".to_vec())),
        "escape" => plugin.call(hostile::SETSID_ESCAPE, &(rest[0].clone(),)),
        other => panic!("attack {other}"),
    };
    match result {
        Ok(n) => out(format!("result {n}")),
        Err(e) => out(format!("error {e}")),
    }
    // Still here: prove the host works (a fresh call through the plugin).
    let ppid: i64 = plugin.call(hostile::PPID, &()).expect("the host still serves calls");
    out(format!("secret {:#x}", SECRET.load(Ordering::SeqCst)));
    out(format!("alive {ppid}"));
    if attack == "escape" {
        // Wait to be killed, or for stdin to close.
        let _ = std::io::stdin().read(&mut [0u8; 1]);
    }
}
