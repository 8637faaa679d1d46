//! The worker's process title: `ps` (the command line) shows
//! `bulkhead: LABEL` and `top` (the thread name) `bh:LABEL`, so an operator
//! sees which plugin a worker runs instead of a row of identical
//! `app --bulkhead-worker ...` lines. Set once the load request names the
//! label, before any plugin code runs; best effort (a title is not worth
//! failing a load over).

use std::ffi::{c_char, CString};

extern "C" {
    /// `argv[0]` as the kernel laid the arguments out (glibc and musl).
    static program_invocation_name: *mut c_char;
}

/// Sets the title to `bulkhead: {label}` (truncated to the space the
/// original arguments took) and the thread name to `bh:{label}` (15 bytes).
pub fn set(label: &str) {
    let comm: Vec<u8> = format!("bh:{label}").bytes().filter(|&b| b != 0).take(15).collect();
    if let Ok(comm) = CString::new(comm) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes from the pointer, which `comm` provides.
        unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
    let title = format!("bulkhead: {label}");
    overwrite_arguments(title.as_bytes());
}

/// Writes `title` over the argument area the kernel shows as
/// `/proc/self/cmdline`, NUL-padded to its full length.
fn overwrite_arguments(title: &[u8]) {
    // The area's length is what the kernel reports for it.
    let Ok(current) = std::fs::read("/proc/self/cmdline") else {
        return;
    };
    let len = current.len();
    if len < 2 {
        return;
    }
    // SAFETY: reading the static itself; libc set it at start-up.
    let start = unsafe { program_invocation_name }.cast::<u8>();
    if start.is_null() {
        return;
    }
    // SAFETY: `start` is argv[0], the first byte of the argument area, and
    // the area is `len` bytes long (the kernel's arg_start..arg_end). Only if
    // the bytes there are exactly what the kernel reports is this the area;
    // otherwise nothing is written.
    let area = unsafe { std::slice::from_raw_parts_mut(start, len) };
    if area != current.as_slice() {
        return;
    }
    let n = title.len().min(len - 1);
    area[..n].copy_from_slice(&title[..n]);
    area[n..].fill(0);
}
