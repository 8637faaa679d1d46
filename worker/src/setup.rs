//! Process hygiene, done by the worker to itself before any plugin code runs:
//! socket off stdin, inherited descriptors closed, parent-death signal,
//! `no_new_privs`, resource limits, and the host's pid taken out of the
//! environment (see `erase_env`, the one `unsafe` block here).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use bulkhead_shared::PARENT_PID_ENV;

use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::unistd::{getppid, Pid};
use std::sync::OnceLock;

/// The worker's command line.
#[derive(Debug, Default)]
pub struct Args {
    parent_pid: Option<i32>,
    limit_as: Option<u64>,
    limit_cpu: Option<u64>,
    limit_nofile: Option<u64>,
    limit_nproc: Option<u64>,
    limit_fsize: Option<u64>,
    limit_msgqueue: Option<u64>,
    nice: Option<i32>,
    core_dumps: bool,
    /// Run as a fork-server (see `forkserver`) instead of a worker.
    pub fork_server: bool,
}

impl Args {
    /// Parses `--flag value` pairs.
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut a = Args::default();
        while let Some(flag) = it.next() {
            if flag == "--core-dumps" {
                a.core_dumps = true;
                continue;
            }
            if flag == "--fork-server" {
                a.fork_server = true;
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = || value.parse::<u64>().map_err(|e| format!("{flag} {value}: {e}"));
            match flag.as_str() {
                "--parent-pid" => a.parent_pid = Some(value.parse().map_err(|e| format!("{flag}: {e}"))?),
                "--limit-as" => a.limit_as = Some(num()?),
                "--limit-cpu" => a.limit_cpu = Some(num()?),
                "--limit-nofile" => a.limit_nofile = Some(num()?),
                "--limit-nproc" => a.limit_nproc = Some(num()?),
                "--limit-fsize" => a.limit_fsize = Some(num()?),
                "--limit-msgqueue" => a.limit_msgqueue = Some(num()?),
                "--nice" => a.nice = Some(value.parse().map_err(|e| format!("{flag} {value}: {e}"))?),
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        if a.parent_pid.is_none() {
            a.parent_pid = take_parent_pid_env();
        }
        if a.parent_pid.is_none() {
            return Err("--parent-pid is required (the worker is started by the bulkhead host)".into());
        }
        Ok(a)
    }
}

/// The host's pid from [`PARENT_PID_ENV`], which is then erased from the
/// environment: from the variable list, and its bytes from the memory
/// `/proc/self/environ` shows, so no plugin code finds it.
fn take_parent_pid_env() -> Option<i32> {
    let value = std::env::var(PARENT_PID_ENV).ok()?;
    erase_env(PARENT_PID_ENV);
    value.parse().ok()
}

extern "C" {
    /// libc's environment list (`environ(7)`).
    static mut environ: *mut *mut libc::c_char;
}

/// Removes `name` from the environment and zeroes the bytes of its
/// `name=value` string in place (`unsetenv` alone leaves them in the
/// process's initial stack, where `/proc/self/environ` reads). Called while
/// the process is single-threaded, before any plugin code.
fn erase_env(name: &str) {
    let prefix = format!("{name}=");
    let mut found = Vec::new();
    // SAFETY: `environ` is a NULL-terminated array of NUL-terminated strings
    // owned by libc; the process is single-threaded here, so nothing changes
    // it while we read it.
    unsafe {
        let mut p = std::ptr::addr_of!(environ).read();
        while !p.is_null() && !(*p).is_null() {
            let entry = std::ffi::CStr::from_ptr(*p);
            if entry.to_bytes().starts_with(prefix.as_bytes()) {
                found.push((*p, entry.to_bytes().len()));
            }
            p = p.add(1);
        }
    }
    std::env::remove_var(name);
    for (ptr, len) in found {
        // SAFETY: `ptr` points at `len` writable bytes of the string libc was
        // given at exec (the initial stack) or by `setenv`; after
        // `remove_var` no list entry refers to it any more.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
    }
}

/// The host's pid, checked once at start.
static PARENT: OnceLock<Pid> = OnceLock::new();

/// Asks for SIGKILL when the host dies, then checks the host is still our
/// parent. Checking *after* arming closes the race where the host died first
/// (we would have been reparented and the signal would never come). Called at
/// start and again after every credential change, which clears the setting.
pub fn die_with_parent() -> Result<(), String> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    let now = getppid();
    match PARENT.get() {
        Some(&p) if p == now => Ok(()),
        expected => Err(format!("parent {expected:?} is gone (now {now}), exiting")),
    }
}

/// Prepares the process and returns the protocol socket. Limits are applied
/// later, by [`apply_limits`], once the sandbox is in place.
pub fn prepare(args: &Args) -> Result<UnixStream, String> {
    hygiene(args)?;

    // The socket arrives as fd 0; plugin code reads stdin, so move it away
    // (std duplicates with F_DUPFD_CLOEXEC at fd >= 3) and put /dev/null there.
    let sock: OwnedFd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("dup socket: {e}"))?;
    let devnull: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    nix::unistd::dup2(devnull.as_raw_fd(), 0).map_err(|e| format!("dup2 /dev/null: {e}"))?;
    drop(devnull);
    close_inherited_fds(&[sock.as_raw_fd()])?;
    Ok(UnixStream::from(sock))
}

/// `oom_score_adj` of every process the host starts (the maximum): under
/// memory pressure the kernel's OOM killer takes a worker before the host.
pub const OOM_SCORE_ADJ: i32 = 1000;

/// What every process the host starts does first: die with the host,
/// [`OOM_SCORE_ADJ`] (inherited by everything it forks), and `no_new_privs`.
pub fn hygiene(args: &Args) -> Result<(), String> {
    if let Some(p) = args.parent_pid {
        let _ = PARENT.set(Pid::from_raw(p));
    }
    die_with_parent()?;
    // Raising one's own score needs no privilege. Without a /proc (a chroot),
    // or where a security module refuses writes to /proc (the host's own
    // confinement), there is nothing to set: it orders the OOM killer's
    // victims, it isolates nothing, so its absence does not stop the worker.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ.to_string()) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("bulkhead-worker: cannot set oom_score_adj ({e}); the OOM killer may pick the host first");
        }
    }
    prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))
}

/// Closes every descriptor above stderr except `keep`: with `close_range`
/// (no `/proc` needed, so it works in a chroot or a minimal mount namespace);
/// on kernels without it, descriptor by descriptor up to the open-files limit.
pub fn close_inherited_fds(keep: &[RawFd]) -> Result<(), String> {
    let mut keep: Vec<u32> = keep
        .iter()
        .map(|&k| u32::try_from(k).map_err(|_| format!("bad descriptor {k}")))
        .collect::<Result<_, _>>()?;
    keep.sort_unstable();
    let mut ranges = Vec::with_capacity(keep.len() + 1);
    let mut first = 3u32;
    for &k in keep.iter().filter(|&&k| k >= 3) {
        ranges.push((first, k.saturating_sub(1)));
        first = k.saturating_add(1);
    }
    ranges.push((first, u32::MAX));
    let mut fallback = false;
    for &(first, last) in &ranges {
        match crate::sys::close_range(first, last) {
            Ok(()) => {}
            Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL) => fallback = true,
            Err(e) => return Err(format!("close_range({first}, {last}): {e}")),
        }
    }
    if fallback {
        // Bounded by the open-files limit: no descriptor can be at or above it.
        let (soft, _) = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
            .map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
        let end = soft.min(1 << 20) as RawFd;
        for fd in (3..end).filter(|&fd| !keep.contains(&(fd as u32))) {
            // EBADF (not open) is the common case and fine.
            let _ = nix::unistd::close(fd);
        }
    }
    Ok(())
}

/// Process (and thread) limit of a worker in its own user namespace when the
/// host sets none: a fork bomb stops here instead of at the machine's limits.
/// Only applied with a user namespace, where Linux counts per worker; without
/// one `RLIMIT_NPROC` would count every process of the host's uid. Well
/// below Linux's default of 1024 per user namespace, so that many workers
/// cannot use up the machine's process ids, and well above what a tokio
/// runtime plus a rayon pool need on a machine of a few dozen cores.
pub const SANDBOX_DEFAULT_NPROC: u64 = 256;

/// Largest System V shared-memory segment (`kernel.shmmax`) in a worker's
/// own IPC namespace.
pub const SHM_MAX_BYTES: u64 = 64 << 20;
/// All System V shared memory of a worker's IPC namespace together, in 4 KiB
/// pages (`kernel.shmall`): 64 MiB. `RLIMIT_AS` does not count these pages
/// once a segment is detached; this does.
pub const SHM_ALL_PAGES: u64 = (64 << 20) / 4096;
/// System V shared-memory segments (`kernel.shmmni`).
pub const SHM_SEGMENTS: u64 = 16;
/// System V message queues (`kernel.msgmni`; each holds `kernel.msgmnb`,
/// 16 KiB by default).
pub const MSG_QUEUES: u64 = 16;

/// Bounds System V IPC in this process's IPC namespace, which must be the
/// worker's own (created by the sandbox; its sysctls belong to the user
/// namespace that created it). Called before any plugin code runs: a limit
/// lowered below what already exists would not reclaim it.
pub fn limit_sysv_ipc() -> Result<(), String> {
    for (name, value) in [
        ("shmmax", SHM_MAX_BYTES),
        ("shmall", SHM_ALL_PAGES),
        ("shmmni", SHM_SEGMENTS),
        ("msgmni", MSG_QUEUES),
    ] {
        std::fs::write(format!("/proc/sys/kernel/{name}"), value.to_string())
            .map_err(|e| format!("kernel.{name} = {value}: {e}"))?;
    }
    Ok(())
}

/// Applies the resource limits to this process (the one that loads the
/// plugin). `helpers` is how many processes the sandbox itself keeps under the
/// worker's uid (its outer process and init); `RLIMIT_NPROC` counts them too,
/// so they are added to the limit. `own_user_ns`: the worker is in a user
/// namespace of its own (then [`SANDBOX_DEFAULT_NPROC`] applies by default).
pub fn apply_limits(args: &Args, helpers: u64, own_user_ns: bool) -> Result<(), String> {
    let set =
        |res: Resource, v: u64, name: &str| setrlimit(res, v, v).map_err(|e| format!("setrlimit({name}, {v}): {e}"));
    if let Some(v) = args.limit_as {
        set(Resource::RLIMIT_AS, v, "RLIMIT_AS")?;
    }
    if let Some(v) = args.limit_cpu {
        // Soft limit raises SIGXCPU; the hard limit one second later is SIGKILL.
        setrlimit(Resource::RLIMIT_CPU, v, v.saturating_add(1))
            .map_err(|e| format!("setrlimit(RLIMIT_CPU, {v}): {e}"))?;
    }
    if let Some(v) = args.limit_nofile {
        set(Resource::RLIMIT_NOFILE, v, "RLIMIT_NOFILE")?;
    }
    let nproc = args.limit_nproc.or(own_user_ns.then_some(SANDBOX_DEFAULT_NPROC));
    if let Some(v) = nproc {
        set(Resource::RLIMIT_NPROC, v.saturating_add(helpers), "RLIMIT_NPROC")?;
    }
    if let Some(v) = args.limit_fsize {
        set(Resource::RLIMIT_FSIZE, v, "RLIMIT_FSIZE")?;
    }
    if let Some(v) = args.limit_msgqueue {
        set(Resource::RLIMIT_MSGQUEUE, v, "RLIMIT_MSGQUEUE")?;
    }
    if !args.core_dumps {
        set(Resource::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    }
    if let Some(inc) = args.nice {
        // Before the plugin starts threads: they inherit it.
        rustix::process::nice(inc).map_err(|e| format!("nice({inc}): {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[&str]) -> Result<Args, String> {
        Args::parse(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let a = parse(&["--parent-pid", "12", "--limit-as", "1000", "--core-dumps"]).unwrap();
        assert_eq!(a.parent_pid, Some(12));
        assert_eq!(a.limit_as, Some(1000));
        assert!(a.core_dumps);
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--parent-pid"]).is_err());
        assert!(parse(&["--parent-pid", "1", "--bogus", "2"]).is_err());
        assert!(parse(&["--parent-pid", "1", "--limit-cpu", "x"]).is_err());
    }
}
