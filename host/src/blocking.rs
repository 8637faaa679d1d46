//! Where a drop runs a blocking shutdown (stopping workers waits up to their
//! grace period): on the dropping thread, unless the hook an optional layer
//! installed hands the work to another thread (an async runtime's threads
//! must not block). The core names no such layer.

use std::sync::OnceLock;

/// Blocking work a drop leaves behind.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Takes `job` to run elsewhere (`Ok`), or gives it back to run on the
/// calling thread (`Err`).
pub(crate) type HandOff = fn(Job) -> Result<(), Job>;

static HAND_OFF: OnceLock<HandOff> = OnceLock::new();

/// Installs the process's hand-off hook; the first installed stays.
pub(crate) fn install(hand_off: HandOff) {
    let _ = HAND_OFF.set(hand_off);
}

/// Runs `job` where the installed hook puts it, else right here.
pub(crate) fn run(job: impl FnOnce() + Send + 'static) {
    match HAND_OFF.get() {
        Some(hand_off) => {
            if let Err(job) = hand_off(Box::new(job)) {
                job();
            }
        }
        None => job(),
    }
}
