//! Signed plugins, checked the way fidius-host 0.5.9 checks them: the file
//! `<library>.sig` (the library's path with `.sig` appended to its extension)
//! holds a raw 64-byte ed25519 signature of the library file's exact bytes;
//! any one trusted key verifying it is enough.
//!
//! The check and the load must see the same bytes, so the host reads the
//! library once into a memfd, seals it (no write, grow, shrink, or further
//! seals), reads the sealed contents back and verifies *those*. Workers receive
//! the memfd and `dlopen` it through `/proc/self/fd/N`; the file on disk is
//! never opened again, so replacing it later changes nothing.
//!
//! Unsigned libraries are pinned too, more cheaply: opened once per load (or
//! reload) and loaded by every worker through that descriptor
//! ([`pinned_library`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Verifier};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use crate::error::LoadError;

/// Largest library bulkhead will read into memory for verification.
const MAX_LIBRARY: u64 = 1 << 30;

/// Where fidius looks for the signature of `path`.
pub fn signature_path(path: &Path) -> PathBuf {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    path.with_extension(format!("{ext}.sig"))
}

/// The library at `path` opened read-only, to pin it for every worker of a
/// generation: the descriptor keeps the file's inode, so a rename or a new
/// file put at `path` afterwards changes nothing (writes into the same inode
/// still would: only a copy, as [`verified_library`] makes, pins against
/// those). `None` if it is not a regular file this host can open — the
/// worker then opens it by path and reports why it cannot load it.
pub(crate) fn pinned_library(path: &Path) -> Option<OwnedFd> {
    let file = File::open(path).ok()?;
    file.metadata().ok()?.is_file().then(|| OwnedFd::from(file))
}

/// Reads `path` into a sealed memfd and verifies the sealed bytes against
/// `keys`; returns the memfd to hand to workers.
pub(crate) fn verified_library(path: &Path, keys: &[VerifyingKey]) -> Result<OwnedFd, LoadError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| LoadError::Library {
            path: p.clone(),
            message: e.to_string(),
        }
    };
    let sig_path = signature_path(path);
    let sig_bytes = match std::fs::read(&sig_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::SignatureRequired {
                path: path.to_path_buf(),
                sig: sig_path,
            })
        }
        Err(e) => return Err(io(&sig_path)(e)),
    };
    let invalid = |reason: String| LoadError::SignatureInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let signature = Signature::from_slice(&sig_bytes).map_err(|_| {
        invalid(format!(
            "{} is {} bytes, not a 64-byte ed25519 signature",
            sig_path.display(),
            sig_bytes.len()
        ))
    })?;

    let mut file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    if len > MAX_LIBRARY {
        return Err(io(path)(std::io::Error::other(format!(
            "{len} bytes exceeds {MAX_LIBRARY}"
        ))));
    }
    let fd = memfd_create(
        c"bulkhead-plugin",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(|e| io(path)(e.into()))?;
    let mut sealed = File::from(fd);
    std::io::copy(&mut (&mut file).take(MAX_LIBRARY), &mut sealed).map_err(io(path))?;
    sealed.flush().map_err(io(path))?;
    let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(sealed.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(|e| io(path)(e.into()))?;
    // Verify what the memfd holds now that nobody can change it.
    let mut bytes = Vec::new();
    sealed.seek(SeekFrom::Start(0)).map_err(io(path))?;
    sealed.read_to_end(&mut bytes).map_err(io(path))?;
    if keys.iter().any(|k| k.verify(&bytes, &signature).is_ok()) {
        Ok(OwnedFd::from(sealed))
    } else if keys.is_empty() {
        Err(invalid("no trusted keys given".into()))
    } else {
        Err(invalid(format!(
            "no trusted key ({} given) verifies the library's bytes",
            keys.len()
        )))
    }
}
