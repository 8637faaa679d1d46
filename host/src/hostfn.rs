//! Host callbacks: implementations of `#[fidius::host_interface]` traits the
//! user registers on a [`PluginSpec`](crate::PluginSpec) — the host's impl of
//! the generated trait, bound by [`host_interface!`](crate::host_interface), or
//! handlers by index. The plugin calls them from its worker; the worker
//! forwards each call over its socket and the host runs the handler here, on
//! the thread waiting for the plugin's answer.

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
/// Build it from the host's implementation of the generated trait with
/// [`host_interface!`](crate::host_interface), which the compiler checks; the
/// methods here are the low-level form, by index on argument tuples (nothing
/// checks that a handler's types match the function's).
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

/// Binds a host's implementation of a `#[fidius::host_interface]` trait — the
/// trait the interface crate generates, implemented by the application exactly
/// as with fidius' `<Trait>Binding::bind` — into a [`HostInterface`] for
/// [`PluginSpec::host_interface`](crate::PluginSpec::host_interface).
///
/// Name the trait, its companion module (`__fidius_host_<Trait>`) with the
/// identity constants, the host value, and each function with its
/// `HOST_FN_<NAME>` index constant and argument names:
///
/// ```ignore
/// use my_iface::{Host, PluginError};
///
/// struct MyHost { /* .. */ }
/// impl Host for MyHost {
///     fn lookup(&self, key: String) -> String { format!("value-of-{key}") }
///     fn check(&self, n: u64) -> Result<u64, PluginError> { Ok(n * 2) }
/// }
///
/// let host = bulkhead_host::host_interface! {
///     my_iface::Host in my_iface::__fidius_host_Host
///         (hash = Host_HOST_INTERFACE_HASH, version = Host_HOST_INTERFACE_VERSION, count = Host_HOST_FN_COUNT)
///     for MyHost { /* .. */ } => {
///         fn lookup(key) = HOST_FN_LOOKUP;
///         fn check(n) = HOST_FN_CHECK;
///     }
/// };
/// let plugin = supervisor.load(PluginSpec::new(path).host_interface(host))?;
/// ```
///
/// What the compiler checks: the host value implements the trait (the value
/// is used as an `Arc<dyn Trait>`); each listed function is a method of the
/// trait taking that many arguments, whose argument and return types come from
/// the trait itself (nothing is re-declared, so nothing can disagree); each
/// `HOST_FN_<NAME>` constant is the one of the function it is paired with
/// (`lookup` ↔ `HOST_FN_LOOKUP`); and the functions listed are exactly the
/// interface's `count`, each index once. A function returning
/// `Result<T, PluginError>` answers `Err` as fidius does (the plugin sees
/// `HostCallError::Host`); a panicking method answers the plugin with a panic
/// status and the host carries on. The worker still checks the plugin's
/// import (name, hash, version) at load, and the plugin's bind shim the
/// function count.
///
/// [`HostInterface::function`] and friends remain as the low-level form (by
/// index, on argument tuples), e.g. for a host interface without a Rust crate.
#[macro_export]
macro_rules! host_interface {
    (
        $($tr:ident)::+ in $($module:ident)::+
            (hash = $hash:ident, version = $version:ident, count = $count:ident)
        for $host:expr => {
            $(fn $method:ident ( $($arg:ident),* $(,)? ) = $index:ident;)+
        }
    ) => {{
        #[allow(unused_imports)]
        use $crate::__private_host::{FallibleAnswer as _, PlainAnswer as _};
        use $($module)::+ as __bulkhead_host_module;
        use $($tr)::+ as __BulkheadHostTrait;
        // Each constant belongs to the function it is paired with, and the
        // functions listed are the interface's, each index exactly once.
        const _: () = {
            $(
                ::core::assert!(
                    $crate::__private_host::index_name_matches(::core::stringify!($index), ::core::stringify!($method)),
                    ::core::concat!(
                        "host_interface!: `", ::core::stringify!($method), "` is paired with `",
                        ::core::stringify!($index), "`; use the HOST_FN_ constant of that function"
                    )
                );
            )+
            let indices = [$(__bulkhead_host_module::$index),+];
            ::core::assert!(
                $crate::__private_host::is_permutation(&indices, __bulkhead_host_module::$count),
                "host_interface!: list every function of the interface exactly once"
            );
        };
        let host: ::std::sync::Arc<dyn __BulkheadHostTrait> = ::std::sync::Arc::new($host);
        $crate::HostInterface::new(
            $crate::__host_interface_last!($($tr)+),
            __bulkhead_host_module::$hash,
            __bulkhead_host_module::$version,
            __bulkhead_host_module::$count,
        )
        $(
            .raw(__bulkhead_host_module::$index, {
                let host = host.clone();
                move |bytes: &[u8]| -> (i32, ::std::vec::Vec<u8>) {
                    let ($($arg,)*) = match $crate::__private_host::decode_args(bytes) {
                        ::core::result::Result::Ok(args) => args,
                        ::core::result::Result::Err(answer) => return answer,
                    };
                    let out = <dyn __BulkheadHostTrait>::$method(&*host, $($arg),*);
                    (&$crate::__private_host::Answer(out)).encode_answer()
                }
            })
        )+
    }};
}

/// The last identifier of a path, as a string (the interface's name).
#[doc(hidden)]
#[macro_export]
macro_rules! __host_interface_last {
    ($last:ident) => {
        ::core::stringify!($last)
    };
    ($first:ident $($rest:ident)+) => {
        $crate::__host_interface_last!($($rest)+)
    };
}

/// Support for [`host_interface!`](crate::host_interface); not a stable API.
///
/// The checks [`host_interface!`](crate::host_interface) makes at compile time,
/// on a hand-written stand-in for what fidius generates. It compiles as written:
///
/// ```
/// pub trait Host: Send + Sync {
///     fn lookup(&self, key: String) -> String;
///     fn check(&self, n: u64) -> Result<u64, String>;
/// }
/// // What `#[fidius::host_interface(version = 3)]` generates, in short.
/// #[allow(non_upper_case_globals)]
/// pub mod __fidius_host_Host {
///     pub const Host_HOST_INTERFACE_HASH: u64 = 0x1234;
///     pub const Host_HOST_INTERFACE_VERSION: u32 = 3;
///     pub const Host_HOST_FN_COUNT: u32 = 2;
///     pub const HOST_FN_LOOKUP: u32 = 0;
///     pub const HOST_FN_CHECK: u32 = 1;
/// }
/// struct MyHost;
/// impl Host for MyHost {
///     fn lookup(&self, key: String) -> String { key }
///     fn check(&self, n: u64) -> Result<u64, String> { Ok(n) }
/// }
/// let host = bulkhead_host::host_interface! {
///     Host in __fidius_host_Host
///         (hash = Host_HOST_INTERFACE_HASH, version = Host_HOST_INTERFACE_VERSION, count = Host_HOST_FN_COUNT)
///     for MyHost => {
///         fn lookup(key) = HOST_FN_LOOKUP;
///         fn check(n) = HOST_FN_CHECK;
///     }
/// };
/// assert_eq!(format!("{host:?}"), "HostInterface { name: \"Host\", hash: 0x0000000000001234, version: 3, fn_count: 2 }");
/// ```
///
/// An index constant paired with another function does not compile:
///
/// ```compile_fail
/// pub trait Host: Send + Sync {
///     fn lookup(&self, key: String) -> String;
///     fn check(&self, n: u64) -> Result<u64, String>;
/// }
/// // What `#[fidius::host_interface(version = 3)]` generates, in short.
/// #[allow(non_upper_case_globals)]
/// pub mod __fidius_host_Host {
///     pub const Host_HOST_INTERFACE_HASH: u64 = 0x1234;
///     pub const Host_HOST_INTERFACE_VERSION: u32 = 3;
///     pub const Host_HOST_FN_COUNT: u32 = 2;
///     pub const HOST_FN_LOOKUP: u32 = 0;
///     pub const HOST_FN_CHECK: u32 = 1;
/// }
/// struct MyHost;
/// impl Host for MyHost {
///     fn lookup(&self, key: String) -> String { key }
///     fn check(&self, n: u64) -> Result<u64, String> { Ok(n) }
/// }
/// let host = bulkhead_host::host_interface! {
///     Host in __fidius_host_Host
///         (hash = Host_HOST_INTERFACE_HASH, version = Host_HOST_INTERFACE_VERSION, count = Host_HOST_FN_COUNT)
///     for MyHost => {
///         fn lookup(key) = HOST_FN_CHECK;
///         fn check(n) = HOST_FN_LOOKUP;
///     }
/// };
/// ```
///
/// Nor does a function left out:
///
/// ```compile_fail
/// pub trait Host: Send + Sync {
///     fn lookup(&self, key: String) -> String;
///     fn check(&self, n: u64) -> Result<u64, String>;
/// }
/// // What `#[fidius::host_interface(version = 3)]` generates, in short.
/// #[allow(non_upper_case_globals)]
/// pub mod __fidius_host_Host {
///     pub const Host_HOST_INTERFACE_HASH: u64 = 0x1234;
///     pub const Host_HOST_INTERFACE_VERSION: u32 = 3;
///     pub const Host_HOST_FN_COUNT: u32 = 2;
///     pub const HOST_FN_LOOKUP: u32 = 0;
///     pub const HOST_FN_CHECK: u32 = 1;
/// }
/// struct MyHost;
/// impl Host for MyHost {
///     fn lookup(&self, key: String) -> String { key }
///     fn check(&self, n: u64) -> Result<u64, String> { Ok(n) }
/// }
/// let host = bulkhead_host::host_interface! {
///     Host in __fidius_host_Host
///         (hash = Host_HOST_INTERFACE_HASH, version = Host_HOST_INTERFACE_VERSION, count = Host_HOST_FN_COUNT)
///     for MyHost => {
///         fn lookup(key) = HOST_FN_LOOKUP;
///     }
/// };
/// ```
///
/// Nor the wrong number of arguments:
///
/// ```compile_fail
/// pub trait Host: Send + Sync {
///     fn lookup(&self, key: String) -> String;
///     fn check(&self, n: u64) -> Result<u64, String>;
/// }
/// // What `#[fidius::host_interface(version = 3)]` generates, in short.
/// #[allow(non_upper_case_globals)]
/// pub mod __fidius_host_Host {
///     pub const Host_HOST_INTERFACE_HASH: u64 = 0x1234;
///     pub const Host_HOST_INTERFACE_VERSION: u32 = 3;
///     pub const Host_HOST_FN_COUNT: u32 = 2;
///     pub const HOST_FN_LOOKUP: u32 = 0;
///     pub const HOST_FN_CHECK: u32 = 1;
/// }
/// struct MyHost;
/// impl Host for MyHost {
///     fn lookup(&self, key: String) -> String { key }
///     fn check(&self, n: u64) -> Result<u64, String> { Ok(n) }
/// }
/// let host = bulkhead_host::host_interface! {
///     Host in __fidius_host_Host
///         (hash = Host_HOST_INTERFACE_HASH, version = Host_HOST_INTERFACE_VERSION, count = Host_HOST_FN_COUNT)
///     for MyHost => {
///         fn lookup(key, extra) = HOST_FN_LOOKUP;
///         fn check(n) = HOST_FN_CHECK;
///     }
/// };
/// ```
///
/// Nor a value that does not implement the trait:
///
/// ```compile_fail
/// pub trait Host: Send + Sync {
///     fn lookup(&self, key: String) -> String;
///     fn check(&self, n: u64) -> Result<u64, String>;
/// }
/// // What `#[fidius::host_interface(version = 3)]` generates, in short.
/// #[allow(non_upper_case_globals)]
/// pub mod __fidius_host_Host {
///     pub const Host_HOST_INTERFACE_HASH: u64 = 0x1234;
///     pub const Host_HOST_INTERFACE_VERSION: u32 = 3;
///     pub const Host_HOST_FN_COUNT: u32 = 2;
///     pub const HOST_FN_LOOKUP: u32 = 0;
///     pub const HOST_FN_CHECK: u32 = 1;
/// }
/// struct MyHost;
/// impl Host for MyHost {
///     fn lookup(&self, key: String) -> String { key }
///     fn check(&self, n: u64) -> Result<u64, String> { Ok(n) }
/// }
/// let host = bulkhead_host::host_interface! {
///     Host in __fidius_host_Host
///         (hash = Host_HOST_INTERFACE_HASH, version = Host_HOST_INTERFACE_VERSION, count = Host_HOST_FN_COUNT)
///     for 42u32 => {
///         fn lookup(key) = HOST_FN_LOOKUP;
///         fn check(n) = HOST_FN_CHECK;
///     }
/// };
/// ```
#[doc(hidden)]
pub mod __private_host {
    use bulkhead_shared::abi::{STATUS_OK, STATUS_PLUGIN_ERROR, STATUS_SERIALIZATION_ERROR};
    use bulkhead_shared::wire;
    use serde::{de::DeserializeOwned, Serialize};

    /// Whether `index` is `HOST_FN_` followed by `method` in upper case.
    pub const fn index_name_matches(index: &str, method: &str) -> bool {
        let (i, m, p) = (index.as_bytes(), method.as_bytes(), b"HOST_FN_");
        if i.len() != p.len() + m.len() {
            return false;
        }
        let mut k = 0;
        while k < p.len() {
            if i[k] != p[k] {
                return false;
            }
            k += 1;
        }
        let mut k = 0;
        while k < m.len() {
            if i[p.len() + k] != m[k].to_ascii_uppercase() {
                return false;
            }
            k += 1;
        }
        true
    }

    /// Whether `indices` holds each of `0..count` exactly once.
    pub const fn is_permutation(indices: &[u32], count: u32) -> bool {
        if indices.len() != count as usize {
            return false;
        }
        let mut k = 0;
        while k < indices.len() {
            if indices[k] >= count {
                return false;
            }
            let mut j = k + 1;
            while j < indices.len() {
                if indices[j] == indices[k] {
                    return false;
                }
                j += 1;
            }
            k += 1;
        }
        true
    }

    /// Decodes a host function's argument tuple, or the answer to give the plugin.
    pub fn decode_args<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, (i32, Vec<u8>)> {
        wire::decode(bytes).map_err(|_| (STATUS_SERIALIZATION_ERROR, Vec::new()))
    }

    /// A host function's return value, encoded as fidius' dispatch does.
    pub struct Answer<T>(pub T);

    /// `Result<T, PluginError>` returns: `Ok` is the value, `Err` a plugin error.
    pub trait FallibleAnswer {
        /// The status and bytes for the plugin.
        fn encode_answer(&self) -> (i32, Vec<u8>);
    }

    impl<T: Serialize, E: Serialize> FallibleAnswer for Answer<Result<T, E>> {
        fn encode_answer(&self) -> (i32, Vec<u8>) {
            let (status, encoded) = match &self.0 {
                Ok(v) => (STATUS_OK, wire::encode(v)),
                Err(e) => (STATUS_PLUGIN_ERROR, wire::encode(e)),
            };
            match encoded {
                Ok(bytes) => (status, bytes),
                Err(_) => (STATUS_SERIALIZATION_ERROR, Vec::new()),
            }
        }
    }

    /// Any other return: the value itself.
    pub trait PlainAnswer {
        /// The status and bytes for the plugin.
        fn encode_answer(&self) -> (i32, Vec<u8>);
    }

    impl<T: Serialize> PlainAnswer for &Answer<T> {
        fn encode_answer(&self) -> (i32, Vec<u8>) {
            match wire::encode(&self.0) {
                Ok(bytes) => (STATUS_OK, bytes),
                Err(_) => (STATUS_SERIALIZATION_ERROR, Vec::new()),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pairs_and_permutations() {
            assert!(index_name_matches("HOST_FN_LOOKUP", "lookup"));
            assert!(index_name_matches("HOST_FN_GET_ALL", "get_all"));
            assert!(!index_name_matches("HOST_FN_CHECK", "lookup"));
            assert!(!index_name_matches("HOST_FN_LOOKUPS", "lookup"));
            assert!(is_permutation(&[2, 0, 1], 3));
            assert!(!is_permutation(&[0, 0, 1], 3));
            assert!(!is_permutation(&[0, 1], 3));
            assert!(!is_permutation(&[0, 1, 3], 3));
        }
    }
}
