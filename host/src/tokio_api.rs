//! The async API (feature `tokio`).
//!
//! An async call waits as a task, not on a thread. It takes a worker without
//! blocking (a task that finds none free waits in the pool's queue, woken
//! when one is put back), posts its request through the worker's shared
//! region, watches a few µs for the answer and then waits: the worker rings
//! the region's doorbell (an eventfd) after posting the answer, and one
//! process-wide thread, `bulkhead-bells`, wakes the task — or wakes it at the
//! call's deadline. 1,000 concurrent calls take no thread beyond that one.
//! Host callbacks the plugin makes meanwhile run on the task. Nothing here
//! needs the runtime's I/O or time drivers; current-thread and multi-thread
//! runtimes both work.
//!
//! What cannot wait that way runs on tokio's blocking pool
//! (`spawn_blocking`), as every async call used to: a call on the socket
//! transport, a payload or answer larger than the region, a callback too
//! large for it, a slot whose worker must start first; and loads, reloads
//! and the opening and items of server and bidirectional streams. A client
//! stream's call waits as a task like any call, its pulls answered on it.
//!
//! # Cancellation
//! Dropping a call's future (or aborting its task, or losing a
//! `tokio::time::timeout` race) does **not** interrupt a call the worker has
//! received: it runs on to its answer or its own deadline (on the blocking
//! pool), its result is discarded, it is counted as usual, and the worker is
//! neither killed nor restarted — the slot goes back to the pool for the
//! next call. A call dropped while it still waits for a worker never
//! starts, and is not counted. A worker stuck in a call is bounded by the
//! call's timeout as usual (`call_async_with_timeout`), which is the way to
//! bound a call's cost; an outer `tokio::time::timeout` only bounds the wait.
//! Dropping a `load_async` future likewise lets the load finish; the plugin
//! handle it produced is then dropped, which stops its workers.
//!
//! # Shutdown
//! [`Supervisor::shutdown_async`] stops every worker on the blocking pool. In a
//! tokio runtime, dropping the last [`Plugin`] handle or the [`Supervisor`]
//! moves the (up to grace-period long) shutdown to the blocking pool too, so it
//! never blocks a runtime thread; outside a runtime it stays synchronous.
//! That is this layer's hand-off hook ([`off_runtime`]), which the composition
//! root installs; the core's drops name no runtime.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bulkhead_shared::wire;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc::error::TrySendError;

use crate::async_call;
use crate::blocking::Job;
use crate::error::{CallError, LoadError};
use crate::events::{Event, Missed, EVENT_BUFFER};
use crate::plugin::{MethodIndex, Plugin, PluginSpec};
use crate::pool::WorkerReport;
use crate::stream::{encode_input, PluginStream};
use crate::supervisor::Supervisor;

/// Runs `f` on tokio's blocking pool and awaits it; a panic in `f` resumes here.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime is shutting down.
        Err(e) => panic!("bulkhead: blocking task cancelled: {e}"),
    }
}

impl Supervisor {
    /// [`load`](Self::load) without blocking the runtime: the workers start on
    /// the blocking pool. Must be awaited within a tokio runtime.
    pub async fn load_async(&self, spec: PluginSpec) -> Result<Plugin, LoadError> {
        let job = self.load_job(spec)?;
        let plugin = blocking(move || job.run()).await?;
        self.track(&plugin);
        Ok(plugin)
    }

    /// Lifecycle events as a [`Stream`](futures_core::Stream) (same events and
    /// bounded buffer as [`events`](Self::events)).
    pub fn event_stream(&self) -> EventStream {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
        self.core.events.subscribe_sink(Box::new(move |event| {
            tx.try_send(event).map_err(|e| match e {
                TrySendError::Full(_) => Missed::Full,
                TrySendError::Closed(_) => Missed::Gone,
            })
        }));
        EventStream { rx }
    }

    /// [`shutdown`](Self::shutdown) on the blocking pool: stops every worker
    /// of every plugin and reports how each ended.
    pub async fn shutdown_async(self) -> Vec<WorkerReport> {
        let pools = self.take_pools();
        blocking(move || pools.iter().flat_map(|p| p.shutdown()).collect()).await
    }
}

/// Lifecycle events of a supervisor's plugins, as a stream; see
/// [`Supervisor::event_stream`]. Ends when the supervisor is gone.
#[derive(Debug)]
pub struct EventStream {
    rx: tokio::sync::mpsc::Receiver<Event>,
}

impl EventStream {
    /// The next event, or `None` once the supervisor is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Plugin {
    /// [`reload`](Self::reload) without blocking the runtime: the new workers
    /// start on the blocking pool. Dropping the future lets the reload finish.
    pub async fn reload_async(&self, spec: PluginSpec) -> Result<Vec<WorkerReport>, LoadError> {
        let plugin = self.clone();
        blocking(move || plugin.reload(spec)).await
    }

    /// [`reload_library`](Self::reload_library) without blocking the runtime.
    pub async fn reload_library_async(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Vec<WorkerReport>, LoadError> {
        let (plugin, path) = (self.clone(), path.as_ref().to_path_buf());
        blocking(move || plugin.reload_library(path)).await
    }

    /// [`reload_with`](Self::reload_with) without blocking the runtime
    /// (`change` runs on the blocking pool).
    pub async fn reload_with_async(
        &self,
        change: impl FnOnce(PluginSpec) -> PluginSpec + Send + 'static,
    ) -> Result<Vec<WorkerReport>, LoadError> {
        let plugin = self.clone();
        blocking(move || plugin.reload_with(change)).await
    }
}

impl Plugin {
    /// [`call`](Self::call) as a future: the arguments are encoded now; the
    /// call waits as a task, not on a thread (see the module docs). See the
    /// module docs for what dropping the future does (the call completes;
    /// the worker is kept).
    pub fn call_async<A: Serialize + ?Sized, R: DeserializeOwned + Send + 'static>(
        &self,
        index: impl Into<MethodIndex>,
        args: &A,
    ) -> impl std::future::Future<Output = Result<R, CallError>> + Send + 'static {
        self.call_async_with_timeout(index, args, self.generation().call_timeout)
    }

    /// [`call_async`](Self::call_async) with this call's own timeout.
    pub fn call_async_with_timeout<A: Serialize + ?Sized, R: DeserializeOwned + Send + 'static>(
        &self,
        index: impl Into<MethodIndex>,
        args: &A,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<R, CallError>> + Send + 'static {
        let index = index.into().0;
        let encoded = wire::encode(args).map_err(|e| CallError::ArgumentEncoding(e.to_string()));
        let plugin = self.clone();
        async move {
            let input = encoded?;
            let out = async_call::call_raw(plugin, index, input, timeout, offload).await?;
            CallError::decode_return(index, &out)
        }
    }

    /// [`call_raw`](Self::call_raw) as a future.
    pub fn call_raw_async(
        &self,
        index: impl Into<MethodIndex>,
        input: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, CallError>> + Send + 'static {
        self.call_raw_async_with_timeout(index, input, self.generation().call_timeout)
    }

    /// [`call_raw_async`](Self::call_raw_async) with this call's own timeout.
    pub fn call_raw_async_with_timeout(
        &self,
        index: impl Into<MethodIndex>,
        input: Vec<u8>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, CallError>> + Send + 'static {
        let index = index.into().0;
        async_call::call_raw(self.clone(), index, input, timeout, offload)
    }
}

/// The async call path's blocking hand-off: tokio's blocking pool.
fn offload(job: async_call::BlockingRest) -> async_call::Offloaded {
    Box::pin(blocking(job))
}

/// The stream and the item one blocking pull produced.
type Pulled<T> = (PluginStream<T>, Option<Result<T, CallError>>);

/// A [`PluginStream`] as a [`Stream`](futures_core::Stream) (feature `tokio`):
/// each item is pulled on tokio's blocking pool, one at a time, so the plugin
/// still never runs ahead of the consumer. Dropping it drops the stream on the
/// blocking pool (the plugin's `drop_fn` runs there, exactly once); an item
/// being pulled at that moment is pulled to its end first.
pub struct AsyncPluginStream<T: 'static> {
    inner: Option<PluginStream<T>>,
    pending: Option<tokio::task::JoinHandle<Pulled<T>>>,
}

impl<T: 'static> std::fmt::Debug for AsyncPluginStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncPluginStream")
            .field("pulling", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> AsyncPluginStream<T> {
    /// The next item, `None` once the stream ended: `while let Some(item) =
    /// stream.next().await`, with no extra crate (the same as polling it as a
    /// [`Stream`](futures_core::Stream)).
    pub async fn next(&mut self) -> Option<Result<T, CallError>> {
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *self), cx)).await
    }
}

impl<T: DeserializeOwned + Send + 'static> futures_core::Stream for AsyncPluginStream<T> {
    type Item = Result<T, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pending.is_none() {
            let Some(mut s) = self.inner.take() else {
                return Poll::Ready(None);
            };
            self.pending = Some(tokio::task::spawn_blocking(move || {
                let item = s.next();
                (s, item)
            }));
        }
        let pending = self.pending.as_mut().expect("set above");
        match Pin::new(pending).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(joined) => {
                self.pending = None;
                match joined {
                    Ok((s, item)) => {
                        if item.is_some() {
                            self.inner = Some(s);
                        }
                        Poll::Ready(item)
                    }
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Poll::Ready(Some(Err(CallError::ShutDown))),
                }
            }
        }
    }
}

impl<T: 'static> Drop for AsyncPluginStream<T> {
    fn drop(&mut self) {
        if let Some(s) = self.inner.take() {
            // Closing talks to the worker: keep it off the runtime's threads.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                drop(handle.spawn_blocking(move || drop(s)));
            }
        }
    }
}

impl Plugin {
    /// [`stream`](Self::stream) as an async [`Stream`](futures_core::Stream):
    /// the stream opens on the blocking pool.
    pub fn stream_async<A: Serialize + ?Sized, T: DeserializeOwned + Send + 'static>(
        &self,
        index: impl Into<MethodIndex>,
        args: &A,
    ) -> impl std::future::Future<Output = Result<AsyncPluginStream<T>, CallError>> + Send + 'static {
        let index = index.into();
        let encoded = wire::encode(args).map_err(|e| CallError::ArgumentEncoding(e.to_string()));
        let plugin = self.clone();
        async move {
            let input = encoded?;
            let inner = blocking(move || plugin.open_stream::<T>(index.0, input, None)).await?;
            Ok(AsyncPluginStream {
                inner: Some(inner),
                pending: None,
            })
        }
    }
}

impl Plugin {
    /// [`call_client_stream`](Self::call_client_stream) as a future: the
    /// arguments are encoded now; the call waits as a task like
    /// [`call_async`](Self::call_async)'s, and the plugin's pulls of `items`
    /// are answered on the task (each item is encoded when pulled). Dropping
    /// the future lets a call its worker has received finish (its remaining
    /// items pulled on the blocking pool).
    pub fn call_client_stream_async<I, A, R>(
        &self,
        index: impl Into<MethodIndex>,
        items: impl IntoIterator<Item = I, IntoIter: Send + 'static> + Send + 'static,
        args: &A,
    ) -> impl std::future::Future<Output = Result<R, CallError>> + Send + 'static
    where
        I: Serialize,
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let index = index.into().0;
        let encoded = wire::encode(args).map_err(|e| CallError::ArgumentEncoding(e.to_string()));
        let plugin = self.clone();
        let limit = self.generation().call_timeout;
        async move {
            let payload = encoded?;
            plugin.check_range(index)?;
            let out = async_call::call_client(plugin, index, payload, encode_input(items), limit, offload).await?;
            CallError::decode_return(index, &out)
        }
    }

    /// [`bidi_stream`](Self::bidi_stream) as an async
    /// [`Stream`](futures_core::Stream): the stream opens on the blocking
    /// pool; each output item is pulled like [`stream_async`](Self::stream_async)'s,
    /// and the plugin's pulls of `items` are answered on the way.
    pub fn bidi_stream_async<I, A, T>(
        &self,
        index: impl Into<MethodIndex>,
        items: impl IntoIterator<Item = I, IntoIter: Send + 'static> + Send + 'static,
        args: &A,
    ) -> impl std::future::Future<Output = Result<AsyncPluginStream<T>, CallError>> + Send + 'static
    where
        I: Serialize,
        A: Serialize + ?Sized,
        T: DeserializeOwned + Send + 'static,
    {
        let index = index.into().0;
        let encoded = wire::encode(args).map_err(|e| CallError::ArgumentEncoding(e.to_string()));
        let plugin = self.clone();
        async move {
            let payload = encoded?;
            let inner = blocking(move || plugin.open_stream::<T>(index, payload, Some(encode_input(items)))).await?;
            Ok(AsyncPluginStream {
                inner: Some(inner),
                pending: None,
            })
        }
    }
}

/// The tokio layer's hand-off hook: in a tokio runtime, `job` (a drop's
/// shutdown) goes to the blocking pool and this returns at once; elsewhere it
/// is given back to run on the calling thread.
pub(crate) fn off_runtime(job: Job) -> Result<(), Job> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            // If the runtime is shutting down the closure is dropped unrun;
            // dropping the last pool handle then shuts the pool down anyway.
            drop(handle.spawn_blocking(job));
            Ok(())
        }
        Err(_) => Err(job),
    }
}
