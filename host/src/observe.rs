//! The core's observation point: `tracing` spans around loads and calls,
//! `warn` events for crashes, timeouts, protocol breaches and give-ups, and
//! one [`Observer`] hook through which an optional layer (such as metrics)
//! receives every load, lifecycle event and finished call.
//!
//! The core names no such layer: the composition root installs one observer
//! per process when a supervisor is built. With none installed, a finished
//! call costs one `None` check here (no allocation, lock or dynamic call).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tracing::field::Empty;
use tracing::Span;

use crate::crash::CrashReport;
use crate::error::{CallError, LoadError};
use crate::events::EventKind;
use crate::exit::Exit;

/// What an optional layer is told about every plugin of the process.
/// Installed once ([`install`]); called from any thread.
pub(crate) trait Observer: Send + Sync {
    /// A load of `plugin` ended (`ok` = its workers serve).
    fn load(&self, plugin: &str, ok: bool);
    /// A lifecycle event of `plugin` was emitted.
    fn event(&self, plugin: &str, kind: &EventKind);
    /// The per-plugin handle of a pool of `plugin`, made when the pool
    /// starts so the call path needs no lookup.
    fn plugin(&self, plugin: &Arc<str>) -> Box<dyn CallObserver>;
}

/// An [`Observer`]'s per-plugin part: told of every finished call.
pub(crate) trait CallObserver: Send + Sync {
    /// A call of `method` that started at `started` ended with `err`.
    fn call_done(&self, started: Instant, method: u32, err: Option<&CallError>);
}

static OBSERVER: OnceLock<&'static dyn Observer> = OnceLock::new();

/// Installs the process's observer; the first installed stays.
pub(crate) fn install(observer: &'static dyn Observer) {
    let _ = OBSERVER.set(observer);
}

fn observer() -> Option<&'static dyn Observer> {
    OBSERVER.get().copied()
}

/// Span around one call (level `debug`, target `bulkhead::call`). The worker
/// pid and the outcome are recorded as they become known.
pub(crate) fn call_span(plugin: &str, method: u32) -> Span {
    tracing::debug_span!(target: "bulkhead::call", "call", plugin, method, worker_pid = Empty, outcome = Empty)
}

/// Span around a load (level `info`, target `bulkhead::load`).
pub(crate) fn load_span(plugin: &str, path: &std::path::Path) -> Span {
    tracing::info_span!(
        target: "bulkhead::load",
        "load",
        plugin,
        path = %path.display(),
        worker_pid = Empty,
        outcome = Empty
    )
}

/// Records a load's outcome on its span (and tells the observer).
pub(crate) fn load_done(span: &Span, plugin: &str, result: Result<u32, &LoadError>) {
    match result {
        Ok(pid) => {
            span.record("worker_pid", pid);
            span.record("outcome", "ok");
        }
        Err(e) => {
            span.record("outcome", "error");
            tracing::warn!(target: "bulkhead::load", plugin, error = %e, "plugin failed to load");
        }
    }
    if let Some(o) = observer() {
        o.load(plugin, result.is_ok());
    }
}

/// A worker died during a call (crash, or exit, or kill by someone else).
/// With the worker's crash report, if it made one: its summary, and the
/// faulting thread's frames (one per line).
pub(crate) fn crashed(plugin: &str, pid: u32, method: u32, exit: &Exit, crash: Option<&CrashReport>) {
    match crash {
        Some(c) => {
            let frames = c.frames.join("\n");
            tracing::warn!(target: "bulkhead::supervision", plugin, pid, method, %exit, crash = %c, input_len = c.input_len, %frames, "worker died during a call");
        }
        None => {
            tracing::warn!(target: "bulkhead::supervision", plugin, pid, method, %exit, "worker died during a call")
        }
    }
}

/// A worker broke the protocol during a call.
pub(crate) fn protocol_failure(plugin: &str, pid: u32, method: u32, error: &dyn std::fmt::Display) {
    tracing::warn!(target: "bulkhead::supervision", plugin, pid, method, %error, "worker broke the protocol; killed");
}

/// Logs a lifecycle event (and tells the observer). Called for every event
/// emitted: the supervisor builds its event hub with it.
pub(crate) fn event(plugin: &str, kind: &EventKind) {
    match kind {
        EventKind::Timeout { pid, limit } => {
            tracing::warn!(target: "bulkhead::supervision", plugin, pid, ?limit, "call timed out; worker killed")
        }
        EventKind::IdleCpuExceeded { pid, used, window } => {
            tracing::warn!(target: "bulkhead::supervision", plugin, pid, ?used, ?window, "worker used CPU with no call in flight beyond its budget; killed")
        }
        // Restarts are logged by the pool, with the replaced worker and the cause.
        EventKind::GaveUp { reason } => {
            tracing::warn!(target: "bulkhead::supervision", plugin, %reason, "restart budget spent; plugin failed")
        }
        other => tracing::debug!(target: "bulkhead::events", plugin, kind = ?other, "worker event"),
    }
    if let Some(o) = observer() {
        o.event(plugin, kind);
    }
}

/// A pool's observation handle: its plugin's [`CallObserver`], if an
/// observer is installed.
pub(crate) struct PluginObserver {
    observer: Option<Box<dyn CallObserver>>,
}

impl PluginObserver {
    /// The handle of a pool of `plugin`, made when the pool starts.
    pub(crate) fn new(plugin: &Arc<str>) -> Self {
        PluginObserver {
            observer: observer().map(|o| o.plugin(plugin)),
        }
    }

    /// A call of `method` ended: outcome on its span, and the observer told.
    pub(crate) fn call_done(&self, span: &Span, started: Instant, method: u32, err: Option<&CallError>) {
        span.record("outcome", err.map_or("ok", CallError::kind));
        if let Some(o) = &self.observer {
            o.call_done(started, method, err);
        }
    }
}
