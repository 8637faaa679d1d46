//! Seccomp violation reports from a worker's stderr: decoded (they are
//! hostile input like every byte from a worker), counted in [`Stats`](crate::Stats),
//! turned into [`EventKind::SandboxViolation`] events and logged — the log
//! rate-limited per plugin, so that a plugin looping on a refused call cannot
//! flood the host's log.

use std::sync::Arc;

use bulkhead_shared::syscalls;
use bulkhead_shared::violation::Violation;

use crate::events::{EventHub, EventKind};
use crate::stats::Counters;

/// Reports logged in full per plugin before only every [`LOG_EVERY`]th is.
const LOG_FIRST: u64 = 32;
/// After [`LOG_FIRST`], one report in this many is logged (with the count).
const LOG_EVERY: u64 = 1024;

/// Where a worker's violation reports go: called by the output loop with the
/// worker's pid and the decoded report.
pub(crate) type ViolationSink = Arc<dyn Fn(u32, Violation) + Send + Sync>;

/// The sink of one plugin.
pub(crate) fn sink(plugin: Arc<str>, events: Arc<EventHub>, counters: Arc<Counters>) -> ViolationSink {
    Arc::new(move |pid, v| record(&plugin, &events, &counters, pid, v))
}

fn record(plugin: &Arc<str>, events: &EventHub, counters: &Counters, pid: u32, v: Violation) {
    let name = syscalls::name(v.nr);
    let syscall = name.map_or_else(|| format!("nr {}", v.nr), str::to_string);
    let call = describe(&syscall, &v);
    let before = counters.violation(if v.allowed { name } else { None });
    if before < LOG_FIRST || before % LOG_EVERY == 0 {
        let method = v.method.map(i64::from).unwrap_or(-1);
        let count = before + 1;
        if v.allowed {
            tracing::info!(target: "bulkhead::sandbox", %plugin, pid, method, %syscall, count, "{call} allowed by learn mode");
        } else {
            tracing::warn!(target: "bulkhead::sandbox", %plugin, pid, method, %syscall, count, "{call} denied by the sandbox");
        }
    }
    events.emit(
        plugin,
        EventKind::SandboxViolation {
            pid,
            syscall,
            call,
            method: v.method,
            allowed: v.allowed,
        },
    );
}

/// The call with its gating arguments in words where bulkhead filters on
/// them (`socket(AF_VSOCK, SOCK_STREAM, 0)`), else in hex.
fn describe(syscall: &str, v: &Violation) -> String {
    let [a0, a1, a2] = v.args;
    if v.nr & 0x4000_0000 != 0 {
        return format!("x32 system call {:#x}", v.nr);
    }
    match syscall {
        "socket" | "socketpair" => format!("{syscall}({}, {}, {a2})", family(a0), kind(a1)),
        "fcntl" | "ioctl" => format!("{syscall}({a0}, {a1:#x}, ..)"),
        "prctl" | "clone" => format!("{syscall}({a0:#x}, ..)"),
        "kill" | "tgkill" => format!("{syscall}({}, {}, ..)", a0 as i32, a1 as i32),
        _ => format!("{syscall}({a0:#x}, {a1:#x}, {a2:#x}, ..)"),
    }
}

fn family(f: u64) -> String {
    let name = match f as i32 {
        nix::libc::AF_UNIX => "AF_UNIX",
        nix::libc::AF_INET => "AF_INET",
        nix::libc::AF_INET6 => "AF_INET6",
        nix::libc::AF_NETLINK => "AF_NETLINK",
        nix::libc::AF_PACKET => "AF_PACKET",
        nix::libc::AF_VSOCK => "AF_VSOCK",
        nix::libc::AF_BLUETOOTH => "AF_BLUETOOTH",
        nix::libc::AF_ALG => "AF_ALG",
        _ => return format!("family {f}"),
    };
    name.to_string()
}

fn kind(t: u64) -> String {
    let name = match (t & 0xf) as i32 {
        nix::libc::SOCK_STREAM => "SOCK_STREAM",
        nix::libc::SOCK_DGRAM => "SOCK_DGRAM",
        nix::libc::SOCK_RAW => "SOCK_RAW",
        nix::libc::SOCK_SEQPACKET => "SOCK_SEQPACKET",
        _ => return format!("type {t:#x}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(nr: i64, args: [u64; 3]) -> Violation {
        Violation {
            nr,
            arch: 0,
            args,
            method: None,
            allowed: false,
        }
    }

    #[test]
    fn gating_arguments_in_words() {
        let sock = v(
            nix::libc::SYS_socket,
            [nix::libc::AF_VSOCK as u64, nix::libc::SOCK_STREAM as u64 | 0x80000, 0],
        );
        assert_eq!(describe("socket", &sock), "socket(AF_VSOCK, SOCK_STREAM, 0)");
        assert_eq!(describe("x", &v(0x4000_0029, [0; 3])), "x32 system call 0x40000029");
        assert_eq!(describe("kill", &v(nix::libc::SYS_kill, [1, 9, 0])), "kill(1, 9, ..)");
    }
}
