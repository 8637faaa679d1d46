//! What users load ([`PluginSpec`]) and call ([`Plugin`]).
//!
//! A plugin is a sequence of generations (one per load or reload), each a
//! pool of workers; the [`Origin`] that loaded it starts the next one.
//! Dropping a generation stops its workers through [`blocking`](crate::blocking).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bulkhead_shared::abi::BufferStrategy;
use bulkhead_shared::frame::DEFAULT_MAX_MESSAGE;
use bulkhead_shared::protocol::{CallFault, PluginInfoWire};
use bulkhead_shared::status::Status;
use bulkhead_shared::wire::{self, WirePluginError};
use serde::{de::DeserializeOwned, Serialize};

use crate::blocking;
use crate::error::{CallError, LoadError, LoadFailure, PluginError};
use crate::events::{EventHub, EventKind};
use crate::health::Health;
use crate::hostfn::HostInterface;
use crate::limits::Limits;
use crate::link::Answer;
use crate::output::OutputBudget;
use crate::pool::{Pool, WorkerReport};
use crate::restart::RestartPolicy;
use crate::sandbox::{Sandbox, SandboxReport};
use crate::stats::{Counters, Stats};
use crate::usage::WorkerMemory;

/// Default per-call timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on starting a worker (spawn, dlopen, `construct`, handshake).
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Default initial Arena size.
pub const DEFAULT_ARENA: u32 = 64 * 1024;
/// Largest per-thread argument buffer kept between typed calls.
const ARGS_KEEP: usize = 1 << 20;

/// Default cap on calls waiting for a busy worker.
pub const DEFAULT_QUEUE_LIMIT: usize = 1024;

/// Default CPU time a worker may use per second with no call or stream in
/// flight ([`PluginSpec::idle_cpu`]).
pub const DEFAULT_IDLE_CPU: Duration = Duration::from_millis(200);

/// A vtable slot. Built from the `usize` constants fidius generates
/// (`__fidius_<Trait>::METHOD_<NAME>`), a `u32`, or an integer literal, so
/// calls take any of them without casts. Values past `u32::MAX` (and negative
/// literals) become `u32::MAX`, which no plugin has: `InvalidMethodIndex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodIndex(pub u32);

impl From<u32> for MethodIndex {
    fn from(i: u32) -> Self {
        MethodIndex(i)
    }
}

impl From<usize> for MethodIndex {
    fn from(i: usize) -> Self {
        MethodIndex(u32::try_from(i).unwrap_or(u32::MAX))
    }
}

impl From<i32> for MethodIndex {
    fn from(i: i32) -> Self {
        MethodIndex(u32::try_from(i).unwrap_or(u32::MAX))
    }
}

/// How requests and answers travel between host and worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A shared-memory region per worker with a spin-then-futex doorbell; the
    /// socket stays the control channel and carries payloads larger than the
    /// region. Falls back to [`Socket`](Self::Socket) if the region cannot be set up.
    SharedMemory,
    /// Every message over the Unix socket: the baseline and the fallback.
    Socket,
}

/// Which plugin to load and how to run it. Every setter documents its default.
#[derive(Clone)]
#[must_use = "a PluginSpec does nothing until passed to Supervisor::load"]
pub struct PluginSpec {
    pub(crate) path: PathBuf,
    pub(crate) plugin: Option<String>,
    pub(crate) label: Option<String>,
    pub(crate) config: Result<Vec<u8>, String>,
    pub(crate) call_timeout: Duration,
    pub(crate) load_timeout: Duration,
    pub(crate) workers: usize,
    pub(crate) queue_limit: usize,
    pub(crate) restart: RestartPolicy,
    pub(crate) limits: Limits,
    pub(crate) arena_capacity: u32,
    pub(crate) max_message_size: u32,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) streaming: Vec<u32>,
    pub(crate) transport: Transport,
    pub(crate) shm_capacity: u32,
    pub(crate) standby: bool,
    pub(crate) sandbox: Sandbox,
    pub(crate) interface_hash: Option<u64>,
    pub(crate) signature_keys: Option<Vec<crate::signing::VerifyingKey>>,
    pub(crate) host_interfaces: Vec<HostInterface>,
    pub(crate) allow_unbound_imports: bool,
    pub(crate) max_callbacks: u32,
    pub(crate) stream_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) output_budget: OutputBudget,
    pub(crate) idle_cpu: Option<Duration>,
}

impl std::fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSpec")
            .field("path", &self.path)
            .field("plugin", &self.plugin)
            .field("config_len", &self.config.as_ref().map(Vec::len))
            .field("call_timeout", &self.call_timeout)
            .field("load_timeout", &self.load_timeout)
            .field("workers", &self.workers)
            .field("queue_limit", &self.queue_limit)
            .field("restart", &self.restart)
            .field("limits", &self.limits)
            .field("transport", &self.transport)
            .field("standby", &self.standby)
            .field("sandbox", &self.sandbox)
            .field("interface_hash", &self.interface_hash)
            .finish_non_exhaustive()
    }
}

impl PluginSpec {
    /// The plugin library at `path` (a fidius `cdylib`).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            plugin: None,
            label: None,
            config: Ok(Vec::new()),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            workers: 1,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            restart: RestartPolicy::default(),
            limits: Limits::default(),
            arena_capacity: DEFAULT_ARENA,
            max_message_size: DEFAULT_MAX_MESSAGE,
            env: Vec::new(),
            streaming: Vec::new(),
            transport: Transport::SharedMemory,
            shm_capacity: bulkhead_shared::shm::DEFAULT_CAPACITY,
            standby: false,
            sandbox: Sandbox::strict(),
            idle_timeout: None,
            interface_hash: None,
            signature_keys: None,
            host_interfaces: Vec::new(),
            allow_unbound_imports: false,
            max_callbacks: crate::hostfn::DEFAULT_MAX_CALLBACKS,
            stream_timeout: None,
            output_budget: OutputBudget::DEFAULT,
            idle_cpu: Some(DEFAULT_IDLE_CPU),
        }
    }

    /// CPU time a worker may use per second while no call or stream of it is
    /// in flight (threads a plugin left running after returning). Judged
    /// over at least a second of idleness, checked four times a second; a
    /// worker over it is killed with [`EventKind::IdleCpuExceeded`], counted
    /// in [`Stats::idle_cpu_kills`], and replaced under the restart policy.
    /// `None` turns the watch off. Default: [`DEFAULT_IDLE_CPU`] (200 ms per
    /// second).
    pub fn idle_cpu(mut self, per_second: Option<Duration>) -> Self {
        self.idle_cpu = per_second;
        self
    }

    /// How much of the plugin's stdout and stderr the host forwards to
    /// `tracing` and the `on_output` callback, for all its workers together;
    /// beyond it lines are dropped (and counted in a summary line) and the
    /// plugin's writes block. Default: [`OutputBudget::DEFAULT`], 1,000 lines
    /// and 1 MiB per second. [`OutputBudget::unlimited`] turns it off.
    pub fn output_budget(mut self, budget: OutputBudget) -> Self {
        self.output_budget = budget;
        self
    }

    /// What the worker may touch. Default: [`Sandbox::strict`] — every layer on
    /// and required (the load fails if one cannot be enforced), no network, no
    /// host files but the system libraries and the plugin.
    /// [`Sandbox::best_effort`] loads with what the kernel allows;
    /// [`Sandbox::none`] turns the sandbox off.
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Refuses, at load, a plugin whose interface hash is not `hash` (fidius'
    /// generated `__fidius_<Trait>::<Trait>_INTERFACE_HASH`): a plugin built
    /// against another version of the trait would have its slots misread. The
    /// [`LoadError`](crate::LoadError) names both hashes. Default: no check.
    ///
    /// The hash *pins* the loaded [`Plugin`]: every later
    /// [`reload`](Plugin::reload) must load a library with this hash, whatever
    /// spec it is given (see [`Plugin::pin_interface`]).
    pub fn interface(mut self, hash: u64) -> Self {
        self.interface_hash = Some(hash);
        self
    }

    /// Loads only a library signed by one of `keys`, as fidius does: the file
    /// `<library>.sig` beside it (`libfoo.so` → `libfoo.so.sig`) holds a raw
    /// 64-byte ed25519 signature of the library's exact bytes. The host reads
    /// the library once into a sealed memfd, verifies those bytes, and every
    /// worker (restarts included) loads that memfd: the file can be replaced
    /// after the check without effect. Default: signatures not required.
    pub fn require_signature(mut self, keys: impl IntoIterator<Item = crate::signing::VerifyingKey>) -> Self {
        self.signature_keys = Some(keys.into_iter().collect());
        self
    }

    /// Offers a host interface (`#[fidius::host_interface]`) to the plugin,
    /// built with [`host_interface!`](crate::host_interface) from the host's
    /// implementation of the generated trait (or by index with
    /// [`HostInterface::function`]). Every interface the plugin imports must be
    /// offered with the same name, hash and version, or loading fails (unless
    /// [`allow_unbound_imports`](Self::allow_unbound_imports)). A plugin that
    /// imports any interface has all its calls made as socket conversations
    /// (shared memory only wakes the worker). Default: none.
    pub fn host_interface(mut self, iface: HostInterface) -> Self {
        self.host_interfaces.push(iface);
        self
    }

    /// Loads a plugin that imports host interfaces this spec does not offer,
    /// leaving them unbound as fidius does: the plugin's `<Trait>Client::bound()`
    /// answers `HostCallError::NotBound` and `is_bound()` is `false`. An import
    /// offered under its name but with another hash or version is still
    /// [`LoadFailure::ImportMismatch`](crate::LoadFailure::ImportMismatch).
    /// [`PluginInfo::unbound_imports`] names the imports left unbound,
    /// [`PluginInfo::host_imports`] the ones bound. Default: `false` (an import
    /// not offered is [`LoadFailure::ImportNotProvided`](crate::LoadFailure::ImportNotProvided)).
    pub fn allow_unbound_imports(mut self, allow: bool) -> Self {
        self.allow_unbound_imports = allow;
        self
    }

    /// Most host callbacks one call (or one stream item) may make; past it the
    /// plugin's callback gets a `PluginError` with code `CALLBACK_LIMIT`.
    /// Callbacks also run under the call's deadline. Default: 100 000.
    pub fn max_callbacks(mut self, n: u32) -> Self {
        self.max_callbacks = n;
        self
    }

    /// Deadline of a whole stream, from its opening; each item also has the
    /// call timeout. Default: none (only the per-item deadline).
    pub fn stream_timeout(mut self, timeout: Duration) -> Self {
        self.stream_timeout = Some(timeout);
        self
    }

    /// Keeps one extra worker loaded and idle, so replacing a failed worker is
    /// a promotion instead of a spawn; the next standby starts in the
    /// background. Costs one more process. Default: `false`.
    pub fn standby(mut self, on: bool) -> Self {
        self.standby = on;
        self
    }

    /// Stops the workers nobody has called for this long; the next call
    /// starts a worker again (paying a worker start, not counted as a
    /// restart). For hosts with many rarely used plugins. A warm standby is
    /// kept. Idleness is measured with the kernel's coarse clock, to its tick
    /// (1–10 ms). Default: `None` (workers stay up).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// How calls travel to the worker. Default: [`Transport::SharedMemory`].
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Bytes per direction of the shared-memory region (at most the maximum
    /// message size); larger payloads go over the socket. Default: 64 MiB of
    /// address space — pages are only allocated once a payload touches them, and
    /// stay allocated for the worker's life.
    pub fn shm_capacity(mut self, bytes: u32) -> Self {
        self.shm_capacity = bytes;
        self
    }

    /// Replaces the library path, keeping every other setting: with
    /// [`Plugin::spec`], how a reload changes the library and nothing else
    /// (what [`Plugin::reload_library`] does).
    pub fn library(mut self, path: impl AsRef<Path>) -> Self {
        self.path = path.as_ref().to_path_buf();
        self
    }

    /// The library path this spec loads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Selects the plugin (impl type name) within the library. Default: the
    /// registry's only plugin; a library with several requires a name.
    pub fn plugin(mut self, name: impl Into<String>) -> Self {
        self.plugin = Some(name.into());
        self
    }

    /// The plugin's name for operators: the `plugin` label of metrics, the
    /// `plugin` field of `tracing` events and spans, [`Event::plugin`](crate::Event::plugin),
    /// and the worker's process title (`ps` shows `bulkhead: LABEL`). Default:
    /// the [`plugin`](Self::plugin) name if set, else the library's file stem.
    /// Give two instances of one library different labels to tell them apart.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Config passed to the plugin's `construct`, bincode-1 encoded. Default: none
    /// (zero bytes). Encoding failures are reported by `load`.
    pub fn config<C: Serialize + ?Sized>(mut self, config: &C) -> Self {
        self.config = wire::encode(config).map_err(|e| e.to_string());
        self
    }

    /// Raw config bytes passed to `construct` unchanged. Default: empty.
    pub fn config_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.config = Ok(bytes.into());
        self
    }

    /// Default timeout of each call. Default: 30 s.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Bound on starting a worker (spawn, dlopen, constructors, `construct`,
    /// handshake); a worker that hangs there is killed. Default: 10 s.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout;
        self
    }

    /// Number of worker processes serving this plugin. Default: 1 (calls queue).
    /// `0` is refused at load with [`LoadError::InvalidSpec`](crate::LoadError::InvalidSpec).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Most calls allowed to wait for a busy worker; more fail with
    /// [`CallError::Overloaded`]. Default: 1024.
    pub fn queue_limit(mut self, n: usize) -> Self {
        self.queue_limit = n;
        self
    }

    /// How dead workers are replaced. Default: [`RestartPolicy::default`]:
    /// always, never giving up, with per-slot backoff 0 / 100 ms doubling to
    /// 30 s that starts over after a successful call or 10 s of uptime.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Resource limits of the worker processes. Default: none, core dumps off.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Initial Arena size in bytes (Arena plugins; grown on demand). Default: 64 KiB.
    pub fn arena_capacity(mut self, bytes: u32) -> Self {
        self.arena_capacity = bytes;
        self
    }

    /// Largest message accepted from (and output allowed of) a worker; larger
    /// frames are protocol errors, checked before allocation. Default: 64 MiB.
    pub fn max_message_size(mut self, bytes: u32) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets an environment variable in the worker (its environment is otherwise
    /// scrubbed to the supervisor's allowlist). Default: none.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Declares vtable slots that are streaming methods, so that a plain
    /// [`Plugin::call`] on them fails with [`CallError::Unsupported`] instead of
    /// misreading a stream handle (use [`Plugin::stream`] for them). Default:
    /// none. Streaming slots cannot be recognised from the binary descriptor;
    /// the typed clients of [`client!`](crate::client) know them from their declaration.
    pub fn streaming_methods(mut self, slots: impl IntoIterator<Item = u32>) -> Self {
        self.streaming.extend(slots);
        self
    }
}

/// What the worker reported about a loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginInfo {
    /// The library path.
    pub path: PathBuf,
    /// The impl type's name.
    pub plugin_name: String,
    /// The interface (trait) name.
    pub interface_name: String,
    /// FNV-1a hash of the interface's required methods.
    pub interface_hash: u64,
    /// The interface's version.
    pub interface_version: u32,
    /// Bit N = the Nth optional method is implemented.
    pub capabilities: u64,
    /// PluginAllocated or Arena.
    pub buffer_strategy: BufferStrategy,
    /// Number of vtable slots (valid method indices are `0..method_count`).
    pub method_count: u32,
    /// 500 (fidius 0.5) or 400 (fidius 0.4).
    pub abi_version: u32,
    /// Interface-level metadata.
    pub trait_metadata: Vec<(String, String)>,
    /// Per-method metadata (empty if the plugin declares none).
    pub method_metadata: Vec<Vec<(String, String)>>,
    /// Every plugin name in the library's registry.
    pub plugins_in_library: Vec<String>,
    /// Pid of the most recently started worker.
    pub worker_pid: u32,
    /// The transport the (first) worker actually uses.
    pub transport: Transport,
    /// How each sandbox layer ended up in the (first) worker: enforced,
    /// partial, unavailable (with the reason) or off.
    pub sandbox: SandboxReport,
    /// Names of the host interfaces the plugin imported (and the worker bound).
    pub host_imports: Vec<String>,
    /// Names of the host interfaces the plugin imports that were left unbound
    /// ([`PluginSpec::allow_unbound_imports`]); its calls of them answer `NotBound`.
    pub unbound_imports: Vec<String>,
}

impl PluginInfo {
    /// Whether capability bit `bit` is set, i.e. the `bit`-th optional method
    /// (counting from 0) is implemented — fidius' `PluginHandle::has_capability`
    /// and `PluginInfo::has_capability`. `false` for `bit >= 64`.
    pub fn has_capability(&self, bit: u32) -> bool {
        bit < 64 && self.capabilities & (1u64 << bit) != 0
    }

    /// Whether every optional method in `mask` is implemented. fidius'
    /// `<Trait>_CAP_<NAME>` constants are such masks (`1 << N` for the Nth
    /// optional method); an empty mask is `false`.
    pub fn has_capabilities(&self, mask: u64) -> bool {
        mask != 0 && self.capabilities & mask == mask
    }
}

/// One version of a loaded plugin: its pool and what its workers reported.
/// A [`Plugin::reload`] replaces the current generation.
pub(crate) struct Generation {
    pub(crate) pool: Arc<Pool>,
    pub(crate) info: PluginInfoWire,
    pub(crate) path: PathBuf,
    pub(crate) call_timeout: Duration,
    pub(crate) streaming: Vec<u32>,
    pub(crate) max_message_size: u32,
    pub(crate) stream_timeout: Option<Duration>,
    pub(crate) host_imports: Vec<String>,
}

impl From<&Generation> for PluginInfo {
    /// What the generation's workers reported at load (the wire form), with
    /// its library path, bound host imports and current worker pid.
    fn from(g: &Generation) -> Self {
        let i = &g.info;
        PluginInfo {
            path: g.path.clone(),
            plugin_name: i.plugin_name.clone(),
            interface_name: i.interface_name.clone(),
            interface_hash: i.interface_hash,
            interface_version: i.interface_version,
            capabilities: i.capabilities,
            buffer_strategy: i.buffer_strategy,
            method_count: i.method_count,
            abi_version: i.abi_version,
            trait_metadata: i.trait_metadata.clone(),
            method_metadata: i.method_metadata.clone(),
            plugins_in_library: i.plugins_in_library.clone(),
            worker_pid: g.pool.latest_pid(),
            transport: if i.shm {
                Transport::SharedMemory
            } else {
                Transport::Socket
            },
            sandbox: i.sandbox.clone(),
            host_imports: g.host_imports.clone(),
            unbound_imports: i.unbound_imports.clone(),
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // The last user handle is gone (or a reload's drain is over): stop the
        // workers now, rather than whenever a background restart lets go of
        // the pool; on this thread unless an installed hook hands it off.
        let pool = self.pool.clone();
        blocking::run(move || {
            pool.shutdown();
        });
    }
}

/// Where a plugin's generations come from (the supervisor that loaded it):
/// a reload starts the next one there.
pub(crate) trait Origin: Send + Sync {
    /// Starts a generation for `spec`, counting into `counters`, and
    /// registers it for shutdown.
    fn start(self: Arc<Self>, spec: &PluginSpec, counters: Arc<Counters>) -> Result<Generation, LoadError>;
    /// Where the plugin's lifecycle events go.
    fn events(&self) -> &EventHub;
}

pub(crate) struct PluginShared {
    pub(crate) core: Arc<dyn Origin>,
    pub(crate) current: RwLock<Arc<Generation>>,
    /// Serializes reloads.
    pub(crate) reloading: Mutex<()>,
    /// The spec of the current generation, its interface pin included
    /// ([`Plugin::spec`]). Written under `reloading`.
    pub(crate) spec: Mutex<PluginSpec>,
    pub(crate) counters: Arc<Counters>,
}

/// A loaded plugin. Cheap to clone and share across threads; every call runs in
/// a worker process. When the last clone is dropped, its workers are shut down.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) shared: Arc<PluginShared>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Plugin>();
};

impl Plugin {
    /// The generation calls go to now.
    pub(crate) fn generation(&self) -> Arc<Generation> {
        self.shared.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `f` on the current generation; a call refused because a reload
    /// retired that generation meanwhile runs again on the new one, so every
    /// call is answered by exactly one version.
    pub(crate) fn on_current<R>(&self, mut f: impl FnMut(&Generation) -> Result<R, CallError>) -> Result<R, CallError> {
        loop {
            let g = self.generation();
            match f(&g) {
                Err(CallError::ShutDown) if g.pool.retired.load(Ordering::Acquire) => {
                    if Arc::ptr_eq(&g, &self.generation()) {
                        return Err(CallError::ShutDown);
                    }
                }
                other => return other,
            }
        }
    }

    /// Calls method `index` with bincode-1 tuple arguments (`&(a,)`, `&(a, b)`,
    /// `&()`) and decodes its return value, under the plugin's call timeout.
    pub fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        index: impl Into<MethodIndex>,
        args: &A,
    ) -> Result<R, CallError> {
        self.call_within(index.into().0, args, None)
    }

    /// Calls optional method `index`, whose capability mask is `capability`
    /// (fidius' `<Trait>_CAP_<NAME>`). A plugin that lacks it gets no request:
    /// the answer is [`CallError::NotImplemented`].
    pub fn call_optional<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        index: impl Into<MethodIndex>,
        capability: u64,
        args: &A,
    ) -> Result<R, CallError> {
        self.call_optional_with_timeout(index, capability, args, self.generation().call_timeout)
    }

    /// [`call_optional`](Self::call_optional) with this call's own timeout.
    pub fn call_optional_with_timeout<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        index: impl Into<MethodIndex>,
        capability: u64,
        args: &A,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let index = index.into().0;
        if let Some(e) = self.optional_missing(index, capability) {
            return Err(e);
        }
        self.call_with_timeout(index, args, timeout)
    }

    /// The error a call of optional method `index` (capability mask
    /// `capability`) gets without a request when the plugin lacks it.
    pub(crate) fn optional_missing(&self, index: u32, capability: u64) -> Option<CallError> {
        let g = self.generation();
        let caps = g.info.capabilities;
        (capability == 0 || caps & capability != capability || index >= g.info.method_count).then_some(
            CallError::NotImplemented {
                index,
                capability,
                capabilities: caps,
            },
        )
    }

    /// The per-call timeout calls get unless they name their own
    /// ([`PluginSpec::call_timeout`] of the current generation).
    pub fn call_timeout(&self) -> Duration {
        self.generation().call_timeout
    }

    /// [`call`](Self::call) with this call's own timeout.
    pub fn call_with_timeout<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        index: impl Into<MethodIndex>,
        args: &A,
        timeout: Duration,
    ) -> Result<R, CallError> {
        self.call_within(index.into().0, args, Some(timeout))
    }

    /// [`call_with_timeout`](Self::call_with_timeout); no `timeout`: the
    /// plugin's call timeout, read from the generation that takes the call.
    fn call_within<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        index: u32,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<R, CallError> {
        // Arguments are encoded into a per-thread buffer: no allocation per call.
        thread_local! {
            static ARGS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        ARGS.with(|cell| {
            let mut fresh = Vec::new();
            let mut guard = cell.try_borrow_mut();
            // A call made from inside a call on this thread (e.g. from an output
            // callback) gets its own buffer.
            let input: &mut Vec<u8> = guard.as_deref_mut().unwrap_or(&mut fresh);
            input.clear();
            wire::encode_into(args, input).map_err(|e| CallError::ArgumentEncoding(e.to_string()))?;
            let result = self.on_current(|g| {
                check_index(g, index)?;
                check_input(g, input)?;
                g.pool
                    .call(index, input, timeout.unwrap_or(g.call_timeout), None, |answer| {
                        let bytes = interpret(g, index, &answer)?;
                        CallError::decode_return(index, bytes)
                    })
            });
            // Do not keep a huge argument buffer alive on this thread forever.
            if input.capacity() > ARGS_KEEP {
                *input = Vec::new();
            }
            result
        })
    }

    /// Calls a `#[wire(raw)]` method: `input` goes to the plugin as-is and its
    /// output bytes come back as-is.
    pub fn call_raw(&self, index: impl Into<MethodIndex>, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call_raw_with_timeout(index, input, self.generation().call_timeout)
    }

    /// [`call_raw`](Self::call_raw) with this call's own timeout.
    pub fn call_raw_with_timeout(
        &self,
        index: impl Into<MethodIndex>,
        input: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let mut out = Vec::new();
        self.call_raw_into_with_timeout(index, input, &mut out, timeout)?;
        Ok(out)
    }

    /// [`call_raw`](Self::call_raw) into a buffer the caller reuses across
    /// calls (cleared first; left empty on error): no allocation once it is
    /// large enough.
    pub fn call_raw_into(
        &self,
        index: impl Into<MethodIndex>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CallError> {
        self.call_raw_into_with_timeout(index, input, out, self.generation().call_timeout)
    }

    /// [`call_raw_into`](Self::call_raw_into) with this call's own timeout.
    pub fn call_raw_into_with_timeout(
        &self,
        index: impl Into<MethodIndex>,
        input: &[u8],
        out: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let index = index.into().0;
        let mut target = Some(std::mem::take(out));
        let result = self.on_current(|g| {
            check_index(g, index)?;
            check_input(g, input)?;
            g.pool.call(index, input, timeout, target.take(), |answer| {
                interpret(g, index, &answer)?;
                Ok(match answer {
                    Answer::Owned { payload, .. } => payload,
                    Answer::Reply { payload, .. } => payload.to_vec(),
                    Answer::Fault(_) => unreachable!("interpret turns faults into errors"),
                })
            })
        });
        *out = result?;
        Ok(())
    }

    pub(crate) fn check_input_len(&self, input: &[u8]) -> Result<(), CallError> {
        check_input(&self.generation(), input)
    }

    pub(crate) fn check_range(&self, index: u32) -> Result<(), CallError> {
        let count = self.generation().info.method_count;
        if index >= count {
            return Err(CallError::InvalidMethodIndex { index, count });
        }
        Ok(())
    }

    /// Maps the worker's answer to the fidius status contract.
    pub(crate) fn interpret<'a>(&self, index: u32, answer: &'a Answer<'_>) -> Result<&'a [u8], CallError> {
        interpret(&self.generation(), index, answer)
    }

    /// The plugin's health: healthy, degraded (some workers being replaced)
    /// or failed (restart budget spent). Changes are also
    /// [`EventKind::HealthChanged`](crate::EventKind::HealthChanged) events.
    pub fn health(&self) -> Health {
        self.generation().pool.health()
    }

    /// Current memory of each live worker (resident set of the worker and
    /// its descendants, from `/proc`), the standby included.
    pub fn memory(&self) -> Vec<WorkerMemory> {
        self.generation().pool.memory()
    }

    /// Switches the plugin to the library and settings of `spec` without
    /// losing a call: workers are started on `spec` and must all load; then
    /// new calls go to them, calls in flight on the old workers finish within
    /// their own deadlines, and the old workers are stopped (their reports are
    /// returned). If the new workers fail to load, the old ones keep serving
    /// and the [`LoadError`] is returned. Stats keep counting across reloads.
    ///
    /// `spec` replaces **every** setting (pool size, timeouts, sandbox and
    /// grants, limits, ...): to change only the library, use
    /// [`reload_library`](Self::reload_library); to change some settings, use
    /// [`reload_with`](Self::reload_with) (both start from [`spec`](Self::spec)).
    ///
    /// The one setting `spec` cannot drop is the interface pin
    /// ([`pin_interface`](Self::pin_interface), [`PluginSpec::interface`], a
    /// typed [`client!`](crate::client)): a pinned plugin reloads only to a
    /// library with the pinned hash; any other is a
    /// [`LoadFailure::InterfaceMismatch`](crate::LoadFailure::InterfaceMismatch)
    /// naming the pinned (expected) and found hashes, checked in the new
    /// workers before the plugin is constructed. A `spec` asking for a hash of
    /// its own that is not the pin is refused the same way before any worker
    /// starts (`found` is then the hash `spec` asked for). Streaming slots
    /// declared by a typed client stay declared too.
    pub fn reload(&self, spec: PluginSpec) -> Result<Vec<WorkerReport>, LoadError> {
        let _one_at_a_time = self.shared.reloading.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_locked(spec)
    }

    /// Reloads from another library, keeping every setting of the current
    /// [`spec`](Self::spec): pool size, timeouts, sandbox and its grants,
    /// limits, restart policy, transport, plugin name, config, signature
    /// keys, host interfaces, output budget, environment and the interface
    /// pin. Otherwise as [`reload`](Self::reload).
    ///
    /// ```no_run
    /// # fn f(plugin: &bulkhead_host::Plugin) -> Result<(), bulkhead_host::LoadError> {
    /// plugin.reload_library("plugins/libgreeter-v2.so")?;
    /// # Ok(()) }
    /// ```
    pub fn reload_library(&self, path: impl AsRef<Path>) -> Result<Vec<WorkerReport>, LoadError> {
        let path = path.as_ref().to_path_buf();
        self.reload_with(move |spec| spec.library(path))
    }

    /// Reloads with the current [`spec`](Self::spec) as changed by `change`:
    /// the deliberate way to change settings (and maybe the library) while
    /// keeping the rest. `change` runs under the reload lock, on the spec of
    /// the generation being replaced, so it must not reload this plugin
    /// itself. Otherwise as [`reload`](Self::reload).
    ///
    /// ```no_run
    /// # fn f(plugin: &bulkhead_host::Plugin) -> Result<(), bulkhead_host::LoadError> {
    /// plugin.reload_with(|spec| spec.library("plugins/libgreeter-v2.so").workers(4))?;
    /// # Ok(()) }
    /// ```
    pub fn reload_with(&self, change: impl FnOnce(PluginSpec) -> PluginSpec) -> Result<Vec<WorkerReport>, LoadError> {
        let _one_at_a_time = self.shared.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.shared.spec.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.reload_locked(change(current))
    }

    /// The spec the current generation was loaded with (the last successful
    /// load or reload), its interface pin included: modify it and pass it to
    /// [`reload`](Self::reload), or use [`reload_with`](Self::reload_with).
    pub fn spec(&self) -> PluginSpec {
        self.shared.spec.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The interface hash every reload of this plugin must load, if pinned.
    pub fn pinned_interface(&self) -> Option<u64> {
        self.shared
            .spec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .interface_hash
    }

    /// Pins the plugin to interface `hash`: from now on every
    /// [`reload`](Self::reload) (whatever its spec says) must load a library
    /// with this hash, and there is no way to unpin. Refused, with
    /// [`LoadFailure::InterfaceMismatch`](crate::LoadFailure::InterfaceMismatch),
    /// if the loaded plugin has another hash or the plugin is already pinned
    /// to another one. A typed [`client!`](crate::client) pins its plugin when
    /// it loads or wraps it.
    ///
    /// The pin is the interface hash alone, which fidius computes over the
    /// required methods' names and types. A library with that hash but
    /// another buffer strategy, or fewer optional methods (built against an
    /// older version of the interface), still reloads: the worker serves both
    /// strategies the same way, and an optional method the new library lacks
    /// answers [`CallError::NotImplemented`] — neither can make a typed call
    /// misread its answer.
    pub fn pin_interface(&self, hash: u64) -> Result<(), LoadError> {
        let _one_at_a_time = self.shared.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let mut spec = self.shared.spec.lock().unwrap_or_else(|e| e.into_inner());
        let g = self.generation();
        let found = match spec.interface_hash {
            Some(pinned) if pinned != hash => Some(pinned),
            _ if g.info.interface_hash != hash => Some(g.info.interface_hash),
            _ => None,
        };
        if let Some(found) = found {
            return Err(LoadError::Rejected {
                path: g.path.clone(),
                reason: LoadFailure::InterfaceMismatch {
                    plugin: g.info.plugin_name.clone(),
                    expected: hash,
                    found,
                },
            });
        }
        spec.interface_hash = Some(hash);
        Ok(())
    }

    /// [`reload`](Self::reload) with the reload lock held.
    fn reload_locked(&self, mut spec: PluginSpec) -> Result<Vec<WorkerReport>, LoadError> {
        let pinned = self.shared.spec.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(pin) = pinned.interface_hash {
            match spec.interface_hash {
                Some(asked) if asked != pin => {
                    return Err(LoadError::Rejected {
                        path: spec.path.clone(),
                        reason: LoadFailure::InterfaceMismatch {
                            plugin: spec
                                .plugin
                                .clone()
                                .unwrap_or_else(|| self.generation().info.plugin_name.clone()),
                            expected: pin,
                            found: asked,
                        },
                    })
                }
                _ => spec.interface_hash = Some(pin),
            }
            // Streaming slots a typed client declared stay refused by `call`.
            for slot in &pinned.streaming {
                if !spec.streaming.contains(slot) {
                    spec.streaming.push(*slot);
                }
            }
        }
        let new = self.shared.core.clone().start(&spec, self.shared.counters.clone())?;
        let path = new.path.clone();
        let label = new.pool.label.clone();
        let old = std::mem::replace(
            &mut *self.shared.current.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(new),
        );
        *self.shared.spec.lock().unwrap_or_else(|e| e.into_inner()) = spec;
        tracing::info!(target: "bulkhead", plugin = &*label, path = %path.display(), "plugin reloaded");
        self.shared.core.events().emit(&label, EventKind::Reloaded { path });
        Ok(old.pool.drain())
    }

    /// What the worker reported at load, plus the current worker pid.
    pub fn info(&self) -> PluginInfo {
        PluginInfo::from(&*self.generation())
    }

    /// Pids of the worker processes alive right now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.generation().pool.live_pids()
    }

    /// The system calls [learn mode](crate::Sandbox::learn) let through for
    /// this plugin so far, by name: what its calls needed beyond the
    /// allow-list. Empty unless its sandbox is in learn mode. Each can be
    /// granted with [`Sandbox::allow_syscall`](crate::Sandbox::allow_syscall).
    pub fn learned_syscalls(&self) -> Vec<&'static str> {
        self.shared.counters.learned()
    }

    /// Counters: calls, errors by kind, timeouts, crashes, restarts, live workers.
    pub fn stats(&self) -> Stats {
        self.generation().pool.stats()
    }

    /// Clears a failed plugin (restart budget spent) so calls may restart workers again.
    pub fn reset(&self) {
        self.generation().pool.reset()
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.generation();
        f.debug_struct("Plugin")
            .field("plugin", &g.info.plugin_name)
            .field("path", &g.path)
            .field("workers", &self.worker_pids())
            .finish()
    }
}

pub(crate) fn check_input(g: &Generation, input: &[u8]) -> Result<(), CallError> {
    check_input_len(g, input.len())
}

/// Refuses an input of `len` bytes over the message size limit.
pub(crate) fn check_input_len(g: &Generation, len: usize) -> Result<(), CallError> {
    let max = g.max_message_size;
    if len > max as usize {
        return Err(CallError::InputTooLarge { len, max });
    }
    Ok(())
}

/// Why a streaming method cannot be called as a plain one.
const STREAMING_METHOD: &str = "a streaming method: call it with Plugin::stream (or stream_async)";

pub(crate) fn check_index(g: &Generation, index: u32) -> Result<(), CallError> {
    let count = g.info.method_count;
    if index >= count {
        return Err(CallError::InvalidMethodIndex { index, count });
    }
    if g.streaming.contains(&index) {
        return Err(CallError::Unsupported {
            index,
            what: STREAMING_METHOD,
        });
    }
    Ok(())
}

/// Maps the worker's answer to the fidius status contract.
pub(crate) fn interpret<'a>(g: &Generation, index: u32, answer: &'a Answer<'_>) -> Result<&'a [u8], CallError> {
    let (status, payload): (i32, &[u8]) = match answer {
        Answer::Reply { status, payload } => (*status, payload),
        Answer::Owned { status, payload } => (*status, payload),
        Answer::Fault(CallFault::BadIndex { index, count }) => {
            return Err(CallError::InvalidMethodIndex {
                index: *index,
                count: *count,
            })
        }
        Answer::Fault(CallFault::StreamMethod { index }) => {
            return Err(CallError::Unsupported {
                index: *index,
                what: STREAMING_METHOD,
            })
        }
        Answer::Fault(fault) => return Err(CallError::Contract(fault.clone())),
    };
    match Status::from_raw(status) {
        Status::Ok => Ok(payload),
        Status::BufferTooSmall => Err(CallError::BufferTooSmall {
            needed: <[u8; 4]>::try_from(payload).ok().map(u32::from_le_bytes),
        }),
        Status::SerializationError => Err(CallError::Serialization { index }),
        Status::PluginError => match wire::decode::<WirePluginError>(payload) {
            Ok(e) => Err(CallError::Plugin(PluginError {
                code: e.code,
                message: e.message,
                details: e.details,
            })),
            Err(e) => Err(CallError::Deserialization(format!(
                "method {index}: PLUGIN_ERROR payload: {e}"
            ))),
        },
        Status::Panic if payload.is_empty() => Err(CallError::Panic(match g.info.buffer_strategy {
            BufferStrategy::Arena => "no message: the Arena buffer strategy does not carry panic messages".into(),
            BufferStrategy::PluginAllocated => "no message".into(),
        })),
        Status::Panic => match wire::decode::<String>(payload) {
            Ok(msg) => Err(CallError::Panic(msg)),
            Err(e) => Err(CallError::Deserialization(format!(
                "method {index}: PANIC payload: {e}"
            ))),
        },
        Status::StreamEnd | Status::Unknown(_) => Err(CallError::UnknownStatus { code: status }),
    }
}
