//! User, pid, net, mount, ipc, uts and cgroup namespaces, created with
//! `unshare`. Every worker gets namespaces of its own (none is shared with
//! another worker, not even with a fork-server's other workers), so nothing a
//! namespace scopes — abstract socket names, `/proc/net/*`, ports, System V
//! IPC, the hostname, the cgroup root — is a channel between two plugins.
//!
//! The user namespace comes first and alone, and its uid/gid maps are written at
//! once: on kernels that restrict unprivileged user namespaces (Ubuntu 23.10+
//! with AppArmor) `unshare` succeeds and the failure only shows when the maps
//! are written or a mount is attempted, so each step is checked for real.
//! Inside, the worker maps uid/gid 0 to its own (unprivileged) ids, the only
//! mapping an unprivileged process may write.

use std::fs;

use bulkhead_shared::sandbox::{Layer, LayerState, SandboxReport};
use nix::sched::{unshare as sys_unshare, CloneFlags};
use nix::unistd::{Gid, Uid};

use super::Plan;

/// Which namespaces the worker is now in.
#[derive(Debug, Default, Clone, Copy)]
pub struct Active {
    /// A pid namespace: its first child will be pid 1.
    pub pid: bool,
    /// A mount namespace.
    pub mount: bool,
    /// A uts namespace.
    pub uts: bool,
}

/// The namespaces besides the user namespace, with their layers.
const OTHERS: [(Layer, CloneFlags); 6] = [
    (Layer::PidNs, CloneFlags::CLONE_NEWPID),
    (Layer::NetNs, CloneFlags::CLONE_NEWNET),
    (Layer::MountNs, CloneFlags::CLONE_NEWNS),
    (Layer::IpcNs, CloneFlags::CLONE_NEWIPC),
    (Layer::UtsNs, CloneFlags::CLONE_NEWUTS),
    (Layer::CgroupNs, CloneFlags::CLONE_NEWCGROUP),
];

/// Which part of the sandbox's namespaces to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Everything, for a worker the host started itself.
    All,
    /// A fork-server's share, created once for all its workers: the user
    /// namespace, the uts namespace, and the mount namespace the static view
    /// is staged in.
    Profile,
    /// Each forked worker's own: a user namespace nested in the server's (so
    /// `RLIMIT_NPROC` counts per worker), and pid, network, mount (a copy of
    /// the staged view), ipc and cgroup namespaces — the ones that keep
    /// workers apart. (A pre-forked blank creates them before it is needed,
    /// which hides the network namespace's cost from `load()` and restarts.)
    Forked,
}

impl Stage {
    fn covers(self, layer: Layer) -> bool {
        match self {
            Stage::All => true,
            Stage::Profile => matches!(layer, Layer::MountNs | Layer::UtsNs),
            Stage::Forked => matches!(
                layer,
                Layer::PidNs | Layer::NetNs | Layer::MountNs | Layer::IpcNs | Layer::CgroupNs
            ),
        }
    }
}

/// Creates the namespaces of `stage` the plan asks for, recording each one's state.
pub fn unshare(plan: &Plan<'_>, report: &mut SandboxReport, stage: Stage) -> Active {
    let mut active = Active::default();
    let wants_net = plan.wants(Layer::NetNs) && !plan.shares_host_network() && stage.covers(Layer::NetNs);
    let user = if !plan.wants(Layer::UserNs) {
        false
    } else if let Some(state) = plan.simulated_unavailable(Layer::UserNs) {
        report.set(Layer::UserNs, state);
        false
    } else {
        match enter_user_ns() {
            Ok(()) => {
                if stage != Stage::Forked {
                    report.set(Layer::UserNs, LayerState::Enforced);
                }
                true
            }
            Err(why) if stage == Stage::Forked => {
                report.set(
                    Layer::UserNs,
                    LayerState::Partial(format!("shared with the fork-server's other workers: {why}")),
                );
                false
            }
            Err(why) => {
                report.set(Layer::UserNs, LayerState::Unavailable(why));
                false
            }
        }
    };

    let mut wanted = Vec::new();
    for (layer, flag) in OTHERS {
        if !plan.wants(layer) || !stage.covers(layer) || (layer == Layer::NetNs && !wants_net) {
            continue;
        }
        if let Some(state) = plan.simulated_unavailable(layer) {
            report.set(layer, state);
            continue;
        }
        wanted.push((layer, flag));
    }
    // All at once (one system call); if the kernel refuses, one by one so the
    // report names the namespace that is missing.
    let all = wanted.iter().fold(CloneFlags::empty(), |acc, (_, f)| acc | *f);
    let together = !all.is_empty() && sys_unshare(all).is_ok();
    for (layer, flag) in wanted {
        let result = if together { Ok(()) } else { sys_unshare(flag) };
        match result {
            Ok(()) => {
                report.set(layer, LayerState::Enforced);
                match layer {
                    Layer::PidNs => active.pid = true,
                    Layer::MountNs => active.mount = true,
                    Layer::UtsNs => active.uts = true,
                    _ => {}
                }
            }
            Err(e) => {
                let why = if user {
                    format!("unshare: {e}")
                } else {
                    format!("unshare: {e} (creating it without privileges needs the user namespace)")
                };
                report.set(layer, LayerState::Unavailable(why));
            }
        }
    }
    active
}

/// Creates a user namespace and maps uid/gid 0 inside to ours outside.
pub fn enter_user_ns() -> Result<(), String> {
    let (uid, gid) = (Uid::effective(), Gid::effective());
    sys_unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare(CLONE_NEWUSER): {e}"))?;
    let write = |file: &str, data: String| {
        fs::write(format!("/proc/self/{file}"), data).map_err(|e| format!("writing /proc/self/{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))?;
    Ok(())
}

/// Names the sandbox's own host (in its uts namespace).
pub fn set_hostname() {
    // Best effort: the name is cosmetic, the namespace is what isolates.
    let _ = nix::unistd::sethostname("bulkhead");
}
