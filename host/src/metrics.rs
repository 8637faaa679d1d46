//! The metrics layer (feature `metrics`): an [`Observer`] that turns the
//! core's observations into counters and a call-latency histogram through the
//! `metrics` facade. The core never names it; the composition root installs
//! it when a supervisor is built.
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

use crate::error::CallError;
use crate::events::EventKind;
use crate::observe::{CallObserver, Observer};

/// The metrics layer's observer: records the core's observations as metrics
/// (stateless: the facade holds the recorder).
pub(crate) struct Metrics;

impl Observer for Metrics {
    fn load(&self, plugin: &str, ok: bool) {
        metrics::counter!(
            "bulkhead_loads_total",
            "plugin" => plugin.to_string(),
            "outcome" => if ok { "ok" } else { "error" }
        )
        .increment(1);
    }

    fn event(&self, plugin: &str, kind: &EventKind) {
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

    fn plugin(&self, plugin: &Arc<str>) -> Box<dyn CallObserver> {
        describe();
        Box::new(CallMetrics {
            ok: metrics::counter!("bulkhead_calls_total", "plugin" => plugin.to_string(), "outcome" => "ok"),
            latency: metrics::histogram!("bulkhead_call_duration_seconds", "plugin" => plugin.to_string()),
            crashes: metrics::counter!("bulkhead_worker_crashes_total", "plugin" => plugin.to_string()),
            plugin: plugin.clone(),
        })
    }
}

/// Per-plugin metric handles, registered once so the call path does not
/// allocate label sets.
struct CallMetrics {
    ok: metrics::Counter,
    latency: metrics::Histogram,
    crashes: metrics::Counter,
    plugin: Arc<str>,
}

impl CallObserver for CallMetrics {
    fn call_done(&self, started: Instant, method: u32, err: Option<&CallError>) {
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
}

/// Every metric's description and unit, given to the recorder once.
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
