//! The escape suite: a hostile plugin (`fx-hostile`) tries, from inside a call,
//! every attack the sandbox is meant to stop. Each test runs the attack under
//! the default sandbox (it must fail) and — where that is harmless to this
//! machine — under `Sandbox::none()` (it must succeed), so every test is able
//! to fail. Attacks aimed at the host run in a child host process
//! (`escape_host`), so a successful one costs that process, not this one.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use bulkhead_host::{CallError, Layer, LayerState, Limits, LoadError, LoadFailure, Plugin, Sandbox, Supervisor};
use bulkhead_tests::{
    all_processes, fixtures, hostile, open_fds, plugin_process, spec, supervisor, transport, wait_gone, Scratch,
};

const GENEROUS: Duration = Duration::from_secs(20);

/// Loads the hostile plugin into a worker the fork-server pre-forked (a
/// "blank", isolated before it knew its plugin): the path restarts take.
/// Loads that find no blank ready (other tests' `sup.load`) cover the other.
fn hostile(sup: &Supervisor, sandbox: Sandbox) -> Plugin {
    let spec = spec("fx-hostile").sandbox(sandbox);
    assert!(
        sup.wait_for_blank(&spec, std::time::Instant::now() + GENEROUS),
        "the fork-server has a blank ready"
    );
    sup.load(spec).expect("fx-hostile loads")
}

fn both() -> [(&'static str, Sandbox); 2] {
    [("strict", Sandbox::strict()), ("none", Sandbox::none())]
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Output and end of one `escape_host` run.
struct HostRun {
    status: ExitStatus,
    lines: Vec<String>,
}

impl HostRun {
    fn value(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
    }

    fn result(&self) -> i64 {
        let v = self
            .value("result")
            .unwrap_or_else(|| panic!("no result line: {:?}", self.lines));
        v.parse().unwrap()
    }

    fn survived(&self) -> bool {
        self.status.success() && self.value("alive").is_some()
    }

    fn killed_by(&self, sig: i32) -> bool {
        self.status.signal() == Some(sig)
    }
}

/// Runs `escape_host` with `attack` in its own process group, in `cwd`.
fn host_attack(sandbox: &str, attack: &str, extra: &[&str], cwd: &Path) -> HostRun {
    let fx = fixtures();
    let mut child = Command::new(env!("CARGO_BIN_EXE_escape_host"))
        .arg(&fx.worker)
        .arg(fx.lib("fx-hostile"))
        .arg(sandbox)
        .arg(attack)
        .args(extra)
        .current_dir(cwd)
        .env("BH_SECRET", "hunter2-escape-suite")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start escape_host");
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    wait_gone(child.id(), GENEROUS);
    let status = child.wait().unwrap();
    HostRun {
        status,
        lines: out.lines().map(str::to_string).collect(),
    }
}

#[test]
fn the_default_sandbox_is_fully_enforced_here() {
    let sup = supervisor();
    let p = sup.load(spec("fx-hostile")).unwrap();
    let report = p.info().sandbox;
    for layer in Layer::ALL {
        assert_eq!(report.state(layer), &LayerState::Enforced, "{layer}: {report:?}");
    }
    let off = sup.load(spec("fx-hostile").sandbox(Sandbox::none())).unwrap();
    for layer in Layer::ALL {
        assert_eq!(off.info().sandbox.state(layer), &LayerState::Off, "{layer}");
    }
}

#[test]
fn cannot_kill_the_host() {
    let dir = Scratch::new("escape", "kill-host");
    let run = host_attack("none", "kill-host", &[], &dir.0);
    assert!(
        run.killed_by(libc::SIGKILL),
        "without a sandbox the plugin kills its host: {:?}",
        run.status
    );
    let run = host_attack("strict", "kill-host", &[], &dir.0);
    assert!(run.survived(), "{:?} {:?}", run.status, run.lines);
    assert!(run.result() < 0);
}

#[test]
fn cannot_kill_the_hosts_process_group() {
    let dir = Scratch::new("escape", "kill-group");
    let run = host_attack("none", "kill-group", &[], &dir.0);
    assert!(run.killed_by(libc::SIGKILL), "{:?}", run.status);
    let run = host_attack("strict", "kill-group", &[], &dir.0);
    assert!(run.survived(), "{:?} {:?}", run.status, run.lines);
    assert!(run.result() < 0);
}

#[test]
fn cannot_kill_its_parent() {
    let dir = Scratch::new("escape", "kill-parent");
    let run = host_attack("none", "kill-parent", &[], &dir.0);
    assert!(run.killed_by(libc::SIGKILL), "{:?}", run.status);
    let run = host_attack("strict", "kill-parent", &[], &dir.0);
    assert!(run.survived(), "{:?} {:?}", run.status, run.lines);
    assert!(run.result() < 0);
}

#[test]
fn cannot_write_the_hosts_memory() {
    let dir = Scratch::new("escape", "write-mem");
    let run = host_attack("none", "write-mem", &[], &dir.0);
    assert!(run.survived(), "{:?}", run.lines);
    assert_eq!(
        run.value("secret"),
        Some("0x1337"),
        "without a sandbox the host's memory is overwritten"
    );
    let run = host_attack("strict", "write-mem", &[], &dir.0);
    assert!(run.survived(), "{:?}", run.lines);
    assert!(run.result() < 0);
    assert_eq!(run.value("secret"), Some("0x11111111"));
}

#[test]
fn cannot_read_the_hosts_memory() {
    let dir = Scratch::new("escape", "read-mem");
    let run = host_attack("none", "read-mem", &[], &dir.0);
    assert_eq!(run.result(), 8, "{:?}", run.lines);
    let run = host_attack("strict", "read-mem", &[], &dir.0);
    assert!(run.survived());
    assert!(run.result() < 0, "{:?}", run.lines);
}

#[test]
fn cannot_ptrace_the_host() {
    let dir = Scratch::new("escape", "ptrace");
    let run = host_attack("none", "ptrace", &[], &dir.0);
    assert_eq!(run.result(), 0, "{:?}", run.lines);
    let run = host_attack("strict", "ptrace", &[], &dir.0);
    assert!(run.survived());
    assert!(run.result() < 0, "{:?}", run.lines);
}

#[test]
fn cannot_read_the_hosts_environment() {
    let dir = Scratch::new("escape", "environ");
    let run = host_attack("none", "environ", &[], &dir.0);
    assert_eq!(
        run.result(),
        1,
        "without a sandbox /proc/<host>/environ leaks: {:?}",
        run.lines
    );
    let run = host_attack("strict", "environ", &[], &dir.0);
    assert!(run.survived());
    assert_eq!(run.result(), -1, "{:?}", run.lines);
}

#[test]
fn cannot_write_the_hosts_working_directory() {
    for (name, expect_written) in [("none", true), ("strict", false)] {
        let dir = Scratch::new("escape", &format!("cwd-{name}"));
        let run = host_attack(name, "cwd", &["pwned.txt"], &dir.0);
        assert!(run.survived(), "{name}: {:?}", run.lines);
        assert_eq!(run.result() == 0, expect_written, "{name}: {:?}", run.lines);
        assert_eq!(dir.0.join("pwned.txt").exists(), expect_written, "{name}");
    }
}

#[test]
fn cannot_read_or_write_the_hosts_files() {
    let sup = supervisor();
    let dir = Scratch::new("escape", "files");
    let secret = dir.0.join("secret.txt");
    std::fs::write(&secret, b"top secret").unwrap();
    let target = dir.0.join("written.txt");
    for (name, sandbox) in both() {
        let p = hostile(&sup, sandbox);
        let read = p.call::<_, Vec<u8>>(hostile::READ_FILE, &(secret.display().to_string(),));
        let wrote: i64 = p
            .call(hostile::WRITE_FILE, &(target.display().to_string(), b"x".to_vec()))
            .unwrap();
        if name == "none" {
            assert_eq!(read.unwrap(), b"top secret");
            assert_eq!(wrote, 0);
            assert!(target.exists());
            std::fs::remove_file(&target).unwrap();
        } else {
            assert!(matches!(read, Err(CallError::Plugin(_))), "{read:?}");
            assert!(wrote < 0);
            assert!(!target.exists());
            // Not even the system's files beyond the libraries.
            let passwd = p.call::<_, Vec<u8>>(hostile::READ_FILE, &("/etc/passwd".to_string(),));
            assert!(matches!(passwd, Err(CallError::Plugin(_))), "{passwd:?}");
        }
    }
}

#[test]
fn cannot_exec_a_shell() {
    let sup = supervisor();
    for (name, sandbox) in both() {
        let p = hostile(&sup, sandbox);
        let code: i64 = p.call(hostile::EXEC_SHELL, &("exit 7".to_string(),)).unwrap();
        assert_eq!(code, if name == "none" { 7 } else { 200 }, "{name}");
    }
}

#[test]
fn cannot_connect_out_over_tcp() {
    let sup = supervisor();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    for (name, sandbox) in both() {
        let p = hostile(&sup, sandbox);
        let r: i64 = p.call(hostile::TCP_CONNECT, &(port,)).unwrap();
        if name == "none" {
            assert_eq!(r, 0);
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"x");
        } else {
            assert!(r < 0, "{r}");
            listener.set_nonblocking(true).unwrap();
            assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        }
    }
}

#[test]
fn cannot_listen_on_a_port() {
    let sup = supervisor();
    for (name, sandbox) in both() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let p = hostile(&sup, sandbox);
        let r: i64 = p.call(hostile::TCP_LISTEN, &(port,)).unwrap();
        let reached = TcpStream::connect(("127.0.0.1", port)).is_ok();
        if name == "none" {
            assert_eq!((r, reached), (0, true));
        } else {
            assert!(r < 0, "{r}");
            assert!(!reached);
        }
    }
}

/// Host pids of processes whose name is `tag`.
fn named(tag: &str) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|&(pid, _, _, state)| {
            state != 'Z' && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == tag)
        })
        .map(|(pid, ..)| pid)
        .collect()
}

/// A process name unique to this test run.
fn tag(what: &str) -> String {
    format!("bhx{}{}", what, std::process::id() % 100_000)
}

/// Asserts that the escapee named `tag` is gone (sandboxed) or still running
/// (no sandbox; it is then killed — the test started it, through its worker).
fn check_escapee(tag: &str, sandboxed: bool) {
    let found = named(tag);
    if sandboxed {
        for pid in found {
            wait_gone(pid, GENEROUS);
        }
    } else {
        assert_eq!(found.len(), 1, "the escapee outlives its worker without the sandbox");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(found[0] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_gone(found[0], GENEROUS);
    }
}

#[test]
fn a_setsid_escapee_dies_with_its_worker_on_timeout() {
    let sup = supervisor();
    for (name, sandbox) in both() {
        let t = tag(&format!("t{}", &name[..1]));
        let p = hostile(&sup, sandbox);
        let setsid: i64 = p.call(hostile::SETSID_ESCAPE, &(t.clone(),)).unwrap();
        assert_eq!(setsid == 0, name == "none", "{name}: setsid returned {setsid}");
        assert_eq!(named(&t).len(), 1, "{name}: the escapee runs");
        let err = p
            .call_with_timeout::<_, u64>(hostile::SPIN, &(), Duration::from_millis(300))
            .unwrap_err();
        assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
        check_escapee(&t, name == "strict");
    }
}

#[test]
fn a_setsid_escapee_dies_with_its_worker_on_shutdown() {
    for (name, sandbox) in both() {
        let sup = supervisor();
        let t = tag(&format!("s{}", &name[..1]));
        let p = hostile(&sup, sandbox);
        let _: i64 = p.call(hostile::SETSID_ESCAPE, &(t.clone(),)).unwrap();
        assert_eq!(named(&t).len(), 1);
        let reports = sup.shutdown();
        assert_eq!(reports.len(), 1, "{reports:?}");
        drop(p);
        check_escapee(&t, name == "strict");
    }
}

#[test]
fn a_setsid_escapee_dies_with_a_sigkilled_host() {
    for name in ["none", "strict"] {
        let dir = Scratch::new("escape", &format!("hostkill-{name}"));
        let t = tag(&format!("k{}", &name[..1]));
        let fx = fixtures();
        let mut child = Command::new(env!("CARGO_BIN_EXE_escape_host"))
            .arg(&fx.worker)
            .arg(fx.lib("fx-hostile"))
            .arg(name)
            .arg("escape")
            .arg(&t)
            .current_dir(&dir.0)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.unwrap().starts_with("alive")),
            "the escape host got going"
        );
        assert_eq!(named(&t).len(), 1);
        child.kill().unwrap();
        child.wait().unwrap();
        check_escapee(&t, name == "strict");
    }
}

#[test]
fn process_limit_binds_even_for_a_root_host() {
    let sup = supervisor();
    for (name, sandbox) in both() {
        let p = sup
            .load(spec("fx-hostile").sandbox(sandbox).limits(Limits::new().processes(8)))
            .unwrap();
        let forked: i64 = p.call(hostile::FORK_BOMB, &(64u32,)).unwrap();
        if name == "strict" {
            assert!((0..8).contains(&forked), "strict: {forked} forks under a limit of 8");
        } else if is_root() {
            // Real root is exempt from RLIMIT_NPROC: the limit does not bind.
            assert_eq!(forked, 64, "none");
        }
    }
}

#[test]
fn a_fork_bomb_stops_at_the_sandbox_default() {
    let sup = supervisor();
    let p = hostile(&sup, Sandbox::strict());
    let forked: i64 = p.call(hostile::FORK_BOMB, &(1100u32,)).unwrap();
    assert!(
        (1..256).contains(&forked),
        "{forked} forks under the default limit of 256 tasks"
    );
}

#[test]
fn tmp_is_private_and_bounded() {
    let sup = supervisor();
    let name = format!("bulkhead-escape-fill-{}", std::process::id());
    let host_file = Path::new("/tmp").join(&name);
    for (mode, sandbox) in both() {
        let p = hostile(&sup, sandbox.tmp_size(16 << 20));
        let written: i64 = p.call(hostile::FILL_TMP, &(name.clone(), 200u64)).unwrap();
        if mode == "none" {
            assert_eq!(written, 200 << 20);
            assert!(host_file.exists(), "without a sandbox the filler outlives the plugin");
            std::fs::remove_file(&host_file).unwrap();
        } else {
            assert!(written <= 16 << 20, "the private /tmp is bounded: {written}");
            assert!(!host_file.exists(), "nothing lands in the host's /tmp");
        }
    }
}

#[test]
fn no_capabilities_inside() {
    let sup = supervisor();
    let strict: String = hostile(&sup, Sandbox::strict()).call(hostile::CAP_EFF, &()).unwrap();
    assert_eq!(strict, "0000000000000000");
    if is_root() {
        let none: String = hostile(&sup, Sandbox::none()).call(hostile::CAP_EFF, &()).unwrap();
        assert_ne!(
            none, "0000000000000000",
            "a root host's unsandboxed worker keeps its capabilities"
        );
    }
}

#[test]
fn cannot_create_namespaces() {
    let sup = supervisor();
    let r: i64 = hostile(&sup, Sandbox::none())
        .call(hostile::NEW_NAMESPACE, &())
        .unwrap();
    assert_eq!(r, 0, "without a sandbox a plugin may create namespaces");
    let r: i64 = hostile(&sup, Sandbox::strict())
        .call(hostile::NEW_NAMESPACE, &())
        .unwrap();
    assert_eq!(r, -(libc::EPERM as i64));
}

#[test]
fn cannot_signal_everything() {
    // Signal 0 only probes: harmless with or without the sandbox.
    let sup = supervisor();
    let r: i64 = hostile(&sup, Sandbox::none())
        .call(hostile::KILL_PID, &(-1i32, 0i32))
        .unwrap();
    assert_eq!(r, 0, "without a sandbox kill(-1) reaches every process");
    let r: i64 = hostile(&sup, Sandbox::strict())
        .call(hostile::KILL_PID, &(-1i32, 0i32))
        .unwrap();
    assert!(r < 0);
}

#[test]
fn shrinking_the_shared_region_cannot_crash_the_host() {
    if transport() != bulkhead_host::Transport::SharedMemory {
        return;
    }
    let sup = supervisor();
    for (name, sandbox) in both() {
        let p = hostile(&sup, sandbox);
        let r: i64 = p.call(hostile::SHM_SHRINK, &()).unwrap();
        if name == "none" && is_root() {
            // The mapping can be reopened, but the seals refuse the resize.
            assert_eq!(r, -(libc::EPERM as i64), "{name}");
        } else {
            assert!(r < 0, "{name}: {r}");
        }
        // The host touches the region again: no SIGBUS.
        let again: i64 = p.call(hostile::PPID, &()).unwrap();
        assert!(again >= 0);
    }
}

/// The host pid of the process serving `plugin`, and its protocol socket's fd.
fn socket_of(plugin: &Plugin) -> (u32, i32) {
    let pid = plugin_process(plugin.info().worker_pid);
    let fd = open_fds(pid)
        .into_iter()
        .find(|(_, t)| t.starts_with("socket:"))
        .map(|(fd, _)| fd as i32)
        .expect("the worker's socket");
    (pid, fd)
}

#[test]
fn cannot_touch_a_neighbouring_worker() {
    let sup = supervisor();
    let neighbour = sup.load(spec("fx-basic")).unwrap();
    let (npid, nfd) = socket_of(&neighbour);
    for (name, sandbox) in both() {
        let p = hostile(&sup, sandbox);
        let stole: i64 = p.call(hostile::STEAL_FD, &(npid as i32, nfd)).unwrap();
        let mem: i64 = p
            .call(hostile::OPEN_PATH, &(format!("/proc/{npid}/mem"), true))
            .unwrap();
        let stop: i64 = p.call(hostile::KILL_PID, &(npid as i32, libc::SIGSTOP)).unwrap();
        if name == "none" {
            assert!(stole >= 0, "pidfd_getfd takes the neighbour's socket: {stole}");
            assert_eq!(mem, 0, "the neighbour's memory is writable");
            assert_eq!(stop, 0);
            // Undo the stop (the neighbour is this test's own worker).
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(npid as i32),
                nix::sys::signal::Signal::SIGCONT,
            )
            .unwrap();
        } else {
            assert!(stole < 0 && mem < 0 && stop < 0, "{stole} {mem} {stop}");
        }
        let sum: i64 = neighbour.call(bulkhead_tests::basic::ADD, &(2i64, 3i64)).unwrap();
        assert_eq!(sum, 5, "{name}: the neighbour answers for itself");
    }
}

#[test]
fn allowed_paths_and_ports_work_and_nothing_more() {
    let sup = supervisor();
    let dir = Scratch::new("escape", "allow");
    let allowed = dir.0.join("model.bin");
    let other = dir.0.join("other.bin");
    std::fs::write(&allowed, b"weights").unwrap();
    std::fs::write(&other, b"private").unwrap();
    let out_dir = dir.0.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // A root host's worker runs as uid 65534: the writable directory must be its.
    if is_root() {
        nix::unistd::chown(
            &out_dir,
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();

    let p = hostile(
        &sup,
        Sandbox::strict()
            .allow_read(&allowed)
            .allow_write(&out_dir)
            .allow_connect_tcp(port),
    );
    for layer in Layer::ALL {
        let expected = if layer == Layer::NetNs {
            LayerState::Off
        } else {
            LayerState::Enforced
        };
        assert_eq!(p.info().sandbox.state(layer), &expected, "{layer}");
    }
    let got: Vec<u8> = p.call(hostile::READ_FILE, &(allowed.display().to_string(),)).unwrap();
    assert_eq!(got, b"weights");
    let denied = p.call::<_, Vec<u8>>(hostile::READ_FILE, &(other.display().to_string(),));
    assert!(matches!(denied, Err(CallError::Plugin(_))), "{denied:?}");
    let written = out_dir.join("result.txt");
    let r: i64 = p
        .call(hostile::WRITE_FILE, &(written.display().to_string(), b"ok".to_vec()))
        .unwrap();
    assert_eq!(r, 0);
    assert_eq!(std::fs::read(&written).unwrap(), b"ok");
    let r: i64 = p
        .call(hostile::WRITE_FILE, &(allowed.display().to_string(), b"x".to_vec()))
        .unwrap();
    assert!(r < 0, "read-only stays read-only");

    let r: i64 = p.call(hostile::TCP_CONNECT, &(port,)).unwrap();
    assert_eq!(r, 0);
    let (mut s, _) = listener.accept().unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let r: i64 = p.call(hostile::TCP_CONNECT, &(closed_port,)).unwrap();
    assert!(r < 0, "only the allowed port: {r}");
    let r: i64 = p.call(hostile::TCP_LISTEN, &(0u16,)).unwrap();
    assert!(r < 0, "no listening: {r}");
}

/// The layer a strict load was refused for, and the reason.
fn sandbox_refusal(err: LoadError) -> (Layer, String) {
    match err {
        LoadError::Rejected {
            reason: LoadFailure::Sandbox { layer, reason },
            ..
        } => (layer, reason),
        other => panic!("expected a sandbox refusal, got {other:?}"),
    }
}

#[test]
fn strict_refuses_a_missing_layer_and_best_effort_reports_it() {
    let sup = supervisor();
    // The default (strict) fails closed, naming the layer, the reason and what to do.
    // (A simulated refusal keeps the fork-server out: the exec'd worker checks.)
    for layer in [Layer::Landlock, Layer::UserNs, Layer::Seccomp] {
        let err = sup
            .load(spec("fx-hostile").sandbox(Sandbox::strict().simulate_unavailable(layer)))
            .map(|_| ())
            .unwrap_err();
        let (refused, reason) = sandbox_refusal(err);
        assert_eq!(refused, layer);
        assert!(
            reason.contains("simulate_unavailable") && reason.contains("Sandbox::best_effort()"),
            "{reason}"
        );
    }
    // So does the default spec, with no sandbox set at all.
    let err = sup
        .load(spec("fx-hostile").sandbox(Sandbox::default().simulate_unavailable(Layer::NetNs)))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(sandbox_refusal(err).0, Layer::NetNs);

    // Best effort loads, and says what is missing and what that exposes.
    let p = sup
        .load(spec("fx-hostile").sandbox(Sandbox::best_effort().simulate_unavailable(Layer::Landlock)))
        .unwrap();
    let report = p.info().sandbox;
    assert!(
        matches!(report.state(Layer::Landlock), LayerState::Unavailable(_)),
        "{report:?}"
    );
    assert_eq!(
        report.degraded().map(|(l, _)| l).collect::<Vec<_>>(),
        vec![Layer::Landlock]
    );
    assert_eq!(report.exposures(), vec![(Layer::Landlock, Layer::Landlock.exposure())]);
    // The other layers still hold.
    let r: i64 = p.call(hostile::NEW_NAMESPACE, &()).unwrap();
    assert!(r < 0);

    // Without the user namespace an unprivileged worker cannot create the others.
    let p = sup
        .load(spec("fx-hostile").sandbox(Sandbox::best_effort().simulate_unavailable(Layer::UserNs)))
        .unwrap();
    let report = p.info().sandbox;
    let degraded: HashSet<Layer> = report.degraded().map(|(l, _)| l).collect();
    assert!(degraded.contains(&Layer::UserNs), "{report:?}");
    assert_eq!(report.state(Layer::Seccomp), &LayerState::Enforced);

    // require() keeps one layer mandatory in a best-effort sandbox.
    let err = sup
        .load(
            spec("fx-hostile").sandbox(
                Sandbox::best_effort()
                    .simulate_unavailable(Layer::Landlock)
                    .require(Layer::Landlock),
            ),
        )
        .map(|_| ())
        .unwrap_err();
    assert_eq!(sandbox_refusal(err).0, Layer::Landlock);
    // A layer turned off is reported as off, not as degraded, and strict loads.
    let p = sup
        .load(spec("fx-hostile").sandbox(Sandbox::strict().without(Layer::UtsNs)))
        .unwrap();
    assert_eq!(p.info().sandbox.state(Layer::UtsNs), &LayerState::Off);
    assert_eq!(p.info().sandbox.degraded().count(), 0);
}

#[test]
fn the_plugins_view_of_the_system() {
    let sup = supervisor();
    let p = hostile(&sup, Sandbox::strict());
    let ppid: i64 = p.call(hostile::PPID, &()).unwrap();
    assert_eq!(ppid, 1, "the worker's parent is its namespace's init");
    // A fresh /proc: only the namespace's own processes.
    let r: i64 = p
        .call(
            hostile::OPEN_PATH,
            &(format!("/proc/{}/status", std::process::id()), false),
        )
        .unwrap();
    assert!(r < 0, "the host is invisible");
}

#[test]
fn file_size_limit_stops_a_runaway_writer() {
    let sup = supervisor();
    let p = sup
        .load(spec("fx-hostile").limits(Limits::new().file_size(1 << 20)))
        .unwrap();
    // One MiB fits; the next write crosses RLIMIT_FSIZE and SIGXFSZ ends the worker.
    let err = p
        .call::<_, i64>(hostile::FILL_TMP, &("big".to_string(), 4u64))
        .unwrap_err();
    assert!(
        matches!(err, CallError::WorkerDied { exit: bulkhead_host::Exit::Signal { signal, .. }, .. } if signal == libc::SIGXFSZ),
        "{err:?}"
    );
    let written: i64 = p.call(hostile::FILL_TMP, &("small".to_string(), 1u64)).unwrap();
    assert_eq!(written, 1 << 20, "a fresh worker writes up to the limit");
}

#[test]
fn cannot_answer_a_neighbours_callers() {
    let sup = supervisor();
    for (name, sandbox) in both() {
        // The neighbour speaks over its socket, the transport this attack forges.
        let neighbour = sup
            .load(
                spec("fx-basic")
                    .transport(bulkhead_host::Transport::Socket)
                    .call_timeout(Duration::from_secs(5)),
            )
            .unwrap();
        let (npid, nfd) = socket_of(&neighbour);
        let p = hostile(&sup, sandbox);
        let armed: i64 = p.call(hostile::HIJACK, &(npid as i32, nfd, 0x1337i64)).unwrap();
        let answer = neighbour.call::<_, i64>(bulkhead_tests::basic::ADD, &(2i64, 3i64));
        if name == "none" {
            assert_eq!(armed, 0);
            assert_eq!(
                answer.unwrap(),
                0x1337,
                "without a sandbox a plugin forges its neighbour's answers"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(npid as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        } else {
            assert!(armed < 0, "{armed}");
            assert_eq!(answer.unwrap(), 5, "the neighbour's own answer");
        }
    }
}

#[test]
fn each_worker_has_its_own_network_namespace_and_they_cannot_meet() {
    let sup = supervisor();
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    for (name, sandbox) in both() {
        let a = hostile(&sup, sandbox.clone());
        let b = hostile(&sup, sandbox);
        let (pa, pb) = (plugin_process(a.info().worker_pid), plugin_process(b.info().worker_pid));
        let socket = format!("bulkhead-escape-{name}-{}", std::process::id());
        let listened: i64 = a.call(hostile::ABSTRACT_LISTEN, &(socket.clone(),)).unwrap();
        let connected: i64 = b.call(hostile::ABSTRACT_CONNECT, &(socket,)).unwrap();
        if name == "none" {
            assert_eq!(listened, 0, "{name}");
            assert_eq!(ns(pa), ns(std::process::id()));
            assert_eq!(
                connected, 0,
                "without a sandbox workers reach each other's abstract sockets"
            );
        } else {
            // Each its own namespace, neither the host's.
            assert_ne!(ns(pa), ns(pb));
            assert_ne!(ns(pa), ns(std::process::id()));
            assert!(
                connected < 0,
                "namespaces and Landlock's scope keep them apart: {connected}"
            );
        }
    }
}

#[test]
fn a_library_in_a_private_directory_loads_in_the_sandbox() {
    // A root host's worker runs as uid 65534, which cannot search a 0700
    // directory of root's: the worker opens the library before giving up its
    // identity and loads it through that descriptor.
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("escape", "private");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let lib = dir.0.join("libprivate.so");
    std::fs::copy(fixtures().lib("fx-basic"), &lib).unwrap();
    let sup = supervisor();
    let p = sup
        .load(bulkhead_host::PluginSpec::new(&lib).transport(transport()))
        .unwrap();
    assert_eq!(p.info().sandbox.degraded().count(), 0, "{:?}", p.info().sandbox);
    let sum: i64 = p.call(bulkhead_tests::basic::ADD, &(40i64, 2i64)).unwrap();
    assert_eq!(sum, 42);
}

#[test]
fn a_grant_the_workers_uid_cannot_reach_fails_the_load_naming_it() {
    // Only a root host's worker changes uid (to 65534); a non-root host's
    // worker keeps the host's uid and reaches whatever the host reaches.
    if !bulkhead_tests::is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("escape", "private-grant");
    let data = dir.0.join("data.txt");
    std::fs::write(&data, "secret").unwrap();
    let sup = supervisor();
    let load = |mode: u32| {
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode)).unwrap();
        sup.load(spec("fx-basic").sandbox(Sandbox::strict().allow_read(&data)))
    };
    match load(0o700) {
        Err(LoadError::Rejected {
            reason: LoadFailure::Sandbox { reason, .. },
            ..
        }) => assert!(reason.contains(data.to_str().unwrap()), "{reason}"),
        other => panic!("a grant under a 0700 directory of root's: {other:?}"),
    }
    // The same grant once uid 65534 may search the directory.
    load(0o755).expect("a reachable grant loads");
}
