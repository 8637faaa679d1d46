//! `--house-only`: the rows a refactoring of the call paths must leave within
//! noise — small call, 256 KiB echo, stream items, restart — for comparing
//! two builds on the same machine (run each binary, alternately).

use bulkhead_host::{PluginSpec, Supervisor, Transport};
use bulkhead_tests::{basic, Fixtures};

use crate::{measure, us, Report};

/// The house rows.
pub fn rows(sup: &Supervisor, fx: &Fixtures, report: &mut Report, scale: &impl Fn(usize) -> usize) {
    let spec = PluginSpec::new(fx.lib("fx-basic"));
    let p = sup.load(spec.clone()).expect("load fx-basic");
    assert_eq!(p.info().transport, Transport::SharedMemory);
    // The profile's fork-server starts in the background after the first
    // load: measure once it has settled, not while it competes for the CPUs.
    sup.wait_for_blank(&spec, std::time::Instant::now() + std::time::Duration::from_secs(10));
    let n = scale(20_000);
    let small = measure(2000.min(n), n, || {
        let v: i64 = p.call(basic::ADD, &(3i64, 4i64)).unwrap();
        assert_eq!(v, 7);
    });
    report.json("house", "small_call_shm", &small, "");
    report.row(
        "house: add(i64,i64) median / p99".into(),
        format!("{} / {}", us(small.median), us(small.p99)),
        String::new(),
    );

    let data: Vec<u8> = (0..256 << 10).map(|i| i as u8).collect();
    let mut reply = Vec::new();
    let n = scale(500);
    let echo = measure(n / 10, n, || {
        p.call_raw_into(basic::ECHO_RAW, &data, &mut reply).unwrap();
        assert_eq!(reply.len(), data.len());
    });
    report.json("house", "echo_256k_raw_shm", &echo, "");
    report.row(
        "house: echo 256 KiB raw median / p99".into(),
        format!("{} / {}", us(echo.median), us(echo.p99)),
        String::new(),
    );
    drop(p);

    let s = sup
        .load(PluginSpec::new(fx.lib("fx-stream")).plugin("StreamPlugin"))
        .expect("load fx-stream");
    let (server, client) = crate::stream_item_costs(&s, scale(20_000) as u64, scale(20).max(3));
    report.json("house", "stream_item_server_shm", &server, "");
    report.json("house", "stream_item_client_shm", &client, "");
    report.row(
        "house: streamed item, server / client (shm)".into(),
        format!("{} / {}", us(server.median), us(client.median)),
        String::new(),
    );
    drop(s);

    crate::restart::rows(fx, report, scale);
}
