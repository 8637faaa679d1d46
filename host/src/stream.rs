//! Streams relayed through the worker (fidius 0.5.9 `Stream<T>` methods).
//!
//! * **Server stream** ([`Plugin::stream`]): a [`PluginStream`] iterator. The
//!   worker holding the plugin's stream handle is leased to the stream until it
//!   ends or is dropped. Each `next()` is one request: the worker calls the
//!   handle's `next` once and sends that one item back, so the plugin never runs
//!   ahead of the consumer (backpressure by construction; one item in flight).
//! * **Deadlines**: every item has the call timeout (from the request for it);
//!   [`PluginSpec::stream_timeout`](crate::PluginSpec::stream_timeout), if set,
//!   bounds the whole stream from its opening. Whichever comes first applies.
//! * **Cancellation**: dropping the stream before its end asks the worker to run
//!   the handle's `drop_fn` (exactly once) and returns the worker to the pool.
//! * **Failures**: a crash, hang or protocol breach mid-stream ends the stream
//!   with the same [`CallError`] a call gets, and the worker is replaced.
//! * **Client stream** ([`Plugin::call_client_stream`]) and **bidirectional**
//!   ([`Plugin::bidi_stream`]): the plugin pulls its input items; each pull is a
//!   round trip to the host, which takes the next item from the caller's iterator
//!   only then (so the input is never read ahead either).

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use bulkhead_shared::abi::{STATUS_OK, STATUS_SERIALIZATION_ERROR, STATUS_STREAM_END};
use bulkhead_shared::status::Status;
use bulkhead_shared::wire;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::CallError;
use crate::link::{Answer, Request as SessionMsg};
use crate::plugin::{MethodIndex, Plugin};
use crate::pool::Lease;

/// The items a plugin pulls: encoded lazily, one per pull.
pub(crate) type Input = Box<dyn Iterator<Item = Result<Vec<u8>, CallError>> + Send>;

pub(crate) fn encode_input<I: Serialize>(items: impl IntoIterator<Item = I, IntoIter: Send + 'static>) -> Input {
    Box::new(
        items
            .into_iter()
            .map(|i| wire::encode(&i).map_err(|e| CallError::ArgumentEncoding(e.to_string()))),
    )
}

/// Answers one pull from `input`: an item, or the end (also after an item
/// that failed to encode, which is reported as a serialization error).
pub(crate) fn pull_from(input: &mut Option<Input>) -> (i32, Vec<u8>) {
    match input.as_mut().and_then(|i| i.next()) {
        Some(Ok(bytes)) => (STATUS_OK, bytes),
        Some(Err(_)) => {
            *input = None;
            (STATUS_SERIALIZATION_ERROR, Vec::new())
        }
        None => {
            *input = None;
            (STATUS_STREAM_END, Vec::new())
        }
    }
}

/// A server (or bidirectional) stream: an iterator of the plugin's items.
/// Ends with `None` after the plugin's last item, or after one `Err`.
pub struct PluginStream<T> {
    plugin: Plugin,
    lease: Option<Lease>,
    method: u32,
    opened: Instant,
    input: Option<Input>,
    items: u64,
    _item: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for PluginStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginStream")
            .field("open", &self.lease.is_some())
            .field("items", &self.items)
            .finish()
    }
}

impl<T> PluginStream<T> {
    /// Items received so far.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The deadline of the next request and the limit it stands for.
    fn deadline(&self) -> (Instant, Duration, Instant) {
        let now = Instant::now();
        let item = self.plugin.generation().call_timeout;
        match self.plugin.generation().stream_timeout {
            Some(total) if self.opened + total < now + item => (self.opened + total, total, self.opened),
            _ => (now + item, item, now),
        }
    }

    /// One request on the leased worker; a failure ends the stream.
    fn request(&mut self, msg: SessionMsg<'_>) -> Result<(i32, Vec<u8>), CallError> {
        let opening = matches!(msg, SessionMsg::StreamOpen { .. });
        let result = self.request_inner(msg);
        // The opening counts as a call (started by `open_stream`); failures of
        // later requests count as that call's errors.
        if opening || result.is_err() {
            self.plugin
                .generation()
                .pool
                .counters
                .call_finished(result.as_ref().err());
        }
        result
    }

    fn request_inner(&mut self, msg: SessionMsg<'_>) -> Result<(i32, Vec<u8>), CallError> {
        let (deadline, limit, start) = self.deadline();
        let lease = self.lease.as_mut().ok_or(CallError::ShutDown)?;
        let input = &mut self.input;
        let mut pull = || pull_from(input);
        let Some(worker) = lease.worker() else {
            return Err(CallError::ShutDown);
        };
        // The link carries it through the shared region when it can.
        let answered = worker.session(msg, deadline, Some(&mut pull));
        let result = match answered {
            Ok(Answer::Reply { status, payload }) => Ok(Ok((status, payload.to_vec()))),
            Ok(Answer::Owned { status, payload }) => Ok(Ok((status, payload))),
            Ok(Answer::Fault(f)) => Ok(Err(f)),
            Err(failure) => Err(failure),
        };
        match result {
            Ok(Ok(answer)) => {
                lease.note_success();
                Ok(answer)
            }
            Ok(Err(fault)) => {
                let answer = Answer::Fault(fault);
                Err(self
                    .plugin
                    .interpret(self.method, &answer)
                    .expect_err("faults are errors"))
            }
            Err(failure) => {
                let pool = lease.pool.clone();
                let err = pool.failed(&mut lease.slot, failure, self.method, start, limit);
                // Dropping the lease hands the dying worker to recovery.
                self.lease = None;
                Err(err)
            }
        }
    }

    /// Closes the plugin's stream (its `drop_fn`) and gives the worker back.
    fn close(&mut self) {
        if self.lease.is_some() {
            // A close that fails has already marked the worker for replacement.
            let _ = self.request(SessionMsg::StreamClose);
            self.lease = None;
        }
        self.input = None;
    }
}

impl<T> PluginStream<T> {
    /// The next item's bytes, not decoded (what [`Iterator::next`] decodes as
    /// `T`); `None` at the stream's end. The only way to read a
    /// [`Plugin::stream_raw`] stream.
    pub fn next_raw(&mut self) -> Option<Result<Vec<u8>, CallError>> {
        self.lease.as_ref()?;
        let (status, payload) = match self.request(SessionMsg::StreamNext) {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        match Status::from_raw(status) {
            Status::Ok => {
                self.items += 1;
                Some(Ok(payload))
            }
            Status::StreamEnd => {
                self.close();
                None
            }
            _ => {
                self.close();
                let answer = Answer::Reply {
                    status,
                    payload: &payload,
                };
                Some(Err(self
                    .plugin
                    .interpret(self.method, &answer)
                    .expect_err("non-zero status is an error")))
            }
        }
    }
}

impl<T: DeserializeOwned> Iterator for PluginStream<T> {
    type Item = Result<T, CallError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_raw()?;
        Some(item.and_then(|payload| CallError::decode_return(self.method, &payload)))
    }
}

/// The item type of a [`Plugin::stream_raw`] stream: its items are bytes,
/// read with [`PluginStream::next_raw`].
#[derive(Debug)]
pub struct RawItems;

impl<T> Drop for PluginStream<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl Plugin {
    /// Opens server-streaming method `index` (`fn m(&self, ..) -> fidius::Stream<T>`)
    /// with the bincode tuple `args` and returns its items as an iterator.
    /// The stream holds one worker of the pool until it ends or is dropped.
    pub fn stream<A: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        index: impl Into<MethodIndex>,
        args: &A,
    ) -> Result<PluginStream<T>, CallError> {
        let payload = wire::encode(args).map_err(|e| CallError::ArgumentEncoding(e.to_string()))?;
        self.open_stream(index.into().0, payload, None)
    }

    /// [`stream`](Self::stream) with the argument tuple already encoded (as
    /// [`call_raw`](Self::call_raw) takes it); the items are bytes, read with
    /// [`PluginStream::next_raw`].
    pub fn stream_raw(&self, index: impl Into<MethodIndex>, args: &[u8]) -> Result<PluginStream<RawItems>, CallError> {
        self.open_stream(index.into().0, args.to_vec(), None)
    }

    /// Opens bidirectional method `index` (`fn m(&self, input: Stream<I>, ..) ->
    /// Stream<T>`): the plugin pulls `items` as it produces its own; `args` is
    /// the tuple of the other arguments.
    pub fn bidi_stream<I, A, T>(
        &self,
        index: impl Into<MethodIndex>,
        items: impl IntoIterator<Item = I, IntoIter: Send + 'static>,
        args: &A,
    ) -> Result<PluginStream<T>, CallError>
    where
        I: Serialize,
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let payload = wire::encode(args).map_err(|e| CallError::ArgumentEncoding(e.to_string()))?;
        self.open_stream(index.into().0, payload, Some(encode_input(items)))
    }

    /// Opens stream `index` with encoded arguments `payload` (and, for a
    /// bidirectional stream, the items the plugin pulls).
    pub(crate) fn open_stream<T>(
        &self,
        index: u32,
        payload: Vec<u8>,
        input: Option<Input>,
    ) -> Result<PluginStream<T>, CallError> {
        self.check_range(index)?;
        self.check_input_len(&payload)?;
        let pool = self.generation().pool.clone();
        let opened = Instant::now();
        pool.counters.call_started();
        let lease = pool
            .lease(opened, opened + self.generation().call_timeout)
            .inspect_err(|e| {
                pool.counters.call_finished(Some(e));
            })?;
        {
            let mut s = PluginStream {
                plugin: self.clone(),
                lease: Some(lease),
                method: index,
                opened,
                input,
                items: 0,
                _item: PhantomData,
            };
            let has_input = s.input.is_some();
            let (status, out) = s.request(SessionMsg::StreamOpen {
                method: index,
                input: has_input,
                payload: &payload,
            })?;
            if status != STATUS_OK {
                // Nothing to close: the plugin holds no stream.
                s.lease = None;
                let answer = Answer::Reply { status, payload: &out };
                return Err(self.interpret(index, &answer).expect_err("non-zero status is an error"));
            }
            Ok(s)
        }
    }

    /// Calls client-streaming method `index` (`fn m(&self, input: Stream<I>, ..)
    /// -> R`): the plugin pulls `items` one by one; `args` is the tuple of the
    /// other arguments. Runs under the call timeout.
    pub fn call_client_stream<I, A, R>(
        &self,
        index: impl Into<MethodIndex>,
        items: impl IntoIterator<Item = I, IntoIter: Send + 'static>,
        args: &A,
    ) -> Result<R, CallError>
    where
        I: Serialize,
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = wire::encode(args).map_err(|e| CallError::ArgumentEncoding(e.to_string()))?;
        self.call_client_stream_encoded(index.into().0, items, payload)
    }

    /// [`call_client_stream`](Self::call_client_stream) with the argument
    /// tuple already encoded.
    pub(crate) fn call_client_stream_encoded<I, R>(
        &self,
        index: u32,
        items: impl IntoIterator<Item = I, IntoIter: Send + 'static>,
        payload: Vec<u8>,
    ) -> Result<R, CallError>
    where
        I: Serialize,
        R: DeserializeOwned,
    {
        self.check_range(index)?;
        self.check_input_len(&payload)?;
        let mut input = Some(encode_input(items));
        let pool = self.generation().pool.clone();
        let start = Instant::now();
        let limit = self.generation().call_timeout;
        pool.counters.call_started();
        let result = (|| {
            let mut lease = pool.lease(start, start + limit)?;
            let worker = lease.worker().ok_or(CallError::ShutDown)?;
            let mut pull = || pull_from(&mut input);
            let msg = SessionMsg::ClientCall {
                method: index,
                payload: &payload,
            };
            let outcome = match worker.session(msg, start + limit, Some(&mut pull)) {
                Ok(answer) => Ok(self
                    .interpret(index, &answer)
                    .and_then(|bytes| CallError::decode_return(index, bytes))),
                Err(failure) => Err(failure),
            };
            match outcome {
                Ok(r) => {
                    lease.note_success();
                    r
                }
                Err(failure) => Err(pool.failed(&mut lease.slot, failure, index, start, limit)),
            }
        })();
        pool.counters.call_finished(result.as_ref().err());
        result
    }
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<PluginStream<u64>>();
};
