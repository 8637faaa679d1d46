//! Test support for bulkhead's integration tests: builds the worker binary and
//! the fixture plugins once per test process (`cargo test` alone does not
//! produce `.so` files or other packages' binaries), and offers deadline-bounded
//! waits on process state.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bulkhead_host::{PluginSpec, Supervisor, Transport};

pub mod client_checks;
pub mod deny;

/// Every fixture package built for the tests.
pub const FIXTURES: &[&str] = &[
    "fx-basic",
    "fx-arena",
    "fx-greeter",
    "fx-configured",
    "fx-liar",
    "fx-dlopen-crash",
    "fx-dlopen-hang",
    "fx-noregistry",
    "fx-old",
    "fx-hostile",
    "fx-stream",
    "fx-host",
    "fx-hog",
    "fx-neighbour",
];

/// Slots of the `Basic` interface (PluginAllocated).
pub mod basic {
    pub const GREET: u32 = 0;
    pub const ADD: u32 = 1;
    pub const ECHO_RAW: u32 = 2;
    pub const ECHO: u32 = 3;
    pub const FAIL: u32 = 4;
    pub const PANIC: u32 = 5;
    pub const ABORT: u32 = 6;
    pub const SEGFAULT: u32 = 7;
    pub const EXIT: u32 = 8;
    pub const SLEEP_MS: u32 = 9;
    pub const SPIN: u32 = 10;
    pub const STACK_OVERFLOW: u32 = 11;
    pub const ALLOC: u32 = 12;
    pub const FORK_SLEEPER: u32 = 13;
    pub const PRINT: u32 = 14;
    pub const PID: u32 = 15;
    pub const SPAWN_THREAD: u32 = 16;
    pub const CLOSE_FDS: u32 = 17;
    pub const GARBAGE_FDS: u32 = 18;
    pub const SIGSTOP: u32 = 19;
    pub const IGNORE_TERM_SPIN: u32 = 20;
    pub const FORK_HOLDER: u32 = 21;
    pub const WORK: u32 = 22;
    pub const ANNOUNCE_THEN_SLEEP: u32 = 23;
    pub const INJECT: u32 = 24;
    pub const CLOSE_SOCKET_AND_SLEEP: u32 = 25;
    pub const SHM_FORGE: u32 = 26;
    pub const CRASH_WRITE: u32 = 27;
    pub const STDERR_RAW: u32 = 28;
    pub const CRASH_WITH_LOADER_LOCKED: u32 = 29;
    pub const COUNT: u32 = 30;
}

/// Slots of the `Hostile` interface (fx-hostile: one attack per method).
pub mod hostile {
    pub const KILL_PID: u32 = 0;
    pub const KILL_PARENT: u32 = 1;
    pub const READ_FILE: u32 = 2;
    pub const WRITE_FILE: u32 = 3;
    pub const WRITE_MEM: u32 = 4;
    pub const PTRACE_SEIZE: u32 = 5;
    pub const EXEC_SHELL: u32 = 6;
    pub const TCP_CONNECT: u32 = 7;
    pub const TCP_LISTEN: u32 = 8;
    pub const SETSID_ESCAPE: u32 = 9;
    pub const FORK_BOMB: u32 = 10;
    pub const FILL_TMP: u32 = 11;
    pub const CAP_EFF: u32 = 12;
    pub const SHM_SHRINK: u32 = 13;
    pub const STEAL_FD: u32 = 14;
    pub const SPIN: u32 = 15;
    pub const NEW_NAMESPACE: u32 = 16;
    pub const OPEN_PATH: u32 = 17;
    pub const VM_READ: u32 = 18;
    pub const PPID: u32 = 19;
    pub const HIJACK: u32 = 20;
    pub const ABSTRACT_LISTEN: u32 = 21;
    pub const ABSTRACT_CONNECT: u32 = 22;
}

/// Slots of the `Hog` interface (fx-hog: one shared resource per method).
pub mod hog {
    pub const THREADS: u32 = 0;
    pub const FDS_IN_FLIGHT: u32 = 1;
    pub const INOTIFY_INSTANCES: u32 = 2;
    pub const MEMFD: u32 = 3;
    pub const OOM_SCORE_ADJ: u32 = 4;
    pub const RAISE_NOFILE: u32 = 5;
    pub const FLOOD: u32 = 6;
    pub const SPIN_AFTER_RETURN: u32 = 7;
    pub const TAKE_MEMORY: u32 = 8;
    pub const ADDRESS_SPACE_LIMIT: u32 = 9;
    pub const MESSAGE_QUEUES: u32 = 10;
}

/// Slots of the `Neighbour` interface (`fx-neighbour`: what two plugins of
/// one supervisor share).
pub mod neighbour {
    pub const READ: u32 = 0;
    pub const HOLD_SOCKETPAIRS: u32 = 1;
    pub const UNIX_SOCKETS: u32 = 2;
    pub const BIND_ABSTRACT: u32 = 3;
    pub const SYMLINK: u32 = 4;
    pub const CMDLINE_ENVIRON: u32 = 5;
    pub const SOCKET: u32 = 6;
    pub const CONNECT_TCP: u32 = 7;
    pub const NETLINK_BIND: u32 = 8;
    pub const NETLINK_SEND: u32 = 9;
    pub const NETLINK_RECV: u32 = 10;
    pub const UDP_BIND: u32 = 11;
    pub const LOCK_BITS: u32 = 12;
    pub const PROBE_BITS: u32 = 13;
    pub const FLOCK: u32 = 14;
    pub const INOTIFY_WATCH: u32 = 15;
    pub const INOTIFY_WAIT: u32 = 16;
    pub const SYSCALL: u32 = 17;
    pub const UNIX_CONNECT: u32 = 18;
}

/// Slots of the `Blob` interface (Arena).
pub mod blob {
    pub const REPEAT: u32 = 0;
    pub const ADD: u32 = 1;
    pub const PANIC: u32 = 2;
    pub const FAIL: u32 = 3;
    pub const ECHO_RAW: u32 = 4;
}

/// Slots of the `Streams` interface (`fx-stream`).
pub mod streams {
    pub const COUNT: u32 = 0;
    pub const SUM: u32 = 4;
    pub const PID: u32 = 7;
}

/// Slots of the `UsesHost` interface (`fx-host`) and its host interface `Host`.
pub mod uses_host {
    pub const ASK: u32 = 0;
    pub const FLOOD: u32 = 4;
    pub const BOUND: u32 = 5;
    pub const TRY_LOOKUP: u32 = 6;
}

/// Paths of the built worker and fixtures.
pub struct Fixtures {
    pub worker: PathBuf,
    dir: PathBuf,
}

impl Fixtures {
    /// The `.so` of fixture package `name` (e.g. `"fx-basic"`).
    pub fn lib(&self, name: &str) -> PathBuf {
        self.dir.join(format!("lib{}.so", name.replace('-', "_")))
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Environment variable naming a directory of already-built fixtures and
/// worker: set for a test re-run under another uid ([`rerun_as_non_root`]),
/// which may not run cargo in the checkout.
pub const FIXTURES_DIR_ENV: &str = "BULKHEAD_TEST_FIXTURES_DIR";

/// Environment variable naming a directory outside `/tmp` the test process
/// may write (host-side secrets that must not be in a sandbox's `/tmp`
/// view); see [`host_scratch_root`].
pub const SCRATCH_DIR_ENV: &str = "BULKHEAD_TEST_SCRATCH_DIR";

/// Builds the worker and every fixture in the debug profile (once per process)
/// and returns their paths ([`FIXTURES_DIR_ENV`] instead, when set).
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| match std::env::var_os(FIXTURES_DIR_ENV) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            Fixtures {
                worker: dir.join("bulkhead-worker"),
                dir,
            }
        }
        None => build_fixtures(false),
    })
}

/// A directory outside `/tmp` this test process may write, for host-side
/// secrets a sandbox must not see: `/var/tmp/bulkhead-tests-<uid>` (the
/// checkout itself may sit under `/tmp`, which a worker without a mount
/// namespace may read whole), or [`SCRATCH_DIR_ENV`] in a re-run under
/// another uid.
pub fn host_scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(SCRATCH_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let dir = PathBuf::from(format!("/var/tmp/bulkhead-tests-{}", nix::unistd::Uid::effective()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh directory `bulkhead-{suite}-{tag}-{pid}`, under the system temp
/// dir or [`under`](Scratch::under) another one; removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Under the system temp dir.
    pub fn new(suite: &str, tag: &str) -> Scratch {
        Scratch::under(&std::env::temp_dir(), suite, tag)
    }

    /// Under `dir`.
    pub fn under(dir: &Path, suite: &str, tag: &str) -> Scratch {
        let p = dir.join(format!("bulkhead-{suite}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Runs `tests` (exact names) of the current test binary again, in a child
/// process under the unused uid and gid `uid`: the same attacks from a
/// non-root host. The child uses the fixtures this process built and a
/// scratch directory of its own under `/var/tmp`. Needs root; returns the
/// child's combined output after asserting that it ran every test and all
/// passed.
pub fn rerun_as_non_root(uid: u32, tests: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    assert!(
        is_root(),
        "only a root test process can start a child under another uid"
    );
    let fx = fixtures();
    let scratch = PathBuf::from(format!("/var/tmp/bulkhead-rerun-{uid}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    nix::unistd::chown(&scratch, Some(uid.into()), Some(uid.into())).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(tests)
        .args(["--exact", "--test-threads=1"])
        .env(FIXTURES_DIR_ENV, &fx.dir)
        .env(SCRATCH_DIR_ENV, &scratch)
        .env_remove("HOME")
        .current_dir("/")
        .uid(uid)
        .gid(uid)
        .output()
        .expect("re-run the test binary");
    let _ = std::fs::remove_dir_all(&scratch);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "as uid {uid}: {text}");
    for t in tests {
        assert!(
            text.contains(&format!("test {t} ... ok")),
            "as uid {uid}, {t} did not pass: {text}"
        );
    }
    text
}

/// Builds the worker and every fixture with `cargo build` (`--release` if
/// asked) and returns their paths.
pub fn build_fixtures(release: bool) -> Fixtures {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args(["build", "--quiet", "-p", "bulkhead-worker"]);
    if release {
        cmd.arg("--release");
    }
    for f in FIXTURES {
        cmd.args(["-p", f]);
    }
    let status = cmd.status().expect("run cargo build for the worker and fixtures");
    assert!(status.success(), "building the worker and fixtures failed: {status}");
    let dir = target.join(if release { "release" } else { "debug" });
    Fixtures {
        worker: dir.join("bulkhead-worker"),
        dir,
    }
}

/// `cargo SUBCOMMAND --offline --quiet --target-dir target/scratch-apps` in a
/// scratch application's directory `dir`, with the environment scrubbed to
/// what a user's shell would have (no bulkhead variable, no test runner's).
/// The scratch apps share one target directory of their own, kept between
/// runs: the outer `cargo test` holds the workspace's build lock.
pub fn scratch_cargo(dir: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(dir)
        .args([subcommand, "--offline", "--quiet", "--target-dir"])
        .arg(scratch_target())
        .env_clear();
    for keep in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd
}

/// The scratch applications' target directory.
pub fn scratch_target() -> PathBuf {
    workspace_root().join("target").join("scratch-apps")
}

/// The workspace's `bulkhead-cli` binary, built once per test process (like
/// the fixtures, by running cargo).
pub fn cli_binary() -> &'static Path {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        let root = workspace_root();
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "bulkhead-cli"])
            .status()
            .expect("run cargo build for the CLI");
        assert!(status.success(), "building the CLI failed: {status}");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("bulkhead-cli")
    })
}

/// A supervisor using the freshly built worker.
pub fn supervisor() -> Supervisor {
    Supervisor::builder()
        .worker_path(&fixtures().worker)
        .build()
        .expect("worker binary exists")
}

/// The transport under test: `BULKHEAD_TEST_TRANSPORT=socket` selects the
/// plain socket; the default is shared memory. CI runs the suite with both.
pub fn transport() -> Transport {
    match std::env::var("BULKHEAD_TEST_TRANSPORT").as_deref() {
        Ok("socket") => Transport::Socket,
        Ok("shm") | Err(_) => Transport::SharedMemory,
        Ok(other) => panic!("BULKHEAD_TEST_TRANSPORT={other}: expected socket or shm"),
    }
}

/// A spec for fixture package `name`, on the transport under test.
pub fn spec(name: &str) -> PluginSpec {
    PluginSpec::new(fixtures().lib(name)).transport(transport())
}

/// Blocks until process `pid` (not necessarily our child) has terminated, on a
/// pidfd that becomes readable at its exit. Fails the test after `limit`.
#[track_caller]
pub fn wait_gone(pid: u32, limit: Duration) {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        // ESRCH: already gone (and reaped).
        assert!(!alive(pid), "pidfd_open({pid}) failed but the process exists");
        return;
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(ms).unwrap()).expect("poll pidfd");
    assert!(n == 1, "process {pid} still running after {limit:?}");
}

/// The process state letter from `/proc/<pid>/stat` (`R`, `S`, `Z`, ...), or
/// `None` if no such process exists.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// `(pid, ppid, pgrp, state)` of every process on the system.
pub fn all_processes() -> Vec<(u32, u32, u32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let mut f = rest.split_whitespace();
        let state = f.next()?.chars().next()?;
        let ppid = f.next()?.parse().ok()?;
        let pgrp = f.next()?.parse().ok()?;
        Some((pid, ppid, pgrp, state))
    })
    .collect()
}

/// Children (any state) of this test process.
pub fn my_children() -> Vec<(u32, char)> {
    let me = std::process::id();
    all_processes()
        .into_iter()
        .filter(|p| p.1 == me)
        .map(|p| (p.0, p.3))
        .collect()
}

/// `root` and every descendant of it (a sandboxed worker is three processes).
pub fn process_tree(root: u32) -> Vec<u32> {
    let all = all_processes();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    out
}

/// CPU time (utime + stime, in clock ticks) process `pid` has used; 0 if it
/// is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is field 3; utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(14) + get(15)
}

/// Live processes in process group `pgrp`.
pub fn group_members(pgrp: u32) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|p| p.2 == pgrp && p.3 != 'Z')
        .map(|p| p.0)
        .collect()
}

/// Open descriptors of process `pid` (from `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(u32, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?.to_string_lossy().into_owned();
            Some((fd, target))
        })
        .collect();
    fds.sort();
    fds
}

/// The process that runs the plugin, as the host sees it. Under a sandbox with
/// a pid namespace, the worker the host started (`outer`) has forked an init
/// (pid 1 inside), which has forked the plugin's process (pid 2 inside): that
/// grandchild is returned. Without one, the worker itself. (By the time a load
/// returns, the plugin's process exists: it answered the handshake.)
pub fn plugin_process(outer: u32) -> u32 {
    let procs = all_processes();
    let child_of = |parent: u32| procs.iter().find(|p| p.1 == parent && p.3 != 'Z').map(|p| p.0);
    let inner_pid = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
        line.split_whitespace().nth(2)?.parse::<u32>().ok()
    };
    match child_of(outer).and_then(child_of) {
        Some(pid) if inner_pid(pid) == Some(2) => pid,
        _ => outer,
    }
}
