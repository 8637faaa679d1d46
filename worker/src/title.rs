//! The worker's process title: `ps` (the command line) shows
//! `bulkhead: LABEL` and `top` (the thread name) `bh:LABEL`, so an operator
//! sees which plugin a worker runs instead of a row of identical
//! `app --bulkhead-worker ...` lines. Set once the load request names the
//! label, before any plugin code runs; best effort (a title is not worth
//! failing a load over).
//!
//! The sandbox's helper processes (outer and init, see `sandbox::init`) show
//! the same title. When they split off before the label is known (a
//! fork-server's blank splits before its assignment), each takes a
//! [`follower`] pipe: [`set`] writes the title to every follower and closes
//! it, before any plugin code runs, and each helper [`adopt`]s what arrives.

use std::ffi::{c_char, CString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Whether this process's title was set (its children inherit it).
static SET: AtomicBool = AtomicBool::new(false);
/// Write ends of the pipes helper processes wait on for the title.
static FOLLOWERS: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());
/// Longest title a follower reads.
const MAX_TITLE: usize = 256;

extern "C" {
    /// `argv[0]` as the kernel laid the arguments out (glibc and musl).
    static program_invocation_name: *mut c_char;
}

/// Sets the title to `bulkhead: {label}` (truncated to the space the
/// original arguments took) and the thread name to `bh:{label}` (15 bytes).
/// Then hands the label to every [`follower`] and closes their pipes.
pub fn set(label: &str) {
    apply(label.as_bytes());
    SET.store(true, Ordering::Relaxed);
    let label = &label.as_bytes()[..label.len().min(MAX_TITLE)];
    let followers = std::mem::take(&mut *FOLLOWERS.lock().unwrap_or_else(|e| e.into_inner()));
    for fd in followers {
        let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), label);
    }
}

/// A pipe's read end on which [`set`] will deliver the label, for a helper
/// process about to split off; `None` if the title is set already (the
/// helper inherits it) or no pipe could be made.
pub fn follower() -> Option<OwnedFd> {
    if SET.load(Ordering::Relaxed) {
        return None;
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    FOLLOWERS.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    Some(r)
}

/// Reads the argument area's current contents ahead of [`set`] (a
/// fork-server's blank does, while it waits for its assignment), so `set`
/// does not read `/proc/self/cmdline` on the way to loading the plugin.
pub fn prepare() {
    if let Ok(area) = std::fs::read("/proc/self/cmdline") {
        *PREPARED.lock().unwrap_or_else(|e| e.into_inner()) = Some(area);
    }
}

/// The argument area as [`prepare`] read it; taken by its first use.
static PREPARED: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// Forgets the write ends this process holds (a helper process must not keep
/// the pipe of another helper open).
pub fn drop_followers() {
    FOLLOWERS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// In a helper process: waits until the worker sets its title (or ends),
/// and takes the same title. Reads at most [`MAX_TITLE`] bytes.
pub fn adopt(follower: OwnedFd) {
    let mut label = Vec::new();
    let _ = std::fs::File::from(follower)
        .take(MAX_TITLE as u64)
        .read_to_end(&mut label);
    if !label.is_empty() {
        apply(&label);
    }
}

/// Sets this process's title and thread name from `label`.
fn apply(label: &[u8]) {
    let mut comm: Vec<u8> = b"bh:".to_vec();
    comm.extend(label.iter().copied().filter(|&b| b != 0));
    comm.truncate(15);
    if let Ok(comm) = CString::new(comm) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes from the pointer, which `comm` provides.
        unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
    let mut title = b"bulkhead: ".to_vec();
    title.extend_from_slice(label);
    overwrite_arguments(&title);
}

/// Writes `title` over the argument area the kernel shows as
/// `/proc/self/cmdline`, NUL-padded to its full length.
fn overwrite_arguments(title: &[u8]) {
    // The area's length is what the kernel reports for it; a sandbox helper
    // outside the pid namespace whose procfs it sees has no `/proc/self`,
    // and rebuilds the area from the arguments as the kernel laid them out.
    let prepared = PREPARED.lock().unwrap_or_else(|e| e.into_inner()).take();
    let current = match prepared {
        Some(area) => area,
        None => std::fs::read("/proc/self/cmdline").unwrap_or_else(|_| {
            use std::os::unix::ffi::OsStrExt;
            let mut area = Vec::new();
            for arg in std::env::args_os() {
                area.extend_from_slice(arg.as_bytes());
                area.push(0);
            }
            area
        }),
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
