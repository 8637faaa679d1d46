//! The `bulkhead` CLI on the fixture libraries: real worker processes, exact
//! output, exit codes.

use std::process::{Command, Output};

use bulkhead_tests::{basic, fixtures};
use serde_json::Value;

fn bulkhead(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
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
    assert!(err.starts_with("bulkhead: ") && err.ends_with('\n'), "{err:?}");
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
        "bulkhead: call failed: worker died: signal 11 (SIGSEGV) in method 7 at address 0x0\n"
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
            err.starts_with(&format!("bulkhead: worker died while loading {l}: signal 11 (SIGSEGV)")),
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
    assert!(last.starts_with("bulkhead: ") && last.contains("1.5s"), "{err:?}");
    // Without a terminal, `auto` shows no progress.
    let o = bulkhead(&["inspect", &l, "--load-timeout-ms", "800"]);
    failed_with_one_line(&o);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let l = lib("fx-basic");
    let o = bulkhead(&["call", &l, "--method", "1", "--json-args", r#"{"a": 1}"#]);
    let err = failed_with_one_line(&o);
    assert!(err.contains("--json-args: arguments must be a JSON array"), "{err}");
    let o = bulkhead(&["call", &l, "--method", "1", "--json-args", r#"[{"u8": 300}]"#]);
    let err = failed_with_one_line(&o);
    assert!(err.contains("u8: 300 out of range"), "{err}");
    let o = bulkhead(&["call", &l, "--method", "99"]);
    let err = failed_with_one_line(&o);
    assert!(err.contains("call failed") && err.contains("99"), "{err}");
    let o = bulkhead(&["call", &l, "--method", "0", "--returns", "u128"]);
    let err = failed_with_one_line(&o);
    assert!(err.contains("unknown --returns type"), "{err}");
    // Usage errors are clap's, exit 2.
    assert_eq!(bulkhead(&["call", &l]).status.code(), Some(2));
}

#[test]
fn version_flag() {
    let o = bulkhead(&["--version"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), format!("bulkhead {}\n", env!("CARGO_PKG_VERSION")));
}
