//! Files pinned at `load()` and at `Supervisor` build: a plugin library, and
//! the worker binary, put in place of the originals afterwards (a rename over
//! the path: what a plugin with write access to the directory can do) are
//! never run by the workers started later — restarts included. A fresh load
//! of the same path does see the new file, which shows the swap happened.

use std::path::Path;

use bulkhead_host::{CallError, PluginSpec, Sandbox, Supervisor};
use bulkhead_tests::{basic, fixtures, transport, Scratch};

fn both() -> [(&'static str, Sandbox); 2] {
    [("strict", Sandbox::strict()), ("none", Sandbox::none())]
}

/// Puts a copy of `from` at `to` the way an attacker would: written beside
/// it, then renamed over it (a new inode at the old path).
fn swap(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn a_library_swapped_after_load_is_not_what_restarted_workers_run() {
    for (name, sandbox) in both() {
        let dir = Scratch::new("pinning", &format!("lib-{name}"));
        let lib = dir.0.join("libswapped.so");
        std::fs::copy(fixtures().lib("fx-basic"), &lib).unwrap();
        let sup = bulkhead_tests::supervisor();
        let spec = || PluginSpec::new(&lib).transport(transport()).sandbox(sandbox.clone());
        let plugin = sup.load(spec()).unwrap();
        let original = plugin.info().plugin_name.clone();
        // fx-basic's greeting; fx-arena (swapped in below) has another
        // method in that slot.
        let greeting: String = plugin.call(basic::GREET, &("pin".to_string(),)).unwrap();
        let first = plugin.info().worker_pid;

        swap(&fixtures().lib("fx-arena"), &lib);
        // Control: the path now holds another plugin, which a new load gets.
        let fresh = sup.load(spec()).expect("the swapped-in library loads");
        assert_ne!(
            fresh.info().plugin_name,
            original,
            "{name}: the swap took effect on disk"
        );
        drop(fresh);

        // The worker dies; its replacement loads the pinned original.
        let err = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
        assert!(matches!(err, CallError::WorkerDied { .. }), "{name}: {err:?}");
        let again: String = plugin
            .call(basic::GREET, &("pin".to_string(),))
            .unwrap_or_else(|e| panic!("{name}: the restarted worker runs the original library: {e}"));
        assert_eq!(again, greeting, "{name}");
        assert_ne!(plugin.info().worker_pid, first, "{name}: a new worker answered");
        assert_eq!(plugin.info().plugin_name, original, "{name}");
    }
}

#[test]
fn a_worker_binary_swapped_after_build_is_not_what_new_workers_run() {
    let dir = Scratch::new("pinning", "worker");
    let worker = dir.0.join("bulkhead-worker");
    std::fs::copy(&fixtures().worker, &worker).unwrap();
    // Without fork-servers every worker (a restart too) is exec'd.
    let sup = Supervisor::builder()
        .worker_path(&worker)
        .fork_server(false)
        .build()
        .unwrap();
    assert_eq!(sup.worker_path(), worker);
    let plugin = sup.load(bulkhead_tests::spec("fx-basic")).unwrap();
    let first = plugin.info().worker_pid;

    // An executable that is no worker at all, renamed over the path.
    swap(Path::new("/bin/true"), &worker);
    // Control: a supervisor built now finds no worker there.
    assert!(
        Supervisor::builder().worker_path(&worker).build().is_err(),
        "the swap took effect on disk"
    );

    let err = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    assert!(matches!(err, CallError::WorkerDied { .. }), "{err:?}");
    let sum: i64 = plugin
        .call(basic::ADD, &(40i64, 2i64))
        .unwrap_or_else(|e| panic!("the restarted worker is the pinned binary: {e}"));
    assert_eq!(sum, 42);
    let second = plugin.info().worker_pid;
    assert_ne!(second, first, "a new worker answered");
    // It runs the pinned file, which is no longer at the path.
    let exe = std::fs::read_link(format!("/proc/{second}/exe")).unwrap();
    assert!(exe.to_string_lossy().ends_with("(deleted)"), "{exe:?}");
    // A new plugin of the same supervisor too.
    let other = sup.load(bulkhead_tests::spec("fx-basic")).unwrap();
    let sum: i64 = other.call(basic::ADD, &(1i64, 2i64)).unwrap();
    assert_eq!(sum, 3);
}

#[test]
fn a_non_root_host_pins_the_same_files() {
    if !bulkhead_tests::is_root() {
        eprintln!("skipped: needs root to start a child host under an unused uid");
        return;
    }
    bulkhead_tests::rerun_as_non_root(
        61_042,
        &[
            "a_library_swapped_after_load_is_not_what_restarted_workers_run",
            "a_worker_binary_swapped_after_build_is_not_what_new_workers_run",
        ],
    );
}
