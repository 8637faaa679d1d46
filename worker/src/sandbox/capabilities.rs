//! Dropping every capability. Inside its user namespace the worker starts as
//! uid 0 with a full set; it needs them to build its mounts, and not after.

use rustix::thread::{remove_capability_from_bounding_set, set_capabilities, CapabilitySet, CapabilitySets};

/// Empties the bounding set (while still allowed to), then the effective,
/// permitted and inheritable sets. Best effort: a process that holds no
/// capabilities to begin with has nothing to lose.
pub fn drop_all() {
    for cap in CapabilitySet::all().iter() {
        // Fails for numbers this kernel does not know; the rest still go.
        let _ = remove_capability_from_bounding_set(cap);
    }
    let _ = set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    );
}
