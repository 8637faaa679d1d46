//! seccomp-bpf, built with `seccompiler`: by default an allow-list
//! ([`allowlist`]), so that whatever nobody thought of is refused.
//!
//! The filters, each attached once (their actions combine by seccomp's
//! precedence, the strictest wins):
//!
//! 1. a guard: calls of another architecture's convention and x32 numbers
//!    (bit `0x40000000`) are refused, whatever the kernel supports;
//! 2. `clone3` fails with `ENOSYS` (not `EPERM`): its flags are behind a
//!    pointer the filter cannot read, and glibc falls back to `clone`, whose
//!    flags it can;
//! 3. the policy's filter: the allow-list (default), or the older deny-list
//!    of [`FORBIDDEN`] calls ([`SyscallFilter::DenyList`], an explicit
//!    opt-out), or in learn mode the deny-list refusing and the allow-list
//!    reporting what it would refuse;
//! 4. the late filter: the calls the worker's own set-up still makes
//!    ([`LATE`]), signals to any process but the worker itself, and
//!    replacing the `SIGSYS` handler.
//!
//! A fork-server attaches 1–3 once and its forked workers inherit them
//! ([`Part::Base`]); each worker attaches 4 ([`Part::Late`]) before it is
//! assigned a plugin. A refused call fails with `EPERM` and is reported (see
//! [`trap`]); the filter is the worker's last step before `dlopen`.

mod allowlist;
pub mod trap;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use bulkhead_shared::sandbox::{Layer, LayerState, NetPolicy, SandboxReport, SyscallFilter};
use bulkhead_shared::syscalls;
use seccompiler::{
    apply_filter, sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

use super::Plan;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(target_arch = "riscv64")]
const ARCH: TargetArch = TargetArch::riscv64;

/// This architecture's `AUDIT_ARCH_*` value, as seccomp reports it.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xc000_00f3;

/// The x32 ABI's bit in a system call number.
const X32_BIT: u32 = 0x4000_0000;

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

/// Calls refused in every mode (the deny-list, and what `allow_syscall` can
/// never add): tracing and other processes' memory, leaving the process
/// group or session, running programs, namespaces and mounts, and kernel
/// attack surface a plugin has no use for.
const FORBIDDEN: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "tkill",
    "setsid",
    "execve",
    "execveat",
    "setns",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "name_to_handle_at",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "iopl",
    "ioperm",
];

/// Also refused by the deny-list (the allow-list does not have them;
/// `SandboxPolicy::allow_syscalls` can add them): memory no
/// address-space limit counts, and inotify/fanotify instances, which are
/// counted per user and shared with the host (see the resource-containment
/// notes), and which watch files other programs use.
const DENY_LIST_EXTRA: &[&str] = &[
    "memfd_create",
    "memfd_secret",
    "inotify_init",
    "inotify_init1",
    "fanotify_init",
];

/// The seccomp layer's state in learn mode (its reason starts so).
pub const LEARN_PARTIAL: &str = "learn mode: calls outside the allow-list are allowed and reported, not refused";

/// Calls a forked worker still makes while it sets itself up (its own
/// process group, namespaces and mounts): allowed by the base filters,
/// refused by the late one.
const LATE: &[&str] = &["setpgid", "unshare", "mount"];

/// Which part of the filters to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// All of them, in a worker the host started itself.
    Full,
    /// A fork-server's share, installed once on the server and inherited by
    /// every worker it forks (compiling and attaching a long filter is one of
    /// the costlier steps of a spawn): everything but the late filter, which
    /// names the worker's own pid.
    Base,
    /// A forked worker's own share, on top of the inherited base: the late
    /// filter. A pre-forked worker attaches it before it is assigned: it
    /// needs none of those calls afterwards.
    Late,
}

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
        Ok(()) if plan.policy.learn => LayerState::Partial(LEARN_PARTIAL.into()),
        Ok(()) => LayerState::Enforced,
        Err(e) => LayerState::Unavailable(e),
    };
    report.set(Layer::Seccomp, state);
}

/// What a refused call gets: a trap into the reporting handler, which makes
/// it fail with `EPERM`; plain `EPERM` where the handler is not supported.
fn refused() -> SeccompAction {
    if trap::SUPPORTED {
        SeccompAction::Trap
    } else {
        SeccompAction::Errno(libc::EPERM as u32)
    }
}

fn install(plan: &Plan<'_>, part: Part) -> Result<(), String> {
    let policy = plan.policy;
    trap::install_handler()?;
    if part != Part::Late {
        attach(&guard())?;
        let clone3 = named(&["clone3"]);
        attach(&build(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?)?;
        match policy.filter {
            SyscallFilter::DenyList => attach(&build(deny_rules(&policy.net)?, SeccompAction::Allow, refused())?)?,
            SyscallFilter::AllowList if policy.learn => {
                // Forbidden calls stay refused; the rest of what the
                // allow-list would refuse is reported and let through.
                attach(&build(named(FORBIDDEN), SeccompAction::Allow, refused())?)?;
                const TAG: u32 = 0x0b1c;
                let mut learning = build(
                    allowlist::rules(policy)?,
                    SeccompAction::Trace(TAG),
                    SeccompAction::Allow,
                )?;
                trap::to_user_notif(&mut learning, TAG);
                trap::attach_learning(&learning)?;
            }
            SyscallFilter::AllowList => attach(&build(allowlist::rules(policy)?, refused(), SeccompAction::Allow)?)?,
        }
    }
    if part != Part::Base {
        attach(&build(
            late_rules(std::process::id() as u64)?,
            SeccompAction::Allow,
            refused(),
        )?)?;
    }
    Ok(())
}

fn attach(filter: &BpfProgram) -> Result<(), String> {
    apply_filter(filter).map_err(|e| format!("installing the filter: {e}"))
}

/// A filter whose `rules` get `matched` and everything else `other`.
fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    other: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(rules, other, matched, ARCH).map_err(|e| format!("building the filter: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("compiling the filter: {e}"))
}

/// The guard: another architecture's calling convention, or an x32 number,
/// is refused (seccompiler's filters check the architecture but not the x32
/// bit, which an allow-list refuses anyway and the deny-list would not).
fn guard() -> BpfProgram {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let refuse: u32 = refused().into();
    vec![
        // seccomp_data: nr at offset 0, arch at offset 4.
        insn(LD_W_ABS, 0, 0, 4),
        insn(JEQ_K, 1, 0, AUDIT_ARCH),
        insn(RET_K, 0, 0, refuse),
        insn(LD_W_ABS, 0, 0, 0),
        insn(JSET_K, 0, 1, X32_BIT),
        insn(RET_K, 0, 0, refuse),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The number of system call `name` on this architecture, from a map made
/// once per process ([`syscalls::number`] searches the table linearly, and a
/// filter names a few hundred calls).
fn number(name: &str) -> Option<i64> {
    static NUMBERS: OnceLock<HashMap<&'static str, i64>> = OnceLock::new();
    NUMBERS
        .get_or_init(|| syscalls::table().iter().copied().collect())
        .get(name)
        .copied()
}

/// The calls `names` (those this architecture has), without conditions.
fn named(names: &[&str]) -> BTreeMap<i64, Vec<SeccompRule>> {
    names
        .iter()
        .filter_map(|n| number(n))
        .map(|nr| (nr, Vec::new()))
        .collect()
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<Cond, String> {
    Cond::new(arg, len, op, value).map_err(|e| e.to_string())
}

/// The late filter's refusals: [`LATE`], signals to anyone but the worker
/// itself (its own pid; 0 and negative pids would reach its process group,
/// which includes the host-side processes), and a new `SIGSYS` handler.
fn late_rules(me: u64) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut rules = named(LATE);
    for name in ["kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"] {
        if let Some(nr) = number(name) {
            rules.insert(nr, vec![rule(vec![cond(0, Len::Dword, Op::Ne, me)?])?]);
        }
    }
    if let Some(nr) = number("rt_sigaction") {
        rules.insert(nr, vec![rule(vec![cond(0, Len::Dword, Op::Eq, libc::SIGSYS as u64)?])?]);
    }
    Ok(rules)
}

/// The deny-list ([`SyscallFilter::DenyList`]): [`FORBIDDEN`], `clone` with a
/// namespace flag, terminal input injection, and with TCP allowed to some
/// ports, UDP, raw and packet sockets (Landlock guards TCP only).
fn deny_rules(net: &NetPolicy) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut rules = named(FORBIDDEN);
    rules.extend(named(DENY_LIST_EXTRA));
    let mut clone_rules = Vec::new();
    for flag in CLONE_NEW {
        clone_rules.push(rule(vec![cond(0, Len::Qword, Op::MaskedEq(flag), flag)?])?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCSTI)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCLINUX)?])?,
        ],
    );
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
