//! Crash reports: a worker that dies of a signal reports the signal, the
//! method in flight, a bounded copy of its input, the faulting address and
//! its faulting thread's frames; the host attaches the report to the error,
//! and its replay line crashes the CLI the same way. Real workers, real
//! fixture plugins, under the default sandbox (seccomp allow-list on) and
//! under `Sandbox::none()`.

use std::process::Command;
use std::time::Duration;

use bulkhead_host::{CallError, CrashReport, Exit, LoadError, Plugin, Sandbox, Supervisor};
use bulkhead_shared::crash as lines;
use bulkhead_tests::{basic, fixtures, spec, supervisor, wait_gone};

const GENEROUS: Duration = Duration::from_secs(20);

/// The two sandboxes every crash case runs under.
fn sandboxes() -> [(&'static str, Sandbox); 2] {
    [("default", Sandbox::default()), ("none", Sandbox::none())]
}

fn load(sup: &Supervisor, sandbox: &Sandbox) -> Plugin {
    sup.load(spec("fx-basic").sandbox(sandbox.clone())).unwrap()
}

fn segv(signal: i32) -> Exit {
    Exit::Signal {
        signal,
        core_dumped: false,
    }
}

/// The crash report of a call that must have died of `signal`; waits for
/// the dead worker to be gone.
#[track_caller]
fn died(plugin: &Plugin, result: Result<Vec<u8>, CallError>, signal: i32) -> (Box<CrashReport>, String) {
    let pid = plugin.info().worker_pid;
    let err = result.expect_err("the call must crash");
    let text = err.to_string();
    let CallError::WorkerDied { exit, crash, stderr } = err else {
        panic!("expected WorkerDied, got {err:?}")
    };
    assert_eq!(exit, segv(signal));
    assert!(
        !stderr.contains("bulkhead-crash"),
        "report lines leaked into stderr: {stderr:?}"
    );
    wait_gone(pid, GENEROUS);
    (crash.expect("a crash report"), text)
}

#[test]
fn a_segfault_reports_method_address_input_and_the_faulting_function() {
    let sup = supervisor();
    for (name, sandbox) in sandboxes() {
        let plugin = load(&sup, &sandbox);
        let input = b"crash me\x00\xff\n\x1f".to_vec();
        let (r, text) = died(&plugin, plugin.call_raw(basic::CRASH_WRITE, &input), 11);
        assert_eq!(r.signal, 11, "{name}");
        assert_eq!(r.code, 1, "{name}: SEGV_MAPERR");
        assert_eq!(r.fault_address, Some(0x10), "{name}");
        assert_eq!(r.method, Some(basic::CRASH_WRITE), "{name}");
        assert_eq!(r.input, input, "{name}");
        assert_eq!(r.input_len, input.len() as u64, "{name}");
        assert!(r.input_complete() && r.complete, "{name}: {r:?}");
        // The faulting instruction first, named after the exported function
        // it is in, in the fixture's library.
        assert!(!r.frames.is_empty(), "{name}");
        assert!(
            r.frames[0].contains(" fx_basic_write_at+0x") && r.frames[0].contains(" in libfx_basic.so+0x"),
            "{name}: {:?}",
            r.frames
        );
        assert!(r.frames.len() > 1, "{name}: callers too: {:?}", r.frames);
        assert!(r.frames.iter().all(|f| f.starts_with("0x")), "{name}: {:?}", r.frames);
        assert!(
            text.starts_with("worker died: signal 11 (SIGSEGV) in method 27 at address 0x10"),
            "{name}: {text}"
        );
        assert_eq!(
            r.to_string(),
            format!(
                "signal 11 (SIGSEGV, code 1) at address 0x10 in method 27 (input {} bytes)",
                input.len()
            )
        );
        // The next call runs on a fresh worker.
        assert_eq!(plugin.call_raw(basic::ECHO_RAW, b"again").unwrap(), b"again");
    }
}

#[test]
fn the_input_copy_stops_at_4_kib_and_the_full_length_is_reported() {
    let sup = supervisor();
    for (name, sandbox) in sandboxes() {
        let plugin = load(&sup, &sandbox);
        let input: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (r, _) = died(&plugin, plugin.call_raw(basic::CRASH_WRITE, &input), 11);
        assert_eq!(r.input, &input[..4096], "{name}");
        assert_eq!(r.input_len, 10_000, "{name}");
        assert!(!r.input_complete(), "{name}");
        assert_eq!(r.replay(&fixtures().lib("fx-basic"), None), None, "{name}");
        assert!(r.complete, "{name}");
    }
}

#[test]
fn an_abort_reports_its_method_and_no_fault_address() {
    let sup = supervisor();
    for (name, sandbox) in sandboxes() {
        let plugin = load(&sup, &sandbox);
        // abort() takes no arguments: its input is empty.
        let (r, text) = died(&plugin, plugin.call_raw(basic::ABORT, b""), 6);
        assert_eq!((r.signal, r.code), (6, libc::SI_TKILL), "{name}");
        assert_eq!(r.fault_address, None, "{name}");
        assert_eq!(r.method, Some(basic::ABORT), "{name}");
        assert_eq!((r.input.len(), r.input_len), (0, 0), "{name}");
        assert!(!r.frames.is_empty() && r.complete, "{name}: {r:?}");
        assert!(
            text.starts_with("worker died: signal 6 (SIGABRT) in method 6"),
            "{name}: {text}"
        );
        assert!(!text.contains("address"), "{name}: {text}");
        // A stack overflow: std's detector still says so and aborts; the
        // report is of that abort, in the overflowing method.
        let pid = plugin.info().worker_pid;
        let err = plugin.call_raw(basic::STACK_OVERFLOW, &[0u8; 8]).unwrap_err();
        let CallError::WorkerDied { exit, crash, stderr } = err else {
            panic!("{name}: {err:?}")
        };
        assert_eq!(exit, segv(6), "{name}");
        assert!(stderr.contains("has overflowed its stack"), "{name}: {stderr}");
        let r = crash.expect("a crash report");
        assert_eq!(
            (r.signal, r.method, r.input.as_slice()),
            (6, Some(basic::STACK_OVERFLOW), &[0u8; 8][..]),
            "{name}"
        );
        wait_gone(pid, GENEROUS);
        // The existing crash fixture too: a null write.
        let (r, _) = died(&plugin, plugin.call_raw(basic::SEGFAULT, b""), 11);
        assert_eq!((r.fault_address, r.method), (Some(0), Some(basic::SEGFAULT)), "{name}");
    }
}

#[test]
fn a_crash_while_loading_is_reported_outside_any_call() {
    let sup = supervisor();
    for (name, sandbox) in sandboxes() {
        let err = sup.load(spec("fx-dlopen-crash").sandbox(sandbox)).unwrap_err();
        let LoadError::WorkerDied { exit, crash, .. } = &err else {
            panic!("{name}: {err:?}")
        };
        assert_eq!(*exit, segv(11), "{name}");
        let r = crash.as_ref().expect("a crash report");
        assert_eq!((r.signal, r.fault_address, r.method), (11, Some(0), None), "{name}");
        assert_eq!((r.input.len(), r.input_len), (0, 0), "{name}");
        assert!(!r.frames.is_empty(), "{name}");
        assert!(
            err.to_string()
                .contains(": signal 11 (SIGSEGV) outside any call at address 0x0"),
            "{name}: {err}"
        );
    }
}

#[test]
fn the_replay_line_crashes_the_cli_the_same_way() {
    let sup = supervisor();
    let lib = fixtures().lib("fx-basic");
    for (name, sandbox) in sandboxes() {
        let plugin = load(&sup, &sandbox);
        let input = b"replay \x00\x01\xfe\xff".to_vec();
        let (r, text) = died(&plugin, plugin.call_raw(basic::CRASH_WRITE, &input), 11);
        let replay = r.replay(&lib, None).expect("a replayable call");
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            replay,
            format!("bulkhead-cli call {} --method 27 --hex {hex}", lib.display()),
            "{name}"
        );
        // The fixture path has no characters a shell would interpret.
        let words: Vec<&str> = replay.split(' ').collect();
        assert_eq!(words[0], "bulkhead-cli");
        let out = Command::new(bulkhead_tests::cli_binary())
            .args(&words[1..])
            .env_remove("BULKHEAD_WORKER")
            .output()
            .expect("run the CLI");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        // Same signal, method and address as the original crash.
        let head = text.split(';').next().unwrap();
        assert_eq!(head, "worker died: signal 11 (SIGSEGV) in method 27 at address 0x10");
        assert!(
            stderr.starts_with(&format!("bulkhead-cli: call failed: {head}")),
            "{name}: {stderr}"
        );
    }
}

/// Writes `bytes` to the worker's stderr through the fixture, which returns
/// them: the host survived whatever they held.
#[track_caller]
fn forge(plugin: &Plugin, bytes: &[u8]) {
    let back = plugin
        .call_raw_with_timeout(basic::STDERR_RAW, bytes, GENEROUS)
        .unwrap();
    assert_eq!(back.len(), bytes.len());
}

fn line(build: impl Fn(&mut [u8; lines::MAX_LINE]) -> usize) -> Vec<u8> {
    let mut buf = [0u8; lines::MAX_LINE];
    let n = build(&mut buf);
    buf[..n].to_vec()
}

#[test]
fn forged_and_garbage_report_lines_do_not_mislead_or_break_the_host() {
    let sup = supervisor();
    for (name, sandbox) in sandboxes() {
        let plugin = load(&sup, &sandbox);
        let pid = plugin.info().worker_pid;
        let mut garbage = Vec::new();
        garbage.extend_from_slice(lines::MARKER);
        garbage.push(b'\n');
        garbage.extend_from_slice(b"\x1fbulkhead-crash sig=b code=1 addr=10 method=1b len=ffffffffffffffff x=1\n");
        garbage.extend_from_slice(b"\x1fbulkhead-crash in=zz\n\x1fbulkhead-crash ip=\n\x1fbulkhead-crash sym=0 \n");
        // An oversized marker line (100 KB, far beyond any report line).
        garbage.extend_from_slice(lines::MARKER);
        garbage.extend_from_slice(b"in=");
        garbage.extend_from_slice(&vec![b'a'; 100_000]);
        garbage.push(b'\n');
        // Frames and symbols with no header, and a huge claimed input length.
        garbage.extend(line(|b| lines::encode_frame(b, 1)));
        garbage.extend(line(|b| lines::encode_header(b, 11, 1, 0xbad, Some(99), u64::MAX)));
        for _ in 0..100 {
            garbage.extend(line(|b| lines::encode_input(b, &[0xee; 512])));
        }
        for i in 0..1000 {
            garbage.extend(line(|b| lines::encode_frame(b, i)));
        }
        forge(&plugin, &garbage);
        assert_eq!(plugin.info().worker_pid, pid, "{name}: the worker survives");
        assert_eq!(plugin.call_raw(basic::ECHO_RAW, b"still fine").unwrap(), b"still fine");

        // A complete forged report, then a death by another cause: not believed.
        let mut fake = line(|b| lines::encode_header(b, 6, -6, 0, Some(6), 0));
        fake.extend(line(lines::encode_end));
        forge(&plugin, &fake);
        let err = plugin.call::<_, u32>(basic::EXIT, &(3i32,)).unwrap_err();
        assert!(
            matches!(
                err,
                CallError::WorkerDied {
                    exit: Exit::Code(3),
                    crash: None,
                    ..
                }
            ),
            "{name}: {err:?}"
        );
        wait_gone(pid, GENEROUS);

        // A forged report of the right signal, then a real crash: the real
        // report replaces it.
        let pid = plugin.info().worker_pid;
        let mut fake = line(|b| lines::encode_header(b, 11, 1, 0xbad, Some(99), 3));
        fake.extend(line(|b| lines::encode_input(b, b"abc")));
        fake.extend(line(|b| lines::encode_frame(b, 0x1234)));
        forge(&plugin, &fake);
        let (r, _) = died(&plugin, plugin.call_raw(basic::CRASH_WRITE, b"real"), 11);
        assert_ne!(plugin.info().worker_pid, pid);
        assert_eq!(
            (r.fault_address, r.method),
            (Some(0x10), Some(basic::CRASH_WRITE)),
            "{name}"
        );
        assert_eq!(r.input, b"real", "{name}");
        assert!(r.frames[0].contains("fx_basic_write_at"), "{name}: {:?}", r.frames);
    }
}

#[test]
fn a_report_after_a_partial_line_is_still_found() {
    let sup = supervisor();
    let plugin = load(&sup, &Sandbox::default());
    // Stderr left mid-line: the report's first line follows on the same line.
    forge(&plugin, b"no newline here");
    let pid = plugin.info().worker_pid;
    let err = plugin.call_raw(basic::CRASH_WRITE, b"x").unwrap_err();
    let CallError::WorkerDied { crash, stderr, .. } = err else {
        panic!("{err:?}")
    };
    let r = crash.expect("a crash report");
    assert_eq!(
        (r.fault_address, r.method, r.input.as_slice()),
        (Some(0x10), Some(27), &b"x"[..])
    );
    assert!(stderr.ends_with("no newline here\n"), "{stderr:?}");
    wait_gone(pid, GENEROUS);
}

#[test]
fn a_report_that_cannot_name_its_frames_ends_by_its_watchdog_with_the_original_signal() {
    let sup = supervisor();
    let hang = fixtures().lib("fx-dlopen-hang");
    let default = Sandbox::default().allow_read(&hang);
    for (name, sandbox) in [("default", default), ("none", Sandbox::none())] {
        let plugin = load(&sup, &sandbox);
        let pid = plugin.info().worker_pid;
        let arg = hang.to_str().unwrap().to_string();
        let err = plugin
            .call_with_timeout::<_, u32>(basic::CRASH_WITH_LOADER_LOCKED, &(arg,), GENEROUS)
            .unwrap_err();
        let CallError::WorkerDied { exit, crash, .. } = err else {
            panic!("{name}: {err:?}")
        };
        // The watchdog ended it, with the crash's own signal.
        assert_eq!(exit, segv(11), "{name}");
        let r = crash.expect("a crash report");
        assert_eq!(
            (r.fault_address, r.method),
            (Some(0x10), Some(basic::CRASH_WITH_LOADER_LOCKED)),
            "{name}"
        );
        // The safe part is there: raw frames, none named, not complete.
        assert!(!r.complete, "{name}: {r:?}");
        assert!(!r.frames.is_empty(), "{name}");
        assert!(
            r.frames.iter().all(|f| f.starts_with("0x") && !f.contains(' ')),
            "{name}: {:?}",
            r.frames
        );
        wait_gone(pid, GENEROUS);
    }
}
