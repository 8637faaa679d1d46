//! The worker's sandbox, applied by the worker to itself after the host's load
//! request arrives and before the plugin library is opened (its constructors run
//! inside `dlopen`, so everything here happens before any plugin code).
//!
//! Layers, in the order they are applied — each in its own module:
//!
//! 1. [`identity`]: a worker started by a root host switches to an unprivileged
//!    uid/gid first, so `RLIMIT_NPROC` binds and DAC protects the host's files;
//! 2. [`namespaces`]: user, pid, net, mount, ipc, uts and cgroup namespaces,
//!    all the worker's own;
//! 3. [`init`]: with a pid namespace the worker splits into three processes — the
//!    *outer* one the host started (it stays in the host's pid namespace, waits,
//!    and mirrors the real worker's exit status), a tiny *init* (pid 1: reaps, and
//!    when it exits the kernel kills everything left in the namespace) and the
//!    worker proper (pid 2), which loads the plugin;
//! 4. [`mounts`]: a minimal read-only view of the filesystem, a private
//!    size-limited `/tmp`, a fresh `/proc`, cwd `/`;
//! 5. [`capabilities`]: every capability dropped (the worker is root only in its
//!    own user namespace, and not even that afterwards);
//! 6. [`landlock`]: filesystem allow-list, TCP rules, signal and abstract-socket
//!    scopes — the layer that still holds where namespaces are unavailable;
//! 7. [`seccomp`]: an allow-list of the system calls plugins need (gates
//!    filtered by argument), last, because it forbids the mount and namespace
//!    calls the steps above make.
//!
//! The report sent to the host says, per layer, enforced / partial /
//! unavailable and why. A layer the policy requires that is not enforced fails
//! the load before the library is opened, with the kernel's reason and a remedy
//! in plain words ([`check_required`]). The one accepted shortfall is a
//! consequence of the policy itself: without the pid namespace the mount layer
//! has no fresh `/proc` (`Partial`).

mod capabilities;
mod identity;
mod init;
mod landlock;
mod mounts;
mod namespaces;
mod seccomp;

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use seccomp::trap::METHOD_IN_FLIGHT;
use seccomp::LEARN_PARTIAL;

use bulkhead_shared::protocol::LoadFailure;
use bulkhead_shared::sandbox::{Layer, LayerSet, LayerState, NetPolicy, SandboxPolicy, SandboxReport};

/// What the worker's limits code needs to know from the sandbox.
pub struct Entered {
    /// Where to `dlopen` the library from: `/proc/self/fd/N` of the descriptor
    /// opened before the sandbox (`None`: the caller's own path).
    pub library: Option<PathBuf>,
    /// The per-layer report for the host.
    pub report: SandboxReport,
    /// Processes bulkhead itself added to the worker's uid count (the outer
    /// process and init), to add to `RLIMIT_NPROC`.
    pub helper_processes: u64,
}

/// The paths and policy one sandbox is built from.
pub(crate) struct Plan<'a> {
    pub(crate) policy: &'a SandboxPolicy,
    /// The plugin library, opened before the worker gave up its identity
    /// (`None`: it arrived as a verified memfd, or could not be opened — then
    /// loading it reports why).
    pub(crate) library: Option<OwnedFd>,
    /// The library's path on disk, where a copy goes into the filesystem view
    /// when the view has no `/proc` to reach the descriptor through (no pid
    /// namespace).
    pub(crate) library_path: Option<PathBuf>,
    pub(crate) read: Vec<PathBuf>,
    pub(crate) write: Vec<PathBuf>,
}

impl<'a> Plan<'a> {
    /// The plan of `policy`, with no library (the caller adds it if it has one).
    fn new(policy: &'a SandboxPolicy) -> Plan<'a> {
        let os = |v: &Vec<u8>| PathBuf::from(std::ffi::OsStr::from_bytes(v));
        Plan {
            policy,
            library: None,
            library_path: None,
            read: policy.read.iter().map(os).collect(),
            write: policy.write.iter().map(os).collect(),
        }
    }

    /// Whether `layer` is asked for.
    pub(crate) fn wants(&self, layer: Layer) -> bool {
        self.policy.layers.contains(layer)
    }

    /// `Some(reason)` when the policy's test knob makes `layer` unavailable.
    pub(crate) fn simulated_unavailable(&self, layer: Layer) -> Option<LayerState> {
        self.policy
            .simulate_unavailable
            .contains(layer)
            .then(|| LayerState::Unavailable("made unavailable by the policy (simulate_unavailable)".into()))
    }

    /// Whether the plugin keeps the host's network.
    pub(crate) fn shares_host_network(&self) -> bool {
        !matches!(self.policy.net, NetPolicy::None)
    }
}

/// What a fork-server prepared once for every worker it forks: the policy and
/// the report of the layers it applied to itself (identity, user, network and
/// uts namespaces, the staged view). Forked workers inherit it with memory.
struct Staged {
    policy: SandboxPolicy,
    report: SandboxReport,
}

static STAGED: OnceLock<Staged> = OnceLock::new();

/// The plugin library as a descriptor the host opened, for a forked worker
/// (which no longer has the host's identity to open it with).
static PREOPENED_LIBRARY: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Hands [`enter`] the library descriptor the host opened for this worker.
pub fn set_preopened_library(fd: OwnedFd) {
    *PREOPENED_LIBRARY.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
}

/// The fork-server's share of the sandbox, applied once to the server itself:
/// the unprivileged identity, the user namespace, the uts namespace, and a mount
/// namespace with the static part of the filesystem view staged. Workers it
/// forks then only create what keeps them apart (see [`enter`]).
///
/// `Err` when the profile cannot be prepared this way — no user, mount or pid
/// namespace, or a test knob — and the host should start workers itself, each
/// of which then reports its own layers.
pub fn prepare_profile(policy: &SandboxPolicy) -> Result<(), String> {
    let mut report = SandboxReport::off(rustix::process::geteuid().as_raw());
    if policy.enabled() {
        if policy.simulate_unavailable != LayerSet::EMPTY {
            return Err("the policy simulates unavailable layers".into());
        }
        if policy.learn {
            return Err("learn mode starts each worker itself".into());
        }
        for layer in [Layer::UserNs, Layer::PidNs, Layer::MountNs] {
            if !policy.layers.contains(layer) {
                return Err(format!("the policy leaves out {layer}"));
            }
        }
        let plan = Plan::new(policy);
        identity::drop_root(&plan, &mut report).map_err(|f| f.to_string())?;
        let ns = namespaces::unshare(&plan, &mut report, namespaces::Stage::Profile);
        if !report.state(Layer::UserNs).is_enforced() || !ns.mount {
            return Err(format!(
                "user namespace: {:?}, mount namespace: {:?}",
                report.state(Layer::UserNs),
                report.state(Layer::MountNs)
            ));
        }
        if ns.uts {
            namespaces::set_hostname();
        }
        let sources = mounts::Sources::open(&plan)?;
        mounts::stage(&plan, &sources, 0)?;
        mounts::enter_stage()?;
        seccomp::apply(&plan, &mut report, seccomp::Part::Base);
    }
    STAGED
        .set(Staged {
            policy: policy.clone(),
            report,
        })
        .map_err(|_| "the profile is already prepared".to_string())
}

/// A pre-forked worker's isolation, done before it is assigned a plugin.
struct Prebuilt {
    report: SandboxReport,
    helper_processes: u64,
    /// This process's threads when it began isolating itself.
    threads: usize,
}

static PREBUILT: Mutex<Option<Prebuilt>> = Mutex::new(None);

/// In a worker a fork-server pre-forks (a *blank*): everything of the sandbox
/// that does not depend on the plugin — its own user, pid, network, mount,
/// ipc and cgroup namespaces, the process split, the per-worker mounts, no capabilities, the
/// Landlock ruleset (not yet enforced) and the late seccomp filter — done
/// ahead of time, so that an assignment only adds the library's Landlock rule,
/// limits and `dlopen`. Returns in the
/// process that will load the plugin (pid 2); `Err` if any of it failed (the
/// blank then exits, and the server forks the worker the ordinary way, which
/// reports the failure properly).
pub fn prebuild() -> Result<(), LoadFailure> {
    let staged = STAGED.get().ok_or_else(|| LoadFailure::Sandbox {
        layer: Layer::UserNs,
        reason: "not in a fork-server".into(),
    })?;
    let policy = &staged.policy;
    if !policy.enabled() {
        return Ok(());
    }
    let threads = thread_count();
    let plan = Plan::new(policy);
    let mut report = staged.report.clone();
    let helper_processes = isolate(&plan, &mut report, true)?;
    landlock::prepare(&plan);
    seccomp::apply(&plan, &mut report, seccomp::Part::Late);
    *PREBUILT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Prebuilt {
        report,
        helper_processes,
        threads,
    });
    Ok(())
}

/// Identity, namespaces, the process split, the filesystem view and the
/// capabilities (for a forked worker, only its own share: `staged`). Returns
/// in the process that goes on to load the plugin, with the number of helper
/// processes the split left under the worker's uid.
fn isolate(plan: &Plan<'_>, report: &mut SandboxReport, staged: bool) -> Result<u64, LoadFailure> {
    let ns = if staged {
        let ns = namespaces::unshare(plan, report, namespaces::Stage::Forked);
        if !ns.mount || !ns.pid {
            // Never change the view in the server's own mount namespace.
            return Err(LoadFailure::Sandbox {
                layer: if ns.mount { Layer::PidNs } else { Layer::MountNs },
                reason: "a forked worker could not create its own namespaces".into(),
            });
        }
        ns
    } else {
        identity::drop_root(plan, report)?;
        namespaces::unshare(plan, report, namespaces::Stage::All)
    };

    // Runs in the process whose children the worker's mounts are inherited by:
    // init with a pid namespace, else this one.
    let mut fatal = None;
    let build = |report: &mut SandboxReport, fatal: &mut Option<LoadFailure>| {
        if ns.uts {
            namespaces::set_hostname();
        }
        if report.state(Layer::IpcNs).is_enforced() {
            // Resource containment (issue 17): small System V IPC limits in
            // the worker's own IPC namespace.
            if let Err(why) = crate::setup::limit_sysv_ipc() {
                report.set(Layer::IpcNs, LayerState::Partial(why));
            }
        }
        if !ns.mount {
            return;
        }
        if staged {
            mounts::build_staged(plan, ns.pid, report);
            return;
        }
        // Bind sources are opened here, inside the new mount namespace (a bind
        // mount of a path from another namespace is refused) and with the
        // identity the plugin will have.
        match mounts::Sources::open(plan) {
            Ok(sources) => mounts::build(plan, &sources, ns.pid, report),
            Err(reason) => {
                *fatal = Some(LoadFailure::Sandbox {
                    layer: Layer::MountNs,
                    reason,
                })
            }
        }
    };
    let mut helper_processes = 0;
    if ns.pid {
        // Returns only in the worker proper; the caller turned into the outer
        // waiter, and init ran `build` before forking the worker (which
        // inherits the mounts, and a copy of `report` and `fatal`).
        init::split(|| build(report, &mut fatal)).map_err(|reason| LoadFailure::Sandbox {
            layer: Layer::PidNs,
            reason,
        })?;
        helper_processes = 2;
    } else {
        build(report, &mut fatal);
    }
    if let Some(failure) = fatal {
        return Err(failure);
    }
    capabilities::drop_all();
    Ok(helper_processes)
}

/// Applies `policy` to this process; returns (in the process that goes on to
/// load the plugin) the report. With a pid namespace, the process that called
/// this never returns: it becomes the outer waiter (see [`init`]).
///
/// In a worker forked by a fork-server, the server's share is already in
/// place ([`prepare_profile`]) and `policy` must be the profile's; the rest is
/// applied here exactly as for a worker the host started.
pub fn enter(policy: &SandboxPolicy, library: Option<&Path>) -> Result<Entered, LoadFailure> {
    let staged = STAGED.get();
    let preopened = PREOPENED_LIBRARY.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut report = SandboxReport::off(rustix::process::geteuid().as_raw());
    if let Some(staged) = staged {
        if staged.policy != *policy {
            return Err(LoadFailure::Sandbox {
                layer: Layer::UserNs,
                reason: "the load request's sandbox policy differs from the fork-server's profile".into(),
            });
        }
        report = staged.report.clone();
    }
    if !policy.enabled() {
        // No view to build: a pinned library is loaded through its descriptor
        // (kept open for the worker's life), else by path.
        let library =
            preopened.map(|fd| PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::IntoRawFd::into_raw_fd(fd))));
        return Ok(Entered {
            library,
            report,
            helper_processes: 0,
        });
    }
    let prebuilt = PREBUILT.lock().unwrap_or_else(|e| e.into_inner()).take();
    // (A pre-forked worker counted its threads when it isolated itself.)
    let threads = prebuilt.as_ref().map_or_else(thread_count, |done| done.threads);
    let mut plan = Plan::new(policy);
    // Opened now, with the identity the host gave us: the sandboxed worker
    // loads it through its descriptor, so neither a directory on the way it
    // could not search (a root host's worker runs as uid 65534) nor the
    // minimal filesystem view stands between it and its library; only the
    // file's own permissions count. (A forked worker got it from the host.)
    plan.library_path = library.map(Path::to_path_buf);
    plan.library = library.and_then(|p| preopened.or_else(|| mounts::open_owned(p, nix::fcntl::OFlag::O_RDONLY).ok()));

    let helper_processes = match prebuilt {
        // A pre-forked worker isolated itself and attached its seccomp filter
        // before it was assigned; Landlock names the library, so it is last.
        Some(done) => {
            report = done.report;
            landlock::apply(&plan, &mut report);
            done.helper_processes
        }
        None => {
            let helpers = isolate(&plan, &mut report, staged.is_some())?;
            let part = if staged.is_some() {
                seccomp::Part::Late
            } else {
                seccomp::Part::Full
            };
            landlock::apply(&plan, &mut report);
            seccomp::apply(&plan, &mut report, part);
            helpers
        }
    };

    check_required(policy, &report, threads)?;
    // Kept open for the worker's life; the loader reopens it by this path.
    // (Without a /proc in the view, the view holds a copy at its own path.)
    let library = match plan.library.take() {
        Some(fd) if Path::new("/proc/self/fd").exists() => Some(PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::IntoRawFd::into_raw_fd(fd)
        ))),
        _ => None,
    };
    Ok(Entered {
        library,
        report,
        helper_processes,
    })
}

/// The threads of this process (`Threads:` of `/proc/self/status`; 0 if it
/// cannot be read).
pub(crate) fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Fails with the first layer the policy requires that `report` does not show
/// enforced. `threads` is the worker's thread count when it began entering the
/// sandbox (a multi-threaded process cannot create a user namespace).
fn check_required(policy: &SandboxPolicy, report: &SandboxReport, threads: usize) -> Result<(), LoadFailure> {
    for layer in Layer::ALL {
        if !policy.required.contains(layer) {
            continue;
        }
        let reason = match report.state(layer) {
            LayerState::Enforced => continue,
            // The policy's own choice: no pid namespace, so no fresh /proc.
            LayerState::Partial(_) if layer == Layer::MountNs && !policy.layers.contains(Layer::PidNs) => continue,
            // The policy's own choice: learn mode lets refused calls through.
            LayerState::Partial(why) if layer == Layer::Seccomp && policy.learn && why.starts_with(LEARN_PARTIAL) => {
                continue
            }
            LayerState::Partial(why) => format!("only partly enforced: {why}"),
            LayerState::Unavailable(why) => why.clone(),
            LayerState::Off => "required but not enabled in the policy".to_string(),
        };
        // A namespace that failed because the user namespace did is explained
        // by the user namespace's failure.
        let (layer, reason) = match report.state(Layer::UserNs) {
            LayerState::Unavailable(why) if layer != Layer::UserNs && is_namespace(layer) => {
                (Layer::UserNs, why.clone())
            }
            _ => (layer, reason),
        };
        let remedy = remedy(layer, &reason, threads);
        return Err(LoadFailure::Sandbox {
            layer,
            reason: format!("{reason}. {remedy}"),
        });
    }
    Ok(())
}

fn is_namespace(layer: Layer) -> bool {
    !matches!(layer, Layer::Landlock | Layer::Seccomp)
}

/// What to do about `layer` failing with `reason`, in plain words.
fn remedy(layer: Layer, reason: &str, threads: usize) -> String {
    const OPT_OUT: &str = "or accept the weaker isolation in code with Sandbox::best_effort() \
                           (PluginInfo::sandbox then lists what a plugin can do) or Sandbox::strict().without(..)";
    if reason.contains("simulate_unavailable") {
        return format!("The policy simulates this failure (a test setting); {OPT_OUT}.");
    }
    let user_ns = layer == Layer::UserNs;
    if user_ns && threads > 1 && reason.contains("EINVAL") {
        return format!(
            "The worker process was already multi-threaded ({threads} threads), and the kernel creates no user \
             namespace for such a process: in self-worker mode call bulkhead_host::worker_main_if_requested() as the \
             first statement of main, before any runtime (e.g. #[tokio::main]) or thread starts, or use a \
             standalone worker executable; {OPT_OUT}."
        );
    }
    if user_ns && reason.contains("writing /proc/self/") {
        return format!(
            "The kernel created the user namespace but refused to map the worker's uid into it: unprivileged user \
             namespaces are restricted on this system (AppArmor on Ubuntu 23.10+: \
             kernel.apparmor_restrict_unprivileged_userns=1, or an outer user namespace that does not map this \
             uid). Allow them for this executable (an AppArmor profile with the `userns,` rule, or the sysctl set \
             to 0), {OPT_OUT}."
        );
    }
    if user_ns && (reason.contains("EPERM") || reason.contains("ENOSPC") || reason.contains("ENOSYS")) {
        return format!(
            "Unprivileged user namespaces are disabled for this process: a container's seccomp profile (Docker's \
             and containerd's default profiles refuse unshare/clone with namespace flags), \
             user.max_user_namespaces=0, kernel.unprivileged_userns_clone=0, or a systemd unit with \
             RestrictNamespaces=. Allow them (e.g. docker run --security-opt seccomp=<profile allowing unshare \
             and clone with CLONE_NEWUSER>, RestrictNamespaces=user pid net mnt ipc uts in the unit) {OPT_OUT}."
        );
    }
    match layer {
        Layer::Landlock => format!(
            "This kernel does not enforce Landlock fully (it needs Linux 6.7+ with Landlock in the `lsm=` boot \
             list for every rule bulkhead uses); {OPT_OUT}."
        ),
        Layer::Seccomp => format!("The kernel refused the seccomp filter; {OPT_OUT}."),
        _ => format!("The kernel refused to create the {layer} namespace here; {OPT_OUT}."),
    }
}
