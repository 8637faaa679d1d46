//! A new user's path, end to end: a scratch application workspace, created
//! here, with its own fidius 0.5.9 interface crate and plugins, depending on
//! `bulkhead-host` by path. The application (self-worker, a tokio runtime)
//! loads its plugin through a typed client with a grant, binds its own
//! implementation of the interface's fidius host trait, calls synchronously
//! and asynchronously, reloads the library keeping every setting, and is
//! refused a reload to a library of another interface. Then the operator CLI
//! (`bulkhead-cli`) inspects and calls the same plugin with a grant.

use std::path::Path;
use std::process::{Command, Output};

use bulkhead_tests::{host_scratch_root, workspace_root, Scratch};

const WORKSPACE: &str = r#"[workspace]
resolver = "2"
members = ["calc-iface", "calc-plugin", "calc-old", "app"]

[workspace.dependencies]
fidius = "=0.5.9"
serde = { version = "1", features = ["derive"] }
"#;

const IFACE_MANIFEST: &str = r#"[package]
name = "calc-iface"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
fidius = { workspace = true }
serde = { workspace = true }

[lints.rust]
unexpected_cfgs = { level = "allow" }
"#;

const IFACE: &str = r#"
pub use fidius::{plugin_impl, PluginError};

/// What the application offers its plugins.
#[fidius::host_interface(version = 1)]
pub trait AppHost: Send + Sync {
    /// The text with the application's tag.
    fn tag(&self, text: String) -> String;
}

/// The application's plugin interface.
#[fidius::plugin_interface(version = 1, buffer = PluginAllocated)]
pub trait Calc: Send + Sync {
    #[method_meta("name", "add")]
    fn add(&self, a: i64, b: i64) -> i64;
    #[method_meta("name", "div")]
    fn div(&self, a: i64, b: i64) -> Result<i64, PluginError>;
    #[method_meta("name", "file_len")]
    fn file_len(&self, path: String) -> Result<u64, PluginError>;
    #[method_meta("name", "tagged")]
    fn tagged(&self, text: String) -> String;
}
"#;

const PLUGIN_MANIFEST: &str = r#"[package]
name = "@NAME@"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
fidius = { workspace = true }
serde = { workspace = true }
@DEPS@
"#;

const PLUGIN: &str = r#"
use calc_iface::{__fidius_Calc, plugin_impl, AppHostClient, Calc, PluginError};

pub struct CalcPlugin;

#[plugin_impl(Calc)]
impl Calc for CalcPlugin {
    fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    fn div(&self, a: i64, b: i64) -> Result<i64, PluginError> {
        a.checked_div(b).ok_or_else(|| PluginError::new("DIV_ZERO", format!("{a} / {b}")))
    }

    fn file_len(&self, path: String) -> Result<u64, PluginError> {
        std::fs::read(&path)
            .map(|b| b.len() as u64)
            .map_err(|e| PluginError::new("IO", e.to_string()))
    }

    fn tagged(&self, text: String) -> String {
        match AppHostClient::bound().and_then(|h| h.tag(&text)) {
            Ok(v) => format!("host says {v}"),
            Err(e) => format!("no host: {e}"),
        }
    }
}

fidius::fidius_plugin_registry!();
"#;

/// The same methods' first version, with 32-bit numbers: another interface
/// hash, the library a reload must never swap in under a `Calc` client.
const OLD_PLUGIN: &str = r#"
#[fidius::plugin_interface(version = 1, buffer = PluginAllocated)]
pub trait Calc: Send + Sync {
    fn add(&self, a: i32, b: i32) -> i32;
    fn div(&self, a: i32, b: i32) -> i32;
}

pub struct OldCalc;

#[fidius::plugin_impl(Calc)]
impl Calc for OldCalc {
    fn add(&self, a: i32, b: i32) -> i32 {
        a.wrapping_add(b)
    }

    fn div(&self, a: i32, b: i32) -> i32 {
        a / b
    }
}

fidius::fidius_plugin_registry!();
"#;

const APP_MANIFEST: &str = r#"[package]
name = "app"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
bulkhead-host = { path = "@HOST@", features = ["tokio"] }
calc-iface = { path = "../calc-iface" }
tokio = { version = "1", features = ["rt"] }
"#;

const APP: &str = r#"
use std::time::Duration;

use bulkhead_host::{CallError, LoadError, LoadFailure, PluginSpec, Sandbox, Supervisor};
use calc_iface::PluginError;

bulkhead_host::client! {
    /// Typed access to `Calc` plugins.
    pub struct CalcClient for calc_iface::Calc in calc_iface::__fidius_Calc
        (descriptor = Calc_WASM_DESCRIPTOR, optional = Calc_OPTIONAL_METHODS, async = CalcAsync)
    {
        fn add(a: i64, b: i64) -> i64;
        fn div(a: i64, b: i64) -> Result<i64, PluginError>;
        fn file_len(path: String) -> Result<u64, PluginError>;
        fn tagged(text: String) -> String;
    }
}

/// The application's side of the `AppHost` interface.
struct App {
    tag: &'static str,
}

impl calc_iface::AppHost for App {
    fn tag(&self, text: String) -> String {
        format!("[{}] {text}", self.tag)
    }
}

fn main() {
    bulkhead_host::worker_main_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (lib, old, data) = (&args[0], &args[1], &args[2]);

    let supervisor = Supervisor::builder().self_worker().build().expect("self-worker supervisor");
    let host = bulkhead_host::host_interface! {
        calc_iface::AppHost in calc_iface::__fidius_host_AppHost
            (hash = AppHost_HOST_INTERFACE_HASH, version = AppHost_HOST_INTERFACE_VERSION, count = AppHost_HOST_FN_COUNT)
        for App { tag: "app" } => {
            fn tag(text) = HOST_FN_TAG;
        }
    };
    let spec = PluginSpec::new(lib)
        .label("calc")
        .workers(3)
        .call_timeout(Duration::from_millis(2_500))
        .sandbox(Sandbox::strict().allow_read(data))
        .host_interface(host);
    let calc = CalcClient::load(&supervisor, spec).expect("typed load");

    println!("add {}", calc.add(40, 2).unwrap());
    match calc.div(7, 0) {
        Err(CallError::Plugin(e)) => println!("div by zero: {}", e.code),
        other => panic!("div(7, 0): {other:?}"),
    }
    println!("div {}", calc.div(-9, 3).unwrap());
    println!("file {}", calc.file_len(data.clone()).unwrap());
    println!("{}", calc.tagged("hello".into()).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("async add {}", rt.block_on(calc.asynchronous().add(1, 2)).unwrap());

    // A reload of the library keeps every setting: workers, timeout, grant,
    // host binding, label.
    let reports = calc.plugin().reload_library(lib).expect("reload");
    println!(
        "reloaded {} workers, {} live, timeout {:?}",
        reports.len(),
        calc.plugin().worker_pids().len(),
        calc.plugin().call_timeout()
    );
    println!("file {}", calc.file_len(data.clone()).unwrap());
    println!("{}", calc.tagged("again".into()).unwrap());

    // A library of another interface is refused; the workers keep serving.
    match calc.plugin().reload_library(old) {
        Err(LoadError::Rejected { reason: LoadFailure::InterfaceMismatch { .. }, .. }) => {
            println!("old interface refused")
        }
        other => panic!("reload to the old interface: {other:?}"),
    }
    match calc.div(7, 0) {
        Err(CallError::Plugin(e)) => println!("div by zero: {}", e.code),
        other => panic!("div(7, 0) after the refused reload: {other:?}"),
    }
}
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn plugin_manifest(name: &str, deps: &str) -> String {
    PLUGIN_MANIFEST.replace("@NAME@", name).replace("@DEPS@", deps)
}

fn check(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({})\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_new_users_app_and_the_cli_on_its_plugin() {
    let root = workspace_root();
    let app = Scratch::new("new-user", "app");
    let dir = &app.0;
    write(&dir.join("Cargo.toml"), WORKSPACE);
    write(&dir.join("calc-iface/Cargo.toml"), IFACE_MANIFEST);
    write(&dir.join("calc-iface/src/lib.rs"), IFACE);
    write(
        &dir.join("calc-plugin/Cargo.toml"),
        &plugin_manifest("calc-plugin", r#"calc-iface = { path = "../calc-iface" }"#),
    );
    write(&dir.join("calc-plugin/src/lib.rs"), PLUGIN);
    write(&dir.join("calc-old/Cargo.toml"), &plugin_manifest("calc-old", ""));
    write(&dir.join("calc-old/src/lib.rs"), OLD_PLUGIN);
    write(
        &dir.join("app/Cargo.toml"),
        &APP_MANIFEST.replace("@HOST@", root.join("host").to_str().unwrap()),
    );
    write(&dir.join("app/src/main.rs"), APP);
    // The workspace's lock file pins the same versions: nothing is fetched.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    // The data the plugin may read only by grant, outside /tmp (which a
    // worker without a mount namespace could read whole); readable by the
    // sandbox's unprivileged uid.
    let data_dir = Scratch::under(&host_scratch_root(), "new-user", "data");
    let data = data_dir.0.join("numbers.txt");
    std::fs::write(&data, "0123456789abcdef").unwrap();

    let target = bulkhead_tests::scratch_target();
    let built = bulkhead_tests::scratch_cargo(dir, "build")
        .arg("--workspace")
        .output()
        .expect("cargo build in the scratch workspace");
    check(&built, "the scratch workspace's build");
    let bin = target.join("debug");
    let lib = bin.join("libcalc_plugin.so");
    let old = bin.join("libcalc_old.so");

    let run = Command::new(bin.join("app"))
        .args([&lib, &old, &data])
        .env_clear()
        .output()
        .expect("run the app");
    assert_eq!(
        check(&run, "the app"),
        "add 42\n\
         div by zero: DIV_ZERO\n\
         div -3\n\
         file 16\n\
         host says [app] hello\n\
         async add 3\n\
         reloaded 3 workers, 3 live, timeout 2.5s\n\
         file 16\n\
         host says [app] again\n\
         old interface refused\n\
         div by zero: DIV_ZERO\n"
    );

    // The operator's CLI on the same plugin: it offers no host callbacks, so
    // the import stays unbound; the file is readable only with the grant.
    let cli = bulkhead_tests::cli_binary();
    let inspect = Command::new(cli).arg("inspect").arg(&lib).output().unwrap();
    let text = check(&inspect, "bulkhead-cli inspect");
    assert!(text.contains("interface: Calc (version 1)"), "{text}");
    assert!(text.contains("host imports (unbound here): AppHost"), "{text}");
    let call = |grant: bool| {
        let mut cmd = Command::new(cli);
        cmd.arg("call")
            .arg(&lib)
            .args(["--method", "file_len", "--returns", "u64", "--json-args"]);
        cmd.arg(format!("[{:?}]", data.to_str().unwrap()));
        if grant {
            cmd.arg("--allow-read").arg(&data);
        }
        cmd.output().unwrap()
    };
    let granted = call(true);
    assert_eq!(check(&granted, "bulkhead-cli call with a grant"), "16\n");
    let refused = call(false);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.starts_with("bulkhead-cli: ") && err.contains("IO"), "{err}");
    let tagged = Command::new(cli)
        .arg("call")
        .arg(&lib)
        .args(["--method", "tagged", "--returns", "string", "--json-args", r#"["x"]"#])
        .output()
        .unwrap();
    assert_eq!(
        check(&tagged, "bulkhead-cli call tagged"),
        "no host: host interface 'AppHost' is not bound — the host did not provide it\n"
    );
}
