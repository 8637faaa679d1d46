//! Self-worker mode from a user's point of view: a scratch crate, created here
//! in a temporary directory, depends on `bulkhead` by path, makes its own
//! executables serve as workers, and passes its own `cargo test` with no
//! bulkhead environment variable and no installed worker.

use std::path::Path;

use bulkhead_tests::{fixtures, workspace_root};

const MANIFEST: &str = r#"[package]
name = "scratch-app"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
bulkhead-host = { path = "@HOST@" }

[[test]]
name = "in_test_binary"
harness = false

[workspace]
"#;

/// The application: runs as a worker when asked to, else loads the plugin and
/// prints what three calls gave.
const MAIN: &str = r#"
use bulkhead_host::{CallError, Exit, PluginSpec, Supervisor};

fn main() {
    bulkhead_host::worker_main_if_requested();
    let supervisor = Supervisor::builder().self_worker().build().expect("self-worker builds");
    assert_eq!(supervisor.worker_path(), std::env::current_exe().unwrap());
    let plugin = supervisor.load(PluginSpec::new("@LIB@")).expect("plugin loads");
    let greeting: String = plugin.call(0, &("scratch".to_string(),)).expect("greet");
    println!("{greeting}");
    match plugin.call::<_, u32>(7, &()) {
        Err(CallError::WorkerDied { exit: Exit::Signal { signal: 11, .. }, .. }) => println!("segfault contained"),
        other => panic!("expected a contained segfault, got {other:?}"),
    }
    let sum: i64 = plugin.call(1, &(40i64, 2i64)).expect("add");
    println!("{sum}");
}
"#;

/// An integration test that runs the application binary.
const APP_TEST: &str = r#"
#[test]
fn the_app_is_its_own_worker() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scratch-app")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "Hello, scratch!\nsegfault contained\n42\n");
}
"#;

/// A test binary without libtest's harness, so it has a `main` of its own and
/// serves as the worker itself.
const IN_TEST: &str = r#"
use bulkhead_host::{PluginSpec, Supervisor};

fn main() {
    bulkhead_host::worker_main_if_requested();
    let supervisor = Supervisor::builder().self_worker().build().expect("self-worker builds");
    let plugin = supervisor.load(PluginSpec::new("@LIB@").workers(2)).expect("plugin loads");
    for i in 0..20i64 {
        let sum: i64 = plugin.call(1, &(i, 1i64)).expect("add");
        assert_eq!(sum, i + 1);
    }
    println!("in-test-binary worker: ok");
}
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn dependent_crate_tests_pass_with_self_worker_and_no_env() {
    let root = workspace_root();
    let lib = fixtures().lib("fx-basic");
    let lib = lib.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("bulkhead-scratch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(
        &dir.join("Cargo.toml"),
        &MANIFEST.replace("@HOST@", root.join("host").to_str().unwrap()),
    );
    write(&dir.join("src/main.rs"), &MAIN.replace("@LIB@", lib));
    write(&dir.join("tests/app.rs"), APP_TEST);
    write(&dir.join("tests/in_test_binary.rs"), &IN_TEST.replace("@LIB@", lib));
    // The workspace's lock file pins the same versions, so nothing is fetched.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let mut cmd = bulkhead_tests::scratch_cargo(&dir, "test");
    let out = cmd.output().expect("run cargo test in the scratch crate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scratch crate's cargo test failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("in-test-binary worker: ok"), "{stdout}");
    assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
