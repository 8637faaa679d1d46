//! Resource containment: a plugin cannot take from the machine, the host or
//! its neighbours what they share — tasks, descriptors, per-user kernel
//! counts, memory the address-space limit does not see — and the host's own
//! delays never cost a healthy worker its life. Each protection is shown
//! effective by a control run without it. Attacks on what a non-root host
//! shares with its workers (their uid) run in a child host (`hog_host`)
//! under an unused uid.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulkhead_host::{CallError, Layer, Limits, Plugin, Sandbox};
use bulkhead_tests::{basic, fixtures, hog, hostile, plugin_process, spec, supervisor, wait_gone};

const GENEROUS: Duration = Duration::from_secs(30);

#[test]
fn a_call_whose_deadline_passed_before_dispatch_is_busy_and_spares_the_worker() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic").workers(1)).unwrap();
    let pid: u32 = p.call(basic::PID, &()).unwrap();
    // A deadline that has passed by the time the call reaches a worker.
    let late = p.call_with_timeout::<_, i64>(basic::ADD, &(1i64, 2i64), Duration::ZERO);
    assert!(matches!(late, Err(CallError::Busy { .. })), "{late:?}");
    // The same worker serves the next call: it was not charged with a timeout.
    assert_eq!(p.call::<_, u32>(basic::PID, &()).unwrap(), pid);
    assert_eq!(p.worker_pids().len(), 1);
    let stats = p.stats();
    assert_eq!(stats.timeouts, 0, "{stats:?}");
}

#[test]
fn a_fork_bomb_stops_at_the_default_task_limit_and_threads_still_start() {
    let sup = supervisor();
    let p = sup.load(spec("fx-hostile")).unwrap();
    let forked: i64 = p.call(hostile::FORK_BOMB, &(600u32,)).unwrap();
    assert!(
        (1..256).contains(&forked),
        "{forked} forks under the default of 256 tasks"
    );
    // Control: with the limit raised, the same bomb gets further.
    let raised = sup
        .load(spec("fx-hostile").limits(Limits::new().processes(1024)))
        .unwrap();
    let forked: i64 = raised.call(hostile::FORK_BOMB, &(600u32,)).unwrap();
    assert_eq!(forked, 600, "with a limit of 1024 tasks");
    // A plugin's own thread pools (tokio, rayon: one thread per core each)
    // fit well under the default.
    let h = sup.load(spec("fx-hog")).unwrap();
    let started: i64 = h.call(hog::THREADS, &(160u32,)).unwrap();
    assert_eq!(started, 160);
}

#[test]
fn a_worker_keeps_the_default_open_files_limit() {
    let sup = supervisor();
    for sandbox in [Sandbox::strict(), Sandbox::none()] {
        let h = sup.load(spec("fx-hog").sandbox(sandbox.clone())).unwrap();
        let raised: i64 = h.call(hog::RAISE_NOFILE, &()).unwrap();
        assert_eq!(raised, 1024, "{sandbox:?}: the plugin cannot raise its hard limit");
        // Control: the limit is the one the spec sets.
        let h = sup
            .load(
                spec("fx-hog")
                    .sandbox(sandbox.clone())
                    .limits(Limits::new().open_files(4096)),
            )
            .unwrap();
        assert_eq!(h.call::<_, i64>(hog::RAISE_NOFILE, &()).unwrap(), 4096, "{sandbox:?}");
    }
}

#[test]
fn memfd_and_inotify_are_refused_under_the_default_sandbox() {
    let sup = supervisor();
    let h = sup.load(spec("fx-hog")).unwrap();
    assert_eq!(h.call::<_, i64>(hog::MEMFD, &(64u64,)).unwrap(), -(libc::EPERM as i64));
    assert_eq!(
        h.call::<_, i64>(hog::INOTIFY_INSTANCES, &(4u32,)).unwrap(),
        -(libc::EPERM as i64)
    );
    // Control: without the sandbox both succeed (64 MiB, 4 instances).
    let open = sup.load(spec("fx-hog").sandbox(Sandbox::none())).unwrap();
    assert_eq!(open.call::<_, i64>(hog::MEMFD, &(64u64,)).unwrap(), 64 << 20);
    assert_eq!(open.call::<_, i64>(hog::INOTIFY_INSTANCES, &(4u32,)).unwrap(), 4);
}

#[test]
fn the_oom_killer_takes_a_worker_before_the_host() {
    let sup = supervisor();
    let own: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(own < 1000, "the test host's own score is {own}");
    for sandbox in [Sandbox::strict(), Sandbox::none()] {
        let h = sup.load(spec("fx-hog").sandbox(sandbox.clone())).unwrap();
        assert_eq!(h.call::<_, i64>(hog::OOM_SCORE_ADJ, &()).unwrap(), 1000, "{sandbox:?}");
        for pid in h.worker_pids() {
            let outer = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
            assert_eq!(outer.trim(), "1000", "{sandbox:?}: worker {pid}");
            let inner = plugin_process(pid);
            let inner = std::fs::read_to_string(format!("/proc/{inner}/oom_score_adj")).unwrap();
            assert_eq!(inner.trim(), "1000", "{sandbox:?}: plugin process of {pid}");
        }
    }
}

/// Output of one `hog_host` run, as uid/gid `uid`.
fn hog_host(uid: u32, attack: &str, mode: &str) -> Vec<String> {
    let fx = fixtures();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hog_host"))
        .arg(&fx.worker)
        .arg(fx.lib("fx-hog"))
        .arg(fx.lib("fx-basic"))
        .arg(attack)
        .arg(mode)
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start hog_host");
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    wait_gone(child.id(), GENEROUS);
    let status = child.wait().unwrap();
    assert!(status.success(), "hog_host {attack} {mode}: {status:?}\n{out}");
    out.lines().map(str::to_string).collect()
}

fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key} line: {lines:?}"))
}

fn skip_unless_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return false;
    }
    eprintln!("{test}: needs root to start a child host under an unused uid; skipped");
    true
}

#[test]
fn descriptors_parked_in_flight_cannot_stop_a_non_root_host_from_loading() {
    if skip_unless_root("descriptors_parked_in_flight") {
        return;
    }
    let run = hog_host(61_017, "fds", "default");
    assert_eq!(
        value(&run, "host nofile"),
        "4096",
        "build() raised the soft limit: {run:?}"
    );
    let parked: i64 = value(&run, "result").parse().unwrap();
    assert!((1..1024 + 250 + 1).contains(&parked), "{run:?}");
    assert_eq!(value(&run, "host load"), "ok 5", "{run:?}");
    // Control: a worker with the host's own limit parks enough to make the
    // kernel refuse the host's next SCM_RIGHTS send (ETOOMANYREFS).
    let run = hog_host(61_018, "fds", "control");
    let parked: i64 = value(&run, "result").parse().unwrap();
    assert!(parked > 4096, "{run:?}");
    let load = value(&run, "host load");
    assert!(load.starts_with("error"), "{run:?}");
}

#[test]
fn inotify_instances_cannot_be_taken_from_a_non_root_host() {
    if skip_unless_root("inotify_instances") {
        return;
    }
    let run = hog_host(61_019, "inotify", "default");
    assert_eq!(value(&run, "result"), (-libc::EPERM).to_string(), "{run:?}");
    assert_eq!(value(&run, "host inotify"), "ok", "{run:?}");
    // Control: without the sandbox the plugin takes every instance of the uid.
    let run = hog_host(61_020, "inotify", "control");
    let took: i64 = value(&run, "result").parse().unwrap();
    assert!(took > 0, "{run:?}");
    assert_eq!(
        value(&run, "host inotify"),
        format!("error {}", libc::EMFILE),
        "{run:?}"
    );
}

fn take(p: &Plugin, route: &str, mib: u64) -> i64 {
    p.call(hog::TAKE_MEMORY, &(route.to_string(), mib)).unwrap()
}

#[test]
fn memory_the_address_space_limit_sees_stops_at_it() {
    let sup = supervisor();
    let h = sup.load(spec("fx-hog")).unwrap();
    assert_eq!(
        h.call::<_, i64>(hog::ADDRESS_SPACE_LIMIT, &()).unwrap(),
        4 << 30,
        "the default"
    );
    // Shown under a 256 MiB limit (the default binds alike at 4 GiB).
    let capped = sup
        .load(spec("fx-hog").limits(Limits::new().address_space(256 << 20)))
        .unwrap();
    for route in ["malloc", "mmap"] {
        let got = take(&capped, route, 384);
        assert!(got > 0 && got < 256 << 20, "{route}: {got} bytes under 256 MiB");
    }
    // Control: lifted, the same routes take all 384 MiB.
    let lifted = sup
        .load(spec("fx-hog").limits(Limits::new().address_space(u64::MAX)))
        .unwrap();
    assert_eq!(lifted.call::<_, i64>(hog::ADDRESS_SPACE_LIMIT, &()).unwrap(), -1);
    for route in ["malloc", "mmap"] {
        assert_eq!(take(&lifted, route, 384), 384 << 20, "{route}");
    }
}

#[test]
fn system_v_shared_memory_stops_at_the_workers_ipc_limits() {
    let sup = supervisor();
    // Kept after detaching, so RLIMIT_AS (256 MiB here) does not count it:
    // the IPC namespace's kernel.shmall (64 MiB) does.
    let h = sup
        .load(spec("fx-hog").limits(Limits::new().address_space(256 << 20)))
        .unwrap();
    assert_eq!(take(&h, "sysv", 512), 64 << 20);
    assert!(
        h.info().sandbox.state(Layer::IpcNs).is_enforced(),
        "{:?}",
        h.info().sandbox
    );
    // Control: without the sandbox (the host's IPC namespace, its limits),
    // the same 256 MiB address space holds twice the bound; removed again.
    let open = sup
        .load(
            spec("fx-hog")
                .sandbox(Sandbox::none())
                .limits(Limits::new().address_space(256 << 20)),
        )
        .unwrap();
    let got = take(&open, "sysv", 128);
    take(&open, "sysv-release", 0);
    assert_eq!(got, 128 << 20);
}

#[test]
fn tmpfs_and_pipes_stop_at_their_bounds() {
    let sup = supervisor();
    let h = sup.load(spec("fx-hog")).unwrap();
    // /tmp and /dev/shm: private tmpfs of DEFAULT_TMP_SIZE (64 MiB) each.
    for route in ["tmp", "devshm"] {
        let got = take(&h, route, 256);
        assert!(got > 0 && got <= 64 << 20, "{route}: {got}");
    }
    // Pipes: the worker is not exempt from the per-user pipe-buffer limit
    // (fs.pipe-user-pages-soft), and holds at most 1,024 descriptors.
    let got = take(&h, "pipes", 512);
    eprintln!("pipes: {got} bytes buffered under the default sandbox");
    assert!(got > 0 && got <= 80 << 20, "pipes: {got}");
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    // Control (a root host): without the sandbox the worker is root, exempt
    // from the pipe limit, and /dev/shm is the machine's.
    let open = sup.load(spec("fx-hog").sandbox(Sandbox::none())).unwrap();
    let pid = open.worker_pids()[0];
    assert_eq!(take(&open, "pipes", 256), 256 << 20);
    let got = take(&open, "devshm", 96);
    let _ = std::fs::remove_file(format!("/dev/shm/bulkhead-hog-{pid}"));
    assert_eq!(got, 96 << 20);
}

#[test]
fn posix_message_queues_are_refused_by_default() {
    let sup = supervisor();
    // The default sandbox: mq_open is not on the system-call allow-list
    // (EPERM); behind it, RLIMIT_MSGQUEUE 0 and the IPC namespace's own mqueue
    // filesystem, which refuses the worker's uid as well.
    let h = sup.load(spec("fx-hog")).unwrap();
    let got: i64 = h.call(hog::MESSAGE_QUEUES, &(4u32,)).unwrap();
    assert_eq!(got, -(libc::EPERM as i64));
    // The deny-list lets mq_open through to the limit and the namespace.
    let compat = sup.load(spec("fx-hog").sandbox(Sandbox::compat())).unwrap();
    let got: i64 = compat.call(hog::MESSAGE_QUEUES, &(4u32,)).unwrap();
    assert!(got == -(libc::EMFILE as i64) || got == -(libc::EACCES as i64), "{got}");
    // Without the sandbox the limit alone refuses (it binds root too).
    let open = sup.load(spec("fx-hog").sandbox(Sandbox::none())).unwrap();
    let got: i64 = open.call(hog::MESSAGE_QUEUES, &(4u32,)).unwrap();
    assert_eq!(got, -(libc::EMFILE as i64));
    // Control: with a budget, the same worker gets its queues.
    let budget = sup
        .load(
            spec("fx-hog")
                .sandbox(Sandbox::none())
                .limits(Limits::new().message_queue_bytes(512 << 10)),
        )
        .unwrap();
    assert_eq!(budget.call::<_, i64>(hog::MESSAGE_QUEUES, &(4u32,)).unwrap(), 4);
}
