//! Idle means idle: after calls, workers spin only briefly and then sleep on
//! their futex, and the host waits on events. Neither uses CPU while nobody
//! calls. (One test in this binary, so no other test's threads are counted.)

use std::time::Duration;

use bulkhead_tests::{basic, cpu_ticks, process_tree, spec, supervisor};

#[test]
fn idle_workers_and_host_use_no_cpu() {
    let sup = supervisor();
    let plugins: Vec<_> = (0..3).map(|_| sup.load(spec("fx-basic")).unwrap()).collect();
    for p in &plugins {
        for _ in 0..1000 {
            let v: i64 = p.call(basic::ADD, &(1i64, 2i64)).unwrap();
            assert_eq!(v, 3);
        }
    }
    let me = std::process::id();
    let workers: Vec<u32> = process_tree(me).into_iter().filter(|&p| p != me).collect();
    assert!(workers.len() >= 3, "{workers:?}");
    let before: Vec<u64> = workers.iter().map(|&p| cpu_ticks(p)).collect();
    let host_before = cpu_ticks(me);
    // The idle period being measured (not a synchronisation).
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<u64> = workers.iter().map(|&p| cpu_ticks(p)).collect();
    let host_after = cpu_ticks(me);
    // A worker or host thread still spinning would use ~100 ticks (1 s) here;
    // allow a few ticks for bookkeeping on a loaded machine.
    let worker_ticks: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    assert!(
        worker_ticks <= 3,
        "idle workers used {worker_ticks} ticks in 1 s: {workers:?}"
    );
    let host_ticks = host_after - host_before;
    assert!(host_ticks <= 3, "the idle host used {host_ticks} ticks in 1 s");
    // And they still answer.
    for p in &plugins {
        let v: i64 = p.call(basic::ADD, &(2i64, 2i64)).unwrap();
        assert_eq!(v, 4);
    }
}
