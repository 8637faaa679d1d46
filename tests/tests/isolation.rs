//! Isolation hygiene of the worker process: scrubbed environment, no inherited
//! descriptors, `no_new_privs`, its own process group.

use std::collections::BTreeMap;

use bulkhead_host::Supervisor;
use bulkhead_tests::{fixtures, open_fds, plugin_process, spec, supervisor};

fn environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn environment_is_scrubbed_to_the_allowlist() {
    // This test process has plenty of variables (cargo sets CARGO_*).
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic").env("PLUGIN_MODE", "strict")).unwrap();
    let env = environ(plugin.info().worker_pid);
    let allowed = ["PATH", "LANG", "LC_ALL", "TZ", "PLUGIN_MODE"];
    for k in env.keys() {
        assert!(allowed.contains(&k.as_str()), "unexpected variable {k} in the worker");
    }
    assert_eq!(env.get("PLUGIN_MODE").map(String::as_str), Some("strict"));
    // Not the host's PATH: a fixed neutral one.
    assert_eq!(env.get("PATH").map(String::as_str), Some(bulkhead_host::WORKER_PATH));

    // The allowlist can be extended.
    let sup = Supervisor::builder()
        .worker_path(&fixtures().worker)
        .allow_env("CARGO_PKG_NAME")
        .build()
        .unwrap();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let env = environ(plugin.info().worker_pid);
    assert_eq!(env.get("CARGO_PKG_NAME").map(String::as_str), Some("bulkhead-tests"));
}

#[test]
fn worker_inherits_no_descriptors_beyond_stdio_and_its_socket() {
    // Leave an inheritable descriptor open in the host to prove it is not passed on.
    let leaky = std::fs::File::open("/proc/self/status").unwrap();
    let leaky_fd = {
        use std::os::fd::AsRawFd;
        let fd = nix::fcntl::fcntl(leaky.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD(100)).unwrap();
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        fd
    };
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let outer = plugin.info().worker_pid;
    let fds = open_fds(plugin_process(outer));
    // The socket, plus the duplicate the plugin threads' callback channel uses,
    // the region's doorbell (an eventfd the host made; the region itself is
    // mapped, its descriptor closed), and the plugin library, opened before
    // the sandbox and loaded through it.
    let doorbells = usize::from(bulkhead_tests::transport() == bulkhead_host::Transport::SharedMemory);
    assert_eq!(
        fds.len(),
        6 + doorbells,
        "stdin, stdout, stderr, the socket (twice), the doorbell, the library: {fds:?}"
    );
    let eventfds = fds.iter().filter(|(_, t)| t == "anon_inode:[eventfd]").count();
    assert_eq!(eventfds, doorbells, "{fds:?}");
    let sockets: Vec<_> = fds.iter().filter(|(_, t)| t.starts_with("socket:")).collect();
    assert_eq!(sockets.len(), 2, "{fds:?}");
    assert_eq!(sockets[0].1, sockets[1].1, "both are the worker's own socket: {fds:?}");
    let lib = fixtures().lib("fx-basic");
    assert!(fds.iter().any(|(_, t)| std::path::Path::new(t) == lib), "{fds:?}");
    assert_eq!(fds[0], (0, "/dev/null".to_string()));
    assert!(
        fds[1].1.starts_with("pipe:") && fds[2].1.starts_with("pipe:"),
        "{fds:?}"
    );
    assert!(sockets.iter().all(|(fd, _)| *fd > 2), "{fds:?}");
    // The sandbox's outer process (and init) keep only their own status pipes,
    // once they have run: on a busy machine the load can finish before the
    // freshly forked outer process closed what it inherited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let outer_fds = open_fds(outer);
        if outer_fds.len() <= 2 && outer_fds.iter().all(|(_, t)| t.starts_with("pipe:")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{outer_fds:?}");
        std::thread::yield_now();
    }
    nix::unistd::close(leaky_fd).unwrap();
}

#[test]
fn no_new_privs_and_own_process_group() {
    let sup = supervisor();
    let plugin = sup.load(spec("fx-basic")).unwrap();
    let pid = plugin.info().worker_pid;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let (ppid, pgrp): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    assert_eq!(ppid, std::process::id(), "the worker is our child");
    assert_eq!(pgrp, pid, "the worker leads its own process group");
    // The process that runs the plugin: no_new_privs, same process group.
    let inner = plugin_process(pid);
    let status = std::fs::read_to_string(format!("/proc/{inner}/status")).unwrap();
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    let stat = std::fs::read_to_string(format!("/proc/{inner}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    assert_eq!(
        fields[2].parse::<u32>().unwrap(),
        pid,
        "the plugin's process stays in the worker's group"
    );
}
