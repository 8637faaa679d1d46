//! `bulkhead-worker`: the process that runs one untrusted fidius plugin.
//!
//! This library holds the whole worker; the `bulkhead-worker` binary is a thin
//! `main` that calls [`run`].
//!
//! The host starts it with one end of a Unix socket pair as fd 0, its stdout and
//! stderr piped back to the host, its own process group and a scrubbed
//! environment. The worker then:
//!
//! 1. moves the socket off fd 0 and puts `/dev/null` there, closes every other
//!    inherited descriptor, asks for SIGKILL when its parent dies and sets
//!    `no_new_privs` (`setup`);
//! 2. reads the `Load` request, maps the shared region, enters the sandbox the
//!    request describes (`sandbox`) and applies its resource limits — all
//!    before any plugin code runs — then loads and validates the plugin
//!    (`load`) and answers with its info or the reason it could not load;
//! 3. serves calls until the host says `Shutdown` or closes the socket
//!    (`dispatch`).
//!
//! Usage (the host builds this command line): `bulkhead-worker --parent-pid PID
//! [--limit-as BYTES] [--limit-cpu SECS] [--limit-nofile N] [--limit-nproc N]
//! [--limit-fsize BYTES] [--core-dumps]`, or `--version`, or
//! `--protocol-version`, or `bulkhead-worker --parent-pid PID --fork-server`
//! for a fork-server (see `forkserver`).

#[cfg(not(target_os = "linux"))]
compile_error!(
    "bulkhead supports Linux only: it relies on memfd shared memory, futexes, prctl and Linux process control"
);

mod channel;
mod crash;
mod cstr;
mod dispatch;
mod forkserver;
mod imports;
mod load;
mod sandbox;
mod self_worker;
mod setup;
mod streams;
mod sys;
mod title;

use std::process::ExitCode;

use bulkhead_shared::protocol::PROTOCOL_VERSION;

pub use self_worker::{self_worker_main, REEXEC_ENV};

/// Exit code for a malformed command line.
const EXIT_USAGE: u8 = 64;
/// Exit code when the worker could not prepare itself (before any plugin code ran).
const EXIT_SETUP: u8 = 71;

/// The first argument that makes an application's own executable act as a
/// worker (self-worker mode): the host starts `current_exe SELF_WORKER_ARG
/// --parent-pid ...`, and the application's `main` hands such a command line
/// to [`run_with_args`] before doing anything else.
pub const SELF_WORKER_ARG: &str = bulkhead_shared::names::SELF_WORKER_ARG;

/// The line `--protocol-version` prints, before the number: the fixed prefix
/// every worker version answers with, so a host can read the version of any
/// worker without speaking its protocol. Frozen: never change it.
pub const PROTOCOL_LINE_PREFIX: &str = bulkhead_shared::names::PROTOCOL_LINE_PREFIX;

/// Runs the worker with this process's command line (`std::env::args`, program
/// name skipped) and returns the exit code the process should end with.
///
/// Call it only in a process started by the bulkhead host as a worker: it takes
/// over fd 0, closes inherited descriptors and loads untrusted code.
pub fn run() -> ExitCode {
    ExitCode::from(run_with_args(std::env::args().skip(1)))
}

/// Runs the worker with the given arguments (the program name excluded) and
/// returns the process exit code.
///
/// Besides the host's command line, two queries answer at once and exit 0:
/// `--version` prints the crate and protocol versions, and
/// `--protocol-version` prints one line, [`PROTOCOL_LINE_PREFIX`] followed by
/// the protocol version.
pub fn run_with_args(args: impl Iterator<Item = String>) -> u8 {
    let mut args = args.peekable();
    match args.peek().map(String::as_str) {
        Some("--version") => {
            println!(
                "bulkhead-worker {} (protocol {PROTOCOL_VERSION})",
                env!("CARGO_PKG_VERSION")
            );
            return 0;
        }
        Some(bulkhead_shared::names::PROTOCOL_VERSION_ARG) => {
            println!("{PROTOCOL_LINE_PREFIX}{PROTOCOL_VERSION}");
            return 0;
        }
        _ => {}
    }
    let args = match setup::Args::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bulkhead-worker: {e}");
            return EXIT_USAGE;
        }
    };
    if args.fork_server {
        return forkserver::serve(&args);
    }
    let sock = match setup::prepare(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead-worker: setup failed: {e}");
            return EXIT_SETUP;
        }
    };
    dispatch::run(sock, &args)
}
