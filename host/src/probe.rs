//! The build-time worker check: runs `WORKER --protocol-version`, reads the one
//! line every worker version answers with (`bulkhead-protocol N`), and compares
//! `N` with this host's protocol version.
//!
//! A binary that passed is remembered for the life of the process by its
//! identity (device, inode, size, modification and change times of the pinned
//! file) and the arguments and environment it was asked with, so the next
//! supervisor built on it starts no probe. A binary replaced or rewritten
//! since has another identity and is asked again; a failed check is never
//! remembered.

use std::io::Read;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_shared::names::{PROTOCOL_LINE_PREFIX, PROTOCOL_VERSION_ARG};
use bulkhead_shared::protocol::PROTOCOL_VERSION;

use crate::error::BuildError;
use crate::locate::{ExeIdentity, WorkerExe};

/// Bound on the probe: a worker answers at once.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of the probe's output read.
const PROBE_MAX_OUTPUT: u64 = 256;

/// Most binaries remembered as checked (a process builds supervisors on a
/// handful of worker binaries; past this the oldest is asked again).
const MAX_REMEMBERED: usize = 16;

/// A check that passed: the binary, and what it was asked with.
#[derive(PartialEq, Eq)]
struct Passed {
    identity: ExeIdentity,
    prefix: Vec<String>,
    env: Vec<(String, String)>,
}

/// Checks that passed in this process, newest last.
static PASSED: Mutex<Vec<Passed>> = Mutex::new(Vec::new());

/// Runs the worker's version query (unless this binary passed it already in
/// this process) and checks the answer.
/// `self_worker`: the executable is the application's (self-worker mode), so
/// a missing answer most likely means its `main` lacks the entry point.
pub(crate) fn check(
    worker: &WorkerExe,
    prefix: &[String],
    env: &[(String, String)],
    self_worker: bool,
) -> Result<(), BuildError> {
    let passed = worker.identity().map(|identity| Passed {
        identity,
        prefix: prefix.to_vec(),
        env: env.to_vec(),
    });
    let remembered = || PASSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = &passed {
        if remembered().contains(p) {
            return Ok(());
        }
    }
    ask(worker, prefix, env, self_worker)?;
    if let Some(p) = passed {
        let mut list = remembered();
        if !list.contains(&p) {
            if list.len() >= MAX_REMEMBERED {
                list.remove(0);
            }
            list.push(p);
        }
    }
    Ok(())
}

/// Whether a check of `worker` with `prefix` and `env` is remembered (for tests).
#[cfg(test)]
fn is_remembered(worker: &WorkerExe, prefix: &[String], env: &[(String, String)]) -> bool {
    worker.identity().is_some_and(|identity| {
        let p = Passed {
            identity,
            prefix: prefix.to_vec(),
            env: env.to_vec(),
        };
        PASSED.lock().unwrap_or_else(|e| e.into_inner()).contains(&p)
    })
}

/// Runs the worker's version query and checks the answer.
fn ask(worker: &WorkerExe, prefix: &[String], env: &[(String, String)], self_worker: bool) -> Result<(), BuildError> {
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

#[cfg(test)]
mod tests {
    //! The memory of passed checks, against small stand-in workers.
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    /// A stand-in worker: a private copy of `/bin/sh` (a real executable, so
    /// it is pinned). Asked as `sh -c LINE --protocol-version`, it prints LINE.
    fn stand_in(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::copy("/bin/sh", &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_passed_binary_is_remembered_and_a_changed_one_is_asked_again() {
        let dir = std::env::temp_dir().join(format!("bulkhead-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = stand_in(&dir, "sh");
        let line = format!("echo {PROTOCOL_LINE_PREFIX}{PROTOCOL_VERSION}");
        // `sh -c LINE --protocol-version`: the query argument lands in $0.
        let prefix = vec!["-c".to_string(), line];
        let worker = WorkerExe::pin(path.clone());
        assert!(!is_remembered(&worker, &prefix, &[]));
        check(&worker, &prefix, &[], false).unwrap();
        assert!(is_remembered(&worker, &prefix, &[]));
        // Other arguments or environment: not the same check.
        assert!(!is_remembered(&worker, &prefix, &[("A".into(), "1".into())]));
        assert!(!is_remembered(&worker, &prefix[..1], &[]));

        // The file replaced by another one at the same path: asked again, and
        // a wrong answer now is refused.
        std::fs::remove_file(&path).unwrap();
        let path = stand_in(&dir, "sh");
        let bad = vec![
            "-c".to_string(),
            format!("echo {PROTOCOL_LINE_PREFIX}{}", PROTOCOL_VERSION + 1),
        ];
        let worker = WorkerExe::pin(path.clone());
        assert!(!is_remembered(&worker, &bad, &[]));
        let err = check(&worker, &bad, &[], false).unwrap_err();
        assert!(
            matches!(err, BuildError::WorkerVersion { worker_version, .. } if worker_version == PROTOCOL_VERSION + 1),
            "{err:?}"
        );
        // A failed check is not remembered.
        assert!(!is_remembered(&worker, &bad, &[]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
