//! The `bulkhead` CLI on the fixture libraries: real worker processes, exact
//! output, exit codes.

use std::process::{Command, Output};

use bulkhead_tests::{basic, fixtures};
use serde_json::Value;

fn bulkhead(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead-cli"))
        .args(args)
        .env_remove("BULKHEAD_WORKER")
        .output()
        .expect("run bulkhead")
}

fn lib(name: &str) -> String {
    fixtures().lib(name).to_str().unwrap().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Exit 1 and exactly one line on stderr, returned.
#[track_caller]
fn failed_with_one_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stdout {} stderr {}", stdout(o), stderr(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("bulkhead-cli: ") && err.ends_with('\n'), "{err:?}");
    err
}

/// Exit 2 and exactly one line on stderr, returned.
#[track_caller]
fn bad_command_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "stdout {} stderr {}", stdout(o), stderr(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("bulkhead-cli: "), "{err:?}");
    err
}

#[test]
fn inspect_lists_every_plugin_of_a_library() {
    let l = lib("fx-greeter");
    let o = bulkhead(&["inspect", &l]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // Registry order is the linker's (unspecified).
    let head_a = format!("library: {l}\nabi version: 500\nplugins: HelloGreeter, ShoutGreeter\n");
    let head_b = format!("library: {l}\nabi version: 500\nplugins: ShoutGreeter, HelloGreeter\n");
    assert!(text.starts_with(&head_a) || text.starts_with(&head_b), "{text}");
    assert_eq!(text.matches("\nplugin ").count(), 2, "{text}");
    assert!(
        text.contains("\nplugin HelloGreeter\n  interface: Greeter (version 1)\n"),
        "{text}"
    );
    assert!(
        text.contains("\nplugin ShoutGreeter\n  interface: Greeter (version 1)\n"),
        "{text}"
    );
    assert_eq!(text.matches("  methods: 2\n").count(), 2, "{text}");
    assert_eq!(
        text.matches("  buffer strategy: PluginAllocated\n").count(),
        2,
        "{text}"
    );
}

#[test]
fn inspect_json_reports_the_descriptor() {
    let o = bulkhead(&["inspect", &lib("fx-basic"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["abi_version"], 500);
    let p = &v["plugins"][0];
    assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
    assert_eq!(p["name"], "BasicPlugin");
    assert_eq!(p["interface"], "Basic");
    assert_eq!(p["method_count"], basic::COUNT);
    assert_eq!(p["buffer_strategy"], "PluginAllocated");
    assert_eq!(p["capabilities"], 0);
    assert_eq!(p["metadata"], serde_json::json!([["kind", "fixture"]]));
    assert_eq!(p["method_metadata"][0], serde_json::json!([["idempotent", "true"]]));
    let hash = p["interface_hash"].as_str().unwrap();
    assert!(hash.starts_with("0x") && hash.len() == 18, "{hash}");

    let o = bulkhead(&["inspect", &lib("fx-arena"), "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["plugins"][0]["buffer_strategy"], "Arena");

    let o = bulkhead(&["inspect", &lib("fx-old"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["abi_version"], 400);
}

#[test]
fn call_with_json_arguments() {
    let l = lib("fx-basic");
    let o = bulkhead(&[
        "call",
        &l,
        "--method",
        "0",
        "--json-args",
        r#"["cli"]"#,
        "--returns",
        "string",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello, cli!\n");

    let o = bulkhead(&[
        "call",
        &l,
        "--plugin",
        "BasicPlugin",
        "--method",
        "1",
        "--json-args",
        "[2, 40]",
        "--returns",
        "i64",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["value"], 42);
    assert_eq!(v["plugin"], "BasicPlugin");
    assert_eq!(v["method"], 1);
    assert_eq!(v["output_len"], 8);

    // Raw result: the bincode bytes of the String, as hex.
    let o = bulkhead(&["call", &l, "--method", "0", "--json-args", r#"["x"]"#]);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected: Vec<u8> = bincode::serialize("Hello, x!").unwrap();
    let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(stdout(&o), format!("{hex}\n"));
}

#[test]
fn call_raw_method_with_hex_bytes() {
    let o = bulkhead(&[
        "call",
        &lib("fx-basic"),
        "--method",
        &basic::ECHO_RAW.to_string(),
        "--hex",
        "00ff10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "00ff10\n");
}

#[test]
fn a_crashing_call_is_reported_not_suffered() {
    let o = bulkhead(&["call", &lib("fx-basic"), "--method", &basic::SEGFAULT.to_string()]);
    let err = failed_with_one_line(&o);
    assert_eq!(
        err,
        "bulkhead-cli: call failed: worker died: signal 11 (SIGSEGV) in method 7 at address 0x0\n"
    );
    assert_eq!(stdout(&o), "");
}

#[test]
fn a_library_that_crashes_during_load_is_reported_not_suffered() {
    let l = lib("fx-dlopen-crash");
    for cmd in [vec!["inspect", l.as_str()], vec!["call", l.as_str(), "--method", "0"]] {
        let o = bulkhead(&cmd);
        let err = failed_with_one_line(&o);
        assert!(
            err.starts_with(&format!(
                "bulkhead-cli: worker died while loading {l}: signal 11 (SIGSEGV)"
            )),
            "{err}"
        );
    }
}

#[test]
fn a_hanging_load_shows_progress_then_times_out() {
    let l = lib("fx-dlopen-hang");
    let o = bulkhead(&["inspect", &l, "--load-timeout-ms", "1500", "--progress", "always"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(&format!("\r| loading {l}...")), "{err:?}");
    let last = err.rsplit('\r').next().unwrap();
    assert!(last.starts_with("bulkhead-cli: ") && last.contains("1.5s"), "{err:?}");
    // Without a terminal, `auto` shows no progress.
    let o = bulkhead(&["inspect", &l, "--load-timeout-ms", "800"]);
    failed_with_one_line(&o);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let l = lib("fx-basic");
    // A bad command line: exit 2, one line, before any worker starts.
    let o = bulkhead(&["call", &l, "--method", "1", "--json-args", r#"{"a": 1}"#]);
    let err = bad_command_line(&o);
    assert!(err.contains("--json-args: arguments must be a JSON array"), "{err}");
    let o = bulkhead(&["call", &l, "--method", "1", "--json-args", r#"[{"u8": 300}]"#]);
    let err = bad_command_line(&o);
    assert!(err.contains("u8: 300 out of range"), "{err}");
    let o = bulkhead(&["call", &l, "--method", "0", "--returns", "u128"]);
    let err = bad_command_line(&o);
    assert!(err.contains("unknown --returns type"), "{err}");
    let o = bulkhead(&["call", &l, "--method", "0", "--hex", "zz"]);
    bad_command_line(&o);
    let o = bulkhead(&["call", &l, "--method", "0", "--input", "/nonexistent/bulkhead-input"]);
    bad_command_line(&o);
    let o = bulkhead(&["inspect", &l, "--require-signature", "/nonexistent/key"]);
    bad_command_line(&o);
    // Clap's own usage errors exit 2 as well.
    assert_eq!(bulkhead(&["call", &l]).status.code(), Some(2));
    assert_eq!(
        bulkhead(&["inspect", &l, "--no-sandbox", "--allow-network"])
            .status
            .code(),
        Some(2)
    );
    // A call that fails is not a bad command line: exit 1.
    let o = bulkhead(&["call", &l, "--method", "99"]);
    let err = failed_with_one_line(&o);
    assert!(err.contains("call failed") && err.contains("99"), "{err}");
}

#[test]
fn version_flag() {
    let o = bulkhead(&["--version"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), format!("bulkhead-cli {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn learn_mode_prints_the_calls_a_plugin_needs_as_a_sandbox() {
    let l = lib("fx-neighbour");
    let method = bulkhead_tests::neighbour::BIND_ABSTRACT.to_string();
    let args = [
        "call",
        &l,
        "--method",
        &method,
        "--json-args",
        "[\"cli-learn\"]",
        "--returns",
        "i64",
    ];
    // Under the default sandbox the plugin's socket is refused (-EPERM)...
    let o = bulkhead(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "-1\n");
    // ...in learn mode it goes through, and what it needed is printed.
    let mut learn = args.to_vec();
    learn.push("--learn");
    let o = bulkhead(&learn);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\n");
    let err = stderr(&o);
    assert!(err.contains("learned: bind, listen, socket\n"), "{err}");
    assert!(
        err.contains(
            "sandbox: Sandbox::strict().allow_syscall(\"bind\").allow_syscall(\"listen\").allow_syscall(\"socket\")\n"
        ),
        "{err}"
    );
    learn.push("--json");
    let o = bulkhead(&learn);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["value"], 0);
    assert_eq!(v["learned"], serde_json::json!(["bind", "listen", "socket"]));
}

#[test]
fn inspect_shows_method_names_capabilities_signature_and_the_sandbox() {
    let l = lib("fx-greeter");
    let o = bulkhead(&["inspect", &l]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("\nsignature: none\n"), "{text}");
    assert_eq!(
        text.matches("  method 0: greet\n  method 1: name\n").count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("  capabilities: 0x0 (no optional methods)\n").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("  sandbox seccomp: enforced\n").count(), 2, "{text}");
    assert_eq!(text.matches("  sandbox net-ns: enforced\n").count(), 2, "{text}");
    // The sandbox follows the flags.
    let o = bulkhead(&["inspect", &l, "--no-sandbox", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let p = &v["plugins"][0];
    assert_eq!(p["method_names"], serde_json::json!(["greet", "name"]));
    assert!(p["sandbox"].as_array().unwrap().iter().all(|l| l[1] == "off"), "{p}");
    let o = bulkhead(&["inspect", &l, "--allow-connect-tcp", "9", "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let layers = v["plugins"][0]["sandbox"].as_array().unwrap().clone();
    assert!(layers.contains(&serde_json::json!(["net-ns", "off"])), "{layers:?}");
    assert!(
        layers.contains(&serde_json::json!(["seccomp", "enforced"])),
        "{layers:?}"
    );
}

#[test]
fn call_by_method_name() {
    let l = lib("fx-greeter");
    let o = bulkhead(&[
        "call",
        &l,
        "--plugin",
        "ShoutGreeter",
        "--method",
        "greet",
        "--json-args",
        "[\"ops\"]",
        "--returns",
        "string",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "HELLO, OPS!\n");
    let o = bulkhead(&["call", &l, "--plugin", "ShoutGreeter", "--method", "shout"]);
    let err = bad_command_line(&o);
    assert!(err.contains("no such method; named methods: greet, name"), "{err}");
}

#[test]
fn a_grant_on_the_command_line_reaches_the_plugin() {
    let dir = std::env::temp_dir().join(format!("bulkhead-cli-grant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("input.txt");
    std::fs::write(&file, b"granted").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let l = lib("fx-neighbour");
    let read = bulkhead_tests::neighbour::READ.to_string();
    let path = file.to_str().unwrap();
    let args_json = format!("[{}]", serde_json::json!(path));
    // Without the grant the file is not in the sandbox's view.
    let o = bulkhead(&[
        "call",
        &l,
        "--method",
        &read,
        "--json-args",
        &args_json,
        "--returns",
        "raw",
    ]);
    let err = failed_with_one_line(&o);
    assert!(err.contains("call failed"), "{err}");
    let o = bulkhead(&[
        "call",
        &l,
        "--method",
        &read,
        "--json-args",
        &args_json,
        "--allow-read",
        path,
        "--returns",
        "bytes",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{}\n", bulkhead_cli_hex(b"granted")));
    let _ = std::fs::remove_dir_all(&dir);
}

fn bulkhead_cli_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn scan_inspects_every_library_of_a_directory_each_in_its_own_worker() {
    let dir = std::env::temp_dir().join(format!("bulkhead-cli-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["fx-greeter", "fx-dlopen-crash"] {
        std::fs::copy(lib(name), dir.join(format!("{name}.so"))).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), b"not a library").unwrap();
    let d = dir.to_str().unwrap();
    let o = bulkhead(&["scan", d]);
    // One library crashed while loading: reported, and the exit status says so.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with(&format!("{d}/fx-dlopen-crash.so: error: worker died while loading")),
        "{text}"
    );
    assert!(lines[0].contains("SIGSEGV"), "{text}");
    let mut greeters = lines[1..].to_vec();
    greeters.sort();
    assert_eq!(
        greeters,
        [
            format!("{d}/fx-greeter.so: HelloGreeter (Greeter version 1, 2 methods, PluginAllocated)"),
            format!("{d}/fx-greeter.so: ShoutGreeter (Greeter version 1, 2 methods, PluginAllocated)"),
        ]
    );
    assert!(stderr(&o).contains("1 of 2 libraries"), "{}", stderr(&o));
    let o = bulkhead(&["scan", d, "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["libraries"].as_array().unwrap().len(), 2);
    assert_eq!(v["libraries"][1]["plugins"].as_array().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_stream_prints_every_item() {
    let l = lib("fx-stream");
    let count = bulkhead_tests::streams::COUNT.to_string();
    let o = bulkhead(&[
        "call",
        &l,
        "--plugin",
        "StreamPlugin",
        "--method",
        &count,
        "--stream",
        "--json-args",
        "[3]",
        "--returns",
        "u64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\n1\n2\n");
    let o = bulkhead(&[
        "call",
        &l,
        "--plugin",
        "StreamPlugin",
        "--method",
        &count,
        "--stream",
        "--max-items",
        "2",
        "--json-args",
        "[1000]",
        "--returns",
        "u64",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["items"], serde_json::json!([0, 1]));
}
