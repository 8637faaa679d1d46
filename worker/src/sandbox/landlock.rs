//! Landlock: the filesystem allow-list, TCP bind/connect rules, and the signal
//! and abstract-unix-socket scopes. Needs no privilege and no namespace, so it
//! is also what still holds on a kernel without unprivileged user namespaces.
//!
//! Allowed: read (and execute) the system library directories, the plugin
//! library, `/proc` (inside a pid namespace: the worker's own) and the harmless
//! devices; read and write `/tmp`, `/dev/shm` and the policy's writable paths;
//! read the policy's readable paths. TCP: no bind; connect only to the
//! policy's ports. Scopes: no signal to, and no abstract socket of, any process
//! outside the worker's Landlock domain.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::Mutex;

use bulkhead_shared::sandbox::{Layer, LayerState, NetPolicy, SandboxReport};
use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::Plan;

/// The newest Landlock ABI whose features bulkhead uses (scopes: ABI 6).
const TARGET: ABI = ABI::V6;

/// Applies the ruleset; records the outcome.
pub fn apply(plan: &Plan<'_>, report: &mut SandboxReport) {
    if !plan.wants(Layer::Landlock) {
        return;
    }
    if let Some(state) = plan.simulated_unavailable(Layer::Landlock) {
        report.set(Layer::Landlock, state);
        return;
    }
    let state = match restrict(plan) {
        Ok(RulesetStatus::FullyEnforced) => LayerState::Enforced,
        Ok(RulesetStatus::PartiallyEnforced) => LayerState::Partial(
            "the kernel's Landlock ABI lacks some of the rules (TCP rules need ABI 4, scopes ABI 6)".into(),
        ),
        Ok(RulesetStatus::NotEnforced) => LayerState::Unavailable("Landlock is not supported or not enabled".into()),
        Err(e) => LayerState::Unavailable(e),
    };
    report.set(Layer::Landlock, state);
}

fn existing(paths: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    paths.into_iter().filter(|p| p.exists()).collect()
}

/// A ruleset built ahead of time by a pre-forked worker (see
/// [`prepare`]), waiting for the plugin's library rule.
static PREPARED: Mutex<Option<Result<RulesetCreated, String>>> = Mutex::new(None);

/// Builds the ruleset with every rule but the library's, to be finished and
/// enforced by [`apply`] once the plugin is known: a pre-forked worker does
/// this before it is assigned (in its final filesystem view, since rules name
/// inodes), which takes most of Landlock's cost off the restart path.
pub fn prepare(plan: &Plan<'_>) {
    if plan.wants(Layer::Landlock) && plan.simulated_unavailable(Layer::Landlock).is_none() {
        *PREPARED.lock().unwrap_or_else(|e| e.into_inner()) = Some(ruleset(plan));
    }
}

fn restrict(plan: &Plan<'_>) -> Result<RulesetStatus, String> {
    let err = |e: landlock::RulesetError| e.to_string();
    let prepared = PREPARED.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut created = match prepared {
        Some(r) => r?,
        None => ruleset(plan)?,
    };
    if let Some(library) = &plan.library {
        // The library's own inode, reached through its descriptor.
        created = created
            .add_rule(PathBeneath::new(
                library.as_fd(),
                AccessFs::ReadFile | AccessFs::Execute,
            ))
            .map_err(err)?;
    }
    let status = created.restrict_self().map_err(err)?;
    Ok(status.ruleset)
}

/// Rules for the policy's granted paths, each opened following no symbolic
/// link (see `mounts::open_grant`); a path that cannot be opened that way
/// gets no rule, so it stays denied.
fn grants(
    paths: &[PathBuf],
    access: landlock::BitFlags<AccessFs>,
) -> impl Iterator<Item = Result<PathBeneath<std::os::fd::OwnedFd>, landlock::RulesetError>> + '_ {
    paths
        .iter()
        .filter_map(|p| super::mounts::open_grant(p).ok())
        .map(move |fd| {
            // A file takes only the rights that apply to files (as
            // `path_beneath_rules` does), or the rule counts as downgraded.
            let is_dir = nix::sys::stat::fstat(fd.as_raw_fd())
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .unwrap_or(false);
            let access = if is_dir {
                access
            } else {
                access & AccessFs::from_file(TARGET)
            };
            Ok(PathBeneath::new(fd, access))
        })
}

/// The ruleset with every rule that does not depend on the plugin library.
fn ruleset(plan: &Plan<'_>) -> Result<RulesetCreated, String> {
    let err = |e: landlock::RulesetError| e.to_string();
    let read = AccessFs::from_read(TARGET);
    let all = AccessFs::from_all(TARGET);

    let mut readable: Vec<PathBuf> = [
        "/usr",
        "/lib",
        "/lib64",
        "/lib32",
        "/libx32",
        "/etc/ld.so.cache",
        "/etc/localtime",
        "/proc",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    // The library's path: its copy in a view without /proc, or the file itself
    // where there is no mount namespace.
    readable.extend(plan.library_path.clone());
    if !matches!(plan.policy.net, NetPolicy::None) {
        readable.extend(
            [
                "/etc/resolv.conf",
                "/etc/hosts",
                "/etc/nsswitch.conf",
                "/etc/ssl",
                "/etc/ca-certificates",
            ]
            .map(PathBuf::from),
        );
    }
    let readable_dev = ["/dev/random", "/dev/urandom"].map(PathBuf::from);
    let writable: Vec<PathBuf> = ["/tmp", "/dev/shm", "/dev/null", "/dev/zero", "/dev/full"]
        .map(PathBuf::from)
        .into();

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(err)?;
    if !matches!(plan.policy.net, NetPolicy::All) {
        ruleset = ruleset.handle_access(AccessNet::from_all(TARGET)).map_err(err)?;
    }
    let mut created = ruleset
        .scope(Scope::from_all(TARGET))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(existing(readable), read))
        .map_err(err)?
        .add_rules(path_beneath_rules(existing(readable_dev), read))
        .map_err(err)?
        .add_rules(path_beneath_rules(existing(writable), all))
        .map_err(err)?
        .add_rules(grants(&plan.read, read))
        .map_err(err)?
        .add_rules(grants(&plan.write, all))
        .map_err(err)?;
    if let NetPolicy::ConnectTcp(ports) = &plan.policy.net {
        for &port in ports {
            created = created
                .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                .map_err(err)?;
        }
    }
    Ok(created)
}
