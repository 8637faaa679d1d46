//! The build-time worker check: runs `WORKER --protocol-version`, reads the one
//! line every worker version answers with (`bulkhead-protocol N`), and compares
//! `N` with this host's protocol version.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use bulkhead_shared::names::{PROTOCOL_LINE_PREFIX, PROTOCOL_VERSION_ARG};
use bulkhead_shared::protocol::PROTOCOL_VERSION;

use crate::error::BuildError;
use crate::locate::WorkerExe;

/// Bound on the probe: a worker answers at once.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of the probe's output read.
const PROBE_MAX_OUTPUT: u64 = 256;

/// Runs the worker's version query and checks the answer.
/// `self_worker`: the executable is the application's (self-worker mode), so
/// a missing answer most likely means its `main` lacks the entry point.
pub(crate) fn check(
    worker: &WorkerExe,
    prefix: &[String],
    env: &[(String, String)],
    self_worker: bool,
) -> Result<(), BuildError> {
    let answer = query(worker, prefix, env).map_err(|mut reason| {
        if self_worker {
            reason.push_str("; does its main call bulkhead_host::worker_main_if_requested() first?");
        }
        BuildError::WorkerUnusable {
            worker: worker.path().to_path_buf(),
            host: PROTOCOL_VERSION,
            reason,
        }
    })?;
    if answer != PROTOCOL_VERSION {
        return Err(BuildError::WorkerVersion {
            worker: worker.path().to_path_buf(),
            host: PROTOCOL_VERSION,
            worker_version: answer,
        });
    }
    Ok(())
}

/// The protocol version `worker` reports, or why it reported none.
fn query(worker: &WorkerExe, prefix: &[String], env: &[(String, String)]) -> Result<u32, String> {
    let mut child = worker
        .command()
        .args(prefix)
        .arg(PROTOCOL_VERSION_ARG)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    // Read on a helper thread so a worker that never answers is bounded.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let reader = std::thread::Builder::new()
        .name("bulkhead-probe".into())
        .spawn(move || {
            let mut out = Vec::new();
            let r = stdout.take(PROBE_MAX_OUTPUT).read_to_end(&mut out).map(|_| out);
            let _ = tx.send(r);
        });
    let got = match reader {
        Ok(_) => rx.recv_timeout(PROBE_TIMEOUT).ok(),
        Err(_) => None,
    };
    let Some(out) = got else {
        // Our own child: kill and reap it.
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("no answer to {PROTOCOL_VERSION_ARG} within {PROBE_TIMEOUT:?}"));
    };
    let out = out.map_err(|e| format!("reading its answer: {e}"));
    // Output ended: the child closed stdout, almost always by exiting. Kill
    // first so a child that closed stdout and kept running cannot hang us.
    let status = match child.try_wait() {
        Ok(Some(s)) => Some(s),
        _ => {
            let _ = child.kill();
            child.wait().ok()
        }
    };
    let out = out?;
    let text = String::from_utf8_lossy(&out);
    let line = text.lines().next().unwrap_or("");
    match line.strip_prefix(PROTOCOL_LINE_PREFIX).map(|v| v.trim().parse::<u32>()) {
        Some(Ok(v)) => Ok(v),
        _ => Err(format!(
            "it did not report a protocol version (answered {:?}, {}); a worker older than \
             protocol 3 or not a bulkhead worker",
            line.chars().take(80).collect::<String>(),
            status.map_or_else(|| "exit unknown".to_string(), |s| s.to_string())
        )),
    }
}
