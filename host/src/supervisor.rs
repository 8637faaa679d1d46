//! The owner of every worker: builds plugins, hands out lifecycle events, and
//! shuts everything down when dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bulkhead_shared::frame::ENVELOPE_OVERHEAD;
use bulkhead_shared::protocol::{LoadRequest, PROTOCOL_VERSION};
use crossbeam_channel::Receiver;

use crate::error::{BuildError, LoadError};
use crate::events::{Event, EventHub};
use crate::hostfn::HostImports;
use crate::locate;
use crate::output::{OutputCallback, OutputLine};
use crate::plugin::{Plugin, PluginShared, PluginSpec, Transport};
use crate::pool::{Pool, PoolConfig, WorkerReport};
use crate::worker_process::Launch;

/// Environment variables copied from the host into workers by default.
pub const DEFAULT_ENV_ALLOWLIST: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];
/// Default time a worker gets to exit after a shutdown request before SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Configures a [`Supervisor`].
pub struct SupervisorBuilder {
    worker: Option<PathBuf>,
    env_allow: Vec<String>,
    output: Option<OutputCallback>,
    grace: Duration,
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        Self {
            worker: None,
            env_allow: DEFAULT_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect(),
            output: None,
            grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl SupervisorBuilder {
    /// Uses this worker binary. Default: searched for — `$BULKHEAD_WORKER`, beside
    /// the current executable and in its parent directory, then `$PATH`.
    pub fn worker_path(mut self, path: impl AsRef<Path>) -> Self {
        self.worker = Some(path.as_ref().to_path_buf());
        self
    }

    /// Also copies the host's value of `name` into workers' environments.
    /// Default allowlist: [`DEFAULT_ENV_ALLOWLIST`]; everything else is scrubbed.
    pub fn allow_env(mut self, name: impl Into<String>) -> Self {
        self.env_allow.push(name.into());
        self
    }

    /// Receives every line plugins print to stdout or stderr (in addition to
    /// `tracing` events under the `bulkhead::plugin` target). Default: none.
    /// Called on a per-worker reader thread; keep it quick.
    pub fn on_output(mut self, f: impl Fn(OutputLine<'_>) + Send + Sync + 'static) -> Self {
        self.output = Some(Arc::new(f));
        self
    }

    /// Time a worker gets to exit after a shutdown request before it is
    /// SIGKILLed. Default: 2 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Finds the worker binary and builds the supervisor.
    pub fn build(self) -> Result<Supervisor, BuildError> {
        let worker = locate::find(self.worker.as_deref())?;
        Ok(Supervisor {
            worker,
            env_allow: self.env_allow,
            output: self.output,
            grace: self.grace,
            events: Arc::new(EventHub::default()),
            plugins: Mutex::new(Vec::new()),
        })
    }
}

/// Owns the worker processes of every plugin it loads. Dropping it (or calling
/// [`shutdown`](Self::shutdown)) stops them all: a shutdown request, a grace
/// period, then SIGKILL to each worker's process group; every child is reaped.
pub struct Supervisor {
    worker: PathBuf,
    env_allow: Vec<String>,
    output: Option<OutputCallback>,
    grace: Duration,
    events: Arc<EventHub>,
    plugins: Mutex<Vec<Weak<Pool>>>,
}

impl Supervisor {
    /// A builder with every default.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }

    /// The worker binary in use.
    pub fn worker_path(&self) -> &Path {
        &self.worker
    }

    /// Starts the plugin's worker(s), loads the plugin in each and returns a handle.
    pub fn load(&self, spec: PluginSpec) -> Result<Plugin, LoadError> {
        let config = spec.config.clone().map_err(LoadError::Config)?;
        let label: Arc<str> = match &spec.plugin {
            Some(name) => name.as_str().into(),
            None => spec
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
                .into(),
        };
        let path = std::path::absolute(&spec.path).unwrap_or_else(|_| spec.path.clone());
        let load = LoadRequest {
            protocol_version: PROTOCOL_VERSION,
            path: path.as_os_str().as_encoded_bytes().to_vec(),
            plugin: spec.plugin.clone(),
            config,
            arena_capacity: spec.arena_capacity,
            max_output: spec.max_message_size,
            shm_capacity: 0,
            interface_hash: spec.interface_hash,
            library_fd: spec.signature_keys.is_some(),
            host_imports: spec.host_interfaces.iter().map(|h| h.wire()).collect(),
        };
        // A signed plugin is verified once, here, and every worker loads the
        // verified bytes from the sealed memfd.
        let library = match &spec.signature_keys {
            Some(keys) => Some(Arc::new(crate::signing::verified_library(&path, keys)?)),
            None => None,
        };
        let imports = (!spec.host_interfaces.is_empty()).then(|| {
            Arc::new(HostImports {
                interfaces: spec.host_interfaces.clone(),
                max_callbacks: spec.max_callbacks,
            })
        });
        let mut env: Vec<(String, String)> = self
            .env_allow
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect();
        env.extend(spec.env.iter().cloned());
        let launch = Launch {
            worker: self.worker.clone(),
            args: spec.limits.to_args(),
            env,
            path: path.clone(),
            label: label.clone(),
            load,
            shm_capacity: match spec.transport {
                Transport::SharedMemory => spec.shm_capacity.min(spec.max_message_size),
                Transport::Socket => 0,
            },
            load_timeout: spec.load_timeout,
            max_frame: spec.max_message_size.saturating_add(ENVELOPE_OVERHEAD),
            output: self.output.clone(),
            library,
            imports,
        };
        let config = PoolConfig {
            size: spec.workers,
            queue_limit: spec.queue_limit,
            policy: spec.restart.clone(),
            standby: spec.standby,
            grace: self.grace,
        };
        let (pool, info) = Pool::start(label, launch, config, self.events.clone())?;
        {
            let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
            plugins.retain(|p| p.strong_count() > 0);
            plugins.push(Arc::downgrade(&pool));
        }
        Ok(Plugin {
            shared: Arc::new(PluginShared {
                pool,
                host_imports: info
                    .bound_imports
                    .iter()
                    .filter_map(|&i| spec.host_interfaces.get(i as usize).map(|h| h.name.clone()))
                    .collect(),
                info,
                path,
                call_timeout: spec.call_timeout,
                streaming: spec.streaming,
                max_message_size: spec.max_message_size,
                stream_timeout: spec.stream_timeout,
            }),
        })
    }

    /// Subscribes to lifecycle events of every plugin of this supervisor. Each
    /// subscriber has a bounded buffer; events it does not consume in time are
    /// dropped and counted in [`Stats::events_dropped`](crate::Stats::events_dropped).
    pub fn events(&self) -> Receiver<Event> {
        self.events.subscribe()
    }

    /// Stops every worker of every plugin and reports how each ended. Plugin
    /// handles still held return [`CallError::ShutDown`](crate::CallError::ShutDown).
    pub fn shutdown(self) -> Vec<WorkerReport> {
        self.stop_all()
    }

    fn stop_all(&self) -> Vec<WorkerReport> {
        let plugins = std::mem::take(&mut *self.plugins.lock().unwrap_or_else(|e| e.into_inner()));
        plugins
            .iter()
            .filter_map(Weak::upgrade)
            .flat_map(|p| p.shutdown())
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}
