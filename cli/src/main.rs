//! `bulkhead`: look into a fidius plugin library, and call its methods, without
//! loading it into this process. The library is opened by a worker process
//! (this same executable, started in bulkhead's self-worker mode), so a library
//! that crashes, hangs or lies costs that worker, never the CLI.
//!
//! ```text
//! bulkhead inspect LIB.so [--json]
//! bulkhead call LIB.so [--plugin NAME] --method N [--json-args '[...]' | --hex HEX | --input FILE]
//!               [--returns TYPE] [--timeout-ms MS] [--learn] [--json]
//! ```
//!
//! `call --learn` runs the call with the sandbox in learn mode (system calls
//! outside the allow-list are allowed and reported) and prints what the
//! plugin needed as a ready `Sandbox` addition.
//!
//! Exit status: 0 on success, 1 when loading or the call failed (one line on
//! stderr says why), 2 for a bad command line.

mod args;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use bulkhead::{LoadError, LoadFailure, Plugin, PluginInfo, PluginSpec, Sandbox, Supervisor};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

/// Inspect and call fidius plugin libraries safely: the library is loaded in a
/// separate worker process, never in this one.
#[derive(Parser, Debug)]
#[command(name = "bulkhead", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Use this bulkhead-worker binary instead of this executable.
    #[arg(long, global = true, value_name = "PATH")]
    worker: Option<PathBuf>,
    /// Bound on loading the library, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000, value_name = "MS")]
    load_timeout_ms: u64,
    /// When to show a progress indicator on stderr for slow steps.
    #[arg(long, global = true, value_enum, default_value_t = Progress::Auto)]
    progress: Progress,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what a library holds: ABI version, plugins, interface name, hash
    /// and version, buffer strategy, method count, capabilities, metadata.
    Inspect {
        /// The plugin library (a fidius cdylib).
        lib: PathBuf,
    },
    /// Call one method of one plugin and print its result.
    Call {
        /// The plugin library (a fidius cdylib).
        lib: PathBuf,
        /// The plugin (impl type) to load; needed when the library holds several.
        #[arg(long)]
        plugin: Option<String>,
        /// The method's vtable slot.
        #[arg(long)]
        method: u32,
        /// Arguments as a JSON array (see `bulkhead call --help` and the README
        /// for how JSON maps to bincode).
        #[arg(long, value_name = "JSON", conflicts_with_all = ["hex", "input"])]
        json_args: Option<String>,
        /// Raw argument bytes, hex-encoded (for `#[wire(raw)]` methods, or
        /// pre-encoded bincode).
        #[arg(long, value_name = "HEX", conflicts_with = "input")]
        hex: Option<String>,
        /// Raw argument bytes from a file (`-` = stdin).
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// How to decode the result: raw (hex of the bytes), unit, bool,
        /// u8..u64, i8..i64, f32, f64, string, bytes.
        #[arg(long, default_value = "raw", value_name = "TYPE")]
        returns: String,
        /// The call's timeout, in milliseconds.
        #[arg(long, default_value_t = 30_000, value_name = "MS")]
        timeout_ms: u64,
        /// Learn mode: system calls outside the sandbox's allow-list are
        /// allowed and reported instead of refused; afterwards the calls the
        /// plugin needed are printed as a `Sandbox` addition. Only on a
        /// trusted machine: it protects nothing the allow-list would.
        #[arg(long)]
        learn: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Progress {
    /// When stderr is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// A failure: one line for stderr, exit status 1.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    // This executable is also the worker that loads libraries.
    bulkhead::worker_main_if_requested();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            // One line, whatever the error text holds (a stderr tail may span lines).
            let line: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let _ = writeln!(std::io::stderr(), "bulkhead: {}", line.join(" | "));
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let builder = Supervisor::builder();
    let builder = match &cli.worker {
        Some(w) => builder.worker_path(w),
        None => builder.self_worker(),
    };
    let sup = builder.build()?;
    match &cli.command {
        Command::Inspect { lib } => inspect(cli, &sup, lib),
        Command::Call {
            lib,
            plugin,
            method,
            json_args,
            hex,
            input,
            returns,
            timeout_ms,
            learn,
        } => {
            let bytes = if let Some(j) = json_args {
                let v: Value = serde_json::from_str(j).map_err(|e| format!("--json-args: {e}"))?;
                args::encode_args(&v).map_err(|e| format!("--json-args: {e}"))?
            } else if let Some(h) = hex {
                args::hex_decode(h).map_err(|e| format!("--hex: {e}"))?
            } else if let Some(path) = input {
                read_input(path)?
            } else {
                Vec::new()
            };
            // Check the result type before starting anything.
            args::decode_result(returns, &[]).or_else(|e| {
                if e.starts_with("unknown --returns") {
                    Err(Failure(e))
                } else {
                    Ok(Value::Null)
                }
            })?;
            let mut spec = spec(cli, lib, plugin.as_deref());
            if *learn {
                spec = spec.sandbox(Sandbox::strict().learn());
            }
            let p = with_progress(cli, &format!("loading {}", lib.display()), || sup.load(spec))?;
            let out = with_progress(cli, &format!("calling method {method}"), || {
                p.call_raw_with_timeout(*method, &bytes, Duration::from_millis(*timeout_ms))
            });
            // Every report was written before the call returned; shutting the
            // worker down waits until its stderr is read to the end.
            let learned = learn.then(|| {
                sup.shutdown();
                p.learned_syscalls()
            });
            if let Some(names) = &learned {
                print_learned(cli, names);
            }
            let out = out.map_err(|e| format!("call failed: {e}"))?;
            let value =
                args::decode_result(returns, &out).map_err(|e| format!("decoding the result as {returns}: {e}"))?;
            if cli.json {
                let mut doc = json!({
                    "plugin": p.info().plugin_name,
                    "method": method,
                    "returns": returns,
                    "value": value,
                    "output_len": out.len(),
                });
                if let Some(names) = &learned {
                    doc["learned"] = json!(names);
                    doc["sandbox"] = json!(sandbox_addition(names));
                }
                println!("{doc}");
            } else {
                match value {
                    Value::String(s) => println!("{s}"),
                    other => println!("{other}"),
                }
            }
            Ok(())
        }
    }
}

/// The Rust expression that allows what learn mode saw.
fn sandbox_addition(names: &[&str]) -> String {
    let mut s = "Sandbox::strict()".to_string();
    for n in names {
        s.push_str(&format!(".allow_syscall(\"{n}\")"));
    }
    s
}

/// What learn mode saw, on stderr (stdout keeps the call's value): the calls
/// and the `Sandbox` that allows them. In JSON mode it is part of the
/// document instead.
fn print_learned(cli: &Cli, names: &[&str]) {
    if cli.json {
        return;
    }
    let mut err = std::io::stderr().lock();
    if names.is_empty() {
        let _ = writeln!(err, "learned: nothing outside the allow-list");
    } else {
        let _ = writeln!(err, "learned: {}", names.join(", "));
        let _ = writeln!(err, "sandbox: {}", sandbox_addition(names));
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, Failure> {
    if path == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b)?;
        Ok(b)
    } else {
        std::fs::read(path).map_err(|e| Failure(format!("--input {}: {e}", path.display())))
    }
}

fn spec(cli: &Cli, lib: &Path, plugin: Option<&str>) -> PluginSpec {
    let s = PluginSpec::new(lib).load_timeout(Duration::from_millis(cli.load_timeout_ms));
    match plugin {
        Some(p) => s.plugin(p),
        None => s,
    }
}

/// Runs `f`; if it takes longer than half a second (and progress is on),
/// shows a spinner with `what` on stderr until it ends.
fn with_progress<T>(cli: &Cli, what: &str, f: impl FnOnce() -> T) -> T {
    let on = match cli.progress {
        Progress::Always => true,
        Progress::Never => false,
        Progress::Auto => std::io::stderr().is_terminal(),
    };
    if !on {
        return f();
    }
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let what = what.to_string();
    let spinner = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            return;
        }
        let frames = ['|', '/', '-', '\\'];
        let mut err = std::io::stderr();
        let mut i = 0usize;
        loop {
            let _ = write!(err, "\r{} {what}...", frames[i % frames.len()]);
            let _ = err.flush();
            i += 1;
            match done_rx.recv_timeout(Duration::from_millis(120)) {
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        }
        let _ = write!(err, "\r{}\r", " ".repeat(what.len() + 6));
        let _ = err.flush();
    });
    let r = f();
    drop(done_tx);
    let _ = spinner.join();
    r
}

/// Loads every plugin of the library (each in its own worker) and reports them.
fn inspect(cli: &Cli, sup: &Supervisor, lib: &Path) -> Result<(), Failure> {
    let load = |plugin: Option<&str>| -> Result<Plugin, LoadError> {
        with_progress(cli, &format!("loading {}", lib.display()), || {
            sup.load(spec(cli, lib, plugin))
        })
    };
    // The library's only plugin, or the list of names to load one by one.
    let (first, names) = match load(None) {
        Ok(p) => {
            let names = p.info().plugins_in_library.clone();
            (Some(p), names)
        }
        Err(LoadError::Rejected {
            reason: LoadFailure::Ambiguous { available },
            ..
        }) => (None, available),
        Err(e) => return Err(e.into()),
    };
    let mut infos: Vec<PluginInfo> = Vec::new();
    if let Some(p) = &first {
        infos.push(p.info());
    }
    for name in &names {
        if infos.iter().any(|i| &i.plugin_name == name) {
            continue;
        }
        infos.push(load(Some(name))?.info());
    }
    if cli.json {
        let plugins: Vec<Value> = infos.iter().map(info_json).collect();
        let doc = json!({
            "library": lib.display().to_string(),
            "abi_version": infos.first().map(|i| i.abi_version),
            "plugins": plugins,
        });
        println!("{doc}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "library: {}", lib.display())?;
    if let Some(i) = infos.first() {
        writeln!(out, "abi version: {}", i.abi_version)?;
    }
    writeln!(out, "plugins: {}", names.join(", "))?;
    for i in &infos {
        writeln!(out, "\nplugin {}", i.plugin_name)?;
        writeln!(
            out,
            "  interface: {} (version {})",
            i.interface_name, i.interface_version
        )?;
        writeln!(out, "  interface hash: {:#018x}", i.interface_hash)?;
        writeln!(out, "  buffer strategy: {:?}", i.buffer_strategy)?;
        writeln!(out, "  methods: {}", i.method_count)?;
        writeln!(out, "  capabilities: {:#x}", i.capabilities)?;
        for (k, v) in &i.trait_metadata {
            writeln!(out, "  metadata: {k} = {v}")?;
        }
        for (m, pairs) in i.method_metadata.iter().enumerate() {
            for (k, v) in pairs {
                writeln!(out, "  method {m} metadata: {k} = {v}")?;
            }
        }
    }
    Ok(())
}

fn info_json(i: &PluginInfo) -> Value {
    json!({
        "name": i.plugin_name,
        "abi_version": i.abi_version,
        "interface": i.interface_name,
        "interface_hash": format!("{:#018x}", i.interface_hash),
        "interface_version": i.interface_version,
        "buffer_strategy": format!("{:?}", i.buffer_strategy),
        "method_count": i.method_count,
        "capabilities": i.capabilities,
        "metadata": i.trait_metadata.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "method_metadata": i.method_metadata.iter().map(|m| m.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}
