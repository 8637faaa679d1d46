//! Reading a C string a plugin hands over (names, metadata): bounded in
//! length and checked as UTF-8, never trusted to be terminated.

use std::ffi::c_char;

/// Longest C string (names, metadata) we read from a plugin.
const MAX_CSTR: usize = 4096;

/// Reads a NUL-terminated string of at most [`MAX_CSTR`] bytes as UTF-8.
pub(crate) fn read_cstr(ptr: *const c_char) -> Result<String, String> {
    if ptr.is_null() {
        return Err("is NULL".into());
    }
    let mut bytes = Vec::new();
    for i in 0..MAX_CSTR {
        // SAFETY: reading byte by byte up to the terminator or the bound; the
        // plugin promised a C string here and a lie faults only this worker.
        let b = unsafe { ptr.add(i).cast::<u8>().read() };
        if b == 0 {
            return String::from_utf8(bytes).map_err(|e| format!("is not UTF-8 ({e})"));
        }
        bytes.push(b);
    }
    Err(format!("is not NUL-terminated within {MAX_CSTR} bytes"))
}
