//! A host that first puts itself into one of the environments bulkhead is
//! deployed in, then loads `fx-hostile` and reports what held. Run as a child
//! of `tests/environments.rs` (the restrictions it applies to itself are
//! permanent, and must not touch the test process).
//!
//! Usage: `env_host <worker> <fx-hostile.so> <env> <strict|best-effort|none> <secret-file> <tmp-secret-file>`
//! (two files of the host's that no grant covers; the second in `/tmp`)
//! where `env` is:
//! - `plain`: as started;
//! - `no-userns`: a seccomp filter refuses `unshare`/`clone` with
//!   `CLONE_NEWUSER` (EPERM) and `clone3` (ENOSYS, so libc falls back to
//!   `clone`) — the shape of Docker's default profile for a container without
//!   `CAP_SYS_ADMIN`;
//! - `userns-map-refused`: a Landlock ruleset on the host lets it (and so its
//!   workers) write files anywhere but under `/proc`: a new user namespace is
//!   *created*, and writing its `setgroups`/`uid_map` is then refused by a
//!   security module — the shape of Ubuntu 23.10+'s AppArmor restriction,
//!   where `unshare` succeeds and the unconfined namespace's first privileged
//!   step is denied. (A host in a user namespace without a uid mapping, the
//!   other candidate, does not give this shape: the kernel refuses `unshare`
//!   itself there, EPERM, like `no-userns`.)
//!
//! Prints `refused <layer>: <reason>` or `loaded`, then for a loaded plugin one
//! `layer <name> <enforced|partial|unavailable|off>` line per layer and one
//! `attack <name> <blocked|succeeded>` line per attack.

use std::io::Write;

use bulkhead_host::{Layer, LayerState, LoadError, LoadFailure, PluginSpec, Sandbox, Supervisor};
use bulkhead_tests::hostile;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

fn out(line: String) {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}").unwrap();
    o.flush().unwrap();
}

/// Refuses new user namespaces the way a container runtime's profile does.
fn forbid_user_namespaces() {
    let newuser = libc::CLONE_NEWUSER as u64;
    let flag_rule = |arg: u8| {
        SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(newuser),
            newuser,
        )
        .unwrap()])
        .unwrap()
    };
    let filter = SeccompFilter::new(
        [
            (libc::SYS_unshare, vec![flag_rule(0)]),
            (libc::SYS_clone, vec![flag_rule(0)]),
        ]
        .into_iter()
        .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    for f in [filter, clone3] {
        let program: BpfProgram = f.try_into().unwrap();
        seccompiler::apply_filter(&program).unwrap();
    }
}

/// Lets this process and its descendants write files everywhere but under
/// `/proc` (Landlock: write access granted beneath every other top-level entry).
fn refuse_proc_writes() {
    use landlock::{AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus};
    let write = AccessFs::WriteFile;
    let mut ruleset = Ruleset::default().handle_access(write).unwrap().create().unwrap();
    for entry in std::fs::read_dir("/").unwrap() {
        let path = entry.unwrap().path();
        if path == std::path::Path::new("/proc") {
            continue;
        }
        if let Ok(fd) = PathFd::new(&path) {
            ruleset = ruleset.add_rule(PathBeneath::new(fd, write)).unwrap();
        }
    }
    let status = ruleset.restrict_self().unwrap();
    assert_eq!(status.ruleset, RulesetStatus::FullyEnforced);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [worker, lib, env, mode, secret_file, tmp_file] = &args[..] else {
        panic!("usage: env_host <worker> <lib> <env> <strict|best-effort|none> <secret-file> <tmp-secret-file>");
    };
    match env.as_str() {
        "plain" => {}
        "no-userns" => forbid_user_namespaces(),
        "userns-map-refused" => refuse_proc_writes(),
        other => panic!("env {other}"),
    }
    let sandbox = match mode.as_str() {
        "strict" => Sandbox::strict(),
        "best-effort" => Sandbox::best_effort(),
        "none" => Sandbox::none(),
        other => panic!("mode {other}"),
    };
    let sup = Supervisor::builder().worker_path(worker).build().expect("worker");
    let plugin = match sup.load(PluginSpec::new(lib).sandbox(sandbox)) {
        Ok(p) => p,
        Err(LoadError::Rejected {
            reason: LoadFailure::Sandbox { layer, reason },
            ..
        }) => {
            out(format!("refused {layer}: {reason}"));
            return;
        }
        Err(e) => panic!("load failed otherwise: {e:?}"),
    };
    out("loaded".into());
    let report = plugin.info().sandbox;
    for layer in Layer::ALL {
        let state = match report.state(layer) {
            LayerState::Enforced => "enforced",
            LayerState::Partial(_) => "partial",
            LayerState::Unavailable(_) => "unavailable",
            LayerState::Off => "off",
        };
        out(format!("layer {layer} {state}"));
    }
    let me = std::process::id() as i32;
    let verdict = |ok: bool| if ok { "succeeded" } else { "blocked" };
    // Reading a file of the host's that no grant covers.
    let read = plugin.call::<_, Vec<u8>>(hostile::READ_FILE, &(secret_file.clone(),));
    out(format!("attack read-host-file {}", verdict(read.is_ok())));
    let read = plugin.call::<_, Vec<u8>>(hostile::READ_FILE, &(tmp_file.clone(),));
    out(format!("attack read-host-tmp-file {}", verdict(read.is_ok())));
    // Reaching the host with a signal (0: only the permission check).
    let r: i64 = plugin.call(hostile::KILL_PID, &(me, 0)).unwrap();
    out(format!("attack signal-host {}", verdict(r == 0)));
    // Seeing the host's processes.
    let r: i64 = plugin
        .call(hostile::OPEN_PATH, &(format!("/proc/{me}/status"), false))
        .unwrap();
    out(format!("attack see-host-process {}", verdict(r >= 0)));
    // Reading the host's environment through /proc.
    let env = plugin.call::<_, Vec<u8>>(hostile::READ_FILE, &(format!("/proc/{me}/environ"),));
    out(format!("attack read-host-environ {}", verdict(env.is_ok())));
    // Creating a namespace of its own.
    let r: i64 = plugin.call(hostile::NEW_NAMESPACE, &()).unwrap();
    out(format!("attack new-namespace {}", verdict(r >= 0)));
    // The worker's real parent is visible (no pid namespace of its own).
    let ppid: i64 = plugin.call(hostile::PPID, &()).unwrap();
    out(format!("attack see-real-parent {}", verdict(ppid == i64::from(me))));
}
