//! Every line of FFI in bulkhead: dlopen, the registry walk, descriptor
//! validation, `construct`/`destroy` and vtable dispatch for both buffer
//! strategies. Nothing the plugin hands back is trusted: pointers are checked
//! for NULL, counts are capped, strings are length-bounded and UTF-8-checked,
//! Arena ranges are bounds-checked, and a descriptor is never read past its
//! declared `descriptor_size`.

use std::ffi::c_void;
use std::io::Read;
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::atomic::Ordering;

use bulkhead_shared::abi::{
    self, AllocMethod400, AllocMethod500, ArenaMethod400, ArenaMethod500, BufferStrategy, MetaKv, MethodMetaEntry,
    PluginDescriptor, PluginRegistry, StreamHandle, ABI_400, ABI_500, FIDIUS_MAGIC, MAX_METHOD_COUNT, MAX_PLUGIN_COUNT,
    REGISTRY_SYMBOL, REGISTRY_VERSION, STATUS_BUFFER_TOO_SMALL, STATUS_OK,
};
use bulkhead_shared::protocol::{CallFault, LoadFailure, LoadRequest, PluginInfoWire, PROTOCOL_VERSION};
use libloading::os::unix::{Library, Symbol, RTLD_LOCAL, RTLD_NOW};

use crate::cstr::read_cstr;

mod copy;

/// Most metadata pairs we read per table.
const MAX_META: u32 = 256;

/// Result of one call: the plugin's status and output, or a contract violation.
pub enum Outcome<'a> {
    /// The plugin returned `status` with these output bytes.
    Status {
        /// Raw status code.
        status: i32,
        /// Output bytes (plugin memory or the arena), valid during the callback.
        output: &'a [u8],
    },
    /// The plugin broke the ABI contract.
    Fault(CallFault),
}

/// A loaded, constructed plugin instance.
pub struct Plugin {
    pub(crate) desc: PluginDescriptor,
    pub(crate) abi: u32,
    pub(crate) strategy: BufferStrategy,
    pub(crate) inst: *mut c_void,
    /// The open server (or bidirectional) stream, if any.
    pub(crate) stream: Option<*mut abi::StreamHandle>,
    /// The method slot that opened [`stream`](Self::stream), for the reports.
    pub(crate) stream_method: u32,
    /// Buffer the stream's items are written into; grows on demand.
    pub(crate) stream_buf: Vec<u8>,
    /// The worker's own arena (used when no area is lent or it is too small).
    arena: Vec<u8>,
    /// Current arena size; starts at the requested capacity, grows on demand.
    arena_cap: usize,
    pub(crate) max_output: u32,
    // Dropped last: every pointer above points into it.
    _lib: Library,
}

/// Loads, validates and constructs the plugin `req` describes, from `path`
/// (the request's path, or the verified memfd's `/proc/self/fd/N`).
pub fn load(req: &LoadRequest, path: &Path) -> Result<(Plugin, PluginInfoWire), LoadFailure> {
    check_elf(path)?;

    // SAFETY: dlopen runs the library's initialisers, which is plugin code. That is
    // the point of this process: whatever it does is contained here and observed
    // by the host. RTLD_NOW surfaces unresolved symbols as a load error.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .map_err(|e| LoadFailure::Dlopen { message: e.to_string() })?;

    let reg = open_registry(&lib)?;
    let (desc, plugin_name, names) = choose(&reg, req)?;
    let bad = |reason: String| LoadFailure::BadDescriptor {
        plugin: plugin_name.clone(),
        reason,
    };

    let Checked {
        strategy,
        interface_name,
        trait_metadata,
        method_metadata,
    } = check_descriptor(&desc, &bad)?;
    if let Some(expected) = req.interface_hash {
        if expected != desc.interface_hash {
            return Err(LoadFailure::InterfaceMismatch {
                plugin: plugin_name,
                expected,
                found: desc.interface_hash,
            });
        }
    }
    let (bound_imports, unbound_imports) =
        crate::imports::bind_all(&lib, &req.host_imports, req.allow_unbound_imports)?;

    let inst = construct(&desc, req, &plugin_name, &bad)?;

    let info = PluginInfoWire {
        protocol_version: PROTOCOL_VERSION,
        abi_version: desc.abi_version,
        plugin_name,
        interface_name,
        interface_hash: desc.interface_hash,
        interface_version: desc.interface_version,
        capabilities: desc.capabilities,
        buffer_strategy: strategy,
        method_count: desc.method_count,
        trait_metadata,
        method_metadata,
        plugins_in_library: names,
        shm: false,
        sandbox: bulkhead_shared::sandbox::SandboxReport::off(0),
        bound_imports,
        unbound_imports,
    };
    let arena = vec![
        0u8;
        if strategy == BufferStrategy::Arena {
            req.arena_capacity as usize
        } else {
            0
        }
    ];
    let plugin = Plugin {
        abi: desc.abi_version,
        desc,
        strategy,
        inst,
        stream: None,
        stream_method: u32::MAX,
        stream_buf: Vec::new(),
        arena,
        arena_cap: req.arena_capacity as usize,
        max_output: req.max_output,
        _lib: lib,
    };
    Ok((plugin, info))
}

/// The library's plugin registry, read and checked (magic, version, plugin
/// count, table pointer).
fn open_registry(lib: &Library) -> Result<PluginRegistry, LoadFailure> {
    // SAFETY: the type is the registry getter's documented signature; if the
    // plugin lies about it, the damage is confined to this worker.
    let getter: Symbol<unsafe extern "C" fn() -> *const PluginRegistry> =
        unsafe { lib.get(REGISTRY_SYMBOL) }.map_err(|e| LoadFailure::SymbolMissing {
            symbol: "fidius_get_registry".into(),
            message: e.to_string(),
        })?;
    // SAFETY: calling the exported getter; it takes no arguments.
    let reg_ptr = unsafe { getter() };
    if reg_ptr.is_null() {
        return Err(LoadFailure::NullRegistry);
    }
    // SAFETY: non-NULL pointer from the plugin to its registry; read unaligned so a
    // misaligned lie is not UB. A wild pointer faults here, inside the worker.
    let reg = unsafe { reg_ptr.read_unaligned() };
    if reg.magic != FIDIUS_MAGIC {
        return Err(LoadFailure::BadMagic { found: reg.magic });
    }
    if reg.registry_version != REGISTRY_VERSION {
        return Err(LoadFailure::RegistryVersion {
            found: reg.registry_version,
            supported: REGISTRY_VERSION,
        });
    }
    if reg.plugin_count == 0 {
        return Err(LoadFailure::NoPlugins);
    }
    if reg.plugin_count > MAX_PLUGIN_COUNT {
        return Err(LoadFailure::BadRegistry {
            reason: format!("plugin_count {} exceeds {MAX_PLUGIN_COUNT}", reg.plugin_count),
        });
    }
    if reg.descriptors.is_null() {
        return Err(LoadFailure::BadRegistry {
            reason: "descriptor table is NULL".into(),
        });
    }

    Ok(reg)
}

/// Every descriptor of the registry, and the one `req` asks for (by name, or
/// the only one) with its name and the names of all.
fn choose(reg: &PluginRegistry, req: &LoadRequest) -> Result<(PluginDescriptor, String, Vec<String>), LoadFailure> {
    let mut descs = Vec::with_capacity(reg.plugin_count as usize);
    for i in 0..reg.plugin_count {
        // SAFETY: i < plugin_count, the length the registry declares for its table.
        let dptr = unsafe { reg.descriptors.add(i as usize).read_unaligned() };
        descs.push(read_descriptor(dptr, i)?);
    }
    let names: Vec<String> = descs.iter().map(|(_, n)| n.clone()).collect();
    let chosen = match &req.plugin {
        Some(want) => descs
            .iter()
            .position(|(_, n)| n == want)
            .ok_or_else(|| LoadFailure::PluginNotFound {
                requested: want.clone(),
                available: names.clone(),
            })?,
        None if descs.len() == 1 => 0,
        None => return Err(LoadFailure::Ambiguous { available: names }),
    };
    let (desc, plugin_name) = descs.swap_remove(chosen);
    Ok((desc, plugin_name, names))
}

/// What a descriptor's validation yields.
struct Checked {
    strategy: BufferStrategy,
    interface_name: String,
    trait_metadata: Vec<(String, String)>,
    method_metadata: Vec<Vec<(String, String)>>,
}

/// Validates the chosen descriptor: buffer strategy, method count, vtable,
/// the functions its strategy and ABI require, and its strings.
fn check_descriptor(desc: &PluginDescriptor, bad: &dyn Fn(String) -> LoadFailure) -> Result<Checked, LoadFailure> {
    let strategy = BufferStrategy::from_raw(desc.buffer_strategy)
        .ok_or_else(|| bad(format!("buffer_strategy {} (expected 1 or 2)", desc.buffer_strategy)))?;
    if desc.method_count > MAX_METHOD_COUNT {
        return Err(bad(format!(
            "method_count {} exceeds {MAX_METHOD_COUNT}",
            desc.method_count
        )));
    }
    if desc.vtable.is_null() && desc.method_count > 0 {
        return Err(bad("vtable is NULL".into()));
    }
    if strategy == BufferStrategy::PluginAllocated && desc.free_buffer.is_none() {
        return Err(bad("PluginAllocated plugin without free_buffer".into()));
    }
    if desc.abi_version == ABI_500 && desc.construct.is_none() {
        return Err(bad("ABI 500 plugin without construct".into()));
    }
    let interface_name = read_cstr(desc.interface_name).map_err(|r| bad(format!("interface_name {r}")))?;
    let trait_metadata =
        read_meta(desc.trait_metadata, desc.trait_metadata_count).map_err(|r| bad(format!("trait metadata {r}")))?;
    let method_metadata = read_method_meta(desc).map_err(|r| bad(format!("method metadata {r}")))?;
    Ok(Checked {
        strategy,
        interface_name,
        trait_metadata,
        method_metadata,
    })
}

/// Constructs the plugin instance with the request's config (ABI 500), or
/// none (older ABIs have no instance).
fn construct(
    desc: &PluginDescriptor,
    req: &LoadRequest,
    plugin_name: &str,
    bad: &dyn Fn(String) -> LoadFailure,
) -> Result<*mut c_void, LoadFailure> {
    Ok(match desc.construct {
        Some(construct) if desc.abi_version == ABI_500 => {
            let cfg_len = u32::try_from(req.config.len())
                .map_err(|_| bad(format!("config of {} bytes exceeds u32", req.config.len())))?;
            // SAFETY: fidius' construct signature; `config.as_ptr()` is never NULL
            // (an empty Vec gives a dangling, non-NULL pointer) and is valid for
            // cfg_len bytes.
            let inst = unsafe { construct(req.config.as_ptr(), cfg_len) };
            if inst.is_null() {
                return Err(LoadFailure::ConstructFailed {
                    plugin: plugin_name.to_string(),
                });
            }
            inst
        }
        _ => std::ptr::null_mut(),
    })
}

/// Rejects directories, empty/text files, non-ELF, foreign-architecture and
/// truncated files with a precise reason before dlopen sees them (a truncated
/// library would otherwise die of SIGBUS inside the dynamic loader).
fn check_elf(path: &Path) -> Result<(), LoadFailure> {
    use std::io::{Seek, SeekFrom};
    let unreadable = |e: std::io::Error| LoadFailure::FileUnreadable { message: e.to_string() };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(LoadFailure::NotAFile);
    }
    let size = meta.len();
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let mut head = [0u8; 64];
    let got = read_up_to(&mut f, &mut head).map_err(unreadable)?;
    let not_elf = |reason: String| Err(LoadFailure::NotElf { reason });
    if got < 20 {
        return not_elf(format!("file is {got} bytes, shorter than an ELF header"));
    }
    if head[..4] != *b"\x7fELF" {
        return not_elf(format!("magic is {:02x?}, not 7f 45 4c 46", &head[..4]));
    }
    let class = head[4];
    let machine = if head[5] == 2 {
        u16::from_be_bytes([head[18], head[19]])
    } else {
        u16::from_le_bytes([head[18], head[19]])
    };
    let expected = native_machine();
    let native_class = if cfg!(target_pointer_width = "64") { 2 } else { 1 };
    let native_data = if cfg!(target_endian = "little") { 1 } else { 2 };
    if machine != expected || class != native_class || head[5] != native_data {
        return Err(LoadFailure::WrongArchitecture {
            found: machine,
            class,
            expected,
        });
    }
    if class != 2 {
        // Structural checks below are for ELF64, the only class we build for.
        return Ok(());
    }
    if got < 64 {
        return not_elf(format!("file is {got} bytes, shorter than an ELF64 header"));
    }
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([head[o], head[o + 1]]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let e_type = u16_at(16);
    if e_type != 3 {
        return not_elf(format!("ELF type {e_type} is not a shared object (ET_DYN = 3)"));
    }
    let (phoff, phentsize, phnum) = (u64_at(&head, 32), u16_at(54), u16_at(56));
    let (shoff, shentsize, shnum) = (u64_at(&head, 40), u16_at(58), u16_at(60));
    let table_end = |off: u64, ent: u64, num: u64| off.saturating_add(ent * num);
    if phnum == 0 || phentsize < 56 {
        return not_elf(format!("{phnum} program headers of {phentsize} bytes"));
    }
    if table_end(phoff, phentsize, phnum) > size {
        return not_elf(format!("truncated: program headers end past the file's {size} bytes"));
    }
    if shoff != 0 && table_end(shoff, shentsize, shnum) > size {
        return not_elf(format!(
            "truncated: section headers end at {} past the file's {size} bytes",
            table_end(shoff, shentsize, shnum)
        ));
    }
    let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).map_err(unreadable)?;
    if read_up_to(&mut f, &mut phdrs).map_err(unreadable)? != phdrs.len() {
        return not_elf("truncated program header table".into());
    }
    for ph in phdrs.chunks_exact(phentsize as usize) {
        let p_type = u32::from_le_bytes(ph[0..4].try_into().expect("4 bytes"));
        let (offset, filesz) = (u64_at(ph, 8), u64_at(ph, 32));
        const PT_LOAD: u32 = 1;
        if p_type == PT_LOAD && offset.checked_add(filesz).map_or(true, |end| end > size) {
            return not_elf(format!(
                "truncated: a loadable segment spans bytes {offset}..{} of a {size}-byte file",
                offset.saturating_add(filesz)
            ));
        }
    }
    Ok(())
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// `e_machine` of the architecture this worker was built for.
fn native_machine() -> u16 {
    if cfg!(target_arch = "x86_64") {
        62
    } else if cfg!(target_arch = "aarch64") {
        183
    } else if cfg!(target_arch = "x86") {
        3
    } else if cfg!(target_arch = "arm") {
        40
    } else if cfg!(target_arch = "riscv64") {
        243
    } else {
        0
    }
}

/// Reads descriptor `index` without ever reading past its `descriptor_size`,
/// returning a copy and its plugin name.
fn read_descriptor(dptr: *const PluginDescriptor, index: u32) -> Result<(PluginDescriptor, String), LoadFailure> {
    let label = || format!("#{index}");
    if dptr.is_null() {
        return Err(LoadFailure::BadRegistry {
            reason: format!("descriptor {} is NULL", label()),
        });
    }
    // SAFETY: the first 8 bytes (size + abi_version) exist in every descriptor
    // layout; unaligned reads tolerate a misaligned lie.
    let (size, abi_version) = unsafe {
        let p = dptr.cast::<u32>();
        (p.read_unaligned(), p.add(1).read_unaligned())
    };
    let Some(minimum) = abi::min_descriptor_size(abi_version) else {
        return Err(LoadFailure::AbiVersion {
            plugin: label(),
            found: abi_version,
            supported: abi::SUPPORTED_ABI_VERSIONS.to_vec(),
        });
    };
    if size < minimum {
        return Err(LoadFailure::DescriptorTooSmall { index, size, minimum });
    }
    // Copy only the bytes this ABI version defines into a zeroed descriptor:
    // construct/destroy of an ABI 400 descriptor stay NULL.
    let copy_len = minimum as usize;
    let mut out = MaybeUninit::<PluginDescriptor>::zeroed();
    // SAFETY: the source holds at least `minimum` bytes (checked above); the
    // destination is a PluginDescriptor of at least that size; they cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(dptr.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), copy_len) };
    // SAFETY: every field of PluginDescriptor (integers, raw pointers, Option of fn
    // pointers) is valid when zeroed, and zero-or-copied bytes are all it holds.
    // Option<fn> forbids no bit pattern, since any non-null word is Some.
    let desc = unsafe { out.assume_init() };
    let name = read_cstr(desc.plugin_name).map_err(|reason| LoadFailure::BadDescriptor {
        plugin: label(),
        reason: format!("plugin_name {reason}"),
    })?;
    Ok((desc, name))
}

fn read_meta(kvs: *const MetaKv, count: u32) -> Result<Vec<(String, String)>, String> {
    if kvs.is_null() || count == 0 {
        return Ok(Vec::new());
    }
    if count > MAX_META {
        return Err(format!("count {count} exceeds {MAX_META}"));
    }
    (0..count as usize)
        .map(|i| {
            // SAFETY: i < count, the table length the descriptor declares.
            let kv = unsafe { kvs.add(i).read_unaligned() };
            Ok((read_cstr(kv.key)?, read_cstr(kv.value)?))
        })
        .collect()
}

fn read_method_meta(desc: &PluginDescriptor) -> Result<Vec<Vec<(String, String)>>, String> {
    if desc.method_metadata.is_null() {
        return Ok(Vec::new());
    }
    (0..desc.method_count as usize)
        .map(|i| {
            // SAFETY: the table has one entry per method (method_count is capped).
            let entry: MethodMetaEntry = unsafe { desc.method_metadata.add(i).read_unaligned() };
            read_meta(entry.kvs, entry.kv_count)
        })
        .collect()
}

impl Plugin {
    /// Vtable slot `index`: a nullable function pointer, or `BadIndex` past
    /// the vtable's declared length.
    pub(crate) fn slot(&self, index: u32) -> Result<*const c_void, CallFault> {
        if index >= self.desc.method_count {
            return Err(CallFault::BadIndex {
                index,
                count: self.desc.method_count,
            });
        }
        // SAFETY: index < method_count, the vtable length the descriptor declares;
        // each slot is a nullable function pointer (one machine word).
        Ok(unsafe {
            self.desc
                .vtable
                .cast::<*const c_void>()
                .add(index as usize)
                .read_unaligned()
        })
    }

    /// Calls vtable slot `index` with `input` and hands the outcome to `f` while
    /// the output memory is still valid; plugin-allocated output is freed after.
    /// An Arena plugin writes into `arena` (pointer, length) when one is lent —
    /// the shared-memory response area, which must stay valid and unaliased for
    /// the call — else into the worker's own reused arena. Large
    /// plugin-allocated output is copied into a lent area before `f` sees it
    /// (see [`copy`]).
    pub fn call<R>(
        &mut self,
        index: u32,
        input: &[u8],
        arena: Option<(*mut u8, usize)>,
        f: impl FnOnce(Outcome<'_>) -> R,
    ) -> R {
        let slot = match self.slot(index) {
            Ok(slot) => slot,
            Err(fault) => return f(Outcome::Fault(fault)),
        };
        let Ok(in_len) = u32::try_from(input.len()) else {
            return f(Outcome::Fault(CallFault::InputTooLarge {
                len: input.len() as u64,
            }));
        };
        if slot.is_null() {
            return f(Outcome::Fault(CallFault::EmptySlot { index }));
        }
        crate::sandbox::METHOD_IN_FLIGHT.store(index, Ordering::Relaxed);
        let input_guard = crate::crash::CallGuard::new(input);
        let result = match self.strategy {
            BufferStrategy::PluginAllocated => self.call_alloc(index, slot, input, in_len, arena, f),
            BufferStrategy::Arena => self.call_arena(slot, input, in_len, arena, f),
        };
        drop(input_guard);
        crate::sandbox::METHOD_IN_FLIGHT.store(u32::MAX, Ordering::Relaxed);
        result
    }

    fn call_alloc<R>(
        &mut self,
        index: u32,
        slot: *const c_void,
        input: &[u8],
        in_len: u32,
        lent: Option<(*mut u8, usize)>,
        f: impl FnOnce(Outcome<'_>) -> R,
    ) -> R {
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut out_len: u32 = 0;
        let status = if self.abi == ABI_400 {
            // SAFETY: a non-NULL slot of an ABI 400 PluginAllocated vtable has this
            // signature; `input` is valid for in_len bytes and never NULL.
            let m: AllocMethod400 = unsafe { std::mem::transmute::<*const c_void, AllocMethod400>(slot) };
            // SAFETY: see above; out/out_len point to live locals.
            unsafe { m(input.as_ptr(), in_len, &mut out, &mut out_len) }
        } else {
            // SAFETY: a non-NULL slot of an ABI 500 PluginAllocated vtable has this signature.
            let m: AllocMethod500 = unsafe { std::mem::transmute::<*const c_void, AllocMethod500>(slot) };
            // SAFETY: inst came from construct; input is valid and non-NULL.
            unsafe { m(self.inst, input.as_ptr(), in_len, &mut out, &mut out_len) }
        };
        if self.abi == ABI_500 && status == STATUS_OK && is_stream_handle(out, out_len) {
            // A server-streaming slot called as a plain method: it opened a
            // stream and handed back its handle. Drop the stream (its `drop_fn`,
            // once) so nothing leaks, and say so.
            let h = out.cast::<StreamHandle>();
            // SAFETY: the plugin returned this non-NULL, aligned handle as a stream
            // init does; nothing else holds it, so it is dropped exactly once.
            unsafe { ((*h).drop_fn)(h) };
            return f(Outcome::Fault(CallFault::StreamMethod { index }));
        }
        match lent {
            Some(area) => self.finish_alloc_output_lent(status, out, out_len, area, f),
            None => self.finish_alloc_output(status, out, out_len, f),
        }
    }

    /// Like [`finish_alloc_output`](Self::finish_alloc_output), but large
    /// output is first copied into the lent response area `area` (pointer,
    /// length) with stores that bypass the cache, and `f` sees it there.
    /// Output that is small, does not fit, or touches the area is handed
    /// over as it is.
    fn finish_alloc_output_lent<R>(
        &mut self,
        status: i32,
        out: *mut u8,
        out_len: u32,
        area: (*mut u8, usize),
        f: impl FnOnce(Outcome<'_>) -> R,
    ) -> R {
        let len = out_len as usize;
        if out.is_null() || out_len > self.max_output || !copy::worth_streaming(out, len, area) {
            return self.finish_alloc_output(status, out, out_len, f);
        }
        // SAFETY: the plugin returned a non-NULL buffer it owns of out_len bytes,
        // valid until we free it below; `area` is the lent response area, valid
        // for area.1 >= len bytes and written by nobody else during the call;
        // `worth_streaming` checked that the two ranges do not overlap.
        unsafe { copy::streaming(out, area.0, len) };
        // SAFETY: the first `len` bytes of the lent area, just written.
        let output = unsafe { std::slice::from_raw_parts(area.0.cast_const(), len) };
        let result = f(Outcome::Status { status, output });
        self.free_output(out, out_len);
        result
    }

    /// Returns a non-NULL output buffer to the plugin's `free_buffer`, once.
    fn free_output(&self, out: *mut u8, out_len: u32) {
        if let Some(free) = self.desc.free_buffer {
            // SAFETY: returning the buffer the plugin allocated, with its length,
            // exactly once, to the plugin's own free function.
            unsafe { free(out, out_len as usize) };
        }
    }

    /// Hands PluginAllocated output to `f`, then frees it with the plugin's `free_buffer`.
    pub(crate) fn finish_alloc_output<R>(
        &mut self,
        status: i32,
        out: *mut u8,
        out_len: u32,
        f: impl FnOnce(Outcome<'_>) -> R,
    ) -> R {
        if out.is_null() {
            return if out_len == 0 {
                f(Outcome::Status { status, output: &[] })
            } else {
                f(Outcome::Fault(CallFault::NullOutput { len: out_len }))
            };
        }
        let result = if out_len > self.max_output {
            f(Outcome::Fault(CallFault::OutputTooLarge {
                len: out_len.into(),
                max: self.max_output,
            }))
        } else {
            // SAFETY: the plugin returned a non-NULL buffer it owns of out_len bytes;
            // it stays valid until we free it below.
            let output = unsafe { std::slice::from_raw_parts(out, out_len as usize) };
            f(Outcome::Status { status, output })
        };
        self.free_output(out, out_len);
        result
    }

    fn call_arena<R>(
        &mut self,
        slot: *const c_void,
        input: &[u8],
        in_len: u32,
        lent: Option<(*mut u8, usize)>,
        f: impl FnOnce(Outcome<'_>) -> R,
    ) -> R {
        // The arena is `arena_cap` bytes: in the lent area while it fits there,
        // else in the worker's own buffer. On BUFFER_TOO_SMALL it grows to the size
        // asked for, once per call, and stays grown for later calls.
        let mut attempt = 0;
        loop {
            let cap = self.arena_cap;
            let arena: *mut u8 = match lent {
                Some((ptr, len)) if cap <= len => ptr,
                _ => {
                    if self.arena.len() < cap {
                        self.arena.resize(cap, 0);
                    }
                    self.arena.as_mut_ptr()
                }
            };
            let cap = u32::try_from(cap).unwrap_or(u32::MAX);
            let (mut off, mut len) = (0u32, 0u32);
            let status = if self.abi == ABI_400 {
                // SAFETY: a non-NULL slot of an ABI 400 Arena vtable has this signature.
                let m: ArenaMethod400 = unsafe { std::mem::transmute::<*const c_void, ArenaMethod400>(slot) };
                // SAFETY: input valid for in_len bytes; arena valid for cap bytes.
                unsafe { m(input.as_ptr(), in_len, arena, cap, &mut off, &mut len) }
            } else {
                // SAFETY: a non-NULL slot of an ABI 500 Arena vtable has this signature.
                let m: ArenaMethod500 = unsafe { std::mem::transmute::<*const c_void, ArenaMethod500>(slot) };
                // SAFETY: inst came from construct; input and arena valid as above.
                unsafe { m(self.inst, input.as_ptr(), in_len, arena, cap, &mut off, &mut len) }
            };
            if status == STATUS_BUFFER_TOO_SMALL {
                if len > self.max_output {
                    return f(Outcome::Fault(CallFault::OutputTooLarge {
                        len: len.into(),
                        max: self.max_output,
                    }));
                }
                if attempt == 0 && len > cap {
                    attempt += 1;
                    self.arena_cap = len as usize;
                    continue;
                }
                // Still too small after the one retry: report what it wanted.
                return f(Outcome::Status {
                    status,
                    output: &len.to_le_bytes(),
                });
            }
            if u64::from(off) + u64::from(len) > u64::from(cap) {
                return f(Outcome::Fault(CallFault::ArenaOutOfBounds {
                    offset: off,
                    len,
                    capacity: cap,
                }));
            }
            // SAFETY: off + len <= cap (checked above), inside the arena we lent.
            let output = unsafe { std::slice::from_raw_parts(arena.add(off as usize), len as usize) };
            return f(Outcome::Status { status, output });
        }
    }

    /// Destroys the instance (ABI 500); called once, on shutdown. An open
    /// stream is dropped first.
    pub fn destroy(mut self) {
        self.close_stream();
        if let (Some(destroy), false) = (self.desc.destroy, self.inst.is_null()) {
            // SAFETY: inst came from this plugin's construct and is destroyed once.
            unsafe { destroy(self.inst) };
        }
    }
}

/// Whether a plain PluginAllocated call's output is a stream handle: fidius'
/// generated methods return a zero-length output as an empty boxed slice,
/// whose pointer is dangling (`1`); a stream init returns its heap-allocated,
/// pointer-aligned `FidiusStreamHandle` with length 0.
fn is_stream_handle(out: *mut u8, out_len: u32) -> bool {
    out_len == 0 && !out.is_null() && (out as usize) % std::mem::align_of::<StreamHandle>() == 0
}

#[cfg(test)]
mod stream_handle_tests {
    use super::*;

    #[test]
    fn empty_outputs_are_not_stream_handles() {
        let empty: Box<[u8]> = Vec::new().into_boxed_slice();
        let dangling = Box::into_raw(empty).cast::<u8>();
        assert!(!is_stream_handle(dangling, 0));
        assert!(!is_stream_handle(std::ptr::null_mut(), 0));
        let handle = Box::into_raw(Box::new(0u64)).cast::<u8>();
        assert!(is_stream_handle(handle, 0));
        assert!(!is_stream_handle(handle, 8));
        // SAFETY: the box leaked just above, freed once.
        drop(unsafe { Box::from_raw(handle.cast::<u64>()) });
    }
}
