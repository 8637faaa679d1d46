//! Self-worker mode in an application whose process is already multi-threaded
//! when it reaches `bulkhead_host::worker_main_if_requested()` — a `#[tokio::main]`
//! `main` starts its runtime's threads before its first statement, and the
//! kernel creates no user namespace for a multi-threaded process.
//!
//! Contract: such a process re-executes itself (`/proc/self/exe`, the same
//! arguments and `argv[0]`, the same descriptors — fd 0 is the host's socket —
//! and environment, plus [`REEXEC_ENV`]). In the new image a constructor
//! ([`EARLY_ENTRY`], run by the dynamic loader before `main` and before any
//! runtime or thread) sees the marker and runs the worker there, single
//! threaded, then exits; `main` never runs. The marker is removed before the
//! worker starts, so the plugin does not see it.
//!
//! If the constructor did not run (a linker that dropped it, a platform
//! without `.init_array`) the copy reaches `worker_main_if_requested()` again
//! with the marker set; it does not re-execute a second time but runs the
//! worker as it is — and a strict sandbox then refuses the load, naming the
//! threads. Nothing degrades silently.

use std::ffi::{c_char, c_int, CStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;

use bulkhead_shared::names::SELF_WORKER_ARG;

/// The environment variable that marks the re-executed copy of a
/// multi-threaded self-worker.
pub const REEXEC_ENV: &str = "BULKHEAD_WORKER_REEXEC";

/// Self-worker mode's entry: `args` are the arguments after
/// [`SELF_WORKER_ARG`]. Runs the worker in a single-threaded process — this
/// one, or a fresh image of this executable if this one already has threads —
/// and returns the exit code (only when this process ran the worker).
pub fn self_worker_main(argv0: OsString, args: Vec<String>) -> u8 {
    let again = std::env::var_os(REEXEC_ENV).is_some();
    if !again && crate::sandbox::thread_count() > 1 {
        let err = std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .arg(SELF_WORKER_ARG)
            .args(&args)
            .env(REEXEC_ENV, "1")
            .exec();
        // Only returns on failure: go on as we are; a strict sandbox refuses
        // the load with the reason.
        eprintln!("bulkhead-worker: re-executing a multi-threaded self-worker failed: {err}");
    }
    std::env::remove_var(REEXEC_ENV);
    crate::run_with_args(args.into_iter())
}

/// The loader's constructor for the re-executed copy: with [`REEXEC_ENV`] set
/// and [`SELF_WORKER_ARG`] as the first argument it runs the worker and exits
/// the process; otherwise it returns at once and `main` runs as usual.
extern "C" fn early_entry(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    if std::env::var_os(REEXEC_ENV).is_none() || argc < 2 || argv.is_null() {
        return;
    }
    let arg = |i: usize| -> OsString {
        // SAFETY: the loader passes `argc` valid NUL-terminated strings in `argv`,
        // and `i < argc` at every call below.
        let s = unsafe { CStr::from_ptr(*argv.add(i)) };
        OsString::from_vec(s.to_bytes().to_vec())
    };
    if arg(1) != SELF_WORKER_ARG {
        return;
    }
    let args: Vec<String> = (2..argc as usize)
        .map(|i| arg(i).to_string_lossy().into_owned())
        .collect();
    std::env::remove_var(REEXEC_ENV);
    let code = crate::run_with_args(args.into_iter());
    std::process::exit(i32::from(code));
}

/// Registers [`early_entry`] as a constructor of the executable (glibc and musl
/// call `.init_array` entries with `argc`, `argv` and `envp`).
#[used]
#[link_section = ".init_array"]
pub static EARLY_ENTRY: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = early_entry;
