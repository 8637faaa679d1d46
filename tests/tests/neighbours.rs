//! Two plugins of one supervisor, side by side (`fx-neighbour`): nothing one
//! worker does in what its namespaces scope (sockets, abstract names, the
//! cgroup root) is visible to the other, and a worker's own `/proc` tells it
//! nothing about the host (its command line, environment, masked entries).
//! Each test runs the move under `Sandbox::none()`, where it works, and under
//! the default sandbox, where it must not: every test is able to fail.

use std::time::{Duration, Instant};

use bulkhead_host::{Plugin, Sandbox, Supervisor, WORKER_PATH};
use bulkhead_tests::{fixtures, neighbour, plugin_process, spec, Scratch};

const GENEROUS: Duration = Duration::from_secs(20);

fn both() -> [(&'static str, Sandbox); 2] {
    [("strict", Sandbox::strict()), ("none", Sandbox::none())]
}

/// A supervisor with or without fork-servers: both spawn paths create the
/// namespaces (a forked worker its own share, an exec'd worker all of them).
fn supervisor(fork_server: bool) -> Supervisor {
    Supervisor::builder()
        .worker_path(&fixtures().worker)
        .fork_server(fork_server)
        .build()
        .expect("worker binary exists")
}

fn neighbour(sup: &Supervisor, sandbox: &Sandbox) -> Plugin {
    let spec = spec("fx-neighbour").sandbox(sandbox.clone());
    // With a fork-server, prefer a pre-forked blank (the path loads and
    // restarts take when one is ready).
    let _ = sup.wait_for_blank(&spec, Instant::now() + GENEROUS);
    sup.load(spec).expect("fx-neighbour loads")
}

fn read(p: &Plugin, path: &str) -> Result<Vec<u8>, String> {
    p.call::<_, Vec<u8>>(neighbour::READ, &(path.to_string(),))
        .map_err(|e| e.to_string())
}

/// What the host can read of a worker's `/proc/<pid>/<entry>`: root always
/// can; a non-root host cannot look into a sandboxed worker (another user
/// namespace's process, not dumpable) — `None` then, and the test rests on
/// what the plugins themselves see.
fn host_view<T>(pid: u32, entry: &str, read: impl Fn(&str) -> std::io::Result<T>) -> Option<T> {
    match read(&format!("/proc/{pid}/{entry}")) {
        Ok(v) => Some(v),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !bulkhead_tests::is_root() => None,
        Err(e) => panic!("/proc/{pid}/{entry}: {e}"),
    }
}

fn net_ns(pid: u32) -> Option<std::path::PathBuf> {
    host_view(pid, "ns/net", |p| std::fs::read_link(p))
}

#[test]
fn sockets_one_plugin_holds_are_not_listed_for_another() {
    for fork_server in [true, false] {
        let sup = supervisor(fork_server);
        for (name, sandbox) in both() {
            let what = format!("{name}, fork-server {fork_server}");
            let a = neighbour(&sup, &sandbox);
            let b = neighbour(&sup, &sandbox);
            let before: i64 = b.call(neighbour::UNIX_SOCKETS, &()).unwrap();
            assert!(before >= 0, "{what}: /proc/net/unix readable: {before}");
            // 300 pairs: 600 sockets, a signal no background noise hides.
            let made: i64 = a.call(neighbour::HOLD_SOCKETPAIRS, &(300u32,)).unwrap();
            assert_eq!(made, 300, "{what}");
            let after: i64 = b.call(neighbour::UNIX_SOCKETS, &()).unwrap();
            let (pa, pb) = (plugin_process(a.info().worker_pid), plugin_process(b.info().worker_pid));
            // A's sockets by inode (where the host may look), and the ones of
            // them B's /proc/net/unix lists: exact, whatever else runs on
            // the machine.
            let listed = String::from_utf8(read(&b, "/proc/net/unix").unwrap()).unwrap();
            let listed: std::collections::HashSet<&str> = listed
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(6))
                .collect();
            let seen_by_b = socket_inodes(pa).map(|own| own.iter().filter(|i| listed.contains(i.as_str())).count());
            if name == "none" {
                assert_eq!(net_ns(pa).unwrap(), net_ns(std::process::id()).unwrap(), "{what}");
                // 600 held, plus the worker's own (its socket to the host).
                assert!(
                    seen_by_b.is_some_and(|n| n >= 600),
                    "{what}: without a sandbox B lists A's sockets: {seen_by_b:?}"
                );
                // (No count comparison here: in the host's namespace the
                // count also moves with whatever else closes sockets, e.g.
                // the previous round's workers exiting after their handles
                // were dropped: 620 -> 619 was seen with A's 600 listed.)
                assert!(after >= 0, "{what}: /proc/net/unix readable: {after}");
            } else {
                if let (Some(na), Some(nb)) = (net_ns(pa), net_ns(pb)) {
                    assert_ne!(na, nb, "{what}: each worker its own network namespace");
                    assert_ne!(Some(na), net_ns(std::process::id()), "{what}");
                }
                assert!(
                    matches!(seen_by_b, None | Some(0)),
                    "{what}: B lists {seen_by_b:?} of A's sockets"
                );
                assert_eq!(
                    after, before,
                    "{what}: B's /proc/net/unix does not change with A's sockets"
                );
                assert!(after < 100, "{what}: B lists only its own sockets: {after}");
            }
        }
    }
}

/// The inodes of the Unix sockets process `pid` holds (`None`: the host may
/// not look, see [`host_view`]).
fn socket_inodes(pid: u32) -> Option<Vec<String>> {
    let fds = host_view(pid, "fd", |p| std::fs::read_dir(p))?;
    Some(
        fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|l| {
                let l = l.to_str()?;
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect(),
    )
}

#[test]
fn an_abstract_name_one_plugin_binds_is_not_listed_for_another() {
    let sup = supervisor(true);
    for (name, sandbox) in both() {
        let a = neighbour(&sup, &sandbox);
        let b = neighbour(&sup, &sandbox);
        let tag = format!("bulkhead-neighbour-{name}-{}", std::process::id());
        // The default policy may refuse `bind` outright; if it allows it, the
        // name must still stay in A's own namespace.
        let bound: i64 = a.call(neighbour::BIND_ABSTRACT, &(tag.clone(),)).unwrap();
        let listing = read(&b, "/proc/net/unix").unwrap();
        let seen = String::from_utf8_lossy(&listing).contains(&format!("@{tag}"));
        if name == "none" {
            assert_eq!(bound, 0);
            assert!(seen, "without a sandbox B reads A's abstract name");
        } else {
            assert!(!seen, "B does not see A's abstract name (bind gave {bound})");
        }
    }
}

/// `(hierarchy, path)` of every line of a `/proc/*/cgroup` file.
fn cgroup_paths(text: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| {
            let (head, path) = l.rsplit_once(':')?;
            Some((head.to_string(), path.to_string()))
        })
        .collect()
}

#[test]
fn the_worker_does_not_see_the_hosts_cgroup_paths() {
    let host = cgroup_paths(&std::fs::read("/proc/self/cgroup").unwrap());
    assert!(!host.is_empty());
    for fork_server in [true, false] {
        let sup = supervisor(fork_server);
        for (name, sandbox) in both() {
            let p = neighbour(&sup, &sandbox);
            let inside = cgroup_paths(&read(&p, "/proc/self/cgroup").unwrap());
            if name == "none" {
                // The worker is in the host's cgroups (a child stays in its
                // parent's) and sees the same paths.
                assert_eq!(inside, host, "fork-server {fork_server}");
            } else {
                assert_eq!(inside.len(), host.len(), "fork-server {fork_server}: {inside:?}");
                for (hierarchy, path) in &inside {
                    assert_eq!(path, "/", "fork-server {fork_server}: {hierarchy} shows {path}");
                }
                assert_eq!(
                    p.info().sandbox.state(bulkhead_host::Layer::CgroupNs),
                    &bulkhead_host::LayerState::Enforced
                );
            }
        }
    }
}

/// `/proc` files that describe the host and are masked in the sandbox.
const MASKED: &[&str] = &[
    "/proc/cmdline",
    "/proc/kallsyms",
    "/proc/loadavg",
    "/proc/sys/kernel/random/boot_id",
    "/proc/timer_list",
    "/proc/config.gz",
    "/proc/key-users",
];

#[test]
fn proc_entries_about_the_host_are_blank_in_the_sandbox() {
    let sup = supervisor(true);
    let strict = neighbour(&sup, &Sandbox::strict());
    let none = neighbour(&sup, &Sandbox::none());
    let mut checked = 0;
    for path in MASKED {
        // Only what this host can read itself (a non-root host cannot read
        // some of them anyway).
        let Ok(host) = std::fs::read(path) else { continue };
        if host.is_empty() {
            continue;
        }
        checked += 1;
        let open = read(&none, path).unwrap_or_else(|e| panic!("{path} under none(): {e}"));
        assert!(!open.is_empty(), "{path} has content without a sandbox");
        match read(&strict, path) {
            Ok(masked) => assert!(
                masked.is_empty(),
                "{path} is blank in the sandbox: {} bytes",
                masked.len()
            ),
            Err(e) => panic!("{path}: reading the mask is not an error: {e}"),
        }
    }
    assert!(
        checked >= 3,
        "at least the kernel command line, boot id and load are checked"
    );
    // Directories about the host's hardware are empty.
    for dir in ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/driver"] {
        let Ok(host) = std::fs::read_dir(dir) else { continue };
        if host.count() == 0 {
            continue;
        }
        // A file that exists in each of them on Linux, or any at all.
        let probe = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path());
        if let Some(file) = probe {
            let file = file.to_string_lossy().into_owned();
            assert!(read(&none, &file).is_ok(), "{file} readable without a sandbox");
            assert!(read(&strict, &file).is_err(), "{file} gone in the sandbox");
        }
    }
    // `/proc/sys` stays readable (bound read-only).
    let hostname = read(&strict, "/proc/sys/kernel/hostname").unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname).trim(), "bulkhead");
}

#[test]
fn the_workers_command_line_and_environment_carry_no_host_pid_and_a_neutral_path() {
    let host_pid = std::process::id().to_string();
    for fork_server in [true, false] {
        let sup = supervisor(fork_server);
        for (name, sandbox) in both() {
            let what = format!("{name}, fork-server {fork_server}");
            let p = neighbour(&sup, &sandbox);
            let seen: String = p.call(neighbour::CMDLINE_ENVIRON, &()).unwrap();
            // (A sandboxed worker may not be able to read its own environ —
            // it is not dumpable after changing identity — which is fine.)
            let (cmdline, environ) = seen.split_once('\n').unwrap();
            assert!(!cmdline.is_empty(), "{what}: {seen:?}");
            if name == "none" {
                assert!(!environ.is_empty(), "{what}: {seen:?}");
            }
            for token in seen.split([' ', '\n', '=']) {
                assert_ne!(token, host_pid, "{what}: the host's pid in {seen:?}");
            }
            assert!(!seen.contains("parent-pid"), "{what}: {seen:?}");
            assert!(!seen.contains(bulkhead_shared_env()), "{what}: {seen:?}");
            // The environment as the host sees it.
            let Some(raw) = host_view(plugin_process(p.info().worker_pid), "environ", |p| std::fs::read(p)) else {
                continue;
            };
            let environ = String::from_utf8_lossy(&raw).replace('\0', " ");
            assert!(!environ.contains(bulkhead_shared_env()), "{what}: {environ:?}");
            for token in environ.split([' ', '=']) {
                assert_ne!(token, host_pid, "{what}: the host's pid in {environ:?}");
            }
            let path = environ.split(' ').find_map(|kv| kv.strip_prefix("PATH="));
            assert_eq!(path, Some(WORKER_PATH), "{what}: {environ:?}");
        }
    }
}

/// The variable the host passes its pid in (the worker erases it).
fn bulkhead_shared_env() -> &'static str {
    "BULKHEAD_PARENT_PID"
}

#[test]
fn a_symlink_one_plugin_plants_does_not_redirect_anothers_grant() {
    use std::os::unix::fs::PermissionsExt;
    let sup = supervisor(true);
    // B's layers: every one; and Landlock without the mount namespace (the
    // grant then rests on Landlock's rule alone).
    let cases = [
        ("strict", Sandbox::strict()),
        (
            "landlock only",
            Sandbox::strict().without(bulkhead_host::Layer::MountNs),
        ),
        ("none", Sandbox::none()),
    ];
    for (name, sandbox) in cases {
        let shared = Scratch::new("neighbours", &format!("shared-{}", name.replace(' ', "-")));
        // Writable for a root host's workers too (they run as an unprivileged uid).
        std::fs::set_permissions(&shared.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        // Outside /tmp: a worker without a mount namespace may use the
        // host's /tmp.
        let secrets = Scratch::under(
            &bulkhead_tests::host_scratch_root(),
            "neighbours",
            &format!("secret-{}", name.replace(' ', "-")),
        );
        let secret = secrets.0.join("secret");
        std::fs::write(&secret, b"the host's secret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let planted = shared.0.join("config");

        // A may write the shared directory, and plants a link in it.
        let a = neighbour(&sup, &sandbox.clone().allow_write(&shared.0));
        let rc: i64 = a
            .call(
                neighbour::SYMLINK,
                &(
                    secret.to_string_lossy().into_owned(),
                    planted.to_string_lossy().into_owned(),
                ),
            )
            .unwrap();
        assert_eq!(rc, 0, "{name}: A plants the link");

        // B may read what the host believes is a config file there.
        let b = sup.load(spec("fx-neighbour").sandbox(sandbox.clone().allow_read(&planted)));
        let path = planted.to_string_lossy().into_owned();
        match name {
            "none" => {
                let b = b.unwrap();
                assert_eq!(
                    read(&b, &path).unwrap(),
                    b"the host's secret",
                    "without a sandbox the link redirects"
                );
            }
            "strict" => {
                let err = b
                    .expect_err("a grant through a symbolic link fails the load")
                    .to_string();
                assert!(err.contains("symbolic link"), "{err}");
            }
            _ => {
                let b = b.expect("loads: Landlock alone refuses the rule, not the load");
                let got = read(&b, &path);
                assert!(got.is_err(), "{name}: B does not read the secret: {got:?}");
            }
        }
    }
}

#[test]
fn a_non_root_host_holds_against_the_same_moves() {
    if !bulkhead_tests::is_root() {
        eprintln!("skipped: needs root to start a child host under an unused uid");
        return;
    }
    bulkhead_tests::rerun_as_non_root(
        61_041,
        &[
            "sockets_one_plugin_holds_are_not_listed_for_another",
            "an_abstract_name_one_plugin_binds_is_not_listed_for_another",
            "the_worker_does_not_see_the_hosts_cgroup_paths",
            "proc_entries_about_the_host_are_blank_in_the_sandbox",
            "the_workers_command_line_and_environment_carry_no_host_pid_and_a_neutral_path",
            "a_symlink_one_plugin_plants_does_not_redirect_anothers_grant",
        ],
    );
}
