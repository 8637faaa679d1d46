//! The owner of every worker: builds plugins, hands out lifecycle events, and
//! shuts everything down when dropped.
//!
//! Building a supervisor installs the hooks of the optional layers the
//! composition root put in its builder ([`Layers`]): where drops run blocking
//! shutdowns ([`blocking`]) and who observes loads, events and calls
//! ([`observe`]). The supervisor is a plugin's [`Origin`]: reloads start
//! their generations here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bulkhead_shared::frame::ENVELOPE_OVERHEAD;
use bulkhead_shared::protocol::{LoadRequest, PROTOCOL_VERSION};
use bulkhead_shared::sandbox::SandboxPolicy;

use crate::blocking;
use crate::error::{BuildError, LoadError};
use crate::events::{EventHub, EventReceiver};
use crate::forkserver::{ForkServerSlot, ServerCommand};
use crate::hostfn::{HostImports, HostInterface};
use crate::locate::{self, WorkerExe};
use crate::observe;
use crate::output::{OutputCallback, OutputLine};
use crate::plugin::{Generation, Origin, Plugin, PluginShared, PluginSpec, Transport};
use crate::pool::{Pool, PoolConfig, WorkerReport};
use crate::probe;
use crate::sandbox::Sandbox;
use crate::signing::VerifyingKey;
use crate::stats::Counters;
use crate::worker_process::Launch;

/// Environment variables copied from the host into workers by default.
/// `PATH` is not among them: workers get [`WORKER_PATH`] instead, unless the
/// application allows the host's (`allow_env("PATH")`) or sets one.
pub const DEFAULT_ENV_ALLOWLIST: &[&str] = &["LANG", "LC_ALL", "TZ"];
/// The `PATH` every worker gets: the standard system directories, which says
/// nothing about the host's own.
pub const WORKER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Default time a worker gets to exit after a shutdown request before SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The first argument that makes an executable act as a worker in self-worker
/// mode (see [`SupervisorBuilder::self_worker`]).
pub const SELF_WORKER_ARG: &str = bulkhead_shared::names::SELF_WORKER_ARG;
/// Set (to `1`) in the environment of every process the host starts in
/// self-worker mode. A process that has it and builds a self-worker supervisor
/// is an application whose `main` does not call
/// [`worker_main_if_requested`](crate::worker_main_if_requested); `build()`
/// then fails instead of starting yet another copy of the application.
pub const SELF_WORKER_ENV: &str = "BULKHEAD_SELF_WORKER";

/// Which executable serves as the worker.
#[derive(Debug, Clone)]
enum WorkerChoice {
    /// Searched for (see [`SupervisorBuilder::worker_path`]).
    Search,
    /// This binary.
    Path(PathBuf),
    /// An application executable that calls `worker_main_if_requested`;
    /// `None` = the current executable.
    SelfExe(Option<PathBuf>),
}

/// The hooks of the optional layers above the core, as the composition root
/// chose them; installed (once per process) when a supervisor is built.
#[derive(Clone, Copy, Default)]
pub(crate) struct Layers {
    /// Where drops run blocking shutdowns ([`blocking`]).
    pub(crate) hand_off: Option<blocking::HandOff>,
    /// Who hears of loads, events and calls ([`observe`]).
    pub(crate) observer: Option<&'static dyn observe::Observer>,
}

impl Layers {
    fn install(self) {
        if let Some(hand_off) = self.hand_off {
            blocking::install(hand_off);
        }
        if let Some(observer) = self.observer {
            observe::install(observer);
        }
    }
}

/// Configures a [`Supervisor`].
// Its `Default` (what `Supervisor::builder` returns) is made by the
// composition root (layers.rs), which hands the optional layers' hooks to
// `SupervisorBuilder::with_layers`.
#[must_use = "a SupervisorBuilder does nothing until build() is called"]
pub struct SupervisorBuilder {
    worker: WorkerChoice,
    env_allow: Vec<String>,
    output: Option<OutputCallback>,
    grace: Duration,
    fork_server: bool,
    layers: Layers,
}

impl SupervisorBuilder {
    /// Every default, with `layers` to install at build.
    pub(crate) fn with_layers(layers: Layers) -> Self {
        Self {
            worker: WorkerChoice::Search,
            env_allow: DEFAULT_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect(),
            output: None,
            grace: DEFAULT_SHUTDOWN_GRACE,
            fork_server: true,
            layers,
        }
    }
}

impl std::fmt::Debug for SupervisorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorBuilder")
            .field("worker", &self.worker)
            .field("env_allow", &self.env_allow)
            .field("on_output", &self.output.is_some())
            .field("grace", &self.grace)
            .field("fork_server", &self.fork_server)
            .finish_non_exhaustive()
    }
}

impl SupervisorBuilder {
    /// Uses this worker binary. Default: searched for — `$BULKHEAD_WORKER`, beside
    /// the current executable and in its parent directory, then `$PATH`.
    /// Production deployments should name the binary (or use
    /// [`self_worker`](Self::self_worker)) rather than rely on the search.
    pub fn worker_path(mut self, path: impl AsRef<Path>) -> Self {
        self.worker = WorkerChoice::Path(path.as_ref().to_path_buf());
        self
    }

    /// Self-worker mode: the application's own executable serves as the worker.
    /// Its `main` must begin with
    /// [`bulkhead_host::worker_main_if_requested()`](crate::worker_main_if_requested),
    /// which turns a process started with [`SELF_WORKER_ARG`] into a worker.
    /// Host and worker then come from one build and one `Cargo.lock`, and
    /// nothing needs installing. `build()` checks the wiring by asking the
    /// executable for its protocol version.
    pub fn self_worker(mut self) -> Self {
        self.worker = WorkerChoice::SelfExe(None);
        self
    }

    /// Like [`self_worker`](Self::self_worker), with another executable of the
    /// application that calls `worker_main_if_requested` first thing in `main`
    /// (for example a binary target run from an integration test as
    /// `env!("CARGO_BIN_EXE_<name>")`).
    pub fn self_worker_exe(mut self, path: impl AsRef<Path>) -> Self {
        self.worker = WorkerChoice::SelfExe(Some(path.as_ref().to_path_buf()));
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

    /// Whether workers are forked by a fork-server (default `true`): one
    /// `bulkhead-worker --fork-server` process per sandbox profile, started on
    /// first use, prepares the sandbox's shared part once and forks each new
    /// worker — a restart then costs a fork, the worker's own namespaces,
    /// `dlopen` and the handshake instead of a whole `exec`. Workers stay
    /// children of the host and are isolated from each other exactly as
    /// `exec`ed ones (own pid, mount and ipc namespaces, own user namespace
    /// for process accounting, own limits and descriptors). With `false`, or when
    /// a profile cannot be prepared this way (a policy without the user, pid
    /// or mount namespace), every worker is started with `exec`.
    pub fn fork_server(mut self, on: bool) -> Self {
        self.fork_server = on;
        self
    }

    /// Finds the worker binary, checks that it speaks this host's protocol
    /// version (it runs `WORKER --protocol-version`), and builds the supervisor.
    pub fn build(self) -> Result<Supervisor, BuildError> {
        let (worker, worker_args, worker_env) = match &self.worker {
            WorkerChoice::Search => (locate::find(None)?, Vec::new(), Vec::new()),
            WorkerChoice::Path(p) => (locate::find(Some(p))?, Vec::new(), Vec::new()),
            WorkerChoice::SelfExe(p) => {
                let exe = match p {
                    Some(p) => locate::find(Some(p))?,
                    None => std::env::current_exe().map_err(|e| BuildError::WorkerUnusable {
                        worker: PathBuf::from("/proc/self/exe"),
                        host: PROTOCOL_VERSION,
                        reason: format!("cannot find the current executable: {e}"),
                    })?,
                };
                if std::env::var_os(SELF_WORKER_ENV).is_some() {
                    return Err(BuildError::WorkerUnusable {
                        worker: exe,
                        host: PROTOCOL_VERSION,
                        reason: format!(
                            "this process was started as a self-worker but its main did not call \
                             bulkhead_host::worker_main_if_requested() first ({SELF_WORKER_ENV} is set)"
                        ),
                    });
                }
                (
                    exe,
                    vec![SELF_WORKER_ARG.to_string()],
                    vec![(SELF_WORKER_ENV.to_string(), "1".to_string())],
                )
            }
        };
        let mut probe_env = allowed_env(&self.env_allow);
        probe_env.extend(worker_env.iter().cloned());
        let worker = WorkerExe::pin(worker);
        probe::check(&worker, &worker_args, &probe_env, !worker_args.is_empty())?;
        crate::limits::raise_own_nofile();
        self.layers.install();
        Ok(Supervisor {
            core: Arc::new(Core {
                worker,
                worker_args,
                worker_env,
                env_allow: self.env_allow,
                output: self.output,
                grace: self.grace,
                events: Arc::new(EventHub::new(observe::event)),
                plugins: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                fork_server: self.fork_server,
                fork_servers: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// The host's values of the variables in `allow` (those it has): what a
/// worker inherits of the host's environment.
fn allowed_env(allow: &[String]) -> Vec<(String, String)> {
    allow
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
        .collect()
}

/// A load, prepared: runs (blocking) on any thread.
pub(crate) struct LoadJob {
    label: Arc<str>,
    path: PathBuf,
    launch: Launch,
    config: PoolConfig,
    events: Arc<EventHub>,
    call_timeout: Duration,
    streaming: Vec<u32>,
    max_message_size: u32,
    stream_timeout: Option<Duration>,
    signature_keys: Option<Vec<VerifyingKey>>,
    host_interfaces: Vec<HostInterface>,
    transport: Transport,
    /// The spec as given: what [`Plugin::spec`] returns and a reload keeps.
    spec: PluginSpec,
    core: Arc<Core>,
    counters: Arc<Counters>,
}

impl LoadJob {
    /// Starts the workers and loads the plugin in each.
    pub(crate) fn run(self) -> Result<Plugin, LoadError> {
        let (core, counters, spec) = (self.core.clone(), self.counters.clone(), self.spec.clone());
        let generation = self.run_generation()?;
        Ok(Plugin {
            shared: Arc::new(PluginShared {
                core,
                current: RwLock::new(Arc::new(generation)),
                reloading: Mutex::new(()),
                spec: Mutex::new(spec),
                counters,
            }),
        })
    }

    /// Starts the workers of one generation (a load or a reload).
    pub(crate) fn run_generation(mut self) -> Result<Generation, LoadError> {
        if self.core.closed.load(Ordering::Acquire) {
            return Err(LoadError::ShutDown);
        }
        let span = observe::load_span(&self.label, &self.path);
        let _entered = span.enter();
        // A signed plugin is verified once, here, and every worker (restarts
        // included) loads the verified bytes from the sealed memfd. Any other
        // library is opened once, here, and every worker loads it through
        // that descriptor: a file put in its place later is never loaded.
        if let Some(keys) = &self.signature_keys {
            self.launch.library = Some(Arc::new(crate::signing::verified_library(&self.path, keys)?));
        } else if let Some(fd) = crate::signing::pinned_library(&self.path) {
            self.launch.library = Some(Arc::new(fd));
            self.launch.load.library_fd = true;
        }
        let started = Pool::start(self.label.clone(), self.launch, self.config, self.events);
        observe::load_done(&span, &self.label, started.as_ref().map(|(p, _)| p.latest_pid()));
        let (pool, info) = started?;
        let host_imports = info
            .bound_imports
            .iter()
            .filter_map(|&i| self.host_interfaces.get(i as usize).map(|h| h.name.clone()))
            .collect();
        for (layer, state) in info.sandbox.degraded() {
            let exposure = layer.exposure();
            tracing::warn!(target: "bulkhead", plugin = &*self.label, %layer, state = ?state, exposure, "sandbox layer not fully enforced (best effort)");
        }
        if self.transport == Transport::SharedMemory && !info.shm {
            tracing::warn!(
                target: "bulkhead",
                plugin = &*self.label,
                "shared memory was asked for but the worker could not map its region: using the socket transport"
            );
        }
        Ok(Generation {
            pool,
            info,
            path: self.path,
            call_timeout: self.call_timeout,
            streaming: self.streaming,
            max_message_size: self.max_message_size,
            stream_timeout: self.stream_timeout,
            host_imports,
        })
    }
}

/// What every plugin of a supervisor shares: how to start workers, where events
/// go, and the pools to stop at shutdown. Plugins keep it for reloads.
pub(crate) struct Core {
    worker: WorkerExe,
    worker_args: Vec<String>,
    worker_env: Vec<(String, String)>,
    env_allow: Vec<String>,
    output: Option<OutputCallback>,
    grace: Duration,
    pub(crate) events: Arc<EventHub>,
    plugins: Mutex<Vec<Weak<Pool>>>,
    /// Set at shutdown: no pool starts afterwards.
    closed: AtomicBool,
    /// Whether workers are forked by fork-servers.
    fork_server: bool,
    /// One fork-server slot per sandbox profile in use; stopped at shutdown.
    fork_servers: Mutex<Vec<Arc<ForkServerSlot>>>,
}

/// Bytes per direction of a worker's shared region. The worker maps the region
/// after it limited its own address space, so under `Limits::address_space`
/// the region is sized to fit: both directions together take at most a quarter
/// of the limit (larger payloads travel over the socket), leaving the rest to
/// the worker and the plugin, instead of failing to map and silently falling
/// back to the socket transport.
fn shm_capacity(spec: &PluginSpec) -> u32 {
    let cap = spec.shm_capacity.min(spec.max_message_size);
    match spec.limits.address_space {
        Some(limit) => cap.min(u32::try_from(limit / 8).unwrap_or(u32::MAX)),
        None => cap,
    }
}

/// Most threads [`Supervisor::load_many`] loads on at once (counting the caller's).
pub const LOAD_MANY_THREADS: usize = 8;

/// Owns the worker processes of every plugin it loads. Dropping it (or calling
/// [`shutdown`](Self::shutdown)) stops them all: a shutdown request, a grace
/// period, then SIGKILL to each worker's process group; every child is reaped.
pub struct Supervisor {
    pub(crate) core: Arc<Core>,
}

impl Supervisor {
    /// A builder with every default.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }

    /// The worker binary in use.
    pub fn worker_path(&self) -> &Path {
        self.core.worker.path()
    }

    /// Starts the plugin's worker(s), loads the plugin in each and returns a handle.
    pub fn load(&self, spec: PluginSpec) -> Result<Plugin, LoadError> {
        let plugin = self.load_job(spec)?.run()?;
        self.track(&plugin);
        Ok(plugin)
    }

    /// Loads many plugins at once; the results come back in the order of
    /// `specs`, one `Result` per spec, so one bad spec costs only its own load.
    ///
    /// The loads run on at most [`LOAD_MANY_THREADS`] short-lived threads (fewer
    /// for a short list), which are gone when this returns: while one load
    /// waits for its worker to start, link and `dlopen` the plugin, the others
    /// proceed. Only the fork/exec itself is serialised (on the spawner thread,
    /// see [`load`](Self::load)). Each load is bounded by its own
    /// [`load_timeout`](PluginSpec::load_timeout). If no thread can be started
    /// the loads run one after another on the caller's thread.
    pub fn load_many(&self, specs: impl IntoIterator<Item = PluginSpec>) -> Vec<Result<Plugin, LoadError>> {
        let specs: Vec<Mutex<Option<PluginSpec>>> = specs.into_iter().map(|s| Mutex::new(Some(s))).collect();
        let results: Vec<Mutex<Option<Result<Plugin, LoadError>>>> = specs.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = specs.get(i) else { return };
            let Some(spec) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                continue;
            };
            let result = self.load(spec);
            *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        };
        let threads = specs.len().min(LOAD_MANY_THREADS);
        std::thread::scope(|scope| {
            for _ in 1..threads {
                let spawned = std::thread::Builder::new()
                    .name("bulkhead-load".into())
                    .spawn_scoped(scope, work);
                if spawned.is_err() {
                    break;
                }
            }
            // The caller's thread takes its share too (and all of it if no
            // thread could be started).
            work();
        });
        results
            .into_iter()
            .map(|r| {
                r.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or(Err(LoadError::ShutDown))
            })
            .collect()
    }

    /// Everything `load` needs, owned (so it can run on another thread).
    pub(crate) fn load_job(&self, spec: PluginSpec) -> Result<LoadJob, LoadError> {
        self.core.load_job(spec, Arc::new(Counters::default()))
    }

    /// Registers a loaded plugin's pool so shutdown reaches it (a plugin
    /// loaded while the supervisor shut down is stopped at once).
    pub(crate) fn track(&self, plugin: &Plugin) {
        let _ = self.core.track_pool(&plugin.generation().pool);
    }

    /// Subscribes to lifecycle events of every plugin of this supervisor. Each
    /// subscriber has a bounded buffer; events it does not consume in time are
    /// dropped and counted in [`Stats::events_dropped`](crate::Stats::events_dropped).
    pub fn events(&self) -> EventReceiver {
        self.core.events.subscribe()
    }

    /// Stops every worker of every plugin and reports how each ended. Plugin
    /// handles still held return [`CallError::ShutDown`](crate::CallError::ShutDown).
    pub fn shutdown(self) -> Vec<WorkerReport> {
        self.stop_all()
    }

    fn stop_all(&self) -> Vec<WorkerReport> {
        let reports = self.take_pools().iter().flat_map(|p| p.shutdown()).collect();
        self.core.stop_fork_servers();
        reports
    }

    /// The pid of the fork-server serving the default sandbox profile, if one
    /// is running (it starts with the first plugin that uses it).
    #[doc(hidden)]
    pub fn fork_server_pid(&self) -> Option<u32> {
        self.core.fork_server_pid(&Sandbox::strict().to_policy())
    }

    /// Starts the fork-server of `spec`'s profile if needed and waits (until
    /// `deadline`) for it to have its pre-forked workers ready, so that the next
    /// load of `spec` is assigned one. For tests: which path a spawn takes
    /// otherwise depends on timing. `false` if there is none by then.
    #[doc(hidden)]
    pub fn wait_for_blank(&self, spec: &PluginSpec, deadline: std::time::Instant) -> bool {
        let Ok(job) = self.load_job(spec.clone()) else {
            return false;
        };
        job.launch
            .fork_server
            .as_ref()
            .is_some_and(|slot| slot.wait_for_blank(deadline))
    }

    /// The pid of the fork-server serving `sandbox`'s profile, if one is running.
    #[doc(hidden)]
    pub fn fork_server_pid_for(&self, sandbox: &Sandbox) -> Option<u32> {
        self.core.fork_server_pid(&sandbox.to_policy())
    }

    /// Every live pool, removed from this supervisor (which starts no more).
    pub(crate) fn take_pools(&self) -> Vec<Arc<Pool>> {
        self.core.take_pools()
    }
}

impl Origin for Core {
    /// Starts a generation for `spec` (a reload) and registers its pool.
    fn start(self: Arc<Self>, spec: &PluginSpec, counters: Arc<Counters>) -> Result<Generation, LoadError> {
        let generation = self.load_job(spec.clone(), counters)?.run_generation()?;
        self.track_pool(&generation.pool)?;
        Ok(generation)
    }

    fn events(&self) -> &EventHub {
        &self.events
    }
}

impl Core {
    /// Registers a pool so shutdown reaches it; after shutdown, stops it instead.
    pub(crate) fn track_pool(&self, pool: &Arc<Pool>) -> Result<(), LoadError> {
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Acquire) {
            drop(plugins);
            pool.shutdown();
            return Err(LoadError::ShutDown);
        }
        plugins.retain(|p| p.strong_count() > 0);
        plugins.push(Arc::downgrade(pool));
        Ok(())
    }

    /// The fork-server slot of `policy` (created on first use), or `None` when
    /// fork-servers are off or the supervisor is shut down.
    fn fork_server_slot(&self, policy: &SandboxPolicy, env: &[(String, String)]) -> Option<Arc<ForkServerSlot>> {
        // Learn mode attaches a filter with a listener thread of its own,
        // which a fork-server's shared base filter cannot provide.
        if !self.fork_server || policy.learn {
            return None;
        }
        let mut slots = self.fork_servers.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        if let Some(slot) = slots.iter().find(|s| s.serves(policy, env)) {
            return Some(slot.clone());
        }
        let slot = Arc::new(ForkServerSlot::new(
            ServerCommand {
                worker: self.worker.clone(),
                worker_args: self.worker_args.clone(),
                env: env.to_vec(),
            },
            policy.clone(),
        ));
        slots.push(slot.clone());
        Some(slot)
    }

    fn fork_server_pid(&self, policy: &SandboxPolicy) -> Option<u32> {
        let slots = self.fork_servers.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|s| s.policy() == policy)
            .find_map(|s| s.server_pid())
    }

    /// Stops every fork-server (workers they forked are the host's children
    /// and are not affected).
    fn stop_fork_servers(&self) {
        let slots = std::mem::take(&mut *self.fork_servers.lock().unwrap_or_else(|e| e.into_inner()));
        for slot in slots {
            slot.stop();
        }
    }

    /// Every live pool, removed; no pool starts afterwards.
    fn take_pools(&self) -> Vec<Arc<Pool>> {
        let plugins = {
            let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *plugins)
        };
        plugins.iter().filter_map(Weak::upgrade).collect()
    }

    /// Everything a load needs, owned (so it can run on another thread).
    fn load_job(self: &Arc<Self>, spec: PluginSpec, counters: Arc<Counters>) -> Result<LoadJob, LoadError> {
        if spec.workers == 0 {
            return Err(LoadError::InvalidSpec {
                setting: "workers",
                reason: "a plugin needs at least one worker (got 0)".into(),
            });
        }
        let label = label_of(&spec);
        let path = std::path::absolute(&spec.path).unwrap_or_else(|_| spec.path.clone());
        let load = load_request(&spec, &path, &label)?;
        let env = self.worker_env_for(&spec);
        let fork_server = self.fork_server_slot(&load.sandbox, &env);
        let launch = Launch {
            worker: self.worker.clone(),
            worker_args: self.worker_args.clone(),
            args: spec.limits.to_args(),
            env,
            path: path.clone(),
            label: label.clone(),
            load,
            shm_capacity: match spec.transport {
                Transport::SharedMemory => shm_capacity(&spec),
                Transport::Socket => 0,
            },
            load_timeout: spec.load_timeout,
            max_frame: spec.max_message_size.saturating_add(ENVELOPE_OVERHEAD),
            output: self.output.clone(),
            output_budget: Arc::new(crate::output::Meter::new(spec.output_budget)),
            violations: Some(crate::violations::sink(
                label.clone(),
                self.events.clone(),
                counters.clone(),
            )),
            // Set by `LoadJob::run` once the library is verified.
            library: None,
            imports: (!spec.host_interfaces.is_empty()).then(|| {
                Arc::new(HostImports {
                    interfaces: spec.host_interfaces.clone(),
                    max_callbacks: spec.max_callbacks,
                })
            }),
            fork_server,
            next_parts: Mutex::new(None),
        };
        let config = PoolConfig {
            size: spec.workers,
            queue_limit: spec.queue_limit,
            policy: spec.restart.clone(),
            standby: spec.standby,
            grace: self.grace,
            idle_timeout: spec.idle_timeout,
            idle_cpu: spec.idle_cpu,
            counters: counters.clone(),
        };
        Ok(LoadJob {
            label,
            path,
            launch,
            config,
            events: self.events.clone(),
            call_timeout: spec.call_timeout,
            streaming: spec.streaming.clone(),
            max_message_size: spec.max_message_size,
            stream_timeout: spec.stream_timeout,
            signature_keys: spec.signature_keys.clone(),
            host_interfaces: spec.host_interfaces.clone(),
            transport: spec.transport,
            spec,
            core: self.clone(),
            counters,
        })
    }

    /// A worker's environment for `spec`: the allowlisted variables of the
    /// host, a fixed `PATH` unless allowed, the supervisor's additions, then
    /// the spec's.
    fn worker_env_for(&self, spec: &PluginSpec) -> Vec<(String, String)> {
        let mut env = allowed_env(&self.env_allow);
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".to_string(), WORKER_PATH.to_string()));
        }
        env.extend(self.worker_env.iter().cloned());
        env.extend(spec.env.iter().cloned());
        env
    }
}

/// The name a plugin goes by in metrics, tracing, events and its workers'
/// titles: the spec's label, else its plugin name, else the library's stem.
fn label_of(spec: &PluginSpec) -> Arc<str> {
    match (&spec.label, &spec.plugin) {
        (Some(label), _) => label.as_str().into(),
        (None, Some(name)) => name.as_str().into(),
        (None, None) => spec
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
            .into(),
    }
}

/// The `Load` message every worker of `spec` receives (the shared region's
/// size is filled in per worker).
fn load_request(spec: &PluginSpec, path: &Path, label: &str) -> Result<LoadRequest, LoadError> {
    Ok(LoadRequest {
        protocol_version: PROTOCOL_VERSION,
        path: path.as_os_str().as_encoded_bytes().to_vec(),
        plugin: spec.plugin.clone(),
        config: spec.config.clone().map_err(LoadError::Config)?,
        arena_capacity: spec.arena_capacity,
        max_output: spec.max_message_size,
        shm_capacity: 0,
        interface_hash: spec.interface_hash,
        library_fd: spec.signature_keys.is_some(),
        host_imports: spec.host_interfaces.iter().map(|h| h.wire()).collect(),
        allow_unbound_imports: spec.allow_unbound_imports,
        sandbox: spec.sandbox.to_policy(),
        label: label.to_string(),
    })
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Stopping the pools waits; an installed hook may take it elsewhere.
        let pools = self.take_pools();
        blocking::run(move || {
            for p in pools {
                p.shutdown();
            }
        });
        // Fork-servers are killed: no real wait.
        self.core.stop_fork_servers();
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("worker", &self.core.worker)
            .finish_non_exhaustive()
    }
}
