//! Finding the `bulkhead-worker` binary.

use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// Name of the worker executable.
pub const WORKER_BIN: &str = "bulkhead-worker";
/// Environment variable naming the worker binary.
pub const WORKER_ENV: &str = "BULKHEAD_WORKER";

/// Candidate paths in search order: the explicit setting, `$BULKHEAD_WORKER`,
/// beside the current executable and in its parent directory (test binaries
/// live in `target/*/deps`), then every `$PATH` entry.
pub(crate) fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(WORKER_ENV).filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join(WORKER_BIN));
            if let Some(up) = dir.parent() {
                out.push(up.join(WORKER_BIN));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path).map(|d| d.join(WORKER_BIN)));
    }
    out
}

/// The first candidate that is an executable file. An explicit setting that
/// does not exist is an error (not silently skipped).
pub(crate) fn find(explicit: Option<&Path>) -> Result<PathBuf, BuildError> {
    let searched = candidates(explicit);
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(BuildError::WorkerNotFound {
                searched: vec![p.to_path_buf()],
            })
        };
    }
    searched
        .iter()
        .find(|p| is_executable(p))
        .cloned()
        .ok_or(BuildError::WorkerNotFound { searched })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_path_is_reported() {
        let err = find(Some(Path::new("/nonexistent/bulkhead-worker"))).unwrap_err();
        let BuildError::WorkerNotFound { searched } = err else {
            panic!("expected WorkerNotFound, got {err:?}")
        };
        assert_eq!(searched, vec![PathBuf::from("/nonexistent/bulkhead-worker")]);
    }

    #[test]
    fn search_order_starts_with_explicit_then_beside_exe() {
        let c = candidates(Some(Path::new("/x/w")));
        assert_eq!(c[0], PathBuf::from("/x/w"));
        let exe_dir = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
        assert!(c.contains(&exe_dir.join(WORKER_BIN)));
        assert!(c.contains(&exe_dir.parent().unwrap().join(WORKER_BIN)));
    }
}

/// A pinned binary's identity ([`WorkerExe::identity`]): a file replaced,
/// rewritten or touched gets another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExeIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The worker binary, pinned: opened once when the supervisor is built, and
/// every worker, fork-server and version probe is then exec'd through that
/// descriptor (`/proc/self/fd/N`), so a file put at the path afterwards (a
/// rename or replace) is never run. Writes into the same file would still
/// show: the descriptor pins the inode, not its bytes. Without `/proc` in the
/// host's view, or when the "binary" is a script (`#!`), it is exec'd by path.
#[derive(Debug, Clone)]
pub(crate) struct WorkerExe {
    path: PathBuf,
    pin: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl WorkerExe {
    /// Pins the binary at `path` (opened read-only, close-on-exec: the
    /// kernel resolves `/proc/self/fd/N` before it closes such descriptors).
    pub(crate) fn pin(path: PathBuf) -> WorkerExe {
        use std::os::unix::fs::FileExt;
        // A script (`#!`) is exec'd by path: its interpreter would be handed
        // `/dev/fd/N`, which is closed on exec.
        let is_script = |f: &std::fs::File| {
            let mut magic = [0u8; 2];
            matches!(f.read_at(&mut magic, 0), Ok(2)) && magic == *b"#!"
        };
        let pin = Path::new("/proc/self/fd")
            .is_dir()
            .then(|| std::fs::File::open(&path).ok())
            .flatten()
            .filter(|f| !is_script(f))
            .map(|f| std::sync::Arc::new(std::os::fd::OwnedFd::from(f)));
        WorkerExe { path, pin }
    }

    /// What identifies the pinned binary's contents: device, inode, size and
    /// the modification and change times of the file it was opened as. `None`
    /// when it is not pinned (a script) or cannot be examined.
    pub(crate) fn identity(&self) -> Option<ExeIdentity> {
        use std::os::unix::fs::MetadataExt;
        let fd = self.pin.as_ref()?;
        let meta = std::fs::File::from(fd.try_clone().ok()?).metadata().ok()?;
        Some(ExeIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Where the binary was found.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A command that runs the pinned binary (named by its path in `argv[0]`).
    pub(crate) fn command(&self) -> std::process::Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        match &self.pin {
            Some(fd) => {
                let mut cmd = std::process::Command::new(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                cmd.arg0(&self.path);
                cmd
            }
            None => std::process::Command::new(&self.path),
        }
    }
}
