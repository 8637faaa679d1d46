//! The fidius C ABI: registry and descriptor layouts, and the shapes of the
//! function pointers a plugin exports.
//!
//! Facts come from `ABI.md` (verified against fidius 0.5.9 and 0.4.2 plugins on
//! x86_64 Linux); the layout tests at the bottom pin every size and offset.

use std::ffi::{c_char, c_void};

/// The symbol every fidius plugin library exports.
pub const REGISTRY_SYMBOL: &[u8] = b"fidius_get_registry\0";
/// `PluginRegistry::magic` of every valid registry.
pub const FIDIUS_MAGIC: [u8; 8] = *b"FIDIUS\0\0";
/// The only registry layout version that exists.
pub const REGISTRY_VERSION: u32 = 1;
/// `abi_version` of plugins built with fidius 0.5.x.
pub const ABI_500: u32 = 500;
/// `abi_version` of plugins built with fidius 0.4.x (no `construct`/`destroy`,
/// methods take no instance pointer).
pub const ABI_400: u32 = 400;
/// Every ABI version this crate can speak, newest first.
pub const SUPPORTED_ABI_VERSIONS: [u32; 2] = [ABI_500, ABI_400];
/// Size in bytes of an ABI 500 descriptor.
pub const DESCRIPTOR_SIZE_500: u32 = 120;
/// Size in bytes of an ABI 400 descriptor (the 104-byte prefix of the 500 layout).
pub const DESCRIPTOR_SIZE_400: u32 = 104;
/// The largest `method_count` we accept: far above any real interface, small
/// enough that a lying descriptor cannot make us walk gigabytes of "vtable".
pub const MAX_METHOD_COUNT: u32 = 4096;
/// The largest `plugin_count` we accept in one registry.
pub const MAX_PLUGIN_COUNT: u32 = 1024;

/// Status code: success; the output holds the bincode (or raw) return value.
pub const STATUS_OK: i32 = 0;
/// Status code: the arena was too small; `out_len` holds the size needed.
pub const STATUS_BUFFER_TOO_SMALL: i32 = -1;
/// Status code: the plugin could not (de)serialize arguments or result.
pub const STATUS_SERIALIZATION_ERROR: i32 = -2;
/// Status code: the method returned `Err(PluginError)`; output holds it.
pub const STATUS_PLUGIN_ERROR: i32 = -3;
/// Status code: the method panicked; PluginAllocated output holds the message.
pub const STATUS_PANIC: i32 = -4;
/// Status code: end of a server stream (streaming slots only).
pub const STATUS_STREAM_END: i32 = -5;

/// The table `fidius_get_registry` returns a pointer to.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginRegistry {
    /// Must equal [`FIDIUS_MAGIC`].
    pub magic: [u8; 8],
    /// Must equal [`REGISTRY_VERSION`].
    pub registry_version: u32,
    /// Number of entries in `descriptors`.
    pub plugin_count: u32,
    /// Array of `plugin_count` descriptor pointers.
    pub descriptors: *const *const PluginDescriptor,
}

/// One `key = value` metadata pair (both NUL-terminated C strings).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MetaKv {
    /// The key.
    pub key: *const c_char,
    /// The value.
    pub value: *const c_char,
}

/// Per-method metadata: `kv_count` pairs at `kvs`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MethodMetaEntry {
    /// Array of `kv_count` pairs.
    pub kvs: *const MetaKv,
    /// Number of pairs.
    pub kv_count: u32,
}

/// Releases a PluginAllocated output buffer: `(ptr, len)`.
pub type FreeBufferFn = unsafe extern "C" fn(*mut u8, usize);
/// Builds a plugin instance from bincode config bytes; NULL means bad config.
pub type ConstructFn = unsafe extern "C" fn(*const u8, u32) -> *mut c_void;
/// Destroys an instance returned by [`ConstructFn`].
pub type DestroyFn = unsafe extern "C" fn(*mut c_void);
/// ABI 500 PluginAllocated method: `(inst, in, in_len, out, out_len) -> status`.
pub type AllocMethod500 = unsafe extern "C" fn(*mut c_void, *const u8, u32, *mut *mut u8, *mut u32) -> i32;
/// ABI 500 Arena method: `(inst, in, in_len, arena, cap, out_off, out_len) -> status`.
pub type ArenaMethod500 = unsafe extern "C" fn(*mut c_void, *const u8, u32, *mut u8, u32, *mut u32, *mut u32) -> i32;
/// ABI 400 PluginAllocated method: no instance pointer.
pub type AllocMethod400 = unsafe extern "C" fn(*const u8, u32, *mut *mut u8, *mut u32) -> i32;
/// ABI 400 Arena method: no instance pointer.
pub type ArenaMethod400 = unsafe extern "C" fn(*const u8, u32, *mut u8, u32, *mut u32, *mut u32) -> i32;

/// The ABI 500 plugin descriptor. ABI 400 descriptors are its first
/// [`DESCRIPTOR_SIZE_400`] bytes; a loader copies only `descriptor_size` bytes
/// into a zeroed value of this type, so absent trailing fields read as NULL.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginDescriptor {
    /// Size of the descriptor the plugin actually provides; read it first.
    pub descriptor_size: u32,
    /// `MAJOR*10000 + MINOR*100` of the fidius-core that built the plugin.
    pub abi_version: u32,
    /// The interface (trait) name.
    pub interface_name: *const c_char,
    /// FNV-1a hash of the interface's required method signatures.
    pub interface_hash: u64,
    /// The interface's declared version.
    pub interface_version: u32,
    /// Bit N set = the Nth optional method is implemented.
    pub capabilities: u64,
    /// 1 = PluginAllocated, 2 = Arena; anything else is invalid.
    pub buffer_strategy: u8,
    /// The implementing type's name; plugins are looked up by it.
    pub plugin_name: *const c_char,
    /// Array of `method_count` function pointers.
    pub vtable: *const c_void,
    /// Frees PluginAllocated output; NULL for Arena plugins.
    pub free_buffer: Option<FreeBufferFn>,
    /// Number of vtable slots.
    pub method_count: u32,
    /// `method_count` entries of per-method metadata, or NULL.
    pub method_metadata: *const MethodMetaEntry,
    /// `trait_metadata_count` interface-level pairs, or NULL.
    pub trait_metadata: *const MetaKv,
    /// Number of pairs at `trait_metadata`.
    pub trait_metadata_count: u32,
    /// ABI 500 only: builds an instance from config bytes.
    pub construct: Option<ConstructFn>,
    /// ABI 500 only: destroys an instance.
    pub destroy: Option<DestroyFn>,
}

/// How a plugin hands its output back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BufferStrategy {
    /// The plugin allocates the output and the caller releases it with `free_buffer`.
    PluginAllocated,
    /// The caller lends an arena; the plugin writes into it and reports offset/length.
    Arena,
}

impl BufferStrategy {
    /// Decodes the descriptor byte; `None` for anything but 1 or 2.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::PluginAllocated),
            2 => Some(Self::Arena),
            _ => None,
        }
    }

    /// The descriptor byte for this strategy.
    pub fn to_raw(self) -> u8 {
        match self {
            Self::PluginAllocated => 1,
            Self::Arena => 2,
        }
    }
}

/// The minimum `descriptor_size` a descriptor of `abi_version` must declare,
/// or `None` if the version is unsupported.
pub fn min_descriptor_size(abi_version: u32) -> Option<u32> {
    match abi_version {
        ABI_500 => Some(DESCRIPTOR_SIZE_500),
        ABI_400 => Some(DESCRIPTOR_SIZE_400),
        _ => None,
    }
}

/// Status a host function returns when its interface is not bound (fidius' `HOST_CALL_STATUS_NOT_BOUND`).
pub const HOST_CALL_NOT_BOUND: i32 = -7;
/// Status for an out-of-range host function index (fidius' `STATUS_INVALID_INDEX`).
pub const STATUS_INVALID_INDEX: i32 = -6;
/// Export naming the plugin's host-import registry (fidius >= 0.5.7, optional).
pub const HOST_IMPORTS_SYMBOL: &[u8] = b"fidius_get_host_imports\0";
/// `registry_version` of a host-import registry.
pub const HOST_IMPORTS_VERSION: u32 = 1;
/// Most host imports read from one registry.
pub const MAX_HOST_IMPORTS: u32 = 64;

/// A stream handle (fidius `FidiusStreamHandle`, 24 bytes): built by the plugin
/// for a server stream, by the worker for the input of a client stream.
#[repr(C)]
pub struct StreamHandle {
    /// `next(handle, buf, cap, &out_len) -> status`: 0 item in `buf[..out_len]`,
    /// -5 end, -1 `out_len` = size needed (the item is kept for the retry).
    pub next: StreamNextFn,
    /// Drops the producer and frees the handle; called exactly once.
    pub drop_fn: StreamDropFn,
    /// Producer state, owned by whoever built the handle.
    pub state: *mut c_void,
}

/// A stream handle's `next`.
pub type StreamNextFn = unsafe extern "C" fn(*mut StreamHandle, *mut u8, u32, *mut u32) -> i32;
/// A stream handle's `drop_fn`.
pub type StreamDropFn = unsafe extern "C" fn(*mut StreamHandle);
/// A client-streaming (or bidirectional) slot: the input handle comes second.
pub type ClientStreamMethod =
    unsafe extern "C" fn(*mut c_void, *mut StreamHandle, *const u8, u32, *mut *mut u8, *mut u32) -> i32;

/// The plugin's list of host interfaces it imports (fidius `HostImportRegistry`, 24 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HostImportRegistry {
    /// [`FIDIUS_MAGIC`].
    pub magic: [u8; 8],
    /// [`HOST_IMPORTS_VERSION`].
    pub registry_version: u32,
    /// Number of entries in `imports`.
    pub import_count: u32,
    /// `import_count` pointers to descriptors.
    pub imports: *const *const HostImportDescriptor,
}

/// One imported host interface (fidius `HostImportDescriptor`, 40 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HostImportDescriptor {
    /// Size of this struct as the plugin built it (read first).
    pub descriptor_size: u32,
    /// 500.
    pub abi_version: u32,
    /// Interface (trait) name, NUL-terminated.
    pub interface_name: *const c_char,
    /// Signature hash the plugin was built against.
    pub interface_hash: u64,
    /// Version the plugin was built against.
    pub interface_version: u32,
    /// Installs a [`HostFunctionTable`]; returns 0 or a `BIND_ERR_*` code (< 0).
    pub bind: unsafe extern "C" fn(*const HostFunctionTable) -> i32,
}

/// Host function dispatch: `(ctx, index, in, in_len, &out, &out_len) -> status`.
pub type HostDispatchFn = unsafe extern "C" fn(*mut c_void, u32, *const u8, u32, *mut *mut u8, *mut u32) -> i32;

/// The table a host hands to a plugin's bind shim (fidius `HostFunctionTable`, 56 bytes).
/// The plugin keeps the pointer for the life of the process.
#[repr(C)]
pub struct HostFunctionTable {
    /// Size of this struct.
    pub table_size: u32,
    /// 500.
    pub abi_version: u32,
    /// Interface name, NUL-terminated.
    pub interface_name: *const c_char,
    /// Signature hash (must equal the plugin's).
    pub interface_hash: u64,
    /// Version (must equal the plugin's).
    pub interface_version: u32,
    /// Number of functions (must equal the plugin's).
    pub fn_count: u32,
    /// Passed back as `dispatch`'s first argument.
    pub ctx: *mut c_void,
    /// The one entry point.
    pub dispatch: HostDispatchFn,
    /// Frees buffers `dispatch` returned.
    pub free_buffer: FreeBufferFn,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn registry_layout() {
        assert_eq!(size_of::<PluginRegistry>(), 24);
        assert_eq!(align_of::<PluginRegistry>(), 8);
        assert_eq!(offset_of!(PluginRegistry, magic), 0);
        assert_eq!(offset_of!(PluginRegistry, registry_version), 8);
        assert_eq!(offset_of!(PluginRegistry, plugin_count), 12);
        assert_eq!(offset_of!(PluginRegistry, descriptors), 16);
    }

    #[test]
    fn descriptor_layout_abi_500() {
        assert_eq!(size_of::<PluginDescriptor>(), DESCRIPTOR_SIZE_500 as usize);
        assert_eq!(align_of::<PluginDescriptor>(), 8);
        assert_eq!(offset_of!(PluginDescriptor, descriptor_size), 0);
        assert_eq!(offset_of!(PluginDescriptor, abi_version), 4);
        assert_eq!(offset_of!(PluginDescriptor, interface_name), 8);
        assert_eq!(offset_of!(PluginDescriptor, interface_hash), 16);
        assert_eq!(offset_of!(PluginDescriptor, interface_version), 24);
        assert_eq!(offset_of!(PluginDescriptor, capabilities), 32);
        assert_eq!(offset_of!(PluginDescriptor, buffer_strategy), 40);
        assert_eq!(offset_of!(PluginDescriptor, plugin_name), 48);
        assert_eq!(offset_of!(PluginDescriptor, vtable), 56);
        assert_eq!(offset_of!(PluginDescriptor, free_buffer), 64);
        assert_eq!(offset_of!(PluginDescriptor, method_count), 72);
        assert_eq!(offset_of!(PluginDescriptor, method_metadata), 80);
        assert_eq!(offset_of!(PluginDescriptor, trait_metadata), 88);
        assert_eq!(offset_of!(PluginDescriptor, trait_metadata_count), 96);
        assert_eq!(offset_of!(PluginDescriptor, construct), 104);
        assert_eq!(offset_of!(PluginDescriptor, destroy), 112);
    }

    #[test]
    fn descriptor_abi_400_is_the_prefix_before_construct() {
        assert_eq!(offset_of!(PluginDescriptor, construct), DESCRIPTOR_SIZE_400 as usize);
        assert_eq!(min_descriptor_size(ABI_400), Some(104));
        assert_eq!(min_descriptor_size(ABI_500), Some(120));
        assert_eq!(min_descriptor_size(600), None);
    }

    #[test]
    fn stream_and_host_import_layouts() {
        assert_eq!(size_of::<StreamHandle>(), 24);
        assert_eq!(offset_of!(StreamHandle, drop_fn), 8);
        assert_eq!(offset_of!(StreamHandle, state), 16);
        assert_eq!(size_of::<HostImportRegistry>(), 24);
        assert_eq!(offset_of!(HostImportRegistry, imports), 16);
        assert_eq!(size_of::<HostImportDescriptor>(), 40);
        assert_eq!(offset_of!(HostImportDescriptor, interface_hash), 16);
        assert_eq!(offset_of!(HostImportDescriptor, interface_version), 24);
        assert_eq!(offset_of!(HostImportDescriptor, bind), 32);
        assert_eq!(size_of::<HostFunctionTable>(), 56);
        assert_eq!(offset_of!(HostFunctionTable, fn_count), 28);
        assert_eq!(offset_of!(HostFunctionTable, ctx), 32);
        assert_eq!(offset_of!(HostFunctionTable, dispatch), 40);
        assert_eq!(offset_of!(HostFunctionTable, free_buffer), 48);
    }

    #[test]
    fn metadata_layouts() {
        assert_eq!(size_of::<MetaKv>(), 16);
        assert_eq!(offset_of!(MetaKv, value), 8);
        assert_eq!(size_of::<MethodMetaEntry>(), 16);
        assert_eq!(offset_of!(MethodMetaEntry, kv_count), 8);
    }

    #[test]
    fn function_pointers_are_nullable_words() {
        assert_eq!(size_of::<Option<FreeBufferFn>>(), 8);
        assert_eq!(size_of::<Option<ConstructFn>>(), 8);
        assert_eq!(size_of::<Option<DestroyFn>>(), 8);
    }

    #[test]
    fn buffer_strategy_bytes() {
        assert_eq!(BufferStrategy::from_raw(1), Some(BufferStrategy::PluginAllocated));
        assert_eq!(BufferStrategy::from_raw(2), Some(BufferStrategy::Arena));
        assert_eq!(BufferStrategy::from_raw(0), None);
        assert_eq!(BufferStrategy::from_raw(3), None);
        for s in [BufferStrategy::PluginAllocated, BufferStrategy::Arena] {
            assert_eq!(BufferStrategy::from_raw(s.to_raw()), Some(s));
        }
    }
}
