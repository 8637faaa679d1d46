//! The sandbox policy users set on a [`PluginSpec`](crate::PluginSpec), and the
//! report of what the worker actually enforced.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bulkhead_shared::sandbox::{LayerSet, NetPolicy, SandboxPolicy};

pub use bulkhead_shared::sandbox::SyscallFilter;

pub use bulkhead_shared::sandbox::{Layer, LayerState, SandboxReport};

/// Default size of the sandbox's private `/tmp` (and of its `/dev/shm`): 64 MiB.
pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;

/// What a plugin's worker may touch. The default, [`Sandbox::strict`], applies
/// every layer bulkhead has: user, pid, net, mount, ipc and uts namespaces,
/// Landlock and a seccomp allow-list (default-deny: a system call plugins do
/// not need fails with `EPERM` and is reported as a
/// [`EventKind::SandboxViolation`](crate::EventKind::SandboxViolation)) — without
/// privileges, applied by the worker to itself before the plugin library is
/// opened.
///
/// **Fail closed by default.** Under [`Sandbox::strict`] every layer that is on
/// is required: if the kernel refuses one (a container's seccomp profile that
/// forbids namespaces, AppArmor's restriction of unprivileged user namespaces,
/// a kernel without Landlock, a worker process that is already
/// multi-threaded), the load fails with
/// [`LoadFailure::Sandbox`](crate::LoadFailure::Sandbox) naming the layer, the
/// kernel's answer and what to change. Weakening is always a choice made in
/// code: [`without`](Self::without) turns a layer off (reported as
/// [`LayerState::Off`]), and [`Sandbox::best_effort`] loads with whatever the
/// kernel allows, reporting each missing layer in
/// [`PluginInfo::sandbox`](crate::PluginInfo::sandbox) (see
/// [`SandboxReport::exposures`] for what each missing layer lets a plugin do)
/// and logging it as a warning. [`require`](Self::require) makes single layers
/// mandatory again in a best-effort sandbox.
///
/// Two consequences of the user's own choices are not failures: with
/// [`allow_connect_tcp`](Self::allow_connect_tcp) or
/// [`allow_network`](Self::allow_network) the worker keeps the host's network
/// namespace (the net layer is reported `Off`), and without the pid namespace
/// the mount layer has no fresh `/proc` (reported `Partial`).
///
/// ```
/// use bulkhead_host::{Layer, Sandbox};
/// let sandbox = Sandbox::strict()
///     .allow_read("/etc/myapp/model.bin")   // one more file, read-only
///     .allow_write("/var/lib/myapp/cache")  // a directory it may write
///     .allow_connect_tcp(443)               // TCP to port 443, nothing else
///     .tmp_size(16 << 20)
///     .require(Layer::Seccomp);
/// # let _ = sandbox;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Sandbox {
    layers: LayerSet,
    required: LayerSet,
    simulate_unavailable: LayerSet,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    net: NetPolicy,
    tmp_size: u64,
    filter: SyscallFilter,
    allow_syscalls: Vec<String>,
    file_locks: bool,
    learn: bool,
}

impl Default for Sandbox {
    /// [`Sandbox::strict`].
    fn default() -> Self {
        Sandbox::strict()
    }
}

impl Sandbox {
    /// Every layer on and required; no network; the filesystem shows only the
    /// system libraries (read-only), the plugin library, a private 64 MiB
    /// `/tmp` and a few devices. The default for every
    /// [`PluginSpec`](crate::PluginSpec). A load fails if any layer that is on
    /// cannot be enforced.
    pub fn strict() -> Sandbox {
        Sandbox {
            layers: LayerSet::all(),
            required: LayerSet::all(),
            simulate_unavailable: LayerSet::EMPTY,
            read: Vec::new(),
            write: Vec::new(),
            net: NetPolicy::None,
            tmp_size: DEFAULT_TMP_SIZE,
            filter: SyscallFilter::AllowList,
            allow_syscalls: Vec::new(),
            file_locks: false,
            learn: false,
        }
    }

    /// Every layer on, none required: what the kernel refuses is left out and
    /// reported (in [`PluginInfo::sandbox`](crate::PluginInfo::sandbox), as
    /// [`LayerState::Unavailable`] or [`LayerState::Partial`] with the reason,
    /// and as a warning) instead of failing the load. The protection that is
    /// then missing is listed by [`SandboxReport::exposures`]. Choose it only
    /// where running the plugin matters more than isolating it;
    /// [`require`](Self::require) keeps single layers mandatory.
    pub fn best_effort() -> Sandbox {
        Sandbox {
            required: LayerSet::EMPTY,
            ..Sandbox::strict()
        }
    }

    /// [`strict`](Self::strict) with the older seccomp **deny-list** instead of
    /// the allow-list: every system call is allowed except the ones an
    /// attacker is known to need (tracing, other processes' memory, signals to
    /// others, namespaces, mounts, exec, keyrings, `bpf`, `io_uring`, ...).
    /// Socket families, file locks and whatever else nobody listed stay open:
    /// an explicit opt-out for plugins the allow-list breaks while you find
    /// out what they need (see [`learn`](Self::learn)).
    pub fn compat() -> Sandbox {
        Sandbox {
            filter: SyscallFilter::DenyList,
            ..Sandbox::strict()
        }
    }

    /// Adds the system call `name` (as in `man 2`, e.g. `"inotify_init1"`) to
    /// the seccomp allow-list, without argument filters. A name this
    /// architecture does not have fails the load with
    /// [`LoadFailure::Sandbox`](crate::LoadFailure::Sandbox). Calls the
    /// sandbox itself forbids in every mode (`ptrace`, `execve`, namespace and
    /// mount calls, signals to other processes, ...) stay forbidden.
    pub fn allow_syscall(mut self, name: impl Into<String>) -> Sandbox {
        self.allow_syscalls.push(name.into());
        self
    }

    /// Allows `flock` and `fcntl`'s lock commands (refused by default: a lock
    /// on a file two plugins can both open — even read-only — is a channel
    /// between them). Grant it to plugins that lock their own files (SQLite,
    /// for one), ideally together with an [`allow_write`](Self::allow_write)
    /// directory no other plugin reads.
    pub fn allow_file_locks(mut self) -> Sandbox {
        self.file_locks = true;
        self
    }

    /// Learn mode: system calls outside the allow-list are **allowed** and
    /// reported (as [`EventKind::SandboxViolation`](crate::EventKind::SandboxViolation)
    /// with `allowed: true`, and in [`Plugin::learned_syscalls`](crate::Plugin::learned_syscalls))
    /// instead of refused. For finding out what a plugin needs, on a
    /// trusted machine: it protects nothing the allow-list would.
    pub fn learn(mut self) -> Sandbox {
        self.learn = true;
        self
    }

    /// No sandbox: the worker runs with the host's uid, filesystem, network and
    /// namespaces. Process isolation (crash containment, timeouts, limits, a
    /// scrubbed environment, `no_new_privs`) still applies; nothing stops a
    /// hostile plugin from attacking the host.
    pub fn none() -> Sandbox {
        Sandbox {
            layers: LayerSet::EMPTY,
            required: LayerSet::EMPTY,
            ..Sandbox::strict()
        }
    }

    /// Turns `layer` off (reported as [`LayerState::Off`], and no longer
    /// required). Without the user namespace an unprivileged host cannot
    /// create the other namespaces: under [`Sandbox::strict`] such a load
    /// fails unless they are turned off too.
    pub fn without(mut self, layer: Layer) -> Sandbox {
        self.layers = self.layers.without(layer);
        self.required = self.required.without(layer);
        self
    }

    /// Makes a load fail with [`LoadFailure::Sandbox`](crate::LoadFailure::Sandbox)
    /// unless `layer` is fully enforced, and turns it on if it was off.
    /// [`Sandbox::strict`] already requires every layer that is on; this is
    /// for a [`Sandbox::best_effort`] that must still have, say, seccomp.
    pub fn require(mut self, layer: Layer) -> Sandbox {
        self.layers = self.layers.with(layer);
        self.required = self.required.with(layer);
        self
    }

    /// Requires every layer that is on (a [`Sandbox::best_effort`] becomes
    /// [`Sandbox::strict`]'s equal).
    pub fn require_all(mut self) -> Sandbox {
        self.required = self.layers;
        self
    }

    /// Lets the plugin read `path` (a file, or a directory and everything under
    /// it) at the same path inside the sandbox. When the host runs as root the
    /// worker runs as uid 65534, so the file must be readable by that uid (and
    /// the directories above it searchable). A relative `path` is made
    /// absolute here, against the host's working directory; the plugin runs
    /// with `/` as its working directory, so give it absolute paths.
    pub fn allow_read(mut self, path: impl AsRef<Path>) -> Sandbox {
        self.read.push(absolute(path.as_ref()));
        self
    }

    /// Lets the plugin read and write `path` (a file or a directory); it must
    /// exist. As with [`allow_read`](Self::allow_read), a root host's worker
    /// runs as uid 65534.
    pub fn allow_write(mut self, path: impl AsRef<Path>) -> Sandbox {
        self.write.push(absolute(path.as_ref()));
        self
    }

    /// Lets the plugin open TCP connections to `port` (on any address: neither
    /// Landlock nor seccomp can filter by address). The worker then shares the
    /// host's network namespace (the net layer is reported `Off`). Exactly
    /// added to the system-call allow-list: `socket(AF_INET | AF_INET6,
    /// SOCK_STREAM, 0 | IPPROTO_TCP)` and `connect` (Landlock admits only the
    /// listed ports). Everything else stays refused: binding and listening,
    /// MPTCP, UDP, raw and packet sockets, Unix sockets (so no abstract name
    /// in the host's namespace), netlink and vsock.
    pub fn allow_connect_tcp(mut self, port: u16) -> Sandbox {
        match &mut self.net {
            NetPolicy::ConnectTcp(ports) => ports.push(port),
            NetPolicy::None => self.net = NetPolicy::ConnectTcp(vec![port]),
            NetPolicy::All => {}
        }
        self
    }

    /// Unrestricted network access: the host's network namespace, no Landlock
    /// network rules. Exactly added to the system-call allow-list:
    /// `socket` for `AF_UNIX`, `AF_INET` and `AF_INET6` of any type and
    /// protocol (UDP, raw where the uid may, MPTCP) and `AF_NETLINK` with
    /// `NETLINK_ROUTE` only (interface and address lookups); `connect`,
    /// `bind`, `listen`, `accept`, `accept4`. Still refused: packet sockets,
    /// vsock, other netlink families and every other address family. Unix
    /// sockets in the host's namespace, pathname sockets under a grant
    /// included, are then reachable.
    pub fn allow_network(mut self) -> Sandbox {
        self.net = NetPolicy::All;
        self
    }

    /// Size of the private `/tmp` and `/dev/shm` (each). Default:
    /// [`DEFAULT_TMP_SIZE`].
    pub fn tmp_size(mut self, bytes: u64) -> Sandbox {
        self.tmp_size = bytes;
        self
    }

    /// Makes the worker treat `layer` as if the kernel refused it — to see how
    /// a refusal is reported and how a strict sandbox refuses the load.
    /// For tests; never useful in production.
    #[doc(hidden)]
    pub fn simulate_unavailable(mut self, layer: Layer) -> Sandbox {
        self.simulate_unavailable = self.simulate_unavailable.with(layer);
        self
    }

    /// Whether any layer is on.
    pub fn is_enabled(&self) -> bool {
        self.layers != LayerSet::EMPTY
    }

    /// The policy as the worker receives it.
    pub(crate) fn to_policy(&self) -> SandboxPolicy {
        let bytes = |p: &PathBuf| p.as_os_str().as_bytes().to_vec();
        // Keeping the host's network is the user's choice, not a failure.
        let mut required = LayerSet(self.required.0 & self.layers.0);
        if self.net != NetPolicy::None {
            required = required.without(Layer::NetNs);
        }
        SandboxPolicy {
            layers: self.layers,
            required,
            simulate_unavailable: self.simulate_unavailable,
            read: self.read.iter().map(bytes).collect(),
            write: self.write.iter().map(bytes).collect(),
            net: self.net.clone(),
            tmp_size: self.tmp_size,
            filter: self.filter,
            allow_syscalls: self.allow_syscalls.clone(),
            file_locks: self.file_locks,
            learn: self.learn,
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_is_the_default_and_has_every_layer() {
        let p = Sandbox::default().to_policy();
        for l in Layer::ALL {
            assert!(p.layers.contains(l), "{l}");
        }
        assert_eq!(p.net, NetPolicy::None);
        assert!(!Sandbox::none().is_enabled());
    }

    #[test]
    fn strict_requires_what_is_on_and_best_effort_nothing() {
        let p = Sandbox::strict().to_policy();
        assert_eq!(p.required, LayerSet::all());
        let p = Sandbox::strict().without(Layer::UtsNs).to_policy();
        assert_eq!(p.required, LayerSet::all().without(Layer::UtsNs));
        let p = Sandbox::strict().allow_connect_tcp(443).to_policy();
        assert_eq!(p.required, LayerSet::all().without(Layer::NetNs));
        assert_eq!(Sandbox::best_effort().to_policy().required, LayerSet::EMPTY);
        assert_eq!(Sandbox::best_effort().to_policy().layers, LayerSet::all());
        let p = Sandbox::best_effort().require(Layer::Seccomp).to_policy();
        assert_eq!(p.required, LayerSet::EMPTY.with(Layer::Seccomp));
        assert_eq!(Sandbox::best_effort().require_all(), Sandbox::strict());
        assert_eq!(Sandbox::none().to_policy().required, LayerSet::EMPTY);
        // Requiring a layer that was turned off turns it back on.
        let p = Sandbox::best_effort()
            .without(Layer::Landlock)
            .require(Layer::Landlock)
            .to_policy();
        assert!(p.layers.contains(Layer::Landlock) && p.required.contains(Layer::Landlock));
    }

    #[test]
    fn builder_collects_the_opt_ins() {
        let p = Sandbox::strict()
            .allow_read("/a")
            .allow_write("/b")
            .allow_connect_tcp(80)
            .allow_connect_tcp(443)
            .without(Layer::IpcNs)
            .require(Layer::Seccomp)
            .to_policy();
        assert_eq!(p.read, vec![b"/a".to_vec()]);
        assert_eq!(p.write, vec![b"/b".to_vec()]);
        assert_eq!(p.net, NetPolicy::ConnectTcp(vec![80, 443]));
        assert!(!p.layers.contains(Layer::IpcNs));
        assert!(p.required.contains(Layer::Seccomp));
        assert_eq!(
            Sandbox::strict().allow_network().allow_connect_tcp(1).to_policy().net,
            NetPolicy::All
        );
    }
}
