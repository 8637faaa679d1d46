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
