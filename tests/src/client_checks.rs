//! What [`bulkhead_host::client!`] refuses at compile time, shown as doc tests
//! against the fixture interface crate `fx_iface` (each `compile_fail` block
//! differs from the first, compiling one, in a single declaration).
//!
//! The right declaration compiles:
//!
//! ```
//! use fx_iface::PluginError;
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Basic in fx_iface::__fidius_Basic
//!         (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
//!     {
//!         fn add(a: i64, b: i64) -> i64;
//!         fn fail(code: String) -> Result<String, PluginError>;
//!     }
//! }
//! ```
//!
//! Argument types other than the trait's (`add(&self, a: i64, b: i64)`):
//!
//! ```compile_fail,E0308
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Basic in fx_iface::__fidius_Basic
//!         (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
//!     {
//!         fn add(a: i32, b: i32) -> i64;
//!     }
//! }
//! ```
//!
//! A return type other than the trait's:
//!
//! ```compile_fail,E0308
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Basic in fx_iface::__fidius_Basic
//!         (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
//!     {
//!         fn fail(code: String) -> String;
//!     }
//! }
//! ```
//!
//! A `Result` spelled otherwise than `Result<..>` (it would be decoded as a
//! `Result`, which fidius does not send):
//!
//! ```compile_fail,E0283
//! use fx_iface::PluginError;
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Basic in fx_iface::__fidius_Basic
//!         (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
//!     {
//!         fn fail(code: String) -> std::result::Result<String, PluginError>;
//!     }
//! }
//! ```
//!
//! A method the interface does not have:
//!
//! ```compile_fail
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Basic in fx_iface::__fidius_Basic
//!         (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
//!     {
//!         fn plus(a: i64, b: i64) -> i64;
//!     }
//! }
//! ```
//!
//! A `#[wire(raw)]` method declared as a bincode one (its types match; the
//! descriptor refuses it):
//!
//! ```compile_fail,E0080
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Basic in fx_iface::__fidius_Basic
//!         (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
//!     {
//!         fn echo_raw(data: Vec<u8>) -> Vec<u8>;
//!     }
//! }
//! ```
//!
//! A plain method declared as a stream:
//!
//! ```compile_fail,E0080
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Basic in fx_iface::__fidius_Basic
//!         (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
//!     {
//!         stream fn add(a: i64, b: i64) -> i64;
//!     }
//! }
//! ```
//!
//! A server-streaming method declared as a plain one:
//!
//! ```compile_fail
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Streams in fx_iface::__fidius_Streams
//!         (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
//!     {
//!         fn count(n: u64) -> u64;
//!     }
//! }
//! ```
//!
//! A client-streaming method declared as a server stream:
//!
//! ```compile_fail,E0080
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Streams in fx_iface::__fidius_Streams
//!         (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
//!     {
//!         bidi fn sum(items: u64, bias: u64) -> u64;
//!     }
//! }
//! ```
//!
//! A server stream's item type other than the trait's (`Stream<u64>`):
//!
//! ```compile_fail,E0308
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Streams in fx_iface::__fidius_Streams
//!         (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
//!     {
//!         stream fn count(n: u64) -> u32;
//!     }
//! }
//! ```
//!
//! A client stream's input item type other than the trait's:
//!
//! ```compile_fail,E0308
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Streams in fx_iface::__fidius_Streams
//!         (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
//!     {
//!         client_stream fn sum(items: i32, bias: u64) -> u64;
//!     }
//! }
//! ```
//!
//! A bidirectional stream's output item type other than the trait's:
//!
//! ```compile_fail,E0308
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Streams in fx_iface::__fidius_Streams
//!         (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
//!     {
//!         bidi fn double(items: u64) -> String;
//!     }
//! }
//! ```
//!
//! And every stream form right compiles:
//!
//! ```
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Streams in fx_iface::__fidius_Streams
//!         (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
//!     {
//!         stream fn count(n: u64) -> u64;
//!         client_stream fn sum(items: u64, bias: u64) -> u64;
//!         bidi fn double(items: u64) -> u64;
//!         stream fn blobs(n: u64, size: u64) -> Vec<u8>;
//!     }
//! }
//! ```
//!
//! A bincode method declared `raw fn`:
//!
//! ```compile_fail,E0080
//! bulkhead_host::client! {
//!     pub struct C for fx_iface::Basic in fx_iface::__fidius_Basic
//!         (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
//!     {
//!         raw fn echo(data: Vec<u8>) -> Vec<u8>;
//!     }
//! }
//! ```
