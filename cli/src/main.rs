//! `bulkhead`: look into a fidius plugin library, and call its methods, without
//! loading it into this process. The library is opened by a worker process
//! (this same executable, started in bulkhead's self-worker mode), so a library
//! that crashes, hangs or lies costs that worker, never the CLI.
//!
//! ```text
//! bulkhead-cli inspect LIB.so [--json]
//! bulkhead-cli call LIB.so [--plugin NAME] --method N|NAME [--json-args '[...]' | --hex HEX | --input FILE]
//!               [--returns TYPE] [--timeout-ms MS] [--stream [--max-items N]] [--learn] [--json]
//! bulkhead-cli scan DIR [--json]
//! sandbox and trust, for every command: [--allow-read PATH].. [--allow-write PATH]..
//!   [--allow-connect-tcp PORT].. [--allow-network] [--no-sandbox] [--require-signature KEYFILE]..
//! ```
//!
//! `call --learn` runs the call with the sandbox in learn mode (system calls
//! outside the allow-list are allowed and reported) and prints what the
//! plugin needed as a ready `Sandbox` addition.
//!
//! Exit status: 0 on success, 1 when loading or the call failed (or, for
//! `scan`, any library could not be inspected; one line on stderr says why),
//! 2 for a bad command line (unknown flags, arguments that do not parse, an
//! unreadable input or key file).

mod args;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use bulkhead_host::{Layer, LayerState, Plugin, PluginInfo, PluginSpec, Sandbox, Supervisor, VerifyingKey};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

/// Inspect and call fidius plugin libraries safely: the library is loaded in a
/// separate worker process, never in this one.
#[derive(Parser, Debug)]
#[command(name = "bulkhead-cli", version, about)]
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
    /// Let the plugin read PATH (a file or directory), at the same path.
    #[arg(long, global = true, value_name = "PATH")]
    allow_read: Vec<PathBuf>,
    /// Let the plugin read and write PATH (it must exist).
    #[arg(long, global = true, value_name = "PATH")]
    allow_write: Vec<PathBuf>,
    /// Let the plugin open TCP connections to PORT (repeatable).
    #[arg(long, global = true, value_name = "PORT")]
    allow_connect_tcp: Vec<u16>,
    /// Give the plugin the host's network.
    #[arg(long, global = true)]
    allow_network: bool,
    /// Run the plugin without the sandbox (process isolation only). Only for
    /// libraries you trust.
    #[arg(long, global = true, conflicts_with_all = ["allow_read", "allow_write", "allow_connect_tcp", "allow_network"])]
    no_sandbox: bool,
    /// Load only libraries signed (LIB.so.sig, fidius's format) by this
    /// ed25519 public key: a file of 32 raw bytes or 64 hex digits. Repeat for
    /// several trusted keys.
    #[arg(long, global = true, value_name = "KEYFILE")]
    require_signature: Vec<PathBuf>,
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
        /// The method: its vtable slot, or its name where the interface
        /// declares one (`#[method_meta("name", "...")]`).
        #[arg(long)]
        method: String,
        /// Arguments as a JSON array (see `bulkhead-cli call --help` and the README
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
        /// The method is a server stream (`-> fidius::Stream<T>`): print each
        /// item, decoded with --returns, one per line (JSON: one document).
        #[arg(long)]
        stream: bool,
        /// With --stream, stop after N items.
        #[arg(long, value_name = "N", requires = "stream")]
        max_items: Option<u64>,
    },
    /// Inspect every plugin library (`*.so`) in DIR, each in its own
    /// sandboxed worker: what each offers, or why it could not be inspected.
    Scan {
        /// The directory.
        dir: PathBuf,
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

/// A failure: one line for stderr, and the exit status.
struct Failure(String, u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
}

/// `text` on one line, whatever it holds (a stderr tail may span lines).
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.join(" | ")
}

/// A bad command line: exit status 2.
fn usage(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), 2)
}

fn main() -> ExitCode {
    // This executable is also the worker that loads libraries.
    bulkhead_host::worker_main_if_requested();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            let _ = writeln!(std::io::stderr(), "bulkhead-cli: {}", one_line(&msg));
            ExitCode::from(code)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    // A bad command line is found before any worker starts.
    let keys = read_keys(&cli.require_signature)?;
    let builder = Supervisor::builder();
    let builder = match &cli.worker {
        Some(w) => builder.worker_path(w),
        None => builder.self_worker(),
    };
    let sup = builder.build()?;
    match &cli.command {
        Command::Inspect { lib } => inspect(cli, &sup, lib, &spec(cli, &keys, lib, None)),
        Command::Scan { dir } => scan(cli, &sup, &keys, dir),
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
            stream,
            max_items,
        } => {
            let bytes = if let Some(j) = json_args {
                let v: Value = serde_json::from_str(j).map_err(|e| usage(format!("--json-args: {e}")))?;
                args::encode_args(&v).map_err(|e| usage(format!("--json-args: {e}")))?
            } else if let Some(h) = hex {
                args::hex_decode(h).map_err(|e| usage(format!("--hex: {e}")))?
            } else if let Some(path) = input {
                read_input(path)?
            } else {
                Vec::new()
            };
            // Check the result type before starting anything.
            args::decode_result(returns, &[]).or_else(|e| {
                if e.starts_with("unknown --returns") {
                    Err(usage(e))
                } else {
                    Ok(Value::Null)
                }
            })?;
            let mut spec = spec(cli, &keys, lib, plugin.as_deref());
            if *learn {
                spec = spec.sandbox(sandbox(cli).learn());
            }
            let slot = match method.parse::<u32>() {
                Ok(n) => n,
                // A name: the library says which slot has it.
                Err(_) => resolve_method(cli, &sup, &spec, method)?,
            };
            if *stream {
                spec = spec.streaming_methods([slot]);
            }
            let p = with_progress(cli, &format!("loading {}", lib.display()), || sup.load(spec))?;
            let timeout = Duration::from_millis(*timeout_ms);
            let out = if *stream {
                stream_items(cli, &p, slot, &bytes, returns, *max_items).map(|()| None)
            } else {
                with_progress(cli, &format!("calling method {method}"), || {
                    p.call_raw_with_timeout(slot, &bytes, timeout)
                })
                .map(Some)
                .map_err(|e| Failure(format!("call failed: {e}"), 1))
            };
            // Every report was written before the call returned; shutting the
            // worker down waits until its stderr is read to the end.
            let learned = learn.then(|| {
                sup.shutdown();
                p.learned_syscalls()
            });
            if let Some(names) = &learned {
                print_learned(cli, names);
            }
            let Some(out) = out? else {
                return Ok(());
            };
            let value =
                args::decode_result(returns, &out).map_err(|e| format!("decoding the result as {returns}: {e}"))?;
            if cli.json {
                let mut doc = json!({
                    "plugin": p.info().plugin_name,
                    "method": slot,
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
                print_value(value);
            }
            Ok(())
        }
    }
}

fn print_value(value: Value) {
    match value {
        Value::String(s) => println!("{s}"),
        other => println!("{other}"),
    }
}

/// Reads a server stream's items and prints each (text: one per line; JSON:
/// one document with the list).
fn stream_items(
    cli: &Cli,
    p: &Plugin,
    slot: u32,
    args: &[u8],
    returns: &str,
    max_items: Option<u64>,
) -> Result<(), Failure> {
    let mut items = p
        .stream_raw(slot, args)
        .map_err(|e| Failure(format!("opening the stream failed: {e}"), 1))?;
    let mut values = Vec::new();
    let mut n = 0u64;
    while max_items.map_or(true, |m| n < m) {
        let Some(item) = items.next_raw() else { break };
        let bytes = item.map_err(|e| Failure(format!("stream failed after {n} items: {e}"), 1))?;
        let value = args::decode_result(returns, &bytes).map_err(|e| format!("decoding item {n} as {returns}: {e}"))?;
        n += 1;
        if cli.json {
            values.push(value);
        } else {
            print_value(value);
        }
    }
    if cli.json {
        println!(
            "{}",
            json!({ "plugin": p.info().plugin_name, "method": slot, "returns": returns, "items": values })
        );
    }
    Ok(())
}

/// The slot of the method named `name` (method metadata `name`), found by
/// loading the library once.
fn resolve_method(cli: &Cli, sup: &Supervisor, spec: &PluginSpec, name: &str) -> Result<u32, Failure> {
    let infos = with_progress(cli, "looking up the method", || sup.inspect(spec))?;
    let Some(info) = infos.first() else {
        return Err(Failure("the library holds no plugin".into(), 1));
    };
    let names = method_names(info);
    names
        .iter()
        .position(|n| n.as_deref() == Some(name))
        .map(|i| i as u32)
        .ok_or_else(|| {
            let known: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
            usage(if known.is_empty() {
                format!(
                    "--method {name}: the interface names no methods (method metadata \"name\"); give a slot number"
                )
            } else {
                format!("--method {name}: no such method; named methods: {}", known.join(", "))
            })
        })
}

/// Each method's name, where its metadata has one (`name`).
fn method_names(info: &PluginInfo) -> Vec<Option<String>> {
    (0..info.method_count as usize)
        .map(|m| {
            info.method_metadata
                .get(m)
                .and_then(|kv| kv.iter().find(|(k, _)| k == "name").map(|(_, v)| v.clone()))
        })
        .collect()
}

/// The sandbox the flags ask for.
fn sandbox(cli: &Cli) -> Sandbox {
    if cli.no_sandbox {
        return Sandbox::none();
    }
    let mut s = Sandbox::strict();
    for p in &cli.allow_read {
        s = s.allow_read(p);
    }
    for p in &cli.allow_write {
        s = s.allow_write(p);
    }
    for port in &cli.allow_connect_tcp {
        s = s.allow_connect_tcp(*port);
    }
    if cli.allow_network {
        s = s.allow_network();
    }
    s
}

/// The trusted signature keys: each file 32 raw bytes or 64 hex digits.
fn read_keys(files: &[PathBuf]) -> Result<Vec<VerifyingKey>, Failure> {
    files
        .iter()
        .map(|f| {
            let bad = |why: String| usage(format!("--require-signature {}: {why}", f.display()));
            let raw = std::fs::read(f).map_err(|e| bad(e.to_string()))?;
            let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
            let bytes = if raw.len() == 32 {
                raw.clone()
            } else {
                args::hex_decode(text).map_err(|_| bad("expected 32 raw bytes or 64 hex digits".into()))?
            };
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad("expected 32 raw bytes or 64 hex digits".into()))?;
            VerifyingKey::from_bytes(&bytes).map_err(|e| bad(format!("not an ed25519 public key: {e}")))
        })
        .collect()
}

/// Every library in `dir`, each inspected in its own sandboxed worker.
fn scan(cli: &Cli, sup: &Supervisor, keys: &[VerifyingKey], dir: &Path) -> Result<(), Failure> {
    let found = with_progress(cli, &format!("scanning {}", dir.display()), || {
        sup.discover_with(dir, |lib| spec(cli, keys, lib, None))
    })
    .map_err(|e| usage(format!("{}: {e}", dir.display())))?;
    let failed = found.iter().filter(|d| d.plugins.is_err()).count();
    if cli.json {
        let libs: Vec<Value> = found
            .iter()
            .map(|d| match &d.plugins {
                Ok(infos) => json!({
                    "library": d.path.display().to_string(),
                    "plugins": infos.iter().map(info_json).collect::<Vec<_>>(),
                }),
                Err(e) => json!({ "library": d.path.display().to_string(), "error": e.to_string() }),
            })
            .collect();
        println!(
            "{}",
            json!({ "directory": dir.display().to_string(), "libraries": libs })
        );
    } else {
        let mut out = std::io::stdout().lock();
        for d in &found {
            match &d.plugins {
                Ok(infos) => {
                    for i in infos {
                        writeln!(
                            out,
                            "{}: {} ({} version {}, {} methods, {:?})",
                            d.path.display(),
                            i.plugin_name,
                            i.interface_name,
                            i.interface_version,
                            i.method_count,
                            i.buffer_strategy
                        )?;
                    }
                }
                Err(e) => {
                    writeln!(out, "{}: error: {}", d.path.display(), one_line(&e.to_string()))?;
                }
            }
        }
    }
    if failed > 0 {
        return Err(Failure(
            format!(
                "{failed} of {} libraries in {} could not be inspected",
                found.len(),
                dir.display()
            ),
            1,
        ));
    }
    Ok(())
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
        std::fs::read(path).map_err(|e| usage(format!("--input {}: {e}", path.display())))
    }
}

fn spec(cli: &Cli, keys: &[VerifyingKey], lib: &Path, plugin: Option<&str>) -> PluginSpec {
    // The CLI offers no host callbacks: a plugin importing a host interface
    // loads with it unbound (its calls of the host answer `NotBound`, as
    // under fidius), and `inspect` names the import.
    let mut s = PluginSpec::new(lib)
        .load_timeout(Duration::from_millis(cli.load_timeout_ms))
        .sandbox(sandbox(cli))
        .allow_unbound_imports(true);
    if !keys.is_empty() {
        s = s.require_signature(keys.iter().copied());
    }
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
/// Loads every plugin of the library (each in its own worker) and reports them.
fn inspect(cli: &Cli, sup: &Supervisor, lib: &Path, spec: &PluginSpec) -> Result<(), Failure> {
    let infos = with_progress(cli, &format!("loading {}", lib.display()), || sup.inspect(spec))?;
    let signature = signature_state(cli, lib);
    if cli.json {
        let plugins: Vec<Value> = infos.iter().map(info_json).collect();
        let doc = json!({
            "library": lib.display().to_string(),
            "abi_version": infos.first().map(|i| i.abi_version),
            "signature": signature,
            "plugins": plugins,
        });
        println!("{doc}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "library: {}", lib.display())?;
    if let Some(i) = infos.first() {
        writeln!(out, "abi version: {}", i.abi_version)?;
        writeln!(out, "plugins: {}", i.plugins_in_library.join(", "))?;
    }
    writeln!(out, "signature: {signature}")?;
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
        for (m, name) in method_names(i).iter().enumerate() {
            if let Some(name) = name {
                writeln!(out, "  method {m}: {name}")?;
            }
        }
        writeln!(
            out,
            "  capabilities: {:#x} ({})",
            i.capabilities,
            capability_bits(i.capabilities)
        )?;
        for (k, v) in &i.trait_metadata {
            writeln!(out, "  metadata: {k} = {v}")?;
        }
        for (m, pairs) in i.method_metadata.iter().enumerate() {
            for (k, v) in pairs {
                writeln!(out, "  method {m} metadata: {k} = {v}")?;
            }
        }
        if !i.host_imports.is_empty() {
            writeln!(out, "  host imports: {}", i.host_imports.join(", "))?;
        }
        if !i.unbound_imports.is_empty() {
            writeln!(out, "  host imports (unbound here): {}", i.unbound_imports.join(", "))?;
        }
        for layer in Layer::ALL {
            writeln!(out, "  sandbox {layer}: {}", layer_state(i.sandbox.state(layer)))?;
        }
    }
    Ok(())
}

/// The optional methods a capability mask says are implemented, as bit numbers.
fn capability_bits(caps: u64) -> String {
    let bits: Vec<String> = (0..64)
        .filter(|b| caps & (1u64 << b) != 0)
        .map(|b| b.to_string())
        .collect();
    if bits.is_empty() {
        "no optional methods".to_string()
    } else {
        format!("optional methods {}", bits.join(", "))
    }
}

fn layer_state(state: &LayerState) -> String {
    match state {
        LayerState::Enforced => "enforced".to_string(),
        LayerState::Partial(why) => format!("partial: {why}"),
        LayerState::Unavailable(why) => format!("unavailable: {why}"),
        LayerState::Off => "off".to_string(),
    }
}

/// What is known of the library's signature: verified (the load checked it
/// against the given keys), present but not checked, or none.
fn signature_state(cli: &Cli, lib: &Path) -> String {
    let sig = bulkhead_host::signature_path(lib);
    if !cli.require_signature.is_empty() {
        format!("verified ({})", sig.display())
    } else if sig.exists() {
        format!(
            "present, not checked ({}); check it with --require-signature KEYFILE",
            sig.display()
        )
    } else {
        "none".to_string()
    }
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
        "method_names": method_names(i),
        "capability_bits": (0..64).filter(|b| i.capabilities & (1u64 << b) != 0).collect::<Vec<u32>>(),
        "host_imports": i.host_imports,
        "unbound_imports": i.unbound_imports,
        "sandbox": Layer::ALL.iter().map(|l| json!([l.name(), layer_state(i.sandbox.state(*l))])).collect::<Vec<_>>(),
    })
}
