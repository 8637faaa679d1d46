//! Host callbacks: implementations of `#[fidius::host_interface]` traits the
//! user registers on a [`PluginSpec`](crate::PluginSpec). The plugin calls them
//! from its worker; the worker forwards each call over its socket and the host
//! runs the handler here, on the thread waiting for the plugin's answer.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bulkhead_shared::abi::{
    STATUS_INVALID_INDEX, STATUS_OK, STATUS_PANIC, STATUS_PLUGIN_ERROR, STATUS_SERIALIZATION_ERROR,
};
use bulkhead_shared::protocol::HostImportWire;
use bulkhead_shared::wire::{self, WirePluginError};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::PluginError;

/// Default bound on host callbacks per call (or per stream item).
pub const DEFAULT_MAX_CALLBACKS: u32 = 100_000;

type Handler = Arc<dyn Fn(&[u8]) -> (i32, Vec<u8>) + Send + Sync>;

/// One host interface offered to plugins: its identity (name, signature hash,
/// version and function count — fidius generates them as
/// `__fidius_host_<Trait>::<Trait>_HOST_INTERFACE_HASH`, `..._VERSION` and
/// `..._HOST_FN_COUNT`) and a handler per function index (`HOST_FN_<NAME>`).
///
/// Arguments arrive as the bincode tuple the plugin's generated client sends;
/// results go back as fidius expects: the value for an infallible function,
/// `Ok`/`Err(PluginError)` for a fallible one. A handler that panics answers
/// the plugin with a panic status; the host carries on.
#[derive(Clone)]
pub struct HostInterface {
    pub(crate) name: String,
    pub(crate) hash: u64,
    pub(crate) version: u32,
    pub(crate) fn_count: u32,
    handlers: HashMap<u32, Handler>,
}

impl std::fmt::Debug for HostInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostInterface")
            .field("name", &self.name)
            .field("hash", &format_args!("{:#018x}", self.hash))
            .field("version", &self.version)
            .field("fn_count", &self.fn_count)
            .finish()
    }
}

impl HostInterface {
    /// An interface with no handlers yet (every function answers "invalid index").
    pub fn new(name: impl Into<String>, hash: u64, version: u32, fn_count: u32) -> Self {
        Self {
            name: name.into(),
            hash,
            version,
            fn_count,
            handlers: HashMap::new(),
        }
    }

    /// Implements infallible function `index` (`fn f(&self, a: A, b: B) -> R`):
    /// `f` takes the argument tuple `(A, B)`.
    pub fn function<A, R, F>(self, index: u32, f: F) -> Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.raw(index, move |args| match wire::decode::<A>(args) {
            Ok(a) => match wire::encode(&f(a)) {
                Ok(out) => (STATUS_OK, out),
                Err(_) => (STATUS_SERIALIZATION_ERROR, Vec::new()),
            },
            Err(_) => (STATUS_SERIALIZATION_ERROR, Vec::new()),
        })
    }

    /// Implements fallible function `index` (`-> Result<R, PluginError>`).
    pub fn fallible<A, R, F>(self, index: u32, f: F) -> Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Result<R, PluginError> + Send + Sync + 'static,
    {
        self.raw(index, move |args| match wire::decode::<A>(args) {
            Ok(a) => match f(a) {
                Ok(v) => match wire::encode(&v) {
                    Ok(out) => (STATUS_OK, out),
                    Err(_) => (STATUS_SERIALIZATION_ERROR, Vec::new()),
                },
                Err(e) => {
                    let wire_err = WirePluginError {
                        code: e.code,
                        message: e.message,
                        details: e.details,
                    };
                    (STATUS_PLUGIN_ERROR, wire::encode(&wire_err).unwrap_or_default())
                }
            },
            Err(_) => (STATUS_SERIALIZATION_ERROR, Vec::new()),
        })
    }

    /// Implements function `index` on raw bytes: `f` gets the argument bytes and
    /// returns a fidius status and output bytes.
    pub fn raw<F>(mut self, index: u32, f: F) -> Self
    where
        F: Fn(&[u8]) -> (i32, Vec<u8>) + Send + Sync + 'static,
    {
        self.handlers.insert(index, Arc::new(f));
        self
    }

    pub(crate) fn wire(&self) -> HostImportWire {
        HostImportWire {
            name: self.name.clone(),
            hash: self.hash,
            version: self.version,
            fn_count: self.fn_count,
        }
    }

    /// Runs function `index`; a panic is contained and reported to the plugin.
    pub(crate) fn dispatch(&self, index: u32, args: &[u8]) -> (i32, Vec<u8>) {
        let Some(h) = self.handlers.get(&index) else {
            return (STATUS_INVALID_INDEX, Vec::new());
        };
        match catch_unwind(AssertUnwindSafe(|| h(args))) {
            Ok(answer) => answer,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "host function panicked".into());
                tracing::warn!(target: "bulkhead::host", "host function {index} panicked: {msg}");
                (STATUS_PANIC, wire::encode(&msg).unwrap_or_default())
            }
        }
    }
}

/// The host interfaces of one plugin, shared by its workers.
pub(crate) struct HostImports {
    pub(crate) interfaces: Vec<HostInterface>,
    pub(crate) max_callbacks: u32,
}
