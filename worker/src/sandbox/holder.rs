//! The supervisor's network-namespace holder.
//!
//! Creating a network namespace is the expensive part of a worker's sandbox
//! (creation, and a teardown the kernel serialises globally), and every
//! sandboxed worker gets the same thing: an empty namespace with a loopback
//! interface that is down. So one process per supervisor creates it once — a
//! user namespace of its own, and a network namespace inside — and then only
//! waits: it runs no plugin code, and exits when the host closes its stdin or
//! dies. Each worker joins that user and network namespace (`setns`) before it
//! creates its own nested user namespace and the rest.
//!
//! Workers sharing the namespace cannot reach each other through it: there is
//! no usable interface, and Landlock's abstract-socket scope keeps one worker
//! from connecting to another's abstract Unix sockets.

use std::io::{Read, Write};

use nix::sched::{unshare, CloneFlags};

use super::{identity, namespaces};
use crate::setup::Args;

/// Runs the holder: prints `ready` once the namespaces exist (or `error <why>`
/// and exits), then blocks until stdin reaches end-of-file.
pub fn hold_netns(args: &Args) -> u8 {
    let mut out = std::io::stdout();
    let result = (|| {
        crate::setup::hygiene(args)?;
        identity::become_nobody()?;
        namespaces::enter_user_ns()?;
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))
    })();
    if let Err(why) = result {
        let _ = writeln!(out, "error {why}");
        return 1;
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    let mut buf = [0u8; 64];
    while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
    0
}
