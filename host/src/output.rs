//! The worker's stdout and stderr: drained continuously on their own threads (so
//! a plugin printing megabytes never stalls calls), forwarded line by line to
//! `tracing` and the user's callback, and the last bytes of stderr kept for
//! crash reports.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

/// Bytes of stderr kept for [`CallError::WorkerDied`](crate::CallError::WorkerDied).
pub const STDERR_TAIL: usize = 16 * 1024;
/// Longest line forwarded in one piece; longer lines are split.
const MAX_LINE: usize = 8192;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The worker's stdout.
    Stdout,
    /// The worker's stderr.
    Stderr,
}

/// One line a plugin printed, as handed to [`SupervisorBuilder::on_output`](crate::SupervisorBuilder::on_output).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct OutputLine<'a> {
    /// The plugin's name (as loaded).
    pub plugin: &'a str,
    /// The worker's pid.
    pub pid: u32,
    /// Which stream.
    pub stream: Stream,
    /// The line, without its newline (lossily decoded as UTF-8).
    pub line: &'a str,
}

/// A user callback for plugin output.
pub type OutputCallback = Arc<dyn Fn(OutputLine<'_>) + Send + Sync>;

/// The last [`STDERR_TAIL`] bytes a worker wrote to stderr, plus signals when
/// each stream has ended.
#[derive(Clone)]
pub(crate) struct StderrTail {
    bytes: Arc<Mutex<VecDeque<u8>>>,
    done: Receiver<()>,
    stdout_done: Receiver<()>,
}

impl StderrTail {
    /// Waits (at most until `deadline`) until both output streams have ended and
    /// their reader threads have released the pipes.
    pub(crate) fn wait_drained(&self, deadline: Instant) {
        let _ = self.done.recv_deadline(deadline);
        let _ = self.stdout_done.recv_deadline(deadline);
    }

    /// Waits (at most until `deadline`) for the stream to end, then returns the tail.
    pub(crate) fn snapshot_after_eof(&self, deadline: Instant) -> String {
        let _ = self.done.recv_deadline(deadline);
        self.snapshot()
    }

    pub(crate) fn snapshot(&self) -> String {
        let bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = bytes.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Starts the forwarding threads for a worker's stdout and stderr.
pub(crate) fn forward(
    plugin: Arc<str>,
    pid: u32,
    stdout: impl Read + Send + 'static,
    stderr: impl Read + Send + 'static,
    callback: Option<OutputCallback>,
) -> StderrTail {
    let bytes = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let (stdout_done_tx, stdout_done) = crossbeam_channel::bounded(1);
    let (p, cb) = (plugin.clone(), callback.clone());
    spawn_reader(
        "bulkhead-stdout",
        stdout,
        move |line| emit(&p, pid, Stream::Stdout, line, &cb),
        Some(stdout_done_tx),
    );
    let tail = bytes.clone();
    spawn_reader(
        "bulkhead-stderr",
        stderr,
        move |line| {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            for &b in line.iter().chain(b"\n") {
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(b);
            }
            drop(t);
            emit(&plugin, pid, Stream::Stderr, line, &callback);
        },
        Some(done_tx),
    );
    StderrTail {
        bytes,
        done,
        stdout_done,
    }
}

fn emit(plugin: &str, pid: u32, stream: Stream, line: &[u8], cb: &Option<OutputCallback>) {
    let line = String::from_utf8_lossy(line);
    match stream {
        Stream::Stdout => tracing::info!(target: "bulkhead::plugin", plugin, pid, stream = "stdout", "{line}"),
        Stream::Stderr => tracing::warn!(target: "bulkhead::plugin", plugin, pid, stream = "stderr", "{line}"),
    }
    if let Some(cb) = cb {
        cb(OutputLine {
            plugin,
            pid,
            stream,
            line: &line,
        });
    }
}

fn spawn_reader(
    name: &str,
    mut r: impl Read + Send + 'static,
    mut on_line: impl FnMut(&[u8]) + Send + 'static,
    done: Option<Sender<()>>,
) {
    let body = move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut line: Vec<u8> = Vec::with_capacity(256);
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for chunk in buf[..n].split_inclusive(|&b| b == b'\n') {
                let complete = chunk.last() == Some(&b'\n');
                let chunk = if complete { &chunk[..chunk.len() - 1] } else { chunk };
                line.extend_from_slice(chunk);
                if complete || line.len() >= MAX_LINE {
                    on_line(&line);
                    line.clear();
                }
            }
        }
        if !line.is_empty() {
            on_line(&line);
        }
        // Close the pipe before announcing the end.
        drop(r);
        if let Some(done) = done {
            // Dropping the sender wakes every waiter, now and later.
            drop(done);
        }
    };
    // If the thread cannot be started the pipe is simply never drained; the
    // worker then blocks on a full pipe and its calls time out, visibly.
    let _ = std::thread::Builder::new()
        .name(name.into())
        .stack_size(64 * 1024)
        .spawn(body);
}
