//! Reporting what the filter refused: refused calls trap (`SIGSYS`) into a
//! handler that makes them fail with `EPERM` and writes a
//! [`Violation`] line to stderr, where the host picks it up. In learn mode, a
//! listener thread receives the calls outside the allow-list through
//! seccomp's user notification, reports them and lets them continue.
//!
//! A plugin shares the process with both, so it can forge or silence reports
//! (by writing the line itself, or closing stderr); it cannot make a refused
//! call succeed. It cannot replace the handler either: the allow-list refuses
//! `rt_sigaction(SIGSYS)`. If it blocks `SIGSYS`, the kernel kills it with
//! that signal on its next refused call.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use bulkhead_shared::violation::{Violation, MAX_LINE};
use seccompiler::BpfProgram;

/// The vtable slot of the call in flight (`u32::MAX`: none), read by the
/// reports. Set by the loader around every plugin call.
pub static METHOD_IN_FLIGHT: AtomicU32 = AtomicU32::new(u32::MAX);

fn method_in_flight() -> Option<u32> {
    match METHOD_IN_FLIGHT.load(Ordering::Relaxed) {
        u32::MAX => None,
        m => Some(m),
    }
}

/// Writes `v`'s report line to stderr. Async-signal-safe: no allocation, no
/// lock, one `write`, `errno` preserved.
fn report(v: &Violation) {
    let mut line = [0u8; MAX_LINE];
    let n = v.encode(&mut line);
    // SAFETY: __errno_location returns this thread's errno slot, valid for
    // the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: `line[..n]` is initialised memory we own; fd 2 is a plain
    // descriptor (a write to a closed one fails harmlessly).
    let _ = unsafe { libc::write(2, line.as_ptr().cast(), n) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Whether refused calls can trap into the reporting handler on this
/// architecture (elsewhere they fail with `EPERM` unreported).
pub const SUPPORTED: bool = cfg!(target_arch = "x86_64");

/// Installs the `SIGSYS` handler (idempotent; inherited by forks).
pub fn install_handler() -> Result<(), String> {
    if !SUPPORTED {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is a valid value; every field we rely on is
    // set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: sa_mask is a valid sigset_t owned by `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialised; the old action is not wanted.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!("sigaction(SIGSYS): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The `SIGSYS` handler: the trapped call returns `-EPERM`, and is reported.
#[cfg(target_arch = "x86_64")]
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // The kernel's `_sigsys` member: `void *_call_addr; int _syscall;
    // unsigned int _arch;`, after the three leading ints and padding.
    const SYSCALL_OFFSET: usize = 24;
    const ARCH_OFFSET: usize = 28;
    if info.is_null() || context.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for
    // SIGSYS it holds the `_sigsys` member at these offsets.
    let (nr, arch) = unsafe {
        let base = info.cast::<u8>();
        (
            base.add(SYSCALL_OFFSET).cast::<i32>().read_unaligned(),
            base.add(ARCH_OFFSET).cast::<u32>().read_unaligned(),
        )
    };
    // SAFETY: for SA_SIGINFO handlers `context` is the interrupted thread's
    // ucontext, which the kernel restores from (so the result register we
    // set becomes the call's return value).
    let gregs = unsafe { &mut (*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let args = [
        gregs[libc::REG_RDI as usize] as u64,
        gregs[libc::REG_RSI as usize] as u64,
        gregs[libc::REG_RDX as usize] as u64,
    ];
    gregs[libc::REG_RAX as usize] = -(libc::EPERM as i64);
    report(&Violation {
        nr: i64::from(nr),
        arch,
        args,
        method: method_in_flight(),
        allowed: false,
    });
}

#[cfg(not(target_arch = "x86_64"))]
extern "C" fn on_sigsys(_sig: libc::c_int, _info: *mut libc::siginfo_t, _context: *mut libc::c_void) {}

/// Attaches `filter`, whose refusing action has been rewritten to user
/// notification ([`to_user_notif`]), and serves its notifications on a thread
/// started before the filter (so the thread itself is not filtered): each
/// call is reported and continues. Learn mode only.
pub fn attach_learning(filter: &BpfProgram) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel::<OwnedFd>();
    std::thread::Builder::new()
        .name("bulkhead-learn".into())
        .spawn(move || {
            if let Ok(fd) = rx.recv() {
                serve_notifications(&fd);
            }
        })
        .map_err(|e| format!("starting the learn-mode listener: {e}"))?;
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| "the filter is too long".to_string())?,
        // seccompiler's sock_filter is repr(C) with the kernel's layout.
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel copies it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(format!(
            "installing the learn-mode filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    tx.send(fd).map_err(|_| "the learn-mode listener is gone".to_string())
}

/// Rewrites every `SECCOMP_RET_TRACE | tag` return of `filter` into
/// `SECCOMP_RET_USER_NOTIF` (seccompiler has no such action).
pub fn to_user_notif(filter: &mut BpfProgram, tag: u32) {
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    for insn in filter.iter_mut() {
        if insn.code == RET_K && insn.k == libc::SECCOMP_RET_TRACE | tag {
            insn.k = libc::SECCOMP_RET_USER_NOTIF;
        }
    }
}

fn serve_notifications(fd: &OwnedFd) {
    loop {
        // SAFETY: all-zero is a valid seccomp_notif (the kernel requires it zeroed).
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: `notif` is a valid, writable seccomp_notif for the kernel to fill.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) };
        if rc != 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                _ => return,
            }
        }
        let d = &notif.data;
        report(&Violation {
            nr: i64::from(d.nr),
            arch: d.arch,
            args: [d.args[0], d.args[1], d.args[2]],
            method: method_in_flight(),
            allowed: true,
        });
        let mut resp = libc::seccomp_notif_resp {
            id: notif.id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: `resp` is a valid response for the kernel to read. A failure
        // (the caller died meanwhile) needs no handling.
        let _ = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}
