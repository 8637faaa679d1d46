//! A host process that is SIGKILLed leaves no worker running: the workers'
//! parent-death signal takes them down with it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bulkhead_tests::{alive, fixtures, wait_gone};

#[test]
fn sigkilled_host_leaves_no_worker() {
    let fx = fixtures();
    let mut host = Command::new(env!("CARGO_BIN_EXE_victim"))
        .arg(&fx.worker)
        .arg(fx.lib("fx-basic"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the victim host");
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut workers = Vec::new();
    for line in &mut lines {
        let line = line.expect("victim output");
        if line == "ready" {
            break;
        }
        workers.push(
            line.strip_prefix("worker ")
                .expect("worker line")
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(workers.len(), 2, "victim reported its two workers");
    for &w in &workers {
        assert!(alive(w), "worker {w} runs while its host lives");
    }
    host.kill().expect("SIGKILL the host");
    host.wait().expect("reap the host");
    for &w in &workers {
        wait_gone(w, Duration::from_secs(10));
        assert!(!alive(w));
    }
}
