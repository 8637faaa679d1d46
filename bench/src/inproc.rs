//! The in-process baseline: the same fidius plugin, dlopened into this process
//! and called through its vtable directly — what fidius itself does, and what
//! bulkhead's isolation is measured against.

use std::ffi::c_void;

use bulkhead_shared::abi::{AllocMethod500, FreeBufferFn, PluginDescriptor, PluginRegistry, REGISTRY_SYMBOL};
use libloading::os::unix::{Library, Symbol};

/// A PluginAllocated ABI-500 plugin loaded in-process (the bench trusts it).
pub struct InProc {
    _lib: Library,
    inst: *mut c_void,
    vtable: *const *const c_void,
    method_count: u32,
    free: FreeBufferFn,
}

impl InProc {
    /// Loads the first plugin of the library at `path`.
    pub fn load(path: &std::path::Path) -> InProc {
        // SAFETY: the bench's own fixture plugin; its initialisers are benign.
        let lib = unsafe { Library::new(path) }.expect("dlopen fixture");
        // SAFETY: fidius' registry getter signature.
        let get: Symbol<unsafe extern "C" fn() -> *const PluginRegistry> =
            unsafe { lib.get(REGISTRY_SYMBOL) }.expect("registry symbol");
        // SAFETY: a valid fidius registry with at least one descriptor (our fixture).
        let desc: PluginDescriptor = unsafe { (*(*get()).descriptors).read() };
        let construct = desc.construct.expect("ABI 500 construct");
        // SAFETY: zero-config plugin: empty config, non-NULL pointer.
        let inst = unsafe { construct([].as_ptr(), 0) };
        InProc {
            _lib: lib,
            inst,
            vtable: desc.vtable.cast(),
            method_count: desc.method_count,
            free: desc.free_buffer.expect("PluginAllocated free_buffer"),
        }
    }

    /// Calls `slot` with `input`; copies the output into `out` (as a host must)
    /// and frees the plugin's buffer. Returns the status code.
    pub fn call(&self, slot: u32, input: &[u8], out: &mut Vec<u8>) -> i32 {
        assert!(slot < self.method_count);
        // SAFETY: slot < method_count; a fidius PluginAllocated ABI-500 method.
        let f: AllocMethod500 = unsafe { std::mem::transmute(self.vtable.add(slot as usize).read()) };
        let (mut p, mut n) = (std::ptr::null_mut(), 0u32);
        // SAFETY: fidius calling convention; input is non-NULL and valid.
        let status = unsafe { f(self.inst, input.as_ptr(), input.len() as u32, &mut p, &mut n) };
        out.clear();
        if !p.is_null() {
            // SAFETY: the plugin returned a buffer of n bytes that we free once below.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n as usize) });
            // SAFETY: returning the plugin's own buffer to it.
            unsafe { (self.free)(p, n as usize) };
        }
        status
    }
}
