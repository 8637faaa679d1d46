//! The sandbox policy the host sends with a load request, and the per-layer
//! report the worker sends back.
//!
//! The worker applies every layer to itself before the plugin library is opened
//! (library constructors run inside `dlopen`). A layer the kernel refuses is
//! reported as [`LayerState::Unavailable`] with the reason; a layer in the
//! policy's `required` set that is not fully enforced fails the load, with the
//! kernel's reason and a remedy. The host's default policy requires every layer
//! it turns on; a best-effort policy requires none.

use serde::{Deserialize, Serialize};

/// One isolation layer of the worker sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Layer {
    /// A user namespace: the worker is root only inside it, and holds no
    /// capability over the host's processes or files. When the host runs as
    /// root, the worker first switches to an unprivileged uid.
    UserNs,
    /// A pid namespace with a fresh `/proc`: the host and other workers are
    /// invisible, and everything the plugin starts dies with its worker.
    PidNs,
    /// A network namespace of the worker's own: no network at all (unless the
    /// policy allows it), and nothing shared with another worker (abstract
    /// socket names, `/proc/net/*`, ports).
    NetNs,
    /// A mount namespace with a minimal read-only view of the filesystem.
    MountNs,
    /// An IPC namespace (System V IPC and POSIX message queues).
    IpcNs,
    /// A UTS namespace (hostname).
    UtsNs,
    /// A cgroup namespace: `/proc/self/cgroup` shows the worker's cgroup as
    /// the root, not the host's cgroup paths.
    CgroupNs,
    /// Landlock: filesystem allow-list, TCP bind/connect rules, signal and
    /// abstract-socket scopes.
    Landlock,
    /// A seccomp-bpf filter: by default an allow-list of the system calls
    /// plugins need, with the gates (sockets, `clone`, `fcntl` locks, `ioctl`,
    /// `prctl`) filtered by argument; see [`SyscallFilter`].
    Seccomp,
}

impl Layer {
    /// Every layer, in the order the worker applies them.
    pub const ALL: [Layer; 9] = [
        Layer::UserNs,
        Layer::PidNs,
        Layer::NetNs,
        Layer::MountNs,
        Layer::IpcNs,
        Layer::UtsNs,
        Layer::CgroupNs,
        Layer::Landlock,
        Layer::Seccomp,
    ];

    /// The layer's bit in a [`LayerSet`].
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// What a hostile plugin can do when this layer is missing and every other
    /// layer holds (one sentence, for reports and logs).
    pub const fn exposure(self) -> &'static str {
        match self {
            Layer::UserNs => {
                "the worker keeps the host's user namespace: a root host's worker still runs as an unprivileged \
                 uid, but a non-root host's worker shares the host's uid (same-uid kernel accounting), and \
                 the other namespaces cannot be created without privileges"
            }
            Layer::PidNs => {
                "the plugin sees the host's processes in /proc, and a process it double-forks and detaches \
                 outlives its worker"
            }
            Layer::NetNs => {
                "the plugin shares the host's network namespace: UDP, Unix sockets of the host's namespace \
                 (Landlock's scope blocks abstract ones) and any protocol Landlock's TCP rules do not cover"
            }
            Layer::MountNs => {
                "the plugin sees the host's whole filesystem tree (Landlock still limits what it may open) and \
                 shares the host's /tmp"
            }
            Layer::IpcNs => "the plugin can reach System V IPC objects and POSIX message queues of the host",
            Layer::UtsNs => "the plugin sees the host's real hostname",
            Layer::CgroupNs => {
                "the plugin reads the host's cgroup paths in /proc/self/cgroup (service and container names)"
            }
            Layer::Landlock => {
                "no filesystem allow-list, TCP rules or signal/abstract-socket scopes: with the namespaces \
                 missing too, the plugin can read any file its uid can and signal the host's uid's processes"
            }
            Layer::Seccomp => {
                "no system-call filter: ptrace, process_vm_*, pidfd calls, new namespaces, socket families \
                 no namespace isolates (AF_VSOCK) and the rest of the kernel's surface are open to the plugin"
            }
        }
    }

    /// A short lowercase name (`"user-ns"`, `"landlock"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Layer::UserNs => "user-ns",
            Layer::PidNs => "pid-ns",
            Layer::NetNs => "net-ns",
            Layer::MountNs => "mount-ns",
            Layer::IpcNs => "ipc-ns",
            Layer::UtsNs => "uts-ns",
            Layer::CgroupNs => "cgroup-ns",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Layer`]s, as a bit mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerSet(pub u32);

impl LayerSet {
    /// No layer.
    pub const EMPTY: LayerSet = LayerSet(0);

    /// Every layer.
    pub const fn all() -> LayerSet {
        let mut bits = 0;
        let mut i = 0;
        while i < Layer::ALL.len() {
            bits |= Layer::ALL[i].bit();
            i += 1;
        }
        LayerSet(bits)
    }

    /// Whether `layer` is in the set.
    pub const fn contains(self, layer: Layer) -> bool {
        self.0 & layer.bit() != 0
    }

    /// The set with `layer` added.
    pub const fn with(self, layer: Layer) -> LayerSet {
        LayerSet(self.0 | layer.bit())
    }

    /// The set with `layer` removed.
    pub const fn without(self, layer: Layer) -> LayerSet {
        LayerSet(self.0 & !layer.bit())
    }
}

/// What the plugin may reach over the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetPolicy {
    /// Nothing: the worker gets its own, empty network namespace.
    None,
    /// TCP connections to these ports only (any address: neither Landlock nor
    /// seccomp can filter by address); no listening, no UDP, no raw sockets.
    /// The worker shares the host's network namespace.
    ConnectTcp(Vec<u16>),
    /// Unrestricted network access (the host's network namespace, no rules).
    All,
}

/// Which seccomp filter the worker installs (with [`Layer::Seccomp`] on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SyscallFilter {
    /// Default-deny: only the system calls plugins need are allowed (the list
    /// is in the worker's `sandbox/seccomp.rs` and the README), gates filtered
    /// by argument; everything else fails with `EPERM` and is reported.
    #[default]
    AllowList,
    /// The older deny-list: every call is allowed except those an attacker
    /// needs (tracing, other processes' memory, namespaces, mounts, exec, ...).
    /// Whatever it does not name is allowed.
    DenyList,
}

/// The sandbox a worker applies to itself before loading the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPolicy {
    /// Layers to apply (the others are [`LayerState::Off`]).
    pub layers: LayerSet,
    /// Layers whose absence fails the load instead of being reported.
    pub required: LayerSet,
    /// Layers to treat as unavailable, as if the kernel refused them (for
    /// testing how degradation is reported; never set in production).
    pub simulate_unavailable: LayerSet,
    /// Paths (raw OS bytes) the plugin may read, besides the system libraries
    /// and its own library.
    pub read: Vec<Vec<u8>>,
    /// Paths (raw OS bytes) the plugin may read and write.
    pub write: Vec<Vec<u8>>,
    /// Network access.
    pub net: NetPolicy,
    /// Size of the private `/tmp` (and `/dev/shm`) in bytes.
    pub tmp_size: u64,
    /// The seccomp filter's kind.
    pub filter: SyscallFilter,
    /// System calls added to the allow-list, by name (ignored by the
    /// deny-list, which allows them anyway unless it names them).
    pub allow_syscalls: Vec<String>,
    /// Whether `flock` and `fcntl`'s lock commands are allowed (refused by
    /// default: a lock on a file two sandboxes can read is a channel).
    pub file_locks: bool,
    /// Learn mode: calls outside the allow-list are allowed and reported
    /// instead of refused (for finding what a plugin needs; no protection).
    pub learn: bool,
}

impl SandboxPolicy {
    /// No sandbox at all: the worker runs with the host's uid, namespaces and
    /// filesystem (only the process hygiene every worker gets).
    pub fn none() -> SandboxPolicy {
        SandboxPolicy {
            layers: LayerSet::EMPTY,
            required: LayerSet::EMPTY,
            simulate_unavailable: LayerSet::EMPTY,
            read: Vec::new(),
            write: Vec::new(),
            net: NetPolicy::None,
            tmp_size: 0,
            filter: SyscallFilter::AllowList,
            allow_syscalls: Vec::new(),
            file_locks: false,
            learn: false,
        }
    }

    /// Whether any layer is on.
    pub fn enabled(&self) -> bool {
        self.layers != LayerSet::EMPTY
    }
}

/// How a layer ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerState {
    /// Applied in full.
    Enforced,
    /// Applied, but weaker than asked (the reason says what is missing).
    Partial(String),
    /// Asked for but could not be applied (the reason says why).
    Unavailable(String),
    /// Not asked for by the policy.
    Off,
}

impl LayerState {
    /// Whether the layer is applied in full.
    pub fn is_enforced(&self) -> bool {
        matches!(self, LayerState::Enforced)
    }
}

/// The state of every layer, as the worker applied them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// One entry per [`Layer`], in [`Layer::ALL`] order.
    pub layers: Vec<(Layer, LayerState)>,
    /// The uid the worker runs as, seen from the host.
    pub host_uid: u32,
}

impl SandboxReport {
    /// A report with every layer [`LayerState::Off`].
    pub fn off(host_uid: u32) -> SandboxReport {
        SandboxReport {
            layers: Layer::ALL.iter().map(|&l| (l, LayerState::Off)).collect(),
            host_uid,
        }
    }

    /// The state of `layer` (`Off` if the report does not mention it).
    pub fn state(&self, layer: Layer) -> &LayerState {
        self.layers
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, s)| s)
            .unwrap_or(&LayerState::Off)
    }

    /// Records the state of `layer`.
    pub fn set(&mut self, layer: Layer, state: LayerState) {
        match self.layers.iter_mut().find(|(l, _)| *l == layer) {
            Some(entry) => entry.1 = state,
            None => self.layers.push((layer, state)),
        }
    }

    /// For every layer that is neither enforced nor off: the layer and what a
    /// hostile plugin can then do ([`Layer::exposure`]).
    pub fn exposures(&self) -> Vec<(Layer, &'static str)> {
        self.degraded().map(|(l, _)| (l, l.exposure())).collect()
    }

    /// Layers that are neither enforced nor off, with their state.
    pub fn degraded(&self) -> impl Iterator<Item = (Layer, &LayerState)> {
        self.layers
            .iter()
            .filter(|(_, s)| !matches!(s, LayerState::Enforced | LayerState::Off))
            .map(|(l, s)| (*l, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_sets() {
        let all = LayerSet::all();
        for l in Layer::ALL {
            assert!(all.contains(l));
            assert!(!all.without(l).contains(l));
            assert!(LayerSet::EMPTY.with(l).contains(l));
        }
        assert_eq!(all.0.count_ones() as usize, Layer::ALL.len());
    }

    #[test]
    fn report_tracks_degraded_layers() {
        let mut r = SandboxReport::off(0);
        r.set(Layer::Landlock, LayerState::Enforced);
        r.set(Layer::NetNs, LayerState::Unavailable("no".into()));
        assert_eq!(r.state(Layer::Landlock), &LayerState::Enforced);
        let d: Vec<_> = r.degraded().map(|(l, _)| l).collect();
        assert_eq!(d, vec![Layer::NetNs]);
        assert_eq!(r.exposures(), vec![(Layer::NetNs, Layer::NetNs.exposure())]);
    }
}
