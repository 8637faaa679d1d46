//! Crash reports: when a plugin makes the worker die of `SIGSEGV`, `SIGBUS`,
//! `SIGILL`, `SIGFPE` or `SIGABRT`, a handler writes what the host needs to
//! understand and replay the crash to stderr (the lines of
//! [`bulkhead_shared::crash`]), then the worker dies of the same signal.
//!
//! The handler works in two parts:
//!
//! 1. Async-signal-safe: the signal, its `si_code` and `si_addr`, the method
//!    in flight and a copy of at most 4 KiB of its input (recorded by the
//!    loader around every call, see [`CallGuard`]), then the raw return
//!    addresses of the faulting thread (glibc's `backtrace`, called once at
//!    installation so that it does not load its unwinder in the handler).
//! 2. Not strictly async-signal-safe: each frame named with `dladdr` (module,
//!    nearest exported symbol, offsets), which takes the dynamic loader's
//!    lock. A watchdog bounds it: `ITIMER_REAL` fires [`WATCHDOG`] later and
//!    its `SIGALRM` handler ends the process with the original signal, so a
//!    deadlock there (the plugin crashed holding the lock) never turns a
//!    crash into a hang or changes the signal the host sees.
//!
//! A `SIGSEGV` or `SIGBUS` handler found at installation (std's stack
//! overflow detector) runs first, so a stack overflow still says so and
//! still ends with `SIGABRT`, reported as such.
//!
//! Finally the handler restores the default action and re-raises the signal
//! on its own thread (`tgkill` to its own pid, which the seccomp allow-list
//! permits); the host sees the exact signal.
//!
//! The handlers run on an alternate signal stack where the thread has one:
//! [`install`] gives the calling (serving) thread a 64 KiB one; threads std
//! starts get std's own (a few KiB); other threads a plugin starts have none,
//! so a stack overflow there dies without a report. A second crash while
//! the report is written ends the process at once with the first signal; a
//! crash on another thread meanwhile waits for the first to finish. The
//! report is a diagnostic written by the plugin's own process: a plugin can
//! forge or suppress it, never change how the host reaps the worker.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bulkhead_shared::crash::{self, MAX_FRAMES, MAX_INPUT, MAX_LINE};

/// The signals reported.
const SIGNALS: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT];

/// Size of the serving thread's alternate signal stack (plus a guard page).
const ALT_STACK: usize = 64 * 1024;

/// How long naming the frames may take before the process ends anyway.
const WATCHDOG: Duration = Duration::from_millis(500);

/// The input of the call in flight (null: none).
static INPUT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);

/// The `SIGSEGV` and `SIGBUS` handlers installed before ours (std's stack
/// overflow detector), as addresses (0: none), called first.
static PREVIOUS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// [`PREVIOUS`]'s index for `sig`.
fn previous_index(sig: libc::c_int) -> Option<usize> {
    match sig {
        libc::SIGSEGV => Some(0),
        libc::SIGBUS => Some(1),
        _ => None,
    }
}

/// The signal being reported (0: none yet), and the thread reporting it.
static CRASH_SIGNAL: AtomicI32 = AtomicI32::new(0);
static CRASH_TID: AtomicI32 = AtomicI32::new(0);

/// The plugin library's file name, for frames in a library loaded through
/// a descriptor (whose module path is `/proc/self/fd/N`).
static LIBRARY: OnceLock<Vec<u8>> = OnceLock::new();

/// Where the loader opens a library through a descriptor.
const FD_PATH: &[u8] = b"/proc/self/fd/";

/// Records the plugin library's path (its file name names the library's
/// frames when it is loaded through a descriptor).
pub fn set_library(path: &[u8]) {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    let _ = LIBRARY.set(name.to_vec());
}

/// Records `input` as the input of the call in flight until the guard is
/// dropped. The slice must stay alive (and mapped) while the guard lives.
pub struct CallGuard(());

impl CallGuard {
    /// Records `input`.
    pub fn new(input: &[u8]) -> Self {
        INPUT_LEN.store(input.len(), Ordering::Relaxed);
        INPUT_PTR.store(input.as_ptr().cast_mut(), Ordering::Release);
        CallGuard(())
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        INPUT_PTR.store(std::ptr::null_mut(), Ordering::Release);
        INPUT_LEN.store(0, Ordering::Relaxed);
    }
}

/// Installs the crash handlers and the calling thread's alternate signal
/// stack, and warms up `backtrace`. Call it before any plugin code runs (and
/// before the seccomp filter, though the allow-list permits all of it).
pub fn install() -> Result<(), String> {
    // A fork-server's blank installs them before its assignment: the worker
    // it becomes keeps them (and its signal stack).
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    warm_up();
    alternate_stack()?;
    for sig in SIGNALS {
        // SAFETY: a zeroed sigaction is a valid value; every field we rely on
        // is set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_crash;
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
        // SAFETY: sa_mask is a valid sigset_t owned by `action`.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: a zeroed sigaction is a valid value for the kernel to fill.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `action` is fully initialised; `old` is writable.
        if unsafe { libc::sigaction(sig, &action, &mut old) } != 0 {
            return Err(format!("sigaction({sig}): {}", std::io::Error::last_os_error()));
        }
        let chained = old.sa_flags & libc::SA_SIGINFO != 0
            && old.sa_sigaction != libc::SIG_DFL
            && old.sa_sigaction != libc::SIG_IGN
            && old.sa_sigaction != handler as usize;
        if let (Some(i), true) = (previous_index(sig), chained) {
            PREVIOUS[i].store(old.sa_sigaction, Ordering::SeqCst);
        }
    }
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// Whether [`install`] completed in this process (or the one it was forked from).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Calls `backtrace` once, so its first use (which loads the unwinder) does
/// not happen in the handler. [`install`] does; a fork-server calls it once
/// itself, so the blanks it forks inherit the unwinder instead of each
/// loading it again.
pub fn warm_up() {
    #[cfg(target_env = "gnu")]
    {
        let mut frames = [std::ptr::null_mut::<libc::c_void>(); 4];
        // SAFETY: `frames` holds 4 writable pointers.
        let _ = unsafe { libc::backtrace(frames.as_mut_ptr(), 4) };
    }
}

/// Maps an alternate signal stack (with a guard page below it) for the
/// calling thread. It is never unmapped: it serves until the process ends.
fn alternate_stack() -> Result<(), String> {
    let page = 4096;
    // SAFETY: an anonymous private mapping at an address the kernel picks.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ALT_STACK + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!("mapping the signal stack: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the lowest page of the mapping we just made; nothing uses it.
    // If this fails the stack merely has no guard page.
    let _ = unsafe { libc::mprotect(base, page, libc::PROT_NONE) };
    let stack = libc::stack_t {
        // SAFETY: `page` is within the mapping.
        ss_sp: unsafe { base.cast::<u8>().add(page) }.cast(),
        ss_flags: 0,
        ss_size: ALT_STACK,
    };
    // SAFETY: `stack` describes memory mapped above, never unmapped.
    if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaltstack: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Writes all of `line` to stderr, retrying interrupted and partial writes.
fn emit(line: &[u8]) {
    let mut rest = line;
    while !rest.is_empty() {
        // SAFETY: `rest` is initialised memory we own; fd 2 is a plain
        // descriptor (a write to a closed one fails harmlessly).
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return;
        }
    }
}

/// Ends the process with `sig`: default action, sent to this thread, unblocked.
fn die(sig: libc::c_int) -> ! {
    // SAFETY: a zeroed sigaction with SIG_DFL (0) is the default action.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `action` is a valid sigaction.
    unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) };
    // SAFETY: getpid takes no arguments; tgkill to our own thread (the
    // signal stays pending while blocked in its handler).
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), sig) };
    // SAFETY: an empty set, then `sig` added: valid sigset_t operations.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    // SAFETY: unblocking `sig` in this thread delivers the pending signal,
    // whose default action ends the process.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    // Only reached if the signal could not end the process (it is ignored
    // by default, which none of ours is).
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(128 + sig) }
}

/// The watchdog's `SIGALRM` handler: naming the frames took too long.
extern "C" fn on_watchdog(_sig: libc::c_int) {
    die(CRASH_SIGNAL.load(Ordering::SeqCst));
}

/// Arms the watchdog: a `SIGALRM` handler that ends the process with the
/// crash's signal, unblocked in this thread, fired after [`WATCHDOG`].
fn arm_watchdog() {
    // SAFETY: a zeroed sigaction is a valid value; the fields used are set.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int) = on_watchdog;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_ONSTACK;
    // SAFETY: valid sigset_t operations on memory we own.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut action.sa_mask);
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
    }
    // SAFETY: `action` is a valid sigaction; the set is valid.
    unsafe {
        libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    let timer = libc::itimerval {
        it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
        it_value: libc::timeval {
            tv_sec: WATCHDOG.as_secs() as libc::time_t,
            tv_usec: WATCHDOG.subsec_micros() as libc::suseconds_t,
        },
    };
    // SAFETY: `timer` is a valid itimerval; the old value is not wanted.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
}

/// The interrupted instruction's address, from the handler's context.
fn faulting_pc(context: *mut libc::c_void) -> u64 {
    if context.is_null() {
        return 0;
    }
    // SAFETY: for SA_SIGINFO handlers `context` is the interrupted thread's
    // ucontext.
    let uc = unsafe { &*context.cast::<libc::ucontext_t>() };
    #[cfg(target_arch = "x86_64")]
    {
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64
    }
    #[cfg(target_arch = "aarch64")]
    {
        uc.uc_mcontext.pc
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = uc;
        0
    }
}

/// The faulting thread's frames, the faulting instruction first; returns how
/// many of `out` are filled.
fn frames(pc: u64, out: &mut [u64; MAX_FRAMES]) -> usize {
    let mut raw = [std::ptr::null_mut::<libc::c_void>(); MAX_FRAMES];
    #[cfg(target_env = "gnu")]
    // SAFETY: `raw` holds MAX_FRAMES writable pointers; `backtrace` was
    // warmed up at installation, so it only walks the stack here.
    let n = unsafe { libc::backtrace(raw.as_mut_ptr(), MAX_FRAMES as libc::c_int) }.max(0) as usize;
    #[cfg(not(target_env = "gnu"))]
    let n = 0usize;
    let raw = &raw[..n.min(MAX_FRAMES)];
    // The walk starts in this handler; the interrupted code starts at the
    // frame whose address is the faulting instruction.
    let mut len = 0;
    let from = match raw.iter().position(|&ip| ip as u64 == pc) {
        Some(i) => i,
        None => {
            if pc != 0 {
                out[0] = pc;
                len = 1;
            }
            raw.len()
        }
    };
    for &ip in &raw[from..] {
        if len == MAX_FRAMES {
            break;
        }
        out[len] = ip as u64;
        len += 1;
    }
    len
}

/// Names frame `index` at `ip` with `dladdr` and writes its symbol line.
fn write_symbol(buf: &mut [u8; MAX_LINE], index: usize, ip: u64) {
    // SAFETY: all-zero is a valid Dl_info (null pointers) for dladdr to fill.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // The return address of a call may be the first byte after the calling
    // function: name the byte before it (except for the faulting frame).
    let probe = if index == 0 { ip } else { ip.saturating_sub(1) };
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    if unsafe { libc::dladdr(probe as *const libc::c_void, &mut info) } == 0 {
        return;
    }
    let mut line = crash::SymbolLine::new(buf, index as u32);
    if !info.dli_sname.is_null() {
        // SAFETY: dladdr set it to the symbol's NUL-terminated name.
        line.text(unsafe { std::ffi::CStr::from_ptr(info.dli_sname) }.to_bytes());
        line.text(b"+");
        line.hex(ip.wrapping_sub(info.dli_saddr as u64));
        line.text(b" ");
    }
    line.text(b"in ");
    if !info.dli_fname.is_null() {
        // SAFETY: dladdr set it to the module's NUL-terminated path.
        let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_bytes();
        let name = match LIBRARY.get() {
            Some(lib) if path.starts_with(FD_PATH) => lib.as_slice(),
            _ => path.rsplit(|&b| b == b'/').next().unwrap_or(path),
        };
        line.text(if name.is_empty() { b"?" } else { name });
    }
    line.text(b"+");
    line.hex(ip.wrapping_sub(info.dli_fbase as u64));
    let n = line.finish();
    emit(&buf[..n]);
}

/// The crash handler (see the module documentation).
extern "C" fn on_crash(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // std's stack overflow detector first: on a guard page hit it says so on
    // stderr and aborts (reported, as SIGABRT, by this handler); otherwise it
    // restores the default action and returns.
    let previous = previous_index(sig).map_or(0, |i| PREVIOUS[i].load(Ordering::SeqCst));
    if previous != 0 && CRASH_SIGNAL.load(Ordering::SeqCst) == 0 {
        type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
        // SAFETY: `previous` is the SA_SIGINFO handler sigaction returned at
        // installation, whose signature this is.
        let handler = unsafe { std::mem::transmute::<usize, Handler>(previous) };
        handler(sig, info, context);
    }
    let tid = gettid();
    if CRASH_SIGNAL
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        if CRASH_TID.load(Ordering::SeqCst) == tid {
            // A fault while writing the report: end with the first signal.
            die(CRASH_SIGNAL.load(Ordering::SeqCst));
        }
        // Another thread is reporting; it (or its watchdog) ends the process.
        loop {
            // SAFETY: pause only waits for a signal.
            unsafe { libc::pause() };
        }
    }
    CRASH_TID.store(tid, Ordering::SeqCst);
    arm_watchdog();
    let (code, addr) = if info.is_null() {
        (0, 0)
    } else {
        // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers;
        // si_addr is meaningful for faults and harmless to read otherwise.
        unsafe { ((*info).si_code, (*info).si_addr() as u64) }
    };
    let method = match crate::sandbox::METHOD_IN_FLIGHT.load(Ordering::Relaxed) {
        u32::MAX => None,
        m => Some(m),
    };
    let ptr = INPUT_PTR.load(Ordering::Acquire);
    let input_len = if ptr.is_null() {
        0
    } else {
        INPUT_LEN.load(Ordering::Relaxed)
    };
    let mut buf = [0u8; MAX_LINE];
    let n = crash::encode_header(&mut buf, sig, code, addr, method, input_len as u64);
    emit(&buf[..n]);
    if !ptr.is_null() {
        // SAFETY: the loader recorded the input of the call in flight, alive
        // until the call returns, which it has not (we are in it).
        let input = unsafe { std::slice::from_raw_parts(ptr, input_len.min(MAX_INPUT)) };
        for chunk in input.chunks(crash::INPUT_CHUNK) {
            let n = crash::encode_input(&mut buf, chunk);
            emit(&buf[..n]);
        }
    }
    let mut ips = [0u64; MAX_FRAMES];
    let count = frames(faulting_pc(context), &mut ips);
    for &ip in &ips[..count] {
        let n = crash::encode_frame(&mut buf, ip);
        emit(&buf[..n]);
    }
    // The part that takes the loader's lock, under the watchdog.
    for (i, &ip) in ips[..count].iter().enumerate() {
        write_symbol(&mut buf, i, ip);
    }
    let n = crash::encode_end(&mut buf);
    emit(&buf[..n]);
    die(sig);
}
