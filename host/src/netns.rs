//! The supervisor's network-namespace holder: one `bulkhead-worker
//! --hold-netns` process that creates an empty network namespace once, so
//! sandboxed workers join it instead of each paying for a new one (see the
//! worker's `sandbox::holder`). It runs no plugin code. It exits when its stdin
//! closes (the supervisor is dropped) or the host dies (parent-death signal).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use crate::worker_process::spawn_on_spawner;

/// A running holder.
pub(crate) struct NetNsHolder {
    pid: u32,
    child: Mutex<Option<(Child, ChildStdin)>>,
}

impl NetNsHolder {
    /// Starts the holder; `Err` says why it is not available (workers then
    /// create network namespaces of their own).
    pub(crate) fn start(
        worker: &Path,
        worker_args: &[String],
        env: &[(String, String)],
    ) -> Result<NetNsHolder, String> {
        let mut cmd = Command::new(worker);
        cmd.args(worker_args)
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .arg("--hold-netns")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = spawn_on_spawner(cmd).map_err(|e| e.to_string())?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        // One short line from our own code (no plugin runs in the holder).
        let mut line = String::new();
        // At most 4 KiB: the holder prints `ready` or `error <reason>`.
        let read = BufReader::new(stdout.take(4096)).read_line(&mut line);
        let holder = NetNsHolder {
            pid: child.id(),
            child: Mutex::new(Some((child, stdin))),
        };
        match (read, line.trim_end()) {
            (Ok(_), "ready") => Ok(holder),
            (_, other) => Err(format!("network-namespace holder did not start: {other:?}")),
        }
    }

    /// The holder's pid, for the workers' `--netns-of`.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for NetNsHolder {
    fn drop(&mut self) {
        let taken = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mut child, mut stdin)) = taken {
            // End of input is its signal to exit; kill it if it is not listening.
            let _ = stdin.flush();
            drop(stdin);
            if !matches!(child.try_wait(), Ok(Some(_))) && child.wait().is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
