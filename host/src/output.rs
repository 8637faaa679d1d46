//! The worker's stdout and stderr: drained continuously by the output loop
//! ([`event_loop`](crate::event_loop), so a plugin printing megabytes never
//! stalls calls), forwarded line by line to `tracing` and the user's callback,
//! and the last bytes of stderr kept for crash reports.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use bulkhead_shared::violation::{Violation, MARKER};

use crate::event_loop;
use crate::violations::ViolationSink;

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

/// Hands a worker's stdout and stderr to the output loop
/// ([`event_loop`](crate::event_loop)), which drains them for as long as they
/// are open.
pub(crate) fn forward(
    plugin: Arc<str>,
    pid: u32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    callback: Option<OutputCallback>,
    violations: Option<ViolationSink>,
) -> StderrTail {
    // Grows with what the worker writes; an idle worker costs no buffer.
    let bytes = Arc::new(Mutex::new(VecDeque::new()));
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let (stdout_done_tx, stdout_done) = crossbeam_channel::bounded(1);
    event_loop::watch_output(Pipe::new(
        stdout,
        plugin.clone(),
        pid,
        Stream::Stdout,
        callback.clone(),
        None,
        stdout_done_tx,
    ));
    let mut err_pipe = Pipe::new(
        stderr,
        plugin,
        pid,
        Stream::Stderr,
        callback,
        Some(bytes.clone()),
        done_tx,
    );
    err_pipe.violations = violations;
    event_loop::watch_output(err_pipe);
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

/// One output pipe of one worker, as the output loop serves it.
pub(crate) struct Pipe {
    /// The read end (nonblocking while the loop serves it). Declared first:
    /// it is closed before `done` announces the end.
    file: Option<File>,
    /// The read end could not be made nonblocking: only a thread may read it.
    blocking: bool,
    plugin: Arc<str>,
    pid: u32,
    stream: Stream,
    callback: Option<OutputCallback>,
    /// The stderr tail, for stderr.
    tail: Option<Arc<Mutex<VecDeque<u8>>>>,
    /// The partial line read so far (at most [`MAX_LINE`] bytes).
    line: Vec<u8>,
    /// Where seccomp violation reports go (stderr only); without a sink they
    /// are ordinary lines.
    violations: Option<ViolationSink>,
    /// Held for its drop (never sent on), after the pipe is closed: wakes
    /// every waiter.
    _done: Sender<()>,
}

impl Pipe {
    fn new(
        fd: OwnedFd,
        plugin: Arc<str>,
        pid: u32,
        stream: Stream,
        callback: Option<OutputCallback>,
        tail: Option<Arc<Mutex<VecDeque<u8>>>>,
        done: Sender<()>,
    ) -> Pipe {
        let file = File::from(fd);
        // Without O_NONBLOCK the loop could block in a read; such a pipe is
        // served on a thread of its own instead.
        let blocking = event_loop::set_nonblocking(&file, true).is_err();
        Pipe {
            file: Some(file),
            blocking,
            plugin,
            pid,
            stream,
            callback,
            tail,
            line: Vec::new(),
            violations: None,
            _done: done,
        }
    }

    /// Feeds bytes read from the pipe: complete lines (and over-long pieces)
    /// are forwarded at once.
    fn feed(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let complete = chunk.last() == Some(&b'\n');
            let chunk = if complete { &chunk[..chunk.len() - 1] } else { chunk };
            // A line longer than MAX_LINE is forwarded in MAX_LINE pieces.
            let mut rest = chunk;
            while self.line.len() + rest.len() > MAX_LINE {
                let take = MAX_LINE - self.line.len();
                self.line.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                self.flush_line();
            }
            self.line.extend_from_slice(rest);
            if complete || self.line.len() == MAX_LINE {
                self.flush_line();
            }
        }
    }

    fn flush_line(&mut self) {
        if let Some(sink) = &self.violations {
            if self.line.starts_with(MARKER) {
                if let Some(v) = Violation::parse(&self.line) {
                    let pid = self.pid;
                    let reported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(pid, v)));
                    if reported.is_err() {
                        tracing::error!(target: "bulkhead", plugin = &*self.plugin, pid, "reporting a sandbox violation panicked");
                    }
                    self.line.clear();
                    return;
                }
            }
        }
        if let Some(tail) = &self.tail {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            for &b in self.line.iter().chain(b"\n") {
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(b);
            }
        }
        // The loop serves every worker: a panicking callback must not end it.
        let forwarded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            emit(&self.plugin, self.pid, self.stream, &self.line, &self.callback)
        }));
        if forwarded.is_err() {
            tracing::error!(target: "bulkhead", plugin = &*self.plugin, pid = self.pid, "the on_output callback panicked; the line is dropped");
        }
        self.line.clear();
        if self.line.capacity() > 1024 {
            // Give back what one long line took.
            self.line = Vec::new();
        }
    }

    /// The stream ended: forwards the last partial line. Dropping the `Pipe`
    /// then closes the pipe and announces the end (in that order: `file` is
    /// declared before `done`); the loop first takes it out of its epoll set.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.flush_line();
        }
    }
}

impl event_loop::Source for Pipe {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().filter(|_| !self.blocking).map(|f| f.as_fd())
    }

    fn ready(&mut self, scratch: &mut [u8]) -> bool {
        for _ in 0..event_loop::READS_PER_EVENT {
            let Some(file) = self.file.as_mut() else { return true };
            match file.read(scratch) {
                Ok(0) => {
                    self.finish();
                    return true;
                }
                Ok(n) => self.feed(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.finish();
                    return true;
                }
            }
        }
        false
    }

    fn fallback(mut self) {
        let _ = std::thread::Builder::new()
            .name("bulkhead-output".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                if let Some(f) = &self.file {
                    let _ = event_loop::set_nonblocking(f, false);
                }
                while let Some(file) = self.file.as_mut() {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => self.feed(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                self.finish();
            });
        // If no thread can be started the pipe is simply never drained; the
        // worker then blocks on a full pipe and its calls time out, visibly.
    }
}
