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
//!    inherited descriptor, asks for SIGKILL when its parent dies, sets
//!    `no_new_privs` and applies its resource limits (`setup`);
//! 2. reads the `Load` request, loads and validates the plugin (`load`) and
//!    answers with its info or the reason it could not load;
//! 3. serves calls until the host says `Shutdown` or closes the socket
//!    (`dispatch`).
//!
//! Usage (the host builds this command line): `bulkhead-worker --parent-pid PID
//! [--limit-as BYTES] [--limit-cpu SECS] [--limit-nofile N] [--limit-nproc N]
//! [--core-dumps]`.

mod channel;
mod dispatch;
mod imports;
mod load;
mod setup;
mod streams;

use std::process::ExitCode;

/// Exit code for a malformed command line.
const EXIT_USAGE: u8 = 64;
/// Exit code when the worker could not prepare itself (before any plugin code ran).
const EXIT_SETUP: u8 = 71;

/// Runs the worker with this process's command line (`std::env::args`, program
/// name skipped) and returns the exit code the process should end with.
///
/// Call it only in a process started by the bulkhead host as a worker: it takes
/// over fd 0, closes inherited descriptors and loads untrusted code.
pub fn run() -> ExitCode {
    run_with_args(std::env::args().skip(1))
}

/// Runs the worker with the given arguments (the program name excluded).
pub fn run_with_args(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match setup::Args::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bulkhead-worker: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let sock = match setup::prepare(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead-worker: setup failed: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    dispatch::run(sock)
}
