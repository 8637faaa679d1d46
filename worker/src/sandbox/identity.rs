//! The worker's uid. A worker started by a root host would be root to the
//! kernel's process accounting (`RLIMIT_NPROC` does not bind real root) and to
//! every file the mount namespace fails to hide. So, as part of the user
//! namespace layer, it first becomes `nobody` (uid and gid 65534): inside its
//! user namespace it is still uid 0, outside it owns nothing.

use bulkhead_shared::protocol::LoadFailure;
use bulkhead_shared::sandbox::{Layer, SandboxReport};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use super::Plan;

/// The unprivileged identity a root host's workers run as.
pub const NOBODY: u32 = 65534;

/// Switches a root worker to [`NOBODY`]; a no-op for any other uid or when the
/// user-namespace layer is off.
pub fn drop_root(plan: &Plan<'_>, report: &mut SandboxReport) -> Result<(), LoadFailure> {
    if !plan.wants(Layer::UserNs) || plan.simulated_unavailable(Layer::UserNs).is_some() {
        return Ok(());
    }
    if become_nobody().map_err(|reason| LoadFailure::Sandbox {
        layer: Layer::UserNs,
        reason,
    })? {
        report.host_uid = NOBODY;
    }
    Ok(())
}

/// Switches a root process to [`NOBODY`]; returns whether it did.
pub fn become_nobody() -> Result<bool, String> {
    if !Uid::effective().is_root() {
        return Ok(false);
    }
    let fail = |what: &str, e: nix::Error| format!("switching to uid {NOBODY}: {what}: {e}");
    let (uid, gid) = (Uid::from_raw(NOBODY), Gid::from_raw(NOBODY));
    setgroups(&[]).map_err(|e| fail("setgroups", e))?;
    setresgid(gid, gid, gid).map_err(|e| fail("setresgid", e))?;
    setresuid(uid, uid, uid).map_err(|e| fail("setresuid", e))?;
    // Changing uid made the process non-dumpable, which hands its /proc files
    // to real root: it could not write its own uid map. Its pid namespace keeps
    // other processes of the same uid from seeing it.
    nix::sys::prctl::set_dumpable(true).map_err(|e| fail("PR_SET_DUMPABLE", e))?;
    // A credential change clears the parent-death signal: arm it again, and
    // make sure the host did not die in between.
    crate::setup::die_with_parent()?;
    Ok(true)
}
