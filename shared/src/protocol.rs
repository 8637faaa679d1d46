//! The host <-> worker protocol: messages carried in [`frame`]s over a Unix
//! socket pair, and the order of a conversation.
//!
//! Messages: the host sends [`HostMsg`]s — `Load`, `Call`, `StreamOpen`,
//! `StreamNext`, `StreamClose`, `ClientCall`, `CallbackReply`, `Item`,
//! `Shutdown`; the worker sends [`WorkerMsg`]s — `Loaded`, `LoadFailed`,
//! `Reply`, `Fault`, `Callback`, `Pull`.
//!
//! Order:
//!
//! 1. Handshake. The host sends `Load` (with its [`PROTOCOL_VERSION`]), then,
//!    as `SCM_RIGHTS` descriptors, the shared region and its doorbell (an
//!    eventfd) if the request names a capacity, and the verified library if
//!    it says one follows. The worker
//!    answers `Loaded` (echoing its version; saying whether it mapped the
//!    region) or `LoadFailed`, and then exits.
//! 2. Requests, one at a time. Each of `Call`, `StreamOpen`, `StreamNext`,
//!    `StreamClose` and `ClientCall` carries a fresh request id and is
//!    answered by exactly one `Reply` (the plugin's status code and output
//!    bytes, unchanged) or `Fault` (the plugin broke the ABI contract) with the
//!    same id. Before that answer, and only then, the worker may send any
//!    number of `Callback`s (a host function the plugin imports; the host
//!    answers each with a `CallbackReply`) and `Pull`s (the next input item of
//!    a client or bidirectional stream; the host answers each with an
//!    `Item`). `StreamNext` and `StreamClose` refer to the stream the last
//!    successful `StreamOpen` opened; nothing else may arrive unasked.
//! 3. End. The host sends `Shutdown`; the worker destroys the instance and
//!    exits 0. A closed socket ends the worker too.
//!
//! With a shared region (see [`shm`](crate::shm)), requests and answers of
//! step 2 and `Shutdown` may travel through it instead: each region
//! [`RequestKind`](crate::shm::RequestKind) and
//! [`ResponseKind`](crate::shm::ResponseKind) stands for one of these
//! messages, or announces that it follows on the socket, where the order
//! above holds unchanged. A request that came through the region has its
//! `Callback`s and `Pull`s there too (as responses with the request's id)
//! and their `CallbackReply`s and `Item`s (as requests): the same order, in
//! the region.
//!
//! Hot messages (`Call`, `Reply`) have a fixed binary layout so the payload is
//! never copied into an intermediate encoding; cold messages carry bincode
//! bodies. Every decoder works on untrusted bytes and fails with a
//! [`DecodeError`].

use serde::{Deserialize, Serialize};

use crate::abi::BufferStrategy;
use crate::frame::{self, HEADER_LEN};
use crate::sandbox::{Layer, SandboxPolicy, SandboxReport};
use crate::wire::{self, WireError};

/// Version of this protocol; both sides refuse to talk across versions. Every
/// worker answers the `--protocol-version` query with it before any
/// handshake (the host checks it when it builds a supervisor).
pub const PROTOCOL_VERSION: u32 = 6;

const TAG_LOAD: u8 = 0x01;
const TAG_CALL: u8 = 0x02;
const TAG_SHUTDOWN: u8 = 0x03;
const TAG_STREAM_OPEN: u8 = 0x04;
const TAG_STREAM_NEXT: u8 = 0x05;
const TAG_STREAM_CLOSE: u8 = 0x06;
const TAG_CLIENT_CALL: u8 = 0x07;
const TAG_CALLBACK_REPLY: u8 = 0x08;
const TAG_ITEM: u8 = 0x09;
const TAG_LOADED: u8 = 0x81;
const TAG_LOAD_FAILED: u8 = 0x82;
const TAG_REPLY: u8 = 0x83;
const TAG_FAULT: u8 = 0x84;
const TAG_CALLBACK: u8 = 0x85;
const TAG_PULL: u8 = 0x86;
/// The tag byte of a `Pull` message (lets a reader tell it apart cheaply).
pub const TAG_PULL_BYTE: u8 = TAG_PULL;

/// Length of a `Call` frame before its payload: header, tag, id, method.
pub const CALL_PREFIX_LEN: usize = HEADER_LEN + 1 + 8 + 4;
/// Length of a `Reply` frame before its payload: header, tag, id, status.
pub const REPLY_PREFIX_LEN: usize = HEADER_LEN + 1 + 8 + 4;

/// Why a message body could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body was empty.
    #[error("empty message")]
    Empty,
    /// The tag byte names no message this side accepts.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// The body is shorter than the message's fixed fields.
    #[error("{what} message truncated: {len} bytes")]
    Truncated {
        /// Which message.
        what: &'static str,
        /// Bytes available.
        len: usize,
    },
    /// A message that must end at its fixed fields carried extra bytes.
    #[error("{what} message has {extra} trailing bytes")]
    Trailing {
        /// Which message.
        what: &'static str,
        /// Surplus bytes.
        extra: usize,
    },
    /// A bincode body failed to decode.
    #[error("malformed message body")]
    Body(#[from] WireError),
}

/// What the host asks the worker to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// The host's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Path of the plugin library, as raw OS bytes.
    pub path: Vec<u8>,
    /// Plugin (impl type) name to select; `None` = the registry's only plugin.
    pub plugin: Option<String>,
    /// bincode bytes passed to `construct`.
    pub config: Vec<u8>,
    /// Initial Arena size in bytes.
    pub arena_capacity: u32,
    /// Largest output the worker may send back in one reply.
    pub max_output: u32,
    /// Bytes per direction of the shared-memory data path; 0 = socket only. When
    /// non-zero, the region's memfd follows the Load frame (`SCM_RIGHTS`).
    pub shm_capacity: u32,
    /// The sandbox to apply before the library is opened.
    pub sandbox: SandboxPolicy,
    /// Refuse a plugin whose `interface_hash` differs from this one.
    pub interface_hash: Option<u64>,
    /// The library arrives as a descriptor (`SCM_RIGHTS`, after the region's
    /// fd if any) that the worker loads instead of opening `path`: a sealed
    /// memfd holding exactly the bytes the host verified, or the library file
    /// as the host opened it at load (a regular file; `path` then still names
    /// where it is, for the sandbox's view).
    pub library_fd: bool,
    /// Host interfaces the host implements; the worker binds each import the
    /// plugin declares to one of these, and refuses the plugin if it cannot.
    pub host_imports: Vec<HostImportWire>,
    /// The plugin's operator label (`PluginSpec::label` in the host): the
    /// worker's process title, so `ps` shows which plugin a worker runs.
    pub label: String,
    /// Leave an import no offered interface has the name of unbound instead of
    /// refusing the plugin (its calls of it answer `NotBound`, as in fidius).
    /// A name offered with another hash or version is still refused.
    pub allow_unbound_imports: bool,
}

/// One host interface the host offers to plugins (`#[fidius::host_interface]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostImportWire {
    /// The interface (trait) name.
    pub name: String,
    /// Its signature hash.
    pub hash: u64,
    /// Its declared version.
    pub version: u32,
    /// Number of functions in it.
    pub fn_count: u32,
}

/// What the worker reports about the plugin it loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfoWire {
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The plugin's `abi_version` (500 or 400).
    pub abi_version: u32,
    /// The impl type's name.
    pub plugin_name: String,
    /// The interface (trait) name.
    pub interface_name: String,
    /// FNV-1a hash of the interface's required methods.
    pub interface_hash: u64,
    /// The interface's declared version.
    pub interface_version: u32,
    /// Optional-method capability bits.
    pub capabilities: u64,
    /// How outputs are returned.
    pub buffer_strategy: BufferStrategy,
    /// Number of vtable slots.
    pub method_count: u32,
    /// Interface-level metadata pairs.
    pub trait_metadata: Vec<(String, String)>,
    /// Per-method metadata pairs (empty when the plugin has none).
    pub method_metadata: Vec<Vec<(String, String)>>,
    /// Names of every plugin in the library's registry.
    pub plugins_in_library: Vec<String>,
    /// Whether the worker mapped the shared-memory region (else: socket only).
    pub shm: bool,
    /// How each sandbox layer ended up.
    pub sandbox: SandboxReport,
    /// Indices (into the load request's `host_imports`) of the host interfaces
    /// the plugin imported and the worker bound.
    pub bound_imports: Vec<u32>,
    /// Names of the host interfaces the plugin imports that the worker left
    /// unbound (only with the load request's `allow_unbound_imports`).
    pub unbound_imports: Vec<String>,
}

/// Why the worker could not load the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum LoadFailure {
    /// Host and worker speak different protocol versions.
    #[error("protocol version mismatch: host speaks {host}, worker speaks {worker}")]
    ProtocolVersion {
        /// The host's version.
        host: u32,
        /// The worker's version.
        worker: u32,
    },
    /// The path does not exist or cannot be opened.
    #[error("cannot open plugin file: {message}")]
    FileUnreadable {
        /// The OS error text.
        message: String,
    },
    /// The path is a directory or another non-regular file.
    #[error("not a regular file")]
    NotAFile,
    /// The file is not an ELF shared object.
    #[error("not an ELF shared object: {reason}")]
    NotElf {
        /// What was wrong with the header.
        reason: String,
    },
    /// The ELF file targets another machine.
    #[error("ELF built for machine {found} (class {class}), this worker runs on machine {expected}")]
    WrongArchitecture {
        /// `e_machine` of the file.
        found: u16,
        /// `EI_CLASS` of the file (1 = 32-bit, 2 = 64-bit).
        class: u8,
        /// `e_machine` of this worker.
        expected: u16,
    },
    /// `dlopen` failed.
    #[error("dlopen failed: {message}")]
    Dlopen {
        /// The dynamic loader's error text.
        message: String,
    },
    /// The library does not export a required symbol.
    #[error("symbol `{symbol}` not found: {message}")]
    SymbolMissing {
        /// The symbol looked up.
        symbol: String,
        /// The dynamic loader's error text.
        message: String,
    },
    /// `fidius_get_registry` returned NULL.
    #[error("fidius_get_registry returned NULL")]
    NullRegistry,
    /// The registry's magic bytes are wrong.
    #[error("bad registry magic {found:02x?}")]
    BadMagic {
        /// The 8 bytes found.
        found: [u8; 8],
    },
    /// Unsupported registry layout version.
    #[error("registry version {found} unsupported (supported: {supported})")]
    RegistryVersion {
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// The registry lists more plugins than is sane, or a NULL descriptor table.
    #[error("malformed registry: {reason}")]
    BadRegistry {
        /// What was wrong.
        reason: String,
    },
    /// The registry has no plugins.
    #[error("the library's registry contains no plugins")]
    NoPlugins,
    /// Unsupported ABI version.
    #[error("plugin `{plugin}` has ABI version {found}; supported: {supported:?}")]
    AbiVersion {
        /// Plugin name (or descriptor index if unreadable).
        plugin: String,
        /// Version found.
        found: u32,
        /// Versions supported.
        supported: Vec<u32>,
    },
    /// `descriptor_size` is smaller than the layout of its ABI version.
    #[error("descriptor #{index} declares size {size}, smaller than the {minimum} bytes of its layout")]
    DescriptorTooSmall {
        /// Index in the registry.
        index: u32,
        /// Declared size.
        size: u32,
        /// Minimum for its ABI version.
        minimum: u32,
    },
    /// A descriptor field is invalid (NULL vtable, absurd count, bad strategy,
    /// non-UTF-8 or unterminated name, missing `free_buffer`, ...).
    #[error("plugin `{plugin}` has an invalid descriptor: {reason}")]
    BadDescriptor {
        /// Plugin name (or descriptor index if unreadable).
        plugin: String,
        /// What was wrong.
        reason: String,
    },
    /// No plugin has the requested name.
    #[error("no plugin named `{requested}` in the library (available: {available:?})")]
    PluginNotFound {
        /// The name asked for.
        requested: String,
        /// Names present.
        available: Vec<String>,
    },
    /// Several plugins and none named.
    #[error("the library holds {} plugins, name one of them: {available:?}", available.len())]
    Ambiguous {
        /// Names present.
        available: Vec<String>,
    },
    /// `construct` returned NULL (the plugin rejected its config).
    #[error("plugin `{plugin}` rejected its configuration (construct returned NULL)")]
    ConstructFailed {
        /// Plugin name.
        plugin: String,
    },
    /// The plugin implements another interface than the one the host expects.
    #[error("interface hash mismatch: the host expects {expected:#018x}, plugin `{plugin}` has {found:#018x}")]
    InterfaceMismatch {
        /// Plugin name.
        plugin: String,
        /// The hash the host asked for.
        expected: u64,
        /// The plugin's hash.
        found: u64,
    },
    /// The plugin imports a host interface the host did not register.
    #[error("plugin imports host interface `{name}` (hash {hash:#018x}, version {version}), which the host does not provide")]
    ImportNotProvided {
        /// Interface name.
        name: String,
        /// The plugin's hash for it.
        hash: u64,
        /// The plugin's version of it.
        version: u32,
    },
    /// The plugin imports a host interface by a name the host registered, but
    /// built against another version or signature set.
    #[error("host interface `{name}`: plugin built against version {plugin_version} hash {plugin_hash:#018x}, host provides version {host_version} hash {host_hash:#018x}")]
    ImportMismatch {
        /// Interface name.
        name: String,
        /// The plugin's hash.
        plugin_hash: u64,
        /// The plugin's version.
        plugin_version: u32,
        /// The host's hash.
        host_hash: u64,
        /// The host's version.
        host_version: u32,
    },
    /// The plugin's bind shim refused the host table (a fidius `BIND_ERR_*` code).
    #[error("binding host interface `{name}` failed with status {code}")]
    ImportBind {
        /// Interface name.
        name: String,
        /// The bind status.
        code: i32,
    },
    /// The host-import registry is malformed.
    #[error("malformed host-import registry: {reason}")]
    BadImports {
        /// What was wrong.
        reason: String,
    },
    /// The worker could not understand the load request.
    #[error("worker could not decode the load request: {reason}")]
    BadRequest {
        /// The decode error.
        reason: String,
    },
    /// A sandbox layer the policy requires could not be applied (or the sandbox
    /// could not be set up at all). No plugin code ran.
    #[error("sandbox layer {layer} could not be applied: {reason}")]
    Sandbox {
        /// The layer.
        layer: Layer,
        /// Why.
        reason: String,
    },
}

/// Ways a plugin broke the ABI contract during one call, detected by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CallFault {
    /// Arena output range lies outside the arena.
    #[error("arena output out of bounds: offset {offset} + length {len} > capacity {capacity}")]
    ArenaOutOfBounds {
        /// Reported offset.
        offset: u32,
        /// Reported length.
        len: u32,
        /// Arena capacity.
        capacity: u32,
    },
    /// PluginAllocated output pointer was NULL with a non-zero length.
    #[error("plugin returned a NULL output buffer of length {len}")]
    NullOutput {
        /// Reported length.
        len: u32,
    },
    /// Output (or a needed arena) larger than the configured maximum message size.
    #[error("plugin output of {len} bytes exceeds the {max}-byte limit")]
    OutputTooLarge {
        /// Size produced or requested.
        len: u64,
        /// The cap.
        max: u32,
    },
    /// The vtable slot is NULL (an optional method the plugin lacks).
    #[error("method slot {index} is empty (optional method not implemented)")]
    EmptySlot {
        /// Slot index.
        index: u32,
    },
    /// The worker was asked for a slot outside the vtable.
    #[error("method index {index} out of range (method_count {count})")]
    BadIndex {
        /// Requested index.
        index: u32,
        /// The plugin's method count.
        count: u32,
    },
    /// A stream's init returned status 0 but a NULL handle.
    #[error("stream init of method {index} returned a NULL handle")]
    NullStreamHandle {
        /// Slot index.
        index: u32,
    },
    /// A stream operation arrived with no stream open (or a second open).
    #[error("stream protocol misuse: {what}")]
    StreamState {
        /// What was wrong.
        what: String,
    },
    /// The input is too large to pass through the ABI's `u32` length.
    #[error("input of {len} bytes does not fit the ABI's u32 length")]
    InputTooLarge {
        /// Input length.
        len: u64,
    },
    /// A plain call of a server-streaming method: the plugin returned a stream
    /// handle, which the worker dropped.
    #[error("method {index} is a streaming method (it returned a stream handle)")]
    StreamMethod {
        /// Slot index.
        index: u32,
    },
}

/// Messages from host to worker.
// `Load` (with its sandbox policy) is larger than the hot messages, but it is
// decoded once per worker, and boxing it would cost every encode and decode.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg<'a> {
    /// Load a plugin (first message).
    Load(LoadRequest),
    /// Call vtable slot `method` with `payload` as input.
    Call {
        /// Request id, echoed in the answer.
        id: u64,
        /// Vtable slot.
        method: u32,
        /// Input bytes (bincode tuple or raw).
        payload: &'a [u8],
    },
    /// Destroy the instance and exit.
    Shutdown,
    /// Start server-streaming (or, with `input`, bidirectional) method
    /// `method`; answered by a `Reply` (status 0 = open, empty payload).
    StreamOpen {
        /// Request id.
        id: u64,
        /// Vtable slot.
        method: u32,
        /// Whether the plugin pulls an input stream from the host (bidirectional).
        input: bool,
        /// Arguments (bincode tuple of the non-stream arguments).
        payload: &'a [u8],
    },
    /// Pull the next item of the open stream; answered by a `Reply`.
    StreamNext {
        /// Request id.
        id: u64,
    },
    /// Drop the open stream (exactly once); answered by an empty `Reply`.
    StreamClose {
        /// Request id.
        id: u64,
    },
    /// Call client-streaming method `method`; the plugin pulls its input with `Pull`.
    ClientCall {
        /// Request id.
        id: u64,
        /// Vtable slot.
        method: u32,
        /// Arguments (bincode tuple of the non-stream arguments).
        payload: &'a [u8],
    },
    /// The host's answer to a `Callback`.
    CallbackReply {
        /// fidius status of the host function.
        status: i32,
        /// Its output bytes.
        payload: &'a [u8],
    },
    /// The host's answer to a `Pull`: status 0 with an item, or `-5` (end).
    Item {
        /// fidius status.
        status: i32,
        /// The item's bytes.
        payload: &'a [u8],
    },
}

/// Messages from worker to host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMsg<'a> {
    /// The plugin is loaded and constructed.
    Loaded(Box<PluginInfoWire>),
    /// The plugin could not be loaded; the worker exits next.
    LoadFailed(LoadFailure),
    /// A call completed with the plugin's status code and output.
    Reply {
        /// Request id of the call.
        id: u64,
        /// The plugin's raw status code.
        status: i32,
        /// The plugin's output bytes (for `-1`, 4 bytes: the size it needed).
        payload: &'a [u8],
    },
    /// A call failed because the plugin broke the ABI contract.
    Fault {
        /// Request id of the call.
        id: u64,
        /// What the plugin did.
        fault: CallFault,
    },
    /// The plugin called host function `index` of bound import `import` during
    /// the request in flight; the host answers with `CallbackReply`.
    Callback {
        /// Index into the load request's `host_imports`.
        import: u32,
        /// Function index within the interface.
        index: u32,
        /// Arguments (bincode tuple).
        payload: &'a [u8],
    },
    /// The plugin pulls the next item of its input stream; the host answers with `Item`.
    Pull,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    what: &'static str,
    len: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self {
            bytes,
            what,
            len: bytes.len(),
        }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.bytes.len() < N {
            return Err(DecodeError::Truncated {
                what: self.what,
                len: self.len,
            });
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        Ok(head.try_into().expect("split_at gave N bytes"))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.take::<4>().map(i32::from_le_bytes)
    }
    fn rest(self) -> &'a [u8] {
        self.bytes
    }
    fn end(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing { what: self.what, extra }),
        }
    }
}

fn split_tag(body: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    body.split_first().map(|(t, r)| (*t, r)).ok_or(DecodeError::Empty)
}

fn encode_bincode<T: Serialize>(tag: u8, value: &T, out: &mut Vec<u8>) {
    frame::begin(out);
    out.push(tag);
    // Serializing plain owned structs into a Vec cannot fail.
    wire::encode_into(value, out).expect("bincode encoding into a Vec is infallible");
    frame::finish(out);
}

/// The fixed prefix of a `Call` frame whose payload is `payload_len` bytes;
/// send it followed by the payload itself (no copy into a buffer).
pub fn call_prefix(id: u64, method: u32, payload_len: usize) -> [u8; CALL_PREFIX_LEN] {
    prefix(TAG_CALL, id, &method.to_le_bytes(), payload_len)
}

/// The fixed prefix of a `Reply` frame whose payload is `payload_len` bytes.
pub fn reply_prefix(id: u64, status: i32, payload_len: usize) -> [u8; REPLY_PREFIX_LEN] {
    prefix(TAG_REPLY, id, &status.to_le_bytes(), payload_len)
}

fn prefix(tag: u8, id: u64, word: &[u8; 4], payload_len: usize) -> [u8; CALL_PREFIX_LEN] {
    let body_len = (CALL_PREFIX_LEN - HEADER_LEN + payload_len) as u32;
    let mut p = [0u8; CALL_PREFIX_LEN];
    p[..4].copy_from_slice(&body_len.to_le_bytes());
    p[4] = tag;
    p[5..13].copy_from_slice(&id.to_le_bytes());
    p[13..17].copy_from_slice(word);
    p
}

impl<'a> HostMsg<'a> {
    /// Encodes the whole frame (header included) into `out`, replacing its contents.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            HostMsg::Load(req) => encode_bincode(TAG_LOAD, req, out),
            HostMsg::Call { id, method, payload } => {
                out.clear();
                out.extend_from_slice(&call_prefix(*id, *method, payload.len()));
                out.extend_from_slice(payload);
            }
            HostMsg::Shutdown => {
                frame::begin(out);
                out.push(TAG_SHUTDOWN);
                frame::finish(out);
            }
            HostMsg::StreamOpen {
                id,
                method,
                input,
                payload,
            } => {
                frame::begin(out);
                out.push(TAG_STREAM_OPEN);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&method.to_le_bytes());
                out.push(u8::from(*input));
                out.extend_from_slice(payload);
                frame::finish(out);
            }
            HostMsg::StreamNext { id } => {
                frame::begin(out);
                out.push(TAG_STREAM_NEXT);
                out.extend_from_slice(&id.to_le_bytes());
                frame::finish(out);
            }
            HostMsg::StreamClose { id } => {
                frame::begin(out);
                out.push(TAG_STREAM_CLOSE);
                out.extend_from_slice(&id.to_le_bytes());
                frame::finish(out);
            }
            HostMsg::ClientCall { id, method, payload } => {
                frame::begin(out);
                out.push(TAG_CLIENT_CALL);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&method.to_le_bytes());
                out.extend_from_slice(payload);
                frame::finish(out);
            }
            HostMsg::CallbackReply { status, payload } => {
                frame::begin(out);
                out.push(TAG_CALLBACK_REPLY);
                out.extend_from_slice(&status.to_le_bytes());
                out.extend_from_slice(payload);
                frame::finish(out);
            }
            HostMsg::Item { status, payload } => {
                frame::begin(out);
                out.push(TAG_ITEM);
                out.extend_from_slice(&status.to_le_bytes());
                out.extend_from_slice(payload);
                frame::finish(out);
            }
        }
    }

    /// Decodes a frame body (header already stripped).
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let (tag, rest) = split_tag(body)?;
        match tag {
            TAG_LOAD => Ok(HostMsg::Load(wire::decode(rest)?)),
            TAG_CALL => {
                let mut c = Cursor::new(rest, "call");
                let id = c.u64()?;
                let method = c.u32()?;
                Ok(HostMsg::Call {
                    id,
                    method,
                    payload: c.rest(),
                })
            }
            TAG_SHUTDOWN => Cursor::new(rest, "shutdown").end().map(|()| HostMsg::Shutdown),
            TAG_STREAM_OPEN => {
                let mut c = Cursor::new(rest, "stream open");
                let id = c.u64()?;
                let method = c.u32()?;
                let [flag] = c.take::<1>()?;
                Ok(HostMsg::StreamOpen {
                    id,
                    method,
                    input: flag != 0,
                    payload: c.rest(),
                })
            }
            TAG_STREAM_NEXT => {
                let mut c = Cursor::new(rest, "stream next");
                let id = c.u64()?;
                c.end().map(|()| HostMsg::StreamNext { id })
            }
            TAG_STREAM_CLOSE => {
                let mut c = Cursor::new(rest, "stream close");
                let id = c.u64()?;
                c.end().map(|()| HostMsg::StreamClose { id })
            }
            TAG_CLIENT_CALL => {
                let mut c = Cursor::new(rest, "client call");
                let id = c.u64()?;
                let method = c.u32()?;
                Ok(HostMsg::ClientCall {
                    id,
                    method,
                    payload: c.rest(),
                })
            }
            TAG_CALLBACK_REPLY => {
                let mut c = Cursor::new(rest, "callback reply");
                let status = c.i32()?;
                Ok(HostMsg::CallbackReply {
                    status,
                    payload: c.rest(),
                })
            }
            TAG_ITEM => {
                let mut c = Cursor::new(rest, "item");
                let status = c.i32()?;
                Ok(HostMsg::Item {
                    status,
                    payload: c.rest(),
                })
            }
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

impl<'a> WorkerMsg<'a> {
    /// Encodes the whole frame (header included) into `out`, replacing its contents.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            WorkerMsg::Loaded(info) => encode_bincode(TAG_LOADED, info, out),
            WorkerMsg::LoadFailed(why) => encode_bincode(TAG_LOAD_FAILED, why, out),
            WorkerMsg::Reply { id, status, payload } => {
                out.clear();
                out.extend_from_slice(&reply_prefix(*id, *status, payload.len()));
                out.extend_from_slice(payload);
            }
            WorkerMsg::Fault { id, fault } => {
                frame::begin(out);
                out.push(TAG_FAULT);
                out.extend_from_slice(&id.to_le_bytes());
                wire::encode_into(fault, out).expect("bincode encoding into a Vec is infallible");
                frame::finish(out);
            }
            WorkerMsg::Callback { import, index, payload } => {
                frame::begin(out);
                out.push(TAG_CALLBACK);
                out.extend_from_slice(&import.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(payload);
                frame::finish(out);
            }
            WorkerMsg::Pull => {
                frame::begin(out);
                out.push(TAG_PULL);
                frame::finish(out);
            }
        }
    }

    /// Decodes a frame body (header already stripped). The body is untrusted.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let (tag, rest) = split_tag(body)?;
        match tag {
            TAG_LOADED => Ok(WorkerMsg::Loaded(Box::new(wire::decode(rest)?))),
            TAG_LOAD_FAILED => Ok(WorkerMsg::LoadFailed(wire::decode(rest)?)),
            TAG_REPLY => {
                let mut c = Cursor::new(rest, "reply");
                let id = c.u64()?;
                let status = c.i32()?;
                Ok(WorkerMsg::Reply {
                    id,
                    status,
                    payload: c.rest(),
                })
            }
            TAG_FAULT => {
                let mut c = Cursor::new(rest, "fault");
                let id = c.u64()?;
                Ok(WorkerMsg::Fault {
                    id,
                    fault: wire::decode(c.rest())?,
                })
            }
            TAG_CALLBACK => {
                let mut c = Cursor::new(rest, "callback");
                let import = c.u32()?;
                let index = c.u32()?;
                Ok(WorkerMsg::Callback {
                    import,
                    index,
                    payload: c.rest(),
                })
            }
            TAG_PULL => Cursor::new(rest, "pull").end().map(|()| WorkerMsg::Pull),
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(buf: &[u8]) -> &[u8] {
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - HEADER_LEN, "header length matches body");
        &buf[HEADER_LEN..]
    }

    fn info() -> PluginInfoWire {
        PluginInfoWire {
            protocol_version: PROTOCOL_VERSION,
            abi_version: 500,
            plugin_name: "P".into(),
            interface_name: "I".into(),
            interface_hash: 0xfeed,
            interface_version: 3,
            capabilities: 0b101,
            buffer_strategy: BufferStrategy::Arena,
            method_count: 4,
            trait_metadata: vec![("k".into(), "v".into())],
            method_metadata: vec![vec![], vec![("a".into(), "b".into())]],
            plugins_in_library: vec!["P".into(), "Q".into()],
            shm: true,
            sandbox: SandboxReport::off(7),
            bound_imports: vec![0],
            unbound_imports: vec!["U".into()],
        }
    }

    #[test]
    fn host_messages_round_trip() {
        let mut buf = Vec::new();
        let msgs = [
            HostMsg::Load(LoadRequest {
                protocol_version: PROTOCOL_VERSION,
                path: b"/x/libp.so".to_vec(),
                plugin: Some("P".into()),
                config: vec![1, 2],
                arena_capacity: 4096,
                max_output: 1 << 20,
                shm_capacity: 0,
                sandbox: crate::sandbox::SandboxPolicy::none(),
                interface_hash: Some(7),
                library_fd: true,
                label: "P".into(),
                host_imports: vec![HostImportWire {
                    name: "H".into(),
                    hash: 1,
                    version: 2,
                    fn_count: 3,
                }],
                allow_unbound_imports: true,
            }),
            HostMsg::StreamOpen {
                id: 4,
                method: 2,
                input: true,
                payload: b"args",
            },
            HostMsg::StreamNext { id: 5 },
            HostMsg::StreamClose { id: 6 },
            HostMsg::ClientCall {
                id: 7,
                method: 1,
                payload: b"a",
            },
            HostMsg::CallbackReply {
                status: -3,
                payload: b"e",
            },
            HostMsg::Item {
                status: -5,
                payload: b"",
            },
            HostMsg::Call {
                id: u64::MAX,
                method: 3,
                payload: b"payload",
            },
            HostMsg::Call {
                id: 0,
                method: 0,
                payload: b"",
            },
            HostMsg::Shutdown,
        ];
        for msg in msgs {
            msg.encode(&mut buf);
            assert_eq!(HostMsg::decode(body(&buf)).unwrap(), msg);
        }
    }

    #[test]
    fn worker_messages_round_trip() {
        let mut buf = Vec::new();
        let msgs = [
            WorkerMsg::Loaded(Box::new(info())),
            WorkerMsg::LoadFailed(LoadFailure::AbiVersion {
                plugin: "P".into(),
                found: 600,
                supported: vec![500, 400],
            }),
            WorkerMsg::Reply {
                id: 9,
                status: -3,
                payload: b"err",
            },
            WorkerMsg::Fault {
                id: 10,
                fault: CallFault::ArenaOutOfBounds {
                    offset: 1,
                    len: 2,
                    capacity: 3,
                },
            },
            WorkerMsg::Callback {
                import: 1,
                index: 2,
                payload: b"xy",
            },
            WorkerMsg::Pull,
        ];
        for msg in msgs {
            msg.encode(&mut buf);
            assert_eq!(WorkerMsg::decode(body(&buf)).unwrap(), msg);
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(WorkerMsg::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(WorkerMsg::decode(&[0x42]), Err(DecodeError::UnknownTag(0x42)));
        assert_eq!(WorkerMsg::decode(&[TAG_CALL]), Err(DecodeError::UnknownTag(TAG_CALL)));
        assert!(matches!(
            WorkerMsg::decode(&[TAG_REPLY, 1, 2, 3]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            WorkerMsg::decode(&[TAG_LOADED, 1, 2, 3]),
            Err(DecodeError::Body(_))
        ));
        assert!(matches!(
            HostMsg::decode(&[TAG_SHUTDOWN, 0]),
            Err(DecodeError::Trailing { extra: 1, .. })
        ));
        assert_eq!(HostMsg::decode(&[TAG_REPLY]), Err(DecodeError::UnknownTag(TAG_REPLY)));
    }
}
