//! Processes a worker leaves behind for the host to reap, when the host is a
//! reaper: PID 1 of a pid namespace (a container without an init) or a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`).
//!
//! A sandboxed worker is three processes (see the worker's `init` module):
//! the *outer* one the host started, its child *init* (pid 1 of the worker's
//! pid namespace) and the worker proper. When the outer process dies first —
//! a timeout's SIGKILL, a crash during loading — init is orphaned, and the
//! kernel re-parents it to the nearest reaper, which in a container without an
//! init is the host. Nothing else would ever reap it.
//!
//! Contract: whenever the host reaps a worker (or a fork-server's blank), while
//! that leader is still an unreaped zombie — so its process-group id cannot
//! have been reused — [`adopt_group`] finds the host's own children in the
//! leader's process group and has each reaped when it exits, through a pidfd
//! (`waitid(P_PIDFD)`): only those exact processes, never `waitpid(-1)`, so
//! an application's own children are never touched. In a host that is not a
//! reaper it does nothing (orphans go to the system's init).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::wait::{waitid, Id, WaitPidFlag};

use crate::event_loop;

/// Whether orphaned descendants of this process are re-parented to it.
pub(crate) fn host_is_reaper() -> bool {
    std::process::id() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

/// Has every child of this host in process group `pgid` reaped when it exits.
/// Call while the group's leader is an unreaped child of this host (the group
/// id is then still bulkhead's), after the group was killed: this waits for
/// the leader to exit (without reaping it), since its orphans become the
/// host's only then.
pub(crate) fn adopt_group(pgid: u32) {
    if !host_is_reaper() {
        return;
    }
    let leader = nix::unistd::Pid::from_raw(pgid as i32);
    loop {
        match waitid(Id::Pid(leader), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => break,
            Err(_) => return, // not our child (anymore): not ours to judge
        }
    }
    let me = std::process::id();
    for pid in children_in_group(me, pgid) {
        if pid == pgid {
            continue; // the leader: its own reaper's
        }
        let Some(pid_raw) = rustix::process::Pid::from_raw(pid as i32) else {
            continue;
        };
        let Ok(pidfd) = rustix::process::pidfd_open(pid_raw, rustix::process::PidfdFlags::empty()) else {
            continue; // already gone (reaped by someone) — nothing to do
        };
        // Still ours and in the group now that the pidfd pins it.
        if stat_fields(pid) != Some((me, pgid)) {
            continue;
        }
        event_loop::watch(Stray { pidfd });
    }
}

/// Children of `parent` whose process group is `pgid`.
fn children_in_group(parent: u32, pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid) == Some((parent, pgid)))
        .collect()
}

/// (ppid, pgrp) of `pid`, from `/proc/<pid>/stat`.
fn stat_fields(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// One adopted process, reaped through its pidfd once it has exited.
pub(crate) struct Stray {
    pidfd: OwnedFd,
}

impl Stray {
    fn reap(&self, flags: WaitPidFlag) {
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED | flags) {}
    }
}

impl event_loop::Source for Stray {
    const LOOP: &'static str = "bulkhead-strays";

    fn home() -> &'static event_loop::Started<event_loop::EventLoop<Self>> {
        static STRAYS: event_loop::Started<event_loop::EventLoop<Stray>> = event_loop::Started::new();
        &STRAYS
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.pidfd.as_fd())
    }

    fn ready(&mut self, _scratch: &mut [u8]) -> event_loop::Readiness {
        // Readable: it has exited. Reap exactly this process.
        self.reap(WaitPidFlag::WNOHANG);
        event_loop::Readiness::Finished
    }

    fn fallback(self) {
        let spawned = std::thread::Builder::new()
            .name("bulkhead-stray".into())
            .stack_size(64 * 1024)
            .spawn(move || self.reap(WaitPidFlag::empty()));
        if let Err(e) = spawned {
            tracing::warn!(target: "bulkhead", error = %e, "cannot watch a worker's orphaned helper; it stays a zombie");
        }
    }
}
