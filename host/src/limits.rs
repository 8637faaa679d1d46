//! Per-plugin resource limits, applied by the worker to itself before the plugin
//! is loaded.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// `RLIMIT_NOFILE` of a worker whose [`Limits`] set none (soft and hard, so
/// the plugin cannot raise it). Linux checks descriptors a process has in
/// flight over Unix sockets (`SCM_RIGHTS`, counted per user) against the
/// *sender's* limit: a worker capped here cannot park more than about this
/// many, so a host whose own limit is higher can still send its descriptors.
pub const DEFAULT_OPEN_FILES: u64 = 1024;

/// `RLIMIT_AS` of a worker whose [`Limits`] set none: 4 GiB of address
/// space per process, far above what a plugin normally maps (its heap,
/// thread stacks, libraries and the shared-memory region), so a runaway
/// allocation fails in the plugin instead of taking the machine's memory.
pub const DEFAULT_ADDRESS_SPACE: u64 = 4 << 30;

/// How much lower than the host's a worker's scheduling priority is by
/// default: its nice value is the host's plus this.
pub const DEFAULT_NICE: i32 = 10;

/// Raises this (host) process's soft `RLIMIT_NOFILE` to its hard limit, so
/// that the per-user count of descriptors in flight, which workers sharing
/// the host's uid push up, is checked against the highest limit the host may
/// have. Best effort: a failure leaves the limit as it was.
pub(crate) fn raise_own_nofile() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(target: "bulkhead", "raising RLIMIT_NOFILE from {soft} to {hard}: {e}");
            }
        }
    }
}

/// Resource limits for a plugin's worker processes (`setrlimit`). Unset limits
/// are inherited from the host. Core dumps are off unless enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "Limits do nothing until passed to PluginSpec::limits"]
#[non_exhaustive]
pub struct Limits {
    /// `RLIMIT_AS`: address space in bytes, per process of the worker.
    /// Allocations beyond it fail (a Rust plugin then aborts with "memory
    /// allocation failed"). Default: unset, which means
    /// [`DEFAULT_ADDRESS_SPACE`] (4 GiB); `u64::MAX` lifts it.
    pub address_space: Option<u64>,
    /// `RLIMIT_CPU`: CPU seconds. At the limit the worker gets SIGXCPU, one
    /// second later SIGKILL. Default: unset.
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE`: maximum open file descriptors, soft and hard.
    /// Default: unset, which means [`DEFAULT_OPEN_FILES`] (1024) — not the
    /// host's, which `Supervisor::build` raises to its hard limit.
    pub open_files: Option<u64>,
    /// `RLIMIT_NPROC`: maximum processes (threads included) of the worker.
    /// Under the default sandbox each worker has its own user namespace, where
    /// Linux counts them per worker, and a root host's worker runs as uid 65534,
    /// so the limit binds even for a root host (real root is exempt from it).
    /// Without the sandbox Linux counts every process of the host's uid, and
    /// not at all for root. Default: unset — which, for a worker in a user
    /// namespace of its own (the default sandbox), means 256: enough for a
    /// tokio runtime and a rayon pool of a few dozen threads each, while about
    /// 128 workers, not 32, would be needed to use up a `pid_max` of 32,768.
    pub processes: Option<u64>,
    /// `RLIMIT_FSIZE`: largest file the plugin may write, in bytes. A write past
    /// it raises SIGXFSZ, which kills the worker unless the plugin ignores the
    /// signal (then the write fails with `EFBIG`). Default: unset.
    pub file_size: Option<u64>,
    /// Allow core dumps (`RLIMIT_CORE` unlimited vs 0). Default: `false`.
    pub core_dumps: bool,
    /// `RLIMIT_MSGQUEUE`: bytes of POSIX message queues the worker may
    /// create. Linux counts them per user, so a non-root host's workers
    /// would share the host's 800 KiB. At most the host's own hard limit
    /// (800 KiB unless raised). Default: unset, which means 0 (no queues).
    pub message_queue_bytes: Option<u64>,
    /// Added to the host's nice value for the worker (lower priority: the
    /// host's threads and other programs win the CPU from a busy plugin).
    /// 0 keeps the host's priority; negative values need privileges the
    /// worker does not have. Default: unset, which means [`DEFAULT_NICE`] (10).
    pub nice: Option<i32>,
}

impl Limits {
    /// No limits beyond "no core dumps".
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the address-space limit in bytes.
    pub fn address_space(mut self, bytes: u64) -> Self {
        self.address_space = Some(bytes);
        self
    }
    /// Sets the CPU-time limit in seconds.
    pub fn cpu_seconds(mut self, secs: u64) -> Self {
        self.cpu_seconds = Some(secs);
        self
    }
    /// Sets the open-file limit.
    pub fn open_files(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }
    /// Sets the process-count limit.
    pub fn processes(mut self, n: u64) -> Self {
        self.processes = Some(n);
        self
    }
    /// Sets the file-size limit in bytes.
    pub fn file_size(mut self, bytes: u64) -> Self {
        self.file_size = Some(bytes);
        self
    }
    /// Sets the POSIX message-queue limit in bytes.
    pub fn message_queue_bytes(mut self, bytes: u64) -> Self {
        self.message_queue_bytes = Some(bytes);
        self
    }
    /// Sets how much lower than the host's the worker's priority is (nice
    /// increment; 0 for the host's own).
    pub fn nice(mut self, increment: i32) -> Self {
        self.nice = Some(increment);
        self
    }
    /// Enables or disables core dumps.
    pub fn core_dumps(mut self, on: bool) -> Self {
        self.core_dumps = on;
        self
    }

    /// The worker's command-line flags for these limits.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, v: Option<u64>| {
            if let Some(v) = v {
                args.push(flag.to_string());
                args.push(v.to_string());
            }
        };
        push("--limit-as", Some(self.address_space.unwrap_or(DEFAULT_ADDRESS_SPACE)));
        push("--limit-cpu", self.cpu_seconds);
        push("--limit-nofile", Some(self.open_files.unwrap_or(DEFAULT_OPEN_FILES)));
        push("--limit-nproc", self.processes);
        push("--limit-fsize", self.file_size);
        push("--limit-msgqueue", Some(self.message_queue_bytes.unwrap_or(0)));
        let nice = self.nice.unwrap_or(DEFAULT_NICE);
        if nice != 0 {
            args.push("--nice".into());
            args.push(nice.to_string());
        }
        if self.core_dumps {
            args.push("--core-dumps".into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        assert_eq!(
            Limits::new().to_args(),
            [
                "--limit-as",
                "4294967296",
                "--limit-nofile",
                "1024",
                "--limit-msgqueue",
                "0",
                "--nice",
                "10"
            ]
        );
        assert_eq!(
            Limits::new().nice(0).to_args(),
            [
                "--limit-as",
                "4294967296",
                "--limit-nofile",
                "1024",
                "--limit-msgqueue",
                "0"
            ]
        );
        let l = Limits::new()
            .address_space(1 << 30)
            .cpu_seconds(2)
            .open_files(64)
            .core_dumps(true);
        assert_eq!(
            l.to_args(),
            [
                "--limit-as",
                "1073741824",
                "--limit-cpu",
                "2",
                "--limit-nofile",
                "64",
                "--limit-msgqueue",
                "0",
                "--nice",
                "10",
                "--core-dumps"
            ]
        );
    }
}
