//! The one system call the worker's setup needs that neither std nor nix
//! wraps: `close_range(2)` (Linux 5.9+).

use nix::errno::Errno;

/// Closes every descriptor from `first` to `last` (inclusive) with one
/// `close_range` call. `Err(ENOSYS)` on kernels without it (the caller falls back).
pub fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range takes three integers and only closes descriptors of
    // this process; no memory is passed. It runs during setup, before any other
    // thread or plugin code exists, so no descriptor in use elsewhere is closed.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}
