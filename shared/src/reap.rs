//! Reaping a child by pid with its resource usage (`wait4(2)`), for children
//! std did not spawn — a fork-server's workers are the host's children, made
//! with `CLONE_PARENT`, so the host has no `std::process::Child` for them.

#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

/// A reaped child: how it ended and what it used.
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    /// Its wait status.
    pub status: ExitStatus,
    /// User CPU time (its own and its waited-for descendants').
    pub user: Duration,
    /// System CPU time.
    pub system: Duration,
    /// Peak resident set size, in bytes.
    pub max_rss: u64,
}

/// Blocks until child `pid` ends, reaps it and returns its status and usage.
/// Retries on `EINTR`.
pub fn wait4(pid: u32) -> io::Result<Reaped> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if pid <= 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut status = 0i32;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types; wait4
        // writes only through them. A positive pid names exactly one child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.clamp(0, 999_999) as u32) * 1000);
    Ok(Reaped {
        status: ExitStatus::from_raw(status),
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
        max_rss: (usage.ru_maxrss.max(0) as u64).saturating_mul(1024),
    })
}
