//! The process split a pid namespace needs.
//!
//! After `unshare(CLONE_NEWPID)` the caller stays where it was; only its next
//! child lands in the new namespace, as pid 1. Pid 1 is special: the kernel
//! drops signals it has no handler for (so a plugin's `abort()` would not kill
//! it), and when it exits, everything else in the namespace is SIGKILLed. So:
//!
//! * **outer** — the process the host started, still in the host's pid
//!   namespace and the pid the host knows. It closes everything, waits for
//!   init, and ends exactly as the worker proper ended (same exit code, or
//!   killed by the same signal), so the host sees a plugin's crash as before;
//! * **init** — pid 1 of the new namespace. It builds the filesystem view, forks
//!   the worker, reaps every process, reports the worker's wait status to outer
//!   through a pipe, and exits — which kills whatever the plugin left behind
//!   (`setsid()` and double forks included);
//! * **worker** — pid 2, where the plugin is loaded.
//!
//! Each link asks for SIGKILL when its parent dies, so a SIGKILLed host takes
//! outer, init, and with init the whole namespace, down with it.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::prctl;
use nix::sys::signal::{raise, signal, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe, write, ForkResult, Pid};

/// Splits into outer, init and worker; returns only in the worker.
/// `in_init` runs in init before the worker is forked (the filesystem view is
/// built there, so the worker inherits it).
pub fn split(in_init: impl FnOnce()) -> Result<(), String> {
    let (status_r, status_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (alive_r, alive_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    // Outer and init take the worker's title (`ps` shows the plugin's label
    // on all three) once the worker knows it.
    let outer_title = crate::title::follower();
    let init_title = crate::title::follower();
    // SAFETY: the worker is single-threaded here (no thread is started before
    // the plugin is loaded), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            drop((status_w, alive_r, init_title));
            crate::title::drop_followers();
            outer(child, status_r, alive_w, outer_title)
        }
        ForkResult::Child => {
            drop((status_r, alive_w, outer_title));
            init(in_init, status_w, alive_r, init_title)
        }
    }
}

/// Outer: wait, then mirror the worker's end. Never returns.
fn outer(init_pid: Pid, status_r: OwnedFd, alive_w: OwnedFd, title: Option<OwnedFd>) -> ! {
    // The title arrives (or the pipe closes) before the worker can end: the
    // worker sends it before any plugin code runs.
    keep_only_and_follow([status_r.as_raw_fd(), alive_w.as_raw_fd()], title);
    let mut buf = [0u8; 3];
    let mut file = std::fs::File::from(status_r);
    let reported = file.read_exact(&mut buf).is_ok();
    let init_status = loop {
        match waitpid(init_pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    drop(alive_w);
    if reported {
        match buf[0] {
            0 => std::process::exit(buf[1] as i32),
            _ => die_by(buf[1] as i32),
        }
    }
    // Init died without a report (killed from outside): end the way it did.
    match init_status {
        Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => die_by(sig as i32),
        _ => std::process::exit(70),
    }
}

/// Ends this process by signal `sig` (falls back to exit code 128 + sig).
fn die_by(sig: i32) -> ! {
    if let Ok(sig) = Signal::try_from(sig) {
        // No core file of the outer process: it would only show this function.
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        // SAFETY: restoring the default disposition installs no handler.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        let mut set = SigSet::empty();
        set.add(sig);
        let _ = set.thread_unblock();
        let _ = raise(sig);
    }
    std::process::exit(128 + sig)
}

/// Init: build, fork the worker, reap. Returns only in the worker.
fn init(in_init: impl FnOnce(), status_w: OwnedFd, alive_r: OwnedFd, title: Option<OwnedFd>) -> Result<(), String> {
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    // Outer may have died before the line above: then nobody waits for us.
    if parent_gone(&alive_r) {
        std::process::exit(1);
    }
    // Not dumpable: the plugin (same uid) cannot ptrace init or open its /proc files.
    let _ = prctl::set_dumpable(false);
    in_init();
    // SAFETY: init is single-threaded, as its parent was.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((status_w, alive_r, title));
            let _ = prctl::set_pdeathsig(Signal::SIGKILL);
            Ok(())
        }
        ForkResult::Parent { child } => {
            crate::title::drop_followers();
            // Nothing runs in the namespace but the worker until it has sent
            // its title (it does so before loading the plugin), so nothing
            // needs reaping while init waits for it.
            keep_only_and_follow([status_w.as_raw_fd(), alive_r.as_raw_fd()], title);
            reap(child, status_w)
        }
    }
}

/// Init's loop: reap everything; when the worker ends, report and exit.
fn reap(worker: Pid, status_w: OwnedFd) -> ! {
    loop {
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == worker => report(&status_w, [0, code as u8, 0]),
            Ok(WaitStatus::Signaled(pid, sig, core)) if pid == worker => {
                report(&status_w, [1, sig as i32 as u8, core as u8])
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => std::process::exit(0),
        }
    }
}

fn report(fd: &OwnedFd, msg: [u8; 3]) -> ! {
    let _ = write(fd.as_fd(), &msg);
    // Exiting kills everything left in the namespace.
    std::process::exit(0)
}

/// In a helper process: closes every descriptor but its two pipes and the
/// title pipe, then waits for the worker's title and takes it.
fn keep_only_and_follow(pipes: [RawFd; 2], title: Option<OwnedFd>) {
    let mut keep = pipes.to_vec();
    keep.extend(title.as_ref().map(AsRawFd::as_raw_fd));
    close_all_except(&keep);
    if let Some(title) = title {
        crate::title::adopt(title);
    }
}

fn parent_gone(alive_r: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(alive_r.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        _ => false,
    }
}

/// Closes every descriptor except `keep` (stdin, stdout and stderr included:
/// the host drains the pipes until every holder is gone, and outer and init
/// print nothing).
fn close_all_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    let mut first: u32 = 0;
    for &fd in &keep {
        close_range(first, fd as u32 - 1);
        first = fd as u32 + 1;
    }
    close_range(first, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    if crate::sys::close_range(first, last).is_err() {
        // Kernels before 5.9: close one by one up to the descriptor limit.
        let max = nix::unistd::sysconf(nix::unistd::SysconfVar::OPEN_MAX)
            .ok()
            .flatten()
            .unwrap_or(1024) as u32;
        for fd in first..=last.min(max) {
            let _ = nix::unistd::close(fd as RawFd);
        }
    }
}
