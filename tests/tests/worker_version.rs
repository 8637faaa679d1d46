//! The worker's version queries and the protocol check at `build()`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use bulkhead_host::{BuildError, Supervisor};
use bulkhead_shared::protocol::PROTOCOL_VERSION;
use bulkhead_tests::fixtures;

#[test]
fn worker_reports_its_versions() {
    let out = Command::new(&fixtures().worker).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "bulkhead-worker {} (protocol {PROTOCOL_VERSION})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    let out = Command::new(&fixtures().worker)
        .arg("--protocol-version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("bulkhead-protocol {PROTOCOL_VERSION}\n")
    );
}

#[test]
fn other_protocol_worker_is_refused_at_build() {
    let old = env!("CARGO_BIN_EXE_old-worker");
    let err = Supervisor::builder().worker_path(old).build().unwrap_err();
    match &err {
        BuildError::WorkerVersion {
            worker,
            host,
            worker_version,
        } => {
            assert_eq!(worker.to_str(), Some(old));
            assert_eq!(*host, PROTOCOL_VERSION);
            assert_eq!(*worker_version, PROTOCOL_VERSION - 1);
        }
        other => panic!("expected WorkerVersion, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("protocol version {}", PROTOCOL_VERSION - 1))
            && msg.contains(&format!("speaks {PROTOCOL_VERSION}")),
        "{msg}"
    );
}

#[test]
fn worker_without_the_query_is_refused_at_build() {
    // What a protocol-2 worker does with an argument it does not know.
    let dir = std::env::temp_dir().join(format!("bulkhead-prequery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("bulkhead-worker");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"bulkhead-worker: unknown argument $1\" >&2\nexit 64\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Supervisor::builder().worker_path(&script).build().unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    match &err {
        BuildError::WorkerUnusable { host, reason, .. } => {
            assert_eq!(*host, PROTOCOL_VERSION);
            assert!(reason.contains("did not report a protocol version"), "{reason}");
            assert!(reason.contains("64"), "{reason}");
        }
        other => panic!("expected WorkerUnusable, got {other:?}"),
    }
}

#[test]
fn self_worker_without_the_entry_point_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_unwired-app")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    // The probe copy started by build() refused to build in turn (it saw
    // BULKHEAD_SELF_WORKER) and printed that as its answer.
    assert!(stdout.starts_with("build failed: worker "), "{stdout}");
    assert!(stdout.contains("did not report a protocol version"), "{stdout}");
    assert!(stdout.contains("worker_main_if_requested"), "{stdout}");
}
