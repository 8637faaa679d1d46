//! A plugin's health as an operator reads it ([`Plugin::health`](crate::Plugin::health)).

use std::time::SystemTime;

/// Whether a plugin is serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every worker slot is live (or stopped for idleness and started on demand).
    Healthy,
    /// Some workers failed and are being replaced; calls go to the live ones.
    Degraded {
        /// Worker slots with a live worker.
        live: usize,
        /// Worker slots of the plugin (its pool size).
        workers: usize,
        /// Slots whose worker failed and awaits (or is starting) a replacement.
        restarting: usize,
        /// The earliest a backing-off replacement will start, if one is waiting.
        next_attempt: Option<SystemTime>,
    },
    /// The restart budget is spent (only under a [`Budget`](crate::Budget)):
    /// calls fail fast until [`Plugin::reset`](crate::Plugin::reset) or the cool-down.
    Failed {
        /// The failure that spent the budget.
        reason: String,
        /// When it happened.
        since: SystemTime,
    },
}

impl Health {
    /// `"healthy"`, `"degraded"` or `"failed"`.
    pub fn name(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded { .. } => "degraded",
            Health::Failed { .. } => "failed",
        }
    }

    /// Whether two readings describe the same state (ignoring the times):
    /// a change of state is what [`EventKind::HealthChanged`](crate::EventKind::HealthChanged) reports.
    pub(crate) fn same_state(&self, other: &Health) -> bool {
        match (self, other) {
            (Health::Healthy, Health::Healthy) => true,
            (
                Health::Degraded {
                    live: a, restarting: b, ..
                },
                Health::Degraded {
                    live: c, restarting: d, ..
                },
            ) => a == c && b == d,
            (Health::Failed { reason: a, .. }, Health::Failed { reason: b, .. }) => a == b,
            _ => false,
        }
    }
}
