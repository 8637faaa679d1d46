//! The minimal filesystem view, built in the worker's own mount namespace.
//!
//! A fresh tmpfs becomes the root. Into it go, read-only: the system library
//! directories (`/usr`, `/lib*`; merged-usr symlinks recreated as symlinks),
//! `/etc/ld.so.cache`, and the paths the policy allows to be read (the plugin
//! library is not in the view at all: the worker loads it through a
//! descriptor opened before the sandbox); read-write:
//! the paths it allows to be written. `/dev` holds only null, zero, full, random
//! and urandom; `/tmp` and `/dev/shm` are private tmpfs of the policy's size;
//! `/proc` is a fresh procfs of the worker's pid namespace, with the entries
//! that describe the host masked (blank files, empty directories, `/proc/sys`
//! read-only: see [`MASKED_PROC_FILES`]). Then `pivot_root`,
//! the old root is detached, the new root made read-only, cwd `/`.
//!
//! Bind sources are opened as `O_PATH` descriptors before the worker gives up
//! its identity and before anything is mounted over them, and bound through
//! `/proc/self/fd/N`. A granted path is opened component by component with no
//! symbolic link followed ([`open_grant`]): a grant that crosses one fails
//! the load, so a link planted under a granted directory redirects nothing.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use bulkhead_shared::sandbox::{Layer, LayerState, NetPolicy, SandboxReport};
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root};

use super::Plan;

/// Where the new root is assembled: any directory works, since the mount
/// namespace is private. `/tmp` always exists.
pub(super) const STAGE: &str = "/tmp";

/// System directories the dynamic loader and libc need, bound read-only.
const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/lib32", "/libx32"];
/// Single system files bound read-only when present.
const SYSTEM_FILES: &[&str] = &["/etc/ld.so.cache", "/etc/localtime"];
/// Files a networked plugin needs to resolve names and verify certificates.
const NETWORK_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
];
/// `/proc` files that describe the host, not the worker: each is covered by
/// `/dev/null` in the worker's fresh `/proc` (reads find nothing). After
/// Docker's masked paths, plus the kernel command line, the boot id, kernel
/// symbols and the machine's load (whose process count is the host's).
const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "kallsyms",
    "kmsg",
    "sched_debug",
    "timer_list",
    "timer_stats",
    "latency_stats",
    "cmdline",
    "loadavg",
    "config.gz",
    "sysrq-trigger",
    "sys/kernel/random/boot_id",
];
/// `/proc` directories about the host's hardware: each is covered by an empty
/// read-only tmpfs.
const MASKED_PROC_DIRS: &[&str] = &["acpi", "asound", "scsi", "bus", "irq", "fs", "driver"];
/// `/proc` trees the worker may read but not change: bound read-only on
/// themselves.
const READ_ONLY_PROC_DIRS: &[&str] = &["sys"];

/// Device nodes bound into the private `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// One bind source, opened before the switch.
struct Source {
    /// Where it appears inside the sandbox (its path on the host).
    path: PathBuf,
    fd: OwnedFd,
    writable: bool,
}

/// Every bind source of a plan.
pub struct Sources(Vec<Source>);

impl Sources {
    /// Opens the policy's paths; one that cannot be opened is an error. (The
    /// library is loaded through a descriptor opened before the sandbox.)
    pub fn open(plan: &Plan<'_>) -> Result<Sources, String> {
        let mut out = Vec::new();
        for (paths, writable) in [(&plan.read, false), (&plan.write, true)] {
            for p in paths {
                let fd = open_grant(p).map_err(|e| {
                    let hint = if e == nix::errno::Errno::ELOOP {
                        " — it crosses a symbolic link; grants follow none: name the real path".to_string()
                    } else {
                        format!(
                            " (opened by the sandboxed worker, with the host's uid, or uid {} when the host is root)",
                            super::identity::NOBODY
                        )
                    };
                    format!("allowed path {}: {e}{hint}", p.display())
                })?;
                out.push(Source {
                    path: p.clone(),
                    fd,
                    writable,
                });
            }
        }
        Ok(Sources(out))
    }
}

fn open_path(p: &Path) -> nix::Result<OwnedFd> {
    open_owned(p, OFlag::O_PATH)
}

/// Opens the granted path `p` (`O_PATH`) one component at a time, following
/// no symbolic link on the way — the last component included — and no `..`:
/// a grant means exactly the file or directory the host named, never where a
/// link someone planted under it (a plugin with write access to a directory
/// on the way, say) points. `ELOOP` for a path that crosses a symbolic link:
/// the host must name the real path. (A component walk rather than
/// `openat2(RESOLVE_NO_SYMLINKS)`, which a system-call filter might refuse.)
pub(super) fn open_grant(p: &Path) -> nix::Result<OwnedFd> {
    use std::path::Component;
    let start = if p.is_absolute() {
        Path::new("/")
    } else {
        Path::new(".")
    };
    let mut fd = open_owned(start, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    for component in p.components() {
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::ParentDir | Component::Prefix(_) => return Err(nix::errno::Errno::EINVAL),
        };
        let raw = nix::fcntl::openat(
            Some(fd.as_raw_fd()),
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: `openat` just returned this descriptor; nothing else owns it.
        let next = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // With O_PATH | O_NOFOLLOW a symbolic link is opened itself.
        let st = nix::sys::stat::fstat(next.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(nix::errno::Errno::ELOOP);
        }
        fd = next;
    }
    Ok(fd)
}

/// `open(p, flags | O_CLOEXEC)`, owned at once.
pub(super) fn open_owned(p: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let fd = open(p, flags | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Builds the view (in a fresh mount namespace); records the outcome.
pub fn build(plan: &Plan<'_>, sources: &Sources, fresh_proc: bool, report: &mut SandboxReport) {
    // Without a fresh /proc the worker cannot reach its library's descriptor
    // by path, so a copy of it goes into the view (room made for it here).
    let copy_size = plan
        .library
        .as_ref()
        .filter(|_| !fresh_proc)
        .and_then(|fd| nix::sys::stat::fstat(fd.as_raw_fd()).ok())
        .map_or(0, |st| st.st_size.max(0) as u64);
    let result = stage(plan, sources, copy_size).and_then(|()| finish(plan, fresh_proc, false));
    record(result, fresh_proc, report);
}

/// Finishes, in a worker a fork-server forked, the view the server already
/// switched to ([`enter_stage`]); records the outcome.
pub fn build_staged(plan: &Plan<'_>, fresh_proc: bool, report: &mut SandboxReport) {
    record(finish(plan, fresh_proc, true), fresh_proc, report);
}

/// The fork-server's switch into its staged view, once: the host's `/proc`
/// bound at `/proc` (only so that each worker may mount a fresh procfs over it
/// — the kernel allows a new procfs only where a fully visible one exists —
/// and each worker does, before any plugin code runs), then `pivot_root`, the
/// old root detached and the new root made read-only. Its workers then copy a
/// namespace that holds nothing but the view: no `pivot_root` and no unmount
/// per worker.
pub fn enter_stage() -> Result<(), String> {
    let root = Path::new(STAGE);
    mount_(
        Some(Path::new("/proc")),
        root.join("proc"),
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    switch_root(root)
}

fn switch_root(root: &Path) -> Result<(), String> {
    chdir(root).map_err(|e| format!("chdir to the new root: {e}"))?;
    pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    mount_(
        None,
        "/",
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
}

fn record(result: Result<(), String>, fresh_proc: bool, report: &mut SandboxReport) {
    let state = match result {
        Ok(()) if fresh_proc => LayerState::Enforced,
        Ok(()) => LayerState::Partial("no /proc: a fresh one needs the pid namespace".into()),
        Err(why) => LayerState::Unavailable(why),
    };
    report.set(Layer::MountNs, state);
}

/// The part of the view every worker of a profile shares, assembled at
/// [`STAGE`] without switching to it: the root tmpfs (with `extra` bytes of
/// room), the system directories and files, `/dev`, and the policy's paths. A
/// fork-server does this once; its workers copy the mount namespace and
/// [`finish`] it.
pub fn stage(plan: &Plan<'_>, sources: &Sources, extra: u64) -> Result<(), String> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // Nothing done here may propagate back to the host's mounts.
    mount_(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    mount_(
        Some(Path::new("tmpfs")),
        STAGE,
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("size={},mode=0755", (1u64 << 20) + extra)),
    )?;
    let root = Path::new(STAGE);
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));

    for dir in SYSTEM_DIRS {
        let p = Path::new(dir);
        match fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(p).map_err(|e| format!("readlink {dir}: {e}"))?;
                symlink(&target, inside(p)).map_err(|e| format!("symlink {dir}: {e}"))?;
            }
            Ok(m) if m.is_dir() => bind(p, &inside(p), false)?,
            _ => {}
        }
    }
    let mut files: Vec<&str> = SYSTEM_FILES.to_vec();
    if !matches!(plan.policy.net, NetPolicy::None) {
        files.extend_from_slice(NETWORK_FILES);
    }
    for f in files {
        let p = Path::new(f);
        if p.exists() {
            bind(p, &inside(p), false)?;
        }
    }

    // /dev: a small tmpfs with the harmless devices; /dev/shm comes per worker.
    let dev = root.join("dev");
    mkdirs(&dev)?;
    mount_(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )?;
    for d in DEVICES {
        let host = Path::new("/dev").join(d);
        if host.exists() {
            bind_as(&host, &dev.join(d), false, true)?;
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).map_err(|e| format!("symlink /dev/{name}: {e}"))?;
    }
    for d in [dev.join("shm"), root.join("tmp"), root.join("proc")] {
        mkdirs(&d)?;
    }
    for s in &sources.0 {
        let via = PathBuf::from(format!("/proc/self/fd/{}", s.fd.as_raw_fd()));
        let is_dir = fs::metadata(&via).map(|m| m.is_dir()).unwrap_or(false);
        bind_as(&via, &inside(&s.path), is_dir, s.writable)?;
    }
    Ok(())
}

/// Whether `path` lies under a directory that gets a private tmpfs per worker.
fn under_private_tmp(path: &Path) -> bool {
    path.starts_with("/tmp") || path.starts_with("/dev/shm")
}

/// Each worker's own part of the view: private `/tmp` and `/dev/shm` (with the
/// policy's paths under them bound again on top, so they stay visible), a
/// fresh `/proc`; then, unless a fork-server already did (`switched`), the
/// switch to the view.
fn finish(plan: &Plan<'_>, fresh_proc: bool, switched: bool) -> Result<(), String> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let root = Path::new(if switched { "/" } else { STAGE });
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    // The staged binds the private tmpfs is about to cover, held open (in this
    // mount namespace) to bind them again on top of it.
    let mut covered = Vec::new();
    for (paths, writable) in [(&plan.read, false), (&plan.write, true)] {
        for p in paths.iter().filter(|p| under_private_tmp(p)) {
            let fd = open_path(&inside(p)).map_err(|e| format!("staged path {}: {e}", p.display()))?;
            covered.push((p, fd, writable));
        }
    }
    let tmp_opts = format!("size={},mode=1777", plan.policy.tmp_size.max(4096));
    for t in [root.join("dev/shm"), root.join("tmp")] {
        mount_(
            Some(Path::new("tmpfs")),
            &t,
            Some("tmpfs"),
            nosuid_nodev,
            Some(&tmp_opts),
        )?;
    }
    if let (Some(fd), Some(path), false) = (&plan.library, &plan.library_path, fresh_proc) {
        copy_library(fd, &inside(path))?;
    }
    for (path, fd, writable) in covered {
        let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let is_dir = fs::metadata(&via).map(|m| m.is_dir()).unwrap_or(false);
        bind_as(&via, &inside(path), is_dir, writable)?;
    }
    if fresh_proc {
        // Mounted before the old root goes: the kernel only allows a new procfs
        // while a fully visible one exists in the namespace.
        mount_(
            Some(Path::new("proc")),
            root.join("proc"),
            Some("proc"),
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        )?;
        mask_proc(root)?;
    }
    if switched {
        return Ok(());
    }
    switch_root(root)
}

/// Hides what the fresh `/proc` under `root` says about the host: see
/// [`MASKED_PROC_FILES`], [`MASKED_PROC_DIRS`], [`READ_ONLY_PROC_DIRS`].
/// Entries this kernel does not have are skipped.
fn mask_proc(root: &Path) -> Result<(), String> {
    let proc_ = root.join("proc");
    for dir in READ_ONLY_PROC_DIRS {
        let p = proc_.join(dir);
        if p.is_dir() {
            bind_as(&p, &p, true, false)?;
        }
    }
    let null = root.join("dev/null");
    for file in MASKED_PROC_FILES {
        let p = proc_.join(file);
        if fs::symlink_metadata(&p).is_ok() {
            mount_(Some(&null), &p, None, MsFlags::MS_BIND, None)?;
        }
    }
    for dir in MASKED_PROC_DIRS {
        let p = proc_.join(dir);
        if p.is_dir() {
            mount_(
                Some(Path::new("tmpfs")),
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=4k,mode=0555"),
            )?;
        }
    }
    Ok(())
}

/// Copies the library (read through the descriptor opened before the sandbox)
/// to `dst`, read-only.
fn copy_library(fd: &OwnedFd, dst: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = dst.parent() {
        mkdirs(parent)?;
    }
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    // By offset (`pread`), never through the descriptor's file position: a
    // library the host pinned is one open file shared by all its workers.
    let src = fs::File::from(fd.try_clone().map_err(|e| format!("dup library: {e}"))?);
    let mut out = fs::File::create(dst).map_err(|e| format!("copying the library to {}: {e}", dst.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        let n = src
            .read_at(&mut buf, at)
            .map_err(|e| format!("copying the library: {e}"))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| format!("copying the library: {e}"))?;
        at += n as u64;
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(0o555)).map_err(|e| format!("chmod library copy: {e}"))
}

/// Binds host directory or file `src` at `dst` (read-only unless `writable`).
fn bind(src: &Path, dst: &Path, writable: bool) -> Result<(), String> {
    let is_dir = fs::metadata(src).map(|m| m.is_dir()).unwrap_or(false);
    bind_as(src, dst, is_dir, writable)
}

fn bind_as(src: &Path, dst: &Path, is_dir: bool, writable: bool) -> Result<(), String> {
    if is_dir {
        mkdirs(dst)?;
    } else {
        if let Some(parent) = dst.parent() {
            mkdirs(parent)?;
        }
        fs::write(dst, b"").map_err(|e| format!("creating mount point {}: {e}", dst.display()))?;
    }
    mount_(Some(src), dst, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    // A bind mount keeps the source's flags; a remount inside a user namespace
    // must repeat the locked ones (nosuid, nodev, noexec, atime) or it fails.
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    if let Ok(st) = statvfs(dst) {
        let f = st.flags();
        for (fs_flag, ms_flag) in [
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        ] {
            if f.contains(fs_flag) {
                flags |= ms_flag;
            }
        }
    }
    mount_(None, dst, None, flags, None)
}

fn mkdirs(p: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn mount_(
    src: Option<&Path>,
    dst: impl AsRef<Path>,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, dst.as_ref(), fstype, flags, data).map_err(|e| {
        let from = src.map(|s| format!("{} on ", s.display())).unwrap_or_default();
        format!("mount {from}{}: {e}", dst.as_ref().display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_follow_no_symbolic_link() {
        let dir = std::env::temp_dir().join(format!("bulkhead-open-grant-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("real/sub")).unwrap();
        fs::write(dir.join("real/sub/file"), b"x").unwrap();
        symlink(dir.join("real"), dir.join("link")).unwrap();
        symlink(dir.join("real/sub/file"), dir.join("real/file-link")).unwrap();

        assert!(open_grant(&dir.join("real/sub/file")).is_ok());
        assert!(open_grant(&dir.join("real/sub")).is_ok());
        // A link on the way, or at the end, is refused; so is `..`.
        assert_eq!(
            open_grant(&dir.join("link/sub/file")).unwrap_err(),
            nix::errno::Errno::ELOOP
        );
        assert_eq!(
            open_grant(&dir.join("real/file-link")).unwrap_err(),
            nix::errno::Errno::ELOOP
        );
        assert_eq!(
            open_grant(&dir.join("real/sub/../sub")).unwrap_err(),
            nix::errno::Errno::EINVAL
        );
        // While the ordinary open follows them.
        assert!(open_path(&dir.join("link/sub/file")).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
