//! `bulkhead-worker`: the standalone worker binary. All of the worker lives in
//! the `bulkhead_worker` library; see its documentation for the protocol and
//! the command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    bulkhead_worker::run()
}
