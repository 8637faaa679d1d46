//! The environments bulkhead is deployed in, as a matrix: each cell runs a
//! child host (`env_host`) that puts itself into the environment, loads
//! `fx-hostile` under strict, best-effort or no sandbox, and reports the
//! layers and six attacks on the host. Each cell either holds or refuses to
//! load with the documented error; best effort states exactly which attacks
//! then still fail and which succeed.
//!
//! Environments: plain; no user namespaces (a seccomp filter refusing
//! `CLONE_NEWUSER`, Docker's default profile's shape); user namespace created
//! but its setup refused (a Landlock rule on the host denying writes under
//! `/proc`, AppArmor's shape) — each as a root host and as a non-root host
//! (uid 61000, the child host started with that uid). Root hosts need this
//! test to run as root (CI does); the non-root cells are skipped otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_tests::fixtures;

/// An unused uid/gid for the non-root host.
const NOBODY_ELSE: u32 = 61000;

/// Files of the host's that no grant covers: one in a directory of its own
/// under `/var/tmp` (outside `/tmp`, which Landlock grants whole where there is
/// no mount namespace — and where a fresh checkout often sits), one in `/tmp`;
/// both world-readable. Removed on drop.
struct Secrets {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Secrets {
    fn new(tag: &str) -> Secrets {
        let dir = PathBuf::from("/var/tmp").join(format!("bulkhead-env-secrets-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = std::env::temp_dir().join(format!("bulkhead-env-secret-{tag}-{}", std::process::id()));
        for f in [dir.join("secret"), tmp.clone()] {
            std::fs::write(&f, b"secret").unwrap();
            std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        }
        Secrets { dir, tmp }
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Runs one cell; returns the child host's output lines.
fn cell(secrets: &Secrets, uid: Option<u32>, env: &str, mode: &str) -> Vec<String> {
    let fx = fixtures();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_env_host"));
    cmd.arg(&fx.worker)
        .arg(fx.lib("fx-hostile"))
        .args([env, mode])
        .arg(secrets.dir.join("secret"))
        .arg(&secrets.tmp)
        .current_dir("/");
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, uid);
    }
    let out = cmd.output().expect("run env_host");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "env_host {env} {mode} (uid {uid:?}) failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

fn layers(states: [&str; 9]) -> Vec<String> {
    let names = [
        "user-ns", "pid-ns", "net-ns", "mount-ns", "ipc-ns", "uts-ns", "cgroup-ns", "landlock", "seccomp",
    ];
    names
        .iter()
        .zip(states)
        .map(|(n, s)| format!("layer {n} {s}"))
        .collect()
}

fn attacks(outcomes: [&str; 7]) -> Vec<String> {
    let names = [
        "read-host-file",
        "read-host-tmp-file",
        "signal-host",
        "see-host-process",
        "read-host-environ",
        "new-namespace",
        "see-real-parent",
    ];
    names
        .iter()
        .zip(outcomes)
        .map(|(n, o)| format!("attack {n} {o}"))
        .collect()
}

fn loaded(l: [&str; 9], a: [&str; 7]) -> Vec<String> {
    let mut v = vec!["loaded".to_string()];
    v.extend(layers(l));
    v.extend(attacks(a));
    v
}

const ALL_ENFORCED: [&str; 9] = ["enforced"; 9];
const ALL_BLOCKED: [&str; 7] = ["blocked"; 7];

/// A strict load's refusal: one line naming the layer, the kernel's answer and
/// the remedy.
fn assert_refused(lines: &[String], starts: &str, remedy: &[&str]) {
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(starts), "{lines:?}");
    for r in remedy {
        assert!(lines[0].contains(r), "no {r:?} in {lines:?}");
    }
    assert!(lines[0].contains("Sandbox::best_effort()"), "{lines:?}");
}

/// Every environment, for the host uid `uid` (`None`: the test's own).
fn matrix(uid: Option<u32>) {
    let s = Secrets::new(if uid.is_some() { "child-uid" } else { "own-uid" });
    // Plain: everything holds; without a sandbox every attack works (the
    // attacks can succeed, so "blocked" means something).
    assert_eq!(cell(&s, uid, "plain", "strict"), loaded(ALL_ENFORCED, ALL_BLOCKED));
    assert_eq!(cell(&s, uid, "plain", "none"), loaded(["off"; 9], ["succeeded"; 7]));

    // No user namespaces (container seccomp profile).
    assert_refused(
        &cell(&s, uid, "no-userns", "strict"),
        "refused user-ns: unshare(CLONE_NEWUSER): EPERM",
        &["seccomp profile", "--security-opt seccomp=", "RestrictNamespaces="],
    );
    let un = "unavailable";
    assert_eq!(
        cell(&s, uid, "no-userns", "best-effort"),
        loaded(
            [un, un, un, un, un, un, un, "enforced", "enforced"],
            // Landlock keeps the host's files (but not the host's /tmp, which
            // without a mount namespace is the sandbox's /tmp), signals and
            // environ out, seccomp new namespaces; the host's processes and
            // the worker's real parent are visible.
            [
                "blocked",
                "succeeded",
                "blocked",
                "succeeded",
                "blocked",
                "blocked",
                "succeeded"
            ]
        )
    );

    // A user namespace is created, its setup is refused (AppArmor's shape).
    assert_refused(
        &cell(&s, uid, "userns-map-refused", "strict"),
        "refused user-ns: writing /proc/self/",
        &["AppArmor", "userns,"],
    );
    assert_eq!(
        cell(&s, uid, "userns-map-refused", "best-effort"),
        loaded(
            // The worker holds every capability in its unmapped user
            // namespace, so the pid, net, ipc and uts namespaces are created;
            // the mount namespace's view is not built, so the host's /proc
            // and /tmp show; the cgroup namespace is created too; the IPC namespace's small System V limits cannot
            // be written (writes under /proc are refused), so it is partial.
            [un, "enforced", "enforced", un, "partial", "enforced", "enforced", "enforced", "enforced"],
            [
                "blocked",
                "succeeded",
                "blocked",
                "succeeded",
                "blocked",
                "blocked",
                "blocked"
            ]
        )
    );
}

#[test]
fn root_host_holds_or_refuses_in_every_environment() {
    if !is_root() {
        eprintln!("skipped: needs a root host (CI runs as root)");
        return;
    }
    matrix(None);
}

#[test]
fn non_root_host_holds_or_refuses_in_every_environment() {
    if !is_root() {
        // Already not root: the root test skipped, and this host is the non-root host.
        matrix(None);
        return;
    }
    // A child host under an unused uid; it must be able to read the worker
    // and the fixture library (the target directory is world-readable).
    assert!(readable_by_all(&fixtures().worker), "worker not world-readable");
    matrix(Some(NOBODY_ELSE));
}

fn readable_by_all(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o005 == 0o005)
        .unwrap_or(false)
}
