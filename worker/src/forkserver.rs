//! The fork-server: a worker process the host starts once per supervisor and
//! sandbox profile, which then forks fresh workers on request — a restart
//! costs a fork, the worker's own namespaces, `dlopen` and the handshake, not
//! an `exec`, dynamic linking and the shared namespaces again.
//!
//! It runs no plugin code, ever. Its only input is the host's control channel
//! (`bulkhead_shared::forkserver`, a `SOCK_SEQPACKET` socket on fd 0), and
//! every request is validated before anything is forked. After the profile
//! message it prepares the sandbox's shared part on itself
//! (`sandbox::prepare_profile`), forks two *blanks* (workers that isolate
//! themselves ahead of time and wait for the host to assign them a plugin),
//! then loops: a spawn request is one fork and one answer; a blank request is one
//! more blank, forked a moment later.
//!
//! A worker is created with `clone(CLONE_PARENT)`, so its parent is the host,
//! not the server: the host reaps it and reads its exit status and rusage as
//! for any worker, its parent-death signal follows the host, and the server's
//! own death leaves its workers running. The child becomes the worker at once:
//! its own process group, the host's descriptors on 0/1/2 and the socket,
//! everything else (the server's channel included) closed, then the ordinary
//! worker path — load request, the worker's own sandbox part,
//! limits, `dlopen`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bulkhead_shared::forkserver::{self, FromServer, RecvError, ToServer};
use nix::unistd::{dup2, setpgid, Pid};

use crate::setup::{self, Args};
use crate::{dispatch, sandbox, EXIT_SETUP};

/// Exit code when the host broke the fork-server protocol.
const EXIT_PROTOCOL: u8 = 65;

/// Runs the fork-server until the host closes the channel.
pub fn serve(args: &Args) -> u8 {
    let chan = match take_channel(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bulkhead-worker: fork-server setup failed: {e}");
            return EXIT_SETUP;
        }
    };
    let policy = match forkserver::recv::<ToServer>(chan.as_fd(), None) {
        Ok((ToServer::Profile(policy), fds)) if fds.is_empty() => policy,
        Err(RecvError::Closed) => return 0,
        _ => return EXIT_PROTOCOL,
    };
    let ready = match sandbox::prepare_profile(&policy) {
        Ok(()) => FromServer::Ready,
        Err(why) => FromServer::Unavailable(why),
    };
    let available = ready == FromServer::Ready;
    // Once here rather than in every blank: the unwinder the crash handlers
    // use, loaded ahead (a fork keeps it loaded).
    crate::crash::warm_up();
    if forkserver::send(chan.as_fd(), &ready, &[]).is_err() || !available {
        return 0;
    }
    // Two blanks are forked at once (with one, crashes back to back found
    // none ready); the host asks for each next one when it takes one (it
    // assigns blanks itself, straight over their own channel). Each next one is forked a moment after it is asked for: its set-up would
    // otherwise compete for the CPUs with the worker just assigned, which is
    // still loading its plugin, and with the host's hand-over of it.
    for _ in 0..forkserver::BLANKS_AHEAD {
        let _ = fork_blank(&chan);
    }
    let mut owed: u32 = 0;
    let mut due: Option<Instant> = None;
    loop {
        let (msg, fds) = match forkserver::recv::<ToServer>(chan.as_fd(), due) {
            Ok(m) => m,
            Err(RecvError::Timeout) => {
                for _ in 0..std::mem::take(&mut owed) {
                    let _ = fork_blank(&chan);
                }
                due = None;
                continue;
            }
            Err(RecvError::Closed) => return 0,
            Err(_) => return EXIT_PROTOCOL,
        };
        let answer = match msg {
            ToServer::Spawn { args, library } => match spawn(&chan, fds, args, library) {
                Ok(pid) => FromServer::Spawned { pid },
                Err(reason) => FromServer::SpawnFailed(reason),
            },
            ToServer::Blank if fds.is_empty() => {
                // No answer: the blank announces itself. (More than
                // MAX_OWED at once is more than the host ever asks for.)
                owed = (owed + 1).min(MAX_OWED);
                due.get_or_insert(Instant::now() + BLANK_DELAY);
                continue;
            }
            ToServer::Blank => return EXIT_PROTOCOL,
            ToServer::Profile(_) => FromServer::SpawnFailed("the profile is already set".into()),
        };
        if forkserver::send(chan.as_fd(), &answer, &[]).is_err() {
            return 0;
        }
    }
}

/// How long after the host asks for a blank it is forked.
const BLANK_DELAY: Duration = Duration::from_millis(2);
/// Most blanks the host may ask for ahead (it asks for one per blank taken).
const MAX_OWED: u32 = 8;

/// Pre-forks a blank: a worker that isolates itself at once (everything that
/// does not depend on the plugin) and then waits for its assignment from the
/// host. Returns its pid.
fn fork_blank(chan: &OwnedFd) -> Result<i32, String> {
    match fork_for_host()? {
        0 => become_blank(chan),
        pid => Ok(pid),
    }
}

/// Forks this (single-threaded) server into a child of the *host*: returns
/// the child's pid in the server, 0 in the child.
fn fork_for_host() -> Result<i32, String> {
    // SAFETY: a raw `clone` with neither CLONE_VM nor a new stack behaves like
    // `fork`: the child gets a copy-on-write copy of this single-threaded
    // process, so no lock can be held by a thread that does not exist there.
    // CLONE_PARENT makes the host (our parent) the child's parent. glibc's
    // cached thread id is stale in the child, but nothing the child relies on
    // reads it (glibc ≥ 2.34 `raise` asks the kernel for the tid, and the
    // sandboxed plugin itself runs in a grandchild made by a real `fork`).
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_PARENT | libc::SIGCHLD, 0, 0, 0, 0) };
    match pid {
        p if p >= 0 => Ok(p as i32),
        _ => Err(format!("clone: {}", std::io::Error::last_os_error())),
    }
}

/// In a blank: announce itself, isolate, wait, then become the assigned
/// worker; never returns.
fn become_blank(chan: &OwnedFd) -> ! {
    let code = (|| -> Result<u8, String> {
        setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| format!("setpgid: {e}"))?;
        // Tell the host first, so it can reap this process whatever happens
        // next, and hand it the host's end of this blank's own channel.
        let (host_end, assign) = forkserver::pair().map_err(|e| format!("socketpair: {e}"))?;
        let me = FromServer::Blank {
            pid: std::process::id() as i32,
        };
        forkserver::send(chan.as_fd(), &me, &[host_end.as_fd()]).map_err(|e| format!("announcing the blank: {e}"))?;
        drop(host_end);
        setup::die_with_parent()?;
        setup::close_inherited_fds(&[assign.as_raw_fd()])?;
        // What the worker would otherwise do first once assigned: its crash
        // handlers, kept by the worker this blank becomes (should it fail
        // here, the worker tries again and says so on its own stderr), and a
        // look at its argument area for its title.
        let _ = crate::crash::install();
        crate::title::prepare();
        sandbox::prebuild().map_err(|f| f.to_string())?;
        let (msg, fds) = match forkserver::recv::<forkserver::Assign>(assign.as_fd(), None) {
            Ok(m) => m,
            // The server is gone and never assigned us.
            Err(RecvError::Closed) => return Ok(0),
            Err(e) => return Err(e.to_string()),
        };
        drop(assign);
        let args = worker_args(msg.args)?;
        let expected = 3 + usize::from(msg.library);
        if fds.len() != expected {
            return Err(format!("{} descriptors for {expected} expected", fds.len()));
        }
        // Everything inherited was closed at the start; what is open now is
        // this blank's own (its prepared Landlock ruleset among it).
        Ok(run_assigned(fds, &args, false))
    })();
    exit_with(code)
}

fn exit_with(code: Result<u8, String>) -> ! {
    let code = code.unwrap_or_else(|e| {
        eprintln!("bulkhead-worker: forked worker setup failed: {e}");
        EXIT_SETUP
    });
    std::process::exit(code.into())
}

/// Puts the host's descriptors in place (stdout, stderr, the socket, the
/// library), closes everything else (`close_others`), and serves as the worker.
fn run_assigned(mut fds: Vec<OwnedFd>, args: &Args, close_others: bool) -> u8 {
    let setup = (|| -> Result<UnixStream, String> {
        let library = if fds.len() == 4 { fds.pop() } else { None };
        let (err, out, sock) = match (fds.pop(), fds.pop(), fds.pop()) {
            (Some(e), Some(o), Some(s)) => (e, o, s),
            _ => return Err("descriptors missing".into()),
        };
        dup2(out.as_raw_fd(), 1).map_err(|e| format!("dup2 stdout: {e}"))?;
        dup2(err.as_raw_fd(), 2).map_err(|e| format!("dup2 stderr: {e}"))?;
        drop((out, err));
        if close_others {
            let mut keep = vec![sock.as_raw_fd()];
            keep.extend(library.as_ref().map(|l| l.as_raw_fd()));
            setup::close_inherited_fds(&keep)?;
        }
        if let Some(lib) = library {
            sandbox::set_preopened_library(lib);
        }
        Ok(UnixStream::from(sock))
    })();
    match setup {
        Ok(sock) => dispatch::run(sock, args),
        Err(e) => {
            eprintln!("bulkhead-worker: forked worker setup failed: {e}");
            EXIT_SETUP
        }
    }
}

/// The channel arrives as fd 0: move it off, `/dev/null` on 0, 1 and 2 (the
/// server prints nothing; its errors travel on the channel), close the rest.
fn take_channel(args: &Args) -> Result<OwnedFd, String> {
    setup::hygiene(args)?;
    let chan = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("dup channel: {e}"))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    for fd in 0..3 {
        dup2(null.as_raw_fd(), fd).map_err(|e| format!("dup2 /dev/null: {e}"))?;
    }
    drop(null);
    setup::close_inherited_fds(&[chan.as_raw_fd()])?;
    Ok(chan)
}

/// A forked worker's command line: a worker's, nothing else.
fn worker_args(args: Vec<String>) -> Result<Args, String> {
    let parsed = Args::parse(args.into_iter())?;
    if parsed.fork_server {
        return Err("a forked worker cannot be a fork-server".into());
    }
    Ok(parsed)
}

/// Forks one worker; returns its pid.
fn spawn(chan: &OwnedFd, fds: Vec<OwnedFd>, args: Vec<String>, library: bool) -> Result<i32, String> {
    let expected = 3 + usize::from(library);
    if fds.len() != expected {
        return Err(format!("{} descriptors for {expected} expected", fds.len()));
    }
    // Parsed here, so a bad command line is the host's error, not a dead worker.
    let worker_args = worker_args(args)?;
    match fork_for_host()? {
        0 => become_worker(chan, fds, worker_args),
        pid => Ok(pid),
    }
}

/// In the forked child: become a worker; never returns.
fn become_worker(chan: &OwnedFd, fds: Vec<OwnedFd>, args: Args) -> ! {
    let code = (|| -> Result<u8, String> {
        // Its own group, before anything else can fail (the host sets it too).
        setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| format!("setpgid: {e}"))?;
        setup::die_with_parent()?;
        // The server's channel is closed with everything else not handed over.
        let _ = chan;
        Ok(run_assigned(fds, &args, true))
    })();
    exit_with(code)
}
