//! Per-plugin counters: lock-free increments on the call path, snapshots on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::CallError;
use crate::usage::ResourceUsage;

/// Every [`CallError::kind`] name, in a fixed order (indexes into the counters).
const KINDS: [&str; 22] = [
    "buffer_too_small",
    "serialization",
    "return_type",
    "deserialization",
    "argument_encoding",
    "input_too_large",
    "plugin",
    "panic",
    "unknown_status",
    "invalid_method_index",
    "unsupported",
    "not_implemented",
    "contract",
    "worker_died",
    "timeout",
    "protocol",
    "busy",
    "overloaded",
    "failed",
    "backoff",
    "restart",
    "shut_down",
];

#[derive(Default)]
pub(crate) struct Counters {
    calls: AtomicU64,
    ok: AtomicU64,
    restarts: AtomicU64,
    idle_cpu_kills: AtomicU64,
    errors: [AtomicU64; KINDS.len()],
    exited: AtomicU64,
    cpu_user_us: AtomicU64,
    cpu_system_us: AtomicU64,
    max_rss: AtomicU64,
    violations: AtomicU64,
    /// System calls learn mode let through (at most one entry per call the
    /// architecture has).
    learned: Mutex<BTreeSet<&'static str>>,
}

impl Counters {
    /// Counts one report of a refused (or, in learn mode, `learned`) system
    /// call; returns how many reports there were before it.
    pub(crate) fn violation(&self, learned: Option<&'static str>) -> u64 {
        if let Some(name) = learned {
            self.learned.lock().unwrap_or_else(|e| e.into_inner()).insert(name);
        }
        self.violations.fetch_add(1, Ordering::Relaxed)
    }

    /// The system calls learn mode let through so far, by name.
    pub(crate) fn learned(&self) -> Vec<&'static str> {
        self.learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub(crate) fn call_started(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// A started call that will be counted again (it moves to a reloaded pool).
    pub(crate) fn call_retried(&self) {
        self.calls.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn call_finished(&self, err: Option<&CallError>) {
        match err {
            None => self.ok.fetch_add(1, Ordering::Relaxed),
            Some(e) => {
                let i = KINDS.iter().position(|k| *k == e.kind()).expect("every kind is listed");
                self.errors[i].fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    pub(crate) fn idle_cpu_kill(&self) {
        self.idle_cpu_kills.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn worker_exited(&self, u: &ResourceUsage) {
        self.exited.fetch_add(1, Ordering::Relaxed);
        self.cpu_user_us.fetch_add(u.user.as_micros() as u64, Ordering::Relaxed);
        self.cpu_system_us
            .fetch_add(u.system.as_micros() as u64, Ordering::Relaxed);
        self.max_rss.fetch_max(u.max_rss, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, live_workers: usize, events_dropped: u64) -> Stats {
        let errors: BTreeMap<&'static str, u64> = KINDS
            .iter()
            .zip(&self.errors)
            .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
            .filter(|(_, v)| *v > 0)
            .collect();
        Stats {
            calls: self.calls.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            timeouts: errors.get("timeout").copied().unwrap_or(0),
            crashes: errors.get("worker_died").copied().unwrap_or(0),
            protocol_errors: errors.get("protocol").copied().unwrap_or(0),
            restarts: self.restarts.load(Ordering::Relaxed),
            idle_cpu_kills: self.idle_cpu_kills.load(Ordering::Relaxed),
            errors,
            live_workers,
            events_dropped,
            exited_workers: self.exited.load(Ordering::Relaxed),
            cpu_user: Duration::from_micros(self.cpu_user_us.load(Ordering::Relaxed)),
            cpu_system: Duration::from_micros(self.cpu_system_us.load(Ordering::Relaxed)),
            max_rss: self.max_rss.load(Ordering::Relaxed),
            sandbox_violations: self.violations.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of a plugin's counters ([`Plugin::stats`](crate::Plugin::stats)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls started.
    pub calls: u64,
    /// Calls that returned `Ok`.
    pub ok: u64,
    /// Failed calls by [`CallError::kind`] (kinds with a zero count are omitted).
    pub errors: BTreeMap<&'static str, u64>,
    /// Calls that hit their deadline.
    pub timeouts: u64,
    /// Calls during which the worker died.
    pub crashes: u64,
    /// Calls that ended in a protocol violation.
    pub protocol_errors: u64,
    /// Replacement workers started.
    pub restarts: u64,
    /// Workers killed for using CPU with no call in flight
    /// ([`PluginSpec::idle_cpu`](crate::PluginSpec::idle_cpu)).
    pub idle_cpu_kills: u64,
    /// Worker processes alive right now.
    pub live_workers: usize,
    /// Lifecycle events dropped because a subscriber was not keeping up.
    pub events_dropped: u64,
    /// Worker processes that exited and were reaped with their resource usage.
    pub exited_workers: u64,
    /// User CPU time of the exited workers (and the descendants they waited for).
    pub cpu_user: Duration,
    /// System CPU time of the exited workers (and the descendants they waited for).
    pub cpu_system: Duration,
    /// The largest peak RSS of any exited worker, in bytes.
    pub max_rss: u64,
    /// System calls the seccomp layer refused (or, in learn mode, let
    /// through and reported), as the workers reported them.
    pub sandbox_violations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let c = Counters::default();
        c.call_started();
        c.call_finished(None);
        c.call_started();
        c.call_finished(Some(&CallError::Serialization { index: 0 }));
        c.call_started();
        c.call_finished(Some(&CallError::Timeout {
            elapsed: Default::default(),
            limit: Default::default(),
        }));
        let s = c.snapshot(1, 0);
        assert_eq!((s.calls, s.ok, s.timeouts, s.crashes), (3, 1, 1, 0));
        assert_eq!(s.errors.get("serialization"), Some(&1));
        assert_eq!(s.errors.len(), 2);
    }
}
