//! Issue 12, part B rows: zero-copy echoes, the shared-memory spin floor,
//! calls after idle gaps, the main figures with one core kept busy, and the
//! CPU an idle host with 10 plugins uses. Every baseline is measured in the
//! same run, next to the figure it is compared with.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bulkhead_host::{Plugin, PluginSpec, RestartPolicy, Supervisor};
use bulkhead_tests::{basic, blob, Fixtures};

use crate::floor::Floor;
use crate::restart::crash_to_next_answer;
use crate::{measure, summarize, us, Report, Summary};

/// Word the host writes to make the spin peer exit.
const STOP: u32 = u32::MAX;

/// Two processes ping-ponging on one shared cache line, both spinning: the
/// physical floor of a cross-process round trip through shared memory.
struct SpinFloor {
    word: NonNull<AtomicU32>,
    child: Child,
    seq: u32,
    _fd: OwnedFd,
}

impl SpinFloor {
    fn start() -> SpinFloor {
        let fd = nix::sys::memfd::memfd_create(c"spin-floor", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        let word = map_word(fd.as_fd());
        let child = Command::new(std::env::current_exe().unwrap())
            .arg("--spin-peer")
            .stdin(Stdio::from(fd.try_clone().unwrap()))
            .spawn()
            .unwrap();
        let mut f = SpinFloor {
            word,
            child,
            seq: 0,
            _fd: fd,
        };
        f.round_trip(); // the peer is up
        f
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: a live shared mapping of at least 4 bytes, 4-aligned (page
        // start), used only through this atomic.
        unsafe { self.word.as_ref() }
    }

    /// One round trip: write an odd value, spin until the peer answers it + 1.
    fn round_trip(&mut self) {
        self.seq = self.seq.wrapping_add(2) & !1;
        if self.seq >= STOP - 2 {
            self.seq = 0;
        }
        let ask = self.seq + 1;
        self.word().store(ask, Ordering::Release);
        while self.word().load(Ordering::Acquire) != ask + 1 {
            std::hint::spin_loop();
        }
    }
}

impl Drop for SpinFloor {
    fn drop(&mut self) {
        self.word().store(STOP, Ordering::Release);
        let _ = self.child.wait();
    }
}

fn map_word(fd: std::os::fd::BorrowedFd<'_>) -> NonNull<AtomicU32> {
    use nix::sys::mman::{mmap, MapFlags, ProtFlags};
    // SAFETY: a fresh shared mapping of a 4 KiB memfd; it is never unmapped
    // (the bench maps two pages in all, for its whole run).
    let p = unsafe {
        mmap(
            None,
            std::num::NonZeroUsize::new(4096).unwrap(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }
    .unwrap();
    p.cast()
}

/// The spin peer (`--spin-peer`, the memfd as stdin): answers every odd value
/// with value + 1, spinning, until told to stop or its parent dies.
pub fn spin_peer() {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let ptr = map_word(std::io::stdin().as_fd());
    // SAFETY: as in `SpinFloor::word`.
    let word = unsafe { ptr.as_ref() };
    let mut turns = 0u32;
    loop {
        let v = word.load(Ordering::Acquire);
        if v == STOP {
            return;
        }
        if v & 1 == 1 {
            word.store(v + 1, Ordering::Release);
        } else {
            std::hint::spin_loop();
            turns = turns.wrapping_add(1);
            if turns == 0 && nix::unistd::getppid().as_raw() == 1 {
                return;
            }
        }
    }
}

/// A process that keeps one core busy (`--busy-spin`) until killed.
pub fn busy_spin() {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// The busy-core load: a child process spinning on one core.
struct Busy(Child);

impl Busy {
    fn start() -> Busy {
        Busy(
            Command::new(std::env::current_exe().unwrap())
                .arg("--busy-spin")
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Our own child, still unreaped: its pid cannot have been reused.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn small_call(p: &Plugin) {
    let v: i64 = p.call(basic::ADD, &(3i64, 4i64)).unwrap();
    assert_eq!(v, 7);
}

/// All of part B's rows.
pub fn rows(sup: &Supervisor, fx: &Fixtures, report: &mut Report, quick: bool, scale: &dyn Fn(usize) -> usize) {
    let lib = fx.lib("fx-basic");
    zero_copy_rows(sup, fx, report, scale);
    let plugin = sup.load(PluginSpec::new(&lib)).expect("load");
    let quiet = spin_floor_rows(&plugin, report, scale, "");
    busy_core_rows(sup, &lib, &plugin, report, scale, quick, quiet);
    drop(plugin);
    let idle_plugins = if quick { 20 } else { 1000 };
    idle_call_rows(sup, &lib, report, quick, idle_plugins);
    idle_cpu_row(sup, &lib, report, quick);
}

/// 256 KiB and 16 MiB raw echoes through `call_raw_filled` and the in-place
/// reply, both buffer strategies, against the socketpair in the same run.
pub fn zero_copy_rows(sup: &Supervisor, fx: &Fixtures, report: &mut Report, scale: &dyn Fn(usize) -> usize) {
    let alloc = sup.load(PluginSpec::new(fx.lib("fx-basic"))).expect("load fx-basic");
    let arena = sup
        .load(PluginSpec::new(fx.lib("fx-arena")).arena_capacity(17 << 20))
        .expect("load fx-arena");
    let mut floor = Floor::start();
    for size in [256usize << 10, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let n = scale(if size > 1 << 20 { 60 } else { 1000 });
        let warm = (n / 10).max(2);
        let label = if size >= 1 << 20 {
            format!("{} MiB", size >> 20)
        } else {
            format!("{} KiB", size >> 10)
        };
        let mut reply = Vec::new();
        let zc = |p: &Plugin, slot: u32| {
            measure(warm, n, || {
                let r = p.call_raw_filled(slot, size, |buf| buf.copy_from_slice(&data)).unwrap();
                assert!(r.in_shared_memory() && r.len() == size && r[size - 1] == data[size - 1]);
            })
        };
        let zc_alloc = zc(&alloc, basic::ECHO_RAW);
        let zc_arena = zc(&arena, blob::ECHO_RAW);
        let copy_alloc = measure(warm, n, || {
            alloc.call_raw_into(basic::ECHO_RAW, &data, &mut reply).unwrap();
            assert_eq!(reply.len(), size);
        });
        let fl = measure(warm, n, || floor.round_trip(size + 17, size + 17));
        for (subject, s) in [
            ("zero_copy_plugin_allocated", &zc_alloc),
            ("zero_copy_arena", &zc_arena),
            ("call_raw_into_plugin_allocated", &copy_alloc),
            ("socketpair", &fl),
        ] {
            report.json("echo_zero_copy", subject, s, &format!(",\"bytes\":{size}"));
        }
        let (ra, rb) = (ratio(zc_alloc.median, fl.median), ratio(zc_arena.median, fl.median));
        println!(
            "{{\"bench\":\"echo_zero_copy\",\"bytes\":{size},\"ratio_vs_socketpair_plugin_allocated\":{ra:.3},\"ratio_vs_socketpair_arena\":{rb:.3}}}"
        );
        report.row(
            format!("echo {label} zero-copy (call_raw_filled + RawReply), PluginAllocated / Arena"),
            format!("{} / {}", us(zc_alloc.median), us(zc_arena.median)),
            format!(
                "**{ra:.2}× / {rb:.2}× socketpair**; socketpair {}; call_raw_into {} ({:.2}×)",
                us(fl.median),
                us(copy_alloc.median),
                ratio(copy_alloc.median, fl.median)
            ),
        );
    }
}

/// Figures measured again under a busy core, to compare with the quiet ones.
struct Quiet {
    spin: Summary,
    call: Summary,
}

/// The spin floor and the small call next to it.
fn spin_floor_rows(plugin: &Plugin, report: &mut Report, scale: &dyn Fn(usize) -> usize, tag: &str) -> Quiet {
    let n = scale(20_000);
    let mut spin = SpinFloor::start();
    let s = measure(2000.min(n), n, || spin.round_trip());
    drop(spin);
    let c = measure(2000.min(n), n, || small_call(plugin));
    // What the check for unsolicited socket bytes would cost per answer (one
    // FIONREAD); it runs only when the bell thread has flagged the socket.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let peek = measure(2000.min(n), n, || {
        assert_eq!(rustix::io::ioctl_fionread(&a).unwrap(), 0);
    });
    let subject = if tag.is_empty() { "quiet" } else { "busy_core" };
    report.json("socket_check", subject, &peek, "");
    report.json("spin_floor", subject, &s, "");
    report.json("small_call_vs_spin_floor", subject, &c, "");
    let r = ratio(c.median, s.median);
    println!("{{\"bench\":\"small_call_vs_spin_floor\",\"subject\":\"{subject}\",\"ratio\":{r:.3}}}");
    report.row(
        format!("shared-memory spin floor{tag}"),
        format!("{} / {}", us(s.median), us(s.p99)),
        "two processes ping-ponging on one cache line, both spinning; median / p99".into(),
    );
    report.row(
        format!("add(i64,i64) vs the spin floor{tag}"),
        format!("{} / {}", us(c.median), us(c.p99)),
        format!(
            "**{r:.2}× spin floor** (same run); median / p99; no syscall on the path (the `FIONREAD` check for unsolicited socket bytes, {}, runs only when the bell thread flags the socket)",
            us(peek.median)
        ),
    );
    Quiet { spin: s, call: c }
}

/// Calls after idle gaps of 10 and 100 ms, interleaved with socketpair round
/// trips to a peer process idle just as long, with many plugins loaded.
fn idle_call_rows(sup: &Supervisor, lib: &std::path::Path, report: &mut Report, quick: bool, count: usize) {
    let t = Instant::now();
    let mut others = Vec::with_capacity(count);
    // Loaded as a batch (several loads in flight at once).
    for r in sup.load_many((1..count).map(|_| PluginSpec::new(lib))) {
        match r {
            Ok(p) => others.push(p),
            Err(e) => println!("{{\"bench\":\"idle_call\",\"load_failed\":\"{e}\"}}"),
        }
    }
    let plugin = sup.load(PluginSpec::new(lib)).expect("load");
    let loaded = others.len() + 1;
    println!(
        "{{\"bench\":\"idle_call\",\"plugins_loaded\":{loaded},\"load_s\":{:.2}}}",
        t.elapsed().as_secs_f64()
    );
    let mut floor = Floor::start();
    small_call(&plugin);
    floor.round_trip(33, 25);
    for (gap, n) in [(Duration::from_millis(10), 200), (Duration::from_millis(100), 60)] {
        let n = if quick { 5 } else { n };
        let (mut calls, mut pairs) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            std::thread::sleep(gap);
            let t = Instant::now();
            small_call(&plugin);
            calls.push(t.elapsed());
            std::thread::sleep(gap);
            let t = Instant::now();
            floor.round_trip(33, 25);
            pairs.push(t.elapsed());
        }
        let (c, f) = (summarize(calls), summarize(pairs));
        let ms = gap.as_millis();
        report.json(
            "idle_call",
            &format!("bulkhead_{ms}ms"),
            &c,
            &format!(",\"plugins\":{loaded}"),
        );
        report.json("idle_call", &format!("socketpair_{ms}ms"), &f, "");
        let r = ratio(c.median, f.median);
        println!("{{\"bench\":\"idle_call\",\"gap_ms\":{ms},\"ratio_vs_socketpair\":{r:.3}}}");
        report.row(
            format!("add(i64,i64) after {ms} ms idle"),
            format!("{} / {}", us(c.median), us(c.p99)),
            format!(
                "**{r:.2}× socketpair** idle {ms} ms ({} / {}); {loaded} plugins loaded; median / p99",
                us(f.median),
                us(f.p99)
            ),
        );
    }
    drop(others);
}

/// The main figures again with one core kept busy by another process.
#[allow(clippy::too_many_arguments)]
fn busy_core_rows(
    sup: &Supervisor,
    lib: &std::path::Path,
    plugin: &Plugin,
    report: &mut Report,
    scale: &dyn Fn(usize) -> usize,
    quick: bool,
    quiet: Quiet,
) {
    // The quiet figures first, in this run, for comparison.
    let spawn_quiet = measure(2, scale(40), || {
        let p = sup.load(PluginSpec::new(lib)).unwrap();
        drop(p);
    });
    let policy = RestartPolicy::on_failure(100_000, Duration::from_secs(60)).backoff(bulkhead_host::Backoff::none());
    let p = sup.load(PluginSpec::new(lib).restart(policy.clone())).expect("load");
    let restart_quiet = crash_to_next_answer(&p, scale(40), || {});
    drop(p);
    let busy = Busy::start();
    let tag = ", one core busy";
    let b = spin_floor_rows(plugin, report, scale, tag);
    report.row(
        "add(i64,i64), quiet → one core busy".into(),
        format!("{} → {}", us(quiet.call.median), us(b.call.median)),
        format!("spin floor {} → {}", us(quiet.spin.median), us(b.spin.median)),
    );
    // Idle call under load.
    let mut floor = Floor::start();
    let n = if quick { 5 } else { 40 };
    let (mut calls, mut pairs) = (Vec::new(), Vec::new());
    for _ in 0..n {
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        small_call(plugin);
        calls.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        floor.round_trip(33, 25);
        pairs.push(t.elapsed());
    }
    drop(floor);
    let (c, f) = (summarize(calls), summarize(pairs));
    report.json("idle_call", "bulkhead_100ms_busy_core", &c, "");
    report.json("idle_call", "socketpair_100ms_busy_core", &f, "");
    report.row(
        format!("add(i64,i64) after 100 ms idle{tag}"),
        format!("{} / {}", us(c.median), us(c.p99)),
        format!(
            "**{:.2}× socketpair** idle 100 ms ({}); median / p99",
            ratio(c.median, f.median),
            us(f.median)
        ),
    );
    // Spawn → ready and crash → next answer, sandbox on (the default).
    let spawn = measure(2, scale(40), || {
        let p = sup.load(PluginSpec::new(lib)).unwrap();
        drop(p);
    });
    report.json("spawn", "load_to_ready_sandbox_busy_core", &spawn, "");
    report.row(
        format!("spawn → ready (load), sandbox on{tag}"),
        format!("{} / {}", us(spawn.median), us(spawn.p99)),
        format!(
            "median / p99; quiet, same run: {} / {}",
            us(spawn_quiet.median),
            us(spawn_quiet.p99)
        ),
    );
    let p = sup.load(PluginSpec::new(lib).restart(policy)).expect("load");
    let restart = crash_to_next_answer(&p, scale(40), || {});
    report.json("restart", "crash_to_next_answer_sandbox_busy_core", &restart, "");
    report.row(
        format!("crash → next answer, no standby, sandbox on{tag}"),
        format!("{} / {}", us(restart.median), us(restart.p99)),
        format!(
            "median / p99; quiet, same run: {} / {}",
            us(restart_quiet.median),
            us(restart_quiet.p99)
        ),
    );
    drop(p);
    drop(busy);
}

/// CPU time of this process and every descendant (workers, their sandbox
/// helpers), from `/proc/<pid>/stat` (utime + stime, clock ticks).
fn tree_cpu_ticks() -> (u64, usize) {
    let tree = bulkhead_tests::process_tree(std::process::id());
    let ticks = tree.iter().map(|&pid| bulkhead_tests::cpu_ticks(pid)).sum();
    (ticks, tree.len())
}

/// 10 plugins loaded and called once, then idle for 10 s: CPU used meanwhile
/// by the host and every worker process.
fn idle_cpu_row(sup: &Supervisor, lib: &std::path::Path, report: &mut Report, quick: bool) {
    let plugins: Vec<_> = (0..10).map(|_| sup.load(PluginSpec::new(lib)).unwrap()).collect();
    for p in &plugins {
        small_call(p);
    }
    // The fork-server forks its next pre-forked worker shortly after the
    // last load: idle starts once that one is ready.
    sup.wait_for_blank(&PluginSpec::new(lib), Instant::now() + Duration::from_secs(10));
    let idle = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    };
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let (before, processes) = tree_cpu_ticks();
    std::thread::sleep(idle);
    let (after, _) = tree_cpu_ticks();
    let used_ms = after.saturating_sub(before) * 1000 / tick;
    println!(
        "{{\"bench\":\"idle_cpu\",\"plugins\":10,\"idle_s\":{},\"processes\":{processes},\"cpu_ms\":{used_ms},\"tick_ms\":{}}}",
        idle.as_secs(),
        1000 / tick
    );
    report.row(
        format!("idle CPU, 10 plugins, {} s", idle.as_secs()),
        format!("{used_ms} ms"),
        format!(
            "host + all {} descendant processes (workers, sandbox helpers), utime + stime from /proc; resolution {} ms",
            processes - 1,
            1000 / tick
        ),
    );
    drop(plugins);
}
