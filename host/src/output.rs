//! The worker's stdout and stderr: drained continuously by the output loop
//! ([`crate::event_loop`], so a plugin printing megabytes never
//! stalls calls), forwarded line by line to `tracing` and the user's callback,
//! and the last bytes of stderr kept for crash reports.
//!
//! Output costs the host CPU and log volume, so each plugin has an
//! [`OutputBudget`] shared by all its workers' pipes. Lines beyond its
//! forwarding rate are dropped and counted (the stderr tail still keeps
//! them); once one line of a read is dropped the rest of that read is dropped
//! wholesale, by counting newlines. Bytes beyond its read rate are left in the
//! pipe: the pipe is not read until the budget has partly refilled, the
//! kernel's pipe buffer fills and the plugin blocks in its writes, so a flood
//! slows the plugin, not the host. A summary (WARN, at most one per second
//! per plugin, and one when a stream ends) says how many lines and bytes were
//! dropped. Forwarded lines go to `tracing` under target `bulkhead::plugin`:
//! stdout at DEBUG, stderr at INFO — what a plugin prints is not a host
//! problem; a crash is reported separately, at WARN.
//!
//! The pipes are served by one process-wide loop thread, `bulkhead-output`
//! (each [`Pipe`] is an [`event_loop::Source`]): it reads the nonblocking pipes,
//! splits lines, keeps the stderr tail and forwards lines to `tracing` and the
//! user's [`on_output`](crate::SupervisorBuilder::on_output) callback, which
//! therefore runs on this thread. A slow callback delays the draining of every
//! worker's output, never the reaping (another loop): while it runs no pipe is
//! read, so a worker that keeps printing blocks on its full pipe and the host's
//! memory stays bounded (one 64 KiB read buffer for the loop, at most one
//! partial line of 8 KiB and the 16 KiB stderr tail per worker). A pipe over
//! its plugin's budget is taken out of the loop's interest until the budget
//! has partly refilled ([`Readiness::PauseUntil`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use bulkhead_shared::crash::MARKER as CRASH_MARKER;
use bulkhead_shared::violation::{Violation, MARKER};

use crate::crash::{CrashReport, CrashSlot};
use crate::error::Exit;
use crate::event_loop::{self, Readiness};
use crate::violations::ViolationSink;

/// Bytes of stderr kept for [`CallError::WorkerDied`](crate::CallError::WorkerDied).
pub const STDERR_TAIL: usize = 16 * 1024;
/// Reads of one pipe per readiness event before the loop serves others, so
/// one chatty worker cannot starve the others.
const READS_PER_EVENT: usize = 4;
/// Size of the output loop's one read buffer.
const READ_BUFFER: usize = 64 * 1024;
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

/// How much of a plugin's output the host handles, shared by all of the
/// plugin's workers and both their streams. Two budgets: lines forwarded (to
/// `tracing` and the [`on_output`](crate::SupervisorBuilder::on_output)
/// callback, which cost the host per line), beyond which lines are dropped
/// and counted; and bytes read from the pipes, beyond which the pipes are not
/// read for a while, so the plugin blocks in its writes. Each rate may be
/// exceeded for a burst of one second's worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutputBudget {
    /// Lines forwarded per second. Default: 1,000.
    pub lines_per_second: u64,
    /// Bytes forwarded per second (newlines included). Default: 1 MiB.
    pub bytes_per_second: u64,
    /// Bytes read from the plugin's pipes per second. Default: 32 MiB.
    pub read_bytes_per_second: u64,
}

impl OutputBudget {
    /// Per plugin: 1,000 lines and 1 MiB forwarded, 32 MiB read per second.
    pub const DEFAULT: OutputBudget = OutputBudget {
        lines_per_second: 1_000,
        bytes_per_second: 1 << 20,
        read_bytes_per_second: 32 << 20,
    };

    /// A budget of `lines` lines and `bytes` bytes forwarded and `read_bytes`
    /// bytes read per second (each at least 1).
    pub fn new(lines: u64, bytes: u64, read_bytes: u64) -> Self {
        OutputBudget {
            lines_per_second: lines.max(1),
            bytes_per_second: bytes.max(1),
            read_bytes_per_second: read_bytes.max(1),
        }
    }

    /// No budget: every line is read and forwarded as fast as the plugin
    /// prints.
    pub fn unlimited() -> Self {
        OutputBudget {
            lines_per_second: u64::MAX,
            bytes_per_second: u64::MAX,
            read_bytes_per_second: u64::MAX,
        }
    }
}

impl Default for OutputBudget {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Shortest and longest pause of a pipe over the read budget.
const MIN_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Least time between two "lines dropped" summaries of one plugin.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// A token bucket holding up to one second of `rate`; `u64::MAX` is no limit.
struct Bucket {
    rate: u64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket {
            rate,
            tokens: rate as f64,
        }
    }

    fn unlimited(&self) -> bool {
        self.rate == u64::MAX
    }

    fn refill(&mut self, seconds: f64) {
        self.tokens = (self.tokens + seconds * self.rate as f64).min(self.rate as f64);
    }
}

/// One plugin's [`OutputBudget`] in use, and what was dropped since the last
/// summary.
pub(crate) struct Meter {
    budget: OutputBudget,
    state: Mutex<MeterState>,
}

struct MeterState {
    lines: Bucket,
    bytes: Bucket,
    read: Bucket,
    at: Instant,
    dropped_lines: u64,
    dropped_bytes: u64,
    last_summary: Option<Instant>,
}

impl MeterState {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.lines.refill(dt);
        self.bytes.refill(dt);
        self.read.refill(dt);
        self.at = now;
    }
}

impl Meter {
    /// A full budget.
    pub(crate) fn new(budget: OutputBudget) -> Meter {
        Meter {
            budget,
            state: Mutex::new(MeterState {
                lines: Bucket::new(budget.lines_per_second),
                bytes: Bucket::new(budget.bytes_per_second),
                read: Bucket::new(budget.read_bytes_per_second),
                at: Instant::now(),
                dropped_lines: 0,
                dropped_bytes: 0,
                last_summary: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges one line of `len` bytes (plus its newline): `true` if it may
    /// be forwarded, `false` if it is dropped (and counted).
    fn admit(&self, len: usize) -> bool {
        let mut st = self.state();
        if st.lines.unlimited() && st.bytes.unlimited() {
            return true;
        }
        st.refill(Instant::now());
        let cost = len as f64 + 1.0;
        let lines_ok = st.lines.unlimited() || st.lines.tokens >= 1.0;
        let bytes_ok = st.bytes.unlimited() || st.bytes.tokens >= cost;
        if lines_ok && bytes_ok {
            st.lines.tokens -= 1.0;
            st.bytes.tokens -= cost;
            true
        } else {
            st.dropped_lines += 1;
            st.dropped_bytes += len as u64 + 1;
            false
        }
    }

    /// Counts lines dropped without asking [`admit`](Self::admit) one by one.
    fn dropped(&self, lines: u64, bytes: u64) {
        let mut st = self.state();
        st.dropped_lines += lines;
        st.dropped_bytes += bytes;
    }

    /// Charges `n` bytes read; if the read budget is spent, until when the
    /// pipes should not be read (until a tenth of a second's budget is back,
    /// within 10 ms – 1 s).
    fn read(&self, n: usize) -> Option<Instant> {
        let mut st = self.state();
        if st.read.unlimited() {
            return None;
        }
        let now = Instant::now();
        st.refill(now);
        st.read.tokens -= n as f64;
        if st.read.tokens >= 0.0 {
            return None;
        }
        let rate = st.read.rate as f64;
        let need = (rate / 10.0 - st.read.tokens) / rate;
        let wait = Duration::from_secs_f64(need.min(MAX_PAUSE.as_secs_f64())).clamp(MIN_PAUSE, MAX_PAUSE);
        Some(now + wait)
    }

    /// What was dropped since the last summary, if anything was and a summary
    /// is due (`force`: the stream ended, say it now).
    fn take_dropped(&self, force: bool) -> Option<(u64, u64)> {
        let mut st = self.state();
        if st.dropped_lines == 0 {
            return None;
        }
        let now = Instant::now();
        if !force
            && st
                .last_summary
                .is_some_and(|t| now.saturating_duration_since(t) < SUMMARY_EVERY)
        {
            return None;
        }
        st.last_summary = Some(now);
        Some((
            std::mem::take(&mut st.dropped_lines),
            std::mem::take(&mut st.dropped_bytes),
        ))
    }
}

/// A user callback for plugin output.
pub type OutputCallback = Arc<dyn Fn(OutputLine<'_>) + Send + Sync>;

/// The last [`STDERR_TAIL`] bytes a worker wrote to stderr, plus signals when
/// each stream has ended.
#[derive(Clone)]
pub(crate) struct StderrTail {
    bytes: Arc<Mutex<VecDeque<u8>>>,
    /// The last crash report the worker wrote to stderr.
    crash: CrashSlot,
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

    /// The worker's last crash report, if it died (`exit`) of the signal the
    /// report names. Call it after [`snapshot_after_eof`](Self::snapshot_after_eof),
    /// so that the report's lines have been read.
    pub(crate) fn crash_for(&self, exit: &Exit) -> Option<Box<CrashReport>> {
        self.crash.for_exit(exit)
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
/// ([`crate::event_loop`]), which drains them for as long as they
/// are open.
pub(crate) fn forward(
    plugin: Arc<str>,
    pid: u32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    callback: Option<OutputCallback>,
    meter: Arc<Meter>,
    violations: Option<ViolationSink>,
) -> StderrTail {
    // Grows with what the worker writes; an idle worker costs no buffer.
    let bytes = Arc::new(Mutex::new(VecDeque::new()));
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let (stdout_done_tx, stdout_done) = crossbeam_channel::bounded(1);
    let origin = Origin {
        plugin,
        pid,
        callback,
        meter,
    };
    event_loop::watch(Pipe::new(stdout, Stream::Stdout, origin.clone(), None, stdout_done_tx));
    let crash = CrashSlot::default();
    let mut err_pipe = Pipe::new(stderr, Stream::Stderr, origin, Some(bytes.clone()), done_tx);
    err_pipe.violations = violations;
    err_pipe.crash = Some(crash.clone());
    event_loop::watch(err_pipe);
    StderrTail {
        bytes,
        crash,
        done,
        stdout_done,
    }
}

fn emit(plugin: &str, pid: u32, stream: Stream, line: &[u8], cb: &Option<OutputCallback>) {
    let line = String::from_utf8_lossy(line);
    match stream {
        Stream::Stdout => tracing::debug!(target: "bulkhead::plugin", plugin, pid, stream = "stdout", "{line}"),
        Stream::Stderr => tracing::info!(target: "bulkhead::plugin", plugin, pid, stream = "stderr", "{line}"),
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

/// Appends `bytes` to the stderr tail, keeping its last [`STDERR_TAIL`] bytes.
fn push_tail(tail: &mut VecDeque<u8>, bytes: &[u8]) {
    let bytes = &bytes[bytes.len().saturating_sub(STDERR_TAIL)..];
    let over = (tail.len() + bytes.len()).saturating_sub(STDERR_TAIL);
    tail.drain(..over.min(tail.len()));
    tail.extend(bytes);
}

/// Whose output a pipe carries and where its lines go.
#[derive(Clone)]
struct Origin {
    plugin: Arc<str>,
    pid: u32,
    callback: Option<OutputCallback>,
    /// The plugin's output budget.
    meter: Arc<Meter>,
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
    /// The plugin's output budget.
    meter: Arc<Meter>,
    /// The partial line read so far (at most [`MAX_LINE`] bytes).
    line: Vec<u8>,
    /// Where seccomp violation reports go (stderr only); without a sink they
    /// are ordinary lines.
    violations: Option<ViolationSink>,
    /// Where crash report lines go (stderr only).
    crash: Option<CrashSlot>,
    /// Held for its drop (never sent on), after the pipe is closed: wakes
    /// every waiter.
    _done: Sender<()>,
}

impl Pipe {
    fn new(
        fd: OwnedFd,
        stream: Stream,
        origin: Origin,
        tail: Option<Arc<Mutex<VecDeque<u8>>>>,
        done: Sender<()>,
    ) -> Pipe {
        let Origin {
            plugin,
            pid,
            callback,
            meter,
        } = origin;
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
            meter,
            line: Vec::new(),
            violations: None,
            crash: None,
            _done: done,
        }
    }

    /// Feeds bytes read from the pipe: complete lines (and over-long pieces)
    /// are forwarded at once. Once one is dropped over budget, the rest of
    /// `bytes` is dropped wholesale: counting newlines costs the host far
    /// less than handling lines one by one.
    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (chunk, after) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..=i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = after;
            let complete = chunk.last() == Some(&b'\n');
            let chunk = if complete { &chunk[..chunk.len() - 1] } else { chunk };
            // A line longer than MAX_LINE is forwarded in MAX_LINE pieces.
            let mut piece = chunk;
            let mut forwarded = true;
            while self.line.len() + piece.len() > MAX_LINE {
                let take = MAX_LINE - self.line.len();
                self.line.extend_from_slice(&piece[..take]);
                piece = &piece[take..];
                forwarded &= self.flush_line();
            }
            self.line.extend_from_slice(piece);
            if complete || self.line.len() == MAX_LINE {
                forwarded &= self.flush_line();
            }
            if !forwarded {
                self.drop_all(rest);
                return;
            }
        }
    }

    /// Drops every complete line in `bytes` (counted, kept in the stderr
    /// tail) and keeps the partial line at its end.
    fn drop_all(&mut self, bytes: &[u8]) {
        let Some(last_nl) = memchr::memrchr(b'\n', bytes) else {
            // No line ends here: the partial line grows (forwarded, or not,
            // when it completes or reaches MAX_LINE).
            return self.feed_partial(bytes);
        };
        let (done, partial) = (&bytes[..=last_nl], &bytes[last_nl + 1..]);
        if self.crash.is_some() && memchr::memmem::find(done, CRASH_MARKER).is_some() {
            // A crash report among the dropped lines: it is not output, and
            // not subject to the budget. Rare, so line by line.
            return self.drop_lines_keeping_crash_reports(done, partial);
        }
        let lines = memchr::memchr_iter(b'\n', done).count() as u64;
        self.meter.dropped(lines, (self.line.len() + done.len()) as u64);
        if let Some(tail) = &self.tail {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            let keep = &done[done.len().saturating_sub(STDERR_TAIL)..];
            if keep.len() == done.len() {
                push_tail(&mut t, &self.line);
            }
            push_tail(&mut t, keep);
        }
        self.line.clear();
        self.feed_partial(partial);
    }

    /// [`drop_all`](Self::drop_all) for `done` (complete lines) holding a
    /// crash report line: those go to the report, the others are dropped.
    fn drop_lines_keeping_crash_reports(&mut self, done: &[u8], partial: &[u8]) {
        for chunk in done.split_inclusive(|&b| b == b'\n') {
            let chunk = &chunk[..chunk.len() - 1];
            let room = MAX_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if !self.report_crash() {
                self.meter.dropped(1, self.line.len() as u64 + 1);
                if let Some(tail) = &self.tail {
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    push_tail(&mut t, &self.line);
                    push_tail(&mut t, b"\n");
                }
            }
            self.line.clear();
        }
        self.feed_partial(partial);
    }

    /// Adds bytes that contain no newline to the partial line.
    fn feed_partial(&mut self, mut bytes: &[u8]) {
        while self.line.len() + bytes.len() >= MAX_LINE {
            let take = MAX_LINE - self.line.len();
            self.line.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.flush_line();
        }
        self.line.extend_from_slice(bytes);
    }

    /// What becomes of one complete line (or over-long piece): kept in the
    /// stderr tail, then forwarded if the budget allows, else counted.
    /// Returns whether it was forwarded.
    fn flush_line(&mut self) -> bool {
        if self.report_crash() || self.report_violation() {
            return true;
        }
        if let Some(tail) = &self.tail {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            push_tail(&mut t, &self.line);
            push_tail(&mut t, b"\n");
        }
        let admitted = self.meter.admit(self.line.len());
        if admitted {
            self.summarize(false);
            // The loop serves every worker: a panicking callback must not end it.
            let forwarded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                emit(&self.plugin, self.pid, self.stream, &self.line, &self.callback)
            }));
            if forwarded.is_err() {
                tracing::error!(target: "bulkhead", plugin = &*self.plugin, pid = self.pid, "the on_output callback panicked; the line is dropped");
            }
        }
        self.line.clear();
        if self.line.capacity() > 1024 {
            // Give back what one long line took.
            self.line = Vec::new();
        }
        admitted
    }

    /// A seccomp violation report on stderr goes to the sink instead of the
    /// log (it is not counted against the forwarding budget). Returns whether
    /// the line was one.
    fn report_violation(&mut self) -> bool {
        let Some(sink) = &self.violations else {
            return false;
        };
        if !self.line.starts_with(MARKER) {
            return false;
        }
        let Some(v) = Violation::parse(&self.line) else {
            return false;
        };
        let pid = self.pid;
        let reported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(pid, v)));
        if reported.is_err() {
            tracing::error!(target: "bulkhead", plugin = &*self.plugin, pid, "reporting a sandbox violation panicked");
        }
        self.line.clear();
        true
    }

    /// A crash report line on stderr goes to the worker's crash report
    /// instead of the log and the stderr tail (it is not counted against the
    /// forwarding budget). Returns whether the whole line was one. A report
    /// line that follows a partial line the plugin left (the handler cannot
    /// know) is split off: the text before it stays an ordinary line.
    fn report_crash(&mut self) -> bool {
        let Some(slot) = &self.crash else {
            return false;
        };
        let Some(at) = memchr::memmem::find(&self.line, CRASH_MARKER) else {
            return false;
        };
        if !slot.feed(&self.line[at..]) {
            return false;
        }
        self.line.truncate(at);
        at == 0
    }

    /// Says how much output was dropped over budget, if a summary is due.
    fn summarize(&self, force: bool) {
        if let Some((lines, bytes)) = self.meter.take_dropped(force) {
            let b = self.meter.budget;
            tracing::warn!(
                target: "bulkhead::plugin",
                plugin = &*self.plugin,
                pid = self.pid,
                dropped_lines = lines,
                dropped_bytes = bytes,
                "plugin output over budget ({} lines, {} bytes per second): {lines} lines ({bytes} bytes) dropped",
                b.lines_per_second,
                b.bytes_per_second
            );
        }
    }

    /// The stream ended: forwards the last partial line. Dropping the `Pipe`
    /// then closes the pipe and announces the end (in that order: `file` is
    /// declared before `done`); the loop first takes it out of its epoll set.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.flush_line();
        }
        self.summarize(true);
    }
}

impl event_loop::Source for Pipe {
    const LOOP: &'static str = "bulkhead-output";
    const SCRATCH: usize = READ_BUFFER;

    fn home() -> &'static event_loop::Started<event_loop::EventLoop<Self>> {
        static OUTPUT: event_loop::Started<event_loop::EventLoop<Pipe>> = event_loop::Started::new();
        &OUTPUT
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().filter(|_| !self.blocking).map(|f| f.as_fd())
    }

    fn ready(&mut self, scratch: &mut [u8]) -> Readiness {
        for _ in 0..READS_PER_EVENT {
            let Some(file) = self.file.as_mut() else {
                return Readiness::Finished;
            };
            match file.read(scratch) {
                Ok(0) => {
                    self.finish();
                    return Readiness::Finished;
                }
                Ok(n) => {
                    self.feed(&scratch[..n]);
                    if let Some(until) = self.meter.read(n) {
                        return Readiness::PauseUntil(until);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Readiness::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.finish();
                    return Readiness::Finished;
                }
            }
        }
        Readiness::Pending
    }

    fn resume(&mut self) {
        self.summarize(false);
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
                        Ok(n) => {
                            self.feed(&buf[..n]);
                            if let Some(until) = self.meter.read(n) {
                                // This thread serves this pipe alone: not
                                // reading is the back-pressure.
                                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                                self.summarize(false);
                            }
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    type Lines = Arc<Mutex<Vec<String>>>;
    type Tail = Arc<Mutex<VecDeque<u8>>>;

    /// A stderr pipe under `budget` whose forwarded lines are collected.
    fn pipe(budget: OutputBudget) -> (Pipe, Lines, Tail) {
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let callback: OutputCallback = Arc::new(move |l: OutputLine<'_>| sink.lock().unwrap().push(l.line.to_string()));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (done, _) = crossbeam_channel::bounded(1);
        let origin = Origin {
            plugin: "p".into(),
            pid: 1,
            callback: Some(callback),
            meter: Arc::new(Meter::new(budget)),
        };
        (
            Pipe::new(r, Stream::Stderr, origin, Some(tail.clone()), done),
            seen,
            tail,
        )
    }

    #[test]
    fn lines_over_the_budget_are_dropped_counted_and_kept_in_the_tail() {
        let (mut p, seen, tail) = pipe(OutputBudget::new(2, 1 << 20, 1 << 20));
        p.feed(b"a\nb\nc\nd\npart");
        assert_eq!(*seen.lock().unwrap(), ["a", "b"]);
        p.feed(b"ial\ne\n");
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(p.meter.take_dropped(true), Some((4, 14)));
        let t: Vec<u8> = tail.lock().unwrap().iter().copied().collect();
        assert_eq!(t, b"a\nb\nc\nd\npartial\ne\n");
    }

    #[test]
    fn an_over_long_line_is_cut_in_pieces_forwarded_or_dropped() {
        let (mut p, seen, _) = pipe(OutputBudget::unlimited());
        p.feed(&vec![b'x'; MAX_LINE * 2 + 5]);
        p.feed(b"\n");
        let lens: Vec<usize> = seen.lock().unwrap().iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 5]);
        // Over budget: the pieces are counted, never forwarded.
        let (mut p, seen, _) = pipe(OutputBudget::new(1, 1 << 20, 1 << 20));
        p.feed(b"first\n");
        p.feed(&vec![b'y'; MAX_LINE * 3]);
        p.feed(b"\nlast\n");
        assert_eq!(*seen.lock().unwrap(), ["first"]);
        // Three pieces (each counted with a line end), the empty line the
        // newline right after them ends, and "last".
        let (lines, bytes) = p.meter.take_dropped(true).unwrap();
        assert_eq!((lines, bytes), (5, (3 * (MAX_LINE + 1) + 1 + 5) as u64));
    }

    fn signal(signal: i32) -> Exit {
        Exit::Signal {
            signal,
            core_dumped: false,
        }
    }

    fn crash_lines() -> Vec<u8> {
        use bulkhead_shared::crash as lines;
        let mut buf = [0u8; lines::MAX_LINE];
        let mut out = Vec::new();
        let n = lines::encode_header(&mut buf, 11, 1, 0x10, Some(3), 2);
        out.extend_from_slice(&buf[..n]);
        let n = lines::encode_input(&mut buf, b"hi");
        out.extend_from_slice(&buf[..n]);
        let n = lines::encode_end(&mut buf);
        out.extend_from_slice(&buf[..n]);
        out
    }

    #[test]
    fn crash_report_lines_are_neither_output_nor_tail_even_over_budget() {
        // Within budget, after a partial line.
        let (mut p, seen, tail) = pipe(OutputBudget::unlimited());
        let slot = CrashSlot::default();
        p.crash = Some(slot.clone());
        p.feed(b"before\npartial");
        p.feed(&crash_lines());
        assert_eq!(*seen.lock().unwrap(), ["before", "partial"]);
        let t: Vec<u8> = tail.lock().unwrap().iter().copied().collect();
        assert_eq!(t, b"before\npartial\n");
        let r = slot.for_exit(&signal(11)).expect("report");
        assert_eq!((r.method, r.input.as_slice(), r.complete), (Some(3), &b"hi"[..], true));

        // Over budget: the read is dropped wholesale, except the report.
        let (mut p, seen, tail) = pipe(OutputBudget::new(1, 1 << 20, 1 << 20));
        let slot = CrashSlot::default();
        p.crash = Some(slot.clone());
        let mut bytes = b"a\nb\nc\n".to_vec();
        bytes.extend(crash_lines());
        bytes.extend_from_slice(b"d\n");
        p.feed(&bytes);
        assert_eq!(*seen.lock().unwrap(), ["a"]);
        assert_eq!(p.meter.take_dropped(true), Some((3, 6)));
        let t: Vec<u8> = tail.lock().unwrap().iter().copied().collect();
        assert_eq!(t, b"a\nb\nc\nd\n");
        assert!(slot.for_exit(&signal(11)).expect("report").complete);
    }

    #[test]
    fn reads_over_the_read_budget_ask_for_a_pause() {
        let m = Meter::new(OutputBudget::new(1000, 1 << 20, 1000));
        assert_eq!(m.read(1000), None, "a second's burst");
        let until = m.read(500).expect("over budget");
        let wait = until.saturating_duration_since(Instant::now());
        assert!(wait >= Duration::from_millis(500) && wait <= MAX_PAUSE, "{wait:?}");
        assert_eq!(Meter::new(OutputBudget::unlimited()).read(usize::MAX), None);
    }
}
