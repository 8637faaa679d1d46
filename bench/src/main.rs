//! `bulkhead-bench`: what isolation costs, measured against baselines in the
//! same run. Run with `cargo run --release -p bulkhead-bench` (add `--quick`
//! for a smoke run). Prints a table and one JSON line per figure.

mod coldstart;
mod containment;
mod fastpath;
mod filter;
mod floor;
mod house;
mod inproc;
mod restart;
mod scale;

use std::time::{Duration, Instant};

use bulkhead_host::{Backoff, CallError, PluginSpec, RestartPolicy, Sandbox, Supervisor, Transport};
use bulkhead_tests::{basic, build_fixtures};

use floor::Floor;
use inproc::InProc;

/// Median, p99 and count of a set of samples.
#[derive(Clone, Copy)]
struct Summary {
    median: Duration,
    p99: Duration,
    n: usize,
}

fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let n = v.len();
    Summary {
        median: v[n / 2],
        p99: v[((n * 99) / 100).min(n - 1)],
        n,
    }
}

/// Times `f` `n` times after `warm` warm-up runs.
fn measure(warm: usize, n: usize, mut f: impl FnMut()) -> Summary {
    for _ in 0..warm {
        f();
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    summarize(v)
}

struct Report {
    rows: Vec<(String, String, String)>,
}

impl Report {
    fn json(&self, bench: &str, subject: &str, s: &Summary, extra: &str) {
        println!(
            "{{\"bench\":\"{bench}\",\"subject\":\"{subject}\",\"median_ns\":{},\"p99_ns\":{},\"n\":{}{extra}}}",
            s.median.as_nanos(),
            s.p99.as_nanos(),
            s.n
        );
    }
    fn row(&mut self, figure: String, value: String, note: String) {
        self.rows.push((figure, value, note));
    }
    fn print(&self, started: Instant) {
        println!();
        println!("| figure | bulkhead | baselines / notes |");
        println!("|---|---|---|");
        for (a, b, c) in &self.rows {
            println!("| {a} | {b} | {c} |");
        }
        println!(
            "\nbench finished in {:.1?} ({} cores)",
            started.elapsed(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
    }
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() {
    procspawn::init();
    if std::env::args().any(|a| a == "--echo-peer") {
        return floor::echo_peer();
    }
    if std::env::args().any(|a| a == "--spin-peer") {
        return fastpath::spin_peer();
    }
    if std::env::args().any(|a| a == "--busy-spin") {
        return fastpath::busy_spin();
    }
    let only_part_b = std::env::args().any(|a| a == "--part-b");
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = |n: usize| if quick { (n / 20).max(3) } else { n };
    let started = Instant::now();
    let fx = build_fixtures(true);
    let lib = fx.lib("fx-basic");
    let sup = Supervisor::builder().worker_path(&fx.worker).build().expect("worker");
    // The default profile's fork-server starts in the background after the
    // first load; the rows below measure a settled host, so start it now.
    sup.wait_for_blank(&PluginSpec::new(&lib), Instant::now() + Duration::from_secs(10));
    let mut report = Report { rows: Vec::new() };
    if std::env::args().any(|a| a == "--scale-only") {
        scale::rows(&fx.worker, &lib, &mut report, quick);
        return report.print(started);
    }
    if std::env::args().any(|a| a == "--containment-only") {
        containment::rows(&fx, &mut report, quick);
        return report.print(started);
    }
    if std::env::args().any(|a| a == "--filter-only") {
        filter::rows(&fx, &mut report, quick);
        return report.print(started);
    }
    if std::env::args().any(|a| a == "--coldstart-only") {
        coldstart::rows(&fx, &mut report, &scale);
        return report.print(started);
    }
    if std::env::args().any(|a| a == "--restart-only") {
        restart::rows(&fx, &mut report, &scale);
        return report.print(started);
    }
    if std::env::args().any(|a| a == "--async-only") {
        let plugin = sup.load(PluginSpec::new(&lib)).expect("load");
        async_concurrent_row(&plugin, &mut report, &scale);
        return report.print(started);
    }
    if std::env::args().any(|a| a == "--paths-only") {
        // The call paths of issue 21: streams, callbacks, async.
        stream_and_callback_rows(&sup, &fx, &mut report, scale);
        let plugin = sup.load(PluginSpec::new(&lib)).expect("load");
        async_concurrent_row(&plugin, &mut report, &scale);
        return report.print(started);
    }
    if std::env::args().any(|a| a == "--house-only") {
        house::rows(&sup, &fx, &mut report, &scale);
        return report.print(started);
    }
    if std::env::args().any(|a| a == "--zero-copy-only") {
        fastpath::zero_copy_rows(&sup, &fx, &mut report, &scale);
        return report.print(started);
    }
    if only_part_b {
        // Only issue 12 part B's rows (for iterating on them).
        fastpath::rows(&sup, &fx, &mut report, quick, &scale);
        return report.print(started);
    }
    let policy = RestartPolicy::on_failure(100_000, Duration::from_secs(60)).backoff(Backoff::none());

    // --- small call: add(i64, i64) -------------------------------------------------
    let plugin = sup.load(PluginSpec::new(&lib).restart(policy.clone())).expect("load");
    assert_eq!(plugin.info().transport, Transport::SharedMemory);
    let sock_plugin = sup
        .load(PluginSpec::new(&lib).transport(Transport::Socket))
        .expect("load");
    let unsandboxed = sup.load(PluginSpec::new(&lib).sandbox(Sandbox::none())).expect("load");
    let inproc = InProc::load(&lib);
    let mut floor = Floor::start();
    let mut out = Vec::new();
    let n = scale(20_000);
    let b = measure(2000.min(n), n, || {
        let v: i64 = plugin.call(basic::ADD, &(3i64, 4i64)).unwrap();
        assert_eq!(v, 7);
    });
    let bn = measure(2000.min(n), n, || {
        let v: i64 = unsandboxed.call(basic::ADD, &(3i64, 4i64)).unwrap();
        assert_eq!(v, 7);
    });
    drop(unsandboxed);
    let bs = measure(2000.min(n), n, || {
        let v: i64 = sock_plugin.call(basic::ADD, &(3i64, 4i64)).unwrap();
        assert_eq!(v, 7);
    });
    let i = measure(2000.min(n), n, || {
        let input = bincode::serialize(&(3i64, 4i64)).unwrap();
        assert_eq!(inproc.call(basic::ADD, &input, &mut out), 0);
        let v: i64 = bincode::deserialize(&out).unwrap();
        assert_eq!(v, 7);
    });
    // Same byte counts as the bulkhead call: 33-byte request, 25-byte reply frames.
    let f = measure(2000.min(n), n, || floor.round_trip(33, 25));
    report.json("small_call", "bulkhead_shm", &b, "");
    report.json("small_call", "bulkhead_shm_no_sandbox", &bn, "");
    report.json("small_call", "bulkhead_socket", &bs, "");
    let sandbox_ratio = b.median.as_secs_f64() / bn.median.as_secs_f64();
    println!("{{\"bench\":\"small_call\",\"ratio_sandbox_vs_none\":{sandbox_ratio:.3}}}");
    report.json("small_call", "in_process", &i, "");
    report.json("small_call", "socketpair", &f, "");
    let ratio = b.median.as_secs_f64() / f.median.as_secs_f64();
    println!(
        "{{\"bench\":\"small_call\",\"ratio_vs_socketpair\":{ratio:.3},\"ratio_vs_in_process\":{:.1}}}",
        b.median.as_secs_f64() / i.median.as_secs_f64()
    );
    report.row(
        "add(i64,i64) median / p99".into(),
        format!("{} / {}", us(b.median), us(b.p99)),
        format!(
            "**{ratio:.3}× socketpair**; sandbox off {} ({sandbox_ratio:.2}× with it on); socket transport {} / {}; in-process {} / {}; socketpair {} / {}",
            us(bn.median),
            us(bs.median),
            us(bs.p99),
            us(i.median),
            us(i.p99),
            us(f.median),
            us(f.p99)
        ),
    );

    // --- async small call: the same add through call_async (tokio) --------------------
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let ba = rt.block_on(async {
        let one = || async {
            let v: i64 = plugin.call_async(basic::ADD, &(3i64, 4i64)).await.unwrap();
            assert_eq!(v, 7);
        };
        for _ in 0..2000.min(n) {
            one().await;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            one().await;
            v.push(t.elapsed());
        }
        summarize(v)
    });
    drop(rt);
    report.json("small_call", "bulkhead_shm_async", &ba, "");
    report.row(
        "add(i64,i64) via call_async (tokio, current-thread) median / p99".into(),
        format!("{} / {}", us(ba.median), us(ba.p99)),
        format!(
            "sync call {} / {}; the call waits as a task (5 µs watch, then the region's doorbell); no blocking-pool thread",
            us(b.median),
            us(b.p99)
        ),
    );

    // --- 1,000 concurrent async calls: latency and the threads they take -------------
    async_concurrent_row(&plugin, &mut report, &scale);

    // --- echo ------------------------------------------------------------------------
    for size in [64usize, 4 << 10, 256 << 10, 1 << 20, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let n = scale(match size {
            s if s <= 4096 => 5000,
            s if s <= 1 << 20 => 500,
            _ => 40,
        });
        let warm = (n / 10).max(1);
        let mut reply = Vec::new();
        let raw = measure(warm, n, || {
            plugin.call_raw_into(basic::ECHO_RAW, &data, &mut reply).unwrap();
            assert_eq!(reply.len(), size);
        });
        let typed = measure(warm, n, || {
            let r: Vec<u8> = plugin.call(basic::ECHO, &(data.clone(),)).unwrap();
            assert_eq!(r.len(), size);
        });
        let sock_raw = measure(warm, n, || {
            sock_plugin.call_raw_into(basic::ECHO_RAW, &data, &mut reply).unwrap();
            assert_eq!(reply.len(), size);
        });
        let inp = measure(warm, n, || {
            assert_eq!(inproc.call(basic::ECHO_RAW, &data, &mut out), 0);
            assert_eq!(out.len(), size);
        });
        let fl = measure(warm, n, || floor.round_trip(size + 17, size + 17));
        let mut dst = vec![0u8; size];
        let mc = measure(warm, n, || {
            dst.copy_from_slice(std::hint::black_box(&data));
            std::hint::black_box(&dst);
        });
        let label = match size {
            s if s >= 1 << 20 => format!("{} MiB", s >> 20),
            s if s >= 1 << 10 => format!("{} KiB", s >> 10),
            s => format!("{s} B"),
        };
        for (subject, s) in [
            ("bulkhead_shm_raw", &raw),
            ("bulkhead_shm_typed", &typed),
            ("bulkhead_socket_raw", &sock_raw),
            ("in_process", &inp),
            ("socketpair", &fl),
            ("memcpy", &mc),
        ] {
            report.json(
                "echo",
                subject,
                s,
                &format!(",\"bytes\":{size},\"gb_per_s\":{:.3}", gbps(size, s.median)),
            );
        }
        report.row(
            format!("echo {label} raw / typed"),
            format!(
                "{} / {} ({:.2} GB/s)",
                us(raw.median),
                us(typed.median),
                gbps(size, raw.median)
            ),
            format!(
                "**{:.2}× socketpair**; socket transport {}; in-process {}; socketpair {}; 2×memcpy {}",
                raw.median.as_secs_f64() / fl.median.as_secs_f64(),
                us(sock_raw.median),
                us(inp.median),
                us(fl.median),
                us(mc.median * 2)
            ),
        );
    }
    drop(floor);
    drop(sock_plugin);

    // --- restart latency and spawn-to-ready: fork-server vs exec, sandbox on and off ---
    restart::rows(&fx, &mut report, &scale);
    coldstart::rows(&fx, &mut report, &scale);

    // --- the seccomp allow-list against the deny-list ---------------------------------
    filter::rows(&fx, &mut report, quick);

    // --- timeout precision --------------------------------------------------------------
    let limit = Duration::from_millis(20);
    let n = scale(40);
    let mut over = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let e = plugin.call_with_timeout::<_, u64>(basic::SPIN, &(), limit).unwrap_err();
        let el = t.elapsed();
        assert!(matches!(e, CallError::Timeout { .. }), "{e:?}");
        over.push(el.saturating_sub(limit));
        let _: i64 = plugin.call(basic::ADD, &(1i64, 1i64)).unwrap();
    }
    let over = summarize(over);
    report.json("timeout", "past_deadline", &over, "");
    report.row(
        "timeout error past the deadline".into(),
        format!("{} / {}", us(over.median), us(over.p99)),
        "20 ms limit, loop {} plugin; p50 / p99".into(),
    );
    drop(plugin);

    // --- throughput: 1, 2, 4 workers from 4 threads ----------------------------------------
    let iters = 100_000u64;
    let mut base = 0.0;
    for workers in [1usize, 2, 4] {
        let p = sup.load(PluginSpec::new(&lib).workers(workers)).unwrap();
        let dur = if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        };
        let t = Instant::now();
        let counts: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let p = p.clone();
                    s.spawn(move || {
                        let mut c = 0u64;
                        while t.elapsed() < dur {
                            let _: u64 = p.call(basic::WORK, &(iters,)).unwrap();
                            c += 1;
                        }
                        c
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let rate = counts.iter().sum::<u64>() as f64 / t.elapsed().as_secs_f64();
        if workers == 1 {
            base = rate;
        }
        println!("{{\"bench\":\"throughput\",\"workers\":{workers},\"threads\":4,\"calls_per_s\":{rate:.0},\"vs_1_worker\":{:.2}}}", rate / base);
        report.row(
            format!("throughput, {workers} worker(s), 4 threads"),
            format!("{rate:.0} calls/s"),
            format!("CPU-bound work({iters}); {:.2}× 1 worker", rate / base),
        );
    }
    let inproc_work = measure(3, scale(200), || {
        let input = bincode::serialize(&(iters,)).unwrap();
        inproc.call(basic::WORK, &input, &mut out);
    });
    report.row(
        "work() in-process, one call".into(),
        us(inproc_work.median),
        "for scale".into(),
    );

    // --- streams and host callbacks ----------------------------------------------------------
    stream_and_callback_rows(&sup, &fx, &mut report, scale);

    // --- zero-copy, spin floor, idle calls, busy core, idle CPU (issue 12, part B) -------------
    fastpath::rows(&sup, &fx, &mut report, quick, &scale);

    // --- memory ------------------------------------------------------------------------------
    let rss = || status_kb("/proc/self/status", "VmRSS:");
    let before = rss();
    let plugins: Vec<_> = (0..10).map(|_| sup.load(PluginSpec::new(&lib)).unwrap()).collect();
    let after = rss();
    // The sandboxed worker is three processes: outer (the pid the host knows),
    // init, and the process that runs the plugin.
    let outer = plugins[0].info().worker_pid;
    let inner = bulkhead_tests::plugin_process(outer);
    let init = bulkhead_tests::all_processes()
        .into_iter()
        .find(|p| p.0 != inner && p.1 == outer)
        .map_or(0, |p| p.0);
    let helpers_rss =
        status_kb(&format!("/proc/{outer}/status"), "VmRSS:") + status_kb(&format!("/proc/{init}/status"), "VmRSS:");
    let worker_rss = status_kb(&format!("/proc/{inner}/status"), "VmRSS:");
    println!(
        "{{\"bench\":\"memory\",\"host_kib_per_idle_plugin\":{},\"worker_rss_kib\":{worker_rss}}}",
        (after.saturating_sub(before)) / 10
    );
    report.row(
        "host memory per idle plugin".into(),
        format!("{} KiB", after.saturating_sub(before) / 10),
        "RSS delta over 10 plugins".into(),
    );
    report.row(
        "worker RSS".into(),
        format!("{worker_rss} KiB"),
        format!("one idle fx-basic worker; its sandbox's outer process and init add {helpers_rss} KiB"),
    );
    drop(plugins);

    // --- scale: 10, 100, 1,000 plugins ----------------------------------------------------
    scale::rows(&fx.worker, &lib, &mut report, quick);

    // --- resource containment: neighbours, output cost ---------------------------------
    containment::rows(&fx, &mut report, quick);

    report.print(started);
}

/// 1,000 concurrent `call_async`s on one worker: the whole batch's time and
/// how many threads the process gained (the bell thread; a blocking pool would show here).
fn async_concurrent_row(plugin: &bulkhead_host::Plugin, report: &mut Report, scale: &impl Fn(usize) -> usize) {
    let concurrent = scale(1000);
    let rounds = scale(20).max(3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let threads_before = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(threads_before));
    let batch = measure(1, rounds, || {
        rt.block_on(async {
            let tasks: Vec<_> = (0..concurrent)
                .map(|i| {
                    let call = plugin.call_async::<_, i64>(basic::ADD, &(i as i64, 1i64));
                    tokio::spawn(call)
                })
                .collect();
            for (i, t) in tasks.into_iter().enumerate() {
                assert_eq!(t.await.unwrap().unwrap(), i as i64 + 1);
            }
        });
        let now = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
        peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    });
    drop(rt);
    let extra_threads = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(threads_before);
    report.json(
        "async_concurrent",
        "bulkhead_shm_async",
        &batch,
        &format!(",\"calls\":{concurrent},\"extra_threads\":{extra_threads}"),
    );
    report.row(
        format!("{concurrent} concurrent call_async (tokio, current-thread): whole batch / threads added"),
        format!("{} / {extra_threads}", us(batch.median)),
        format!(
            "median over {rounds} batches of add(i64,i64) on one worker ({:.2} µs per call); threads counted after each batch (none expected: the one thread async calls use, `bulkhead-bells`, already runs, watching worker sockets)",
            batch.median.as_secs_f64() * 1e6 / concurrent as f64
        ),
    );
}

/// Per-item medians and p99s of a server stream (`count`) and a client stream
/// (`sum`) of `n` u64 items, over `rounds` streams each.
fn stream_item_costs(p: &bulkhead_host::Plugin, n: u64, rounds: usize) -> (Summary, Summary) {
    use bulkhead_tests::streams;
    let per_item = |s: Summary| Summary {
        median: s.median / n as u32,
        p99: s.p99 / n as u32,
        n: s.n,
    };
    let server = per_item(measure(1, rounds, || {
        let got = p.stream::<_, u64>(streams::COUNT, &(n,)).unwrap().count();
        assert_eq!(got as u64, n);
    }));
    let client = per_item(measure(1, rounds, || {
        let total: u64 = p.call_client_stream(streams::SUM, 0..n, &(0u64,)).unwrap();
        assert_eq!(total, n * (n - 1) / 2);
    }));
    (server, client)
}

/// Per-item cost of server and client streams, per-round-trip cost of host
/// callbacks, and the cost of a call on a plugin that imports a host interface.
fn stream_and_callback_rows(
    sup: &Supervisor,
    fx: &bulkhead_tests::Fixtures,
    report: &mut Report,
    scale: impl Fn(usize) -> usize,
) {
    use bulkhead_host::HostInterface;
    use bulkhead_tests::{streams, uses_host};
    let n = scale(20_000) as u64;
    let rounds = scale(20).max(3);
    for transport in [Transport::SharedMemory, Transport::Socket] {
        let name = if transport == Transport::Socket {
            "socket"
        } else {
            "shm"
        };
        let p = sup
            .load(
                PluginSpec::new(fx.lib("fx-stream"))
                    .plugin("StreamPlugin")
                    .transport(transport),
            )
            .expect("load fx-stream");
        let (server, client) = stream_item_costs(&p, n, rounds);
        let open = measure(10, scale(2000), || {
            assert_eq!(p.stream::<_, u64>(streams::COUNT, &(0u64,)).unwrap().count(), 0);
        });
        report.json("stream_item", &format!("server_{name}"), &server, "");
        report.json("stream_item", &format!("client_{name}"), &client, "");
        report.json("stream_open_close", name, &open, "");
        report.row(
            format!("streamed item, server / client ({name})"),
            format!("{} / {}", us(server.median), us(client.median)),
            format!(
                "median over {rounds} streams of {n} u64 items; open + end + close of an empty stream {}",
                us(open.median)
            ),
        );
    }
    // Host callbacks: the hash is whatever the fixture was built with; read it
    // from a failed load's error rather than linking the interface crate here.
    let lib = fx.lib("fx-host");
    let (hash, version) = match sup.load(PluginSpec::new(&lib)) {
        Err(bulkhead_host::LoadError::Rejected {
            reason: bulkhead_host::LoadFailure::ImportNotProvided { hash, version, .. },
            ..
        }) => (hash, version),
        other => panic!("expected ImportNotProvided, got {other:?}"),
    };
    // The baseline: a plain call on a plugin without host imports.
    let basic = sup.load(PluginSpec::new(fx.lib("fx-basic"))).expect("load fx-basic");
    let plain_call = measure(200, scale(5000), || {
        assert_eq!(
            basic.call::<_, i64>(bulkhead_tests::basic::ADD, &(1i64, 2i64)).unwrap(),
            3
        );
    });
    drop(basic);
    report.json("callback", "plain_call_without_imports_shm", &plain_call, "");
    for transport in [Transport::SharedMemory, Transport::Socket] {
        let name = if transport == Transport::Socket {
            "socket"
        } else {
            "shm"
        };
        let iface = HostInterface::new("Host", hash, version, 3)
            .function(0, |(k,): (String,)| k)
            .fallible(1, |(v,): (u64,)| Ok(v * 2));
        let p = sup
            .load(
                PluginSpec::new(&lib)
                    .transport(transport)
                    .host_interface(iface)
                    .max_callbacks(u32::MAX),
            )
            .expect("load fx-host");
        let per_cb = |s: Summary| Summary {
            median: s.median / n as u32,
            p99: s.p99 / n as u32,
            n: s.n,
        };
        let cb = per_cb(measure(1, rounds, || {
            let (ok, _): (u64, String) = p.call(uses_host::FLOOD, &(n,)).unwrap();
            assert_eq!(ok, n);
        }));
        let plain = measure(200, scale(5000), || {
            assert!(p.call::<_, bool>(uses_host::BOUND, &()).unwrap());
        });
        let one = measure(200, scale(5000), || {
            let s: String = p.call(uses_host::ASK, &("k".to_string(),)).unwrap();
            assert_eq!(s, "got k");
        });
        report.json("callback", &format!("round_trip_{name}"), &cb, "");
        report.json("callback", &format!("call_no_callback_{name}"), &plain, "");
        report.json("callback", &format!("call_one_callback_{name}"), &one, "");
        report.row(
            format!("host callback round trip ({name})"),
            us(cb.median),
            format!(
                "median over {rounds} calls of {n} callbacks; a call on a plugin with host imports {} (**{:.2}×** a plain call on a plugin without imports, {}), with one callback {}",
                us(plain.median),
                plain.median.as_secs_f64() / plain_call.median.as_secs_f64().max(1e-12),
                us(plain_call.median),
                us(one.median)
            ),
        );
    }
}

fn status_kb(path: &str, field: &str) -> u64 {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
