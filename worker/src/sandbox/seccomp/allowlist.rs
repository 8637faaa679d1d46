//! The default-deny filter's contents: the system calls plugins need, and
//! the argument filters on the calls that are gates.
//!
//! The list was built from what Rust's std, glibc's start-up and threads,
//! tokio, rayon and the common allocators call (and what the worker itself
//! calls after the filter is attached), then checked by running the project's
//! whole test suite and its fixtures under it. A call not listed fails with
//! `EPERM` and is reported (see [`super::trap`]). Names this architecture does
//! not have (`open` on aarch64, say) are skipped.

use std::collections::BTreeMap;

use bulkhead_shared::sandbox::{NetPolicy, SandboxPolicy};
use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompRule};

use super::{cond, rule, CLONE_NEW, FORBIDDEN, LATE};

/// Allowed whatever their arguments (paths are Landlock's and the mount
/// namespace's job; descriptors are the process's own).
const PLAIN: &[&str] = &[
    // I/O on descriptors.
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "close",
    "close_range",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "fallocate",
    "ftruncate",
    "readahead",
    "fadvise64",
    // Files by path (Landlock decides which paths).
    "open",
    "openat",
    "openat2",
    "creat",
    "stat",
    "fstat",
    "lstat",
    "newfstatat",
    "statx",
    "statfs",
    "fstatfs",
    "access",
    "faccessat",
    "faccessat2",
    "readlink",
    "readlinkat",
    "getdents",
    "getdents64",
    "getcwd",
    "chdir",
    "fchdir",
    "mkdir",
    "mkdirat",
    "rmdir",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "truncate",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "utime",
    "utimes",
    "utimensat",
    "futimesat",
    "umask",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    // Memory.
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "brk",
    "msync",
    "mincore",
    "mlock",
    "munlock",
    "mlock2",
    "mlockall",
    "munlockall",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "mseal",
    "get_mempolicy",
    "membarrier",
    "map_shadow_stack",
    // Threads and processes (clone's flags are filtered below; exec is not here).
    "fork",
    "vfork",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "futex",
    "futex_waitv",
    "futex_wake",
    "futex_wait",
    "futex_requeue",
    "rseq",
    "gettid",
    "getpid",
    "getppid",
    "sched_yield",
    "sched_getaffinity",
    "sched_getparam",
    "sched_getscheduler",
    "sched_getattr",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "getcpu",
    "arch_prctl",
    "restart_syscall",
    // Signals (to others, and a new SIGSYS handler: refused by the late
    // filter, which names the pid).
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "rt_sigsuspend",
    "rt_sigpending",
    "rt_sigtimedwait",
    "pause",
    "kill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "signalfd",
    "signalfd4",
    "alarm",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "timer_delete",
    // Time and randomness.
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "time",
    "times",
    "getrusage",
    "getrandom",
    // Polling and event descriptors.
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // Sockets the process already has (creating them is gated below).
    "sendmsg",
    "recvmsg",
    "sendto",
    "recvfrom",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    // Reading its own identity and limits.
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "getgroups",
    "getpgrp",
    "getpgid",
    "getsid",
    "uname",
    "capget",
    "getrlimit",
    "getpriority",
    "ioprio_get",
    // Restricting itself further (only ever narrows: capabilities dropped,
    // Landlock and seccomp layered on; the worker's own set-up uses them too).
    "capset",
    "setrlimit",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "seccomp",
    // System V shared memory and semaphores: the worker's own IPC namespace.
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
];

/// `prctl` options: naming threads and memory, reading and narrowing its own
/// state (no `PR_SET_MM`, `PR_SET_PTRACER`, syscall user dispatch, ...).
const PRCTL: &[i32] = &[
    libc::PR_SET_PDEATHSIG,
    libc::PR_GET_PDEATHSIG,
    libc::PR_GET_DUMPABLE,
    libc::PR_SET_DUMPABLE,
    libc::PR_GET_KEEPCAPS,
    libc::PR_SET_KEEPCAPS,
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_GET_SECCOMP,
    libc::PR_SET_SECCOMP,
    libc::PR_CAPBSET_READ,
    libc::PR_CAPBSET_DROP,
    libc::PR_GET_TIMERSLACK,
    libc::PR_SET_TIMERSLACK,
    libc::PR_SET_CHILD_SUBREAPER,
    libc::PR_GET_CHILD_SUBREAPER,
    libc::PR_SET_NO_NEW_PRIVS,
    libc::PR_GET_NO_NEW_PRIVS,
    libc::PR_GET_TID_ADDRESS,
    libc::PR_SET_THP_DISABLE,
    libc::PR_GET_THP_DISABLE,
    libc::PR_CAP_AMBIENT,
    libc::PR_GET_SPECULATION_CTRL,
    libc::PR_SET_SPECULATION_CTRL,
    0x5356_4d41, // PR_SET_VMA (glibc names its malloc arenas)
    0x4155_5856, // PR_GET_AUXV
    65,          // PR_SET_MDWE
    66,          // PR_GET_MDWE
];

/// `ioctl` commands: the generic descriptor ones std and the runtimes use
/// (`set_nonblocking`, `is_terminal`, pending bytes), nothing device-specific.
const IOCTL: &[u64] = &[
    libc::FIONREAD,
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::TCGETS,
    libc::TIOCGWINSZ,
];

/// `fcntl` commands refused by default: byte-range and open-file-description
/// locks (a channel between two sandboxes that can open one file), leases,
/// directory notification, and I/O signals to another process.
const FCNTL_LOCKS: &[i32] = &[
    libc::F_GETLK,
    libc::F_SETLK,
    libc::F_SETLKW,
    libc::F_OFD_GETLK,
    libc::F_OFD_SETLK,
    libc::F_OFD_SETLKW,
];
const FCNTL_NEVER: &[i32] = &[libc::F_SETLEASE, libc::F_NOTIFY, libc::F_SETOWN, F_SETOWN_EX, F_SETSIG];
/// `fcntl.h` values libc does not export for this target.
const F_SETOWN_EX: i32 = 15;
const F_SETSIG: i32 = 10;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn nr(name: &str) -> Option<i64> {
    super::number(name)
}

/// The allow-list for `policy`: every call in it matches, everything else is
/// refused by the filter's default action.
pub fn rules(policy: &SandboxPolicy) -> Result<Rules, String> {
    let mut rules: Rules = PLAIN
        .iter()
        .chain(LATE.iter())
        .filter_map(|n| nr(n))
        .map(|n| (n, Vec::new()))
        .collect();
    let mut gate = |name: &str, r: Vec<SeccompRule>| {
        if let Some(n) = nr(name) {
            rules.insert(n, r);
        }
    };

    // clone: threads and plain forks, never a new namespace.
    let any_new = CLONE_NEW.iter().fold(0, |acc, f| acc | f);
    gate(
        "clone",
        vec![rule(vec![cond(0, Len::Qword, Op::MaskedEq(any_new), 0)?])?],
    );
    // clone3's flags are behind a pointer: the filter gives it ENOSYS (glibc
    // then uses clone); it is matched here only so that the two agree.
    gate("clone3", Vec::new());

    gate("prctl", one_of(0, PRCTL.iter().map(|&o| o as u64))?);
    gate("ioctl", one_of(1, IOCTL.iter().copied())?);
    // Limits, priority and scheduling of itself only (pid 0).
    for name in [
        "prlimit64",
        "sched_setaffinity",
        "sched_setscheduler",
        "sched_setparam",
        "sched_setattr",
    ] {
        gate(name, vec![rule(vec![cond(0, Len::Dword, Op::Eq, 0)?])?]);
    }
    gate(
        "setpriority",
        vec![rule(vec![
            cond(0, Len::Dword, Op::Eq, libc::PRIO_PROCESS as u64)?,
            cond(1, Len::Dword, Op::Eq, 0)?,
        ])?],
    );

    let mut fcntl_refused: Vec<i32> = FCNTL_NEVER.to_vec();
    if policy.file_locks {
        gate("flock", Vec::new());
    } else {
        fcntl_refused.extend_from_slice(FCNTL_LOCKS);
    }
    let not_refused = fcntl_refused
        .iter()
        .map(|&c| cond(1, Len::Dword, Op::Ne, c as u64))
        .collect::<Result<Vec<_>, _>>()?;
    gate("fcntl", vec![rule(not_refused)?]);

    // Sockets: what the network policy grants, by family, type and protocol.
    let unix = libc::AF_UNIX as u64;
    let kind = |t: i32| cond(1, Len::Dword, Op::MaskedEq(0xf), t as u64);
    // A socket pair is private to the process (no name, no address): Unix
    // pairs of every type are allowed in every policy.
    let pair = [libc::SOCK_STREAM, libc::SOCK_SEQPACKET, libc::SOCK_DGRAM]
        .into_iter()
        .map(|t| rule(vec![cond(0, Len::Dword, Op::Eq, unix)?, kind(t)?]))
        .collect::<Result<Vec<_>, _>>()?;
    match &policy.net {
        NetPolicy::None => {}
        NetPolicy::ConnectTcp(_) => {
            // Plain TCP only (Landlock's port rules cover nothing else: not
            // MPTCP, UDP or raw sockets); connect, never bind or listen.
            let mut socket = Vec::new();
            for family in [libc::AF_INET, libc::AF_INET6] {
                for protocol in [0, libc::IPPROTO_TCP] {
                    socket.push(rule(vec![
                        cond(0, Len::Dword, Op::Eq, family as u64)?,
                        kind(libc::SOCK_STREAM)?,
                        cond(2, Len::Dword, Op::Eq, protocol as u64)?,
                    ])?);
                }
            }
            gate("socket", socket);
            gate("connect", Vec::new());
        }
        NetPolicy::All => {
            // Unix, IPv4 and IPv6 sockets of any type, and route netlink
            // (interface and address lookups); no packet, vsock or other
            // netlink families.
            let mut socket = one_of(0, [unix, libc::AF_INET as u64, libc::AF_INET6 as u64])?;
            socket.push(rule(vec![
                cond(0, Len::Dword, Op::Eq, libc::AF_NETLINK as u64)?,
                cond(2, Len::Dword, Op::Eq, libc::NETLINK_ROUTE as u64)?,
            ])?);
            gate("socket", socket);
            for name in ["connect", "bind", "listen", "accept", "accept4"] {
                gate(name, Vec::new());
            }
        }
    }
    gate("socketpair", pair);

    for name in &policy.allow_syscalls {
        if FORBIDDEN.contains(&name.as_str()) || LATE.contains(&name.as_str()) {
            return Err(format!(
                "`{name}` cannot be allowed: the sandbox forbids it in every mode"
            ));
        }
        let n = nr(name).ok_or_else(|| format!("`{name}` is not a system call of this architecture"))?;
        // By name: the whole call, without argument filters.
        rules.insert(n, Vec::new());
    }
    Ok(rules)
}

/// One rule per value: argument `arg` equals one of `values`.
fn one_of(arg: u8, values: impl IntoIterator<Item = u64>) -> Result<Vec<SeccompRule>, String> {
    values
        .into_iter()
        .map(|v| rule(vec![cond(arg, Len::Dword, Op::Eq, v)?]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_known_on_x86_64() {
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        // Names libc does not know yet (newer kernels) are the only exceptions.
        let newer = ["futex_wake", "futex_wait", "futex_requeue", "map_shadow_stack"];
        for name in PLAIN.iter().chain(LATE.iter()).chain(FORBIDDEN.iter()) {
            assert!(nr(name).is_some() || newer.contains(name), "{name}");
        }
    }

    #[test]
    fn nothing_forbidden_is_allowed() {
        for name in FORBIDDEN {
            assert!(!PLAIN.contains(name), "{name}");
        }
        let r = rules(&SandboxPolicy::none()).unwrap();
        for name in FORBIDDEN {
            if let Some(n) = nr(name) {
                assert!(!r.contains_key(&n), "{name}");
            }
        }
        for name in [
            "socket",
            "bind",
            "listen",
            "connect",
            "flock",
            "memfd_create",
            "inotify_init1",
            "sysinfo",
        ] {
            assert!(!r.contains_key(&nr(name).unwrap()), "{name} is not in the default list");
        }
    }

    #[test]
    fn by_name_additions_are_checked() {
        let mut p = SandboxPolicy::none();
        p.allow_syscalls = vec!["inotify_init1".into()];
        assert!(rules(&p).unwrap().contains_key(&nr("inotify_init1").unwrap()));
        p.allow_syscalls = vec!["ptrace".into()];
        assert!(rules(&p).unwrap_err().contains("forbids"));
        p.allow_syscalls = vec!["no_such_call".into()];
        assert!(rules(&p).unwrap_err().contains("not a system call"));
    }
}
