//! seccomp-bpf: a deny-list, built with `seccompiler`.
//!
//! A deny-list rather than an allow-list: plugins are arbitrary native code, and
//! allow-lists break on the first libc or allocator that uses a system call
//! nobody listed (glibc's `clone3`, `rseq`, `faccessat2`; allocators' `madvise`).
//! The list targets what an attacker needs and a plugin does not:
//!
//! * tracing and other processes' memory: `ptrace`, `process_vm_readv/writev`,
//!   `kcmp`, the pidfd calls;
//! * signals to anyone but the worker itself: `kill`, `tgkill`,
//!   `rt_sigqueueinfo`, `rt_tgsigqueueinfo` only with the worker's own pid,
//!   `tkill` not at all;
//! * leaving the process group or session: `setsid`, `setpgid`;
//! * running other programs: `execve`, `execveat` (the worker is already
//!   running; nothing legitimate execs after its start);
//! * new namespaces and mounts: `unshare`, `setns`, `clone` with any
//!   `CLONE_NEW*` flag, `mount`, `umount2`, `pivot_root`, `chroot` and the new
//!   mount API; `clone3` fails with `ENOSYS` (not `EPERM`), so glibc falls back
//!   to `clone`, whose flags can be inspected;
//! * kernel attack surface a plugin has no use for: `bpf`, `perf_event_open`,
//!   `userfaultfd`, `io_uring_*`, keyrings, module and kexec calls,
//!   `open_by_handle_at`, `name_to_handle_at`, clock setting, `reboot`, swap,
//!   `acct`, `quotactl`, `syslog`, `iopl`/`ioperm`, `TIOCSTI` and `TIOCLINUX`.
//!
//! Denied calls fail with `EPERM`; the filter is the worker's last step, so it
//! also forbids the sandbox's own set-up calls from then on.

use std::collections::BTreeMap;

use bulkhead_shared::sandbox::{Layer, LayerState, NetPolicy, SandboxReport};
use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::Plan;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(target_arch = "riscv64")]
const ARCH: TargetArch = TargetArch::riscv64;

/// Every `CLONE_NEW*` flag `clone` accepts.
const CLONE_NEW: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// Which part of the filter to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// All of it, in a worker the host started itself.
    Full,
    /// A fork-server's share, installed once on the server and inherited by
    /// every worker it forks (compiling and attaching a long filter is one of
    /// the costlier steps of a spawn): everything but [`LATE`] and the signal
    /// rules, which name the worker's own pid.
    Base,
    /// A forked worker's own share, on top of the inherited base: [`LATE`]
    /// and the signal rules. A pre-forked worker attaches it before it is
    /// assigned: it needs none of those calls afterwards.
    Late,
}

/// Calls a forked worker still makes while it sets itself up (its own
/// process group, its own namespaces and mounts), so the fork-server's base
/// filter leaves them to the worker's late filter.
const LATE: [i64; 3] = [libc::SYS_setpgid, libc::SYS_unshare, libc::SYS_mount];

/// Installs `part` of the filters; records the outcome.
pub fn apply(plan: &Plan<'_>, report: &mut SandboxReport, part: Part) {
    if !plan.wants(Layer::Seccomp) {
        return;
    }
    if let Some(state) = plan.simulated_unavailable(Layer::Seccomp) {
        report.set(Layer::Seccomp, state);
        return;
    }
    if part == Part::Late && !report.state(Layer::Seccomp).is_enforced() {
        // The base is missing: nothing to complete.
        return;
    }
    let state = match install(plan, part) {
        Ok(()) => LayerState::Enforced,
        Err(e) => LayerState::Unavailable(e),
    };
    report.set(Layer::Seccomp, state);
}

fn install(plan: &Plan<'_>, part: Part) -> Result<(), String> {
    let me = std::process::id() as u64;
    if part != Part::Late {
        let enosys = build(BTreeMap::from([(libc::SYS_clone3, vec![])]), libc::ENOSYS as u32)?;
        apply_filter(&enosys).map_err(|e| format!("installing the filter: {e}"))?;
    }
    let deny = build(deny_rules(me, &plan.policy.net, part)?, libc::EPERM as u32)?;
    apply_filter(&deny).map_err(|e| format!("installing the filter: {e}"))?;
    Ok(())
}

fn build(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: u32) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno), ARCH)
        .map_err(|e| format!("building the filter: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("compiling the filter: {e}"))
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<Cond, String> {
    Cond::new(arg, len, op, value).map_err(|e| e.to_string())
}

fn deny_rules(me: u64, net: &NetPolicy, part: Part) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let always = [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_getfd,
        libc::SYS_pidfd_send_signal,
        libc::SYS_tkill,
        libc::SYS_setsid,
        libc::SYS_setpgid,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        // Memory no address-space limit counts, and per-user instance counts
        // shared with the host (issue 17).
        libc::SYS_memfd_create,
        libc::SYS_memfd_secret,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_inotify_init,
        libc::SYS_inotify_init1,
        libc::SYS_fanotify_init,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_ioperm,
    ];
    let in_part = |nr: &i64| match part {
        Part::Full => true,
        Part::Base => !LATE.contains(nr),
        Part::Late => LATE.contains(nr),
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = always
        .iter()
        .filter(|nr| in_part(nr))
        .map(|&nr| (nr, Vec::new()))
        .collect();

    // Signals: only to the worker itself (its own pid; 0 and negative pids
    // would reach its process group, which includes the host-side processes).
    if part != Part::Base {
        let not_me =
            |arg: u8| -> Result<Vec<SeccompRule>, String> { Ok(vec![rule(vec![cond(arg, Len::Dword, Op::Ne, me)?])?]) };
        rules.insert(libc::SYS_kill, not_me(0)?);
        rules.insert(libc::SYS_tgkill, not_me(0)?);
        rules.insert(libc::SYS_rt_sigqueueinfo, not_me(0)?);
        rules.insert(libc::SYS_rt_tgsigqueueinfo, not_me(0)?);
    }
    if part == Part::Late {
        return Ok(rules);
    }

    // clone with any namespace flag.
    let mut clone_rules = Vec::new();
    for flag in CLONE_NEW {
        clone_rules.push(rule(vec![cond(0, Len::Qword, Op::MaskedEq(flag), flag)?])?);
    }
    rules.insert(libc::SYS_clone, clone_rules);

    // Terminal input injection.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCSTI)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCLINUX)?])?,
        ],
    );

    // With TCP allowed to some ports, Landlock guards TCP; UDP and raw sockets
    // (which Landlock does not cover) stay closed.
    if matches!(net, NetPolicy::ConnectTcp(_)) {
        let mut socket_rules = Vec::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            for kind in [libc::SOCK_DGRAM, libc::SOCK_RAW] {
                socket_rules.push(rule(vec![
                    cond(0, Len::Dword, Op::Eq, family as u64)?,
                    cond(1, Len::Dword, Op::MaskedEq(0xf), kind as u64)?,
                ])?);
            }
        }
        socket_rules.push(rule(vec![cond(0, Len::Dword, Op::Eq, libc::AF_PACKET as u64)?])?);
        rules.insert(libc::SYS_socket, socket_rules);
    }
    Ok(rules)
}
