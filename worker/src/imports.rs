//! Host callbacks: binding the host interfaces a plugin imports
//! (`fidius_get_host_imports`) to tables whose `dispatch` forwards every call
//! to the host over the [`channel`](crate::channel), and the buffers handed back.
//!
//! Every import must match an interface the host registered, by name, hash and
//! version, or the plugin is refused — unless the host allows unbound imports:
//! then one whose name the host does not offer is left unbound (the plugin
//! sees `NotBound`, as with fidius' host). Tables are leaked on purpose: the plugin
//! keeps the pointer for the life of the process.

use std::ffi::{c_void, CString};

use bulkhead_shared::abi::{
    HostFunctionTable, HostImportDescriptor, HostImportRegistry, ABI_500, FIDIUS_MAGIC, HOST_CALL_NOT_BOUND,
    HOST_IMPORTS_SYMBOL, HOST_IMPORTS_VERSION, MAX_HOST_IMPORTS, STATUS_SERIALIZATION_ERROR,
};
use bulkhead_shared::protocol::{HostImportWire, HostMsg, LoadFailure, WorkerMsg};
use libloading::os::unix::{Library, Symbol};

use crate::channel;

/// Smallest descriptor layout we read (fidius 0.5.7+: 40 bytes).
const MIN_IMPORT_DESCRIPTOR: u32 = 40;

/// Binds every import of `lib`; returns the indices (into `offered`) bound and
/// the names of the imports left unbound (only with `allow_unbound`).
pub fn bind_all(
    lib: &Library,
    offered: &[HostImportWire],
    allow_unbound: bool,
) -> Result<(Vec<u32>, Vec<String>), LoadFailure> {
    let bad = |reason: String| LoadFailure::BadImports { reason };
    // SAFETY: the optional getter's documented signature; absence is fine.
    let getter: Symbol<unsafe extern "C" fn() -> *const HostImportRegistry> =
        match unsafe { lib.get(HOST_IMPORTS_SYMBOL) } {
            Ok(g) => g,
            Err(_) => return Ok((Vec::new(), Vec::new())),
        };
    // SAFETY: calling the exported getter; it takes no arguments.
    let reg_ptr = unsafe { getter() };
    if reg_ptr.is_null() {
        return Err(bad("fidius_get_host_imports returned NULL".into()));
    }
    // SAFETY: a non-NULL pointer from the plugin, read unaligned; a wild one faults this worker only.
    let reg = unsafe { reg_ptr.read_unaligned() };
    if reg.magic != FIDIUS_MAGIC {
        return Err(bad(format!("bad magic {:02x?}", reg.magic)));
    }
    if reg.registry_version != HOST_IMPORTS_VERSION {
        return Err(bad(format!("registry version {}", reg.registry_version)));
    }
    if reg.import_count > MAX_HOST_IMPORTS {
        return Err(bad(format!(
            "{} imports (at most {MAX_HOST_IMPORTS})",
            reg.import_count
        )));
    }
    if reg.import_count > 0 && reg.imports.is_null() {
        return Err(bad("NULL import table".into()));
    }
    let mut bound = Vec::new();
    let mut unbound = Vec::new();
    for i in 0..reg.import_count as usize {
        // SAFETY: i < import_count, the table length the registry declares.
        let dptr = unsafe { reg.imports.add(i).read_unaligned() };
        if dptr.is_null() {
            return Err(bad(format!("import {i} is NULL")));
        }
        // SAFETY: the first field of every descriptor layout is its size.
        let size = unsafe { dptr.cast::<u32>().read_unaligned() };
        if size < MIN_IMPORT_DESCRIPTOR {
            return Err(bad(format!("import {i} declares size {size}")));
        }
        // SAFETY: the descriptor holds at least the 40 bytes of this layout (checked).
        let d: HostImportDescriptor = unsafe { dptr.read_unaligned() };
        let name = crate::cstr::read_cstr(d.interface_name).map_err(|r| bad(format!("import {i} name {r}")))?;
        if d.abi_version != ABI_500 {
            return Err(bad(format!("import `{name}` has ABI version {}", d.abi_version)));
        }
        let Some(idx) = offered.iter().position(|o| o.name == name) else {
            if allow_unbound {
                // Left unbound: the plugin's calls of it answer NotBound.
                unbound.push(name);
                continue;
            }
            return Err(LoadFailure::ImportNotProvided {
                name,
                hash: d.interface_hash,
                version: d.interface_version,
            });
        };
        let host = &offered[idx];
        if host.hash != d.interface_hash || host.version != d.interface_version {
            return Err(LoadFailure::ImportMismatch {
                name,
                plugin_hash: d.interface_hash,
                plugin_version: d.interface_version,
                host_hash: host.hash,
                host_version: host.version,
            });
        }
        let cname = CString::new(name.clone()).map_err(|_| bad("name with NUL".into()))?;
        let table = Box::leak(Box::new(HostFunctionTable {
            table_size: std::mem::size_of::<HostFunctionTable>() as u32,
            abi_version: ABI_500,
            interface_name: cname.into_raw(),
            interface_hash: host.hash,
            interface_version: host.version,
            fn_count: host.fn_count,
            ctx: idx as *mut c_void,
            dispatch: forward,
            free_buffer: free_reply,
        }));
        // SAFETY: the plugin's bind shim with a valid, process-lifetime table.
        let code = unsafe { (d.bind)(table) };
        if code != 0 {
            return Err(LoadFailure::ImportBind { name, code });
        }
        bound.push(idx as u32);
    }
    Ok((bound, unbound))
}

/// The `dispatch` of every table: forwards the call to the host and returns
/// its status and output (a buffer the plugin frees with [`free_reply`]).
unsafe extern "C" fn forward(
    ctx: *mut c_void,
    index: u32,
    in_ptr: *const u8,
    in_len: u32,
    out_ptr: *mut *mut u8,
    out_len: *mut u32,
) -> i32 {
    if out_ptr.is_null() || out_len.is_null() {
        return STATUS_SERIALIZATION_ERROR;
    }
    let input: &[u8] = if in_ptr.is_null() || in_len == 0 {
        &[]
    } else {
        // SAFETY: the plugin passes its argument bytes, valid for in_len bytes.
        unsafe { std::slice::from_raw_parts(in_ptr, in_len as usize) }
    };
    let msg = WorkerMsg::Callback {
        import: ctx as usize as u32,
        index,
        payload: input,
    };
    let answer = channel::exchange(msg, |reply| match reply {
        HostMsg::CallbackReply { status, payload } => (status, payload.to_vec()),
        _ => (HOST_CALL_NOT_BOUND, Vec::new()),
    });
    let (status, bytes) = answer.unwrap_or((HOST_CALL_NOT_BOUND, Vec::new()));
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    let ptr = if len == 0 {
        std::ptr::null_mut()
    } else {
        Box::into_raw(boxed).cast::<u8>()
    };
    // SAFETY: both out-pointers were checked non-NULL above.
    unsafe {
        *out_ptr = ptr;
        *out_len = len as u32;
    }
    status
}

/// Frees a buffer returned by [`forward`].
unsafe extern "C" fn free_reply(ptr: *mut u8, len: usize) {
    if !ptr.is_null() && len > 0 {
        // SAFETY: `ptr`/`len` describe a boxed slice `forward` leaked, freed once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
    }
}
