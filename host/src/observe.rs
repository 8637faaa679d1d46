//! Observability in one place: `tracing` spans around loads and calls, `warn`
//! events for crashes, timeouts, restarts and give-ups, and (feature `metrics`)
//! counters and a call-latency histogram through the `metrics` facade.
//!
//! Metric names (every one labelled `plugin`):
//! * `bulkhead_calls_total` (label `outcome`: `ok` or a [`CallError::kind`]),
//! * `bulkhead_call_duration_seconds` (histogram, every call),
//! * `bulkhead_worker_crashes_total`, `bulkhead_call_timeouts_total`,
//!   `bulkhead_worker_restarts_total`, `bulkhead_workers_started_total`,
//!   `bulkhead_worker_exits_total`, `bulkhead_gave_up_total`,
//! * `bulkhead_loads_total` (label `outcome`: `ok` or `error`).
//!
//! Failed calls are also counted per method: `bulkhead_call_errors_total`
//! (labels `plugin`, `method` — the vtable slot — and `outcome`); the `plugin`
//! label is [`PluginSpec::label`](crate::PluginSpec::label). Every metric is
//! described (with its unit) to the recorder once, before its first use.
//!
//! Handles are registered when a plugin is loaded: install the metrics
//! recorder before loading plugins.

use std::sync::Arc;
use std::time::Instant;

use tracing::field::Empty;
use tracing::Span;

use crate::crash::CrashReport;
use crate::error::{CallError, Exit, LoadError};
use crate::events::EventKind;

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

/// Records a load's outcome on its span (and in the metrics).
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
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "bulkhead_loads_total",
        "plugin" => plugin.to_string(),
        "outcome" => if result.is_ok() { "ok" } else { "error" }
    )
    .increment(1);
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

/// Logs (and counts) a lifecycle event. Called for every event emitted.
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
    #[cfg(feature = "metrics")]
    {
        let name = match kind {
            EventKind::WorkerStarted { .. } => "bulkhead_workers_started_total",
            EventKind::WorkerExited { .. } => "bulkhead_worker_exits_total",
            EventKind::Timeout { .. } => "bulkhead_call_timeouts_total",
            EventKind::Restarted { .. } => "bulkhead_worker_restarts_total",
            EventKind::GaveUp { .. } => "bulkhead_gave_up_total",
            EventKind::HealthChanged { .. } => "bulkhead_health_changes_total",
            EventKind::IdleStopped { .. } => "bulkhead_idle_stops_total",
            EventKind::IdleCpuExceeded { .. } => "bulkhead_idle_cpu_kills_total",
            EventKind::Reloaded { .. } => "bulkhead_reloads_total",
            EventKind::SandboxViolation { .. } => "bulkhead_sandbox_violations_total",
        };
        metrics::counter!(name, "plugin" => plugin.to_string()).increment(1);
    }
}

/// Per-plugin metric handles, registered once so the call path does not
/// allocate label sets.
pub(crate) struct CallMetrics {
    #[cfg(feature = "metrics")]
    ok: metrics::Counter,
    #[cfg(feature = "metrics")]
    latency: metrics::Histogram,
    #[cfg(feature = "metrics")]
    crashes: metrics::Counter,
    #[cfg(feature = "metrics")]
    plugin: Arc<str>,
}

/// Every metric's description and unit, given to the recorder once.
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{describe_counter, describe_histogram, Unit};
        describe_counter!(
            "bulkhead_calls_total",
            Unit::Count,
            "Calls finished, by outcome (ok or the CallError kind)"
        );
        describe_counter!(
            "bulkhead_call_errors_total",
            Unit::Count,
            "Failed calls, by method (vtable slot) and outcome (the CallError kind)"
        );
        describe_histogram!(
            "bulkhead_call_duration_seconds",
            Unit::Seconds,
            "Duration of every call, from the caller's view"
        );
        describe_counter!(
            "bulkhead_worker_crashes_total",
            Unit::Count,
            "Workers that died during a call"
        );
        describe_counter!(
            "bulkhead_call_timeouts_total",
            Unit::Count,
            "Calls that hit their deadline; the worker was killed"
        );
        describe_counter!(
            "bulkhead_worker_restarts_total",
            Unit::Count,
            "Workers replaced after a failure"
        );
        describe_counter!(
            "bulkhead_workers_started_total",
            Unit::Count,
            "Workers that finished their handshake"
        );
        describe_counter!(
            "bulkhead_worker_exits_total",
            Unit::Count,
            "Workers reaped, for any reason"
        );
        describe_counter!(
            "bulkhead_gave_up_total",
            Unit::Count,
            "Plugins failed after spending their restart budget"
        );
        describe_counter!("bulkhead_health_changes_total", Unit::Count, "Health state changes");
        describe_counter!("bulkhead_idle_stops_total", Unit::Count, "Idle workers stopped");
        describe_counter!(
            "bulkhead_idle_cpu_kills_total",
            Unit::Count,
            "Workers killed for using CPU with no call in flight"
        );
        describe_counter!("bulkhead_reloads_total", Unit::Count, "Plugin reloads");
        describe_counter!(
            "bulkhead_sandbox_violations_total",
            Unit::Count,
            "System calls the sandbox refused (or learn mode let through), as reported by the worker"
        );
        describe_counter!(
            "bulkhead_loads_total",
            Unit::Count,
            "Plugin loads, by outcome (ok or error)"
        );
    });
}

impl CallMetrics {
    pub(crate) fn new(plugin: &Arc<str>) -> Self {
        let _ = plugin;
        #[cfg(feature = "metrics")]
        describe();
        CallMetrics {
            #[cfg(feature = "metrics")]
            ok: metrics::counter!("bulkhead_calls_total", "plugin" => plugin.to_string(), "outcome" => "ok"),
            #[cfg(feature = "metrics")]
            latency: metrics::histogram!("bulkhead_call_duration_seconds", "plugin" => plugin.to_string()),
            #[cfg(feature = "metrics")]
            crashes: metrics::counter!("bulkhead_worker_crashes_total", "plugin" => plugin.to_string()),
            #[cfg(feature = "metrics")]
            plugin: plugin.clone(),
        }
    }

    /// A call of `method` ended: outcome on its span, and counted.
    pub(crate) fn call_done(&self, span: &Span, started: Instant, method: u32, err: Option<&CallError>) {
        span.record("outcome", err.map_or("ok", CallError::kind));
        #[cfg(feature = "metrics")]
        {
            self.latency.record(started.elapsed().as_secs_f64());
            match err {
                None => self.ok.increment(1),
                Some(e) => {
                    if matches!(e, CallError::WorkerDied { .. }) {
                        self.crashes.increment(1);
                    }
                    metrics::counter!(
                        "bulkhead_calls_total",
                        "plugin" => self.plugin.to_string(),
                        "outcome" => e.kind()
                    )
                    .increment(1);
                    metrics::counter!(
                        "bulkhead_call_errors_total",
                        "plugin" => self.plugin.to_string(),
                        "method" => method.to_string(),
                        "outcome" => e.kind()
                    )
                    .increment(1);
                }
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (started, method);
    }
}
