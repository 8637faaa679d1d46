//! The attacks of issue 16 ("default-deny"), run through `fx-neighbour`
//! plugins of one supervisor, each under `Sandbox::none()` (the control: the
//! attack works, or the kernel itself refuses it) and under the default
//! sandbox (refused, with an exact errno). Shared by `tests/default_deny.rs`
//! (the test process as host) and the `deny_host` binary (a child host under
//! an unused uid), so a root and a non-root host run the very same moves.
//!
//! Each attack returns a one-line outcome (`ok`, `errno 1`, `bind ok send ok
//! recv ...`); [`expected`] says what it must be. Every wait is bounded
//! ([`WAIT`]), every datagram and lock range small.

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use bulkhead_host::{Plugin, PluginSpec, Sandbox, Supervisor};

use crate::{neighbour, Scratch};

/// Upper bound of every wait inside an attack (CI is a busy 2-core machine).
pub const WAIT: Duration = Duration::from_secs(20);

/// A file every sandbox can read (the mount namespace shows `/usr`
/// read-only): the shared file of the lock and inotify attacks.
pub const SHARED_FILE: &str = "/usr/lib/os-release";

/// What plugin A passes plugin B through a channel.
const SECRET: &str = "bulkhead-secret";
/// The byte A encodes in byte-range locks.
const SECRET_BYTE: u8 = 0xa5;
/// `IPPROTO_MPTCP` (libc does not export it for every target).
const IPPROTO_MPTCP: i32 = 262;
/// `memfd_secret` (the same number on x86_64 and aarch64).
const SYS_MEMFD_SECRET: i64 = 447;
/// The x32 ABI's bit in a system call number.
const X32_BIT: i64 = 0x4000_0000;
/// The allow-list's refusal as an outcome.
const ERRNO_EPERM: &str = "errno 1";

/// Which sandbox an attack runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `Sandbox::none()`: the control.
    None,
    /// `Sandbox::strict()`, the default (plus the grant an attack names).
    Default,
}

impl Mode {
    /// Both, the control first.
    pub const BOTH: [Mode; 2] = [Mode::None, Mode::Default];

    /// The sandbox the attack's plugins start from.
    pub fn sandbox(self) -> Sandbox {
        match self {
            Mode::None => Sandbox::none(),
            Mode::Default => Sandbox::strict(),
        }
    }

    /// `none` or `default`, as `deny_host` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Default => "default",
        }
    }

    /// The mode called `name`.
    pub fn parse(name: &str) -> Option<Mode> {
        Mode::BOTH.into_iter().find(|m| m.name() == name)
    }
}

/// Every attack, by name.
pub const ATTACKS: &[&str] = &[
    "vsock-socket",
    "mptcp-other-port",
    "tcp-granted-port",
    "tcp-other-port",
    "netlink-usersock-channel",
    "udp-squat-channel",
    "ofd-lock-channel",
    "flock",
    "file-locks-opt-in",
    "inotify-shared-file",
    "fanotify-init",
    "memfd-secret",
    "netlink-audit",
    "netlink-uevent",
    "netlink-route",
    "netlink-usersock",
    "udp-socket",
    "x32-getpid",
    "unix-connect-read-grant",
    "abstract-bind-tcp-grant",
];

/// Where attacks run: a supervisor, the spec of `fx-neighbour` to clone, and
/// a tag that keeps names, port ids and lock ranges apart from other runs.
pub struct Attacker<'a> {
    /// The supervisor both plugins of a channel share.
    pub sup: &'a Supervisor,
    /// `fx-neighbour`'s spec (path, transport); each attack sets the sandbox.
    pub spec: PluginSpec,
    /// Tells this run's names, port ids and lock ranges from other runs of
    /// the same process (0..8).
    pub tag: u32,
}

/// `ok` for a non-negative result, `errno N` for `-N`.
pub fn rc(n: i64) -> String {
    if n >= 0 {
        "ok".into()
    } else {
        format!("errno {}", -n)
    }
}

impl Attacker<'_> {
    fn load(&self, sandbox: Sandbox) -> Plugin {
        self.sup
            .load(self.spec.clone().sandbox(sandbox))
            .unwrap_or_else(|e| panic!("fx-neighbour loads: {e}"))
    }

    fn call(&self, p: &Plugin, slot: u32, args: &impl serde::Serialize) -> i64 {
        p.call(slot, args).unwrap_or_else(|e| panic!("call {slot}: {e}"))
    }

    /// Byte range of the lock attacks: apart for each run and mode (a root
    /// test and a child host may lock the shared file at the same time).
    fn lock_offset(&self, mode: Mode) -> u64 {
        (1 << 20) + u64::from(std::process::id()) * 4096 + u64::from(self.tag) * 256 + mode as u64 * 128
    }

    /// Runs attack `name` under `mode`; returns its outcome.
    pub fn run(&self, name: &str, mode: Mode) -> String {
        let base = mode.sandbox();
        match name {
            "vsock-socket" => {
                // Created and closed, never bound, listened on or connected:
                // vsock reaches the hypervisor.
                let p = self.load(base);
                rc(self.call(&p, neighbour::SOCKET, &(libc::AF_VSOCK, libc::SOCK_STREAM, 0)))
            }
            "mptcp-other-port" | "tcp-granted-port" | "tcp-other-port" => self.tcp(name, base),
            "netlink-usersock-channel" => self.netlink_channel(base, mode),
            "udp-squat-channel" => self.udp_channel(base),
            "ofd-lock-channel" => self.lock_channel(base, mode),
            "flock" => {
                let p = self.load(base);
                rc(self.call(&p, neighbour::FLOCK, &(SHARED_FILE.to_string(),)))
            }
            "file-locks-opt-in" => {
                let p = self.load(base.allow_file_locks());
                let lock = self.call(
                    &p,
                    neighbour::LOCK_BITS,
                    &(SHARED_FILE.to_string(), self.lock_offset(mode) + 64, 1u8),
                );
                let flock = self.call(&p, neighbour::FLOCK, &(SHARED_FILE.to_string(),));
                format!("lock {} flock {}", rc(lock), rc(flock))
            }
            "inotify-shared-file" => self.inotify(base),
            "fanotify-init" => {
                let p = self.load(base);
                let (nr, args) = fanotify_args();
                rc(self.call(&p, neighbour::SYSCALL, &(nr, args, true)))
            }
            "memfd-secret" => {
                let p = self.load(base);
                rc(self.call(&p, neighbour::SYSCALL, &(SYS_MEMFD_SECRET, vec![0u64], true)))
            }
            "netlink-audit" | "netlink-uevent" | "netlink-route" | "netlink-usersock" => {
                let p = self.load(base);
                let protocol = netlink_protocol(name);
                rc(self.call(&p, neighbour::SOCKET, &(libc::AF_NETLINK, libc::SOCK_RAW, protocol)))
            }
            "udp-socket" => {
                let p = self.load(base);
                rc(self.call(&p, neighbour::SOCKET, &(libc::AF_INET, libc::SOCK_DGRAM, 0)))
            }
            "x32-getpid" => {
                if !cfg!(target_arch = "x86_64") {
                    return "not x86_64".into();
                }
                let p = self.load(base);
                rc(self.call(
                    &p,
                    neighbour::SYSCALL,
                    &(libc::SYS_getpid | X32_BIT, Vec::<u64>::new(), false),
                ))
            }
            "unix-connect-read-grant" => self.unix_connect(base, mode),
            "abstract-bind-tcp-grant" => self.abstract_bind(base, mode),
            other => panic!("no attack {other}"),
        }
    }

    /// MPTCP and TCP under `allow_connect_tcp(granted)`: plain TCP to the
    /// granted port works (the grant is real), TCP elsewhere is Landlock's
    /// `EACCES`, MPTCP (outside Landlock's TCP rules) is refused at `socket`.
    fn tcp(&self, name: &str, base: Sandbox) -> String {
        let granted = TcpListener::bind("127.0.0.1:0").expect("listener");
        let other = TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = |l: &TcpListener| l.local_addr().unwrap().port();
        let p = self.load(base.allow_connect_tcp(port(&granted)));
        let (protocol, to) = match name {
            "mptcp-other-port" => (IPPROTO_MPTCP, port(&other)),
            "tcp-granted-port" => (0, port(&granted)),
            _ => (0, port(&other)),
        };
        rc(self.call(&p, neighbour::CONNECT_TCP, &(protocol, to)))
    }

    /// A binds `NETLINK_USERSOCK` port id, B sends it a datagram, A reads it.
    fn netlink_channel(&self, base: Sandbox, mode: Mode) -> String {
        let a = self.load(base.clone());
        let b = self.load(base);
        // A port id of this run alone (both modes, root and child hosts).
        let nl_pid = 0x6000_0000 | ((std::process::id() & 0xf_ffff) << 4) | (self.tag & 0x7) << 1 | mode as u32;
        let bind = self.call(&a, neighbour::NETLINK_BIND, &(libc::NETLINK_USERSOCK, nl_pid));
        let send = self.call(
            &b,
            neighbour::NETLINK_SEND,
            &(libc::NETLINK_USERSOCK, nl_pid, SECRET.as_bytes().to_vec()),
        );
        let recv = if bind >= 0 && send >= 0 {
            match a.call::<_, Vec<u8>>(neighbour::NETLINK_RECV, &(WAIT.as_millis() as u32,)) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => format!("error ({e})"),
            }
        } else {
            "-".into()
        };
        format!("bind {} send {} recv {recv}", rc(bind), rc(send))
    }

    /// A binds a UDP port; B looks for it in its `/proc/net/udp`.
    fn udp_channel(&self, base: Sandbox) -> String {
        let a = self.load(base.clone());
        let b = self.load(base);
        let port = self.call(&a, neighbour::UDP_BIND, &());
        let listing: Vec<u8> = b
            .call(neighbour::READ, &("/proc/net/udp".to_string(),))
            .unwrap_or_else(|e| panic!("B reads /proc/net/udp: {e}"));
        let listing = String::from_utf8_lossy(&listing);
        if port >= 0 {
            let local = format!("0100007F:{port:04X} ");
            let seen = listing.lines().any(|l| l.contains(&local));
            format!("bind ok seen {}", if seen { "yes" } else { "no" })
        } else {
            // Nothing to look for: B's listing must be empty altogether.
            let sockets = listing.lines().count().saturating_sub(1);
            format!("bind {} sockets {sockets}", rc(port))
        }
    }

    /// A (the default profile) encodes a byte in read locks on a shared
    /// read-only file; B (another profile: a TCP grant) decodes it.
    fn lock_channel(&self, base: Sandbox, mode: Mode) -> String {
        let a = self.load(base.clone());
        let b = self.load(base.allow_connect_tcp(9));
        let at = self.lock_offset(mode);
        let lock = self.call(&a, neighbour::LOCK_BITS, &(SHARED_FILE.to_string(), at, SECRET_BYTE));
        let probe = self.call(&b, neighbour::PROBE_BITS, &(SHARED_FILE.to_string(), at));
        let probe = if probe >= 0 { format!("{probe:#04x}") } else { rc(probe) };
        format!("lock {} probe {probe}", rc(lock))
    }

    /// The plugin watches a shared system file; this host opens and reads it.
    fn inotify(&self, base: Sandbox) -> String {
        let p = self.load(base);
        let watch = self.call(&p, neighbour::INOTIFY_WATCH, &(SHARED_FILE.to_string(),));
        if watch < 0 {
            return format!("watch {}", rc(watch));
        }
        let mut seen = 0;
        let deadline = Instant::now() + WAIT;
        while seen == 0 && Instant::now() < deadline {
            std::fs::read(SHARED_FILE).expect("the host reads the shared file");
            // Bounded by WAIT: the event was queued by the read above.
            seen = self.call(&p, neighbour::INOTIFY_WAIT, &(1000u32,));
        }
        format!("watch ok events {}", if seen > 0 { "yes" } else { "no" })
    }

    /// A Unix socket of this host in a directory the plugin may only read.
    fn unix_connect(&self, base: Sandbox, mode: Mode) -> String {
        use std::os::unix::fs::PermissionsExt;
        let dir = Scratch::new("deny", &format!("unix-{}-{}", self.tag, mode.name()));
        // Reachable by a root host's sandboxed uid (65534) too.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.0.join("daemon.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind the host's socket");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let p = self.load(base.allow_read(&dir.0));
        let connect = self.call(&p, neighbour::UNIX_CONNECT, &(path.to_string_lossy().into_owned(),));
        // The plugin's connect and write have returned: a connection it made
        // is in the backlog now.
        let accepted = match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                let mut got = String::new();
                let _ = s.read_to_string(&mut got);
                got
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => "no".into(),
            Err(e) => format!("error {e}"),
        };
        format!("connect {} accepted {accepted}", rc(connect))
    }

    /// With a TCP grant the worker shares the host's network namespace: an
    /// abstract name it bound would be reachable by host clients.
    fn abstract_bind(&self, base: Sandbox, mode: Mode) -> String {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("bulkhead-deny-{}-{}-{}", std::process::id(), self.tag, mode.name());
        let p = self.load(base.allow_connect_tcp(9));
        let bind = self.call(&p, neighbour::BIND_ABSTRACT, &(name.clone(),));
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let connect = match std::os::unix::net::UnixStream::connect_addr(&addr) {
            Ok(_) => "ok".into(),
            Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
        };
        format!("bind {} connect {connect}", rc(bind))
    }
}

fn netlink_protocol(name: &str) -> i32 {
    match name {
        "netlink-audit" => libc::NETLINK_AUDIT,
        "netlink-uevent" => libc::NETLINK_KOBJECT_UEVENT,
        "netlink-route" => libc::NETLINK_ROUTE,
        _ => libc::NETLINK_USERSOCK,
    }
}

/// `fanotify_init` as an unprivileged process may call it too (notification
/// class, file handles): the control then works for a non-root host.
fn fanotify_args() -> (i64, Vec<u64>) {
    let flags = libc::FAN_CLASS_NOTIF | libc::FAN_REPORT_FID | libc::FAN_CLOEXEC;
    (libc::SYS_fanotify_init, vec![u64::from(flags), libc::O_RDONLY as u64])
}

/// What this host process itself gets for the system call an attack makes:
/// without a sandbox the plugin must get the same (the kernel's own answer,
/// which is the control where the kernel lacks the feature).
fn own(name: &str) -> Option<String> {
    // SAFETY: each call takes integers only; a descriptor it returns is
    // closed at once (wrapped in an OwnedFd).
    let n = unsafe {
        match name {
            "vsock-socket" => libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) as i64,
            "mptcp-other-port" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, IPPROTO_MPTCP) as i64
            }
            "fanotify-init" => {
                let (nr, a) = fanotify_args();
                libc::syscall(nr, a[0], a[1])
            }
            "memfd-secret" => libc::syscall(SYS_MEMFD_SECRET, 0),
            "netlink-audit" | "netlink-uevent" | "netlink-route" | "netlink-usersock" => libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                netlink_protocol(name),
            ) as i64,
            "udp-socket" => libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) as i64,
            "x32-getpid" if cfg!(target_arch = "x86_64") => libc::syscall(libc::SYS_getpid | X32_BIT),
            _ => return None,
        }
    };
    if n < 0 {
        return Some(rc(-(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)));
    }
    if name != "x32-getpid" {
        // SAFETY: the call returned a descriptor this process owns.
        drop(unsafe { OwnedFd::from_raw_fd(n as i32) });
    }
    Some("ok".into())
}

/// The outcome attack `name` must have under `mode`.
pub fn expected(name: &str, mode: Mode) -> String {
    if name == "x32-getpid" && !cfg!(target_arch = "x86_64") {
        return "not x86_64".into();
    }
    let none = mode == Mode::None;
    match name {
        "tcp-granted-port" => "ok".into(),
        // Landlock's TCP rule.
        "tcp-other-port" if !none => format!("errno {}", libc::EACCES),
        "tcp-other-port" => "ok".into(),
        "netlink-usersock-channel" if none => format!("bind ok send ok recv {SECRET}"),
        "netlink-usersock-channel" => "bind errno 1 send errno 1 recv -".into(),
        "udp-squat-channel" if none => "bind ok seen yes".into(),
        "udp-squat-channel" => "bind errno 1 sockets 0".into(),
        "ofd-lock-channel" if none => format!("lock ok probe {SECRET_BYTE:#04x}"),
        "ofd-lock-channel" => "lock errno 1 probe errno 1".into(),
        "flock" if none => "ok".into(),
        "file-locks-opt-in" => "lock ok flock ok".into(),
        "inotify-shared-file" if none => "watch ok events yes".into(),
        "inotify-shared-file" => "watch errno 1".into(),
        "unix-connect-read-grant" if none => "connect ok accepted hello".into(),
        "unix-connect-read-grant" => "connect errno 1 accepted no".into(),
        "abstract-bind-tcp-grant" if none => "bind ok connect ok".into(),
        "abstract-bind-tcp-grant" => format!("bind errno 1 connect errno {}", libc::ECONNREFUSED),
        _ if none => own(name).unwrap_or_else(|| panic!("no expectation for {name}")),
        _ => ERRNO_EPERM.into(),
    }
}

/// Where the kernel itself refuses what the control needs, a note for the
/// test's output (the default is still checked for its own refusal).
pub fn control_note(name: &str) -> Option<String> {
    let own = own(name)?;
    (own != "ok").then(|| format!("{name}: the kernel itself answers {own}: the control is the kernel's own"))
}
