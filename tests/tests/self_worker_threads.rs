//! Self-worker mode in applications whose `main` is multi-threaded before its
//! first statement: a scratch crate (built here, like `self_worker.rs`) with a
//! `#[tokio::main]` binary of each flavour, and a control binary that hands
//! its multi-threaded process to the worker directly, the way
//! `worker_main_if_requested()` did before it re-executed such processes.
//!
//! Every binary loads `fx-basic` under the default (strict) sandbox and prints
//! one line per outcome; the assertions are on those lines.

use std::path::Path;
use std::process::Command;

use bulkhead_tests::{fixtures, workspace_root};

const MANIFEST: &str = r#"[package]
name = "scratch-threads"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
bulkhead-host = { path = "@HOST@" }
bulkhead-worker = { path = "@WORKER@" }
tokio = { version = "1.38", features = ["rt", "rt-multi-thread", "macros"] }

[workspace]
"#;

/// Loads the plugin strictly and best-effort; prints what each gave.
const REPORT: &str = r#"
use bulkhead_host::{Layer, LayerState, LoadError, LoadFailure, PluginSpec, Sandbox, Supervisor};

pub fn report(lib: &str) {
    let threads = std::fs::read_to_string("/proc/self/status").unwrap()
        .lines().find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse::<u32>().unwrap())).unwrap();
    println!("host threads > 1: {}", threads > 1);
    let sup = Supervisor::builder().self_worker().build().expect("self-worker builds");
    match sup.load(PluginSpec::new(lib)) {
        Ok(p) => {
            let s = p.info().sandbox;
            let all = Layer::ALL.iter().all(|&l| s.state(l) == &LayerState::Enforced);
            let sum: i64 = p.call(1, &(40i64, 2i64)).expect("add");
            println!("strict: loaded, every layer enforced: {all}, 40+2={sum}");
        }
        Err(LoadError::Rejected { reason: LoadFailure::Sandbox { layer, reason }, .. }) => {
            let why = reason.contains("multi-threaded") && reason.contains("worker_main_if_requested()");
            println!("strict: refused, layer {layer}, names the threads and the remedy: {why}");
        }
        Err(e) => println!("strict: other error {e:?}"),
    }
    let p = sup.load(PluginSpec::new(lib).sandbox(Sandbox::best_effort())).expect("best effort loads");
    let user = matches!(p.info().sandbox.state(Layer::UserNs), LayerState::Enforced);
    println!("best effort: user namespace enforced: {user}");
}
"#;

const MULTI: &str = r#"
mod report;
#[tokio::main]
async fn main() {
    bulkhead_host::worker_main_if_requested();
    report::report("@LIB@");
}
"#;

const CURRENT: &str = r#"
mod report;
#[tokio::main(flavor = "current_thread")]
async fn main() {
    bulkhead_host::worker_main_if_requested();
    // A thread of the application's own, started before any load.
    let _t = std::thread::spawn(|| std::thread::park());
    report::report("@LIB@");
}
"#;

/// The control: the worker runs in the multi-threaded process as it is.
const UNGUARDED: &str = r#"
mod report;
#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--bulkhead-worker") {
        std::process::exit(i32::from(bulkhead_worker::run_with_args(args)));
    }
    report::report("@LIB@");
}
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn run(target: &Path, bin: &str) -> String {
    let out = Command::new(target.join("debug").join(bin)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{bin} failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn tokio_main_apps_get_every_layer_and_the_unguarded_control_is_refused() {
    let root = workspace_root();
    let lib = fixtures().lib("fx-basic");
    let lib = lib.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("bulkhead-scratch-threads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(
        &dir.join("Cargo.toml"),
        &MANIFEST
            .replace("@HOST@", root.join("host").to_str().unwrap())
            .replace("@WORKER@", root.join("worker").to_str().unwrap()),
    );
    write(&dir.join("src/bin/multi/report.rs"), REPORT);
    write(&dir.join("src/bin/multi/main.rs"), &MULTI.replace("@LIB@", lib));
    write(&dir.join("src/bin/current/report.rs"), REPORT);
    write(&dir.join("src/bin/current/main.rs"), &CURRENT.replace("@LIB@", lib));
    write(&dir.join("src/bin/unguarded/report.rs"), REPORT);
    write(&dir.join("src/bin/unguarded/main.rs"), &UNGUARDED.replace("@LIB@", lib));
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let target = bulkhead_tests::scratch_target();
    let mut cmd = bulkhead_tests::scratch_cargo(&dir, "build");
    cmd.arg("--bins");
    let out = cmd.output().expect("build the scratch crate");
    assert!(
        out.status.success(),
        "scratch crate's build failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let good = "strict: loaded, every layer enforced: true, 40+2=42\nbest effort: user namespace enforced: true\n";
    assert_eq!(run(&target, "multi"), format!("host threads > 1: true\n{good}"));
    assert_eq!(run(&target, "current"), format!("host threads > 1: true\n{good}"));
    assert_eq!(
        run(&target, "unguarded"),
        "host threads > 1: true\n\
         strict: refused, layer user-ns, names the threads and the remedy: true\n\
         best effort: user namespace enforced: false\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
